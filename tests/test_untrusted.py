"""Untrusted files stay harmless: no code runs from a checkpoint, no read outside a tensor's
storage, every value read from a file checked where it is read.

Classes (several cases each): 1 pickled payloads in every pickle of both serializations,
2 tensor views against their storages, 3 values from model files (.json, model_args,
weights), 4 files that hold more than one model.
"""
import json
import os
import shutil
import zipfile

import numpy as np
import pytest

from conftest import ROOT, SMALL, make_random_weights, run_script
from crafted_pth import Call, Global, Storage, state_of, tensor, write_legacy, write_zip
from unmix_nnabla.models.pth import read_checkpoint
from unmix_nnabla.base.runtime import UmxError

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "openunmix_small")


@pytest.fixture(scope="module")
def fixture_state():
    """The small open-unmix model of the fixtures, as {name: array}."""
    return read_checkpoint(os.path.join(FIXTURE, "vocals.pth"))[0]


def payloads(marker):
    """Pickled objects that would create `marker` if anything ran them."""
    command = "touch %s" % marker
    builtins = "builtins"
    return {
        "os.system": Call(Global("os", "system"), command),
        "posix.system": Call(Global("posix", "system"), command),
        "eval": Call(Global(builtins, "eval"), "__import__('os').system(%r)" % command),
        "exec": Call(Global(builtins, "exec"), "import os; os.system(%r)" % command),
        "getattr chain": Call(Call(Global(builtins, "getattr"),
                                   Call(Global(builtins, "__import__"), "os"), "system"),
                              command),
        "subprocess": Call(Global("subprocess", "check_call"), ["touch", marker]),
        "numpy gadget": Call(Global("numpy", "load"), marker),
    }


def check_refused(path, marker, needle="refused to load it"):
    with pytest.raises(UmxError) as info:
        read_checkpoint(str(path))
    message = str(info.value)
    assert len(message.splitlines()) == 1 and needle in message and str(path) in message, message
    assert not os.path.exists(marker), "a payload ran"
    return message


# --------------------------------------------------------------------------------------
# 1. no code runs from a checkpoint
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["magic", "protocol", "system info", "state dict", "keys"])
def test_payloads_in_every_legacy_pickle_are_refused(tmp_path, fixture_state, where):
    marker = str(tmp_path / "marker")
    index = ["magic", "protocol", "system info", "state dict", "keys"].index(where)
    for name, payload in payloads(marker).items():
        path = tmp_path / ("legacy-%s.pth" % name.replace(" ", "-"))
        if where == "state dict":  # a payload among the tensors
            state = state_of(fixture_state)
            state["fc1.weight"] = payload
            write_legacy(str(path), state)
        else:
            write_legacy(str(path), state_of(fixture_state), replace={index: payload})
        message = check_refused(path, marker)
        assert "it asks for" in message, (name, message)


def test_payloads_in_a_zip_are_refused(tmp_path, fixture_state):
    marker = str(tmp_path / "marker")
    for name, payload in payloads(marker).items():
        for placement in ("entry", "whole", "model_args"):
            path = tmp_path / ("zip-%s-%s.pth" % (name.replace(" ", "-"), placement))
            state = state_of(fixture_state)
            if placement == "entry":
                state["evil"] = payload
                obj = state
            elif placement == "whole":
                obj = payload
            else:  # an asteroid package whose model_args call something
                obj = {"state_dict": state, "model_args": {"sample_rate": payload}}
            write_zip(str(path), obj)
            check_refused(path, marker)


def test_state_setting_and_persistent_ids_are_refused(tmp_path, fixture_state):
    marker = str(tmp_path / "marker")
    # BUILD (set an object's state) on an allowed class other than OrderedDict
    built = tmp_path / "build.pth"
    write_zip(str(built), {"state_dict": state_of(fixture_state), "infos": _Built()})
    check_refused(built, marker, "sets the state")
    # a persistent id that is not a storage
    odd = tmp_path / "pid.pth"
    state = state_of(fixture_state)
    state["x"] = tensor(_OddStorage("0", np.zeros(4)), (4,), (1,))
    write_zip(str(odd), state)
    check_refused(odd, marker, "persistent object")


class _Built:
    """Pickles as torch's version string followed by BUILD with a state."""

    def __reduce__(self):
        return Global("torch.torch_version", "TorchVersion"), ("2.0",), {"__class__": "x"}


class _OddStorage(Storage):
    def pid(self):
        return ("module", Global("torch", "FloatStorage"), self.key, "cpu", self.numel)


