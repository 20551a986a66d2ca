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
import hashlib
import math

import numpy as np
from numba import njit, prange

from . import math as m
from .gemm import ASSIGN, ASSIGN_BIAS, ASSIGN_BIAS_RELU, BLOCK_ROWS, gemm
from .simd import lanes, prefetch, vexp, vload_part, vstore_part
from .sync import (MODE_SOLO, MODE_TEAM, SOLO_OWNER, atomic_load, atomic_store, barrier,
                   compare_exchange, cycles, result_slot, team_start)
from .tuning import (BLAS_MAX_HAND_OUTPUTS, BLAS_MIN_ROWS, BLAS_MIN_WEIGHTS,
                     GEMM_DELTA_MAX_WEIGHTS, GEMM_DELTA_MIN_OUTPUTS, GEMM_MAX_WEIGHTS,
                     MIN_ROWS_PER_THREAD, MIN_WORK_PER_THREAD, TEAM_MIN_WORK_PER_THREAD,
                     TEAM_CHECK_STEPS, TEAM_PATIENCE_CYCLES, UPDATE_PARALLEL_MIN)

# error_model="numpy": a float division by zero gives inf/nan (caught by the divergence
# checks) instead of raising. Python's model puts a branch on every division, which stops
# LLVM from vectorising loops such as the Adam update (measured 12x slower).
_jit = dict(cache=True, nogil=True, error_model="numpy")
# Reassociation lets LLVM vectorise the dot-product reductions; NaN/inf semantics are kept
# (no 'nnan'/'ninf') so that divergence is still detected.
_jit_fast = dict(_jit, fastmath={"reassoc", "contract"})

_scalar = m.compile_with(njit(**_jit),
                         "cpu" + hashlib.sha1(repr(sorted(_jit.items())).encode()).hexdigest()[:8])
activate = _scalar.activate
activate_grad = _scalar.activate_grad
pointwise_loss = _scalar.pointwise_loss
pointwise_loss_grad = _scalar.pointwise_loss_grad
sgd_step = _scalar.sgd_step
adam_step = _scalar.adam_step
rmsprop_step = _scalar.rmsprop_step
adam_constants = _scalar.adam_constants
row_metric = _scalar.row_metric
output_rows = _scalar.output_rows
loss_scale = _scalar.loss_scale
dropout_keep = _scalar.dropout_keep


# ---------------------------------------------------------------------------- views

@njit(**_jit)
def layer_rows(buf, B, coff, l, r0, r1, width):
    """Rows r0..r1 of layer ``l``'s (B, width) slab of a flat row buffer."""
    base = B * coff[l]
    return buf[base + r0 * width: base + r1 * width].reshape(r1 - r0, width)


@njit(**_jit)
def matrix_rows(X, r0, r1):
    """Rows r0..r1 of a C-contiguous 2-D array as a C-layout view."""
    w = X.shape[1]
    return X.reshape(X.shape[0] * w)[r0 * w: r1 * w].reshape(r1 - r0, w)


@njit(**_jit)
def weight(params, poff, sizes, l):
    n_in = sizes[l]
    n_out = sizes[l + 1]
    o = poff[l]
    return params[o: o + n_in * n_out].reshape(n_in, n_out)


@njit(**_jit)
def bias(params, poff, sizes, l):
    o = poff[l] + sizes[l] * sizes[l + 1]
    return params[o: o + sizes[l + 1]]


@njit(**_jit)
def use_blas(rows, n_in, n_out):
    return (rows >= BLAS_MIN_ROWS and n_in * n_out >= BLAS_MIN_WEIGHTS
            and n_out > BLAS_MAX_HAND_OUTPUTS)


@njit(**_jit)
def gemm_forward(n_in, n_out):
    """Which products go through the register-blocked kernels of kernels.gemm instead of
    BLAS (measured: see tuning.py). Not regression heads: a handful of outputs would waste
    most of each vector."""
    return n_out > BLAS_MAX_HAND_OUTPUTS


