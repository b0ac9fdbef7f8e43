"""The project's one STFT/ISTFT, used everywhere: training inputs and targets, statistics,
separation.

Convention: periodic Hann window, `n_fft`-sample frames every `n_hop` samples, no
normalization — the conventions of `torch.stft` and of NNabla's `F.stft(..., window_type=
'hanning')`. Centered (the signal reflect-padded by n_fft // 2 on both sides, 1 + n // n_hop
frames) or not (frames from the first sample, 1 + (n - n_fft) // n_hop of them), by the rule
that `training_centered` writes once: separation and X-UMX's training centered, UMX's training
not. Two backends: `stft`/`istft` (numpy/scipy FFT, wherever no gradient flows and the data is
on the host; `istft_adjoint` is the ISTFT's gradient, which training's CPU functions use) and
`nnabla_stft`/`nnabla_spectrogram`/`nnabla_istft` (NNabla's F.stft and F.istft, in training
graphs on GPU contexts, where the audio goes to the device and the transforms run there).
"""
import functools

import nnabla.functions as F
import numpy as np
import scipy.fft

from unmix_nnabla.base.runtime import UmxError
from unmix_nnabla.base.threads import compute_threads


def hann_window(n_fft):
    """Periodic Hann window, as torch.hann_window and NNabla's 'hanning'."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)


def training_centered(xumx):
    """Whether a training graph's STFTs are centered: X-UMX's are (as Sony's X-UMX training
    graph frames them); UMX's are not, nor are the statistics of its input standardization
    (as open-unmix-pytorch's training, whose `make_filterbanks` defaults to center=False, and
    Sony's UMX training graph frame them). Separation is always centered (as both references
    separate), and so is the validation loss, computed by the separation's network."""
    return bool(xumx)


