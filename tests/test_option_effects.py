"""Every option does what it says: the CLIs' outputs (stems, scores, weights, samples) compared
with what the option promises, never only an exit code or a log line. docs/testing.md maps each
option and training path to the test that guards its effect."""
import json
import os
import subprocess

import h5py
import numpy as np
import pytest
import soundfile as sf

from conftest import SMALL, make_random_weights, music_like, read_h5, run_script, snr
from unmix_nnabla.base.runtime import UmxError

RATE = SMALL["sample_rate"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A small model (4 targets) and a 5 s song at its rate (longer than the windows' context,
    so that --chunk-dur changes the stems)."""
    tmp = tmp_path_factory.mktemp("effects")
    model = str(tmp / "model")
    make_random_weights(model, **SMALL)
    song = str(tmp / "song.wav")
    sf.write(song, music_like(5.0, RATE), RATE, subtype="FLOAT")
    return model, song


def separate_cli(tmp_path, model, song, *flags):
    """test.py's stems {name: array} for these flags."""
    out = str(tmp_path / ("out%d" % len(os.listdir(str(tmp_path)))))
    code, _, err = run_script("test", song, "--model", model, "-o", out, "-q", *flags)
    assert code == 0, err
    folder = os.path.join(out, "model", os.path.splitext(os.path.basename(song))[0])
    return {os.path.splitext(f)[0]: sf.read(os.path.join(folder, f), dtype="float32")[0]
            for f in os.listdir(folder)}


def separate_api(model, song, **options):
    from unmix_nnabla.models.hub import load_models
    from unmix_nnabla.separation.separator import separate
    audio = sf.read(song, dtype="float32")[0]
    targets = options.pop("targets", None)
    estimates, _ = separate(audio, RATE, load_models(model, targets), targets, progress=False,
                            **options)
    return estimates


@pytest.mark.parametrize("flags,options", [
    ([], {}),
    (["--niter", "0"], dict(niter=0)),
    (["--niter", "2"], dict(niter=2)),
    (["--softmask", "--alpha", "2"], dict(softmask=True, alpha=2.0)),
    (["--softmask"], dict(softmask=True)),
    # --alpha also shapes the residual model's magnitudes
    (["--targets", "vocals", "drums", "--residual-model", "--softmask", "--alpha", "2"],
     dict(targets=["vocals", "drums"], residual_model=True, softmask=True, alpha=2.0)),
    (["--targets", "vocals", "drums", "--residual-model"],
     dict(targets=["vocals", "drums"], residual_model=True)),
    (["--chunk-dur", "0.5"], dict(window=int(round(0.5 * RATE / SMALL["n_hop"])))),
])
def test_separation_options_reach_the_stems(setup, tmp_path, flags, options):
    """test.py's stems equal the Python API's with the same options, bit for bit, and every
    option changes them (so that an option the CLI dropped, or the API ignored, fails here;
    test_separate.py checks the API's options against norbert)."""
    model, song = setup
    cli = separate_cli(tmp_path, model, song, *flags)
    api = separate_api(model, song, **dict(options))
    assert sorted(cli) == sorted(api)
    for name in api:
        assert np.array_equal(cli[name], api[name]), (flags, name)
    if flags:  # (windows of 0.5 s change the stems by far less than 1e-4: compared exactly)
        default = separate_api(model, song)
        assert not np.array_equal(api["vocals"], default["vocals"]), flags


def test_excerpt_and_output_rate(setup, tmp_path):
    model, song = setup
    excerpt = separate_cli(tmp_path, model, song, "--start", "0.25", "--duration", "0.5")
    audio = sf.read(song, dtype="float32")[0]
    from unmix_nnabla.separation.separator import separate
    from unmix_nnabla.models.hub import load_models
    expected, _ = separate(audio[2000:6000], RATE, load_models(model), progress=False)
    for name, stem in expected.items():
        assert excerpt[name].shape == (4000, 2) and np.allclose(excerpt[name], stem, atol=1e-6)
    out = str(tmp_path / "rate")
    code, _, err = run_script("test", song, "--model", model, "-o", out, "--sample-rate",
                              "16000", "--targets", "vocals")
    assert code == 0, err
    info = sf.info(os.path.join(out, "model", "song", "vocals.wav"))
    assert info.samplerate == 16000 and info.frames == 2 * 40000


def test_rescale_applies_one_gain_to_every_stem(setup, tmp_path):
    """--clip-mode rescale (the default for integer formats): every stem is the float stem
    times the same gain, the one the warning names, so that the stems still sum to the
    mixture; clamp changes only the samples beyond full scale."""
    model, _ = setup
    loud = str(tmp_path / "loud.wav")
    sf.write(loud, music_like(1.5, RATE) * 16, RATE, subtype="FLOAT")
    flags = ["--niter", "0", "--targets", "vocals"]  # the accompaniment exceeds full scale
    floats = separate_cli(tmp_path, model, loud, *flags)
    out = str(tmp_path / "int16")
    code, _, err = run_script("test", loud, "--model", model, "-o", out, "--int16", *flags)
    assert code == 0, err
    import re
    gain = 10 ** (float(re.search(r"rescaled by (-?[\d.]+) dB", err).group(1)) / 20)
    folder = os.path.join(out, "model", "loud")
    stems = {name: sf.read(os.path.join(folder, name + ".wav"), dtype="float32")[0]
             for name in floats}
    fitted = {name: np.sum(stems[name] * ref) / np.sum(ref * ref) for name, ref in floats.items()}
    common = np.mean(list(fitted.values()))
    assert abs(common - gain) < 1e-3 * gain, (fitted, gain)  # the warning's gain (0.01 dB)
    for name, reference in floats.items():
        assert abs(fitted[name] - common) < 1e-5 * common, fitted
        assert np.abs(stems[name] - common * reference).max() < 2 ** -14  # 16-bit rounding
    clamped = separate_cli(tmp_path, model, loud, "--int24", "--clip-mode", "clamp", *flags)
    for name, reference in floats.items():
        inside = np.abs(reference) < 0.99
        assert np.allclose(clamped[name][inside], reference[inside], atol=2 ** -22)
        assert np.abs(clamped[name]).max() <= 1.0


def test_mp3_bitrate_sets_the_files_bitrate(setup, tmp_path):
    model, song = setup
    rates = {}
    for kbps in ("64", "192"):
        out = str(tmp_path / kbps)
        code, _, err = run_script("test", song, "--model", model, "-o", out, "--mp3",
                                  "--mp3-bitrate", kbps, "--targets", "vocals", "--niter", "0",
                                  "--sample-rate", "44100")  # MP3 at 8 kHz tops at 64 kbit/s
        assert code == 0, err
        probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=bit_rate",
                                "-of", "json", os.path.join(out, "model", "song", "vocals.mp3")],
                               capture_output=True, text=True, check=True)
        rates[kbps] = int(json.loads(probe.stdout)["format"]["bit_rate"])
    assert rates["64"] < 0.6 * rates["192"], rates


