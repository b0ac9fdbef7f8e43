"""Training data: open-unmix's sampling properties, each tested."""
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from unmix_nnabla.cli.args import get_train_args
from unmix_nnabla.base.vocabulary import SOURCES
from unmix_nnabla.data.datasets import data_config
from unmix_nnabla.data.datasets import MusdbSamples, augment, epoch_batches, load_dataset
from unmix_nnabla.data.tracks import load_tracks
from unmix_nnabla.base.runtime import UmxError
from unmix_nnabla.data.synth import generate_dataset


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """6 train + 1 test tracks of 4 s of generated music."""
    root = str(tmp_path_factory.mktemp("synth"))
    return generate_dataset(root, nb_train=6, nb_test=1, duration=4.0, seed=1, progress=False)


def test_generated_dataset_is_musdb_format(synth_root):
    tracks = load_tracks(synth_root, True, "test")
    assert len(tracks) == 1 and tracks[0].rate == 44100
    track = tracks[0]
    mixture = track.read("mixture")
    stems = [track.read(s) for s in SOURCES]
    assert mixture.shape == (4 * 44100, 2)
    assert np.allclose(mixture, sum(stems), atol=1e-6)
    # four distinct, non-silent sources with their energy in different places
    centroids = []
    for stem in stems:
        spec = np.abs(np.fft.rfft(stem[:, 0]))
        assert np.sqrt(np.mean(stem ** 2)) > 1e-3
        centroids.append(np.sum(spec * np.arange(spec.size)) / spec.sum())
    assert len(set(np.round(centroids, -1))) == 4


def test_generation_is_reproducible(tmp_path):
    a = generate_dataset(str(tmp_path / "a"), 1, 0, 1.0, seed=3, progress=False)
    b = generate_dataset(str(tmp_path / "b"), 1, 0, 1.0, seed=3, progress=False)
    for s in list(SOURCES) + ["mixture"]:
        x, _ = sf.read(os.path.join(a, "train", "Synth 00", s + ".wav"))
        y, _ = sf.read(os.path.join(b, "train", "Synth 00", s + ".wav"))
        assert np.array_equal(x, y)


def test_validation_split_holds_out_tracks(synth_root):
    logged = []
    train = load_tracks(synth_root, True, "train", "train", log=logged.append)
    valid = load_tracks(synth_root, True, "train", "valid", log=lambda *a: None)
    assert logged and "holding out" in logged[0]
    assert {t.name for t in train} & {t.name for t in valid} == set()
    assert len(train) + len(valid) == 6 and len(valid) >= 1


def test_musdb_validation_names_are_used(tmp_path, synth_root):
    root = str(tmp_path / "musdb")
    shutil.copytree(synth_root, root)
    os.rename(os.path.join(root, "train", "Synth 03"),
              os.path.join(root, "train", "Leaf - Summerghost"))
    valid = load_tracks(root, True, "train", "valid")
    train = load_tracks(root, True, "train", "train")
    assert [t.name for t in valid] == ["Leaf - Summerghost"]
    assert "Leaf - Summerghost" not in [t.name for t in train]


def test_chunks_have_seq_dur(synth_root):
    tracks = load_tracks(synth_root, True, "train")
    ds = MusdbSamples(tracks, "vocals", seq_dur=1.5, samples_per_track=2)
    x, y = ds.sample(0, 3)
    assert x.shape == y.shape == (int(1.5 * 44100), 2)
    full = MusdbSamples(tracks, "vocals", seq_dur=0, samples_per_track=1, augmentations=[])
    x, y = full.sample(0, 0)
    assert x.shape == (4 * 44100, 2)  # whole tracks
    assert len(ds) == 12


def test_augmentations():
    rng = np.random.RandomState(0)
    audio = np.stack([np.ones(10), 2 * np.ones(10)], axis=1).astype(np.float32)
    gains, swaps = [], 0
    for _ in range(2000):
        out = augment(audio, rng, ["gain", "channelswap"])
        gain = out.sum() / audio.sum()
        gains.append(gain)
        swaps += out[0, 0] > out[0, 1]
    assert 0.25 <= min(gains) < 0.27 and 1.23 < max(gains) <= 1.25
    assert 900 < swaps < 1100
    assert np.array_equal(augment(audio, rng, []), audio)


