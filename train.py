"""Train one UMX target: python train.py --root MUSDB18 --source vocals --output OUT --umx-train

Writes to OUT: `<source>.h5` (the best weights, official layout: `test.py --model OUT` loads
it), `<source>.json` (arguments, architecture, per-epoch history), `<source>_loss.png`,
NNabla Monitor series, and `<source>.checkpoint/` (the last completed epoch: parameters,
solver state, scheduler and early stopping). Re-running the same command resumes from it.
"""
import os
import time
from collections import namedtuple

from args import get_train_args  # first: it quiets NNabla's import-time log line

import numpy as np
import nnabla as nn
import nnabla.functions as F
import nnabla.solvers as S
from tqdm import tqdm

from checkpoint import save_checkpoint
from datasets import check_sources, epoch_batches, load_dataset
from context import set_context
from files import (atomic_path, output_folder, read_json, refuse_overlaps, write_json_atomic,
                   writing_into)
from inference import InferenceNetwork
from loss import TRIM, frequency_loss, time_loss, time_loss_numpy, umx_loss
import ops
from ops import multiply
from model import (XUMX_TARGETS, CrossNet, OpenUnmix, UmxConfig, bandwidth_to_max_bin,
                   split_branches)
from runtime import UmxError, limit_blas_threads, run_cli
from separator import estimate_spectrograms
from spectral import istft, model_layout, nb_stft_frames, pad_for_stft, stft
from weights import save_target

TrainGraph = namedtuple("TrainGraph", "inputs loss model scope feed")


# --------------------------------------------------------------------------------------
# statistics, scheduling, stopping
# --------------------------------------------------------------------------------------

def magnitudes(audio, n_fft, n_hop, mono=False):
    """audio [shape=(nb_samples, nb_timesteps, 2)] → [shape=(nb_frames, nb_samples, C, nb_bins)]"""
    return model_layout(stft(audio.transpose(0, 2, 1), n_fft, n_hop), mono)


def compute_statistics(mixtures, n_fft, n_hop, progress=True):
    """Per-bin mean and std of the mono mixture magnitude over all frames of `mixtures`
    (arrays [shape=(nb_timesteps, 2)], e.g. a dataset's `statistics_items()`).

    As the seed does, the std is floored at 1e-4 of its maximum. → (mean, std) [shape=(bins,)]
    """
    total, total_sq, count = 0.0, 0.0, 0
    for mixture in tqdm(mixtures, desc="statistics", disable=not progress, leave=False):
        mag = np.abs(stft(mixture.T, n_fft, n_hop)).mean(axis=0)  # (frames, bins)
        mag = mag.astype(np.float64)
        total, total_sq, count = total + mag.sum(0), total_sq + (mag ** 2).sum(0), count + len(mag)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0))
    std = np.maximum(std, 1e-4 * std.max())
    return mean.astype(np.float32), std.astype(np.float32)


class ReduceLROnPlateau:
    """Multiply the learning rate by `gamma` after `patience` epochs without a relative
    improvement of 1e-4, then wait `cooldown` epochs (PyTorch's scheduler, as the seed uses)."""

    def __init__(self, lr, gamma, patience, cooldown=10):
        self.lr, self.gamma, self.patience, self.cooldown = lr, gamma, patience, cooldown
        self.best, self.bad_epochs, self.cooldown_left = np.inf, 0, 0

    def step(self, loss):
        if loss < self.best * (1 - 1e-4):
            self.best, self.bad_epochs = loss, 0
        else:
            self.bad_epochs += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.bad_epochs = 0
        if self.bad_epochs > self.patience:
            self.lr *= self.gamma
            self.cooldown_left, self.bad_epochs = self.cooldown, 0
        return self.lr

    def state_dict(self):
        return dict(vars(self))

    def load_state_dict(self, state):
        vars(self).update(state)


