"""X-UMX: Sony's layout, equality with an independent implementation (asteroid's, through
convert.py), the bridged inference network, the multi-domain loss, training and resume.

The reference outputs were made by tests/fixtures/make_xumx_fixture.py with asteroid 0.7.0's
X-UMX network and open-unmix-pytorch 1.3.0's Wiener filter (torch 2.13.0); this test needs
none of them.
"""
import itertools
import json
import os
import shutil

import h5py
import numpy as np
import nnabla as nn
import nnabla.functions as F
import pytest

from conftest import (convert_fixture, fixture_reference, music_like, run_script,
                      snr)
from unmix_nnabla.data.synth import generate_dataset
from unmix_nnabla.networks.inference import InferenceNetwork, network_for
from unmix_nnabla.training.loss import TRIM, frequency_loss, time_loss, time_loss_value
from unmix_nnabla.networks.layout import UmxConfig, xumx_parameter_shapes
from unmix_nnabla.networks.model import CrossNet
from unmix_nnabla.base.vocabulary import XUMX_BRANCHES
from unmix_nnabla.base.runtime import UmxError
from unmix_nnabla.separation.separator import separate
from unmix_nnabla.audio.spectral import istft, stft
from unmix_nnabla.models.random_weights import write_random_xumx
from unmix_nnabla.models.hub import load_models
from unmix_nnabla.models.weights import describe

SMALL = dict(hidden_size=16, max_bin=60, nb_output_bins=129, n_fft=256, n_hop=64,
             sample_rate=8000, xumx_branches=XUMX_BRANCHES)


@pytest.fixture(scope="module")
def reference():
    return fixture_reference("xumx_small")


@pytest.fixture
def converted(tmp_path):
    out = convert_fixture("xumx_small", str(tmp_path / "converted"))
    assert sorted(os.listdir(out)) == ["x-umx.h5", "x-umx.json"]
    return os.path.join(out, "x-umx.h5")


def test_sonys_layout():
    """88 parameters named and shaped as Sony's published x-umx.h5."""
    shapes = xumx_parameter_shapes(UmxConfig())
    assert len(shapes) == 88
    assert shapes["input_mean_vocals"] == (1487,) and shapes["output_scale_bass"] == (2049,)
    assert shapes["fc1_drums/affine/W"] == (2974, 512)
    assert shapes["fc1_drums/bn/gamma"] == (1, 1, 512)
    assert shapes["lstm_other/lstm/weight_l0"] == (2, 4, 256, 768)
    assert shapes["lstm_other/lstm/weight"] == (2, 2, 4, 256, 768)
    assert shapes["lstm_other/lstm/bias"] == (3, 2, 4, 256)
    assert shapes["fc2_vocals/affine/W"] == (1024, 512)
    assert shapes["fc3_vocals/affine/W"] == (512, 4098)
    assert shapes["fc3_vocals/bn/var"] == (1, 1, 4098)
    with nn.parameter_scope("x"):
        CrossNet(UmxConfig(**dict(SMALL, xumx_branches=())))(nn.Variable((2, 1, 2, 129)))
        made = {k: tuple(v.shape) for k, v in nn.get_parameters(grad_only=False).items()}
    assert made == xumx_parameter_shapes(UmxConfig(**SMALL))


def test_asteroid_network_output_equals(converted, reference):
    cfgs = load_models(converted, ["vocals"])
    assert sorted(cfgs) == sorted(XUMX_BRANCHES)  # all branches: the averages need them
    assert describe(cfgs).startswith("X-UMX, bridged branches bass, drums, vocals, other")
    cfg = cfgs["vocals"]
    assert (cfg.n_fft, cfg.n_hop, cfg.sample_rate, cfg.hidden_size, cfg.max_bin) == \
        (512, 128, 16000, 16, 160)
    mag = np.abs(stft(reference["audio"], 512, 128))  # (C, frames, bins)
    network = network_for(cfgs)
    ours = network.run(mag.transpose(1, 0, 2)[None], ["vocals"])["vocals"][0]  # (frames, C, bins)
    theirs = reference["vocals_output"].transpose(2, 0, 1)  # (C, bins, frames) -> (frames, C, bins)
    assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(theirs).max()


