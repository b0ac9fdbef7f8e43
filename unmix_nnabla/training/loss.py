"""Training losses: UMX's MSE, and X-UMX's multi-domain loss with the combination scheme, with
X-UMX's time-domain pieces (the mixture's phase, the estimates' ISTFT).

X-UMX (Sawata et al., ICASSP 2021) scores every combination of 1, 2 or 3 of its four targets
(14 combinations c), in two domains:

- frequency: L_f = mean over c of MSE(Σ_{j∈c} ŝ_j, Σ_{j∈c} s_j) on magnitudes. Each of the
  14 terms is a square of a sum of the errors d_j = ŝ_j - s_j; summed over the combinations,
  a target's own square appears 7 times and each pair's product 3 times, so that
  L_f = (4 Σ_j ‖d_j‖² + 3 ‖Σ_j d_j‖²) / (14 N), N the size of one target's spectrogram
  (exact; it saves materializing the 14 sums);
- time: L_t = 1 + mean over (c, sample, channel) of -α cos(ŝ_c, s_c) - (1 - α) cos(n̂_c, n_c),
  with s_c the combination's signal, n_c = mixture - s_c its complement, α = ‖s_c‖² /
  (‖s_c‖² + ‖n_c‖²), on the time signals of the ISTFT of the estimates with the mixture's
  phase, `TRIM` samples left out at both ends (where the ISTFT of an excerpt lacks overlap);
- loss = mcoef L_t + L_f.

Each loss has one numpy implementation (`mse`, `frequency_loss_value`, `time_loss_value`,
with their gradients), which the CPU functions of the training graph and the validation both
call, and one in NNabla's functions (`*_graph`, what GPU contexts run), tested equal.
"""
import itertools
from concurrent.futures import ThreadPoolExecutor

import nnabla as nn
import nnabla.functions as F
import numpy as np

from unmix_nnabla.audio.spectral import istft, istft_adjoint, nnabla_istft, stft
from unmix_nnabla.base.threads import compute_threads
from unmix_nnabla.networks.ops import NumpyFunction, dense, multiply, numpy_kernels, set_grad

# the 14 combinations of 1, 2 or 3 of the 4 targets, as rows of 0/1 weights
COMBINATIONS = np.array([[1.0 if j in c else 0.0 for j in range(4)]
                         for k in (1, 2, 3) for c in itertools.combinations(range(4), k)],
                        np.float32)
TRIM = 200  # samples of each time signal left out at both ends
EPS = 1e-10


# --------------------------------------------------------------------------------------
# the numpy implementations
# --------------------------------------------------------------------------------------

def mse(estimate, target):
    """UMX's loss: mean((estimate - target)²) of float32 arrays of one shape → (value, the
    error estimate - target)."""
    if estimate.shape != target.shape:  # as F.squared_error: no broadcasting
        raise ValueError("MSE of an estimate %s and a target %s" % (estimate.shape, target.shape))
    error = estimate - target
    flat = error.ravel()
    return float(np.dot(flat, flat)) / flat.size, error


def frequency_loss_value(errors):
    """X-UMX's L_f of the 4 targets' errors d_j [one shape] → (4 Σ‖d_j‖² + 3 ‖Σ d_j‖²) / (14 N)."""
    squares = sum(_sum_of_squares(e) for e in errors)
    return (4 * squares + 3 * _sum_of_squares(sum(errors))) / (14.0 * errors[0].size)


def _sum_of_squares(x, chunk=1 << 20):
    """Σ x² of a float32 array: BLAS's float32 dot per chunk of a million values, the chunks
    summed in float64 (as precise as a float64 sum here, without a float64 copy)."""
    flat = x.ravel()
    return sum(float(np.dot(flat[k:k + chunk], flat[k:k + chunk]))
               for k in range(0, flat.size, chunk))


def frequency_loss_grads(errors, scale):
    """d L_f / d ŝ_j = (8 d_j + 6 Σ d) / (14 N), times `scale`."""
    total = sum(errors)
    factor = scale / (14.0 * errors[0].size)
    return [(8 * error + 6 * total) * factor for error in errors]


