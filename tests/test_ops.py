"""ops.py: the context-chosen functions, against NNabla's own."""
import numpy as np
import nnabla as nn
import nnabla.functions as F

from ops import lstm_recurrence, multiply


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


def test_lstm_recurrence_equals_nnabla_functions():
    """The numpy recurrence (CPU) against the same LSTM step written in NNabla functions."""
    rng = np.random.RandomState(0)
    steps, dirs, batch, hid = 7, 2, 3, 4
    proj, w_rec = rng.randn(steps, dirs, batch, 4 * hid), rng.randn(dirs, 4 * hid, hid) * 0.5
    ours_in, ref_in = [V(proj), V(w_rec)], [V(proj), V(w_rec)]
    ours = lstm_recurrence(*ours_in)
    h = c = None
    outputs = []
    for t in range(steps):
        gates = ref_in[0][t] if h is None else ref_in[0][t] + F.batch_matmul(h, ref_in[1],
                                                                            transpose_b=True)
        i, f, g, o = F.split(F.reshape(gates, (dirs, batch, 4, hid)), axis=2)
        c = F.sigmoid(i) * F.tanh(g) if c is None else \
            F.sigmoid(f) * c + F.sigmoid(i) * F.tanh(g)
        h = F.sigmoid(o) * F.tanh(c)
        outputs.append(h)
    ref = F.stack(*outputs, axis=0)
    grad = rng.randn(*ref.shape).astype(np.float32)
    for out, inputs in ((ours, ours_in), (ref, ref_in)):
        for v in inputs:
            v.grad.zero()
        out.forward()
        out.backward(grad)
    assert np.allclose(ours.d, ref.d, atol=1e-5)
    for o, r in zip(ours_in, ref_in):
        assert np.allclose(o.g, r.g, atol=1e-4)


import pytest  # noqa: E402

from ops import dense  # noqa: E402


@pytest.mark.parametrize("shape,base_axis,bias", [((7, 5), 1, True), ((4, 3, 2, 6), 2, False),
                                                   ((2, 3, 40), 2, True)])
@pytest.mark.parametrize("need_grad", [(True, True, True), (False, True, True),
                                       (True, False, False)])
def test_dense_equals_affine(shape, base_axis, bias, need_grad):
    rng = np.random.RandomState(1)
    nb_in = int(np.prod(shape[base_axis:]))
    arrays = [rng.randn(*shape), rng.randn(nb_in, 9), rng.randn(9)]
    results = []
    for function in (dense, F.affine):
        inputs = [V(a, g) for a, g in zip(arrays, need_grad)]
        args = inputs if bias else inputs[:2]
        y = function(*args, base_axis=base_axis) if function is F.affine else \
            function(*args, base_axis=base_axis)
        # used twice: the second use accumulates into the same gradients
        out = F.sum(y * 2.0) + F.sum(function(*args, base_axis=base_axis) ** 2)
        for v in inputs:
            v.grad.fill(0.5)  # grads start non-zero: backward must accumulate, not overwrite
        out.forward()
        out.backward()
        results.append([y.d] + [v.g.copy() for v in inputs])
    assert results[0][0].shape == tuple(shape[:base_axis]) + (9,)
    for ours, theirs in zip(*results):
        assert np.allclose(ours, theirs, rtol=1e-5, atol=1e-4)


def test_istft_and_its_gradient_equal_nnabla_istft():
    from ops import istft
    rng = np.random.RandomState(3)
    real, imag = rng.randn(3, 129, 12), rng.randn(3, 129, 12)
    grad = rng.randn(3, 11 * 64).astype(np.float32)
    results = []
    for function in (lambda r, i: istft(r, i, 256, 64),
                     lambda r, i: F.istft(r, i, 256, 64, 256, window_type="hanning",
                                          center=True, pad_mode="constant")):
        inputs = [V(real), V(imag)]
        for v in inputs:
            v.grad.fill(0.5)
        y = function(*inputs)
        y.forward()
        y.backward(grad)
        results.append([y.d.copy()] + [v.g.copy() for v in inputs])
    assert results[0][0].shape == (3, 11 * 64)
    for ours, theirs in zip(*results):
        assert np.allclose(ours, theirs, rtol=1e-4, atol=1e-5 * np.abs(theirs).max())


@pytest.mark.parametrize("shape", [(5, 3, 4), (9, 2, 7)])
@pytest.mark.parametrize("accum", [False, True])
def test_batch_norm_equals_nnabla_batch_normalization(shape, accum):
    """Training mode: outputs, gradients of x, beta and gamma, and the updated running
    statistics, against F.batch_normalization (test mode is NNabla's own function)."""
    from ops import batch_norm
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
