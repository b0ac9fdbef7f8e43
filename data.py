"""MUSDB18 for training: sampling, augmentation, batches, and a generator of small datasets.

Training samples (the seed's scheme): sample `index` of an epoch takes its target source from
track `index // samples_per_track` (every track is drawn `samples_per_track` times an epoch)
and each interfering source from an independently, uniformly drawn track (with replacement);
every source gets its own random chunk of `seq_dur` seconds and its own augmentations (gain
uniform in [0.25, 1.25], channel swap with probability 1/2); the mixture is their sum.
Each sample's random numbers come from (seed, epoch, index) alone, so the data do not depend
on the order or the worker that loads them. Validation uses whole tracks, unaugmented.

`python data.py --generate ROOT` writes a small MUSDB-format WAV dataset of synthetic music.
"""
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from runtime import UmxError

SOURCES = ["vocals", "drums", "bass", "other"]
AUGMENTATIONS = ["gain", "channelswap"]
RATE = 44100


# --------------------------------------------------------------------------------------
# tracks
# --------------------------------------------------------------------------------------

# STEMS excerpts: the AAC decoder may deliver a few samples more or fewer than asked at an
# excerpt's end; those are trimmed or zero-extended (any larger shortfall is an error)
STEMS_READ_TOLERANCE = 64


class Source:
    """One stream of audio in a dataset file (a WAV/FLAC/OGG file, or stream `stem_id` of a
    STEMS .mp4), probed once: rate, channels, frames. Reads are thread-safe."""

    def __init__(self, path, stem_id=None):
        self.path, self.stem_id = path, stem_id
        try:
            if stem_id is None:
                import soundfile as sf
                info = sf.info(path)
                self.rate, self.channels, self.frames = info.samplerate, info.channels, info.frames
            else:
                import stempeg
                info = stempeg.Info(path)
                self.rate, self.channels = int(info.rate(stem_id)), int(info.channels(stem_id))
                self.frames = int(info.samples(stem_id))
        except Exception as exc:
            raise UmxError("cannot read %s: %s" % (self.describe(), _reason(exc)))

    def describe(self):
        return self.path if self.stem_id is None else "%s (stream %d)" % (self.path, self.stem_id)

    def read(self, start=0, frames=None):
        """frames start..start+frames-1 (all by default) → float32 [shape=(n, 2)]: mono is
        duplicated (stereo models), as `check_sources` documents."""
        frames = self.frames - start if frames is None else frames
        if start < 0 or start + frames > self.frames:
            raise UmxError("%s: frames %d..%d asked of %d" % (self.describe(), start,
                                                             start + frames, self.frames))
        try:
            if self.stem_id is None:
                import soundfile as sf
                audio, _ = sf.read(self.path, start=start, frames=frames, dtype="float32",
                                   always_2d=True)
            else:
                import stempeg
                audio, _ = stempeg.read_stems(self.path, start=start / self.rate or None,
                                              duration=frames / self.rate, stem_id=self.stem_id,
                                              dtype=np.float32)
        except Exception as exc:
            raise UmxError("cannot read %s: %s" % (self.describe(), _reason(exc)))
        if audio.shape[0] != frames:
            if self.stem_id is None or frames - audio.shape[0] > STEMS_READ_TOLERANCE:
                raise UmxError("%s gave %d samples where %d were asked"
                               % (self.describe(), audio.shape[0], frames))
            audio = audio[:frames] if audio.shape[0] > frames else \
                np.pad(audio, ((0, frames - audio.shape[0]), (0, 0)))
        if audio.shape[1] == 1:
            audio = np.repeat(audio, 2, axis=1)
        return np.ascontiguousarray(audio, np.float32)

    def fingerprint(self):
        """What identifies this file's content for the check cache: path, size, mtime."""
        stat = os.stat(self.path)
        return "%s|%s|%d|%d" % (os.path.realpath(self.path), self.stem_id, stat.st_size,
                                stat.st_mtime_ns)


def _reason(exc):
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


class Track:
    """One track: named sources (and the mixture, when the dataset has one) of one length."""

    def __init__(self, name, sources, mixture=None):
        self.name, self.sources, self.mixture = name, dict(sources), mixture
        first = mixture or next(iter(self.sources.values()))
        self.rate, self.frames = first.rate, first.frames
        self.duration = self.frames / float(self.rate)

    def files(self):
        return ([self.mixture] if self.mixture else []) + list(self.sources.values())

    def read(self, source, start=0.0, duration=None):
        """source 'mixture' or a source name → float32 [shape=(nb_timesteps, 2)]"""
        item = self.mixture if source == "mixture" else self.sources[source]
        first = int(round(start * self.rate))
        frames = None if duration is None else int(round(duration * self.rate))
        return item.read(first, frames)


