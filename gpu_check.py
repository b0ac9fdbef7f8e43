"""Check and measure the GPU paths on a machine with a GPU: `make gpu-check`.

    python gpu_check.py             on a GPU (nnabla-ext-cuda120 or another CUDA build)
    python gpu_check.py --cpu-mode  every step with the CPU context, small sizes (CI: so that
                                    no step can break unseen until someone has a GPU)

Prints the GPU and the NNabla/CUDA/cuDNN versions, then
 1. the fused LSTM (F.lstm: cuDNN's on the GPU) against the unrolled one on the GPU and
    against the CPU graph: outputs and gradients, with the tolerances;
 2. a training step (full size: batch 16 x 6 s) with the fused and with the unrolled LSTM:
    seconds per step, samples/s, peak GPU memory;
 3. test.py on 60 s and 180 s of real music (the stempeg clip looped): seconds, real-time
    factor, peak GPU and host memory, and the stems against the CPU's (>= 60 dB at niter 0);
 4. a one-epoch training run and eval.py on a generated dataset.
Without a GPU (and without --cpu-mode) it says so in one line and exits 0. A failed check
exits 1.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def _small():
    from layout import UmxConfig
    return UmxConfig(hidden_size=32, max_bin=200, nb_output_bins=257, n_fft=512, n_hop=256)


def gpu_info():
    """(device description, versions) or None when NNabla finds no GPU."""
    from context import gpu_available
    if not gpu_available():
        return None
    import nnabla
    import nnabla_ext.cuda as cuda
    names = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                            "--format=csv,noheader"], capture_output=True, text=True).stdout
    versions = {"nnabla": nnabla.__version__,
                "nnabla-ext-cuda": getattr(cuda, "__version__", "?"),
                "CUDA": getattr(cuda, "__cuda_version__", "?"),
                "cuDNN": getattr(cuda, "__cudnn_version__", "?")}
    return names.strip() or "GPU", versions


class PeakMemory:
    """Peak GPU memory in use (nvidia-smi, sampled) and peak host RSS of a process tree."""

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
        from benchmark import tree_pss_mb
        while self.running:
            self.host_mb = max(self.host_mb, tree_pss_mb(self.pid))
            if self.gpu:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used",
                                      "--format=csv,noheader,nounits"], capture_output=True,
                                     text=True).stdout.split()
                if out:
                    self.gpu_mb = max(self.gpu_mb, float(out[0]))
            time.sleep(0.2)


def check_lstm(context):
    """1. F.lstm against the unrolled LSTM, on `context` and against the CPU."""
    import nnabla as nn
    import nnabla.functions as F
    from nnabla.ext_utils import get_extension_context
    from model import unrolled_lstm
    rng = np.random.RandomState(0)
    steps, batch, inputs, hid, layers, dirs = 50, 4, 64, 32, 3, 2
    arrays = [rng.randn(steps, batch, inputs), rng.randn(dirs, 4, hid, inputs + hid) * 0.3,
              rng.randn(layers - 1, dirs, 4, hid, dirs * hid + hid) * 0.3,
              rng.randn(layers, dirs, 4, hid) * 0.3]
    grad = rng.randn(steps, batch, dirs * hid).astype(np.float32)
    results = {}
    for ctx_name, kind in ((context, "fused"), (context, "unrolled"), ("cpu", "unrolled")):
        nn.set_default_context(get_extension_context(ctx_name))
        variables = [nn.Variable.from_numpy_array(a.astype(np.float32), need_grad=True)
                     for a in arrays]
        if kind == "fused":
            zeros = F.constant(0.0, (layers, dirs, batch, hid))
            out, _, _ = F.lstm(variables[0], zeros, zeros, *variables[1:], num_layers=layers,
                               bidirectional=True, training=True)
        else:
            out = unrolled_lstm(*variables, layers, dirs)
        for v in variables:
            v.grad.zero()
        out.forward()
        out.backward(grad)
        results[(ctx_name, kind)] = [out.d.copy()] + [v.g.copy() for v in variables]
    reference = results[("cpu", "unrolled")]
    worst = 0.0
    for key, values in results.items():
        errors = [np.abs(a - b).max() / max(1e-6, np.abs(b).max()) for a, b in zip(values, reference)]
        worst = max(worst, max(errors))
        print("   %-4s %-8s vs CPU unrolled: output %.1e, gradients up to %.1e (relative)"
              % (key[0], key[1], errors[0], max(errors[1:])))
    tolerance = 1e-4
    print("   tolerance %.0e: %s" % (tolerance, "ok" if worst <= tolerance else "FAILED"))
    return worst <= tolerance


def measure_training(context, quick):
    """2. Seconds per training step with the fused and with the unrolled LSTM."""
    for kind in ("fused", "unrolled"):
        cmd = [sys.executable, os.path.join(HERE, "gpu_check.py"), "--step-worker", context, kind]
        if quick:
            cmd.append("--quick")
        with PeakMemory(gpu=context != "cpu") as memory:
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE,
                                  env=dict(os.environ, UMX_LSTM=kind))
        if proc.returncode:
            print("   %s LSTM: FAILED\n%s" % (kind, proc.stderr[-2000:]))
            return False
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        print("   %-8s LSTM: %.3f s/step, %.2f samples/s, peak GPU memory %s"
              % (kind, result["step_s"], result["samples_per_s"],
                 "%.0f MB" % memory.gpu_mb if context != "cpu" else "- (CPU mode)"))
    return True


def step_worker(context, quick):
    import nnabla as nn
    import nnabla.solvers as S
    from context import set_context
    from layout import UmxConfig
    from train import build_training_graph, dropout_rngs, train_step
    set_context(context, verbose=False)
    cfg = _small() if quick else UmxConfig()
    batch, seconds = (4, 1.0) if quick else (16, 6.0)
    samples = int(seconds * cfg.sample_rate)
    graph = build_training_graph(cfg, "vocals", batch, samples)
    solver = S.Adam(alpha=1e-3)
    with nn.parameter_scope("vocals"):
        solver.set_parameters(nn.get_parameters())
    rng = np.random.RandomState(0)
    times = []
    for step in range(3):
        mix = rng.randn(batch, samples, 2).astype(np.float32) * 0.1
        start = time.perf_counter()
        train_step(graph, solver, mix, mix * 0.5, cfg, 1e-5, dropout_rngs(0, step, range(batch)))
        times.append(time.perf_counter() - start)
    per_step = float(np.median(times[1:]))
    print(json.dumps({"step_s": per_step, "samples_per_s": batch / per_step}))


def run(cmd, memory_gpu=False):
    """Run a CLI; → (seconds, peak GPU MB, peak host MB), or None after printing its error."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=HERE, stdout=subprocess.DEVNULL, stderr=err, text=True)
        with PeakMemory(proc.pid, gpu=memory_gpu) as memory:
            proc.wait()
        err.seek(0)
        if proc.returncode:
            print("   FAILED: %s\n%s" % (" ".join(cmd[1:4]), err.read()[-2000:]))
            return None
    return time.perf_counter() - start, memory.gpu_mb, memory.host_mb


