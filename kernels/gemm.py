"""Register-blocked GEMM for the dense layers, written with explicit vectors (kernels.simd).

One routine serves the three products of a dense layer through strides:

    C[i, j] (= | +=) bias[j] + sum_k A[i*sai + k*sak] * B(k, j)

with B(k, j) = B[k*ldb + j], or B[j*ldb + k] when ``transb``:

* forward      Z  = A @ W + b      (sai = n_in, sak = 1, B = W)
* weight grad  gW = A^T @ D        (sai = 1, sak = n_in, B = D)
* input delta  Dp = D @ W^T        (sai = n_out, sak = 1, B = W, transb)

The micro-kernel keeps an 8-row x 2-vector block of C in registers while it runs over k
(16 FMAs per 2 vector loads and 8 broadcasts), where AVX-512's 32 registers hold its 16
accumulators; 4 rows otherwise, and for the rows left over. Two FMA pipes of 4 cycles'
latency need 8 independent accumulators just to stay busy, so the 4-row kernel stalled
on every step, and the 8-row one runs the same products faster. Columns past the last full
vector use masked loads and stores, so any width works. K is cut into blocks of KC; the B
panel the micro-kernel sweeps (KC x 2 vectors) is read in place when its rows are close,
and copied into a stack buffer first when they are far apart (or transposed), so that it
stays in L1 while every row block of A passes. A transposed A (the weight gradient's,
whose 4 values per step sit a layer width apart from the next step's) is packed block by
block too. The figures against OpenBLAS, per product and size, are in
bench/results/code-notes.md ("kernels/gemm.py" and "kernels/tuning.py").
"""
from numba import carray

from .jit import kernel

from .simd import (VEC_BYTES, at, lanes, prefetch, stack_buffer, vfma, vload_part, vrelu,
                   vsplat, vstore, vstore_part, vtranspose)

FAST = {"reassoc", "contract"}

KC = 256   # rows of B per panel: KC x 2 vectors = 32 KiB with AVX-512 (L1 is 48 KiB)
PANEL_BYTES = KC * 2 * VEC_BYTES
# Rows of C per block: their part of A (rows x KC) fits A_BLOCK_BYTES, a stack buffer
# when A is packed (see gemm), and L2 in any case.
A_BLOCK_BYTES = 64 * 2 ** 10
# A B panel is copied into contiguous scratch when its rows are at least PACK_MIN_LD
# elements apart (rows far apart fall into the same few L1 sets and evict each other) and
# there are enough rows of A to reuse it; a transposed A when its steps are PACK_A_MIN_LD
# apart, and then B too (bench/results/code-notes.md has the packed and unpacked runs).
PACK_MIN_LD = 512
PACK_A_MIN_LD = 128
PACK_MIN_ROWS = 8
# Fewer than 4 rows of C, more than this many column panels: B row by row (_rows_sweep).
SWEEP_MIN_PANELS = 2

ASSIGN, ASSIGN_BIAS, ACCUMULATE = 0, 1, 2
# ASSIGN_BIAS, then max(., 0): a hidden ReLU layer's activations straight from the
# registers, without writing its pre-activations and reading them back.
ASSIGN_BIAS_RELU = 3
# 8-row micro-kernels where 32 vector registers hold their 16 accumulators (AVX-512).
ROWS8 = VEC_BYTES == 64
# Rows of C one call of the widest micro-kernel makes.
BLOCK_ROWS = 8 if ROWS8 else 4