def check_sources(tracks, cache_path=None, progress=True, log=print):
    """Check the dataset before training; one UmxError naming the file otherwise.

    - every file has 1 or 2 channels (mono is duplicated for stereo models: logged);
    - every file has the dataset's one rate (that of the first file): no silent resampling;
    - the files of a track have one length (that of its mixture);
    - every file decodes to its end and holds finite samples. This reads all of the data
      once; files already checked (same path, size and time, in `cache_path`) are skipped.
    """
    import json
    from tqdm import tqdm
    reference = tracks[0].files()[0]
    mono = []
    for track in tracks:
        for item in track.files():
            if item.channels not in (1, 2):
                raise UmxError("%s has %d channels: only mono and stereo files can be used"
                               % (item.describe(), item.channels))
            if item.rate != reference.rate:
                raise UmxError("%s is at %d Hz, but %s at %d Hz: all files of a dataset need "
                               "one rate (resample the dataset first)"
                               % (item.describe(), item.rate, reference.describe(), reference.rate))
            if item.frames != track.frames:
                first = track.files()[0]
                raise UmxError("%s has %d samples, but %s %d: the files of a track need one "
                               "length" % (item.describe(), item.frames, first.describe(),
                                           track.frames))
            if item.channels == 1:
                mono.append(item.describe())
    if mono:
        log("%d mono files are used as stereo (both channels alike), e.g. %s" % (len(mono), mono[0]))
    checked = {}
    if cache_path and os.path.isfile(cache_path):
        try:
            with open(cache_path) as f:
                checked = dict(json.load(f))
        except (OSError, ValueError, TypeError):
            checked = {}
    todo = [item for track in tracks for item in track.files() if item.fingerprint() not in checked]
    for item in tqdm(todo, desc="checking the data", disable=not progress or not todo, leave=False):
        audio = item.read()
        if not np.all(np.isfinite(audio)):
            raise UmxError("%s holds NaN or infinite samples" % item.describe())
        checked[item.fingerprint()] = True
    if cache_path and todo:
        from files import write_json_atomic
        write_json_atomic(cache_path, checked)


def check_root(root, subset):
    """Fail with one line unless `root` is a folder holding `subset`."""
    if not os.path.isdir(root):
        raise UmxError("dataset root not found: %s" % root)
    if not os.path.isdir(os.path.join(root, subset)):
        raise UmxError("%s has no '%s' folder: not a MUSDB18 root" % (root, subset))


def musdb_setup():
    """musdb's description of MUSDB18 (file names, STEMS stream ids, validation tracks)."""
    import musdb
    import yaml
    with open(os.path.join(os.path.dirname(musdb.__file__), "configs", "mus.yaml")) as f:
        return yaml.safe_load(f)


def list_musdb(root, subset, is_wav):
    """The tracks of root/subset in musdb's layout (WAV folders, or STEMS files), each file
    probed: a missing or unreadable one is named."""
    setup = musdb_setup()
    folder = os.path.join(root, subset)
    tracks = []
    for entry in sorted(os.listdir(folder)):
        path = os.path.join(folder, entry)
        if is_wav and os.path.isdir(path):
            files = {s: os.path.join(path, setup["sources"][s]) for s in SOURCES}
            missing = [s for s in SOURCES if not os.path.isfile(files[s])]
            if missing:
                raise UmxError("track '%s' is missing the '%s' stem (%s)"
                               % (entry, missing[0], files[missing[0]]))
            mixture = os.path.join(path, setup["mixture"])
            if not os.path.isfile(mixture):
                raise UmxError("track '%s' has no %s" % (entry, mixture))
            tracks.append(Track(entry, {s: Source(files[s]) for s in SOURCES}, Source(mixture)))
        elif not is_wav and entry.endswith(".stem.mp4") and os.path.isfile(path):
            ids = setup["stem_ids"]
            tracks.append(Track(entry[:-len(".stem.mp4")],
                                {s: Source(path, ids[s]) for s in SOURCES},
                                Source(path, ids["mixture"])))
    return tracks


