"""Day one, as a user of `umx` or demucs would try it: models by name (downloaded from a local
server, cached, verified), one folder per song, output formats that never clip silently,
familiar flags, fine-tuning, the README's Python example."""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from conftest import ROOT, SMALL, make_random_weights, music_like, run_script
from unmix_nnabla.base.runtime import UmxError


def test_a_model_by_name_is_downloaded_once_verified_and_cached(hub_env):
    from unmix_nnabla.models import hub
    url, files, modes, cache = hub_env
    path = hub.model_path("umxhq", progress=False, log=lambda *a: None)
    assert path == os.path.join(cache, "umxhq")
    assert sorted(f for f in os.listdir(path) if f.endswith(".h5")) == \
        ["bass.h5", "drums.h5", "other.h5", "vocals.h5"]
    source = json.load(open(os.path.join(path, "SOURCE.json")))
    import hashlib
    assert source["files"] == {url + "/open-unmix-nnabla/umxhq.zip":
                               hashlib.sha256(files["open-unmix-nnabla/umxhq.zip"]).hexdigest()}
    assert os.path.isfile(os.path.join(path, "MANIFEST.json"))
    files.clear()  # offline now: the cache serves
    assert hub.model_path("umxhq", progress=False, log=lambda *a: None) == path
    # a damaged cache is never used: fetched again
    with open(os.path.join(path, "vocals.h5"), "r+b") as f:
        f.seek(100)
        f.write(b"\0" * 8)
    lines = []
    with pytest.raises(UmxError, match="cannot download"):
        hub.model_path("umxhq", progress=False, log=lines.append)
    assert "the cached umxhq is damaged" in lines[0]


@pytest.mark.parametrize("mode,message", [
    ("truncated", "was cut short"),
    ("missing", "(HTTP 404 Not Found)"),
    ("wrong", "is not the published model"),
])
def test_a_bad_download_is_never_used_and_fetched_again(hub_env, mode, message):
    from unmix_nnabla.models import hub
    url, files, modes, cache = hub_env
    key = "open-unmix-nnabla/umxhq.zip"
    good = files[key]
    if mode == "wrong":
        files[key] = b"<html>a proxy's error page</html>"
    else:
        modes[key] = mode
    with pytest.raises(UmxError) as info:
        hub.model_path("umxhq", progress=False, log=lambda *a: None)
    assert message in str(info.value) and len(str(info.value).splitlines()) == 1
    assert not os.path.exists(os.path.join(cache, "umxhq"))
    assert not [n for n in os.listdir(cache) if n.startswith(".tmp-umx-")]
    files[key], modes[key] = good, "ok"
    assert os.path.isdir(hub.model_path("umxhq", progress=False, log=lambda *a: None))


def test_redirects_hand_placed_files_and_offline(hub_env):
    from unmix_nnabla.models import hub
    url, files, modes, cache = hub_env
    modes["ai-research-code/x-umx/x-umx.h5"] = "redirect"
    path = hub.model_path("x-umx", progress=False, log=lambda *a: None)
    assert path == os.path.join(cache, "x-umx", "x-umx.h5") and os.path.isfile(path)
    # offline: one line with the URL and where to put the file; the file put there is used
    os.environ["UMX_MODELS_URL"] = "http://127.0.0.1:9"
    with pytest.raises(UmxError) as info:
        hub.model_path("umxhq", progress=False, log=lambda *a: None)
    placed = os.path.join(cache, "umxhq.zip")
    assert str(info.value).startswith("cannot download http://127.0.0.1:9/open-unmix-nnabla/"
                                      "umxhq.zip (") and str(info.value).endswith(placed)
    with open(placed, "wb") as f:
        f.write(files["open-unmix-nnabla/umxhq.zip"])
    assert os.path.isdir(hub.model_path("umxhq", progress=False, log=lambda *a: None))
    assert not os.path.exists(placed)


