import numpy as np
import nnabla as nn
import nnabla.functions as F
import pytest

from unmix_nnabla.networks.inference import InferenceNetwork, scope_parameters
from unmix_nnabla.networks.layout import UmxConfig, bandwidth_to_max_bin, config_from_shapes, parameter_shapes
from unmix_nnabla.networks.model import OpenUnmix, unrolled_lstm


def V(a, need_grad=False):
    return nn.Variable.from_numpy_array(np.asarray(a, np.float32), need_grad=need_grad)


@pytest.mark.parametrize("dirs,layers", [(2, 3), (1, 3), (2, 1)])
def test_unrolled_lstm_equals_nnabla_lstm(dirs, layers):
    rng = np.random.RandomState(0)
    T, B, I, H = 9, 3, 5, 4
    x = rng.randn(T, B, I)
    w0 = rng.randn(dirs, 4, H, I + H) * 0.5
    w = rng.randn(max(layers - 1, 1), dirs, 4, H, dirs * H + H) * 0.5
    b = rng.randn(layers, dirs, 4, H) * 0.5
    zeros = np.zeros((layers, dirs, B, H))
    ref_vars = [V(a, True) for a in (x, w0, w, b)]
    ours_vars = [V(a, True) for a in (x, w0, w, b)]
    ref, _, _ = F.lstm(ref_vars[0], V(zeros), V(zeros), ref_vars[1],
                       ref_vars[2] if layers > 1 else None, ref_vars[3],
                       num_layers=layers, bidirectional=dirs == 2, training=True)
    ours = unrolled_lstm(ours_vars[0], ours_vars[1], ours_vars[2] if layers > 1 else None,
                         ours_vars[3], layers, dirs)
    grad = rng.randn(*ref.shape).astype(np.float32)
    for out, variables in ((ref, ref_vars), (ours, ours_vars)):
        for v in variables:
            v.grad.zero()
        out.forward()
        out.backward(grad)
    assert ours.shape == (T, B, dirs * H)
    assert np.allclose(ours.d, ref.d, atol=1e-5)
    for r, o in zip(ref_vars, ours_vars):
        if layers == 1 and r is ref_vars[2]:
            continue
        assert np.allclose(o.g, r.g, atol=1e-4), "gradients differ"


def test_max_bin_of_the_seed():
    assert bandwidth_to_max_bin(44100, 4096, 16000) == 1487


@pytest.mark.parametrize("cfg", [UmxConfig(), UmxConfig(hidden_size=32, max_bin=100, nb_channels=1),
                                 UmxConfig(hidden_size=24, unidirectional=True, nb_layers=2)])
def test_parameters_have_the_official_layout(cfg):
    with nn.parameter_scope("vocals"):
        OpenUnmix(cfg)(nn.Variable((3, 1, cfg.nb_channels, cfg.nb_output_bins)))
        params = {k: tuple(v.shape) for k, v in nn.get_parameters(grad_only=False).items()}
    assert params == parameter_shapes(cfg)
    # the published umxhq sizes
    if cfg == UmxConfig():
        assert params["fc1/affine/W"] == (2 * 1487, 512)
        assert params["lstm/lstm/weight_l0"] == (2, 4, 256, 768)
        assert params["fc3/affine/W"] == (512, 2 * 2049)
    assert config_from_shapes(params) == cfg


def test_unidirectional_is_another_network():
    bi, uni = UmxConfig(hidden_size=16, max_bin=30, nb_output_bins=65, n_fft=128), \
        UmxConfig(hidden_size=16, max_bin=30, nb_output_bins=65, n_fft=128, unidirectional=True)
    assert parameter_shapes(uni)["lstm/lstm/weight_l0"] == (1, 4, 16, 32)
    assert parameter_shapes(bi)["lstm/lstm/weight_l0"] == (2, 4, 8, 24)
    # a unidirectional network is causal: later frames do not change earlier outputs
    x = np.abs(np.random.RandomState(0).randn(12, 1, 2, 65)).astype(np.float32)
    outs = {}
    for name, cfg in (("uni", uni), ("bi", bi)):
        with nn.parameter_scope(name):
            model = OpenUnmix(cfg)
            full = model(V(x))
            head = model(V(x[:6]))
            F.sink(full, head).forward()
            outs[name] = np.abs(full.d[:6] - head.d).max()
    assert outs["uni"] < 1e-5 and outs["bi"] > 1e-4


