"""eval.py: museval scoring, the published aggregation, resume, parallel runs, bad inputs."""
import json
import os
import shutil

import numpy as np
import pytest

from conftest import run_script
from unmix_nnabla.base.vocabulary import SOURCES
from unmix_nnabla.data.synth import generate_dataset

from unmix_nnabla.scoring import scores as scoring
@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return generate_dataset(str(tmp_path_factory.mktemp("synth")), nb_train=1, nb_test=2,
                            duration=3.0, seed=5, progress=False)


def run_eval(*argv):
    return run_script("eval", *argv)


def estimates_from(root, tmp_path, name, pick):
    """A musdb-layout estimates folder whose target files are pick(track_folder, target)."""
    folder = str(tmp_path / name)
    for track in os.listdir(os.path.join(root, "test")):
        os.makedirs(os.path.join(folder, "test", track))
        for target in SOURCES:
            shutil.copyfile(pick(os.path.join(root, "test", track), target),
                            os.path.join(folder, "test", track, target + ".wav"))
    return folder


def test_known_estimates_score_as_expected(root, tmp_path):
    perfect = estimates_from(root, tmp_path, "perfect", lambda t, s: os.path.join(t, s + ".wav"))
    mixture = estimates_from(root, tmp_path, "mixture", lambda t, s: os.path.join(t, "mixture.wav"))
    tables = {}
    track = sorted(os.listdir(os.path.join(root, "test")))[0]  # one track each: museval is slow
    for name, est in (("perfect", perfect), ("mixture", mixture)):
        out = str(tmp_path / ("eval-" + name))
        code, stdout, err = run_eval("--estimates", est, "--root", root, "--is-wav", "--out-dir", out,
                                     "--tracks", track)
        assert code == 0, err
        tables[name] = scoring.aggregate([os.path.join(out, "test", track + ".json")])[0]
        assert os.path.isfile(os.path.join(out, "results.md"))
        assert os.path.isfile(os.path.join(out, "sdr_boxplot.png"))
        assert "| vocals |" in stdout
    for target in SOURCES:
        assert tables["perfect"].loc[target, "SDR"] > 40
        assert tables["mixture"].loc[target, "SDR"] < 5


def _museval_json(name, frames):
    """A museval track JSON: frames = {target: {metric: [values]}}."""
    return {"name": name, "targets": [
        {"name": target, "frames": [
            {"time": float(i), "duration": 1.0,
             "metrics": {m: values[m][i] for m in scoring.METRICS}}
            for i in range(len(next(iter(values.values()))))]}
        for target, values in frames.items()]}


def test_aggregation_is_median_of_frames_then_median_of_tracks(tmp_path):
    rng = np.random.RandomState(0)
    data = {}
    paths = []
    for k, nb_frames in enumerate((5, 8, 3)):
        data[k] = {t: {m: list(rng.randn(nb_frames) * 5 + 3) for m in scoring.METRICS}
                   for t in ("vocals", "drums")}
        data[k]["vocals"]["SDR"][1] = float("nan")  # silent frames are NaN in museval's JSON
        path = str(tmp_path / ("track%d.json" % k))
        with open(path, "w") as f:
            f.write(json.dumps(_museval_json("track%d" % k, data[k])).replace("NaN", "NaN"))
        paths.append(path)
    table, per_track, unscored = scoring.aggregate(paths)
    assert unscored["vocals"] == (3, 16) and unscored["drums"] == (0, 16)
    for target in ("vocals", "drums"):
        for metric in scoring.METRICS:
            by_track = [np.nanmedian(data[k][target][metric]) for k in data]
            assert table.loc[target, metric] == pytest.approx(np.median(by_track))
    assert per_track.shape == (3, 2)


