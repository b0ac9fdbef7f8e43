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

    padded [shape=(..., nb_timesteps + n_fft)] (an array, or a `PaddedSignal`)
    → complex64 [shape=(..., nb_frames, nb_bins)]
    """
    lo, hi = start * n_hop, (stop - 1) * n_hop + n_fft
    segment = padded.segment(lo, hi) if hasattr(padded, "segment") else padded[..., lo:hi]
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

def to_stereo(audio, warn=True):
    """audio [shape=(nb_timesteps, nb_channels_in)] → [shape=(nb_timesteps, 2)]: mono is
    duplicated, channels beyond two are dropped (with a warning when `warn`)."""
    if audio.shape[1] > 2:
        if warn:
            warnings.warn("input has %d channels: using the first two" % audio.shape[1])
        return audio[:, :2]
    if audio.shape[1] == 1:
        return np.repeat(audio, 2, axis=1)
    return audio


def prepare_audio(audio, rate, model_rate):
    """Resample to the model rate and make it stereo (see `to_stereo`).

    audio [shape=(nb_timesteps, nb_channels_in)] → [shape=(nb_timesteps', 2)]
    """
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[:, None]
    audio = to_stereo(audio)
    if rate != model_rate:
        audio = StreamResampler(rate, model_rate).push(audio, final=True)
    return audio


class StreamResampler:
    """`resampy.resample(x, rate_in, rate_out, axis=0)` of a signal handed in block by block
    [shape=(n, nb_channels)], equal to resampling it whole (up to float rounding).

    Output sample k is a weighted sum of the input samples within `margin` of its time
    k·rate_in/rate_out. Each `push` resamples the kept input from a start on the output grid (a
    multiple of rate_in / gcd) and hands out the outputs whose inputs have all arrived; only
    the input that later outputs still need is kept.
    """

    def __init__(self, rate_in, rate_out, filter="kaiser_best"):
        from math import gcd
        import resampy.filters
        self.rate_in, self.rate_out = int(rate_in), int(rate_out)
        common = gcd(self.rate_in, self.rate_out)
        self.period_in, self.period_out = self.rate_in // common, self.rate_out // common
        self.filter = filter
        interp_win, num_table, _ = resampy.filters.get_filter(filter)
        # resampy's filter wings span len(interp_win) / index_step input samples
        index_step = int(min(1.0, self.rate_out / self.rate_in) * num_table)
        self.margin = -(-len(interp_win) // index_step) + 2
        self.kept = None  # input samples from `origin` on
        self.origin = 0
        self.received = 0
        self.done = 0  # output samples handed out

    def push(self, block, final=False):
        """block [shape=(n, C)] → the output samples now complete [shape=(m, C)]; `final`
        marks the last block (the signal's end: resampy pads it with zeros)."""
        import resampy
        block = np.asarray(block, np.float32)
        self.kept = block if self.kept is None else np.concatenate([self.kept, block])
        self.received += block.shape[0]
        if final:
            stop = self.received * self.rate_out // self.rate_in  # resampy's output length
        else:
            stop = (self.received - self.margin) * self.rate_out // self.rate_in
        if stop <= self.done:
            return np.zeros((0, self.kept.shape[1]), np.float32)
        first = self.origin // self.period_in * self.period_out  # output index of the kept start
        out = resampy.resample(self.kept, self.rate_in, self.rate_out, axis=0,
                               filter=self.filter)[self.done - first: stop - first]
        self.done = stop
        # later outputs (times from stop·rate_in/rate_out on) read inputs from `margin` before
        keep_from = (stop * self.rate_in // self.rate_out - self.margin) // self.period_in
        keep_from = max(self.origin, keep_from * self.period_in)
        self.kept = self.kept[keep_from - self.origin:]
        self.origin = keep_from
        return out.astype(np.float32, copy=False)


class TemporaryArrayFile:
    """An unlinked temporary file that arrays are written to (pwrite) and read back from
    (pread) by byte offset; forked processes share it. It lies in tempfile's folder (TMPDIR,
    or `folder`) and is gone once closed."""

    def __init__(self, prefix, folder=None):
        self.folder = folder or tempfile.gettempdir()
        self.file = tempfile.TemporaryFile(prefix=prefix, dir=folder)

    def write_at(self, array, offset):
        data = np.ascontiguousarray(array, np.float32)
        if os.pwrite(self.file.fileno(), data, offset) != data.nbytes:
            raise UmxError("could not write to a temporary file in %s (disk full?)" % self.folder)

    def read_into(self, out, offset):
        """Fill the array `out` with the file's bytes from `offset` on."""
        view, done = memoryview(out).cast("B"), 0
        while done < len(view):  # one pread hands out at most ~2 GB
            raw = os.pread(self.file.fileno(), len(view) - done, offset + done)
            if not raw:
                raise UmxError("a temporary file was cut short")
            view[done:done + len(raw)] = raw
            done += len(raw)

    def close(self):
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class AudioFile(TemporaryArrayFile):
    """Decoded audio kept in an unlinked temporary file, so that no track is too long for the
    memory: float32 [shape=(nb_timesteps, nb_channels)] at `rate`, appended block by block and
    read back by range. `peak`: the largest |sample|.
    """

    def __init__(self, nb_channels, rate, folder=None):
        super().__init__("umx-audio-", folder)
        self.nb_channels, self.rate = int(nb_channels), int(rate)
        self.nb_timesteps, self.peak = 0, 0.0

    @property
    def shape(self):
        return (self.nb_timesteps, self.nb_channels)

    def append(self, block):
        """block [shape=(n, nb_channels)]"""
        if block.size:
            self.peak = max(self.peak, float(np.abs(block).max()))
            self.write_at(block, self.nb_timesteps * self.nb_channels * 4)
            self.nb_timesteps += block.shape[0]

    def read(self, start=0, stop=None):
        """→ float32 [shape=(stop - start, nb_channels)]"""
        stop = self.nb_timesteps if stop is None else min(stop, self.nb_timesteps)
        out = np.empty((max(0, stop - start), self.nb_channels), np.float32)
        self.read_into(out, start * self.nb_channels * 4)
        return out


DECODE_BLOCK_SECONDS = 10


def decode_audio(path, start=0.0, duration=None, rate=None, stereo=False):
    """Decode (part of) any file soundfile or ffmpeg reads into an `AudioFile`, block by block:
    memory does not grow with the length. A STEMS file gives its first stream (the mixture).

    rate: resample to this rate (`StreamResampler`, equal to resampling whole);
    stereo: make it stereo (`to_stereo`). Bad input raises UmxError.
    """
    if not os.path.isfile(path):
        raise UmxError("input file not found: %s" % path)
    source = _soundfile_blocks(path, start, duration) or _ffmpeg_blocks(path, start, duration)
    source_rate, nb_channels, blocks = source
    resampler = StreamResampler(source_rate, rate) if rate and rate != source_rate else None
    audio = AudioFile(2 if stereo else nb_channels, rate or source_rate)
    try:
        for k, (block, last) in enumerate(_with_last(blocks)):
            if not np.all(np.isfinite(block)):
                raise UmxError("audio in %s holds NaN or infinite samples" % path)
            if stereo:
                block = to_stereo(block, warn=k == 0)
            audio.append(resampler.push(block, final=last) if resampler else block)
        if audio.nb_timesteps == 0:
            raise UmxError("no audio in %s (empty file, or --start beyond its end)" % path)
    except BaseException:
        audio.close()
        raise
    return audio


def _with_last(items):
    """(item, is_last) for each item."""
    previous = None
    for item in items:
        if previous is not None:
            yield previous, False
        previous = item
    if previous is not None:
        yield previous, True


def _soundfile_blocks(path, start, duration):
    """(rate, nb_channels, blocks [shape=(n, nb_channels)]) read with soundfile, or None when
    soundfile cannot read the file."""
    import soundfile as sf
    try:
        f = sf.SoundFile(path)
    except Exception:
        return None
    rate = f.samplerate
    first = int(round(start * rate))
    remaining = None if duration is None else int(round(duration * rate))

    def blocks():
        nonlocal remaining
        with f:
            if first >= f.frames:
                return
            f.seek(first)
            size = DECODE_BLOCK_SECONDS * rate
            while remaining is None or remaining > 0:
                try:
                    block = f.read(size if remaining is None else min(size, remaining),
                                   dtype="float32", always_2d=True)
                except Exception as exc:  # a file whose header reads but whose data does not
                    raise UmxError("cannot read audio from %s: %s" % (path, exc))
                if block.shape[0] == 0:
                    return
                if remaining is not None:
                    remaining -= block.shape[0]
                yield block
    return rate, f.channels, blocks()


def _ffmpeg_blocks(path, start, duration):
    """(rate, nb_channels, blocks [shape=(n, nb_channels)]) of the first audio stream, decoded
    by an ffmpeg process into a pipe."""
    import shutil
    import subprocess
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        raise UmxError("cannot read %s: it needs ffmpeg, which is not installed "
                       "(apt-get install ffmpeg)" % path)
    probe = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
                            "stream=sample_rate,channels", "-of", "json", path],
                           capture_output=True, text=True)
    try:
        stream = json.loads(probe.stdout)["streams"][0]
        rate, nb_channels = int(stream["sample_rate"]), int(stream["channels"])
    except (ValueError, KeyError, IndexError, TypeError):
        reason = (probe.stderr.strip().splitlines() or ["no audio stream"])[-1]
        raise UmxError("cannot read audio from %s: %s" % (path, reason))
    cmd = ["ffmpeg", "-nostdin", "-v", "error"]
    if start:
        cmd += ["-ss", "%.6f" % start]
    cmd += ["-i", path]
    if duration is not None:
        cmd += ["-t", "%.6f" % duration]
    cmd += ["-map", "0:a:0", "-f", "f32le", "-acodec", "pcm_f32le", "-"]

    def blocks():
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)
            try:
                size = DECODE_BLOCK_SECONDS * rate * nb_channels * 4
                while True:
                    raw = proc.stdout.read(size)
                    if not raw:
                        break
                    usable = len(raw) // (4 * nb_channels) * 4 * nb_channels
                    yield np.frombuffer(raw[:usable], np.float32).reshape(-1, nb_channels)
                if proc.wait():
                    err.seek(0)
                    lines = err.read().decode(errors="replace").strip().splitlines()
                    raise UmxError("cannot read audio from %s: %s"
                                   % (path, lines[-1] if lines else "ffmpeg failed"))
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.stdout.close()
                proc.wait()
    return rate, nb_channels, blocks()


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


def write_stream(names, rate, blocks, folder, pcm16=False, out_rate=None):
    """Write blocks [shape=(len(names), nb_channels, n)] to folder/<name>.wav as they come
    (memory stays bounded), resampled to `out_rate` when given; all or nothing."""
    import soundfile as sf
    resampler = StreamResampler(rate, out_rate) if out_rate and out_rate != rate else None
    files = []
    with staged_folder(folder) as staging:
        try:
            for block, last in _with_last(blocks):
                nb_stems, nb_channels = block.shape[:2]
                if not files:
                    files = [sf.SoundFile(os.path.join(staging, name + ".wav"), "w",
                                          out_rate or rate, nb_channels,
                                          "PCM_16" if pcm16 else "FLOAT", format="WAV")
                             for name in names]
                if resampler:
                    # (J, C, n) -> (n, J * C): all stems through one resampler
                    flat = resampler.push(block.reshape(nb_stems * nb_channels, -1).T, final=last)
                    block = flat.T.reshape(nb_stems, nb_channels, -1)
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
