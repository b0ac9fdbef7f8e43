"""One training step (set the inputs, zero_grad, forward, backward, all-reduce, update), one
step's gradients for checks, and the validation loss."""


import nnabla as nn
import numpy as np

from unmix_nnabla.audio.spectral import nb_stft_frames, pad_for_stft
from unmix_nnabla.base.console import progress_bar
from unmix_nnabla.base.runtime import signals_deferred
from unmix_nnabla.networks.inference import network_for
from unmix_nnabla.networks.layout import split_branches
from unmix_nnabla.separation.separator import estimate_spectrograms
from unmix_nnabla.training.loss import mse, reference_magnitudes, xumx_validation_loss


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
    params = split_branches(params) if cfg.is_xumx else {scope: params}
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
        if cfg.is_xumx:
            losses.append(xumx_validation_loss(estimates, reference, mixture, sources, cfg,
                                               mcoef, valid_dur))
        else:
            losses.append(mse(estimates, reference)[0])
    if comm is not None:
        count = comm.mean(len(losses)) * comm.size
        return comm.mean(sum(losses)) * comm.size / count
    return float(np.mean(losses))
