"""Training data: the dataset kinds, their checks, the samples and the batches.

Kinds (`--dataset`), with open-unmix-pytorch's folders and flags:

- `musdb`: MUSDB18 (STEMS, or decoded WAV with --is-wav). Sample `index` of an epoch takes
  its target from track `index // samples_per_track` and each other source from a uniformly
  drawn track (with replacement), each at its own random position (the seed's scheme); X-UMX
  draws every source so. Validation: musdb's 14 validation tracks, whole.
- `aligned`: ROOT/{train,valid}/<track>/{--input-file, --output-file}: the model maps one to
  the other (no mixing); both read at one random position.
- `sourcefolder`: ROOT/{train,valid}/<folder>/*<--ext>: each sample mixes a random file of
  --target-dir with one random file of each --interferer-dirs folder, each at its own random
  position; --nb-train-samples per epoch; validation: --nb-valid-samples fixed samples.
- `trackfolder_fix`: ROOT/{train,valid}/<track>/{--target-file, --interferer-files}: the
  mixture is their sum, read at one position (--random-track-mix: each interferer from a
  random track at its own position).
- `trackfolder_var`: ROOT/{train,valid}/<track>/*<--ext>: the mixture is the sum of all
  files of the track, the target one of them (--target-file; a track without it is an error,
  or silence with --silence-missing-targets; --random-interferer-mix: the others from a
  random track).

Every kind: `--seq-dur` chunks (<= 0: whole files, cut to the shortest), --source-augmentations
(gain uniform in [0.25, 1.25] and a channel swap with probability 1/2, per source; aligned
pairs get the same), mono files used as stereo (both channels alike). Each sample's random
numbers come from (seed, epoch, index) alone, so the data do not depend on the order, the
worker or the process that loads them. Before training every file is checked
(`check_sources`): one rate, one or two channels, the files of a track of one length, every
sample decodable and finite.
"""
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from runtime import UmxError

SOURCES = ["vocals", "drums", "bass", "other"]
AUGMENTATIONS = ["gain", "channelswap"]
KINDS = ["musdb", "aligned", "sourcefolder", "trackfolder_fix", "trackfolder_var"]
# STEMS excerpts: the AAC decoder may deliver a few samples more or fewer than asked at an
# excerpt's end; those are trimmed or zero-extended (any larger shortfall is an error)
STEMS_READ_TOLERANCE = 64
# sourcefolder: fixed unaugmented samples of the training folders for the statistics
STATISTICS_SAMPLES = 64


# --------------------------------------------------------------------------------------
# files and tracks
# --------------------------------------------------------------------------------------

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
    """One track: named sources (None: a missing target, read as silence) and the mixture,
    when the dataset has a file of it; all of one length."""

    def __init__(self, name, sources, mixture=None):
        self.name, self.sources, self.mixture = name, dict(sources), mixture
        first = mixture or next(s for s in self.sources.values() if s is not None)
        self.rate, self.frames = first.rate, first.frames
        self.duration = self.frames / float(self.rate)

    def files(self):
        return ([self.mixture] if self.mixture else []) + \
            [s for s in self.sources.values() if s is not None]

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


# --------------------------------------------------------------------------------------
# MUSDB18
# --------------------------------------------------------------------------------------

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
# the folder kinds of open-unmix-pytorch
# --------------------------------------------------------------------------------------

def _split_folder(root, split, kind, layout):
    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
        raise UmxError("%s has no '%s' folder (--dataset %s: %s)" % (root, split, kind, layout))
    return folder


def _audio_files(folder, ext):
    return sorted(f for f in os.listdir(folder)
                  if f.lower().endswith(ext.lower()) and os.path.isfile(os.path.join(folder, f)))


def _name(filename):
    """The target name a file gives: vocals.flac → vocals."""
    return os.path.splitext(os.path.basename(filename))[0]


