"""CPU kernels: ``@njit`` loops over preallocated buffers.

Layout shared by every kernel (built by ``fastbp.workspace``):

* ``params``: one flat vector; layer ``l``'s W (n_in x n_out, row-major) starts at
  ``poff[l]`` and its bias follows immediately.
* ``sizes``: layer widths ``[n_in, h1, ..., n_out]``; ``acts[l]``: activation code of dense
  layer ``l`` (the last entry is unused: the loss fixes the output activation).
* Row buffers ``Zbuf`` (pre-activations), ``Abuf`` (activations, layer 0 = input rows) and
  ``Dbuf`` (deltas) are flat; layer ``l`` occupies ``B*coff[l] : B*coff[l+1]`` viewed as
  (B, sizes[l]) where ``coff`` is the running sum of ``sizes``. A hidden ReLU layer
  without dropout writes only its A rows (the GEMM applies the ReLU), unless it is the
  last layer a forward pass runs: its Z rows are stale.
* ``grad``: the flat gradient; ``tloss`` (T, 2): per-thread [loss, metric] sums, whose T
  rows bound how many threads share a batch. Each thread carries its row slice forward
  and back to the deltas, then the threads split the batch's weight gradients by rows of
  gW into ``grad`` (disjoint spans, no locks), and the optimizer step updates the
  parameters (see ``chunk_steps``).

No kernel allocates: every array is a view of a buffer passed in. Kernels do no bounds
checks; the façade validates shapes and labels before calling them.
"""
import math

import numpy as np

from . import math as m
from .gemm import ASSIGN, ASSIGN_BIAS, ASSIGN_BIAS_RELU, BLOCK_ROWS, gemm
from .jit import entry, kernel
from .simd import lanes, prefetch, vexp, vload_part, vstore_part
from .sync import (FUSE_ALONE, PLAN_BATCH, PLAN_DONE, SPENT, atomic_load, await_batch,
                   barrier, claim, cycles, done_with, fetch_add, lead_batch, lead_finish,
                   plan_slot, popcount, popcount_below, spin_pause)
from .tuning import (BLAS_MAX_HAND_OUTPUTS, BLAS_MIN_ROWS, BLAS_MIN_WEIGHTS,
                     GEMM_DELTA_MAX_WEIGHTS, GEMM_DELTA_MIN_OUTPUTS, GEMM_MAX_WEIGHTS,
                     MIN_ROWS_PER_THREAD, TEAM_CHECK_STEPS)

# Every kernel compiles with error_model="numpy" (kernels.jit.BASE_OPTIONS): a float
# division by zero gives inf/nan (caught by the divergence checks) instead of raising.
# Python's model puts a branch on every division, which stops LLVM from vectorising loops
# such as the Adam update (bench/results/code-notes.md).
# Reassociation lets LLVM vectorise the dot-product reductions; NaN/inf semantics are kept
# (no 'nnan'/'ninf') so that divergence is still detected.
FAST = {"reassoc", "contract"}

_scalar = m.compile_with(kernel, "cpu")
activate = _scalar.activate
activate_grad = _scalar.activate_grad
pointwise_loss = _scalar.pointwise_loss
pointwise_loss_grad = _scalar.pointwise_loss_grad
optimizer_slots = _scalar.optimizer_slots
optimizer_coefficients = _scalar.optimizer_coefficients
optimizer_step = _scalar.optimizer_step
row_metric = _scalar.row_metric
output_rows = _scalar.output_rows
loss_scale = _scalar.loss_scale
dropout_keep = _scalar.dropout_keep


# ---------------------------------------------------------------------------- views

@kernel
def layer_rows(buf, B, coff, l, r0, r1, width):
    """Rows r0..r1 of layer ``l``'s (B, width) slab of a flat row buffer."""
    base = B * coff[l]
    return buf[base + r0 * width: base + r1 * width].reshape(r1 - r0, width)


@kernel
def matrix_rows(X, r0, r1):
    """Rows r0..r1 of a C-contiguous 2-D array as a C-layout view."""
    w = X.shape[1]
    return X.reshape(X.shape[0] * w)[r0 * w: r1 * w].reshape(r1 - r0, w)


@kernel
def weight(params, poff, sizes, l):
    n_in = sizes[l]
    n_out = sizes[l + 1]
    o = poff[l]
    return params[o: o + n_in * n_out].reshape(n_in, n_out)


@kernel
def bias(params, poff, sizes, l):
    o = poff[l] + sizes[l] * sizes[l + 1]
    return params[o: o + sizes[l + 1]]


@kernel
def use_blas(rows, n_in, n_out):
    return (rows >= BLAS_MIN_ROWS and n_in * n_out >= BLAS_MIN_WEIGHTS
            and n_out > BLAS_MAX_HAND_OUTPUTS)


@kernel
def gemm_forward(n_in, n_out):
    """Which products go through the register-blocked kernels of kernels.gemm instead of
    BLAS (see tuning.py). Not regression heads: a handful of outputs would waste
    most of each vector."""
    return n_out > BLAS_MAX_HAND_OUTPUTS


@kernel
def gemm_weight_grad(n_in, n_out):
    """Above GEMM_MAX_WEIGHTS BLAS's fully packed copies win."""
    return n_out > BLAS_MAX_HAND_OUTPUTS and n_in * n_out <= GEMM_MAX_WEIGHTS


@kernel
def gemm_input_delta(n_in, n_out):
    """D @ W^T reads W transposed while packing each panel: worth it once the reduction
    (n_out) is long enough to reuse the panel."""
    return n_out >= GEMM_DELTA_MIN_OUTPUTS and n_in * n_out <= GEMM_DELTA_MAX_WEIGHTS


@kernel
def flat(X):
    return X.reshape(X.size)


