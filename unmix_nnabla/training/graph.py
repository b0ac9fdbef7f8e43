"""The training graph, built once: UMX's for one target or X-UMX's, with its inputs and how
they are fed from audio batches (the host computes the STFTs on CPU contexts; the device on GPU
contexts), in the NNabla idiom of Sony's training scripts."""
from collections import namedtuple

import nnabla as nn
import nnabla.functions as F
import numpy as np

from unmix_nnabla.audio.spectral import (magnitude_layout, model_layout, nb_stft_frames,
                                         nnabla_spectrogram, nnabla_stft, stft, training_centered)
from unmix_nnabla.base.runtime import UmxError
from unmix_nnabla.networks.model import LSTM_DROPOUT, CrossNet, OpenUnmix
from unmix_nnabla.networks.ops import numpy_kernels
from unmix_nnabla.training.loss import TRIM, mixture_phasor, umx_loss, xumx_loss

TrainGraph = namedtuple("TrainGraph", "inputs loss model scope feed")


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
    length = xumx_signal_length(cfg, nb_timesteps) if cfg.is_xumx else None
    on_host = numpy_kernels()
    inputs, tensors = (_host_inputs if on_host else _device_inputs)(cfg, batch_size,
                                                                  nb_timesteps, length)
    with nn.parameter_scope(scope):
        if not cfg.is_xumx:
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
                               training_centered(cfg.is_xumx))
    spec = (nb_frames, batch_size, cfg.nb_channels, cfg.nb_output_bins)
    if not cfg.is_xumx:
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
    nb_targets = cfg.nb_targets
    targets = nn.Variable((nb_targets, batch_size, 2, nb_timesteps))
    inputs = dict(mixture_audio=mixture, targets_audio=targets)
    # (J, B, 2, n) -> J x (B, 2, n)
    sources = list(F.split(targets, axis=0)) if nb_targets > 1 else \
        [F.reshape(targets, targets.shape[1:])]
    center = training_centered(cfg.is_xumx)
    magnitudes = [nnabla_spectrogram(s, cfg.n_fft, cfg.n_hop, mono, center) for s in sources]
    if not cfg.is_xumx:
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
    center = training_centered(cfg.is_xumx)
    spec = stft(mixtures.transpose(0, 2, 1), cfg.n_fft, cfg.n_hop, center)  # (B, 2, T, bins)
    inputs["mixture"].d = model_layout(spec, mono)
    nb_targets = cfg.nb_targets
    # (B, n, 2 * J) -> (J, B, 2, n)
    sources = targets.reshape(targets.shape[0], -1, nb_targets, 2).transpose(2, 0, 3, 1)
    magnitudes = [model_layout(stft(s, cfg.n_fft, cfg.n_hop, center), mono) for s in sources]
    if not cfg.is_xumx:
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