def test_mono_model_downmixes():
    cfg = UmxConfig(hidden_size=8, max_bin=20, nb_output_bins=33, n_fft=64, nb_channels=1)
    x = np.abs(np.random.RandomState(0).randn(5, 2, 2, 33)).astype(np.float32)
    with nn.parameter_scope("m"):
        y = OpenUnmix(cfg)(V(x))
        y.forward()
        y_mean = OpenUnmix(cfg)(V(x.mean(axis=2, keepdims=True)))
        y_mean.forward()
    assert y.shape == (5, 2, 1, 33)
    assert np.allclose(y.d, y_mean.d, atol=1e-6)


def test_dropout_only_while_training():
    cfg = UmxConfig(hidden_size=16, max_bin=20, nb_output_bins=33, n_fft=64)
    x = V(np.abs(np.random.RandomState(0).randn(7, 4, 2, 33)))
    with nn.parameter_scope("m"):
        model = OpenUnmix(cfg)
        train = model(x, test=False)
        assert len(model.dropout_masks) == cfg.nb_layers - 1
        test = model(x, test=True)
    rng = np.random.RandomState(0)
    results = []
    for y in (train, train, train, test):
        model.sample_dropout([np.random.RandomState(rng.randint(1000)) for _ in range(4)])
        y.forward()
        results.append(y.d.copy())
    assert not np.allclose(results[0], results[1])  # new masks, new outputs
    kept = np.mean([m.d > 0 for m in model.dropout_masks])
    assert 0.5 < kept < 0.7  # p = 0.4
    # with all-ones masks the training LSTM is the inference LSTM (BN aside)
    for m in model.dropout_masks:
        m.d = 1.0
    train.forward()
    with nn.parameter_scope("m"):
        batch_stat_free = model(x, test=False)
    batch_stat_free.forward()
    assert np.allclose(train.d, batch_stat_free.d, atol=1e-6)


@pytest.mark.parametrize("cfgs", [
    # two targets stepping together, one of another architecture, a mono model
    {"vocals": UmxConfig(hidden_size=16, max_bin=20, nb_output_bins=33, n_fft=64),
     "drums": UmxConfig(hidden_size=16, max_bin=25, nb_output_bins=33, n_fft=64),
     "bass": UmxConfig(hidden_size=12, max_bin=20, nb_output_bins=33, n_fft=64,
                       unidirectional=True, nb_layers=2),
     "other": UmxConfig(hidden_size=16, max_bin=33, nb_output_bins=33, n_fft=64, nb_channels=1)},
    {"vocals": UmxConfig(hidden_size=8, max_bin=10, nb_output_bins=17, n_fft=32, nb_layers=1)},
])
def test_inference_network_equals_the_model(cfgs):
    rng = np.random.RandomState(1)
    nb_samples, nb_frames = 3, 23
    spec = rng.rand(nb_samples, nb_frames, 2, 33 if len(cfgs) > 1 else 17).astype(np.float32)
    for target, cfg in cfgs.items():
        with nn.parameter_scope(target):
            OpenUnmix(cfg, input_mean=rng.rand(cfg.nb_output_bins),
                      input_scale=rng.rand(cfg.nb_output_bins) + 0.5)(
                nn.Variable((2, 1, cfg.nb_channels, cfg.nb_output_bins)))
            for name, var in nn.get_parameters(grad_only=False).items():
                var.d = rng.uniform(0.5, 1.5, var.shape) if name.endswith("var") else \
                    rng.randn(*var.shape) * 0.5
    # chunks and blocks that do not divide the frames: padded steps and rows are dropped
    network = InferenceNetwork({t: (cfg, scope_parameters(t)) for t, cfg in cfgs.items()},
                               block_rows=16)
    got = dict(network.run(spec))
    assert sorted(got) == sorted(cfgs)
    for target, cfg in cfgs.items():
        with nn.parameter_scope(target):
            y = OpenUnmix(cfg)(V(spec.transpose(1, 0, 2, 3)), test=True)
        y.forward()
        ref = y.d.transpose(1, 0, 2, 3)  # (frames, samples, ...) -> (samples, frames, ...)
        assert got[target].shape == ref.shape == (nb_samples, nb_frames, cfg.nb_channels,
                                                  spec.shape[-1])
        assert np.abs(ref).max() > 0.1
        assert np.allclose(got[target], ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max()), target