# ---------------------------------------------------------------------- dense layers

@kernel(fastmath=FAST)
def dense_forward(A, W, b, Z, relu):
    """Z = A @ W + b  (A: (m, n_in), W: (n_in, n_out), Z: (m, n_out)); with ``relu``,
    Z = max(A @ W + b, 0) (a hidden ReLU layer's activations, made in one pass)."""
    rows, n_in = A.shape
    n_out = W.shape[1]
    if gemm_forward(n_in, n_out):
        gemm(flat(A), n_in, 1, flat(W), n_out, False, flat(Z), n_out, b, rows, n_out, n_in,
             ASSIGN_BIAS_RELU if relu else ASSIGN_BIAS)
        return
    if n_out == 1:
        # One output (a regression or binary head): W is one contiguous column, and each
        # row's dot product vectorises (the 2-D loop below reads W a row stride apart).
        w = W.reshape(n_in)
        for i in range(rows):
            ai = A[i]
            acc = b[0]
            for k in range(n_in):
                acc += ai[k] * w[k]
            Z[i, 0] = 0.0 * acc if relu and acc < 0 else acc
        return
    # Few outputs (regression heads): one dot product over the inputs per output.
    for i in range(rows):
        for j in range(n_out):
            acc = b[j]
            for k in range(n_in):
                acc += A[i, k] * W[k, j]
            Z[i, j] = 0.0 * acc if relu and acc < 0 else acc


@kernel(fastmath=FAST)
def bias_grad(D, gb):
    """gb = column sums of D  (overwrites)."""
    n = D.shape[1]
    for j in range(n):
        gb[j] = 0
    for i in range(D.shape[0]):
        for j in range(n):
            gb[j] += D[i, j]


@kernel(fastmath=FAST)
def dense_weight_grad(A, D, gW, gb):
    """gW = A^T @ D, gb = column sums of D  (overwrites, never accumulates)."""
    rows, n_in = A.shape
    n_out = D.shape[1]
    bias_grad(D, gb)
    if gemm_weight_grad(n_in, n_out):
        gemm(flat(A), 1, n_in, flat(D), n_out, False, flat(gW), n_out, gb, n_in, n_out, rows,
             ASSIGN)
        return
    if use_blas(rows, n_in, n_out):
        np.dot(A.T, D, gW)
        return
    for k in range(n_in):
        gk = gW[k]
        for j in range(n_out):
            gk[j] = 0
    if n_out == 1:
        g = gW.reshape(n_in)
        for i in range(rows):
            ai = A[i]
            d = D[i, 0]
            for k in range(n_in):
                g[k] += ai[k] * d
        return
    if n_out <= BLAS_MAX_HAND_OUTPUTS:
        # Few outputs: the inner loop runs over the inputs, not over a handful of outputs.
        for i in range(rows):
            for j in range(n_out):
                d = D[i, j]
                for k in range(n_in):
                    gW[k, j] += A[i, k] * d
        return
    for i in range(rows):
        ai = A[i]
        di = D[i]
        for k in range(n_in):
            a = ai[k]
            gk = gW[k]
            for j in range(n_out):
                gk[j] += a * di[j]


@kernel
def apply_activation_grad(Dp, Zp, Ap, act, rate, seed, step, layer, r0):
    """Dp *= f'(Zp), and the dropout mask/scale of the layer below when rate > 0."""
    rows, n = Dp.shape
    if rate == 0.0:
        if act == m.RELU:
            # relu'(z) = 1 if z > 0 else 0, read from A = max(Z, 0) (forward_rows writes
            # no Z for a ReLU layer without dropout); branch-free.
            for i in range(rows):
                for k in range(n):
                    Dp[i, k] = Dp[i, k] if Ap[i, k] > 0 else 0
            return
        for i in range(rows):
            dpi = Dp[i]
            zi = Zp[i]
            ai = Ap[i]
            for k in range(n):
                dpi[k] *= activate_grad(act, zi[k], ai[k])
        return
    inv_keep = 1.0 / (1.0 - rate)
    for i in range(rows):
        dpi = Dp[i]
        zi = Zp[i]
        for k in range(n):
            if dropout_keep(seed, step, layer, r0 + i, k, rate):
                # Ap holds the dropped, rescaled value: recompute f(z) for the derivative.
                z = zi[k]
                dpi[k] *= activate_grad(act, z, activate(act, z)) * inv_keep
            else:
                dpi[k] = 0


@kernel(fastmath=FAST)
def dense_input_delta(D, W, Dp):
    """Dp = D @ W^T  : the delta of the layer below, before its activation derivative."""
    rows, n_out = D.shape
    n_in = W.shape[0]
    if gemm_input_delta(n_in, n_out):
        gemm(flat(D), n_out, 1, flat(W), n_out, True, flat(Dp), n_in, flat(Dp), rows, n_in,
             n_out, ASSIGN)
        return
    if use_blas(rows, n_in, n_out):
        np.dot(D, W.T, Dp)
        return
    if n_out == 1:
        w = W.reshape(n_in)
        for i in range(rows):
            dpi = Dp[i]
            d = D[i, 0]
            for k in range(n_in):
                dpi[k] = d * w[k]
        return
    if n_out <= BLAS_MAX_HAND_OUTPUTS:
        for i in range(rows):
            dpi = Dp[i]
            for k in range(n_in):
                dpi[k] = 0
            for j in range(n_out):
                d = D[i, j]
                for k in range(n_in):
                    dpi[k] += d * W[k, j]
        return
    for i in range(rows):
        di = D[i]
        dpi = Dp[i]
        for k in range(n_in):
            wk = W[k]
            s = 0.0
            for j in range(n_out):
                s += di[j] * wk[j]
            dpi[k] = s


