"""Shared pieces: the project's one STFT/ISTFT, audio I/O, weight files, contexts.

STFT convention (used everywhere: training inputs and targets, statistics, separation):
periodic Hann window, `n_fft`-sample frames every `n_hop` samples, *centered* (the signal is
reflect-padded by n_fft // 2 on both sides), no normalization — the conventions of `torch.stft`
and of NNabla's `F.stft(..., window_type='hanning', center=True, pad_mode='reflect')`.
Both backends live here: `stft`/`istft` (numpy/scipy FFT, used wherever no gradient flows)
and `nnabla_stft` (NNabla functions, used when the model is fed time-domain Variables).
"""
import json
import os
import tempfile
import warnings
from contextlib import contextmanager

import numpy as np
import scipy.fft

FFT_WORKERS = min(2, os.cpu_count() or 1)


class UmxError(Exception):
    """A problem with the user's input, reported as one line by the CLIs."""


def exit_on_error(function, *args):
    """Run a CLI's work; a UmxError becomes one 'error: ...' line on stderr and exit code 1."""
    import sys
    try:
        return function(*args)
    except UmxError as exc:
        print("error: %s" % exc, file=sys.stderr)
        sys.exit(1)


# --------------------------------------------------------------------------------------
# STFT / ISTFT (numpy backend)
# --------------------------------------------------------------------------------------

