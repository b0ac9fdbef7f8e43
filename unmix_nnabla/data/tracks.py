"""The files of training datasets: each file probed once (`Source`), tracks of named files
(`Track`), the check of a whole dataset before training (`check_sources`), the listing of
MUSDB18 (STEMS or WAV) and of the folder layouts of open-unmix-pytorch's dataset kinds, and
MUSDB18's STEMS decoded once into its WAV layout (`decode_stems`).

Every problem is one UmxError naming the file (or the flag) and what was expected.
"""
import json
import os

import numpy as np
import soundfile as sf
import yaml

from unmix_nnabla.base.console import progress_bar
from unmix_nnabla.base.files import (removed_on_failure, staged_folder, write_json_atomic,
                                     writing_into)
from unmix_nnabla.base.runtime import UmxError
from unmix_nnabla.base.vocabulary import SOURCES

# STEMS excerpts: the AAC decoder may deliver a few samples more or fewer than asked at an
# excerpt's end; those are trimmed or zero-extended (any larger shortfall is an error)
STEMS_READ_TOLERANCE = 64


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
                info = sf.info(path)
                self.rate, self.channels, self.frames = info.samplerate, info.channels, info.frames
            else:
                import stempeg  # deferred: STEMS only
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
                audio, _ = sf.read(self.path, start=start, frames=frames, dtype="float32",
                                   always_2d=True)
            else:
                import stempeg  # deferred: STEMS only
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
    for item in progress_bar(todo, desc="checking the data", enabled=progress and bool(todo), leave=False):
        audio = item.read()
        if not np.all(np.isfinite(audio)):
            raise UmxError("%s holds NaN or infinite samples" % item.describe())
        checked[item.fingerprint()] = True
    if cache_path and todo:
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
    import musdb  # deferred: MUSDB18 only
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
        import musdb  # deferred: MUSDB18 only
        previews = os.path.expanduser(os.path.join("~", "MUSDB18", "MUSDB18-7"))
        try:
            with removed_on_failure(previews):  # a failed download leaves no empty folders
                root = musdb.DB(root=previews, download=True, subsets=subset).root
        except Exception as exc:
            raise UmxError("could not download the MUSDB18 previews into %s (%s): pass --root "
                           "with a local MUSDB18 folder" % (previews, type(exc).__name__))
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


def source_name(filename):
    """The source name a file or folder gives: vocals.flac → vocals."""
    return os.path.splitext(os.path.basename(os.path.normpath(filename)))[0]


def source_names(files):
    """{source name: file} of [(file, what gives it)], refusing two files of one name (the
    second would silently replace the first): one UmxError naming both."""
    named = {}
    for path, what in files:
        name = source_name(path)
        if name in named:
            raise UmxError("%s (%s) and %s (%s) both give the source '%s': rename one"
                           % (named[name][0], named[name][1], path, what, name))
        named[name] = (path, what)
    return {name: path for name, (path, _) in named.items()}


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
        name, {source_name(output_file): _need_file(folder, output_file, "--output-file")},
        mixture=_need_file(folder, input_file, "--input-file")))


def fixed_tracks(root, split, target_file, interferer_files):
    layout = "ROOT/{train,valid}/<track>/{%s}" % ",".join([target_file] + interferer_files)
    flags = [(target_file, "--target-file")] + [(f, "--interferer-files") for f in interferer_files]
    named = source_names(flags)
    return list_track_folders(root, split, "trackfolder_fix", layout, lambda name, folder: Track(
        name, {source: _need_file(folder, f, dict(flags)[f]) for source, f in named.items()}))


def variable_tracks(root, split, target_file, ext, silence_missing):
    layout = "ROOT/{train,valid}/<track>/*%s" % ext

    def make(name, folder):
        files = _audio_files(folder, ext)
        if not files:
            others = sorted(f for f in os.listdir(folder) if os.path.isfile(os.path.join(folder, f)))
            raise UmxError("track '%s' holds no %s file (--ext %s%s)" % (
                name, ext, ext, "; it holds %s" % ", ".join(others[:3]) if others else ""))
        if target_file not in files and not silence_missing:
            raise UmxError("track '%s' has no %s (--target-file; or pass "
                           "--silence-missing-targets)" % (name, os.path.join(folder, target_file)))
        named = source_names([(os.path.join(folder, target_file), "--target-file")] +
                             [(os.path.join(folder, f), "a file of the track")
                              for f in files if f != target_file])
        sources = {source: Source(path) if os.path.basename(path) in files else None
                   for source, path in named.items()}
        return Track(name, sources)
    return list_track_folders(root, split, "trackfolder_var", layout, make)


def source_pools(root, split, target_dir, interferer_dirs, ext):
    """{folder: [one Track per file]} of ROOT/split/<folder>/*ext."""
    layout = "ROOT/{train,valid}/{%s}/*%s" % (",".join([target_dir] + interferer_dirs), ext)
    base = _split_folder(root, split, "sourcefolder", layout)
    source_names([(target_dir, "--target-dir")] + [(d, "--interferer-dirs") for d in interferer_dirs])
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
# MUSDB18 STEMS → WAV, once
# --------------------------------------------------------------------------------------

def decode_stems(src, dst, pcm16=False, progress=True):
    """Decode a MUSDB18 STEMS root into musdb's WAV layout (dst/<subset>/<track>/
    {mixture,drums,bass,other,vocals}.wav), float WAV (or 16-bit PCM, refused where a sample
    would clip). Each track is written into a staging folder and published whole; complete
    tracks are kept, so a killed run, re-run, finishes the rest. Every stream's decoded length
    is checked against the file's and the mixture's. → the number of tracks decoded."""
    setup = musdb_setup()
    names = ["mixture"] + list(SOURCES)
    subsets = [s for s in ("train", "test") if os.path.isdir(os.path.join(src, s))]
    if not subsets:
        raise UmxError("%s has no 'train' or 'test' folder: not a MUSDB18 root" % src)
    jobs = [(subset, entry) for subset in subsets
            for entry in sorted(os.listdir(os.path.join(src, subset)))
            if entry.endswith(".stem.mp4")]
    if not jobs:
        raise UmxError("no .stem.mp4 files in %s" % ", ".join(os.path.join(src, s) for s in subsets))
    done = 0
    for subset, entry in progress_bar(jobs, desc="decoding STEMS", enabled=progress):
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
                with writing_into(staging):  # a full disk: one line naming the folder
                    sf.write(os.path.join(staging, name + ".wav"), audio, source.rate,
                             subtype="PCM_16" if pcm16 else "FLOAT")
        done += 1
    return done
