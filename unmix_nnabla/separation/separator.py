"""Separation: the network in windows, then the Wiener filter and the ISTFT.

`separate_stream(audio, rate, models, ...)` is the one separation function (`separate` collects
its blocks): test.py's CLI, eval.py and users' notebooks call it with models loaded once by
`weights.load_models`.

Memory stays bounded by the window sizes, not by the track:
- the mixture can come as an `audio.AudioFile` (decoded into a temporary file, as test.py
  does), whose ranges are read as the STFT needs them;
- the network (`inference.InferenceNetwork`) runs over windows of `window` frames, each with
  `context` frames of LSTM context on both sides (the BLSTM's state is warmed up there and the
  outputs there are discarded), several windows batched; its estimates go to a temporary file;
- the multichannel Wiener filter and the ISTFT stream over chunks of frames (`wiener.py`).
"""
import gc
import os
import threading
import time

import nnabla_ext.cpu
import numpy as np

from unmix_nnabla.audio.io import prepare_audio
from unmix_nnabla.audio.spectral import PaddedSignal, nb_stft_frames, stft_frames
from unmix_nnabla.base.console import progress_bar, timed, warn
from unmix_nnabla.base.files import TemporaryArrayFile, writing_into
from unmix_nnabla.base.memory import return_freed_memory
from unmix_nnabla.base.processes import available_memory, worker_pool
from unmix_nnabla.base.runtime import UmxError
from unmix_nnabla.base.threads import available_cores
from unmix_nnabla.models.hub import load_models
from unmix_nnabla.networks.inference import network_for, networks_to_run
from unmix_nnabla.networks.ops import numpy_kernels, on_cpu
from unmix_nnabla.separation.wiener import FirstPassSums, phase_difference, wiener_blocks

# STFT frames per network window, LSTM context frames on each side, windows run together (at
# most; fewer where their arrays would exceed BATCH_BYTES in a worker)
WINDOW_FRAMES = 1024
CONTEXT_FRAMES = 64
WINDOWS_PER_BATCH = 4
# a worker's batch arrays at most (`batch_bytes`): 4 windows of full-size UMX or X-UMX
BATCH_BYTES = 400 << 20


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
        with writing_into(self.folder):
            self.file.truncate(nb_targets * nb_frames * self._frame_bytes)
        # set by estimate_spectrograms: the Wiener filter's scale, and its first pass's sums
        # when gathered
        self.mixture_peak = self.first_pass = None

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


# what a worker process adds beyond its batch's arrays: its own pages of NNabla, numba and
# numpy state (`python tools/benchmark.py --workers` measures the total per worker)
WORKER_BASE_BYTES = 200 << 20


def batch_bytes(cfg, nb_networks, length, batch):
    """The largest arrays a worker holds while `nb_networks` networks (UMX targets or X-UMX
    branches) run over `batch` windows of `length` frames: the mixture's magnitudes and
    phase differences (`wiener.phase_difference`), and per network its encoder's output, an
    LSTM layer's projections and gates, and its outputs."""
    rows = batch * length
    hid, dirs = cfg.lstm_hidden_size, cfg.nb_directions
    # per network its encoding and an LSTM layer's outputs (kept for the next layer and the
    # output stage); the projections and gates of one network at a time (InferenceNetwork's
    # recurrences run a target a call in a one-thread worker)
    per_network = rows * (cfg.hidden_size + 2 * dirs * hid) * 4
    return rows * (4 * cfg.nb_output_bins + 3 * dirs * 4 * hid) * 4 + nb_networks * per_network


_SAID_ONE_PROCESS = set()  # the -j values worker_plan has said it runs as one process


