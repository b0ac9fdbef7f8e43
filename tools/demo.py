"""The demo (`make demo`): the whole job, offline, in minutes on 2 CPU cores.

1. generate a small MUSDB-format dataset of synthetic music (data.py --generate),
2. train a reduced UMX for each of the four targets for a few epochs (train.py),
3. separate a held-out test mixture and the real MUSDB18 clip that stempeg ships (test.py),
4. score the test subset with museval (eval.py), beside the trivial baseline that uses the
   mixture as every estimate, and print both SDR tables.

This is a short training run on generated data: its scores say that the pipeline works end to
end, not how well UMX separates real music (see README.md for the published numbers).
"""
import argparse
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from unmix_nnabla.base.processes import die_with_parent

from unmix_nnabla.base.runtime import UmxError, run_cli

from unmix_nnabla.base.threads import blas_threads_chosen
from unmix_nnabla.base.vocabulary import SOURCES as TARGETS


def run(cmd):
    """Run one step; a failure (its own one-line error printed) stops the demo."""
    print("\n$ " + " ".join('"%s"' % c if " " in c else c for c in cmd), flush=True)
    code = subprocess.run(cmd, cwd=ROOT, preexec_fn=die_with_parent).returncode
    if code:
        raise UmxError("demo: %s failed (exit %d)" % (" ".join(cmd[1:3]), code))


def run_parallel(commands, log_dir):
    """Run commands side by side, each logging to log_dir/<source>.log; fail if any fails."""
    os.makedirs(log_dir, exist_ok=True)
    # one BLAS thread per training, whatever the core count (unless the user has chosen): the
    # threads set the summation order of the matrix products, whose rounding a training run
    # amplifies, so that the demo's scores would depend on the machine's cores
    env = dict(os.environ)
    if not blas_threads_chosen(env):
        env["OPENBLAS_NUM_THREADS"] = "1"
    procs = []
    for cmd in commands:
        log = os.path.join(log_dir, cmd[cmd.index("--source") + 1] + ".log")
        print("\n$ %s  > %s" % (" ".join(cmd), log), flush=True)
        with open(log, "w") as f:
            procs.append((subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                           env=env, preexec_fn=die_with_parent), log))
    failed = [log for proc, log in procs if proc.wait()]
    if failed:
        with open(failed[0]) as f:
            print(f.read()[-2000:])
        raise UmxError("demo: training failed (log: %s)" % failed[0])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "demo_out"))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--hidden-size", type=int, default=64)
    run_cli(run_demo, parser.parse_args(argv))


# what a demo writes into its --out folder: a folder holding only these is a previous demo's
DEMO_ENTRIES = {"data", "model", "logs", "separated", "eval", "baseline", "eval-baseline"} | {
    "train-" + target for target in TARGETS}


def start_afresh(out):
    """Remove a previous demo's outputs: a run over them (with other code since) would score new
    estimates into folders that recorded the old ones, which eval.py rightly refuses. A folder
    holding anything else is not the demo's to remove."""
    if not os.path.isdir(out):
        return
    others = sorted(set(os.listdir(out)) - DEMO_ENTRIES)
    if others:
        raise UmxError("--out %s holds files a demo does not write (%s): give an empty or new "
                       "folder" % (out, ", ".join(others[:3])))
    print("demo: removing the previous demo's outputs in %s" % out, flush=True)
    shutil.rmtree(out)


def run_demo(args):
    py = sys.executable
    start = time.time()
    start_afresh(args.out)
    data = os.path.join(args.out, "data")
    model = os.path.join(args.out, "model")
    run([py, "data.py", "--generate", data, "--nb-train", "10", "--nb-test", "3",
         "--duration", "10"])
    # two targets at a time, one BLAS thread each; each run writes a folder of its own (one
    # writer per output folder), and the model folder gathers their weights
    commands = [[py, "train.py", "--umx-train", "--root", data, "--is-wav", "--source", target,
                 "--output", os.path.join(args.out, "train-" + target), "--epochs",
                 str(args.epochs), "--batch-size", "8", "--seq-dur", "2.0",
                 "--samples-per-track", "8", "--hidden-size", str(args.hidden_size), "--lr",
                 "0.003", "--context", "cpu"]
                for target in TARGETS]
    for pair in (commands[:2], commands[2:]):
        run_parallel(pair, os.path.join(args.out, "logs"))
    os.makedirs(model, exist_ok=True)
    for target in TARGETS:
        for ext in (".h5", ".json", "_loss.png"):
            shutil.copyfile(os.path.join(args.out, "train-" + target, target + ext),
                            os.path.join(model, target + ext))
    import stempeg
    test_mix = os.path.join(data, "test", "Synth Test 00", "mixture.wav")
    run([py, "test.py", "--umx-infer", "--inputs", test_mix, stempeg.example_stem_path(),
         "--model", model, "--out-dir", os.path.join(args.out, "separated"), "--context", "cpu"])
    run([py, "eval.py", "--umx-infer", "--model", model, "--root", data, "--is-wav",
         "--out-dir", os.path.join(args.out, "eval"), "--cores", "2", "--context", "cpu"])
    # the trivial baseline: the mixture as the estimate of every target
    baseline = os.path.join(args.out, "baseline")
    for track in sorted(os.listdir(os.path.join(data, "test"))):
        folder = os.path.join(baseline, "test", track)
        os.makedirs(folder, exist_ok=True)
        for target in TARGETS:
            shutil.copyfile(os.path.join(data, "test", track, "mixture.wav"),
                            os.path.join(folder, target + ".wav"))
    run([py, "eval.py", "--estimates", baseline, "--root", data, "--is-wav",
         "--out-dir", os.path.join(args.out, "eval-baseline"), "--cores", "2"])
    print_summary(args.out, time.time() - start)


def print_summary(out, seconds):
    import pandas as pd
    ours = pd.read_csv(os.path.join(out, "eval", "results.csv"), index_col=0)
    base = pd.read_csv(os.path.join(out, "eval-baseline", "results.csv"), index_col=0)
    print("\nDemo: UMX (hidden size reduced, a few epochs on generated music) against the mixture "
          "as estimate, museval SDR in dB (median over frames, median of the %d test tracks):\n"
          % len(os.listdir(os.path.join(out, "data", "test"))))
    print("| target | UMX demo | mixture baseline | gain |")
    print("|---|---|---|---|")
    for target in TARGETS:
        a, b = ours.loc[target, "SDR"], base.loc[target, "SDR"]
        print("| %s | %.2f | %.2f | %+.2f |" % (target, a, b, a - b))
    print("\nseparated stems: %s\nscores, JSON and boxplot: %s\ntraining curves: %s\n"
          "(%.0f s in all; a short training run on generated data, not a benchmark)"
          % (os.path.join(out, "separated"), os.path.join(out, "eval"), os.path.join(out, "model"),
             seconds))


if __name__ == "__main__":
    main()