def test_pytorch_models_are_converted_on_first_use(hub_env, monkeypatch):
    """umxl and umxse come as open-unmix-pytorch .pth files: checked against the hash in
    their names, converted once (here: the fixture's model under a test entry)."""
    import hashlib
    from unmix_nnabla.models import hub
    url, files, modes, cache = hub_env
    fixture = os.path.join(ROOT, "tests", "fixtures", "openunmix_small")
    data = open(os.path.join(fixture, "vocals.pth"), "rb").read()
    prefix = hashlib.sha256(data).hexdigest()[:8]
    files["models/vocals-%s.pth" % prefix] = data
    monkeypatch.setenv("UMX_ZENODO_URL", url + "/models")
    entry = hub.Published((("zenodo", "vocals-%s.pth" % prefix, prefix),), "pth",
                          description={"args": {"nhop": 128}, "sample_rate": 16000},
                          notice="licence notice")
    monkeypatch.setitem(hub.MODELS, "tiny", entry)
    lines = []
    path = hub.model_path("tiny", progress=False, log=lines.append)
    assert sorted(os.listdir(path)) == ["MANIFEST.json", "SOURCE.json", "vocals.h5",
                                        "vocals.json"]
    assert "licence notice" in lines
    from unmix_nnabla.models.hub import load_models
    assert load_models(path, load=False)["vocals"].n_hop == 128
    wrong = hub.Published((("zenodo", "vocals-%s.pth" % prefix, "00000000"),), "pth")
    monkeypatch.setitem(hub.MODELS, "wrong", wrong)
    with pytest.raises(UmxError, match="does not match its published checksum"):
        hub.model_path("wrong", progress=False, log=lambda *a: None)
    assert not os.path.exists(os.path.join(cache, "wrong"))


def test_test_py_by_name_writes_a_folder_per_song(hub_env, tmp_path):
    song = str(tmp_path / "my song.wav")
    sf.write(song, music_like(1.0, 8000), 8000)
    env = {"UMX_MODELS_URL": os.environ["UMX_MODELS_URL"], "UMX_CACHE": hub_env[3]}
    out = str(tmp_path / "stems")
    code, stdout, err = run_script("test", song, "--model", "umxhq", "-o", out, "--niter", "0",
                                   env=env)
    assert code == 0, err
    assert "fetching the published model umxhq" in stdout
    assert sorted(os.listdir(os.path.join(out, "umxhq", "my song"))) == \
        ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]
    # one song after another into one folder: none replaces another
    second = str(tmp_path / "other.wav")
    sf.write(second, music_like(1.0, 8000, seed=3), 8000)
    code, stdout, err = run_script("test", second, "--model", "umxhq", "--outdir", out,
                                   "--niter", "0", "--quiet", env=env)
    assert code == 0 and stdout == "", err
    assert sorted(os.listdir(os.path.join(out, "umxhq"))) == ["MODEL.json", "my song", "other"]


# --------------------------------------------------------------------------------------
# output formats: never a silent clip
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def loud(tmp_path_factory):
    """A song at +12 dB (samples far beyond full scale) and a small model."""
    tmp = tmp_path_factory.mktemp("loud")
    song = str(tmp / "loud.wav")
    sf.write(song, music_like(1.5, 8000) * 16, 8000, subtype="FLOAT")
    model = str(tmp / "model")
    make_random_weights(model, **SMALL)
    return song, model


