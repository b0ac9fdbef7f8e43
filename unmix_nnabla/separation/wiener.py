"""The multichannel Wiener filter (norbert's EM), streamed over chunks of frames.

Its only track-wide quantities (the mixture's peak, the residual model's gains and the sources'
spatial covariance matrices) are sums over frames, accumulated in one pass and used in the
next, so `wiener_blocks` equals norbert's whole-track EM and no chunk border exists; the ISTFT
is an in-order overlap-add that hands out finished samples chunk by chunk.
"""
import numpy as np

from unmix_nnabla.audio.spectral import OverlapAdd, stft_frames
from unmix_nnabla.base import kernels
from unmix_nnabla.base.console import progress_bar, timed
from unmix_nnabla.base.threads import ahead

# The Wiener filter's regularization, as open-unmix-pytorch uses (norbert's default would be
# the machine epsilon of the STFT's dtype).
WIENER_EPS = 1e-10
WIENER_CHUNK_FRAMES = 256


def _sources_array(nb_frames, nb_bins, nb_channels, nb_sources):
    """An empty complex64 array [shape=(f, bins, C, J)] laid out in memory as (J, C, f, bins):
    the ISTFT's inverse FFTs then read each (source, channel)'s frames contiguously (a
    strided read cost them a fifth more). The kernels read and write it in place."""
    # (J, C, f, bins) -> (f, bins, C, J): a view
    return np.empty((nb_sources, nb_channels, nb_frames, nb_bins), np.complex64).transpose(
        2, 3, 1, 0)


def _initial_estimates(v, x, softmask, eps, scale=1.0):
    """norbert's start, times `scale`: softmask(v, x) or v with the mixture's phase.

    v [shape=(f, bins, {1, nb_channels}, nb_sources)], x [shape=(f, bins, nb_channels)]
    → complex64 [shape=(f, bins, nb_channels, nb_sources)] (compiled: numpy's complex
    temporaries made this a slow, memory-bound step)
    """
    out = _sources_array(*x.shape, v.shape[-1])
    # x may be a transposed view: the kernel reads it in place
    kernels.wiener_initial(np.ascontiguousarray(v, np.float32), x.astype(np.complex64, copy=False),
                           bool(softmask), np.float32(eps), np.float32(scale), out)
    return out


def _covariance_sums(y):
    """This chunk's part of norbert's spatial covariance: (Σ_t y yᴴ [shape=(bins, C, C, J)],
    Σ_t mean_c |y_c|² [shape=(bins, J)]) for y [shape=(f, bins, C, J)], summed in float64."""
    _, nb_bins, nb_channels, nb_sources = y.shape
    num = np.zeros((nb_bins, nb_channels, nb_channels, nb_sources), np.complex128)
    weight = np.zeros((nb_bins, nb_sources), np.float64)
    kernels.wiener_covariance(y.astype(np.complex64, copy=False), num, weight)
    return num, weight


def _wiener_step(y, x, R, eps, magnitudes=None, scale=1.0):
    """One EM filtering step (norbert's), given spatial covariances R [shape=(bins, C, C, J)].

    y [shape=(f, bins, C, J)], x [shape=(f, bins, C)] → new y. The step reads of y only its
    power mean_c |y_c|²: the first step from norbert's start (the mixture's phase on the
    magnitudes) takes the magnitudes instead (y None, magnitudes [shape=(f, bins, C', J)]:
    the start's power is (scale v)², so that the start is never computed). Mono and stereo
    run in a compiled kernel, one time-frequency bin at a time (numpy's temporaries made this
    stage memory-bound); other channel counts in numpy.
    """
    nb_channels, nb_sources = x.shape[-1], (y if y is not None else magnitudes).shape[-1]
    if nb_channels <= 2:
        out = _sources_array(*x.shape, nb_sources)
        unused = np.zeros((1, 1, 1, 1), np.float32)
        kernels.wiener_step(unused.astype(np.complex64) if y is None else
                            y.astype(np.complex64, copy=False),
                            unused if magnitudes is None else
                            np.ascontiguousarray(magnitudes, np.float32), np.float32(scale),
                            magnitudes is not None, x.astype(np.complex64, copy=False),
                            np.ascontiguousarray(R, np.complex64), np.float32(eps), out)
        return out
    if y is None:
        v = np.mean((magnitudes * np.float32(scale)) ** 2, axis=2)  # (f, bins, J)
    else:
        v = np.mean(np.abs(y) ** 2, axis=2)  # (f, bins, J)
    cxx = np.einsum("fbj,bcdj->fbcd", v.astype(np.complex64), R)
    cxx += np.sqrt(eps) * np.eye(nb_channels, dtype=np.complex64)
    rx = np.einsum("fbde,fbe->fbd", np.linalg.pinv(cxx, eps), x)  # Cxx^-1 x
    return np.einsum("fbj,bcdj,fbd->fbcj", v.astype(np.complex64), R, rx)  # v_j R_j Cxx^-1 x


