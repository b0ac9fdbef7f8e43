"""Data-parallel communication for `mpirun -n N python train.py ...`.

- GPU contexts under MPI: NNabla's `MultiProcessDataParallelCommunicator` (NCCL), one GPU per
  rank (the rank's local rank on its node picks the GPU). The plain CUDA extension
  (nnabla-ext-cuda120) opens Open MPI (since NNabla 1.26.0) and NCCL (since 1.29.0) itself at
  its import (`context.py` says where it looks, and points it at the NCCL wheel of
  requirements-gpu.txt): NCCL 2 >= 2.10.3 and Open MPI's libmpi.so on each node; the older
  nnabla-ext-cuda*-nccl2-mpi* packages end at CUDA 11.0.
- CPU context under MPI: gradient averaging with MPI itself (mpi4py `Allreduce`).
- No MPI (or one rank): `get_communicator` returns None and training runs as a single process.

Both communicators offer the same small interface that train.py uses: rank, size, local_rank,
broadcast_parameters(scope), all_reduce_grads(solver), average_statistics(scope), mean(value),
barrier(), abort().
"""
import os

import nnabla as nn
import numpy as np
from nnabla.ext_utils import get_extension_context

from unmix_nnabla.base import context as contexts
from unmix_nnabla.base.context import nnabla_message
from unmix_nnabla.base.processes import mpi_world_size
from unmix_nnabla.base.runtime import UmxError

MPI_HINT = ("apt-get install -y openmpi-bin libopenmpi-dev && pip install mpi4py==4.1.2")


def get_communicator(context):
    """The communicator for this process, or None when not under a multi-rank mpirun.
    context: --context (None: NCCL when a GPU is usable, else MPI on the CPU)."""
    if mpi_world_size() <= 1:
        return None
    if context is None:
        context = "cudnn" if contexts.gpu_available() else "cpu"
    if context in ("cuda", "cudnn"):
        return NcclCommunicator(context)
    return CpuMpiCommunicator()


def local_rank():
    """This rank's index among the ranks of its node (mpirun's environment), 0 without."""
    for var in ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PMIX_LOCAL_RANK",
                "SLURM_LOCALID"):
        if os.environ.get(var):
            return int(os.environ[var])
    return 0


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
            from mpi4py import MPI  # deferred: starts MPI
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
    """NNabla's NCCL data-parallel communicator, one GPU per rank. Before it starts, each rank
    checks its GPU (`context.gpu_status`, from the driver: the communicator's start is the
    first device call), this rank's local rank against the node's GPUs, and that NNabla will
    find NCCL and Open MPI (`context.missing_for_multi_gpu`); any start-up failure is one
    UmxError, with NNabla's own message whole (train.py then aborts the whole job). The keyword
    arguments replace NNabla's pieces (tests run the start-up on a machine without a GPU)."""

    def __init__(self, context, status=None, device_count=None, communicators=None,
                 extension_context=None, missing=None):
        rank = local_rank()
        usable, why = (status or (lambda: contexts.gpu_status(rank, runtime=False)))()
        if not usable:
            raise UmxError("mpirun with --context %s: %s" % (context, why))
        devices = (device_count or _device_count)()
        if rank >= devices:
            raise UmxError("this node runs rank %d but has %d GPU%s: start at most one rank per "
                           "GPU (mpirun -n, or CUDA_VISIBLE_DEVICES)"
                           % (rank, devices, "s" if devices != 1 else ""))
        for line in (missing or contexts.missing_for_multi_gpu)():
            raise UmxError("mpirun with --context %s: %s" % (context, line))
        extension_context = extension_context or get_extension_context
        if communicators is None:
            import nnabla.communicators as communicators  # deferred: mpirun only
        try:
            ctx = extension_context(context, device_id=str(rank))
            self.comm = communicators.MultiProcessDataParallelCommunicator(ctx)
        except Exception as exc:
            raise UmxError("mpirun with --context %s: NNabla has no NCCL communicator for this "
                           "context (it registers one when it finds NCCL and Open MPI at "
                           "import): %s" % (context, nnabla_message(exc))) from None
        try:
            self.comm.init()
        except Exception as exc:
            raise UmxError("mpirun with --context %s: NNabla's %s did not start: %s"
                           % (context, _name(self.comm), nnabla_message(exc))) from None
        self.rank, self.size, self.local_rank = self.comm.rank, self.comm.size, self.comm.local_rank

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
        abort_job(code)


def _device_count():
    return contexts.gpu_count()


def _name(comm):
    try:
        return comm.name
    except Exception:
        return "NCCL communicator"


def abort_job(code=1):
    """End every rank of the job (MPI_Abort), or this process when MPI is not at hand."""
    try:
        from mpi4py import MPI  # deferred: starts MPI
        MPI.COMM_WORLD.Abort(code)
    except ImportError:
        pass
    os._exit(code)