def list_track_folders(root, split, kind, layout, make_track):
    """Tracks of ROOT/split/<track>/ (one per folder): make_track(name, folder) → Track."""
    folder = _split_folder(root, split, kind, layout)
    names = sorted(n for n in os.listdir(folder) if os.path.isdir(os.path.join(folder, n)))
    if not names:
        raise UmxError("%s holds no track folder (--dataset %s: %s)" % (folder, kind, layout))
    return [make_track(name, os.path.join(folder, name)) for name in names]


def _need_file(folder, filename, flag):
    path = os.path.join(folder, filename)
    if not os.path.isfile(path):
        raise UmxError("track '%s' has no %s (%s %s)" % (os.path.basename(folder), path, flag,
                                                        filename))
    return Source(path)


def aligned_tracks(root, split, input_file, output_file):
    layout = "ROOT/{train,valid}/<track>/{%s,%s}" % (input_file, output_file)
    return list_track_folders(root, split, "aligned", layout, lambda name, folder: Track(
        name, {_name(output_file): _need_file(folder, output_file, "--output-file")},
        mixture=_need_file(folder, input_file, "--input-file")))


def fixed_tracks(root, split, target_file, interferer_files):
    layout = "ROOT/{train,valid}/<track>/{%s}" % ",".join([target_file] + interferer_files)
    return list_track_folders(root, split, "trackfolder_fix", layout, lambda name, folder: Track(
        name, dict([(_name(target_file), _need_file(folder, target_file, "--target-file"))] +
                   [(_name(f), _need_file(folder, f, "--interferer-files"))
                    for f in interferer_files])))


def variable_tracks(root, split, target_file, ext, silence_missing):
    layout = "ROOT/{train,valid}/<track>/*%s" % ext

    def make(name, folder):
        files = _audio_files(folder, ext)
        if target_file not in files and not silence_missing:
            raise UmxError("track '%s' has no %s (--target-file; or pass "
                           "--silence-missing-targets)" % (name, os.path.join(folder, target_file)))
        sources = {_name(target_file): Source(os.path.join(folder, target_file))
                   if target_file in files else None}
        sources.update((_name(f), Source(os.path.join(folder, f))) for f in files if f != target_file)
        if all(s is None for s in sources.values()):
            raise UmxError("track '%s' holds no %s file" % (name, ext))
        return Track(name, sources)
    return list_track_folders(root, split, "trackfolder_var", layout, make)


def source_pools(root, split, target_dir, interferer_dirs, ext):
    """{folder: [one Track per file]} of ROOT/split/<folder>/*ext."""
    layout = "ROOT/{train,valid}/{%s}/*%s" % (",".join([target_dir] + interferer_dirs), ext)
    base = _split_folder(root, split, "sourcefolder", layout)
    pools = {}
    for name in [target_dir] + interferer_dirs:
        folder = os.path.join(base, name)
        if not os.path.isdir(folder):
            raise UmxError("%s has no '%s' folder (--dataset sourcefolder: %s)"
                           % (base, name, layout))
        files = _audio_files(folder, ext)
        if not files:
            raise UmxError("%s holds no %s file (--ext)" % (folder, ext))
        pools[name] = [Track("%s/%s" % (name, f), {name: Source(os.path.join(folder, f))})
                       for f in files]
    return pools


# --------------------------------------------------------------------------------------
# samples
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