def test_convert_py_refuses_with_one_line_and_runs_nothing(tmp_path, fixture_state):
    marker = str(tmp_path / "marker")
    src = tmp_path / "src"
    shutil.copytree(FIXTURE, src)
    write_legacy(str(src / "drums-5e3d0a1b.pth"), state_of(fixture_state),
                 replace={0: payloads(marker)["os.system"]})
    out = str(tmp_path / "out")
    code, _, err = run_script("convert", "--from-pytorch", str(src), "--out", out)
    lines = [line for line in err.strip().splitlines() if line]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert "drums-5e3d0a1b.pth: refused to load it: it asks for os.system" in lines[0], err
    assert not os.path.exists(marker) and not os.path.exists(out)


# --------------------------------------------------------------------------------------
# 2. tensors never read outside their storage
# --------------------------------------------------------------------------------------

def _with_tensor(fixture_state, name, value):
    state = state_of(fixture_state)
    state[name] = value
    return state


@pytest.mark.parametrize("case", ["stride past", "size twice", "negative stride",
                                  "offset past", "stride zero", "malformed size",
                                  "short storage", "legacy count"])
def test_tensor_views_are_checked_against_their_storage(tmp_path, fixture_state, case):
    weight = fixture_state["fc1.weight"]  # (16, 200)
    storage = Storage("w", weight)
    rows, cols = weight.shape
    views = {
        "stride past": ((rows, cols), (cols, 100), 0, "reaches past its storage"),
        "size twice": ((2 * rows, cols), (cols, 1), 0, "reaches past its storage"),
        "negative stride": ((rows, cols), (-cols, 1), 0, "malformed"),
        "offset past": ((rows, cols), (cols, 1), 10 ** 9, "reaches past its storage"),
        "stride zero": ((rows, cols), (0, 1), 0, "stride 0"),
        "malformed size": (("16", cols), (cols, 1), 0, "malformed"),
    }
    path = str(tmp_path / "bad.pth")
    marker = str(tmp_path / "marker")
    if case in views:
        size, stride, offset, message = views[case]
        write_zip(path, _with_tensor(fixture_state, "fc1.weight",
                                     tensor(storage, size, stride, offset)))
    elif case == "short storage":  # fewer bytes than the storage's element count
        write_zip(path, _with_tensor(fixture_state, "fc1.weight",
                                     tensor(storage, (rows, cols), (cols, 1))), short_storage="w")
        message = "holds 12796 bytes"
    else:  # the legacy count says more elements than the tensors' storage has
        write_legacy(path, _with_tensor(fixture_state, "fc1.weight", tensor(
            Storage("w", weight, numel=weight.size + 8), (rows, cols), (cols, 1))))
        message = "the file ends"
    check_refused(path, marker, message)


def test_an_honest_checkpoint_reads_back_exactly(tmp_path, fixture_state):
    for write in (write_zip, write_legacy):
        path = str(tmp_path / ("ok-%s.pth" % write.__name__))
        state = state_of(fixture_state)
        # a transposed view (as torch saves W.T) and an offset into a shared storage
        base = np.arange(24, dtype=np.float32)
        shared = Storage("shared", base)
        state["view.t"] = tensor(shared, (4, 3), (1, 4), 0)
        state["view.offset"] = tensor(shared, (2, 5), (5, 1), 12)
        write(path, state)
        read, _ = read_checkpoint(path)
        for name, value in fixture_state.items():
            assert np.array_equal(read[name], value), name
        assert np.array_equal(read["view.t"], base[:12].reshape(3, 4).T)
        assert np.array_equal(read["view.offset"], base[12:22].reshape(2, 5))


# --------------------------------------------------------------------------------------
# 3. values read from model files are checked where they are read
# --------------------------------------------------------------------------------------

def _small_model(tmp_path, targets=("vocals",)):
    folder = str(tmp_path / "model")
    make_random_weights(folder, targets=targets, **SMALL)
    return folder


@pytest.mark.parametrize("field,value,message", [
    ("n_hop", 8192, "n_hop is 8192, expected between 1 and n_fft (256)"),
    ("n_hop", 0, "n_hop is 0, expected between 1 and n_fft (256)"),
    ("n_hop", "64", "n_hop is '64', expected an integer"),
    ("n_hop", 64.5, "n_hop is 64.5, expected an integer"),
    ("sample_rate", 10, "sample_rate is 10, expected 1000 to 384000 Hz"),
    ("sample_rate", None, "sample_rate is None, expected an integer"),
    ("hidden_size", 32, "says hidden_size = 32, but the weights"),
    ("unidirectional", "no", "unidirectional is 'no', expected true or false"),
])
def test_model_descriptions_are_checked(tmp_path, field, value, message):
    from unmix_nnabla.models.hub import load_models
    folder = _small_model(tmp_path)
    meta_path = os.path.join(folder, "vocals.json")
    with open(meta_path) as f:
        meta = json.load(f)
    meta["config"][field] = value
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    with pytest.raises(UmxError) as info:
        load_models(folder, ["vocals"])
    assert message in str(info.value) and "vocals.json" in str(info.value), str(info.value)


