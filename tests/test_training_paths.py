"""Every training path trains: after its epochs every trainable parameter has moved from where
the run started, and the checkpoint's solver state holds each of them (and nothing else), with
one Adam step per batch. Paths: UMX and X-UMX from scratch and resumed, fine-tuned from a model
folder and from a published name (served from 127.0.0.1); `mpirun` in test_mpi.py."""
import json
import os

import pytest

from conftest import assert_trained, checkpoint, make_random_weights, read_h5, run_script
from unmix_nnabla.networks.layout import UmxConfig
from unmix_nnabla.data.synth import generate_dataset

UMX_ARGS = ["--umx-train", "--source", "vocals", "--batch-size", "2", "--seq-dur", "0.5",
            "--samples-per-track", "2", "--context", "cpu", "--seed", "1", "--is-wav"]
XUMX_ARGS = ["--batch-size", "2", "--seq-dur", "0.5", "--samples-per-track", "2", "--context",
             "cpu", "--seed", "1", "--is-wav", "--valid-dur", "1"]
# the architecture of the models the runs fine-tune (and of the runs from scratch)
TINY = dict(hidden_size=8, n_fft=512, n_hop=256)
TINY_FLAGS = ["--hidden-size", "8", "--nfft", "512", "--nhop", "256"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    # 2 training tracks (musdb's split holds one out for validation) x 2 samples / batch 2:
    # 2 steps an epoch
    return generate_dataset(str(tmp_path_factory.mktemp("synth")), nb_train=3, nb_test=1,
                            duration=1.5, seed=5, progress=False)


@pytest.fixture
def published_44k(tmp_path):
    """An 'umxhq.zip' in the official layout, of the tiny architecture at 44.1 kHz."""
    import zipfile
    folder = str(tmp_path / "umxhq")
    make_random_weights(folder, max_bin=100, nb_output_bins=257, seed=3, **TINY)
    archive = str(tmp_path / "umxhq.zip")
    with zipfile.ZipFile(archive, "w") as z:
        for name in sorted(os.listdir(folder)):
            z.write(os.path.join(folder, name), "umxhq/" + name)
    with open(archive, "rb") as f:
        return {"open-unmix-nnabla/umxhq.zip": f.read()}


def train(*argv):
    code, stdout, err = run_script("train", *argv)
    assert code == 0, err
    return stdout


def test_umx_from_scratch_trains_and_resumes(root, tmp_path):
    out = str(tmp_path / "out")
    argv = ["--root", root, "--output", out, *UMX_ARGS, *TINY_FLAGS]
    train(*argv, "--epochs", "1")
    after_one, _ = checkpoint(out, "vocals")
    stdout = train(*argv, "--epochs", "2")
    assert "resuming vocals from epoch 1" in stdout
    assert_trained(after_one, out, "vocals", steps=4)


def test_umx_fine_tuned_from_a_folder_trains_and_resumes(root, tmp_path):
    model = str(tmp_path / "model")
    make_random_weights(model, targets=["vocals"], max_bin=100, nb_output_bins=257, **TINY)
    start = read_h5(os.path.join(model, "vocals.h5"))
    out = str(tmp_path / "out")
    argv = ["--root", root, "--output", out, "--model", model, *UMX_ARGS]
    stdout = train(*argv, "--epochs", "1")
    assert "fine-tuning vocals from %s" % model in stdout
    after_one = assert_trained(start, out, "vocals", steps=2)
    stdout = train(*argv, "--epochs", "2")
    assert "resuming vocals from epoch 1" in stdout
    assert_trained(after_one, out, "vocals", steps=4)


def test_umx_fine_tuned_from_a_published_name_trains(root, tmp_path, hub_env, published_44k):
    url, files, _, cache = hub_env
    files.update(published_44k)
    out = str(tmp_path / "out")
    code, stdout, err = run_script("train", "--root", root, "--output", out, "--model", "umxhq",
                                   *UMX_ARGS, "--epochs", "1",
                                   env={"UMX_MODELS_URL": url, "UMX_CACHE": cache})
    assert code == 0, err
    assert "fine-tuning vocals from umxhq" in stdout
    start = read_h5(os.path.join(cache, "umxhq", "vocals.h5"))
    assert_trained(start, out, "vocals", steps=2)


def test_xumx_from_scratch_trains_and_resumes(root, tmp_path):
    out = str(tmp_path / "out")
    argv = ["--root", root, "--output", out, *XUMX_ARGS, *TINY_FLAGS]
    train(*argv, "--epochs", "1")
    after_one, _ = checkpoint(out, "x-umx")
    stdout = train(*argv, "--epochs", "2")
    assert "resuming x-umx from epoch 1" in stdout
    assert_trained(after_one, out, "x-umx", steps=4)


def test_xumx_fine_tuned_from_a_file_trains(root, tmp_path):
    from unmix_nnabla.models.random_weights import write_random_xumx
    model = str(tmp_path / "x-umx.h5")
    write_random_xumx(model, UmxConfig(max_bin=100, nb_output_bins=257, **TINY))
    out = str(tmp_path / "out")
    stdout = train("--root", root, "--output", out, "--model", model, *XUMX_ARGS, "--epochs", "1")
    assert "fine-tuning x-umx from %s" % model in stdout
    assert_trained(read_h5(model), out, "x-umx", steps=2)
    summary = json.load(open(os.path.join(out, "x-umx.json")))
    assert summary["config"]["hidden_size"] == 8
