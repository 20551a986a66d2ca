"""The CUDA engine: the engine interface with device-resident buffers.

It launches the kernels of ``fastbp.kernels.cuda`` (layer by layer) and
``fastbp.kernels.cuda_fused`` (the whole network in one kernel where its widths fit, the
size rule ``fused_tile_rows``); every launch of a chunk is queued without waiting, and the
host reads back only the per-batch [loss, metric] rows. X, Y, the row weights, parameters,
optimizer state and row buffers are uploaded once per fit; the permutation once per epoch.
The optimizer's per-step coefficients come from kernels.math.optimizer_coefficients, on
the host, so the rule is the CPU kernels' own.
"""
from dataclasses import dataclass

import numpy as np
from numba import config, cuda

from ..kernels import cuda_fused
from ..kernels import cuda as kc
from ..kernels import math as m
from ..kernels.cuda import (BLOCK_ROWS, FLAT_MAX_BLOCKS, FLAT_THREADS, FUSED_INFER_BLOCKS,
                            FUSED_THREADS, GEMM_BLOCK, INFER_BLOCK_BYTES, ROW_THREADS, TILE,
                            cdiv, cooperative_blocks, divide_vector, fused_forward_bytes,
                            fused_forward_rows, fused_slots, fused_tile_bytes, fused_tile_rows,
                            grad_sq_sum, kernels_for, reset_chunk, step_buffer_tail, update)
from ..kernels.cuda_fused import fused_reduce
from . import cuda_members
from .base import Engine, FitSession


# Inference keeps its output buffer on the device between calls up to this size; a larger
# one (a call with millions of rows) is freed after its call.
KEEP_INFER_BYTES = 16 * 2 ** 20


def signatures(dtype):
    """{name: (kernel, argument types)} of every kernel as the engine launches it.

    Used to compile ahead of time (``cuda.compile_ptx`` needs no GPU) and so to type-check
    the kernels for the real target, which the simulator does not do.
    """
    from numba import types as nt
    ft = nt.float32 if np.dtype(dtype) == np.float32 else nt.float64
    i64, f64 = nt.int64, nt.float64
    F1, F2 = nt.Array(ft, 1, "C"), nt.Array(ft, 2, "C")
    I1, I2 = nt.Array(i64, 1, "C"), nt.Array(i64, 2, "C")
    F3 = nt.Array(ft, 3, "C")
    D1, D2, D3 = nt.Array(f64, 1, "C"), nt.Array(f64, 2, "C"), nt.Array(f64, 3, "C")
    k = kernels_for(dtype)
    f = cuda_fused.kernels_for(dtype)
    return {
        "dense_forward": (k["dense_forward"], (F2, I1, i64, i64, i64, i64, i64, F1, i64, F2, F2,
                                               i64, i64, f64, i64, i64, i64, I1)),
        "dense_input_delta": (k["dense_input_delta"], (F2, i64, i64, i64, F1, i64, F2, F2, i64,
                                                       f64, i64, i64, i64, F2, I1)),
        "dense_weight_grad": (k["dense_weight_grad"], (F2, I1, i64, i64, i64, i64, i64, F2, F1,
                                                       i64, i64, I1)),
        "output_loss": (k["output_loss"], (F2, F2, D1, I1, i64, i64, i64, i64, i64, f64, F2,
                                           D2, i64, I1)),
        "output_activation": (k["output_activation"], (F2, F2, i64, i64, i64)),
        "update": (update, (i64, F1, F1, F2, i64, I2, i64, D2, i64, f64, D1, D2, i64, I1)),
        "grad_sq_sum": (grad_sq_sum, (F1, I2, i64, D1, i64, I1)),
        "reset_chunk": (reset_chunk, (D2, D1, I1)),
        "step_buffer_tail": (step_buffer_tail, (F1, i64, D2, f64, i64)),
        "divide_vector": (divide_vector, (F1, f64)),
        "fused_train_chunk": (f["fused_train_chunk"], (
            F2, F2, D1, I1, i64, i64, i64, F1, F1, F2, D2, I1, I1, I1, D1, I1, i64, i64, i64,
            i64, i64, i64, F2, i64, I2, i64, D2, f64, D2, I1)),
        "fused_members_chunk": (f["fused_members_chunk"], (
            F2, F2, D2, I1, i64, i64, i64, F2, F2, F3, D3, I1, I1, I1, D1, I1, i64, i64, I1,
            I1, i64, i64, F3, i64, I2, i64, D3, f64, D3, I1, I1)),
        "fused_batch_grads": (f["fused_batch_grads"], (
            F2, F2, D1, I1, i64, i64, f64, F1, F2, D2, I1, I1, I1, D1, I1, i64, i64, i64, i64,
            i64, I1)),
        "fused_forward": (f["fused_forward"], (F2, i64, F1, I1, I1, I1, i64, i64, i64, i64,
                                               F2)),
        "fused_reduce": (cuda_fused.fused_reduce, (F2, D2, i64, F1, I2, i64, D2, i64, I1)),
    }


