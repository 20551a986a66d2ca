"""Data-parallel training over MPI (mpi4py), as Horovod does it.

Each process (rank) trains on its own shard. ``sync_every=1`` (default): after each step's
backward pass the flat gradient vector (plus the batch loss, metric and an interrupt flag,
appended) is summed
across ranks by ONE in-place Allreduce. Each rank scales its rows by 1/(global batch rows),
so the sum is the mean gradient of the global batch, and every rank applies the identical
update. N ranks at per-rank batch b thus follow one process at batch N*b on the same rows.
``sync_every=k`` > 1 is local SGD: ranks take k independent compiled steps, then average
their parameters with one Allreduce.

Ranks agree on the steps per epoch (the largest shard sets it; a rank that has run out of
rows contributes zeros), so uneven shards never leave a rank waiting. Weights are checked
for drift with a checksum every epoch. Rank 0 alone writes checkpoints, logs and progress.
Validation metrics are reduced across ranks. mpi4py is imported only when a communicator
is passed.

CUDA ranks hand MPI their device buffers directly when the MPI library is CUDA-aware (see
:func:`cuda_aware`; ``FASTBP_MPI_CUDA_AWARE`` overrides the detection), else they stage the
gradient and the parameters through host memory. Ranks agree on one of the two.
"""
import ctypes
import math
import os
import time

import numpy as np

from . import registry
from .errors import ConfigError
from .kernels import math as km
from .kernels.cpu import loss_sum
from .training import CHUNK_SECONDS, Strategy, batch_rows, chunk_rates


class DistributedError(RuntimeError):
    """Ranks disagree: one failed, or their weights drifted apart."""


class Collective:
    """The few collective operations fit needs, over an mpi4py communicator."""

    def __init__(self, comm):
        for attr in ("Allreduce", "allgather", "Get_rank", "Get_size"):
            if not hasattr(comm, attr):
                raise ConfigError("comm must be an mpi4py communicator (e.g. MPI.COMM_WORLD); "
                                  "install the 'mpi' extra: pip install 'fastbp[mpi]'")
        from mpi4py import MPI
        self.MPI = MPI
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()

    def agree(self, error):
        """Collective: raise on every rank when any rank failed (``error`` is its exception)."""
        reports = self.comm.allgather(None if error is None else f"rank {self.rank}: {error}")
        if error is not None:
            raise error
        failed = [r for r in reports if r]
        if failed:
            raise DistributedError(f"another rank failed, so this one stops too: {failed[0]}")

    def sum_(self, arr):
        """In-place sum across ranks."""
        self.comm.Allreduce(self.MPI.IN_PLACE, arr, op=self.MPI.SUM)
        return arr

    def allgather(self, value):
        return self.comm.allgather(value)


CUDA_AWARE_ENV = "FASTBP_MPI_CUDA_AWARE"
_CUDA_AWARE_VALUES = {"auto": None, "": None, "1": True, "0": False}


def cuda_aware_setting(environ=None):
    """The ``FASTBP_MPI_CUDA_AWARE`` override: None ("auto", the default), True ("1") or
    False ("0"); any other value raises :class:`ConfigError`."""
    environ = os.environ if environ is None else environ
    value = environ.get(CUDA_AWARE_ENV, "auto")
    key = value.strip().lower()
    if key not in _CUDA_AWARE_VALUES:
        raise ConfigError(f"{CUDA_AWARE_ENV}={value!r}: use 1 (the MPI is CUDA-aware: pass "
                          f"device buffers), 0 (stage through host memory) or auto (ask the "
                          f"MPI library)")
    return _CUDA_AWARE_VALUES[key]


def cuda_aware(comm, setting=None):
    """True when this rank's MPI library reports that it takes CUDA device buffers.

    ``setting`` True or False overrides the question (see :func:`cuda_aware_setting`).
    Asked in order: the MPI 4.1 ``mpi_memory_alloc_kinds`` info of ``comm``, which lists
    the memory kinds the library accepts (``cuda`` or ``cuda:device`` covers device memory;
    recent MPICH, Open MPI 6+); without that key, the ``MPIX_Query_cuda_support`` extension
    of the loaded library (Open MPI 4 and 5, MVAPICH), which mpi4py does not wrap by
    design. Anything else: False.
    """
    if setting is not None:
        return bool(setting)
    kinds = _info_value(comm, "mpi_memory_alloc_kinds")
    if kinds is not None:
        return any(k.strip() in ("cuda", "cuda:device") for k in kinds.split(","))
    return _mpix_query_cuda_support()


