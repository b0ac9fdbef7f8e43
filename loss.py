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

from ops import dense

# the 14 combinations of 1, 2 or 3 of the 4 targets, as rows of 0/1 weights
COMBINATIONS = np.array([[1.0 if j in c else 0.0 for j in range(4)]
                         for k in (1, 2, 3) for c in itertools.combinations(range(4), k)],
                        np.float32)
TRIM = 200  # samples of each time signal left out at both ends
EPS = 1e-10


def umx_loss(estimate, target):
    """UMX: the MSE of one target's magnitude estimate."""
    return F.mean(F.squared_error(estimate, target))


def frequency_loss(estimates, targets):
    """X-UMX's L_f. estimates: 4 Variables, targets: a Variable [shape=(4, ...)] (each
    target's magnitude spectrogram, same shapes)."""
    errors = [estimate - F.reshape(target, estimate.shape)
              for estimate, target in zip(estimates, F.split(targets, axis=0))]
    squares = F.add_n(*[F.sum(F.pow_scalar(e, 2.0)) for e in errors])
    size = float(np.prod(errors[0].shape))
    return (4.0 * squares + 3.0 * F.sum(F.pow_scalar(F.add_n(*errors), 2.0))) / (14.0 * size)


def time_loss(estimates, targets, mixture):
    """X-UMX's L_t. estimates, targets: Variables [shape=(4, rows, L)] (time signals, rows =
    samples x channels), mixture: Variable [shape=(1, rows, L)], already trimmed."""
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