@kernel(fastmath=FAST)
def _block4(A, a0, sai, sak, B, bb, ldb, C, ldc, S, so, ss, s0, s1, i, j0, n0, n1, k0,
            k1, relu):
    """Rows i..i+3, columns j0..j0+n0+n1 of C over k0..k1, starting from S's rows
    (so + r*ss; s0/s1 lanes of them, zeros after: C itself, the bias, or nothing). Row k of
    the B panel starts at bb + k*ldb, A(i + r, k) is A[a0 + r*sai + k*sak]. ``relu``:
    store max(C, 0)."""
    V = lanes(C)
    o = i * ldc + j0
    c00 = vload_part(S, so, s0)
    c01 = vload_part(S, so + V, s1)
    c10 = vload_part(S, so + ss, s0)
    c11 = vload_part(S, so + ss + V, s1)
    c20 = vload_part(S, so + 2 * ss, s0)
    c21 = vload_part(S, so + 2 * ss + V, s1)
    c30 = vload_part(S, so + 3 * ss, s0)
    c31 = vload_part(S, so + 3 * ss + V, s1)
    if n1 > 0:
        for k in range(k0, k1):
            bk = bb + k * ldb
            w0 = vload_part(B, bk, n0)
            w1 = vload_part(B, bk + V, n1)
            ak = a0 + k * sak
            a = vsplat(C, at(A, ak))
            c00 = vfma(a, w0, c00)
            c01 = vfma(a, w1, c01)
            a = vsplat(C, at(A, ak + sai))
            c10 = vfma(a, w0, c10)
            c11 = vfma(a, w1, c11)
            a = vsplat(C, at(A, ak + 2 * sai))
            c20 = vfma(a, w0, c20)
            c21 = vfma(a, w1, c21)
            a = vsplat(C, at(A, ak + 3 * sai))
            c30 = vfma(a, w0, c30)
            c31 = vfma(a, w1, c31)
    else:   # one vector of columns left: half the FMAs
        for k in range(k0, k1):
            w0 = vload_part(B, bb + k * ldb, n0)
            ak = a0 + k * sak
            c00 = vfma(vsplat(C, at(A, ak)), w0, c00)
            c10 = vfma(vsplat(C, at(A, ak + sai)), w0, c10)
            c20 = vfma(vsplat(C, at(A, ak + 2 * sai)), w0, c20)
            c30 = vfma(vsplat(C, at(A, ak + 3 * sai)), w0, c30)
    vstore_part(C, o, vrelu(c00, relu), n0)
    vstore_part(C, o + V, vrelu(c01, relu), n1)
    o += ldc
    vstore_part(C, o, vrelu(c10, relu), n0)
    vstore_part(C, o + V, vrelu(c11, relu), n1)
    o += ldc
    vstore_part(C, o, vrelu(c20, relu), n0)
    vstore_part(C, o + V, vrelu(c21, relu), n1)
    o += ldc
    vstore_part(C, o, vrelu(c30, relu), n0)
    vstore_part(C, o + V, vrelu(c31, relu), n1)


