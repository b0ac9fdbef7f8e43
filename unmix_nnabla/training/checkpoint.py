"""Training outputs and checkpoints: what a run writes, by name (`output_files`), and
everything it needs to continue bit for bit, verified before use (`resume_point`).

A checkpoint is a folder holding the parameters (`parameters.h5`), the solver's state
(`solver.h5`, by exact parameter name), the run's state (`state.json`: epoch, history,
scheduler, early stopping, the model configuration) and, written last, `MANIFEST.json` with
every file's size and SHA-256 (`files.write_manifest`). A new checkpoint replaces the last one
with two renames (`files.replaced_folder`). Before a resume the manifest is verified and the
configuration compared with the run's: a damaged, incomplete or foreign checkpoint is refused
with one line that says how to proceed.
"""
import json
import os

import h5py
import nnabla as nn
import numpy as np

from unmix_nnabla.base.files import (current_or_old, read_json, replaced_folder, verify_manifest,
                                     writing_into)
from unmix_nnabla.base.runtime import UmxError
from unmix_nnabla.models.weights import h5_bytes, parameter_bytes, restore_parameters, write_bytes


def save_checkpoint(folder, scope, solver, state):
    """Write the parameters of `scope`, the solver's state and `state` (JSON) as `folder`."""
    with replaced_folder(folder) as staging:
        with nn.parameter_scope(scope):
            params = nn.get_parameters(grad_only=False)
        files = {"parameters.h5": parameter_bytes(params),
                 "solver.h5": solver_state_bytes(solver),
                 "state.json": json.dumps(state).encode()}
        with writing_into(staging):
            for name, data in files.items():
                write_bytes(os.path.join(staging, name), data)


def solver_state_bytes(solver):
    """Solver states by exact parameter name, as HDF5 (nnabla 1.39's `load_states` mixes up
    names that are prefixes of others, such as lstm/lstm/weight and lstm/lstm/weight_l0)."""
    def fill(f):
        for name, state in solver.get_states().items():
            f.create_dataset(_key(name, "t"), data=np.asarray(state.t))
            for key, var in state.pstate.items():
                f.create_dataset(_key(name, key), data=var.d)
    return h5_bytes(fill)


def _key(name, part):
    return name.replace("/", "|") + "|" + part  # flat: no HDF5 groups from parameter names


def load_solver_states(solver, path):
    states = solver.get_states()
    with h5py.File(path, "r") as f:
        for name, state in states.items():
            keys = [_key(name, "t")] + [_key(name, k) for k in state.pstate]
            missing = [k for k in keys if k not in f]
            if missing:
                raise UmxError("%s holds no solver state %s" % (path, missing[0].replace("|", "/")))
            state.t = int(f[_key(name, "t")][()])
            for key, var in state.pstate.items():
                value = f[_key(name, key)][()]
                if value.shape != var.shape:
                    raise UmxError("%s: solver state %s/%s has shape %s, expected %s"
                                   % (path, name, key, value.shape, var.shape))
                var.d = value
    solver.set_states(states)


def find_checkpoint(folder):
    """The checkpoint folder to resume from (verified), or None when there is none."""
    found = current_or_old(folder)
    if found is not None:
        verify_manifest(found, "delete it to start over, or pass --checkpoint with a good one")
    return found


def load_checkpoint(folder, scope, solver, config):
    """Restore parameters and solver from a verified checkpoint → its state dict.

    config: the run's model configuration (a dict); a checkpoint of another one is refused,
    naming the first difference."""
    state = read_json(os.path.join(folder, "state.json"), "checkpoint state")
    saved = state.get("config") if isinstance(state, dict) else None
    if not isinstance(saved, dict):
        raise UmxError("%s was written by an older version (no model configuration): delete it "
                       "to start over" % folder)
    check_same_config(saved, config, folder)
    restore_parameters(os.path.join(folder, "parameters.h5"), scope)
    load_solver_states(solver, os.path.join(folder, "solver.h5"))
    return state


# model configuration fields → the flag (or data) that sets them
CONFIG_SOURCES = {
    "n_fft": "--nfft", "n_hop": "--nhop",
    "hidden_size": "--hidden-size", "nb_channels": "--nb-channels",
    "unidirectional": "--unidirectional", "nb_layers": "the number of LSTM layers",
    "sample_rate": "the dataset's sample rate", "max_bin": "--bandwidth",
    "nb_output_bins": "--nfft",
}


def check_same_config(saved, config, where):
    """Refuse to continue `where` (a checkpoint or an output folder) with another model,
    naming the first difference (in the order of CONFIG_SOURCES: flags before what they
    imply)."""
    keys = list(CONFIG_SOURCES) + sorted(set(saved) | set(config) - set(CONFIG_SOURCES))
    for key in keys:
        if saved.get(key) != config.get(key):
            raise UmxError("%s was trained with %s = %s (%s), this run asks for %s: use the same "
                           "flags, or another --output" % (where, key, saved.get(key),
                                                           CONFIG_SOURCES.get(key, key),
                                                           config.get(key)))


def output_files(output, name):
    """What a run writes into --output, by name (`name`: the UMX target, or x-umx)."""
    return {"weights": os.path.join(output, name + ".h5"),
            "summary": os.path.join(output, name + ".json"),
            "plot": os.path.join(output, name + "_loss.png"),
            "checkpoint": os.path.join(output, name + ".checkpoint")}


def resume_point(output, checkpoint, paths, cfg):
    """The verified checkpoint to resume from (--checkpoint, or the one in --output), or None
    for a new run; refuses to start over where a finished run's weights would be replaced, or
    where another model was trained."""
    found = find_checkpoint(checkpoint or paths["checkpoint"])
    if checkpoint and found is None:
        raise UmxError("no checkpoint in %s" % checkpoint)
    if os.path.isfile(paths["summary"]):
        summary = read_json(paths["summary"], "training summary")
        if isinstance(summary, dict) and isinstance(summary.get("config"), dict):
            check_same_config(summary["config"], cfg.to_dict(), output)
    if found is None and os.path.isfile(paths["weights"]):
        raise UmxError("%s holds %s but no checkpoint to resume from: use another --output, or "
                       "move the weights away to train anew" % (output, paths["weights"]))
    return found
