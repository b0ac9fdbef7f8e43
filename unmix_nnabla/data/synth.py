"""Synthetic music for tests, the demo and users without data: four stems (vocals, drums,
bass, other) per song, written in the layout of every dataset kind (`generate_dataset`).

`python data.py --generate ROOT [--kind KIND]` is its command line.
"""
import os

import numpy as np
import soundfile as sf

from unmix_nnabla.audio.io import write_audio_atomic
from unmix_nnabla.base.console import progress_bar
from unmix_nnabla.base.files import read_json, write_json_atomic, writing_into
from unmix_nnabla.base.runtime import UmxError
from unmix_nnabla.base.vocabulary import SOURCES
from unmix_nnabla.data.datasets import KINDS

RATE = 44100


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


def generate_dataset(root, nb_train=8, nb_test=2, duration=12.0, seed=0, progress=True,
                     kind="musdb"):
    """Write a small dataset of synthetic songs in the layout of `kind` (float WAV, or FLAC
    for trackfolder_fix; 44.1 kHz stereo):

    - musdb: <root>/{train,test}/<track>/{mixture,drums,bass,other,vocals}.wav (mixture = the
      sum of the stems);
    - aligned: <root>/{train,valid}/<track>/{mixture,vocals}.wav;
    - sourcefolder: <root>/{train,valid}/{vocals,drums,bass,other}/<track>.wav (songs of
      slightly different lengths);
    - trackfolder_fix: <root>/{train,valid}/<track>/{vocals,drums,bass,other}.flac;
    - trackfolder_var: <root>/{train,valid}/<track>/*.wav: vocals and two or three of the
      other stems.
    nb_test: the songs of the second subset (test, or valid).

    Resumable: complete songs are kept (a song's last file is written last). `root/
    generated.json` records the settings; a root that holds other data, or a dataset generated
    with other settings, is refused rather than mixed with.
    """
    if kind not in KINDS:
        raise UmxError("unknown dataset kind '%s' (choose from %s)" % (kind, ", ".join(KINDS)))
    settings = dict(nb_train=nb_train, nb_test=nb_test, duration=duration, seed=seed, kind=kind)
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
    first, second = KINDS[kind].splits
    jobs = [(first, "Synth %02d" % i) for i in range(nb_train)] + \
           [(second, "Synth Test %02d" % i) for i in range(nb_test)]
    for subset, name in progress_bar(jobs, desc="generating %s" % root, enabled=progress):
        song_rng = np.random.RandomState(rng.randint(2 ** 31))
        _write_song(os.path.join(root, subset), name, KINDS[kind], duration, song_rng)
    return root


def _write_song(folder, name, kind, duration, rng):
    """One song's files in `folder` (a split) in the layout of `kind` (a `datasets.Kind`), the
    mixture (the sum of the stems as written) last; kept if complete."""
    if kind.duration_spread:
        duration *= rng.uniform(1 - kind.duration_spread, 1 + kind.duration_spread)
    stems = synth_track(duration, rng)
    peak = np.abs(sum(stems.values())).max()
    stems = {s: a * (0.9 / peak if peak > 0.9 else 1.0) for s, a in stems.items()}
    paths = {s: os.path.join(folder, p) for s, p in kind.song(name, rng).items()}
    if all(os.path.isfile(p) for p in paths.values()):
        return
    for path in paths.values():
        with writing_into(folder):
            os.makedirs(os.path.dirname(path), exist_ok=True)
    written = [s for s in paths if s != "mixture"]
    for source, path in list((s, paths[s]) for s in written) + \
            ([("mixture", paths["mixture"])] if "mixture" in paths else []):
        if source == "mixture":
            audio = sum(sf.read(paths[s], dtype="float32")[0] for s in written) \
                if len(written) == len(SOURCES) else sum(stems.values())
        else:
            audio = stems[source]
        write_audio_atomic(path, audio, RATE, subtype="PCM_24" if path.endswith(".flac")
                           else "FLOAT", format="FLAC" if path.endswith(".flac") else "WAV")
