"""The training steps equal independent implementations' on one batch: UMX's equals
open-unmix-pytorch 1.3.0's (tests/fixtures/make_umx_training_fixture.py: the loss, every
parameter's gradient, and the input standardization's statistics; the framing that both
references train with, uncentered, is what makes them equal); X-UMX's equals asteroid's X-UMX
with the multi-domain loss written in torch, gradients by autograd
(tests/fixtures/make_xumx_training_fixture.py), so that neither drifts."""
import os

import numpy as np
import nnabla as nn
import pytest

from conftest import ROOT, fixture_reference
from unmix_nnabla.models.conversion import UMX_KEYS, convert_branch, convert_xumx
from unmix_nnabla.models.pth import read_checkpoint
from unmix_nnabla.audio.spectral import training_centered
from unmix_nnabla.training.standardization import compute_statistics

from unmix_nnabla.training import graph as train_graph, step as training_step
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "umx_training")


def _torch_gradients_as_ours(state, reference, params):
    """PyTorch's gradients under this project's names, converted as the weights are: LSTM
    gates and transposes alike; NNabla's one LSTM bias is PyTorch's two summed, so its gradient
    is either one's (they are equal)."""
    grads = {}
    for name, value in state.items():
        key = "grad/" + name
        if key in reference:
            grads[name] = reference[key]
        else:  # running statistics: no gradient
            grads[name] = np.asarray(value)
    for name in list(grads):
        if "bias_hh" in name:
            assert np.array_equal(grads[name], grads[name.replace("bias_hh", "bias_ih")])
            grads[name] = np.zeros_like(grads[name])
    converted, _ = convert_branch(grads, "gradients", UMX_KEYS, 128, 16000)
    return converted


@pytest.fixture(scope="module")
def step():
    return umx_training_step()


def umx_training_step():
    """(our loss and gradients, PyTorch's loss and gradients under our names) of the batch."""
    reference = fixture_reference("umx_training")
    state, _ = read_checkpoint(os.path.join(FIXTURE, "vocals.pth"))
    params, cfg = convert_branch(state, "vocals.pth", UMX_KEYS, 128, 16000)
    mixture, target = reference["mixture"], reference["target"]  # (B, 2, n)
    nn.clear_parameters()
    graph = train_graph.build_training_graph(cfg, "vocals", mixture.shape[0], mixture.shape[-1],
                                              dropout=0.0)
    with nn.parameter_scope("vocals"):
        for name, var in nn.get_parameters(grad_only=False).items():
            var.d = params[name]
    # (B, 2, n) -> (B, n, 2), as the datasets hand out audio
    loss, grads = training_step.step_gradients(graph, cfg, mixture.transpose(0, 2, 1),
                                              target.transpose(0, 2, 1))
    theirs = _torch_gradients_as_ours(state, reference, params)
    nn.clear_parameters()
    return loss, grads, float(reference["loss"]), theirs


def test_the_umx_training_loss_equals_open_unmix_pytorch_s(step):
    loss, _, reference, _ = step
    assert abs(loss - reference) <= 1e-4 * abs(reference), (loss, reference)


def test_every_umx_gradient_equals_open_unmix_pytorch_s(step):
    _, grads, _, theirs = step
    grads = dict(grads)
    assert len(grads) == 16  # every trainable parameter (the BN running statistics have none)
    largest = max(np.linalg.norm(g) for g in theirs.values())
    # input_mean's exact gradient is zero: a constant offset before fc1 is removed by batch
    # normalization on the batch's statistics; both sides hold rounding noise there
    zero = grads.pop("input_mean"), theirs["input_mean"]
    assert max(np.linalg.norm(g) for g in zero) <= 1e-6 * largest
    worst = {}
    for name, ours in grads.items():
        worst[name] = np.linalg.norm(ours - theirs[name]) / np.linalg.norm(theirs[name])
    assert max(worst.values()) <= 1e-4, sorted(worst.items(), key=lambda kv: -kv[1])[:3]


def test_the_statistics_equal_open_unmix_pytorch_s():
    """get_statistics: the mono magnitude, uncentered, population std floored."""
    reference = fixture_reference("umx_training")
    mixtures = [m.T for m in reference["mixture"]]  # (n, 2) each
    mean, std = compute_statistics(mixtures, 512, 128, progress=False,
                                   center=training_centered(xumx=()))
    assert np.allclose(mean, reference["statistics_mean"], rtol=1e-5, atol=1e-7)
    assert np.allclose(std, reference["statistics_std"], rtol=1e-4, atol=1e-7)


def xumx_training_step():
    """(our loss and gradients, asteroid's loss and gradients under our names) of the batch."""
    folder = os.path.join(ROOT, "tests", "fixtures", "xumx_training")
    reference = fixture_reference("xumx_training")
    state, model_args = read_checkpoint(os.path.join(folder, "xumx.pth"))
    params, cfg = convert_xumx(state, "xumx.pth", model_args)
    state, model_args = read_checkpoint(os.path.join(folder, "gradients.pth"))
    theirs, _ = convert_xumx(state, "gradients.pth", model_args)
    mixture, sources = reference["mixture"], reference["sources"]  # (B, 2, n), (4, B, 2, n)
    nn.clear_parameters()
    graph = train_graph.build_training_graph(cfg, "x-umx", mixture.shape[0], mixture.shape[-1],
                                              mcoef=10.0, dropout=0.0)
    with nn.parameter_scope("x-umx"):
        for name, var in nn.get_parameters(grad_only=False).items():
            var.d = params[name]
    # (4, B, 2, n) in the branches' order -> (B, n, 2 * 4), as the datasets hand out targets
    targets = sources.transpose(1, 3, 0, 2).reshape(mixture.shape[0], mixture.shape[-1], -1)
    loss, grads = training_step.step_gradients(graph, cfg, mixture.transpose(0, 2, 1), targets)
    nn.clear_parameters()
    return loss, grads, float(reference["loss"]), theirs


@pytest.fixture(scope="module")
def xumx_step():
    return xumx_training_step()


def test_the_xumx_training_loss_equals_asteroid_s_with_the_multi_domain_loss(xumx_step):
    loss, _, reference, _ = xumx_step
    assert abs(loss - reference) <= 1e-4 * abs(reference), (loss, reference)


def test_every_xumx_gradient_equals_autograd_s(xumx_step):
    _, grads, _, theirs = xumx_step
    grads = dict(grads)
    assert len(grads) == 64  # 16 trainable parameters in each of the 4 branches
    largest = max(np.linalg.norm(g) for g in theirs.values())
    worst = {}
    for name, ours in grads.items():
        if name.startswith("input_mean"):  # zero, as UMX's (batch normalization follows)
            assert max(np.linalg.norm(ours), np.linalg.norm(theirs[name])) <= 1e-6 * largest
            continue
        worst[name] = np.linalg.norm(ours - theirs[name]) / np.linalg.norm(theirs[name])
    assert max(worst.values()) <= 1e-4, sorted(worst.items(), key=lambda kv: -kv[1])[:3]