def test_a_bad_description_stops_test_py_with_one_line(tmp_path):
    import soundfile as sf
    from conftest import music_like
    folder = _small_model(tmp_path)
    with open(os.path.join(folder, "vocals.json"), "w") as f:
        json.dump({"config": {"n_hop": 0}}, f)
    song = str(tmp_path / "song.wav")
    sf.write(song, music_like(1.0, 8000), 8000)
    code, _, err = run_script("test", "--inputs", song, "--model", folder, "--targets",
                              "vocals", "--out-dir", str(tmp_path / "out"), "--context", "cpu")
    lines = [line for line in err.strip().splitlines() if line.startswith("error")]
    assert code == 1 and len(lines) == 1 and "n_hop is 0" in lines[0], err
    assert not os.path.exists(str(tmp_path / "out"))


@pytest.mark.parametrize("change,message", [
    ({"model_args": {"sample_rate": "fast"}}, "sample_rate is 'fast', expected an integer"),
    ({"model_args": {"n_hop": 0}}, "n_hop is 0, expected between 1 and n_fft"),
    ({"model_args": {"bidirectional": "yes"}}, "bidirectional is 'yes', expected true or false"),
    ({"model_args": {"sources": ["vocals", 3]}}, "sources is ['vocals', 3]"),
    ({"nan": "layer_dec.vocals.dec.0.weight"}, "layer_dec.vocals.dec.0.weight holds NaN"),
])
def test_asteroid_model_args_and_weights_are_checked(tmp_path, change, message):
    from unmix_nnabla.models import conversion
    src = os.path.join(ROOT, "tests", "fixtures", "xumx_small")
    pth = [f for f in os.listdir(src) if f.endswith(".pth")][0]
    state, model_args = read_checkpoint(os.path.join(src, pth))
    model_args = dict(model_args, **change.get("model_args", {}))
    if "nan" in change:
        state = dict(state)
        state[change["nan"]] = state[change["nan"]].copy()
        state[change["nan"]][0, 0] = np.nan
    with pytest.raises(UmxError) as info:
        conversion.convert_xumx(state, pth, model_args)
    assert message in str(info.value), str(info.value)


def test_open_unmix_json_values_are_checked(fixture_state):
    from unmix_nnabla.models import conversion
    for meta, message in (({"args": {"nhop": "128"}}, "nhop is '128'"),
                          ({"args": {"nhop": 128}, "sample_rate": "16k"}, "sample_rate is '16k'"),
                          ({"args": []}, "no 'args'")):
        with pytest.raises(UmxError) as info:
            conversion.convert_state(dict(fixture_state), "x.pth", meta, "x.json")
        assert message in str(info.value), str(info.value)


# --------------------------------------------------------------------------------------
# 4. a file or folder that holds more than one model is refused, naming them
# --------------------------------------------------------------------------------------

def test_two_models_in_one_zip_or_folder_are_refused(tmp_path):
    from unmix_nnabla.networks.layout import UmxConfig
    from unmix_nnabla.models.random_weights import write_random_xumx
    from unmix_nnabla.models.hub import load_models
    one, two = _small_model(tmp_path / "a"), _small_model(tmp_path / "b")
    archive = str(tmp_path / "two.zip")
    with zipfile.ZipFile(archive, "w") as z:
        for name, folder in (("umxhq", one), ("umx", two)):
            for f in os.listdir(folder):
                z.write(os.path.join(folder, f), "%s/%s" % (name, f))
    with pytest.raises(UmxError, match="two.zip holds more than one model \\(umx/, umxhq/\\)"):
        load_models(archive)
    mixed = str(tmp_path / "mixed")
    shutil.copytree(one, mixed)
    write_random_xumx(os.path.join(mixed, "x-umx.h5"), UmxConfig(**SMALL))
    with pytest.raises(UmxError, match="holds more than one model \\(vocals.h5, x-umx.h5\\)"):
        load_models(mixed)
    outside = str(tmp_path / "outside.zip")
    with zipfile.ZipFile(outside, "w") as z:
        z.writestr("../evil.h5", b"x")
    with pytest.raises(UmxError, match="holds a file outside its folder"):
        load_models(outside)
    assert not os.path.exists(str(tmp_path.parent / "evil.h5"))


def test_two_checkpoints_of_one_target_are_refused(tmp_path):
    from unmix_nnabla.models import conversion
    src = str(tmp_path / "src")
    shutil.copytree(FIXTURE, src)
    shutil.copyfile(os.path.join(src, "vocals.pth"), os.path.join(src, "vocals-12345678.pth"))
    with pytest.raises(UmxError, match="are both checkpoints of 'vocals'"):
        conversion.find_checkpoints(src)


def test_order_of_ordered_dicts_is_kept(tmp_path, fixture_state):
    path = str(tmp_path / "ok.pth")
    write_zip(path, state_of(fixture_state))
    assert list(read_checkpoint(path)[0]) == list(fixture_state)