def worker_plan(nb_shares, worker_bytes, jobs=None, cores=None, memory=None):
    """(worker processes, threads each) for the network stage: `jobs` when given (-j), else
    as many as the cores, the shares of the work (targets or windows) and half the available
    memory (`worker_bytes` each) allow; the cores are split among them. One process (the
    main one) where the numpy kernels do not run; on GPU contexts always, -j or not, saying so
    once: CUDA cannot be used in a process forked after it started."""
    cores = cores or available_cores()
    if not on_cpu():
        if jobs and jobs > 1 and jobs not in _SAID_ONE_PROCESS:
            _SAID_ONE_PROCESS.add(jobs)
            warn("-j %d: a GPU context runs the network in one process (CUDA cannot be used "
                 "in forked workers)" % jobs)
        return 1, cores
    if jobs:
        processes = jobs
    elif not numpy_kernels():
        return 1, cores
    else:
        processes = min(cores, nb_shares)
        memory = available_memory() if memory is None else memory
        if memory is not None:
            processes = min(processes, max(1, int(memory // 2 // worker_bytes)))
    return max(1, processes), max(1, cores // max(1, processes))


def split_by_targets(nb_targets, nb_windows, processes, bridged=False):
    """Whether worker processes share the work by targets (each runs some targets over every
    window) rather than by windows (each runs every target over some windows): whichever
    gives the largest share less work; on a tie the windows, whose STFTs then run once, not in
    every worker. X-UMX's branches (`bridged`) run together: by windows."""
    if bridged:
        return False
    by_targets = -(-nb_targets // processes) * nb_windows
    by_windows = -(-nb_windows // processes) * nb_targets
    return by_targets < by_windows


def equal_batches(plan, batch):
    """The windows in as few batches of at most `batch` as there can be, of sizes that differ
    by one at most (13 by 4: 4, 3, 3, 3, not 4, 4, 4, 1: one window alone runs slowly)."""
    count = -(-len(plan) // batch) if plan else 0
    bounds = [len(plan) * k // count for k in range(count + 1)] if count else [0]
    return [plan[lo:hi] for lo, hi in zip(bounds, bounds[1:])]


def estimate_spectrograms(padded, nb_frames, cfgs, targets, window=WINDOW_FRAMES,
                          context=CONTEXT_FRAMES, batch=WINDOWS_PER_BATCH, progress=True,
                          timings=None, network=None, processes=None, first_pass=False):
    """Magnitude estimates of all targets, window by window → an `EstimateStore`, whose
    `mixture_peak` is the largest STFT magnitude of the mixture (the Wiener filter's scale)
    and, with `first_pass`, whose `first_pass` holds the Wiener filter's first pass over the
    estimates (`wiener.FirstPassSums`: gathered as they come out, that pass is not made
    again after the network; a stereo mixture).

    padded [shape=(nb_channels, nb_timesteps + n_fft)]: spectral.pad_for_stft's result, or a
    spectral.PaddedSignal; estimates [shape=(nb_frames, bins, nb_model_channels, nb_targets)]
    (`store.read()`).
    network: the `InferenceNetwork` to run (default: built from the loaded parameters).
    processes: worker processes (default: `worker_plan`'s choice from the cores and the
    memory); more than 1: forked workers share the work (CPU contexts), each takes some of the
    targets or some of the windows (`split_by_targets`), with its share of the cores as
    threads.
    """
    cfg = cfgs[targets[0]]
    model_channels = max(cfgs[t].nb_channels for t in targets)
    length, plan = plan_windows(nb_frames, window, context)
    store = EstimateStore(nb_frames, cfg.nb_output_bins, model_channels, len(targets))
    network = network or network_for(cfgs, targets)
    start_time = time.perf_counter()
    # X-UMX's branches run together (their averages need all of them): share the windows
    nb_networks = len(networks_to_run(cfgs, targets))
    nb_shares = len(plan) if network.bridged else max(len(targets), len(plan))
    processes, threads = worker_plan(nb_shares, WORKER_BASE_BYTES + batch_bytes(
        cfg, nb_networks, length, min(batch, len(plan))), jobs=processes)
    by_target = split_by_targets(len(targets), len(plan), processes, network.bridged)
    processes = max(1, min(processes, len(targets) if by_target else len(plan)))
    per_worker = -(-nb_networks // processes) if by_target else nb_networks
    batch = max(1, min(batch, BATCH_BYTES // batch_bytes(cfg, per_worker, length, 1)))
    shares = [(targets[p::processes], plan) if by_target else (targets, plan[p::processes])
              for p in range(processes)]
    try:
        if processes == 1:
            results = [_estimate_windows(store, padded, network, targets, targets, plan,
                                         length, batch, progress, first_pass)]
        else:
            # forked workers inherit the network's weights, the audio and the store's open
            # file (through this global: the pool pickles its arguments)
            _FORKED[:] = [store, padded, network]
            load_compiled_loops()
            gc.collect()
            gc.freeze()  # the workers' collections then leave the inherited objects' pages shared
            try:
                with worker_pool(processes, threads) as pool:
                    jobs = [pool.submit(_estimate_windows, None, None, None, targets, mine,
                                        windows, length, batch, progress and p == 0, first_pass)
                            for p, (mine, windows) in enumerate(shares)]
                    results = [job.result() for job in jobs]
            finally:
                _FORKED[:] = []
                gc.unfreeze()
    except BaseException:
        store.close()
        raise
    store.mixture_peak = max(peak for _, peak, _ in results)
    if first_pass:
        store.first_pass = results[0][2]
        for _, _, sums in results[1:]:
            store.first_pass.merge(sums)
    if timings is not None:
        for part, _, _ in results:
            for key, value in part.items():
                timings[key] = timings.get(key, 0.0) + value
        timings["network (wall)"] = timings.get("network (wall)", 0.0) + \
            time.perf_counter() - start_time
    return store


_FORKED = []  # [store, padded, network] for forked workers


_LOADING = {}  # the thread of `load_compiled_loops(background=True)`
_LOADING_LOCK = threading.Lock()


def load_compiled_loops(background=False):
    """numba and the compiled loops that the network's workers run, loaded once per process,
    before the workers fork: each worker loaded them anew (importing numba, starting LLVM,
    reading its cache: 1.3 s), then this process again for the Wiener filter.

    background: load them in a thread, while the caller loads the model and decodes the
    audio (test.py, eval.py); a later call waits for that thread, then loads what it could
    not (an error is raised there, in the caller's thread)."""
    with _LOADING_LOCK:
        if "thread" not in _LOADING:
            # not a daemon: an early exit waits for it rather than stopping it mid-import
            _LOADING["thread"] = threading.Thread(target=_load_compiled_loops,
                                                  name="compiled-loops")
            _LOADING["thread"].start()
    if not background:
        _LOADING["thread"].join()
        _load_compiled_loops()  # at once when the thread did it


def _load_compiled_loops():
    from unmix_nnabla.base.kernels import lstm_forward  # deferred: numba, seconds
    lstm_forward(np.zeros((1, 1, 1, 4), np.float32), np.zeros((1, 4, 1), np.float32), (False,),
                 keep=False)
    FirstPassSums(1, 1).add(0, np.zeros((0, 2, 1), np.float32), phase_difference(
        np.zeros((2, 0, 1), np.complex64)))


def _estimate_windows(store, padded, network, targets, mine, plan, length, batch, progress,
                      first_pass=False):
    """Run the network for targets `mine` over windows `plan` and write their cores into the
    store (None, None, None: those of `_FORKED`); → (the seconds spent per stage, the largest
    mixture STFT magnitude in the windows' cores, the `FirstPassSums` of their estimates
    with `first_pass`, else None)."""
    if store is None:
        store, padded, network = _FORKED
    cfg = network.cfgs[mine[0]]
    timings, peak = {}, 0.0
    sums = FirstPassSums(len(targets), cfg.nb_output_bins) if first_pass else None
    batches = equal_batches(plan, batch)
    bar = progress_bar(total=len(batches) * len(mine), desc="network", unit="pass",
               enabled=progress, leave=False)
    for windows in batches:
        with timed(timings, "stft"):
            spec = np.empty((len(windows), length, padded.shape[0], cfg.nb_output_bins), np.float32)
            phases = np.empty((len(windows), length, cfg.nb_output_bins), np.complex64) \
                if sums else None
            for b, (start, core_start, core_stop) in enumerate(windows):
                mixture = stft_frames(padded, start, start + length, cfg.n_fft, cfg.n_hop)
                # (nb_channels, length, bins) -> (length, nb_channels, bins)
                spec[b] = np.abs(mixture).transpose(1, 0, 2)
                peak = max(peak, float(spec[b, core_start - start:core_stop - start].max()))
                if sums:
                    phases[b] = phase_difference(mixture)
                del mixture

        def write(target, row, block, windows=windows):
            # rows (window, frame) -> the cores of the windows that the block overlaps
            for b, (start, core_start, core_stop) in enumerate(windows):
                lo = max(row, b * length + core_start - start)
                hi = min(row + block.shape[0], b * length + core_stop - start)
                if hi > lo:
                    # (frames, channels, bins) -> (frames, bins, channels)
                    store.write(targets.index(target), lo - b * length + start,
                                block[lo - row: hi - row].transpose(0, 2, 1))
                    if sums:
                        with timed(timings, "wiener"):
                            sums.add(targets.index(target), block[lo - row: hi - row],
                                     phases[b, lo - b * length: hi - b * length])

        with timed(timings, "network"):
            network.run(spec, mine, write)
        spec = phases = None  # released before the next batch
        _release_batch_memory()
        bar.update(len(mine))
    bar.close()
    return timings, peak, sums


def _release_batch_memory():
    """A batch's arrays back to the system: NNabla's CPU memory cache (which keeps every size
    it was asked for, and the last batch of a track differs) and glibc's freed heap. Without
    it, a worker grew by 50 MB between a 3- and a 10-minute song."""
    nnabla_ext.cpu.clear_memory_cache()
    return_freed_memory()


def separate(audio, rate, cfgs, targets=None, **kw):
    """Separate a mixture into the targets' estimates, in memory.

    audio [shape=(nb_timesteps, nb_channels)] at `rate`; cfgs: `load_models`' result, or a
    model as `load_models` takes it (a published name, a folder or a file); other arguments
    as `separate_stream`'s. Returns ({name: float32 [shape=(nb_timesteps', 2)]},
    model_rate).
    """
    names, model_rate, blocks = separate_stream(audio, rate, cfgs, targets, **kw)
    waves = np.concatenate(list(blocks), axis=-1)  # (J, C, nb_timesteps)
    return {name: np.ascontiguousarray(waves[j].T) for j, name in enumerate(names)}, model_rate


def stem_names(targets, residual_model=False):
    """The stems a separation writes: the targets, then what they leave of the mixture,
    'residual' with `residual_model` or 'accompaniment' when there is a single target."""
    if len(targets) == 1:
        return list(targets) + ["accompaniment"]
    return list(targets) + (["residual"] if residual_model else [])


def separate_stream(audio, rate, cfgs, targets=None, niter=1, softmask=False, alpha=1.0,
                    residual_model=False, window=WINDOW_FRAMES, context=CONTEXT_FRAMES,
                    progress=True, timings=None, processes=None, network=None):
    """Separate a mixture, handing out the estimates as consecutive blocks of samples.

    audio [shape=(nb_timesteps, nb_channels)] at `rate` (resampled to the models' rate; mono
    is duplicated, channels beyond two are dropped), or an `audio.AudioFile` already decoded
    at the models' rate in stereo (`decode_audio(path, rate=..., stereo=True)`: then no part of
    the track is held in memory); cfgs: `load_models`' result, or a model as `load_models`
    takes it (a published name, a folder or a file: loaded here).
    Returns (names, model_rate, blocks): blocks is a generator of float32 [shape=(len(names), 2,
    n)] that does the work as it is consumed; writing the blocks out as they come keeps memory
    bounded whatever the length. With `residual_model`, or a single target, the rest of the
    mixture comes last as 'residual' ('accompaniment' when one target).
    timings: a dict to which the seconds spent per stage are added.
    processes: worker processes for the network (default: `worker_plan`'s choice).
    network: the `inference.InferenceNetwork` of the loaded parameters, when the caller keeps one
    for several separations (it is otherwise rebuilt for each: about 0.4 s for 4 full-size
    targets).
    """
    if isinstance(cfgs, (str, os.PathLike)):
        cfgs = load_models(cfgs, targets)
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
        with timed(timings, "resample"):
            audio = prepare_audio(audio, rate, cfg.sample_rate)
    nb_timesteps = audio.shape[0]
    if nb_timesteps < cfg.n_fft:
        raise UmxError("audio of %.3f s is too short: at least one STFT window (%d samples) "
                       "is needed" % (nb_timesteps / cfg.sample_rate, cfg.n_fft))
    # (nb_timesteps, C), seen as (C, nb_timesteps + n_fft): padded segments read on demand
    padded = PaddedSignal(audio, cfg.n_fft)
    nb_frames = nb_stft_frames(nb_timesteps, cfg.n_hop)
    names = stem_names(targets, residual_model)
    residual = len(names) > len(targets)

    # the Wiener filter's first pass gathered by the network's workers (as it runs, not after)
    first_pass = FirstPassSums.applies(niter, softmask, residual, padded.shape[0])

    def blocks():
        with estimate_spectrograms(padded, nb_frames, cfgs, targets, window, context,
                                   progress=progress, timings=timings, processes=processes,
                                   network=network, first_pass=first_pass) as v:
            yield from wiener_blocks(padded, nb_timesteps, v, cfg.n_fft, cfg.n_hop, niter=niter,
                                     softmask=softmask, alpha=alpha if softmask else 1.0,
                                     residual=residual, progress=progress, timings=timings,
                                     v_power=alpha if softmask else 1.0,
                                     mixture_peak=v.mixture_peak, first_pass=v.first_pass)
    return names, cfg.sample_rate, blocks()
