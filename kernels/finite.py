"""Whether every element of an array is finite, in one vectorised pass.

A fit checks its inputs for NaN/inf every time it is called, one of the larger fixed costs
of refitting a narrow net. This loop beats NumPy's sum (a finite sum proves every element
finite) and ``np.isfinite(X).all()``, which makes a boolean temporary the size of X
(bench/results/code-notes.md).
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