@kernel
def hidden_activate(Z, A, act, rate, seed, step, layer, r0):
    """A = f(Z); with dropout ``rate`` > 0, inverted dropout (kept units scaled 1/(1-rate))."""
    rows, n = Z.shape
    if rate == 0.0:
        if act == m.RELU:   # the common case, as a branch-free loop that vectorises
            for i in range(rows):
                zi = Z[i]
                ai = A[i]
                for j in range(n):
                    ai[j] = max(zi[j], 0)
            return
        for i in range(rows):
            zi = Z[i]
            ai = A[i]
            for j in range(n):
                ai[j] = activate(act, zi[j])
        return
    inv_keep = 1.0 / (1.0 - rate)
    for i in range(rows):
        zi = Z[i]
        ai = A[i]
        for j in range(n):
            if dropout_keep(seed, step, layer, r0 + i, j, rate):
                ai[j] = activate(act, zi[j]) * inv_keep
            else:
                ai[j] = 0


@kernel
def exp_inplace(A, lo, hi):
    """A[lo:hi] = e^A[lo:hi] (A flat), a vector at a time: numba's math.exp is one scalar
    libm call per element, more than the rest of a narrow classifier's forward pass."""
    V = lanes(A)
    i = lo
    while i + V <= hi:
        vstore_part(A, i, vexp(vload_part(A, i, V)), V)
        i += V
    if i < hi:
        vstore_part(A, i, vexp(vload_part(A, i, hi - i)), hi - i)


@kernel(fastmath=FAST)
def softmax_rows(Z, A):
    """A = softmax of each row of Z: the shifted logits of the whole block go through one
    vector exp pass, then each row is normalised."""
    rows, n = Z.shape
    for i in range(rows):
        zmax = Z[i, 0]
        for j in range(1, n):
            zmax = max(zmax, Z[i, j])
        for j in range(n):
            A[i, j] = Z[i, j] - zmax
    exp_inplace(flat(A), 0, rows * n)
    for i in range(rows):
        s = 0.0
        for j in range(n):
            s += A[i, j]
        inv = 1.0 / s
        for j in range(n):
            A[i, j] *= inv


@kernel
def output_activation(Z, A, loss):
    """Softmax rows for cross-entropy, sigmoid for BCE, identity otherwise."""
    rows, n = Z.shape
    if loss == m.CROSS_ENTROPY:
        softmax_rows(Z, A)
        return
    output_rows(Z, 0, A, 0, rows, n, loss)


# ------------------------------------------------------------------- whole network

@kernel
def forward_rows(params, sizes, acts, poff, coff, loss, B, A0, Zbuf, Abuf, r0, r1,
                 n_layers, drop, seed, step):
    """Carry rows r0..r1 (whose input is ``A0``) through the first ``n_layers`` layers.

    ``drop[l]`` is layer l's dropout rate (all zero outside training); the mask is keyed
    by (seed, step, layer, row in batch, unit).
    """
    L = sizes.shape[0] - 1
    A = A0
    for l in range(n_layers):
        Z = layer_rows(Zbuf, B, coff, l + 1, r0, r1, sizes[l + 1])
        An = layer_rows(Abuf, B, coff, l + 1, r0, r1, sizes[l + 1])
        W = weight(params, poff, sizes, l)
        b = bias(params, poff, sizes, l)
        if l == L - 1:
            dense_forward(A, W, b, Z, False)
            output_activation(Z, An, loss)
        elif acts[l] == m.RELU and drop[l] == 0.0 and l < n_layers - 1:
            # Straight into A: no Z rows written and read back. The backward pass takes
            # relu' from A (A > 0 exactly where Z > 0); only the last layer run keeps its Z
            # (a caller may ask for those pre-activations).
            dense_forward(A, W, b, An, True)
        else:
            dense_forward(A, W, b, Z, False)
            hidden_activate(Z, An, acts[l], drop[l], seed, step, l, r0)
        A = An


@kernel
def loss_and_output_delta(Z, A, Y, row_w, rows_idx, lo, loss, scale, D, out):
    """Loss summed over rows (times ``scale``) and its delta w.r.t. the logits into ``D``.

    Row i of the slice holds sample ``rows_idx[lo + i]``; ``scale`` is 1/rows for
    cross-entropy (mean over rows) and 1/(rows*n_out) for the elementwise losses.
    ``out[0]`` receives the scaled loss sum, ``out[1]`` the summed row metric.
    Indexed in 2-D: four row views per row cost many times the arithmetic of a one-output
    regression head.
    """
    rows, n = Z.shape
    total = 0.0
    metric = 0.0
    for i in range(rows):
        s = rows_idx[lo + i]
        w = row_w[s] * scale
        metric += row_metric(Z, i, Y, s, n, loss)
        li = 0.0
        if loss == m.CROSS_ENTROPY:
            # log-sum-exp from the softmax row A already holds: at the largest logit,
            # A = 1 / sum(e^(z - zmax)), so one log replaces n exps.
            jmax = 0
            for j in range(1, n):
                if Z[i, j] > Z[i, jmax]:
                    jmax = j
            lse = Z[i, jmax] - math.log(A[i, jmax])
            ysum = 0.0
            for j in range(n):
                y = Y[s, j]
                if y != 0:
                    li -= y * (Z[i, j] - lse)
                ysum += y
            # d/dz of -sum y log softmax(z) is softmax(z) * sum(y) - y.
            for j in range(n):
                D[i, j] = w * (A[i, j] * ysum - Y[s, j])
        else:
            for j in range(n):
                li += pointwise_loss(loss, Z[i, j], Y[s, j])
                D[i, j] = w * pointwise_loss_grad(loss, Z[i, j], Y[s, j])
        total += w * li
    out[0] = total
    out[1] = metric


