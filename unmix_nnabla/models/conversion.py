"""open-unmix-pytorch and asteroid X-UMX checkpoints → this project's NNabla layouts.

A folder of open-unmix-pytorch weights (`<target>-<hash>.pth` as published, or `<target>.pth`
with the `<target>.json` its training writes) becomes `<target>.h5` + `<target>.json` per
target (the official NNabla layout); an asteroid X-UMX model package (`XUMX`/`BrokenXUMX`:
its state_dict and model_args) becomes `x-umx.h5` in Sony's layout. Checkpoints are read by
`pth.read_checkpoint` (no code runs from them); every value taken from them (tensors, the
json's and model_args' numbers) is checked where it is read, and the result's configuration by
`layout.check_config`.
"""
import os
import re
from dataclasses import replace

import numpy as np

from unmix_nnabla.base.files import read_json, staged_folder, write_json_atomic
from unmix_nnabla.base.runtime import UmxError
from unmix_nnabla.base.vocabulary import XUMX_BRANCHES
from unmix_nnabla.models.pth import read_checkpoint
from unmix_nnabla.models.weights import save_arrays
from unmix_nnabla.networks.layout import (UmxConfig, branch_name, check_config, config_field,
                                          parameter_shapes)

# Where one UMX branch's tensors are in a PyTorch state dict: open-unmix-pytorch's names, and
# asteroid's X-UMX names for branch {t}
UMX_KEYS = {"fc1": ("fc1.weight", "bn1."), "fc2": ("fc2.weight", "bn2."),
            "fc3": ("fc3.weight", "bn3."), "lstm": "lstm.", "input_mean": "input_mean",
            "input_scale": "input_scale", "output_scale": "output_scale",
            "output_mean": "output_mean"}
ASTEROID_XUMX_KEYS = {"fc1": ("layer_enc.{t}.enc.0.weight", "layer_enc.{t}.enc.1."),
                      "fc2": ("layer_dec.{t}.dec.0.weight", "layer_dec.{t}.dec.1."),
                      "fc3": ("layer_dec.{t}.dec.3.weight", "layer_dec.{t}.dec.4."),
                      "lstm": "layer_lstm.{t}.", "input_mean": "mean_scale.input_mean_{t}",
                      "input_scale": "mean_scale.input_scale_{t}",
                      "output_scale": "mean_scale.output_scale_{t}",
                      "output_mean": "mean_scale.output_mean_{t}"}
# the published open-unmix-pytorch models' STFT hop and rate (no json comes with them)
PUBLISHED_HOP, PUBLISHED_RATE = 1024, 44100


def _strip(state):
    """Drop what is no weight (STFT windows, BN batch counters); accept 'module.' prefixes."""
    out = {}
    for key, value in state.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if key.endswith("window") or key.endswith("num_batches_tracked"):
            continue
        out[key] = value
    return out


def _need(state, key, path):
    """The tensor `key`: present, of floats, finite."""
    if key not in state:
        raise UmxError("%s: missing tensor %s (not an open-unmix model?)" % (path, key))
    value = state[key]
    if not np.issubdtype(value.dtype, np.floating):
        raise UmxError("%s: tensor %s holds %s values, not floats" % (path, key, value.dtype))
    if not np.all(np.isfinite(value)):
        raise UmxError("%s: tensor %s holds NaN or infinite values" % (path, key))
    return value


def _nb_layers(state, lstm, path):
    layers = [re.fullmatch(r"weight_ih_l(\d+)(_reverse)?", k[len(lstm):]) for k in state
              if k.startswith(lstm + "weight_ih_l")]
    if not all(layers):
        raise UmxError("%s: LSTM tensors of unknown names under %s" % (path, lstm))
    return 1 + max(int(m.group(1)) for m in layers)


