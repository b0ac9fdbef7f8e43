"""Evaluate on MUSDB18, the work of eval.py: python eval.py --model DIR --root MUSDB18 --out-dir OUT

Separates each track of the subset with the separation function of test.py, writes the
estimates in musdb's layout (OUT/<subset>/<track>/<target>.wav), scores them with
`museval.eval_mus_track` (BSSEval v4, 1 s windows) into museval's per-track JSON
(OUT/<subset>/<track>.json), and aggregates the published table: per target, the median over
frames, then the median over tracks, of SDR/SIR/SAR/ISR (OUT/results.md, OUT/results.csv,
and a boxplot of per-track SDR, OUT/sdr_boxplot.png). A re-run skips the tracks that the same
model files and options scored (`scores.Origins`); scores made otherwise are refused.
"""
import os
import tempfile
from contextlib import ExitStack

from unmix_nnabla.audio.io import write_stream
from unmix_nnabla.base.console import progress_bar, say, set_quiet, warn
from unmix_nnabla.base.context import set_context
from unmix_nnabla.base.files import WriteError, atomic_path, output_folder, refuse_overlaps
from unmix_nnabla.base.processes import worker_pool
from unmix_nnabla.base.runtime import UmxError
from unmix_nnabla.models.hub import resolve_model
from unmix_nnabla.models.weights import load_weights, model_files
from unmix_nnabla.networks.inference import network_for
from unmix_nnabla.scoring.scores import (Origins, aggregate, boxplot, format_table, musdb_tracks,
                                         paper_model, reason, score_track)
from unmix_nnabla.separation.separator import load_compiled_loops, separate_stream, stem_names

# the options that change a separation's scores (recorded with them)
SEPARATION_OPTIONS = ("targets", "niter", "softmask", "alpha", "residual_model")


def planned_files(args, tracks):
    """(inputs, outputs) of this run, for `files.refuse_overlaps`: the dataset's and the
    estimates' files read, the estimates, scores and tables written."""
    inputs, outputs = [], []
    for track in tracks:
        inputs.append((track.path, "the dataset's"))
        inputs += [(source.path, "the dataset's") for source in track.sources.values()]
        subset_dir = os.path.join(args.out_dir, args.subset)
        outputs.append((os.path.join(subset_dir, track.name + ".json"), "track " + track.name))
        if args.estimates:
            folder = os.path.join(args.estimates, args.subset, track.name)
            inputs += [(os.path.join(folder, t + ".wav"), "the estimate (--estimates)")
                       for t in track.targets if args.targets is None or t in args.targets]
        else:
            outputs += [(os.path.join(subset_dir, track.name, name + ".wav"), "track " + track.name)
                        for name in stem_names(args.targets, args.residual_model)]
    outputs += [(os.path.join(args.out_dir, name), "the table")
                for name in ("results.md", "results.csv", "sdr_boxplot.png")]
    return inputs, outputs


def evaluate(args, progress=True):
    """Separate (unless --estimates), score and aggregate; returns the results table."""
    set_quiet(args.quiet)
    failed = {}  # track name → why it was not scored
    with ExitStack() as stack:
        private = stack.enter_context(tempfile.TemporaryDirectory(prefix="umx-eval-"))
        tracks = musdb_tracks(args.root, args.is_wav, args.subset, private, args.tracks, failed)
        for name, why in failed.items():
            warn("track '%s' skipped: %s" % (name, why))
        cfgs = network = weights = None
        if args.estimates is None:
            weights = resolve_model(args.model)  # a name fetched, before any compilation
            set_context(args.context, verbose=not args.quiet)
            load_compiled_loops(background=True)  # while the model loads
            cfgs = load_weights(weights, args.targets)
            args.targets = args.targets or list(cfgs)  # the model's, unless named
            network = network_for(cfgs, args.targets, release=True)  # once for all tracks
        refuse_overlaps(*planned_files(args, tracks))
        stack.enter_context(output_folder(args.out_dir, "--out-dir"))
        json_paths = {t.name: os.path.join(args.out_dir, args.subset, t.name + ".json")
                      for t in tracks}
        origins = Origins(args.out_dir, args.subset, made_by(args, weights))
        todo = [t for t in tracks if not origins.matches(
            t.name, origins.expected(t.name, estimates_folder(args, t.name)), json_paths[t.name])]
        if len(todo) < len(tracks):
            say("%d of %d tracks already scored with this model and these options in %s: "
                "skipped" % (len(tracks) - len(todo), len(tracks), args.out_dir))
        pool = stack.enter_context(worker_pool(args.cores)) if args.cores > 1 else None
        _score_tracks(args, todo, cfgs, network, origins, json_paths, pool, failed, private,
                      progress)
        scored = [p for p in json_paths.values() if os.path.isfile(p)]
        if not scored:
            raise UmxError("no track could be scored (%d failed)" % len(failed))
        table = _write_tables(args, scored, failed)
    if failed:
        raise UmxError("%d of %d tracks could not be scored (listed above); the table holds "
                       "the other %d" % (len(failed), len(set(json_paths) | set(failed)), len(scored)))
    return table


