"""CUDA kernels (``@cuda.jit``) and the device-buffer glue of the CUDA engine.

Same layout and semantics as ``kernels.cpu`` (see its docstring): one flat parameter vector
in which layer ``l``'s W (n_in x n_out, row-major) is followed by its bias, so the layer's
slab is one (n_in + 1, n_out) matrix ``[W; b]``. The kernels use that: the forward GEMM
multiplies ``[A, 1] @ [W; b]`` (bias for free) and the weight-gradient GEMM computes
``[A, 1]^T @ D``, whose last row (the column sums of D) is the bias gradient, straight into
the flat gradient. The GEMMs are register-blocked: each thread of a TILE x TILE block
accumulates GEMM_REG x GEMM_REG outputs from k-major shared tiles, and loads the next
tiles into registers while it computes on the current ones.

One optimizer step on the device is, per batch:

1. ``dense_forward`` per layer: tiled GEMM, epilogue bias + activation +
   dropout (the input layer reads its rows of X through the epoch's permutation);
2. ``output_loss``: softmax/sigmoid fused with the loss, the output delta, the per-row
   metric, and the batch's loss and metric sums (block reduction + one atomic per block);
3. per layer, top down: ``dense_weight_grad`` (trainable layers only) and
   ``dense_input_delta`` (down to the lowest trainable layer), GEMMs with the activation
   derivative and dropout mask fused into the delta epilogue;
4. ``grad_sq_sum`` when clipping; ``update``: one pass over the trainable parameters for
   every optimizer, which also refuses the step when the batch loss is not finite.

Networks whose widths all fit (``fused_tile_rows``, the size rule) train on the fully
fused path of ``kernels.cuda_fused`` instead: one cooperative kernel per chunk carries tiles
of rows through every layer in shared memory and applies the updates itself.

Every kernel of a chunk is queued without waiting; a non-finite loss sets a device flag
that makes the rest of the chunk's kernels return at once. The host reads back only the
per-batch [loss, metric] rows of a chunk. X, Y, the row weights, parameters, optimizer
state and row buffers are uploaded once per fit; the permutation once per epoch.

The scalar math (activations, losses, optimizer rules, dropout hash) comes from
``kernels.math`` compiled as CUDA device functions, so the masks and updates are those of
the CPU kernels.
"""
import math

import numpy as np
from numba import config, cuda

from . import math as m

# Tunables of the CUDA kernels.
TILE = 16               # a GEMM block is TILE x TILE threads
GEMM_REG = 4            # each computes GEMM_REG x GEMM_REG outputs, TILE apart, in registers
GEMM_BK = 16            # reduction depth of the GEMM's shared tiles
ROW_THREADS = 128       # threads per block of the row-wise kernels (power of two)
FLAT_THREADS = 256      # threads per block of the flat-vector kernels (power of two)
FLAT_MAX_BLOCKS = 1024  # grid-stride cap of the flat-vector kernels
BLOCK_ROWS = 65536      # rows per block of inference and of loss_and_grads

# The fully fused path (kernels.cuda_fused) and its size rule, ``fused_tile_rows``.
# Measured on an H100 (bench/gpu_compare.py, bench/results/README.md): the fused path beat
# the layer path 5.5x on [64, 64, 64, 64, 1] at batch 16384, and matched it (within noise,
# 0.95-1.13x) on [784, 256, 128, 10] at batch 256, where both are launch- and
# reduction-bound; tile rows between 16 and 36 changed nothing measurable on the narrow
# net. The width and batch thresholds below are those two points, not a sweep
# (``gpu_compare.py --sweep`` is the sweep to run). FUSED_THREADS and FUSED_ROW_BLOCK are
# compiled into the kernels (set them before kernels.cuda_fused is imported); the others
# are read at each fit.
FUSED_MAX_WIDTH = 128       # every width, input and output included, at most this...
FUSED_WIDE_MAX_BATCH = 256  # ...or batches of at most this many rows (launch-bound)
FUSED_THREADS = 128         # threads per block of the fused kernels (power of two)
FUSED_ROW_BLOCK = 4         # rows (weight-gradient: weight rows) per thread's register block
FUSED_MAX_TILE_ROWS = 64    # batch rows a block carries through the network at once
FUSED_MIN_TILE_ROWS = 8     # fewer rows per tile re-read the weights too often: layer path
FUSED_TARGET_BLOCKS = 128   # smaller tiles until a batch makes this many (~1 block per SM)
FUSED_SMEM_BYTES = 48 * 1024  # shared memory per block without the opt-in attribute
FUSED_MAX_BLOCKS = 1024     # blocks (= rows of gradient partials) of one batch, at most
FUSED_PARTIAL_BYTES = 256 * 2 ** 20  # device memory for the gradient partials, at most
FUSED_PATH = "auto"         # "auto": the size rule; "fused" or "layers" force a path
FUSED_PERSISTENT = True     # one cooperative kernel per chunk; False: 3 launches per batch
FUSED_INFER_TILE_ROWS = 128  # rows per tile of fused inference, at most
FUSED_INFER_BLOCKS = 1056   # blocks of fused inference, at most (8 per SM on an H100)
INFER_BLOCK_BYTES = 256 * 2 ** 20  # input rows uploaded at once by fused inference

if config.ENABLE_CUDASIM:
    # The simulator runs every thread as a Python thread: small blocks keep the tests fast,
    # and tiles smaller than the test layers exercise the multi-tile paths. Same code.
    TILE = 2                    # GEMM blocks of 4 x 4 outputs: widths 5-6 take two
    GEMM_REG = 2
    GEMM_BK = 4
    ROW_THREADS = 8
    FLAT_THREADS = 16
    FUSED_THREADS = 8
    FUSED_ROW_BLOCK = 2
    FUSED_MAX_TILE_ROWS = 2     # batches of 3-4 rows: two tiles, the second maybe partial
    FUSED_MIN_TILE_ROWS = 2
    FUSED_INFER_TILE_ROWS = 4   # several tiles per block, the last one partial
    FUSED_INFER_BLOCKS = 2
    INFER_BLOCK_BYTES = 512     # several uploads of the rows of the tests