# --------------------------------------------------------------------------------------
# training samples: augmentations and seeds
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tracks(tmp_path_factory):
    from unmix_nnabla.data.synth import generate_dataset
    from unmix_nnabla.data.tracks import load_tracks
    root = generate_dataset(str(tmp_path_factory.mktemp("data")), nb_train=3, nb_test=1,
                            duration=2.0, seed=3, progress=False)
    return root, load_tracks(root, True, "train")


def test_augmentations_and_seeds_change_the_samples_as_promised(tracks):
    from unmix_nnabla.data.datasets import MusdbSamples
    _, train = tracks

    def samples(**kw):
        return MusdbSamples(train, "vocals", samples_per_track=2, seq_dur=0.5, **kw)

    plain = samples(seed=1, augmentations=[])
    augmented = samples(seed=1)  # the default: gain and channel swap
    for index in range(len(plain)):
        y = plain.sample(0, index)[1]
        ay = augmented.sample(0, index)[1]
        assert not np.allclose(ay, y)
        # the target is the plain one times a gain in [0.25, 1.25], maybe channel-swapped
        fits = []
        for source in (y, y[:, ::-1]):
            gain = np.sum(ay * source) / np.sum(source * source)
            fits.append(0.25 <= gain <= 1.25 and np.allclose(ay, gain * source, atol=1e-6))
        assert any(fits), index
    assert samples(seed=1).sample(0, 0)[0].tobytes() == augmented.sample(0, 0)[0].tobytes()
    other = samples(seed=2)
    assert any(not np.array_equal(other.sample(0, i)[0], augmented.sample(0, i)[0])
               for i in range(len(plain)))


