"""Train UMX or X-UMX, as Sony's NNabla scripts do:

    python train.py --umx-train --root MUSDB18 --source vocals --output OUT   # one UMX target
    python train.py --root MUSDB18-wav --is-wav --output OUT                  # X-UMX

Writes to OUT: `<name>.h5` (the best weights: UMX's official `<target>.h5`, or Sony's
`x-umx.h5`; `test.py --model OUT` loads it), `<name>.json` (arguments, architecture, dataset,
per-epoch history), `<name>_loss.png`, NNabla Monitor series, and `<name>.checkpoint/` (the
last completed epoch). Re-running the same command resumes from it. Under `mpirun -n N` the
ranks train data-parallel (`comm.py`).

The run: `prepare_run` (data listed, arguments checked, data checked, resume point,
statistics, the graph, the solver), then the textbook NNabla loop per epoch (`train_step`:
set the inputs, zero_grad, forward, backward, all-reduce, update), `validation_loss`, and
`finish_epoch` (best weights, checkpoint, summary, monitors, plot).
"""
from unmix_nnabla.cli.args import get_train_args  # first: it quiets NNabla's import-time log line
from unmix_nnabla.base.runtime import run_cli
from unmix_nnabla.training.comm import get_communicator
from unmix_nnabla.training.run import run


def main(argv=None):
    args = get_train_args(argv)
    comm = run_cli(get_communicator, args.context)
    run_cli(run, args, comm, on_error=comm.abort if comm is not None else None)


if __name__ == "__main__":
    main()