def hann_window(n_fft):
    """Periodic Hann window, as torch.hann_window and NNabla's 'hanning'."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)


def nb_stft_frames(nb_timesteps, n_hop):
    """Number of frames of a centered STFT."""
    return 1 + nb_timesteps // n_hop


def pad_for_stft(audio, n_fft):
    """Reflect-pad the last axis by n_fft // 2 on both sides (the centering of `stft`)."""
    if audio.shape[-1] <= n_fft // 2:
        raise UmxError("audio of %d samples is shorter than one STFT window (%d samples)"
                       % (audio.shape[-1], n_fft))
    pad = [(0, 0)] * (audio.ndim - 1) + [(n_fft // 2, n_fft // 2)]
    return np.pad(audio, pad, mode="reflect")


def stft_frames(padded, start, stop, n_fft, n_hop):
    """STFT frames `start..stop-1` of an already padded signal.

    padded [shape=(..., nb_timesteps + n_fft)] → complex64 [shape=(..., nb_frames, nb_bins)]
    """
    segment = padded[..., start * n_hop: (stop - 1) * n_hop + n_fft]
    # (..., nb_samples) -> (..., nb_frames, n_fft): a strided view, no copy
    frames = np.lib.stride_tricks.sliding_window_view(segment, n_fft, axis=-1)[..., ::n_hop, :]
    windowed = frames * hann_window(n_fft)
    return scipy.fft.rfft(windowed.astype(np.float32, copy=False), axis=-1,
                          workers=FFT_WORKERS).astype(np.complex64, copy=False)


def stft(audio, n_fft=4096, n_hop=1024):
    """Centered STFT. audio [shape=(..., nb_timesteps)] → complex64 [shape=(..., nb_frames, nb_bins)]."""
    audio = np.asarray(audio, dtype=np.float32)
    return stft_frames(pad_for_stft(audio, n_fft), 0, nb_stft_frames(audio.shape[-1], n_hop),
                       n_fft, n_hop)


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
        frames = scipy.fft.irfft(spec, n=self.n_fft, axis=-1, workers=FFT_WORKERS)
        frames = frames.astype(np.float32, copy=False) * self.window
        nb_frames = frames.shape[-2]
        hop, n_fft = self.n_hop, self.n_fft
        end = (start + nb_frames - 1) * hop + n_fft  # padded position after the last frame
        if end - self.origin > self.pending.shape[-1]:
            grown = np.zeros(self.lead_shape + (end - self.origin,), np.float32)
            grown[..., :self.pending.shape[-1]] = self.pending
            self.pending = grown
        offset = start * hop - self.origin
        if n_fft % hop:
            for k in range(nb_frames):
                self.pending[..., offset + k * hop: offset + k * hop + n_fft] += frames[..., k, :]
        else:
            # frames k, k + r, k + 2r, ... (r = n_fft / n_hop) do not overlap: add each such
            # group as one contiguous block
            ratio = n_fft // hop
            for first in range(min(ratio, nb_frames)):
                group = frames[..., first::ratio, :]
                block = group.reshape(group.shape[:-2] + (-1,))
                pos = offset + first * hop
                self.pending[..., pos:pos + block.shape[-1]] += block
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


# --------------------------------------------------------------------------------------
# STFT (NNabla backend, differentiable)
# --------------------------------------------------------------------------------------

def nnabla_spectrogram(x, n_fft=4096, n_hop=1024, mono=False):
    """Magnitude spectrogram with NNabla's F.stft (same convention as `stft`).

    x [shape=(nb_samples, nb_channels, nb_timesteps)] Variable
    → [shape=(nb_frames, nb_samples, nb_channels or 1, nb_bins)]
    """
    import nnabla.functions as F
    nb_samples, nb_channels, _ = x.shape
    real, imag = F.stft(F.reshape(x, (nb_samples * nb_channels, -1)), n_fft, n_hop, n_fft,
                        window_type="hanning", center=True, pad_mode="reflect")
    mag = F.pow_scalar(real ** 2 + imag ** 2, 0.5)
    # (nb_samples * nb_channels, nb_bins, nb_frames) -> (nb_samples, nb_channels, nb_bins, nb_frames)
    mag = F.reshape(mag, (nb_samples, nb_channels, n_fft // 2 + 1, -1))
    if mono:
        mag = F.mean(mag, axis=1, keepdims=True)
    # -> (nb_frames, nb_samples, nb_channels, nb_bins)
    return F.transpose(mag, (3, 0, 1, 2))


def model_layout(spec):
    """complex (nb_samples, nb_channels, nb_frames, nb_bins) → magnitude (nb_frames, nb_samples, nb_channels, nb_bins)."""
    return np.abs(spec).transpose(2, 0, 1, 3)


# --------------------------------------------------------------------------------------
# audio I/O
# --------------------------------------------------------------------------------------

def load_audio(path, start=0.0, duration=None):
    """Read any file soundfile or ffmpeg reads.

    Returns (audio [shape=(nb_timesteps, nb_channels)] float32, rate). A STEMS file gives its
    first stream (the mixture).
    """
    import soundfile as sf
    if not os.path.isfile(path):
        raise UmxError("input file not found: %s" % path)
    try:
        info = sf.info(path)
        rate = info.samplerate
        first = int(round(start * rate))
        frames = -1 if duration is None else int(round(duration * rate))
        audio, rate = sf.read(path, start=first, frames=frames, dtype="float32", always_2d=True)
    except Exception:
        audio, rate = _load_with_ffmpeg(path, start, duration)
    if audio.size == 0:
        raise UmxError("no audio in %s (empty file, or --start beyond its end)" % path)
    if not np.all(np.isfinite(audio)):
        raise UmxError("audio in %s holds NaN or infinite samples" % path)
    return audio, rate


def _load_with_ffmpeg(path, start, duration):
    import shutil
    if shutil.which("ffmpeg") is None:
        raise UmxError("cannot read %s: it needs ffmpeg, which is not installed "
                       "(apt-get install ffmpeg)" % path)
    import stempeg
    try:
        audio, rate = stempeg.read_stems(path, start=start or None, duration=duration,
                                         stem_id=0, dtype=np.float32)
    except Exception as exc:
        raise UmxError("cannot read audio from %s: %s" % (path, str(exc).strip().splitlines()[-1]
                                                            if str(exc).strip() else type(exc).__name__))
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[:, None]
    return audio, int(rate)


def prepare_audio(audio, rate, model_rate, nb_channels=2):
    """Resample to the model rate and make it stereo (mono duplicated, extra channels dropped).

    audio [shape=(nb_timesteps, nb_channels_in)] → [shape=(nb_timesteps', nb_channels)]
    """
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[:, None]
    if audio.shape[1] > 2:
        warnings.warn("input has %d channels: using the first two" % audio.shape[1])
        audio = audio[:, :2]
    if audio.shape[1] == 1:
        audio = np.repeat(audio, 2, axis=1)
    if rate != model_rate:
        import resampy
        audio = resampy.resample(audio, rate, model_rate, axis=0).astype(np.float32)
    return audio


def write_audio_atomic(path, audio, rate, subtype="FLOAT"):
    """Write a WAV through a temporary file in the same folder, then rename."""
    import soundfile as sf
    with atomic_path(path) as tmp:
        sf.write(tmp, audio, rate, subtype=subtype, format="WAV")


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=folder)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would outlive the rename
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def check_out_dir(out_dir):
    """Create `out_dir` or fail with UmxError when it cannot be written."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as exc:
        raise UmxError("cannot write to --out-dir %s: %s" % (out_dir, exc.strerror or exc))


@contextmanager
def staged_folder(folder):
    """Yield a temporary folder beside `folder`; if the block succeeds, move its files into
    `folder` (created if needed). A failure leaves `folder` as it was: all or nothing."""
    import shutil
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
    try:
        yield staging
        os.makedirs(folder, exist_ok=True)
        for name in os.listdir(staging):
            os.replace(os.path.join(staging, name), os.path.join(folder, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_estimates(estimates, rate, folder, out_rate=None, pcm16=False):
    """Write {name: (nb_timesteps, nb_channels)} as folder/<name>.wav, all or nothing."""
    import resampy
    with staged_folder(folder) as staging:
        for name, audio in estimates.items():
            if out_rate and out_rate != rate:
                audio = resampy.resample(audio, rate, out_rate, axis=0)
            write_audio_atomic(os.path.join(staging, name + ".wav"), audio, out_rate or rate,
                               subtype="PCM_16" if pcm16 else "FLOAT")


def write_stream(names, rate, blocks, folder, pcm16=False):
    """Write blocks [shape=(len(names), nb_channels, n)] to folder/<name>.wav as they come
    (memory stays bounded), all or nothing."""
    import soundfile as sf
    files = []
    with staged_folder(folder) as staging:
        try:
            for block in blocks:
                if not files:
                    files = [sf.SoundFile(os.path.join(staging, name + ".wav"), "w", rate,
                                          block.shape[1], "PCM_16" if pcm16 else "FLOAT",
                                          format="WAV") for name in names]
                for f, part in zip(files, block):
                    f.write(part.T)
        finally:
            for f in files:
                f.close()


def write_json_atomic(path, obj):
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)


# --------------------------------------------------------------------------------------
# NNabla contexts
# --------------------------------------------------------------------------------------

def gpu_available():
    try:
        from nnabla_ext.cuda import get_device_count
        return get_device_count() > 0
    except Exception:
        return False


def set_context(name=None, device_id=0, verbose=True):
    """Set NNabla's default context. name None → cudnn when a GPU is present, else cpu.

    An explicit GPU context without a GPU falls back to the CPU with a notice.
    """
    import nnabla as nn
    from nnabla.ext_utils import get_extension_context
    if name is None:
        name = "cudnn" if gpu_available() else "cpu"
    elif name in ("cuda", "cudnn") and not gpu_available():
        if verbose:
            print("context %s: no GPU or nnabla CUDA extension found, using the CPU" % name)
        name = "cpu"
    if verbose:
        print("context: %s" % name)
    ctx = get_extension_context(name, device_id=str(device_id))
    nn.set_default_context(ctx)
    return name