@pytest.mark.parametrize("flags,ext,subtype,message", [
    ([], "wav", "FLOAT", None),
    (["--int16"], "wav", "PCM_16", "rescaled by"),
    (["--int24", "--clip-mode", "clamp"], "wav", "PCM_24", "samples beyond full scale clamped"),
    (["--ext", "flac"], "flac", "PCM_24", "rescaled by"),
    (["--ext", "mp3", "--mp3-bitrate", "128"], "mp3", None, "rescaled by"),
])
def test_stems_are_written_as_asked_and_never_clip_silently(loud, tmp_path, flags, ext, subtype,
                                                           message):
    song, model = loud
    out = str(tmp_path / "out")
    code, _, err = run_script("test", song, "--model", model, "-o", out, "--niter", "0",
                              "--targets", "vocals", *flags)
    assert code == 0, err
    folder = os.path.join(out, "model", "loud")
    assert sorted(os.listdir(folder)) == ["accompaniment." + ext, "vocals." + ext]
    stems = []
    for name in ("vocals", "accompaniment"):
        path = os.path.join(folder, "%s.%s" % (name, ext))
        if ext == "mp3":
            raw = subprocess.run(["ffmpeg", "-v", "error", "-i", path, "-f", "f32le", "-"],
                                 capture_output=True, check=True).stdout
            stems.append(np.frombuffer(raw, np.float32))
        else:
            assert sf.info(path).subtype == subtype
            stems.append(sf.read(path, dtype="float32")[0])
    peak = max(np.abs(s).max() for s in stems)
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    if message is None:  # float WAV holds the stems as they are
        assert peak > 1.0 and not warnings
    else:
        assert len(warnings) == 1 and message in warnings[0], err
        assert peak <= 1.0 + (0.05 if ext == "mp3" else 0)  # MP3 decoding overshoots a little
    if "rescaled" in (message or ""):  # one gain for the song: the stems' ratio is kept
        gain_db = float(re.search(r"rescaled by (-?[\d.]+) dB", warnings[0]).group(1))
        assert gain_db < -10


def test_output_flags_that_do_not_apply_are_refused(loud, tmp_path):
    song, model = loud
    cases = [(["--clip-mode", "clamp"], "argument --clip-mode: float WAV never clips"),
             (["--ext", "flac", "--float32"], "argument --float32: FLAC holds integer samples"),
             (["--mp3-bitrate", "128"], "argument --mp3-bitrate: only --ext mp3 takes it"),
             (["--ext", "mp3", "--int16"], "argument --int16: MP3 has no sample format"),
             ([], "no audio file to separate")]
    for flags, message in cases:
        argv = ([song] if flags else []) + ["--model", model, "-o", str(tmp_path / "o")] + flags
        code, _, err = run_script("test", *argv)
        assert code == 2 and message in err, (flags, err)
    assert not os.path.exists(str(tmp_path / "o"))


# --------------------------------------------------------------------------------------
# familiar shapes
# --------------------------------------------------------------------------------------

def test_the_default_targets_are_the_models(tmp_path):
    model = str(tmp_path / "model")
    make_random_weights(model, targets=("vocals",), **SMALL)
    song = str(tmp_path / "song.wav")
    sf.write(song, music_like(1.0, 8000), 8000)
    code, out, err = run_script("test", song, "--model", model, "-o", str(tmp_path / "out"),
                                "-j", "1", "--niter", "0")
    assert code == 0, err
    assert sorted(os.listdir(str(tmp_path / "out" / "model" / "song"))) == [
        "accompaniment.wav", "vocals.wav"]
    pth = str(tmp_path / "pth")
    shutil.copytree(os.path.join(ROOT, "tests", "fixtures", "openunmix_small"), pth)
    code, _, err = run_script("test", song, "--model", pth, "-o", str(tmp_path / "o2"))
    assert code == 1 and "holds PyTorch weights" in err and "python convert.py --from-pytorch" \
        in err, err