class SampleSet:
    """Training samples drawn at random: `len(self)` per epoch, sample (epoch, index) made
    only of the random numbers of (seed, epoch, index).

    A kind says what a sample is made of (`pick`): [(source name, role, track)] with role
    'target', 'interferer' or 'input' (aligned's model input); parts of one track share one
    position when `shared_position`, else each part has its own. The mixture is the input, or
    the sum of the targets and interferers; the target, the targets side by side.
    """
    shared_position = False
    shared_augmentation = False  # aligned: input and output augmented alike
    pooled = False  # sourcefolder: files drawn from pools, each checked apart

    def __init__(self, tracks, targets, length, seq_dur=6.0, augmentations=AUGMENTATIONS,
                 seed=42, log=None):
        self.tracks, self.targets, self.length = tracks, list(targets), length
        self.seq_dur = seq_dur if seq_dur and seq_dur > 0 else None
        self.augmentations = list(augmentations)
        self.seed = seed
        self.log = log
        self.long_enough = tracks if self.pooled else self.drawable(tracks)

    def drawable(self, tracks, what="training track"):
        """The tracks at least --seq-dur long (the others are named in the log); none is an
        error."""
        long_enough = [t for t in tracks if not self.seq_dur or t.duration >= self.seq_dur]
        if not long_enough:
            raise UmxError("--seq-dur %.2f s is longer than every %s (longest: %.2f s)"
                           % (self.seq_dur, what, max(t.duration for t in tracks)))
        short = [t.name for t in tracks if t not in long_enough]
        if short and self.log:
            self.log("%d files or tracks shorter than --seq-dur %g s are not drawn from: %s"
                     % (len(short), self.seq_dur, ", ".join(short)))
        return long_enough

    def __len__(self):
        return self.length

    def random_track(self, rng, pool=None):
        pool = self.long_enough if pool is None else pool
        return pool[rng.randint(len(pool))]

    def pick(self, rng, index):
        raise NotImplementedError

    def draws(self, epoch, index):
        """What sample `index` of `epoch` is made of: [(name, role, track, first frame,
        frames)] (frames None: the whole track), and the random state for its augmentations."""
        rng = sample_rng(self.seed, epoch, index)
        parts, positions = [], {}
        for name, role, track in self.pick(rng, index):
            frames = int(round(self.seq_dur * track.rate)) if self.seq_dur else None
            if frames is None:
                first = 0
            elif self.shared_position and id(track) in positions:
                first = positions[id(track)]
            else:
                first = positions[id(track)] = rng.randint(track.frames - frames + 1)
            parts.append((name, role, track, first, frames))
        return parts, rng

    def describe(self, epoch, index):
        """Where sample `index` of `epoch` comes from, in words (for error messages)."""
        return ", ".join("%s of '%s' from %.2f s" % (name, track.name, first / track.rate)
                         for name, _, track, first, _ in self.draws(epoch, index)[0])

    def sample(self, epoch, index, augmentations=None):
        """→ (mixture [shape=(nb_timesteps, 2)], targets [shape=(nb_timesteps, 2 * len(targets))]
        (the targets' channels side by side, in `targets` order)), float32"""
        augmentations = self.augmentations if augmentations is None else augmentations
        parts, rng = self.draws(epoch, index)
        audio = {}
        shared_state = rng.get_state() if self.shared_augmentation else None
        for name, role, track, first, frames in parts:
            source = track.mixture if role == "input" else track.sources[name]
            if source is None:  # a missing target, as silence
                signal = np.zeros((frames or track.frames, 2), np.float32)
            else:
                signal = source.read(first, frames)
            if shared_state is not None:
                rng.set_state(shared_state)
            audio[(name, role)] = augment(signal, rng, augmentations)
        if not self.seq_dur:  # whole tracks of different lengths: cut to the shortest
            n = min(a.shape[0] for a in audio.values())
            audio = {k: a[:n] for k, a in audio.items()}
        inputs = [a for (name, role), a in audio.items() if role == "input"]
        mixture = inputs[0] if inputs else \
            sum(a for (name, role), a in audio.items() if role != "input")
        target = np.concatenate([audio[(t, "target")] for t in self.targets], axis=1)
        return np.asarray(mixture, np.float32), target.astype(np.float32)