@pytest.mark.parametrize("niter,min_snr", [(0, 60), (1, 40)])
def test_asteroid_separation_equals(converted, reference, niter, min_snr):
    """Real music (the stempeg clip) through asteroid's X-UMX and open-unmix-pytorch's Wiener
    filter, against convert.py + this project's separation."""
    targets = [str(t) for t in reference["targets"]]
    assert targets != list(XUMX_BRANCHES)  # estimates are matched by name, not position
    cfgs = load_models(converted, targets)
    estimates, _ = separate(reference["audio"].T, int(reference["rate"]), cfgs, targets,
                            niter=niter, progress=False)
    theirs = reference["separated_niter%d" % niter]
    for j, target in enumerate(targets):
        assert snr(theirs[j], estimates[target].T) > min_snr, target


def _random_crossnet(cfg, rng, scope="xumx"):
    with nn.parameter_scope(scope):
        CrossNet(cfg, input_mean=rng.rand(cfg.nb_output_bins),
                 input_scale=rng.rand(cfg.nb_output_bins) + 0.5)(
            nn.Variable((2, 1, cfg.nb_channels, cfg.nb_output_bins)))
        for name, var in nn.get_parameters(grad_only=False).items():
            var.d = rng.uniform(0.5, 1.5, var.shape) if name.endswith("var") else \
                rng.randn(*var.shape) * 0.5


@pytest.mark.parametrize("overrides", [{}, dict(unidirectional=True, nb_layers=2, hidden_size=12),
                                       dict(nb_channels=1)])
def test_bridged_inference_network_equals_crossnet(overrides):
    from unmix_nnabla.networks.layout import split_branches
    cfg = UmxConfig(**dict(SMALL, **overrides))
    rng = np.random.RandomState(3)
    _random_crossnet(cfg, rng)
    spec = rng.rand(3, 23, 2, 129).astype(np.float32)  # (samples, frames, 2, bins)
    with nn.parameter_scope("xumx"):
        ref = CrossNet(cfg)(nn.Variable.from_numpy_array(spec.transpose(1, 0, 2, 3)), test=True)
        params = {k: v.d for k, v in nn.get_parameters(grad_only=False).items()}
    F.sink(*ref.values()).forward()
    network = InferenceNetwork({t: (cfg, p) for t, p in split_branches(params).items()},
                               block_rows=16)
    for asked in (list(XUMX_BRANCHES), ["other", "vocals"]):
        got = network.run(spec, asked)
        assert sorted(got) == sorted(asked)
        for target in asked:
            expected = ref[target].d.transpose(1, 0, 2, 3)
            assert np.abs(expected).max() > 0.1
            assert np.allclose(got[target], expected, rtol=1e-4,
                               atol=1e-5 * np.abs(expected).max()), target


def test_targets_are_matched_by_name(tmp_path):
    path = str(tmp_path / "x-umx.h5")
    write_random_xumx(path, UmxConfig(**SMALL))
    audio = music_like(2.0, 8000)
    order = ["vocals", "drums", "bass", "other"]
    cfgs = load_models(path, order)
    one, _ = separate(audio, 8000, cfgs, order, niter=1, progress=False)
    two, _ = separate(audio, 8000, cfgs, order[::-1], niter=1, progress=False)
    for target in order:  # equal but for float rounding (the EM sums in another order)
        assert snr(one[target], two[target]) > 80, target
    # one target: the vocals branch's estimate (Sony's test.py would give the first branch's)
    from unmix_nnabla.separation.separator import estimate_spectrograms
    from unmix_nnabla.audio.spectral import nb_stft_frames, pad_for_stft
    padded, frames = pad_for_stft(audio.T, 256), nb_stft_frames(audio.shape[0], 64)
    with estimate_spectrograms(padded, frames, cfgs, list(XUMX_BRANCHES), progress=False) as s:
        every = s.read()
    with estimate_spectrograms(padded, frames, cfgs, ["vocals"], progress=False) as s:
        alone = s.read()[..., 0]
    assert np.array_equal(alone, every[..., XUMX_BRANCHES.index("vocals")])
    assert not np.allclose(alone, every[..., 0], atol=1e-3)
    stems, _ = separate(audio, 8000, cfgs, ["vocals"], progress=False)
    assert sorted(stems) == ["accompaniment", "vocals"]


