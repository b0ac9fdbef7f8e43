"""Separate songs into stems (the work: unmix_nnabla/separation/songs.py):

    python test.py song.mp3 [more.flac ...] --model umxhq -o stems   # stems/umxhq/song/...
"""
from unmix_nnabla.cli.args import get_inference_args  # first: it quiets NNabla's import-time log line
from unmix_nnabla.base.runtime import run_cli
from unmix_nnabla.separation.songs import separate_songs


def main(argv=None):
    run_cli(separate_songs, get_inference_args(argv))


if __name__ == "__main__":
    main()