# -------------------------------------------------------------------------- launches

def _gemm_grid(n_cols, n_rows):
    """Grid and block of a GEMM kernel: one block per GEMM_BLOCK x GEMM_BLOCK outputs."""
    return (cdiv(n_cols, GEMM_BLOCK), cdiv(n_rows, GEMM_BLOCK)), (TILE, TILE)


def _flat_grid(n):
    return min(FLAT_MAX_BLOCKS, max(1, cdiv(n, FLAT_THREADS))), FLAT_THREADS


def _on_device(a):
    """A host array uploaded; a device array (shared_data's) as it is."""
    if isinstance(a, np.ndarray):
        return cuda.to_device(np.ascontiguousarray(a))
    return a


class RowBuffers:
    """Device Z, A and D buffers of ``rows`` rows for layers 1..n_layers (index = layer)."""

    def __init__(self, sizes, rows, dtype, n_layers=None, deltas=True):
        n_layers = len(sizes) - 1 if n_layers is None else n_layers
        self.rows = int(rows)

        def per_layer():
            return [None] + [cuda.device_array((self.rows, int(sizes[l])), dtype)
                             for l in range(1, n_layers + 1)]
        self.Z = per_layer()
        self.A = per_layer()
        self.D = per_layer() if deltas else None     # inference needs no deltas


@dataclass(eq=False)
class FusedBuffers:
    """The fused path's device buffers of one fit (see kernels.cuda_fused)."""
    tile_rows: int
    n_slots: int
    smem: int
    sizes: object
    poff: object
    acts: object
    drop: object
    trainable: object
    part: object
    rates: object
    partial_shape: tuple
    dtype: object
    blocks: object = None
    _partials: object = None

    @property
    def partials(self):
        """The blocks' partial gradients (n_slots, n_params), made on first use: an
        ensemble's members that train in the same launches use shared ones instead
        (engines.cuda_members), and K copies of up to FUSED_PARTIAL_BYTES would add up."""
        if self._partials is None:
            self._partials = cuda.device_array(self.partial_shape, self.dtype)
        return self._partials


@dataclass(eq=False)
class CudaFitSession(FitSession):
    """What one fit keeps on the device between chunks (X, Y and row_w are device arrays
    here)."""
    n: int = 0
    n_trainable: int = 0
    params: object = None
    grads: object = None
    dev_state: object = None
    hyper_host: object = None
    slots: int = 0
    ranges: object = None
    ranges_host: object = None
    bufs: object = None
    perm: object = None
    perm_host: object = None
    out: object = None
    sq: object = None
    status: object = None
    active: bool = True
    fused: object = None
    step_out: object = None       # the data-parallel step's buffers, made on first use
    step_sq: object = None
    step_status: object = None
    stacks: object = None         # the ensemble's MemberStacks this session's arrays are in