def test_training_speaks_plainly_into_a_log_and_ends_with_the_best_epoch(tmp_path):
    from unmix_nnabla.data.synth import generate_dataset
    root = generate_dataset(str(tmp_path / "data"), 3, 1, 1.5, progress=False)
    out = str(tmp_path / "out")
    argv = ["--umx-train", "--root", root, "--is-wav", "--target", "drums", "--output", out,
            "--batch-size", "2", "--hidden-size", "8", "--nfft", "512", "--nhop", "256",
            "--seq-dur", "0.5", "--samples-per-track", "2", "--context", "cpu"]
    code, stdout, err = run_script("train", *argv, "--epochs", "2")
    assert code == 0, err
    assert "\r" not in stdout + err  # no progress-bar noise in a log
    assert re.search(r"^epoch 2/2: training loss [\d.e-]+, validation loss [\d.e-]+", stdout,
                     re.M), stdout
    last = stdout.strip().splitlines()[-1]
    assert re.match(r"best epoch \d \(validation loss [\d.e-]+\): %s$"
                    % re.escape(os.path.join(out, "drums.h5")), last), last
    # fine-tuning: the trained model starts a new run, its architecture taken from its weights
    base = ["--umx-train", "--root", root, "--is-wav", "--source", "drums", "--batch-size", "2",
            "--seq-dur", "0.5", "--samples-per-track", "2", "--context", "cpu", "--epochs", "1"]
    tuned = str(tmp_path / "tuned")
    code, stdout, err = run_script("train", *base, "--model", out, "--output", tuned)
    assert code == 0 and "fine-tuning drums from %s" % out in stdout, err
    config = json.load(open(os.path.join(tuned, "drums.json")))["config"]
    assert (config["hidden_size"], config["n_fft"], config["n_hop"]) == (8, 512, 256)
    code, _, err = run_script("train", *base, "--model", out, "--hidden-size", "16", "--output",
                              str(tmp_path / "t3"))
    assert code == 1 and "--hidden-size 16, but --model %s has hidden_size = 8" % out in err, err
    assert not os.path.exists(str(tmp_path / "t3"))
    # the run starts from the model's parameters, exactly
    import nnabla as nn
    from unmix_nnabla.models.hub import load_models
    from unmix_nnabla.models.weights import read_parameter_file
    from unmix_nnabla.training import graph as train_graph, run as train_run
    cfg = load_models(out, ["drums"], load=False)["drums"]
    nn.clear_parameters()
    train_graph.build_training_graph(cfg, "drums", 2, 11025)
    train_run.start_from_model(out, cfg, "drums")
    stored = read_parameter_file(os.path.join(out, "drums.h5"))
    with nn.parameter_scope("drums"):
        params = nn.get_parameters(grad_only=False)
    assert stored.keys() == params.keys()
    assert all(np.array_equal(stored[k], params[k].d) for k in stored)


def test_eval_estimates_take_only_the_targets_and_flags_that_apply(tmp_path):
    from unmix_nnabla.data.synth import generate_dataset
    root = generate_dataset(str(tmp_path / "data"), 1, 1, 2.0, progress=False)
    out = str(tmp_path / "out")
    code, stdout, err = run_script("eval", "--estimates", root, "--root", root, "--is-wav",
                                   "-o", out, "--targets", "vocals", "drums")
    assert code == 0, err
    scores = json.load(open(os.path.join(out, "test", "Synth Test 00.json")))
    assert sorted(t["name"] for t in scores["targets"]) == ["drums", "vocals"]
    for flags, message in ((["--niter", "2"], "argument --niter: --estimates scores"),
                           (["--context", "cpu"], "argument --context: --estimates scores"),
                           (["--targets", "piano"], "'piano' is no MUSDB18 target")):
        code, _, err = run_script("eval", "--estimates", root, "--root", root, "--is-wav", "-o",
                                  str(tmp_path / "o2"), *flags)
        assert code == 2 and message in err, (flags, err)
    code, _, err = run_script("eval", "--estimates", root, "--root", root, "--is-wav", "-o",
                              str(tmp_path / "o3"), "--targets", "vocals")
    assert code == 1 and "museval scores a target against the others" in err, err


# --------------------------------------------------------------------------------------
# the README's Python example works as written
# --------------------------------------------------------------------------------------

def test_the_readme_python_blocks_run_in_a_fresh_interpreter(tmp_path):
    """Every ```python block of README.md that needs no download runs as written (in a folder
    holding the files it names: a model folder `umxhq/` of small random weights and
    `song.wav`), in a fresh interpreter that has set no context."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    runnable = [b for b in blocks if "# needs a download" not in b]
    assert runnable, "the README has no Python example"
    make_random_weights(str(tmp_path / "umxhq"), **SMALL)
    sf.write(str(tmp_path / "song.wav"), music_like(2.0, 8000), 8000)
    sf.write(str(tmp_path / "song.mp3.wav"), music_like(2.0, 8000), 8000)
    for block in runnable:
        proc = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True,
                              cwd=str(tmp_path))
        assert proc.returncode == 0, block + proc.stderr