def convert_branch(state, path, keys, n_hop=PUBLISHED_HOP, sample_rate=PUBLISHED_RATE):
    """One UMX network (an open-unmix target, or an X-UMX branch) of a PyTorch state dict →
    ({NNabla name (UMX's): array}, UmxConfig); keys: where its tensors are (UMX_KEYS' form)."""
    mean = _need(state, keys["input_mean"], path)
    fc1 = _need(state, keys["fc1"][0], path)
    out_scale = _need(state, keys["output_scale"], path)
    lstm = keys["lstm"]
    w_ih0 = _need(state, lstm + "weight_ih_l0", path)
    if mean.ndim != 1 or out_scale.ndim != 1 or fc1.ndim != 2 or w_ih0.ndim != 2 or \
            not mean.size or fc1.shape[1] % mean.size:
        raise UmxError("%s: %s %s, %s %s and %s %s do not fit open-unmix's layout"
                       % (path, keys["input_mean"], mean.shape, keys["fc1"][0], fc1.shape,
                          keys["output_scale"], out_scale.shape))
    max_bin, hidden = mean.shape[0], fc1.shape[0]
    bidirectional = lstm + "weight_ih_l0_reverse" in state
    nb_layers = _nb_layers(state, lstm, path)
    h = w_ih0.shape[0] // 4
    cfg = check_config(UmxConfig(
        nb_channels=fc1.shape[1] // max_bin, hidden_size=hidden, max_bin=max_bin,
        nb_output_bins=out_scale.shape[0], nb_layers=nb_layers, unidirectional=not bidirectional,
        n_fft=2 * (out_scale.shape[0] - 1), n_hop=n_hop, sample_rate=sample_rate), path)
    if h != cfg.lstm_hidden_size:
        raise UmxError("%s: %sweight_ih_l0 has shape %s, expected (%d, %d)"
                       % (path, lstm, w_ih0.shape, 4 * cfg.lstm_hidden_size, hidden))
    params = {name: _need(state, keys[name], path)
              for name in ("input_mean", "input_scale", "output_scale", "output_mean")}
    try:
        for layer in ("fc1", "fc2", "fc3"):
            weight, bn = keys[layer]
            params[layer + "/affine/W"] = _need(state, weight, path).T  # PyTorch stores (out, in)
            for ours, theirs in (("gamma", "weight"), ("beta", "bias"), ("mean", "running_mean"),
                                 ("var", "running_var")):
                params["%s/bn/%s" % (layer, ours)] = \
                    _need(state, bn + theirs, path).reshape(1, 1, -1)
        params.update(_lstm_parameters(state, path, lstm, nb_layers, bidirectional, h))
    except ValueError as exc:  # a reshape that does not fit
        raise UmxError("%s: tensors that do not fit open-unmix's layout (%s)" % (path, exc))
    params = {k: np.ascontiguousarray(v, np.float32) for k, v in params.items()}
    for name, shape in parameter_shapes(cfg).items():
        if params[name].shape != tuple(shape):
            raise UmxError("%s: %s converts to shape %s, expected %s (another architecture?)"
                           % (path, name, params[name].shape, shape))
    return params, cfg


def _lstm_parameters(state, path, lstm, nb_layers, bidirectional, h):
    """PyTorch's LSTM tensors → PF.lstm's: gates (i, f, g, o) in both; NNabla joins
    [W_ih | W_hh] and the two biases."""
    directions = ["", "_reverse"] if bidirectional else [""]
    weights, biases = [], []
    for layer in range(nb_layers):
        w_dirs, b_dirs = [], []
        for suffix in directions:
            key = "l%d%s" % (layer, suffix)
            w_ih = _need(state, lstm + "weight_ih_" + key, path)
            w_hh = _need(state, lstm + "weight_hh_" + key, path)
            b = _need(state, lstm + "bias_ih_" + key, path) + \
                _need(state, lstm + "bias_hh_" + key, path)
            w_dirs.append(np.concatenate([w_ih.reshape(4, h, -1), w_hh.reshape(4, h, h)], axis=-1))
            b_dirs.append(b.reshape(4, h))
        weights.append(np.stack(w_dirs))
        biases.append(np.stack(b_dirs))
    out = {"lstm/lstm/weight_l0": weights[0], "lstm/lstm/bias": np.stack(biases)}
    if nb_layers > 1:
        out["lstm/lstm/weight"] = np.stack(weights[1:])
    return out


def convert_state(state, path, meta=None, meta_path=None):
    """open-unmix-pytorch state dict (and the json its training wrote, when there is one) →
    ({NNabla name: array}, UmxConfig)."""
    state = _strip(state)
    sample_rate = PUBLISHED_RATE
    if "sample_rate" in state:  # a buffer in openunmix 1.0
        buffer = state.pop("sample_rate")
        sample_rate = config_field({"sample_rate": buffer.item() if buffer.size == 1 else None},
                                   "sample_rate", path + " (buffer)")
    n_hop, args = PUBLISHED_HOP, {}
    if meta is not None:
        where = meta_path or "the model description"
        args = meta.get("args", meta) if isinstance(meta, dict) else None
        if not isinstance(args, dict):
            raise UmxError("%s is not open-unmix's model description (no 'args')" % where)
        n_hop = config_field(args, "nhop", where, n_hop)
        sample_rate = config_field(meta, "sample_rate", where,
                                   config_field(args, "sample_rate", where, sample_rate))
    params, cfg = convert_branch(state, path, UMX_KEYS, n_hop, sample_rate)
    for name, value in (("hidden_size", cfg.hidden_size), ("nb_channels", cfg.nb_channels),
                        ("nfft", cfg.n_fft), ("unidirectional", cfg.unidirectional)):
        if name in args and args[name] != value:
            raise UmxError("%s: the json says %s=%s but the tensors say %s"
                           % (path, name, args[name], value))
    return params, cfg


