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
# The fused path beat the layer path on a narrow net at a large batch and matched it on an
# MNIST-shaped net at a small one, where both are launch- and reduction-bound; the width
# and batch thresholds below are those two points, not a sweep (bench/results/
# code-notes.md has the runs; ``bench/gpu_compare.py --sweep`` is the sweep to run).
# FUSED_THREADS and FUSED_ROW_BLOCK are
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
FUSED_MEMBERS = True        # an ensemble's members in the same launches; False: in turn
FUSED_INFER_TILE_ROWS = 128  # rows per tile of fused inference, at most
FUSED_INFER_BLOCKS = 1056   # blocks of fused inference, at most (8 per SM of 132 SMs)
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


# ------------------------------------------------------------------------ size rule

def cooperative_blocks(kern, args, smem):
    """How many blocks of FUSED_THREADS threads of ``kern`` (a kernel with a grid sync,
    launched with ``args`` and ``smem`` bytes of dynamic shared memory) the device runs
    at once, the most a cooperative launch may have; 0 where it cannot launch one."""
    if not (cuda.get_current_device().COOPERATIVE_LAUNCH and _cudadevrt_found()):
        return 0
    compiled = kern.compile(tuple(kern.typeof_pyval(a) for a in args))
    return compiled.max_cooperative_grid_blocks(FUSED_THREADS, smem)


def _cudadevrt_found():
    """Grid sync links the CUDA device runtime, a static library (in the toolkit or the
    CUDA runtime wheel); the test is numba-cuda's own (numba.cuda.testing)."""
    from numba.cuda.cudadrv import libs
    try:
        libs.check_static_lib(libs.get_cudalib("cudadevrt", static=True))
    except FileNotFoundError:
        return False
    return True


def cdiv(a, b):
    """Ceiling division of host-side sizes."""
    return -(-a // b)


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
    return min(FUSED_MAX_BLOCKS, cdiv(int(batch_size), tile_rows),
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
        return cdiv(n, FUSED_ROW_BLOCK) * FUSED_ROW_BLOCK

    whole = in_blocks(batch_size)
    spread = in_blocks(cdiv(batch_size, FUSED_TARGET_BLOCKS))
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
    rows = min(FUSED_INFER_TILE_ROWS, cdiv(int(n_rows), FUSED_ROW_BLOCK) * FUSED_ROW_BLOCK)
    while rows > 0 and fused_forward_bytes(sizes, rows, itemsize) > FUSED_SMEM_BYTES:
        rows -= FUSED_ROW_BLOCK
    return rows if rows >= min(FUSED_MIN_TILE_ROWS, n_rows) else 0