def test_source_augmentations_and_seed_flags_reach_the_samples(tracks):
    from unmix_nnabla.cli.args import get_train_args
    from unmix_nnabla.data.datasets import data_config
    from unmix_nnabla.data.datasets import load_dataset
    root, _ = tracks

    def first_sample(*flags):
        args = get_train_args(["--umx-train", "--root", root, "--is-wav", "--source", "vocals",
                               "--seq-dur", "0.5", "--samples-per-track", "2", *flags])
        data = load_dataset(data_config(args), ["vocals"], lambda *a: None)
        return data.train.sample(0, 0)[1]

    none = first_sample("--source-augmentations")  # none given: no augmentation
    default = first_sample()
    assert not np.array_equal(none, default)
    assert np.array_equal(first_sample("--seed", "7"), first_sample("--seed", "7"))
    assert not np.array_equal(first_sample("--seed", "7"), first_sample("--seed", "8"))


# --------------------------------------------------------------------------------------
# training options: their effect on the weights
# --------------------------------------------------------------------------------------

def test_lr_and_new_statistics_act_on_the_weights(tracks, tmp_path):
    """Adam's first step moves each weight by about the learning rate (its update is
    lr * m / sqrt(v), of magnitude 1 at the first step); --new-statistics starts from the
    dataset's standardization, not the model's."""
    root, _ = tracks
    model = str(tmp_path / "model")
    make_random_weights(model, targets=["vocals"], hidden_size=8, max_bin=100,
                        nb_output_bins=257, n_fft=512, n_hop=256)
    start = read_h5(os.path.join(model, "vocals.h5"))
    # 2 training tracks x 2 samples in one batch of 4: one step an epoch
    base = ["--umx-train", "--root", root, "--is-wav", "--source", "vocals", "--model", model,
            "--seq-dur", "0.5", "--samples-per-track", "2", "--batch-size", "4", "--epochs",
            "1", "--context", "cpu", "--weight-decay", "0"]
    moved = {}
    for lr in ("0.001", "0.01"):
        out = str(tmp_path / ("lr" + lr))
        code, _, err = run_script("train", *base, "--lr", lr, "--output", out)
        assert code == 0, err
        params = read_h5(os.path.join(out, "vocals.checkpoint", "parameters.h5"))
        moved[lr] = np.median(np.abs(params["fc1/affine/W"] - start["fc1/affine/W"]))
    assert abs(moved["0.001"] - 0.001) < 2e-4 and abs(moved["0.01"] - 0.01) < 2e-3, moved
    out = str(tmp_path / "new")
    code, _, err = run_script("train", *base, "--lr", "0.0001", "--new-statistics", "--output",
                              out)
    assert code == 0, err
    params = read_h5(os.path.join(out, "vocals.checkpoint", "parameters.h5"))
    from unmix_nnabla.training.standardization import compute_statistics
    from unmix_nnabla.audio.spectral import training_centered
    from unmix_nnabla.data.tracks import load_tracks
    train = [t for t in load_tracks(root, True, "train")]
    # the statistics are those of the training tracks (musdb's split holds one out)
    summary = json.load(open(os.path.join(out, "vocals.json")))
    mixtures = [t.read("mixture") for t in train if t.name in summary["dataset"]["train"]]
    mean, _ = compute_statistics(mixtures, 512, 256, progress=False,
                                 center=training_centered(()))
    assert np.abs(params["input_mean"] + mean[:100]).max() < 1e-3  # one step of lr 1e-4
    assert np.abs(params["input_mean"] - start["input_mean"]).max() > 1e-2


