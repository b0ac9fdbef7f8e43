"""Threads launching the compiled parallel loops side by side (test_kernels.py runs it in a
subprocess: numba's abort would otherwise end the test session).

    python tests/parallel_launches.py [--bypass-lock]

prints "ok"; with --bypass-lock (the compiled loops called without `kernels.parallel_loop`'s
lock) numba's workqueue layer aborts the process: the check can fail."""
import sys
import threading

import numpy as np

from unmix_nnabla.base import kernels


def main(bypass, threads=4, launches=200):
    lstm = kernels.forward.kernel if bypass else kernels.forward
    covariance = kernels.wiener_covariance.kernel if bypass else kernels.wiener_covariance
    rng = np.random.RandomState(0)
    proj = rng.rand(50, 2, 4, 32).astype(np.float32)  # (frames, samples, groups, 4H)
    w_t = (rng.rand(4, 8, 32) * 0.1).astype(np.float32)
    unused = np.empty((1, 1, 1, 1), np.float32)
    y = (rng.rand(40, 64, 2, 3) + 1j).astype(np.complex64)  # (frames, bins, C, J)
    expected = {}

    def work(k):
        for _ in range(launches):
            if k % 2:
                hs = np.empty((50, 2, 4, 8), np.float32)
                lstm(proj, w_t, np.zeros(4, np.bool_), hs, unused, unused, unused, False)
                result = hs
            else:
                num = np.zeros((64, 2, 2, 3), np.complex128)
                covariance(y, num, np.zeros((64, 3)))
                result = num
            # every launch computes what a launch alone computes
            if expected.setdefault(k % 2, result) is not result:
                assert np.array_equal(expected[k % 2], result)

    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    print("ok")


if __name__ == "__main__":
    main("--bypass-lock" in sys.argv)
