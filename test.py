"""Separate audio files into stems: python test.py --umx-infer --inputs FILE... --model DIR --out-dir OUT

One WAV per target (32-bit float, or 16-bit PCM with --pcm16) in OUT/ for one input, in
OUT/<input name>/ for several.
"""
import os
import warnings

from args import get_inference_args
from audio import decode_audio, write_stream
from context import set_context
from files import check_out_dir
from runtime import UmxError, exit_on_error


def run(args):
    from inference import InferenceNetwork
    from separator import WINDOW_FRAMES, separate_stream
    from weights import load_models
    inputs = args.inputs
    for path in inputs:
        if not os.path.isfile(path):
            raise UmxError("input file not found: %s" % path)
    check_out_dir(args.out_dir)
    set_context(args.context)
    cfgs = load_models(args.model, args.targets)
    cfg = cfgs[args.targets[0]]
    network = InferenceNetwork.from_parameter_scopes(cfgs)  # once for all inputs
    window = WINDOW_FRAMES
    if args.chunk_dur:
        window = max(1, int(round(args.chunk_dur * cfg.sample_rate / cfg.n_hop)))
    names = [os.path.splitext(os.path.basename(p))[0] for p in inputs]
    for path, name in zip(inputs, names):
        # decoded (and resampled) into a temporary file: the track is never held in memory
        with decode_audio(path, args.start, args.duration, rate=cfg.sample_rate,
                          stereo=True) as audio:
            if audio.peak == 0.0:
                warnings.warn("%s is silent: its stems will be silent" % path)
            options = dict(niter=args.niter, softmask=args.softmask, alpha=args.alpha,
                           residual_model=args.residual_model, window=window, network=network)
            folder = args.out_dir if len(inputs) == 1 else os.path.join(args.out_dir, name)
            # stems written as they are computed: memory does not grow with the length
            stems, model_rate, blocks = separate_stream(audio, cfg.sample_rate, cfgs,
                                                        args.targets, **options)
            write_stream(stems, model_rate, blocks, folder, args.pcm16, out_rate=args.sample_rate)
        print("%s -> %s (%s)" % (path, folder, ", ".join(sorted(stems))))


def main(argv=None):
    exit_on_error(run, get_inference_args(argv))


if __name__ == "__main__":
    main()
