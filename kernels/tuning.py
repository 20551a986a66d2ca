"""Tunables of the compiled kernels, in one place (measured by bench/sweep.py).

Numba freezes module globals at compile time: changing a value here needs a cache clear
(delete the ``__pycache__`` of kernels/) to take effect.
"""
from .simd import VEC_BYTES

# A dense layer goes through BLAS (np.dot) when its weight matrix has at least
# BLAS_MIN_WEIGHTS entries, more than BLAS_MAX_HAND_OUTPUTS outputs and the slice at least
# BLAS_MIN_ROWS rows. Below that (regression heads, tiny layers) the call overhead of BLAS
# exceeds the work and the hand-written loops win. Measured with bench/sweep.py: BLAS wins
# from 32x64 layers at 16 rows up; the hand loops run ~7 ns per (row, input) pair.
BLAS_MIN_WEIGHTS = 1024
BLAS_MAX_HAND_OUTPUTS = 4
BLAS_MIN_ROWS = 8

# The register-blocked kernels of kernels.gemm replace BLAS (measured on one Zen 5 core,
# float32, GFLOP/s, ours vs OpenBLAS, best of interleaved repetitions):
# - forward, every layer with more than BLAS_MAX_HAND_OUTPUTS outputs: 32x64x64 110-190 vs
#   55-110, 64x784x256 125-170 vs 90-125, 256x1024x1024 130-158 vs 97-102;
# - weight gradient up to GEMM_MAX_WEIGHTS weights: 64x784x256 116 vs 98, 128x512x512 133
#   vs 104; above, BLAS wins (128x1024x1024: 66 vs 99, 128x2048x2048: 75 vs 98);
# - input delta D @ W^T (W transposed while packing) with at least GEMM_DELTA_MIN_OUTPUTS
#   outputs and up to GEMM_DELTA_MAX_WEIGHTS weights: 64x256x128 92 vs 81, 64x784x256 91
#   vs 85; a short reduction (128x128x10: 41 vs 57) or a larger W (512x512: 62 vs 97)
#   loses. Since each transposed panel is packed once per K block (not once per block
#   of rows), reading down W's rows, two runs: 128x784x256 98-125 vs 94-99, 256x512x512
#   107-137 vs 100-105, 256x1024x1024 95-122 vs 96-103, 64x2048x2048 62-72 vs 72-82.
#   Larger W ties at best on this noisy machine: the threshold stands until a quieter
#   measurement says otherwise.
# With AVX-512, the 8-row micro-kernel (16 accumulators; kernels.gemm.ROWS8) beats
# OpenBLAS at every size measured, one core, float32, GFLOP/s, ours vs OpenBLAS: forward
# 128x512x512 200 vs 99, 256x1024x1024 198 vs 106, 256x2048x2048 171 vs 103; weight
# gradient 512x512 (K=128) 194 vs 108, 1024x1024 (K=256) 172 vs 108, 2048x2048 (K=64)
# 101 vs 96; input delta 128x512x512 172 vs 101, 256x1024x1024 176 vs 106, 64x2048x2048
# 98 vs 86, and short reductions too (128 rows, 128 inputs, 10 outputs: 62 vs 55). So
# there the own kernels take every product; the limits above stand for 32-byte vectors
# (AVX2), where only the 4-row micro-kernel fits the registers.
if VEC_BYTES == 64:
    GEMM_MAX_WEIGHTS = 2 ** 62
    GEMM_DELTA_MIN_OUTPUTS = BLAS_MAX_HAND_OUTPUTS + 1
    GEMM_DELTA_MAX_WEIGHTS = 2 ** 62
else:
    GEMM_MAX_WEIGHTS = 262144
    GEMM_DELTA_MIN_OUTPUTS = 32
    GEMM_DELTA_MAX_WEIGHTS = 204800

# A batch is split over threads only when each thread gets at least this many rows and
# this much work (multiply-adds: rows x sum of n_in*n_out, times 3 when training). Waking a
# waiting thread costs ~50-150 us: 2 threads lose below ~4M multiply-adds each (narrow
# nets at small batches run on one thread).
MIN_ROWS_PER_THREAD = 8
MIN_WORK_PER_THREAD = 4_000_000

# A training team's members meet at spin barriers (kernels.sync) about twice a batch: a
# batch is shared when each member gets at least this many multiply-adds of it (and the
# chunk MIN_WORK_PER_THREAD, for the wake-up).
TEAM_MIN_WORK_PER_THREAD = 100_000
# Every this many batches the leader checks how long it waited at the barriers: more than
# half the time, and it lets the members go and trains the rest of the chunk alone.
TEAM_CHECK_STEPS = 16

# Elements of the flat parameter vector per block of the optimizer pass (and of the
# clipping norm's partial sums).
UPDATE_BLOCK = 16384

# A fit's buffers (row buffers and gradient) up to this size are kept for the next fit of
# the same model and batch size (a narrow net's are ~30 KB; a wide one's at batch 1024 ~30 MB).
KEEP_WORKSPACE_BYTES = 4 * 2 ** 20

# Inference scratch: Z and A rows within this many bytes (narrow nets get ~13k rows, wide
# ones ~700), shared out among the threads of its one parallel region; each thread tiles
# its rows through its part, so this bounds the threads' tiles, not a region's rows.
PREDICT_SCRATCH_BYTES = 16 * 2 ** 20
PREDICT_MIN_ROWS = 256

# Within a thread's share of a block, rows go through every layer in tiles whose Z and A
# rows fit PREDICT_TILE_BYTES (a core's L2), but at least PREDICT_TILE_MIN_ROWS rows:
# BLAS loses more on short GEMMs than the cache gains (measured on one core: narrow nets
# 6.1M -> 6.5M rows/s with 512-row tiles, wide ones lose 10% below 256 rows).
PREDICT_TILE_BYTES = 2 ** 20
PREDICT_TILE_MIN_ROWS = 256
