"""Audio in and out (io: decoding, resampling, writing stems) and the one STFT/ISTFT (spectral)."""
