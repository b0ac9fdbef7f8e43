import os

import numpy as np
import norbert
import pytest

from conftest import make_random_weights, music_like, snr
from unmix_nnabla.separation.separator import (EstimateStore, equal_batches, estimate_spectrograms, plan_windows, separate,
                       split_by_targets)
from unmix_nnabla.base.vocabulary import SOURCES
from unmix_nnabla.models.hub import load_models
from unmix_nnabla.separation.wiener import WIENER_EPS, FirstPassSums, phase_difference, wiener_blocks
from unmix_nnabla.audio.spectral import istft, nb_stft_frames, pad_for_stft, stft


def estimates(*args, **kw):
    """estimate_spectrograms' store, read into an array [shape=(frames, bins, C, J)]."""
    with estimate_spectrograms(*args, **kw) as store:
        return store.read()


@pytest.mark.parametrize("nb_frames,window,context", [(100, 16, 4), (100, 200, 4), (37, 10, 50),
                                                       (5, 1, 0)])
def test_window_plan_covers_every_frame_once(nb_frames, window, context):
    length, plan = plan_windows(nb_frames, window, context)
    covered = np.zeros(nb_frames, int)
    for start, core_start, core_stop in plan:
        assert 0 <= start and start + length <= nb_frames
        assert core_start - start >= min(context, core_start)
        assert start + length - core_stop >= min(context, nb_frames - core_stop)
        covered[core_start:core_stop] += 1
    assert (covered == 1).all()


@pytest.mark.parametrize("nb_windows,batch,sizes", [(13, 4, [4, 3, 3, 3]), (8, 4, [4, 4]),
                                                    (26, 4, [4, 4, 4, 4, 4, 3, 3]), (1, 4, [1]),
                                                    (5, 1, [1] * 5), (0, 4, [])])
def test_batches_are_as_few_as_allowed_and_of_equal_sizes(nb_windows, batch, sizes):
    plan = list(range(nb_windows))
    batches = equal_batches(plan, batch)
    assert sorted(len(b) for b in batches) == sorted(sizes) and sum(batches, []) == plan


@pytest.mark.parametrize("targets,windows,processes,bridged,expected", [
    (4, 8, 2, False, False),   # 180 s: 2 x 8 = 4 x 4 windows: a tie, the STFTs run once
    (4, 3, 2, False, True),    # 60 s: 2 targets x 3 windows beat 2 windows x 4 targets
    (1, 8, 2, False, False),   # one target: the windows
    (4, 26, 4, False, True),   # 600 s on 4 cores: 1 target x 26 beat 7 windows x 4
    (4, 1, 2, False, True),    # one window
    (4, 26, 2, False, False),  # 600 s on 2 cores: 2 x 26 = 13 x 4
    (4, 1, 2, True, False),    # X-UMX: its branches run together
])
def test_the_workers_share_targets_or_windows_whichever_is_fairer(targets, windows, processes,
                                                                   bridged, expected):
    assert split_by_targets(targets, windows, processes, bridged) is expected


def test_the_compiled_loops_load_in_the_background_and_once():
    import threading
    from unmix_nnabla.separation import separator
    separator.load_compiled_loops(background=True)
    separator.load_compiled_loops()  # waits for the thread
    assert not [t for t in threading.enumerate() if t.name == "compiled-loops"]
    from unmix_nnabla.base.kernels import forward
    assert forward.kernel.signatures  # loaded: a forked worker inherits it


def _mixture_and_models(small_model, seconds=3.0):
    folder, cfg = small_model
    cfgs = load_models(folder, list(SOURCES))
    audio = music_like(seconds, cfg.sample_rate)
    padded = pad_for_stft(audio.T, cfg.n_fft)
    return cfg, cfgs, audio, padded, nb_stft_frames(audio.shape[0], cfg.n_hop)