class EarlyStopping:
    """Stop after `patience` epochs without a better validation loss."""

    def __init__(self, patience):
        self.patience, self.best, self.bad_epochs = patience, np.inf, 0

    def step(self, loss):
        """→ True when this loss is the best so far."""
        if loss < self.best:
            self.best, self.bad_epochs = loss, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def stop(self):
        return self.bad_epochs >= self.patience

    def state_dict(self):
        return dict(vars(self))

    def load_state_dict(self, state):
        vars(self).update(state)


# --------------------------------------------------------------------------------------
# graphs and steps
# --------------------------------------------------------------------------------------

def build_training_graph(cfg, scope, batch_size, nb_timesteps, input_mean=None,
                         input_scale=None, freeze_bn=False, mcoef=10.0):
    """The training graph, built once: UMX's for one target (cfg without X-UMX branches,
    parameters in `scope`), or X-UMX's (`cfg.xumx_branches`, Sony's names in `scope`).

    Its `inputs` are Variables that `feed` fills from audio batches of nb_timesteps samples;
    loss: UMX's MSE, or X-UMX's multi-domain loss (`loss.py`, time term weighted by mcoef).
    """
    nb_frames = nb_stft_frames(nb_timesteps, cfg.n_hop)
    spec = (nb_frames, batch_size, cfg.nb_channels, cfg.nb_output_bins)
    mixture = nn.Variable(spec)
    if not cfg.xumx_branches:
        target = nn.Variable(spec)
        with nn.parameter_scope(scope):
            model = OpenUnmix(cfg, input_mean, input_scale)
            estimate = model(mixture, test=False, freeze_bn=freeze_bn)
        return TrainGraph(dict(mixture=mixture, target=target), umx_loss(estimate, target),
                          model, scope, feed_umx)
    nb_targets = len(cfg.xumx_branches)
    rows = batch_size * 2  # time signals: (samples x stereo channels, L)
    length = (nb_frames - 1) * cfg.n_hop - 2 * TRIM  # the ISTFT's length, trimmed
    if length <= 0:
        raise UmxError("--seq-dur is too short for X-UMX's time-domain loss (%d samples "
                       "trimmed at each end)" % TRIM)
    inputs = dict(mixture=mixture,
                  phase_real=nn.Variable((rows, cfg.nb_output_bins, nb_frames)),
                  phase_imag=nn.Variable((rows, cfg.nb_output_bins, nb_frames)),
                  targets=nn.Variable((nb_targets,) + spec),
                  target_time=nn.Variable((nb_targets, rows, length)),
                  mixture_time=nn.Variable((1, rows, length)))
    with nn.parameter_scope(scope):
        model = CrossNet(cfg, cfg.xumx_branches, input_mean, input_scale)
        estimates = list(model(mixture, test=False, freeze_bn=freeze_bn).values())
    # the estimates' time signals: magnitudes with the mixture's phase, through the ISTFT
    times = []
    for estimate in estimates:
        # (T, B, C, bins) -> (B, C, bins, T) -> (B * 2, bins, T); mono estimates serve both channels
        estimate = F.transpose(estimate, (1, 2, 3, 0))
        if cfg.nb_channels == 1:
            estimate = F.broadcast(estimate, (batch_size, 2) + estimate.shape[2:])
        estimate = F.reshape(estimate, (rows, cfg.nb_output_bins, nb_frames))
        time = ops.istft(multiply(estimate, inputs["phase_real"]),
                         multiply(estimate, inputs["phase_imag"]), cfg.n_fft, cfg.n_hop)
        times.append(time[:, TRIM:TRIM + length])
    loss = mcoef * time_loss(F.stack(*times, axis=0), inputs["target_time"],
                             inputs["mixture_time"]) + \
        frequency_loss(estimates, inputs["targets"])
    return TrainGraph(inputs, loss, model, scope, feed_xumx)


def feed_umx(graph, cfg, mixtures, targets):
    """Magnitudes of audio batches [shape=(batch, nb_timesteps, 2)] into UMX's inputs."""
    mono = cfg.nb_channels == 1
    graph.inputs["mixture"].d = magnitudes(mixtures, cfg.n_fft, cfg.n_hop, mono)
    graph.inputs["target"].d = magnitudes(targets, cfg.n_fft, cfg.n_hop, mono)


