"""ops.py: the context-chosen functions, against NNabla's own."""
import numpy as np
import pytest
import nnabla as nn
import nnabla.functions as F

from unmix_nnabla.networks.ops import lstm_recurrence, multiply


def V(a, need_grad=True):
    return nn.Variable.from_numpy_array(np.asarray(a, np.float32), need_grad=need_grad)


def test_multiply_has_the_right_gradient_where_inputs_are_zero():
    a, b = V([0., 1., 2., 0.]), V([3., 0., 4., 0.])
    y = F.sum(multiply(a, b) * 2.0 + multiply(a, b))  # two uses: gradients accumulate
    for v in (a, b):
        v.grad.zero()
    y.forward()
    y.backward()
    assert np.array_equal(a.g, 3 * b.d) and np.array_equal(b.g, 3 * a.d)
    # why: NNabla's F.mul_n divides by its inputs in the backward pass
    c = F.sum(F.mul_n(a, b))
    a.grad.zero()
    c.forward()
    c.backward()
    assert np.isnan(a.g).any()


@pytest.mark.parametrize("reverse", [(False, True), (True, False, False)])
def test_lstm_recurrence_equals_nnabla_functions(reverse, monkeypatch):
    """The compiled recurrence (CPU) against the same LSTM steps in NNabla's functions (the
    GPU's branch, UMX_OPS=nnabla), groups running forward and backward in time; gradients
    accumulate."""
    rng = np.random.RandomState(len(reverse))
    steps, groups, batch, hid = 7, len(reverse), 3, 4
    proj, w_rec = rng.randn(steps, batch, groups, 4 * hid), rng.randn(groups, 4 * hid, hid) * 0.5
    grad = rng.randn(steps, batch, groups, hid).astype(np.float32)
    results = []
    for ops in ("numpy", "nnabla"):
        monkeypatch.setenv("UMX_OPS", ops)
        inputs = [V(proj, need_grad=True), V(w_rec, need_grad=True)]
        out = lstm_recurrence(*inputs, reverse=reverse)
        for v in inputs:
            v.grad.fill(0.5)
        out.forward()
        out.backward(grad)
        results.append([out.d.copy()] + [v.g.copy() for v in inputs])
    for ours, ref in zip(*results):
        assert np.allclose(ours, ref, rtol=1e-4, atol=1e-5)
    # the first step of a reversed group is the last frame: its output there is h_1
    monkeypatch.setenv("UMX_OPS", "numpy")
    first = steps - 1 if reverse[0] else 0
    alone = lstm_recurrence(V(proj[first:first + 1, :, :1]), V(w_rec[:1]), reverse=reverse[:1])
    alone.forward()
    assert np.allclose(results[0][0][first, :, 0], alone.d[0, :, 0], atol=1e-6)


import pytest  # noqa: E402

from unmix_nnabla.networks.ops import dense  # noqa: E402


@pytest.mark.parametrize("shape,base_axis,bias", [((7, 5), 1, True), ((4, 3, 2, 6), 2, False),
                                                   ((2, 3, 40), 2, True)])
@pytest.mark.parametrize("need_grad", [(True, True, True), (False, True, True),
                                       (True, False, False)])
@pytest.mark.parametrize("activation", [None, "relu", "tanh"])
def test_dense_equals_affine(shape, base_axis, bias, need_grad, activation):
    rng = np.random.RandomState(1)
    nb_in = int(np.prod(shape[base_axis:]))
    arrays = [rng.randn(*shape), rng.randn(nb_in, 9), rng.randn(9)]
    results = []

    def affine(*args, base_axis):  # NNabla's own, then the activation's function
        y = F.affine(*args, base_axis=base_axis)
        return {None: lambda v: v, "relu": F.relu, "tanh": F.tanh}[activation](y)

    def ours(*args, base_axis):
        return dense(*args, base_axis=base_axis, activation=activation)

    for function in (ours, affine):
        inputs = [V(a, g) for a, g in zip(arrays, need_grad)]
        args = inputs if bias else inputs[:2]
        y = function(*args, base_axis=base_axis)
        # used twice: the second use accumulates into the same gradients
        out = F.sum(y * 2.0) + F.sum(function(*args, base_axis=base_axis) ** 2)
        for v in inputs:
            v.grad.fill(0.5)  # grads start non-zero: backward must accumulate, not overwrite
        out.forward()
        out.backward()
        results.append([y.d] + [v.g.copy() for v in inputs])
    assert results[0][0].shape == tuple(shape[:base_axis]) + (9,)
    if activation == "relu":
        assert (results[0][0] == 0).any() and (results[0][0] > 0).any()
    for mine, theirs in zip(*results):
        assert np.allclose(mine, theirs, rtol=1e-5, atol=1e-4)