def test_windows_with_full_context_equal_one_piece(small_model):
    cfg, cfgs, _, padded, nb_frames = _mixture_and_models(small_model)
    whole = estimates(padded, nb_frames, cfgs, list(SOURCES), window=nb_frames, context=0,
                                  progress=False)
    windowed = estimates(padded, nb_frames, cfgs, list(SOURCES), window=40,
                                     context=nb_frames, batch=3, progress=False)
    assert whole.shape == (nb_frames, cfg.nb_output_bins, 2, 4)
    assert np.allclose(windowed, whole, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("niter,softmask,residual", [(0, False, False), (0, True, False),
                                                     (1, False, False), (1, True, True),
                                                     (2, False, True), (1, False, False)])
def test_streamed_wiener_equals_norbert(niter, softmask, residual):
    n_fft, n_hop = 256, 64
    rng = np.random.RandomState(niter)
    audio = music_like(2.0, 8000).T  # (C, T)
    x = stft(audio, n_fft, n_hop).transpose(1, 2, 0)  # (frames, bins, C)
    v = (np.abs(x)[..., None] * rng.uniform(0, 1, (1, 1, 1, 3))).astype(np.float32)
    v[..., 0] = v[..., 0] * 3  # a loud source for a gain != 1
    alpha = 2.0 if softmask else 1.0
    vv = v ** alpha if softmask else v
    model = norbert.residual_model(vv, x, alpha) if residual else vv
    ref = norbert.wiener(model.astype(np.float64), x.astype(np.complex128), niter,
                         use_softmask=softmask, eps=WIENER_EPS)
    ref_audio = istft(ref.transpose(3, 2, 0, 1), audio.shape[-1], n_fft, n_hop)
    ours = np.concatenate(list(wiener_blocks(
        pad_for_stft(audio, n_fft), audio.shape[-1], vv, n_fft, n_hop, niter=niter,
        softmask=softmask, alpha=alpha, residual=residual, chunk=7, progress=False)), axis=-1)
    assert ours.shape == ref_audio.shape == (3 + residual, 2, audio.shape[-1])
    for j in range(ours.shape[0]):
        # 60 dB, or equal to float noise where the source is silent
        error = np.sum((ref_audio[j] - ours[j]) ** 2)
        assert error <= 1e-6 * max(np.sum(ref_audio[j] ** 2), 1e-6)


@pytest.mark.parametrize("niter,mono_models", [(1, False), (2, False), (1, True)])
def test_first_pass_gathered_from_the_estimates_equals_the_pass_over_the_track(niter,
                                                                                mono_models):
    """The network's workers gather the filter's first pass (`FirstPassSums`, from the
    magnitudes and the channels' phase difference); the filter then skips that pass, and
    gives what its own pass (tested equal to norbert above) gives. Silent bins in one channel
    or both (a unit phase there) and mono models included."""
    n_fft, n_hop = 256, 64
    rng = np.random.RandomState(niter)
    audio = music_like(2.0, 8000).T  # (C, T)
    audio[1, 4000:6000] = 0  # the right channel silent, then both
    audio[:, 9000:11000] = 0
    x = stft(audio, n_fft, n_hop).transpose(1, 2, 0)  # (frames, bins, C)
    assert (np.abs(x) == 0).any()
    channels = 1 if mono_models else 2
    v = (np.abs(x)[..., :channels, None] * rng.uniform(0, 1, (1, 1, 1, 3))).astype(np.float32)
    v[..., 0] *= 3
    sums = FirstPassSums(3, x.shape[1])
    # in pieces of frames, as windows' cores come out of the network, sources in any order
    w = phase_difference(x.transpose(2, 0, 1))
    for lo, hi in ((0, 50), (50, 51), (51, x.shape[0])):
        for j in (2, 0, 1):
            # (frames, bins, C') -> (frames, C', bins), the network's layout
            sums.add(j, np.ascontiguousarray(v[lo:hi, :, :, j].transpose(0, 2, 1)), w[lo:hi])
    peak = float(np.abs(x).max())
    gathered, after = (np.concatenate(list(wiener_blocks(
        pad_for_stft(audio, n_fft), audio.shape[-1], v, n_fft, n_hop, niter=niter, chunk=7,
        progress=False, mixture_peak=peak, first_pass=first)), axis=-1) for first in (sums, None))
    for j in range(3):
        assert snr(after[j], gathered[j]) >= 100


@pytest.mark.parametrize("niter", [0, 1, 2])
def test_mono_models_in_the_streamed_wiener_equal_norbert_with_the_model_twice(niter):
    """A mono model's magnitudes serve both channels: norbert given them twice."""
    n_fft, n_hop = 256, 64
    rng = np.random.RandomState(niter)
    audio = music_like(2.0, 8000).T  # (C, T)
    x = stft(audio, n_fft, n_hop).transpose(1, 2, 0)  # (frames, bins, C)
    v = (np.abs(x).mean(axis=-1)[..., None, None] * rng.uniform(0, 1, (1, 1, 1, 3))).astype(
        np.float32)  # (frames, bins, 1, J)
    v[..., 0] *= 3
    ref = norbert.wiener(np.repeat(v, 2, axis=2).astype(np.float64), x.astype(np.complex128),
                         niter, use_softmask=False, eps=WIENER_EPS)
    ref_audio = istft(ref.transpose(3, 2, 0, 1), audio.shape[-1], n_fft, n_hop)
    ours = np.concatenate(list(wiener_blocks(pad_for_stft(audio, n_fft), audio.shape[-1], v,
                                             n_fft, n_hop, niter=niter, chunk=7,
                                             progress=False)), axis=-1)
    for j in range(3):
        error = np.sum((ref_audio[j] - ours[j]) ** 2)
        assert error <= 1e-6 * max(np.sum(ref_audio[j] ** 2), 1e-6)


def test_first_pass_only_serves_the_default_filter():
    """A softmask, a residual model or an unknown peak need the pass over the track."""
    audio = music_like(1.0, 8000).T
    v = np.ones((126, 129, 2, 2), np.float32)
    sums = FirstPassSums(2, 129)
    for kw in (dict(softmask=True), dict(residual=True), dict(niter=0), dict(mixture_peak=None)):
        args = dict(dict(niter=1, mixture_peak=1.0), **kw)
        with pytest.raises(ValueError, match="first pass"):
            next(wiener_blocks(pad_for_stft(audio, 256), audio.shape[-1], v, 256, 64,
                               progress=False, first_pass=sums, **args))


@pytest.mark.parametrize("processes", [1, 2])
def test_separation_with_the_gathered_first_pass_equals_the_pass_after(small_model, processes,
                                                                        monkeypatch):
    cfg, cfgs, audio, _, _ = _mixture_and_models(small_model)
    gathered, _ = separate(audio, cfg.sample_rate, cfgs, progress=False, processes=processes)
    monkeypatch.setattr(FirstPassSums, "applies", staticmethod(lambda *args: False))
    after, _ = separate(audio, cfg.sample_rate, cfgs, progress=False, processes=processes)
    for name in after:
        assert snr(after[name], gathered[name]) >= 100


def test_separate_shapes_rates_and_channels(small_model, capsys):
    folder, cfg = small_model
    cfgs = load_models(folder, list(SOURCES))
    stereo = music_like(1.5, 8000)
    est, rate = separate(stereo, 8000, cfgs, progress=False)
    assert rate == 8000 and sorted(est) == sorted(list(SOURCES))
    assert all(e.shape == stereo.shape and e.dtype == np.float32 for e in est.values())
    # other input rates are resampled to the model's
    est, _ = separate(stereo[::2], 4000, cfgs, progress=False)
    assert all(abs(e.shape[0] - stereo.shape[0]) <= 1 for e in est.values())
    # mono in: duplicated to the stereo the model expects; several channels: the first two
    est, _ = separate(stereo[:, :1], 8000, cfgs, ["vocals"], progress=False)
    ref, _ = separate(stereo[:, [0, 0]], 8000, cfgs, ["vocals"], progress=False)
    assert sorted(est) == ["accompaniment", "vocals"]
    assert est["vocals"].shape == (stereo.shape[0], 2) and np.isfinite(est["vocals"]).all()
    assert np.array_equal(est["vocals"], ref["vocals"])
    three = np.concatenate([stereo, stereo[:, :1]], axis=1)
    est3, _ = separate(three, 8000, cfgs, ["vocals"], progress=False)
    assert "warning: input has 3 channels: using the first two" in capsys.readouterr().err
    ref, _ = separate(stereo, 8000, cfgs, ["vocals"], progress=False)
    assert np.allclose(est3["vocals"], ref["vocals"], atol=1e-6)


def test_estimates_sum_to_the_mixture_with_a_residual(small_model):
    folder, cfg = small_model
    cfgs = load_models(folder, list(SOURCES))
    audio = music_like(2.0, 8000)
    est, _ = separate(audio, 8000, cfgs, niter=1, residual_model=True, progress=False)
    assert "residual" in est
    # the EM's posterior means add up to the mixture
    assert snr(audio, sum(est.values())) > 30


def test_silence_gives_silent_stems(small_model):
    folder, _ = small_model
    cfgs = load_models(folder, list(SOURCES))
    est, _ = separate(np.zeros((8000, 2), np.float32), 8000, cfgs, progress=False)
    for e in est.values():
        assert np.isfinite(e).all() and np.abs(e).max() == 0


@pytest.mark.slow
def test_windows_match_one_piece_on_30s_of_real_music(tmp_path, stem_clip):
    """Full-size network, default LSTM context: window borders are inaudible (>= 40 dB)."""
    import stempeg
    stems, rate = stempeg.read_stems(stem_clip, dtype=np.float32)
    # 30 s of real music: the mixture, then re-mixes of its stems
    parts = [stems[0], stems[1] + stems[2], stems[4] + stems[3], stems[0][::-1], stems[2] + stems[4]]
    audio = np.concatenate(parts)[: 30 * rate]
    folder = str(tmp_path / "full")
    make_random_weights(folder, targets=("vocals", "drums"))
    cfgs = load_models(folder, ["vocals", "drums"])
    padded = pad_for_stft(audio.T, 4096)
    nb_frames = nb_stft_frames(audio.shape[0], 1024)
    whole = estimates(padded, nb_frames, cfgs, ["vocals", "drums"],
                                  window=nb_frames, context=0, progress=False)
    windowed = estimates(padded, nb_frames, cfgs, ["vocals", "drums"],
                                     window=300, progress=False)
    assert snr(whole, windowed) >= 40


def test_two_processes_equal_one(small_model):
    cfg, cfgs, _, padded, nb_frames = _mixture_and_models(small_model)
    one = estimates(padded, nb_frames, cfgs, list(SOURCES), window=50, progress=False,
                                processes=1)
    timings = {}
    two = estimates(padded, nb_frames, cfgs, list(SOURCES), window=50, progress=False,
                                processes=2, timings=timings)
    # equal but for float rounding: one process uses two BLAS threads, workers one each
    assert np.allclose(one, two, rtol=1e-5, atol=1e-6 * np.abs(one).max())
    assert timings["network (wall)"] > 0 and timings["network"] > 0
    # fewer targets than processes: the windows are shared out instead (batches of other
    # sizes: BLAS may round differently)
    one = estimates(padded, nb_frames, cfgs, ["bass"], window=20, progress=False, processes=1)
    two = estimates(padded, nb_frames, cfgs, ["bass"], window=20, progress=False, processes=2)
    assert np.allclose(one, two, rtol=1e-5, atol=1e-6 * np.abs(one).max())


@pytest.mark.parametrize("targets,processes", [(list(SOURCES), 1), (list(SOURCES), 2), (["bass"], 2)])
def test_network_stage_finds_the_mixture_peak(small_model, targets, processes):
    """The Wiener filter's scale comes from the windows' STFTs: it must be the whole track's."""
    cfg, cfgs, audio, padded, nb_frames = _mixture_and_models(small_model)
    audio = audio * np.linspace(0.1, 1.0, audio.shape[0])[:, None]  # the loudest frame: the last
    padded = pad_for_stft(audio.T, cfg.n_fft)
    with estimate_spectrograms(padded, nb_frames, cfgs, targets, window=20, progress=False,
                               processes=processes) as store:
        assert store.mixture_peak == float(np.abs(stft(audio.T, cfg.n_fft, cfg.n_hop)).max())


def test_estimate_store_round_trip(tmp_path):
    rng = np.random.RandomState(0)
    data = rng.rand(10, 5, 2, 3).astype(np.float32)
    with EstimateStore(10, 5, 2, 3, folder=str(tmp_path)) as store:
        for j in range(3):
            store.write(j, 4, data[4:, ..., j])
            store.write(j, 0, data[:4, ..., j])
        assert np.array_equal(store.read(), data)
        assert np.array_equal(store.read(3, 7), data[3:7])
        assert np.array_equal(store.read(8, 20), data[8:])
    assert os.listdir(str(tmp_path)) == []  # unlinked: nothing left behind


def test_streamed_stems_equal_separate(small_model, tmp_path):
    import soundfile as sf
    from unmix_nnabla.separation.separator import separate_stream
    from unmix_nnabla.audio.io import write_stream
    folder, cfg = small_model
    cfgs = load_models(folder, list(SOURCES))
    audio = music_like(6.0, cfg.sample_rate)
    whole, rate = separate(audio, cfg.sample_rate, cfgs, progress=False)
    names, rate2, blocks = separate_stream(audio, cfg.sample_rate, cfgs, progress=False)
    blocks = list(blocks)
    assert names == list(SOURCES) and rate2 == rate and len(blocks) > 1  # several Wiener chunks
    write_stream(names, rate, iter(blocks), str(tmp_path / "out"))
    for name in names:
        written, file_rate = sf.read(str(tmp_path / "out" / (name + ".wav")), dtype="float32")
        assert file_rate == rate and np.array_equal(written, whole[name])


def test_the_workers_are_chosen_from_the_cores_the_work_and_the_memory():
    from unmix_nnabla.separation.separator import worker_plan
    mb = 1 << 20
    # as many as the cores and the shares of work allow, the cores split among them
    assert worker_plan(8, 500 * mb, cores=2, memory=16 << 30) == (2, 1)
    assert worker_plan(4, 500 * mb, cores=16, memory=16 << 30) == (4, 4)
    assert worker_plan(8, 500 * mb, cores=16, memory=16 << 30) == (8, 2)
    # half the available memory bounds them
    assert worker_plan(8, 500 * mb, cores=16, memory=2000 * mb) == (2, 8)
    assert worker_plan(8, 500 * mb, cores=16, memory=100 * mb) == (1, 16)
    # memory unknown: cores and work alone; -j wins over everything
    assert worker_plan(8, 500 * mb, cores=4, memory=None)[0] in (1, 2, 3, 4)
    assert worker_plan(8, 500 * mb, jobs=3, cores=2, memory=100 * mb) == (3, 1)


def test_blas_threads_set_by_the_project_are_not_taken_for_the_users(monkeypatch):
    """limit_blas_threads puts its count in the environment (for BLAS libraries loaded later,
    such as the one numba's products call) without making it look like the user's choice."""
    from unmix_nnabla.base import threads
    from threadpoolctl import threadpool_limits
    variables = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "UMX_BLAS_THREADS")
    for variable in variables:  # set, so that monkeypatch restores them whatever the test sets
        monkeypatch.setenv(variable, "")
    with threadpool_limits(limits=None):  # the libraries' thread counts restored afterwards
        try:
            assert not threads.blas_threads_chosen()
            threads.limit_blas_threads(1)
            assert os.environ["OPENBLAS_NUM_THREADS"] == "1" and not threads.blas_threads_chosen()
            assert threads.compute_threads() == 1
            threads.limit_blas_threads(2)  # the project may change its own choice
            assert os.environ["OMP_NUM_THREADS"] == "2"
            monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")  # the user's: left alone
            assert threads.blas_threads_chosen()
            threads.limit_blas_threads(1)
            assert os.environ["OPENBLAS_NUM_THREADS"] == "3"
        finally:
            threads._THREADS.clear()


