"""A training run: `prepare_run` (data listed, arguments checked, data checked, resume point,
statistics, the graph, the solver), the loop per epoch (`train`), `finish_epoch` (best weights,
checkpoint, summary, monitors, plot); fine-tuning from a model and resuming from a checkpoint."""
import os
import time
from dataclasses import replace
from types import SimpleNamespace

import nnabla as nn
import nnabla.solvers as S
import numpy as np

from unmix_nnabla.audio.spectral import training_centered
from unmix_nnabla.base.console import progress_bar, progress_enabled, say, set_quiet
from unmix_nnabla.base.context import set_context
from unmix_nnabla.base.files import output_folder, refuse_overlaps, write_json_atomic
from unmix_nnabla.base.memory import keep_freed_memory
from unmix_nnabla.base.runtime import UmxError
from unmix_nnabla.base.threads import limit_blas_threads
from unmix_nnabla.base.vocabulary import XUMX_BRANCHES
from unmix_nnabla.data.datasets import data_config, epoch_batches, load_dataset
from unmix_nnabla.data.tracks import check_sources
from unmix_nnabla.models.hub import load_models
from unmix_nnabla.models.weights import save_target
from unmix_nnabla.networks.layout import UmxConfig, bandwidth_to_max_bin, check_config
from unmix_nnabla.training.checkpoint import (load_checkpoint, output_files, resume_point,
                                              save_checkpoint)
from unmix_nnabla.training.graph import build_training_graph, xumx_signal_length
from unmix_nnabla.training.monitors import make_monitors, plot_losses
from unmix_nnabla.training.schedule import EarlyStopping, ReduceLROnPlateau
from unmix_nnabla.training.standardization import compute_statistics
from unmix_nnabla.training.step import dropout_rngs, train_step, validation_loss

DATA_CHECK = "data-check.json"


# --------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------

