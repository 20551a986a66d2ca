"""The register-blocked GEMM (kernels.gemm) against NumPy: every tail of the 8-, 4-row and
2-vector blocking, K blocking, the four modes, both dtypes, and no write outside C; and the
other explicit-vector kernel, the exp behind the CPU softmax."""
import os
import subprocess
import sys

import numpy as np
import pytest

from fastbp.kernels import gemm as g
from fastbp.kernels.jit import entry_for
from fastbp.kernels.simd import VEC_BYTES

# Kernels are compiled only into entry points: Python calls these copies.
gemm = entry_for(g.gemm)

SENTINEL = 12345.0


def _case(rng, dtype, m, n, K, pad=19):
    """Operands inside larger buffers, so that reads or writes past them are noticed."""
    A = rng.standard_normal(m * K + pad).astype(dtype)
    B = rng.standard_normal(K * n + pad).astype(dtype)
    bias = rng.standard_normal(n + pad).astype(dtype)
    C = np.full(m * n + pad, SENTINEL, dtype=dtype)
    return A, B, bias, C


def _tol(dtype):
    return dict(rtol=2e-5, atol=2e-4) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_modes_and_tails_match_numpy(dtype):
    rng = np.random.default_rng(0)
    lanes = VEC_BYTES // np.dtype(dtype).itemsize
    sizes_n = sorted({1, 3, lanes - 1, lanes, lanes + 1, 2 * lanes, 2 * lanes + 5, 5 * lanes - 2})
    for m in (1, 3, 4, 7, 9):
        for n in sizes_n:
            for K in (1, 5, g.KC, g.KC + 3):
                A, B, bias, C = _case(rng, dtype, m, n, K)
                Am = A[:m * K].reshape(m, K).astype(np.float64)
                Bm = B[:K * n].reshape(K, n).astype(np.float64)
                # forward: C = A @ B + bias
                gemm(A, K, 1, B, n, False, C, n, bias, m, n, K, g.ASSIGN_BIAS)
                np.testing.assert_allclose(C[:m * n].reshape(m, n), Am @ Bm + bias[:n],
                                           **_tol(dtype), err_msg=f"bias m={m} n={n} K={K}")
                assert np.all(C[m * n:] == SENTINEL), "wrote past C"
                # a hidden ReLU layer: max(A @ B + bias, 0), clipped only once K is done
                Cr = np.full_like(C, SENTINEL)
                gemm(A, K, 1, B, n, False, Cr, n, bias, m, n, K, g.ASSIGN_BIAS_RELU)
                np.testing.assert_allclose(Cr[:m * n].reshape(m, n),
                                           np.maximum(Am @ Bm + bias[:n], 0), **_tol(dtype),
                                           err_msg=f"relu m={m} n={n} K={K}")
                assert np.all(Cr[m * n:] == SENTINEL), "wrote past C"
                # accumulate: C += A @ B
                before = C[:m * n].reshape(m, n).astype(np.float64)
                gemm(A, K, 1, B, n, False, C, n, bias, m, n, K, g.ACCUMULATE)
                np.testing.assert_allclose(C[:m * n].reshape(m, n), before + Am @ Bm,
                                           **_tol(dtype))
                # transposed A (the weight gradient): C (K x n) = A^T @ B' with B' (m x n)
                Bt = rng.standard_normal(m * n + 7).astype(dtype)
                Ct = np.full(K * n + 7, SENTINEL, dtype=dtype)
                gemm(A, 1, K, Bt, n, False, Ct, n, bias, K, n, m, g.ASSIGN)
                np.testing.assert_allclose(
                    Ct[:K * n].reshape(K, n),
                    Am.T @ Bt[:m * n].reshape(m, n).astype(np.float64), **_tol(dtype))
                assert np.all(Ct[K * n:] == SENTINEL)
                # transposed B (the input delta): C = A @ W^T with W (n x K)
                gemm(A, K, 1, B, K, True, C, n, bias, m, n, K, g.ASSIGN)
                np.testing.assert_allclose(C[:m * n].reshape(m, n),
                                           Am @ B[:n * K].reshape(n, K).astype(np.float64).T,
                                           **_tol(dtype))
                assert np.all(C[m * n:] == SENTINEL)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_packed_panels_of_wide_matrices(dtype):
    """B rows at least PACK_MIN_LD apart are copied into the stack panel first."""
    assert VEC_BYTES == int(os.environ.get("FASTBP_SIMD_BYTES", VEC_BYTES))
    rng = np.random.default_rng(1)
    m, K, n = g.PACK_MIN_ROWS + 3, g.KC + 9, g.PACK_MIN_LD + 7
    A, B, bias, C = _case(rng, dtype, m, n, K)
    gemm(A, K, 1, B, n, False, C, n, bias, m, n, K, g.ASSIGN_BIAS)
    expected = (A[:m * K].reshape(m, K).astype(np.float64)
                @ B[:K * n].reshape(K, n).astype(np.float64) + bias[:n])
    np.testing.assert_allclose(C[:m * n].reshape(m, n), expected, **_tol(dtype))
    assert np.all(C[m * n:] == SENTINEL)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_packed_panels_under_several_row_blocks(dtype):
    """With B packed and A not, each panel is packed once per KC and every block of mc rows
    passes under it: C must be right in every row block and K block, edges included."""
    rng = np.random.default_rng(2)
    mc = g.A_BLOCK_BYTES // (g.KC * np.dtype(dtype).itemsize)
    m, K, n = 2 * mc + 5, g.KC + 9, 3 * (VEC_BYTES // np.dtype(dtype).itemsize) + 3
    A, B, bias, C = _case(rng, dtype, m, n, K)
    Am = A[:m * K].reshape(m, K).astype(np.float64)
    gemm(A, K, 1, B, K, True, C, n, bias, m, n, K, g.ASSIGN)       # input delta: B^T
    np.testing.assert_allclose(C[:m * n].reshape(m, n),
                               Am @ B[:n * K].reshape(n, K).astype(np.float64).T,
                               **_tol(dtype))
    assert np.all(C[m * n:] == SENTINEL)
    n = g.PACK_MIN_LD + 7                                            # wide forward
    A, B, bias, C = _case(rng, dtype, m, n, K)
    Am = A[:m * K].reshape(m, K).astype(np.float64)
    gemm(A, K, 1, B, n, False, C, n, bias, m, n, K, g.ASSIGN_BIAS)
    np.testing.assert_allclose(C[:m * n].reshape(m, n),
                               Am @ B[:K * n].reshape(K, n).astype(np.float64) + bias[:n],
                               **_tol(dtype))
    assert np.all(C[m * n:] == SENTINEL)


def test_relu_mode_keeps_nan_and_clips_partial_sums_only_at_the_end():
    """A NaN input stays NaN through the fused ReLU (divergence must reach the loss), and a
    sum that is negative after the first KC terms but positive in the end is kept."""
    K, n, m = g.KC + 4, 5, 9
    A = np.ones(m * K)
    A[3 * K + 2] = np.nan                                   # row 3
    B = np.zeros(K * n)
    B[:g.KC * n] = -1.0                                     # first block: -KC
    B[g.KC * n:] = g.KC                                     # the rest: +4 * KC
    C = np.full(m * n, SENTINEL)
    gemm(A, K, 1, B, n, False, C, n, np.zeros(n), m, n, K, g.ASSIGN_BIAS_RELU)
    C = C.reshape(m, n)
    assert np.isnan(C[3]).all()
    np.testing.assert_array_equal(np.delete(C, 3, axis=0), 3.0 * g.KC)
    gemm(-A, K, 1, B, n, False, C.ravel(), n, np.zeros(n), m, n, K, g.ASSIGN_BIAS_RELU)
    np.testing.assert_array_equal(np.delete(C, 3, axis=0), 0.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vector_exp_and_softmax_match_numpy(dtype):
    """exp_inplace within 2 ulp over the whole normal range, every tail length, NaN kept,
    overflow to inf and underflow to 0; softmax rows sum to 1 and match NumPy's."""
    from fastbp.kernels import cpu
    exp_inplace = entry_for(cpu.exp_inplace)
    eps = np.finfo(dtype).eps
    lo, hi = (-87.0, 88.0) if dtype == np.float32 else (-708.0, 709.0)
    x = np.linspace(lo, hi, 100003).astype(dtype)
    a = x.copy()
    exp_inplace(a, 0, a.size)
    ref = np.exp(x.astype(np.float64))
    assert np.max(np.abs(a - ref) / ref) < 2 * eps
    for n in range(1, 40):                        # every tail of the vector loop
        b = np.full(n + 3, SENTINEL, dtype=dtype)
        b[:n] = np.arange(n) * 0.25
        exp_inplace(b, 0, n)
        np.testing.assert_allclose(b[:n], np.exp(np.arange(n) * 0.25), rtol=2 * eps)
        assert np.all(b[n:] == SENTINEL)
    edge = np.array([np.nan, np.inf, -np.inf, 1e4, -1e4, 0.0], dtype=dtype)
    exp_inplace(edge, 0, edge.size)
    assert np.isnan(edge[0]) and edge[1] == np.inf and edge[3] == np.inf
    assert edge[2] == 0 and edge[4] == 0 and edge[5] == 1
    rng = np.random.default_rng(3)
    Z = (rng.standard_normal((37, 10)) * 20).astype(dtype)
    A = np.empty_like(Z)
    entry_for(cpu.softmax_rows)(Z, A)
    Z64 = Z.astype(np.float64)
    E = np.exp(Z64 - Z64.max(axis=1, keepdims=True))
    np.testing.assert_allclose(A, E / E.sum(axis=1, keepdims=True), rtol=8 * eps,
                               atol=8 * eps)


def test_gemm_with_no_reduction_gives_the_start_values():
    C = np.full(8, SENTINEL)
    bias = np.arange(4.0)
    gemm(np.zeros(1), 0, 1, np.zeros(1), 4, False, C, 4, bias, 2, 4, 0, g.ASSIGN_BIAS)
    np.testing.assert_array_equal(C, np.tile(bias, 2))
    gemm(np.zeros(1), 0, 1, np.zeros(1), 4, False, C, 4, bias, 2, 4, 0, g.ASSIGN)
    np.testing.assert_array_equal(C, 0.0)


def test_gemm_with_32_byte_vectors(tmp_path):
    """CPUs without AVX-512 get 32-byte vectors: the same checks with them forced (in a
    fresh interpreter with its own cache, since the width is fixed at import)."""
    if os.environ.get("FASTBP_SIMD_BYTES"):
        pytest.skip("already running with forced vectors")
    env = dict(os.environ, FASTBP_SIMD_BYTES="32", NUMBA_CACHE_DIR=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
         "-k", "not 32_byte"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "passed" in proc.stdout


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_few_rows_swept_equal_the_same_rows_in_blocks_bitwise(dtype):
    """Fewer than 4 rows of a wide product go through B row by row (_rows_sweep), more
    through the register-blocked micro-kernels: every row comes out bitwise the same, so
    a prediction does not depend on how many rows came with it."""
    rng = np.random.default_rng(3)
    lanes = VEC_BYTES // np.dtype(dtype).itemsize
    m, K = 9, g.KC + 37
    n = (2 * g.SWEEP_MIN_PANELS + 1) * lanes + 3      # a sweep for fewer than 4 rows
    A, B, bias, _ = _case(rng, dtype, m, n, K)
    for mode in (g.ASSIGN_BIAS, g.ASSIGN_BIAS_RELU, g.ASSIGN, g.ACCUMULATE):
        start = rng.standard_normal(m * n).astype(dtype)
        blocked = start.copy()
        gemm(A, K, 1, B, n, False, blocked, n, bias, m, n, K, mode)
        for r0, rows in ((0, 1), (4, 3), (7, 2)):
            swept = start[r0 * n:(r0 + rows) * n].copy()
            gemm(A[r0 * K:], K, 1, B, n, False, swept, n, bias, rows, n, K, mode)
            assert np.array_equal(swept, blocked[r0 * n:(r0 + rows) * n]), (mode, r0, rows)
