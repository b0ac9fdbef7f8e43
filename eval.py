"""Evaluate on MUSDB18: python eval.py --model DIR --root MUSDB18 --out-dir OUT

Separates each track of the subset with the separation function of test.py, writes the
estimates in musdb's layout (OUT/<subset>/<track>/<target>.wav), scores them with
`museval.eval_mus_track` (BSSEval v4, 1 s windows) into museval's per-track JSON
(OUT/<subset>/<track>.json), and aggregates the published table: per target, the median over
frames, then the median over tracks, of SDR/SIR/SAR/ISR (OUT/results.md, OUT/results.csv,
and a boxplot of per-track SDR, OUT/sdr_boxplot.png). A re-run skips the tracks that the same
model files and options scored (`scoring.Origins`); scores made otherwise are refused.
"""
from unmix_nnabla.cli.args import get_eval_args  # first: it quiets NNabla's import-time log line
from unmix_nnabla.base.runtime import run_cli
from unmix_nnabla.scoring.evaluate import evaluate


def main(argv=None):
    run_cli(evaluate, get_eval_args(argv))


if __name__ == "__main__":
    main()
