"""Speed and memory of separation on this machine: python benchmark.py --seconds 60 180
(training throughput and data loading: python benchmark.py --train)

For each length, a fresh process separates N s of stereo 44.1 kHz audio (the real MUSDB clip
that stempeg ships, looped, in a float WAV file) into 4 stems with full-size random weights
(umxhq's shapes) and niter 1, the way test.py does (the WAV decoded into a temporary file,
stems streamed to WAV files), and reports seconds per stage (decoding is timed apart from
"separate"), the real-time factor and the peak memory: the largest sum of the proportional set
sizes (PSS, shared pages split among their users) of the process and its worker processes,
sampled every 0.1 s in a second run (reading PSS costs the kernel time, so the timed run is
not sampled). With --vs-openunmix PYTHON (an interpreter with open-unmix-pytorch installed),
the same audio, as an array in memory, goes through openunmix's Separator in that interpreter,
in the same run.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


RATE = 44100


def _clip():
    import stempeg
    clip, clip_rate = stempeg.read_stems(stempeg.example_stem_path(), stem_id=0,
                                         dtype=np.float32)
    assert clip_rate == RATE
    return clip


def song(seconds):
    """`seconds` of real music: the stempeg clip's mixture, looped. [shape=(T, 2)]"""
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


def nnabla_worker(seconds, model_dir, wav, processes=None):
    """test.py's way: the WAV decoded into a temporary file, stems streamed to WAV files."""
    from inference import network_for
    from separator import separate_stream
    from vocabulary import SOURCES
    from weights import load_models
    from audio import decode_audio, write_stream
    from context import set_context
    set_context("cpu", verbose=False)
    start = time.perf_counter()
    cfgs = load_models(model_dir, list(SOURCES))
    network = network_for(cfgs)  # as test.py: once per model
    load = time.perf_counter() - start
    timings = {}
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        audio = decode_audio(wav, rate=RATE, stereo=True)
        decode = time.perf_counter() - start
        with audio:
            start = time.perf_counter()
            names, rate, blocks = separate_stream(audio, RATE, cfgs, list(SOURCES), niter=1,
                                                  progress=False, timings=timings,
                                                  network=network,
                                                  processes=processes)
            write_stream(names, rate, _timed_blocks(blocks, timings), out)
            total = time.perf_counter() - start
    return dict(timings, load=load, decode=decode, separate=total)


def _timed_blocks(blocks, timings):
    """The blocks, with the time spent writing them added to timings['write']."""
    timings.setdefault("write", 0.0)
    for block in blocks:
        start = time.perf_counter()
        yield block
        timings["write"] += time.perf_counter() - start


OPENUNMIX_WORKER = r"""
import json, sys, time, types
sys.modules.setdefault("torchaudio", types.ModuleType("torchaudio"))
import numpy as np, torch
from openunmix import model, utils
seconds = float(sys.argv[1]); audio = np.load(sys.argv[2])
torch.set_num_threads(2)
torch.manual_seed(0)
targets = ["vocals", "drums", "bass", "other"]
t0 = time.perf_counter()
models = {t: model.OpenUnmix(nb_bins=2049, nb_channels=2, hidden_size=512, max_bin=1487).eval()
          for t in targets}
sep = model.Separator(target_models=models, niter=1, residual=False, n_fft=4096, n_hop=1024,
                      nb_channels=2, sample_rate=44100.0, wiener_win_len=300).eval()
load = time.perf_counter() - t0
with torch.no_grad():
    t0 = time.perf_counter()
    est = sep(torch.as_tensor(audio.T[None]))
    total = time.perf_counter() - t0
print(json.dumps({"load": load, "separate": total}))
"""


OPENUNMIX_TRAIN_WORKER = r"""
import json, sys, time, types
sys.modules.setdefault("torchaudio", types.ModuleType("torchaudio"))
import torch
from openunmix import model, transforms
steps = int(sys.argv[1])
torch.set_num_threads(2)
torch.manual_seed(0)
# open-unmix-pytorch's train.py step: STFT magnitudes of mixture and target, MSE, Adam
stft, _ = transforms.make_filterbanks(n_fft=4096, n_hop=1024, sample_rate=44100.0)
encoder = torch.nn.Sequential(stft, model.ComplexNorm(mono=False))
unmix = model.OpenUnmix(nb_bins=2049, nb_channels=2, hidden_size=512, max_bin=1487).train()
optimizer = torch.optim.Adam(unmix.parameters(), lr=1e-3, weight_decay=1e-5)
x, y = torch.randn(16, 2, 6 * 44100), torch.randn(16, 2, 6 * 44100)
def step():
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(unmix(encoder(x)), encoder(y))
    loss.backward()
    optimizer.step()
step()  # warm-up
t0 = time.perf_counter()
for _ in range(steps):
    step()
seconds = (time.perf_counter() - t0) / steps
print(json.dumps({"model": "open-unmix-pytorch", "processes": 1, "step_s": seconds,
                  "samples_per_s": 16 / seconds}))
"""


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