def feed_xumx(graph, cfg, mixtures, targets):
    """X-UMX's inputs from audio batches: mixtures [shape=(batch, nb_timesteps, 2)], targets
    [shape=(batch, nb_timesteps, 2 * nb_targets)] (Sony's order)."""
    inputs = graph.inputs
    batch, _, _ = mixtures.shape
    spec = stft(mixtures.transpose(0, 2, 1), cfg.n_fft, cfg.n_hop)  # (B, 2, T, bins)
    magnitude = np.abs(spec)
    inputs["mixture"].d = model_layout(magnitude, cfg.nb_channels == 1)
    # the mixture's phase as a unit phasor (1 where the mixture is silent, as the Wiener
    # filter's start): (B, 2, T, bins) -> (B * 2, bins, T)
    phasor = np.where(magnitude > 0, spec / np.maximum(magnitude, 1e-30), 1.0)
    phasor = phasor.transpose(0, 1, 3, 2).reshape(inputs["phase_real"].shape)
    inputs["phase_real"].d, inputs["phase_imag"].d = phasor.real, phasor.imag
    nb_targets, rows, length = inputs["target_time"].shape
    # (B, n, 2 * J) -> (J, B * 2, n)
    sources = targets.reshape(batch, -1, nb_targets, 2).transpose(2, 0, 3, 1)
    inputs["targets"].d = np.stack([magnitudes(s.transpose(0, 2, 1), cfg.n_fft, cfg.n_hop,
                                               cfg.nb_channels == 1) for s in sources])
    inputs["target_time"].d = sources.reshape(nb_targets, rows, -1)[..., TRIM:TRIM + length]
    inputs["mixture_time"].d = mixtures.transpose(0, 2, 1).reshape(1, rows, -1)[
        ..., TRIM:TRIM + length]


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
    graph.loss.forward(clear_no_need_grad=True)
    graph.loss.backward(clear_buffer=True)
    if comm is not None:
        comm.all_reduce_grads(solver)
    solver.weight_decay(weight_decay)
    solver.update()
    if comm is not None:
        comm.average_statistics(graph.scope)
    return float(graph.loss.d)


def inference_network(scope, cfg):
    """The folded inference network of today's parameters in `scope` → (network, {target:
    cfg})."""
    with nn.parameter_scope(scope):
        params = {k: v.d for k, v in nn.get_parameters(grad_only=False).items()}
    models = ({t: (cfg, p) for t, p in split_branches(params).items()} if cfg.xumx_branches
              else {scope: (cfg, params)})
    return InferenceNetwork(models), {t: cfg for t in models}


def validation_loss(data, scope, cfg, progress=True, comm=None, mcoef=10.0, valid_dur=10.0):
    """Mean over the dataset's validation items (whole tracks, or fixed samples; inference
    mode, the windowed network) of the training loss: UMX's MSE, or X-UMX's multi-domain
    loss, whose time term is the mean over `valid_dur`-second segments (a shorter item: one).

    With a communicator each rank scores every size-th item and the mean is over all."""
    network, cfgs = inference_network(scope, cfg)
    targets = list(cfgs)
    losses = []
    share = None if comm is None else (comm.rank, comm.size)
    # items are read one at a time (whole tracks): memory holds one
    for _, mixture, target in tqdm(data.valid_items(share), desc="validation",
                                   total=data.nb_valid_items(share), disable=not progress,
                                   leave=False):
        padded = pad_for_stft(np.ascontiguousarray(mixture.T), cfg.n_fft)
        frames = nb_stft_frames(mixture.shape[0], cfg.n_hop)
        with estimate_spectrograms(padded, frames, cfgs, targets, progress=False,
                                   network=network) as store:
            estimates = store.read()  # (frames, bins, C, J)
        # (n, 2 * J) -> (J, 2, n)
        sources = target.reshape(target.shape[0], -1, 2).transpose(1, 2, 0)
        reference = np.abs(stft(sources, cfg.n_fft, cfg.n_hop)).transpose(2, 3, 1, 0)
        if cfg.nb_channels == 1:
            reference = reference.mean(axis=2, keepdims=True)  # (frames, bins, C, J)
        if not cfg.xumx_branches:
            losses.append(float(np.mean((estimates - reference) ** 2)))
            continue
        errors = (estimates - reference).astype(np.float64)
        frequency = (4 * np.sum(errors ** 2) + 3 * np.sum(errors.sum(axis=-1) ** 2)) / \
            (14.0 * errors[..., 0].size)
        losses.append(mcoef * xumx_time_loss(estimates, mixture, sources, cfg, valid_dur)
                      + frequency)
    if comm is not None:
        count = comm.mean(len(losses)) * comm.size
        return comm.mean(sum(losses)) * comm.size / count
    return float(np.mean(losses))


