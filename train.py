"""Train UMX or X-UMX, as Sony's NNabla scripts do:

    python train.py --umx-train --root MUSDB18 --source vocals --output OUT   # one UMX target
    python train.py --root MUSDB18-wav --is-wav --output OUT                  # X-UMX

Writes to OUT: `<name>.h5` (the best weights: UMX's official `<target>.h5`, or Sony's
`x-umx.h5`; `test.py --model OUT` loads it), `<name>.json` (arguments, architecture, dataset,
per-epoch history), `<name>_loss.png`, NNabla Monitor series, and `<name>.checkpoint/` (the
last completed epoch). Re-running the same command resumes from it. Under `mpirun -n N` the
ranks train data-parallel (`comm.py`).

The run: `prepare_run` (data listed, arguments checked, data checked, resume point,
statistics, the graph, the solver), then the textbook NNabla loop per epoch (`train_step`:
set the inputs, zero_grad, forward, backward, all-reduce, update), `validation_loss`, and
`finish_epoch` (best weights, checkpoint, summary, monitors, plot).
"""
import os
import time
from collections import namedtuple
from types import SimpleNamespace

from args import data_config, get_train_args  # first: it quiets NNabla's import-time log line

import numpy as np
import nnabla as nn
import nnabla.functions as F
import nnabla.solvers as S

from checkpoint import output_files, resume_point, save_checkpoint
from context import set_context
from datasets import epoch_batches, load_dataset
from files import output_folder, refuse_overlaps, write_json_atomic
from hub import load_models
from inference import network_for
from layout import UmxConfig, bandwidth_to_max_bin, check_config, split_branches
from loss import (TRIM, mixture_phasor, mse, reference_magnitudes, umx_loss, xumx_loss,
                  xumx_validation_loss)
from model import LSTM_DROPOUT, CrossNet, OpenUnmix
from monitors import make_monitors, plot_losses
from ops import numpy_kernels
from runtime import (UmxError, keep_freed_memory, limit_blas_threads, progress_bar,
                     progress_enabled, run_cli, say, set_quiet, signals_deferred)
from schedule import EarlyStopping, ReduceLROnPlateau
from separator import estimate_spectrograms
from spectral import (magnitude_layout, model_layout, nb_stft_frames, nnabla_spectrogram,
                      nnabla_stft, pad_for_stft, stft, training_centered)
from standardization import compute_statistics
from tracks import check_sources
from vocabulary import XUMX_BRANCHES
from weights import save_target

TrainGraph = namedtuple("TrainGraph", "inputs loss model scope feed")
DATA_CHECK = "data-check.json"


# --------------------------------------------------------------------------------------
# the training graph
# --------------------------------------------------------------------------------------

def build_training_graph(cfg, scope, batch_size, nb_timesteps, input_mean=None,
                         input_scale=None, mcoef=10.0, dropout=LSTM_DROPOUT):
    """The training graph, built once: UMX's for one target (cfg without X-UMX branches,
    parameters in `scope`), or X-UMX's (`cfg.xumx_branches`, Sony's names in `scope`).

    Its `inputs` are the Variables that `feed` fills from audio batches of nb_timesteps
    samples: where the numpy kernels run (CPU), the spectrograms computed on the host; on GPU
    contexts the audio itself, whose STFTs the graph computes on the device (NNabla's F.stft,
    as Sony's X-UMX training does). loss: UMX's MSE, or X-UMX's multi-domain loss (time term
    weighted by mcoef).
    """
    length = xumx_signal_length(cfg, nb_timesteps) if cfg.xumx_branches else None
    on_host = numpy_kernels()
    inputs, tensors = (_host_inputs if on_host else _device_inputs)(cfg, batch_size,
                                                                  nb_timesteps, length)
    with nn.parameter_scope(scope):
        if not cfg.xumx_branches:
            model = OpenUnmix(cfg, input_mean, input_scale, dropout)
            loss = umx_loss(model(tensors["mixture"], test=False), tensors["target"])
        else:
            model = CrossNet(cfg, cfg.xumx_branches, input_mean, input_scale, dropout)
            estimates = list(model(tensors["mixture"], test=False).values())
            loss = xumx_loss(estimates, tensors, cfg, mcoef)
    return TrainGraph(inputs, loss, model, scope, feed_spectrograms if on_host else feed_audio)


