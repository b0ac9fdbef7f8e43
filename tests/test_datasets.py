"""Your own data: the folder dataset kinds of open-unmix-pytorch, their checks, determinism
and mixtures; STEMS decoded once (`data.py --decode-stems`)."""
import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from unmix_nnabla.cli.args import get_train_args
from unmix_nnabla.data.datasets import data_config
from conftest import run_script
from unmix_nnabla.data.datasets import KINDS, epoch_batches, load_dataset

TINY = ["--umx-train", "--batch-size", "2", "--hidden-size", "8", "--nfft", "512", "--nhop", "256",
        "--seq-dur", "0.5", "--context", "cpu", "--epochs", "1"]
# each kind's flags on the layout `data.py --generate --kind` writes (`datasets.KINDS`), with
# small sample counts
FLAGS = {kind: list(KINDS[kind].example) + extra for kind, extra in {
    "aligned": ["--samples-per-track", "2"],
    "sourcefolder": ["--nb-train-samples", "6", "--nb-valid-samples", "2"],
    "trackfolder_fix": ["--samples-per-track", "2"],
    "trackfolder_var": ["--samples-per-track", "2"]}.items()}


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """Each kind's generated layout (3 train and 1 valid songs of 1.5 s), by data.py."""
    out = {}
    for kind in FLAGS:
        root = str(tmp_path_factory.mktemp(kind))
        shutil.rmtree(root)
        code, stdout, err = run_script("data", "--generate", root, "--kind", kind, "--nb-train",
                                       "3", "--nb-test", "1", "--duration", "1.5")
        assert code == 0, err
        out[kind] = root
    return out


def dataset(kind, root, *extra):
    args = get_train_args(["--root", root, "--dataset", kind] + TINY + FLAGS[kind] + list(extra))
    return load_dataset(data_config(args), log=lambda *a: None)


@pytest.mark.parametrize("kind", sorted(FLAGS))
def test_each_kind_trains_and_separates(kind, roots, tmp_path):
    out = str(tmp_path / "model")
    code, stdout, err = run_script("train", "--root", roots[kind], "--dataset", kind,
                                   "--output", out, *TINY, *FLAGS[kind])
    assert code == 0, err
    assert "training UMX for 'vocals'" in stdout
    summary = json.load(open(os.path.join(out, "vocals.json")))
    assert summary["dataset"]["kind"] == kind and summary["dataset"]["targets"] == ["vocals"]
    assert len(summary["dataset"]["train"]) >= 3 and summary["dataset"]["valid"]
    song = os.path.join(roots[kind], "valid", "Synth Test 00",
                        "mixture.wav" if kind == "aligned" else "vocals.wav")
    if kind == "sourcefolder":
        song = os.path.join(roots[kind], "valid", "vocals", "Synth Test 00.wav")
    elif kind == "trackfolder_fix":
        song = os.path.join(roots[kind], "valid", "Synth Test 00", "vocals.flac")
    code, _, err = run_script("test", "--inputs", song, "--model", out, "--targets", "vocals",
                              "--out-dir", str(tmp_path / "sep"), "--context", "cpu")
    assert code == 0, err
    song_name = os.path.splitext(os.path.basename(song))[0]
    assert sorted(os.listdir(str(tmp_path / "sep" / "model" / song_name))) == [
        "accompaniment.wav", "vocals.wav"]


@pytest.mark.parametrize("kind", sorted(FLAGS))
def test_samples_are_deterministic_and_mix_what_the_kind_says(kind, roots):
    data = dataset(kind, roots[kind])
    serial = list(epoch_batches(data.train, 2, 2, nb_workers=0, with_indices=True))
    threaded = list(epoch_batches(data.train, 2, 2, nb_workers=2, with_indices=True))
    assert len(serial) >= 2
    for (i0, x0, y0), (i1, x1, y1) in zip(serial, threaded):
        assert np.array_equal(i0, i1) and np.array_equal(x0, x1) and np.array_equal(y0, y1)
    assert not np.array_equal(serial[0][1], list(epoch_batches(data.train, 3, 2))[0][0])
    # the mixture, read back from the files the sample names (no augmentation)
    for index in range(len(data.train)):
        mixture, target = data.train.sample(0, index, augmentations=[])
        parts, _ = data.train.draws(0, index)
        read = {(name, role): (track.mixture if role == "input" else track.sources[name])
                .read(first, frames) for name, role, track, first, frames in parts}
        if kind == "aligned":
            assert [role for _, role in read] == ["target", "input"]
            assert np.array_equal(mixture, read[("mixture", "input")])
            # input and output from one position of one track
            assert len({(track.name, first) for _, _, track, first, _ in parts}) == 1
        else:
            assert np.allclose(mixture, sum(read.values()), atol=1e-6)
            expected = {"sourcefolder": 4, "trackfolder_fix": 4}.get(kind)
            assert expected is None or len(parts) == expected
        assert np.array_equal(target, read[("vocals", "target")])


