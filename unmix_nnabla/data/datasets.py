"""Training data: the dataset kinds, their checks, the samples and the batches.

Kinds (`--dataset`), with open-unmix-pytorch's folders and flags:

- `musdb`: MUSDB18 (STEMS, or decoded WAV with --is-wav). Sample `index` of an epoch takes
  its target from track `index // samples_per_track` and each other source from a uniformly
  drawn track (with replacement), each at its own random position (open-unmix-pytorch's scheme); X-UMX
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
from dataclasses import dataclass, fields

import numpy as np

from unmix_nnabla.base.runtime import UmxError
from unmix_nnabla.base.vocabulary import AUGMENTATIONS, DATASET_KINDS, SOURCES
from unmix_nnabla.data.tracks import (aligned_tracks, fixed_tracks, load_tracks, source_name,
                                      source_pools, variable_tracks)

# sourcefolder: fixed unaugmented samples of the training folders for the statistics
STATISTICS_SAMPLES = 64


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


@dataclass
class DataConfig:
    """What a dataset is made of: train.py's dataset flags (`data_config` builds it),
    each kind using its own (`Kind.required`, `Kind.defaults`)."""
    kind: str = "musdb"
    root: str = None
    seq_dur: float = 6.0
    source_augmentations: tuple = AUGMENTATIONS
    seed: int = 42
    samples_per_track: int = 64
    source: str = None  # musdb, UMX: the target
    is_wav: bool = False
    input_file: str = None
    output_file: str = None
    target_dir: str = None
    interferer_dirs: tuple = None
    ext: str = None
    nb_train_samples: int = None
    nb_valid_samples: int = None
    target_file: str = None
    interferer_files: tuple = None
    random_track_mix: bool = None
    silence_missing_targets: bool = None
    random_interferer_mix: bool = None


def load_dataset(config, targets=None, log=print):
    """The dataset of `config.kind` for `targets` (musdb: the given ones, by default
    config.source; the folder kinds: their target file or folder's name). Validation splits
    are fixed."""
    return KINDS[config.kind].build(config, list(targets or [config.source]), log)


def _musdb(config, targets, log):
    train = load_tracks(config.root, config.is_wav, "train", "train", log=log)
    valid = load_tracks(config.root, config.is_wav, "train", "valid", log=lambda *a: None)
    if not config.is_wav:
        root = config.root or "MUSDB18"
        log("reading MUSDB18 STEMS, which is slow (about 1 sample/s): decode it once with "
            "'python data.py --decode-stems %s %s-wav' and train with --is-wav"
            % (root, root.rstrip("/")))
    samples = MusdbSamples(train, targets, config.samples_per_track,
                           **_common(config, train, log))
    return Dataset(config.kind, samples, valid, targets,
                   description=_description(config, is_wav=config.is_wav))


def _sourcefolder(config, targets, log):
    pools = {split: source_pools(config.root, split, config.target_dir, config.interferer_dirs,
                                 config.ext) for split in ("train", "valid")}
    targets = [config.target_dir]
    common = _common(config, [t for pool in pools["train"].values() for t in pool], log)
    train = SourceFolderSamples(pools["train"], targets, config.nb_train_samples, **common)
    # fixed validation samples: seeded apart from training, never augmented
    valid = SourceFolderSamples(pools["valid"], targets, config.nb_valid_samples,
                                **dict(common, seed=config.seed + 1, augmentations=[]))
    return Dataset(config.kind, train, None, targets, valid_samples=valid,
                   description=_description(config, ext=config.ext))


def _track_folders(list_tracks, target_file, samples, mix=None):
    """A builder for the kinds of one folder per track: list_tracks(config, split) → tracks,
    target_file(config): the target's file (it names the target), samples: the SampleSet
    class, mix(config): the interferers' random mixing."""
    def build(config, targets, log):
        splits = {s: list_tracks(config, s) for s in ("train", "valid")}
        targets = [source_name(target_file(config))]
        train = samples(splits["train"], targets, config.samples_per_track,
                        random_mix=mix(config) if mix else None,
                        **_common(config, splits["train"], log))
        return Dataset(config.kind, train, splits["valid"], targets,
                       description=_description(config))
    return build


def _description(config, **more):
    return dict(more, root=os.path.abspath(config.root) if config.root else None)


def _common(config, train_tracks, log):
    """The sampling arguments every kind takes; --seq-dur <= 0 (whole files): one graph needs
    one length, that of the shortest training track or file."""
    seq_dur = config.seq_dur
    if seq_dur <= 0:
        seq_dur = min(t.duration for t in train_tracks)
        log("--seq-dur %g: training on whole tracks (%.2f s, the shortest)" % (config.seq_dur,
                                                                                seq_dur))
    return dict(seq_dur=seq_dur, augmentations=config.source_augmentations, seed=config.seed,
                log=log)


# --------------------------------------------------------------------------------------
# the dataset kinds, each described once
# --------------------------------------------------------------------------------------

# the kinds' own train.py flags (which kinds take each, and its default: `KINDS`): its form
# ("value"; "values": one or more; "count": a positive integer; "switch": on when given) and
# what it holds; train.py's parser declares them from here
KIND_FLAGS = {
    "is_wav": ("switch", "the dataset is decoded WAV (musdb's WAV layout), not STEMS"),
    "input_file": ("value", "the model's input file"),
    "output_file": ("value", "the model's output file (its name: the target's)"),
    "target_dir": ("value", "the target's folder (its name: the target's)"),
    "interferer_dirs": ("values", "the interferers' folders"),
    "ext": ("value", "audio file extension"),
    "nb_train_samples": ("count", "samples per epoch"),
    "nb_valid_samples": ("count", "fixed validation samples"),
    "target_file": ("value", "the target's file (its name: the target's)"),
    "interferer_files": ("values", "the interferers' files"),
    "random_track_mix": ("switch", "interferers from random tracks"),
    "silence_missing_targets": ("switch", "a track without the target file has a silent "
                                          "target (else: an error)"),
    "random_interferer_mix": ("switch", "interferers from a random track"),
}


@dataclass(frozen=True)
class Kind:
    """One dataset kind: its train.py flags (`required`, and `defaults` of the optional ones),
    how its dataset is built (`build(config, targets, log)`), and the layout of a generated
    dataset of this kind (`synth.py`): its two splits and `song(name, rng)` → {stem or
    'mixture': path in a split} (rng: the song's own), with `example` the train.py flags that
    train on that layout."""
    required: tuple
    defaults: dict
    build: object
    splits: tuple
    song: object
    example: tuple
    duration_spread: float = 0.0  # generated songs' lengths vary by this fraction


def _in_folder(extension, stems=SOURCES, mixture=False):
    def song(name, rng):
        files = {s: os.path.join(name, s + extension) for s in stems}
        return dict(files, mixture=os.path.join(name, "mixture.wav")) if mixture else files
    return song


def _some_stems(name, rng):  # vocals and two or three of the others
    kept = ["vocals"] + sorted(rng.choice(SOURCES[1:], rng.randint(2, 4), replace=False))
    return {s: os.path.join(name, s + ".wav") for s in kept}


KINDS = {
    "musdb": Kind(
        (), {"is_wav": False, "samples_per_track": 64}, _musdb, ("train", "test"),
        _in_folder(".wav", mixture=True), ("--is-wav", "--source", "vocals")),
    "aligned": Kind(
        ("input_file", "output_file"), {"samples_per_track": 64},
        _track_folders(lambda c, split: aligned_tracks(c.root, split, c.input_file,
                                                       c.output_file),
                       lambda c: c.output_file, AlignedSamples),
        ("train", "valid"), _in_folder(".wav", ["vocals"], mixture=True),
        ("--input-file", "mixture.wav", "--output-file", "vocals.wav")),
    "sourcefolder": Kind(
        ("target_dir", "interferer_dirs"),
        {"ext": ".wav", "nb_train_samples": 1000, "nb_valid_samples": 100}, _sourcefolder,
        ("train", "valid"), lambda name, rng: {s: os.path.join(s, name + ".wav") for s in SOURCES},
        ("--target-dir", "vocals", "--interferer-dirs", "drums", "bass", "other"),
        duration_spread=0.2),
    "trackfolder_fix": Kind(
        ("target_file", "interferer_files"), {"random_track_mix": False, "samples_per_track": 64},
        _track_folders(lambda c, split: fixed_tracks(c.root, split, c.target_file,
                                                     c.interferer_files),
                       lambda c: c.target_file, TrackSamples,
                       lambda c: "each" if c.random_track_mix else None),
        ("train", "valid"), _in_folder(".flac"),
        ("--target-file", "vocals.flac", "--interferer-files", "drums.flac", "bass.flac",
         "other.flac")),
    "trackfolder_var": Kind(
        ("target_file",), {"ext": ".wav", "silence_missing_targets": False,
                           "random_interferer_mix": False, "samples_per_track": 64},
        _track_folders(lambda c, split: variable_tracks(c.root, split, c.target_file, c.ext,
                                                        c.silence_missing_targets),
                       lambda c: c.target_file, TrackSamples,
                       lambda c: "track" if c.random_interferer_mix else None),
        ("train", "valid"), _some_stems, ("--target-file", "vocals.wav")),
}
assert tuple(KINDS) == DATASET_KINDS
assert {f for k in KINDS.values() for f in k.required + tuple(k.defaults)} == \
    set(KIND_FLAGS) | {"samples_per_track"}  # a sampling flag, declared with the run's


def kinds_taking(flag):
    """The kinds that take a train.py flag (its dest), in KINDS' order."""
    return [name for name, kind in KINDS.items()
            if flag in kind.required or flag in kind.defaults]


def data_config(args):
    """train.py's dataset flags (a parsed namespace) as a `DataConfig`."""
    return DataConfig(**{f.name: getattr(args, f.name) for f in fields(DataConfig)
                         if f.name != "kind"}, kind=args.dataset)
