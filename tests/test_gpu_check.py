"""`make gpu-check`'s script, run in CPU mode: every step of it, so that no typo waits for a
GPU to be found."""
import pytest

from conftest import run_script


def test_gpu_check_runs_every_step_on_the_cpu():
    code, stdout, err = run_script("gpu_check", "--cpu-mode")
    assert code == 0, stdout + err
    for step in ("1. fused LSTM", "tolerance 1e-04: ok", "2. a training step", "fused    LSTM:",
                 "unrolled LSTM:", "3. test.py on real music", "4. training and evaluation",
                 "eval.py:", "all checks passed"):
        assert step in stdout, (step, stdout)


def test_without_a_gpu_it_says_so_and_succeeds():
    from context import gpu_available
    if gpu_available():
        pytest.skip("a GPU is here: `make gpu-check` checks it")
    code, stdout, _ = run_script("gpu_check")
    assert code == 0 and stdout.strip().splitlines()[-1].startswith("no GPU")
