"""The work of the small CLIs, convert.py and data.py, each from its parsed arguments."""
import os

from unmix_nnabla.base.console import say, set_quiet
from unmix_nnabla.base.files import output_folder, refuse_overlaps
from unmix_nnabla.data.synth import generate_dataset
from unmix_nnabla.data.tracks import decode_stems
from unmix_nnabla.models.conversion import convert_checkpoints, find_checkpoints, write_converted


def convert(args):
    """convert.py: open-unmix-pytorch or asteroid checkpoints into --out."""
    set_quiet(args.quiet)
    converted = convert_checkpoints(args.from_pytorch, args.targets)
    checkpoints = find_checkpoints(args.from_pytorch)
    refuse_overlaps([(path, "the checkpoint file") for pair in checkpoints.values()
                     for path in pair if path],
                    [(os.path.join(args.out, name + ext), "--out") for name in converted
                     for ext in (".h5", ".json")])
    with output_folder(args.out, "--out"):
        write_converted(converted, args.out)
    for name, (_, cfg, _) in converted.items():
        say("%s: %shidden %d, %d channels, max_bin %d, %s -> %s"
              % (name, "X-UMX branches %s, " % ", ".join(cfg.xumx_branches)
                 if cfg.is_xumx else "", cfg.hidden_size, cfg.nb_channels, cfg.max_bin,
                 "unidirectional" if cfg.unidirectional else "bidirectional",
                 os.path.join(args.out, name + ".h5")))


def datasets(args):
    """data.py: generate a synthetic dataset, or decode MUSDB18 STEMS once."""
    set_quiet(args.quiet)
    if args.generate:
        with output_folder(args.generate, "--generate"):
            generate_dataset(args.generate, args.nb_train, args.nb_test, args.duration,
                             args.seed, kind=args.kind)
        say("generated %s (%s layout)" % (args.generate, args.kind))
    else:
        src, dst = args.decode_stems
        refuse_overlaps([(src, "the STEMS root")], [(dst, "the WAV root")])
        with output_folder(dst, "the WAV root"):
            count = decode_stems(src, dst, args.pcm16)
        say("%d tracks decoded into %s (train with --root %s --is-wav)" % (count, dst, dst))