def time_loss_value(estimates, targets, mixture, grad_scale=None):
    """X-UMX's L_t. estimates, targets: float32 [shape=(4, rows, L)] (time signals, rows =
    samples x channels), mixture [shape=(rows, L)], already trimmed → (value, and with
    grad_scale, d value / d estimates times grad_scale [shape=(4, rows, L)], else None).

    Every signal of the 14 combinations is a sum of the 9 signals y = (d_1..d_4, s_1..s_4, r)
    per row, with d_j = ŝ_j - s_j the errors and r = m - Σ s_j: so every inner product the
    loss takes is a^T G b for the rows' 9 x 9 Gram matrices G of y and fixed coefficient
    vectors a, b. One pass over the signals gives G (BLAS), the loss is then arithmetic on 9 x 9
    matrices in float64, and its gradient one more pass: d value / d d_j = Σ_k (H + H^T)_jk y_k.
    Errors, not estimates, span the basis, so that no product cancels when the estimates
    approach the targets.
    """
    rows, length = mixture.shape
    basis = np.empty((9, length), np.float32)  # one row's y at a time: stays in cache
    gram = np.empty((rows, 9, 9))
    for row in range(rows):
        gram[row] = _basis(estimates, targets, mixture, row, basis) @ basis.T
    # coefficient rows (14, 9) of ŝ_c, s_c, n̂_c = m - ŝ_c, n_c = m - s_c in the basis y
    w, none, one = COMBINATIONS.astype(np.float64), np.zeros((14, 1)), np.ones((14, 1))
    s_hat, s = np.hstack([w, w, none]), np.hstack([0 * w, w, none])
    n_hat, n = np.hstack([-w, 1 - w, one]), np.hstack([0 * w, 1 - w, one])

    def products(a, b):  # a^T G b per (combination, row) → (14, rows)
        return np.einsum("ci,rij,cj->cr", a, gram, b)

    power_s, power_n = products(s, s), products(n, n)
    alpha = power_s / (power_s + power_n + EPS)
    count = rows * len(COMBINATIONS)
    (cos_s, g_dot_s, g_power_s) = _cosine_of_products(products(s_hat, s), products(s_hat, s_hat),
                                                      power_s)
    (cos_n, g_dot_n, g_power_n) = _cosine_of_products(products(n_hat, n), products(n_hat, n_hat),
                                                      power_n)
    value = 1.0 + float(np.sum(-alpha * cos_s - (1 - alpha) * cos_n)) / count
    if grad_scale is None:
        return value, None
    # H = Σ over the products of (d value / d product) a b^T, per row; α depends on the targets
    # only (its products have no error component, so they add nothing to the error rows)
    scale_s, scale_n = -alpha * grad_scale / count, -(1 - alpha) * grad_scale / count
    h = (np.einsum("cr,ci,cj->rij", scale_s * g_dot_s, s_hat, s)
         + np.einsum("cr,ci,cj->rij", scale_s * g_power_s, s_hat, s_hat)
         + np.einsum("cr,ci,cj->rij", scale_n * g_dot_n, n_hat, n)
         + np.einsum("cr,ci,cj->rij", scale_n * g_power_n, n_hat, n_hat))
    coefficients = (h + h.transpose(0, 2, 1))[:, :4, :].astype(np.float32)  # (rows, 4, 9)
    grad = np.empty(estimates.shape, np.float32)
    for row in range(rows):
        np.matmul(coefficients[row], _basis(estimates, targets, mixture, row, basis),
                  out=grad[:, row])
    return value, grad


def _basis(estimates, targets, mixture, row, out):
    """Row `row`'s y = (ŝ_j - s_j, s_j, m - Σ s_j) [shape=(9, L)], in `out`."""
    np.subtract(estimates[:, row], targets[:, row], out=out[:4])
    out[4:8] = targets[:, row]
    np.subtract(mixture[row], out[4:8].sum(axis=0), out=out[8])
    return out


def _cosine_of_products(dot, power_x, power_y):
    """Sony's regularized cosine <x, y> / (sqrt(|x|² + ε) sqrt(|y|² + ε) + ε) from the inner
    products → (cosine, d cosine / d <x, y>, d cosine / d |x|²)."""
    a, b = np.sqrt(power_x + EPS), np.sqrt(power_y + EPS)
    denominator = a * b + EPS
    return dot / denominator, 1 / denominator, -dot * b / (2 * a * denominator ** 2)


def mixture_phasor(spec):
    """The mixture's phase as a unit phasor: spec (complex) → spec / |spec|, and 1 where the
    mixture is silent (as the Wiener filter's start)."""
    magnitude = np.abs(spec)
    return np.where(magnitude > 0, spec / np.maximum(magnitude, 1e-30), 1.0)


# --------------------------------------------------------------------------------------
# the losses in the training graph: the numpy implementations as functions on CPU contexts,
# NNabla's own functions on GPU contexts
# --------------------------------------------------------------------------------------

class _ScalarLoss(NumpyFunction):
    """A loss of a few Variables → a scalar."""

    def output_shape(self, inputs):
        return ()