def prepare_run(args, comm, log, progress):
    """Everything the loop needs, checked before the first step → a namespace: data, cfg,
    scope, paths, graph, solver, scheduler, stopper, history, first_epoch, weight_decay.

    Order: the dataset listed (files probed), the arguments that need no more than that
    checked (model configuration, X-UMX's signal length, the resume point), then every file
    of the dataset read and checked (`check_sources`, cached), then statistics and the graph:
    a bad argument never waits for a data check, nor leaves its cache behind."""
    is_main = comm is None or comm.rank == 0
    nb_procs = comm.size if comm else 1
    config = data_config(args)
    data = load_dataset(config, [args.source] if args.umx_train else list(XUMX_BRANCHES), log)
    scope = data.targets[0] if args.umx_train else "x-umx"  # the parameter scope and file name
    paths = output_files(args.output, scope)
    log("training %s on %d process%s" % (
        "UMX for '%s'" % scope if args.umx_train else "X-UMX (%s)" % ", ".join(data.targets),
        nb_procs, "es (mpirun)" if nb_procs > 1 else ""))
    refuse_overlaps([(f.path, "the dataset's file") for t in data.tracks() for f in t.files()],
                    [(path, "--output") for key, path in paths.items() if key != "checkpoint"])
    if args.model is not None:
        cfg = fine_tuning_config(args, data)
    else:
        cfg = check_config(UmxConfig(
            nb_channels=args.nb_channels, hidden_size=args.hidden_size,
            max_bin=bandwidth_to_max_bin(data.rate, args.nfft, args.bandwidth),
            nb_output_bins=args.nfft // 2 + 1, unidirectional=args.unidirectional,
            n_fft=args.nfft, n_hop=args.nhop, sample_rate=data.rate,
            xumx_branches=() if args.umx_train else tuple(data.targets)),
            "the training arguments")
    seq_samples = int(round(data.train.seq_dur * data.rate))
    if cfg.is_xumx:
        xumx_signal_length(cfg, seq_samples)
    elif seq_samples < cfg.n_fft:
        raise UmxError("--seq-dur %g s is shorter than one STFT window (%d samples, --nfft)"
                       % (data.train.seq_dur, cfg.n_fft))
    resume_from = resume_point(args.output, args.checkpoint, paths, cfg)
    set_context(args.context, args.device_id if comm is None else comm.local_rank,
                verbose=is_main and not args.quiet)
    keep_freed_memory()
    if is_main:
        check_sources(data.tracks(), os.path.join(args.output, DATA_CHECK), progress, log=log)
    if comm is not None:
        comm.barrier()  # rank 0 has checked the data
        # ranks side by side share the cores (one machine assumed): no oversubscription
        limit_blas_threads(max(1, (os.cpu_count() or 1) // comm.size))
    # Sony's scaling of learning rate and weight decay with the global batch
    scale = nb_procs * args.batch_size / 16.0 if nb_procs > 1 else 1.0
    nn.clear_parameters()
    # a checkpoint holds the (trained) standardization, a fine-tuned model its own; other
    # ranks get rank 0's
    new_statistics = args.model is None or args.new_statistics
    mean, std = (None, None) if resume_from or not is_main or not new_statistics else \
        compute_statistics(data.statistics_items(), cfg.n_fft, cfg.n_hop, progress,
                           training_centered(cfg.is_xumx))
    graph = build_training_graph(cfg, scope, args.batch_size, seq_samples, mean, std,
                                 mcoef=args.mcoef)
    if args.model is not None and not resume_from:
        start_from_model(args.model, cfg, scope, mean, std)
        log("fine-tuning %s from %s%s" % (scope, args.model, " (statistics of this dataset)"
                                          if args.new_statistics else ""))
    solver = S.Adam(alpha=args.lr * scale)
    with nn.parameter_scope(scope):
        solver.set_parameters(nn.get_parameters())
    run = SimpleNamespace(data=data, cfg=cfg, scope=scope, paths=paths, graph=graph,
                          solver=solver, weight_decay=args.weight_decay * scale,
                          scheduler=ReduceLROnPlateau(args.lr * scale, args.lr_decay_gamma,
                                                      args.lr_decay_patience),
                          stopper=EarlyStopping(args.patience), history=[], first_epoch=1,
                          monitors=make_monitors(args.output, scope) if is_main else None)
    if resume_from:
        _resume(run, resume_from, log)
    if comm is not None:
        comm.broadcast_parameters(scope)
    return run


# train.py's architecture flags → the configuration field each sets
ARCHITECTURE_FIELDS = {"hidden_size": "hidden_size", "nfft": "n_fft", "nhop": "n_hop",
                       "nb_channels": "nb_channels", "unidirectional": "unidirectional",
                       "bandwidth": "max_bin"}


def fine_tuning_config(args, data):
    """The configuration of the model to fine-tune (--model: UMX's target --source, or an
    X-UMX), from its weights (nothing loaded yet), checked against the dataset and the
    architecture flags given."""
    target = data.targets[0]
    cfgs = load_models(args.model, [target] if args.umx_train else None, load=False)
    cfg = cfgs[target] if args.umx_train else next(iter(cfgs.values()))
    if args.umx_train and cfg.is_xumx:
        raise UmxError("--model %s is an X-UMX: fine-tune it without --umx-train" % args.model)
    if not args.umx_train and tuple(sorted(cfg.xumx_branches)) != tuple(sorted(data.targets)):
        raise UmxError("--model %s is no X-UMX of %s: X-UMX fine-tunes Sony's x-umx.h5 (or "
                       "one of its layout)" % (args.model, ", ".join(data.targets)))
    if cfg.sample_rate != data.rate:
        raise UmxError("--model %s is for %d Hz audio, the dataset is at %d Hz"
                       % (args.model, cfg.sample_rate, data.rate))
    for flag, value in dict(args.architecture_given).items():
        field = ARCHITECTURE_FIELDS.get(flag, flag)
        # --bandwidth sets the bins that reach the network
        wanted = bandwidth_to_max_bin(data.rate, cfg.n_fft, value) if flag == "bandwidth" \
            else value
        if getattr(cfg, field) != wanted:
            raise UmxError("--%s %s, but --model %s has %s = %s (the architecture comes from the "
                           "weights: drop the flag)" % (
                               flag.replace("_", "-"), "%g" % value if isinstance(value, float)
                               else value, args.model, field, getattr(cfg, field)))
    return replace(cfg, xumx_branches=cfg.xumx_branches if not args.umx_train else ())


def start_from_model(model, cfg, scope, mean=None, std=None):
    """Set the training graph's parameters (in `scope`) to --model's weights; with mean and std,
    the input standardization from these statistics instead of the model's."""
    targets = list(cfg.xumx_branches) or [scope]
    load_models(model, targets)  # each target's parameters in its scope, UMX's names
    with nn.parameter_scope(scope):
        params = nn.get_parameters(grad_only=False)
    for target in targets:
        with nn.parameter_scope(target):
            loaded = nn.get_parameters(grad_only=False)
        for name, var in loaded.items():
            stored = cfg.stored_name(name, target)
            params[stored].d = var.d
        if mean is not None:
            params[cfg.stored_name("input_mean", target)].d = \
                -mean[:cfg.max_bin]
            params[cfg.stored_name("input_scale", target)].d = \
                1.0 / std[:cfg.max_bin]


def _resume(run, folder, log):
    state = load_checkpoint(folder, run.scope, run.solver, run.cfg.to_dict())
    run.scheduler.load_state_dict(state["scheduler"])
    run.stopper.load_state_dict(state["stopper"])
    run.history, run.first_epoch = state["history"], state["epoch"] + 1
    run.solver.set_learning_rate(run.scheduler.lr)
    log("resuming %s from epoch %d (%s)" % (run.scope, state["epoch"], folder))


def train(args, comm=None, progress=True):
    """Train (or resume) UMX for `args.source` (--umx-train) or X-UMX; returns the run's
    summary dict."""
    rank, nb_procs = (comm.rank, comm.size) if comm else (0, 1)
    is_main = rank == 0
    log = say if is_main else (lambda *a, **k: None)
    progress = progress and is_main
    run = prepare_run(args, comm, log, progress)
    epochs = progress_bar(range(run.first_epoch, args.epochs + 1), desc="epochs",
                  initial=run.first_epoch - 1, total=args.epochs, enabled=progress)
    for epoch in epochs:
        if run.stopper.stop:
            break
        start, losses = time.time(), []
        batches = epoch_batches(run.data.train, epoch, args.batch_size, args.nb_workers, rank,
                                nb_procs, with_indices=True)
        bar = progress_bar(batches, desc="epoch %d" % epoch, leave=False, enabled=progress,
                   total=len(run.data.train) // (args.batch_size * nb_procs))
        for indices, mixtures, targets in bar:
            loss = train_step(run.graph, run.solver, mixtures, targets, run.cfg,
                              run.weight_decay, dropout_rngs(args.seed, epoch, indices), comm)
            if comm is not None:  # every rank takes the same decision
                loss = comm.mean(loss)
            if not np.isfinite(loss):
                raise UmxError(nan_message("training", loss, epoch, run.data.train, indices,
                                           run.paths["weights"]))
            losses.append(loss)
            bar.set_postfix(loss="%.4g" % loss)
        if not losses:
            raise UmxError("an epoch has no full batch: %d samples < --batch-size %d x %d "
                           "processes" % (len(run.data.train), args.batch_size, nb_procs))
        valid_loss = validation_loss(run.data, run.scope, run.cfg, progress, comm, args.mcoef,
                                     args.valid_dur)
        finish_epoch(run, args, epoch, float(np.mean(losses)), valid_loss, time.time() - start,
                     comm)
        epochs.set_postfix(train="%.4g" % run.history[-1]["train_loss"],
                           valid="%.4g" % valid_loss)
        if not progress_enabled():  # a log file: one plain line per epoch
            h = run.history[-1]
            log("epoch %d/%d: training loss %.4g, validation loss %.4g%s, learning rate %.3g, "
                "%.1f s" % (epoch, args.epochs, h["train_loss"], h["valid_loss"],
                            " (best)" if run.stopper.bad_epochs == 0 else "", h["lr"],
                            h["seconds"]))
    if run.stopper.stop:
        log("early stopping: no improvement for %d epochs" % args.patience)
    if run.history:
        best = min(run.history, key=lambda h: h["valid_loss"])
        log("best epoch %d (validation loss %.4g): %s" % (best["epoch"], best["valid_loss"],
                                                          run.paths["weights"]))
    return dict(history=run.history, stopped_early=run.stopper.stop)


def finish_epoch(run, args, epoch, train_loss, valid_loss, seconds, comm):
    """After an epoch: the schedule and early stopping step on the validation loss; rank 0
    writes the best weights, the summary, the checkpoint, the monitors and the plot."""
    if not np.isfinite(valid_loss):
        raise UmxError(nan_message("validation", valid_loss, epoch, run.data.train, None,
                                   run.paths["weights"]))
    improved = run.stopper.step(valid_loss)
    run.solver.set_learning_rate(run.scheduler.step(valid_loss))
    run.history.append(dict(epoch=epoch, train_loss=train_loss, valid_loss=valid_loss,
                            lr=run.solver.learning_rate(), seconds=seconds))
    if comm is None or comm.rank == 0:
        best = min(run.history, key=lambda h: h["valid_loss"])
        if improved:
            save_target(run.paths["weights"], run.scope)
        write_json_atomic(run.paths["summary"], dict(
            args=vars(args), config=run.cfg.to_dict(), dataset=run.data.log,
            history=run.history, best_epoch=best["epoch"], best_valid_loss=best["valid_loss"],
            epochs_trained=epoch, stopped_early=run.stopper.stop,
            nb_processes=comm.size if comm else 1))
        save_checkpoint(run.paths["checkpoint"], run.scope, run.solver, dict(
            epoch=epoch, history=run.history, scheduler=run.scheduler.state_dict(),
            stopper=run.stopper.state_dict(), config=run.cfg.to_dict()))
        for name, value in (("train", train_loss), ("valid", valid_loss),
                            ("lr", run.solver.learning_rate())):
            run.monitors[name].add(epoch, value)
        plot_losses(run.history, run.paths["plot"],
                    "UMX %s" % run.scope if args.umx_train else "X-UMX",
                    "MSE (magnitude)" if args.umx_train else
                    "%g x time loss + frequency loss" % args.mcoef)
    if comm is not None:
        comm.barrier()


def nan_message(what, value, epoch, samples, indices, weights_path):
    """One line for a non-finite loss: the epoch, the batch's tracks, where good weights are."""
    where = ""
    if indices is not None:
        names = sorted({track.name for i in indices for _, _, track, _, _ in
                        samples.draws(epoch, int(i))[0]})
        where = " (batch from tracks %s)" % ", ".join("'%s'" % n for n in names)
    kept = ("the best weights so far are in %s" % weights_path if os.path.isfile(weights_path)
            else "no weights were saved yet")
    return "%s loss is %s at epoch %d%s: stopped; %s" % (what, value, epoch, where, kept)


def run(args, comm):
    set_quiet(args.quiet)
    if comm is None or comm.rank == 0:
        refuse_output_in_dataset(args)
        with output_folder(args.output, "--output"):
            return train(args, comm)
    return train(args, comm)


def refuse_output_in_dataset(args):
    """--output inside a folder the dataset lists tracks from would be read as data."""
    if args.root is None:
        return
    output = os.path.realpath(args.output)
    for split in ("train", "valid", "test"):
        folder = os.path.realpath(os.path.join(args.root, split))
        if output == folder or output.startswith(folder + os.sep):
            raise UmxError("--output %s is inside the dataset's %s (%s): choose a folder outside "
                           "it" % (args.output, split, folder))