@kernel(fastmath=FAST)
def _block8(A, a0, a1, sai, sak, B, bb, ldb, C, ldc, S, so, ss, s0, s1, i, j0, n0, n1, k0,
            k1, relu):
    """Rows i..i+7 as _block4 does rows i..i+3: 16 accumulators hide the FMA latency that
    _block4's 8 leave exposed (two FMA pipes x 4 cycles), where 32 vector registers hold
    them (AVX-512). A(i + r, k) is A[a0 + r*sai + k*sak] for r < 4 and
    A[a1 + (r-4)*sai + k*sak] for the other four (a packed A keeps each 4 rows apart)."""
    V = lanes(C)
    c00 = vload_part(S, so, s0)
    c01 = vload_part(S, so + V, s1)
    c10 = vload_part(S, so + ss, s0)
    c11 = vload_part(S, so + ss + V, s1)
    c20 = vload_part(S, so + 2 * ss, s0)
    c21 = vload_part(S, so + 2 * ss + V, s1)
    c30 = vload_part(S, so + 3 * ss, s0)
    c31 = vload_part(S, so + 3 * ss + V, s1)
    c40 = vload_part(S, so + 4 * ss, s0)
    c41 = vload_part(S, so + 4 * ss + V, s1)
    c50 = vload_part(S, so + 5 * ss, s0)
    c51 = vload_part(S, so + 5 * ss + V, s1)
    c60 = vload_part(S, so + 6 * ss, s0)
    c61 = vload_part(S, so + 6 * ss + V, s1)
    c70 = vload_part(S, so + 7 * ss, s0)
    c71 = vload_part(S, so + 7 * ss + V, s1)
    for k in range(k0, k1):
        bk = bb + k * ldb
        w0 = vload_part(B, bk, n0)
        w1 = vload_part(B, bk + V, n1)
        ak = a0 + k * sak
        ak1 = a1 + k * sak
        a = vsplat(C, at(A, ak))
        c00 = vfma(a, w0, c00)
        c01 = vfma(a, w1, c01)
        a = vsplat(C, at(A, ak + sai))
        c10 = vfma(a, w0, c10)
        c11 = vfma(a, w1, c11)
        a = vsplat(C, at(A, ak + 2 * sai))
        c20 = vfma(a, w0, c20)
        c21 = vfma(a, w1, c21)
        a = vsplat(C, at(A, ak + 3 * sai))
        c30 = vfma(a, w0, c30)
        c31 = vfma(a, w1, c31)
        a = vsplat(C, at(A, ak1))
        c40 = vfma(a, w0, c40)
        c41 = vfma(a, w1, c41)
        a = vsplat(C, at(A, ak1 + sai))
        c50 = vfma(a, w0, c50)
        c51 = vfma(a, w1, c51)
        a = vsplat(C, at(A, ak1 + 2 * sai))
        c60 = vfma(a, w0, c60)
        c61 = vfma(a, w1, c61)
        a = vsplat(C, at(A, ak1 + 3 * sai))
        c70 = vfma(a, w0, c70)
        c71 = vfma(a, w1, c71)
    o = i * ldc + j0
    vstore_part(C, o, vrelu(c00, relu), n0)
    vstore_part(C, o + V, vrelu(c01, relu), n1)
    o += ldc
    vstore_part(C, o, vrelu(c10, relu), n0)
    vstore_part(C, o + V, vrelu(c11, relu), n1)
    o += ldc
    vstore_part(C, o, vrelu(c20, relu), n0)
    vstore_part(C, o + V, vrelu(c21, relu), n1)
    o += ldc
    vstore_part(C, o, vrelu(c30, relu), n0)
    vstore_part(C, o + V, vrelu(c31, relu), n1)
    o += ldc
    vstore_part(C, o, vrelu(c40, relu), n0)
    vstore_part(C, o + V, vrelu(c41, relu), n1)
    o += ldc
    vstore_part(C, o, vrelu(c50, relu), n0)
    vstore_part(C, o + V, vrelu(c51, relu), n1)
    o += ldc
    vstore_part(C, o, vrelu(c60, relu), n0)
    vstore_part(C, o + V, vrelu(c61, relu), n1)
    o += ldc
    vstore_part(C, o, vrelu(c70, relu), n0)
    vstore_part(C, o + V, vrelu(c71, relu), n1)


@kernel(fastmath=FAST)
def _block1(A, sai, sak, B, bb, ldb, C, ldc, S, so, s0, s1, i, j0, n0, n1, k0, k1, relu):
    """Row i (the rows left over by the 4-row blocks); S, so, s0, s1 as for _block4."""
    V = lanes(C)
    o = i * ldc + j0
    c0 = vload_part(S, so, s0)
    c1 = vload_part(S, so + V, s1)
    a0 = i * sai
    for k in range(k0, k1):
        bk = bb + k * ldb
        a = vsplat(C, at(A, a0 + k * sak))
        c0 = vfma(a, vload_part(B, bk, n0), c0)
        c1 = vfma(a, vload_part(B, bk + V, n1), c1)
    vstore_part(C, o, vrelu(c0, relu), n0)
    vstore_part(C, o + V, vrelu(c1, relu), n1)


@kernel(fastmath=FAST)
def _rows_sweep(A, sai, sak, B, ldb, C, ldc, S, ss, sn, m, n, K, relu):
    """C's m (< 4) rows, k outer: each row of B is read once, whole and in order, and
    added into the rows of C (kept in L1). Column panels (the micro-kernels' order) walk
    B a row apart per step, a new page per load for a wide layer, which defeats the
    prefetchers: a one-row prediction of a 1024-wide net waited on memory for each of
    its 64k lines. The same fma per element in the same k order as the micro-kernels, so
    a row's result does not depend on the path. S, ss: where row i starts (S[i*ss + j]),
    its first sn columns (0: zeros)."""
    V = lanes(C)
    for i in range(m):
        for j in range(0, n, V):
            nj = min(V, n - j)
            vstore_part(C, i * ldc + j, vload_part(S, i * ss + j, max(0, min(nj, sn - j))),
                        nj)
    for k in range(K):
        bk = k * ldb
        for j in range(0, n, V):
            nj = min(V, n - j)
            b = vload_part(B, bk + j, nj)
            for i in range(m):
                a = vsplat(C, at(A, i * sai + k * sak))
                o = i * ldc + j
                vstore_part(C, o, vfma(a, b, vload_part(C, o, nj)), nj)
    if relu:
        for i in range(m):
            for j in range(0, n, V):
                nj = min(V, n - j)
                o = i * ldc + j
                vstore_part(C, o, vrelu(vload_part(C, o, nj), relu), nj)


