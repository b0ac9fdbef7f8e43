"""Command-line parsers of the CLIs (every flag registered before one strict parse).

Every value is checked where it is parsed: a bad one gives one line naming the flag and what
it takes (`error: argument --start: must be >= 0, got -1`) and exit code 2, before any work.
"""
import argparse
import logging
import os

# the CLIs parse here before importing NNabla: its import-time INFO line ("Initializing CPU
# extension") would otherwise precede every one-line error
logging.getLogger("nnabla").setLevel(logging.WARNING)

from unmix_nnabla.base.runtime import UmxError  # noqa: E402
from unmix_nnabla.base.vocabulary import AUGMENTATIONS, DATASET_KINDS, SOURCES  # noqa: E402
from unmix_nnabla.data.datasets import KIND_FLAGS, KINDS, kinds_taking  # noqa: E402
from unmix_nnabla.data.tracks import source_names  # noqa: E402


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: 'error: ...' and exit 2 (no usage block), and no
    abbreviated flags: a prefix such as umx's `--residual NAME` or demucs' `--mp3` must not
    silently become another flag (`--residual-model`, `--mp3-bitrate`)."""

    def __init__(self, *args, **kw):
        kw.setdefault("allow_abbrev", False)
        super().__init__(*args, **kw)

    def error(self, message):
        self.exit(2, "error: %s (see %s --help)\n" % (message, self.prog))


# --------------------------------------------------------------------------------------
# value types: each raises ArgumentTypeError, which argparse reports with the flag's name
# --------------------------------------------------------------------------------------

def _number(kind, low=None, high=None, low_open=False):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError("expected %s, got %r"
                                             % ("an integer" if kind is int else "a number", text))
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError("expected a finite number, got %r" % text)
        if low is not None and (value <= low if low_open else value < low):
            raise argparse.ArgumentTypeError("must be %s %s, got %s"
                                             % (">" if low_open else ">=", low, text))
        if high is not None and value > high:
            raise argparse.ArgumentTypeError("must be <= %s, got %s" % (high, text))
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


positive_int = _number(int, 0, low_open=True)
nonnegative_int = _number(int, 0)
positive_float = _number(float, 0.0, low_open=True)
nonnegative_float = _number(float, 0.0)
any_float = _number(float)
fraction = _number(float, 0.0, 1.0, low_open=True)
seed_int = _number(int, 0, 2 ** 32 - 1)
sample_rate = _number(int, 1000, 384000)


def existing_file(text):
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError("%s is a folder, not a file" % text)
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError("%s not found" % text)
    return text


def existing_dir(text):
    if os.path.isfile(text):
        raise argparse.ArgumentTypeError("%s is a file, not a folder" % text)
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError("%s not found" % text)
    return text


def existing_path(text):
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError("%s not found" % text)
    return text


def folder_to_write(text):
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError("%s is a file, not a folder" % text)
    return text


def _refuse_repeats(parser, args, *names, same=lambda value: value):
    """A value given twice to a list flag is an error (same: what makes two values one)."""
    for name in names:
        values = getattr(args, name) or []
        keys = [same(v) for v in values]
        repeated = [v for v, key in zip(values, keys) if keys.count(key) > 1]
        if repeated:
            parser.error("argument --%s: %r is given more than once"
                         % (name.replace("_", "-"), repeated[0]))


# --------------------------------------------------------------------------------------
# the CLIs
# --------------------------------------------------------------------------------------

def model_name_or_path(text):
    """--model: a file or folder, or the name of a published model (hub.MODELS)."""
    from unmix_nnabla.models.hub import MODELS  # deferred: parsing stays light
    if text in MODELS or os.path.exists(text):
        return text
    raise argparse.ArgumentTypeError("%s is neither a file or folder nor a published model (%s)"
                                     % (text, ", ".join(MODELS)))


def add_model_args(parser, default="umxhq", purpose=None):
    """--model and --context (test.py, eval.py, train.py's fine-tuning)."""
    parser.add_argument("--model", default=default, type=model_name_or_path,
                        help=purpose or "a published model by name (%s: downloaded once, "
                        "cached, verified), a folder of <target>.h5 (or an official .zip), or "
                        "an X-UMX file (Sony's x-umx.h5)%s"
                        % (", ".join(_published()), "; default: %(default)s" if default else ""))
    parser.add_argument("--context", default=None, choices=["cpu", "cuda", "cudnn"],
                        help="NNabla context (default: cudnn when a GPU is usable, else cpu, "
                             "saying why); a GPU context that cannot be used is an error")


def _published():
    from unmix_nnabla.models.hub import MODELS  # deferred: parsing stays light
    return list(MODELS)


def add_separation_args(parser):
    """Flags shared by test.py and eval.py: the targets and the Wiener filter (None: not
    given, so that eval.py can refuse them with --estimates)."""
    parser.add_argument("--umx-infer", action="store_true",
                        help="accepted for the command line of Sony's NNabla scripts")
    parser.add_argument("--targets", nargs="+", default=None,
                        help="targets to separate (default: every target the model holds)")
    parser.add_argument("--niter", type=nonnegative_int, default=None,
                        help="Wiener filter EM iterations; 0 keeps the network's masks "
                             "(default 1)")
    parser.add_argument("--softmask", action="store_true", default=None,
                        help="start the Wiener filter from a soft mask of the mixture instead "
                             "of the estimated magnitudes with the mixture's phase")
    parser.add_argument("--alpha", type=positive_float, default=None,
                        help="exponent of the magnitude estimates when --softmask (default 1)")
    parser.add_argument("--residual-model", action="store_true", default=None,
                        help="add a 'residual' source for what the targets leave")
    parser.add_argument("-j", "--jobs", type=positive_int, default=None,
                        help="worker processes of the separation's network (default: what the "
                             "cores and the memory allow)")


SEPARATION_DEFAULTS = {"niter": 1, "softmask": False, "alpha": 1.0, "residual_model": False}


def _separation_defaults(args):
    for flag, default in SEPARATION_DEFAULTS.items():
        if getattr(args, flag) is None:
            setattr(args, flag, default)


def add_quiet(parser):
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="print nothing but warnings and errors (no progress bars)")