def load_tracks(root=None, is_wav=False, subset="train", split=None, log=print):
    """Tracks of a MUSDB18 folder (musdb's layout), every file probed.

    subset 'train' with split 'train'/'valid' applies musdb's fixed 14-track validation split;
    a dataset without any of those names holds out every 5th track (at least one) instead.
    root None → musdb's 7-second previews (downloaded once).
    """
    if root is None:
        import musdb
        try:
            db = musdb.DB(download=True, subsets=subset)
        except Exception as exc:
            raise UmxError("could not download the MUSDB18 previews (%s): pass --root with a "
                           "local MUSDB18 folder" % type(exc).__name__)
        root = db.root
    check_root(root, subset)
    tracks = list_musdb(root, subset, is_wav)
    if not tracks:
        raise UmxError("no tracks in %s/%s%s" % (root, subset, "" if is_wav else
                                                  " (for decoded WAV folders pass --is-wav)"))
    if split is None:
        return tracks
    valid_names = set(musdb_setup()["validation_tracks"])
    if not any(t.name in valid_names for t in tracks):
        held = [t.name for t in tracks[::5]] if len(tracks) > 1 else []
        log("no MUSDB18 validation track in %s: holding out %d of %d tracks for validation (%s)"
            % (root, len(held), len(tracks), ", ".join(held)))
        valid_names = set(held)
    chosen = [t for t in tracks if (t.name in valid_names) == (split == "valid")]
    if not chosen:
        raise UmxError("the %s split of %s is empty" % (split, root))
    return chosen


# --------------------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------------------