class _MeanSquaredError(_ScalarLoss):
    """(estimate, target) → `mse`; gradients ±2 (estimate - target) / N."""

    def output_shape(self, inputs):
        if tuple(inputs[0].shape) != tuple(inputs[1].shape):
            raise ValueError("MSE of an estimate %s and a target %s" % (inputs[0].shape,
                                                                       inputs[1].shape))
        return ()

    def _mse(self, inputs):
        return mse(inputs[0].data.get_data("r"), inputs[1].data.get_data("r"))

    def forward_impl(self, inputs, outputs):
        outputs[0].data.get_data("w")[...] = self._mse(inputs)[0]

    def backward_impl(self, inputs, outputs, propagate_down, accum):
        _, error = self._mse(inputs)
        error *= 2.0 * float(outputs[0].grad.get_data("r")) / error.size
        if propagate_down[0]:
            set_grad(inputs[0], error, accum[0])
        if propagate_down[1]:
            set_grad(inputs[1], -error, accum[1])


def umx_loss(estimate, target):
    """UMX: the MSE of one target's magnitude estimate."""
    if numpy_kernels():
        return _MeanSquaredError()(estimate, target)
    return umx_loss_graph(estimate, target)


def umx_loss_graph(estimate, target):
    """`umx_loss` in NNabla's own functions (GPU contexts)."""
    return F.mean(F.squared_error(estimate, target))


class _FrequencyLoss(_ScalarLoss):
    """(4 estimates, targets [shape=(4, ...)]) → `frequency_loss_value`."""

    def _errors(self, inputs):
        targets = inputs[-1].data.get_data("r")
        return [inputs[j].data.get_data("r") - targets[j].reshape(inputs[j].shape)
                for j in range(len(inputs) - 1)]

    def forward_impl(self, inputs, outputs):
        outputs[0].data.get_data("w")[...] = frequency_loss_value(self._errors(inputs))

    def backward_impl(self, inputs, outputs, propagate_down, accum):
        grads = frequency_loss_grads(self._errors(inputs), float(outputs[0].grad.get_data("r")))
        for j, grad in enumerate(grads):
            if propagate_down[j]:
                set_grad(inputs[j], grad, accum[j])


def frequency_loss(estimates, targets):
    """X-UMX's L_f. estimates: 4 Variables, targets: a Variable [shape=(4, ...)] (each
    target's magnitude spectrogram, same shapes)."""
    if numpy_kernels():
        return _FrequencyLoss()(*estimates, targets)
    return frequency_loss_graph(estimates, targets)


def frequency_loss_graph(estimates, targets):
    """`frequency_loss` in NNabla's own functions (GPU contexts)."""
    errors = [estimate - F.reshape(target, estimate.shape)
              for estimate, target in zip(estimates, F.split(targets, axis=0))]
    squares = F.add_n(*[F.sum(F.pow_scalar(e, 2.0)) for e in errors])
    size = float(np.prod(errors[0].shape))
    return (4.0 * squares + 3.0 * F.sum(F.pow_scalar(F.add_n(*errors), 2.0))) / (14.0 * size)


class _TimeLoss(_ScalarLoss):
    """(estimates, targets [shape=(4, rows, L)], mixture [shape=(1, rows, L)]) →
    `time_loss_value`."""

    def _value(self, inputs, grad_scale=None):
        estimates, targets, mixture = (inputs[k].data.get_data("r") for k in range(3))
        return time_loss_value(estimates, targets, mixture[0], grad_scale)

    def forward_impl(self, inputs, outputs):
        outputs[0].data.get_data("w")[...] = self._value(inputs)[0]

    def backward_impl(self, inputs, outputs, propagate_down, accum):
        if propagate_down[0]:
            grad = self._value(inputs, float(outputs[0].grad.get_data("r")))[1]
            set_grad(inputs[0], grad, accum[0])


def time_loss(estimates, targets, mixture):
    """X-UMX's L_t. estimates, targets: Variables [shape=(4, rows, L)] (time signals, rows =
    samples x channels), mixture: Variable [shape=(1, rows, L)], already trimmed."""
    if numpy_kernels():
        return _TimeLoss()(estimates, targets, mixture)
    return time_loss_graph(estimates, targets, mixture)


def time_loss_graph(estimates, targets, mixture):
    """`time_loss` in NNabla's own functions (GPU contexts)."""
    estimate = _combine(estimates)  # (14, rows, L)
    target = _combine(targets)
    mix = F.broadcast(mixture, estimate.shape)
    noise, noise_estimate = mix - target, mix - estimate
    target_power, noise_power = _power(target), _power(noise)
    alpha = target_power / (target_power + noise_power + EPS)
    return 1.0 + F.mean(-alpha * _cosine(estimate, target, target_power)
                        - (1.0 - alpha) * _cosine(noise_estimate, noise, noise_power))


