"""Audio in and out: decoding any file (soundfile, or an ffmpeg pipe) block by block into a
temporary file, streamed resampling, channel handling, and stems written as they come.

Nothing here holds a whole track in memory: `decode_audio` appends blocks to an `AudioFile`
(an unlinked temporary file read back by range), `StreamResampler` resamples block by block
(equal to resampy on the whole signal), `write_stream` writes blocks of stems into a staging
folder that is published when complete.
"""
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from math import gcd

import numpy as np
import soundfile as sf

from unmix_nnabla.base import console
from unmix_nnabla.base.files import TemporaryArrayFile, atomic_path, staged_folder, writing_into
from unmix_nnabla.base.processes import die_with_parent
from unmix_nnabla.base.runtime import UmxError


def to_stereo(audio, warn=True):
    """audio [shape=(nb_timesteps, nb_channels_in)] → [shape=(nb_timesteps, 2)]: mono is
    duplicated, channels beyond two are dropped (with a warning when `warn`)."""
    if audio.shape[1] > 2:
        if warn:
            console.warn("input has %d channels: using the first two" % audio.shape[1])
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
    if audio.ndim != 2 or audio.shape[1] > audio.shape[0]:
        # a (2, n) array read as n channels would be a silent mistake
        raise UmxError("audio of shape %s: expected [shape=(nb_timesteps, nb_channels)], time "
                       "first (for a channels-first array, pass audio.T)" % (audio.shape,))
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
        import resampy.filters  # deferred: resampling only
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
        import resampy  # deferred: resampling only
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
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err,
                                    preexec_fn=die_with_parent)
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


def write_audio_atomic(path, audio, rate, subtype="FLOAT", format="WAV"):
    """Write an audio file through a temporary file in the same folder, then rename."""
    with atomic_path(path) as tmp:
        sf.write(tmp, audio, rate, subtype=subtype, format=format)


# the sample formats of the stems (--float32, --int24, --int16) as soundfile's subtypes
SAMPLE_FORMATS = {"float32": "FLOAT", "int24": "PCM_24", "int16": "PCM_16"}


@dataclass(frozen=True)
class StemFormat:
    """How stems are written: ext 'wav', 'flac' or 'mp3'; subtype (soundfile's: FLOAT,
    PCM_24, PCM_16; None for MP3); clip_mode 'rescale' (one gain for all of a song's stems,
    so that they still sum to the mixture) or 'clamp', for formats that cannot hold samples
    beyond full scale (all but float WAV); the MP3 bitrate (kbit/s, through ffmpeg)."""
    ext: str = "wav"
    subtype: str = "FLOAT"
    clip_mode: str = "rescale"
    mp3_bitrate: int = 320

    @property
    def clips(self):
        return not (self.ext == "wav" and self.subtype == "FLOAT")


FULL_SCALE = 1.0 - 2.0 ** -15  # the largest sample 16-bit PCM holds


def write_stream(names, rate, blocks, folder, fmt=StemFormat(), out_rate=None,
                 staging_root=None, length=None):
    """Write blocks [shape=(len(names), nb_channels, n)] to folder/<name>.<ext> as they come
    (memory stays bounded), resampled to `out_rate` when given; all or nothing (a staging
    folder in `staging_root`, default `folder`, published when every block is written).
    → one line on what the clip policy did ("" when nothing exceeded full scale).

    Stems of a format that clips are first written as float WAV in the staging folder, their
    peak noted, then converted block by block with the song's gain (rescale) or clamped,
    counting the clamped samples: never a silent clip.

    length: the stems' exact length in samples at the written rate. Only for resampled stems
    (`out_rate`), whose two resamplings (to the model's rate and back) may round the length
    by a sample or two: those samples are trimmed, or zeros added. Any larger difference is an
    error, never padded.
    """
    out_rate = out_rate or rate
    with staged_folder(folder, staging_root) as staging:
        floats = {name: os.path.join(staging, name + (".float.wav" if fmt.clips else ".wav"))
                  for name in names}
        peak = _write_floats(floats, rate, out_rate, blocks, length, staging)
        if not fmt.clips:
            return ""
        gain = min(1.0, FULL_SCALE / peak) if fmt.clip_mode == "rescale" and peak > 0 else 1.0
        clamped = 0
        for name, path in floats.items():
            clamped += _convert(path, os.path.join(staging, name + "." + fmt.ext), fmt, gain,
                                staging)
            os.remove(path)
    if gain < 1.0:
        return "rescaled by %.2f dB so that no sample exceeds full scale (peak %.3f)" % (
            20 * np.log10(gain), peak)
    if clamped:
        return "%d samples beyond full scale clamped (peak %.3f)" % (clamped, peak)
    return ""


