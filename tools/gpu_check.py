"""Check and measure the GPU paths on a machine with a GPU: `make gpu-check`.

    python tools/gpu_check.py             on a GPU (requirements-gpu.txt installed)
    python tools/gpu_check.py --cpu-mode  every step on the CPU, small sizes, the GPU's branches
                                          taken with UMX_OPS=nnabla (the test suite runs this)

Prints the GPU and the NNabla/CUDA/cuDNN versions, then
 1. the fused LSTM (F.lstm: cuDNN's on the GPU) against the unrolled one on the GPU and
    against the CPU: outputs and gradients, with the tolerance;
 2. cuDNN's dropout active in training: outputs differ from dropout 0, their mean kept;
 3. UMX's and X-UMX's training step on the GPU against the CPU's (loss and every gradient,
    dropout off: the STFTs, ISTFT and losses in NNabla's functions on the device);
 4. training steps (full size: batch 16 x 6 s) with the fused and the unrolled LSTM: seconds
    per step, samples/s, peak GPU memory, and every loss finite;
 5. test.py on 60 s and 180 s of real music (the stempeg clip looped): seconds, real-time
    factor, peak GPU and host memory, and the stems against the CPU's (>= 60 dB at niter 0);
 6. a one-epoch training run and eval.py on a generated dataset.
A user with a GPU can send its output back. Without a usable GPU it says why in one line:
exit 0 when there is no GPU at all, exit 1 when `nvidia-smi` lists a GPU that NNabla cannot
use. A failed check exits 1.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import numpy as np

from measure import PeakMemory, write_song

HERE = os.path.abspath(__file__)
TOLERANCE = 1e-4


def _small():
    from unmix_nnabla.networks.layout import UmxConfig
    return UmxConfig(hidden_size=32, max_bin=200, nb_output_bins=257, n_fft=512, n_hop=256)


def listed_gpus():
    """The GPUs `nvidia-smi -L` lists (the driver's view), [] without nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.startswith("GPU ")]


def versions():
    import nnabla
    from unmix_nnabla.base.context import import_cuda_extension
    cuda = import_cuda_extension()
    return {"nnabla": nnabla.__version__,
            "nnabla-ext-cuda": getattr(cuda, "__version__", "?"),
            "CUDA": getattr(cuda, "__cuda_version__", "?"),
            "cuDNN": getattr(cuda, "__cudnn_version__", "?")}


def _variables(arrays, need_grad=True):
    import nnabla as nn
    return [nn.Variable.from_numpy_array(a.astype(np.float32), need_grad=need_grad)
            for a in arrays]


def check_lstm(context):
    """1. F.lstm against the unrolled LSTM, on `context` and against the CPU."""
    import nnabla as nn
    import nnabla.functions as F
    from nnabla.ext_utils import get_extension_context
    from unmix_nnabla.networks.model import unrolled_lstm
    rng = np.random.RandomState(0)
    steps, batch, inputs, hid, layers, dirs = 50, 4, 64, 32, 3, 2
    arrays = [rng.randn(steps, batch, inputs), rng.randn(dirs, 4, hid, inputs + hid) * 0.3,
              rng.randn(layers - 1, dirs, 4, hid, dirs * hid + hid) * 0.3,
              rng.randn(layers, dirs, 4, hid) * 0.3]
    grad = rng.randn(steps, batch, dirs * hid).astype(np.float32)
    results = {}
    for ctx_name, kind in ((context, "fused"), (context, "unrolled"), ("cpu", "unrolled")):
        nn.set_default_context(get_extension_context(ctx_name))
        variables = _variables(arrays)
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
        print("   %-5s %-8s vs CPU unrolled: output %.1e, gradients up to %.1e (relative)"
              % (key[0], key[1], errors[0], max(errors[1:])))
    return _verdict(worst <= TOLERANCE, "tolerance %.0e" % TOLERANCE)


def _verdict(ok, what):
    print("   %s: %s" % (what, "ok" if ok else "FAILED"))
    return ok


def check_dropout(context):
    """2. The fused LSTM's dropout (cuDNN's) is active in training: outputs differ from
    dropout 0, with about the same mean (inverted dropout)."""
    import nnabla as nn
    import nnabla.functions as F
    from nnabla.ext_utils import get_extension_context
    nn.set_default_context(get_extension_context(context))
    rng = np.random.RandomState(1)
    steps, batch, hid, layers = 100, 8, 64, 3
    arrays = [rng.randn(steps, batch, hid), rng.randn(2, 4, hid, 2 * hid) * 0.3,
              rng.randn(layers - 1, 2, 4, hid, 3 * hid) * 0.3, rng.randn(layers, 2, 4, hid) * 0.3]
    outputs = []
    for dropout in (0.0, 0.4):
        variables = _variables(arrays, need_grad=False)
        zeros = F.constant(0.0, (layers, 2, batch, hid))
        out, _, _ = F.lstm(variables[0], zeros, zeros, *variables[1:], num_layers=layers,
                           dropout=dropout, bidirectional=True, training=True)
        out.forward()
        outputs.append(out.d.copy())
    differ = not np.allclose(outputs[0], outputs[1])
    mean_kept = abs(np.abs(outputs[1]).mean() / np.abs(outputs[0]).mean() - 1) < 0.2
    print("   dropout 0.4 against 0: outputs %s, mean |output| ratio %.3f"
          % ("differ" if differ else "EQUAL", np.abs(outputs[1]).mean() / np.abs(outputs[0]).mean()))
    if context == "cpu":  # NNabla's CPU F.lstm has no dropout: the reason CPU runs unroll it
        return _verdict(True, "(CPU mode: NNabla's CPU LSTM ignores dropout, not checked)")
    return _verdict(differ and mean_kept, "dropout active, mean kept")


def check_training_graphs(context):
    """3. UMX's and X-UMX's training step on `context` (the device's branch: STFT, ISTFT and
    losses in NNabla's functions) against the CPU's numpy branch: loss and gradients."""
    ok = True
    for xumx in (False, True):
        results = []
        for ctx_name, ops in ((context, "nnabla"), ("cpu", "numpy")):
            results.append(_graph_step(ctx_name, ops, xumx))
        (loss_a, grads_a), (loss_b, grads_b) = results
        # gradients that are zero but for rounding (input_mean: fc1's batch norm removes any
        # shift) are compared at the scale of the largest gradient
        scale = max(np.abs(g).max() for g in grads_b.values())
        worst = max(np.abs(grads_a[k] - grads_b[k]).max() /
                    max(np.abs(grads_b[k]).max(), 1e-3 * scale) for k in grads_b)
        loss_error = abs(loss_a - loss_b) / abs(loss_b)
        print("   %-5s on %s against the CPU: loss %.1e, gradients up to %.1e (relative); "
              "loss finite: %s" % ("X-UMX" if xumx else "UMX", context, loss_error, worst,
                                   np.isfinite(loss_a)))
        ok = ok and np.isfinite(loss_a) and loss_error <= TOLERANCE and worst <= 1e-3
    return _verdict(ok, "loss 1e-4, gradients 1e-3")


def _graph_step(context, ops, xumx):
    """(loss, {name: gradient}) of one training step of a small model, dropout off."""
    import nnabla as nn
    from nnabla.ext_utils import get_extension_context
    from unmix_nnabla.networks.layout import UmxConfig
    from unmix_nnabla.training.graph import build_training_graph
    from unmix_nnabla.training.step import step_gradients
    from unmix_nnabla.base.vocabulary import XUMX_BRANCHES
    os.environ["UMX_OPS"] = ops
    try:
        nn.set_default_context(get_extension_context(context))
        nn.clear_parameters()
        nn.random.seed(0)
        cfg = UmxConfig(hidden_size=16, max_bin=60, nb_output_bins=129, n_fft=256, n_hop=64,
                        nb_layers=2, xumx_branches=XUMX_BRANCHES if xumx else ())
        rng = np.random.RandomState(0)
        mixtures = rng.randn(2, 4000, 2).astype(np.float32) * 0.3
        targets = np.tile(mixtures * 0.25, (1, 1, 4 if xumx else 1))
        scope = "x-umx" if xumx else "vocals"
        graph = build_training_graph(cfg, scope, 2, 4000, mcoef=10.0, dropout=0.0)
        return step_gradients(graph, cfg, mixtures, targets)
    finally:
        os.environ.pop("UMX_OPS", None)


def measure_training(context, quick):
    """4. Seconds per training step with the fused and with the unrolled LSTM."""
    ok = True
    for kind in ("fused", "unrolled"):
        cmd = [sys.executable, HERE, "--step-worker", context, kind] + (["--quick"] if quick else [])
        with PeakMemory(gpu=context != "cpu") as memory:
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                                  env=dict(os.environ, UMX_LSTM=kind))
        if proc.returncode:
            print("   %s LSTM: FAILED\n%s" % (kind, proc.stderr[-2000:]))
            return False
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        print("   %-8s LSTM: %.3f s/step, %.2f samples/s, losses finite: %s, peak GPU memory %s"
              % (kind, result["step_s"], result["samples_per_s"], result["finite"],
                 "%.0f MB" % memory.gpu_mb if context != "cpu" else "- (CPU mode)"))
        ok = ok and result["finite"]
    return _verdict(ok, "every loss finite")