def nb_stft_frames(nb_timesteps, n_hop, n_fft=None, center=True):
    """Number of frames of an STFT: 1 + n // n_hop centered, 1 + (n - n_fft) // n_hop not (0
    when the signal is shorter than one window)."""
    if center:
        return 1 + nb_timesteps // n_hop
    return max(0, 1 + (nb_timesteps - n_fft) // n_hop)


def pad_for_stft(audio, n_fft):
    """Reflect-pad the last axis by n_fft // 2 on both sides (the centering of `stft`)."""
    if audio.shape[-1] <= n_fft // 2:
        raise UmxError("audio of %d samples is shorter than one STFT window (%d samples)"
                       % (audio.shape[-1], n_fft))
    pad = [(0, 0)] * (audio.ndim - 1) + [(n_fft // 2, n_fft // 2)]
    return np.pad(audio, pad, mode="reflect")


def stft_frames(padded, start, stop, n_fft, n_hop):
    """STFT frames `start..stop-1` of an already padded signal.

    padded [shape=(..., nb_timesteps + n_fft)] (an array, or a `PaddedSignal`)
    → complex64 [shape=(..., nb_frames, nb_bins)]
    """
    lo, hi = start * n_hop, (stop - 1) * n_hop + n_fft
    segment = padded.segment(lo, hi) if hasattr(padded, "segment") else padded[..., lo:hi]
    # (..., nb_samples) -> (..., nb_frames, n_fft): a strided view, no copy
    frames = np.lib.stride_tricks.sliding_window_view(segment, n_fft, axis=-1)[..., ::n_hop, :]
    windowed = frames * hann_window(n_fft)
    return scipy.fft.rfft(windowed.astype(np.float32, copy=False), axis=-1,
                          workers=compute_threads()).astype(np.complex64, copy=False)


def stft(audio, n_fft=4096, n_hop=1024, center=True):
    """STFT, centered unless `center` is False (see the module's doc).

    audio [shape=(..., nb_timesteps)] → complex64 [shape=(..., nb_frames, nb_bins)]"""
    audio = np.asarray(audio, dtype=np.float32)
    nb_frames = nb_stft_frames(audio.shape[-1], n_hop, n_fft, center)
    if not center and nb_frames == 0:
        raise UmxError("audio of %d samples is shorter than one STFT window (%d samples)"
                       % (audio.shape[-1], n_fft))
    return stft_frames(pad_for_stft(audio, n_fft) if center else audio, 0, nb_frames, n_fft,
                       n_hop)


class OverlapAdd:
    """Streaming inverse of `stft`: add chunks of frames in order, get finished samples back.

    Sums windowed inverse FFTs and divides by the summed squared window (torch.istft's
    least-squares inverse), removing the centering pad. Only the samples that later frames
    still overlap are kept, so memory does not grow with the signal.
    """

    def __init__(self, lead_shape, nb_timesteps, n_fft=4096, n_hop=1024):
        self.n_fft, self.n_hop, self.nb_timesteps = n_fft, n_hop, nb_timesteps
        self.nb_frames = nb_stft_frames(nb_timesteps, n_hop)
        self.lead_shape = tuple(lead_shape)
        self.window = hann_window(n_fft)
        self.origin = 0  # padded position of pending[..., 0]
        self.next_frame = 0
        self.pending = np.zeros(self.lead_shape + (0,), np.float32)

    def add(self, spec, start):
        """spec [shape=(*lead_shape, nb_frames, nb_bins)]: frames start.. (start = the frame after
        the previous chunk's) → the samples now finished [shape=(*lead_shape, n)]."""
        if start != self.next_frame:
            raise ValueError("OverlapAdd takes frames in order: expected frame %d, got %d"
                             % (self.next_frame, start))
        from unmix_nnabla.base.kernels import overlap_add  # deferred: numba, seconds
        frames = scipy.fft.irfft(spec, n=self.n_fft, axis=-1, workers=compute_threads())
        nb_frames = frames.shape[-2]
        hop, n_fft = self.n_hop, self.n_fft
        end = (start + nb_frames - 1) * hop + n_fft  # padded position after the last frame
        if end - self.origin > self.pending.shape[-1]:
            grown = np.zeros(self.lead_shape + (end - self.origin,), np.float32)
            grown[..., :self.pending.shape[-1]] = self.pending
            self.pending = grown
        # (*lead, frames, n_fft) -> (rows, frames, n_fft), (*lead, n) -> (rows, n): views
        overlap_add(np.ascontiguousarray(frames, np.float32).reshape((-1,) + frames.shape[-2:]),
                    self.window, self.pending.reshape(-1, self.pending.shape[-1]),
                    start * hop - self.origin, hop)
        self.next_frame = start + nb_frames
        # later frames start at next_frame * hop: everything before is final
        return self._release(self.next_frame * hop if self.next_frame < self.nb_frames else end)

    def _release(self, until):
        """Normalize and hand out the pending samples before padded position `until`."""
        hop, n_fft = self.n_hop, self.n_fft
        done = self.pending[..., :until - self.origin]
        wsum = np.zeros(done.shape[-1], np.float32)
        for k in range(max(0, (self.origin - n_fft) // hop), min(self.nb_frames, -(-until // hop))):
            lo, hi = max(k * hop, self.origin), min(k * hop + n_fft, until)
            if hi > lo:
                wsum[lo - self.origin: hi - self.origin] += self.window[lo - k * hop: hi - k * hop] ** 2
        done = done / np.maximum(wsum, 1e-8)
        # padded positions -> signal samples (the centering pad of n_fft // 2 is dropped)
        lo = max(self.origin, n_fft // 2)
        hi = max(lo, min(until, n_fft // 2 + self.nb_timesteps))
        self.pending = self.pending[..., until - self.origin:].copy()
        out, self.origin = done[..., lo - self.origin: hi - self.origin], until
        return out


def istft(spec, nb_timesteps, n_fft=4096, n_hop=1024):
    """Inverse of `stft`. spec [shape=(..., nb_frames, nb_bins)] → float32 [shape=(..., nb_timesteps)]."""
    return OverlapAdd(spec.shape[:-2], nb_timesteps, n_fft, n_hop).add(spec, 0)


def istft_adjoint(grad, nb_frames, n_fft=4096, n_hop=1024):
    """The gradient of `istft`: for y = istft(X, nb_timesteps) and g = dL/dy [shape=(...,
    nb_timesteps)] → dL/dRe(X) + i dL/dIm(X) [shape=(..., nb_frames, nb_bins)] (complex64).

    istft normalizes the overlap-added windowed inverse FFTs by the summed squared window and
    drops the centering pad; its adjoint pads g back, divides it by the same sum, cuts it into
    windowed frames, and applies the adjoint of the real inverse FFT: (c_k / n_fft) rfft, with
    c_k = 1 for the first and last bins and 2 for the others (irfft counts those twice).
    """
    pad = n_fft // 2
    length = (nb_frames - 1) * n_hop + n_fft
    padded = np.zeros(grad.shape[:-1] + (length,), np.float32)
    nb_timesteps = grad.shape[-1]
    padded[..., pad:pad + nb_timesteps] = grad
    padded /= np.maximum(_window_square_sum(nb_frames, n_fft, n_hop), 1e-8)
    window = hann_window(n_fft)
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft, axis=-1)[..., ::n_hop, :]
    spec = scipy.fft.rfft(frames * window, axis=-1, workers=compute_threads())
    scale = np.full(n_fft // 2 + 1, 2.0 / n_fft, np.float32)
    scale[0] = scale[-1] = 1.0 / n_fft
    return (spec * scale).astype(np.complex64)


@functools.lru_cache(maxsize=8)
def _window_square_sum(nb_frames, n_fft, n_hop):
    """The squared windows of nb_frames frames overlap-added [shape=((nb_frames - 1) n_hop +
    n_fft,)] (training calls the adjoint of its fixed-size excerpts many times)."""
    window = hann_window(n_fft)
    wsum = np.zeros((nb_frames - 1) * n_hop + n_fft, np.float32)
    for k in range(nb_frames):
        wsum[k * n_hop:k * n_hop + n_fft] += window ** 2
    wsum.flags.writeable = False
    return wsum


class PaddedSignal:
    """A signal [shape=(nb_timesteps, C)] (an array or an `AudioFile`) seen as `pad_for_stft`'s
    result [shape=(C, nb_timesteps + n_fft)] without a padded copy: `segment` reads a range on
    demand, reflecting at both ends."""

    def __init__(self, signal, n_fft):
        if signal.shape[0] <= n_fft // 2:
            raise UmxError("audio of %d samples is shorter than one STFT window (%d samples)"
                           % (signal.shape[0], n_fft))
        self.signal, self.pad = signal, n_fft // 2
        self.shape = (signal.shape[1], signal.shape[0] + 2 * self.pad)

    def segment(self, lo, hi):
        """padded positions lo..hi-1 → float32 [shape=(C, hi - lo)]"""
        nb_timesteps = self.signal.shape[0]
        first, last = max(0, lo - self.pad), min(nb_timesteps, hi - self.pad)
        if lo - self.pad < 0 or hi - self.pad > nb_timesteps:
            # reflection (without repeating the edge sample), as np.pad's 'reflect'
            index = np.arange(lo, hi) - self.pad
            index = np.abs(index)
            index = np.where(index >= nb_timesteps, 2 * (nb_timesteps - 1) - index, index)
            first, last = int(index.min()), int(index.max()) + 1
            data = self._read(first, last)[index - first]
        else:
            data = self._read(first, last)
        # (n, C) -> (C, n), each channel contiguous: the STFT's strided frames read it fast
        return np.ascontiguousarray(data.T)

    def _read(self, start, stop):
        if hasattr(self.signal, "read"):
            return self.signal.read(start, stop)
        return np.asarray(self.signal[start:stop], np.float32)


def nnabla_stft(x, n_fft=4096, n_hop=1024, center=True):
    """The STFT with NNabla's F.stft (same convention as `stft`), for graphs on the device.

    x [shape=(rows, nb_timesteps)] Variable → (real, imag) [shape=(rows, nb_bins, nb_frames)]
    """
    return F.stft(x, n_fft, n_hop, n_fft, window_type="hanning", center=center,
                  pad_mode="reflect")


def nnabla_istft(real, imag, n_fft=4096, n_hop=1024):
    """The centered ISTFT with NNabla's F.istft (same convention as `istft`), for graphs on the
    device.

    (real, imag) [shape=(rows, nb_bins, nb_frames)] Variables → [shape=(rows, (nb_frames - 1)
    n_hop)]
    """
    return F.istft(real, imag, n_fft, n_hop, n_fft, window_type="hanning", center=True,
                   pad_mode="constant")


def nnabla_spectrogram(x, n_fft=4096, n_hop=1024, mono=False, center=True):
    """Magnitude spectrogram with NNabla's F.stft (same convention as `stft`).

    x [shape=(nb_samples, nb_channels, nb_timesteps)] Variable
    → [shape=(nb_frames, nb_samples, nb_channels or 1, nb_bins)]
    """
    nb_samples, nb_channels, _ = x.shape
    real, imag = nnabla_stft(F.reshape(x, (nb_samples * nb_channels, -1)), n_fft, n_hop,
                             center)
    return magnitude_layout(F.pow_scalar(real ** 2 + imag ** 2, 0.5), nb_samples, mono)


def magnitude_layout(magnitude, nb_samples, mono=False):
    """NNabla STFT magnitudes [shape=(nb_samples * nb_channels, nb_bins, nb_frames)] → the
    models' layout [shape=(nb_frames, nb_samples, nb_channels or 1, nb_bins)]."""
    rows, nb_bins, nb_frames = magnitude.shape
    # -> (nb_samples, nb_channels, nb_bins, nb_frames)
    magnitude = F.reshape(magnitude, (nb_samples, rows // nb_samples, nb_bins, nb_frames))
    if mono:
        magnitude = F.mean(magnitude, axis=1, keepdims=True)
    # -> (nb_frames, nb_samples, nb_channels, nb_bins)
    return F.transpose(magnitude, (3, 0, 1, 2))


def model_layout(spec, mono=False):
    """STFT or magnitude (nb_samples, nb_channels, nb_frames, nb_bins) → magnitude (nb_frames,
    nb_samples, nb_channels, nb_bins), downmixed to one channel when `mono`."""
    mag = np.abs(spec).transpose(2, 0, 1, 3)
    return mag.mean(axis=2, keepdims=True) if mono else mag