def test_target_from_balanced_track_others_independent(synth_root):
    tracks = load_tracks(synth_root, True, "train")
    ds = MusdbSamples(tracks, "drums", seq_dur=0.5, samples_per_track=3)
    other_tracks = {s: set() for s in SOURCES}
    differs = 0
    for index in range(len(ds)):
        chosen = {source: track.name for source, _, track, _, _ in ds.draws(0, index)[0]}
        assert chosen["drums"] == tracks[index // 3].name
        for s in SOURCES:
            other_tracks[s].add(chosen[s])
        differs += len(set(chosen.values())) > 1
    assert all(len(other_tracks[s]) > 2 for s in ("vocals", "bass", "other"))
    assert differs > len(ds) // 2


def test_sampling_is_deterministic_and_worker_invariant(synth_root):
    tracks = load_tracks(synth_root, True, "train")
    ds = MusdbSamples(tracks, "vocals", seq_dur=0.5, samples_per_track=2, seed=7)
    serial = list(epoch_batches(ds, 3, 4, nb_workers=0))
    threaded = list(epoch_batches(ds, 3, 4, nb_workers=2))
    assert len(serial) == 3
    for (x0, y0), (x1, y1) in zip(serial, threaded):
        assert np.array_equal(x0, x1) and np.array_equal(y0, y1)
    other_epoch = list(epoch_batches(ds, 4, 4))
    assert not np.array_equal(serial[0][0], other_epoch[0][0])
    other_seed = MusdbSamples(tracks, "vocals", seq_dur=0.5, samples_per_track=2, seed=8)
    assert not np.array_equal(serial[0][0], next(epoch_batches(other_seed, 3, 4))[0])


def test_ranks_draw_distinct_slices(synth_root):
    tracks = load_tracks(synth_root, True, "train")
    ds = MusdbSamples(tracks, "vocals", seq_dur=0.5, samples_per_track=2)
    both = list(epoch_batches(ds, 0, 2, nb_ranks=1))
    rank0 = list(epoch_batches(ds, 0, 1, rank=0, nb_ranks=2))
    rank1 = list(epoch_batches(ds, 0, 1, rank=1, nb_ranks=2))
    for (x, _), (a, _), (b, _) in zip(both, rank0, rank1):
        assert np.array_equal(x, np.concatenate([a, b]))


def test_validation_is_whole_and_unaugmented(synth_root):
    args = get_train_args(["--umx-train", "--root", synth_root, "--is-wav", "--source", "bass",
                           "--seq-dur", "1"])
    data = load_dataset(data_config(args), ["bass"], log=lambda *a: None)
    items = list(data.valid_items())
    assert [name for name, _, _ in items] == [t.name for t in data.valid] and items
    for (name, mixture, target), track in zip(items, data.valid):
        assert mixture.shape == (4 * 44100, 2)
        assert np.array_equal(mixture, track.read("mixture"))
        assert np.array_equal(target, track.read("bass"))


def test_bad_datasets(tmp_path, synth_root):
    with pytest.raises(UmxError, match="not found"):
        load_tracks(str(tmp_path / "nowhere"), True)
    os.makedirs(str(tmp_path / "empty"))
    with pytest.raises(UmxError, match="no 'train' folder"):
        load_tracks(str(tmp_path / "empty"), True)
    os.makedirs(str(tmp_path / "empty" / "train"))
    with pytest.raises(UmxError, match="no tracks"):
        load_tracks(str(tmp_path / "empty"), True)
    broken = str(tmp_path / "broken")
    shutil.copytree(synth_root, broken)
    os.remove(os.path.join(broken, "train", "Synth 02", "bass.wav"))
    with pytest.raises(UmxError, match="'Synth 02' is missing the 'bass' stem"):
        load_tracks(broken, True)
    tracks = load_tracks(synth_root, True)
    with pytest.raises(UmxError, match="unknown --source 'piano'"):
        MusdbSamples(tracks, "piano")
    with pytest.raises(UmxError, match="longer than every training track"):
        MusdbSamples(tracks, "vocals", seq_dur=10.0)
