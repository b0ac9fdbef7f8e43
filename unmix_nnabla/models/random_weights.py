"""Random weights in the published layouts, for tests, benchmarks and checks: UMX's
`<target>.h5` files and Sony's `x-umx.h5` (with the `.json` that training writes)."""
import os

import nnabla as nn
import numpy as np

from unmix_nnabla.base.files import write_json_atomic
from unmix_nnabla.base.vocabulary import SOURCES
from unmix_nnabla.models.weights import save_target
from unmix_nnabla.networks.model import CrossNet, OpenUnmix


def _randomize(params, cfg, rng):
    """Random values in a realistic range for {name: Variable} of UMX or X-UMX names, in
    float32 as trained weights are (a float64 array set as `.d` would make the file float64)."""
    for name, var in params.items():
        if name.endswith("bn/var"):
            value = rng.rand(*var.shape) + 0.5
        elif name.endswith("/W"):
            value = rng.randn(*var.shape) / np.sqrt(var.shape[0])
        elif "/bn/" in name or name.startswith("output"):
            value = rng.randn(*var.shape) * 0.1 + (1.0 if name.endswith("gamma") else 0)
        elif name.startswith("lstm"):
            value = rng.uniform(-1, 1, var.shape) / np.sqrt(cfg.lstm_hidden_size)
        else:
            continue
        var.d = value.astype(np.float32)


def write_random_weights(folder, cfg, targets=SOURCES, seed=0):
    """Random UMX `<target>.h5` files in the official layout (for tests and benchmarks)."""
    rng = np.random.RandomState(seed)
    os.makedirs(folder, exist_ok=True)
    for target in targets:
        with nn.parameter_scope("random"):
            OpenUnmix(cfg, input_mean=rng.rand(cfg.nb_output_bins) * 0.1,
                      input_scale=rng.rand(cfg.nb_output_bins) + 0.5)(
                nn.Variable((2, 1, cfg.nb_channels, cfg.nb_output_bins)))
            _randomize(nn.get_parameters(grad_only=False), cfg, rng)
        save_target(os.path.join(folder, target + ".h5"), "random")
        write_json_atomic(os.path.join(folder, target + ".json"), {"config": cfg.to_dict()})
        with nn.parameter_scope("random"):
            nn.clear_parameters()


def write_random_xumx(path, cfg, seed=0):
    """A random X-UMX file in Sony's layout (and its .json), for tests and benchmarks."""
    rng = np.random.RandomState(seed)
    with nn.parameter_scope("random"):
        CrossNet(cfg, input_mean=rng.rand(cfg.nb_output_bins) * 0.1,
                 input_scale=rng.rand(cfg.nb_output_bins) + 0.5)(
            nn.Variable((2, 1, cfg.nb_channels, cfg.nb_output_bins)))
        _randomize(nn.get_parameters(grad_only=False), cfg, rng)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_target(path, "random")
    write_json_atomic(os.path.splitext(path)[0] + ".json", {"config": cfg.to_dict()})
    with nn.parameter_scope("random"):
        nn.clear_parameters()