# A GEMM block computes GEMM_BLOCK x GEMM_BLOCK outputs; its shared tiles are k-major
# (GEMM_BK, GEMM_BLOCK), padded by a column against bank conflicts of the transposing stores.
GEMM_BLOCK = TILE * GEMM_REG
GEMM_STRIDE = GEMM_BLOCK + 1
GEMM_LOADS = GEMM_BLOCK * GEMM_BK // (TILE * TILE)   # elements of each tile a thread loads
GEMM_KROWS = TILE * TILE // GEMM_BK     # rows of a k-contiguous tile loaded per pass
GEMM_KSTEP = TILE * TILE // GEMM_BLOCK  # k rows of a row-contiguous tile loaded per pass
assert GEMM_KROWS * GEMM_LOADS == GEMM_BLOCK and GEMM_KSTEP * GEMM_LOADS == GEMM_BK

_scalar = m.compile_with(cuda.jit(device=True), "cuda")
activate = _scalar.activate
activate_grad = _scalar.activate_grad
pointwise_loss = _scalar.pointwise_loss
pointwise_loss_grad = _scalar.pointwise_loss_grad
optimizer_step = _scalar.optimizer_step
dropout_keep = _scalar.dropout_keep
loss_scale = _scalar.loss_scale
row_metric = _scalar.row_metric
output_rows = _scalar.output_rows


# ------------------------------------------------------------------ device helpers

@cuda.jit(device=True)
def _src_row(perm, gather, b0, r):
    """Sample index of row ``r`` of the batch starting at ``b0``."""
    if gather != 0:
        return perm[b0 + r]
    return b0 + r


@cuda.jit(device=True)
def _flat_index(ranges, t):
    """The t-th trainable parameter: ``ranges`` holds (start, stop) of trainable spans."""
    for q in range(ranges.shape[0]):
        n = ranges[q, 1] - ranges[q, 0]
        if t < n:
            return ranges[q, 0] + t
        t -= n
    return -1


@cuda.jit(device=True)
def _zero(acc):
    for i in range(GEMM_REG):
        for j in range(GEMM_REG):
            acc[i, j] = 0


@cuda.jit(device=True)
def _tile_mac(As, Bs, acc, tx, ty):
    """acc[i, j] += sum_k As[k, ty + TILE*i] * Bs[k, tx + TILE*j] over one shared tile.

    The GEMM_REG loops have constant trip counts and unroll fully, so acc, a and b live in
    registers; unsigned indices spare the negative-index wrap-around code. The k loop is a
    while loop: numba's range loop hides its trip count from the unroller."""
    a = cuda.local.array(GEMM_REG, As.dtype)
    b = cuda.local.array(GEMM_REG, Bs.dtype)
    k = 0
    while k < GEMM_BK:
        ku = np.uint32(k)
        for i in range(GEMM_REG):
            a[i] = As[ku, np.uint32(ty + TILE * i)]
        for j in range(GEMM_REG):
            b[j] = Bs[ku, np.uint32(tx + TILE * j)]
        for i in range(GEMM_REG):
            for j in range(GEMM_REG):
                acc[i, j] += a[i] * b[j]
        k += 1


@cuda.jit(device=True)
def _store_acc(acc, C, r0, c0, tx, ty, n_rows, n_cols):
    """C[r0 + ty + TILE*i, c0 + tx + TILE*j] = acc[i, j] inside n_rows x n_cols: constant
    trip counts, so acc stays in registers."""
    for i in range(GEMM_REG):
        r = r0 + ty + i * TILE
        for j in range(GEMM_REG):
            c = c0 + tx + j * TILE
            if r < n_rows and c < n_cols:
                C[np.uint64(r), np.uint64(c)] = acc[i, j]


@cuda.jit(device=True)
def _block_sum(buf, t, n_threads):
    """Tree sum of ``buf[0:n_threads]`` (a power of two) in shared memory; result in buf[0]."""
    cuda.syncthreads()
    half = n_threads // 2
    while half > 0:
        if t < half:
            buf[t] += buf[t + half]
        cuda.syncthreads()
        half //= 2


# ------------------------------------------------------------------ dtype-free kernels

@cuda.jit
def reset_chunk(out, sq, status):
    """Zero the per-batch [loss, metric] rows, the squared-norm sums and the stop flag."""
    i = cuda.grid(1)
    if i < out.shape[0]:
        out[i, 0] = 0.0
        out[i, 1] = 0.0
        sq[i] = 0.0
    if i == 0:
        status[0] = 0


@cuda.jit
def grad_sq_sum(grads, ranges, n_total, sq, k, status):
    """sq[k] += sum of squared gradients of the trainable parameters (for clip_norm)."""
    if status[0] != 0:
        return
    buf = cuda.shared.array(FLAT_THREADS, np.float64)
    t = cuda.threadIdx.x
    acc = 0.0
    for j in range(cuda.grid(1), n_total, cuda.gridsize(1)):
        g = grads[_flat_index(ranges, j)]
        acc += g * g
    buf[t] = acc
    _block_sum(buf, t, FLAT_THREADS)
    if t == 0:
        cuda.atomic.add(sq, k, buf[0])


@cuda.jit(device=True)
def apply_update(opt, params, state, slots, i, g, coef, k):
    """Optimizer step of parameter ``i`` with gradient ``g`` (kernels.math's rule):
    coef[k] holds the step's coefficients (kernels.math.optimizer_coefficients, from the
    host), ``slots`` the state slots the rule uses; ``update`` and the fused chunk kernel
    share it."""
    if slots == 0:
        params[i], _, _ = optimizer_step(opt, params[i], g, g, g, coef[k, 0], coef[k, 1],
                                         coef[k, 2], coef[k, 3], coef[k, 4], coef[k, 5],
                                         coef[k, 6], coef[k, 7], coef[k, 8], coef[k, 9])
    elif slots == 1:
        params[i], state[0, i], _ = optimizer_step(
            opt, params[i], g, state[0, i], g, coef[k, 0], coef[k, 1], coef[k, 2],
            coef[k, 3], coef[k, 4], coef[k, 5], coef[k, 6], coef[k, 7], coef[k, 8],
            coef[k, 9])
    else:
        params[i], state[0, i], state[1, i] = optimizer_step(
            opt, params[i], g, state[0, i], state[1, i], coef[k, 0], coef[k, 1], coef[k, 2],
            coef[k, 3], coef[k, 4], coef[k, 5], coef[k, 6], coef[k, 7], coef[k, 8],
            coef[k, 9])