def get_inference_args(argv=None, prog="test.py"):
    parser = Parser(prog=prog, description="Separate songs into stems with Open-Unmix "
                                                "(NNabla): <out-dir>/<song>/<target>.<ext>")
    parser.add_argument("files", nargs="*", type=existing_file, metavar="FILE",
                        help="audio files to separate (any format ffmpeg reads)")
    parser.add_argument("--inputs", nargs="+", default=[], type=existing_file,
                        help="audio files to separate (as Sony's scripts take them)")
    parser.add_argument("-o", "--out-dir", "--outdir", dest="out_dir", default="separated",
                        type=folder_to_write,
                        help="where each song's folder of stems is written (default: "
                             "%(default)s)")
    add_model_args(parser)
    add_separation_args(parser)
    parser.add_argument("--start", type=nonnegative_float, default=0.0,
                        help="start of the excerpt (s)")
    parser.add_argument("--duration", type=positive_float, default=None,
                        help="length of the excerpt (s); default: to the end")
    parser.add_argument("--sample-rate", type=sample_rate, default=None,
                        help="rate of the written stems (default: the model's, 44100)")
    parser.add_argument("--chunk-dur", type=positive_float, default=None,
                        help="seconds of audio per network window (default: about 24 s); "
                             "windows overlap by 1.5 s of LSTM context on each side, so the "
                             "result stays within 40 dB of one-piece processing")
    ext = parser.add_mutually_exclusive_group()
    ext.add_argument("--ext", default="wav", choices=["wav", "flac", "mp3"],
                     help="file format of the stems (default: %(default)s; mp3 through ffmpeg)")
    ext.add_argument("--flac", dest="ext", action="store_const", const="flac",
                     help="--ext flac (demucs' flag)")
    ext.add_argument("--mp3", dest="ext", action="store_const", const="mp3",
                     help="--ext mp3 (demucs' flag)")
    formats = parser.add_mutually_exclusive_group()
    formats.add_argument("--float32", dest="sample_format", action="store_const",
                         const="float32", help="32-bit float samples (WAV's default)")
    formats.add_argument("--int24", dest="sample_format", action="store_const", const="int24",
                         help="24-bit integer samples (FLAC's default)")
    formats.add_argument("--int16", "--pcm16", dest="sample_format", action="store_const",
                         const="int16", help="16-bit integer samples")
    parser.add_argument("--clip-mode", default=None, choices=["rescale", "clamp"],
                        help="for stems that would exceed full scale in an integer format or "
                             "MP3: rescale the song's stems by one gain (default) or clamp the "
                             "samples; a line says how much")
    parser.add_argument("--mp3-bitrate", type=_number(int, 8, 320), default=None,
                        help="--ext mp3: kbit/s (default 320)")
    add_quiet(parser)
    args = parser.parse_args(argv)
    args.inputs = args.files + args.inputs
    if not args.inputs:
        parser.error("no audio file to separate: give FILE ... (or --inputs FILE ...)")
    _refuse_repeats(parser, args, "targets")
    _refuse_repeats(parser, args, "inputs", same=os.path.realpath)
    _separation_defaults(args)
    _output_format(parser, args)
    return args


