"""Speed and memory on this machine, as figures printed (never asserted by a test):

    python tools/benchmark.py --seconds 60 180 600 --xumx --plot bench.png \
        [--vs-openunmix PYTHON]                 separation (make bench)
    python tools/benchmark.py --train [--vs-openunmix PYTHON]   training steps, data loading
    python tools/benchmark.py --threads         worker processes x BLAS threads
    python tools/benchmark.py --workers [--xumx] seconds and memory with -j 1..4
    python tools/benchmark.py --network-profile the network's parts over one batch
    python tools/benchmark.py --parity          agreement with open-unmix-pytorch and asteroid

Separation: a fresh process separates N s of real music (the MUSDB18 clip that stempeg ships,
looped, as a float WAV) into 4 stems with full-size random weights (umxhq's shapes; X-UMX in
Sony's layout), niter 1, the way test.py does (decoded into a temporary file, stems streamed
to WAV files); seconds per stage, real-time factor, and the peak memory (the summed PSS of the
process and its workers, sampled in a second run). With --vs-openunmix PYTHON (a Python with
torch and openunmix 1.3.0), open-unmix-pytorch separates the same audio in the same run
(`tools/openunmix_separate.py`) and each row gives the ratio to its time.

Every row also gives the network's achieved GFLOP/s beside the floor: numpy's BLAS on this
machine running the network's own matrix products (`--floor` alone prints it), so that a
reader sees how close to the machine's limit each stage is.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import numpy as np

from measure import (RATE, run_json, song, timed_and_sampled, timed_blocks,
                           write_song)

HERE = os.path.abspath(__file__)
TOOLS = os.path.dirname(HERE)


# --------------------------------------------------------------------------------------
# the work, counted: the network's floating-point operations and the BLAS floor
# --------------------------------------------------------------------------------------

def network_flops(cfg, rows):
    """Floating-point operations (2 per multiply-add) of one network's (UMX target or X-UMX
    branch) forward pass over `rows` frames: its matrix products, which are nearly all of it."""
    h, hid = cfg.lstm_hidden_size, cfg.hidden_size
    per_row = cfg.nb_channels * cfg.max_bin * hid  # fc1
    for layer in range(cfg.nb_layers):
        nb_in = hid if layer == 0 else cfg.nb_directions * h
        per_row += cfg.nb_directions * (nb_in + h) * 4 * h  # input and recurrent products
    per_row += 2 * hid * hid + hid * cfg.nb_channels * cfg.nb_output_bins  # fc2, fc3
    return 2.0 * per_row * rows


def floor_worker(rows):
    """numpy's BLAS GFLOP/s on the network's products (full-size UMX, `rows` frames at once:
    fc1, an LSTM layer's input projections, fc2, fc3, forward and backward orientations),
    with this process's BLAS threads; prints JSON."""
    from unmix_nnabla.networks.layout import UmxConfig
    cfg = UmxConfig()
    rng = np.random.RandomState(0)
    shapes = [(cfg.nb_channels * cfg.max_bin, cfg.hidden_size), (cfg.hidden_size, 2 * 4 * 256),
              (2 * cfg.hidden_size, cfg.hidden_size),
              (cfg.hidden_size, cfg.nb_channels * cfg.nb_output_bins)]
    flops, best = 0.0, 0.0
    for nb_in, nb_out in shapes:
        x = rng.randn(rows, nb_in).astype(np.float32)
        w = rng.randn(nb_in, nb_out).astype(np.float32)
        dy = rng.randn(rows, nb_out).astype(np.float32)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            x @ w
            dy @ w.T
            x.T @ dy
            times.append(time.perf_counter() - start)
        flops += 3 * 2.0 * rows * nb_in * nb_out
        best += min(times)
    print(json.dumps({"gflops": flops / best / 1e9}))


def blas_floor(threads, rows=4144):
    """numpy's GFLOP/s on the network's products with `threads` BLAS threads, in a fresh
    process (the thread count is fixed at its start)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    return run_json([sys.executable, HERE, "--floor-worker", str(rows)], env=env)["gflops"]


# --------------------------------------------------------------------------------------
# separation
# --------------------------------------------------------------------------------------

def separation_worker(seconds, model, wav, processes=None):
    """test.py's way: the WAV decoded into a temporary file, stems streamed to WAV files;
    prints JSON: seconds per stage, the network's frames and operations."""
    from unmix_nnabla.audio.io import decode_audio, write_stream
    from unmix_nnabla.base.context import set_context
    from unmix_nnabla.networks.inference import network_for
    from unmix_nnabla.separation.separator import load_compiled_loops, separate_stream
    from unmix_nnabla.models.hub import load_models
    set_context("cpu", verbose=False)
    start = time.perf_counter()
    load_compiled_loops(background=True)  # as test.py: while the model loads
    cfgs = load_models(model)
    targets = list(cfgs)
    network = network_for(cfgs, release=True)  # as test.py: once per model
    load = time.perf_counter() - start
    timings = {}
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        audio = decode_audio(wav, rate=RATE, stereo=True)
        decode = time.perf_counter() - start
        with audio:
            start = time.perf_counter()
            names, rate, blocks = separate_stream(audio, RATE, cfgs, targets, niter=1,
                                                  progress=False, timings=timings,
                                                  network=network, processes=processes)
            write_stream(names, rate, timed_blocks(blocks, timings), out)
            total = time.perf_counter() - start
    print(json.dumps(dict(timings, load=load, decode=decode, separate=total)))


def network_operations(seconds):
    """Network operations of separating `seconds` into 4 stems (4 UMX targets or X-UMX's 4
    branches): the frames run (windows with their context) times each network's."""
    from unmix_nnabla.networks.layout import UmxConfig
    from unmix_nnabla.separation.separator import CONTEXT_FRAMES, WINDOW_FRAMES, plan_windows
    from unmix_nnabla.audio.spectral import nb_stft_frames
    cfg = UmxConfig()
    length, plan = plan_windows(nb_stft_frames(int(seconds * RATE), cfg.n_hop), WINDOW_FRAMES,
                                CONTEXT_FRAMES)
    return 4 * network_flops(cfg, length * len(plan))


def benchmark_separation(args):
    from unmix_nnabla.networks.layout import UmxConfig
    from unmix_nnabla.models.random_weights import write_random_weights, write_random_xumx
    from unmix_nnabla.base.vocabulary import XUMX_BRANCHES
    floor = blas_floor(1) * 2  # two worker processes of one BLAS thread each
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        models = [("open-unmix-nnabla UMX", args.model)]
        if args.model is None:
            models[0] = ("open-unmix-nnabla UMX", os.path.join(tmp, "umxhq-random"))
            write_random_weights(models[0][1], UmxConfig())
        if args.xumx:
            models.append(("open-unmix-nnabla X-UMX", os.path.join(tmp, "x-umx.h5")))
            write_random_xumx(models[1][1], UmxConfig(xumx_branches=XUMX_BRANCHES))
        for seconds in args.seconds:
            wav = os.path.join(tmp, "song.wav")
            write_song(wav, seconds)
            theirs = None
            if args.vs_openunmix and seconds <= args.openunmix_max_seconds:
                array = os.path.join(tmp, "song.npy")
                np.save(array, song(seconds))
                theirs = timed_and_sampled([args.vs_openunmix, os.path.join(TOOLS,
                                            "openunmix_separate.py"), str(seconds), array])
            for name, model in models:
                ours = timed_and_sampled([sys.executable, HERE, "--worker", str(seconds),
                                          "--model", model, "--wav", wav])
                ours["gflops"] = network_operations(seconds) / 1e9 / \
                    ours["network (wall)"]
                ours["ratio"] = ours["separate"] / theirs["separate"] if theirs else None
                rows.append((name, seconds, ours))
            if theirs:
                rows.append(("open-unmix-pytorch 1.3.0", seconds, theirs))
    print_separation(rows, floor)
    if args.plot:
        plot(rows, args.plot)


def print_separation(rows, floor):
    # load: the model (and, as test.py does meanwhile, the compiled loops), before separate
    stages = ["load", "decode", "stft", "network", "wiener", "istft", "write"]
    print("\n| system | audio (s) | separate (s) | ratio to open-unmix-pytorch | RTF | "
          "peak PSS (MB) | network GFLOP/s (floor %.0f) | " % floor + " | ".join(stages) + " |")
    print("|---" * (7 + len(stages)) + "|")
    for name, seconds, r in rows:
        # the network's wall time (its processes run in parallel); other stages as timed
        per_stage = [r.get("network (wall)" if s == "network" else s) for s in stages]
        print("| %s | %.0f | %.2f | %s | %.3f | %.0f | %s | %s |" % (
            name, seconds, r["separate"], "%.2f" % r["ratio"] if r.get("ratio") else "-",
            r["separate"] / seconds, r["peak_mb"],
            "%.1f" % r["gflops"] if r.get("gflops") else "-",
            " | ".join("%.2f" % v if v else "-" for v in per_stage)))


def plot(rows, path):
    """Separation seconds and peak memory against audio length, one line per system."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name in sorted({r[0] for r in rows}):
        mine = sorted((s, r) for n, s, r in rows if n == name)
        lengths = [s for s, _ in mine]
        axes[0].plot(lengths, [r["separate"] for _, r in mine], "o-", label=name)
        axes[1].plot(lengths, [r["peak_mb"] / 1024 for _, r in mine], "o-", label=name)
    axes[0].set(xlabel="audio (s)", ylabel="separation wall time (s)",
                title="4 stems, niter 1, this CPU")
    axes[1].set(xlabel="audio (s)", ylabel="peak memory, PSS of all processes (GB)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print("plot: %s" % path)


def benchmark_threads(seconds):
    """Separation seconds with worker processes x BLAS threads per process, on `seconds` of
    music (the decision behind runtime's choice of workers and threads)."""
    from unmix_nnabla.networks.layout import UmxConfig
    from unmix_nnabla.models.random_weights import write_random_weights
    print("| worker processes | BLAS threads each | separate (s) | network (s) |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, wav = os.path.join(tmp, "umxhq-random"), os.path.join(tmp, "song.wav")
        write_random_weights(model_dir, UmxConfig())
        write_song(wav, seconds)
        for processes, threads in ((2, 1), (1, 2), (2, 2), (1, 1)):
            env = dict(os.environ, OMP_NUM_THREADS=str(threads),
                       OPENBLAS_NUM_THREADS=str(threads))
            r = run_json([sys.executable, HERE, "--worker", str(seconds), "--model", model_dir,
                          "--wav", wav, "--processes", str(processes)], env=env)
            print("| %d | %d | %.2f | %.2f |" % (processes, threads, r["separate"],
                                                r["network (wall)"]))


def network_profile(windows=4, targets=("vocals", "drums")):
    """Seconds and GFLOP/s of each part of the folded network over one worker's batch
    (`windows` windows of a separation's length, two full-size UMX targets, one thread): the
    per-frame layers and the recurrences, timed around the network's own methods."""
    from unmix_nnabla.base.context import set_context
    from unmix_nnabla.networks.inference import InferenceNetwork, network_for
    from unmix_nnabla.networks.layout import UmxConfig
    from unmix_nnabla.base.threads import limit_blas_threads
    from unmix_nnabla.separation.separator import CONTEXT_FRAMES, WINDOW_FRAMES
    from unmix_nnabla.models.random_weights import write_random_weights
    from unmix_nnabla.models.hub import load_models
    set_context("cpu", verbose=False)
    limit_blas_threads(1)
    cfg = UmxConfig()
    seconds = {}

    def timed_method(name, method):
        def run(*args, **kw):
            start = time.perf_counter()
            result = method(*args, **kw)
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
            return result
        return run
    with tempfile.TemporaryDirectory() as tmp:
        write_random_weights(tmp, cfg, targets)
        network = network_for(load_models(tmp), release=True)
    per_frame = InferenceNetwork._per_frame
    network._per_frame = lambda layer, *a, **k: timed_method(layer.__name__.strip("_"), per_frame)(
        network, layer, *a, **k)
    network._recurrence = timed_method("recurrence", InferenceNetwork._recurrence)
    length = WINDOW_FRAMES + 2 * CONTEXT_FRAMES
    spec = np.abs(np.random.RandomState(0).randn(windows, length, 2, cfg.nb_output_bins)).astype(
        np.float32)
    network.run(spec[:, :64], list(targets), write=lambda *a: None)  # graphs built, kernels loaded
    seconds.clear()
    network.run(spec, list(targets), write=lambda *a: None)
    rows, h, hid = windows * length, cfg.lstm_hidden_size, cfg.hidden_size
    flops = {"fc1_layer": cfg.nb_channels * cfg.max_bin * hid,
             "projection_layer": sum((hid if l == 0 else 2 * h) * 2 * 4 * h for l in range(3)),
             "recurrence": 3 * 2 * h * 4 * h,
             "output_layer": 2 * hid * hid + hid * cfg.nb_channels * cfg.nb_output_bins}
    print("| part of the network (%d windows of %d frames, %d targets, 1 thread) | s | GFLOP/s |"
          % (windows, length, len(targets)))
    print("|---|---|---|")
    for name, value in seconds.items():
        print("| %s | %.2f | %.1f |" % (name.replace("_", " "), value,
                                         2.0 * flops[name] * rows * len(targets) / value / 1e9))


def benchmark_workers(seconds, xumx=False, counts=(1, 2, 3, 4)):
    """Separation seconds and peak memory (summed PSS) with 1, 2, 3, 4 worker processes (`-j`),
    each with the cores split among them: what a worker costs in memory (the decision
    behind separator.worker_plan), and, on a machine with more cores, what it gains."""
    from unmix_nnabla.networks.layout import UmxConfig
    from unmix_nnabla.models.random_weights import write_random_weights, write_random_xumx
    from unmix_nnabla.base.vocabulary import XUMX_BRANCHES
    print("| model | -j (worker processes) | separate (s) | network (s) | peak PSS (MB) | "
          "PSS over -j 1 (MB) |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        wav = os.path.join(tmp, "song.wav")
        write_song(wav, seconds)
        if xumx:
            model = os.path.join(tmp, "x-umx.h5")
            write_random_xumx(model, UmxConfig(xumx_branches=XUMX_BRANCHES))
        else:
            model = os.path.join(tmp, "umxhq-random")
            write_random_weights(model, UmxConfig())
        first = None
        for count in counts:
            r = timed_and_sampled([sys.executable, HERE, "--worker", str(seconds), "--model",
                                   model, "--wav", wav, "--processes", str(count)])
            first = first or r["peak_mb"]
            print("| %s | %d | %.2f | %.2f | %.0f | %.0f |" % (
                "X-UMX" if xumx else "UMX", count, r["separate"], r["network (wall)"],
                r["peak_mb"], r["peak_mb"] - first))


# --------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------

def training_worker(batch, seconds, steps, comm_name, model="umx"):
    """Seconds per training step of the full-size UMX (one target) or X-UMX on random data,
    as train.py runs it; prints JSON (one process: also seconds per NNabla function)."""
    import nnabla as nn
    import nnabla.solvers as S
    from unmix_nnabla.base.context import set_context
    from unmix_nnabla.networks.layout import UmxConfig
    from unmix_nnabla.base.memory import keep_freed_memory
    from unmix_nnabla.base.threads import limit_blas_threads
    from unmix_nnabla.training.graph import build_training_graph
    from unmix_nnabla.training.step import dropout_rngs, train_step
    from unmix_nnabla.base.vocabulary import XUMX_BRANCHES
    comm = None
    if comm_name == "mpi":
        from unmix_nnabla.training.comm import get_communicator
        comm = get_communicator("cpu")
        limit_blas_threads(max(1, (os.cpu_count() or 1) // comm.size))  # as train.py does
    set_context("cpu", verbose=False)
    keep_freed_memory()  # as train.py does
    xumx = model == "xumx"
    cfg = UmxConfig(xumx_branches=XUMX_BRANCHES if xumx else ())
    scope = "x-umx" if xumx else "vocals"
    samples = int(seconds * cfg.sample_rate)
    graph = build_training_graph(cfg, scope, batch, samples)
    solver = S.Adam(alpha=1e-3)
    with nn.parameter_scope(scope):
        solver.set_parameters(nn.get_parameters())
    if comm:
        comm.broadcast_parameters(scope)
    rng = np.random.RandomState(comm.rank if comm else 0)
    times = []
    for step in range(steps + 1):  # the first step (allocations) is not timed
        mix = rng.randn(batch, samples, 2).astype(np.float32) * 0.1
        target = np.tile(mix * 0.25, (1, 1, 4)) if xumx else mix * 0.5
        start = time.perf_counter()
        train_step(graph, solver, mix, target, cfg, 1e-5, dropout_rngs(0, step, range(batch)),
                   comm)
        times.append(time.perf_counter() - start)
    per_step = float(np.median(times[1:]))
    nb_procs = comm.size if comm else 1
    frames = batch * (1 + samples // cfg.n_hop)
    flops = 3 * network_flops(cfg, frames) * (4 if xumx else 1)  # forward + twice backward
    result = {"model": model, "processes": nb_procs, "step_s": per_step,
              "samples_per_s": nb_procs * batch / per_step, "gflop_per_step": flops / 1e9}
    if not comm:
        # one more step, its NNabla functions timed by type (hooks: not in the figures above)
        result["by_function"] = profile_training_step(graph, solver, mix, target, cfg, batch)
    if not comm or comm.rank == 0:
        print(json.dumps(result))


def profile_training_step(graph, solver, mix, target, cfg, batch):
    """Seconds per NNabla function type (forward + backward) of one training step, plus
    'STFT (numpy)', the spectrograms computed outside the graph."""
    from unmix_nnabla.training.step import dropout_rngs
    seconds, started = {}, {}

    def pre(function):
        started["t"] = time.perf_counter()

    def post(function):
        name = function.info.type_name
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started["t"]

    start = time.perf_counter()
    graph.feed(graph, cfg, mix, target)
    seconds["STFT (numpy)"] = time.perf_counter() - start
    graph.model.sample_dropout(dropout_rngs(0, 0, range(batch)))
    solver.zero_grad()
    graph.loss.forward(clear_no_need_grad=True, function_pre_hook=pre, function_post_hook=post)
    graph.loss.backward(clear_buffer=True, function_pre_hook=pre, function_post_hook=post)
    return seconds


def benchmark_training(steps, vs_openunmix=None):
    """Training steps (UMX and X-UMX, 1 and 2 processes; open-unmix-pytorch's in the same
    run), their GFLOP/s against the BLAS floor, and data loading; prints tables."""
    commands = []
    for model in ("umx", "xumx"):
        for procs in (1, 2):
            cmd = [sys.executable, HERE, "--train-worker", str(steps),
                   "mpi" if procs > 1 else "single", model]
            if procs > 1:
                mpirun = shutil.which("mpirun")
                if not mpirun:
                    print("(no mpirun: 2-process training not measured)")
                    continue
                cmd = [mpirun, "-n", "2", "--allow-run-as-root", "--oversubscribe"] + cmd
            commands.append(cmd)
    if vs_openunmix:
        commands.append([vs_openunmix, os.path.join(TOOLS, "openunmix_train.py"), str(steps)])
    rows = [run_json(cmd) for cmd in commands]
    floor = blas_floor(os.cpu_count() or 1)
    theirs = [r for r in rows if r["model"] == "open-unmix-pytorch"]
    umx_step = [r["step_s"] for r in rows if r["model"] == "umx" and r["processes"] == 1]
    names = {"umx": "UMX (one target)", "xumx": "X-UMX (four bridged)",
             "open-unmix-pytorch": "open-unmix-pytorch 1.3.0 UMX (2 threads)"}
    print("\n| training, full size, batch 16 x 6 s, CPU | processes | s/step | samples/s | "
          "ratio to open-unmix-pytorch's step | GFLOP/s (floor %.0f) | floor s/step |" % floor)
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        gflop = r.get("gflop_per_step", 3 * network_flops(_full(), 16 * 259) / 1e9)
        # a step of N processes does N times the work in its time
        achieved = gflop * r["processes"] / r["step_s"]
        ratio = "%.2f" % (r["step_s"] / r["processes"] / theirs[0]["step_s"]) if theirs else "-"
        print("| %s | %d | %.2f | %.2f | %s | %.1f | %.2f |" % (
            names[r["model"]], r["processes"], r["step_s"], r["samples_per_s"], ratio, achieved,
            gflop / floor))
    if umx_step:
        for r in rows:
            if r["model"] == "xumx" and r["processes"] == 1:
                print("\nX-UMX step / UMX step (1 process): %.2f" % (r["step_s"] / umx_step[0]))
    for r in rows:
        if "by_function" in r:
            by_function = r["by_function"]
            total = sum(by_function.values())
            print("\n| one %s step (1 process), by function | s | share |" % r["model"].upper())
            print("|---|---|---|")
            for name, value in sorted(by_function.items(), key=lambda kv: -kv[1])[:10]:
                print("| %s | %.2f | %.0f %% |" % (name, value, 100 * value / total))
    benchmark_loading()


def _full():
    from unmix_nnabla.networks.layout import UmxConfig
    return UmxConfig()


def loading_worker(root, kind, workers, batches):
    """Training samples per second (batches of 16 x 6 s) of one dataset kind, on the layout
    synth.py writes for it."""
    from unmix_nnabla.cli.args import get_train_args
    from unmix_nnabla.data.datasets import data_config
    from unmix_nnabla.data.datasets import KINDS, epoch_batches, load_dataset
    args = get_train_args(["--umx-train", "--root", root, "--dataset", kind] +
                          list(KINDS[kind].example))
    data = load_dataset(data_config(args), log=lambda *a: None)
    start = time.perf_counter()
    n = 0
    for _, (x, _) in zip(range(batches), epoch_batches(data.train, 0, 16, workers)):
        n += x.shape[0]
    return n / (time.perf_counter() - start)


def benchmark_loading():
    """Samples per second of each dataset kind (and musdb's STEMS) with 0, 1 and 2 threads."""
    import stempeg
    from unmix_nnabla.data.datasets import KINDS
    from unmix_nnabla.data.synth import generate_dataset
    print("\n| data loading, batches of 16 x 6 s | 0 workers | 1 worker | 2 workers |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in list(KINDS) + ["musdb STEMS"]:
            root = os.path.join(tmp, kind.replace(" ", "-"))
            if kind == "musdb STEMS":  # the real MUSDB18 clip (6.1 s), as six STEMS tracks
                os.makedirs(os.path.join(root, "train"))
                for k in range(6):
                    shutil.copyfile(stempeg.example_stem_path(),
                                    os.path.join(root, "train", "Clip %d.stem.mp4" % k))
                rates = [_stems_loading(root, w) for w in (0, 1, 2)]
            else:
                generate_dataset(root, 6, 1, 12.0, progress=False, kind=kind)
                rates = [loading_worker(root, kind, w, 4) for w in (0, 1, 2)]
            print("| %s | %.1f | %.1f | %.1f |" % ((kind,) + tuple(rates)))


def _stems_loading(root, workers):
    from unmix_nnabla.cli.args import get_train_args
    from unmix_nnabla.data.datasets import data_config
    from unmix_nnabla.data.datasets import epoch_batches, load_dataset
    args = get_train_args(["--umx-train", "--root", root, "--source", "vocals"])
    data = load_dataset(data_config(args), log=lambda *a: None)
    start = time.perf_counter()
    x, _ = next(iter(epoch_batches(data.train, 0, 16, workers)))
    return x.shape[0] / (time.perf_counter() - start)


# --------------------------------------------------------------------------------------
# agreement with the reference implementations
# --------------------------------------------------------------------------------------

def parity():
    """The agreement of convert.py + this project's separation with open-unmix-pytorch and
    with asteroid's X-UMX, on the test fixtures (made by tests/fixtures/make_*_fixture.py)."""
    import nnabla as nn
    from unmix_nnabla.base.context import set_context
    from unmix_nnabla.models.conversion import convert_checkpoints, write_converted
    from unmix_nnabla.networks.inference import network_for
    from unmix_nnabla.separation.separator import separate
    from unmix_nnabla.audio.spectral import stft
    from unmix_nnabla.models.hub import load_models
    set_context("cpu", verbose=False)

    def snr(ref, est):
        return 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - est) ** 2))
    print("| reference | network output (max relative difference) | SNR niter 0 (dB) | "
          "SNR niter 1 (dB) |")
    print("|---|---|---|---|")
    for name, fixture, model in (("open-unmix-pytorch 1.3.0 (UMX)", "openunmix_small", None),
                                 ("asteroid 0.7.0 (X-UMX)", "xumx_small", "x-umx.h5")):
        folder = os.path.join(ROOT, "tests", "fixtures", fixture)
        with np.load(os.path.join(folder, "reference.npz")) as f:
            ref = {k: f[k] for k in f.files}
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "converted")
            write_converted(convert_checkpoints(folder), out)
            nn.clear_parameters()
            targets = [str(t) for t in ref["targets"]]
            cfgs = load_models(os.path.join(out, model) if model else out, targets)
            cfg = cfgs[targets[0]]
            network = network_for(cfgs, ["vocals"])
            mag = np.abs(stft(ref["audio"], cfg.n_fft, cfg.n_hop))  # (C, frames, bins)
            ours = network.run(mag.transpose(1, 0, 2)[None], ["vocals"])["vocals"][0]
            theirs = ref["vocals_output"].transpose(2, 0, 1)
            output = np.abs(ours - theirs).max() / np.abs(theirs).max()
            snrs = []
            for niter in (0, 1):
                est, _ = separate(ref["audio"].T, int(ref["rate"]), cfgs, targets, niter=niter,
                                  progress=False)
                snrs.append([snr(ref["separated_niter%d" % niter][j], est[t].T)
                             for j, t in enumerate(targets)])
        print("| %s | %.1e | %.0f–%.0f | %.0f–%.0f |" % (name, output, min(snrs[0]), max(snrs[0]),
                                                        min(snrs[1]), max(snrs[1])))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[60.0])
    parser.add_argument("--model", default=None,
                        help="weights to time (default: full-size random weights)")
    parser.add_argument("--vs-openunmix", metavar="PYTHON", default=None,
                        help="interpreter with torch and openunmix 1.3 installed, timed side by "
                             "side")
    parser.add_argument("--openunmix-max-seconds", type=float, default=300,
                        help="longest audio given to open-unmix-pytorch (its memory grows with "
                             "the length)")
    parser.add_argument("--xumx", action="store_true",
                        help="also separate with X-UMX (full-size random weights, Sony's layout)")
    parser.add_argument("--plot", metavar="PNG", default=None,
                        help="plot seconds and peak memory against the audio length")
    parser.add_argument("--train", action="store_true",
                        help="training steps (1 and 2 processes) and data loading instead")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps")
    parser.add_argument("--threads", action="store_true",
                        help="the first --seconds with 1 or 2 worker processes x 1 or 2 BLAS "
                             "threads instead")
    parser.add_argument("--network-profile", action="store_true",
                        help="seconds and GFLOP/s of each part of the network over one worker's "
                             "batch instead")
    parser.add_argument("--workers", action="store_true",
                        help="the first --seconds with -j 1, 2, 3, 4 worker processes instead "
                             "(seconds and peak memory; with --xumx, X-UMX's)")
    parser.add_argument("--parity", action="store_true",
                        help="the agreement with open-unmix-pytorch and asteroid's X-UMX instead")
    parser.add_argument("--floor", action="store_true",
                        help="numpy's BLAS GFLOP/s on the network's products, 1 and all threads")
    parser.add_argument("--worker", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--wav", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--processes", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--train-worker", nargs="+", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--floor-worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        separation_worker(args.worker, args.model, args.wav, args.processes)
    elif args.train_worker:
        steps, comm_name, model = (args.train_worker + ["single", "umx"])[:3]
        training_worker(16, 6.0, int(steps), comm_name, model)
    elif args.floor_worker:
        floor_worker(args.floor_worker)
    elif args.floor:
        print("numpy BLAS on the network's products: %.1f GFLOP/s (1 thread), %.1f (%d threads)"
              % (blas_floor(1), blas_floor(os.cpu_count() or 1), os.cpu_count() or 1))
    elif args.train:
        benchmark_training(args.steps, args.vs_openunmix)
    elif args.parity:
        parity()
    elif args.threads:
        benchmark_threads(args.seconds[0])
    elif args.workers:
        benchmark_workers(args.seconds[0], args.xumx)
    elif args.network_profile:
        network_profile()
    else:
        benchmark_separation(args)


if __name__ == "__main__":
    main()
