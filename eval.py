"""Evaluate on MUSDB18 with museval, the published table (the work:
unmix_nnabla/scoring/evaluate.py):

    python eval.py --model umxhq --root MUSDB18 --out-dir OUT
"""
from unmix_nnabla.cli.args import get_eval_args  # first: it quiets NNabla's import-time log line
from unmix_nnabla.base.runtime import run_cli
from unmix_nnabla.scoring.evaluate import evaluate


def main(argv=None):
    run_cli(evaluate, get_eval_args(argv))


if __name__ == "__main__":
    main()