def _output_format(parser, args):
    """The stems' format: refuse what does not apply to --ext, give the rest its defaults."""
    if args.ext == "mp3":
        if args.sample_format:
            parser.error("argument --%s: MP3 has no sample format (--mp3-bitrate sets its "
                         "quality)" % args.sample_format)
    else:
        if args.mp3_bitrate is not None:
            parser.error("argument --mp3-bitrate: only --ext mp3 takes it")
        if args.ext == "flac" and args.sample_format == "float32":
            parser.error("argument --float32: FLAC holds integer samples (--int24 or --int16)")
        args.sample_format = args.sample_format or ("int24" if args.ext == "flac" else "float32")
    if args.ext == "wav" and args.sample_format == "float32" and args.clip_mode:
        parser.error("argument --clip-mode: float WAV never clips (it applies to --int24, "
                     "--int16, --ext flac and mp3)")
    args.clip_mode = args.clip_mode or "rescale"
    args.mp3_bitrate = args.mp3_bitrate or 320


def get_train_args(argv=None, prog="train.py"):
    """The flags of Sony's NNabla training scripts, with their defaults."""
    parser = Parser(prog=prog, description="Train an Open-Unmix target model (NNabla)")
    parser.add_argument("--umx-train", action="store_true",
                        help="train one UMX target (--source); without it, X-UMX (all four "
                             "targets in one bridged network, as Sony's repository)")
    _add_dataset_flags(parser)
    _add_run_flags(parser)
    _add_architecture_flags(parser)
    add_quiet(parser)
    args = parser.parse_args(argv)
    _check_model_kind(parser, args)
    _dataset_flags(parser, args)
    _refuse_repeats(parser, args, "source_augmentations")
    return _architecture(parser, args)


def _add_dataset_flags(parser):
    """Where the training data is, and of which kind (open-unmix-pytorch's kinds' flags)."""
    parser.add_argument("--root", default=None, type=existing_dir,
                        help="dataset root; omitted (musdb only): musdb's 7-second previews "
                             "(downloaded)")
    parser.add_argument("--dataset", default="musdb", choices=DATASET_KINDS,
                        help="dataset kind (open-unmix-pytorch's): %(default)s")
    for flag, (form, meaning) in KIND_FLAGS.items():
        kinds = kinds_taking(flag)
        defaults = {KINDS[k].defaults[flag] for k in kinds if flag in KINDS[k].defaults}
        shown = " (%s)" % defaults.pop() if form != "switch" and len(defaults) == 1 else ""
        form = {"switch": dict(action="store_true"), "values": dict(nargs="+"),
                "count": dict(type=positive_int), "value": {}}[form]
        parser.add_argument("--" + flag.replace("_", "-"), default=None,
                            help="%s: %s%s" % (", ".join(kinds), meaning, shown), **form)