@kernel(fastmath=FAST)
def _pack(B, ldb, transb, P, j0, n, k0, k1):
    """P[(k-k0)*2V + c] = B(k, j0 + c) for c < n, zeros up to 2V: the panel the
    micro-kernels sweep, contiguous. B(k, j) is B[k*ldb + j], or B[j*ldb + k] when
    ``transb`` (the input delta's W^T, transposed on the way in)."""
    V = lanes(P)
    if transb:
        # Whole V x V blocks transposed in registers; the columns and rows left over
        # element by element, down each row of B (contiguous reads).
        kv = k0 + (k1 - k0) // V * V
        nv = n // V * V
        for cb in range(0, nv, V):
            src = (j0 + cb) * ldb
            for k in range(k0, kv, V):
                vtranspose(B, src + k, ldb, P, (k - k0) * 2 * V + cb, 2 * V)
        for c in range(n):
            src = (j0 + c) * ldb
            for k in range(kv if c < nv else k0, k1):
                P[(k - k0) * 2 * V + c] = at(B, src + k)
        for c in range(n, 2 * V):
            for k in range(k0, k1):
                P[(k - k0) * 2 * V + c] = 0
        return
    n0 = min(V, n)
    n1 = max(0, n - V)
    for k in range(k0, k1):
        o = (k - k0) * 2 * V
        vstore(P, o, vload_part(B, k * ldb + j0, n0))
        vstore(P, o + V, vload_part(B, k * ldb + j0 + V, n1))
        # The next panel's lines of this row: rows a layer width apart (kilobytes for wide
        # layers) are not fetched ahead by the hardware (bench/results/code-notes.md).
        prefetch(B, k * ldb + j0 + 2 * V)
        prefetch(B, k * ldb + j0 + 3 * V)


@kernel(fastmath=FAST)
def _pack_a(A, sak, PA, i0, i1, k0, k1):
    """Rows i0..i1 (whole blocks of 4) of a transposed A (A(i, k) = A[i + k*sak]) as
    PA[(i - i0)*KC + (k - k0)*4 + r]: each block's 4 values per k side by side."""
    for i in range(i0, i1, 4):
        base = (i - i0) * KC
        for k in range(k0, k1):
            src = i + k * sak
            dst = base + (k - k0) * 4
            PA[dst] = at(A, src)
            PA[dst + 1] = at(A, src + 1)
            PA[dst + 2] = at(A, src + 2)
            PA[dst + 3] = at(A, src + 3)