def test_damaged_xumx_files_are_named(tmp_path):
    path = str(tmp_path / "x-umx.h5")
    write_random_xumx(path, UmxConfig(**SMALL))
    cases = [("lstm_drums/lstm/bias", None, "missing parameter lstm_drums/lstm/bias"),
             ("fc2_other/affine/W", np.zeros((32, 7), np.float32),
              "parameter fc2_other/affine/W has shape (32, 7), expected (32, 16)"),
             ("fc3_bass/bn/mean", np.full((1, 1, 258), np.nan, np.float32),
              "parameter fc3_bass/bn/mean holds NaN or infinite values")]
    for name, value, message in cases:
        broken = str(tmp_path / ("broken-%s.h5" % name.replace("/", "-")))
        shutil.copyfile(path[:-3] + ".json", broken[:-3] + ".json")  # the small STFT
        with h5py.File(path, "r") as src, h5py.File(broken, "w") as dst:
            for key in src:
                src.copy(key, dst)
            del dst[name]
            if value is not None:
                dst[name] = value
        with pytest.raises(UmxError, match="%s: %s" % (broken, message.replace("(", "\\(")
                                                      .replace(")", "\\)"))):
            load_models(broken, ["vocals"])
    with pytest.raises(UmxError, match="no branch 'piano'"):
        load_models(path, ["piano"])


@pytest.mark.slow
def test_windows_match_one_piece_on_30s_of_real_music(tmp_path, stem_clip):
    """Full-size X-UMX (random weights), default LSTM context: windows are inaudible (>= 40 dB)."""
    import stempeg
    from unmix_nnabla.separation.separator import estimate_spectrograms
    from unmix_nnabla.audio.spectral import nb_stft_frames, pad_for_stft
    stems, rate = stempeg.read_stems(stem_clip, dtype=np.float32)
    parts = [stems[0], stems[1] + stems[2], stems[4] + stems[3], stems[0][::-1], stems[2] + stems[4]]
    audio = np.concatenate(parts)[: 30 * rate]
    path = str(tmp_path / "x-umx.h5")
    write_random_xumx(path, UmxConfig(xumx_branches=XUMX_BRANCHES))
    cfgs = load_models(path, ["vocals", "drums"])
    padded, nb_frames = pad_for_stft(audio.T, 4096), nb_stft_frames(audio.shape[0], 1024)
    with estimate_spectrograms(padded, nb_frames, cfgs, ["vocals", "drums"], window=nb_frames,
                               context=0, progress=False) as store:
        whole = store.read()
    with estimate_spectrograms(padded, nb_frames, cfgs, ["vocals", "drums"], window=300,
                               progress=False, processes=2) as store:
        windowed = store.read()
    assert snr(whole, windowed) >= 40


# --------------------------------------------------------------------------------------
# the multi-domain loss
# --------------------------------------------------------------------------------------

COMBINATIONS = [c for k in (1, 2, 3) for c in itertools.combinations(range(4), k)]


def literal_frequency_loss(estimates, targets):
    """The formula as written: mean over the 14 combinations of the MSE of the sums."""
    return np.mean([np.mean((sum(estimates[j] for j in c) - sum(targets[j] for j in c)) ** 2)
                    for c in COMBINATIONS])


