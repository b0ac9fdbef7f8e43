import numpy as np
import nnabla as nn
import pytest

from unmix_nnabla.audio.spectral import OverlapAdd, istft, nb_stft_frames, nnabla_spectrogram, stft


def reference_stft(x, n_fft, n_hop):
    """torch.stft(center=True, pad_mode='reflect', periodic Hann) written out in float64."""
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    padded = np.pad(x.astype(np.float64), n_fft // 2, mode="reflect")
    nb_frames = 1 + (padded.size - n_fft) // n_hop
    k = np.arange(n_fft // 2 + 1)[:, None]
    n = np.arange(n_fft)[None, :]
    basis = np.exp(-2j * np.pi * k * n / n_fft)
    return np.stack([basis @ (padded[m * n_hop: m * n_hop + n_fft] * window)
                     for m in range(nb_frames)])


@pytest.mark.parametrize("n_fft,n_hop", [(256, 64), (512, 128), (4096, 1024), (300, 100)])
def test_stft_matches_reference(n_fft, n_hop):
    x = np.random.RandomState(1).randn(3 * n_fft + 17).astype(np.float32)
    ours = stft(x, n_fft, n_hop)
    ref = reference_stft(x, n_fft, n_hop)
    assert ours.shape == ref.shape == (nb_stft_frames(x.size, n_hop), n_fft // 2 + 1)
    assert np.abs(ours - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("channels", [1, 2])
def test_stft_matches_nnabla(channels):
    n_fft, n_hop = 4096, 1024
    x = np.random.RandomState(2).randn(2, channels, 20000).astype(np.float32)
    mag = nnabla_spectrogram(nn.Variable.from_numpy_array(x), n_fft, n_hop)
    mag.forward()
    ours = np.abs(stft(x, n_fft, n_hop)).transpose(2, 0, 1, 3)  # -> (frames, samples, ch, bins)
    assert mag.shape == ours.shape
    assert np.abs(mag.d - ours).max() <= 1e-5 * np.abs(ours).max()


@pytest.mark.parametrize("n_fft,n_hop", [(256, 64), (4096, 1024), (512, 256)])
@pytest.mark.parametrize("channels", [1, 2])
def test_round_trip(n_fft, n_hop, channels):
    x = np.random.RandomState(3).randn(channels, 5 * n_fft + 123).astype(np.float32)
    y = istft(stft(x, n_fft, n_hop), x.shape[-1], n_fft, n_hop)
    assert y.shape == x.shape
    assert np.abs(x - y).max() < 1e-5


def test_overlap_add_in_chunks_equals_whole():
    n_fft, n_hop = 256, 64
    x = np.random.RandomState(4).randn(2, 3000).astype(np.float32)
    spec = stft(x, n_fft, n_hop)
    ola = OverlapAdd((2,), x.shape[-1], n_fft, n_hop)
    # uneven chunks, in order: each returns the samples no later frame touches
    pieces = [ola.add(spec[..., a:b, :], a) for a, b in ((0, 1), (1, 17), (17, 30),
                                                        (30, spec.shape[-2]))]
    assert pieces[0].shape[-1] == 0 and pieces[1].shape[-1] == 17 * n_hop - n_fft // 2
    assert np.allclose(np.concatenate(pieces, axis=-1), x, atol=1e-5)
    with pytest.raises(ValueError):
        ola.add(spec[..., 5:6, :], 5)  # out of order
