"""One model resolution for every CLI and the Python API (a published name served from
127.0.0.1, a folder, a file), stems of one model never mixed with another's, the API's array
layout, and messages that point the right way."""
import errno
import json
import os

import numpy as np
import pytest
import soundfile as sf

from conftest import SMALL, make_random_weights, music_like, run_script
from unmix_nnabla.base.runtime import UmxError


def names_env(hub_env):
    url, _, _, cache = hub_env
    return {"UMX_MODELS_URL": url, "UMX_CACHE": cache}


@pytest.fixture
def song(tmp_path):
    path = str(tmp_path / "song.wav")
    sf.write(path, music_like(1.0, 8000), 8000)
    return path


def read_stems(folder):
    return {f: sf.read(os.path.join(folder, f))[0] for f in sorted(os.listdir(folder))}


def test_a_published_name_resolves_the_same_in_test_eval_and_the_api(hub_env, tmp_path, song):
    from unmix_nnabla.models.hub import load_models, resolve_model
    from unmix_nnabla.separation.separator import separate
    from unmix_nnabla.data.synth import generate_dataset
    path = resolve_model("umxhq", progress=False, log=lambda *a: None)
    assert path == os.path.join(hub_env[3], "umxhq")
    # the API takes the name where it takes loaded models
    audio = sf.read(song, dtype="float32")[0]
    by_name, rate = separate(audio, 8000, "umxhq", niter=0, progress=False)
    by_models, _ = separate(audio, 8000, load_models("umxhq"), niter=0, progress=False)
    assert rate == 8000 and sorted(by_name) == ["bass", "drums", "other", "vocals"]
    for target in by_name:
        assert np.array_equal(by_name[target], by_models[target]), target
    # test.py: the same stems as the API's
    out = str(tmp_path / "stems")
    code, _, err = run_script("test", song, "--model", "umxhq", "-o", out, "--niter", "0",
                              env=names_env(hub_env))
    assert code == 0, err
    for target, stem in by_name.items():
        written = sf.read(os.path.join(out, "umxhq", "song", target + ".wav"), dtype="float32")[0]
        assert np.allclose(written, stem, atol=1e-6), target
    # eval.py: scores of the published model by name
    root = generate_dataset(str(tmp_path / "data"), nb_train=1, nb_test=1, duration=1.5,
                            progress=False)
    code, _, err = run_script("eval", "--model", "umxhq", "--root", root, "--is-wav",
                              "--targets", "vocals", "--niter", "0", "-o",
                              str(tmp_path / "eval"), env=names_env(hub_env))
    assert code == 0, err
    scores = json.load(open(str(tmp_path / "eval" / "test" / "Synth Test 00.json")))
    assert {t["name"] for t in scores["targets"]} == {"vocals", "accompaniment"}


def test_a_published_name_wins_over_a_local_folder_and_a_path_selects_the_folder(
        hub_env, tmp_path, song):
    local = str(tmp_path / "umxhq")
    make_random_weights(local, targets=["vocals"], seed=7, **SMALL)
    run = dict(env=names_env(hub_env), cwd=str(tmp_path))
    code, _, err = run_script("test", song, "--model", "umxhq", "-o", "by-name", "--niter", "0",
                              **run)
    assert code == 0, err
    assert "warning: --model umxhq is the published model; the local umxhq is used when " \
        "written as a path: ./umxhq" in err
    assert sorted(os.listdir(str(tmp_path / "by-name" / "umxhq" / "song"))) == \
        ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]  # the published four targets
    code, _, err = run_script("test", song, "--model", "./umxhq", "-o", "by-path", "--niter",
                              "0", **run)
    assert code == 0 and "warning" not in err, err
    assert sorted(os.listdir(str(tmp_path / "by-path" / "umxhq" / "song"))) == \
        ["accompaniment.wav", "vocals.wav"]  # the local one-target model
    code, _, err = run_script("test", song, "--model", "umxhx", "-o", "x", **run)
    assert code == 2 and "argument --model: umxhx is neither a file or folder nor a published " \
        "model (umxhq" in err, err


def test_the_readme_separation_commands_in_order_never_mix_models(hub_env, tmp_path, song):
    """umxhq, then X-UMX as FLAC, then Sony's command line with another folder named umxhq:
    each model's stems in a folder of its own, the third refused, nothing replaced."""
    run = dict(env=names_env(hub_env), cwd=str(tmp_path))
    code, _, err = run_script("test", song, "--model", "umxhq", "-o", "stems", "--niter", "0",
                              **run)
    assert code == 0, err
    first = read_stems(str(tmp_path / "stems" / "umxhq" / "song"))
    code, _, err = run_script("test", song, "--model", "x-umx", "-o", "stems", "--ext", "flac",
                              "--int24", "--niter", "0", **run)
    assert code == 0, err
    assert sorted(os.listdir(str(tmp_path / "stems"))) == ["umxhq", "x-umx"]
    assert sorted(os.listdir(str(tmp_path / "stems" / "x-umx" / "song"))) == \
        ["bass.flac", "drums.flac", "other.flac", "vocals.flac"]
    make_random_weights(str(tmp_path / "umxhq"), seed=9, **SMALL)  # another model, same name
    code, _, err = run_script("test", "--umx-infer", "--inputs", song, "--model", "umxhq/",
                              "--out-dir", "stems", "--niter", "0", **run)
    assert code == 1
    assert err.strip() == "error: stems/umxhq holds the stems of another model named umxhq " \
        "(umxhq): choose another --out-dir", err
    after = read_stems(str(tmp_path / "stems" / "umxhq" / "song"))
    assert after.keys() == first.keys()
    assert all(np.array_equal(after[f], first[f]) for f in first)
    # the same files unpacked by hand are the same model: its stems go beside the first run's
    import shutil
    shutil.rmtree(str(tmp_path / "umxhq"))
    cached = os.path.join(hub_env[3], "umxhq")
    shutil.copytree(cached, str(tmp_path / "umxhq"),
                    ignore=shutil.ignore_patterns("MANIFEST.json", "SOURCE.json"))
    code, _, err = run_script("test", "--inputs", song, "--model", "umxhq/", "--out-dir",
                              "stems", "--niter", "0", "--ext", "flac", **run)
    assert code == 0, err


