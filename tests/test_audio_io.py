"""Streamed audio I/O: decoding into a temporary file, streamed resampling, padded reads and
streamed stem writing, each against its whole-signal counterpart."""
import os

import numpy as np
import pytest
import soundfile as sf

from conftest import music_like
from unmix_nnabla.audio.io import AudioFile, StreamResampler, decode_audio, prepare_audio, write_stream
from unmix_nnabla.base.runtime import UmxError
from unmix_nnabla.audio.spectral import PaddedSignal, pad_for_stft


def resample_in_blocks(signal, rate_in, rate_out, sizes):
    """signal pushed through a StreamResampler in blocks of the given sizes (cycled)."""
    resampler, out, pos, k = StreamResampler(rate_in, rate_out), [], 0, 0
    while pos < signal.shape[0]:
        size = sizes[k % len(sizes)]
        block = signal[pos:pos + size]
        pos, k = pos + size, k + 1
        out.append(resampler.push(block, final=pos >= signal.shape[0]))
    return np.concatenate(out)


@pytest.mark.parametrize("rate_in,rate_out", [(48000, 44100), (22050, 44100), (8000, 16000)])
def test_streamed_resampling_equals_whole(rate_in, rate_out):
    import resampy
    signal = music_like(2.3, rate_in, seed=3)
    whole = resampy.resample(signal, rate_in, rate_out, axis=0)
    # block sizes far below and above the filter's margin, none a multiple of the period
    streamed = resample_in_blocks(signal, rate_in, rate_out, [7, 30011, 113, 4999])
    assert streamed.shape == whole.shape
    assert np.max(np.abs(streamed - whole)) < 1e-5 * np.max(np.abs(whole))


def test_decode_wav_equals_reading_it_whole(tmp_path):
    path = str(tmp_path / "mono.wav")
    signal = music_like(25.0, 16000, channels=1, seed=1)  # longer than one decoding block
    sf.write(path, signal, 16000, subtype="FLOAT")
    with decode_audio(path) as audio:
        assert audio.shape == signal.shape and audio.rate == 16000
        assert np.array_equal(audio.read(), signal)
        assert audio.peak == float(np.abs(signal).max())
    with decode_audio(path, start=1.5, duration=12.0) as audio:
        assert np.array_equal(audio.read(), signal[24000:24000 + 192000])
    with decode_audio(path, rate=44100, stereo=True) as audio:
        expected = prepare_audio(signal, 16000, 44100)
        got = audio.read()
        assert got.shape == expected.shape and audio.rate == 44100
        assert np.max(np.abs(got - expected)) < 1e-5


def test_decode_stems_through_ffmpeg_equals_stempeg(stem_clip):
    import stempeg
    mixture, rate = stempeg.read_stems(stem_clip, stem_id=0, dtype=np.float32)
    with decode_audio(stem_clip) as audio:
        assert audio.rate == rate and audio.shape == mixture.shape
        assert np.array_equal(audio.read(), mixture)
    with decode_audio(stem_clip, start=2.0, duration=1.0) as audio:
        assert abs(audio.nb_timesteps - rate) <= 1


def test_decode_errors_name_the_problem(tmp_path):
    nan = str(tmp_path / "nan.wav")
    signal = music_like(0.5, 8000)
    signal[100, 1] = np.nan
    sf.write(nan, signal, 8000, subtype="FLOAT")
    text = str(tmp_path / "notes.mp3")
    with open(text, "w") as f:
        f.write("not audio")
    ok = str(tmp_path / "ok.wav")
    sf.write(ok, music_like(0.5, 8000), 8000)
    for kwargs, message in [(dict(path=nan), "NaN"), (dict(path=text), "cannot read audio"),
                            (dict(path=ok, start=3.0), "no audio"),
                            (dict(path=str(tmp_path / "gone.wav")), "not found")]:
        with pytest.raises(UmxError, match=message):
            decode_audio(**kwargs)


@pytest.mark.parametrize("from_file", [False, True])
def test_padded_signal_equals_pad_for_stft(from_file, tmp_path):
    signal = music_like(0.1, 8000, seed=2)  # 800 samples
    padded = pad_for_stft(signal.T, 256)
    source = signal
    if from_file:
        source = AudioFile(2, 8000, folder=str(tmp_path))
        source.append(signal[:300])
        source.append(signal[300:])
    view = PaddedSignal(source, 256)
    assert view.shape == padded.shape
    for lo, hi in [(0, 256), (0, padded.shape[1]), (100, 700), (600, padded.shape[1]), (5, 6)]:
        assert np.array_equal(view.segment(lo, hi), padded[:, lo:hi]), (lo, hi)


def test_separating_a_decoded_file_equals_separating_the_array(small_model, tmp_path):
    from unmix_nnabla.separation.separator import separate
    from unmix_nnabla.base.vocabulary import SOURCES
    from unmix_nnabla.models.hub import load_models
    folder, cfg = small_model
    cfgs = load_models(folder, list(SOURCES))
    signal = music_like(4.0, cfg.sample_rate)
    path = str(tmp_path / "song.wav")
    sf.write(path, signal, cfg.sample_rate, subtype="FLOAT")
    expected, _ = separate(signal, cfg.sample_rate, cfgs, progress=False)
    with decode_audio(path, rate=cfg.sample_rate, stereo=True) as audio:
        got, _ = separate(audio, cfg.sample_rate, cfgs, progress=False)
    for name in list(SOURCES):
        assert np.array_equal(got[name], expected[name])
    mono = str(tmp_path / "mono.wav")
    sf.write(mono, signal[:, 0], cfg.sample_rate, subtype="FLOAT")
    with decode_audio(mono) as audio:  # not made stereo: the models cannot take it as it is
        with pytest.raises(UmxError, match="decode_audio"):
            separate(audio, cfg.sample_rate, cfgs, progress=False)


def _blocks(nb_stems=3, rate=8000, seconds=2.0, fail_at=None):
    signal = music_like(seconds, rate, channels=nb_stems * 2).T.reshape(nb_stems, 2, -1)
    for k, start in enumerate(range(0, signal.shape[-1], 1000)):
        if k == fail_at:
            raise OSError("disk full")
        yield signal[..., start:start + 1000]


def test_streamed_stems_resampled_equal_resampling_whole(tmp_path):
    import resampy
    names = ["a", "b", "c"]
    whole = np.concatenate(list(_blocks()), axis=-1)
    write_stream(names, 8000, _blocks(), str(tmp_path / "out"), out_rate=11025)
    for j, name in enumerate(names):
        written, rate = sf.read(str(tmp_path / "out" / (name + ".wav")), dtype="float32")
        expected = resampy.resample(whole[j].T, 8000, 11025, axis=0)
        assert rate == 11025 and written.shape == expected.shape
        assert np.max(np.abs(written - expected)) < 1e-5


def test_no_half_written_stems_when_a_block_fails(tmp_path):
    with pytest.raises(OSError):
        write_stream(["a", "b", "c"], 8000, _blocks(fail_at=2), str(tmp_path / "out"))
    assert os.listdir(str(tmp_path)) == []