def test_resume_skips_scored_tracks_and_cores_give_the_same_json(root, tmp_path):
    perfect = estimates_from(root, tmp_path, "est", lambda t, s: os.path.join(t, s + ".wav"))
    serial, parallel = str(tmp_path / "serial"), str(tmp_path / "parallel")
    assert run_eval("--estimates", perfect, "--root", root, "--is-wav", "--out-dir", serial)[0] == 0
    assert run_eval("--estimates", perfect, "--root", root, "--is-wav", "--out-dir", parallel,
                    "--cores", "2")[0] == 0
    names = sorted(os.listdir(os.path.join(root, "test")))
    for name in names:
        a = json.load(open(os.path.join(serial, "test", name + ".json")))
        b = json.load(open(os.path.join(parallel, "test", name + ".json")))
        assert a == b
    # resume: a finished track's JSON is not rewritten, a missing one is computed
    done = os.path.join(serial, "test", names[0] + ".json")
    marked = json.load(open(done))
    marked["name"] = "kept from the first run"
    json.dump(marked, open(done, "w"))
    os.remove(os.path.join(serial, "test", names[1] + ".json"))
    code, stdout, err = run_eval("--estimates", perfect, "--root", root, "--is-wav", "--out-dir",
                                 serial)
    assert code == 0, err
    assert "1 of 2 tracks already scored" in stdout
    assert json.load(open(done))["name"] == "kept from the first run"
    assert os.path.isfile(os.path.join(serial, "test", names[1] + ".json"))


@pytest.mark.slow
def test_real_stem_clip_separated_and_scored(tmp_path, small_model, stem_clip):
    """STEMS MUSDB root holding the stempeg clip and one undecodable track."""
    folder, _ = small_model
    stems_root = str(tmp_path / "musdb")
    os.makedirs(os.path.join(stems_root, "test"))
    shutil.copyfile(stem_clip, os.path.join(stems_root, "test", os.path.basename(stem_clip)))
    with open(os.path.join(stems_root, "test", "Broken - Track.stem.mp4"), "wb") as f:
        f.write(b"\x00" * 1000)
    out = str(tmp_path / "out")
    code, stdout, err = run_eval("--umx-infer", "--model", folder, "--root", stems_root,
                                 "--out-dir", out, "--niter", "0")
    # the undecodable track is named, the other one scored, and the exit code says one failed
    assert code == 1, err
    assert "track 'Broken - Track' skipped" in err
    assert err.strip().splitlines()[-1].startswith("error: 1 of 2 tracks could not be scored")
    name = os.path.basename(stem_clip)[: -len(".stem.mp4")]
    scores = json.load(open(os.path.join(out, "test", name + ".json")))
    assert sorted(t["name"] for t in scores["targets"]) == sorted(SOURCES)
    assert sorted(os.listdir(os.path.join(out, "test", name))) == sorted(s + ".wav" for s in SOURCES)


def test_bad_eval_inputs(root, tmp_path, small_model):
    folder, _ = small_model
    blocker = str(tmp_path / "file")
    open(blocker, "w").close()
    cases = [
        (["--model", folder, "--out-dir", str(tmp_path / "o")], "--root is required"),
        (["--model", folder, "--root", str(tmp_path / "none"), "--out-dir", str(tmp_path / "o")],
         "argument --root: %s not found" % (tmp_path / "none")),
        (["--model", folder, "--root", root, "--subset", "train", "--is-wav", "--out-dir",
          str(tmp_path / "o"), "--tracks", "Nope"], "no track 'Nope'"),
        (["--model", folder, "--root", str(tmp_path), "--out-dir", str(tmp_path / "o")],
         "no 'test' folder"),
        (["--model", folder, "--root", root, "--is-wav", "--out-dir", str(tmp_path / "o"),
          "--targets", "vocals", "piano"], "no weights for target 'piano'"),
        (["--model", folder, "--root", root, "--is-wav", "--out-dir", os.path.join(blocker, "o")],
         "cannot write to --out-dir"),
    ]
    for argv, message in cases:
        code, _, err = run_eval(*argv)
        assert code == (2 if "argument --" in message else 1), (argv, err)
        lines = [l for l in err.splitlines() if l.startswith("error:")]
        assert len(lines) == 1 and message in lines[0], (argv, err)


def test_published_scores_beside_ours():
    import pandas as pd
    assert scoring.paper_model("models/x-umx.h5") == "x-umx"
    assert scoring.paper_model("umxhq.zip") == "umxhq"
    assert scoring.paper_model("umx/") == "umx" and scoring.paper_model("mine/") is None
    table = pd.DataFrame([[7.0, 1.0, 2.0, 3.0]], index=["vocals"], columns=scoring.METRICS)
    line = scoring.format_table(table, {"vocals": (2, 10)}, "x-umx").splitlines()[-1]
    assert line == "| vocals | 7.00 | 6.61 | 1.00 | - | 2.00 | - | 3.00 | - | 2 of 10 |"
