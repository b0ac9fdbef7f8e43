"""Separate audio files into stems: python test.py --umx-infer --inputs FILE... --model DIR --out-dir OUT

One WAV per target (32-bit float, or 16-bit PCM with --pcm16) in OUT/ for one input, in
OUT/<input name>/ for several.
"""
import os
import warnings

from args import get_inference_args
from utils import (UmxError, check_out_dir, exit_on_error, load_audio, set_context,
                   write_estimates, write_stream)


def run(args):
    from separator import WINDOW_FRAMES, load_models, separate, separate_stream
    inputs = args.inputs
    for path in inputs:
        if not os.path.isfile(path):
            raise UmxError("input file not found: %s" % path)
    check_out_dir(args.out_dir)
    set_context(args.context)
    cfgs = load_models(args.model, args.targets)
    cfg = cfgs[args.targets[0]]
    window = WINDOW_FRAMES
    if args.chunk_dur:
        window = max(1, int(round(args.chunk_dur * cfg.sample_rate / cfg.n_hop)))
    names = [os.path.splitext(os.path.basename(p))[0] for p in inputs]
    for path, name in zip(inputs, names):
        audio, rate = load_audio(path, args.start, args.duration)
        if float(abs(audio).max()) == 0.0:
            warnings.warn("%s is silent: its stems will be silent" % path)
        options = dict(niter=args.niter, softmask=args.softmask, alpha=args.alpha,
                       residual_model=args.residual_model, window=window)
        folder = args.out_dir if len(inputs) == 1 else os.path.join(args.out_dir, name)
        if args.sample_rate and args.sample_rate != cfg.sample_rate:
            # resampled stems: separated in memory, then resampled whole
            estimates, model_rate = separate(audio, rate, cfgs, args.targets, **options)
            names = sorted(estimates)
            write_estimates(estimates, model_rate, folder, args.sample_rate, args.pcm16)
        else:
            # stems written as they are computed: memory does not grow with the length
            names, model_rate, blocks = separate_stream(audio, rate, cfgs, args.targets, **options)
            del audio
            write_stream(names, model_rate, blocks, folder, args.pcm16)
        print("%s -> %s (%s)" % (path, folder, ", ".join(sorted(names))))


def main(argv=None):
    exit_on_error(run, get_inference_args(argv))


if __name__ == "__main__":
    main()
