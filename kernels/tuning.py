"""Tunables of the compiled kernels, in one place (the measurements behind them are in
bench/results/code-notes.md, "kernels/tuning.py").

Numba freezes module globals at compile time; a changed value here changes the digest of
kernels/'s sources, which keys the compiled entries' cache (kernels.jit), so they are
compiled again.
"""
from .simd import VEC_BYTES

# A dense layer goes through BLAS (np.dot) when its weight matrix has at least
# BLAS_MIN_WEIGHTS entries, more than BLAS_MAX_HAND_OUTPUTS outputs and the slice at least
# BLAS_MIN_ROWS rows. Below that (regression heads, tiny layers) the call overhead of BLAS
# exceeds the work and the hand-written loops win.
BLAS_MIN_WEIGHTS = 1024
BLAS_MAX_HAND_OUTPUTS = 4
BLAS_MIN_ROWS = 8

# The register-blocked kernels of kernels.gemm replace BLAS. With the 4-row micro-kernel,
# the one 32-byte vectors (AVX2) leave registers for, they win the forward product of
# every layer with more than BLAS_MAX_HAND_OUTPUTS outputs, the weight gradient up to
# GEMM_MAX_WEIGHTS weights (BLAS's fully packed copies win above) and the input delta
# D @ W^T (W transposed while packing) from GEMM_DELTA_MIN_OUTPUTS outputs, where the
# reduction is long enough to reuse a panel, up to GEMM_DELTA_MAX_WEIGHTS weights. With
# AVX-512 the 8-row micro-kernel (kernels.gemm.ROWS8) beat OpenBLAS at every size
# measured, so there the own kernels take every product; BLAS is never called.
if VEC_BYTES == 64:
    GEMM_MAX_WEIGHTS = 2 ** 62
    GEMM_DELTA_MIN_OUTPUTS = BLAS_MAX_HAND_OUTPUTS + 1
    GEMM_DELTA_MAX_WEIGHTS = 2 ** 62
else:
    GEMM_MAX_WEIGHTS = 262144
    GEMM_DELTA_MIN_OUTPUTS = 32
    GEMM_DELTA_MAX_WEIGHTS = 204800

# A batch is split over threads only when each thread gets at least this many rows and
# this much work (multiply-adds: rows x sum of n_in*n_out, times 3 when training): waking a
# waiting thread costs more than a smaller share saves (narrow nets at small batches run
# on one thread).
MIN_ROWS_PER_THREAD = 8
MIN_WORK_PER_THREAD = 4_000_000

# A training team's members meet at spin barriers (kernels.sync) about twice a batch: a
# batch is shared when each member gets at least this many multiply-adds of it (and the
# chunk MIN_WORK_PER_THREAD, for the wake-up).
TEAM_MIN_WORK_PER_THREAD = 100_000
# Every this many batches the leader checks how long it waited at the barriers: more than
# half the time, and it lets the members go and trains the rest of the chunk alone.
TEAM_CHECK_STEPS = 16
# The leader waits for the members woken with it at most this share of a batch's time at
# a chunk's first batch: less than the half a batch a second member would save.
GRACE_SHARE = 0.1

# Elements of the flat parameter vector per block of the optimizer pass (and of the
# clipping norm's partial sums).
UPDATE_BLOCK = 16384

# A fit's buffers (row buffers and gradient) up to this size are kept for the next fit of
# the same model and batch size: a narrow net's, not a wide one's at large batches.
KEEP_WORKSPACE_BYTES = 4 * 2 ** 20

# Inference scratch: Z and A rows within this many bytes, shared out among the members of
# one team; each member tiles its rows through its part, so this bounds the members'
# tiles, not the rows of a call.
PREDICT_SCRATCH_BYTES = 16 * 2 ** 20
PREDICT_MIN_ROWS = 256

# Within a thread's share of a block, rows go through every layer in tiles whose Z and A
# rows fit PREDICT_TILE_BYTES (a core's L2), but at least PREDICT_TILE_MIN_ROWS rows:
# short GEMMs lose more than the cache gains.
PREDICT_TILE_BYTES = 2 ** 20
PREDICT_TILE_MIN_ROWS = 256
