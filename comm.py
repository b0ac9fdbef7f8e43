"""Data-parallel communication for `mpirun -n N python train.py ...`.

- CUDA/cuDNN context under MPI: NNabla's `MultiProcessDataParallelCommunicator` (NCCL; needs
  the nnabla-ext-cuda*-nccl* build), one GPU per rank.
- CPU context under MPI: gradient averaging with MPI itself (mpi4py `Allreduce`).
- No MPI (or one rank): `get_communicator` returns None and training runs as a single process.

Both communicators offer the same small interface that train.py uses: rank, size, local_rank,
broadcast_parameters(scope), all_reduce_grads(solver), average_statistics(scope), mean(value),
barrier(), abort().
"""
import os

import numpy as np
import nnabla as nn

from context import gpu_available
from runtime import UmxError

MPI_HINT = ("apt-get install -y openmpi-bin libopenmpi-dev && pip install mpi4py==4.1.2")


def mpi_world_size():
    """Ranks of the MPI job this process belongs to (1 when not started by mpirun)."""
    for var in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS"):
        if os.environ.get(var):
            return int(os.environ[var])
    return 1


def get_communicator(context):
    """The communicator for this process, or None when not under a multi-rank mpirun."""
    if mpi_world_size() <= 1:
        return None
    if context in ("cuda", "cudnn") and gpu_available():
        return NcclCommunicator(context)
    return CpuMpiCommunicator()


def _statistics(scope):
    """The Variables of `scope` that no gradient updates (batch-norm running mean and var)."""
    with nn.parameter_scope(scope):
        every = nn.get_parameters(grad_only=False)
        trained = nn.get_parameters(grad_only=True)
    return [v for k, v in every.items() if k not in trained]


def _flatten(arrays):
    return np.concatenate([a.ravel() for a in arrays]).astype(np.float32)


def _unflatten(flat, variables, attr):
    offset = 0
    for var in variables:
        size = int(np.prod(var.shape))
        setattr(var, attr, flat[offset:offset + size].reshape(var.shape))
        offset += size


class CpuMpiCommunicator:
    """Gradient averaging over MPI (mpi4py) for CPU contexts."""

    def __init__(self):
        try:
            from mpi4py import MPI
        except ImportError:
            raise UmxError("mpirun on the CPU needs mpi4py and Open MPI: %s" % MPI_HINT)
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.local_rank = int(os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK", self.rank))

    def broadcast_parameters(self, scope):
        """Every rank starts from rank 0's parameters (all of them, running statistics too)."""
        with nn.parameter_scope(scope):
            params = list(nn.get_parameters(grad_only=False).values())
        flat = _flatten([p.d for p in params])
        self.comm.Bcast(flat, root=0)
        _unflatten(flat, params, "d")

    def all_reduce_grads(self, solver):
        """Replace each gradient by its mean over ranks (one Allreduce for all of them)."""
        params = list(solver.get_parameters().values())
        flat = _flatten([p.g for p in params])
        self.comm.Allreduce(self.MPI.IN_PLACE, flat, op=self.MPI.SUM)
        _unflatten(flat / self.size, params, "g")

    def average_statistics(self, scope):
        """Average the parameters that gradients do not update (batch-norm running statistics,
        which each rank updates from its own batches), so that all ranks keep equal models."""
        params = _statistics(scope)
        if params:
            flat = _flatten([p.d for p in params])
            self.comm.Allreduce(self.MPI.IN_PLACE, flat, op=self.MPI.SUM)
            _unflatten(flat / self.size, params, "d")

    def mean(self, value):
        return self.comm.allreduce(float(value), op=self.MPI.SUM) / self.size

    def barrier(self):
        self.comm.Barrier()

    def abort(self, code=1):
        self.comm.Abort(code)


class NcclCommunicator:
    """NNabla's NCCL data-parallel communicator, one GPU per rank."""

    def __init__(self, context):
        from nnabla.ext_utils import get_extension_context
        try:
            import nnabla.communicators as C
            ctx = get_extension_context(context)
            self.comm = C.MultiProcessDataParallelCommunicator(ctx)
        except Exception as exc:
            raise UmxError("mpirun with --context %s needs NNabla's NCCL build "
                           "(pip install nnabla-ext-cuda120-nccl2-mpi3-1-6, see README): %s"
                           % (context, exc))
        self.comm.init()
        self.rank, self.size, self.local_rank = self.comm.rank, self.comm.size, self.comm.local_rank
        from nnabla_ext.cuda import get_device_count
        if get_device_count() < self.comm.size and self.local_rank >= get_device_count():
            raise UmxError("%d ranks but only %d GPUs on this node: start at most one rank per GPU"
                           % (self.size, get_device_count()))

    def broadcast_parameters(self, scope):
        with nn.parameter_scope(scope):
            params = list(nn.get_parameters(grad_only=False).values())
        self.comm.bcast([p.data for p in params], src=0, inplace=False)

    def all_reduce_grads(self, solver):
        grads = [p.grad for p in solver.get_parameters().values()]
        self.comm.all_reduce(grads, division=True, inplace=False)

    def average_statistics(self, scope):
        params = _statistics(scope)
        if params:
            self.comm.all_reduce([p.data for p in params], division=True, inplace=False)

    def mean(self, value):
        arr = nn.NdArray.from_numpy_array(np.array([value], np.float32))
        self.comm.all_reduce(arr, division=True, inplace=False)
        return float(arr.data[0])

    def barrier(self):
        self.comm.barrier()

    def abort(self, code=1):
        os._exit(code)