def _info_value(comm, key):
    try:
        info = comm.Get_info()
    except (AttributeError, NotImplementedError, RuntimeError):  # MPI before 3.0
        return None
    try:
        return info.Get(key)
    finally:
        info.Free()


def _loaded_libmpi():
    """The MPI library mpi4py has loaded, or None: RTLD_NOLOAD never loads another one."""
    noload = getattr(os, "RTLD_NOLOAD", None)
    if noload is None:      # Windows: no MPI there has the CUDA query
        return None
    for soname in ("libmpi.so.40", "libmpi.so.12", "libmpi.so", "libmpi.40.dylib",
                   "libmpi.12.dylib", "libmpi.dylib"):
        try:
            return ctypes.CDLL(soname, mode=noload | os.RTLD_LAZY)
        except OSError:
            continue
    return None


def _mpix_query_cuda_support():
    """MPIX_Query_cuda_support() of the loaded MPI library; False where it has none."""
    query = getattr(_loaded_libmpi(), "MPIX_Query_cuda_support", None)
    if query is None:
        return False
    query.restype, query.argtypes = ctypes.c_int, []
    return bool(query())


def device_buffers(coll, cuda_engine, setting):
    """Collective: whether every rank passes device buffers to MPI (all do, or none does).

    A rank takes the direct path only with the CUDA engine and a CUDA-aware MPI; one rank
    that cannot makes every rank stage through host memory.
    """
    local = bool(cuda_engine) and cuda_aware(coll.comm, setting)
    return all(coll.allgather(local))


def global_ss_tot(coll, Y):
    """Total sum of squares of all ranks' targets (for the training R^2)."""
    s = np.array([Y.shape[0]] + list(Y.sum(0)) + list((Y.astype(np.float64) ** 2).sum(0)),
                 dtype=np.float64)
    coll.sum_(s)
    k = Y.shape[1]
    n, sy, sy2 = s[0], s[1:1 + k], s[1 + k:]
    return float((sy2 - sy * sy / n).sum())


def check_in_sync(coll, params, epoch):
    """Collective: every rank's parameters must be bitwise identical to rank 0's."""
    p = params.astype(np.float64, copy=False)
    idx = np.arange(1, p.size + 1, dtype=np.float64)
    # Not a BLAS dot: OpenBLAS's threads would spin on the other ranks' cores afterwards.
    sums = coll.allgather((float(p.sum()), float((p * idx).sum())))
    if any(s != sums[0] for s in sums):
        raise DistributedError(f"weights drifted apart across ranks after epoch {epoch} "
                               f"(checksums {sums}); a rank applied a different update")


def reduced_evaluate(model, coll, Xv, Yv, wv):
    """evaluate() over the union of every rank's validation shard."""
    Z = model._forward(Xv, pre_activation=True)
    k = Yv.shape[1]
    if model.is_classifier:
        hits = model._row_hits(Z, Yv)
        s = np.array([loss_sum(Z, Yv, wv, model._loss_code), wv.sum(), (hits * wv).sum(),
                      Xv.shape[0]], dtype=np.float64)
        coll.sum_(s)
        return {"loss": s[0] / s[3], "accuracy": s[2] / s[1]}
    P = registry.link_of(model.loss).apply(Z)     # the outputs the metrics are about
    w = wv[:, None]
    s = np.concatenate([[loss_sum(Z, Yv, wv, model._loss_code), Xv.shape[0], wv.sum()],
                        (w * Yv).sum(0), (w * Yv.astype(np.float64) ** 2).sum(0),
                        (w * (P - Yv) ** 2).sum(0),
                        [(np.abs(P - Yv).mean(1) * wv).sum()]]).astype(np.float64)
    coll.sum_(s)
    sw, swy, swy2, ss_res = s[2], s[3:3 + k], s[3 + k:3 + 2 * k], s[3 + 2 * k:3 + 3 * k]
    ss_tot = swy2 - swy * swy / sw
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(ss_tot > 0, 1 - ss_res / ss_tot, 0.0)
    return {"loss": s[0] / s[1], "r2": float(r2.mean()), "mae": s[-1] / sw}


