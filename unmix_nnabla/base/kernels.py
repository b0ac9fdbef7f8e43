"""Compiled loops (numba): every loop of the project that NNabla's CPU kernels and numpy run
slowly, in this one module: the LSTM recurrence, forward and backward, the ISTFT's overlap-add
and the Wiener filter's per-bin loops.

An LSTM layer's recurrence cannot be batched over time: each step's gates need the previous
step's output. Per step: the recurrent product h @ W_rec (one small matrix product per
direction, `small_matmul`), then the gates' elementwise work in compiled loops that the compiler
vectorizes: the sigmoids and tanh through `sigmoid`, exp by a polynomial and squarings in
float64 (relative error < 2e-8, far below float32's rounding; numba's own exp and tanh are
scalar calls here, and numpy's take 3 to 7 ns an element). The backward pass needs no
transcendental function: the forward pass keeps the activations and tanh of the cells.

LSTM layout: [shape=(nb_frames, nb_samples, groups, 4H)], the gates in NNabla's order (i, f, g,
o); a group is an independent recurrence (a direction of a layer, of one target), each running
forward or backward in time (`reverse`), so that no direction is ever flipped in memory.

Two rules hold for every loop here:
- Side by side: numba's `workqueue` threads (the layer that survives the separation's fork)
  serve one launch at a time, and a second thread's launch aborts the process. Every parallel
  loop is therefore launched through `parallel_loop`, which holds one lock for the launch:
  threads take turns (the Wiener filter's stages, a warm-up beside the work), never abort.
- Compiled once per machine: numba's cache lives under the user's cache folder
  ($NUMBA_CACHE_DIR when set, else $XDG_CACHE_HOME or ~/.cache, `open-unmix-nnabla/numba`),
  keyed by the module's name and this file's content, so that every clone and install of the
  same code shares it.
"""
import functools
import hashlib
import os
import threading

import numba
import numpy as np
from numba.core import caching

# numba's threads from its own pool ('workqueue'): GNU OpenMP's, numba's default where it is
# installed, aborts a process forked after it started (the separation's worker processes).
# Set before any parallel loop runs; every parallel loop is in this module.
numba.config.THREADING_LAYER = "workqueue"


def cache_folder():
    """Where numba keeps this module's compiled loops (None: $NUMBA_CACHE_DIR, numba's own)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "open-unmix-nnabla", "numba")


class SharedCacheLocator(caching.UserProvidedCacheLocator):
    """numba's cache of a file's loops in `cache_folder()`, in a folder named by the module's
    name and the file's content (numba's own names it by the file's path: each clone compiled
    anew). The module's name belongs to the key: the cached code names it, and the same file
    imported under another name cannot use it."""

    def __init__(self, py_func, py_file):
        super().__init__(py_func, py_file)
        with open(py_file, "rb") as source:
            digest = hashlib.sha256(source.read()).hexdigest()[:16]
        self._cache_path = os.path.join(cache_folder(), "%s-%s" % (py_func.__module__, digest))

    @classmethod
    def from_function(cls, py_func, py_file):
        """The locator, or None where its folder could not be written (numba then tries its
        others). The folder itself is made when numba first saves into it (its save calls
        `ensure_cache_path`): a process that compiles nothing leaves nothing behind."""
        if not os.path.exists(py_file):
            return None
        self = cls(py_func, py_file)
        existing = self._cache_path
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        return self if os.access(existing, os.W_OK | os.X_OK) else None


# numba's own locators after ours, as numba orders them
_LOCATORS = ",".join([__name__ + ".SharedCacheLocator"] + [
    c.__name__ for c in caching.CacheImpl._locator_classes])


def compiled(**options):
    """numba.njit(cache=True, **options), cached in `cache_folder()`."""
    def wrap(function):
        before = numba.config.CACHE_LOCATOR_CLASSES
        # numba chooses a function's cache folder when it is decorated
        numba.config.CACHE_LOCATOR_CLASSES = _LOCATORS if cache_folder() else before
        try:
            return numba.njit(cache=True, **options)(function)
        finally:
            numba.config.CACHE_LOCATOR_CLASSES = before
    return wrap


_LAUNCH = threading.RLock()


def _new_launch_lock():
    # a child forked while another thread held the lock must not inherit it held
    global _LAUNCH
    _LAUNCH = threading.RLock()


os.register_at_fork(after_in_child=_new_launch_lock)


def parallel_loop(**options):
    """A compiled loop with numba's parallel ranges, launched by one thread at a time (see the
    module's doc); `.kernel` is the compiled function itself."""
    def wrap(function):
        kernel = compiled(parallel=True, **options)(function)

        @functools.wraps(function)
        def launch(*args):
            with _LAUNCH:
                return kernel(*args)
        launch.kernel = kernel
        return launch
    return wrap


