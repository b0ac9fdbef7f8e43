"""Data-parallel training under mpirun on CPUs (Open MPI + mpi4py)."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, assert_trained, checkpoint
from unmix_nnabla.data.synth import generate_dataset

pytestmark = pytest.mark.mpi

MPIRUN = shutil.which("mpirun")


def _mpi4py():
    try:
        import mpi4py  # noqa: F401
        return True
    except ImportError:
        return False


if not MPIRUN or not _mpi4py():
    if os.environ.get("UMX_REQUIRE_MPI"):
        raise RuntimeError("UMX_REQUIRE_MPI is set but Open MPI or mpi4py is missing")
    pytest.skip("needs Open MPI and mpi4py (apt-get install -y openmpi-bin libopenmpi-dev && "
                "pip install mpi4py)", allow_module_level=True)


def mpirun(n, *argv):
    cmd = [MPIRUN, "-n", str(n), "--allow-run-as-root", "--oversubscribe",
           "-x", "PYTHONPATH=" + ROOT, sys.executable, *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return generate_dataset(str(tmp_path_factory.mktemp("synth")), nb_train=3, nb_test=0,
                            duration=1.0, seed=4, progress=False)


def load(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def test_ranks_end_with_identical_parameters(root, tmp_path):
    out = str(tmp_path / "mpi")
    code, log = mpirun(2, "tests/mpi_steps.py", root, out, "--batch", "2", "--steps", "3")
    assert code == 0, log
    a, b = load(os.path.join(out, "rank0.npz")), load(os.path.join(out, "rank1.npz"))
    assert a.keys() == b.keys() and len(a) > 10
    for name in a:
        assert np.array_equal(a[name], b[name]), name


@pytest.mark.parametrize("ranks", [2, 4])
def test_n_ranks_equal_one_rank_with_n_times_the_batch(root, tmp_path, ranks):
    """Gradient averaging: with batch-independent normalization (frozen BN statistics) and
    per-sample dropout masks, N ranks x batch B take the same steps as 1 rank x batch N B
    (4 ranks: more ranks than this machine's cores, --oversubscribe, as several nodes would)."""
    many, one = str(tmp_path / "many"), str(tmp_path / "one")
    batch = 4 // ranks
    code, log = mpirun(ranks, "tests/mpi_steps.py", root, many, "--batch", str(batch),
                       "--steps", "3", "--freeze-bn")
    assert code == 0, log
    proc = subprocess.run([sys.executable, "tests/mpi_steps.py", root, one, "--batch", "4",
                           "--steps", "3", "--freeze-bn"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    a, b = load(os.path.join(many, "rank0.npz")), load(os.path.join(one, "rank0.npz"))
    for name in a:
        assert np.allclose(a[name], b[name], rtol=1e-4, atol=1e-5), name
    for rank in range(1, ranks):  # every rank ends with rank 0's parameters
        other = load(os.path.join(many, "rank%d.npz" % rank))
        assert all(np.array_equal(a[n], other[n]) for n in a)
    # and the steps did change the parameters (the comparison is not between initial values)
    code, log = mpirun(2, "tests/mpi_steps.py", root, str(tmp_path / "zero"), "--batch", "2",
                       "--steps", "0", "--freeze-bn")
    assert code == 0, log
    start = load(os.path.join(str(tmp_path / "zero"), "rank0.npz"))
    moved = sum(not np.allclose(start[n], a[n]) for n in a)
    assert moved > 5


def test_train_py_under_mpirun_writes_once(root, tmp_path):
    out = str(tmp_path / "out")
    code, log = mpirun(2, "train.py", "--umx-train", "--root", root, "--is-wav", "--source", "drums", "--output",
                       out, "--epochs", "2", "--batch-size", "2", "--hidden-size", "8", "--nfft",
                       "256", "--nhop", "64", "--seq-dur", "0.25", "--samples-per-track", "4",
                       "--context", "cpu")
    assert code == 0, log
    summary = json.load(open(os.path.join(out, "drums.json")))
    assert summary["nb_processes"] == 2 and len(summary["history"]) == 2
    after_two, _ = checkpoint(out, "drums")
    assert "training UMX for 'drums' on 2 processes (mpirun)" in log
    assert sorted(os.listdir(out)) == ["data-check.json", "drums.checkpoint", "drums.h5", "drums.json",
                                       "drums_loss.png", "drums_monitor"]
    # resuming a multi-process run
    code, log = mpirun(2, "train.py", "--umx-train", "--root", root, "--is-wav", "--source", "drums", "--output",
                       out, "--epochs", "3", "--batch-size", "2", "--hidden-size", "8", "--nfft",
                       "256", "--nhop", "64", "--seq-dur", "0.25", "--samples-per-track", "4",
                       "--context", "cpu")
    assert code == 0, log
    assert "resuming drums from epoch 2" in log
    assert len(json.load(open(os.path.join(out, "drums.json")))["history"]) == 3
    # the third epoch trained every parameter: 2 training tracks (one is held out for
    # validation) x 4 samples / (2 ranks x batch 2), 2 steps an epoch
    assert_trained(after_two, out, "drums", steps=6)


def test_an_error_on_one_rank_stops_all(root, tmp_path):
    code, log = mpirun(2, "train.py", "--umx-train", "--root", root, "--is-wav", "--source", "piano",
                       "--output", str(tmp_path / "o"), "--epochs", "1", "--context", "cpu")
    assert code != 0
    assert "unknown --source 'piano'" in log