@cuda.jit
def update(opt, params, grads, state, slots, ranges, n_total, coef, ck, clip_norm, sq, out,
           k, status):
    """One optimizer step over the trainable parameters (kernels.math's rules), with the
    coefficients of coef[ck].

    Batch ``k``'s loss ``out[k, 0]`` is checked first: when it is not finite, the step is
    refused and ``status`` makes every later kernel of the chunk return at once.
    """
    if status[0] != 0:
        return
    if not math.isfinite(out[k, 0]):
        status[0] = k + 1
        return
    gscale = 1.0
    if clip_norm > 0.0:
        # torch.nn.utils.clip_grad_norm_: coef = max_norm / (norm + 1e-6), clamped to 1.
        gscale = min(1.0, clip_norm / (math.sqrt(sq[k]) + 1e-6))
    for j in range(cuda.grid(1), n_total, cuda.gridsize(1)):
        i = _flat_index(ranges, j)
        apply_update(opt, params, state, slots, i, grads[i] * gscale, coef, ck)


@cuda.jit
def step_buffer_tail(G, n_grad, out, flag, zero_grad):
    """The device Allreduce buffer of a data-parallel step (gradient already in G[:n_grad]):
    G[n_grad:] = [loss, metric] of out[0], then ``flag``; G[:n_grad] = 0 when ``zero_grad``
    (a rank with no rows for this step contributes zeros)."""
    i = cuda.grid(1)
    if zero_grad != 0:
        for j in range(i, n_grad, cuda.gridsize(1)):
            G[j] = 0.0
    if i == 0:
        G[n_grad] = out[0, 0]
        G[n_grad + 1] = out[0, 1]
        G[n_grad + 2] = flag


@cuda.jit
def divide_vector(a, d):
    """a /= d (the mean of parameters summed across ranks)."""
    for i in range(cuda.grid(1), a.shape[0], cuda.gridsize(1)):
        a[i] = a[i] / d


# ------------------------------------------------------------- dtype-specific kernels

