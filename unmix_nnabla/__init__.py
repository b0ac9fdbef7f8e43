"""Open-Unmix (UMX) and X-UMX for NNabla: music source separation into vocals, drums, bass and
other, training and scoring.

The names users call, imported when first used (importing the package loads nothing heavy):

    from unmix_nnabla import load_models, separate
    cfgs = load_models("umxhq")                   # a published name, a folder, a zip or an .h5
    estimates, rate = separate(audio, rate_in, cfgs)   # audio [shape=(nb_timesteps, nb_channels)]

- `load_models(model, targets=None)`: the weights of a model → {target: config}
- `separate(audio, rate, model, ...)`: the estimates of a mixture in memory
- `separate_stream(audio, rate, model, ...)`: the same as blocks, in bounded memory
- `decode_audio(path, ...)`, `write_stream(...)`: a file decoded block by block; stems written
- `UmxError`: a problem with the user's input, one line

The folders name the jobs: base, audio, networks, separation, models, data, training, scoring,
cli (docs/development.md has the map).
"""
import importlib

__version__ = "2.0.0"

_FACE = {"load_models": "unmix_nnabla.models.hub", "separate": "unmix_nnabla.separation.separator",
         "separate_stream": "unmix_nnabla.separation.separator",
         "decode_audio": "unmix_nnabla.audio.io", "write_stream": "unmix_nnabla.audio.io",
         "UmxError": "unmix_nnabla.base.runtime"}
__all__ = sorted(_FACE)


def __getattr__(name):
    if name not in _FACE:
        raise AttributeError("module 'unmix_nnabla' has no attribute %r" % name)
    return getattr(importlib.import_module(_FACE[name]), name)