def test_dense_refuses_an_unknown_activation():
    with pytest.raises(ValueError, match="activation"):
        dense(V(np.ones((2, 3))), V(np.ones((3, 4))), activation="gelu")


def test_istft_and_its_adjoint_equal_nnabla_istft():
    """The numpy ISTFT (`spectral.istft`) and its gradient (`spectral.istft_adjoint`, what
    training's CPU functions run) against NNabla's F.istft (`spectral.nnabla_istft`, GPU
    contexts), on random spectra, Nyquist bin included."""
    from unmix_nnabla.audio.spectral import istft, istft_adjoint, nnabla_istft
    rng = np.random.RandomState(3)
    real, imag = rng.randn(3, 129, 12), rng.randn(3, 129, 12)
    grad = rng.randn(3, 11 * 64).astype(np.float32)
    inputs = [V(real), V(imag)]
    y = nnabla_istft(*inputs, 256, 64)
    y.forward()
    y.backward(grad)
    # (rows, bins, frames) <-> (rows, frames, bins)
    ours = istft((real + 1j * imag).transpose(0, 2, 1), 11 * 64, 256, 64)
    ours_grad = istft_adjoint(grad, 12, 256, 64).transpose(0, 2, 1)
    assert ours.shape == y.shape == (3, 11 * 64)
    for mine, theirs in ((ours, y.d), (ours_grad.real, inputs[0].g), (ours_grad.imag, inputs[1].g)):
        assert np.allclose(mine, theirs, rtol=1e-4, atol=1e-5 * np.abs(theirs).max())


@pytest.mark.parametrize("shape", [(5, 3, 4), (9, 2, 7)])
@pytest.mark.parametrize("accum", [False, True])
def test_batch_norm_equals_nnabla_batch_normalization(shape, accum):
    """Training mode: outputs, gradients of x, beta and gamma, and the updated running
    statistics, against F.batch_normalization (test mode is NNabla's own function)."""
    from unmix_nnabla.networks.ops import batch_norm
    rng = np.random.RandomState(len(shape) + shape[0])
    width = shape[-1]
    x, grad = rng.randn(*shape) * 3 + 1, rng.randn(*shape)
    params = [rng.randn(1, 1, width), rng.rand(1, 1, width) + 0.5,   # beta, gamma
              rng.randn(1, 1, width), rng.rand(1, 1, width) + 0.5]   # running mean, var
    results = []
    for ours in (True, False):
        inputs = [V(x)] + [V(p, need_grad=k < 2) for k, p in enumerate(params)]
        for v in inputs[:3]:
            v.grad.fill(0.5 if accum else 0.0)
        if ours:
            y = batch_norm(*inputs, batch_stat=True)
        else:
            y = F.batch_normalization(*inputs, axes=[2], decay_rate=0.9, eps=1e-5,
                                      batch_stat=True)
        y.forward()
        y.backward(grad.astype(np.float32), clear_buffer=False)  # leaves accumulate
        results.append([y.d.copy()] + [v.g.copy() for v in inputs[:3]] +
                       [v.d.copy() for v in inputs[3:]])
    for k, (a, b) in enumerate(zip(*results)):
        assert np.allclose(a, b, rtol=1e-4, atol=1e-5), k