def _rows_at(counts, b0, bs):
    return [max(0, min(bs, c - b0)) for c in counts]


class DataParallel(Strategy):
    """What both data-parallel strategies share: the collective, the planning that needs
    every rank, reduced validation and the drift check."""

    def __init__(self, comm):
        self.coll = Collective(comm)
        self.rank = self.coll.rank
        self.cuda_aware = cuda_aware_setting()   # FASTBP_MPI_CUDA_AWARE, checked on every rank
        self.shard_sizes = None
        self.device_buffers = False

    def params(self):
        # what the ranks hand MPI: "device" buffers (CUDA-aware MPI) or "host" memory
        return {"mpi_buffers": "device" if self.device_buffers else "host"}

    def prepare(self, model, plan):
        """Shard sizes, global statistics, per-rank dropout seeds, the buffers' side."""
        coll = self.coll
        self.shard_sizes = [int(c) for c in coll.allgather(plan.X.shape[0])]
        if not registry.loss(model.loss).classifies:
            plan.ss_tot = global_ss_tot(coll, plan.Y)
        plan.dropout_seed = (plan.dropout_seed + 7919 * coll.rank) % (2 ** 31 - 1)
        self.device_buffers = device_buffers(coll, model._engine.name == "cuda",
                                             self.cuda_aware)

    def evaluate(self, model, X, Y, w):
        return reduced_evaluate(model, self.coll, X, Y, w)

    def end_epoch(self, model, epoch):
        check_in_sync(self.coll, model._params, epoch)


class AllreduceGradients(DataParallel):
    """sync_every=1: one Allreduce of the flat gradient per step."""

    def begin(self, model, plan, session):
        # [gradient | batch loss, metric sum, interrupt flag], on the device when the
        # engine is CUDA and the MPI library CUDA-aware
        session.G = model._engine.grad_buffer(session, self.device_buffers)

    def run_epoch(self, model, plan, session, perm, callbacks, progress, step_schedule):
        return _epoch_allreduce_grads(self, model, plan, session, perm, callbacks, progress,
                                      step_schedule)


class LocalSGD(DataParallel):
    """sync_every=k > 1: k local compiled steps, then one Allreduce of the parameters."""

    def __init__(self, comm, sync_every):
        super().__init__(comm)
        self.sync_every = sync_every

    def run_epoch(self, model, plan, session, perm, callbacks, progress, step_schedule):
        return _epoch_local_sgd(self, model, plan, session, perm, callbacks, progress,
                                step_schedule)


def data_parallel(comm, sync_every=1):
    """The strategy of ``fit(comm=..., sync_every=...)``."""
    if sync_every == 1:
        return AllreduceGradients(comm)
    return LocalSGD(comm, sync_every)


