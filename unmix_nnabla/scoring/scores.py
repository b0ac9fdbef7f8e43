"""Scoring separations on MUSDB18 with museval, and what eval.py reports.

- `musdb_tracks`: the tracks of a subset (a track that musdb cannot read is named, not fatal);
- `read_estimates`: estimates checked against the reference (rate, channels, length, finite
  samples: nothing is padded, cut or resampled);
- `score_track`: BSSEval v4 with museval (1 s windows) into museval's per-track JSON;
- `aggregate`, `format_table`, `boxplot`: the published table (median over frames, then median
  over tracks) with the published scores beside ours, and the per-track SDR;
- `Origin`: what made a track's scores (the model files' SHA-256 or the estimate files, and
  the options), recorded beside them, so that a resumed run never reports another model's
  scores as its own.
"""
import json
import os
import tempfile
import traceback

import numpy as np
import simplejson
import soundfile as sf
from threadpoolctl import threadpool_limits

from unmix_nnabla.base.files import atomic_path, read_json, write_json_atomic, writing_into
from unmix_nnabla.base.runtime import UmxError
from unmix_nnabla.data.tracks import check_root

METRICS = ["SDR", "SIR", "SAR", "ISR"]
# The published scores (median over frames, median over tracks): UMX's and UMXHQ's from the
# README of open-unmix-nnabla, X-UMX's SDR from Sawata et al. (ICASSP 2021; no other metric)
PAPER_SCORES = {
    "x-umx": {"vocals": (6.61, None, None, None), "drums": (6.47, None, None, None),
              "bass": (5.43, None, None, None), "other": (4.64, None, None, None)},
    "umx": {"vocals": (6.32, 13.33, 6.52, 12.95), "bass": (5.23, 10.93, 6.34, 9.23),
            "drums": (5.73, 11.12, 6.02, 10.51), "other": (4.02, 6.59, 4.74, 9.31)},
    "umxhq": {"vocals": (6.25, 12.95, 6.50, 12.70), "bass": (5.07, 10.35, 6.02, 9.71),
              "drums": (6.04, 11.65, 5.93, 11.17), "other": (4.28, 7.10, 4.62, 8.78)},
}


def musdb_tracks(root, is_wav, subset, private, names=None, unreadable=None):
    """The musdb Track objects of `subset`, optionally only `names` (in that order).

    A track that cannot be decoded is left out; unreadable: a dict that gets its name → why.
    private: a temporary folder that lives as long as the tracks are read (see `_single_track`).
    """
    import musdb  # deferred: MUSDB18 only
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
                tracks += _single_track(root, is_wav, subset, entry, private)
            except Exception as exc:
                if unreadable is not None:
                    unreadable[_track_name(entry)] = "cannot read it (%s)" % reason(exc)
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


def _single_track(root, is_wav, subset, entry, private):
    """musdb's Track for one file or folder of root/subset, through a root of its own in the
    folder `private` (its owner removes it) that links only it."""
    import musdb  # deferred: MUSDB18 only
    own = tempfile.mkdtemp(dir=private)
    os.makedirs(os.path.join(own, subset))
    os.symlink(os.path.abspath(os.path.join(root, subset, entry)), os.path.join(own, subset, entry))
    return musdb.DB(root=own, is_wav=is_wav, subsets=subset).tracks


def read_estimates(folder, reference, rate, targets, required=False):
    """{target: audio [shape=(nb_timesteps, nb_channels)]} of folder/<target>.wav for the
    `targets` that are there (required: all of them must be), each checked against the
    reference [shape=(nb_timesteps, nb_channels)] at `rate`: another rate, channel count or
    length, or a NaN or infinite sample is an error naming the file (nothing is padded, cut or
    resampled). museval scores a target against the others: fewer than two targets (but vocals
    with accompaniment) is an error too."""
    if not os.path.isdir(folder):
        raise UmxError("no estimates in %s" % folder)
    out = {}
    for target in targets:
        path = os.path.join(folder, target + ".wav")
        if not os.path.isfile(path):
            if required:
                raise UmxError("no estimate %s (--targets %s)" % (path, target))
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
    if len(out) < 2:
        raise UmxError("only %s is estimated in %s: museval scores a target against the others "
                       "(give two targets or more, or vocals with accompaniment)"
                       % (next(iter(out)), folder))
    return out