# vectorizable loops: no Python error checks (a division never raises), fast math. The loops
# are module-level functions so that numba's cache serves every later process: functions
# defined inside a function are compiled anew in each process.
_FAST = dict(fastmath=True, error_model="numpy")


@compiled(inline="always", **_FAST)
def sigmoid(x):
    """1 / (1 + exp(-x)) in float64, exp(y) = (Taylor_6(y / 256)) ** 256."""
    x = 40.0 if x > 40.0 else (-40.0 if x < -40.0 else x)
    y = x * (-1.0 / 256.0)
    e = 1.0 + y * (1.0 + y * (0.5 + y * (1.0 / 6.0 + y * (1.0 / 24.0 + y * (
        1.0 / 120.0 + y * (1.0 / 720.0))))))
    e = e * e
    e = e * e
    e = e * e
    e = e * e
    e = e * e
    e = e * e
    e = e * e
    e = e * e
    return 1.0 / (1.0 + e)

@compiled(**_FAST)
def small_matmul(a, b, out):
    """out = a @ b, for a [shape=(m, k)] of few rows (a recurrence step's samples), b [shape=(k,
    n)]: four rows of b at a time are read once for all of a's rows, and each output row is
    updated once per four. BLAS's general kernel repacks b on every call: measured here 4.5x
    slower at m = 4 (a separation's windows) and 1.5x at m = 16 (a training batch)."""
    m, k = a.shape
    n = b.shape[1]
    out[:] = 0.0
    for p in range(0, k - 3, 4):
        r0, r1, r2, r3 = b[p], b[p + 1], b[p + 2], b[p + 3]
        for i in range(m):
            s0, s1, s2, s3 = a[i, p], a[i, p + 1], a[i, p + 2], a[i, p + 3]
            o = out[i]
            for j in range(n):
                o[j] += (s0 * r0[j] + s1 * r1[j]) + (s2 * r2[j] + s3 * r3[j])
    for p in range(k - k % 4, k):
        for i in range(m):
            s = a[i, p]
            for j in range(n):
                out[i, j] += s * b[p, j]


@compiled(**_FAST)
def activate(pre, proj, hid, c, acts, tanh_c, h):
    """One step of one group: pre [shape=(B, 4H)] (h_prev @ W_rec^T), proj [shape=(B,
    4H)] (this frame's input projections) → the activations acts (i, f, z, o), the cell
    c (updated in place) and its tanh, the output h [shape=(B, H)]."""
    nb_samples = pre.shape[0]
    for b in range(nb_samples):
        for k in range(2 * hid):  # i, f
            acts[b, k] = sigmoid(np.float64(pre[b, k]) + np.float64(proj[b, k]))
        for k in range(2 * hid, 3 * hid):  # z = tanh(x) = 2 sigmoid(2x) - 1
            acts[b, k] = 2.0 * sigmoid(2.0 * (np.float64(pre[b, k]) +
                                              np.float64(proj[b, k]))) - 1.0
        for k in range(3 * hid, 4 * hid):  # o
            acts[b, k] = sigmoid(np.float64(pre[b, k]) + np.float64(proj[b, k]))
        for k in range(hid):
            cell = acts[b, hid + k] * c[b, k] + acts[b, k] * acts[b, 2 * hid + k]
            c[b, k] = cell
            t = 2.0 * sigmoid(2.0 * np.float64(cell)) - 1.0
            tanh_c[b, k] = t
            h[b, k] = acts[b, 3 * hid + k] * t