def test_seeds_train_different_weights_and_a_seed_repeats_itself(tracks, tmp_path):
    root, _ = tracks
    base = ["--umx-train", "--root", root, "--is-wav", "--source", "vocals", "--seq-dur", "0.5",
            "--samples-per-track", "2", "--batch-size", "2", "--epochs", "1", "--context", "cpu",
            "--hidden-size", "8", "--nfft", "512", "--nhop", "256"]
    weights = []
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        out = str(tmp_path / name)
        code, _, err = run_script("train", *base, "--seed", seed, "--output", out)
        assert code == 0, err
        weights.append(read_h5(os.path.join(out, "vocals.checkpoint", "parameters.h5")))
    assert all(np.array_equal(weights[0][n], weights[1][n]) for n in weights[0])
    assert not np.array_equal(weights[0]["fc1/affine/W"], weights[2]["fc1/affine/W"])


# --------------------------------------------------------------------------------------
# published models: the layout check of a download
# --------------------------------------------------------------------------------------

def test_a_well_formed_download_with_a_wrong_weight_shape_is_refused(hub_env, tmp_path):
    import zipfile
    from unmix_nnabla.models import hub
    url, files, _, cache = hub_env
    folder = str(tmp_path / "umxhq")
    make_random_weights(folder, **SMALL)
    with h5py.File(os.path.join(folder, "vocals.h5"), "r+") as f:
        del f["fc2/affine/W"]
        f["fc2/affine/W"] = np.zeros((32, 7), np.float32)
    archive = str(tmp_path / "umxhq.zip")
    with zipfile.ZipFile(archive, "w") as z:
        for name in sorted(os.listdir(folder)):
            z.write(os.path.join(folder, name), "umxhq/" + name)
    files["open-unmix-nnabla/umxhq.zip"] = open(archive, "rb").read()
    with pytest.raises(UmxError, match=r"is not the published model: not used \(vocals.h5: "
                                       r"parameter fc2/affine/W has shape \(32, 7\)"):
        hub.model_path("umxhq", progress=False, log=lambda *a: None)
    assert not os.path.exists(os.path.join(cache, "umxhq"))


# --------------------------------------------------------------------------------------
# eval.py: several tracks, and the separation options' path
# --------------------------------------------------------------------------------------

def test_eval_scores_each_track_under_its_own_name(tmp_path):
    """Estimates that are track A's true sources and track B's mixture: A's scores are high,
    B's low, each under its own name."""
    import shutil
    from unmix_nnabla.data.synth import generate_dataset
    root = generate_dataset(str(tmp_path / "data"), nb_train=1, nb_test=2, duration=2.0,
                            seed=5, progress=False)
    names = sorted(os.listdir(os.path.join(root, "test")))
    estimates = str(tmp_path / "estimates")
    for name, perfect in zip(names, (True, False)):
        track, folder = os.path.join(root, "test", name), os.path.join(estimates, "test", name)
        os.makedirs(folder)
        for target in ("vocals", "drums"):
            if perfect:
                shutil.copy(os.path.join(track, target + ".wav"), folder)
            else:
                mixture, rate = sf.read(os.path.join(track, "mixture.wav"))
                sf.write(os.path.join(folder, target + ".wav"), mixture / 2, rate)
    out = str(tmp_path / "eval")
    code, _, err = run_script("eval", "--root", root, "--is-wav", "--estimates", estimates,
                              "--targets", "vocals", "drums", "-o", out)
    assert code == 0, err
    medians = {}
    for name in names:
        scores = json.load(open(os.path.join(out, "test", name + ".json")))
        vocals = [t for t in scores["targets"] if t["name"] == "vocals"][0]
        medians[name] = np.nanmedian([f["metrics"]["SDR"] for f in vocals["frames"]])
    assert medians[names[0]] > 40 and medians[names[1]] < 10, medians


