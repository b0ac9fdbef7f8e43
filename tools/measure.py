"""Measuring helpers shared by the benchmark and the GPU check: real music of any length,
worker processes run and timed (killed with their parent), and the memory of a process tree
(PSS: shared pages split among their users)."""
import json
import os
import subprocess
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATE = 44100


def _clip():
    import stempeg
    clip, clip_rate = stempeg.read_stems(stempeg.example_stem_path(), stem_id=0,
                                         dtype=np.float32)
    assert clip_rate == RATE
    return clip


def song(seconds):
    """`seconds` of real music: the stempeg clip's mixture (6 s of MUSDB18), looped.
    [shape=(T, 2)]"""
    clip = _clip()
    reps = int(np.ceil(seconds * RATE / clip.shape[0]))
    return np.ascontiguousarray(np.tile(clip, (reps, 1))[: int(seconds * RATE)])


def write_song(path, seconds):
    """`song(seconds)` as a float WAV, written clip by clip (any length fits in memory)."""
    import soundfile as sf
    clip, remaining = _clip(), int(seconds * RATE)
    with sf.SoundFile(path, "w", RATE, 2, "FLOAT", format="WAV") as f:
        while remaining > 0:
            f.write(clip[:remaining])
            remaining -= clip.shape[0]


def tree_pss_mb(pid):
    """Sum of the PSS of a process and all its descendants, in MB (0 once it has exited)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open("/proc/%d/smaps_rollup" % p) as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
            for task in os.listdir("/proc/%d/task" % p):
                with open("/proc/%d/task/%s/children" % (p, task)) as f:
                    todo.extend(int(c) for c in f.read().split())
        except (OSError, StopIteration):
            pass
    return total / 1024


def run_json(cmd, sample_memory=False, env=None):
    """Run a worker (killed if this process dies) → the JSON of its last output line, with
    its wall time (`process_wall`) and, with sample_memory, its peak PSS (`peak_mb`, sampled
    every 0.1 s: reading PSS costs the kernel time, so timed runs are not sampled). A failed
    worker ends the measurement with its error."""
    from unmix_nnabla.base.processes import die_with_parent
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, cwd=ROOT, env=env,
                                preexec_fn=die_with_parent)
        peak = 0.0
        while proc.poll() is None:
            if sample_memory:
                peak = max(peak, tree_pss_mb(proc.pid))
            time.sleep(0.1 if sample_memory else 0.01)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode:
        raise SystemExit("worker failed: %s\n%s" % (" ".join(cmd[:4]), stderr[-3000:]))
    result = json.loads(stdout.strip().splitlines()[-1])
    result["process_wall"] = wall
    result["peak_mb"] = peak
    return result


def timed_and_sampled(cmd, env=None):
    """Run a worker twice: timed, then with its memory sampled → the first run's JSON with the
    second's peak PSS."""
    result = run_json(cmd, env=env)
    result["peak_mb"] = run_json(cmd, sample_memory=True, env=env)["peak_mb"]
    return result


def timed_blocks(blocks, timings):
    """The blocks, with the time spent writing them added to timings['write']."""
    timings.setdefault("write", 0.0)
    for block in blocks:
        start = time.perf_counter()
        yield block
        timings["write"] += time.perf_counter() - start


class PeakMemory:
    """Peak GPU memory in use (nvidia-smi, sampled) and peak host PSS of a process tree."""

    def __init__(self, pid=None, gpu=True):
        self.pid, self.gpu = pid or os.getpid(), gpu
        self.gpu_mb = self.host_mb = 0.0
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()

    def _sample(self):
        while self.running:
            self.host_mb = max(self.host_mb, tree_pss_mb(self.pid))
            if self.gpu:
                try:
                    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used",
                                          "--format=csv,noheader,nounits"], capture_output=True,
                                         text=True).stdout.split()
                except OSError:
                    out = []
                if out:
                    self.gpu_mb = max(self.gpu_mb, float(out[0]))
            time.sleep(0.2)
