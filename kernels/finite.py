"""Whether every element of an array is finite, in one vectorised pass.

A fit checks its inputs for NaN/inf every time it is called, one of the larger fixed costs
of refitting a narrow net: for 20,000 x 32 float32 values NumPy's sum (a finite sum
proves every element finite) took 96 us, ``np.isfinite(X).all()`` 45 us and a boolean
temporary the size of X, this loop 28 us.
"""

from .jit import entry


# Reassociation lets LLVM vectorise the sum; without 'nnan'/'ninf'/'nsz' it may not fold
# x * 0 to 0, so the sum stays exactly 0 unless an element is NaN or +-inf (x * 0 is then
# NaN, and NaN survives any order of summation).
@entry(fastmath={"reassoc"})
def all_finite(a):
    """True when no element of the 1-D array ``a`` is NaN or infinite."""
    acc = a.dtype.type(0)
    for i in range(a.shape[0]):
        acc += a[i] * 0
    return acc == 0
