"""Separation: load UMX weights, run the network in windows, Wiener-filter, invert.

`separate_stream(audio, rate, models, ...)` is the one separation function (`separate` collects
its blocks): test.py's CLI, eval.py and users' notebooks call it with models loaded once by
`load_models`.

Memory stays bounded by the window sizes, not by the track:
- the mixture can come as a `utils.AudioFile` (decoded into a temporary file, as test.py does),
  whose ranges are read as the STFT needs them;
- the network (`model.InferenceNetwork`) runs over windows of `window` frames, each with
  `context` frames of LSTM context on both sides (the BLSTM's state is warmed up there and the
  outputs there are discarded), several windows batched; its estimates go to a temporary file;
- the multichannel Wiener filter (norbert's EM) runs in chunks of frames in streaming passes:
  its only track-wide quantities (the mixture's peak, the residual model's gains and the
  sources' spatial covariance matrices) are sums over frames, accumulated in one pass and used
  in the next, so the result equals norbert's whole-track EM and no chunk border exists;
- the ISTFT is an in-order overlap-add that hands out finished samples chunk by chunk.
"""
import gc
import json
import os
import tempfile
import time
import zipfile
from contextlib import contextmanager

import numpy as np
import nnabla as nn
from tqdm import tqdm

from model import InferenceNetwork, OpenUnmix, config_from_shapes, parameter_shapes
from utils import (OverlapAdd, PaddedSignal, TemporaryArrayFile, UmxError, nb_stft_frames,
                   prepare_audio, stft_frames, write_json_atomic)

TARGETS = ["vocals", "drums", "bass", "other"]
# The Wiener filter's regularization, as open-unmix-pytorch uses (norbert's default would be
# the machine epsilon of the STFT's dtype).
WIENER_EPS = 1e-10
# STFT frames per network window, LSTM context frames on each side, windows run together
WINDOW_FRAMES = 1024
CONTEXT_FRAMES = 64
WINDOWS_PER_BATCH = 4
WIENER_CHUNK_FRAMES = 256


@contextmanager
def _timed(timings, stage):
    """Add the block's wall time to timings[stage] (when a dict is given)."""
    start = time.perf_counter()
    yield
    if timings is not None:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


# --------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------

def read_parameter_file(path):
    """The parameters of one NNabla .h5 file: {name: ndarray} (names as stored)."""
    import h5py
    try:
        with h5py.File(path, "r") as f:
            params = {}
            f.visititems(lambda name, obj: params.__setitem__(name, obj[()])
                         if isinstance(obj, h5py.Dataset) else None)
    except OSError:
        raise UmxError("%s is not an NNabla weight file (.h5)" % path)
    if not params:
        raise UmxError("%s holds no parameters" % path)
    return params


def check_parameters(params, cfg, path):
    """Raise UmxError naming the first parameter whose name or shape differs from the layout."""
    expected = parameter_shapes(cfg)
    for name, shape in expected.items():
        if name not in params:
            raise UmxError("%s: missing parameter %s" % (path, name))
        if tuple(params[name].shape) != tuple(shape):
            raise UmxError("%s: parameter %s has shape %s, expected %s"
                           % (path, name, tuple(params[name].shape), tuple(shape)))
    extra = sorted(set(params) - set(expected))
    if extra:
        raise UmxError("%s: unexpected parameter %s" % (path, extra[0]))


def load_target(path, target, n_hop=1024, sample_rate=44100):
    """Load `<target>.h5` into `nn.parameter_scope(target)`; return its UmxConfig.

    The architecture comes from the parameter shapes; n_hop and sample_rate (which the weights
    cannot tell) from a `<target>.json` beside the file when there is one.
    """
    params = read_parameter_file(path)
    meta_path = os.path.splitext(path)[0] + ".json"
    if os.path.isfile(meta_path):
        try:
            with open(meta_path) as f:
                meta = json.load(f)["config"]
            n_hop, sample_rate = int(meta["n_hop"]), int(meta["sample_rate"])
        except (ValueError, KeyError, TypeError):
            raise UmxError("%s is not a model description written by train.py" % meta_path)
    try:
        cfg = config_from_shapes({k: v.shape for k, v in params.items()}, n_hop, sample_rate)
    except KeyError as exc:
        raise UmxError("%s: missing parameter %s" % (path, exc.args[0]))
    except ValueError as exc:
        raise UmxError("%s: %s" % (path, exc))
    check_parameters(params, cfg, path)
    with nn.parameter_scope(target):
        for name, value in params.items():
            var = nn.parameter.get_parameter_or_create(name, value.shape, need_grad=False)
            var.d = value
    return cfg