@kernel
def backward_rows(params, sizes, acts, poff, coff, trainable, lowest, B, A0, Zbuf, Abuf,
                  Dbuf, r0, r1, g, drop, seed, step, weight_grads):
    """Deltas from the output down to layer ``lowest``; with ``weight_grads``, gradients of
    the trainable layers into g (else the caller computes them from the deltas)."""
    L = sizes.shape[0] - 1
    for l in range(L - 1, lowest - 1, -1):
        n_in = sizes[l]
        n_out = sizes[l + 1]
        D = layer_rows(Dbuf, B, coff, l + 1, r0, r1, n_out)
        if l == 0:
            Ain = A0
        else:
            Ain = layer_rows(Abuf, B, coff, l, r0, r1, n_in)
        if weight_grads and trainable[l]:
            o = poff[l]
            gW = g[o: o + n_in * n_out].reshape(n_in, n_out)
            gb = g[o + n_in * n_out: o + n_in * n_out + n_out]
            dense_weight_grad(Ain, D, gW, gb)
        if l > lowest:
            Dp = layer_rows(Dbuf, B, coff, l, r0, r1, n_in)
            dense_input_delta(D, weight(params, poff, sizes, l), Dp)
            apply_activation_grad(Dp, layer_rows(Zbuf, B, coff, l, r0, r1, n_in), Ain,
                                  acts[l - 1], drop[l - 1], seed, step, l - 1, r0)


@kernel
def gather_rows(X, rows_idx, lo, hi, A0):
    n = X.shape[1]
    for i in range(hi - lo):
        s = rows_idx[lo + i]
        for j in range(n):
            A0[i, j] = X[s, j]