class FirstPassSums:
    """The sums of the filter's first EM pass over the whole track (the sources' spatial
    covariances, `_covariance_sums` of norbert's start), gathered from the magnitude
    estimates as the network hands them out, so that `wiener_blocks` skips that pass.

    norbert's start gives source j the mixture's phase, y_jc = v_jc u_c (u_c = x_c / |x_c|,
    1 where x_c = 0), so for a stereo mixture Σ_t y_j y_jᴴ needs of the mixture only
    w = u_0 conj(u_1) per time-frequency bin (`phase_difference`, one for all sources):

        Σ |y_j0|² = Σ v_j0²,  Σ |y_j1|² = Σ v_j1²,  Σ y_j0 conj(y_j1) = Σ v_j0 v_j1 w

    summed in float64, without norbert's scale (a factor scale² on all of them, known once
    the mixture's peak is: `covariances`). For the default filter only (`applies`).
    """

    def __init__(self, nb_sources, nb_bins):
        self.power = np.zeros((nb_sources, 2, nb_bins), np.float64)
        self.cross = np.zeros((nb_sources, nb_bins), np.complex128)

    @staticmethod
    def applies(niter, softmask, residual, nb_channels):
        """Whether the first pass can be gathered: EM steps from norbert's start on the
        models' own magnitudes (no softmask, no residual model), a stereo mixture."""
        return niter > 0 and not softmask and not residual and nb_channels == 2

    def add(self, source, v, w):
        """v [shape=(f, C', bins)] (C' = 1 for a mono model: both channels), source's
        estimates of f frames; w [shape=(f, bins)] those frames' `phase_difference`."""
        kernels.first_pass_sums(v, w, self.power[source], self.cross[source])

    def merge(self, other):
        self.power += other.power
        self.cross += other.cross
        return self

    def covariances(self, scale, eps):
        """→ R [shape=(bins, 2, 2, J)] complex64, as the pass over the track would give it
        for estimates times `scale`: Σ y yᴴ / (eps + Σ_t mean_c |y_c|²)."""
        squared = scale * scale
        num = np.empty(self.power.shape[-1:] + (2, 2) + self.power.shape[:1], np.complex128)
        # (J, bins) -> (bins, J)
        num[:, 0, 0] = self.power[:, 0].T
        num[:, 1, 1] = self.power[:, 1].T
        num[:, 0, 1] = self.cross.T
        num[:, 1, 0] = np.conj(self.cross.T)
        weight = eps + squared * self.power.mean(axis=1).T
        return (squared * num / weight[:, None, None, :]).astype(np.complex64)


def phase_difference(x):
    """x [shape=(2, f, bins)] complex (a stereo STFT) → u_0 conj(u_1) [shape=(f, bins)]
    complex64, u_c = x_c / |x_c| (1 where x_c = 0): what `FirstPassSums` needs of the
    mixture."""
    out = np.empty(x.shape[1:], np.complex64)
    kernels.unit_phase_difference(x.astype(np.complex64, copy=False), out)
    return out


_RESIDUAL_EPS = np.finfo(np.float32).eps  # norbert's residual model's floor


def _peak_and_residual_gains(starts, mixture, models_of, residual, alpha, peak, bar):
    """One pass over the track's chunks: the mixture STFT's largest magnitude (unless `peak`
    is known) and, with `residual`, the residual model's per-bin gains [shape=(bins, C)] as
    norbert's residual_model computes them (else None)."""
    find_peak, peak, num, den = peak is None, peak or 0.0, 0.0, 0.0
    for a in starts:
        x = mixture(a)
        if find_peak:
            peak = max(peak, float(np.abs(x).max()))
        if residual:
            vx = np.maximum(_RESIDUAL_EPS, np.abs(x) ** alpha)
            total = models_of(a).sum(axis=-1)
            num = num + np.sum(vx * total, axis=0)
            den = den + np.sum(total ** 2, axis=0)
        bar.update()
    return peak, ((num / (_RESIDUAL_EPS + den)).astype(np.float32) if residual else None)


def _spatial_covariances(starts, estimates, covariances, eps, timings, bar):
    """One EM pass over the track's chunks: the sources' spatial covariances R [shape=(bins,
    C, C, J)] of the estimates that `covariances` (the passes so far) give."""
    num, weight = 0.0, eps
    for a in starts:
        y = estimates(a, covariances)
        with timed(timings, "wiener"):
            n, w = _covariance_sums(y)
        num, weight = num + n, weight + w
        bar.update()
    return (num / weight[:, None, None, :]).astype(np.complex64)