def _build(ft):
    """The kernels that hold values of the model dtype ``ft`` in registers/shared memory."""

    @cuda.jit
    def dense_forward(Ain, perm, gather, b0, rows, n_in, n_out, params, off, Z, A, act,
                      hidden, rate, seed, step, layer, status):
        """Z = [Ain, 1] @ [W; b]; for hidden layers A = f(Z), with inverted dropout.

        Input row r is Ain[perm[b0 + r]] (gather) or Ain[b0 + r]. The output layer writes
        Z only: its activation is fused with the loss (or done by ``output_activation``).
        """
        if status[0] != 0:
            return
        As = cuda.shared.array((GEMM_BK, GEMM_STRIDE), ft)
        Ws = cuda.shared.array((GEMM_BK, GEMM_STRIDE), ft)
        acc = cuda.local.array((GEMM_REG, GEMM_REG), ft)
        src = cuda.local.array(GEMM_LOADS, np.int64)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        t = ty * TILE + tx
        r0 = cuda.blockIdx.y * GEMM_BLOCK
        c0 = cuda.blockIdx.x * GEMM_BLOCK
        ka, ra = t % GEMM_BK, t // GEMM_BK          # A tile: rows of BK contiguous k
        cw, kw = t % GEMM_BLOCK, t // GEMM_BLOCK    # W tile: k rows of BLOCK contiguous c
        for q in range(GEMM_LOADS):
            r = r0 + ra + q * GEMM_KROWS
            src[q] = _src_row(perm, gather, b0, r) if r < rows else -1
        pa = cuda.local.array(GEMM_LOADS, ft)
        pw = cuda.local.array(GEMM_LOADS, ft)
        _zero(acc)
        c = c0 + cw
        # Tile k0 goes from registers to shared memory while tile k0 + BK's global loads
        # are in flight (the first pass only loads).
        for k0 in range(-GEMM_BK, n_in + 1, GEMM_BK):
            if k0 >= 0:
                for q in range(GEMM_LOADS):
                    As[np.uint32(ka), np.uint32(ra + q * GEMM_KROWS)] = pa[q]
                    Ws[np.uint32(kw + q * GEMM_KSTEP), np.uint32(cw)] = pw[q]
                cuda.syncthreads()
            k = k0 + GEMM_BK + ka
            for q in range(GEMM_LOADS):
                a = ft(0.0)
                if src[q] >= 0:
                    if k < n_in:
                        a = Ain[np.uint64(src[q]), np.uint64(k)]
                    elif k == n_in:
                        a = ft(1.0)
                pa[q] = a
                kn = k0 + GEMM_BK + kw + q * GEMM_KSTEP
                w = ft(0.0)
                if kn <= n_in and c < n_out:
                    w = params[np.uint64(off + kn * n_out + c)]
                pw[q] = w
            if k0 >= 0:
                _tile_mac(As, Ws, acc, tx, ty)
                cuda.syncthreads()
        # Z first (constant indices into acc keep it in registers); the activation pass,
        # too big to unroll, then reads Z back.
        _store_acc(acc, Z, r0, c0, tx, ty, rows, n_out)
        if hidden == 0:
            return
        for i in range(GEMM_REG):
            r = r0 + ty + i * TILE
            for j in range(GEMM_REG):
                c = c0 + tx + j * TILE
                if r < rows and c < n_out:
                    ru, cu = np.uint64(r), np.uint64(c)
                    z = Z[ru, cu]
                    if rate == 0.0:
                        A[ru, cu] = activate(act, z)
                    elif dropout_keep(seed, step, layer, np.int64(r), np.int64(c), rate):
                        A[ru, cu] = activate(act, z) * (1.0 / (1.0 - rate))
                    else:
                        A[ru, cu] = ft(0.0)

    @cuda.jit
    def dense_input_delta(D, rows, n_in, n_out, params, off, Zp, Ap, act, rate, seed, step,
                          layer, Dp, status):
        """Dp = (D @ W^T) * f'(Zp), and the dropout mask/scale of layer ``layer`` (below)."""
        if status[0] != 0:
            return
        Ds = cuda.shared.array((GEMM_BK, GEMM_STRIDE), ft)
        Ws = cuda.shared.array((GEMM_BK, GEMM_STRIDE), ft)   # Ws[jj, ii] = W[i0 + ii, j0 + jj]
        acc = cuda.local.array((GEMM_REG, GEMM_REG), ft)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        t = ty * TILE + tx
        r0 = cuda.blockIdx.y * GEMM_BLOCK
        i0 = cuda.blockIdx.x * GEMM_BLOCK
        ka, ra = t % GEMM_BK, t // GEMM_BK    # both tiles: rows of BK contiguous j
        pd = cuda.local.array(GEMM_LOADS, ft)
        pw = cuda.local.array(GEMM_LOADS, ft)
        _zero(acc)
        for j0 in range(-GEMM_BK, n_out, GEMM_BK):     # prefetching as dense_forward
            if j0 >= 0:
                for q in range(GEMM_LOADS):
                    Ds[np.uint32(ka), np.uint32(ra + q * GEMM_KROWS)] = pd[q]
                    Ws[np.uint32(ka), np.uint32(ra + q * GEMM_KROWS)] = pw[q]
                cuda.syncthreads()
            j = j0 + GEMM_BK + ka
            for q in range(GEMM_LOADS):
                rr = ra + q * GEMM_KROWS
                d = ft(0.0)
                if r0 + rr < rows and j < n_out:
                    d = D[np.uint64(r0 + rr), np.uint64(j)]
                pd[q] = d
                w = ft(0.0)
                if i0 + rr < n_in and j < n_out:
                    w = params[np.uint64(off + (i0 + rr) * n_out + j)]
                pw[q] = w
            if j0 >= 0:
                _tile_mac(Ds, Ws, acc, tx, ty)
                cuda.syncthreads()
        # D @ W^T into Dp, then the derivative pass over Dp.
        _store_acc(acc, Dp, r0, i0, tx, ty, rows, n_in)
        for a in range(GEMM_REG):
            r = r0 + ty + a * TILE
            for b in range(GEMM_REG):
                i = i0 + tx + b * TILE
                if r < rows and i < n_in:
                    ru, iu = np.uint64(r), np.uint64(i)
                    z = Zp[ru, iu]
                    if rate == 0.0:
                        Dp[ru, iu] = Dp[ru, iu] * activate_grad(act, z, Ap[ru, iu])
                    elif dropout_keep(seed, step, layer, np.int64(r), np.int64(i), rate):
                        # Ap holds the dropped, rescaled value: recompute f(z).
                        Dp[ru, iu] = Dp[ru, iu] * (activate_grad(act, z, activate(act, z))
                                                   * (1.0 / (1.0 - rate)))
                    else:
                        Dp[ru, iu] = ft(0.0)

    @cuda.jit
    def dense_weight_grad(Ain, perm, gather, b0, rows, n_in, n_out, D, grads, off,
                          accumulate, status):
        """[gW; gb] = [Ain, 1]^T @ D into the layer's slab of ``grads`` (= or +=).

        The grid covers the n_in rows of W; the last row of blocks also sums the columns
        of D for gb (an extra row of blocks for gb alone would cost a whole wave when
        n_in is a multiple of GEMM_BLOCK)."""
        if status[0] != 0:
            return
        As = cuda.shared.array((GEMM_BK, GEMM_STRIDE), ft)   # As[rr, ii] = Ain[row r0+rr, i0+ii]
        Ds = cuda.shared.array((GEMM_BK, GEMM_STRIDE), ft)
        acc = cuda.local.array((GEMM_REG, GEMM_REG), ft)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        t = ty * TILE + tx
        i0 = cuda.blockIdx.y * GEMM_BLOCK     # input units
        c0 = cuda.blockIdx.x * GEMM_BLOCK
        bias = cuda.blockIdx.y == cuda.gridDim.y - 1 and t < GEMM_BLOCK
        gb = ft(0.0)
        cl, kl = t % GEMM_BLOCK, t // GEMM_BLOCK    # both tiles: batch rows of BLOCK columns
        ia = i0 + cl
        c = c0 + cl
        pa = cuda.local.array(GEMM_LOADS, ft)
        pd = cuda.local.array(GEMM_LOADS, ft)
        _zero(acc)
        for r0 in range(-GEMM_BK, rows, GEMM_BK):      # prefetching as dense_forward
            if r0 >= 0:
                for q in range(GEMM_LOADS):
                    As[np.uint32(kl + q * GEMM_KSTEP), np.uint32(cl)] = pa[q]
                    Ds[np.uint32(kl + q * GEMM_KSTEP), np.uint32(cl)] = pd[q]
                cuda.syncthreads()
            for q in range(GEMM_LOADS):
                r = r0 + GEMM_BK + kl + q * GEMM_KSTEP
                a = ft(0.0)
                d = ft(0.0)
                if r < rows:
                    if ia < n_in:
                        a = Ain[np.uint64(_src_row(perm, gather, b0, r)), np.uint64(ia)]
                    if c < n_out:
                        d = D[np.uint64(r), np.uint64(c)]
                pa[q] = a
                pd[q] = d
            if r0 >= 0:
                _tile_mac(As, Ds, acc, tx, ty)
                if bias:
                    for kk in range(GEMM_BK):
                        gb += Ds[np.uint32(kk), np.uint32(t)]
                cuda.syncthreads()
        for a in range(GEMM_REG):
            i = i0 + ty + a * TILE
            for b in range(GEMM_REG):
                cc = c0 + tx + b * TILE
                if i < n_in and cc < n_out:
                    o = np.uint64(off + i * n_out + cc)
                    if accumulate != 0:
                        grads[o] += acc[a, b]
                    else:
                        grads[o] = acc[a, b]
        if bias and c0 + t < n_out:
            o = np.uint64(off + n_in * n_out + c0 + t)
            if accumulate != 0:
                grads[o] += gb
            else:
                grads[o] = gb

    @cuda.jit(device=True)
    def row_loss_delta(Z, r, Y, s, w, n_out, loss, D):
        """Unweighted loss of row ``r`` of logits Z against target row ``s`` of Y; its
        delta, times ``w``, into row ``r`` of D (D may be Z: each element is read before
        it is written). Softmax (cross-entropy) and sigmoid (BCE) are fused with their
        losses, so the delta is w * (a - y) up to the loss's scale, as in
        kernels.cpu.loss_and_output_delta."""
        li = 0.0
        if loss == m.CROSS_ENTROPY:
            zmax = Z[r, 0]
            for j in range(1, n_out):
                zmax = max(zmax, Z[r, j])
            se = 0.0
            for j in range(n_out):
                se += math.exp(Z[r, j] - zmax)
            lse = zmax + math.log(se)
            inv = 1.0 / se
            ysum = 0.0
            for j in range(n_out):
                y = Y[s, j]
                if y != 0:
                    li -= y * (Z[r, j] - lse)
                ysum += y
            # d/dz of -sum y log softmax(z) is softmax(z) * sum(y) - y.
            for j in range(n_out):
                a = ft(ft(math.exp(Z[r, j] - zmax)) * inv)
                D[r, j] = w * (a * ysum - Y[s, j])
        else:
            for j in range(n_out):
                li += pointwise_loss(loss, Z[r, j], Y[s, j])
                D[r, j] = w * pointwise_loss_grad(loss, Z[r, j], Y[s, j])
        return li

    @cuda.jit
    def output_loss(Z, Y, row_w, perm, gather, b0, rows, n_out, loss, scale, D, out, k,
                    status):
        """Output delta of each row into D (``row_loss_delta``); out[k] += [scaled loss
        sum, metric sum]."""
        if status[0] != 0:
            return
        lbuf = cuda.shared.array(ROW_THREADS, np.float64)
        mbuf = cuda.shared.array(ROW_THREADS, np.float64)
        t = cuda.threadIdx.x
        r = cuda.blockIdx.x * ROW_THREADS + t
        total = 0.0
        metric = 0.0
        if r < rows:
            s = _src_row(perm, gather, b0, r)
            w = row_w[s] * scale
            metric = row_metric(Z, r, Y, s, n_out, loss)
            total = w * row_loss_delta(Z, r, Y, s, w, n_out, loss, D)
        lbuf[t] = total
        mbuf[t] = metric
        _block_sum(lbuf, t, ROW_THREADS)
        _block_sum(mbuf, t, ROW_THREADS)
        if t == 0:
            cuda.atomic.add(out, (k, 0), lbuf[0])
            cuda.atomic.add(out, (k, 1), mbuf[0])

    @cuda.jit
    def output_activation(Z, A, rows, n_out, loss):
        """Inference outputs of every row (``output_rows``)."""
        r = cuda.grid(1)
        if r < rows:
            output_rows(Z, r, A, r, 1, n_out, loss)

    return dict(dense_forward=dense_forward, dense_input_delta=dense_input_delta,
                dense_weight_grad=dense_weight_grad, output_loss=output_loss,
                output_activation=output_activation,
                row_loss_delta=row_loss_delta)   # a device function, for kernels.cuda_fused