def _combine(signals):
    """Variable [shape=(4, rows, L)] → the 14 combinations' sums [shape=(14, rows, L)]."""
    nb_targets, rows, length = signals.shape
    weights = nn.Variable.from_numpy_array(COMBINATIONS)
    # (14, 4) @ (4, rows * L)
    combined = dense(weights, F.reshape(signals, (nb_targets, rows * length)))
    return F.reshape(combined, (len(COMBINATIONS), rows, length))


def _power(x):
    return F.sum(F.pow_scalar(x, 2.0), axis=-1, keepdims=True)


def _cosine(estimate, reference, reference_power):
    """<estimate, reference> / (|estimate| |reference|) per row, with Sony's regularization."""
    dot = F.sum(estimate * reference, axis=-1, keepdims=True)
    norms = F.pow_scalar(_power(estimate) + EPS, 0.5) * F.pow_scalar(reference_power + EPS, 0.5)
    return dot / (norms + EPS)


# --------------------------------------------------------------------------------------
# X-UMX's time-domain signals
# --------------------------------------------------------------------------------------

def estimate_signals(estimates, phase_real, phase_imag, cfg, length):
    """The training graph's time signals of the estimates: each magnitude estimate with the
    mixture's phase through the ISTFT, `TRIM` samples left out at both ends.

    estimates: Variables [shape=(nb_frames, batch, nb_channels, bins)]; phase_real, phase_imag:
    the mixture's phasor [shape=(batch * 2, bins, nb_frames)] → [shape=(J, batch * 2, length)]
    (a mono estimate serves both channels).
    """
    if numpy_kernels():
        return _EstimateSignals(n_fft=cfg.n_fft, n_hop=cfg.n_hop, length=length)(
            *estimates, phase_real, phase_imag)
    return estimate_signals_graph(estimates, phase_real, phase_imag, cfg, length)


def estimate_signals_graph(estimates, phase_real, phase_imag, cfg, length):
    """`estimate_signals` in NNabla's own functions (GPU contexts)."""
    signals = []
    for estimate in estimates:
        nb_frames, batch = estimate.shape[:2]
        # (T, B, C, bins) -> (B, C, bins, T) -> (B * 2, bins, T)
        estimate = F.transpose(estimate, (1, 2, 3, 0))
        if cfg.nb_channels == 1:
            estimate = F.broadcast(estimate, (batch, 2) + estimate.shape[2:])
        estimate = F.reshape(estimate, phase_real.shape)
        signal = nnabla_istft(multiply(estimate, phase_real), multiply(estimate, phase_imag),
                              cfg.n_fft, cfg.n_hop)
        signals.append(signal[:, TRIM:TRIM + length])
    return F.stack(*signals, axis=0)


