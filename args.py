"""Command-line parsers of train.py, test.py and eval.py (every flag registered before parsing)."""
import argparse

TARGET_NAMES = ["vocals", "drums", "bass", "other"]


def add_separation_args(parser):
    """Flags shared by test.py and eval.py: which model, which targets, the Wiener filter."""
    parser.add_argument("--umx-infer", action="store_true",
                        help="run UMX inference (kept for the seed's command line)")
    parser.add_argument("--model", required=True,
                        help="folder (or official .zip) with one <target>.h5 per target")
    parser.add_argument("--targets", nargs="+", default=TARGET_NAMES,
                        help="targets to separate (default: %(default)s)")
    parser.add_argument("--niter", type=int, default=1,
                        help="Wiener filter EM iterations; 0 keeps the network's masks")
    parser.add_argument("--softmask", action="store_true",
                        help="start the Wiener filter from a soft mask of the mixture instead "
                             "of the estimated magnitudes with the mixture's phase")
    parser.add_argument("--alpha", type=float, default=1.0,
                        help="exponent of the magnitude estimates when --softmask")
    parser.add_argument("--residual-model", action="store_true",
                        help="add a 'residual' source for what the targets leave")
    parser.add_argument("--context", default=None, choices=["cpu", "cuda", "cudnn"],
                        help="NNabla context (default: cudnn when a GPU is present, else cpu)")
    return parser


def get_inference_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Separate songs into stems with Open-Unmix (NNabla)")
    parser.add_argument("--inputs", nargs="+", required=True, help="audio files to separate")
    parser.add_argument("--out-dir", required=True, help="where the stems are written")
    add_separation_args(parser)
    parser.add_argument("--start", type=float, default=0.0, help="start of the excerpt (s)")
    parser.add_argument("--duration", type=float, default=None,
                        help="length of the excerpt (s); default: to the end")
    parser.add_argument("--sample-rate", type=int, default=None,
                        help="rate of the written stems (default: the model's, 44100)")
    parser.add_argument("--chunk-dur", type=float, default=None,
                        help="seconds of audio per network window (default: about 12 s); "
                             "windows overlap by LSTM context, so this changes memory and speed, "
                             "not the result beyond float noise")
    parser.add_argument("--pcm16", action="store_true",
                        help="write 16-bit PCM WAV instead of 32-bit float")
    args = parser.parse_args(argv)
    if args.niter < 0:
        parser.error("--niter must be >= 0")
    if args.chunk_dur is not None and args.chunk_dur <= 0:
        parser.error("--chunk-dur must be > 0")
    return args