def run_worker(cmd, seconds):
    """Run a worker twice: timed, then with its memory sampled; → its JSON result with the
    wall time and the peak PSS."""
    result = _run(cmd, sample_memory=False)
    result["peak_mb"] = _run(cmd, sample_memory=True)["peak_mb"]
    result["rtf"] = result["separate"] / seconds
    return result


def _run(cmd, sample_memory=False, env=None):
    """Run a worker (killed if this process dies) → the JSON of its last output line, with
    its wall time and (sample_memory) its peak PSS; a failed worker ends the benchmark."""
    from runtime import die_with_parent
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, cwd=HERE, env=env,
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
        raise SystemExit("benchmark worker failed:\n" + stderr[-3000:])
    result = json.loads(stdout.strip().splitlines()[-1])
    result["process_wall"] = wall
    result["peak_mb"] = peak
    return result


def training_worker(batch, seconds, steps, comm_name, model="umx"):
    """Seconds per training step of the full-size UMX (one target) or X-UMX (random data);
    prints JSON."""
    import nnabla as nn
    import nnabla.solvers as S
    from layout import UmxConfig
    from vocabulary import XUMX_BRANCHES
    from train import build_training_graph, dropout_rngs, train_step
    from context import set_context
    from runtime import limit_blas_threads
    comm = None
    if comm_name == "mpi":
        from comm import get_communicator
        comm = get_communicator("cpu")
        limit_blas_threads(max(1, (os.cpu_count() or 1) // comm.size))  # as train.py does
    set_context("cpu", verbose=False)
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
    result = {"model": model, "processes": nb_procs, "step_s": per_step,
              "samples_per_s": nb_procs * batch / per_step}
    if not comm:
        # one more step, its NNabla functions timed by type (hooks: not in the figures above)
        result["by_function"] = profile_training_step(graph, solver, mix, target, cfg, batch)
    if not comm or comm.rank == 0:
        print(json.dumps(result))


def profile_training_step(graph, solver, mix, target, cfg, batch):
    """Seconds per NNabla function type (forward + backward) of one training step, plus
    'STFT (numpy)', the spectrograms computed outside the graph."""
    from train import dropout_rngs
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


# each dataset kind's flags on the layout `synth.generate_dataset` writes (see tests/test_datasets.py)
LOADING_KINDS = [
    ("musdb, WAV", "musdb", ["--is-wav", "--source", "vocals"]),
    ("musdb, STEMS", "musdb", ["--source", "vocals"]),
    ("aligned", "aligned", ["--input-file", "mixture.wav", "--output-file", "vocals.wav"]),
    ("sourcefolder", "sourcefolder", ["--target-dir", "vocals", "--interferer-dirs", "drums",
                                      "bass", "other", "--nb-train-samples", "1000"]),
    ("trackfolder_fix (FLAC)", "trackfolder_fix", ["--target-file", "vocals.flac",
                                                   "--interferer-files", "drums.flac",
                                                   "bass.flac", "other.flac"]),
    ("trackfolder_var", "trackfolder_var", ["--target-file", "vocals.wav"]),
]


def loading_worker(root, kind, flags, workers, batches):
    """Training samples per second (batches of 16 x 6 s) of one dataset kind."""
    from args import get_train_args
    from args import data_config
    from datasets import epoch_batches, load_dataset
    args = get_train_args(["--umx-train", "--root", root, "--dataset", kind] + flags)
    data = load_dataset(data_config(args), log=lambda *a: None)
    start = time.perf_counter()
    n = 0
    for _, (x, _) in zip(range(batches), epoch_batches(data.train, 0, 16, workers)):
        n += x.shape[0]
    return n / (time.perf_counter() - start)


def benchmark_loading():
    """Samples per second of each dataset kind with 0, 1 and 2 loading threads."""
    import shutil
    import stempeg
    from synth import generate_dataset
    print("\n| data loading, batches of 16 x 6 s | 0 workers | 1 worker | 2 workers |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, kind, flags in LOADING_KINDS:
            root = os.path.join(tmp, name.split()[0] + ("-stems" if "STEMS" in name else ""))
            if "STEMS" in name:  # the real MUSDB18 clip (6.1 s), as six STEMS tracks
                os.makedirs(os.path.join(root, "train"))
                for k in range(6):
                    shutil.copyfile(stempeg.example_stem_path(),
                                    os.path.join(root, "train", "Clip %d.stem.mp4" % k))
            else:
                generate_dataset(root, 6, 1, 12.0, progress=False, kind=kind)
            batches = 1 if "STEMS" in name else 4
            rates = [loading_worker(root, kind, flags, w, batches) for w in (0, 1, 2)]
            print("| %s | %.1f | %.1f | %.1f |" % ((name,) + tuple(rates)))


def benchmark_training(steps, vs_openunmix=None):
    """Training step and data-loading throughput; prints a table."""
    import shutil
    commands = []
    for model in ("umx", "xumx"):
        for procs in (1, 2):
            cmd = [sys.executable, __file__, "--train-worker", str(steps),
                   "mpi" if procs > 1 else "single", model]
            if procs > 1:
                mpirun = shutil.which("mpirun")
                if not mpirun:
                    print("(no mpirun: 2-process training not measured)")
                    continue
                cmd = [mpirun, "-n", "2", "--allow-run-as-root", "--oversubscribe"] + cmd
            commands.append(cmd)
    if vs_openunmix:
        commands.append([vs_openunmix, "-c", OPENUNMIX_TRAIN_WORKER, str(steps)])
    rows = [_run(cmd) for cmd in commands]
    names = {"umx": "UMX (one target)", "xumx": "X-UMX (four bridged)",
             "open-unmix-pytorch": "open-unmix-pytorch 1.3.0 UMX (2 threads)"}
    print("\n| training, full size, batch 16 x 6 s, CPU | processes | s/step | samples/s |")
    print("|---|---|---|---|")
    for r in rows:
        print("| %s | %d | %.2f | %.2f |" % (names[r["model"]], r["processes"], r["step_s"],
                                            r["samples_per_s"]))
    for r in rows:
        if "by_function" not in r:
            continue
        by_function = r["by_function"]
        total = sum(by_function.values())
        print("\n| one %s step (1 process), by function | s | share |" % r["model"].upper())
        print("|---|---|---|")
        for name, value in sorted(by_function.items(), key=lambda kv: -kv[1])[:10]:
            print("| %s | %.2f | %.0f %% |" % (name, value, 100 * value / total))
    benchmark_loading()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[60.0])
    parser.add_argument("--model", default=None,
                        help="weights to time (default: full-size random weights)")
    parser.add_argument("--vs-openunmix", metavar="PYTHON", default=None,
                        help="interpreter with openunmix 1.3 installed, timed side by side")
    parser.add_argument("--train", action="store_true",
                        help="measure training steps (1 and 2 processes) and data loading instead")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps")
    parser.add_argument("--openunmix-max-seconds", type=float, default=300,
                        help="longest audio given to open-unmix-pytorch (its memory grows by "
                             "about 27 MB per second of audio)")
    parser.add_argument("--plot", metavar="PNG", default=None,
                        help="also plot seconds and peak memory against the audio length")
    parser.add_argument("--xumx", action="store_true",
                        help="also separate with X-UMX (full-size random weights, Sony's layout)")
    parser.add_argument("--parity", action="store_true",
                        help="measure the agreement with open-unmix-pytorch and asteroid's X-UMX "
                             "(the test fixtures) instead")
    parser.add_argument("--threads", action="store_true",
                        help="time the first --seconds with 1 or 2 worker processes x 1 or 2 BLAS "
                             "threads instead")
    parser.add_argument("--worker", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--processes", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--train-worker", nargs="+", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--wav", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.train_worker:
        steps, comm_name, model = (args.train_worker + ["single", "umx"])[:3]
        training_worker(16, 6.0, int(steps), comm_name, model)
        return
    if args.train:
        benchmark_training(args.steps, args.vs_openunmix)
        return
    if args.parity:
        parity()
        return

    if args.worker is not None:
        print(json.dumps(nnabla_worker(args.worker, args.model, args.wav, args.processes)))
        return
    if args.threads:
        benchmark_threads(args.seconds[0])
        return

    with tempfile.TemporaryDirectory() as tmp:
        from layout import UmxConfig
        from vocabulary import XUMX_BRANCHES
        from tools.random_weights import write_random_weights, write_random_xumx
        models = [("open-unmix-nnabla", args.model)]
        if args.model is None:
            models[0] = ("open-unmix-nnabla", os.path.join(tmp, "umxhq-random"))
            write_random_weights(models[0][1], UmxConfig())
        if args.xumx:
            models.append(("open-unmix-nnabla X-UMX", os.path.join(tmp, "x-umx.h5")))
            write_random_xumx(models[1][1], UmxConfig(xumx_branches=XUMX_BRANCHES))
        rows = []
        for seconds in args.seconds:
            wav = os.path.join(tmp, "song.wav")
            write_song(wav, seconds)
            for name, model_dir in models:
                ours = run_worker([sys.executable, __file__, "--worker", str(seconds),
                                   "--model", model_dir, "--wav", wav], seconds)
                rows.append((name, seconds, ours))
            if args.vs_openunmix and seconds <= args.openunmix_max_seconds:
                array = os.path.join(tmp, "song.npy")
                np.save(array, song(seconds))
                theirs = run_worker([args.vs_openunmix, "-c", OPENUNMIX_WORKER, str(seconds),
                                     array], seconds)
                rows.append(("open-unmix-pytorch", seconds, theirs))
    print_table(rows)
    if args.plot:
        plot(rows, args.plot)


def benchmark_threads(seconds):
    """Separation seconds with worker processes x BLAS threads per process, on `seconds` of
    music (the decision behind runtime.limit_blas_threads)."""
    from layout import UmxConfig
    from tools.random_weights import write_random_weights
    print("| worker processes | BLAS threads each | separate (s) | network (s) |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, wav = os.path.join(tmp, "umxhq-random"), os.path.join(tmp, "song.wav")
        write_random_weights(model_dir, UmxConfig())
        write_song(wav, seconds)
        for processes, threads in ((2, 1), (1, 2), (2, 2), (1, 1)):
            env = dict(os.environ, OMP_NUM_THREADS=str(threads),
                       OPENBLAS_NUM_THREADS=str(threads))
            cmd = [sys.executable, __file__, "--worker", str(seconds), "--model", model_dir,
                   "--wav", wav, "--processes", str(processes)]
            r = _run(cmd, env=env)
            print("| %d | %d | %.2f | %.2f |" % (processes, threads, r["separate"],
                                                r["network (wall)"]))


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


def parity():
    """The agreement of convert.py + this project's separation with open-unmix-pytorch and with
    asteroid's X-UMX, on the test fixtures (made by tests/fixtures/make_*_fixture.py)."""
    from context import set_context
    from conversion import convert_checkpoints, write_converted
    from separator import separate
    from spectral import stft
    from weights import load_models
    import nnabla as nn
    set_context("cpu", verbose=False)

    def snr(ref, est):
        return 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - est) ** 2))
    print("| reference | network output (max relative difference) | SNR niter 0 (dB) | "
          "SNR niter 1 (dB) |")
    print("|---|---|---|---|")
    for name, fixture, model in (("open-unmix-pytorch 1.3.0 (UMX)", "openunmix_small", None),
                                 ("asteroid 0.7.0 (X-UMX)", "xumx_small", "x-umx.h5")):
        folder = os.path.join(HERE, "tests", "fixtures", fixture)
        with np.load(os.path.join(folder, "reference.npz")) as f:
            ref = {k: f[k] for k in f.files}
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "converted")
            write_converted(convert_checkpoints(folder), out)
            nn.clear_parameters()
            targets = [str(t) for t in ref["targets"]]
            cfgs = load_models(os.path.join(out, model) if model else out, targets)
            cfg = cfgs[targets[0]]
            from inference import network_for
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


def print_table(rows):
    stages = ["decode", "stft", "network", "wiener", "istft", "write"]
    print("\n| system | audio (s) | separate (s) | RTF | process wall (s) | peak PSS (MB) | "
          + " | ".join(stages) + " |")
    print("|---" * (6 + len(stages)) + "|")
    for name, seconds, r in rows:
        # the network's wall time (its processes run in parallel); other stages as timed
        per_stage = [r.get("network (wall)" if s == "network" else s) for s in stages]
        print("| %s | %.0f | %.2f | %.3f | %.1f | %.0f | %s |" % (
            name, seconds, r["separate"], r["rtf"], r["process_wall"], r["peak_mb"],
            " | ".join("%.2f" % v if v else "-" for v in per_stage)))


if __name__ == "__main__":
    main()