def convert_xumx(state, path, model_args):
    """asteroid X-UMX state dict and model_args → ({Sony's x-umx.h5 name: array}, UmxConfig
    of its branches)."""
    state = _strip(state)
    args = model_args or {}
    where = path + " (model_args)"
    sources = args.get("sources")
    if sources is None:
        sources = sorted({k.split(".")[1] for k in state if k.startswith("layer_enc.")})
    if not isinstance(sources, (list, tuple)) or not sources or \
            not all(isinstance(s, str) and re.fullmatch(r"\w+", s) for s in sources) or \
            len(set(sources)) != len(sources):
        raise UmxError("%s: sources is %r, expected distinct target names" % (where, sources))
    names = tuple([t for t in XUMX_BRANCHES if t in sources] +
                  [t for t in sources if t not in XUMX_BRANCHES])
    n_hop = config_field(args, "n_hop", where, PUBLISHED_HOP)
    sample_rate = config_field(args, "sample_rate", where, PUBLISHED_RATE)
    params, cfgs = {}, {}
    for target in names:
        keys = {k: tuple(x.format(t=target) for x in v) if isinstance(v, tuple)
                else v.format(t=target) for k, v in ASTEROID_XUMX_KEYS.items()}
        branch, cfgs[target] = convert_branch(state, path, keys, n_hop, sample_rate)
        params.update({branch_name(k, target): v for k, v in branch.items()})
    cfg = replace(cfgs[names[0]], xumx_branches=names)
    for target in names:
        if replace(cfgs[target], xumx_branches=names) != cfg:
            raise UmxError("%s: branch '%s' has another architecture than '%s'"
                           % (path, target, names[0]))
    for name, value, kind in (("hidden_size", cfg.hidden_size, int),
                              ("nb_channels", cfg.nb_channels, int), ("in_chan", cfg.n_fft, int),
                              ("max_bin", cfg.max_bin, int),
                              ("bidirectional", not cfg.unidirectional, bool),
                              ("nb_layers", cfg.nb_layers, int)):
        if args.get(name) is not None and config_field(args, name, where, kind=kind) != value:
            raise UmxError("%s: model_args say %s=%s but the tensors say %s"
                           % (path, name, args[name], value))
    return params, cfg


def is_asteroid_xumx(state):
    return any(k.startswith(("layer_enc.", "module.layer_enc.")) for k in state)


def find_checkpoints(folder):
    """{name: (pth path, json path or None)} of a folder of open-unmix-pytorch weights (name:
    the target, from `<target>-<hash>.pth` or `<target>.pth`). Two files of one target are
    refused, naming both."""
    found = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.endswith(".pth") and os.path.isfile(path):
            target = name[:-4].split("-")[0]
            if target in found:
                raise UmxError("%s and %s are both checkpoints of '%s': keep one"
                               % (found[target][0], path, target))
            meta = os.path.join(folder, target + ".json")
            found[target] = (path, meta if os.path.isfile(meta) else None)
    if not found:
        raise UmxError("no .pth files in %s" % folder)
    return found


def convert_checkpoints(src, targets=None):
    """Convert every (or the named) target of `src` in memory → {output name: (params,
    UmxConfig, the .pth it came from)}: UMX targets by name, an asteroid X-UMX as 'x-umx'."""
    checkpoints = find_checkpoints(src)
    targets = targets or list(checkpoints)
    missing = [t for t in targets if t not in checkpoints]
    if missing:
        raise UmxError("no checkpoint for target '%s' in %s" % (missing[0], src))
    converted = {}
    for target in targets:
        pth, meta_path = checkpoints[target]
        state, model_args = read_checkpoint(pth)
        if is_asteroid_xumx(state):
            name, (params, cfg) = "x-umx", convert_xumx(state, pth, model_args)
        else:
            meta = read_json(meta_path, "open-unmix model description") if meta_path else None
            name, (params, cfg) = target, convert_state(state, pth, meta, meta_path)
        if name in converted:
            raise UmxError("%s and %s both convert to %s.h5: keep one"
                           % (converted[name][2], pth, name))
        converted[name] = (params, cfg, pth)
    return converted


def write_converted(converted, out):
    """Write convert_checkpoints' result into `out`, all or nothing: `<name>.h5` (official or
    Sony's layout) and `<name>.json` (configuration, source file) for each."""
    with staged_folder(out) as staging:
        for name, (params, cfg, pth) in converted.items():
            save_arrays(os.path.join(staging, name + ".h5"), params)
            write_json_atomic(os.path.join(staging, name + ".json"),
                              {"config": cfg.to_dict(), "converted_from": os.path.basename(pth)})