class CudaEngine(Engine):
    """The engine interface with device-resident buffers."""

    name = "cuda"

    def __init__(self, net):
        super().__init__(net)
        self._k = kernels_for(net.dtype)
        self._f = cuda_fused.kernels_for(net.dtype)
        self._no_stop = cuda.to_device(np.zeros(1, dtype=np.int64))
        self._no_perm = cuda.to_device(np.zeros(1, dtype=np.int64))
        self._active = None
        self._resident = None   # inference's device copy of the parameters, see _params_on_device
        self._buffers = {}      # inference's device buffers and tables, by key

    # -- the network, batch by batch, queued on the default stream -----------------------
    def _forward_layers(self, d_params, X, perm, gather, b0, rows, bufs, n_layers, drop,
                        seed, step, status):
        m_, lay, k = self.net, self.net.layout, self._k
        L = lay.n_layers
        sizes = lay.sizes
        for l in range(n_layers):
            n_in, n_out = int(sizes[l]), int(sizes[l + 1])
            if l == 0:
                Ain, g, o = X, gather, b0
            else:
                Ain, g, o = bufs.A[l], 0, 0
            grid, block = _gemm_grid(n_out, rows)
            k["dense_forward"][grid, block](
                Ain, perm, g, o, rows, n_in, n_out, d_params, int(lay.poff[l]), bufs.Z[l + 1],
                bufs.A[l + 1], int(m_.acts[l]), 0 if l == L - 1 else 1, float(drop[l]),
                seed, step, l, status)

    def _backward_layers(self, d_params, X, perm, gather, b0, rows, bufs, grads, trainable,
                         lowest, drop, seed, step, accumulate, status):
        m_, lay, k = self.net, self.net.layout, self._k
        sizes = lay.sizes
        for l in range(lay.n_layers - 1, lowest - 1, -1):
            n_in, n_out = int(sizes[l]), int(sizes[l + 1])
            if l == 0:
                Ain, g, o = X, gather, b0
            else:
                Ain, g, o = bufs.A[l], 0, 0
            if trainable[l]:
                grid, block = _gemm_grid(n_out, n_in)
                k["dense_weight_grad"][grid, block](
                    Ain, perm, g, o, rows, n_in, n_out, bufs.D[l + 1], grads,
                    int(lay.poff[l]), accumulate, status)
            if l > lowest:
                grid, block = _gemm_grid(n_in, rows)
                k["dense_input_delta"][grid, block](
                    bufs.D[l + 1], rows, n_in, n_out, d_params, int(lay.poff[l]), bufs.Z[l],
                    bufs.A[l], int(m_.acts[l - 1]), float(drop[l - 1]), seed, step, l - 1,
                    bufs.D[l], status)

    def _output_loss(self, bufs, Y, row_w, perm, gather, b0, rows, scale, out, k_out, status):
        m_ = self.net
        L = m_.layout.n_layers
        self._k["output_loss"][cdiv(rows, ROW_THREADS), ROW_THREADS](
            bufs.Z[L], Y, row_w, perm, gather, b0, rows, int(m_.layout.sizes[L]),
            int(m_.loss), scale, bufs.D[L], out, k_out, status)

    # -- training ---------------------------------------------------------------------
    def begin_fit(self, X, Y, row_w, optimizer, state, batch_size, dropout_seed):
        """Upload data, parameters and optimizer state once (X and Y may be on the device
        already, ``shared_data``); ``state`` is written back by ``end_fit``."""
        m_ = self.net
        lay = m_.layout
        n = X.shape[0]
        trainable = m_.trainable.astype(bool)
        ranges = lay.trainable_spans(trainable)
        n_slots = state.shape[0]
        dev_state = state if n_slots else np.zeros((1, lay.n_params), dtype=m_.dtype)
        cap = cdiv(n, batch_size)          # batches of one epoch: the largest chunk
        s = CudaFitSession(
            batch_size=int(batch_size), n=n, optimizer=optimizer, state=state,
            trainable=trainable, lowest=int(np.flatnonzero(trainable)[0]),
            n_trainable=int((ranges[:, 1] - ranges[:, 0]).sum()), seed=int(dropout_seed),
            X=_on_device(X), Y=_on_device(Y),
            row_w=cuda.to_device(np.ascontiguousarray(row_w, dtype=np.float64)),
            params=cuda.to_device(m_.params), grads=cuda.device_array(lay.n_params, m_.dtype),
            dev_state=cuda.to_device(np.ascontiguousarray(dev_state)),
            hyper_host=optimizer.hyper(),
            slots=m.optimizer_slots(optimizer.code, optimizer.hyper()),
            ranges=cuda.to_device(ranges), ranges_host=ranges,
            bufs=RowBuffers(lay.sizes, min(batch_size, n), m_.dtype),
            perm=cuda.device_array(n, np.int64), perm_host=None,
            out=cuda.device_array((cap, 2), np.float64), sq=cuda.device_array(cap, np.float64),
            status=cuda.to_device(np.zeros(1, np.int64)))
        s.fused = self._begin_fused(s)
        self._active = s
        return s

    def _begin_fused(self, s):
        """The fused path's buffers when the size rule picks it for this fit, else None."""
        m_ = self.net
        lay = m_.layout
        bs = min(s.batch_size, s.n)
        rows = fused_tile_rows(lay.sizes, m_.dtype, bs)
        if not rows:
            return None
        n_slots = fused_slots(lay.sizes, m_.dtype.itemsize, bs, rows)
        return FusedBuffers(
            tile_rows=rows, n_slots=n_slots,
            smem=fused_tile_bytes(lay.sizes, rows, m_.dtype.itemsize),
            sizes=cuda.to_device(lay.sizes.astype(np.int64)),
            poff=cuda.to_device(lay.poff.astype(np.int64)),
            acts=cuda.to_device(np.asarray(m_.acts, dtype=np.int64)),
            drop=cuda.to_device(np.asarray(m_.drop, dtype=np.float64)),
            trainable=cuda.to_device(s.trainable.astype(np.int64)),
            partial_shape=(n_slots, lay.n_params), dtype=m_.dtype,
            part=cuda.device_array((n_slots, 3), np.float64),
            rates=cuda.device_array((s.out.shape[0], m.N_COEFFS), np.float64))

    def _fused_blocks(self, f, args):
        """Blocks of the cooperative chunk kernel, or 0 where it cannot run: the grid must
        fit on the device at once (the occupancy API says how many blocks do)."""
        if not kc.FUSED_PERSISTENT:      # read at each call: tests switch paths
            return 0
        if f.blocks is None:
            if config.ENABLE_CUDASIM:
                f.blocks = 1        # the simulator's grid sync only syncs one block
            else:
                f.blocks = min(f.n_slots, cooperative_blocks(self._f["fused_train_chunk"],
                                                             args, f.smem))
        return f.blocks

    def _fused_phase1(self, s, b0, rows, scale, step, status):
        """fused_batch_grads over as many blocks as the batch has tiles (at most n_slots);
        returns that count, the number of partials to reduce."""
        f = s.fused
        blocks = min(f.n_slots, cdiv(rows, f.tile_rows))
        self._f["fused_batch_grads"][blocks, FUSED_THREADS, 0, f.smem](
            s.X, s.Y, s.row_w, s.perm, b0, rows, float(scale), s.params, f.partials, f.part,
            f.sizes, f.poff, f.acts, f.drop, f.trainable, s.lowest, int(self.net.loss),
            s.seed, int(step), f.tile_rows, status)
        return blocks

    def _fused_chunk(self, s, start, stop, nb, lrs, step, clip):
        """run_chunk on the fused path: one cooperative launch for the chunk, or per batch
        fused_batch_grads + fused_reduce (+ grad_sq_sum) + update where that cannot run."""
        m_ = self.net
        f = s.fused
        opt = s.optimizer
        if f.rates.shape[0] < nb:
            f.rates = cuda.device_array((nb, m.N_COEFFS), np.float64)
        rates = self._coefficients(s, lrs, step, nb, f.rates.shape[0])
        f.rates.copy_to_device(rates)
        args = (s.X, s.Y, s.row_w, s.perm, start, stop, s.batch_size, s.params, s.grads,
                f.partials, f.part, f.sizes, f.poff, f.acts, f.drop, f.trainable, s.lowest,
                int(m_.loss), s.seed, int(step), f.tile_rows, opt.code, s.dev_state,
                s.slots, s.ranges, s.n_trainable, f.rates, clip, s.out, s.status)
        blocks = self._fused_blocks(f, args)
        if blocks:
            # Every batch row of out is written before the host reads it: no reset needed.
            self._f["fused_train_chunk"][blocks, FUSED_THREADS, 0, f.smem](*args)
            return
        reset_chunk[cdiv(max(nb, 1), FLAT_THREADS), FLAT_THREADS](s.out, s.sq, s.status)
        fgrid, fblock = _flat_grid(s.n_trainable)
        n_out = int(m_.layout.sizes[-1])
        for b in range(nb):
            b0 = start + b * s.batch_size
            rows = min(s.batch_size, stop - b0)
            t = int(step) + b + 1
            used = self._fused_phase1(s, b0, rows, m.loss_scale(m_.loss, rows, n_out),
                                      t, s.status)
            fused_reduce[fgrid, fblock](f.partials, f.part, used, s.grads, s.ranges,
                                        s.n_trainable, s.out, b, s.status)
            if clip > 0.0:
                grad_sq_sum[fgrid, fblock](s.grads, s.ranges, s.n_trainable, s.sq, b, s.status)
            update[fgrid, fblock](opt.code, s.params, s.grads, s.dev_state, s.slots, s.ranges,
                                  s.n_trainable, f.rates, b, clip, s.sq, s.out, b,
                                  s.status)

    def _upload_perm(self, s, perm):
        if s.perm_host is None or not np.array_equal(perm, s.perm_host):
            s.perm_host = np.array(perm, dtype=np.int64)
            s.perm.copy_to_device(s.perm_host)

    def run_chunk(self, s, perm, start, stop, lrs, step, clip_norm, out):
        """Batches of perm[start:stop]; out[k] = [loss, metric sum]; returns steps applied."""
        nb = cdiv(stop - start, s.batch_size)
        if nb > s.out.shape[0]:
            s.out = cuda.device_array((nb, 2), np.float64)
            s.sq = cuda.device_array(nb, np.float64)
        self._upload_perm(s, perm)
        clip = float(clip_norm or 0.0)
        if s.fused is not None:
            self._fused_chunk(s, start, stop, nb, lrs, step, clip)
        else:
            self._layer_chunk(s, start, stop, nb, lrs, step, clip)
        res = s.out[:nb].copy_to_host()
        out[:nb] = res
        bad = np.flatnonzero(~np.isfinite(res[:, 0]))
        return int(bad[0]) if bad.size else nb

    def _layer_chunk(self, s, start, stop, nb, lrs, step, clip):
        """run_chunk on the layer-by-layer path: about 3 launches per layer per batch."""
        m_ = self.net
        lay = m_.layout
        opt = s.optimizer
        bs = s.batch_size
        n_out = int(lay.sizes[-1])
        reset_chunk[cdiv(max(nb, 1), FLAT_THREADS), FLAT_THREADS](s.out, s.sq, s.status)
        fgrid, fblock = _flat_grid(s.n_trainable)
        coef = cuda.to_device(self._coefficients(s, lrs, step, nb, nb))
        for b in range(nb):
            b0 = start + b * bs
            rows = min(bs, stop - b0)
            t = int(step) + b + 1
            self._forward_layers(s.params, s.X, s.perm, 1, b0, rows, s.bufs, lay.n_layers,
                                 m_.drop, s.seed, t, s.status)
            self._output_loss(s.bufs, s.Y, s.row_w, s.perm, 1, b0, rows,
                              m.loss_scale(m_.loss, rows, n_out), s.out, b, s.status)
            self._backward_layers(s.params, s.X, s.perm, 1, b0, rows, s.bufs, s.grads,
                                  s.trainable, s.lowest, m_.drop, s.seed, t, 0, s.status)
            if clip > 0.0:
                grad_sq_sum[fgrid, fblock](s.grads, s.ranges, s.n_trainable, s.sq, b, s.status)
            update[fgrid, fblock](opt.code, s.params, s.grads, s.dev_state, s.slots, s.ranges,
                                  s.n_trainable, coef, b, clip, s.sq, s.out, b, s.status)

    # -- data-parallel steps (fastbp.distributed) -------------------------------------
    # With a CUDA-aware MPI the Allreduce buffers are device arrays: G's gradient part IS the
    # gradient buffer of the backward pass, so no gradient crosses PCIe; only [loss, metric,
    # interrupt flag] come back to the host. Otherwise G and the averaged parameters are
    # staged through host memory.
    def _step_buffers(self, s):
        if s.step_out is None:
            s.step_out = cuda.device_array((1, 2), np.float64)
            s.step_sq = cuda.device_array(1, np.float64)
            s.step_status = cuda.device_array(1, np.int64)
        reset_chunk[1, FLAT_THREADS](s.step_out, s.step_sq, s.step_status)

    def grad_buffer(self, s, on_device=False):
        """[gradient | loss, metric, interrupt flag]: the buffer of the per-step Allreduce, in
        host memory (staged) or on the device (CUDA-aware MPI)."""
        P = self.net.layout.n_params
        G = np.zeros(P + 3, dtype=self.net.dtype)
        if not on_device:
            return G
        G = cuda.to_device(G)       # zeros: frozen layers' spans are never written
        s.grads = G[:P]             # the backward pass writes the gradient straight into G
        return G

    def batch_grads(self, s, perm, b0, rows, scale, step, G, flag=None):
        """Gradient of batch perm[b0:b0+rows] into G[:P] (trainable spans only), its scaled
        loss sum into G[P], metric sum into G[P+1] and ``flag`` (if given) into G[P+2]; as
        kernels.cpu.batch_grads. G is a host array (the gradient is copied out) or the device
        buffer of ``grad_buffer`` (filled on the device, nothing copied)."""
        m_ = self.net
        lay = m_.layout
        P = lay.n_params
        self._step_buffers(s)       # zero loss and metric: a rank without rows adds zeros
        if rows:
            self._upload_perm(s, perm)
            if s.fused is not None:
                used = self._fused_phase1(s, b0, rows, scale, step, s.step_status)
                fgrid, fblock = _flat_grid(s.n_trainable)
                fused_reduce[fgrid, fblock](s.fused.partials, s.fused.part, used, s.grads,
                                            s.ranges, s.n_trainable, s.step_out, 0,
                                            s.step_status)
            else:
                self._forward_layers(s.params, s.X, s.perm, 1, b0, rows, s.bufs, lay.n_layers,
                                     m_.drop, s.seed, int(step), s.step_status)
                self._output_loss(s.bufs, s.Y, s.row_w, s.perm, 1, b0, rows, float(scale),
                                  s.step_out, 0, s.step_status)
                self._backward_layers(s.params, s.X, s.perm, 1, b0, rows, s.bufs, s.grads,
                                      s.trainable, s.lowest, m_.drop, s.seed, int(step), 0,
                                      s.step_status)
        if not isinstance(G, np.ndarray):
            zero = 0 if rows else 1
            grid, block = _flat_grid(P) if zero else (1, 1)
            step_buffer_tail[grid, block](G, P, s.step_out, float(flag or 0.0), zero)
            return
        g = s.grads.copy_to_host() if rows else None
        for a, b in s.ranges_host:
            G[a:b] = g[a:b] if rows else 0
        G[P], G[P + 1] = s.step_out.copy_to_host()[0]
        if flag is not None:
            G[P + 2] = flag

    @staticmethod
    def synchronize():
        """Wait for the kernels and copies queued on the default stream.

        Kernel launches return before the kernels run, and MPI knows nothing of CUDA
        streams: handed a device pointer, it reads and writes the memory at once (from its
        own streams or the network card), so the kernels that fill the buffer must have
        finished first. Once the blocking Allreduce returns, the buffer holds the sum, and
        kernels queued after it read the reduced values."""
        cuda.default_stream().synchronize()

    def step_scalars(self, G):
        """[loss, metric, flag] of the (reduced) G, on the host: 3 values copied back."""
        tail = G[self.net.layout.n_params:]
        return tail if isinstance(tail, np.ndarray) else tail.copy_to_host()

    def apply_update(self, s, G, lr, step, clip_norm):
        """One optimizer step from the flat gradient G[:P] (after an allreduce)."""
        P = self.net.layout.n_params
        opt = s.optimizer
        if isinstance(G, np.ndarray):
            s.grads.copy_to_device(np.ascontiguousarray(G[:P]))
        # else s.grads is G[:P] on the device, already reduced in place
        self._step_buffers(s)       # a zero loss row: the caller has checked the loss
        fgrid, fblock = _flat_grid(s.n_trainable)
        clip = float(clip_norm or 0.0)
        if clip > 0.0:
            grad_sq_sum[fgrid, fblock](s.grads, s.ranges, s.n_trainable, s.step_sq, 0,
                                       s.step_status)
        coef = cuda.to_device(self._coefficients(s, [lr], int(step) - 1, 1, 1))
        update[fgrid, fblock](opt.code, s.params, s.grads, s.dev_state, s.slots, s.ranges,
                              s.n_trainable, coef, 0, clip, s.step_sq, s.step_out, 0,
                              s.step_status)

    def param_buffer(self, s, on_device=False):
        """The parameters to sum across ranks (local SGD): the device vector itself, or a
        host copy of it (staged)."""
        if on_device:
            return s.params
        self.sync_params(s)
        return self.net.params

    def set_param_mean(self, s, params, n_ranks):
        """``params`` holds the sum over ``n_ranks`` ranks: make it their mean (a host copy
        goes back to the device)."""
        if isinstance(params, np.ndarray):
            params /= n_ranks
            s.params.copy_to_device(params)
        else:
            grid, block = _flat_grid(params.shape[0])
            divide_vector[grid, block](params, float(n_ranks))

    @staticmethod
    def _coefficients(s, lrs, step, nb, rows):
        """(rows, N_COEFFS): the optimizer's coefficients of batches 0..nb-1 after ``step``
        steps, at learning rates ``lrs`` (kernels.math.optimizer_coefficients, the rule
        the CPU kernels compile)."""
        coef = np.zeros((rows, m.N_COEFFS), dtype=np.float64)
        for b in range(nb):
            coef[b] = m.optimizer_coefficients(s.optimizer.code, s.hyper_host, float(lrs[b]),
                                               int(step) + b + 1)
        return coef

    # -- ensembles --------------------------------------------------------------------
    def shared_data(self, X, Y):
        """One upload of X and Y for every member of an ensemble."""
        return _on_device(X), _on_device(Y)

    def train_together(self, jobs):
        """The members in the same launches (engines.cuda_members), where they can."""
        return cuda_members.train_members(jobs)

    def end_fit(self, s):
        """Copy parameters and optimizer state back to the host (safe to call twice)."""
        self.net.params[:] = s.params.copy_to_host()
        if s.state.shape[0]:
            s.state[:] = s.dev_state.copy_to_host()
        s.active = False
        if self._active is s:
            self._active = None

    def sync_params(self, s):
        """Make model._params current."""
        self.net.params[:] = s.params.copy_to_host()

    def snapshot(self, s):
        snap = cuda.device_array_like(s.params)
        snap.copy_to_device(s.params)
        return snap

    def restore(self, s, snapshot):
        s.params.copy_to_device(snapshot)
        self.net.params[:] = snapshot.copy_to_host()

    def params_to_host(self):
        """During a fit the device holds the current parameters: bring them to the host."""
        s = self._active
        if s is not None and s.active:
            self.sync_params(s)

    def params_changed(self):
        """set_weights/reset during a fit (a callback): the device copy follows the host."""
        s = self._active
        if s is not None and s.active:
            s.params.copy_to_device(self.net.params)

    # -- inference and gradients ------------------------------------------------------
    # The kernels have no NaN/inf check of their own: MLP._forward checks X on the host
    # before calling (``check`` is always False here).
    checks_in_pass = False

    def _params_on_device(self):
        """The parameters on the device for inference, uploaded again only when the host's
        differ from the copy last uploaded: comparing on the host costs far less than a
        transfer, and it sees every writer (set_weights, a fit, a compiled_trainer)."""
        params = self.net.params
        s = self._active
        if s is not None and s.active:
            return s.params                 # mid-fit (a callback predicts): the live copy
        if self._resident is None or not np.array_equal(self._resident[0], params):
            self._resident = (params.copy(), cuda.to_device(params))
        return self._resident[1]

    def _buffer(self, key, make):
        """An inference table kept between calls (``make`` builds it once)."""
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = make()
        return buf

    def forward(self, X, n_layers, pre_activation, out, check=False):
        m_ = self.net
        lay = m_.layout
        L = lay.n_layers
        n = X.shape[0]
        if n == 0:
            return out
        d_params = self._params_on_device()
        sizes = lay.sizes[:n_layers + 1]
        tile = fused_forward_rows(sizes, m_.dtype, n)
        if tile:
            return self._fused_forward(X, d_params, n_layers, pre_activation, out, tile)
        rows_cap = min(BLOCK_ROWS, n)
        bufs = RowBuffers(lay.sizes, rows_cap, m_.dtype, n_layers, deltas=False)
        no_drop = np.zeros(L)
        for b0 in range(0, n, rows_cap):
            rows = min(rows_cap, n - b0)
            d_X = cuda.to_device(np.ascontiguousarray(X[b0:b0 + rows]))
            self._forward_layers(d_params, d_X, self._no_perm, 0, 0, rows, bufs, n_layers,
                                 no_drop, 0, 0, self._no_stop)
            if pre_activation:
                src = bufs.Z[n_layers]
            else:
                src = bufs.A[n_layers]
                if n_layers == L:
                    self._k["output_activation"][cdiv(rows, ROW_THREADS), ROW_THREADS](
                        bufs.Z[L], bufs.A[L], rows, int(lay.sizes[L]), int(m_.loss))
            out[b0:b0 + rows] = src[:rows].copy_to_host()
        return out

    def _fused_forward(self, X, d_params, n_layers, pre_activation, out, tile):
        """forward() by ``fused_forward``: one launch per INFER_BLOCK_BYTES of input, no
        intermediate layer in device memory."""
        m_ = self.net
        lay = m_.layout
        n = X.shape[0]
        sizes = lay.sizes[:n_layers + 1]
        smem = fused_forward_bytes(sizes, tile, m_.dtype.itemsize)
        per_row = (int(sizes[0]) + int(sizes[-1])) * m_.dtype.itemsize
        block = max(tile, min(n, INFER_BLOCK_BYTES // per_row))
        d_sizes = self._buffer("sizes", lambda: cuda.to_device(lay.sizes.astype(np.int64)))
        d_poff = self._buffer("poff", lambda: cuda.to_device(lay.poff.astype(np.int64)))
        d_acts = self._buffer("acts", lambda: cuda.to_device(np.asarray(m_.acts,
                                                                        dtype=np.int64)))
        shape = (min(block, n), int(sizes[-1]))
        d_out = self._buffers.get("out")
        if d_out is None or d_out.shape[0] < shape[0] or d_out.shape[1] != shape[1]:
            d_out = cuda.device_array(shape, m_.dtype)
            if d_out.nbytes <= KEEP_INFER_BYTES:    # a small one is kept for the next call
                self._buffers["out"] = d_out
        for b0 in range(0, n, block):
            rows = min(block, n - b0)
            d_X = cuda.to_device(np.ascontiguousarray(X[b0:b0 + rows]))
            grid = min(FUSED_INFER_BLOCKS, cdiv(rows, tile))
            self._f["fused_forward"][grid, FUSED_THREADS, 0, smem](
                d_X, rows, d_params, d_sizes, d_poff, d_acts, n_layers, int(pre_activation),
                int(m_.loss), tile, d_out)
            out[b0:b0 + rows] = d_out[:rows].copy_to_host()
        return out

    def loss_and_grads(self, X, Y, row_w):
        """Mean loss over all rows of X and the gradient of every layer; no update."""
        m_ = self.net
        lay = m_.layout
        L = lay.n_layers
        n = X.shape[0]
        d_params = cuda.to_device(m_.params)
        d_X = cuda.to_device(np.ascontiguousarray(X))
        d_Y = cuda.to_device(np.ascontiguousarray(Y))
        d_w = cuda.to_device(np.ascontiguousarray(row_w, dtype=np.float64))
        grads = cuda.device_array(lay.n_params, m_.dtype)
        d_out = cuda.device_array((1, 2), np.float64)
        d_sq = cuda.device_array(1, np.float64)
        status = cuda.device_array(1, np.int64)
        reset_chunk[1, FLAT_THREADS](d_out, d_sq, status)
        every = np.ones(L, dtype=bool)
        no_drop = np.zeros(L)
        rows_cap = min(BLOCK_ROWS, n)
        bufs = RowBuffers(lay.sizes, rows_cap, m_.dtype)
        scale = m.loss_scale(m_.loss, n, int(lay.sizes[L]))
        for b0 in range(0, n, rows_cap):
            rows = min(rows_cap, n - b0)
            self._forward_layers(d_params, d_X, self._no_perm, 0, b0, rows, bufs, L, no_drop,
                                 0, 0, status)
            self._output_loss(bufs, d_Y, d_w, self._no_perm, 0, b0, rows, scale, d_out, 0,
                              status)
            self._backward_layers(d_params, d_X, self._no_perm, 0, b0, rows, bufs, grads,
                                  every, 0, no_drop, 0, 0, 1 if b0 else 0, status)
        return float(d_out.copy_to_host()[0, 0]), grads.copy_to_host()
