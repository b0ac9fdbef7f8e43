"""train.py: statistics, learning, outputs, resume after a kill, bad inputs."""
import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import nnabla as nn
import nnabla.solvers as S
import pytest

from conftest import ROOT, run_script
from unmix_nnabla.data.datasets import MusdbSamples, epoch_batches
from unmix_nnabla.data.tracks import load_tracks
from unmix_nnabla.data.synth import generate_dataset
from unmix_nnabla.networks.layout import UmxConfig
from unmix_nnabla.audio.spectral import stft
from unmix_nnabla.training.standardization import compute_statistics

from unmix_nnabla.training import graph as train_graph, step as training_step

SMALL_ARGS = ["--umx-train", "--is-wav", "--source", "bass", "--batch-size", "4", "--hidden-size", "16",
              "--nfft", "512", "--nhop", "128", "--samples-per-track", "2", "--seq-dur", "0.5",
              "--context", "cpu", "--seed", "3"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return generate_dataset(str(tmp_path_factory.mktemp("synth")), nb_train=6, nb_test=1,
                            duration=3.0, seed=2, progress=False)


def run_train(*argv):
    """(exit code, stderr) of train.py."""
    code, _, err = run_script("train", *argv)
    return code, err


def read_params(path):
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
    return out


def test_statistics_match_numpy(root):
    tracks = load_tracks(root, True, "train")
    mean, std = compute_statistics((t.read("mixture") for t in tracks), 512, 128,
                                                progress=False)
    frames = np.concatenate([np.abs(stft(t.read("mixture").T, 512, 128)).mean(axis=0)
                             for t in tracks])
    assert np.allclose(mean, frames.mean(axis=0), rtol=1e-4, atol=1e-6)
    ref_std = np.maximum(frames.std(axis=0), 1e-4 * frames.std(axis=0).max())
    assert np.allclose(std, ref_std, rtol=1e-3, atol=1e-6)


def test_training_steps_lower_the_loss(root):
    tracks = load_tracks(root, True, "train")
    cfg = UmxConfig(hidden_size=16, max_bin=100, nb_output_bins=257, n_fft=512, n_hop=128)
    mean, std = compute_statistics((t.read("mixture") for t in tracks), 512, 128,
                                                progress=False)
    ds = MusdbSamples(tracks, "vocals", seq_dur=0.5, samples_per_track=2, seed=0)
    graph = train_graph.build_training_graph(cfg, "vocals", 4, 22050, mean, std)
    solver = S.Adam(alpha=0.01)
    with nn.parameter_scope("vocals"):
        solver.set_parameters(nn.get_parameters())
    losses = [training_step.train_step(graph, solver, x, y, cfg, 1e-5,
                                      training_step.dropout_rngs(0, epoch, i))
              for epoch in range(4) for i, x, y in epoch_batches(ds, 0, 4, with_indices=True)]
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])


def test_training_writes_loadable_outputs(root, tmp_path):
    out = str(tmp_path / "out")
    code, err = run_train("--root", root, "--output", out, "--epochs", "2", *SMALL_ARGS)
    assert code == 0, err
    files = set(os.listdir(out))
    assert {"bass.h5", "bass.json", "bass_loss.png", "bass.checkpoint", "bass_monitor"} <= files
    summary = json.load(open(os.path.join(out, "bass.json")))
    assert [h["epoch"] for h in summary["history"]] == [1, 2]
    assert summary["config"]["n_hop"] == 128 and summary["args"]["hidden_size"] == 16
    assert all(np.isfinite(h["train_loss"]) and h["lr"] > 0 for h in summary["history"])
    assert os.listdir(os.path.join(out, "bass_monitor"))
    # the weights load in test.py's loader with the official layout
    from unmix_nnabla.models.hub import load_models
    cfgs = load_models(out, ["bass"])
    assert cfgs["bass"] == UmxConfig(hidden_size=16, max_bin=186, nb_output_bins=257, n_fft=512,
                                     n_hop=128)
    code, _, err = run_script("test", "--inputs",
                              os.path.join(root, "test", "Synth Test 00", "mixture.wav"),
                              "--model", out, "--targets", "bass", "--out-dir", str(tmp_path / "sep"))
    assert code == 0, err
    assert sorted(os.listdir(str(tmp_path / "sep" / "out" / "mixture"))) == ["accompaniment.wav",
                                                                      "bass.wav"]


def test_killed_and_resumed_equals_uninterrupted(root, tmp_path):
    whole, resumed = str(tmp_path / "whole"), str(tmp_path / "resumed")
    args = ["--root", root, "--epochs", "3", "--nb-workers", "2", *SMALL_ARGS]
    code, err = run_train("--output", whole, *args)
    assert code == 0, err
    # kill -9 the same run as soon as its first epoch is checkpointed
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), "--output", resumed,
                             *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = os.path.join(resumed, "bass.checkpoint", "state.json")
    deadline = time.time() + 120
    while not os.path.exists(state) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.load(open(state))["epoch"] < 3
    code, err = run_train("--output", resumed, *args)
    assert code == 0, err
    a = read_params(os.path.join(whole, "bass.checkpoint", "parameters.h5"))
    b = read_params(os.path.join(resumed, "bass.checkpoint", "parameters.h5"))
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    history = json.load(open(os.path.join(resumed, "bass.json")))["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]


def test_bad_training_inputs(root, tmp_path):
    blocker = str(tmp_path / "file")
    open(blocker, "w").close()
    cases = [
        (["--root", str(tmp_path / "missing")], "argument --root: %s not found" % (tmp_path / "missing")),
        (["--root", str(tmp_path)], "no 'train' folder"),
        (["--root", root, "--source", "piano"], "unknown --source 'piano'"),
        (["--root", root, "--seq-dur", "60"], "longer than every training track"),
        (["--root", root, "--output", os.path.join(blocker, "out")], "cannot write to --output"),
    ]
    for argv, message in cases:
        full = argv + (["--output", str(tmp_path / "o")] if "--output" not in argv else [])
        base = [a for a in SMALL_ARGS]
        for flag in ("--source", "--seq-dur"):
            if flag in argv:
                i = base.index(flag)
                del base[i:i + 2]
        code, err = run_train(*full, *base, "--epochs", "1")
        assert code == (2 if "argument --" in message else 1), (argv, err)
        lines = [l for l in err.splitlines() if l.startswith("error:")]
        assert len(lines) == 1 and message in lines[0], (argv, err)
