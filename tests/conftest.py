"""Shared fixtures: CPU context, clean parameter registry, tiny models, generated audio.

The project's `test.py` shares its name with Python's standard-library `test` package:
`import_script` loads the project's scripts by path so a test never gets the wrong one.
"""
import http.server
import importlib.util
import os
import sys
import threading
import zipfile

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def import_script(name):
    """The project's `<name>.py` as a module (never the stdlib's `test` package)."""
    key = "umx_script_" + name
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, os.path.join(ROOT, name + ".py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


def run_script(name, *argv, env=None, cwd=ROOT):
    """Run the project's `<name>.py` in a subprocess: (exit code, stdout, stderr); env: more
    environment variables."""
    import subprocess
    proc = subprocess.run([sys.executable, os.path.join(ROOT, name + ".py"), *argv],
                          capture_output=True, text=True, cwd=cwd,
                          env=dict(os.environ, **(env or {})))
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(autouse=True)
def cpu_and_clean_parameters():
    import nnabla as nn
    from nnabla.ext_utils import get_extension_context
    nn.set_default_context(get_extension_context("cpu"))
    nn.clear_parameters()
    nn.random.seed(0)
    yield
    nn.clear_parameters()


def make_random_weights(folder, targets=("vocals", "drums", "bass", "other"), seed=0, **cfg_kw):
    """Write random `<target>.h5` files in the official layout; return the config."""
    from unmix_nnabla.networks.layout import UmxConfig
    from unmix_nnabla.models.random_weights import write_random_weights
    cfg = UmxConfig(**cfg_kw)
    write_random_weights(folder, cfg, targets, seed)
    return cfg


SMALL = dict(hidden_size=16, max_bin=60, nb_output_bins=129, n_fft=256, n_hop=64,
             sample_rate=8000)


@pytest.fixture
def small_model(tmp_path):
    """A folder with 4 tiny targets (n_fft 256 at 8 kHz) and its config."""
    folder = str(tmp_path / "model")
    return folder, make_random_weights(folder, **SMALL)


def music_like(seconds, rate, channels=2, seed=0):
    """A few seconds of harmonic tones and noise bursts [shape=(nb_timesteps, channels)]."""
    rng = np.random.RandomState(seed)
    t = np.arange(int(seconds * rate)) / rate
    out = np.zeros((t.size, channels), np.float32)
    for _ in range(6):
        f0 = rng.uniform(60, rate / 8)
        env = (np.sin(2 * np.pi * rng.uniform(0.3, 3) * t + rng.uniform(0, 6)) > 0.2)
        tone = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 4)) * env
        out += (tone[:, None] * rng.uniform(0.05, 0.2, channels)).astype(np.float32)
    out += 0.02 * rng.randn(*out.shape).astype(np.float32)
    return out


def snr(reference, estimate):
    """Signal-to-noise ratio of an estimate in dB."""
    return 10 * np.log10(np.sum(reference ** 2) / np.sum((reference - estimate) ** 2))


def fixture_reference(name):
    """The reference outputs of a fixture in tests/fixtures/<name>/ (reference.npz)."""
    with np.load(os.path.join(ROOT, "tests", "fixtures", name, "reference.npz")) as f:
        return {k: f[k] for k in f.files}


def convert_fixture(name, out):
    """convert.py (as a user runs it) on the checkpoints of tests/fixtures/<name>/ → out."""
    code, _, err = run_script("convert", "--from-pytorch",
                              os.path.join(ROOT, "tests", "fixtures", name), "--out", out)
    assert code == 0, err
    return out


@pytest.fixture(scope="session")
def stem_clip():
    """The real 6 s MUSDB18 track that the stempeg package ships (STEMS .mp4)."""
    import stempeg
    return stempeg.example_stem_path()


