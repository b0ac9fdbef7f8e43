"""The side-by-side stress check (`make stress`, run by .ci/run): the separation paths that
once aborted under load, each run many times as a new process while CPU hogs keep every core
busy.

Paths: one target with its residual (`--targets vocals`), a model folder of one target, two
targets with the residual model, an X-UMX, `eval.py --targets vocals`, and a separation killed
(SIGKILL) the moment its first staging entry appears, then run again. A run passes when it
exits 0, prints no numba abort, writes every stem it promises (read back: finite, of the
song's length) and leaves no staging folder behind (a killed run's included). Any failed run
fails the check (exit 1).

    python tools/stress.py --runs 30
"""
import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import soundfile as sf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import unmix_nnabla.cli.args  # noqa: F401 (first: it quiets NNabla's import-time log lines)
from unmix_nnabla.networks.layout import UmxConfig
from unmix_nnabla.base.processes import die_with_parent
from unmix_nnabla.data.synth import generate_dataset, synth_track
from unmix_nnabla.models.random_weights import write_random_weights, write_random_xumx

SMALL = dict(hidden_size=16, max_bin=60, nb_output_bins=129, n_fft=256, n_hop=64,
             sample_rate=8000)
SECONDS = 4.0


def prepare(work):
    """Models, a song and a dataset in `work` → {path name: (command, stem files)}."""
    cfg = UmxConfig(**SMALL)
    write_random_weights(os.path.join(work, "umx"), cfg)
    write_random_weights(os.path.join(work, "vocals-only"), cfg, ["vocals"])
    write_random_xumx(os.path.join(work, "x-umx.h5"), cfg)
    rng = np.random.RandomState(0)
    sources = synth_track(SECONDS, rng, rate=cfg.sample_rate)
    song = os.path.join(work, "song.wav")
    sf.write(song, sum(sources.values()), cfg.sample_rate)
    generate_dataset(os.path.join(work, "musdb"), nb_train=1, nb_test=1, duration=1.5,
                     seed=0, progress=False)
    test = [sys.executable, os.path.join(ROOT, "test.py"), song, "-q"]
    return {
        "one target + residual": (test + ["--model", os.path.join(work, "umx"),
                                          "--targets", "vocals"], ["vocals", "accompaniment"]),
        "model of one target": (test + ["--model", os.path.join(work, "vocals-only")],
                                ["vocals", "accompaniment"]),
        "two targets + residual model": (
            test + ["--model", os.path.join(work, "umx"), "--targets", "vocals", "drums",
                    "--residual-model"], ["vocals", "drums", "residual"]),
        "x-umx": (test + ["--model", os.path.join(work, "x-umx.h5")],
                  ["vocals", "drums", "bass", "other"]),
        "killed at its staging, rerun": (
            test + ["--model", os.path.join(work, "umx"), "--targets", "vocals"],
            ["vocals", "accompaniment"], "kill first"),
        "eval.py --targets vocals": (
            [sys.executable, os.path.join(ROOT, "eval.py"), "-q", "--root",
             os.path.join(work, "musdb"), "--is-wav", "--model", os.path.join(work, "umx"),
             "--targets", "vocals"], None),
    }


def killed_at_staging(command, out):
    """Start the command into `out` and SIGKILL it as soon as a staging entry appears."""
    proc = subprocess.Popen(command + ["-o", out], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        if glob.glob(os.path.join(out, "**", ".tmp-umx-*"), recursive=True):
            break
        time.sleep(0.002)
    proc.kill()
    proc.wait()


def check_run(command, stems, out, song_frames, kill_first=False):
    """Run one command into `out` (after a run of it killed at its staging, with
    `kill_first`); → None, or what went wrong."""
    shutil.rmtree(out, ignore_errors=True)
    if kill_first:
        killed_at_staging(command, out)
    proc = subprocess.run(command + ["-o", out], capture_output=True, text=True,
                          preexec_fn=die_with_parent, env=dict(os.environ, TMPDIR=out + ".tmp"))
    if proc.returncode != 0 or "Numba" in proc.stderr or "Traceback" in proc.stderr:
        return "exit %d: %s" % (proc.returncode, proc.stderr.strip()[-300:])
    left = glob.glob(os.path.join(out, "**", ".tmp-*"), recursive=True) + \
        os.listdir(out + ".tmp")
    if left:
        return "left behind: %s" % left
    if stems is None:  # eval.py: one score file per track, holding the target's frames
        scores = glob.glob(os.path.join(out, "test", "*.json"))
        return None if len(scores) == 1 else "scores: %s" % scores
    folders = glob.glob(os.path.join(out, "*", "song"))  # OUT/<model>/<song>
    if len(folders) != 1:
        return "song folders: %s" % folders
    for name in stems:
        audio, _ = sf.read(os.path.join(folders[0], name + ".wav"))
        if audio.shape[0] != song_frames or not np.isfinite(audio).all():
            return "%s.wav: %s samples, finite %s" % (name, audio.shape, np.isfinite(audio).all())
    return None


def cpu_hogs(count):
    """`count` processes that keep a core busy each, until killed."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"],
                             preexec_fn=die_with_parent) for _ in range(count)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="runs of each path (default 30)")
    parser.add_argument("--hogs", type=int, default=os.cpu_count() or 1,
                        help="CPU hog processes beside the runs (default: one per core)")
    parser.add_argument("--paths", nargs="+", help="the paths to run (default: all)")
    options = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="umx-stress-")
    hogs = []
    try:
        paths = prepare(work)
        song_frames = sf.info(os.path.join(work, "song.wav")).frames
        hogs = cpu_hogs(options.hogs)
        failures = 0
        print("%d runs of each path, %d CPU hogs beside them" % (options.runs, len(hogs)),
              flush=True)
        for name, (command, stems, *kill_first) in paths.items():
            if options.paths and name not in options.paths:
                continue
            out = os.path.join(work, "out")
            os.makedirs(out + ".tmp", exist_ok=True)
            start, failed = time.time(), []
            for run in range(options.runs):
                problem = check_run(command, stems, out, song_frames, bool(kill_first))
                if problem:
                    failed.append(problem)
                    print("  %s, run %d: %s" % (name, run + 1, problem), flush=True)
                os.makedirs(out + ".tmp", exist_ok=True)
            failures += len(failed)
            print("%-30s %d runs, %d failed (%.1f s a run)" % (
                name, options.runs, len(failed), (time.time() - start) / options.runs), flush=True)
        print("stress: %d failed run%s" % (failures, "" if failures == 1 else "s"))
        return 1 if failures else 0
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