def xumx_time_loss(estimates, mixture, sources, cfg, valid_dur):
    """X-UMX's time term on a whole track: estimates [shape=(frames, bins, C, J)] with the
    mixture's [shape=(n, 2)] phase through the ISTFT, against sources [shape=(J, 2, n)], as
    the mean over segments of `valid_dur` seconds (each trimmed by TRIM at both ends)."""
    spec = stft(mixture.T, cfg.n_fft, cfg.n_hop)  # (2, frames, bins)
    magnitude = np.abs(spec)
    phasor = np.where(magnitude > 0, spec / np.maximum(magnitude, 1e-30), 1.0)
    # (frames, bins, C, J) -> (J, C, frames, bins), with the mixture's phase
    times = istft(estimates.transpose(3, 2, 0, 1) * phasor[None], mixture.shape[0], cfg.n_fft,
                  cfg.n_hop)
    n = mixture.shape[0]
    span = min(n, int(round(valid_dur * cfg.sample_rate)))
    terms = [time_loss_numpy(times[..., a + TRIM:a + span - TRIM],
                             sources[..., a + TRIM:a + span - TRIM],
                             mixture.T[:, a + TRIM:a + span - TRIM])
             for a in range(0, n - span + 1, span)]
    return float(np.mean(terms))


# --------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------