def test_eval_separation_options_reach_the_estimates(setup, tmp_path):
    """eval.py's estimates equal the API's separation with the same options (from the
    dataset's 44.1 kHz to the model's 8 kHz and back)."""
    from unmix_nnabla.data.synth import generate_dataset
    model, _ = setup
    root = generate_dataset(str(tmp_path / "data"), nb_train=1, nb_test=1, duration=1.5,
                            seed=6, progress=False)
    out = str(tmp_path / "eval")
    flags = ["--targets", "vocals", "drums", "--residual-model", "--softmask", "--alpha", "2",
             "--niter", "2"]
    code, _, err = run_script("eval", "--root", root, "--is-wav", "--model", model, "-o", out,
                              *flags)
    assert code == 0, err
    track = os.listdir(os.path.join(root, "test"))[0]
    mixture, rate = sf.read(os.path.join(root, "test", track, "mixture.wav"), dtype="float32")
    from unmix_nnabla.models.hub import load_models
    from unmix_nnabla.separation.separator import separate
    expected, model_rate = separate(mixture, rate, load_models(model, ["vocals", "drums"]),
                                    ["vocals", "drums"], residual_model=True, softmask=True,
                                    alpha=2.0, niter=2, progress=False)
    folder = os.path.join(out, "test", track)
    assert sorted(os.listdir(folder)) == ["drums.wav", "residual.wav", "vocals.wav"]
    from unmix_nnabla.audio.io import StreamResampler
    for name, stem in expected.items():
        written = sf.read(os.path.join(folder, name + ".wav"), dtype="float32")[0]
        back = StreamResampler(model_rate, rate).push(stem, final=True)[:mixture.shape[0]]
        assert written.shape == mixture.shape
        # equal up to the rounding of the two resamplings (a dropped --alpha: 11 dB)
        assert snr(back, written) > 50, name


# --------------------------------------------------------------------------------------
# the schedule: --patience, --lr-decay-patience, --lr-decay-gamma
# --------------------------------------------------------------------------------------

def test_a_validation_loss_that_stops_improving_decays_the_lr_and_stops(tracks, tmp_path,
                                                                       monkeypatch):
    """train.py with a validation loss that never improves after epoch 1: the learning rate is
    multiplied by --lr-decay-gamma after --lr-decay-patience epochs, and the run stops after
    --patience epochs without improvement."""
    from unmix_nnabla.cli.args import get_train_args
    from unmix_nnabla.training import run as train_run
    root, _ = tracks
    monkeypatch.setattr(train_run, "validation_loss", lambda *a, **k: 1.0)
    args = get_train_args(["--umx-train", "--root", root, "--is-wav", "--source", "vocals",
                           "--seq-dur", "0.5", "--samples-per-track", "2", "--batch-size", "4",
                           "--hidden-size", "8", "--nfft", "512", "--nhop", "256", "--context",
                           "cpu", "--epochs", "10", "--lr", "0.01", "--lr-decay-patience", "1",
                           "--lr-decay-gamma", "0.5", "--patience", "4", "--output",
                           str(tmp_path / "out"), "-q"])
    summary = train_run.run(args, None)
    history = summary["history"]
    # epoch 1 sets the best; 2 and 3 do not improve: the lr halves after the second bad epoch
    # (patience 1), then a cooldown of 10 epochs; 4 bad epochs stop the run after epoch 5
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5] and summary["stopped_early"]
    assert np.allclose([h["lr"] for h in history], [0.01, 0.01, 0.005, 0.005, 0.005])


# --------------------------------------------------------------------------------------
# --weight-decay, --checkpoint, data.py --pcm16
# --------------------------------------------------------------------------------------