@parallel_loop()
def forward(proj, w_t, reverse, hs, acts, cells, tanh_cells, keep):
    """The recurrence of every group from zero states. proj [shape=(T, B, G, 4H)] (input
    projections with bias), w_t [shape=(G, H, 4H)] (recurrent weights, transposed),
    reverse [shape=(G,)]: the groups that run from the last frame to the first. Writes hs
    [shape=(T, B, G, H)]; with keep, the activations acts [shape=(T, B, G, 4H)], the
    cells and their tanh [shape=(T, B, G, H)] for the backward pass. The groups run in
    parallel."""
    steps, nb_samples, groups, width = proj.shape
    hid = width // 4
    h = np.zeros((groups, nb_samples, hid), np.float32)
    c = np.zeros((groups, nb_samples, hid), np.float32)
    pre = np.zeros((groups, nb_samples, width), np.float32)
    act = np.empty((groups, nb_samples, width), np.float32)
    tanh_c = np.empty((groups, nb_samples, hid), np.float32)
    # the groups are independent recurrences: one parallel launch for all their steps (a
    # launch per step cost more than the step itself)
    for g in numba.prange(groups):
        for s in range(steps):
            t = steps - 1 - s if reverse[g] else s
            if s > 0:
                small_matmul(h[g], w_t[g], pre[g])
            activate(pre[g], proj[t, :, g, :], hid, c[g], act[g], tanh_c[g], h[g])
            hs[t, :, g, :] = h[g]
            if keep:
                acts[t, :, g, :] = act[g]
                cells[t, :, g, :] = c[g]
                tanh_cells[t, :, g, :] = tanh_c[g]

@compiled(**_FAST)
def gate_gradients(dhs, dh_next, dc_next, acts, tanh_c, c_prev, first, da):
    """One step of one group, backward: the output's gradient dhs + dh_next and the
    cell's dc_next [shape=(B, H)], the step's activations [shape=(B, 4H)], tanh of its
    cell and the previous cell → da [shape=(B, 4H)], the gradient of the gates'
    pre-activations; dc_next becomes the previous step's."""
    nb_samples, hid = dh_next.shape
    for b in range(nb_samples):
        for k in range(hid):
            i = acts[b, k]
            f = acts[b, hid + k]
            z = acts[b, 2 * hid + k]
            o = acts[b, 3 * hid + k]
            t = tanh_c[b, k]
            prev = 0.0 if first else c_prev[b, k]
            dh = dhs[b, k] + dh_next[b, k]
            dc = dc_next[b, k] + dh * o * (1.0 - t * t)
            da[b, k] = dc * z * i * (1.0 - i)
            da[b, hid + k] = dc * prev * f * (1.0 - f)
            da[b, 2 * hid + k] = dc * i * (1.0 - z * z)
            da[b, 3 * hid + k] = dh * t * o * (1.0 - o)
            dc_next[b, k] = dc * f

@parallel_loop()
def backward(dhs, acts, cells, tanh_cells, w, reverse, dproj):
    """Backpropagation through time of `forward`: dhs [shape=(T, B, G, H)] (the outputs'
    gradient), what forward kept, w [shape=(G, 4H, H)] (recurrent weights) → dproj
    [shape=(T, B, G, 4H)], the gradient of the input projections. The recurrent
    weights' gradient is one product per group afterwards (`recurrent_weight_grad`)."""
    steps, nb_samples, groups, hid = dhs.shape
    dh_next = np.zeros((groups, nb_samples, hid), np.float32)
    dc_next = np.zeros((groups, nb_samples, hid), np.float32)
    da = np.empty((groups, nb_samples, 4 * hid), np.float32)
    for g in numba.prange(groups):
        for s in range(steps - 1, -1, -1):
            t = steps - 1 - s if reverse[g] else s
            t_prev = t + 1 if reverse[g] else t - 1
            gate_gradients(dhs[t, :, g, :], dh_next[g], dc_next[g], acts[t, :, g, :],
                           tanh_cells[t, :, g, :], cells[t_prev, :, g, :] if s > 0
                           else cells[t, :, g, :], s == 0, da[g])
            dproj[t, :, g, :] = da[g]
            if s > 0:
                small_matmul(da[g], w[g], dh_next[g])


@compiled(**_FAST)
def overlap_add(frames, window, pending, offset, hop):
    """pending[r, offset + k hop + n] += frames[r, k, n] window[n]: an ISTFT's windowed
    frames [shape=(rows, nb_frames, n_fft)] added into its signal [shape=(rows, length)], in
    one pass (numpy's product, then the additions, made three)."""
    rows, nb_frames, n_fft = frames.shape
    for r in range(rows):
        for k in range(nb_frames):
            out = pending[r, offset + k * hop: offset + k * hop + n_fft]
            frame = frames[r, k]
            for n in range(n_fft):
                out[n] += frame[n] * window[n]


