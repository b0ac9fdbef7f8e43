"""The compiled core side by side: threads that launch parallel loops at once take turns
(numba's workqueue layer aborts the process on a concurrent launch)."""
import os
import subprocess
import sys

from conftest import ROOT


def test_threads_launching_parallel_loops_at_once_never_abort():
    script = os.path.join(ROOT, "tests", "parallel_launches.py")
    for _ in range(5):  # 4 threads x 200 launches each time
        proc = subprocess.run([sys.executable, script], capture_output=True, text=True)
        assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-500:]


def test_the_warm_up_beside_the_work_takes_turns():
    """A process's first separation races the compiled loops' warm-up thread (test.py's
    `load_compiled_loops(background=True)`): each launch waits for the other."""
    code = ("import numpy as np\n"
            "from unmix_nnabla.base import kernels\n"
            "from unmix_nnabla.separation import separator\n"
            "separator.load_compiled_loops(background=True)\n"
            "for _ in range(300):\n"
            "    kernels.lstm_forward(np.ones((8, 2, 2, 16), np.float32),\n"
            "                         np.ones((2, 16, 4), np.float32), (False, True))\n"
            "separator.load_compiled_loops()\n"
            "print('ok')\n")
    for _ in range(5):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-500:]
