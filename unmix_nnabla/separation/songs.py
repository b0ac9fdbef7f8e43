"""Separate songs into stems, the work of test.py and of the `umx-nnabla` command:

    python test.py song.mp3 [more.flac ...] --model umxhq -o stems

Each song gets a folder per model, `<out-dir>/<model>/<song>/<target>.<ext>` (as demucs lays
them out: stems of two models never mix), `<model>` the published name or the weights' file
or folder name; `<out-dir>/<model>/MODEL.json` records the weight files' SHA-256, and another
model of the same name is refused there. WAV float by default; FLAC, MP3, 24- or 16-bit
integers, with a clip policy that never clips silently. The model is a published one by name
(downloaded once) or weights on disk; its targets are separated unless --targets names some.
Every output path is checked before any work: no stem may replace an input, and no two songs
may write the same folder.
"""
import os

from unmix_nnabla.audio.io import SAMPLE_FORMATS, StemFormat, decode_audio, write_stream
from unmix_nnabla.base.console import say, set_quiet, warn
from unmix_nnabla.base.context import set_context
from unmix_nnabla.base.files import output_folder, read_json, refuse_overlaps, write_json_atomic
from unmix_nnabla.base.runtime import UmxError
from unmix_nnabla.models.hub import model_label, resolve_model
from unmix_nnabla.models.weights import describe, load_weights, model_files
from unmix_nnabla.networks.inference import network_for
from unmix_nnabla.separation.separator import (WINDOW_FRAMES, load_compiled_loops, separate_stream,
                                               stem_names)

MODEL_RECORD = "MODEL.json"


def stem_folders(inputs, out_dir):
    """{input: the folder of its stems}: OUT/<name of the input file>."""
    return {path: os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0])
            for path in inputs}


def model_record(model_dir, model, weights):
    """What `model_dir` records of the model whose stems it holds: {'model': --model,
    'files': {file: SHA-256}}; one of another model's files is refused."""
    record = {"model": model, "files": model_files(weights)}
    path = os.path.join(model_dir, MODEL_RECORD)
    if os.path.isfile(path):
        held = read_json(path, "model record")
        if not isinstance(held, dict) or held.get("files") != record["files"]:
            raise UmxError("%s holds the stems of another model named %s (%s): choose another "
                           "--out-dir" % (model_dir, os.path.basename(model_dir),
                                          held.get("model") if isinstance(held, dict) else "?"))
    return record


def separate_songs(args):
    set_quiet(args.quiet)
    weights = resolve_model(args.model)  # a name fetched, before any compilation
    set_context(args.context, verbose=not args.quiet)
    load_compiled_loops(background=True)  # while the model loads
    cfgs = load_weights(weights, args.targets)
    targets = args.targets or list(cfgs)
    say("model: %s" % describe(cfgs))
    model_dir = os.path.join(args.out_dir, model_label(args.model))
    record = model_record(model_dir, args.model, weights)
    folders = stem_folders(args.inputs, model_dir)
    names = stem_names(targets, args.residual_model)
    refuse_overlaps([(path, "the input") for path in args.inputs],
                    [(os.path.join(folder, "%s.%s" % (name, args.ext)), "the input %s" % path)
                     for path, folder in folders.items() for name in names])
    with output_folder(args.out_dir, "--out-dir"):
        separate_files(args, cfgs, targets, folders, lambda: write_json_atomic(
            os.path.join(model_dir, MODEL_RECORD), record))


def separate_files(args, cfgs, targets, folders, published=lambda: None):
    """Separate each input into its folder; published() after each song's stems are."""
    cfg = cfgs[targets[0]]
    network = network_for(cfgs, targets, release=True)  # once for all inputs
    window = WINDOW_FRAMES
    if args.chunk_dur:
        window = max(1, int(round(args.chunk_dur * cfg.sample_rate / cfg.n_hop)))
    fmt = StemFormat(args.ext, SAMPLE_FORMATS.get(args.sample_format), args.clip_mode,
                     args.mp3_bitrate)
    for path, folder in folders.items():
        # decoded (and resampled) into a temporary file: the track is never held in memory
        with decode_audio(path, args.start, args.duration, rate=cfg.sample_rate,
                          stereo=True) as audio:
            if audio.peak == 0.0:
                warn("%s is silent: its stems will be silent" % path)
            options = dict(niter=args.niter, softmask=args.softmask, alpha=args.alpha,
                           residual_model=args.residual_model, window=window, network=network,
                           processes=args.jobs)
            # stems written as they are computed: memory does not grow with the length
            stems, model_rate, blocks = separate_stream(audio, cfg.sample_rate, cfgs, targets,
                                                        **options)
            clipping = write_stream(stems, model_rate, blocks, folder, fmt,
                                    out_rate=args.sample_rate, staging_root=args.out_dir)
        published()
        say("%s -> %s (%s)" % (path, folder, ", ".join("%s.%s" % (s, args.ext) for s in stems)))
        if clipping:
            warn("%s: %s" % (path, clipping))