def save_target(path, target):
    """Write the parameters of nn.parameter_scope(target) as `path` (official layout), atomically."""
    from utils import atomic_path
    with nn.parameter_scope(target):
        params = nn.get_parameters(grad_only=False)
    if not params:
        raise UmxError("no parameters in scope '%s' to save" % target)
    with atomic_path(path) as tmp:
        nn.save_parameters(tmp, params)


def write_random_weights(folder, cfg, targets=TARGETS, seed=0):
    """Random `<target>.h5` files in the official layout (for tests and benchmarks).

    Values are scaled so that activations stay in a realistic range.
    """
    rng = np.random.RandomState(seed)
    os.makedirs(folder, exist_ok=True)
    for target in targets:
        with nn.parameter_scope("random"):
            OpenUnmix(cfg, input_mean=rng.rand(cfg.nb_output_bins) * 0.1,
                      input_scale=rng.rand(cfg.nb_output_bins) + 0.5)(
                nn.Variable((2, 1, cfg.nb_channels, cfg.nb_output_bins)))
            for name, var in nn.get_parameters(grad_only=False).items():
                if name.endswith("bn/var"):
                    var.d = rng.rand(*var.shape) + 0.5
                elif name.endswith("/W"):
                    var.d = rng.randn(*var.shape) / np.sqrt(var.shape[0])
                elif "/bn/" in name or name.startswith("output"):
                    var.d = rng.randn(*var.shape) * 0.1 + (1.0 if name.endswith("gamma") else 0)
                elif name.startswith("lstm"):
                    var.d = rng.uniform(-1, 1, var.shape) / np.sqrt(cfg.lstm_hidden_size)
        save_target(os.path.join(folder, target + ".h5"), "random")
        write_json_atomic(os.path.join(folder, target + ".json"), {"config": cfg.to_dict()})
        with nn.parameter_scope("random"):
            nn.clear_parameters()


def load_models(model_dir, targets):
    """Load `<target>.h5` for each target from a folder or an official `umx*.zip`.

    Returns {target: UmxConfig}; the parameters live in nn.parameter_scope(target).
    """
    if not os.path.exists(model_dir):
        raise UmxError("model not found: %s" % model_dir)
    if os.path.isfile(model_dir):
        if not zipfile.is_zipfile(model_dir):
            raise UmxError("--model %s is neither a folder nor a .zip of weight files" % model_dir)
        with tempfile.TemporaryDirectory() as tmp:
            with zipfile.ZipFile(model_dir) as z:
                z.extractall(tmp)
            # the official archives hold the files at the top or in one folder
            folders = [r for r, _, files in os.walk(tmp) if any(f.endswith(".h5") for f in files)]
            if not folders:
                raise UmxError("%s holds no .h5 weight files" % model_dir)
            return load_models(folders[0], targets)
    cfgs = {}
    for target in targets:
        path = os.path.join(model_dir, target + ".h5")
        if not os.path.isfile(path):
            available = sorted(f[:-3] for f in os.listdir(model_dir) if f.endswith(".h5"))
            raise UmxError("no weights for target '%s' in %s (found: %s)"
                           % (target, model_dir, ", ".join(available) or "none"))
        cfgs[target] = load_target(path, target)
    first = next(iter(cfgs.values()))
    for target, cfg in cfgs.items():
        if (cfg.n_fft, cfg.n_hop, cfg.sample_rate) != (first.n_fft, first.n_hop, first.sample_rate):
            raise UmxError("target '%s' uses another STFT or rate than '%s'" % (target, targets[0]))
    return cfgs


# --------------------------------------------------------------------------------------
# the network, in windows
# --------------------------------------------------------------------------------------