def test_augmentations_keep_aligned_pairs_aligned(roots):
    data = dataset("aligned", roots["aligned"])
    for index in range(len(data.train)):
        mixture, target = data.train.sample(1, index)
        plain_mix, plain_target = data.train.sample(1, index, augmentations=[])
        ratio = np.sum(mixture * plain_mix) / np.sum(plain_mix ** 2)
        if np.allclose(mixture, ratio * plain_mix, atol=1e-5):  # gain only
            assert np.allclose(target, ratio * plain_target, atol=1e-5)
        else:  # gain and channel swap
            ratio = np.sum(mixture * plain_mix[:, ::-1]) / np.sum(plain_mix ** 2)
            assert np.allclose(target, ratio * plain_target[:, ::-1], atol=1e-5)


def _bad(kind, roots, tmp_path, change):
    root = str(tmp_path / "data")
    shutil.copytree(roots[kind], root)
    change(root)
    return root


def _rewrite(path, transform):
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    fmt = "FLAC" if path.endswith(".flac") else "WAV"
    sf.write(path, transform(audio), rate, format=fmt, subtype="PCM_24" if fmt == "FLAC" else "FLOAT")


def test_bad_folder_data_is_named_before_training(roots, tmp_path):
    track = os.path.join("train", "Synth 01")
    cases = [
        ("aligned", lambda r: shutil.rmtree(os.path.join(r, "valid")), "has no 'valid' folder"),
        ("trackfolder_var", lambda r: [shutil.rmtree(os.path.join(r, "train", t))
                                       for t in os.listdir(os.path.join(r, "train"))],
         "holds no track folder"),
        ("trackfolder_fix", lambda r: os.remove(os.path.join(r, track, "bass.flac")),
         "%s (--interferer-files bass.flac)" % os.path.join("train", "Synth 01", "bass.flac")),
        ("trackfolder_var", lambda r: os.remove(os.path.join(r, track, "vocals.wav")),
         "track 'Synth 01' has no"),
        ("sourcefolder", lambda r: [os.remove(os.path.join(r, "train", "bass", f))
                                    for f in os.listdir(os.path.join(r, "train", "bass"))],
         "holds no .wav file"),
        ("aligned", lambda r: _rewrite(os.path.join(r, track, "vocals.wav"), lambda a: a[:-300]),
         "the files of a track need one length"),
        ("trackfolder_fix", lambda r: _rewrite(os.path.join(r, track, "drums.flac"),
                                               lambda a: a[:-300]),
         "the files of a track need one length"),
        ("sourcefolder", lambda r: open(os.path.join(r, "valid", "other", "Synth Test 00.wav"),
                                        "wb").write(b"RIFF" + b"\0" * 40), "cannot read"),
        # a file that gives the target's name again would silently replace the target
        ("trackfolder_var", lambda r: shutil.copyfile(os.path.join(r, track, "vocals.wav"),
                                                      os.path.join(r, track, "vocals.WAV")),
         "both give the source 'vocals'"),
        ("trackfolder_var", lambda r: [os.rename(os.path.join(r, track, f),
                                                 os.path.join(r, track, f[:-4] + ".flac"))
                                       for f in os.listdir(os.path.join(r, track))],
         "holds no .wav file (--ext .wav; it holds"),
    ]
    for k, (kind, change, message) in enumerate(cases):
        root = _bad(kind, roots, tmp_path / str(k), change)
        out = str(tmp_path / str(k) / "out")
        code, _, err = run_script("train", "--root", root, "--dataset", kind, "--output", out,
                                  *TINY, *FLAGS[kind])
        assert code == 1, (kind, message, err)
        line = [l for l in err.strip().splitlines() if l.strip()][-1]
        assert line.startswith("error: ") and message in line, (kind, message, err)
        assert "Traceback" not in err and not os.path.exists(out), (kind, message)


def test_short_files_are_skipped_or_refused(roots, tmp_path):
    root = _bad("sourcefolder", roots, tmp_path, lambda r: _rewrite(
        os.path.join(r, "train", "drums", "Synth 00.wav"), lambda a: a[:4410]))
    out = str(tmp_path / "out")
    code, stdout, err = run_script("train", "--root", root, "--dataset", "sourcefolder",
                                   "--output", out, *TINY, *FLAGS["sourcefolder"])
    assert code == 0, err
    assert "shorter than --seq-dur 0.5 s are not drawn from: drums/Synth 00.wav" in stdout
    code, _, err = run_script("train", "--root", root, "--dataset", "sourcefolder",
                              "--output", str(tmp_path / "o2"), *TINY[:-6], "--seq-dur", "5",
                              "--context", "cpu", "--epochs", "1", *FLAGS["sourcefolder"])
    assert code == 1 and "--seq-dur 5.00 s is longer than every file of the folder" in err, err


