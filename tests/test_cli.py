"""test.py end to end: the official weight layout, real audio, and every bad input."""
import os
import shutil
import zipfile

import numpy as np
import pytest
import soundfile as sf

from conftest import ROOT, run_script, SMALL, import_script, make_random_weights, music_like
from unmix_nnabla.base.vocabulary import SOURCES
from unmix_nnabla.models.hub import load_models
from unmix_nnabla.base.runtime import UmxError


def run_cli(*argv):
    """(exit code, stderr) of test.py."""
    code, _, err = run_script("test", *argv)
    return code, err


def error_line(stderr):
    lines = [l for l in stderr.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_project_test_module_is_imported():
    cli = import_script("test")
    assert hasattr(cli, "main") and cli.__file__.startswith(ROOT)


@pytest.mark.slow
def test_full_size_official_layout_loads_and_runs(tmp_path):
    folder = str(tmp_path / "umxhq")
    make_random_weights(folder)
    cfgs = load_models(folder, list(SOURCES))
    assert all(c.hidden_size == 512 and c.max_bin == 1487 and c.nb_channels == 2
               and not c.unidirectional for c in cfgs.values())
    # the official zip, unextracted
    archive = str(tmp_path / "umxhq.zip")
    with zipfile.ZipFile(archive, "w") as z:
        for t in list(SOURCES):
            z.write(os.path.join(folder, t + ".h5"), "umxhq/%s.h5" % t)
    wav = str(tmp_path / "song.wav")
    sf.write(wav, music_like(1.0, 44100), 44100)
    code, err = run_cli("--umx-infer", "--inputs", wav, "--model", archive, "--out-dir",
                        str(tmp_path / "out"), "--targets", "vocals", "drums")
    assert code == 0, err
    for name in ("vocals", "drums"):  # a folder per model and per song, also for one input
        audio, rate = sf.read(str(tmp_path / "out" / "umxhq" / "song" / (name + ".wav")))
        assert rate == 44100 and audio.shape == (44100, 2)


def test_reduced_unidirectional_mono_model_loads(tmp_path):
    folder = str(tmp_path / "m")
    cfg = make_random_weights(folder, targets=("bass",), unidirectional=True, nb_channels=1,
                              nb_layers=2, **SMALL)
    assert load_models(folder, ["bass"])["bass"] == cfg


@pytest.mark.slow
def test_real_stem_clip_end_to_end(tmp_path, small_model, stem_clip):
    """The 6 s MUSDB18 clip (STEMS, 44.1 kHz) through ffmpeg, resampled to the model's 8 kHz."""
    folder, _ = small_model
    code, err = run_cli(stem_clip, "--model", folder, "-o", str(tmp_path / "out"),
                        "--niter", "1", "--residual-model", "--int16")
    assert code == 0, err
    out = tmp_path / "out" / "model" / os.path.basename(stem_clip)[:-len(".mp4")]
    written = sorted(os.listdir(out))
    assert written == sorted([t + ".wav" for t in list(SOURCES)] + ["residual.wav"])
    info = sf.info(str(out / "vocals.wav"))
    assert info.samplerate == 8000 and info.channels == 2 and info.subtype == "PCM_16"
    assert abs(info.duration - 268288 / 44100) < 1e-3


def test_several_inputs_get_a_folder_each(tmp_path, small_model):
    folder, _ = small_model
    inputs = []
    for name, rate in (("a", 8000), ("b", 16000)):
        path = str(tmp_path / (name + ".flac"))
        sf.write(path, music_like(0.5, rate, channels=1), rate)
        inputs.append(path)
    code, err = run_cli("--inputs", *inputs, "--model", folder, "--out-dir",
                        str(tmp_path / "out"), "--targets", "vocals", "--sample-rate", "16000")
    assert code == 0, err
    for name in ("a", "b"):
        audio, rate = sf.read(str(tmp_path / "out" / "model" / name / "vocals.wav"))
        assert rate == 16000 and audio.shape == (8000, 2)
        assert os.path.isfile(str(tmp_path / "out" / "model" / name / "accompaniment.wav"))


def _bad_input_cases(tmp_path, folder):
    wav = str(tmp_path / "ok.wav")
    sf.write(wav, music_like(0.5, 8000), 8000)
    text = str(tmp_path / "notes.wav")
    with open(text, "w") as f:
        f.write("not audio")
    short = str(tmp_path / "short.wav")
    sf.write(short, np.zeros((100, 2)), 8000)
    broken = str(tmp_path / "broken")
    shutil.copytree(folder, broken)
    with open(os.path.join(broken, "drums.h5"), "wb") as f:
        f.write(b"garbage")
    wrong = str(tmp_path / "wrong")
    make_random_weights(wrong, targets=("vocals",), **dict(SMALL, hidden_size=8))
    # a vocals file whose fc2 does not fit its other layers
    mixed = str(tmp_path / "mixed")
    shutil.copytree(folder, mixed)
    import h5py
    with h5py.File(os.path.join(mixed, "vocals.h5"), "a") as f:
        del f["fc2/affine/W"]
        f["fc2/affine/W"] = np.zeros((32, 7), np.float32)
    blocker = str(tmp_path / "file")
    open(blocker, "w").close()
    return [
        (["--inputs", str(tmp_path / "missing.wav")], "argument --inputs: %s not found"
         % (tmp_path / "missing.wav")),
        (["--inputs", text], "cannot read"),
        (["--inputs", short], "too short"),
        (["--inputs", wav, "--targets", "flute"], "no weights for target 'flute'"),
        (["--inputs", wav, "--model", str(tmp_path / "nomodel")], "argument --model"),
        (["--inputs", wav, "--model", broken], "not an NNabla weight file"),
        (["--inputs", wav, "--model", mixed], "fc2/affine/W has shape (32, 7)"),
        (["--inputs", wav, "--out-dir", os.path.join(blocker, "out")], "cannot write to --out-dir"),
        (["--inputs", wav, "--model", wrong, "--targets", "vocals", "drums"], "drums"),
    ]


def test_bad_inputs_fail_with_one_line_and_no_output(tmp_path, small_model):
    folder, _ = small_model
    for argv, message in _bad_input_cases(tmp_path, folder):
        if "--model" not in argv:
            argv = argv + ["--model", folder]
        out = str(tmp_path / "out")
        if "--out-dir" not in argv:
            argv = argv + ["--out-dir", out]
        code, err = run_cli(*argv)
        assert code == (2 if "argument --" in message else 1), (argv, err)
        assert message in error_line(err), (argv, err)
        assert not os.path.exists(out) or os.listdir(out) == [], argv


def test_load_models_errors_name_the_problem(tmp_path, small_model):
    folder, _ = small_model
    with pytest.raises(UmxError, match="no weights for target 'piano'"):
        load_models(folder, ["piano"])
    not_zip = str(tmp_path / "umx.zip")
    with open(not_zip, "w") as f:
        f.write("x")
    with pytest.raises(UmxError, match="neither a folder, a .zip nor an .h5 weight file"):
        load_models(not_zip, ["vocals"])


def test_demucs_format_flags_and_no_abbreviated_flags(tmp_path, capsys):
    """demucs' --flac and --mp3 choose the format; a prefix of a flag (umx's --residual NAME,
    --mp3 before it existed) is never taken for another flag."""
    from unmix_nnabla.cli.args import get_inference_args, get_train_args
    song = tmp_path / "song.wav"
    sf.write(str(song), music_like(0.5, 8000), 8000)
    assert get_inference_args([str(song), "--flac"]).ext == "flac"
    args = get_inference_args([str(song), "--mp3"])
    assert (args.ext, args.mp3_bitrate) == ("mp3", 320)
    assert get_inference_args([str(song)]).ext == "wav"
    for argv, needle in (([str(song), "--residual", "accompaniment"], "unrecognized"),
                         ([str(song), "--mp3-bit", "128"], "unrecognized"),
                         ([str(song), "--mp3", "--ext", "flac"], "not allowed with")):
        with pytest.raises(SystemExit) as info:
            get_inference_args(argv)
        assert info.value.code == 2
        assert needle in capsys.readouterr().err
    with pytest.raises(SystemExit):
        get_train_args(["--umx-tr"])  # no prefix of --umx-train
    assert "unrecognized" in capsys.readouterr().err


def test_args_script_prints_the_front_doors_flags():
    """`args.py` (Sony's layout keeps the parsers there) prints each named script's own flags,
    all of them without a name; a name that is no front door: one line, exit 2."""
    code, out, err = run_script("args", "train")
    assert code == 0 and "--umx-train" in out and "--estimates" not in out
    code, out, err = run_script("args", "eval", "data")
    assert code == 0 and "--estimates" in out and "--generate" in out and "--umx-train" not in out
    code, out, err = run_script("args")
    assert code == 0 and [line for line in out.splitlines() if line.startswith("# ")] == \
        ["# train.py", "# test.py", "# eval.py", "# data.py", "# convert.py"]
    code, out, err = run_script("args", "separate")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "'separate'" in err