def _add_run_flags(parser):
    """The run: target, output, schedule, optimizer, fine-tuning, sampling, X-UMX's loss."""
    parser.add_argument("--source", "--target", dest="source", default=None,
                        help="UMX's target source (%s; default vocals); X-UMX trains all four"
                        % ", ".join(SOURCES))
    parser.add_argument("--output", default="open-unmix", type=folder_to_write,
                        help="folder for <source>.h5, <source>.json, logs and checkpoints")
    parser.add_argument("--checkpoint", default=None, type=existing_dir,
                        help="checkpoint folder to resume from (default: the one in --output)")
    parser.add_argument("--epochs", type=positive_int, default=1000)
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument("--patience", type=positive_int, default=140,
                        help="epochs without validation improvement before stopping")
    parser.add_argument("--seq-dur", type=any_float, default=6.0,
                        help="seconds per training chunk; <= 0: whole tracks")
    parser.add_argument("--lr", type=positive_float, default=0.001)
    parser.add_argument("--lr-decay-patience", type=nonnegative_int, default=80)
    parser.add_argument("--lr-decay-gamma", type=fraction, default=0.3)
    parser.add_argument("--weight-decay", type=nonnegative_float, default=0.00001)
    parser.add_argument("--nb-workers", type=nonnegative_int, default=0,
                        help="threads loading training samples (0: the main thread)")
    add_model_args(parser, default=None,
                   purpose="fine-tune: start from a published model (%s) or weights on disk "
                           "(UMX: the --source target's <target>.h5; X-UMX: x-umx.h5), the "
                           "architecture taken from the weights" % ", ".join(_published()))
    parser.add_argument("--new-statistics", action="store_true",
                        help="--model: compute the input standardization from this dataset "
                             "instead of keeping the model's")
    parser.add_argument("--device-id", type=nonnegative_int, default=0)
    parser.add_argument("--seed", type=seed_int, default=42)
    parser.add_argument("--samples-per-track", type=positive_int, default=None,
                        help="samples per track and epoch (64; not sourcefolder's)")
    parser.add_argument("--source-augmentations", nargs="*", default=list(AUGMENTATIONS),
                        choices=AUGMENTATIONS)
    parser.add_argument("--mcoef", type=nonnegative_float, default=None,
                        help="X-UMX: weight of the time-domain loss (loss = mcoef * L_t + L_f; "
                             "default 10)")
    parser.add_argument("--valid-dur", type=positive_float, default=None,
                        help="X-UMX: seconds per segment of the validation's time-domain loss "
                             "(default 10)")


def _add_architecture_flags(parser):
    """A new model's architecture (fine-tuning takes the weights', and checks these)."""
    parser.add_argument("--unidirectional", action="store_true", default=None,
                        help="one LSTM direction of the full hidden size (causal model)")
    parser.add_argument("--hidden-size", type=positive_int, default=None, help="default 512")
    parser.add_argument("--nfft", type=positive_int, default=None, help="default 4096")
    parser.add_argument("--nhop", type=positive_int, default=None, help="default 1024")
    parser.add_argument("--bandwidth", type=positive_float, default=None,
                        help="highest frequency (Hz) the network sees (default 16000)")
    parser.add_argument("--nb-channels", type=int, default=None, choices=[1, 2],
                        help="default 2")


def _check_model_kind(parser, args):
    """The flags that only UMX, only X-UMX or only fine-tuning take."""
    if args.new_statistics and args.model is None:
        parser.error("argument --new-statistics: only fine-tuning (--model) takes it")
    if args.umx_train:
        for flag in ("mcoef", "valid_dur"):
            if getattr(args, flag) is not None:
                parser.error("argument --%s: only X-UMX takes it (drop --umx-train)"
                             % flag.replace("_", "-"))
    elif args.source is not None:
        parser.error("argument --source: X-UMX trains all four targets; add --umx-train to "
                     "train one UMX target")
    else:
        args.mcoef = 10.0 if args.mcoef is None else args.mcoef
        args.valid_dur = 10.0 if args.valid_dur is None else args.valid_dur
        if args.dataset != "musdb":
            parser.error("argument --dataset: X-UMX trains on MUSDB18's four stems (musdb); "
                         "train one target of a folder dataset with --umx-train")