def step_worker(context, quick):
    import nnabla as nn
    import nnabla.solvers as S
    from unmix_nnabla.base.context import set_context
    from unmix_nnabla.networks.layout import UmxConfig
    from unmix_nnabla.training.graph import build_training_graph
    from unmix_nnabla.training.step import dropout_rngs, train_step
    set_context(context, verbose=False)
    cfg = _small() if quick else UmxConfig()
    batch, seconds = (4, 1.0) if quick else (16, 6.0)
    samples = int(seconds * cfg.sample_rate)
    graph = build_training_graph(cfg, "vocals", batch, samples)
    solver = S.Adam(alpha=1e-3)
    with nn.parameter_scope("vocals"):
        solver.set_parameters(nn.get_parameters())
    rng = np.random.RandomState(0)
    times, losses = [], []
    for step in range(3):
        mix = rng.randn(batch, samples, 2).astype(np.float32) * 0.1
        start = time.perf_counter()
        losses.append(train_step(graph, solver, mix, mix * 0.5, cfg, 1e-5,
                                 dropout_rngs(0, step, range(batch))))
        times.append(time.perf_counter() - start)
    per_step = float(np.median(times[1:]))
    print(json.dumps({"step_s": per_step, "samples_per_s": batch / per_step,
                      "finite": bool(np.all(np.isfinite(losses)))}))