def _epoch_allreduce_grads(strategy, model, plan, session, perm, callbacks, progress,
                           step_schedule):
    coll, eng, bs = strategy.coll, model._engine, plan.batch_size
    counts = strategy.shard_sizes
    n_local = plan.X.shape[0]
    G = session.G
    steps = max(-(-c // bs) for c in counts)
    loss_sum = metric_sum = 0.0
    last = time.perf_counter()
    for k in range(steps):
        b0 = k * bs
        rows = max(0, min(bs, n_local - b0))
        rows_g = sum(_rows_at(counts, b0, bs))
        scale = km.loss_scale(model._loss_code, rows_g, model.n_outputs)
        step = session.step_done + 1
        # G (host or device, see engine.grad_buffer) = [gradient | loss, metric, interrupt]
        eng.batch_grads(session, perm, b0, rows, scale, step, G,
                        flag=1.0 if session.interrupt.requested else 0.0)
        eng.synchronize()
        coll.sum_(G)
        batch_loss, batch_metric, interrupted = (float(v) for v in eng.step_scalars(G))
        if not math.isfinite(batch_loss):
            session.bad_loss = batch_loss
            return None
        lr = float(chunk_rates(plan.optimizer, step_schedule, step, 1)[0])
        eng.apply_update(session, G, lr, step, plan.clip_norm)
        session.step_done = step
        session.last_lr = lr
        loss_sum += batch_loss * rows_g
        metric_sum += batch_metric
        if interrupted:
            # Some rank was interrupted: the flag travelled in the same Allreduce, so every
            # rank stops after this same step and none waits alone in the next one.
            raise KeyboardInterrupt
        now = time.perf_counter()
        if now - last > CHUNK_SECONDS:
            last = now
            mean = loss_sum / max(1, sum(min(c, b0 + bs) for c in counts))
            progress.chunk(min(n_local, b0 + bs), mean)
            for cb in callbacks:
                cb.on_chunk_end(k, {"loss": mean})
    return loss_sum, metric_sum, sum(counts)


def _epoch_local_sgd(strategy, model, plan, session, perm, callbacks, progress,
                     step_schedule):
    coll, eng, bs, k = strategy.coll, model._engine, plan.batch_size, strategy.sync_every
    n_local = plan.X.shape[0]
    my_batches = -(-n_local // bs)
    steps = max(-(-c // bs) for c in strategy.shard_sizes)
    out = np.empty((k, 2), dtype=np.float64)
    acc = np.zeros(2, dtype=np.float64)          # local [loss * rows, metric]
    for s0 in range(0, steps, k):
        nb = max(0, min(k, my_batches - s0))
        if nb:
            start, stop = s0 * bs, min(n_local, (s0 + nb) * bs)
            lrs = chunk_rates(plan.optimizer, step_schedule, session.step_done + 1, nb)
            done = eng.run_chunk(session, perm, start, stop, lrs, session.step_done,
                                 plan.clip_norm, out[:nb])
            if done < nb:
                session.bad_loss = float(out[done, 0])
                bad = np.array([1.0])
            else:
                bad = np.array([0.0])
                acc += [out[:nb, 0] @ batch_rows(start, stop, bs, nb), out[:nb, 1].sum()]
            session.step_done += done
            session.last_lr = float(lrs[max(done - 1, 0)])
        else:
            bad = np.array([0.0])
        coll.sum_(bad)
        if bad[0]:
            return None
        # Average the parameters: one Allreduce, then the same division on every rank.
        params = eng.param_buffer(session, strategy.device_buffers)
        eng.synchronize()
        coll.sum_(params)
        eng.set_param_mean(session, params, coll.size)
        mean = acc[0] / max(1, min(n_local, (s0 + k) * bs))
        progress.chunk(min(n_local, (s0 + k) * bs), mean)
        for cb in callbacks:
            cb.on_chunk_end(s0 // k + 1, {"loss": mean})
    coll.sum_(acc)
    return acc[0], acc[1], sum(strategy.shard_sizes)


def cost_model(n_params, batch_per_rank, flops_per_s, n_ranks, link_gbit_s, latency_s=5e-6,
               bytes_per_param=4, flops_per_sample=None):
    """Seconds per step: (compute, allreduce) for a ring allreduce of the flat gradient.

    compute = 6 * n_params * batch / flops_per_s (about 6 FLOPs per weight per sample);
    allreduce = 2 (N-1)/N * n_params * bytes / bandwidth + 2 (N-1) * latency.
    """
    fps = flops_per_sample or 6.0 * n_params
    compute = fps * batch_per_rank / flops_per_s
    bw = link_gbit_s * 1e9 / 8
    comm = 2 * (n_ranks - 1) / n_ranks * n_params * bytes_per_param / bw \
        + 2 * (n_ranks - 1) * latency_s
    return compute, comm


def crossover_batch(n_params, flops_per_s, n_ranks, link_gbit_s, **kw):
    """Per-rank batch at which compute time equals allreduce time."""
    compute1, comm = cost_model(n_params, 1, flops_per_s, n_ranks, link_gbit_s, **kw)
    return comm / compute1


__all__ = ["CUDA_AWARE_ENV", "Collective", "DistributedError", "cost_model",
           "crossover_batch", "cuda_aware", "cuda_aware_setting", "device_buffers"]