# --------------------------------------------------------------------------------------
# models by name, from a local server
# --------------------------------------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves `files` {path: bytes}; `mode` per path: 'ok', 'truncated' (announces more bytes
    than it sends), 'redirect' (to the path + '.real'), 'missing' (404)."""
    files, modes = {}, {}

    def do_GET(self):
        path = self.path.lstrip("/")
        mode = self.modes.get(path, "ok")
        if mode == "redirect":
            self.send_response(302)
            self.send_header("Location", "/" + path + ".real")
            self.end_headers()
            return
        body = self.files.get(path[:-len(".real")] if path.endswith(".real") else path)
        if body is None or mode == "missing":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body) * (2 if mode == "truncated" else 1)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """A model server on 127.0.0.1 → (base URL, files, modes)."""
    _Handler.files, _Handler.modes = {}, {}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield "http://127.0.0.1:%d" % httpd.server_address[1], _Handler.files, _Handler.modes
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """An 'umxhq.zip' in the official layout (small random weights) and an 'x-umx.h5'."""
    from unmix_nnabla.networks.layout import UmxConfig
    from unmix_nnabla.models.random_weights import write_random_xumx
    tmp = tmp_path_factory.mktemp("published")
    folder = str(tmp / "umxhq")
    make_random_weights(folder, **SMALL)
    archive = str(tmp / "umxhq.zip")
    with zipfile.ZipFile(archive, "w") as z:
        for name in sorted(os.listdir(folder)):
            z.write(os.path.join(folder, name), "umxhq/" + name)
    xumx = str(tmp / "x-umx.h5")  # served without its .json: the published STFT, narrow layers
    write_random_xumx(xumx, UmxConfig(hidden_size=4, max_bin=20))
    with open(archive, "rb") as f, open(xumx, "rb") as g:
        return {"open-unmix-nnabla/umxhq.zip": f.read(), "ai-research-code/x-umx/x-umx.h5": g.read()}


@pytest.fixture
def hub_env(server, published, tmp_path, monkeypatch):
    """The hub pointed at the local server and a cache of its own."""
    url, files, modes = server
    files.update(published)
    cache = str(tmp_path / "cache")
    monkeypatch.setenv("UMX_MODELS_URL", url)
    monkeypatch.setenv("UMX_CACHE", cache)
    return url, files, modes, cache


# --------------------------------------------------------------------------------------
# what a training run left: parameters and solver states
# --------------------------------------------------------------------------------------

def read_h5(path):
    """{name: array} of every dataset in an HDF5 file."""
    import h5py
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset)
                     else None)
    return out


def checkpoint(out, scope):
    """(parameters, {parameter: {'t', 'mean', 'var'}}: Adam's state) of a run's checkpoint."""
    folder = os.path.join(out, scope + ".checkpoint")
    states = {}
    for key, value in read_h5(os.path.join(folder, "solver.h5")).items():
        name, part = key.rsplit("|", 1)
        states.setdefault(name.replace("|", "/"), {})[part] = value
    return read_h5(os.path.join(folder, "parameters.h5")), states


def trainable(names):
    """All but batch normalization's running statistics."""
    return {n for n in names if not n.endswith(("/mean", "/var"))}


def assert_trained(start, out, scope, steps, lr=0.001):
    """Every trainable parameter of the checkpoint differs from `start`, yet lies within what
    `steps` Adam updates of rate `lr` can move it (each at most (1 - beta1) / sqrt(1 - beta2)
    = 3.16 lr: a run that ignored `start` lies further away); the solver state holds exactly
    those parameters, each after `steps` updates with non-zero moments."""
    params, states = checkpoint(out, scope)
    assert set(params) == set(start)
    names = trainable(params)
    assert len(names) >= 16
    assert set(states) == names
    unmoved = [n for n in names if np.array_equal(params[n], start[n])]
    assert not unmoved, unmoved
    reach = 3.2 * lr * steps
    too_far = {n: float(np.abs(params[n] - start[n]).max()) for n in names
               if np.abs(params[n] - start[n]).max() > reach}
    assert not too_far, (reach, too_far)
    for name in names:
        assert int(states[name]["t"]) == steps, (name, states[name]["t"])
        assert np.any(states[name]["mean"] != 0) and np.any(states[name]["var"] > 0), name
    return params
