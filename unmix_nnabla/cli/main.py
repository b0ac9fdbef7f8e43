"""The console commands that `pip install .` puts on the PATH (pyproject.toml), the same work as
the top-level scripts of a checkout:

    umx-nnabla song.mp3 --model umxhq -o stems      (test.py)
    umx-nnabla-train ...                            (train.py)
    umx-nnabla-eval ...                             (eval.py)
"""
from unmix_nnabla.base.runtime import run_cli
from unmix_nnabla.cli.args import get_eval_args, get_inference_args, get_train_args

# Each command imports its work after parsing, on purpose: a bad flag is reported before NNabla
# and numba load.


def separate(argv=None):
    from unmix_nnabla.separation.songs import separate_songs
    run_cli(separate_songs, get_inference_args(argv, prog="umx-nnabla"))


def train(argv=None):
    from unmix_nnabla.training.comm import get_communicator
    from unmix_nnabla.training.run import run
    args = get_train_args(argv, prog="umx-nnabla-train")
    comm = run_cli(get_communicator, args.context)
    run_cli(run, args, comm, on_error=comm.abort if comm is not None else None)


def evaluate(argv=None):
    from unmix_nnabla.scoring.evaluate import evaluate as work
    run_cli(work, get_eval_args(argv, prog="umx-nnabla-eval"))