def run(cmd, memory_gpu=False, env=None):
    """Run a CLI; → (seconds, peak GPU MB, peak host MB), or None after printing its error."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, text=True,
                                env=env)
        with PeakMemory(proc.pid, gpu=memory_gpu) as memory:
            proc.wait()
        err.seek(0)
        if proc.returncode:
            print("   FAILED: %s\n%s" % (" ".join(cmd[1:4]), err.read()[-2000:]))
            return None
    return time.perf_counter() - start, memory.gpu_mb, memory.host_mb


def check_separation(context, quick, tmp):
    """5. test.py on real music; the stems against the CPU's."""
    import soundfile as sf
    from unmix_nnabla.networks.layout import UmxConfig
    from unmix_nnabla.models.random_weights import write_random_weights
    model = os.path.join(tmp, "model")
    write_random_weights(model, _small() if quick else UmxConfig())  # random weights, real music
    ok = True
    # on the CPU (--cpu-mode): the device's network (UMX_OPS=nnabla) against the folded one
    runs = ((context, None), ("cpu", None)) if context != "cpu" else \
        (("cpu", "nnabla"), ("cpu", None))
    for seconds in ((4,) if quick else (60, 180)):
        song = os.path.join(tmp, "song%d.wav" % seconds)
        write_song(song, seconds)
        outs = []
        for ctx, ops in runs:
            out = os.path.join(tmp, "stems-%s-%s-%d" % (ctx, ops, seconds))
            env = dict(os.environ, UMX_OPS=ops) if ops else None
            measured = run([sys.executable, "test.py", song, "--model", model, "-o", out,
                            "--niter", "0", "--context", ctx], memory_gpu=ctx != "cpu", env=env)
            if measured is None:
                return False
            outs.append(os.path.join(out, "model", "song%d" % seconds))  # OUT/<model>/<song>
            if len(outs) == 1:
                elapsed, gpu_mb, host_mb = measured
                print("   %d s of music: %.1f s (real-time factor %.3f), peak GPU memory %s, "
                      "host %.0f MB" % (seconds, elapsed, elapsed / seconds,
                                        "%.0f MB" % gpu_mb if ctx != "cpu" else "-", host_mb))
        for name in sorted(os.listdir(outs[1])):
            a, _ = sf.read(os.path.join(outs[0], name))
            b, _ = sf.read(os.path.join(outs[1], name))
            snr = 10 * np.log10(np.sum(b ** 2) / max(np.sum((a - b) ** 2), 1e-30))
            ok = ok and snr >= 60
            print("   %s: %.1f dB against the CPU's (>= 60: %s)"
                  % (name, snr, "ok" if snr >= 60 else "FAILED"))
    return ok


