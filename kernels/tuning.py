"""Tunables of the compiled kernels, in one place (measured by bench/sweep.py).

Numba freezes module globals at compile time: changing a value here needs a cache clear
(delete the ``__pycache__`` of kernels/) to take effect.
"""

# A dense layer goes through BLAS (np.dot) once its weight matrix and row count are both at
# least this large; below, hand-written loops win (no call overhead, zero-input skipping).
BLAS_MIN_WEIGHTS = 256 * 256
BLAS_MIN_ROWS = 32

# Rows per thread below which a batch is split over fewer threads (scheduling overhead).
MIN_ROWS_PER_THREAD = 8

# Elements of the flat parameter vector per task of the parallel optimizer pass.
UPDATE_BLOCK = 8192

# Rows per block when predicting: bounds the scratch buffers of inference.
PREDICT_BLOCK_ROWS = 256
