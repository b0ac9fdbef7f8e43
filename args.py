"""Command-line parsers of train.py, test.py and eval.py (every flag registered before parsing)."""
import argparse

TARGET_NAMES = ["vocals", "drums", "bass", "other"]


def add_separation_args(parser, model_required=True):
    """Flags shared by test.py and eval.py: which model, which targets, the Wiener filter."""
    parser.add_argument("--umx-infer", action="store_true",
                        help="run UMX inference (kept for the seed's command line)")
    parser.add_argument("--model", required=model_required,
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
                        help="seconds of audio per network window (default: about 24 s); "
                             "windows overlap by 1.5 s of LSTM context on each side, so the "
                             "result stays within 40 dB of one-piece processing")
    parser.add_argument("--pcm16", action="store_true",
                        help="write 16-bit PCM WAV instead of 32-bit float")
    args = parser.parse_args(argv)
    if args.niter < 0:
        parser.error("--niter must be >= 0")
    if args.chunk_dur is not None and args.chunk_dur <= 0:
        parser.error("--chunk-dur must be > 0")
    return args


def get_train_args(argv=None):
    """The seed's training flags, with the seed's defaults."""
    parser = argparse.ArgumentParser(description="Train an Open-Unmix target model (NNabla)")
    parser.add_argument("--umx-train", action="store_true",
                        help="train UMX (kept for the seed's command line)")
    parser.add_argument("--root", default=None,
                        help="MUSDB18 root; omitted: musdb's 7-second previews (downloaded)")
    parser.add_argument("--is-wav", action="store_true",
                        help="the dataset is decoded WAV (musdb's WAV layout), not STEMS .mp4")
    parser.add_argument("--source", default="vocals",
                        help="target source to train (%s)" % ", ".join(TARGET_NAMES))
    parser.add_argument("--output", default="open-unmix",
                        help="folder for <source>.h5, <source>.json, logs and checkpoints")
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint folder to resume from (default: the one in --output)")
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--patience", type=int, default=140,
                        help="epochs without validation improvement before stopping")
    parser.add_argument("--seq-dur", type=float, default=6.0,
                        help="seconds per training chunk; <= 0: whole tracks")
    parser.add_argument("--unidirectional", action="store_true",
                        help="one LSTM direction of the full hidden size (causal model)")
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--nfft", type=int, default=4096)
    parser.add_argument("--nhop", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--lr-decay-patience", type=int, default=80)
    parser.add_argument("--lr-decay-gamma", type=float, default=0.3)
    parser.add_argument("--weight-decay", type=float, default=0.00001)
    parser.add_argument("--bandwidth", type=float, default=16000,
                        help="highest frequency (Hz) the network sees")
    parser.add_argument("--nb-channels", type=int, default=2, choices=[1, 2])
    parser.add_argument("--nb-workers", type=int, default=0,
                        help="threads loading training samples (0: the main thread)")
    parser.add_argument("--context", default="cudnn", choices=["cpu", "cuda", "cudnn"],
                        help="NNabla context (falls back to cpu without a GPU)")
    parser.add_argument("--device-id", type=int, default=0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--samples-per-track", type=int, default=64)
    parser.add_argument("--source-augmentations", nargs="*", default=["gain", "channelswap"],
                        choices=["gain", "channelswap"])
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size", "hidden_size", "nfft", "nhop", "samples_per_track"):
        if getattr(args, name) <= 0:
            parser.error("--%s must be > 0" % name.replace("_", "-"))
    if args.nb_workers < 0:
        parser.error("--nb-workers must be >= 0")
    if args.nhop > args.nfft:
        parser.error("--nhop must not exceed --nfft")
    if not args.unidirectional and args.hidden_size % 2:
        parser.error("--hidden-size must be even for the bidirectional LSTM")
    return args


def get_eval_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Separate MUSDB18 tracks and score them with museval (BSSEval v4)")
    parser.add_argument("--root", default=None, help="MUSDB18 root folder")
    parser.add_argument("--is-wav", action="store_true", help="the dataset is decoded WAV")
    parser.add_argument("--subset", default="test", choices=["train", "test"])
    parser.add_argument("--tracks", nargs="+", default=None, help="only these track names")
    parser.add_argument("--out-dir", required=True,
                        help="estimates (<subset>/<track>/<target>.wav), museval JSON, tables, plot")
    parser.add_argument("--estimates", default=None,
                        help="score estimates already on disk (<dir>/<subset>/<track>/<target>.wav) "
                             "instead of separating with --model")
    parser.add_argument("--cores", type=int, default=1, help="processes scoring tracks")
    add_separation_args(parser, model_required=False)
    args = parser.parse_args(argv)
    if args.cores < 1:
        parser.error("--cores must be >= 1")
    if args.model is None and args.estimates is None:
        parser.error("one of --model or --estimates is required")
    return args
