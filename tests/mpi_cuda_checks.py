"""CUDA ranks under ``mpiexec -n 2`` with ``NUMBA_ENABLE_CUDASIM=1`` (run by tests/test_mpi.py):
the gradient and parameter Allreduces staged through host memory (FASTBP_MPI_CUDA_AWARE=0)
and on device buffers (=1). Rank 0 prints JSON.

Under the simulator a device array is host memory wrapped in a ``FakeCUDAArray``; mpi4py
takes it through the DLPack export of the wrapped NumPy array, so the direct path runs end
to end without a GPU or a CUDA-aware MPI. What this cannot show: that a real MPI accepts
real device pointers, and the stream synchronisation (the simulator runs kernels at once).
"""
import json
import os
import signal
import sys

import numpy as np
from mpi4py import MPI
from numba import config

import fastbp
from fastbp import distributed
from fastbp.callbacks import Callback
from fastbp.distributed import CUDA_AWARE_ENV, DistributedError
from fastbp.optimizers import SGD

assert config.ENABLE_CUDASIM, "run with NUMBA_ENABLE_CUDASIM=1"
comm = MPI.COMM_WORLD
rank, size = comm.rank, comm.size
result = {}

# Every buffer the fits hand to MPI's Allreduce: (on the device?, length).
handed = []
_sum = distributed.Collective.sum_


def spy(self, arr):
    handed.append((not isinstance(arr, np.ndarray), int(arr.shape[0])))
    return _sum(self, arr)


distributed.Collective.sum_ = spy

# Blocks of b rows dealt round-robin (uneven: one rank has an extra, partial block); one
# process at batch size*b over the same rows in the same order gives the same weights.
b = 4
rng = np.random.default_rng(0)
X = rng.normal(size=(size * 8 + 2, 4))
y = rng.integers(0, 3, len(X))
blocks = [np.arange(i, min(i + b, len(X))) for i in range(0, len(X), b)]
shards = [blocks[q::size] for q in range(size)]
mine = np.concatenate(shards[rank])
steps = max(len(s) for s in shards)
order = np.concatenate([shards[q][k] for k in range(steps) for q in range(size)
                        if k < len(shards[q])])
SIZES = [4, 5, 3]
CASES = {   # dtype, fit arguments (the float32 case also clips and freezes a layer)
    "float64": dict(optimizer="adam", lr=0.05),
    "float32": dict(optimizer=SGD(lr=0.1, momentum=0.9), clip_norm=0.5),
}


def model(dtype):
    net = fastbp.MLP(SIZES, dtype=dtype, seed=1, device="cuda")
    if dtype == "float32":
        net.freeze(0)
    return net


def flat(net):
    return np.concatenate([w.ravel() for w in net.get_weights()])


# The one-process references, one case per rank at once (no rank waits idle for another).
refs = {}
for i, (dtype, fit) in enumerate(CASES.items()):
    if i % size == rank:
        ref = model(dtype)
        ref.fit(X[order], y[order], epochs=2, batch_size=size * b, shuffle=False, **fit)
        refs[dtype] = flat(ref)
refs = {k: v for part in comm.allgather(refs) for k, v in part.items()}

P = fastbp.MLP(SIZES).n_params
for mode in ("0", "1"):
    os.environ[CUDA_AWARE_ENV] = mode
    for dtype, fit in CASES.items():
        handed.clear()
        net = model(dtype)
        h = net.fit(X[mine], y[mine], epochs=2, batch_size=b, shuffle=False, comm=comm, **fit)
        grads = [dev for dev, n in handed if n == P + 3]
        w = flat(net)
        gathered = comm.gather(w, root=0)
        if rank == 0:
            key = f"{mode}_{dtype}"
            result[f"buffers_{key}"] = h.params["mpi_buffers"]
            result[f"grad_allreduces_{key}"] = len(grads)
            result[f"grad_on_device_{key}"] = sum(grads)
            result[f"equiv_{key}"] = float(np.max(np.abs(w - refs[dtype])))
            result[f"sync_{key}"] = all(np.array_equal(g, w) for g in gathered)
            result[f"weights_{key}"] = w.tolist()

    # Local SGD: parameters averaged every 2 steps, on the device when direct.
    handed.clear()
    net = model("float64")
    h = net.fit(X[mine], y[mine], epochs=2, batch_size=b, comm=comm, sync_every=2)
    params = [dev for dev, n in handed if n == P]
    w = flat(net)
    gathered = comm.gather(w, root=0)
    if rank == 0:
        result[f"local_sgd_param_allreduces_{mode}"] = len(params)
        result[f"local_sgd_on_device_{mode}"] = sum(params)
        result[f"local_sgd_sync_{mode}"] = all(np.array_equal(g, w) for g in gathered)
        result[f"local_sgd_weights_{mode}"] = w.tolist()


# Ctrl-C on rank 1 alone, during the second epoch: the flag travels in the step's Allreduce
# (written on the device when direct), so both ranks stop after the same step.
class CtrlC(Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1 and rank == 1:
            os.kill(os.getpid(), signal.SIGINT)


# fit defers SIGINT only where Python's own handler is installed; elsewhere the signal would
# stop rank 1 alone and leave rank 0 waiting in the Allreduce.
handler_ok = all(comm.allgather(signal.getsignal(signal.SIGINT) is signal.default_int_handler))
if handler_ok:
    os.environ[CUDA_AWARE_ENV] = "1"
    net = model("float64")
    h = net.fit(X[mine], y[mine], epochs=3, batch_size=b, shuffle=False, comm=comm,
                callbacks=[CtrlC()])
    stops = comm.gather((h.interrupted, net._step, flat(net).tolist()), root=0)
    if rank == 0:
        result["interrupt"] = {"buffers": h.params["mpi_buffers"],
                               "interrupted": [s[0] for s in stops],
                               "steps": [s[1] for s in stops], "steps_per_epoch": steps,
                               "same_weights": all(s[2] == stops[0][2] for s in stops)}

# auto: this MPI's own answer (the MPICH wheel is built without CUDA: host buffers).
os.environ[CUDA_AWARE_ENV] = "auto"
net = model("float64")
h = net.fit(X[mine], y[mine], epochs=1, batch_size=b, comm=comm)
info = comm.Get_info()
if rank == 0:
    result["auto_buffers"] = h.params["mpi_buffers"]
    result["auto_reported"] = distributed.cuda_aware(comm)
    result["alloc_kinds"] = info.Get("mpi_memory_alloc_kinds")
    lib = distributed._loaded_libmpi()
    result["libmpi_found"] = lib is not None and hasattr(lib, "MPI_Get_version")
info.Free()

# A bad override on one rank: every rank raises (ConfigError there, DistributedError
# elsewhere) before any step, and nobody waits forever.
os.environ[CUDA_AWARE_ENV] = "maybe" if rank == 1 else "1"
try:
    model("float64").fit(X[mine], y[mine], epochs=1, batch_size=b, comm=comm)
    raised = None
except (ValueError, DistributedError) as e:
    raised = [type(e).__name__, str(e)]
raised = comm.gather(raised, root=0)
if rank == 0:
    result["bad_env_raised"] = raised
    json.dump(result, sys.stdout)
    print()