@pytest.mark.parametrize("options", [dict(niter=2), dict(softmask=True, alpha=2.0, niter=0),
                                     dict(softmask=True, alpha=2.0, niter=1,
                                          residual_model=True),
                                     dict(niter=1, residual_model=True)])
def test_separate_applies_its_options_as_norbert_does(small_model, options):
    """separate() with the Wiener filter's options equals norbert's filter (and its residual
    model) applied to the network's estimates as open-unmix-pytorch applies it: an option
    that separate() handed on wrongly (say --alpha to the residual model) fails here."""
    cfg, cfgs, audio, padded, nb_frames = _mixture_and_models(small_model)
    targets = ["vocals", "drums"]
    ours, _ = separate(audio, cfg.sample_rate, cfgs, targets, progress=False, **options)
    v = estimates(padded, nb_frames, cfgs, targets, progress=False)  # (frames, bins, C, J)
    x = stft(audio.T, cfg.n_fft, cfg.n_hop).transpose(1, 2, 0)  # (frames, bins, C)
    softmask, alpha = options.get("softmask", False), options.get("alpha", 1.0)
    vv = v ** alpha if softmask else v
    if options.get("residual_model"):
        vv = norbert.residual_model(vv, x, alpha if softmask else 1.0)
    ref = norbert.wiener(vv.astype(np.float64), x.astype(np.complex128), options["niter"],
                         use_softmask=softmask, eps=WIENER_EPS)
    ref_audio = istft(ref.transpose(3, 2, 0, 1), audio.shape[0], cfg.n_fft, cfg.n_hop)
    names = targets + (["residual"] if options.get("residual_model") else [])
    assert list(ours) == names
    for j, name in enumerate(names):
        assert snr(ref_audio[j].T, ours[name]) > 60, name
