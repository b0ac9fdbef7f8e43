"""Separate audio files into stems: python test.py --umx-infer --inputs FILE... --model DIR --out-dir OUT

One WAV per target (32-bit float, or 16-bit PCM with --pcm16) in OUT/ for one input, in
OUT/<input name>/ for several.
"""
import os
import shutil
import sys
import tempfile
import warnings

from args import get_inference_args
from utils import UmxError, load_audio, set_context, write_audio_atomic


def check_out_dir(out_dir):
    """Create `out_dir` or fail with UmxError when it cannot be written."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as exc:
        raise UmxError("cannot write to --out-dir %s: %s" % (out_dir, exc.strerror or exc))


def write_estimates(estimates, rate, folder, out_rate=None, pcm16=False):
    """Write {name: (nb_timesteps, nb_channels)} as folder/<name>.wav, all or nothing.

    The files are written into a temporary folder beside `folder` and moved in at the end.
    """
    import resampy
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
    try:
        for name, audio in estimates.items():
            if out_rate and out_rate != rate:
                audio = resampy.resample(audio, rate, out_rate, axis=0)
            write_audio_atomic(os.path.join(staging, name + ".wav"), audio, out_rate or rate,
                               subtype="PCM_16" if pcm16 else "FLOAT")
        os.makedirs(folder, exist_ok=True)
        for name in estimates:
            os.replace(os.path.join(staging, name + ".wav"), os.path.join(folder, name + ".wav"))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def run(args):
    from separator import WINDOW_FRAMES, load_models, separate
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
        estimates, model_rate = separate(audio, rate, cfgs, args.targets, niter=args.niter,
                                         softmask=args.softmask, alpha=args.alpha,
                                         residual_model=args.residual_model, window=window)
        folder = args.out_dir if len(inputs) == 1 else os.path.join(args.out_dir, name)
        write_estimates(estimates, model_rate, folder, args.sample_rate, args.pcm16)
        print("%s -> %s (%s)" % (path, folder, ", ".join(sorted(estimates))))


def main(argv=None):
    args = get_inference_args(argv)
    try:
        run(args)
    except UmxError as exc:
        print("error: %s" % exc, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