class _EstimateSignals(NumpyFunction):
    """`estimate_signals` on CPU contexts: (J estimates, phase_real, phase_imag) → [shape=(J,
    rows, length)], one (row, estimate) at a time, so that a spectrum and its frames never
    exceed one row's few MB (a whole batch's frames, half a GB for X-UMX's, cost more in
    memory traffic than in FFTs); the batch's samples in threads (FFTs and numpy's loops run
    without the GIL); backward: `spectral.istft_adjoint`, then the product rule."""

    def output_shape(self, inputs):
        rows, bins, frames = inputs[-2].shape
        for estimate in inputs[:-2]:
            if (estimate.shape[0], estimate.shape[1] * 2, estimate.shape[3]) != \
                    (frames, rows, bins) or estimate.shape[2] not in (1, 2):
                raise ValueError("estimate signals: an estimate %s for a phasor %s"
                                 % (estimate.shape, inputs[-2].shape))
        return (len(inputs) - 2, rows, self.length)

    def _for_each_row(self, inputs, work):
        """work(row, its phasor [shape=(frames, bins)], [(estimate's array, batch, channel)])
        for every row; the two rows of one sample in one thread (a mono estimate's gradient
        sums both)."""
        real, imag = (inputs[k].data.get_data("r") for k in (-2, -1))
        estimates = [inputs[j].data.get_data("r") for j in range(len(inputs) - 2)]

        def sample(batch):
            for row in (2 * batch, 2 * batch + 1):
                phasor = real[row].T + 1j * imag[row].T
                work(row, phasor, [(e, batch, row % e.shape[2]) for e in estimates])

        with ThreadPoolExecutor(compute_threads()) as pool:
            list(pool.map(sample, range(real.shape[0] // 2)))

    def forward_impl(self, inputs, outputs):
        out = outputs[0].data.get_data("w")
        nb_timesteps = (inputs[-2].shape[-1] - 1) * self.n_hop

        def work(row, phasor, estimates):
            for j, (estimate, batch, channel) in enumerate(estimates):
                signal = istft(estimate[:, batch, channel] * phasor, nb_timesteps,
                                     self.n_fft, self.n_hop)
                out[j, row] = signal[TRIM:TRIM + self.length]

        self._for_each_row(inputs, work)

    def backward_impl(self, inputs, outputs, propagate_down, accum):
        phasor_grads = propagate_down[-2] or propagate_down[-1]
        grads = [np.zeros(v.shape, np.float32) if k < len(inputs) - 2 or phasor_grads else None
                 for k, v in enumerate(inputs)]
        out_grad = outputs[0].grad.get_data("r")
        frames = inputs[-2].shape[-1]

        def work(row, phasor, estimates):
            padded = np.zeros((frames - 1) * self.n_hop, np.float32)
            for j, (estimate, batch, channel) in enumerate(estimates):
                padded[TRIM:TRIM + self.length] = out_grad[j, row]
                spectrum = istft_adjoint(padded, frames, self.n_fft, self.n_hop)  # (T, bins)
                # y = istft(e p): d e = Re(g conj(p)); d Re(p) = e Re(g), d Im(p) = e Im(g)
                grads[j][:, batch, channel] += (spectrum * phasor.conj()).real
                if phasor_grads:
                    magnitude = estimate[:, batch, channel]
                    grads[-2][row] += (magnitude * spectrum.real).T
                    grads[-1][row] += (magnitude * spectrum.imag).T

        self._for_each_row(inputs, work)
        for k, grad in enumerate(grads):
            if propagate_down[k]:
                set_grad(inputs[k], grad, accum[k])


def xumx_loss(estimates, inputs, cfg, mcoef):
    """The training graph's multi-domain loss mcoef L_t + L_f of X-UMX's estimates (`inputs`:
    the graph's Variables mixture's phasor, targets' magnitudes and time signals, mixture's
    time signal)."""
    length = inputs["target_time"].shape[-1]
    signals = estimate_signals(estimates, inputs["phase_real"], inputs["phase_imag"], cfg, length)
    return mcoef * time_loss(signals, inputs["target_time"], inputs["mixture_time"]) + \
        frequency_loss(estimates, inputs["targets"])


def reference_magnitudes(sources, cfg):
    """The targets' magnitudes of a whole track (validation): sources [shape=(J, 2, n)] →
    [shape=(frames, bins, C, J)], downmixed for mono models."""
    reference = np.abs(stft(sources, cfg.n_fft, cfg.n_hop)).transpose(2, 3, 1, 0)
    return reference.mean(axis=2, keepdims=True) if cfg.nb_channels == 1 else reference


def xumx_validation_loss(estimates, reference, mixture, sources, cfg, mcoef, valid_dur):
    """X-UMX's loss on a whole track (validation): estimates and the targets' magnitudes
    [shape=(frames, bins, C, J)], the estimates with the mixture's [shape=(n, 2)] phase
    against sources [shape=(J, 2, n)]; the time term is the mean over segments of `valid_dur`
    seconds (each trimmed by TRIM at both ends; a shorter track: one)."""
    spec = stft(mixture.T, cfg.n_fft, cfg.n_hop)  # (2, frames, bins)
    errors = [estimates[..., j] - reference[..., j] for j in range(estimates.shape[-1])]
    # (frames, bins, C, J) -> (J, C, frames, bins), with the mixture's phase
    signals = istft(estimates.transpose(3, 2, 0, 1) * mixture_phasor(spec)[None],
                          mixture.shape[0], cfg.n_fft, cfg.n_hop).astype(np.float32)
    n = mixture.shape[0]
    span = min(n, int(round(valid_dur * cfg.sample_rate)))
    mix = np.ascontiguousarray(mixture.T, np.float32)
    terms = [time_loss_value(np.ascontiguousarray(signals[..., a + TRIM:a + span - TRIM]),
                             np.ascontiguousarray(sources[..., a + TRIM:a + span - TRIM]),
                             np.ascontiguousarray(mix[:, a + TRIM:a + span - TRIM]))[0]
             for a in range(0, n - span + 1, span)]
    return mcoef * float(np.mean(terms)) + frequency_loss_value(errors)
