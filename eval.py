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
from contextlib import ExitStack

import numpy as np

from args import get_eval_args
from audio import write_stream
from context import set_context
from files import WriteError, atomic_path, output_folder, refuse_overlaps, writing_into
from runtime import UmxError, run_cli, worker_pool

METRICS = ["SDR", "SIR", "SAR", "ISR"]
# The published scores (median over frames, median over tracks): UMX's and UMXHQ's from the
# seed's README, X-UMX's SDR from Sawata et al. (ICASSP 2021; its other metrics: None)
PAPER_SCORES = {
    "x-umx": {"vocals": (6.61, None, None, None), "drums": (6.47, None, None, None),
              "bass": (5.43, None, None, None), "other": (4.64, None, None, None)},
    "umx": {"vocals": (6.32, 13.33, 6.52, 12.95), "bass": (5.23, 10.93, 6.34, 9.23),
            "drums": (5.73, 11.12, 6.02, 10.51), "other": (4.02, 6.59, 4.74, 9.31)},
    "umxhq": {"vocals": (6.25, 12.95, 6.50, 12.70), "bass": (5.07, 10.35, 6.02, 9.71),
              "drums": (6.04, 11.65, 5.93, 11.17), "other": (4.28, 7.10, 4.62, 8.78)},
}


def musdb_tracks(root, is_wav, subset, names=None, unreadable=None):
    """The musdb Track objects of `subset`, optionally only `names` (in that order).

    A track that cannot be decoded is left out; unreadable: a dict that gets its name → why.
    """
    import musdb
    from datasets import check_root
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
                if unreadable is not None:
                    unreadable[_track_name(entry)] = "cannot read it (%s)" % _reason(exc)
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


def read_estimates(folder, reference, rate, targets):
    """{target: audio [shape=(nb_timesteps, nb_channels)]} of folder/<target>.wav for the
    `targets` that are there, each checked against the reference [shape=(nb_timesteps,
    nb_channels)] at `rate`: another rate, channel count or length, or a NaN or infinite
    sample is an error naming the file (nothing is padded, cut or resampled)."""
    import soundfile as sf
    if not os.path.isdir(folder):
        raise UmxError("no estimates in %s" % folder)
    out = {}
    for target in targets:
        path = os.path.join(folder, target + ".wav")
        if not os.path.isfile(path):
            continue
        try:
            audio, file_rate = sf.read(path, dtype="float64", always_2d=True)
        except Exception as exc:
            raise UmxError("%s cannot be read: %s" % (path, str(exc).strip().splitlines()[0]))
        if file_rate != rate:
            raise UmxError("%s is at %d Hz, the reference at %d Hz" % (path, file_rate, rate))
        if audio.shape != reference.shape:
            raise UmxError("%s has %d samples x %d channels, the reference %d x %d"
                           % ((path,) + audio.shape + reference.shape))
        if not np.all(np.isfinite(audio)):
            raise UmxError("%s holds NaN or infinite samples" % path)
        out[target] = audio
    if not out:
        raise UmxError("no estimate of a MUSDB target (%s) in %s" % (", ".join(targets), folder))
    return out


def score_track(root, is_wav, subset, name, estimates_dir, json_path):
    """Score one track's estimates with museval and write its JSON atomically (in a worker)."""
    import museval
    entry = name if is_wav else name + ".stem.mp4"
    track = _single_track(root, is_wav, subset, entry)[0]
    estimates = read_estimates(estimates_dir, track.audio, track.rate, list(track.targets))
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=1, user_api="blas"):  # the same scores serially or in workers
        scores = museval.eval_mus_track(track, estimates)
    scores.validate()
    with writing_into(os.path.dirname(os.path.dirname(json_path))):
        os.makedirs(os.path.dirname(json_path), exist_ok=True)
    with atomic_path(json_path) as tmp:
        with open(tmp, "w") as f:
            f.write(scores.json)
    return name


