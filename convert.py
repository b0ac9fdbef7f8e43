"""Convert open-unmix-pytorch (and asteroid X-UMX) weights to NNabla, without PyTorch:

    python convert.py --from-pytorch DIR --out OUT

DIR holds one state dict per target: `<target>-<hash>.pth` as published (umxhq, umx, umxl),
or `<target>.pth` with the `<target>.json` that open-unmix-pytorch's training writes; or an
asteroid X-UMX model package. OUT gets `<target>.h5` (official NNabla layout) or `x-umx.h5`
(Sony's layout), each with a `.json` (STFT hop and sample rate), which `test.py --model OUT`
and `eval.py --model OUT` load unchanged. No code in a checkpoint ever runs (`pth.py`); the
mapping is `conversion.py`.
"""
from unmix_nnabla.cli.args import get_convert_args  # first: it quiets NNabla's import-time log line
from unmix_nnabla.cli.commands import convert
from unmix_nnabla.base.runtime import run_cli


def main(argv=None):
    run_cli(convert, get_convert_args(argv))


if __name__ == "__main__":
    main()