def literal_time_loss(estimates, targets, mixture):
    """1 + mean over combinations and rows of -α cos(ŝ, s) - (1 - α) cos(n̂, n)."""
    terms = []
    for c in COMBINATIONS:
        s, s_hat = sum(targets[j] for j in c), sum(estimates[j] for j in c)
        n, n_hat = mixture - s, mixture - s_hat
        for row in range(mixture.shape[0]):
            a, b, m, m_hat = s[row], s_hat[row], n[row], n_hat[row]
            alpha = a @ a / (a @ a + m @ m + 1e-10)
            cos_s = b @ a / (np.sqrt(b @ b + 1e-10) * np.sqrt(a @ a + 1e-10) + 1e-10)
            cos_n = m_hat @ m / (np.sqrt(m_hat @ m_hat + 1e-10) * np.sqrt(m @ m + 1e-10) + 1e-10)
            terms.append(-alpha * cos_s - (1 - alpha) * cos_n)
    return 1 + np.mean(terms)


def test_loss_equals_the_formulas():
    rng = np.random.RandomState(0)
    est = rng.rand(4, 5, 3, 2, 7).astype(np.float64)
    ref = rng.rand(4, 5, 3, 2, 7).astype(np.float64)
    loss = frequency_loss([nn.Variable.from_numpy_array(e.astype(np.float32)) for e in est],
                          nn.Variable.from_numpy_array(ref.astype(np.float32)))
    loss.forward()
    assert float(loss.d) == pytest.approx(literal_frequency_loss(est, ref), rel=1e-5)
    est_t, ref_t = rng.randn(4, 6, 50), rng.randn(4, 6, 50)
    ref_t[2, 1] = 0.0  # a silent target row
    mix = ref_t.sum(axis=0) + 0.1 * rng.randn(6, 50)
    expected = literal_time_loss(est_t, ref_t, mix)
    loss = time_loss(*(nn.Variable.from_numpy_array(a.astype(np.float32))
                       for a in (est_t, ref_t, mix[None])))
    loss.forward()
    assert float(loss.d) == pytest.approx(expected, rel=1e-5)
    value, _ = time_loss_value(*(a.astype(np.float32) for a in (est_t, ref_t, mix)))
    assert value == pytest.approx(expected, rel=1e-5)  # the numpy implementation (validation's)
    # perfect estimates: every cosine is 1 (but where the silent row makes it 0)
    assert literal_time_loss(ref_t, ref_t, mix) < 0.05


def test_nnabla_istft_equals_the_projects():
    """The ISTFT in X-UMX's training graph (F.istft, differentiable) is the project's ISTFT,
    also on spectra that are no STFT of anything (as the estimates are)."""
    rng = np.random.RandomState(2)
    spec = (rng.randn(3, 40, 257) + 1j * rng.randn(3, 40, 257)).astype(np.complex64)
    spec[:, :, 0] = spec[:, :, 0].real
    spec[:, :, -1] = spec[:, :, -1].real
    ours = istft(spec, 39 * 128, 512, 128)
    real, imag = (nn.Variable.from_numpy_array(np.ascontiguousarray(x.transpose(0, 2, 1)))
                  for x in (spec.real, spec.imag))
    theirs = F.istft(real, imag, 512, 128, 512, window_type="hanning", center=True,
                     pad_mode="constant")
    theirs.forward()
    assert theirs.shape == ours.shape
    assert np.abs(theirs.d - ours).max() <= 1e-5 * np.abs(ours).max()


# --------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------