def xumx_signal_length(cfg, nb_timesteps):
    """The samples of X-UMX's time-domain loss per signal: the ISTFT's, trimmed at both ends;
    too short a --seq-dur is one UmxError."""
    length = (nb_stft_frames(nb_timesteps, cfg.n_hop) - 1) * cfg.n_hop - 2 * TRIM
    if length <= 0:
        raise UmxError("--seq-dur is too short for X-UMX's time-domain loss (%d samples "
                       "trimmed at each end)" % TRIM)
    return length


def _host_inputs(cfg, batch_size, nb_timesteps, length):
    """The graph's inputs as the host computes them (`feed_spectrograms`): magnitudes [shape=
    (nb_frames, batch, C, bins)], and for X-UMX the mixture's phasor [shape=(batch * 2, bins,
    nb_frames)], the targets' magnitudes [shape=(J, ...)] and time signals [shape=(J, batch
    * 2, length)], the mixture's time signal [shape=(1, batch * 2, length)]. → (inputs, the
    same: what the model and loss read)."""
    nb_frames = nb_stft_frames(nb_timesteps, cfg.n_hop, cfg.n_fft,
                               training_centered(cfg.xumx_branches))
    spec = (nb_frames, batch_size, cfg.nb_channels, cfg.nb_output_bins)
    if not cfg.xumx_branches:
        inputs = dict(mixture=nn.Variable(spec), target=nn.Variable(spec))
        return inputs, inputs
    rows, nb_targets = batch_size * 2, len(cfg.xumx_branches)
    inputs = dict(mixture=nn.Variable(spec),
                  phase_real=nn.Variable((rows, cfg.nb_output_bins, nb_frames)),
                  phase_imag=nn.Variable((rows, cfg.nb_output_bins, nb_frames)),
                  targets=nn.Variable((nb_targets,) + spec),
                  target_time=nn.Variable((nb_targets, rows, length)),
                  mixture_time=nn.Variable((1, rows, length)))
    return inputs, inputs


def _device_inputs(cfg, batch_size, nb_timesteps, length):
    """The graph's inputs as audio (`feed_audio`): mixture [shape=(batch, 2, nb_timesteps)],
    targets [shape=(J, batch, 2, nb_timesteps)]; the same tensors as `_host_inputs`'
    computed in the graph from them."""
    mono = cfg.nb_channels == 1
    mixture = nn.Variable((batch_size, 2, nb_timesteps))
    nb_targets = len(cfg.xumx_branches) or 1
    targets = nn.Variable((nb_targets, batch_size, 2, nb_timesteps))
    inputs = dict(mixture_audio=mixture, targets_audio=targets)
    # (J, B, 2, n) -> J x (B, 2, n)
    sources = list(F.split(targets, axis=0)) if nb_targets > 1 else \
        [F.reshape(targets, targets.shape[1:])]
    center = training_centered(cfg.xumx_branches)
    magnitudes = [nnabla_spectrogram(s, cfg.n_fft, cfg.n_hop, mono, center) for s in sources]
    if not cfg.xumx_branches:
        return inputs, dict(mixture=nnabla_spectrogram(mixture, cfg.n_fft, cfg.n_hop, mono,
                                                       center),
                            target=magnitudes[0])
    rows = batch_size * 2
    real, imag = nnabla_stft(F.reshape(mixture, (rows, nb_timesteps)), cfg.n_fft, cfg.n_hop)
    magnitude = F.pow_scalar(real ** 2 + imag ** 2, 0.5)  # (rows, bins, frames)
    # the mixture's phase as a unit phasor, 1 where it is silent (`loss.mixture_phasor`)
    silent = F.less_equal_scalar(magnitude, 0.0)
    safe = F.maximum_scalar(magnitude, 1e-30)
    tensors = dict(mixture=magnitude_layout(magnitude, batch_size, mono),
                   phase_real=F.where(silent, F.constant(1.0, real.shape), real / safe),
                   phase_imag=F.where(silent, F.constant(0.0, imag.shape), imag / safe),
                   targets=F.stack(*magnitudes, axis=0),
                   target_time=F.reshape(targets, (nb_targets, rows, nb_timesteps))[
                       :, :, TRIM:TRIM + length],
                   mixture_time=F.reshape(mixture, (1, rows, nb_timesteps))[
                       :, :, TRIM:TRIM + length])
    return inputs, tensors


