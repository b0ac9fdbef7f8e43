"""Evaluate on MUSDB18: python eval.py --umx-infer --model DIR --root MUSDB18 --out-dir OUT

Separates each track of the subset with the separation function of test.py, writes the
estimates in musdb's layout (OUT/<subset>/<track>/<target>.wav), scores them with
`museval.eval_mus_track` (BSSEval v4, 1 s windows) into museval's per-track JSON
(OUT/<subset>/<track>.json), and aggregates the seed's table: per target, the median over
frames, then the median over tracks, of SDR/SIR/SAR/ISR (OUT/results.md, OUT/results.csv,
and a boxplot of per-track SDR, OUT/sdr_boxplot.png). A re-run skips finished tracks.
"""
import os
import shutil
import sys
import traceback
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from args import get_eval_args
from audio import write_stream
from context import set_context
from files import atomic_path, check_out_dir
from runtime import UmxError, exit_on_error

METRICS = ["SDR", "SIR", "SAR", "ISR"]
# The published scores (median over frames, median over tracks) the seed's README lists.
PAPER_SCORES = {
    "umx": {"vocals": (6.32, 13.33, 6.52, 12.95), "bass": (5.23, 10.93, 6.34, 9.23),
            "drums": (5.73, 11.12, 6.02, 10.51), "other": (4.02, 6.59, 4.74, 9.31)},
    "umxhq": {"vocals": (6.25, 12.95, 6.50, 12.70), "bass": (5.07, 10.35, 6.02, 9.71),
              "drums": (6.04, 11.65, 5.93, 11.17), "other": (4.28, 7.10, 4.62, 8.78)},
}


def musdb_tracks(root, is_wav, subset, names=None, log=None):
    """The musdb Track objects of `subset`, optionally only `names` (in that order).

    A track that cannot be decoded is reported through `log` and left out.
    """
    import musdb
    from data import check_root
    if not root:
        raise UmxError("--root is required: the MUSDB18 folder to evaluate on")
    check_root(root, subset)
    try:
        tracks = musdb.DB(root=root, is_wav=is_wav, subsets=subset).tracks
    except Exception:
        # musdb probes every file when listing: find the track(s) it cannot read
        tracks = []
        for entry in sorted(os.listdir(os.path.join(root, subset))):
            try:
                tracks += _single_track(root, is_wav, subset, entry)
            except Exception as exc:
                if log:
                    log("track '%s' skipped: cannot read it (%s)" % (_track_name(entry), _reason(exc)))
    if not tracks:
        raise UmxError("no tracks in %s/%s%s" % (root, subset, "" if is_wav else
                                                  " (for decoded WAV folders pass --is-wav)"))
    if names:
        by_name = {t.name: t for t in tracks}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise UmxError("no track '%s' in %s/%s" % (unknown[0], root, subset))
        tracks = [by_name[n] for n in names]
    return tracks


def _track_name(entry):
    return entry[: -len(".stem.mp4")] if entry.endswith(".stem.mp4") else entry


def _single_track(root, is_wav, subset, entry):
    """musdb's Track for one file or folder of root/subset, through a private root linking only it."""
    import atexit
    import musdb
    import tempfile
    private = tempfile.mkdtemp(prefix="umx-eval-")
    atexit.register(shutil.rmtree, private, True)
    os.makedirs(os.path.join(private, subset))
    os.symlink(os.path.abspath(os.path.join(root, subset, entry)), os.path.join(private, subset, entry))
    return musdb.DB(root=private, is_wav=is_wav, subsets=subset).tracks


def read_estimates(folder):
    """{target: audio [shape=(nb_timesteps, 2)]} of the WAV files in `folder`."""
    import soundfile as sf
    if not os.path.isdir(folder):
        raise UmxError("no estimates in %s" % folder)
    out = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".wav"):
            out[name[:-4]] = sf.read(os.path.join(folder, name), dtype="float64", always_2d=True)[0]
    if not out:
        raise UmxError("no .wav estimates in %s" % folder)
    return out


def score_track(root, is_wav, subset, name, estimates_dir, json_path):
    """Score one track's estimates with museval and write its JSON atomically (in a worker)."""
    import museval
    entry = name if is_wav else name + ".stem.mp4"
    track = _single_track(root, is_wav, subset, entry)[0]
    estimates = read_estimates(estimates_dir)
    n = track.audio.shape[0]
    # museval needs equal lengths: decoders can differ by a few samples
    estimates = {k: np.pad(v[:n], ((0, max(0, n - v.shape[0])), (0, 0))) for k, v in estimates.items()
                 if k in track.targets}
    if not estimates:
        raise UmxError("no estimate of a MUSDB target (%s) in %s"
                       % (", ".join(track.targets), estimates_dir))
    scores = museval.eval_mus_track(track, estimates)
    scores.validate()
    os.makedirs(os.path.dirname(json_path), exist_ok=True)
    with atomic_path(json_path) as tmp:
        with open(tmp, "w") as f:
            f.write(scores.json)
    return name


def aggregate(json_paths):
    """museval's EvalStore over the JSON files: (table DataFrame targets x metrics, per-track SDR).

    The table holds the median over frames, then the median over tracks.
    """
    import museval
    import simplejson
    from museval.aggregate import json2df
    store = museval.EvalStore(frames_agg="median", tracks_agg="median")
    for path in json_paths:
        with open(path) as f:
            store.add_track(json2df(simplejson.loads(f.read(), allow_nan=True),
                                    os.path.basename(path)[:-5]))
    table = store.agg_frames_tracks_scores().unstack("metric")[METRICS]
    per_track = store.agg_frames_scores().unstack("metric")["SDR"].unstack("target")
    return table, per_track