# --------------------------------------------------------------------------------------
# the Wiener filter's per-bin loops (wiener.py): [shape=(nb_frames, nb_bins, nb_channels,
# nb_sources)] as norbert lays them out
# --------------------------------------------------------------------------------------

@parallel_loop(error_model="numpy")
def wiener_initial(v, x, softmask, eps, scale, out):
    nb_frames, nb_bins, nb_channels, nb_sources = out.shape
    mono_models = v.shape[2] == 1
    for t in numba.prange(nb_frames):
        for b in range(nb_bins):
            for c in range(nb_channels):
                cv = 0 if mono_models else c
                xc = x[t, b, c]
                if softmask:
                    total = eps
                    for j in range(nb_sources):
                        total += v[t, b, cv, j]
                    factor = xc * (scale / total)
                else:
                    # the mixture's phase as re / |x|, im / |x| (no complex division,
                    # no hypot call: a scalar library call per bin made this slow)
                    power = xc.real * xc.real + xc.imag * xc.imag
                    if power > 0:
                        inverse = scale / np.sqrt(power)
                        factor = np.complex64(complex(xc.real * inverse, xc.imag * inverse))
                    else:
                        factor = np.complex64(scale)
                for j in range(nb_sources):
                    out[t, b, c, j] = v[t, b, cv, j] * factor

