"""convert.py: open-unmix-pytorch checkpoints (both serializations) → NNabla, proven equal.

The reference outputs were made by tests/fixtures/make_pytorch_fixture.py with openunmix
1.3.0 and torch 2.13.0; this test needs neither.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import nnabla as nn
import pytest

from unmix_nnabla.models import conversion
from conftest import ROOT, convert_fixture, fixture_reference, snr
from unmix_nnabla.models.pth import read_checkpoint
from unmix_nnabla.networks.model import OpenUnmix
from unmix_nnabla.separation.separator import separate
from unmix_nnabla.models.hub import load_models
from unmix_nnabla.base.runtime import UmxError
from unmix_nnabla.audio.spectral import stft

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "openunmix_small")


def read_pth(path):
    return read_checkpoint(path)[0]


@pytest.fixture(scope="module")
def reference():
    return fixture_reference("openunmix_small")


@pytest.fixture
def converted(tmp_path):
    return convert_fixture("openunmix_small", str(tmp_path / "converted"))


def test_both_serializations_read_without_torch():
    code = ("import sys; from unmix_nnabla.models import pth; "
            "z = pth.read_checkpoint(%r)[0]; l = pth.read_checkpoint(%r)[0]; "
            "assert 'torch' not in sys.modules; print(len(z), len(l))"
            % (os.path.join(FIXTURE, "vocals.pth"), os.path.join(FIXTURE, "drums-5e3d0a1b.pth")))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    zipped = read_pth(os.path.join(FIXTURE, "vocals.pth"))
    legacy = read_pth(os.path.join(FIXTURE, "drums-5e3d0a1b.pth"))
    assert zipped.keys() == legacy.keys()
    assert zipped["fc1.weight"].shape == (16, 200) and zipped["fc1.weight"].dtype == np.float32
    assert legacy["bn1.num_batches_tracked"].dtype == np.int64
    assert not np.array_equal(zipped["fc1.weight"], legacy["fc1.weight"])


def test_network_output_equals_pytorch(converted, reference):
    cfgs = load_models(converted, ["vocals"])
    cfg = cfgs["vocals"]
    assert (cfg.n_fft, cfg.n_hop, cfg.sample_rate, cfg.hidden_size, cfg.max_bin) == (512, 128, 16000, 16, 100)
    # (C, frames, bins) -> (frames, 1, C, bins)
    mag = np.abs(stft(reference["audio"], 512, 128)).transpose(1, 0, 2)[:, None]
    with nn.parameter_scope("vocals"):
        out = OpenUnmix(cfg)(nn.Variable.from_numpy_array(mag), test=True)
        out.forward()
    ours = out.d[:, 0].transpose(1, 2, 0)  # -> (C, bins, frames), PyTorch's layout
    theirs = reference["vocals_output"]
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(theirs).max()


@pytest.mark.parametrize("niter,min_snr", [(0, 60), (1, 40)])
def test_separation_equals_pytorch(converted, reference, niter, min_snr):
    targets = [str(t) for t in reference["targets"]]
    cfgs = load_models(converted, targets)
    estimates, rate = separate(reference["audio"].T, int(reference["rate"]), cfgs, targets,
                               niter=niter, progress=False)
    theirs = reference["separated_niter%d" % niter]
    for j, target in enumerate(targets):
        assert snr(theirs[j], estimates[target].T) > min_snr, target


def test_published_names_without_json_use_the_published_stft(tmp_path):
    folder = str(tmp_path / "umxhq")
    os.makedirs(folder)
    shutil.copyfile(os.path.join(FIXTURE, "vocals.pth"), os.path.join(folder, "vocals-b62c91ce.pth"))
    # without a json the published hop (1024) applies, which this small model's 512-sample
    # window cannot take: refused, never converted into a model that cannot separate
    with pytest.raises(UmxError, match="n_hop is 1024, expected between 1 and n_fft \\(512\\)"):
        conversion.convert_checkpoints(folder)
    state = read_pth(os.path.join(FIXTURE, "vocals.pth"))
    full = {k: v for k, v in state.items()}
    params, cfg = conversion.convert_state(full, "x.pth", {"args": {"nhop": 256}})
    assert cfg.n_hop == 256 and cfg.sample_rate == 44100


META = {"args": {"nhop": 128}, "sample_rate": 16000}  # the fixture's STFT


def test_state_dict_problems_are_named():
    state = read_pth(os.path.join(FIXTURE, "vocals.pth"))
    missing = dict(state)
    del missing["lstm.weight_hh_l1_reverse"]
    with pytest.raises(UmxError, match="missing tensor lstm.weight_hh_l1_reverse"):
        conversion.convert_state(missing, "x.pth", META)
    wrong = dict(state, **{"fc2.weight": np.zeros((16, 40), np.float32)})
    with pytest.raises(UmxError, match="fc2/affine/W converts to shape \\(40, 16\\)"):
        conversion.convert_state(wrong, "x.pth", META)
    with pytest.raises(UmxError, match="json says hidden_size=32 but the tensors say 16"):
        conversion.convert_state(state, "x.pth", {"args": {"hidden_size": 32, "nhop": 128}})
    # keys of other openunmix releases: STFT windows, 'module.' prefixes, a sample_rate buffer
    extra = {"module." + k: v for k, v in state.items()}
    extra["module.stft.window"] = np.ones(512, np.float32)
    extra["module.sample_rate"] = np.array(22050.0)
    params, cfg = conversion.convert_state(extra, "x.pth", {"args": {"nhop": 128}})
    assert cfg.sample_rate == 22050 and "stft" not in " ".join(params)


def test_bad_inputs_fail_cleanly(tmp_path):
    def run(src, out):
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "convert.py"), "--from-pytorch",
                               src, "--out", out], capture_output=True, text=True, cwd=ROOT)
        lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
        return proc.returncode, lines
    empty = str(tmp_path / "empty")
    os.makedirs(empty)
    code, lines = run(empty, str(tmp_path / "o1"))
    assert code == 1 and len(lines) == 1 and "no .pth files" in lines[0]
    junk = str(tmp_path / "junk")
    shutil.copytree(FIXTURE, junk)
    with open(os.path.join(junk, "bass.pth"), "w") as f:
        f.write("not a checkpoint")
    code, lines = run(junk, str(tmp_path / "o2"))
    assert code == 1 and len(lines) == 1 and "bass.pth is not a PyTorch checkpoint" in lines[0]
    contradict = str(tmp_path / "contradict")
    shutil.copytree(FIXTURE, contradict)
    meta = json.load(open(os.path.join(contradict, "drums.json")))
    meta["args"]["nb_channels"] = 1
    json.dump(meta, open(os.path.join(contradict, "drums.json"), "w"))
    code, lines = run(contradict, str(tmp_path / "o3"))
    assert code == 1 and "nb_channels=1" in lines[0]
    # nothing half-written: no output folder, no staging folder left
    assert sorted(os.listdir(str(tmp_path))) == ["contradict", "empty", "junk"]
