"""Training losses: UMX's MSE, and X-UMX's multi-domain loss with the combination scheme.

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
"""
import itertools

import numpy as np
import nnabla as nn
import nnabla.functions as F
from nnabla.function import PythonFunction

from ops import dense, on_cpu, set_grad

# the 14 combinations of 1, 2 or 3 of the 4 targets, as rows of 0/1 weights
COMBINATIONS = np.array([[1.0 if j in c else 0.0 for j in range(4)]
                         for k in (1, 2, 3) for c in itertools.combinations(range(4), k)],
                        np.float32)
TRIM = 200  # samples of each time signal left out at both ends
EPS = 1e-10


def umx_loss(estimate, target):
    """UMX: the MSE of one target's magnitude estimate."""
    if on_cpu():
        return _MeanSquaredError(nn.get_current_context())(estimate, target)
    return umx_loss_graph(estimate, target)


def umx_loss_graph(estimate, target):
    """`umx_loss` in NNabla's own functions (GPU contexts)."""
    return F.mean(F.squared_error(estimate, target))


def frequency_loss(estimates, targets):
    """X-UMX's L_f. estimates: 4 Variables, targets: a Variable [shape=(4, ...)] (each
    target's magnitude spectrogram, same shapes)."""
    if on_cpu():
        return _FrequencyLoss(nn.get_current_context())(*estimates, targets)
    return frequency_loss_graph(estimates, targets)


def frequency_loss_graph(estimates, targets):
    """`frequency_loss` in NNabla's own functions (GPU contexts)."""
    errors = [estimate - F.reshape(target, estimate.shape)
              for estimate, target in zip(estimates, F.split(targets, axis=0))]
    squares = F.add_n(*[F.sum(F.pow_scalar(e, 2.0)) for e in errors])
    size = float(np.prod(errors[0].shape))
    return (4.0 * squares + 3.0 * F.sum(F.pow_scalar(F.add_n(*errors), 2.0))) / (14.0 * size)


def time_loss(estimates, targets, mixture):
    """X-UMX's L_t. estimates, targets: Variables [shape=(4, rows, L)] (time signals, rows =
    samples x channels), mixture: Variable [shape=(1, rows, L)], already trimmed."""
    if on_cpu():
        return _TimeLoss(nn.get_current_context())(estimates, targets, mixture)
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


# On CPU contexts the two losses run as single functions in numpy: NNabla's elementwise
# functions on the 14 combinations' signals (14 x batch x 2 x 6 s) took most of a step.

class _ScalarLoss(PythonFunction):
    """A loss of a few Variables → a scalar; the gradient of the first `nb_grad` inputs."""

    def min_outputs(self):
        return 1

    def setup_impl(self, inputs, outputs):
        outputs[0].reset_shape((), True)

    def grad_depends_output_data(self, i, o):
        return False

    def grad_depends_input_data(self, i, j):
        return True


class _MeanSquaredError(_ScalarLoss):
    """(estimate, target) → mean((estimate - target)²); gradients ±2 (estimate - target) / N."""

    @property
    def name(self):
        return "MeanSquaredError"

    def setup_impl(self, inputs, outputs):
        # as F.squared_error: no broadcasting (a target of another shape is a bug, not data)
        if tuple(inputs[0].shape) != tuple(inputs[1].shape):
            raise ValueError("MSE of an estimate %s and a target %s" % (inputs[0].shape,
                                                                       inputs[1].shape))
        super().setup_impl(inputs, outputs)

    def _error(self, inputs):
        return inputs[0].data.get_data("r") - inputs[1].data.get_data("r")

    def forward_impl(self, inputs, outputs):
        error = self._error(inputs).ravel()
        outputs[0].data.get_data("w")[...] = np.dot(error, error) / error.size

    def backward_impl(self, inputs, outputs, propagate_down, accum):
        error = self._error(inputs)
        error *= 2.0 * float(outputs[0].grad.get_data("r")) / error.size
        if propagate_down[0]:
            set_grad(inputs[0], error, accum[0])
        if propagate_down[1]:
            set_grad(inputs[1], -error, accum[1])


class _FrequencyLoss(_ScalarLoss):
    """(4 estimates, targets [shape=(4, ...)]) → L_f = (4 Σ‖d_j‖² + 3 ‖Σ d_j‖²) / (14 N);
    its gradient for estimate j: (8 d_j + 6 Σ d) / (14 N)."""

    @property
    def name(self):
        return "FrequencyLoss"

    def _errors(self, inputs):
        targets = inputs[-1].data.get_data("r")
        return [inputs[j].data.get_data("r") - targets[j].reshape(inputs[j].shape)
                for j in range(len(inputs) - 1)]

    def forward_impl(self, inputs, outputs):
        errors = self._errors(inputs)
        total = sum(errors)
        squares = sum(np.dot(e.ravel().astype(np.float64), e.ravel()) for e in errors)
        value = (4 * squares + 3 * np.dot(total.ravel().astype(np.float64), total.ravel())) / \
            (14.0 * errors[0].size)
        outputs[0].data.get_data("w")[...] = value

    def backward_impl(self, inputs, outputs, propagate_down, accum):
        errors = self._errors(inputs)
        total = sum(errors)
        scale = float(outputs[0].grad.get_data("r")) / (14.0 * errors[0].size)
        for j, error in enumerate(errors):
            if propagate_down[j]:
                set_grad(inputs[j], (8 * error + 6 * total) * scale, accum[j])