def test_flags_that_a_kind_does_not_take(roots):
    cases = [
        (["--dataset", "musdb", "--input-file", "a.wav"],
         "argument --input-file: --dataset musdb does not take it"),
        (["--dataset", "aligned", "--input-file", "a.wav"], "--dataset aligned needs --output-file"),
        (["--dataset", "sourcefolder", "--target-dir", "v", "--interferer-dirs", "d",
          "--samples-per-track", "4"], "argument --samples-per-track: --dataset sourcefolder"),
        (["--dataset", "trackfolder_var", "--target-file", "v.wav", "--random-track-mix"],
         "argument --random-track-mix: --dataset trackfolder_var does not take it"),
        (["--dataset", "trackfolder_fix", "--target-file", "v.wav", "--interferer-files", "d.wav",
          "--source", "drums"], "argument --source: --dataset trackfolder_fix takes the target"),
        (["--dataset", "aligned", "--input-file", "a.wav", "--output-file", "b.wav"],
         "--dataset aligned needs --root"),
        # a file or folder that would be both the target and an interferer
        (["--dataset", "trackfolder_fix", "--root", roots["trackfolder_fix"], "--target-file",
          "vocals.flac", "--interferer-files", "vocals.wav", "drums.flac"],
         "argument vocals.flac (--target-file) and vocals.wav (--interferer-files) both give the "
         "source 'vocals'"),
        (["--dataset", "trackfolder_fix", "--root", roots["trackfolder_fix"], "--target-file",
          "vocals.flac", "--interferer-files", "drums.flac", "drums.wav"],
         "drums.flac (--interferer-files) and drums.wav (--interferer-files) both give"),
        (["--dataset", "sourcefolder", "--root", roots["sourcefolder"], "--target-dir", "vocals",
          "--interferer-dirs", "drums", "vocals/"], "both give the source 'vocals'"),
        (["--dataset", "aligned", "--root", roots["aligned"], "--input-file", "vocals.wav",
          "--output-file", "vocals.wav"], "both give the source 'vocals'"),
        (["--dataset", "trackfolder_var", "--root", roots["trackfolder_var"], "--target-file",
          "vocals.wav", "--ext", ".flac"],
         "argument --target-file: vocals.wav does not end with --ext .flac"),
    ]
    for flags, message in cases:
        code, _, err = run_script("train", "--umx-train", *flags, "--output", "/nonexistent/o")
        assert code == 2 and message in err, (flags, err)
    code, _, err = run_script("train", "--dataset", "aligned", "--root", roots["aligned"],
                              "--input-file", "mixture.wav", "--output-file", "vocals.wav")
    assert code == 2 and "X-UMX trains on MUSDB18's four stems" in err


def test_decode_stems_resumes(tmp_path, stem_clip):
    import stempeg
    src = str(tmp_path / "musdb")
    for subset, name in (("train", "A - One"), ("train", "B - Two"), ("test", "C - Three")):
        os.makedirs(os.path.join(src, subset), exist_ok=True)
        shutil.copyfile(stem_clip, os.path.join(src, subset, name + ".stem.mp4"))
    dst = str(tmp_path / "wav")
    code, stdout, err = run_script("data", "--decode-stems", src, dst)
    assert code == 0, err
    assert "3 tracks decoded" in stdout
    stems, rate = stempeg.read_stems(stem_clip, dtype=np.float32)
    for j, name in enumerate(["mixture", "drums", "bass", "other", "vocals"]):
        audio, file_rate = sf.read(os.path.join(dst, "test", "C - Three", name + ".wav"),
                                   dtype="float32")
        assert file_rate == rate and np.array_equal(audio, stems[j])
    # a run killed in the middle of a track: its folder holds a half-written staging folder
    shutil.rmtree(os.path.join(dst, "train", "B - Two"))
    os.makedirs(os.path.join(dst, "train", "B - Two", ".tmp-umx-killed"))
    open(os.path.join(dst, "train", "B - Two", ".tmp-umx-killed", "drums.wav"), "w").close()
    before = os.path.getmtime(os.path.join(dst, "train", "A - One", "vocals.wav"))
    code, stdout, err = run_script("data", "--decode-stems", src, dst)
    assert code == 0 and "1 tracks decoded" in stdout, err
    assert os.path.getmtime(os.path.join(dst, "train", "A - One", "vocals.wav")) == before
    assert sorted(os.listdir(os.path.join(dst, "train", "B - Two"))) == \
        sorted(n + ".wav" for n in ["mixture", "drums", "bass", "other", "vocals"])
    # and trains as a WAV MUSDB18 root
    from unmix_nnabla.data.tracks import load_tracks
    assert [t.name for t in load_tracks(dst, True, "train")] == ["A - One", "B - Two"]