def aggregate(json_paths):
    """museval's EvalStore over the JSON files → (table, per-track SDR, unscored frames).

    table [targets x metrics]: the median over frames, then the median over tracks, as
    museval aggregates (frames without a score, NaN where the reference is silent, are left
    out of the medians: `unscored` counts them, so that the table can say so).
    per_track [tracks x targets]: the median SDR over frames.
    unscored: {target: (frames without an SDR, frames)}.
    """
    import museval
    import simplejson
    from museval.aggregate import json2df
    store = museval.EvalStore(frames_agg="median", tracks_agg="median")
    for path in json_paths:
        try:
            with open(path) as f:
                scores = simplejson.loads(f.read(), allow_nan=True)
            frame = json2df(scores, os.path.basename(path)[:-5])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UmxError("%s is not a museval score file (%s): delete it to score the track "
                           "again" % (path, _reason(exc)))
        store.add_track(frame)
    table = store.agg_frames_tracks_scores().unstack("metric")[METRICS]
    per_track = store.agg_frames_scores().unstack("metric")["SDR"].unstack("target")
    sdr = store.df[store.df["metric"] == "SDR"]
    unscored = {target: (int(group["score"].isna().sum()), len(group))
                for target, group in sdr.groupby("target")}
    return table, per_track, unscored


def paper_model(model):
    """'umx', 'umxhq' or 'x-umx' when the model's folder or file name says so, else None."""
    if not model:
        return None
    name = os.path.splitext(os.path.basename(os.path.normpath(model)).lower())[0]
    return name if name in PAPER_SCORES else None


def format_table(table, unscored, paper=None):
    """The seed's table in Markdown (paper columns beside ours when `paper` names a model),
    with the number of frames that have no score (left out of the medians) per target."""
    ours = "NNabla"
    header = ["target"] + [m if not paper else "%s (%s)" % (m, who)
                           for m in METRICS for who in ((ours, "paper") if paper else (ours,))]
    header.append("frames without score")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for target in table.index:
        cells = []
        for i, metric in enumerate(METRICS):
            cells.append("%.2f" % table.loc[target, metric])
            if paper:
                ref = PAPER_SCORES[paper].get(target)
                cells.append("%.2f" % ref[i] if ref and ref[i] is not None else "-")
        cells.append("%d of %d" % unscored.get(target, (0, 0)))
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


def planned_files(args, tracks):
    """(inputs, outputs) of this run, for `files.refuse_overlaps`: the dataset's and the
    estimates' files read, the estimates, scores and tables written."""
    from separator import stem_names
    inputs, outputs = [], []
    for track in tracks:
        inputs.append((track.path, "the dataset's"))
        inputs += [(source.path, "the dataset's") for source in track.sources.values()]
        subset_dir = os.path.join(args.out_dir, args.subset)
        outputs.append((os.path.join(subset_dir, track.name + ".json"), "track " + track.name))
        if args.estimates:
            folder = os.path.join(args.estimates, args.subset, track.name)
            inputs += [(os.path.join(folder, t + ".wav"), "the estimate (--estimates)")
                       for t in track.targets]
        else:
            outputs += [(os.path.join(subset_dir, track.name, name + ".wav"), "track " + track.name)
                        for name in stem_names(args.targets, args.residual_model)]
    outputs += [(os.path.join(args.out_dir, name), "the table")
                for name in ("results.md", "results.csv", "sdr_boxplot.png")]
    return inputs, outputs