class _TimeLoss(_ScalarLoss):
    """(estimates, targets [shape=(4, rows, L)], mixture [shape=(1, rows, L)]) → L_t, one
    combination at a time (memory: one combination's signals)."""

    @property
    def name(self):
        return "TimeLoss"

    def _terms(self, inputs, grad_scale=None):
        """→ the loss; with grad_scale, also d loss / d estimates [shape=(4, rows, L)]."""
        estimates, targets, mixture = (inputs[k].data.get_data("r") for k in range(3))
        mixture = mixture[0]
        rows = mixture.shape[0]
        total = 0.0
        grad = np.zeros(estimates.shape, np.float32) if grad_scale is not None else None
        for weights in COMBINATIONS:
            members = np.flatnonzero(weights)
            s_hat, s = estimates[members].sum(axis=0), targets[members].sum(axis=0)
            n_hat, n = mixture - s_hat, mixture - s
            terms, g_s = _cosine_terms(s_hat, s, grad_scale is not None)
            noise_terms, g_n = _cosine_terms(n_hat, n, grad_scale is not None)
            power_s = _row_power(s)
            alpha = power_s / (power_s + _row_power(n) + EPS)  # (rows,)
            total += np.sum(-alpha * terms - (1 - alpha) * noise_terms)
            if grad is not None:
                # d/dŝ of -α cos(ŝ, s) - (1 - α) cos(m - ŝ, n); shared by the members
                g = g_n * _column((1 - alpha) * grad_scale)
                g -= g_s * _column(alpha * grad_scale)
                for j in members:
                    grad[j] += g
        count = len(COMBINATIONS) * rows
        return 1.0 + total / count, grad

    def forward_impl(self, inputs, outputs):
        outputs[0].data.get_data("w")[...] = self._terms(inputs)[0]

    def backward_impl(self, inputs, outputs, propagate_down, accum):
        if propagate_down[0]:
            rows = inputs[2].shape[1]
            scale = float(outputs[0].grad.get_data("r")) / (len(COMBINATIONS) * rows)
            set_grad(inputs[0], self._terms(inputs, scale)[1], accum[0])


def _row_dot(x, y):
    """Per-row inner products of float32 arrays [shape=(rows, L)] → float64 [shape=(rows,)], on
    BLAS (float32 sums: the loss of a 16 x 6 s batch moved by 1e-7 relative; a float64 einsum
    takes 4 times as long)."""
    return np.matmul(x[:, None, :], y[:, :, None])[:, 0, 0].astype(np.float64)


def _row_power(x):
    return _row_dot(x, x)


def _cosine_terms(estimate, reference, with_grad):
    """Sony's regularized cosine per row of [shape=(rows, L)] arrays, and (with_grad) its
    gradient with respect to the estimate."""
    dot = _row_dot(estimate, reference)
    a = np.sqrt(_row_power(estimate) + EPS)
    b = np.sqrt(_row_power(reference) + EPS)
    denominator = a * b + EPS
    cosine = dot / denominator
    if not with_grad:
        return cosine, None
    # d/dx [<x, r> / (sqrt(|x|² + ε) b + ε)] = r / D - <x, r> b x / (a D²)
    grad = reference * _column(1 / denominator)
    grad -= _column(dot * b / (a * denominator ** 2)) * estimate
    return cosine, grad


def _column(per_row):
    """float64 per-row factors [shape=(rows,)] → float32 [shape=(rows, 1)]: the signals stay
    float32 (float64 factors would promote whole signals, at several times the cost)."""
    return per_row.astype(np.float32)[:, None]


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


def combine(signals):
    """signals [shape=(4, ...)] → the 14 combinations' sums [shape=(14, ...)]."""
    flat = signals.reshape(signals.shape[0], -1)
    return (COMBINATIONS @ flat).reshape((len(COMBINATIONS),) + signals.shape[1:])


def time_loss_numpy(estimates, targets, mixture):
    """L_t in numpy (validation): estimates, targets [shape=(4, rows, L)], mixture [shape=(rows,
    L)], trimmed. → float"""
    est, ref = combine(estimates.astype(np.float64)), combine(targets.astype(np.float64))
    noise, noise_est = mixture[None] - ref, mixture[None] - est

    def power(x):
        return np.sum(x * x, axis=-1)

    def cosine(a, b):
        return np.sum(a * b, axis=-1) / (np.sqrt(power(a) + EPS) * np.sqrt(power(b) + EPS) + EPS)
    alpha = power(ref) / (power(ref) + power(noise) + EPS)
    return float(1.0 + np.mean(-alpha * cosine(est, ref) - (1 - alpha) * cosine(noise_est, noise)))
