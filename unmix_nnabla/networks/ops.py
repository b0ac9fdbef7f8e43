"""NNabla functions whose implementation is chosen in this one place: NNabla's own on GPU
contexts, numpy-backed `PythonFunction`s (`NumpyFunction`) on CPU contexts, where NNabla's CPU
kernels are slow (its matrix product is single-threaded Eigen, its elementwise functions slow on
large arrays).

- `multiply(a, b)`: the elementwise product of two Variables of one shape, with a gradient
  that holds where an input is zero (NNabla's `F.mul_n` divides the product by each input in
  its backward pass: NaN where a ReLU output or a gate is 0).
- `lstm_recurrence(proj, w_rec, reverse)`: an LSTM layer's recurrences, all steps in one
  compiled function (`kernels.py`); on GPU contexts unrolled into batch_matmul, sigmoid, tanh
  and mul2.
- `dense(x, W, b, activation)`: `F.affine`, then `F.relu` or `F.tanh` when asked (on CPU
  contexts in place after the product: NNabla's CPU relu and tanh took a third of the
  inference network's output layer).
- `batch_norm(...)`: `F.batch_normalization` over the last axis.
- `fused_lstm()`: whether the LSTM is NNabla's fused `F.lstm` (cuDNN's, on cudnn contexts) or
  the unrolled one (`model.unrolled_lstm`: CPU, and cuda contexts, where `F.lstm` would be
  NNabla's generic LSTM, which ignores dropout).

`numpy_kernels()` makes the choice: on a CPU context, unless `UMX_OPS=nnabla`, which makes
every choice (here, in `loss.py` and in the training graph's STFT) take the branch that GPU
contexts take, on any context: so that the test suite runs every line a GPU runs, on the CPU.
`UMX_LSTM=fused|unrolled` overrides the LSTM's choice alone. Each numpy function is tested equal
to NNabla's own in values and gradients (tests/test_ops.py).
"""
import os

import nnabla as nn
import nnabla.functions as F
import numpy as np
from nnabla.function import PythonFunction


def on_cpu():
    """Whether the current default context computes on the CPU."""
    return nn.get_current_context().backend[0].split(":")[0] == "cpu"


def numpy_kernels():
    """Whether the project's numpy functions run (CPU contexts), rather than NNabla's own (GPU
    contexts, or any context with UMX_OPS=nnabla)."""
    choice = os.environ.get("UMX_OPS", "")
    if choice not in ("", "numpy", "nnabla"):
        raise ValueError("UMX_OPS must be 'numpy' or 'nnabla', not %r" % choice)
    return on_cpu() and choice != "nnabla"


def fused_lstm():
    """Whether the LSTM runs as NNabla's fused `F.lstm`: on cudnn contexts (cuDNN's LSTM, with
    dropout), and with UMX_OPS=nnabla (as a cudnn context would). UMX_LSTM=fused or =unrolled
    overrides the choice (checks)."""
    choice = os.environ.get("UMX_LSTM", "")
    if choice not in ("", "fused", "unrolled"):
        raise ValueError("UMX_LSTM must be 'fused' or 'unrolled', not %r" % choice)
    if choice:
        return choice == "fused"
    backend = nn.get_current_context().backend[0].split(":")[0]
    return backend == "cudnn" or (backend == "cpu" and not numpy_kernels())


class NumpyFunction(PythonFunction):
    """A function computed with numpy, forward and backward (accumulating gradients as NNabla
    functions must). Keyword arguments are its `args`; the name is the class's (without its
    leading underscore); one output, of `output_shape(inputs)`. A Python function costs more
    per call than an NNabla function: these serve large arrays or replace many small
    functions at once."""

    def __init__(self, **arguments):
        super().__init__(nn.get_current_context())
        self.arguments = arguments
        vars(self).update(arguments)

    @property
    def name(self):
        return type(self).__name__.lstrip("_")

    @property
    def args(self):
        return dict(self.arguments)

    def min_outputs(self):
        return 1

    def output_shape(self, inputs):
        return inputs[0].shape

    def setup_impl(self, inputs, outputs):
        outputs[0].reset_shape(tuple(self.output_shape(inputs)), True)

    def grad_depends_output_data(self, i, o):
        return False

    def grad_depends_input_data(self, i, j):
        return True


