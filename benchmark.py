"""Speed and memory of separation on this machine: python benchmark.py --seconds 60 180

For each length, a fresh process separates N s of stereo 44.1 kHz audio (the real MUSDB clip
that stempeg ships, looped) into 4 stems with full-size random weights (umxhq's shapes) and
niter 1, and reports seconds per stage, the real-time factor and its peak memory (max RSS).
With --vs-openunmix PYTHON (an interpreter with open-unmix-pytorch installed), the same audio
goes through openunmix's Separator in that interpreter, in the same run.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def song(seconds, rate=44100):
    """`seconds` of real music: the stempeg clip's mixture, looped. [shape=(T, 2)]"""
    import stempeg
    clip, clip_rate = stempeg.read_stems(stempeg.example_stem_path(), stem_id=0,
                                         dtype=np.float32)
    assert clip_rate == rate
    reps = int(np.ceil(seconds * rate / clip.shape[0]))
    return np.ascontiguousarray(np.tile(clip, (reps, 1))[: int(seconds * rate)])


def nnabla_worker(seconds, model_dir):
    import nnabla as nn  # noqa: F401
    from separator import TARGETS, load_models, separate
    from utils import set_context
    set_context("cpu", verbose=False)
    audio = song(seconds)
    start = time.perf_counter()
    cfgs = load_models(model_dir, TARGETS)
    load = time.perf_counter() - start
    timings = {}
    start = time.perf_counter()
    separate(audio, 44100, cfgs, TARGETS, niter=1, progress=False, timings=timings)
    total = time.perf_counter() - start
    return dict(timings, load=load, separate=total)


OPENUNMIX_WORKER = r"""
import json, sys, time, types, resource
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
print(json.dumps({"load": load, "separate": total,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_worker(cmd, seconds):
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit("benchmark worker failed:\n" + proc.stderr[-3000:])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall"] = wall
    result["rtf"] = result["separate"] / seconds
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[60.0])
    parser.add_argument("--model", default=None,
                        help="weights to time (default: full-size random weights)")
    parser.add_argument("--vs-openunmix", metavar="PYTHON", default=None,
                        help="interpreter with openunmix 1.3 installed, timed side by side")
    parser.add_argument("--worker", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker is not None:
        result = nnabla_worker(args.worker, args.model)
        result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            from model import UmxConfig
            from separator import write_random_weights
            model_dir = os.path.join(tmp, "umxhq-random")
            write_random_weights(model_dir, UmxConfig())
        rows = []
        for seconds in args.seconds:
            ours = run_worker([sys.executable, __file__, "--worker", str(seconds),
                               "--model", model_dir], seconds)
            rows.append(("open-unmix-nnabla", seconds, ours))
            if args.vs_openunmix:
                wav = os.path.join(tmp, "song.npy")
                np.save(wav, song(seconds))
                theirs = run_worker([args.vs_openunmix, "-c", OPENUNMIX_WORKER, str(seconds), wav],
                                    seconds)
                rows.append(("open-unmix-pytorch", seconds, theirs))
    print_table(rows)


def print_table(rows):
    stages = ["stft", "network", "wiener", "istft"]
    print("\n| system | audio (s) | separate (s) | RTF | process wall (s) | peak RSS (MB) | "
          + " | ".join(stages) + " |")
    print("|---" * (6 + len(stages)) + "|")
    for name, seconds, r in rows:
        net = r.get("network (wall)") or sum(v for k, v in r.items() if k.startswith("network "))
        per_stage = [r.get(s) if s != "network" else (net or None) for s in stages]
        print("| %s | %.0f | %.2f | %.3f | %.1f | %.0f | %s |" % (
            name, seconds, r["separate"], r["rtf"], r["process_wall"], r["peak_mb"],
            " | ".join("%.2f" % v if v else "-" for v in per_stage)))
    for name, seconds, r in rows:
        nets = {k[len("network "):]: round(v, 2) for k, v in r.items() if k.startswith("network ")}
        if nets:
            print("%s %.0f s: network per target (s): %s" % (name, seconds, nets))


if __name__ == "__main__":
    main()
