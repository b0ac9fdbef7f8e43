"""Compiled loops (numba) for what NNabla's CPU kernels and numpy do slowly: the LSTM
recurrence, step by step, forward and backward.

An LSTM layer's recurrence cannot be batched over time: each step's gates need the previous
step's output. Per step: the recurrent product h @ W_rec (one small matrix product per
direction, `small_matmul`), then the gates' elementwise work in compiled loops that the compiler
vectorizes: the sigmoids and tanh through `_sigmoid`, exp by a polynomial and squarings in
float64 (relative error < 2e-8, far below float32's rounding; numba's own exp and tanh are
scalar calls here, and numpy's take 3 to 7 ns an element). The backward pass needs no
transcendental function: the forward pass keeps the activations and tanh of the cells.

Layout: [shape=(nb_frames, nb_samples, groups, 4H)], the gates in NNabla's order (i, f, g, o);
a group is an independent recurrence (a direction of a layer, of one target), each running
forward or backward in time (`reverse`), so that no direction is ever flipped in memory.

Compiled once per machine (numba's cache, beside this file); the first use of a process
loads it.
"""
import numpy as np
import numba

# numba's threads from its own pool ('workqueue'): GNU OpenMP's, numba's default where it is
# installed, aborts a process forked after it started (the separation's worker processes).
# Set before any parallel loop runs; every module that compiles parallel loops imports numba
# through this module.
numba.config.THREADING_LAYER = "workqueue"

# vectorizable loops: no Python error checks (a division never raises), fast math. The loops
# are module-level functions so that numba's cache (beside this file) serves every later
# process: functions defined inside a function are compiled anew in each process.
_FAST = dict(cache=True, fastmath=True, error_model="numpy")


def numba_fork_safe():
    """numba, with the fork-safe threading layer set (this module's import sets it)."""
    return numba


@numba.njit(inline="always", **_FAST)
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

@numba.njit(**_FAST)
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


@numba.njit(**_FAST)
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

@numba.njit(cache=True, parallel=True)
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

@numba.njit(**_FAST)
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

@numba.njit(cache=True, parallel=True)
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


@numba.njit(**_FAST)
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