def plan_windows(nb_frames, window=WINDOW_FRAMES, context=CONTEXT_FRAMES):
    """Split frames into network windows of one common length.

    Returns (length, [(start, core_start, core_stop), ...]): window k reads frames
    start..start+length-1 and keeps its outputs for core_start..core_stop-1 (at most `window`
    frames), which have at least `context` frames of context on each side unless they touch
    the track's ends.
    """
    # as few windows as `window` allows, of equal size, so that no window is mostly padding
    nb_windows = -(-nb_frames // window)
    core = -(-nb_frames // nb_windows)
    length = min(nb_frames, core + 2 * context)
    plan = []
    for core_start in range(0, nb_frames, core):
        core_stop = min(core_start + core, nb_frames)
        start = int(np.clip(core_start - context, 0, nb_frames - length))
        plan.append((start, core_start, core_stop))
    return length, plan


class EstimateStore(TemporaryArrayFile):
    """The magnitude estimates of all targets, kept in an unlinked temporary file.

    They grow with the track (2.8 MB per second of stereo audio for 4 targets), so they stay
    out of memory: worker processes write their windows with pwrite, the Wiener filter reads
    chunks of frames back with pread. Layout: float32 [shape=(nb_targets, nb_frames, nb_bins,
    nb_channels)].
    """

    def __init__(self, nb_frames, nb_bins, nb_channels, nb_targets, folder=None):
        super().__init__("umx-estimates-", folder)
        self.shape = (nb_frames, nb_bins, nb_channels, nb_targets)
        self._frame_bytes = nb_bins * nb_channels * 4
        self.file.truncate(nb_targets * nb_frames * self._frame_bytes)
        self.mixture_peak = None  # set by estimate_spectrograms

    def write(self, target_index, start, block):
        """block [shape=(frames, nb_bins, nb_channels)]: the target's frames from `start` on."""
        self.write_at(block, (target_index * self.shape[0] + start) * self._frame_bytes)

    def read(self, start=0, stop=None):
        """→ float32 [shape=(stop - start, nb_bins, nb_channels, nb_targets)]"""
        nb_frames, nb_bins, nb_channels, nb_targets = self.shape
        stop = nb_frames if stop is None else min(stop, nb_frames)
        out = np.empty((stop - start, nb_bins, nb_channels, nb_targets), np.float32)
        part = np.empty((stop - start, nb_bins, nb_channels), np.float32)
        for j in range(nb_targets):
            self.read_into(part, (j * nb_frames + start) * self._frame_bytes)
            out[..., j] = part
        return out


def default_processes():
    """2 worker processes on a CPU context (NNabla's CPU kernels use one core), else 1."""
    backend = nn.get_current_context().backend[0]
    return min(2, os.cpu_count() or 1) if backend.startswith("cpu") else 1


def estimate_spectrograms(padded, nb_frames, cfgs, targets, window=WINDOW_FRAMES,
                          context=CONTEXT_FRAMES, batch=WINDOWS_PER_BATCH, progress=True,
                          timings=None, network=None, processes=1):
    """Magnitude estimates of all targets, window by window → an `EstimateStore`, whose
    `mixture_peak` is the largest STFT magnitude of the mixture (the Wiener filter's scale).

    padded [shape=(nb_channels, nb_timesteps + n_fft)]: utils.pad_for_stft's result, or a
    utils.PaddedSignal; estimates [shape=(nb_frames, bins, nb_model_channels, nb_targets)]
    (`store.read()`).
    network: the `InferenceNetwork` to run (default: built from the loaded parameters).
    processes > 1: forked worker processes share the work (CPU contexts only: see
    `default_processes`): each takes some of the targets, or of the windows when there are
    fewer targets than processes.
    """
    cfg = cfgs[targets[0]]
    model_channels = max(cfgs[t].nb_channels for t in targets)
    length, plan = plan_windows(nb_frames, window, context)
    store = EstimateStore(nb_frames, cfg.nb_output_bins, model_channels, len(targets))
    network = network or InferenceNetwork.from_parameter_scopes({t: cfgs[t] for t in targets})
    start_time = time.perf_counter()
    by_target = len(targets) >= processes
    processes = max(1, min(processes, len(targets) if by_target else len(plan)))
    shares = [(targets[p::processes], plan) if by_target else (targets, plan[p::processes])
              for p in range(processes)]
    try:
        if processes == 1:
            results = [_estimate_windows(store, padded, network, targets, targets, plan,
                                         length, batch, progress)]
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor
            # forked workers inherit the network's weights, the audio and the store's open
            # file (through this global: the pool pickles its arguments)
            _FORKED[:] = [store, padded, network]
            gc.collect()
            gc.freeze()  # the workers' collections then leave the inherited objects' pages shared
            try:
                with ProcessPoolExecutor(processes,
                                         mp_context=multiprocessing.get_context("fork")) as pool:
                    jobs = [pool.submit(_estimate_windows, None, None, None, targets, mine,
                                        windows, length, batch, progress and p == 0)
                            for p, (mine, windows) in enumerate(shares)]
                    results = [job.result() for job in jobs]
            finally:
                _FORKED[:] = []
                gc.unfreeze()
    except BaseException:
        store.close()
        raise
    store.mixture_peak = max(peak for _, peak in results)
    if timings is not None:
        for part, _ in results:
            for key, value in part.items():
                timings[key] = timings.get(key, 0.0) + value
        timings["network (wall)"] = timings.get("network (wall)", 0.0) + \
            time.perf_counter() - start_time
    return store


_FORKED = []  # [store, padded, network] for forked workers


def _estimate_windows(store, padded, network, targets, mine, plan, length, batch, progress):
    """Run the network for targets `mine` over windows `plan` and write their cores into the
    store (None, None, None: those of `_FORKED`); → (the seconds spent per stage, the largest
    mixture STFT magnitude in the windows' cores)."""
    if store is None:
        store, padded, network = _FORKED
    cfg = network.cfgs[mine[0]]
    timings, peak = {}, 0.0
    batches = [plan[i:i + batch] for i in range(0, len(plan), batch)]
    bar = tqdm(total=len(batches) * len(mine), desc="network", unit="pass",
               disable=not progress, leave=False)
    for windows in batches:
        with _timed(timings, "stft"):
            spec = np.empty((len(windows), length, padded.shape[0], cfg.nb_output_bins), np.float32)
            for b, (start, core_start, core_stop) in enumerate(windows):
                # (nb_channels, length, bins) -> (length, nb_channels, bins)
                spec[b] = np.abs(stft_frames(padded, start, start + length, cfg.n_fft,
                                             cfg.n_hop)).transpose(1, 0, 2)
                peak = max(peak, float(spec[b, core_start - start:core_stop - start].max()))

        def write(target, row, block, windows=windows):
            # rows (window, frame) -> the cores of the windows that the block overlaps
            for b, (start, core_start, core_stop) in enumerate(windows):
                lo = max(row, b * length + core_start - start)
                hi = min(row + block.shape[0], b * length + core_stop - start)
                if hi > lo:
                    # (frames, channels, bins) -> (frames, bins, channels)
                    store.write(targets.index(target), lo - b * length + start,
                                block[lo - row: hi - row].transpose(0, 2, 1))

        with _timed(timings, "network"):
            network.run(spec, mine, write)
        bar.update(len(mine))
    bar.close()
    return timings, peak


# --------------------------------------------------------------------------------------
# the multichannel Wiener filter, streamed over chunks of frames
# --------------------------------------------------------------------------------------

def _initial_estimates(v, x, softmask, eps, scale=1.0):
    """norbert's start, times `scale`: softmask(v, x) or v with the mixture's phase.

    v [shape=(f, bins, {1, nb_channels}, nb_sources)], x [shape=(f, bins, nb_channels)]
    → complex64 [shape=(f, bins, nb_channels, nb_sources)] (compiled: numpy's complex
    temporaries made this a slow, memory-bound step)
    """
    out = np.empty(x.shape + (v.shape[-1],), np.complex64)
    # x may be a transposed view: the kernel reads it in place
    _kernels()["initial"](np.ascontiguousarray(v, np.float32), x.astype(np.complex64, copy=False),
                          bool(softmask), np.float32(eps), np.float32(scale), out)
    return out


def _covariance_sums(y):
    """This chunk's part of norbert's spatial covariance: (Σ_t y yᴴ [shape=(bins, C, C, J)],
    Σ_t mean_c |y_c|² [shape=(bins, J)]) for y [shape=(f, bins, C, J)], summed in float64."""
    _, nb_bins, nb_channels, nb_sources = y.shape
    num = np.zeros((nb_bins, nb_channels, nb_channels, nb_sources), np.complex128)
    weight = np.zeros((nb_bins, nb_sources), np.float64)
    _kernels()["covariance"](np.ascontiguousarray(y, np.complex64), num, weight)
    return num, weight


def _wiener_step(y, x, R, eps):
    """One EM filtering step (norbert's), given spatial covariances R [shape=(bins, C, C, J)].

    y [shape=(f, bins, C, J)], x [shape=(f, bins, C)] → new y. Mono and stereo run in a
    compiled kernel, one time-frequency bin at a time (numpy's temporaries made this stage
    memory-bound); other channel counts in numpy.
    """
    nb_channels = x.shape[-1]
    if nb_channels <= 2:
        out = np.empty(y.shape, np.complex64)
        _kernels()["step"](np.ascontiguousarray(y, np.complex64), x.astype(np.complex64, copy=False),
                           np.ascontiguousarray(R, np.complex64), np.float32(eps), out)
        return out
    v = np.mean(np.abs(y) ** 2, axis=2)  # (f, bins, J)
    cxx = np.einsum("fbj,bcdj->fbcd", v.astype(np.complex64), R)
    cxx += np.sqrt(eps) * np.eye(nb_channels, dtype=np.complex64)
    rx = np.einsum("fbde,fbe->fbd", np.linalg.pinv(cxx, eps), x)  # Cxx^-1 x
    return np.einsum("fbj,bcdj,fbd->fbcj", v.astype(np.complex64), R, rx)  # v_j R_j Cxx^-1 x


_KERNELS = {}


def _kernels():
    """Compile (once, cached on disk) the Wiener filter's per-bin loops."""
    if _KERNELS:
        return _KERNELS
    import numba

    @numba.njit(parallel=True, cache=True)
    def initial(v, x, softmask, eps, scale, out):
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
                        magnitude = abs(xc)
                        factor = (xc / magnitude if magnitude > 0 else np.complex64(1)) * scale
                    for j in range(nb_sources):
                        out[t, b, c, j] = v[t, b, cv, j] * factor

    @numba.njit(parallel=True, cache=True)
    def covariance(y, num, weight):
        nb_frames, nb_bins, nb_channels, nb_sources = y.shape
        for b in numba.prange(nb_bins):
            for t in range(nb_frames):
                for j in range(nb_sources):
                    power = 0.0
                    for c in range(nb_channels):
                        yc = np.complex128(y[t, b, c, j])
                        power += yc.real * yc.real + yc.imag * yc.imag
                        for d in range(nb_channels):
                            num[b, c, d, j] += yc * np.conj(np.complex128(y[t, b, d, j]))
                    weight[b, j] += power / nb_channels

    @numba.njit(parallel=True, cache=True, fastmath=False)
    def step(y, x, R, eps, out):
        nb_frames, nb_bins, nb_channels, nb_sources = y.shape
        reg = np.float32(np.sqrt(eps))
        for t in numba.prange(nb_frames):
            v = np.empty(nb_sources, np.float32)
            for b in range(nb_bins):
                for j in range(nb_sources):
                    acc = np.float32(0.0)
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

    _KERNELS.update(initial=initial, covariance=covariance, step=step)
    return _KERNELS


def wiener_separate(*args, **kw):
    """`wiener_blocks`' waveforms in one array [shape=(J (+1), nb_channels, nb_timesteps)]."""
    return np.concatenate(list(wiener_blocks(*args, **kw)), axis=-1)


def wiener_blocks(padded, nb_timesteps, v, n_fft, n_hop, niter=1, softmask=False,
                  alpha=1.0, residual=False, eps=WIENER_EPS, chunk=WIENER_CHUNK_FRAMES,
                  progress=True, timings=None, v_power=1.0, mixture_peak=None):
    """Source waveforms from magnitude estimates, equal to norbert's whole-track

        norbert.wiener(norbert.residual_model(v, x, alpha) if residual else v, x, niter,
                       use_softmask=softmask, eps=eps)

    followed by an ISTFT, computed in chunks of frames and yielded as consecutive blocks of
    samples [shape=(J (+1), nb_channels, n)].

    padded [shape=(nb_channels, nb_timesteps + n_fft)] (an array or a `utils.PaddedSignal`),
    v [shape=(nb_frames, bins, C', J)]: an array or an `EstimateStore`, raised to `v_power` as
    it is read (norbert's softmask takes v ** alpha). mixture_peak: the mixture STFT's largest
    magnitude, when known (it saves a pass over the track).
    """
    nb_frames = v.shape[0]
    nb_channels = padded.shape[0]

    def models_of(a):
        # (f, bins, C', J) for the chunk at frame a, from an array or an EstimateStore
        vj = v.read(a, a + chunk) if hasattr(v, "read") else v[a:a + chunk]
        return vj ** v_power if v_power != 1.0 else vj

    starts = list(range(0, nb_frames, chunk))

    def mixture(a):
        # (C, f, bins) -> (f, bins, C)
        with _timed(timings, "stft"):
            return stft_frames(padded, a, min(a + chunk, nb_frames), n_fft, n_hop).transpose(1, 2, 0)

    passes = (1 if (residual or (niter and mixture_peak is None)) else 0) + niter + 1
    bar = tqdm(total=passes * len(starts), desc="wiener", unit="chunk", disable=not progress,
               leave=False)
    # pass: track-wide peak of the mixture and the residual model's gains
    gain, res_eps = None, np.finfo(np.float32).eps
    peak = mixture_peak
    if residual or (niter and peak is None):
        find_peak, peak, num, den = peak is None, peak or 0.0, 0.0, 0.0
        for a in starts:
            x = mixture(a)
            if find_peak:
                peak = max(peak, float(np.abs(x).max()))
            if residual:
                vx = np.maximum(res_eps, np.abs(x) ** alpha)
                total = models_of(a).sum(axis=-1)
                num = num + np.sum(vx * total, axis=0)
                den = den + np.sum(total ** 2, axis=0)
            bar.update()
        if residual:
            gain = (num / (res_eps + den)).astype(np.float32)

    def source_models(a, x):
        vj = models_of(a)
        if residual:
            vr = np.maximum(0, np.maximum(res_eps, np.abs(x) ** alpha) - vj.sum(axis=-1))
            vj = np.concatenate([vj * gain[..., None], vr[..., None]], axis=-1)
        return vj

    # with EM steps, norbert works on x / max_abs and y / max_abs (max_abs = max(1, peak / 10)),
    # and scales the result back
    scale = 1.0 / max(1.0, peak / 10.0) if niter else 1.0

    def estimates(a, covariances):
        """the chunk's source estimates, times `scale`"""
        x = mixture(a)
        with _timed(timings, "wiener"):
            y = _initial_estimates(source_models(a, x), x, softmask, eps, scale)
            if covariances:
                x = x * np.float32(scale)
                for R in covariances:
                    y = _wiener_step(y, x, R, eps)
        return y

    covariances = []
    for _ in range(niter):
        num, weight = 0.0, eps
        for a in starts:
            y = estimates(a, covariances)
            with _timed(timings, "wiener"):
                n, w = _covariance_sums(y)
            num, weight = num + n, weight + w
            bar.update()
        covariances.append((num / weight[:, None, None, :]).astype(np.complex64))

    nb_sources = v.shape[-1] + (1 if residual else 0)
    ola = OverlapAdd((nb_sources, nb_channels), nb_timesteps, n_fft, n_hop)
    for a in starts:
        # (f, bins, C, J) -> (J, C, f, bins)
        y = estimates(a, covariances)
        with _timed(timings, "istft"):
            block = ola.add(y.transpose(3, 2, 0, 1), a)
            if scale != 1.0:
                block *= np.float32(1.0 / scale)
        bar.update()
        yield block
    bar.close()


# --------------------------------------------------------------------------------------
# the API
# --------------------------------------------------------------------------------------

def separate(audio, rate, cfgs, targets=None, **kw):
    """Separate a mixture into the targets' estimates, in memory.

    audio [shape=(nb_timesteps, nb_channels)] at `rate`; cfgs: `load_models`' result; other
    arguments as `separate_stream`'s. Returns ({name: float32 [shape=(nb_timesteps', 2)]},
    model_rate).
    """
    names, model_rate, blocks = separate_stream(audio, rate, cfgs, targets, **kw)
    waves = np.concatenate(list(blocks), axis=-1)  # (J, C, nb_timesteps)
    return {name: np.ascontiguousarray(waves[j].T) for j, name in enumerate(names)}, model_rate


def separate_stream(audio, rate, cfgs, targets=None, niter=1, softmask=False, alpha=1.0,
                    residual_model=False, window=WINDOW_FRAMES, context=CONTEXT_FRAMES,
                    progress=True, timings=None, processes=None, network=None):
    """Separate a mixture, handing out the estimates as consecutive blocks of samples.

    audio [shape=(nb_timesteps, nb_channels)] at `rate` (resampled to the models' rate; mono
    is duplicated, channels beyond two are dropped), or an `utils.AudioFile` already decoded
    at the models' rate in stereo (`decode_audio(path, rate=..., stereo=True)`: then no part of
    the track is held in memory); cfgs: `load_models`' result.
    Returns (names, model_rate, blocks): blocks is a generator of float32 [shape=(len(names), 2,
    n)] that does the work as it is consumed; writing the blocks out as they come keeps memory
    bounded whatever the length. With `residual_model`, or a single target, the rest of the
    mixture comes last as 'residual' ('accompaniment' when one target).
    timings: a dict to which the seconds spent per stage are added.
    processes: worker processes for the network (default: `default_processes()`).
    network: the `model.InferenceNetwork` of the loaded parameters, when the caller keeps one
    for several separations (it is otherwise rebuilt for each: about 0.4 s for 4 full-size
    targets).
    """
    targets = list(targets or cfgs)
    unknown = [t for t in targets if t not in cfgs]
    if unknown:
        raise UmxError("target '%s' is not loaded (loaded: %s)" % (unknown[0], ", ".join(cfgs)))
    cfg = cfgs[targets[0]]
    if hasattr(audio, "read"):
        if (audio.rate, audio.nb_channels) != (cfg.sample_rate, 2):
            raise UmxError("decoded audio at %d Hz with %d channels: the models take stereo at "
                           "%d Hz (decode_audio(..., rate=%d, stereo=True))"
                           % (audio.rate, audio.nb_channels, cfg.sample_rate, cfg.sample_rate))
    else:
        with _timed(timings, "resample"):
            audio = prepare_audio(audio, rate, cfg.sample_rate)
    nb_timesteps = audio.shape[0]
    if nb_timesteps < cfg.n_fft:
        raise UmxError("audio of %.3f s is too short: at least one STFT window (%d samples) "
                       "is needed" % (nb_timesteps / cfg.sample_rate, cfg.n_fft))
    # (nb_timesteps, C), seen as (C, nb_timesteps + n_fft): padded segments read on demand
    padded = PaddedSignal(audio, cfg.n_fft)
    nb_frames = nb_stft_frames(nb_timesteps, cfg.n_hop)
    if processes is None:
        processes = default_processes()
    residual = residual_model or len(targets) == 1
    names = targets + (["accompaniment" if len(targets) == 1 else "residual"] if residual else [])

    def blocks():
        with estimate_spectrograms(padded, nb_frames, cfgs, targets, window, context,
                                   progress=progress, timings=timings, processes=processes,
                                   network=network) as v:
            yield from wiener_blocks(padded, nb_timesteps, v, cfg.n_fft, cfg.n_hop, niter=niter,
                                     softmask=softmask, alpha=alpha if softmask else 1.0,
                                     residual=residual, progress=progress, timings=timings,
                                     v_power=alpha if softmask else 1.0,
                                     mixture_peak=v.mixture_peak)
    return names, cfg.sample_rate, blocks()
