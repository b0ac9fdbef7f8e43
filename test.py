"""Separate songs into stems:

    python test.py song.mp3 [more.flac ...] --model umxhq -o stems

Each song gets a folder, `<out-dir>/<song>/<target>.<ext>` (WAV float by default; FLAC, MP3,
24- or 16-bit integers, with a clip policy that never clips silently). The model is a
published one by name (downloaded once) or weights on disk; its targets are separated unless
--targets names some. Every output path is checked before any work: no stem may replace an
input, and no two songs may write the same folder.
"""
import os

from args import SAMPLE_FORMATS, get_inference_args
from audio import StemFormat, decode_audio, write_stream
from context import set_context
from files import output_folder, refuse_overlaps
from runtime import run_cli, say, set_quiet, warn


def stem_folders(inputs, out_dir):
    """{input: the folder of its stems}: OUT/<name of the input file>."""
    return {path: os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0])
            for path in inputs}


def run(args):
    from separator import load_compiled_loops, stem_names
    from weights import describe, load_models
    set_quiet(args.quiet)
    set_context(args.context, verbose=not args.quiet)
    load_compiled_loops(background=True)  # while the model loads
    cfgs = load_models(args.model, args.targets)
    targets = args.targets or list(cfgs)
    say("model: %s" % describe(cfgs))
    folders = stem_folders(args.inputs, args.out_dir)
    names = stem_names(targets, args.residual_model)
    refuse_overlaps([(path, "the input") for path in args.inputs],
                    [(os.path.join(folder, "%s.%s" % (name, args.ext)), "the input %s" % path)
                     for path, folder in folders.items() for name in names])
    with output_folder(args.out_dir, "--out-dir"):
        separate_files(args, cfgs, targets, folders)


def separate_files(args, cfgs, targets, folders):
    from inference import network_for
    from separator import WINDOW_FRAMES, separate_stream
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
        say("%s -> %s (%s)" % (path, folder, ", ".join("%s.%s" % (s, args.ext) for s in stems)))
        if clipping:
            warn("%s: %s" % (path, clipping))


def main(argv=None):
    run_cli(run, get_inference_args(argv))


if __name__ == "__main__":
    main()