def _architecture(parser, args):
    """The architecture: the flags' defaults for a new model; fine-tuning takes the weights'
    (and checks the flags given against them)."""
    args.architecture_given = {k: v for k, v in vars(args).items()
                               if k in ARCHITECTURE_DEFAULTS and v is not None}
    if args.model is not None:
        return args
    for flag, default in ARCHITECTURE_DEFAULTS.items():
        if getattr(args, flag) is None:
            setattr(args, flag, default)
    if args.nfft < 16 or args.nfft % 2:
        parser.error("argument --nfft: must be an even number >= 16, got %d" % args.nfft)
    if args.nhop > args.nfft:
        parser.error("argument --nhop: must not exceed --nfft (%d), got %d" % (args.nfft, args.nhop))
    if not args.unidirectional and args.hidden_size % 2:
        parser.error("argument --hidden-size: must be even for the bidirectional LSTM, got %d"
                     % args.hidden_size)
    return args


ARCHITECTURE_DEFAULTS = {"hidden_size": 512, "nfft": 4096, "nhop": 1024, "nb_channels": 2,
                         "bandwidth": 16000, "unidirectional": False}


def _dataset_flags(parser, args):
    """Refuse a flag the chosen --dataset kind does not take, ask for the ones it needs, give
    the others their defaults (`datasets.KINDS`), and refuse files or folders that would give
    one source name twice."""
    kind = KINDS[args.dataset]
    every = {f for k in KINDS.values() for f in k.required + tuple(k.defaults)}
    for flag in sorted(every - set(kind.required) - set(kind.defaults)):
        if getattr(args, flag) is not None:
            parser.error("argument --%s: --dataset %s does not take it"
                         % (flag.replace("_", "-"), args.dataset))
    for flag in kind.required:
        if getattr(args, flag) is None:
            parser.error("--dataset %s needs --%s" % (args.dataset, flag.replace("_", "-")))
    for flag, default in kind.defaults.items():
        if getattr(args, flag) is None:
            setattr(args, flag, default)
    if args.dataset != "musdb":
        if args.source is not None:
            parser.error("argument --source: --dataset %s takes the target from its files"
                         % args.dataset)
        if args.root is None:
            parser.error("--dataset %s needs --root" % args.dataset)
    elif args.umx_train:
        args.source = args.source or "vocals"
    if args.ext is not None and not args.ext.startswith("."):
        args.ext = "." + args.ext
    named = {"aligned": [("input_file", "--input-file"), ("output_file", "--output-file")],
             "sourcefolder": [("target_dir", "--target-dir"), ("interferer_dirs", "--interferer-dirs")],
             "trackfolder_fix": [("target_file", "--target-file"),
                                 ("interferer_files", "--interferer-files")]}.get(args.dataset, [])
    try:
        source_names([(value, flag) for attr, flag in named
                      for value in ([getattr(args, attr)] if isinstance(getattr(args, attr), str)
                                    else getattr(args, attr))])
    except UmxError as exc:
        parser.error("argument %s" % exc)
    if args.dataset == "trackfolder_var" and not args.target_file.lower().endswith(args.ext.lower()):
        parser.error("argument --target-file: %s does not end with --ext %s (the files of a "
                     "track are those of --ext)" % (args.target_file, args.ext))


MUSDB_TARGETS = list(SOURCES) + ["accompaniment"]


def get_eval_args(argv=None, prog="eval.py"):
    parser = Parser(prog=prog,
                    description="Separate MUSDB18 tracks and score them with museval (BSSEval v4)")
    parser.add_argument("--root", default=None, type=existing_dir, help="MUSDB18 root folder")
    parser.add_argument("--is-wav", action="store_true", help="the dataset is decoded WAV")
    parser.add_argument("--subset", default="test", choices=["train", "test"])
    parser.add_argument("--tracks", nargs="+", default=None, help="only these track names")
    parser.add_argument("-o", "--out-dir", "--outdir", dest="out_dir", required=True,
                        type=folder_to_write,
                        help="estimates (<subset>/<track>/<target>.wav), museval JSON, tables, plot")
    parser.add_argument("--estimates", default=None, type=existing_dir,
                        help="score estimates already on disk (<dir>/<subset>/<track>/<target>.wav) "
                             "instead of separating with --model")
    parser.add_argument("--cores", type=positive_int, default=1, help="processes scoring tracks")
    add_model_args(parser, default=None)
    add_separation_args(parser)
    add_quiet(parser)
    args = parser.parse_args(argv)
    _refuse_repeats(parser, args, "targets", "tracks")
    if args.model is None and args.estimates is None:
        parser.error("one of --model or --estimates is required")
    if args.model is not None and args.estimates is not None:
        parser.error("--model and --estimates exclude each other: separate, or score what is there")
    if args.estimates is not None:
        # scoring what is on disk: the flags of a separation do not apply
        for flag in ("niter", "softmask", "alpha", "residual_model", "context", "jobs"):
            if getattr(args, flag) is not None:
                parser.error("argument --%s: --estimates scores what is on disk; only a "
                             "separation (--model) takes it" % flag.replace("_", "-"))
        unknown = [t for t in args.targets or [] if t not in MUSDB_TARGETS]
        if unknown:
            parser.error("argument --targets: %r is no MUSDB18 target (%s)"
                         % (unknown[0], ", ".join(MUSDB_TARGETS)))
    _separation_defaults(args)
    return args