def paper_model(model):
    """'umx' or 'umxhq' when the model folder/zip's name says so, else None."""
    if not model:
        return None
    name = os.path.basename(os.path.normpath(model)).lower()
    name = name[:-4] if name.endswith(".zip") else name
    return name if name in PAPER_SCORES else None


def format_table(table, paper=None):
    """The seed's table in Markdown (Paper columns beside ours when `paper` names a model)."""
    ours = "NNabla"
    header = ["target"] + [m if not paper else "%s (%s)" % (m, who)
                           for m in METRICS for who in ((ours, "paper") if paper else (ours,))]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for target in table.index:
        cells = []
        for i, metric in enumerate(METRICS):
            cells.append("%.2f" % table.loc[target, metric])
            if paper:
                ref = PAPER_SCORES[paper].get(target)
                cells.append("%.2f" % ref[i] if ref else "-")
        lines.append("| %s | %s |" % (target, " | ".join(cells)))
    return "\n".join(lines)


def boxplot(per_track, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    targets = list(per_track.columns)
    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(targets), 4))
    ax.boxplot([per_track[t].dropna().values for t in targets], showmeans=False)
    ax.set_xticks(range(1, len(targets) + 1), targets)
    ax.set_ylabel("SDR (dB), median over frames")
    ax.set_title("per-track SDR (%d tracks)" % len(per_track))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def evaluate(args, progress=True):
    """Separate (unless --estimates), score and aggregate; returns the results table."""
    from tqdm import tqdm
    check_out_dir(args.out_dir)
    tracks = musdb_tracks(args.root, args.is_wav, args.subset, args.tracks,
                          log=lambda line: print(line, file=sys.stderr))
    cfgs = network = None
    if args.estimates is None:
        from inference import InferenceNetwork
        from weights import load_models
        set_context(args.context)
        cfgs = load_models(args.model, args.targets)
        network = InferenceNetwork.from_parameter_scopes(cfgs)  # once for all tracks
    subset_dir = os.path.join(args.out_dir, args.subset)
    json_paths = {t.name: os.path.join(subset_dir, t.name + ".json") for t in tracks}
    todo = [t for t in tracks if not os.path.isfile(json_paths[t.name])]
    if len(todo) < len(tracks):
        print("%d of %d tracks already scored in %s: skipped" % (len(tracks) - len(todo),
                                                                 len(tracks), subset_dir))
    failed = {}
    pool = ProcessPoolExecutor(args.cores) if args.cores > 1 else None
    futures = {}
    for track in tqdm(todo, desc="tracks", disable=not progress):
        try:
            if args.estimates:
                est_dir = os.path.join(args.estimates, args.subset, track.name)
            else:
                est_dir = os.path.join(subset_dir, track.name)
                expected = set(args.targets) | ({"accompaniment"} if len(args.targets) == 1 else set())
                if not expected <= {f[:-4] for f in (os.listdir(est_dir) if os.path.isdir(est_dir) else [])}:
                    from separator import separate_stream
                    names, rate, blocks = separate_stream(
                        track.audio, track.rate, cfgs, args.targets, niter=args.niter,
                        softmask=args.softmask, alpha=args.alpha,
                        residual_model=args.residual_model, progress=progress,
                        network=network)
                    write_stream(names, rate, blocks, est_dir, out_rate=int(track.rate))
            job = (args.root, args.is_wav, args.subset, track.name, est_dir, json_paths[track.name])
            if pool:
                futures[track.name] = pool.submit(score_track, *job)
            else:
                score_track(*job)
        except Exception as exc:  # one bad track must not stop the others
            failed[track.name] = _reason(exc)
            print("track '%s' skipped: %s" % (track.name, failed[track.name]), file=sys.stderr)
    for name, future in futures.items():
        try:
            future.result()
        except Exception as exc:
            failed[name] = _reason(exc)
            print("track '%s' skipped: %s" % (name, failed[name]), file=sys.stderr)
    if pool:
        pool.shutdown()
    scored = [p for p in json_paths.values() if os.path.isfile(p)]
    if not scored:
        raise UmxError("no track could be scored (%d failed)" % len(failed))
    table, per_track = aggregate(scored)
    paper = paper_model(args.model)
    markdown = format_table(table, paper)
    header = "Scores of %d tracks (%s, median over frames, median over tracks)\n\n" % (
        len(scored), args.subset)
    print("\n" + header + markdown)
    with atomic_path(os.path.join(args.out_dir, "results.md")) as tmp:
        with open(tmp, "w") as f:
            f.write(header + markdown + "\n")
    with atomic_path(os.path.join(args.out_dir, "results.csv")) as tmp:
        table.to_csv(tmp)
    boxplot(per_track, os.path.join(args.out_dir, "sdr_boxplot.png"))
    return table


def _reason(exc):
    if isinstance(exc, UmxError):
        return str(exc)
    last = traceback.format_exception_only(type(exc), exc)[-1].strip()
    return last.splitlines()[-1]


def main(argv=None):
    exit_on_error(evaluate, get_eval_args(argv))


if __name__ == "__main__":
    main()