def made_by(args, weights):
    """What makes this run's scores (`scoring.Origins`): the model's files (at `weights`, its
    resolved path) and the options of the separation, or the estimates' folder; and the
    dataset."""
    dataset = {"root": os.path.realpath(args.root), "is_wav": bool(args.is_wav)}
    if args.estimates:
        return {"estimates": os.path.realpath(args.estimates), "dataset": dataset}
    options = {k: getattr(args, k) for k in SEPARATION_OPTIONS}
    return {"model files": model_files(weights), "options": options, "dataset": dataset}


def estimates_folder(args, track):
    return os.path.join(args.estimates, args.subset, track) if args.estimates else None


def _score_tracks(args, todo, cfgs, network, origins, json_paths, pool, failed, private,
                  progress):
    """Separate and score the tracks to do (scoring in the pool's workers, when there is one);
    a track that fails is named in `failed`, the others go on. private: this run's temporary
    folder, where the workers make theirs."""
    futures = {}
    for track in progress_bar(todo, desc="tracks", enabled=progress):
        try:
            expected = origins.expected(track.name, estimates_folder(args, track.name))
            # stems on disk are kept only when this model and these options made them
            keep = origins.recorded(track.name) == expected
            origins.record(track.name, expected)
            est_dir = separated_track(args, track, cfgs, network, progress, keep)
            job = (args.root, args.is_wav, args.subset, track.name, est_dir,
                   json_paths[track.name], private, args.targets if args.estimates else None)
            if pool:
                futures[track.name] = pool.submit(score_track, *job)
            else:
                score_track(*job)
        except WriteError:
            raise  # a full disk is no problem of one track
        except Exception as exc:  # one bad track must not stop the others
            failed[track.name] = reason(exc)
            origins.forget(track.name)
            warn("track '%s' not scored: %s" % (track.name, failed[track.name]))
    for name, future in futures.items():
        try:
            future.result()
        except WriteError:
            raise
        except Exception as exc:
            failed[name] = reason(exc)
            origins.forget(name)
            warn("track '%s' not scored: %s" % (name, failed[name]))


def _write_tables(args, scored, failed):
    table, per_track, unscored = aggregate(scored)
    markdown = format_table(table, unscored, paper_model(args.model))
    header = "Scores of %d tracks (%s, median over frames, median over tracks)\n" % (
        len(scored), args.subset)
    if failed:
        header += "Not scored (%d): %s\n" % (len(failed), ", ".join(sorted(failed)))
    say("\n" + header + "\n" + markdown)
    with atomic_path(os.path.join(args.out_dir, "results.md")) as tmp:
        with open(tmp, "w") as f:
            f.write(header + "\n" + markdown + "\n")
    with atomic_path(os.path.join(args.out_dir, "results.csv")) as tmp:
        table.to_csv(tmp)
    boxplot(per_track, os.path.join(args.out_dir, "sdr_boxplot.png"))
    return table


def separated_track(args, track, cfgs, network, progress, keep=False):
    """The folder of the track's estimates: --estimates', or the one this run separates into
    (keep: the stems there, when all are there, were made by this model and options)."""
    if args.estimates:
        return estimates_folder(args, track.name)
    folder = os.path.join(args.out_dir, args.subset, track.name)
    names = stem_names(args.targets, args.residual_model)
    if keep and all(os.path.isfile(os.path.join(folder, n + ".wav")) for n in names):
        return folder
    names, rate, blocks = separate_stream(
        track.audio, track.rate, cfgs, args.targets, niter=args.niter, softmask=args.softmask,
        alpha=args.alpha, residual_model=args.residual_model, progress=progress,
        network=network, processes=args.jobs)
    resampled = rate != track.rate
    write_stream(names, rate, blocks, folder, out_rate=int(track.rate),
                 length=track.audio.shape[0] if resampled else None)
    return folder