def sample_rng(seed, epoch, index):
    """The random numbers of one training sample, whoever loads it."""
    return np.random.RandomState(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


def augment(audio, rng, augmentations):
    """audio [shape=(nb_timesteps, 2)] → gain in [0.25, 1.25] and/or a 50 % channel swap."""
    if "gain" in augmentations:
        audio = audio * rng.uniform(0.25, 1.25)
    if "channelswap" in augmentations and audio.shape[1] == 2 and rng.uniform() < 0.5:
        audio = audio[:, ::-1]
    return audio


class TrainingSet:
    """Random-mix training samples: len = nb_tracks * samples_per_track each epoch.

    targets: what a sample's target holds — one source (UMX: its source comes from the
    balanced track `index // samples_per_track`, the others from random tracks), or several
    (X-UMX, all four: every source from a random track, as Sony's training draws them).
    """

    def __init__(self, tracks, targets, seq_dur=6.0, samples_per_track=64,
                 augmentations=AUGMENTATIONS, seed=42, log=None):
        targets = [targets] if isinstance(targets, str) else list(targets)
        unknown = [t for t in targets if t not in SOURCES]
        if unknown:
            raise UmxError("unknown --source '%s' (choose from %s)" % (unknown[0], ", ".join(SOURCES)))
        self.tracks, self.targets = tracks, targets
        self.balanced = targets[0] if len(targets) == 1 else None
        self.seq_dur = seq_dur if seq_dur and seq_dur > 0 else None
        self.samples_per_track = samples_per_track
        self.augmentations = list(augmentations)
        self.seed = seed
        self.long_enough = [t for t in tracks if not self.seq_dur or t.duration >= self.seq_dur]
        if not self.long_enough:
            raise UmxError("--seq-dur %.2f s is longer than every training track (longest: %.2f s)"
                           % (self.seq_dur, max(t.duration for t in tracks)))
        short = [t.name for t in tracks if t not in self.long_enough]
        if short and log:
            log("%d tracks shorter than --seq-dur %g s are not drawn from: %s"
                % (len(short), self.seq_dur, ", ".join(short)))

    def __len__(self):
        return len(self.tracks) * self.samples_per_track

    def draws(self, epoch, index):
        """What sample `index` of `epoch` is made of: [(source, track, first frame, frames)]
        (frames None: the whole track), and the random state for its augmentations."""
        rng = sample_rng(self.seed, epoch, index)
        balanced_track = self.tracks[index // self.samples_per_track]
        parts = []
        for source in SOURCES:
            # tracks shorter than the chunk are skipped
            if source == self.balanced and balanced_track in self.long_enough:
                track = balanced_track
            else:
                track = self.long_enough[rng.randint(len(self.long_enough))]
            if self.seq_dur:
                frames = int(round(self.seq_dur * track.rate))
                parts.append((source, track, rng.randint(track.frames - frames + 1), frames))
            else:
                parts.append((source, track, 0, None))
        return parts, rng

    def describe(self, epoch, index):
        """Where sample `index` of `epoch` comes from, in words (for error messages)."""
        return ", ".join("%s of '%s' from %.2f s" % (source, track.name, first / track.rate)
                         for source, track, first, _ in self.draws(epoch, index)[0])

    def sample(self, epoch, index):
        """→ (mixture [shape=(nb_timesteps, 2)], targets [shape=(nb_timesteps, 2 * len(targets))]
        (the targets' channels side by side, in `targets` order)), float32"""
        parts, rng = self.draws(epoch, index)
        stems = {source: augment(track.sources[source].read(first, frames), rng,
                                 self.augmentations)
                 for source, track, first, frames in parts}
        if not self.seq_dur:  # whole tracks of different lengths: cut to the shortest
            n = min(a.shape[0] for a in stems.values())
            stems = {k: a[:n] for k, a in stems.items()}
        mixture = sum(stems[s] for s in SOURCES)
        target = np.concatenate([stems[t] for t in self.targets], axis=1)
        return mixture.astype(np.float32), target.astype(np.float32)


def epoch_batches(dataset, epoch, batch_size, nb_workers=0, rank=0, nb_ranks=1,
                  with_indices=False):
    """Yield (mixtures, targets) [shape=(batch, nb_timesteps, 2)] for one epoch
    (with_indices: (indices, mixtures, targets), the samples' indices in the epoch).

    The epoch's sample order is a permutation drawn from (seed, epoch); with several ranks
    each takes every nb_ranks-th batch-sized slice. Incomplete last batches are dropped.
    """
    order = np.random.RandomState(
        np.random.SeedSequence([dataset.seed, epoch]).generate_state(1)[0]).permutation(len(dataset))
    step = batch_size * nb_ranks
    slices = [order[i + rank * batch_size: i + (rank + 1) * batch_size]
              for i in range(0, len(order) - step + 1, step)]
    load = (lambda idx: dataset.sample(epoch, int(idx)))
    pool = ThreadPoolExecutor(nb_workers) if nb_workers > 0 else None
    try:
        for indices in slices:
            samples = list(pool.map(load, indices) if pool else map(load, indices))
            batch = (np.stack([s[0] for s in samples]), np.stack([s[1] for s in samples]))
            yield (indices,) + batch if with_indices else batch
    finally:
        if pool:
            pool.shutdown(wait=False, cancel_futures=True)


def validation_pairs(tracks, targets):
    """Yield (name, mixture, targets [shape=(nb_timesteps, 2 * len(targets))]) of whole
    tracks, unaugmented."""
    targets = [targets] if isinstance(targets, str) else list(targets)
    for track in tracks:
        yield track.name, track.read("mixture"), np.concatenate([track.read(t) for t in targets],
                                                                axis=1)


# --------------------------------------------------------------------------------------
# a small MUSDB-format dataset of synthetic music
# --------------------------------------------------------------------------------------

def _envelope(n, rate, attack, release):
    t = np.arange(n) / rate
    return np.minimum(1.0, t / max(attack, 1e-4)) * np.exp(-t / release)


def _note(freq, n, rate, harmonics, rng, vibrato=0.0):
    t = np.arange(n) / rate
    phase = 2 * np.pi * freq * t
    if vibrato:
        phase += vibrato * np.sin(2 * np.pi * rng.uniform(4.5, 6.5) * t) / rng.uniform(4.5, 6.5)
    return sum(a * np.sin(k * phase + rng.uniform(0, 2 * np.pi)) for k, a in harmonics)


def synth_track(duration, rng, rate=RATE):
    """Four stereo stems {source: float32 (nb_timesteps, 2)} of one synthetic song."""
    n = int(duration * rate)
    beat = 60.0 / rng.uniform(80, 140)
    root = rng.choice([40, 43, 45, 47, 48, 50])  # MIDI note of the key
    progression = [0, 5, 7, 3] if rng.uniform() < 0.5 else [0, 7, 9, 5]
    hz = (lambda midi: 440.0 * 2 ** ((midi - 69) / 12.0))
    stems = {s: np.zeros(n) for s in SOURCES}

    def place(source, start, signal):
        a = int(start * rate)
        if a >= n:
            return
        b = min(n, a + signal.size)
        stems[source][a:b] += signal[: b - a]

    # drums: kick on 1 and 3, snare on 2 and 4, hi-hats on eighths
    for k in range(int(duration / beat * 2) + 1):
        t0 = k * beat / 2
        m = int(0.35 * rate)
        if k % 4 == 0:
            f = 50 + 100 * np.exp(-np.arange(m) / rate / 0.03)
            place("drums", t0, 0.9 * np.sin(2 * np.pi * np.cumsum(f) / rate) * _envelope(m, rate, 0.002, 0.12))
        if k % 4 == 2:
            place("drums", t0, 0.5 * rng.randn(m) * _envelope(m, rate, 0.001, 0.06))
        hat = int(0.05 * rate)
        place("drums", t0, 0.15 * np.diff(rng.randn(hat + 1)) * _envelope(hat, rate, 0.001, 0.015))
    # bass, pads and melody follow the chord progression, one chord per bar
    bar = 4 * beat
    for c in range(int(duration / bar) + 1):
        chord = root + progression[c % len(progression)]
        for q in range(4):  # bass: a note per beat
            m = int(beat * rate)
            place("bass", c * bar + q * beat, 0.5 * _note(hz(chord - 12 + (7 if q == 2 else 0)), m, rate,
                                                          [(1, 1.0), (2, 0.5), (3, 0.25)], rng)
                  * _envelope(m, rate, 0.005, 0.4))
        m = int(bar * rate)
        pad = sum(_note(hz(chord + 12 + i), m, rate, [(1, 1.0), (2, 0.3)], rng) for i in (0, 4, 7))
        place("other", c * bar, 0.12 * pad * _envelope(m, rate, 0.3, 3.0))
    # vocals: sung phrases with gaps, vibrato and formant-like harmonics
    t = 0.0
    scale = [0, 2, 4, 5, 7, 9, 11, 12]
    while t < duration:
        phrase = rng.uniform(1.5, 3.0)
        for _ in range(int(phrase / (beat / 2))):
            m = int(beat / 2 * rate)
            f = hz(root + 24 + scale[rng.randint(len(scale))])
            place("vocals", t, 0.3 * _note(f, m, rate, [(1, 1.0), (2, 0.7), (3, 0.5), (4, 0.2), (5, 0.3)],
                                           rng, vibrato=0.02 * f) * _envelope(m, rate, 0.03, 0.5))
            t += beat / 2
        t += rng.uniform(0.5, 1.5)
    out = {}
    for source in SOURCES:
        pan = rng.uniform(0.3, 0.7)
        out[source] = (stems[source][:, None] * np.array([[np.sqrt(1 - pan), np.sqrt(pan)]])).astype(np.float32)
    return out


def generate_dataset(root, nb_train=8, nb_test=2, duration=12.0, seed=0, progress=True):
    """Write <root>/{train,test}/<track>/{mixture,drums,bass,other,vocals}.wav (float WAV,
    44.1 kHz stereo, mixture = sum of the stems).

    Resumable: complete tracks (the mixture is written last) are kept. `root/generated.json`
    records the settings; a root that holds other data, or a dataset generated with other
    settings, is refused rather than mixed with.
    """
    import soundfile as sf
    from tqdm import tqdm
    from audio import write_audio_atomic
    from files import read_json, write_json_atomic, writing_into
    settings = dict(nb_train=nb_train, nb_test=nb_test, duration=duration, seed=seed)
    record = os.path.join(root, "generated.json")
    if os.path.isfile(record):
        if read_json(record, "record of a generated dataset") != settings:
            raise UmxError("%s holds a dataset generated with other settings (%s): choose "
                           "another folder" % (root, record))
    elif os.path.isdir(root) and os.listdir(root):
        raise UmxError("%s is not empty and holds no generated dataset: choose another folder"
                       % root)
    with writing_into(os.path.dirname(os.path.abspath(root))):
        os.makedirs(root, exist_ok=True)
    write_json_atomic(record, settings)
    rng = np.random.RandomState(seed)
    jobs = [("train", "Synth %02d" % i) for i in range(nb_train)] + \
           [("test", "Synth Test %02d" % i) for i in range(nb_test)]
    for subset, name in tqdm(jobs, desc="generating %s" % root, disable=not progress):
        track_rng = np.random.RandomState(rng.randint(2 ** 31))
        folder = os.path.join(root, subset, name)
        if all(os.path.isfile(os.path.join(folder, s + ".wav")) for s in SOURCES + ["mixture"]):
            continue
        with writing_into(root):
            os.makedirs(folder, exist_ok=True)
        stems = synth_track(duration, track_rng)
        mixture = sum(stems.values())
        peak = np.abs(mixture).max()
        scale = 0.9 / peak if peak > 0.9 else 1.0
        for source, audio in stems.items():
            write_audio_atomic(os.path.join(folder, source + ".wav"), audio * scale, RATE)
        # the mixture last, so a track folder with a mixture is complete
        mixture = sum(sf.read(os.path.join(folder, s + ".wav"), dtype="float32")[0] for s in SOURCES)
        write_audio_atomic(os.path.join(folder, "mixture.wav"), mixture, RATE)
    return root


def main(argv=None):
    from args import get_data_args
    from runtime import run_cli
    args = get_data_args(argv)
    run_cli(generate_dataset, args.generate, args.nb_train, args.nb_test, args.duration, args.seed)


if __name__ == "__main__":
    main()
