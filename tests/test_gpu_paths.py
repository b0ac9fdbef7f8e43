"""GPU paths, run on the CPU: every line a GPU context takes, taken here with UMX_OPS=nnabla
(NNabla's own functions instead of the numpy ones, the STFTs in the training graph, F.lstm,
the graph network for separation), and compared with the CPU's path; the reasons a GPU
cannot be used; the NCCL communicator's start-up up to the device calls."""
import os
import subprocess
import sys

import numpy as np
import nnabla as nn
import pytest

from conftest import ROOT, SMALL, make_random_weights, music_like, snr
from unmix_nnabla.networks.layout import UmxConfig
from unmix_nnabla.base.runtime import UmxError
from unmix_nnabla.base.vocabulary import XUMX_BRANCHES

from unmix_nnabla.training import graph as train_graph, step as training_step
TINY = dict(hidden_size=8, max_bin=40, nb_output_bins=129, n_fft=256, n_hop=128, nb_layers=2)


def _step(cfg, scope, mixtures, targets, monkeypatch, ops=None, lstm=None):
    """(loss, {name: gradient}) of one training step from the same initial parameters."""
    for name, value in (("UMX_OPS", ops), ("UMX_LSTM", lstm)):
        if value:
            monkeypatch.setenv(name, value)
        else:
            monkeypatch.delenv(name, raising=False)
    nn.clear_parameters()
    nn.random.seed(0)
    graph = train_graph.build_training_graph(cfg, scope, mixtures.shape[0], mixtures.shape[1],
                                              mcoef=1.0, dropout=0.0)
    return training_step.step_gradients(graph, cfg, mixtures, targets)


def _batch(xumx, samples=2048):
    rng = np.random.RandomState(0)
    mixtures = rng.randn(2, samples, 2).astype(np.float32) * 0.3
    targets = np.tile(mixtures * 0.25, (1, 1, 4 if xumx else 1)) + \
        rng.randn(2, samples, 4 if xumx else 1).repeat(2, axis=2).astype(np.float32) * 0.01
    return mixtures, targets


def _assert_same(a, b):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    assert grads_a.keys() == grads_b.keys() and any(np.abs(g).max() > 0 for g in grads_a.values())
    for name in grads_a:
        assert np.allclose(grads_a[name], grads_b[name], rtol=1e-3,
                           atol=1e-5 * max(1.0, np.abs(grads_b[name]).max())), name