def get_convert_args(argv=None):
    parser = Parser(prog="convert.py", description="Convert open-unmix-pytorch weights to NNabla")
    parser.add_argument("--from-pytorch", required=True, metavar="DIR", type=existing_dir,
                        help="folder of <target>[-<hash>].pth files (and <target>.json)")
    parser.add_argument("--out", required=True, type=folder_to_write,
                        help="folder for <target>.h5 and <target>.json")
    parser.add_argument("--targets", nargs="+", default=None, help="default: every .pth found")
    add_quiet(parser)
    args = parser.parse_args(argv)
    _refuse_repeats(parser, args, "targets")
    return args


def get_data_args(argv=None):
    parser = Parser(prog="data.py", description="Generate a dataset of synthetic music, or "
                                                "decode MUSDB18 STEMS once")
    job = parser.add_mutually_exclusive_group(required=True)
    job.add_argument("--generate", metavar="ROOT", type=folder_to_write,
                     help="write a small dataset of synthetic music into ROOT")
    job.add_argument("--decode-stems", nargs=2, metavar=("MUSDB18", "OUT"),
                     help="decode a MUSDB18 STEMS root into musdb's WAV layout in OUT")
    parser.add_argument("--kind", default="musdb", choices=DATASET_KINDS,
                        help="--generate: the layout of this dataset kind (%(default)s)")
    parser.add_argument("--nb-train", type=positive_int, default=8)
    parser.add_argument("--nb-test", type=nonnegative_int, default=2,
                        help="--generate: songs of the test (musdb) or valid split")
    parser.add_argument("--duration", type=_number(float, 0.5, 3600.0), default=12.0,
                        help="seconds per track (0.5 to 3600)")
    parser.add_argument("--seed", type=seed_int, default=0)
    parser.add_argument("--pcm16", action="store_true",
                        help="--decode-stems: 16-bit PCM instead of float WAV (refused where "
                             "a sample would clip)")
    add_quiet(parser)
    args = parser.parse_args(argv)
    if args.decode_stems:
        src, dst = args.decode_stems
        if not os.path.isdir(src):
            parser.error("argument --decode-stems: %s is not a folder" % src)
        if os.path.exists(dst) and not os.path.isdir(dst):
            parser.error("argument --decode-stems: %s is a file, not a folder" % dst)
    return args


def front_door_parsers():
    """{script: its parse function} of the top-level front doors."""
    return {"train": get_train_args, "test": get_inference_args, "eval": get_eval_args,
            "data": get_data_args, "convert": get_convert_args}


def print_flags(argv=None):
    """`args.py`: print the flags of the named front doors (every one without a name) → 0."""
    doors = front_door_parsers()
    parser = Parser(prog="args.py", description="Print the flags of the front doors (the "
                                                "parsers: unmix_nnabla/cli/args.py)")
    parser.add_argument("scripts", nargs="*", metavar="SCRIPT",
                        help="any of %s (default: all)" % ", ".join(doors))
    names = parser.parse_args(argv).scripts
    for name in names:
        if name not in doors:  # (argparse's choices refuse nargs="*"'s empty default)
            parser.error("argument SCRIPT: %r is not a front door (%s)" % (name, ", ".join(doors)))
    for name in names or doors:
        print("\n# %s.py\n" % name)
        try:
            doors[name](["--help"])  # argparse prints the help, then exits 0
        except SystemExit:
            pass
    return 0