def feed_spectrograms(graph, cfg, mixtures, targets):
    """The host's inputs from audio batches: mixtures [shape=(batch, nb_timesteps, 2)], targets
    [shape=(batch, nb_timesteps, 2 * nb_targets)] (UMX: one target; X-UMX: Sony's order)."""
    inputs, mono = graph.inputs, cfg.nb_channels == 1
    center = training_centered(cfg.xumx_branches)
    spec = stft(mixtures.transpose(0, 2, 1), cfg.n_fft, cfg.n_hop, center)  # (B, 2, T, bins)
    inputs["mixture"].d = model_layout(spec, mono)
    nb_targets = len(cfg.xumx_branches) or 1
    # (B, n, 2 * J) -> (J, B, 2, n)
    sources = targets.reshape(targets.shape[0], -1, nb_targets, 2).transpose(2, 0, 3, 1)
    magnitudes = [model_layout(stft(s, cfg.n_fft, cfg.n_hop, center), mono) for s in sources]
    if not cfg.xumx_branches:
        inputs["target"].d = magnitudes[0]
        return
    inputs["targets"].d = np.stack(magnitudes)
    # the mixture's phase: (B, 2, T, bins) -> (B * 2, bins, T)
    phasor = mixture_phasor(spec).transpose(0, 1, 3, 2).reshape(inputs["phase_real"].shape)
    inputs["phase_real"].d, inputs["phase_imag"].d = phasor.real, phasor.imag
    nb_targets, rows, length = inputs["target_time"].shape
    inputs["target_time"].d = sources.reshape(nb_targets, rows, -1)[..., TRIM:TRIM + length]
    inputs["mixture_time"].d = mixtures.transpose(0, 2, 1).reshape(1, rows, -1)[
        ..., TRIM:TRIM + length]


def feed_audio(graph, cfg, mixtures, targets):
    """The device's inputs: the audio batches as they are (the graph takes their STFTs)."""
    nb_targets = graph.inputs["targets_audio"].shape[0]
    graph.inputs["mixture_audio"].d = mixtures.transpose(0, 2, 1)  # (B, n, 2) -> (B, 2, n)
    # (B, n, 2 * J) -> (J, B, 2, n)
    graph.inputs["targets_audio"].d = \
        targets.reshape(targets.shape[0], -1, nb_targets, 2).transpose(2, 0, 3, 1)


def dropout_rngs(seed, epoch, indices):
    """One random state per sample for its dropout masks, from (seed, epoch, sample index)."""
    return [np.random.RandomState(np.random.SeedSequence([seed, epoch, int(i), 1]).generate_state(1)[0])
            for i in indices]


def train_step(graph, solver, mixtures, targets, cfg, weight_decay, rngs, comm=None):
    """One update from audio batches (see the graph's `feed`); → the loss.

    rngs: a random state per sample for its dropout masks (see `dropout_rngs`).
    """
    graph.feed(graph, cfg, mixtures, targets)
    graph.model.sample_dropout(rngs)
    solver.zero_grad()
    with signals_deferred():  # Ctrl-C arrives between NNabla's passes, not inside them
        graph.loss.forward(clear_no_need_grad=True)
    with signals_deferred():
        graph.loss.backward(clear_buffer=True)
    if comm is not None:
        comm.all_reduce_grads(solver)
    solver.weight_decay(weight_decay)
    solver.update()
    if comm is not None:
        comm.average_statistics(graph.scope)
    return float(graph.loss.d)


