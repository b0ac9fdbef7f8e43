"""Datasets from the command line:

    python data.py --generate ROOT [--kind KIND]   a small dataset of synthetic music in the
                                                    layout of a dataset kind (default musdb)
    python data.py --decode-stems MUSDB18 OUT       MUSDB18 STEMS decoded once into musdb's
                                                    WAV layout (train with --is-wav), resumable
"""
from unmix_nnabla.cli.args import get_data_args  # first: it quiets NNabla's import-time log line
from unmix_nnabla.cli.commands import datasets
from unmix_nnabla.base.runtime import run_cli


def main(argv=None):
    run_cli(datasets, get_data_args(argv))


if __name__ == "__main__":
    main()
