"""Separate songs into stems:

    python test.py song.mp3 [more.flac ...] --model umxhq -o stems

Each song gets a folder per model, `<out-dir>/<model>/<song>/<target>.<ext>` (as demucs lays
them out: stems of two models never mix), `<model>` the published name or the weights' file
or folder name; `<out-dir>/<model>/MODEL.json` records the weight files' SHA-256, and another
model of the same name is refused there. WAV float by default; FLAC, MP3, 24- or 16-bit
integers, with a clip policy that never clips silently. The model is a published one by name
(downloaded once) or weights on disk; its targets are separated unless --targets names some.
Every output path is checked before any work: no stem may replace an input, and no two songs
may write the same folder.
"""
from unmix_nnabla.cli.args import get_inference_args  # first: it quiets NNabla's import-time log line
from unmix_nnabla.base.runtime import run_cli
from unmix_nnabla.separation.songs import separate_songs


def main(argv=None):
    run_cli(separate_songs, get_inference_args(argv))


if __name__ == "__main__":
    main()