class PerTrackSamples(SampleSet):
    """`samples_per_track` samples of each track per epoch (the track of sample `index`:
    `index // samples_per_track`)."""

    def __init__(self, tracks, targets, samples_per_track=64, *args, **kw):
        targets = [targets] if isinstance(targets, str) else list(targets)
        super().__init__(tracks, targets, len(tracks) * samples_per_track, *args, **kw)
        self.samples_per_track = samples_per_track

    def track_of(self, rng, index):
        """The sample's own track (a random one if it is too short)."""
        track = self.tracks[index // self.samples_per_track]
        return track if track in self.long_enough else self.random_track(rng)


class MusdbSamples(PerTrackSamples):
    """UMX (one target): its source from the balanced track, the others from random tracks;
    X-UMX (several targets): every source from a random track; each at its own position."""

    def __init__(self, tracks, targets, *args, **kw):
        targets = [targets] if isinstance(targets, str) else list(targets)
        unknown = [t for t in targets if t not in SOURCES]
        if unknown:
            raise UmxError("unknown --source '%s' (choose from %s)" % (unknown[0], ", ".join(SOURCES)))
        super().__init__(tracks, targets, *args, **kw)

    def pick(self, rng, index):
        balanced = self.tracks[index // self.samples_per_track]
        parts = []
        for source in SOURCES:
            if len(self.targets) == 1 and source == self.targets[0] and \
                    balanced in self.long_enough:
                track = balanced
            else:
                track = self.random_track(rng)
            parts.append((source, "target" if source in self.targets else "interferer", track))
        return parts


class TrackSamples(PerTrackSamples):
    """aligned, trackfolder_fix, trackfolder_var: the track `index // samples_per_track`,
    all its files at one position; with random mixing, interferers from random tracks."""
    shared_position = True

    def __init__(self, *args, random_mix=None, **kw):
        super().__init__(*args, **kw)
        self.random_mix = random_mix  # None, 'each' (fix: per interferer), 'track' (var)

    def pick(self, rng, index):
        track = self.track_of(rng, index)
        if track.mixture is not None:  # aligned
            return [(self.targets[0], "target", track), ("mixture", "input", track)]
        parts = [(self.targets[0], "target", track)]
        others = [n for n in track.sources if n != self.targets[0]]
        if self.random_mix == "track":
            donor = self.random_track(rng)
            return parts + [(n, "interferer", donor) for n in donor.sources
                            if n != self.targets[0] and donor.sources[n] is not None]
        for name in others:
            donor = self.random_track(rng) if self.random_mix == "each" else track
            parts.append((name, "interferer", donor))
        return parts


class AlignedSamples(TrackSamples):
    shared_augmentation = True


class SourceFolderSamples(SampleSet):
    """sourcefolder: a random file of the target folder and one of each interferer folder,
    each at its own position."""
    pooled = True

    def __init__(self, pools, targets, length, *args, **kw):
        super().__init__([t for pool in pools.values() for t in pool], targets, length, *args,
                         **kw)
        self.pools = {name: self.drawable(pool, "file of the folder %s" % name)
                      for name, pool in pools.items()}

    def pick(self, rng, index):
        return [(name, "target" if name in self.targets else "interferer",
                 self.random_track(rng, pool)) for name, pool in self.pools.items()]


def epoch_batches(dataset, epoch, batch_size, nb_workers=0, rank=0, nb_ranks=1,
                  with_indices=False):
    """Yield (mixtures, targets) [shape=(batch, nb_timesteps, 2 (x targets))] for one epoch
    (with_indices: (indices, mixtures, targets), the samples' indices in the epoch).

    The epoch's sample order is a permutation drawn from (seed, epoch); with several ranks
    each takes every nb_ranks-th batch-sized slice. Incomplete last batches are dropped.
    nb_workers threads load samples (file reads and numpy release the GIL).
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


# --------------------------------------------------------------------------------------
# a dataset: the kind's training samples, validation items and statistics
# --------------------------------------------------------------------------------------

class Dataset:
    """What training needs of one dataset: `train` (a SampleSet), `valid_items()` and
    `statistics_items()` (fixed, unaugmented (name, mixture, targets) and mixtures),
    `tracks()` (everything to check), `targets`, `rate` and `log` (for the JSON log)."""

    def __init__(self, kind, train, valid, targets, valid_samples=None, description=None):
        self.kind, self.train, self.valid, self.targets = kind, train, valid, list(targets)
        self.valid_samples = valid_samples  # sourcefolder: a SampleSet of fixed samples
        self.rate = train.tracks[0].rate
        self.log = dict(description or {}, kind=kind, targets=self.targets,
                        train=[t.name for t in train.tracks],
                        valid=[t.name for t in (valid or valid_samples.tracks)])

    def tracks(self):
        return self.train.tracks + (self.valid or self.valid_samples.tracks)

    def _whole(self, track):
        """(mixture, targets) of a whole track, unaugmented."""
        def read(source):
            return np.zeros((track.frames, 2), np.float32) if source is None else source.read()
        if track.mixture is not None:
            mixture = track.mixture.read()
        else:
            mixture = sum(read(s) for s in track.sources.values())
        return mixture, np.concatenate([read(track.sources[t]) for t in self.targets], axis=1)

    def nb_valid_items(self, share=None):
        count = len(self.valid_samples) if self.valid_samples is not None else len(self.valid)
        return count if share is None else len(range(share[0], count, share[1]))

    def valid_items(self, share=None):
        """Yield (name, mixture [shape=(n, 2)], targets [shape=(n, 2 * len(targets))]), read
        one at a time; share (rank, size): only every size-th item from rank on."""
        rank, size = share or (0, 1)
        if self.valid_samples is not None:
            for index in range(rank, len(self.valid_samples), size):
                mixture, target = self.valid_samples.sample(0, index, augmentations=[])
                yield "sample %d" % index, mixture, target
            return
        for track in self.valid[rank::size]:
            yield (track.name,) + self._whole(track)

    def statistics_items(self):
        """Yield the unaugmented training mixtures the standardization is computed on."""
        if isinstance(self.train, SourceFolderSamples):
            for index in range(min(len(self.train), STATISTICS_SAMPLES)):
                yield self.train.sample(0, index, augmentations=[])[0]
            return
        for track in self.train.tracks:
            yield self._whole(track)[0]


def load_dataset(args, targets, log=print):
    """The dataset of `--dataset` (args: train.py's), for `targets` (musdb: the given ones;
    the folder kinds: their target file or folder's name). Validation splits are fixed."""
    kind = args.dataset
    description = {"root": os.path.abspath(args.root) if args.root else None}
    if kind == "musdb":
        train = load_tracks(args.root, args.is_wav, "train", "train", log=log)
        valid = load_tracks(args.root, args.is_wav, "train", "valid", log=lambda *a: None)
        if not args.is_wav:
            log("reading MUSDB18 STEMS, which is slow (about 1 sample/s): decode it once with "
                "'python data.py --decode-stems %s %s-wav' and train with --is-wav"
                % (args.root or "MUSDB18", (args.root or "MUSDB18").rstrip("/")))
        samples = MusdbSamples(train, targets, args.samples_per_track,
                               **_common(args, train, log))
        return Dataset(kind, samples, valid, targets, description=dict(description,
                                                                        is_wav=args.is_wav))
    if kind == "sourcefolder":
        pools = {split: source_pools(args.root, split, args.target_dir, args.interferer_dirs,
                                     args.ext) for split in ("train", "valid")}
        targets = [args.target_dir]
        common = _common(args, [t for pool in pools["train"].values() for t in pool], log)
        train = SourceFolderSamples(pools["train"], targets, args.nb_train_samples, **common)
        # fixed validation samples: seeded apart from training, never augmented
        valid = SourceFolderSamples(pools["valid"], targets, args.nb_valid_samples,
                                    **dict(common, seed=args.seed + 1, augmentations=[]))
        return Dataset(kind, train, None, targets, valid_samples=valid,
                       description=dict(description, ext=args.ext))
    if kind == "aligned":
        splits = {s: aligned_tracks(args.root, s, args.input_file, args.output_file)
                  for s in ("train", "valid")}
        targets, samples, mix = [_name(args.output_file)], AlignedSamples, None
    elif kind == "trackfolder_fix":
        splits = {s: fixed_tracks(args.root, s, args.target_file, args.interferer_files)
                  for s in ("train", "valid")}
        targets, samples = [_name(args.target_file)], TrackSamples
        mix = "each" if args.random_track_mix else None
    else:
        splits = {s: variable_tracks(args.root, s, args.target_file, args.ext,
                                     args.silence_missing_targets) for s in ("train", "valid")}
        targets, samples = [_name(args.target_file)], TrackSamples
        mix = "track" if args.random_interferer_mix else None
    train = samples(splits["train"], targets, args.samples_per_track, random_mix=mix,
                    **_common(args, splits["train"], log))
    return Dataset(kind, train, splits["valid"], targets, description=description)


def _common(args, train_tracks, log):
    """The sampling arguments every kind takes; --seq-dur <= 0 (whole files): one graph needs
    one length, that of the shortest training track or file."""
    seq_dur = args.seq_dur
    if seq_dur <= 0:
        seq_dur = min(t.duration for t in train_tracks)
        log("--seq-dur %g: training on whole tracks (%.2f s, the shortest)" % (args.seq_dur, seq_dur))
    return dict(seq_dur=seq_dur, augmentations=args.source_augmentations, seed=args.seed, log=log)


# --------------------------------------------------------------------------------------
# MUSDB18 STEMS → WAV, once
# --------------------------------------------------------------------------------------

def decode_stems(src, dst, pcm16=False, progress=True):
    """Decode a MUSDB18 STEMS root into musdb's WAV layout (dst/<subset>/<track>/
    {mixture,drums,bass,other,vocals}.wav), float WAV (or 16-bit PCM, refused where a sample
    would clip). Each track is written into a staging folder and published whole; complete
    tracks are kept, so a killed run, re-run, finishes the rest. Every stream's decoded length
    is checked against the file's and the mixture's. → the number of tracks decoded."""
    import soundfile as sf
    from tqdm import tqdm
    from files import staged_folder
    setup = musdb_setup()
    names = ["mixture"] + SOURCES
    subsets = [s for s in ("train", "test") if os.path.isdir(os.path.join(src, s))]
    if not subsets:
        raise UmxError("%s has no 'train' or 'test' folder: not a MUSDB18 root" % src)
    jobs = [(subset, entry) for subset in subsets
            for entry in sorted(os.listdir(os.path.join(src, subset)))
            if entry.endswith(".stem.mp4")]
    if not jobs:
        raise UmxError("no .stem.mp4 files in %s" % ", ".join(os.path.join(src, s) for s in subsets))
    done = 0
    for subset, entry in tqdm(jobs, desc="decoding STEMS", disable=not progress):
        folder = os.path.join(dst, subset, entry[:-len(".stem.mp4")])
        if all(os.path.isfile(os.path.join(folder, n + ".wav")) for n in names):
            continue
        path = os.path.join(src, subset, entry)
        streams = {n: Source(path, setup["stem_ids"][n]) for n in names}
        with staged_folder(folder) as staging:
            for name, source in streams.items():
                audio = source.read()  # checks the decoded length against the file's
                if source.frames != streams["mixture"].frames:
                    raise UmxError("%s has %d samples, the mixture %d"
                                   % (source.describe(), source.frames, streams["mixture"].frames))
                if pcm16 and np.abs(audio).max() > 1.0:
                    raise UmxError("%s exceeds full scale (peak %.3f): 16-bit PCM would clip it; "
                                   "decode without --pcm16" % (source.describe(),
                                                               np.abs(audio).max()))
                sf.write(os.path.join(staging, name + ".wav"), audio, source.rate,
                         subtype="PCM_16" if pcm16 else "FLOAT")
        done += 1
    return done
