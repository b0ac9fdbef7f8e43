"""A few data-parallel training steps, for tests/test_mpi.py (run under mpirun or alone).

python tests/mpi_steps.py ROOT OUT --batch B --steps S [--freeze-bn]
Each rank trains on its slice of the epoch's samples and saves its parameters as
OUT/rank<r>.npz.
"""
import argparse
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("out")
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--freeze-bn", action="store_true")
    args = parser.parse_args()

    import numpy as np
    import nnabla as nn
    import nnabla.solvers as S
    from unmix_nnabla.training.comm import get_communicator
    from unmix_nnabla.data.datasets import MusdbSamples, epoch_batches
    from unmix_nnabla.data.tracks import load_tracks
    from unmix_nnabla.networks.layout import UmxConfig
    from unmix_nnabla.training.graph import build_training_graph
    from unmix_nnabla.training.step import dropout_rngs, train_step
    from unmix_nnabla.base.context import set_context

    comm = get_communicator("cpu")
    rank, size = (comm.rank, comm.size) if comm else (0, 1)
    set_context("cpu", verbose=False)
    nn.random.seed(rank)  # different initial values per rank: the broadcast must fix them
    cfg = UmxConfig(hidden_size=8, max_bin=40, nb_output_bins=129, n_fft=256, n_hop=64)
    tracks = load_tracks(args.root, True, "train", log=lambda *a: None)
    dataset = MusdbSamples(tracks, "vocals", seq_dur=0.25, samples_per_track=8, seed=1)
    if args.freeze_bn:  # normalize with the running statistics: samples do not interact
        from unmix_nnabla.networks import model
        from unmix_nnabla.networks import ops
        model.batch_norm = lambda *a, batch_stat, **k: ops.batch_norm(*a, batch_stat=False, **k)
    graph = build_training_graph(cfg, "vocals", args.batch, 11025)
    solver = S.Adam(alpha=0.01)
    with nn.parameter_scope("vocals"):
        solver.set_parameters(nn.get_parameters())
    if comm:
        comm.broadcast_parameters("vocals")
    batches = epoch_batches(dataset, 0, args.batch, rank=rank, nb_ranks=size, with_indices=True)
    for _, (indices, mixtures, targets) in zip(range(args.steps), batches):
        train_step(graph, solver, mixtures, targets, cfg, 1e-4, dropout_rngs(1, 0, indices), comm)
    with nn.parameter_scope("vocals"):
        params = {k: v.d for k, v in nn.get_parameters(grad_only=False).items()}
    os.makedirs(args.out, exist_ok=True)
    np.savez(os.path.join(args.out, "rank%d.npz" % rank), **params)


if __name__ == "__main__":
    main()
