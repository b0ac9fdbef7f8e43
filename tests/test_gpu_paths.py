"""GPU paths, proven on the CPU: the fused LSTM (NNabla's F.lstm, cuDNN's on GPU contexts)
against the unrolled one, in UMX's and X-UMX's training graphs."""
import numpy as np
import nnabla as nn
import pytest

from conftest import import_script
from layout import UmxConfig
from vocabulary import XUMX_BRANCHES

train_module = import_script("train")


@pytest.mark.parametrize("xumx", [False, True])
def test_fused_lstm_graph_equals_unrolled(xumx, monkeypatch):
    """Loss and gradients of the training graph, dropout off (F.lstm's on GPUs draws its
    own masks), and outputs in test mode, with the fused and the unrolled LSTM."""
    import model
    cfg = UmxConfig(hidden_size=8, max_bin=40, nb_output_bins=129, n_fft=256, n_hop=128,
                    nb_layers=2, xumx_branches=XUMX_BRANCHES if xumx else ())
    rng = np.random.RandomState(0)
    samples = 2048
    mixtures = rng.randn(2, samples, 2).astype(np.float32) * 0.3
    targets = np.tile(mixtures * 0.25, (1, 1, 4 if xumx else 1))
    scope = "x-umx" if xumx else "vocals"
    results = []
    for choice in ("unrolled", "fused"):
        monkeypatch.setenv("UMX_LSTM", choice)
        graph = train_module.build_training_graph(cfg, scope, 2, samples, mcoef=1.0,
                                                  dropout=0.0)
        with nn.parameter_scope(scope):
            params = nn.get_parameters()
        for p in params.values():
            p.grad.zero()
        graph.feed(graph, cfg, mixtures, targets)
        graph.loss.forward()
        graph.loss.backward()
        results.append((float(graph.loss.d), {k: p.g.copy() for k, p in params.items()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    assert grads_a.keys() == grads_b.keys() and any(np.abs(g).max() > 0 for g in grads_a.values())
    for name in grads_a:
        assert np.allclose(grads_a[name], grads_b[name], rtol=1e-3,
                           atol=1e-5 * max(1.0, np.abs(grads_a[name]).max())), name
    # test mode: the network's outputs
    outputs = []
    spec = nn.Variable.from_numpy_array(np.abs(rng.randn(9, 2, 2, 129)).astype(np.float32))
    for choice in ("unrolled", "fused"):
        monkeypatch.setenv("UMX_LSTM", choice)
        with nn.parameter_scope(scope):
            net = model.CrossNet(cfg) if xumx else model.OpenUnmix(cfg)
            out = net(spec, test=True)
        out = out["vocals"] if xumx else out
        out.forward()
        outputs.append(out.d.copy())
    assert np.allclose(outputs[0], outputs[1], rtol=1e-4, atol=1e-6)