def test_weight_decay_pulls_every_weight_toward_zero(tracks, tmp_path):
    """A weight decay that dominates the gradient makes Adam's first step -lr sign(w): every
    weight's magnitude shrinks by the learning rate; without it the weights move both ways."""
    root, _ = tracks
    model = str(tmp_path / "model")
    make_random_weights(model, targets=["vocals"], hidden_size=8, max_bin=100,
                        nb_output_bins=257, n_fft=512, n_hop=256)
    start = read_h5(os.path.join(model, "vocals.h5"))["fc1/affine/W"]
    base = ["--umx-train", "--root", root, "--is-wav", "--source", "vocals", "--model", model,
            "--seq-dur", "0.5", "--samples-per-track", "2", "--batch-size", "4", "--epochs",
            "1", "--context", "cpu", "--lr", "0.001"]
    shrink = {}
    for decay in ("0", "1000"):
        out = str(tmp_path / ("decay" + decay))
        code, _, err = run_script("train", *base, "--weight-decay", decay, "--output", out)
        assert code == 0, err
        weights = read_h5(os.path.join(out, "vocals.checkpoint", "parameters.h5"))["fc1/affine/W"]
        shrink[decay] = np.abs(start) - np.abs(weights)
    clear = np.abs(start) > 0.002  # the weights that a step of 0.001 cannot carry past zero
    assert clear.mean() > 0.9
    assert np.abs(shrink["1000"][clear] - 0.001).max() < 1e-5
    assert np.mean(shrink["0"] > 0) < 0.9  # without decay, some weights grow


def test_checkpoint_resumes_another_runs_checkpoint(tracks, tmp_path):
    """--checkpoint DIR: a new --output continues where DIR's run stopped (its epoch, its
    weights within Adam's reach), not from scratch."""
    from conftest import assert_trained, checkpoint
    root, _ = tracks
    base = ["--umx-train", "--root", root, "--is-wav", "--source", "vocals", "--seq-dur", "0.5",
            "--samples-per-track", "2", "--batch-size", "2", "--context", "cpu", "--hidden-size",
            "8", "--nfft", "512", "--nhop", "256"]
    first = str(tmp_path / "first")
    code, _, err = run_script("train", *base, "--epochs", "1", "--output", first)
    assert code == 0, err
    after_one, _ = checkpoint(first, "vocals")
    second = str(tmp_path / "second")
    code, stdout, err = run_script("train", *base, "--epochs", "2", "--output", second,
                                   "--checkpoint", os.path.join(first, "vocals.checkpoint"))
    assert code == 0, err
    assert "resuming vocals from epoch 1" in stdout
    assert [h["epoch"] for h in json.load(open(os.path.join(second, "vocals.json")))["history"]] \
        == [1, 2]
    assert_trained(after_one, second, "vocals", steps=4)


def test_pcm16_decodes_stems_as_16_bit(tmp_path, stem_clip):
    """data.py --decode-stems --pcm16: 16-bit files, equal to the float decoding up to the
    16-bit rounding; the real clip (its peak 1.024) is refused, nothing written."""
    import shutil
    import stempeg
    src = str(tmp_path / "musdb")
    os.makedirs(os.path.join(src, "test"))
    shutil.copyfile(stem_clip, os.path.join(src, "test", "C - Three.stem.mp4"))
    dst = str(tmp_path / "wav")
    code, _, err = run_script("data", "--decode-stems", src, dst, "--pcm16")
    assert code == 1 and "16-bit PCM would clip it" in err and not os.path.exists(dst), err
    # the clip at half its level, as STEMS
    loud, rate = stempeg.read_stems(stem_clip, dtype=np.float32)
    quiet = os.path.join(src, "test", "C - Three.stem.mp4")
    stempeg.write_stems(quiet, loud * 0.5, sample_rate=rate, writer=stempeg.StreamsWriter())
    code, _, err = run_script("data", "--decode-stems", src, dst, "--pcm16")
    assert code == 0, err
    floats = str(tmp_path / "float")
    code, _, err = run_script("data", "--decode-stems", src, floats)
    assert code == 0, err
    for name in ["mixture", "drums", "bass", "other", "vocals"]:
        path = os.path.join(dst, "test", "C - Three", name + ".wav")
        assert sf.info(path).subtype == "PCM_16"
        audio = sf.read(path, dtype="float32")[0]
        reference = sf.read(os.path.join(floats, "test", "C - Three", name + ".wav"),
                            dtype="float32")[0]
        assert sf.info(os.path.join(floats, "test", "C - Three", name + ".wav")).subtype == \
            "FLOAT"
        assert audio.shape == reference.shape
        assert np.abs(audio - reference).max() <= 2 ** -15 + 1e-7, name
