"""Convert open-unmix-pytorch (and asteroid X-UMX) weights to NNabla, without PyTorch:

    python convert.py --from-pytorch DIR --out OUT

DIR holds one state dict per target: `<target>-<hash>.pth` as published (umxhq, umx, umxl),
or `<target>.pth` with the `<target>.json` that open-unmix-pytorch's training writes; or an
asteroid X-UMX model package. OUT gets `<target>.h5` (official NNabla layout) or `x-umx.h5`
(Sony's layout), each with a `.json` (STFT hop and sample rate), which `test.py --model OUT`
and `eval.py --model OUT` load unchanged. No code in a checkpoint ever runs (`pth.py`); the
mapping is `conversion.py`.
"""
import os

from args import get_convert_args
from runtime import run_cli, say, set_quiet


def run(args):
    set_quiet(args.quiet)
    from conversion import convert_checkpoints, find_checkpoints, write_converted
    from files import output_folder, refuse_overlaps
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
                 if cfg.xumx_branches else "", cfg.hidden_size, cfg.nb_channels, cfg.max_bin,
                 "unidirectional" if cfg.unidirectional else "bidirectional",
                 os.path.join(args.out, name + ".h5")))


def main(argv=None):
    run_cli(run, get_convert_args(argv))


if __name__ == "__main__":
    main()