def score_track(root, is_wav, subset, name, estimates_dir, json_path, private, targets=None):
    """Score one track's estimates with museval and write its JSON atomically (in a worker).
    private: the caller's temporary folder (removed by it, also when a worker is killed);
    targets: the ones to score (None: every MUSDB target whose estimate is there)."""
    import museval  # deferred: pandas, 0.7 s
    entry = name if is_wav else name + ".stem.mp4"
    track = _single_track(root, is_wav, subset, entry, private)[0]
    estimates = read_estimates(estimates_dir, track.audio, track.rate,
                               list(track.targets) if targets is None else targets,
                               required=targets is not None)
    with threadpool_limits(limits=1, user_api="blas"):  # the same scores in workers or not
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
    import museval  # deferred: pandas, 0.7 s
    from museval.aggregate import json2df  # deferred: pandas, 0.7 s
    store = museval.EvalStore(frames_agg="median", tracks_agg="median")
    for path in json_paths:
        try:
            with open(path) as f:
                scores = simplejson.loads(f.read(), allow_nan=True)
            frame = json2df(scores, os.path.basename(path)[:-5])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UmxError("%s is not a museval score file (%s): delete it to score the track "
                           "again" % (path, reason(exc)))
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
    """The published table in Markdown (paper columns beside ours when `paper` names a model),
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
    import matplotlib  # deferred: plots only
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: plots only
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


def reason(exc):
    if isinstance(exc, UmxError):
        return str(exc)
    last = traceback.format_exception_only(type(exc), exc)[-1].strip()
    return last.splitlines()[-1]




# --------------------------------------------------------------------------------------
# what made a track's scores
# --------------------------------------------------------------------------------------

ORIGINS = ".scored-with"  # OUT/.scored-with/<subset>/<track>.json, beside museval's files


def estimate_files(folder):
    """{file name: [size, modification time in ns]} of a track's estimates on disk."""
    if not os.path.isdir(folder):
        return {}
    return {f: [os.stat(os.path.join(folder, f)).st_size,
                os.stat(os.path.join(folder, f)).st_mtime_ns]
            for f in sorted(os.listdir(folder)) if f.endswith(".wav")}


class Origins:
    """The record of what made each track's scores in an output folder: `made_by` (the model's
    files or the estimates' folder, and the options that change scores), plus for --estimates
    each track's estimate files. A resumed run skips a track only when its record matches."""

    def __init__(self, out_dir, subset, made_by):
        self.folder = os.path.join(out_dir, ORIGINS, subset)
        self.made_by = made_by

    def expected(self, track, estimates_dir=None):
        out = dict(self.made_by)
        if estimates_dir is not None:
            out["estimate files"] = estimate_files(estimates_dir)
        return out

    def path(self, track):
        return os.path.join(self.folder, track + ".json")

    def recorded(self, track):
        """The record of the track's scores (or of the run that was making them), or None."""
        if not os.path.isfile(self.path(track)):
            return None
        return read_json(self.path(track), "record of what made the scores")

    def matches(self, track, expected, scores_path):
        """Whether the stored scores of `track` were made as this run would make them: True
        (skip it), False (no scores yet). Scores made otherwise are one UmxError."""
        recorded = self.recorded(track)
        if not os.path.isfile(scores_path):
            return False
        if recorded is None:
            raise UmxError("%s has no record of what made it (an older version's?): use another "
                           "--out-dir, or delete it to score the track again" % scores_path)
        order = ["model files", "estimates", "options", "dataset", "estimate files"]
        for key in sorted(set(recorded) | set(expected), key=lambda k: (k not in order,
                                                                           order.index(k)
                                                                           if k in order else k)):
            if recorded.get(key) != expected.get(key):
                raise UmxError("%s was scored with other %s than this run (%s): use another "
                               "--out-dir, or delete it to score the track again"
                               % (scores_path, key, _first_difference(recorded.get(key),
                                                                      expected.get(key))))
        return True

    def record(self, track, expected):
        with writing_into(os.path.dirname(os.path.dirname(self.folder))):
            os.makedirs(self.folder, exist_ok=True)
        write_json_atomic(self.path(track), expected)

    def forget(self, track):
        """Drop the record of a track that was not scored (and the record folders, once
        empty): a failed track leaves nothing that says how it was made."""
        try:
            os.remove(self.path(track))
            os.rmdir(self.folder)
            os.rmdir(os.path.dirname(self.folder))
        except OSError:
            pass


def _first_difference(recorded, expected):
    if isinstance(recorded, dict) and isinstance(expected, dict):
        for key in sorted(set(recorded) | set(expected)):
            if recorded.get(key) != expected.get(key):
                return "%s: recorded %s, this run %s" % (key, _short(recorded.get(key)),
                                                         _short(expected.get(key)))
    return "recorded %s, this run %s" % (_short(recorded), _short(expected))


def _short(value):
    text = json.dumps(value)
    return text if len(text) <= 20 else text[:17] + "..."