def plot_losses(history, path, title, ylabel):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(epochs, [h["train_loss"] for h in history], label="training")
    ax.plot(epochs, [h["valid_loss"] for h in history], label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


# --------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------

def prepare_data(args, output, log, check=True, progress=True):
    """The dataset of --dataset (UMX: one target; X-UMX: MUSDB18's four), every file checked
    before any step (`datasets.check_sources`; its cache goes to `output`)."""
    dataset = load_dataset(args, [args.source] if args.umx_train else list(XUMX_TARGETS), log)
    if check:
        check_sources(dataset.tracks(), os.path.join(output, DATA_CHECK), progress, log=log)
    return dataset


DATA_CHECK = "data-check.json"


def output_files(output, source):
    """What a run writes into --output, by name."""
    return {"weights": os.path.join(output, source + ".h5"),
            "summary": os.path.join(output, source + ".json"),
            "plot": os.path.join(output, source + "_loss.png"),
            "checkpoint": os.path.join(output, source + ".checkpoint")}


def resume_point(args, paths, cfg):
    """The verified checkpoint to resume from, or None for a new run; refuses to start over
    where a finished run's weights would be replaced, or where another model was trained."""
    from checkpoint import check_same_config, find_checkpoint
    found = find_checkpoint(args.checkpoint or paths["checkpoint"])
    if args.checkpoint and found is None:
        raise UmxError("no checkpoint in %s" % args.checkpoint)
    if os.path.isfile(paths["summary"]):
        summary = read_json(paths["summary"], "training summary")
        if isinstance(summary, dict) and isinstance(summary.get("config"), dict):
            check_same_config(summary["config"], cfg.to_dict(), args.output)
    if found is None and os.path.isfile(paths["weights"]):
        raise UmxError("%s holds %s but no checkpoint to resume from: use another --output, or "
                       "move the weights away to train anew" % (args.output, paths["weights"]))
    return found


def nan_message(what, value, epoch, dataset, indices, weights_path):
    """One line for a non-finite loss: the epoch, the batch's tracks, where good weights are."""
    where = ""
    if indices is not None:
        names = sorted({track.name for i in indices for _, _, track, _, _ in
                        dataset.draws(epoch, int(i))[0]})
        where = " (batch from tracks %s)" % ", ".join("'%s'" % n for n in names)
    kept = ("the best weights so far are in %s" % weights_path if os.path.isfile(weights_path)
            else "no weights were saved yet")
    return "%s loss is %s at epoch %d%s: stopped; %s" % (what, value, epoch, where, kept)


def train(args, comm=None, progress=True):
    """Train (or resume) UMX for `args.source` (--umx-train) or X-UMX; returns the run's
    summary dict."""
    rank = comm.rank if comm else 0
    nb_procs = comm.size if comm else 1
    is_main = rank == 0
    log = print if is_main else (lambda *a, **k: None)
    progress = progress and is_main
    data = prepare_data(args, args.output, log, check=is_main, progress=progress)
    targets = data.targets
    # the parameter scope and output name: UMX's target, or X-UMX
    scope = targets[0] if args.umx_train else "x-umx"
    paths = output_files(args.output, scope)
    log("training %s on %d process%s" % (
        "UMX for '%s'" % scope if args.umx_train else "X-UMX (%s)" % ", ".join(targets),
        nb_procs, "es (mpirun)" if nb_procs > 1 else ""))
    refuse_overlaps([(f.path, "the dataset's file") for t in data.tracks() for f in t.files()],
                    [(path, "--output") for key, path in paths.items() if key != "checkpoint"])
    dataset = data.train
    rate = data.rate
    cfg = UmxConfig(nb_channels=args.nb_channels, hidden_size=args.hidden_size,
                    max_bin=bandwidth_to_max_bin(rate, args.nfft, args.bandwidth),
                    nb_output_bins=args.nfft // 2 + 1, unidirectional=args.unidirectional,
                    n_fft=args.nfft, n_hop=args.nhop, sample_rate=rate,
                    xumx_branches=() if args.umx_train else tuple(targets))
    resume_from = resume_point(args, paths, cfg)
    if comm is not None:
        comm.barrier()  # rank 0 has checked the data
        # ranks side by side share the cores (one machine assumed): no oversubscription
        limit_blas_threads(max(1, (os.cpu_count() or 1) // comm.size))
    set_context(args.context, args.device_id if comm is None else comm.local_rank, verbose=is_main)

    # the seed's scaling of learning rate and weight decay with the global batch
    scale = nb_procs * args.batch_size / 16.0 if nb_procs > 1 else 1.0
    lr, weight_decay = args.lr * scale, args.weight_decay * scale

    nn.clear_parameters()
    if resume_from or not is_main:
        # the checkpoint holds the (trained) standardization; other ranks get rank 0's
        mean, std = None, None
    else:
        mean, std = compute_statistics(data.statistics_items(), cfg.n_fft, cfg.n_hop, progress)
    seq_samples = int(round(dataset.seq_dur * rate))
    graph = build_training_graph(cfg, scope, args.batch_size, seq_samples, mean, std,
                                 mcoef=args.mcoef)
    solver = S.Adam(alpha=lr)
    with nn.parameter_scope(scope):
        solver.set_parameters(nn.get_parameters())
    scheduler = ReduceLROnPlateau(lr, args.lr_decay_gamma, args.lr_decay_patience)
    stopper = EarlyStopping(args.patience)
    history, first_epoch = [], 1
    if resume_from:
        from checkpoint import load_checkpoint
        state = load_checkpoint(resume_from, scope, solver, cfg.to_dict())
        scheduler.load_state_dict(state["scheduler"])
        stopper.load_state_dict(state["stopper"])
        history, first_epoch = state["history"], state["epoch"] + 1
        solver.set_learning_rate(scheduler.lr)
        log("resuming %s from epoch %d (%s)" % (scope, state["epoch"], resume_from))
    if comm is not None:
        comm.broadcast_parameters(scope)

    monitors = make_monitors(args.output, scope) if is_main else None
    epochs = tqdm(range(first_epoch, args.epochs + 1), desc="epochs", initial=first_epoch - 1,
                  total=args.epochs, disable=not progress)
    stopped_early = stopper.stop
    for epoch in epochs:
        if stopped_early:
            break
        start = time.time()
        losses = []
        batches = epoch_batches(dataset, epoch, args.batch_size, args.nb_workers, rank, nb_procs,
                                with_indices=True)
        bar = tqdm(batches, desc="epoch %d" % epoch, total=len(dataset) // (args.batch_size * nb_procs),
                   leave=False, disable=not progress)
        for indices, mixtures, targets in bar:
            loss = train_step(graph, solver, mixtures, targets, cfg, weight_decay,
                              dropout_rngs(args.seed, epoch, indices), comm)
            if comm is not None:  # every rank takes the same decision
                loss = comm.mean(loss)
            if not np.isfinite(loss):
                raise UmxError(nan_message("training", loss, epoch, dataset, indices,
                                           paths["weights"]))
            losses.append(loss)
            bar.set_postfix(loss="%.4g" % loss)
        if not losses:
            raise UmxError("an epoch has no full batch: %d samples < --batch-size %d x %d processes"
                           % (len(dataset), args.batch_size, nb_procs))
        train_loss = float(np.mean(losses))
        valid_loss = validation_loss(data, scope, cfg, progress, comm, args.mcoef,
                                     args.valid_dur)
        if not np.isfinite(valid_loss):
            raise UmxError(nan_message("validation", valid_loss, epoch, dataset, None,
                                       paths["weights"]))
        improved = stopper.step(valid_loss)
        solver.set_learning_rate(scheduler.step(valid_loss))
        history.append(dict(epoch=epoch, train_loss=train_loss, valid_loss=valid_loss,
                            lr=solver.learning_rate(), seconds=time.time() - start))
        best = min(history, key=lambda h: h["valid_loss"])
        stopped_early = stopper.stop
        if is_main:
            if improved:
                save_target(paths["weights"], scope)
            write_json_atomic(paths["summary"], dict(
                args=vars(args), config=cfg.to_dict(), dataset=data.log, history=history,
                best_epoch=best["epoch"],
                best_valid_loss=best["valid_loss"], epochs_trained=epoch,
                stopped_early=stopped_early, nb_processes=nb_procs))
            save_checkpoint(paths["checkpoint"], scope, solver, dict(
                epoch=epoch, history=history, scheduler=scheduler.state_dict(),
                stopper=stopper.state_dict(), config=cfg.to_dict()))
            for name, value in (("train", train_loss), ("valid", valid_loss), ("lr", solver.learning_rate())):
                monitors[name].add(epoch, value)
            plot_losses(history, paths["plot"], "UMX %s" % scope if args.umx_train else "X-UMX",
                        "MSE (magnitude)" if args.umx_train else
                        "%g x time loss + frequency loss" % args.mcoef)
        if comm is not None:
            comm.barrier()
        epochs.set_postfix(train="%.4g" % train_loss, valid="%.4g" % valid_loss)
    if stopped_early:
        log("early stopping: no improvement for %d epochs" % args.patience)
    return dict(history=history, stopped_early=stopped_early)


def make_monitors(folder, source):
    from nnabla.monitor import Monitor, MonitorSeries
    with writing_into(folder):
        monitor = Monitor(os.path.join(folder, source + "_monitor"))
    return {"train": MonitorSeries("Training loss", monitor, interval=1, verbose=False),
            "valid": MonitorSeries("Validation loss", monitor, interval=1, verbose=False),
            "lr": MonitorSeries("Learning rate", monitor, interval=1, verbose=False)}


def run(args, comm):
    if comm is None or comm.rank == 0:
        with output_folder(args.output, "--output"):
            return train(args, comm)
    return train(args, comm)


def main(argv=None):
    args = get_train_args(argv)
    from comm import get_communicator
    comm = run_cli(get_communicator, args.context)
    run_cli(run, args, comm, on_error=comm.abort if comm is not None else None)


if __name__ == "__main__":
    main()