def step_gradients(graph, cfg, mixtures, targets):
    """(loss, {name: gradient}) of one forward and backward pass from the graph's parameters,
    without an update or dropout masks (checks: one step on two code paths)."""
    with nn.parameter_scope(graph.scope):
        params = nn.get_parameters()
    for p in params.values():
        p.grad.zero()
    graph.feed(graph, cfg, mixtures, targets)
    graph.loss.forward()
    graph.loss.backward()
    return float(graph.loss.d), {k: p.g.copy() for k, p in params.items()}


# --------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------

def validation_loss(data, scope, cfg, progress=True, comm=None, mcoef=10.0, valid_dur=10.0):
    """Mean over the dataset's validation items (whole tracks, or fixed samples; inference
    mode, the windowed network of the context) of the training loss: UMX's MSE, or X-UMX's
    multi-domain loss (`loss.xumx_validation_loss`).

    With a communicator each rank scores every size-th item and the mean is over all."""
    with nn.parameter_scope(scope):
        params = nn.get_parameters(grad_only=False)
    params = split_branches(params) if cfg.xumx_branches else {scope: params}
    cfgs = {t: cfg for t in params}
    network = network_for(cfgs, params=params)
    losses = []
    share = None if comm is None else (comm.rank, comm.size)
    # items are read one at a time (whole tracks): memory holds one
    for _, mixture, target in progress_bar(data.valid_items(share), desc="validation",
                                   total=data.nb_valid_items(share), enabled=progress,
                                   leave=False):
        padded = pad_for_stft(np.ascontiguousarray(mixture.T), cfg.n_fft)
        frames = nb_stft_frames(mixture.shape[0], cfg.n_hop)
        with estimate_spectrograms(padded, frames, cfgs, list(cfgs), progress=False,
                                   network=network) as store:
            estimates = store.read()  # (frames, bins, C, J)
        # (n, 2 * J) -> (J, 2, n)
        sources = np.ascontiguousarray(target.reshape(target.shape[0], -1, 2).transpose(1, 2, 0))
        reference = reference_magnitudes(sources, cfg)  # (frames, bins, C, J)
        if cfg.xumx_branches:
            losses.append(xumx_validation_loss(estimates, reference, mixture, sources, cfg,
                                               mcoef, valid_dur))
        else:
            losses.append(mse(estimates, reference)[0])
    if comm is not None:
        count = comm.mean(len(losses)) * comm.size
        return comm.mean(sum(losses)) * comm.size / count
    return float(np.mean(losses))


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
    if cfg.xumx_branches:
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
                           training_centered(cfg.xumx_branches))
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
    from dataclasses import replace
    target = data.targets[0]
    cfgs = load_models(args.model, [target] if args.umx_train else None, load=False)
    cfg = cfgs[target] if args.umx_train else next(iter(cfgs.values()))
    if args.umx_train and cfg.xumx_branches:
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
    from layout import branch_name
    targets = list(cfg.xumx_branches) or [scope]
    load_models(model, targets)  # each target's parameters in its scope, UMX's names
    with nn.parameter_scope(scope):
        params = nn.get_parameters(grad_only=False)
    for target in targets:
        with nn.parameter_scope(target):
            loaded = nn.get_parameters(grad_only=False)
        for name, var in loaded.items():
            stored = branch_name(name, target) if cfg.xumx_branches else name
            params[stored].d = var.d
        if mean is not None:
            params[branch_name("input_mean", target if cfg.xumx_branches else None)].d = \
                -mean[:cfg.max_bin]
            params[branch_name("input_scale", target if cfg.xumx_branches else None)].d = \
                1.0 / std[:cfg.max_bin]


def _resume(run, folder, log):
    from checkpoint import load_checkpoint
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


def main(argv=None):
    args = get_train_args(argv)
    from comm import get_communicator
    comm = run_cli(get_communicator, args.context)
    run_cli(run, args, comm, on_error=comm.abort if comm is not None else None)


if __name__ == "__main__":
    main()