TRAIN = ["--is-wav", "--batch-size", "2", "--hidden-size", "8", "--nfft", "512", "--nhop", "256",
         "--samples-per-track", "3", "--seq-dur", "0.5", "--context", "cpu", "--lr", "0.01",
         "--valid-dur", "1.0"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return generate_dataset(str(tmp_path_factory.mktemp("synth")), nb_train=4, nb_test=1,
                            duration=2.0, seed=6, progress=False)


def test_a_tiny_xumx_trains_separates_and_resumes(root, tmp_path):
    out, resumed = str(tmp_path / "out"), str(tmp_path / "resumed")
    code, stdout, err = run_script("train", "--root", root, "--output", out, "--epochs", "4",
                                   *TRAIN)
    assert code == 0, err
    assert "training X-UMX (bass, drums, vocals, other) on 1 process" in stdout
    assert {"x-umx.h5", "x-umx.json", "x-umx_loss.png", "x-umx.checkpoint"} <= set(os.listdir(out))
    history = json.load(open(os.path.join(out, "x-umx.json")))["history"]
    losses = [h["train_loss"] for h in history]
    assert all(np.isfinite(h["valid_loss"]) for h in history)
    assert losses[-1] < 0.9 * losses[0], losses
    # Sony's names in one file, no outer scope
    with h5py.File(os.path.join(out, "x-umx.h5"), "r") as f:
        names = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    assert len(names) == 88 and "fc1_vocals/affine/W" in names
    code, stdout, err = run_script("test", "--inputs",
                                   os.path.join(root, "test", "Synth Test 00", "mixture.wav"),
                                   "--model", os.path.join(out, "x-umx.h5"), "--out-dir",
                                   str(tmp_path / "sep"), "--context", "cpu")
    assert code == 0, err
    assert "model: X-UMX" in stdout
    assert sorted(os.listdir(str(tmp_path / "sep" / "x-umx" / "mixture"))) == \
        sorted(t + ".wav" for t in XUMX_BRANCHES)
    # 2 epochs, then 2 more in a second run: the same weights as 4 in one
    for epochs in ("2", "4"):
        code, _, err = run_script("train", "--root", root, "--output", resumed, "--epochs",
                                  epochs, *TRAIN)
        assert code == 0, err
    with h5py.File(os.path.join(out, "x-umx.checkpoint", "parameters.h5"), "r") as a, \
            h5py.File(os.path.join(resumed, "x-umx.checkpoint", "parameters.h5"), "r") as b:
        for name in names:
            assert np.array_equal(a[name][()], b[name][()]), name


def test_xumx_flags(root, tmp_path):
    code, _, err = run_script("train", "--root", root, "--output", str(tmp_path / "o"),
                              "--source", "bass", *TRAIN)
    assert code == 2 and "add --umx-train" in err
    code, _, err = run_script("train", "--umx-train", "--root", root, "--output",
                              str(tmp_path / "o"), "--mcoef", "5", *TRAIN[:-2])
    assert code == 2 and "argument --mcoef: only X-UMX takes it" in err


def test_cpu_losses_equal_the_graph_losses_with_gradients():
    """The numpy loss functions (CPU) against the same losses in NNabla's functions (GPU)."""
    from unmix_nnabla.training.loss import frequency_loss_graph, time_loss_graph, umx_loss, umx_loss_graph
    rng = np.random.RandomState(4)
    mags = [rng.rand(5, 3, 2, 7) for _ in range(4)]
    ref = rng.rand(4, 5, 3, 2, 7)
    est_t, ref_t = rng.randn(4, 6, 50), rng.randn(4, 6, 50)
    mix = ref_t.sum(axis=0)[None] + 0.1 * rng.randn(1, 6, 50)
    for cpu, graph, arrays in ((frequency_loss, frequency_loss_graph, (mags, ref)),
                               (time_loss, time_loss_graph, (est_t, ref_t, mix)),
                               (umx_loss, umx_loss_graph, (mags[0], mags[1]))):
        results = []
        for function in (cpu, graph):
            first = [nn.Variable.from_numpy_array(a.astype(np.float32), need_grad=True)
                     for a in arrays[0]] if isinstance(arrays[0], list) else \
                nn.Variable.from_numpy_array(arrays[0].astype(np.float32), need_grad=True)
            # the MSE's target takes a gradient too (both of its inputs may)
            rest = [nn.Variable.from_numpy_array(a.astype(np.float32),
                                                 need_grad=function is umx_loss or
                                                 function is umx_loss_graph)
                    for a in arrays[1:]]
            loss = function(first, *rest) * 3.0
            variables = (first if isinstance(first, list) else [first]) + \
                [v for v in rest if v.need_grad]
            for v in variables:
                v.grad.fill(0.25)  # gradients accumulate
            loss.forward()
            loss.backward()
            results.append((float(loss.d), [v.g.copy() for v in variables]))
        assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
        for ours, theirs in zip(results[0][1], results[1][1]):
            assert np.allclose(ours, theirs, rtol=1e-4, atol=1e-6)
    with pytest.raises(Exception) as error:  # never broadcast silently
        umx_loss(nn.Variable((2, 3)), nn.Variable((2, 1)))
    assert "MSE of an estimate" in str(error.value.__cause__ or error.value)  # NNabla wraps it


@pytest.mark.parametrize("xumx", [False, True])
def test_the_gpu_network_equals_the_cpu_network(xumx, tmp_path, monkeypatch):
    """GPU contexts separate with the training graph in test mode (`GraphNetwork`); on the CPU
    (UMX_OPS=nnabla: the GPU's branch) it runs too, and equals the folded inference network."""
    from conftest import make_random_weights
    from unmix_nnabla.networks.inference import GraphNetwork
    if xumx:
        path = str(tmp_path / "x-umx.h5")
        write_random_xumx(path, UmxConfig(**SMALL))
    else:
        path = str(tmp_path / "umx")
        make_random_weights(path, **dict(SMALL, xumx_branches=()))
    cfgs = load_models(path, list(XUMX_BRANCHES))
    spec = np.abs(np.random.RandomState(0).randn(3, 40, 2, 129)).astype(np.float32)
    cpu_network = network_for(cfgs, ["vocals", "bass"])
    assert isinstance(cpu_network, InferenceNetwork)
    cpu = cpu_network.run(spec, ["vocals", "bass"])
    monkeypatch.setenv("UMX_OPS", "nnabla")
    gpu = network_for(cfgs, ["vocals", "bass"])
    assert isinstance(gpu, GraphNetwork)
    for _ in range(2):  # the graph is built once per shape
        got = gpu.run(spec, ["vocals", "bass"])
    assert len(gpu.graphs) == 1
    for target in ("vocals", "bass"):
        assert np.allclose(got[target], cpu[target], rtol=1e-4,
                           atol=1e-5 * np.abs(cpu[target]).max()), target


@pytest.mark.parametrize("nb_channels", [1, 2])
def test_cpu_estimate_signals_equal_the_graphs(nb_channels, monkeypatch):
    """The CPU's one-row-at-a-time ISTFT of the estimates with the mixture's phase against
    the same in NNabla's functions (GPU contexts: F.istft), values and gradients (phasor's
    too)."""
    from unmix_nnabla.training.loss import estimate_signals, estimate_signals_graph
    cfg = UmxConfig(n_fft=256, n_hop=64, nb_channels=nb_channels)
    rng = np.random.RandomState(nb_channels)
    frames, batch, bins, length = 30, 2, 129, 29 * 64 - 2 * TRIM
    estimates = [rng.rand(frames, batch, nb_channels, bins) for _ in range(3)]
    phase = rng.randn(batch * 2, bins, frames) + 1j * rng.randn(batch * 2, bins, frames)
    phase /= np.abs(phase)
    grad = rng.randn(3, batch * 2, length)
    results = []
    for function in (estimate_signals, estimate_signals_graph):
        if function is estimate_signals_graph:
            monkeypatch.setenv("UMX_OPS", "nnabla")
        inputs = [nn.Variable.from_numpy_array(a.astype(np.float32), need_grad=True)
                  for a in estimates + [phase.real, phase.imag]]
        for v in inputs:
            v.grad.fill(0.5)  # gradients accumulate
        y = function(inputs[:3], inputs[3], inputs[4], cfg, length)
        y.forward()
        y.backward(grad.astype(np.float32))
        results.append([y.d.copy()] + [v.g.copy() for v in inputs])
    assert results[0][0].shape == (3, batch * 2, length)
    for ours, theirs in zip(*results):
        assert np.allclose(ours, theirs, rtol=1e-4, atol=1e-5 * np.abs(theirs).max())