@pytest.mark.parametrize("xumx", [False, True])
def test_fused_lstm_graph_equals_unrolled(xumx, monkeypatch):
    """Loss and gradients of the training graph with the fused and the unrolled LSTM
    (dropout off: F.lstm's on GPUs draws its own masks), and outputs in test mode."""
    from unmix_nnabla.networks import model
    cfg = UmxConfig(**dict(TINY, xumx_branches=XUMX_BRANCHES if xumx else ()))
    scope = "x-umx" if xumx else "vocals"
    mixtures, targets = _batch(xumx)
    _assert_same(*(_step(cfg, scope, mixtures, targets, monkeypatch, lstm=choice)
                   for choice in ("unrolled", "fused")))
    outputs = []
    spec = nn.Variable.from_numpy_array(np.abs(np.random.RandomState(1).randn(9, 2, 2, 129))
                                        .astype(np.float32))
    for choice in ("unrolled", "fused"):
        monkeypatch.setenv("UMX_LSTM", choice)
        with nn.parameter_scope(scope):
            net = model.CrossNet(cfg) if xumx else model.OpenUnmix(cfg)
            out = net(spec, test=True)
        out = out["vocals"] if xumx else out
        out.forward()
        outputs.append(out.d.copy())
    assert np.allclose(outputs[0], outputs[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("xumx", [False, True])
def test_the_device_training_step_equals_the_cpu_step(xumx, monkeypatch):
    """GPU contexts feed audio and take the STFTs (and X-UMX's phase and ISTFT) in the graph,
    with NNabla's losses and F.lstm: the same loss and gradients as the CPU's host path."""
    cfg = UmxConfig(**dict(TINY, xumx_branches=XUMX_BRANCHES if xumx else ()))
    scope = "x-umx" if xumx else "vocals"
    mixtures, targets = _batch(xumx)
    host = _step(cfg, scope, mixtures, targets, monkeypatch)
    device = _step(cfg, scope, mixtures, targets, monkeypatch, ops="nnabla")
    _assert_same(device, host)
    # the device's graph takes the audio itself: nothing but two audio inputs
    monkeypatch.setenv("UMX_OPS", "nnabla")
    nn.clear_parameters()
    graph = train_graph.build_training_graph(cfg, scope, 2, 2048)
    assert sorted(graph.inputs) == ["mixture_audio", "targets_audio"]


@pytest.mark.parametrize("xumx", [False, True])
def test_a_few_device_steps_lower_the_loss(xumx, monkeypatch):
    import nnabla.solvers as S
    monkeypatch.setenv("UMX_OPS", "nnabla")
    cfg = UmxConfig(**dict(TINY, xumx_branches=XUMX_BRANCHES if xumx else ()))
    scope = "x-umx" if xumx else "vocals"
    mixtures, targets = _batch(xumx)
    nn.random.seed(0)
    graph = train_graph.build_training_graph(cfg, scope, 2, 2048, mcoef=1.0)
    solver = S.Adam(alpha=0.01)
    with nn.parameter_scope(scope):
        solver.set_parameters(nn.get_parameters())
    losses = [training_step.train_step(graph, solver, mixtures, targets, cfg, 0.0,
                                      training_step.dropout_rngs(0, k, range(2)))
              for k in range(8)]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses


@pytest.mark.parametrize("xumx", [False, True])
def test_the_device_separation_equals_the_cpu_separation(xumx, tmp_path, monkeypatch):
    from unmix_nnabla.separation.separator import separate
    from unmix_nnabla.models.random_weights import write_random_xumx
    from unmix_nnabla.models.hub import load_models
    if xumx:
        model = str(tmp_path / "x-umx.h5")
        write_random_xumx(model, UmxConfig(**SMALL))
    else:
        model = str(tmp_path / "umx")
        make_random_weights(model, **SMALL)
    audio = music_like(3.0, 8000)
    results = []
    for ops in (None, "nnabla"):
        if ops:
            monkeypatch.setenv("UMX_OPS", ops)
        nn.clear_parameters()
        cfgs = load_models(model)
        results.append(separate(audio, 8000, cfgs, niter=1, window=40, progress=False)[0])
    for name in results[0]:
        assert snr(results[0][name], results[1][name]) >= 60, name


def test_umx_ops_takes_only_known_values(monkeypatch):
    from unmix_nnabla.networks.ops import numpy_kernels
    monkeypatch.setenv("UMX_OPS", "cuda")
    with pytest.raises(ValueError, match="UMX_OPS must be"):
        numpy_kernels()


# --------------------------------------------------------------------------------------
# why a GPU cannot be used: one line, the cause
# --------------------------------------------------------------------------------------

@pytest.fixture
def pretend_installed(monkeypatch):
    """The CUDA extension 'installed' (its module found) for context.gpu_status."""
    import importlib.util
    from unmix_nnabla.base import context
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name.startswith("nnabla_ext") else real(name, *a))
    monkeypatch.setattr(context, "load_cuda_libraries", lambda: {})
    return context


def test_gpu_status_names_the_cause(pretend_installed, monkeypatch):
    context = pretend_installed
    missing = {"libcudnn.so.8", "libcufft.so.11"}
    monkeypatch.setattr(context, "_loadable", lambda name: name not in missing)
    usable, why = context.gpu_status()
    assert not usable and "libcufft.so.11, libcudnn.so.8 not found" in why
    assert "cuDNN 8" in why and "pip install -r requirements-gpu.txt" in why
    monkeypatch.setattr(context, "_loadable", lambda name: True)

    def no_driver():
        raise OSError("libcuda.so.1: cannot open shared object file")
    cases = [(no_driver, "no NVIDIA driver (libcuda.so.1 not found): install NVIDIA's driver "
                         ">= 525.60.13 for CUDA 12"),
             (lambda: (11040, [(8, 0)]), "the NVIDIA driver supports CUDA 11.4, CUDA 12 needs a "
                                         "driver >= 525.60.13"),
             (lambda: (12020, []), "no GPU: the NVIDIA driver sees no device"),
             (lambda: (12020, None), "no GPU: the NVIDIA driver sees no device"),
             (lambda: (12020, [(5, 2)]), "GPU 0 has compute capability 5.2 (sm_52): "
                                         "nnabla-ext-cuda120 1.39.0 has kernels for sm_53 to "
                                         "sm_90 only (Maxwell's sm_50/52 GPUs cannot run it)")]
    for driver, message in cases:
        monkeypatch.setattr(context, "_driver", driver)
        usable, why = context.gpu_status()
        assert not usable and why == message, why


def test_an_explicit_gpu_context_is_refused_and_the_default_says_why(tmp_path):
    """Here NNabla's CUDA extension is not installed: --context cudnn stops with the reason;
    without --context, the CPU is used, and a line says why."""
    from unmix_nnabla.base.context import gpu_status
    usable, why = gpu_status()
    if usable:
        pytest.skip("a GPU is usable here")
    from unmix_nnabla.data.synth import generate_dataset
    from conftest import run_script
    root = generate_dataset(str(tmp_path / "data"), 2, 1, 1.5, progress=False)
    argv = ["--umx-train", "--root", root, "--is-wav", "--source", "bass", "--batch-size", "2",
            "--hidden-size", "8", "--nfft", "512", "--nhop", "256", "--seq-dur", "0.5",
            "--samples-per-track", "2", "--epochs", "1"]
    code, _, err = run_script("train", *argv, "--context", "cudnn", "--output",
                              str(tmp_path / "a"))
    lines = [line for line in err.strip().splitlines() if line]
    assert code == 1 and lines == ["error: --context cudnn: %s" % why], err
    assert not os.path.exists(str(tmp_path / "a"))
    code, out, err = run_script("train", *argv, "--output", str(tmp_path / "b"))
    assert code == 0, err
    assert "context: cpu (%s)" % why in out


def test_gpu_check_exits_1_when_nvidia_smi_lists_a_gpu_nnabla_cannot_use(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    smi = fake / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-0)'\n")
    smi.chmod(0o755)
    env = dict(os.environ, PATH="%s:%s" % (fake, os.environ["PATH"]))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gpu_check.py")],
                          capture_output=True, text=True, cwd=ROOT, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "nvidia-smi lists GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-0), but NNabla cannot use " \
        "it:" in proc.stdout
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gpu_check.py")],
                          capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PATH="/usr/bin:/bin"))  # no nvidia-smi at all
    assert proc.returncode == 0 and proc.stdout.startswith("no GPU ("), proc.stdout + proc.stderr