@kernel(fastmath=FAST)
def gemm(A, sai, sak, B, ldb, transb, C, ldc, bias, m, n, K, mode):
    """C[i, j] for i < m, j < n: see the module docstring. ``A``, ``B``, ``C``, ``bias``
    are flat (1-D) views; ``mode`` ASSIGN, ASSIGN_BIAS, ASSIGN_BIAS_RELU or ACCUMULATE;
    ``transb``: B holds the transpose (B(k, j) = B[j*ldb + k])."""
    V = lanes(C)
    if m < 4 and not transb and n > SWEEP_MIN_PANELS * 2 * V:
        if mode == ACCUMULATE:
            S, ss, sn = C, ldc, n
        elif mode == ASSIGN_BIAS or mode == ASSIGN_BIAS_RELU:
            S, ss, sn = bias, 0, n
        else:
            S, ss, sn = C, 0, 0
        _rows_sweep(A, sai, sak, B, ldb, C, ldc, S, ss, sn, m, n, K,
                    mode == ASSIGN_BIAS_RELU)
        return
    itemsize = VEC_BYTES // V
    mc = A_BLOCK_BYTES // (KC * itemsize)
    # The scratch lives in this frame: no allocation per call.
    P = carray(stack_buffer(C, PANEL_BYTES), KC * 2 * V)
    PA = carray(stack_buffer(C, A_BLOCK_BYTES), mc * KC)
    # A's rows i of a block far apart and read 4 at a time down k (the weight gradient's
    # A^T): each step would touch a new line in the same few L1 sets.
    pack_a = sai == 1 and sak >= PACK_A_MIN_LD and m >= PACK_MIN_ROWS
    pack = transb or pack_a or (ldb >= PACK_MIN_LD and m >= PACK_MIN_ROWS)
    # Rows of C in blocks of mc, so that the part of A they read (mc x KC) stays close
    # while every panel of B passes (the weight gradient's A^T is a whole layer wide), and
    # is packed once per block. Without a packed A, the panels are the outer loop instead:
    # each is packed once per KC and every row block passes under it (the input delta's
    # transposing pack cost more than its FMAs when it was repeated per row block).
    n_ib = (m + mc - 1) // mc
    n_jb = (n + 2 * V - 1) // (2 * V)
    panels_outer = pack and not pack_a
    for k0 in range(0, max(K, 1), KC):
        k1 = min(K, k0 + KC)
        from_c = k0 > 0 or mode == ACCUMULATE
        relu = mode == ASSIGN_BIAS_RELU and k1 == K   # on the finished sums only
        n_outer, n_inner = (n_jb, n_ib) if panels_outer else (n_ib, n_jb)
        for outer in range(n_outer):
            for inner in range(n_inner):
                ib, jb = (inner, outer) if panels_outer else (outer, inner)
                i0 = ib * mc
                i1 = min(m, i0 + mc)
                j0 = jb * 2 * V
                if pack_a and jb == 0:
                    _pack_a(A, sak, PA, i0, i0 + (i1 - i0) // 4 * 4, k0, k1)
                n0 = min(V, n - j0)
                n1 = min(V, max(0, n - j0 - V))
                if pack:
                    if not panels_outer or ib == 0:
                        _pack(B, ldb, transb, P, j0, n0 + n1, k0, k1)
                    Bp, bb, ldp = P, -k0 * 2 * V, 2 * V
                else:
                    Bp, bb, ldp = B, j0, ldb
                # Where the accumulators start: C's rows, the bias (every row), or zeros (a
                # masked load of no lanes): one branch-free load in the micro-kernels.
                if from_c:
                    S, ss, s0, s1 = C, ldc, n0, n1
                elif mode == ASSIGN_BIAS or mode == ASSIGN_BIAS_RELU:
                    S, ss, s0, s1 = bias, 0, n0, n1
                else:
                    S, ss, s0, s1 = C, 0, 0, 0
                i = i0
                while ROWS8 and n1 > 0 and i + 8 <= i1:
                    so = i * ldc + j0 if from_c else j0
                    if pack_a:
                        a0 = (i - i0) * KC - 4 * k0
                        _block8(PA, a0, a0 + 4 * KC, 1, 4, Bp, bb, ldp, C, ldc, S, so, ss,
                                s0, s1, i, j0, n0, n1, k0, k1, relu)
                    else:
                        _block8(A, i * sai, (i + 4) * sai, sai, sak, Bp, bb, ldp, C, ldc,
                                S, so, ss, s0, s1, i, j0, n0, n1, k0, k1, relu)
                    i += 8
                while i + 4 <= i1:
                    so = i * ldc + j0 if from_c else j0
                    if pack_a:
                        _block4(PA, (i - i0) * KC - 4 * k0, 1, 4, Bp, bb, ldp, C, ldc, S,
                                so, ss, s0, s1, i, j0, n0, n1, k0, k1, relu)
                    else:
                        _block4(A, i * sai, sai, sak, Bp, bb, ldp, C, ldc, S, so, ss, s0,
                                s1, i, j0, n0, n1, k0, k1, relu)
                    i += 4
                while i < i1:
                    so = i * ldc + j0 if from_c else j0
                    _block1(A, sai, sak, Bp, bb, ldp, C, ldc, S, so, s0, s1, i, j0, n0, n1,
                            k0, k1, relu)
                    i += 1