def check_training_and_eval(context, tmp):
    """6. One epoch of training and eval.py on a generated dataset."""
    from unmix_nnabla.data.synth import generate_dataset
    root = generate_dataset(os.path.join(tmp, "data"), 3, 1, 4.0, progress=False)
    out = os.path.join(tmp, "trained")
    for cmd in ([sys.executable, "train.py", "--umx-train", "--root", root, "--is-wav",
                 "--source", "vocals", "--output", out, "--epochs", "1", "--batch-size", "4",
                 "--hidden-size", "32", "--seq-dur", "2", "--samples-per-track", "4",
                 "--context", context],
                [sys.executable, "eval.py", "--model", out, "--root", root, "--is-wav",
                 "--out-dir", os.path.join(tmp, "eval"), "--context", context]):
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
    from unmix_nnabla.base.context import gpu_status
    if args.cpu_mode:
        context = "cpu"
        print("CPU mode: every check with the CPU context, small sizes, the GPU's branches taken "
              "with UMX_OPS=nnabla (no GPU figures)")
    else:
        usable, why = gpu_status()
        gpus = listed_gpus()
        if not usable:
            if gpus:
                print("nvidia-smi lists %s, but NNabla cannot use it: %s" % (gpus[0], why))
                sys.exit(1)
            print("no GPU (%s): nothing to check" % why)
            return
        context = "cudnn"
        print("GPU: %s (%s)\nversions: %s" % (gpus[0] if gpus else "?", why,
                                               ", ".join("%s %s" % kv for kv in versions().items())))
    quick = args.quick or args.cpu_mode
    checks = [("1. fused LSTM against the unrolled one", lambda: check_lstm(context)),
              ("2. cuDNN's dropout in training", lambda: check_dropout(context)),
              ("3. training steps against the CPU's", lambda: check_training_graphs(context)),
              ("4. training speed", lambda: measure_training(context, quick))]
    with tempfile.TemporaryDirectory() as tmp:
        checks += [("5. test.py on real music", lambda: check_separation(context, quick, tmp)),
                   ("6. training and evaluation", lambda: check_training_and_eval(context, tmp))]
        failed = []
        for title, check in checks:
            print(title, flush=True)
            if not check():
                failed.append(title)
    print("all checks passed" if not failed else "FAILED: %s" % "; ".join(failed))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
