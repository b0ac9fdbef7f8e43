"""Separate audio files into stems: python test.py --umx-infer --inputs FILE... --model DIR --out-dir OUT

One WAV per target (32-bit float, or 16-bit PCM with --pcm16) in OUT/ for one input, in
OUT/<input name>/ for several. Every output path is checked before any work: no stem may
replace an input, and no two inputs may write the same folder.
"""
import os
import warnings

from args import get_inference_args
from audio import decode_audio, write_stream
from context import set_context
from files import output_folder, refuse_overlaps
from runtime import run_cli


def stem_folders(inputs, out_dir):
    """{input: the folder of its stems}: OUT itself for one input, OUT/<name> for several."""
    if len(inputs) == 1:
        return {inputs[0]: out_dir}
    return {path: os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0])
            for path in inputs}


def run(args):
    from separator import stem_names
    folders = stem_folders(args.inputs, args.out_dir)
    names = stem_names(args.targets, args.residual_model)
    refuse_overlaps([(path, "the input (--inputs)") for path in args.inputs],
                    [(os.path.join(folder, name + ".wav"), "--inputs %s" % path)
                     for path, folder in folders.items() for name in names])
    with output_folder(args.out_dir, "--out-dir"):
        separate_files(args, folders)


def separate_files(args, folders):
    from inference import network_for
    from separator import WINDOW_FRAMES, separate_stream
    from weights import describe, load_models
    set_context(args.context)
    cfgs = load_models(args.model, args.targets)
    print("model: %s" % describe(cfgs))
    cfg = cfgs[args.targets[0]]
    network = network_for(cfgs, args.targets)  # once for all inputs
    window = WINDOW_FRAMES
    if args.chunk_dur:
        window = max(1, int(round(args.chunk_dur * cfg.sample_rate / cfg.n_hop)))
    for path, folder in folders.items():
        # decoded (and resampled) into a temporary file: the track is never held in memory
        with decode_audio(path, args.start, args.duration, rate=cfg.sample_rate,
                          stereo=True) as audio:
            if audio.peak == 0.0:
                warnings.warn("%s is silent: its stems will be silent" % path)
            options = dict(niter=args.niter, softmask=args.softmask, alpha=args.alpha,
                           residual_model=args.residual_model, window=window, network=network)
            # stems written as they are computed: memory does not grow with the length
            stems, model_rate, blocks = separate_stream(audio, cfg.sample_rate, cfgs,
                                                        args.targets, **options)
            write_stream(stems, model_rate, blocks, folder, args.pcm16, out_rate=args.sample_rate,
                         staging_root=args.out_dir)
        print("%s -> %s (%s)" % (path, folder, ", ".join(sorted(stems))))


def main(argv=None):
    run_cli(run, get_inference_args(argv))


if __name__ == "__main__":
    main()