def _filtered_blocks(starts, estimates, ola, scale, timings, bar):
    """The last pass: each chunk's filtered estimates (`estimates(a)`, times `scale`) through
    the ISTFT (`ola`), as blocks of samples; the filter of the next chunk runs in a thread
    while this one goes through the ISTFT and to its consumer (which writes it)."""
    for a, y in ahead((a, estimates(a)) for a in starts):
        # (f, bins, C, J) -> (J, C, f, bins)
        with timed(timings, "istft"):
            block = ola.add(y.transpose(3, 2, 0, 1), a)
            if scale != 1.0:
                block *= np.float32(1.0 / scale)
        bar.update()
        yield block
    bar.close()


def wiener_blocks(padded, nb_timesteps, v, n_fft, n_hop, niter=1, softmask=False,
                  alpha=1.0, residual=False, eps=WIENER_EPS, chunk=WIENER_CHUNK_FRAMES,
                  progress=True, timings=None, v_power=1.0, mixture_peak=None,
                  first_pass=None):
    """Source waveforms from magnitude estimates, equal to norbert's whole-track

        norbert.wiener(norbert.residual_model(v, x, alpha) if residual else v, x, niter,
                       use_softmask=softmask, eps=eps)

    followed by an ISTFT, computed in chunks of frames and yielded as consecutive blocks of
    samples [shape=(J (+1), nb_channels, n)].

    padded [shape=(nb_channels, nb_timesteps + n_fft)] (an array or a `spectral.PaddedSignal`),
    v [shape=(nb_frames, bins, C', J)]: an array or an `EstimateStore`, raised to `v_power` as
    it is read (norbert's softmask takes v ** alpha). mixture_peak: the mixture STFT's largest
    magnitude, when known (it saves a pass over the track); first_pass: the `FirstPassSums`
    of v, when gathered (it saves another: then `FirstPassSums.applies` must hold).
    """
    nb_frames = v.shape[0]
    nb_channels = padded.shape[0]

    def models_of(a):
        # (f, bins, C', J) for the chunk at frame a, from an array or an EstimateStore
        vj = v.read(a, a + chunk) if hasattr(v, "read") else v[a:a + chunk]
        return vj ** v_power if v_power != 1.0 else vj

    starts = list(range(0, nb_frames, chunk))

    def mixture(a):
        # (C, f, bins) -> (f, bins, C)
        with timed(timings, "stft"):
            return stft_frames(padded, a, min(a + chunk, nb_frames), n_fft, n_hop).transpose(1, 2, 0)

    if first_pass is not None and (mixture_peak is None or v_power != 1.0 or not
                                   FirstPassSums.applies(niter, softmask, residual, nb_channels)):
        raise ValueError("the first pass's sums serve the default filter of a stereo mixture "
                         "whose peak is known")
    passes = (1 if (residual or (niter and mixture_peak is None)) else 0) + niter + 1 - \
        (first_pass is not None)
    bar = progress_bar(total=passes * len(starts), desc="wiener", unit="chunk", enabled=progress,
               leave=False)
    gain, peak = None, mixture_peak
    if residual or (niter and peak is None):
        peak, gain = _peak_and_residual_gains(starts, mixture, models_of, residual, alpha, peak,
                                              bar)

    def source_models(a, x):
        vj = models_of(a)
        if residual:
            vr = np.maximum(0, np.maximum(_RESIDUAL_EPS, np.abs(x) ** alpha) - vj.sum(axis=-1))
            vj = np.concatenate([vj * gain[..., None], vr[..., None]], axis=-1)
        return vj

    # with EM steps, norbert works on x / max_abs and y / max_abs (max_abs = max(1, peak / 10)),
    # and scales the result back
    scale = 1.0 / max(1.0, peak / 10.0) if niter else 1.0

    def estimates(a, covariances):
        """the chunk's source estimates, times `scale`"""
        x = mixture(a)
        with timed(timings, "wiener"):
            vj = source_models(a, x)
            if not covariances:
                return _initial_estimates(vj, x, softmask, eps, scale)
            y = None if not softmask else _initial_estimates(vj, x, softmask, eps, scale)
            x = x * np.float32(scale)
            for R in covariances:  # the first from the magnitudes, unless a softmask started
                y = _wiener_step(y, x, R, eps, magnitudes=vj if y is None else None,
                                 scale=scale)
        return y

    covariances = [] if first_pass is None else [first_pass.covariances(scale, eps)]
    for _ in range(niter - len(covariances)):
        covariances.append(_spatial_covariances(starts, estimates, covariances, eps, timings,
                                                bar))

    nb_sources = v.shape[-1] + (1 if residual else 0)
    ola = OverlapAdd((nb_sources, nb_channels), nb_timesteps, n_fft, n_hop)
    yield from _filtered_blocks(starts, lambda a: estimates(a, covariances), ola, scale,
                                timings, bar)
