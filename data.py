"""Datasets from the command line:

    python data.py --generate ROOT [--kind KIND]   a small dataset of synthetic music in the
                                                    layout of a dataset kind (default musdb)
    python data.py --decode-stems MUSDB18 OUT       MUSDB18 STEMS decoded once into musdb's
                                                    WAV layout (train with --is-wav), resumable
"""
from args import get_data_args
from runtime import run_cli, say, set_quiet


def run(args):
    from files import output_folder, refuse_overlaps
    set_quiet(args.quiet)
    if args.generate:
        from synth import generate_dataset
        with output_folder(args.generate, "--generate"):
            generate_dataset(args.generate, args.nb_train, args.nb_test, args.duration,
                             args.seed, kind=args.kind)
        say("generated %s (%s layout)" % (args.generate, args.kind))
    else:
        from tracks import decode_stems
        src, dst = args.decode_stems
        refuse_overlaps([(src, "the STEMS root")], [(dst, "the WAV root")])
        with output_folder(dst, "the WAV root"):
            count = decode_stems(src, dst, args.pcm16)
        say("%d tracks decoded into %s (train with --root %s --is-wav)" % (count, dst, dst))


def main(argv=None):
    run_cli(run, get_data_args(argv))


if __name__ == "__main__":
    main()