_KERNELS = {}


def kernels_for(dtype):
    """The dtype-specific kernels (float32 or float64), built on first use."""
    dtype = np.dtype(dtype)
    if dtype not in _KERNELS:
        _KERNELS[dtype] = _build(dtype.type)
    return _KERNELS[dtype]


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
    D1, D2 = nt.Array(f64, 1, "C"), nt.Array(f64, 2, "C")
    from . import cuda_fused
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
        "update": (update, (i64, F1, F1, F2, D1, I2, i64, f64, f64, f64, f64, D1, D2, i64, I1)),
        "grad_sq_sum": (grad_sq_sum, (F1, I2, i64, D1, i64, I1)),
        "reset_chunk": (reset_chunk, (D2, D1, I1)),
        "step_buffer_tail": (step_buffer_tail, (F1, i64, D2, f64, i64)),
        "divide_vector": (divide_vector, (F1, f64)),
        "fused_train_chunk": (f["fused_train_chunk"], (
            F2, F2, D1, I1, i64, i64, i64, F1, F1, F2, D2, I1, I1, I1, D1, I1, i64, i64, i64,
            i64, i64, i64, F2, D1, I2, i64, D2, f64, D2, I1)),
        "fused_batch_grads": (f["fused_batch_grads"], (
            F2, F2, D1, I1, i64, i64, f64, F1, F2, D2, I1, I1, I1, D1, I1, i64, i64, i64, i64,
            i64, I1)),
        "fused_forward": (f["fused_forward"], (F2, i64, F1, I1, I1, I1, i64, i64, i64, i64,
                                               F2)),
        "fused_reduce": (cuda_fused.fused_reduce, (F2, D2, i64, F1, I2, i64, D2, i64, I1)),
    }


# ------------------------------------------------------------------------ size rule

def _n_params(sizes):
    return sum(int(a) * int(b) + int(b) for a, b in zip(sizes[:-1], sizes[1:]))


def fused_tile_bytes(sizes, tile_rows, itemsize):
    """Dynamic shared memory of one fused block (layout in kernels.cuda_fused): the tile's
    X rows, every layer's pre-activations (later its deltas), and one activation scratch as
    wide as the widest hidden layer."""
    sizes = [int(n) for n in sizes]
    per_row = sizes[0] + sum(sizes[1:]) + max(sizes[1:-1], default=0)
    return tile_rows * per_row * itemsize


def fused_smem_bytes(sizes, tile_rows, itemsize):
    """All shared memory of one fused block: the tile, plus two float64 reduction buffers
    of FUSED_THREADS (the loss and metric sums)."""
    return fused_tile_bytes(sizes, tile_rows, itemsize) + 2 * FUSED_THREADS * 8