def set_grad(variable, value, accumulate):
    if accumulate:
        grad = variable.grad.get_data("rw")
        grad += value
    else:
        variable.grad.get_data("w")[...] = value


class _Multiply(NumpyFunction):
    """y = a * b (one shape), forward and backward in numpy."""

    def output_shape(self, inputs):
        if inputs[0].shape != inputs[1].shape:
            raise ValueError("multiply: shapes %s and %s differ" % (inputs[0].shape,
                                                                    inputs[1].shape))
        return inputs[0].shape

    def forward_impl(self, inputs, outputs):
        np.multiply(inputs[0].data.get_data("r"), inputs[1].data.get_data("r"),
                    out=outputs[0].data.get_data("w"))

    def backward_impl(self, inputs, outputs, propagate_down, accum):
        dy = outputs[0].grad.get_data("r")
        for i, other in ((0, 1), (1, 0)):
            if not propagate_down[i]:
                continue
            set_grad(inputs[i], dy * inputs[other].data.get_data("r"), accum[i])


def multiply(a, b):
    """a * b [one shape], with a gradient that is right where an input is zero."""
    if numpy_kernels():
        return _Multiply()(a, b)
    return F.mul2(a, b)


class _LstmRecurrence(NumpyFunction):
    """The recurrences of an LSTM layer, all steps in one function, compiled (`kernels.py`):
    proj [shape=(T, B, G, 4H)] (input projections with bias, gates in NNabla's order i, f, g,
    o), w_rec [shape=(G, 4H, H)] → hs [shape=(T, B, G, H)], from zero states; each group g
    (a direction, of a target) runs backward in time when reverse[g]. With `keep`, the
    activations of the last forward pass are kept for the backward pass (training graphs run
    forward, then backward)."""

    def output_shape(self, inputs):
        proj, w_rec = inputs
        steps, batch, groups, width = proj.shape
        if w_rec.shape != (groups, width, width // 4) or width % 4 or \
                len(self.reverse) != groups:
            raise ValueError("lstm_recurrence: projections %s do not fit weights %s"
                             % (proj.shape, w_rec.shape))
        return (steps, batch, groups, width // 4)

    def forward_impl(self, inputs, outputs):
        from unmix_nnabla.base.kernels import lstm_forward  # deferred: numba, seconds
        hs, self.kept = lstm_forward(inputs[0].data.get_data("r"), inputs[1].data.get_data("r"),
                                     self.reverse, self.keep)
        outputs[0].data.get_data("w")[...] = hs
        self.hs = hs if self.keep else None

    def backward_impl(self, inputs, outputs, propagate_down, accum):
        from unmix_nnabla.base.kernels import lstm_backward  # deferred: numba, seconds
        if not self.keep:
            raise RuntimeError("lstm_recurrence(keep=False) has no backward pass")
        dproj, dw = lstm_backward(outputs[0].grad.get_data("r"), self.hs, self.kept,
                                  inputs[1].data.get_data("r"), self.reverse)
        if propagate_down[0]:
            set_grad(inputs[0], dproj, accum[0])
        if propagate_down[1]:
            set_grad(inputs[1], dw, accum[1])

    def grad_depends_input_data(self, i, j):
        return j == 1


def lstm_recurrence(proj, w_rec, reverse, keep=True):
    """LSTM recurrences from zero states: proj [shape=(T, B, G, 4H)] (input projections with
    bias, gates i, f, g, o), w_rec [shape=(G, 4H, H)], reverse (G bools: the groups that run
    from the last frame to the first) → hs [shape=(T, B, G, H)]. keep=False: for inference
    only (no backward pass, no activations kept)."""
    reverse = tuple(bool(r) for r in reverse)
    if numpy_kernels():
        return _LstmRecurrence(keep=keep, reverse=reverse)(proj, w_rec)
    steps, batch, groups, width = proj.shape
    hid = width // 4
    # each group in its own time order: (T, B, G, 4H) -> (T, G, B, 4H)
    ordered = [F.reshape(proj[:, :, g:g + 1], (steps, batch, width)) for g in range(groups)]
    ordered = [F.flip(p, axes=[0]) if r else p for p, r in zip(ordered, reverse)]
    gates_all = F.stack(*ordered, axis=1)
    h, c, outputs = None, None, []
    for gates in (F.split(gates_all, axis=0) if steps > 1 else
                  [F.reshape(gates_all, gates_all.shape[1:])]):
        if h is not None:
            gates = gates + F.batch_matmul(h, w_rec, transpose_b=True)
        i, f, g, o = F.split(F.reshape(gates, (groups, batch, 4, hid)), axis=2)
        i, g, o = F.sigmoid(i), F.tanh(g), F.sigmoid(o)
        c = F.mul2(i, g) if c is None else F.mul2(F.sigmoid(f), c) + F.mul2(i, g)
        h = F.mul2(o, F.tanh(c))
        outputs.append(h)
    hs = F.stack(*outputs, axis=0)  # (T, G, B, H), each group in its own time order
    per_group = [F.reshape(hs[:, g:g + 1], (steps, batch, hid)) for g in range(groups)]
    per_group = [F.flip(x, axes=[0]) if r else x for x, r in zip(per_group, reverse)]
    return F.stack(*per_group, axis=2)  # -> (T, B, G, H)


_ACTIVATIONS = {None: None, "relu": F.relu, "tanh": F.tanh}


class _Dense(NumpyFunction):
    """y = act(x @ W (+ b)): x [shape=(*lead, nb_in...)] flattened from `base_axis` on, W
    [shape=(nb_in, nb_out)], b [shape=(nb_out,)] → y [shape=(*lead, nb_out)], as F.affine
    followed by `activation` (None, 'relu' or 'tanh')."""

    def output_shape(self, inputs):
        x, w = inputs[0], inputs[1]
        nb_in = int(np.prod(x.shape[self.base_axis:]))
        if w.shape[0] != nb_in or len(w.shape) != 2:
            raise ValueError("dense: input %s does not fit weights %s" % (x.shape, w.shape))
        if len(inputs) > 2 and inputs[2].shape != (w.shape[1],):
            raise ValueError("dense: bias %s does not fit weights %s" % (inputs[2].shape, w.shape))
        return tuple(x.shape[:self.base_axis]) + (w.shape[1],)

    def _flat(self, array, width):
        return array.reshape(-1, width)

    def forward_impl(self, inputs, outputs):
        w = inputs[1].data.get_data("r")
        x = self._flat(inputs[0].data.get_data("r"), w.shape[0])
        y = self._flat(outputs[0].data.get_data("w"), w.shape[1])
        np.matmul(x, w, out=y)
        if len(inputs) > 2:
            y += inputs[2].data.get_data("r")
        if self.activation == "relu":
            np.maximum(y, 0, out=y)
        elif self.activation == "tanh":
            np.tanh(y, out=y)

    def backward_impl(self, inputs, outputs, propagate_down, accum):
        w = inputs[1].data.get_data("r")
        dy = self._flat(outputs[0].grad.get_data("r"), w.shape[1])
        if self.activation:  # through the activation, from its output y
            y = self._flat(outputs[0].data.get_data("r"), w.shape[1])
            dy = dy * (y > 0) if self.activation == "relu" else dy * (1 - y * y)
        if propagate_down[0]:
            if accum[0]:
                dx = self._flat(inputs[0].grad.get_data("rw"), w.shape[0])
                dx += dy @ w.T
            else:
                np.matmul(dy, w.T, out=self._flat(inputs[0].grad.get_data("w"), w.shape[0]))
        if propagate_down[1]:
            x = self._flat(inputs[0].data.get_data("r"), w.shape[0])
            if accum[1]:
                dw = inputs[1].grad.get_data("rw")
                dw += x.T @ dy
            else:
                np.matmul(x.T, dy, out=inputs[1].grad.get_data("w"))
        if len(inputs) > 2 and propagate_down[2]:
            set_grad(inputs[2], dy.sum(axis=0), accum[2])

    def grad_depends_input_data(self, i, j):
        return i != 2 and j != 2 and i != j

    def grad_depends_output_data(self, i, o):
        return self.activation is not None


def dense(x, w, b=None, base_axis=1, activation=None):
    """activation(x @ W (+ b)) over the axes of x from `base_axis` on, as `F.affine` then
    `F.relu` or `F.tanh` (activation 'relu' or 'tanh'; None: the product alone)."""
    if activation not in _ACTIVATIONS:
        raise ValueError("dense: activation must be 'relu', 'tanh' or None, not %r"
                         % (activation,))
    if numpy_kernels():
        function = _Dense(base_axis=base_axis, activation=activation)
        return function(x, w) if b is None else function(x, w, b)
    y = F.affine(x, w, b, base_axis=base_axis)
    return _ACTIVATIONS[activation](y) if activation else y


class _BatchNorm(NumpyFunction):
    """(x, beta, gamma, mean, var) → y: batch normalization with the batch's statistics over
    all axes but the last, as F.batch_normalization(axes=[last], batch_stat=True): beta,
    gamma [shape=(1, ..., C)]; the running mean and var are updated in place (var with the
    unbiased batch variance, as NNabla does)."""

    def _normalized(self, inputs):
        """→ x - mean [shape=(n, C)], 1 / std [shape=(C,)], batch mean and variance."""
        width = inputs[0].shape[-1]
        x = inputs[0].data.get_data("r").reshape(-1, width)
        mean = x.mean(axis=0)
        centered = x - mean
        variance = np.einsum("nc,nc->c", centered, centered) / x.shape[0]
        return centered, 1 / np.sqrt(variance + self.eps), mean, variance

    def forward_impl(self, inputs, outputs):
        centered, inv_std, mean, variance = self._normalized(inputs)
        width = centered.shape[1]
        beta, gamma = (inputs[k].data.get_data("r").reshape(width) for k in (1, 2))
        y = outputs[0].data.get_data("w").reshape(-1, width)
        np.multiply(centered, gamma * inv_std, out=y)
        y += beta
        n = centered.shape[0]
        for k, batch_value in ((3, mean), (4, variance * n / max(n - 1, 1))):
            running = inputs[k].data.get_data("rw").reshape(width)
            running *= self.decay_rate
            running += (1 - self.decay_rate) * batch_value

    def backward_impl(self, inputs, outputs, propagate_down, accum):
        normalized, inv_std, _, _ = self._normalized(inputs)
        normalized *= inv_std  # x̂
        n, width = normalized.shape
        dy = outputs[0].grad.get_data("r").reshape(-1, width)
        d_beta = dy.sum(axis=0)
        d_gamma = np.einsum("nc,nc->c", dy, normalized)
        if propagate_down[0]:
            gamma = inputs[2].data.get_data("r").reshape(width)
            # dx = γ / σ (dy - mean(dy) - x̂ mean(dy x̂)), in the x̂ buffer
            normalized *= d_gamma / n
            normalized += d_beta / n
            np.subtract(dy, normalized, out=normalized)
            normalized *= gamma * inv_std
            set_grad(inputs[0], normalized.reshape(inputs[0].shape), accum[0])
        for k, grad in ((1, d_beta), (2, d_gamma)):
            if propagate_down[k]:
                set_grad(inputs[k], grad.reshape(inputs[k].shape), accum[k])

    def grad_depends_input_data(self, i, j):
        return j == 0 or (i == 0 and j == 2)


def batch_norm(x, beta, gamma, mean, var, batch_stat, decay_rate=0.9, eps=1e-5):
    """F.batch_normalization over the last axis of x: with the batch's statistics (updating
    the running mean and var) when batch_stat, else with the running ones."""
    if batch_stat and numpy_kernels():
        return _BatchNorm(decay_rate=decay_rate, eps=eps)(x, beta, gamma, mean, var)
    return F.batch_normalization(x, beta, gamma, mean, var, axes=[len(x.shape) - 1],
                                 decay_rate=decay_rate, eps=eps, batch_stat=batch_stat)