# --------------------------------------------------------------------------------------
# mpirun on GPUs: the NCCL communicator's start-up, up to the device calls
# --------------------------------------------------------------------------------------

class _FakeCommunicator:
    """NNabla's MultiProcessDataParallelCommunicator, as far as start-up goes."""

    def __init__(self, ctx, fail=None):
        self.ctx, self.fail = ctx, fail
        self.rank, self.size, self.local_rank = 1, 2, 1

    def init(self):
        if self.fail:
            raise RuntimeError(self.fail)


def test_the_nccl_communicator_checks_before_it_starts(monkeypatch):
    import functools
    from unmix_nnabla.training.comm import NcclCommunicator
    from types import SimpleNamespace
    ok = (lambda: (True, "1 GPU"))
    NcclCommunicator = functools.partial(  # noqa: N806 (the class, with NNabla's context made here)
        NcclCommunicator, extension_context=lambda name, device_id: SimpleNamespace(
            name=name, device_id=device_id))
    with pytest.raises(UmxError, match="--context cudnn: no GPU: the NVIDIA driver sees no"):
        NcclCommunicator("cudnn", status=lambda: (False, "no GPU: the NVIDIA driver sees no "
                                                         "device"))
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1")
    with pytest.raises(UmxError, match="this node runs rank 1 but has 1 GPU: start at most one"):
        NcclCommunicator("cudnn", status=ok, device_count=lambda: 1)
    NcclCommunicator = functools.partial(NcclCommunicator, missing=lambda: [])  # noqa: N806
    working = SimpleNamespace(MultiProcessDataParallelCommunicator=_FakeCommunicator)
    comm = NcclCommunicator("cudnn", status=ok, device_count=lambda: 2, communicators=working)
    assert (comm.rank, comm.size, comm.local_rank) == (1, 2, 1)
    assert comm.comm.ctx.device_id == "1"  # the local rank picks the GPU
