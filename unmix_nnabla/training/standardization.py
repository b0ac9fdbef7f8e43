"""The input standardization of a new model: per-bin statistics of the training mixtures."""
import numpy as np

from unmix_nnabla.audio.spectral import stft
from unmix_nnabla.base.console import progress_bar


def compute_statistics(mixtures, n_fft, n_hop, progress=True, center=True):
    """Per-bin mean and std of the mono mixture magnitude over all frames of `mixtures`
    (arrays [shape=(nb_timesteps, 2)], e.g. a dataset's `statistics_items()`), framed as the
    training graph frames its inputs (`spectral.training_centered`).

    As open-unmix-pytorch's `get_statistics` does (sklearn's StandardScaler): the channels'
    magnitudes averaged, the population std, floored at 1e-4 of its maximum. → (mean, std)
    [shape=(bins,)]
    """
    total, total_sq, count = 0.0, 0.0, 0
    for mixture in progress_bar(mixtures, desc="statistics", enabled=progress, leave=False):
        mag = np.abs(stft(mixture.T, n_fft, n_hop, center)).mean(axis=0)  # (frames, bins)
        mag = mag.astype(np.float64)
        total, total_sq, count = total + mag.sum(0), total_sq + (mag ** 2).sum(0), count + len(mag)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0))
    std = np.maximum(std, 1e-4 * std.max())
    return mean.astype(np.float32), std.astype(np.float32)