@njit(**_jit)
def gemm_weight_grad(n_in, n_out):
    """Above GEMM_MAX_WEIGHTS BLAS's fully packed copies win."""
    return n_out > BLAS_MAX_HAND_OUTPUTS and n_in * n_out <= GEMM_MAX_WEIGHTS


@njit(**_jit)
def gemm_input_delta(n_in, n_out):
    """D @ W^T reads W transposed while packing each panel: worth it once the reduction
    (n_out) is long enough to reuse the panel."""
    return n_out >= GEMM_DELTA_MIN_OUTPUTS and n_in * n_out <= GEMM_DELTA_MAX_WEIGHTS


@njit(**_jit)
def flat(X):
    return X.reshape(X.size)


@njit(**_jit)
def n_slices(rows, max_slices, work_per_row):
    """How many threads share a batch of ``rows`` rows (at most ``max_slices``).

    The thread count comes from Python: numba's get_num_threads() inside a kernel would
    make it, and every kernel calling it, uncacheable.
    """
    by_rows = max(1, rows // MIN_ROWS_PER_THREAD)
    by_work = max(1, (rows * work_per_row) // MIN_WORK_PER_THREAD)
    return min(max_slices, by_rows, by_work)


@njit(**_jit)
def forward_macs(sizes):
    """Multiply-adds of one row's forward pass."""
    s = 0
    for l in range(sizes.shape[0] - 1):
        s += sizes[l] * sizes[l + 1]
    return s


# ---------------------------------------------------------------------- dense layers

@njit(**_jit_fast)
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


@njit(**_jit_fast)
def bias_grad(D, gb):
    """gb = column sums of D  (overwrites)."""
    n = D.shape[1]
    for j in range(n):
        gb[j] = 0
    for i in range(D.shape[0]):
        for j in range(n):
            gb[j] += D[i, j]


@njit(**_jit_fast)
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


@njit(**_jit)
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


@njit(**_jit_fast)
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


@njit(**_jit)
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


@njit(**_jit)
def exp_inplace(A, lo, hi):
    """A[lo:hi] = e^A[lo:hi] (A flat), a vector at a time: numba's math.exp is one scalar
    libm call per element (3.4 ns each, measured), more than the rest of a narrow
    classifier's forward pass."""
    V = lanes(A)
    i = lo
    while i + V <= hi:
        vstore_part(A, i, vexp(vload_part(A, i, V)), V)
        i += V
    if i < hi:
        vstore_part(A, i, vexp(vload_part(A, i, hi - i)), hi - i)


@njit(**_jit_fast)
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


@njit(**_jit)
def output_activation(Z, A, loss):
    """Softmax rows for cross-entropy, sigmoid for BCE, identity otherwise."""
    rows, n = Z.shape
    if loss == m.CROSS_ENTROPY:
        softmax_rows(Z, A)
        return
    output_rows(Z, 0, A, 0, rows, n, loss)


# ------------------------------------------------------------------- whole network

@njit(**_jit)
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


@njit(**_jit)
def loss_and_output_delta(Z, A, Y, row_w, rows_idx, lo, loss, scale, D, out):
    """Loss summed over rows (times ``scale``) and its delta w.r.t. the logits into ``D``.

    Row i of the slice holds sample ``rows_idx[lo + i]``; ``scale`` is 1/rows for
    cross-entropy (mean over rows) and 1/(rows*n_out) for the elementwise losses.
    ``out[0]`` receives the scaled loss sum, ``out[1]`` the summed row metric.
    Indexed in 2-D: four row views per row cost 26x the arithmetic of a one-output
    regression head (1.76 vs 0.07 us for 32 rows).
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


@njit(**_jit)
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


@njit(**_jit)
def gather_rows(X, rows_idx, lo, hi, A0):
    n = X.shape[1]
    for i in range(hi - lo):
        s = rows_idx[lo + i]
        for j in range(n):
            A0[i, j] = X[s, j]


@njit(**_jit)
def prefetch_rows(X, Y, row_w, rows_idx, lo, hi):
    """Ask for the cache lines of rows rows_idx[lo:hi] of X and Y and their weights: a
    shuffled batch's rows come from all over X, and the next batch's, fetched while this
    one trains, are in cache when it gathers them (measured on the narrow net: 32 rows of
    32 took 0.87 us to gather from L3, most of it waiting)."""
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


@njit(**_jit)
def slice_loss_grad(X, Y, row_w, rows_idx, b0, r0, r1, scale, params, sizes, acts, poff,
                    coff, trainable, lowest, loss, B, Zbuf, Abuf, Dbuf, g, drop, seed, step, out,
                    weight_grads):
    """Forward, loss and backward for rows r0..r1 of the batch starting at ``b0``.

    ``out`` receives [scaled loss sum, metric sum] of the slice; ``weight_grads``: whether
    the slice's weight gradients go into g (see loss_grad_slices)."""
    L = sizes.shape[0] - 1
    A0 = layer_rows(Abuf, B, coff, 0, r0, r1, sizes[0])
    gather_rows(X, rows_idx, b0 + r0, b0 + r1, A0)
    forward_rows(params, sizes, acts, poff, coff, loss, B, A0, Zbuf, Abuf, r0, r1, L, drop,
                 seed, step)
    Zo = layer_rows(Zbuf, B, coff, L, r0, r1, sizes[L])
    Ao = layer_rows(Abuf, B, coff, L, r0, r1, sizes[L])
    Do = layer_rows(Dbuf, B, coff, L, r0, r1, sizes[L])
    loss_and_output_delta(Zo, Ao, Y, row_w, rows_idx, b0 + r0, loss, scale, Do, out)
    backward_rows(params, sizes, acts, poff, coff, trainable, lowest, B, A0, Zbuf, Abuf,
                  Dbuf, r0, r1, g, drop, seed, step, weight_grads)


# ------------------------------------------------------------------------ optimizers

@njit(**_jit)
def step_constants(opt, hyper, lr, step):
    """What an optimizer step computes once, not once per block: Adam's bias-corrected
    (step_size, inv_bias2_sqrt, l2, decay); zeros for the others."""
    if opt == m.ADAM:
        return adam_constants(lr, hyper[0], hyper[1], hyper[3], hyper[4], step)
    return 0.0, 0.0, 0.0, 0.0


@njit(**_jit)
def update_range(opt, params, grad, gscale, state, hyper, lr, consts, lo, hi):
    """One optimizer step of params[lo:hi] from ``grad`` (scaled by ``gscale``).

    ``hyper`` per optimizer: SGD [momentum, nesterov, weight_decay]; Adam/AdamW
    [beta1, beta2, eps, weight_decay, decoupled]; RMSprop [alpha, eps, momentum, weight_decay].
    ``consts``: the step's ``step_constants``. Every constant is cast to the parameters'
    dtype first, so a float32 model updates in float32 (as torch does), and the arrays are
    sliced to [lo, hi) so the loops index from 0: both are needed for LLVM to vectorise
    them (10x measured). State slots are touched only when the optimizer owns them.
    """
    T = params.dtype.type
    gs = T(gscale)
    lr_ = T(lr)
    p = params[lo:hi]
    g = grad[lo:hi]
    n = hi - lo
    if opt == m.SGD:
        mom = T(hyper[0])
        nest = T(hyper[1])
        wd = T(hyper[2])
        if mom != 0:
            buf = state[0, lo:hi]
            for i in range(n):
                p[i], buf[i] = sgd_step(p[i], g[i] * gs, buf[i], lr_, mom, nest, wd)
        else:
            for i in range(n):
                p[i], _ = sgd_step(p[i], g[i] * gs, g[i], lr_, mom, nest, wd)
    elif opt == m.ADAM:
        step_size, inv_b2, l2, decay = consts
        b1 = T(hyper[0])
        b2 = T(hyper[1])
        omb1 = T(1.0 - hyper[0])
        omb2 = T(1.0 - hyper[1])
        eps = T(hyper[2])
        l2_ = T(l2)
        decay_ = T(decay)
        ss = T(step_size)
        ib2 = T(inv_b2)
        mb = state[0, lo:hi]
        vb = state[1, lo:hi]
        for i in range(n):
            p[i], mb[i], vb[i] = adam_step(p[i], g[i] * gs, mb[i], vb[i], b1, omb1, b2, omb2,
                                           eps, l2_, decay_, ss, ib2)
    else:  # RMSPROP
        alpha = T(hyper[0])
        oma = T(1.0 - hyper[0])
        eps = T(hyper[1])
        mom = T(hyper[2])
        wd = T(hyper[3])
        sq = state[0, lo:hi]
        if mom > 0:
            buf = state[1, lo:hi]
            for i in range(n):
                p[i], sq[i], buf[i] = rmsprop_step(p[i], g[i] * gs, sq[i], buf[i], lr_, alpha,
                                                   oma, eps, mom, wd)
        else:
            for i in range(n):
                p[i], sq[i], _ = rmsprop_step(p[i], g[i] * gs, sq[i], g[i], lr_, alpha, oma,
                                              eps, mom, wd)


@njit(**_jit_fast)
def grad_sq_range(grad, lo, hi, block_sq, bi):
    """Squared norm of grad[lo:hi] into block_sq[bi] (for clipping)."""
    s = 0.0
    for i in range(lo, hi):
        s += grad[i] * grad[i]
    block_sq[bi] = s


@njit(**_jit)
def clip_scale(clip_norm, block_sq):
    """torch.nn.utils.clip_grad_norm_'s coefficient, max_norm / (norm + 1e-6) clamped to 1,
    from the blocks' squared norms summed in block order (the same sum however many
    threads made the parts)."""
    sq = 0.0
    for bi in range(block_sq.shape[0]):
        sq += block_sq[bi]
    return min(1.0, clip_norm / (math.sqrt(sq) + 1e-6))


@njit(parallel=True, **_jit)
def update_all(opt, params, grad, clip_norm, state, hyper, lr, step, blocks, block_sq):
    """Clip the gradient's global norm if asked, then one optimizer step over every
    trainable block; one thread for small vectors, where waking the others costs more than
    the pass.

    Clipping follows torch.nn.utils.clip_grad_norm_: coef = max_norm / (norm + 1e-6),
    clamped to 1. Per-block partial sums go to ``block_sq``: a prange reduction would
    allocate on every call.
    """
    nblocks = blocks.shape[0]
    serial = blocks[nblocks - 1, 1] - blocks[0, 0] < UPDATE_PARALLEL_MIN
    gscale = 1.0
    if clip_norm > 0.0:
        if serial:
            for bi in range(nblocks):
                grad_sq_range(grad, blocks[bi, 0], blocks[bi, 1], block_sq, bi)
        else:
            for bi in prange(nblocks):
                grad_sq_range(grad, blocks[bi, 0], blocks[bi, 1], block_sq, bi)
        gscale = clip_scale(clip_norm, block_sq)
    consts = step_constants(opt, hyper, lr, step)
    if serial:
        for bi in range(nblocks):
            update_range(opt, params, grad, gscale, state, hyper, lr, consts, blocks[bi, 0],
                         blocks[bi, 1])
    else:
        for bi in prange(nblocks):
            update_range(opt, params, grad, gscale, state, hyper, lr, consts, blocks[bi, 0],
                         blocks[bi, 1])


@njit(**_jit)
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


@njit(**_jit)
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


@njit(**_jit)
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


@njit(parallel=True, **_jit)
def loss_grad_slices(nt, rows, X, Y, row_w, perm, b0, scale, params, sizes, acts, poff, coff,
                     trainable, lowest, loss, B, Zbuf, Abuf, Dbuf, grad, drop, seed, step,
                     tloss):
    """Forward, loss and backward of one batch split into ``nt`` row slices: the gradient
    into ``grad``, the batch's [scaled loss sum, metric sum] into tloss[0].

    One slice runs in the calling thread: no parallel region. Several: each thread carries
    its slice forward and back to the deltas, then, after the region ends, the threads
    split the weight gradients of the whole batch by rows of gW straight into
    ``grad``. Per-slice gradient slots would each be a full parameter-sized write plus a
    fold before the update (measured: two threads were no faster than one on an
    MNIST-sized net), and the whole-batch products are taller."""
    if nt == 1:
        slice_loss_grad(X, Y, row_w, perm, b0, 0, rows, scale, params, sizes, acts, poff,
                        coff, trainable, lowest, loss, B, Zbuf, Abuf, Dbuf, grad, drop,
                        seed, step, tloss[0], True)
        return
    for t in prange(nt):
        slice_loss_grad(X, Y, row_w, perm, b0, t * rows // nt, (t + 1) * rows // nt, scale,
                        params, sizes, acts, poff, coff, trainable, lowest, loss, B, Zbuf,
                        Abuf, Dbuf, grad, drop, seed, step, tloss[t], False)
    for t in prange(nt):
        weight_grad_part(params, sizes, poff, coff, trainable, lowest, B, rows, Abuf, Dbuf,
                         grad, t, nt)
    for t in range(1, nt):
        tloss[0, 0] += tloss[t, 0]
        tloss[0, 1] += tloss[t, 1]


# ------------------------------------------------------------------ compiled entries

@njit(**_jit)
def team_threads(rows, n_batches, max_threads, work):
    """How many threads train a chunk of ``n_batches`` batches of ``rows`` rows together
    (a team, see kernels.sync): each gets at least TEAM_MIN_WORK_PER_THREAD multiply-adds
    of every batch (what pays for the barriers) and MIN_WORK_PER_THREAD of the chunk (what
    pays for waking the team). Not bounded by rows: a batch too short to split by rows is
    still split by rows of the weight gradients and by parameter spans."""
    by_batch = max(1, rows * work // TEAM_MIN_WORK_PER_THREAD)
    by_chunk = max(1, n_batches * rows * work // MIN_WORK_PER_THREAD)
    return min(max_threads, by_batch, by_chunk)


@njit(**_jit)
def update_share(opt, params, grad, clip_norm, state, hyper, lr, step, blocks, block_sq, t,
                 nt, sync, kb):
    """Member t's part of one optimizer step: its t-th of the trainable elements, cut at
    whole vectors (the update is elementwise, so any split gives the same numbers). The
    clipping norm is summed by whole blocks, each by the member that holds its middle, in
    update_all's block order. Returns the barrier count ``kb``, which clipping advances by
    one (every member needs every block's sum)."""
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
        kb += 1
        barrier(sync, t, nt, kb)
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
    return kb


@njit(**_jit)
def chunk_steps(t, nt, sync, X, Y, row_w, perm, start, stop, batch_size, params, sizes, acts,
                poff, coff, trainable, lowest, loss, Zbuf, Abuf, Dbuf, grad, tloss, opt,
                state, hyper, lrs, step, clip_norm, blocks, block_sq, losses, drop, seed):
    """Member t of a team of nt trains the chunk (train_chunk's contract; nt = 1: alone).

    Per batch: each member carries its row slice forward and back to the deltas, then
    (barrier) the members split the weight gradients by rows of gW, then (barrier) the
    optimizer step by parameter blocks, then (barrier) the next batch may read the new
    weights. Without clipping, each member steps the gradient spans it just made instead
    (``update_part``): one barrier fewer, and the gradient never leaves its core (narrow
    net, team: 7.3-7.7 -> 6.4-8.2 ms an epoch, mostly under 7). Every element of the
    gradient and every update is computed the same way whatever nt is, so the weights do
    not depend on it; only the loss sums' order does.
    Returns train_chunk's count, or -1 for a member that left the rest to another."""
    n_out = sizes[sizes.shape[0] - 1]
    n_batches = (stop - start + batch_size - 1) // batch_size
    kb = 1                              # team_start was barrier 1
    waited = 0                          # cycles at barriers since ``since``
    since = cycles()
    for k in range(n_batches):
        b0 = start + k * batch_size
        rows = min(batch_size, stop - b0)
        ns = min(nt, max(1, rows // MIN_ROWS_PER_THREAD))   # a short last batch: fewer
        # Alone, the weight gradients come with the deltas, layer by layer, and one pass
        # steps every block: on the narrow net 5% faster than update_part's order.
        fuse = nt > 1 and clip_norm == 0.0
        if k + 1 < n_batches:   # this member's rows of the next batch, on their way
            nrows = min(batch_size, stop - b0 - batch_size)
            nn = min(nt, max(1, nrows // MIN_ROWS_PER_THREAD))
            if t < nn:
                nb0 = b0 + batch_size
                prefetch_rows(X, Y, row_w, perm, nb0 + t * nrows // nn,
                              nb0 + (t + 1) * nrows // nn)
        if t < ns:
            slice_loss_grad(X, Y, row_w, perm, b0, t * rows // ns, (t + 1) * rows // ns,
                            loss_scale(loss, rows, n_out), params, sizes, acts, poff, coff,
                            trainable, lowest, loss, batch_size, Zbuf, Abuf, Dbuf, grad, drop,
                            seed, step + k + 1, tloss[t], nt == 1)
        if nt > 1:
            kb += 1
            waited += barrier(sync, t, nt, kb)
        total = 0.0
        metric = 0.0
        for u in range(ns):
            total += tloss[u, 0]
            metric += tloss[u, 1]
        if t == 0:
            losses[k, 0] = total
            losses[k, 1] = metric
        if not math.isfinite(total):   # every member sees the same total: all stop here
            return k
        if fuse:
            weight_grad_part(params, sizes, poff, coff, trainable, lowest, batch_size, rows,
                             Abuf, Dbuf, grad, t, nt)
            update_part(opt, params, grad, state, hyper, lrs[k],
                        step_constants(opt, hyper, lrs[k], step + k + 1), sizes, poff,
                        trainable, lowest, t, nt)
        else:
            if nt > 1:
                weight_grad_part(params, sizes, poff, coff, trainable, lowest, batch_size,
                                 rows, Abuf, Dbuf, grad, t, nt)
                kb += 1
                waited += barrier(sync, t, nt, kb)
            kb = update_share(opt, params, grad, clip_norm, state, hyper, lrs[k],
                              step + k + 1, blocks, block_sq, t, nt, sync, kb)
        if nt > 1:
            if (k + 1) % TEAM_CHECK_STEPS == 0:
                # Waiting more than working: another member is not getting its core (another
                # process, a stolen virtual CPU). The member that waited, whose core is
                # free, trains the rest of the chunk alone, with the same numbers.
                now = cycles()
                if 2 * waited > now - since:
                    compare_exchange(sync, SOLO_OWNER, 0, t + 1)
                waited = 0
                since = now
            kb += 1
            waited += barrier(sync, t, nt, kb)
            owner = atomic_load(sync, SOLO_OWNER)
            if owner > 0:
                if owner != t + 1:
                    return -1
                t = 0
                nt = 1
    return n_batches


@njit(parallel=True, **_jit)
def train_chunk(X, Y, row_w, perm, start, stop, batch_size, params, sizes, acts, poff, coff,
                trainable, lowest, loss, Zbuf, Abuf, Dbuf, grad, tloss, opt, state, hyper,
                lrs, step, clip_norm, blocks, block_sq, losses, drop, seed, sync):
    """Train on the mini-batches of ``perm[start:stop]``, one optimizer step each.

    Batch k covers perm[start + k*batch_size : ...] (the last may be partial; its loss is
    averaged over its own rows). ``lrs[k]`` is batch k's learning rate, ``step`` the
    optimizer's step count before the chunk. ``losses[k, 0]`` receives batch k's mean loss
    and ``losses[k, 1]`` its summed row metric (see ``row_metric``). ``drop``/``seed``:
    per-layer dropout rates and the fit's dropout seed. Stops before updating on a
    non-finite loss. Returns the number of steps applied.

    Up to tloss.shape[0] threads share the chunk as one team in one parallel region
    (``sync``: its int64 words, kernels.sync.sync_words of them); a chunk too small to
    pay for waking them runs in the calling thread.
    """
    n_batches = (stop - start + batch_size - 1) // batch_size
    nt = team_threads(min(batch_size, stop - start), n_batches, tloss.shape[0],
                      3 * forward_macs(sizes))
    for i in range(sync.shape[0]):
        sync[i] = 0
    if nt == 1:
        return chunk_steps(0, 1, sync, X, Y, row_w, perm, start, stop, batch_size, params,
                           sizes, acts, poff, coff, trainable, lowest, loss, Zbuf, Abuf, Dbuf,
                           grad, tloss, opt, state, hyper, lrs, step, clip_norm, blocks,
                           block_sq, losses, drop, seed)
    done = result_slot(sync)
    for i in prange(nt):
        t = np.int64(i)      # mixed with the int64 0 below, an unsigned index would be float
        mode = team_start(sync, t, nt, TEAM_PATIENCE_CYCLES)
        if mode == MODE_TEAM or mode == MODE_SOLO + t:
            me = t
            size = nt
            if mode != MODE_TEAM:   # this member claimed the chunk: it runs it alone
                me = 0
                size = 1
            n = chunk_steps(me, size, sync, X, Y, row_w, perm,
                            start, stop, batch_size, params, sizes, acts, poff, coff,
                            trainable, lowest, loss, Zbuf, Abuf, Dbuf, grad, tloss, opt, state,
                            hyper, lrs, step, clip_norm, blocks, block_sq, losses, drop, seed)
            if n >= 0:   # every member still there returns the same count
                atomic_store(sync, done, n)
    return sync[done]


@njit(parallel=True, **_jit)
def accumulate_loss_grads(X, Y, row_w, order, params, sizes, acts, poff, coff, trainable,
                          lowest, loss, B, Zbuf, Abuf, Dbuf, grad, tloss, grads):
    """Mean loss over all rows of X and its gradient (every layer) into ``grads``; no update."""
    n = X.shape[0]
    n_out = sizes[sizes.shape[0] - 1]
    scale = loss_scale(loss, n, n_out)
    no_drop = np.zeros(sizes.shape[0] - 1)
    work = 3 * forward_macs(sizes)
    P = grads.shape[0]
    for i in range(P):
        grads[i] = 0
    total = 0.0
    for b0 in range(0, n, B):
        rows = min(B, n - b0)
        nt = n_slices(rows, tloss.shape[0], work)
        loss_grad_slices(nt, rows, X, Y, row_w, order, b0, scale, params, sizes, acts, poff,
                         coff, trainable, lowest, loss, B, Zbuf, Abuf, Dbuf, grad, no_drop, 0,
                         0, tloss)
        total += tloss[0, 0]
        for i in prange(P):
            grads[i] += grad[i]
    return total


@njit(**_jit_fast)
def rows_finite(X, r0, r1):
    """Whether rows r0..r1 (r1 > r0) of X hold finite values only: x - x is 0 for those
    and NaN for NaN and inf, and one NaN survives the sum (no 'nnan' flag lets LLVM
    fold x - x to 0)."""
    s = X[r0, 0] - X[r0, 0]
    for i in range(r0, r1):
        for j in range(X.shape[1]):
            s += X[i, j] - X[i, j]
    return s == 0


@njit(**_jit)
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


@njit(**_jit)
def even_tile(rows, tile):
    """Rows per tile for ``rows`` rows in tiles of at most ``tile``: as many tiles as that
    needs, of even size, in whole row blocks of the gemm micro-kernel where that fits. A
    short last tile costs a whole pass over every weight matrix (packed again for a few
    rows): 512 rows in tiles of 170 left 2, and a 2048-wide net predicted at 309 GFLOP/s
    where 4 tiles of 128 ran at 358 (two cores)."""
    tile = max(1, tile)
    if rows <= tile:
        return max(1, rows)
    n_tiles = (rows + tile - 1) // tile
    even = (rows + n_tiles - 1) // n_tiles
    blocks = (even + BLOCK_ROWS - 1) // BLOCK_ROWS * BLOCK_ROWS
    return blocks if blocks <= tile else even


@njit(parallel=True, **_jit)
def forward_into(X, params, sizes, acts, poff, coff, loss, n_layers, B, Zbuf, Abuf, out,
                 pre_activation, max_slices, tile, check, bad):
    """Rows of X through the first ``n_layers`` layers, the result into ``out``.

    ``pre_activation`` selects Z (logits) instead of A for the last layer run. The rows
    are split over threads in one parallel region; each thread carries its share through
    in tiles of at most ``tile`` rows that reuse its part of the B scratch rows. (Blocks of
    B rows, a region each, paid a region's start per block: two for 20,000 rows of a
    narrow net, dozens for a wide one.)
    ``check``: set bad[0] = 1 if X holds a NaN or inf (``out`` is then meaningless).
    """
    n = X.shape[0]
    no_drop = np.zeros(sizes.shape[0] - 1)
    nt = n_slices(n, min(max_slices, B), forward_macs(sizes))
    if nt == 1:   # no parallel region for small inputs (single-row calls, say)
        forward_slice(X, params, sizes, acts, poff, coff, loss, n_layers, B, Zbuf, Abuf,
                      out, pre_activation, 0, 0, n, min(tile, B), no_drop, check, bad)
        return
    for i in prange(nt):
        t = np.int64(i)
        lo = t * n // nt
        s = t * B // nt             # this thread's scratch rows: s .. s + cap
        cap = (t + 1) * B // nt - s
        forward_slice(X, params, sizes, acts, poff, coff, loss, n_layers, B, Zbuf, Abuf,
                      out, pre_activation, lo - s, s, s + (t + 1) * n // nt - lo,
                      min(tile, cap), no_drop, check, bad)


@njit(parallel=True, **_jit)
def loss_sum(Z, Y, row_w, loss):
    """Sum over rows of the weighted per-row loss of logits Z against targets Y (eval)."""
    n, k = Z.shape
    total = 0.0
    for i in prange(n):
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


@njit(**_jit)
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

@njit(parallel=True, **_jit)
def batch_grads(X, Y, row_w, perm, b0, rows, scale, params, sizes, acts, poff, coff,
                trainable, lowest, loss, Zbuf, Abuf, Dbuf, grad, tloss, blocks, drop, seed,
                step, G):
    """Gradient of one batch (rows perm[b0:b0+rows]) into G[:P]; G[P] = its scaled loss sum,
    G[P+1] = its metric sum. ``scale`` is set by the caller (1/global rows for a batch split
    over processes), so summing G over processes gives the global batch's mean gradient.
    A process with no rows for this step contributes zeros. Only trainable ranges are written.
    """
    P = params.shape[0]
    B = Zbuf.shape[0] // coff[coff.shape[0] - 1]
    nblocks = blocks.shape[0]
    if rows == 0:
        for bi in prange(nblocks):
            for i in range(blocks[bi, 0], blocks[bi, 1]):
                G[i] = 0
        G[P] = 0.0
        G[P + 1] = 0.0
        return
    nt = n_slices(rows, tloss.shape[0], 3 * forward_macs(sizes))
    loss_grad_slices(nt, rows, X, Y, row_w, perm, b0, scale, params, sizes, acts, poff, coff,
                     trainable, lowest, loss, B, Zbuf, Abuf, Dbuf, grad, drop, seed, step,
                     tloss)
    for bi in prange(nblocks):
        for i in range(blocks[bi, 0], blocks[bi, 1]):
            G[i] = grad[i]
    G[P] = tloss[0, 0]
    G[P + 1] = tloss[0, 1]


@njit(**_jit)
def apply_update(opt, params, G, state, hyper, lr, step, clip_norm, blocks, block_sq):
    """One optimizer step from the flat gradient G[:P] (e.g. after an allreduce)."""
    update_all(opt, params, G[:params.shape[0]], clip_norm, state, hyper, lr, step, blocks,
               block_sq)