def evaluate(args, progress=True):
    """Separate (unless --estimates), score and aggregate; returns the results table."""
    from tqdm import tqdm
    failed = {}  # track name → why it was not scored
    tracks = musdb_tracks(args.root, args.is_wav, args.subset, args.tracks, failed)
    for name, reason in failed.items():
        print("track '%s' skipped: %s" % (name, reason), file=sys.stderr)
    refuse_overlaps(*planned_files(args, tracks))
    with output_folder(args.out_dir, "--out-dir"), ExitStack() as stack:
        cfgs = network = None
        if args.estimates is None:
            from inference import network_for
            from weights import load_models
            set_context(args.context)
            cfgs = load_models(args.model, args.targets)
            network = network_for(cfgs, args.targets)  # once for all tracks
        subset_dir = os.path.join(args.out_dir, args.subset)
        json_paths = {t.name: os.path.join(subset_dir, t.name + ".json") for t in tracks}
        todo = [t for t in tracks if not os.path.isfile(json_paths[t.name])]
        if len(todo) < len(tracks):
            print("%d of %d tracks already scored in %s: skipped" % (len(tracks) - len(todo),
                                                                     len(tracks), subset_dir))
        pool = stack.enter_context(worker_pool(args.cores)) if args.cores > 1 else None
        futures = {}
        for track in tqdm(todo, desc="tracks", disable=not progress):
            try:
                est_dir = separated_track(args, track, cfgs, network, progress)
                job = (args.root, args.is_wav, args.subset, track.name, est_dir,
                       json_paths[track.name])
                if pool:
                    futures[track.name] = pool.submit(score_track, *job)
                else:
                    score_track(*job)
            except WriteError:
                raise  # a full disk is no problem of one track
            except Exception as exc:  # one bad track must not stop the others
                failed[track.name] = _reason(exc)
                print("track '%s' not scored: %s" % (track.name, failed[track.name]),
                      file=sys.stderr)
        for name, future in futures.items():
            try:
                future.result()
            except WriteError:
                raise
            except Exception as exc:
                failed[name] = _reason(exc)
                print("track '%s' not scored: %s" % (name, failed[name]), file=sys.stderr)
        scored = [p for p in json_paths.values() if os.path.isfile(p)]
        if not scored:
            raise UmxError("no track could be scored (%d failed)" % len(failed))
        table, per_track, unscored = aggregate(scored)
        markdown = format_table(table, unscored, paper_model(args.model))
        header = "Scores of %d tracks (%s, median over frames, median over tracks)\n" % (
            len(scored), args.subset)
        if failed:
            header += "Not scored (%d): %s\n" % (len(failed), ", ".join(sorted(failed)))
        print("\n" + header + "\n" + markdown)
        with atomic_path(os.path.join(args.out_dir, "results.md")) as tmp:
            with open(tmp, "w") as f:
                f.write(header + "\n" + markdown + "\n")
        with atomic_path(os.path.join(args.out_dir, "results.csv")) as tmp:
            table.to_csv(tmp)
        boxplot(per_track, os.path.join(args.out_dir, "sdr_boxplot.png"))
    if failed:
        raise UmxError("%d of %d tracks could not be scored (listed above); the table holds "
                       "the other %d" % (len(failed), len(set(json_paths) | set(failed)), len(scored)))
    return table


def separated_track(args, track, cfgs, network, progress):
    """The folder of the track's estimates: --estimates', or the one this run separates
    into (unless a previous run left all its stems there)."""
    from separator import separate_stream, stem_names
    if args.estimates:
        return os.path.join(args.estimates, args.subset, track.name)
    folder = os.path.join(args.out_dir, args.subset, track.name)
    names = stem_names(args.targets, args.residual_model)
    if all(os.path.isfile(os.path.join(folder, n + ".wav")) for n in names):
        return folder
    names, rate, blocks = separate_stream(
        track.audio, track.rate, cfgs, args.targets, niter=args.niter, softmask=args.softmask,
        alpha=args.alpha, residual_model=args.residual_model, progress=progress, network=network)
    resampled = rate != track.rate
    write_stream(names, rate, blocks, folder, out_rate=int(track.rate),
                 length=track.audio.shape[0] if resampled else None)
    return folder


def _reason(exc):
    if isinstance(exc, UmxError):
        return str(exc)
    last = traceback.format_exception_only(type(exc), exc)[-1].strip()
    return last.splitlines()[-1]


def main(argv=None):
    run_cli(evaluate, get_eval_args(argv))


if __name__ == "__main__":
    main()