def _write_floats(paths, rate, out_rate, blocks, length, staging):
    """Write the blocks as float WAVs {name: path} → the largest |sample|."""
    resampler = StreamResampler(rate, out_rate) if out_rate != rate else None
    if length is not None and resampler is None:
        raise ValueError("write_stream: length is only for resampled stems")
    files, written, peak = [], 0, 0.0
    try:
        for block, last in _with_last(blocks):
            nb_stems, nb_channels = block.shape[:2]
            if not files:
                with writing_into(staging):
                    files = [sf.SoundFile(path, "w", out_rate, nb_channels, "FLOAT", format="WAV")
                             for path in paths.values()]
            if resampler:
                # (J, C, n) -> (n, J * C): all stems through one resampler
                flat = resampler.push(block.reshape(nb_stems * nb_channels, -1).T, final=last)
                block = flat.T.reshape(nb_stems, nb_channels, -1)
            if length is not None:
                block = block[..., :length - written]
                if last and written + block.shape[-1] < length:
                    missing = length - written - block.shape[-1]
                    if missing > RESAMPLING_ROUNDING:
                        raise UmxError("resampled stems are %d samples short of %d"
                                       % (missing, length))
                    block = np.pad(block, ((0, 0), (0, 0), (0, missing)))
            if block.size:
                peak = max(peak, float(np.abs(block).max()))
            with writing_into(staging):
                for f, part in zip(files, block):
                    f.write(part.T)
            written += block.shape[-1]
    finally:
        with writing_into(staging):
            for f in files:
                f.close()
    return peak


def _convert(source, path, fmt, gain, staging):
    """A float WAV → `path` in `fmt`, block by block, times `gain`, clamped to full scale →
    the number of samples clamped."""
    clamped = 0
    with sf.SoundFile(source) as f:
        if fmt.ext == "mp3":
            writer = _Mp3Writer(path, f.samplerate, f.channels, fmt.mp3_bitrate)
        else:
            with writing_into(staging):
                writer = sf.SoundFile(path, "w", f.samplerate, f.channels, fmt.subtype,
                                      format=fmt.ext.upper())
        try:
            for block in f.blocks(blocksize=DECODE_BLOCK_SECONDS * f.samplerate, dtype="float32",
                                  always_2d=True):
                if gain != 1.0:
                    block = block * np.float32(gain)
                beyond = np.abs(block) > FULL_SCALE
                if beyond.any():
                    clamped += int(beyond.sum())
                    block = np.clip(block, -FULL_SCALE, FULL_SCALE)
                with writing_into(staging):
                    writer.write(block)
        finally:
            with writing_into(staging):
                writer.close()
    return clamped


class _Mp3Writer:
    """An MP3 file encoded by an ffmpeg process from float samples written to its stdin."""

    def __init__(self, path, rate, channels, bitrate):
        if shutil.which("ffmpeg") is None:
            raise UmxError("--ext mp3 needs ffmpeg, which is not installed (apt-get install "
                           "ffmpeg)")
        self.path = path
        self.errors = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            ["ffmpeg", "-nostdin", "-v", "error", "-f", "f32le", "-ar", str(rate), "-ac",
             str(channels), "-i", "pipe:0", "-b:a", "%dk" % bitrate, "-f", "mp3", path],
            stdin=subprocess.PIPE, stderr=self.errors, preexec_fn=die_with_parent)

    def write(self, block):
        self.proc.stdin.write(np.ascontiguousarray(block, np.float32).tobytes())

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        if self.proc.wait():
            self.errors.seek(0)
            lines = self.errors.read().decode(errors="replace").strip().splitlines()
            raise OSError("ffmpeg could not encode %s: %s"
                          % (self.path, lines[-1] if lines else "exit %d" % self.proc.returncode))
        self.errors.close()


# samples by which resampling to another rate and back may change a length
RESAMPLING_ROUNDING = 2