@kernel
def prefetch_rows(X, Y, row_w, rows_idx, lo, hi):
    """Ask for the cache lines of rows rows_idx[lo:hi] of X and Y and their weights: a
    shuffled batch's rows come from all over X, and the next batch's, fetched while this
    one trains, are in cache when it gathers them (gathering from L3 is mostly waiting)."""
    n = X.shape[1]
    n_out = Y.shape[1]
    step = max(1, 64 // X.itemsize)
    for i in range(lo, hi):
        r = rows_idx[i]
        for j in range(0, n, step):
            prefetch(X, r * n + j)
        for j in range(0, n_out, step):
            prefetch(Y, r * n_out + j)
        prefetch(row_w, r)


@kernel
def slice_loss_grad(X, Y, row_w, rows_idx, b0, r0, r1, scale, params, sizes, acts, poff,
                    coff, trainable, lowest, loss, B, Zbuf, Abuf, Dbuf, g, drop, seed, step, out,
                    q0, parts, weight_grads):
    """Forward, loss and backward for rows r0..r1 of the batch starting at ``b0``.

    out[q0 + p] receives [scaled loss sum, metric sum] of part p of ``parts`` even parts
    of the slice (the slices a team would have made: summed in that order, the batch's loss
    does not depend on who ran it); ``weight_grads``: whether the slice's weight gradients
    go into g (else weight_grad_part makes them)."""
    L = sizes.shape[0] - 1
    A0 = layer_rows(Abuf, B, coff, 0, r0, r1, sizes[0])
    gather_rows(X, rows_idx, b0 + r0, b0 + r1, A0)
    forward_rows(params, sizes, acts, poff, coff, loss, B, A0, Zbuf, Abuf, r0, r1, L, drop,
                 seed, step)
    n = r1 - r0
    for p in range(parts):
        a = r0 + p * n // parts
        e = r0 + (p + 1) * n // parts
        loss_and_output_delta(layer_rows(Zbuf, B, coff, L, a, e, sizes[L]),
                              layer_rows(Abuf, B, coff, L, a, e, sizes[L]), Y, row_w,
                              rows_idx, b0 + a, loss, scale,
                              layer_rows(Dbuf, B, coff, L, a, e, sizes[L]), out[q0 + p])
    backward_rows(params, sizes, acts, poff, coff, trainable, lowest, B, A0, Zbuf, Abuf,
                  Dbuf, r0, r1, g, drop, seed, step, weight_grads)


# ------------------------------------------------------------------------ optimizers

@kernel
def step_constants(opt, hyper, lr, step):
    """What an optimizer step computes once, not once per block (kernels.math)."""
    return optimizer_coefficients(opt, hyper, lr, step)


@kernel
def update_range(opt, params, grad, gscale, state, hyper, lr, consts, lo, hi):
    """One optimizer step of params[lo:hi] from ``grad`` (scaled by ``gscale``).

    ``consts``: the step's ``step_constants``. Every constant is cast to the parameters'
    dtype first, so a float32 model updates in float32 (as torch does), and the arrays are
    sliced to [lo, hi) so the loops index from 0: both are needed for LLVM to vectorise
    them. State slots are touched only when the optimizer uses them: the
    gradient stands in for the others (kernels.math.optimizer_step returns them unread).
    """
    T = params.dtype.type
    gs = T(gscale)
    k0, k1, k2, k3, k4 = T(consts[0]), T(consts[1]), T(consts[2]), T(consts[3]), T(consts[4])
    k5, k6, k7, k8, k9 = T(consts[5]), T(consts[6]), T(consts[7]), T(consts[8]), T(consts[9])
    p = params[lo:hi]
    g = grad[lo:hi]
    n = hi - lo
    slots = optimizer_slots(opt, hyper)
    if slots == 0:
        for i in range(n):
            p[i], _, _ = optimizer_step(opt, p[i], g[i] * gs, g[i], g[i], k0, k1, k2, k3, k4,
                                        k5, k6, k7, k8, k9)
    elif slots == 1:
        s0 = state[0, lo:hi]
        for i in range(n):
            p[i], s0[i], _ = optimizer_step(opt, p[i], g[i] * gs, s0[i], g[i], k0, k1, k2, k3,
                                            k4, k5, k6, k7, k8, k9)
    else:
        s0 = state[0, lo:hi]
        s1 = state[1, lo:hi]
        for i in range(n):
            p[i], s0[i], s1[i] = optimizer_step(opt, p[i], g[i] * gs, s0[i], s1[i], k0, k1,
                                                k2, k3, k4, k5, k6, k7, k8, k9)


@kernel(fastmath=FAST)
def grad_sq_range(grad, lo, hi, block_sq, bi):
    """Squared norm of grad[lo:hi] into block_sq[bi] (for clipping)."""
    s = 0.0
    for i in range(lo, hi):
        s += grad[i] * grad[i]
    block_sq[bi] = s


@kernel
def clip_scale(clip_norm, block_sq):
    """torch.nn.utils.clip_grad_norm_'s coefficient, max_norm / (norm + 1e-6) clamped to 1,
    from the blocks' squared norms summed in block order (the same sum however many
    threads made the parts)."""
    sq = 0.0
    for bi in range(block_sq.shape[0]):
        sq += block_sq[bi]
    return min(1.0, clip_norm / (math.sqrt(sq) + 1e-6))


@kernel
def update_all(opt, params, grad, clip_norm, state, hyper, lr, step, blocks, block_sq):
    """Clip the gradient's global norm if asked, then one optimizer step over every
    trainable block.

    Clipping follows torch.nn.utils.clip_grad_norm_: coef = max_norm / (norm + 1e-6),
    clamped to 1, from per-block partial sums in ``block_sq`` (the order update_share
    sums them in too).
    """
    nblocks = blocks.shape[0]
    gscale = 1.0
    if clip_norm > 0.0:
        for bi in range(nblocks):
            grad_sq_range(grad, blocks[bi, 0], blocks[bi, 1], block_sq, bi)
        gscale = clip_scale(clip_norm, block_sq)
    consts = step_constants(opt, hyper, lr, step)
    for bi in range(nblocks):
        update_range(opt, params, grad, gscale, state, hyper, lr, consts, blocks[bi, 0],
                     blocks[bi, 1])


@kernel
def grad_share(n_in, n_out, l, t, nt):
    """Member t's share (of nt) of layer l's weight gradient, and of its optimizer step:
    rows [k0, k1) of gW (a contiguous span of the flat parameters, n_out per row) and, if
    ``with_bias``, the bias. A layer that goes through kernels.gemm is split in whole
    8-row blocks (its micro-kernel's), the bias to the last member; any other (BLAS, a
    regression head) goes whole to one member, layers dealt round-robin. The one rule
    that both weight_grad_part and update_part follow, so each member steps exactly the
    spans it made."""
    if gemm_weight_grad(n_in, n_out):
        k0 = (t * n_in // nt) // 8 * 8
        k1 = n_in if t == nt - 1 else ((t + 1) * n_in // nt) // 8 * 8
        return k0, k1, t == nt - 1
    if l % nt == t:
        return 0, n_in, True
    return 0, 0, False


@kernel
def weight_grad_part(params, sizes, poff, coff, trainable, lowest, B, rows, Abuf, Dbuf, g,
                     t, nt):
    """Part ``t`` of ``nt`` of the weight gradients of a whole batch (every slice's deltas
    are in Dbuf), as ``grad_share`` deals them. Each part writes disjoint, contiguous
    spans of g."""
    for l in range(sizes.shape[0] - 2, lowest - 1, -1):
        if not trainable[l]:
            continue
        n_in = sizes[l]
        n_out = sizes[l + 1]
        o = poff[l]
        nw = n_in * n_out
        k0, k1, with_bias = grad_share(n_in, n_out, l, t, nt)
        A = layer_rows(Abuf, B, coff, l, 0, rows, n_in)
        D = layer_rows(Dbuf, B, coff, l + 1, 0, rows, n_out)
        gb = g[o + nw: o + nw + n_out]
        if not gemm_weight_grad(n_in, n_out):
            if with_bias:
                dense_weight_grad(A, D, g[o: o + nw].reshape(n_in, n_out), gb)
            continue
        if k1 > k0:
            gemm(flat(A)[k0:], 1, n_in, flat(D), n_out, False, g[o + k0 * n_out:], n_out,
                 gb, k1 - k0, n_out, rows, ASSIGN)
        if with_bias:
            bias_grad(D, gb)


@kernel
def update_part(opt, params, g, state, hyper, lr, consts, sizes, poff, trainable, lowest, t,
                nt):
    """One optimizer step of exactly the spans ``weight_grad_part`` made as part t of nt,
    by the thread that made them, while they are in its cache: no pass of its own over
    the gradient, no barrier before it, nothing read from another core. Only where
    nothing needs the whole gradient first (no clipping); the update is elementwise, so
    the numbers are those of update_all."""
    for l in range(sizes.shape[0] - 2, lowest - 1, -1):
        if not trainable[l]:
            continue
        n_out = sizes[l + 1]
        o = poff[l]
        nw = sizes[l] * n_out
        k0, k1, with_bias = grad_share(sizes[l], n_out, l, t, nt)
        if k1 > k0:
            update_range(opt, params, g, 1.0, state, hyper, lr, consts, o + k0 * n_out,
                         o + k1 * n_out)
        if with_bias:
            update_range(opt, params, g, 1.0, state, hyper, lr, consts, o + nw,
                         o + nw + n_out)


# ------------------------------------------------------------------ training teams

@kernel
def update_share(opt, params, grad, clip_norm, state, hyper, lr, step, blocks, block_sq, t,
                 nt, sync, u, roster, phase):
    """Part t of nt of one optimizer step: its t-th of the trainable elements, cut at
    whole vectors (the update is elementwise, so any split gives the same numbers). The
    clipping norm is summed by whole blocks, each by the part that holds its middle, in
    update_all's block order; then every member of ``roster`` (u is this one) meets at
    barrier ``phase``, since each needs every block's sum."""
    nb = blocks.shape[0]
    total = 0
    for bi in range(nb):
        total += blocks[bi, 1] - blocks[bi, 0]
    gscale = 1.0
    if clip_norm > 0.0:
        acc = 0
        for bi in range(nb):
            n = blocks[bi, 1] - blocks[bi, 0]
            if (acc + n // 2) * nt // total == t:
                grad_sq_range(grad, blocks[bi, 0], blocks[bi, 1], block_sq, bi)
            acc += n
        barrier(sync, u, roster, phase)
        gscale = clip_scale(clip_norm, block_sq)
    consts = step_constants(opt, hyper, lr, step)
    V = lanes(params)
    lo = (t * total // nt) // V * V                      # in trainable-element coordinates
    hi = total if t == nt - 1 else ((t + 1) * total // nt) // V * V
    acc = 0
    for bi in range(nb):
        b_lo = blocks[bi, 0]
        n = blocks[bi, 1] - b_lo
        a = max(lo, acc)
        b = min(hi, acc + n)
        if a < b:
            update_range(opt, params, grad, gscale, state, hyper, lr, consts,
                         b_lo + a - acc, b_lo + b - acc)
        acc += n


# The optimizer code of a chunk that only adds up gradients (train_chunk).
GRADIENT_ONLY = -1

# Barriers of batch number b (1-based) carry the values PHASES * b + 1, + 2, ...: they
# grow through a chunk, so a member that joins late never mistakes an old barrier for one
# of its own batch.
PHASES = 4


@kernel
def member_batch(u, sync, want, n_members, roster):
    """The batch (1-based) member u runs next and its roster: the leader (u = 0) opens
    ``want`` itself; another member waits for it (or for a later one, or for the end,
    PLAN_DONE). A member alone (n_members = 1) just runs it."""
    if n_members == 1:
        return want, 1
    if u == 0:
        return want, lead_batch(sync, n_members, want, roster)
    return await_batch(sync, u, want)


@kernel
def chunk_steps(u, n_members, n_slices, sync, X, Y, row_w, perm, start, stop, batch_size,
                scale, params, sizes, acts, poff, coff, trainable, lowest, loss, Zbuf, Abuf,
                Dbuf, grad, tloss, opt, state, hyper, lrs, step, clip_norm, blocks, block_sq,
                losses, drop, seed, grads):
    """Member u of a team of up to n_members runs the chunk: train_chunk's contract.

    Per batch: the roster (kernels.sync) is the leader and the members already waiting.
    The batch is cut into ``n_slices`` row slices (fewer for a short batch), whoever is
    there: a BLAS product's rounding may depend on its shape, so the slices, unlike the
    roster, must not vary from run to run. The roster's members carry the slices forward
    and back to the deltas, member t of nt slices t, t + nt, ...; (barrier) then
    the members split the weight gradients by rows of gW and each steps the spans it made
    (``update_part``): the gradient never leaves its core. With clipping the step needs
    the whole gradient's norm: (barrier) the step is split by parameter blocks and
    (barrier) the norm summed first. The leader opens the next batch once the roster is
    done. Every element of the gradient and every update is computed the same way
    whatever the roster, so the weights do not depend on it; only the loss sums' order
    does."""
    n_out = sizes[sizes.shape[0] - 1]
    n_batches = (stop - start + batch_size - 1) // batch_size
    roster = 1
    want = 1
    if u != 0:
        published = atomic_load(sync, plan_slot(sync) + PLAN_BATCH)
        if published >= PLAN_DONE:
            return -1       # arrived after the end: nothing to join (waiting would spin)
        want = published + 1
    solo = n_members == 1               # the leader alone, from the start or from a check
    fuse_alone = sync[plan_slot(sync) + FUSE_ALONE] != 0
    waited = 0
    since = cycles()
    while u != 0 or want <= n_batches:
        b, roster = member_batch(u, sync, want, 1 if solo else n_members, roster)
        if b >= PLAN_DONE:
            return -1
        k = b - 1
        t = popcount_below(roster, u)
        nt = popcount(roster)
        b0 = start + k * batch_size
        rows = min(batch_size, stop - b0)
        ns = min(n_slices, max(1, rows // MIN_ROWS_PER_THREAD))   # a short batch: fewer
        # Alone with one slice, the weight gradients come with the deltas, layer by layer.
        # Alone with several, the batch is one slice too where the caller allows it (no
        # BLAS call, whose rounding may depend on the rows): the same numbers, the loss
        # summed by the same parts, in one pass (a team's slices cost one thread 15-25%
        # on the narrow net).
        fused = nt == 1 and (ns == 1 or fuse_alone)
        parts = ns if fused else 1
        ns_run = 1 if fused else ns
        if k + 1 < n_batches:   # this member's rows of the next batch, on their way
            nrows = min(batch_size, stop - b0 - batch_size)
            nn = min(n_slices, max(1, nrows // MIN_ROWS_PER_THREAD))
            nb0 = b0 + batch_size
            for q in range(t, nn, nt):
                prefetch_rows(X, Y, row_w, perm, nb0 + q * nrows // nn,
                              nb0 + (q + 1) * nrows // nn)
        for q in range(t, ns_run, nt):
            slice_loss_grad(X, Y, row_w, perm, b0, q * rows // ns_run,
                            (q + 1) * rows // ns_run,
                            scale if scale > 0.0 else loss_scale(loss, rows, n_out), params,
                            sizes, acts, poff, coff, trainable, lowest, loss, batch_size, Zbuf,
                            Abuf, Dbuf, grad, drop, seed, step + k + 1, tloss, q, parts, fused)
        if nt > 1:
            waited += barrier(sync, u, roster, PHASES * b + 1)
        total = 0.0
        metric = 0.0
        for r in range(ns):
            total += tloss[r, 0]
            metric += tloss[r, 1]
        if t == 0:
            losses[k, 0] = total
            losses[k, 1] = metric
        if not math.isfinite(total):   # every member sees the same total: all stop here
            if u != 0:
                done_with(sync, u, b)
                return -1
            if not solo:
                lead_finish(sync, n_members, roster, k)
            return k
        if not fused:
            weight_grad_part(params, sizes, poff, coff, trainable, lowest, batch_size, rows,
                             Abuf, Dbuf, grad, t, nt)
        if opt == GRADIENT_ONLY:
            add_grad_part(grads, grad, sizes, poff, trainable, lowest, t, nt)
        elif clip_norm == 0.0 and nt > 1:
            # Each member steps the spans it made, while they are in its cache.
            update_part(opt, params, grad, state, hyper, lrs[k],
                        step_constants(opt, hyper, lrs[k], step + k + 1), sizes, poff,
                        trainable, lowest, t, nt)
        else:
            # Alone, the weight gradients came with the deltas and one pass steps every
            # block (on the narrow net faster than update_part's order, layer by layer).
            if nt > 1:
                waited += barrier(sync, u, roster, PHASES * b + 2)
            update_share(opt, params, grad, clip_norm, state, hyper, lrs[k], step + k + 1,
                         blocks, block_sq, t, nt, sync, u, roster, PHASES * b + 3)
        if u != 0:
            done_with(sync, u, b)
        elif not solo and (k + 1) % TEAM_CHECK_STEPS == 0:
            # Waiting more than working: a member is not getting its core (another process,
            # a stolen virtual CPU). Once the roster is done with this batch, the leader
            # lets the members go and trains the rest of the chunk alone, with the same
            # numbers.
            now = cycles()
            if 2 * waited > now - since:
                lead_finish(sync, n_members, roster, 0)
                solo = True
            waited = 0
            since = now
        want = b + 1
    if n_members > 1 and not solo:
        lead_finish(sync, n_members, roster, n_batches)
    return n_batches


@kernel
def add_grad_part(grads, grad, sizes, poff, trainable, lowest, t, nt):
    """grads += grad over exactly the spans part t of nt made (grad_share's rule)."""
    for l in range(sizes.shape[0] - 2, lowest - 1, -1):
        if not trainable[l]:
            continue
        n_out = sizes[l + 1]
        o = poff[l]
        nw = sizes[l] * n_out
        k0, k1, with_bias = grad_share(sizes[l], n_out, l, t, nt)
        for i in range(o + k0 * n_out, o + k1 * n_out):
            grads[i] += grad[i]
        if with_bias:
            for i in range(o + nw, o + nw + n_out):
                grads[i] += grad[i]


@entry
def train_chunk(u, n_members, n_slices, sync, X, Y, row_w, perm, start, stop, batch_size,
                scale, params, sizes, acts, poff, coff, trainable, lowest, loss, Zbuf, Abuf,
                Dbuf, grad, tloss, opt, state, hyper, lrs, step, clip_norm, blocks, block_sq,
                losses, drop, seed, grads):
    """Member u of a team of up to n_members trains the mini-batches of perm[start:stop],
    one optimizer step each. Member 0, the leader, is the calling thread; the others run
    on other threads (fastbp.threads) and join as they arrive (kernels.sync). A team of
    one needs no other thread: that is the serial trainer.

    Batch k covers perm[start + k*batch_size : ...] (the last may be partial). Its loss is
    ``scale`` times its summed row losses, or with ``scale`` = 0 the mean over its own
    rows. ``lrs[k]`` is batch k's learning rate, ``step`` the optimizer's step count
    before the chunk. ``losses[k, 0]`` receives batch k's loss and ``losses[k, 1]`` its
    summed row metric (see ``row_metric``). ``drop``/``seed``: per-layer dropout rates and
    the fit's dropout seed. ``sync``: the team's words, kernels.sync.sync_words(n_members)
    of them, zeroed before the chunk. Stops before updating on a non-finite loss. With
    ``opt`` = GRADIENT_ONLY nothing is updated: each batch's gradient is added to
    ``grads`` (layout of params; zeroed by the caller), and the chunk is a full-data
    gradient. Returns the number of batches done (the leader; -1 for the others). The
    leader leaves its cycles in the plan's SPENT word (the caller's unit of time for
    GRACE, kernels.sync)."""
    c0 = cycles()
    done = chunk_steps(u, n_members, n_slices, sync, X, Y, row_w, perm, start, stop,
                       batch_size, scale, params, sizes, acts, poff, coff, trainable, lowest,
                       loss, Zbuf, Abuf, Dbuf, grad, tloss, opt, state, hyper, lrs, step,
                       clip_norm, blocks, block_sq, losses, drop, seed, grads)
    if u == 0:
        sync[plan_slot(sync) + SPENT] = cycles() - c0
    return done


@kernel(fastmath=FAST)
def rows_finite(X, r0, r1):
    """Whether rows r0..r1 (r1 > r0) of X hold finite values only: x - x is 0 for those
    and NaN for NaN and inf, and one NaN survives the sum (no 'nnan' flag lets LLVM
    fold x - x to 0)."""
    s = X[r0, 0] - X[r0, 0]
    for i in range(r0, r1):
        for j in range(X.shape[1]):
            s += X[i, j] - X[i, j]
    return s == 0


@kernel
def forward_slice(X, params, sizes, acts, poff, coff, loss, n_layers, B, Zbuf, Abuf, out,
                  pre_activation, b0, r0, r1, tile, no_drop, check, bad):
    """Rows b0+r0..b0+r1 of X forward; the last layer's Z or A into the same rows of out.

    The slice goes through in tiles of ``tile`` rows that all reuse the scratch rows
    starting at r0: a slice of thousands of rows carried layer by layer would stream every
    layer's output through memory instead of cache. With ``check``, a tile whose inputs
    are not all finite sets bad[0] = 1: checked on its way into the cache, X is read from
    memory once instead of twice."""
    w = sizes[n_layers]
    S = even_tile(r1 - r0, tile)
    for s0 in range(r0, r1, S):
        s1 = min(s0 + S, r1)
        t1 = r0 + (s1 - s0)
        if check and not rows_finite(X, b0 + s0, b0 + s1):
            bad[0] = 1
        forward_rows(params, sizes, acts, poff, coff, loss, B,
                     matrix_rows(X, b0 + s0, b0 + s1), Zbuf, Abuf, r0, t1, n_layers, no_drop,
                     0, 0)
        if pre_activation:
            src = layer_rows(Zbuf, B, coff, n_layers, r0, t1, w)
        else:
            src = layer_rows(Abuf, B, coff, n_layers, r0, t1, w)
        for i in range(s1 - s0):
            si = src[i]
            oi = out[b0 + s0 + i]
            for j in range(w):
                oi[j] = si[j]


@kernel
def even_tile(rows, tile):
    """Rows per tile for ``rows`` rows in tiles of at most ``tile``: as many tiles as that
    needs, of even size, in whole row blocks of the gemm micro-kernel where that fits. A
    short last tile costs a whole pass over every weight matrix (packed again for a few
    rows)."""
    tile = max(1, tile)
    if rows <= tile:
        return max(1, rows)
    n_tiles = (rows + tile - 1) // tile
    even = (rows + n_tiles - 1) // n_tiles
    blocks = (even + BLOCK_ROWS - 1) // BLOCK_ROWS * BLOCK_ROWS
    return blocks if blocks <= tile else even


@entry
def forward_tiles(u, n_members, X, params, sizes, acts, poff, coff, loss, n_layers, B, Zbuf,
                  Abuf, out, pre_activation, tile, work, check, bad):
    """Member u of up to n_members carries rows of X through the first ``n_layers``
    layers, the result into ``out`` (``pre_activation``: Z, the logits, instead of A for
    the last layer run).

    The rows are cut into tiles of ``tile`` rows, claimed one at a time from the counter
    work[0] until none are left, so a member that starts late takes fewer tiles instead
    of holding the others up; work[1] counts the finished ones, and the leader (u = 0, the
    calling thread) returns once every tile is done. Member u carries its tiles through
    its own part of the B scratch rows. Each row's result is computed the same way
    whatever tile it falls in. ``check``: set bad[0] = 1 if X holds a NaN or inf (``out``
    is then meaningless)."""
    n = X.shape[0]
    n_tiles = (n + tile - 1) // tile
    no_drop = np.zeros(sizes.shape[0] - 1)
    s = u * (B // n_members)            # this member's scratch rows: s .. s + tile
    while True:
        i = claim(work, 0)
        if i >= n_tiles:
            break
        r0 = i * tile
        r1 = min(n, r0 + tile)
        forward_slice(X, params, sizes, acts, poff, coff, loss, n_layers, B, Zbuf, Abuf, out,
                      pre_activation, r0 - s, s, s + r1 - r0, tile, no_drop, check, bad)
        fetch_add(work, 1, 1)
    if u == 0:
        while atomic_load(work, 1) < n_tiles:
            spin_pause()


@entry
def loss_sum(Z, Y, row_w, loss):
    """Sum over rows of the weighted per-row loss of logits Z against targets Y (eval)."""
    n, k = Z.shape
    total = 0.0
    for i in range(n):
        zi = Z[i]
        yi = Y[i]
        li = 0.0
        if loss == m.CROSS_ENTROPY:
            zmax = zi[0]
            for j in range(1, k):
                zmax = max(zmax, zi[j])
            se = 0.0
            for j in range(k):
                se += math.exp(zi[j] - zmax)
            lse = zmax + math.log(se)
            for j in range(k):
                if yi[j] != 0:
                    li -= yi[j] * (zi[j] - lse)
        else:
            for j in range(k):
                li += pointwise_loss(loss, zi[j], yi[j])
            li /= k
        total += row_w[i] * li
    return total


@entry
def predict_rows(params, sizes, acts, poff, coff, loss, Zbuf, Abuf, X, out):
    """Serial inference for use inside a caller's own ``@njit`` code.

    ``out[i]`` receives the output-layer activation of row ``X[i]`` (probabilities for the
    classification losses, values otherwise). Zbuf/Abuf are the model's scratch rows
    (``MLP.compiled_predictor`` makes them); one set per calling thread.
    """
    n = X.shape[0]
    L = sizes.shape[0] - 1
    B = Zbuf.shape[0] // coff[L + 1]
    no_drop = np.zeros(L)
    no_bad = np.zeros(1, dtype=np.int64)
    forward_slice(X, params, sizes, acts, poff, coff, loss, L, B, Zbuf, Abuf, out, False, 0,
                  0, n, B, no_drop, False, no_bad)


# ------------------------------------------------- split step (data-parallel training)

@entry
def apply_update(opt, params, G, state, hyper, lr, step, clip_norm, blocks, block_sq):
    """One optimizer step from the flat gradient G[:P] (e.g. after an allreduce)."""
    update_all(opt, params, G[:params.shape[0]], clip_norm, state, hyper, lr, step, blocks,
               block_sq)