def fused_slots(sizes, itemsize, batch_size, tile_rows):
    """Blocks (each with its own row of gradient partials) of a fused batch: one per tile,
    at most FUSED_MAX_BLOCKS and as many rows of n_params as FUSED_PARTIAL_BYTES holds.
    With fewer blocks than tiles, each block takes several tiles."""
    per_slot = _n_params(sizes) * itemsize
    return min(FUSED_MAX_BLOCKS, _cdiv(int(batch_size), tile_rows),
               FUSED_PARTIAL_BYTES // per_slot)


def fused_tile_rows(sizes, dtype, batch_size, path=None):
    """The size rule: rows per tile of the fused path, or 0 for the layer-by-layer path.

    Tiles have rows in steps of FUSED_ROW_BLOCK: enough for the batch to make about
    FUSED_TARGET_BLOCKS tiles (blocks to fill the GPU), at least FUSED_MIN_TILE_ROWS (each
    tile re-reads every weight), at most FUSED_MAX_TILE_ROWS and the batch, and fewer
    while the block's shared memory exceeds FUSED_SMEM_BYTES. The fused path is taken when
    every width is at most FUSED_MAX_WIDTH, the tile keeps at least FUSED_MIN_TILE_ROWS
    rows (or the whole batch, if smaller), and one block's gradient partials fit
    FUSED_PARTIAL_BYTES (``fused_slots``). ``path`` (default FUSED_PATH): "auto", or
    "fused"/"layers" to force one; forcing the fused path where its buffers do not fit
    raises ValueError.
    """
    path = FUSED_PATH if path is None else path
    if path not in ("auto", "fused", "layers"):
        raise ValueError(f"FUSED_PATH must be 'auto', 'fused' or 'layers', not {path!r}")
    if path == "layers":
        return 0
    itemsize = np.dtype(dtype).itemsize
    batch_size = int(batch_size)

    def in_blocks(n):
        return _cdiv(n, FUSED_ROW_BLOCK) * FUSED_ROW_BLOCK

    whole = in_blocks(batch_size)
    spread = in_blocks(_cdiv(batch_size, FUSED_TARGET_BLOCKS))
    rows = min(FUSED_MAX_TILE_ROWS, whole, max(FUSED_MIN_TILE_ROWS, spread))
    while rows > 0 and fused_smem_bytes(sizes, rows, itemsize) > FUSED_SMEM_BYTES:
        rows -= FUSED_ROW_BLOCK
    fits = rows > 0 and fused_slots(sizes, itemsize, batch_size, rows) > 0
    if path == "fused":
        if not fits:
            raise ValueError(f"the fused path does not fit layers {list(sizes)} at batch "
                             f"size {batch_size}")
        return rows
    narrow = (max(int(n) for n in sizes) <= FUSED_MAX_WIDTH
              or batch_size <= FUSED_WIDE_MAX_BATCH)
    if fits and narrow and rows >= min(FUSED_MIN_TILE_ROWS, whole):
        return rows
    return 0


def fused_forward_bytes(sizes, tile_rows, itemsize):
    """Shared memory of one ``fused_forward`` block: X, Z and A rows of the tile, Z and A
    as wide as the widest layer (A holds the last one's activations for ``transform``)."""
    sizes = [int(n) for n in sizes]
    per_row = sizes[0] + 2 * max(sizes[1:])
    return tile_rows * per_row * itemsize


def fused_forward_rows(sizes, dtype, n_rows):
    """Rows per tile of fused inference (layers ``sizes``, input first), or 0 for the
    layer-by-layer path: every width at most FUSED_MAX_WIDTH, as many rows as
    FUSED_SMEM_BYTES holds up to FUSED_INFER_TILE_ROWS, at least FUSED_MIN_TILE_ROWS
    (fewer than n_rows only re-read the weights more often)."""
    if FUSED_PATH == "layers" or max(int(n) for n in sizes) > FUSED_MAX_WIDTH:
        return 0
    itemsize = np.dtype(dtype).itemsize
    rows = min(FUSED_INFER_TILE_ROWS, _cdiv(int(n_rows), FUSED_ROW_BLOCK) * FUSED_ROW_BLOCK)
    while rows > 0 and fused_forward_bytes(sizes, rows, itemsize) > FUSED_SMEM_BYTES:
        rows -= FUSED_ROW_BLOCK
    return rows if rows >= min(FUSED_MIN_TILE_ROWS, n_rows) else 0


# -------------------------------------------------------------------------- launches

def _cdiv(a, b):
    return -(-a // b)


def _gemm_grid(n_cols, n_rows):
    """Grid and block of a GEMM kernel: one block per GEMM_BLOCK x GEMM_BLOCK outputs."""
    return (_cdiv(n_cols, GEMM_BLOCK), _cdiv(n_rows, GEMM_BLOCK)), (TILE, TILE)


def _flat_grid(n):
    return min(FLAT_MAX_BLOCKS, max(1, _cdiv(n, FLAT_THREADS))), FLAT_THREADS


def _cudadevrt_found():
    """Grid sync links the CUDA device runtime, a static library (in the toolkit or the
    CUDA runtime wheel); the test is numba-cuda's own (numba.cuda.testing)."""
    from numba.cuda.cudadrv import libs
    try:
        libs.check_static_lib(libs.get_cudalib("cudadevrt", static=True))
    except FileNotFoundError:
        return False
    return True


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


class CudaFitSession:
    """What one fit keeps on the device between chunks."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


class CudaEngine:
    """The CPU engine's contract (fastbp.backend.CPUEngine) with device-resident buffers."""

    name = "cuda"

    def __init__(self, model):
        self.model = model
        from . import cuda_fused
        self._k = kernels_for(model.dtype)
        self._f = cuda_fused.kernels_for(model.dtype)
        self._no_stop = cuda.to_device(np.zeros(1, dtype=np.int64))
        self._no_perm = cuda.to_device(np.zeros(1, dtype=np.int64))
        self._active = None
        self.batch_seconds = {}   # batch size -> last measured seconds per batch (training)

    def calls_blas(self, batch_size):
        """Training runs on the GPU: no host BLAS call to limit."""
        return False

    # -- the network, batch by batch, queued on the default stream -----------------------
    def _forward_layers(self, d_params, X, perm, gather, b0, rows, bufs, n_layers, drop,
                        seed, step, status):
        m_, lay, k = self.model, self.model.layout, self._k
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
                bufs.A[l + 1], int(m_._acts[l]), 0 if l == L - 1 else 1, float(drop[l]),
                seed, step, l, status)

    def _backward_layers(self, d_params, X, perm, gather, b0, rows, bufs, grads, trainable,
                         lowest, drop, seed, step, accumulate, status):
        m_, lay, k = self.model, self.model.layout, self._k
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
                    bufs.A[l], int(m_._acts[l - 1]), float(drop[l - 1]), seed, step, l - 1,
                    bufs.D[l], status)

    def _output_loss(self, bufs, Y, row_w, perm, gather, b0, rows, scale, out, k_out, status):
        m_ = self.model
        L = m_.layout.n_layers
        self._k["output_loss"][_cdiv(rows, ROW_THREADS), ROW_THREADS](
            bufs.Z[L], Y, row_w, perm, gather, b0, rows, int(m_.layout.sizes[L]),
            int(m_._loss_code), scale, bufs.D[L], out, k_out, status)

    # -- training ---------------------------------------------------------------------
    def begin_fit(self, X, Y, row_w, optimizer, state, batch_size, dropout_seed):
        """Upload data, parameters and optimizer state once; ``state`` is written back by
        ``end_fit``."""
        m_ = self.model
        lay = m_.layout
        n = X.shape[0]
        trainable = m_._trainable.astype(bool)
        ranges = lay.trainable_spans(trainable)
        n_slots = state.shape[0]
        dev_state = state if n_slots else np.zeros((1, lay.n_params), dtype=m_.dtype)
        cap = _cdiv(n, batch_size)          # batches of one epoch: the largest chunk
        s = CudaFitSession(
            batch_size=int(batch_size), n=n, optimizer=optimizer, state=state,
            trainable=trainable, lowest=int(np.flatnonzero(trainable)[0]),
            n_trainable=int((ranges[:, 1] - ranges[:, 0]).sum()), seed=int(dropout_seed),
            X=cuda.to_device(np.ascontiguousarray(X)),
            Y=cuda.to_device(np.ascontiguousarray(Y)),
            row_w=cuda.to_device(np.ascontiguousarray(row_w, dtype=np.float64)),
            params=cuda.to_device(m_._params), grads=cuda.device_array(lay.n_params, m_.dtype),
            dev_state=cuda.to_device(np.ascontiguousarray(dev_state)),
            hyper_host=optimizer.hyper(),
            slots=m.optimizer_slots(optimizer.code, optimizer.hyper()),
            ranges=cuda.to_device(ranges), ranges_host=ranges,
            bufs=RowBuffers(lay.sizes, min(batch_size, n), m_.dtype),
            perm=cuda.device_array(n, np.int64), perm_host=None,
            out=cuda.device_array((cap, 2), np.float64), sq=cuda.device_array(cap, np.float64),
            status=cuda.to_device(np.zeros(1, np.int64)), step_done=0,
            active=True)
        s.fused = self._begin_fused(s)
        self._active = s
        return s

    def _begin_fused(self, s):
        """The fused path's buffers when the size rule picks it for this fit, else None."""
        m_ = self.model
        lay = m_.layout
        bs = min(s.batch_size, s.n)
        rows = fused_tile_rows(lay.sizes, m_.dtype, bs)
        if not rows:
            return None
        n_slots = fused_slots(lay.sizes, m_.dtype.itemsize, bs, rows)
        return CudaFitSession(
            tile_rows=rows, n_slots=n_slots, blocks=None,
            smem=fused_tile_bytes(lay.sizes, rows, m_.dtype.itemsize),
            sizes=cuda.to_device(lay.sizes.astype(np.int64)),
            poff=cuda.to_device(lay.poff.astype(np.int64)),
            acts=cuda.to_device(np.asarray(m_._acts, dtype=np.int64)),
            drop=cuda.to_device(np.asarray(m_._drop, dtype=np.float64)),
            trainable=cuda.to_device(s.trainable.astype(np.int64)),
            partials=cuda.device_array((n_slots, lay.n_params), m_.dtype),
            part=cuda.device_array((n_slots, 3), np.float64),
            rates=cuda.device_array((s.out.shape[0], m.N_COEFFS), np.float64))

    def _fused_blocks(self, f, args):
        """Blocks of the cooperative chunk kernel, or 0 where it cannot run: the grid must
        fit on the device at once (the occupancy API says how many blocks do)."""
        if not FUSED_PERSISTENT:
            return 0
        if f.blocks is None:
            if config.ENABLE_CUDASIM:
                f.blocks = 1        # the simulator's grid sync only syncs one block
            elif not (cuda.get_current_device().COOPERATIVE_LAUNCH and _cudadevrt_found()):
                f.blocks = 0
            else:
                kern = self._f["fused_train_chunk"]
                compiled = kern.compile(tuple(kern.typeof_pyval(a) for a in args))
                f.blocks = min(f.n_slots, compiled.max_cooperative_grid_blocks(
                    FUSED_THREADS, f.smem))
        return f.blocks

    def _fused_phase1(self, s, b0, rows, scale, step, status):
        """fused_batch_grads over as many blocks as the batch has tiles (at most n_slots);
        returns that count, the number of partials to reduce."""
        f = s.fused
        blocks = min(f.n_slots, _cdiv(rows, f.tile_rows))
        self._f["fused_batch_grads"][blocks, FUSED_THREADS, 0, f.smem](
            s.X, s.Y, s.row_w, s.perm, b0, rows, float(scale), s.params, f.partials, f.part,
            f.sizes, f.poff, f.acts, f.drop, f.trainable, s.lowest, int(self.model._loss_code),
            s.seed, int(step), f.tile_rows, status)
        return blocks

    def _fused_chunk(self, s, start, stop, nb, lrs, step, clip):
        """run_chunk on the fused path: one cooperative launch for the chunk, or per batch
        fused_batch_grads + fused_reduce (+ grad_sq_sum) + update where that cannot run."""
        m_ = self.model
        f = s.fused
        opt = s.optimizer
        if f.rates.shape[0] < nb:
            f.rates = cuda.device_array((nb, m.N_COEFFS), np.float64)
        rates = self._coefficients(s, lrs, step, nb, f.rates.shape[0])
        f.rates.copy_to_device(rates)
        args = (s.X, s.Y, s.row_w, s.perm, start, stop, s.batch_size, s.params, s.grads,
                f.partials, f.part, f.sizes, f.poff, f.acts, f.drop, f.trainable, s.lowest,
                int(m_._loss_code), s.seed, int(step), f.tile_rows, opt.code, s.dev_state,
                s.slots, s.ranges, s.n_trainable, f.rates, clip, s.out, s.status)
        blocks = self._fused_blocks(f, args)
        if blocks:
            # Every batch row of out is written before the host reads it: no reset needed.
            self._f["fused_train_chunk"][blocks, FUSED_THREADS, 0, f.smem](*args)
            return
        from .cuda_fused import fused_reduce
        reset_chunk[_cdiv(max(nb, 1), FLAT_THREADS), FLAT_THREADS](s.out, s.sq, s.status)
        fgrid, fblock = _flat_grid(s.n_trainable)
        n_out = int(m_.layout.sizes[-1])
        for b in range(nb):
            b0 = start + b * s.batch_size
            rows = min(s.batch_size, stop - b0)
            t = int(step) + b + 1
            used = self._fused_phase1(s, b0, rows, m.loss_scale(m_._loss_code, rows, n_out),
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
        nb = _cdiv(stop - start, s.batch_size)
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
        m_ = self.model
        lay = m_.layout
        opt = s.optimizer
        bs = s.batch_size
        n_out = int(lay.sizes[-1])
        reset_chunk[_cdiv(max(nb, 1), FLAT_THREADS), FLAT_THREADS](s.out, s.sq, s.status)
        fgrid, fblock = _flat_grid(s.n_trainable)
        coef = cuda.to_device(self._coefficients(s, lrs, step, nb, nb))
        for b in range(nb):
            b0 = start + b * bs
            rows = min(bs, stop - b0)
            t = int(step) + b + 1
            self._forward_layers(s.params, s.X, s.perm, 1, b0, rows, s.bufs, lay.n_layers,
                                 m_._drop, s.seed, t, s.status)
            self._output_loss(s.bufs, s.Y, s.row_w, s.perm, 1, b0, rows,
                              m.loss_scale(m_._loss_code, rows, n_out), s.out, b, s.status)
            self._backward_layers(s.params, s.X, s.perm, 1, b0, rows, s.bufs, s.grads,
                                  s.trainable, s.lowest, m_._drop, s.seed, t, 0, s.status)
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
        if getattr(s, "step_out", None) is None:
            s.step_out = cuda.device_array((1, 2), np.float64)
            s.step_sq = cuda.device_array(1, np.float64)
            s.step_status = cuda.device_array(1, np.int64)
        reset_chunk[1, FLAT_THREADS](s.step_out, s.step_sq, s.step_status)

    def grad_buffer(self, s, on_device=False):
        """[gradient | loss, metric, interrupt flag]: the buffer of the per-step Allreduce, in
        host memory (staged) or on the device (CUDA-aware MPI)."""
        P = self.model.layout.n_params
        G = np.zeros(P + 3, dtype=self.model.dtype)
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
        m_ = self.model
        lay = m_.layout
        P = lay.n_params
        self._step_buffers(s)       # zero loss and metric: a rank without rows adds zeros
        if rows:
            self._upload_perm(s, perm)
            if s.fused is not None:
                from .cuda_fused import fused_reduce
                used = self._fused_phase1(s, b0, rows, scale, step, s.step_status)
                fgrid, fblock = _flat_grid(s.n_trainable)
                fused_reduce[fgrid, fblock](s.fused.partials, s.fused.part, used, s.grads,
                                            s.ranges, s.n_trainable, s.step_out, 0,
                                            s.step_status)
            else:
                self._forward_layers(s.params, s.X, s.perm, 1, b0, rows, s.bufs, lay.n_layers,
                                     m_._drop, s.seed, int(step), s.step_status)
                self._output_loss(s.bufs, s.Y, s.row_w, s.perm, 1, b0, rows, float(scale),
                                  s.step_out, 0, s.step_status)
                self._backward_layers(s.params, s.X, s.perm, 1, b0, rows, s.bufs, s.grads,
                                      s.trainable, s.lowest, m_._drop, s.seed, int(step), 0,
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
        tail = G[self.model.layout.n_params:]
        return tail if isinstance(tail, np.ndarray) else tail.copy_to_host()

    def apply_update(self, s, G, lr, step, clip_norm):
        """One optimizer step from the flat gradient G[:P] (after an allreduce)."""
        P = self.model.layout.n_params
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
        return self.model._params

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

    def end_fit(self, s):
        """Copy parameters and optimizer state back to the host (safe to call twice)."""
        self.model._params[:] = s.params.copy_to_host()
        if s.state.shape[0]:
            s.state[:] = s.dev_state.copy_to_host()
        s.active = False
        if self._active is s:
            self._active = None

    def sync_params(self, s):
        """Make model._params current."""
        self.model._params[:] = s.params.copy_to_host()

    def snapshot(self, s):
        snap = cuda.device_array_like(s.params)
        snap.copy_to_device(s.params)
        return snap

    def restore(self, s, snapshot):
        s.params.copy_to_device(snapshot)
        self.model._params[:] = snapshot.copy_to_host()

    def params_to_host(self):
        """During a fit the device holds the current parameters: bring them to the host."""
        s = self._active
        if s is not None and s.active:
            self.sync_params(s)

    def params_changed(self):
        """set_weights/reset during a fit (a callback): the device copy follows the host."""
        s = self._active
        if s is not None and s.active:
            s.params.copy_to_device(self.model._params)

    # -- inference and gradients ------------------------------------------------------
    # The kernels have no NaN/inf check of their own: MLP._forward checks X on the host
    # before calling (``check`` is always False here).
    checks_in_pass = False

    def forward(self, X, n_layers, pre_activation, out, check=False):
        m_ = self.model
        lay = m_.layout
        L = lay.n_layers
        n = X.shape[0]
        if n == 0:
            return out
        d_params = cuda.to_device(m_._params)
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
                    self._k["output_activation"][_cdiv(rows, ROW_THREADS), ROW_THREADS](
                        bufs.Z[L], bufs.A[L], rows, int(lay.sizes[L]), int(m_._loss_code))
            out[b0:b0 + rows] = src[:rows].copy_to_host()
        return out

    def _fused_forward(self, X, d_params, n_layers, pre_activation, out, tile):
        """forward() by ``fused_forward``: one launch per INFER_BLOCK_BYTES of input, no
        intermediate layer in device memory."""
        m_ = self.model
        lay = m_.layout
        n = X.shape[0]
        sizes = lay.sizes[:n_layers + 1]
        smem = fused_forward_bytes(sizes, tile, m_.dtype.itemsize)
        per_row = (int(sizes[0]) + int(sizes[-1])) * m_.dtype.itemsize
        block = max(tile, min(n, INFER_BLOCK_BYTES // per_row))
        d_sizes = cuda.to_device(lay.sizes.astype(np.int64))
        d_poff = cuda.to_device(lay.poff.astype(np.int64))
        d_acts = cuda.to_device(np.asarray(m_._acts, dtype=np.int64))
        d_out = cuda.device_array((min(block, n), int(sizes[-1])), m_.dtype)
        for b0 in range(0, n, block):
            rows = min(block, n - b0)
            d_X = cuda.to_device(np.ascontiguousarray(X[b0:b0 + rows]))
            grid = min(FUSED_INFER_BLOCKS, _cdiv(rows, tile))
            self._f["fused_forward"][grid, FUSED_THREADS, 0, smem](
                d_X, rows, d_params, d_sizes, d_poff, d_acts, n_layers, int(pre_activation),
                int(m_._loss_code), tile, d_out)
            out[b0:b0 + rows] = d_out[:rows].copy_to_host()
        return out

    def loss_and_grads(self, X, Y, row_w):
        """Mean loss over all rows of X and the gradient of every layer; no update."""
        m_ = self.model
        lay = m_.layout
        L = lay.n_layers
        n = X.shape[0]
        d_params = cuda.to_device(m_._params)
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
        scale = m.loss_scale(m_._loss_code, n, int(lay.sizes[L]))
        for b0 in range(0, n, rows_cap):
            rows = min(rows_cap, n - b0)
            self._forward_layers(d_params, d_X, self._no_perm, 0, b0, rows, bufs, L, no_drop,
                                 0, 0, status)
            self._output_loss(bufs, d_Y, d_w, self._no_perm, 0, b0, rows, scale, d_out, 0,
                              status)
            self._backward_layers(d_params, d_X, self._no_perm, 0, b0, rows, bufs, grads,
                                  every, 0, no_drop, 0, 0, 1 if b0 else 0, status)
        return float(d_out.copy_to_host()[0, 0]), grads.copy_to_host()