def test_the_api_refuses_a_channels_first_array(small_model):
    from unmix_nnabla.separation.separator import separate
    folder, _ = small_model
    audio = music_like(1.0, 8000)
    with pytest.raises(UmxError, match=r"audio of shape \(2, 8000\): expected \[shape="
                       r"\(nb_timesteps, nb_channels\)\], time first \(for a channels-first "
                       r"array, pass audio.T\)"):
        separate(audio.T, 8000, folder, progress=False)
    estimates, _ = separate(audio, 8000, folder, niter=0, progress=False)
    assert estimates["vocals"].shape == (8000, 2)


def test_a_full_disk_under_the_cache_names_the_folder_and_the_remedy(hub_env, monkeypatch):
    from unmix_nnabla.models import hub
    class FullDisk:
        def __init__(self, *args):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(hub, "open", FullDisk, raising=False)
    with pytest.raises(UmxError) as caught:
        hub.model_path("umxhq", progress=False, log=lambda *a: None)
    message = str(caught.value)
    assert "no space left on the device of %s" % hub_env[3] in message
    assert message.endswith("free space there, or set UMX_CACHE to another folder"), message
    assert "download it yourself" not in message
    assert not [n for n in os.listdir(hub_env[3]) if n.startswith(".tmp-")]


def test_a_conflicting_bandwidth_names_bandwidth(tmp_path):
    from unmix_nnabla.data.synth import generate_dataset
    root = generate_dataset(str(tmp_path / "data"), nb_train=2, nb_test=0, duration=1.0,
                            progress=False)
    model = str(tmp_path / "model")
    make_random_weights(model, targets=["vocals"], hidden_size=8, max_bin=100,
                        nb_output_bins=257, n_fft=512, n_hop=256)
    code, _, err = run_script("train", "--umx-train", "--root", root, "--is-wav", "--source",
                              "vocals", "--model", model, "--bandwidth", "8000", "--seq-dur",
                              "0.5", "--output",
                              str(tmp_path / "out"), "--context", "cpu")
    assert code == 1
    assert "error: --bandwidth 8000, but --model %s has max_bin = 100" % model in err, err


def test_numba_s_cache_is_shared_by_copies_of_the_same_code(tmp_path, monkeypatch):
    """Two clones (the same kernels.py at two paths) read one cache folder, under the user's
    cache folder; other code gets another."""
    import shutil
    from unmix_nnabla.base import kernels
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    paths = []
    for name in ("clone-a", "clone-b"):
        os.makedirs(str(tmp_path / name))
        paths.append(shutil.copy(kernels.__file__, str(tmp_path / name / "kernels.py")))
    with open(str(tmp_path / "edited.py"), "w") as f:
        f.write(open(kernels.__file__).read() + "\n# edited\n")
    locate = lambda path: kernels.SharedCacheLocator.from_function(  # noqa: E731
        kernels.small_matmul.py_func, path).get_cache_path()
    a, b, edited = locate(paths[0]), locate(paths[1]), locate(str(tmp_path / "edited.py"))
    assert a == b != edited
    assert os.path.dirname(a) == str(tmp_path / "cache" / "open-unmix-nnabla" / "numba")

    def loop():  # the same file imported under another module name: its cached code names
        pass     # the module, so it must not share the folder
    loop.__module__ = "kernels"
    other = kernels.SharedCacheLocator.from_function(loop, paths[0]).get_cache_path()
    assert other != a and os.path.basename(other).startswith("kernels-")


def test_an_early_error_starts_no_compilation(tmp_path, song):
    """An offline model name fails before the compiled loops are loaded: nothing is compiled
    into numba's cache (here empty)."""
    cache = str(tmp_path / "cache")
    code, _, err = run_script("test", song, "--model", "umxhq", "-o", str(tmp_path / "o"),
                              env={"XDG_CACHE_HOME": cache,
                                   "UMX_MODELS_URL": "http://127.0.0.1:9/none"})
    assert code == 1 and "cannot download http://127.0.0.1:9/none" in err, err
    compiled = [f for _, _, files in os.walk(os.path.join(cache, "open-unmix-nnabla", "numba"))
                for f in files]
    assert compiled == []