def check_separation(context, quick, tmp):
    """3. test.py on real music; the stems against the CPU's."""
    import soundfile as sf
    from benchmark import write_song
    from layout import UmxConfig
    from tools.random_weights import write_random_weights
    model = os.path.join(tmp, "model")
    write_random_weights(model, _small() if quick else UmxConfig())  # random weights, real music
    ok = True
    for seconds in ((10,) if quick else (60, 180)):
        song = os.path.join(tmp, "song%d.wav" % seconds)
        write_song(song, seconds)
        outs = {}
        for ctx in (context, "cpu") if context != "cpu" else ("cpu",):
            outs[ctx] = os.path.join(tmp, "stems-%s-%d" % (ctx, seconds))
            measured = run([sys.executable, "test.py", "--inputs", song, "--model", model,
                            "--out-dir", outs[ctx], "--niter", "0", "--context", ctx],
                           memory_gpu=ctx != "cpu")
            if measured is None:
                return False
            if ctx == context:
                elapsed, gpu_mb, host_mb = measured
                print("   %d s of music: %.1f s (real-time factor %.3f), peak GPU memory %s, "
                      "host %.0f MB" % (seconds, elapsed, elapsed / seconds,
                                        "%.0f MB" % gpu_mb if ctx != "cpu" else "-", host_mb))
        if context != "cpu":
            for name in sorted(os.listdir(outs["cpu"])):
                a, _ = sf.read(os.path.join(outs[context], name))
                b, _ = sf.read(os.path.join(outs["cpu"], name))
                snr = 10 * np.log10(np.sum(b ** 2) / max(np.sum((a - b) ** 2), 1e-30))
                ok = ok and snr >= 60
                print("   %s: %.1f dB against the CPU's (>= 60: %s)"
                      % (name, snr, "ok" if snr >= 60 else "FAILED"))
    return ok


def check_training_and_eval(context, tmp):
    """4. One epoch of training and eval.py on a generated dataset."""
    from synth import generate_dataset
    root = generate_dataset(os.path.join(tmp, "data"), 3, 1, 4.0, progress=False)
    out = os.path.join(tmp, "trained")
    for cmd in ([sys.executable, "train.py", "--umx-train", "--root", root, "--is-wav",
                 "--source", "vocals", "--output", out, "--epochs", "1", "--batch-size", "4",
                 "--hidden-size", "32", "--seq-dur", "2", "--samples-per-track", "4",
                 "--context", context],
                [sys.executable, "eval.py", "--model", out, "--root", root, "--is-wav",
                 "--targets", "vocals", "--out-dir", os.path.join(tmp, "eval"), "--context",
                 context]):
        measured = run(cmd)
        if measured is None:
            return False
        print("   %s: %.1f s" % (os.path.basename(cmd[1]), measured[0]))
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-mode", action="store_true",
                        help="run every check with the CPU context (small sizes)")
    parser.add_argument("--quick", action="store_true", help="small sizes (implied by --cpu-mode)")
    parser.add_argument("--step-worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step_worker:
        step_worker(args.step_worker[0], args.quick)
        return
    info = None if args.cpu_mode else gpu_info()
    if info is None and not args.cpu_mode:
        print("no GPU: NNabla's CUDA extension is not installed or finds no device; nothing to "
              "check (see README: GPUs)")
        return
    context = "cpu" if args.cpu_mode else "cudnn"
    quick = args.quick or args.cpu_mode
    if info:
        print("GPU: %s\nversions: %s" % (info[0], ", ".join("%s %s" % kv for kv in info[1].items())))
    else:
        print("CPU mode: every step with the CPU context, small sizes (no GPU figures)")
    checks = [("1. fused LSTM against the unrolled one", lambda: check_lstm(context)),
              ("2. a training step", lambda: measure_training(context, quick))]
    with tempfile.TemporaryDirectory() as tmp:
        checks += [("3. test.py on real music", lambda: check_separation(context, quick, tmp)),
                   ("4. training and evaluation", lambda: check_training_and_eval(context, tmp))]
        failed = []
        for title, check in checks:
            print(title)
            if not check():
                failed.append(title)
    print("all checks passed" if not failed else "FAILED: %s" % "; ".join(failed))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