@parallel_loop(error_model="numpy")
def wiener_covariance(y, num, weight):
    nb_frames, nb_bins, nb_channels, nb_sources = y.shape
    # blocks of bins in parallel, frames in order inside: each frame's block of y is
    # contiguous (a loop over frames per bin strode over whole frames, a miss per read)
    block = 64
    for k in numba.prange((nb_bins + block - 1) // block):
        for t in range(nb_frames):
            for b in range(k * block, min(nb_bins, (k + 1) * block)):
                for j in range(nb_sources):
                    power = 0.0
                    for c in range(nb_channels):
                        yc = np.complex128(y[t, b, c, j])
                        power += yc.real * yc.real + yc.imag * yc.imag
                        for d in range(nb_channels):
                            num[b, c, d, j] += yc * np.conj(np.complex128(y[t, b, d, j]))
                    weight[b, j] += power / nb_channels

@parallel_loop(fastmath={"nnan", "ninf"}, error_model="numpy")
def wiener_step(y, magnitudes, scale, from_magnitudes, x, R, eps, out):
    nb_frames, nb_bins, nb_channels, nb_sources = out.shape
    reg = np.float32(np.sqrt(eps))
    for t in numba.prange(nb_frames):
        v = np.empty(nb_sources, np.float32)
        for b in range(nb_bins):
            for j in range(nb_sources):
                acc = np.float32(0.0)
                if from_magnitudes:
                    for c in range(magnitudes.shape[2]):
                        m = magnitudes[t, b, c, j] * scale
                        acc += m * m
                    v[j] = acc / magnitudes.shape[2]
                else:
                    for c in range(nb_channels):
                        z = y[t, b, c, j]
                        acc += z.real * z.real + z.imag * z.imag
                    v[j] = acc / nb_channels
            # mixture covariance and Cxx^-1 x
            c00 = np.complex64(reg)
            for j in range(nb_sources):
                c00 += v[j] * R[b, 0, 0, j]
            if nb_channels == 1:
                r0 = x[t, b, 0] / (c00 + eps)
                r1 = np.complex64(0)
            else:
                c01 = np.complex64(0)
                c10 = np.complex64(0)
                c11 = np.complex64(reg)
                for j in range(nb_sources):
                    c01 += v[j] * R[b, 0, 1, j]
                    c10 += v[j] * R[b, 1, 0, j]
                    c11 += v[j] * R[b, 1, 1, j]
                det = c00 * c11 - c01 * c10
                x0 = x[t, b, 0] / det
                x1 = x[t, b, 1] / det
                r0 = c11 * x0 - c01 * x1
                r1 = c00 * x1 - c10 * x0
            for j in range(nb_sources):
                if nb_channels == 1:
                    out[t, b, 0, j] = v[j] * R[b, 0, 0, j] * r0
                else:
                    out[t, b, 0, j] = v[j] * (R[b, 0, 0, j] * r0 + R[b, 0, 1, j] * r1)
                    out[t, b, 1, j] = v[j] * (R[b, 1, 0, j] * r0 + R[b, 1, 1, j] * r1)

# serial: they run in the network's workers, one thread each
@compiled(**_FAST)
def unit_phase_difference(x, out):
    nb_frames, nb_bins = out.shape
    for t in range(nb_frames):
        for b in range(nb_bins):
            a, c = x[0, t, b], x[1, t, b]
            pa = a.real * a.real + a.imag * a.imag
            pc = c.real * c.real + c.imag * c.imag
            # a conj(c) / (|a| |c|), a unit phase 1 where a channel is 0
            ar, ai = (a.real, a.imag) if pa > 0 else (1.0, 0.0)
            cr, ci = (c.real, c.imag) if pc > 0 else (1.0, 0.0)
            inverse = 1.0 / np.sqrt((pa if pa > 0 else 1.0) * (pc if pc > 0 else 1.0))
            out[t, b] = complex((ar * cr + ai * ci) * inverse, (ai * cr - ar * ci) * inverse)

@compiled(**_FAST)
def first_pass_sums(v, w, power, cross):
    nb_frames, nb_channels, nb_bins = v.shape
    for t in range(nb_frames):
        for b in range(nb_bins):
            v0 = np.float64(v[t, 0, b])
            v1 = np.float64(v[t, nb_channels - 1, b])
            power[0, b] += v0 * v0
            power[1, b] += v1 * v1
            cross[b] += v0 * v1 * np.complex128(w[t, b])


def lstm_forward(proj, w_rec, reverse, keep=True):
    """proj [shape=(T, B, G, 4H)], w_rec [shape=(G, 4H, H)], reverse (G bools) → (hs
    [shape=(T, B, G, H)], kept): kept = (acts, cells, tanh of cells) for `lstm_backward`,
    or None unless keep; float32."""
    steps, nb_samples, groups, width = proj.shape
    hid = width // 4
    hs = np.empty((steps, nb_samples, groups, hid), np.float32)
    lead = (steps, nb_samples, groups) if keep else (1, 1, 1)
    acts = np.empty(lead + (width if keep else 1,), np.float32)
    cells = np.empty(lead + (hid if keep else 1,), np.float32)
    tanh_cells = np.empty(lead + (hid if keep else 1,), np.float32)
    w_t = np.ascontiguousarray(w_rec.transpose(0, 2, 1), np.float32)
    forward(np.ascontiguousarray(proj, np.float32), w_t, np.asarray(reverse, np.bool_), hs, acts,
            cells, tanh_cells, keep)
    return hs, ((acts, cells, tanh_cells) if keep else None)


def lstm_backward(dhs, hs, kept, w_rec, reverse):
    """The gradients of `lstm_forward`'s proj and w_rec, from the outputs' gradient dhs
    [shape=(T, B, G, H)], its outputs hs and what it kept."""
    acts, cells, tanh_cells = kept
    dproj = np.empty(acts.shape, np.float32)
    backward(np.ascontiguousarray(dhs, np.float32), acts, cells, tanh_cells,
             np.ascontiguousarray(w_rec, np.float32), np.asarray(reverse, np.bool_), dproj)
    return dproj, recurrent_weight_grad(dproj, hs, reverse)


def recurrent_weight_grad(dproj, hs, reverse):
    """d loss / d W_rec [shape=(G, 4H, H)] = Σ over steps of the gates' gradient times the
    previous step's output: one matrix product per group over all steps and samples."""
    steps, nb_samples, groups, width = dproj.shape
    hid = width // 4
    grad = np.empty((groups, width, hid), np.float32)
    for g in range(groups):
        # the step at frame t reads the output of frame t - 1 (t + 1 backward in time)
        da = dproj[:-1, :, g] if reverse[g] else dproj[1:, :, g]
        prev = hs[1:, :, g] if reverse[g] else hs[:-1, :, g]
        np.matmul(da.reshape(-1, width).T, prev.reshape(-1, hid), out=grad[g])
    return grad
