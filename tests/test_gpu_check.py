"""`make gpu-check`'s script, run in CPU mode: every step of it, so that no typo waits for a
GPU to be found."""
import pytest

from conftest import run_script


def test_gpu_check_runs_every_step_on_the_cpu():
    code, stdout, err = run_script("tools/gpu_check", "--cpu-mode")
    assert code == 0, stdout + err
    for step in ("1. fused LSTM", "tolerance 1e-04: ok", "2. cuDNN's dropout",
                 "3. training steps against the CPU's", "UMX   on cpu", "X-UMX on cpu",
                 "loss 1e-4, gradients 1e-3: ok", "4. training speed", "fused    LSTM:",
                 "unrolled LSTM:", "every loss finite: ok", "5. test.py on real music",
                 "against the CPU's (>= 60: ok)", "6. training and evaluation", "eval.py:",
                 "all checks passed"):
        assert step in stdout, (step, stdout)


def test_without_a_gpu_it_says_why_and_succeeds():
    from unmix_nnabla.base.context import gpu_status
    usable, why = gpu_status()
    if usable:
        pytest.skip("a GPU is here: `make gpu-check` checks it")
    code, stdout, _ = run_script("tools/gpu_check", env={"PATH": "/usr/bin:/bin"})
    assert code == 0 and stdout.strip().splitlines()[-1] == "no GPU (%s): nothing to check" % why
