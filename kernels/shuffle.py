"""The epoch's row order: a Fisher-Yates shuffle driven by SplitMix64.

Several times faster than NumPy's ``Generator.permutation``, whose cost was a fair share
of a narrow net's per-epoch overhead outside the compiled chunks
(bench/results/code-notes.md). The model's seeded
generator draws the seed, so a fit stays reproducible from the model's ``seed``.
"""
import numpy as np

from .jit import entry

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_LOW32 = np.uint64(0xFFFFFFFF)
_TWO32 = np.uint64(1 << 32)


def permutation(n, seed):
    """A uniformly random permutation of 0..n-1 (int64) from a 64-bit ``seed``. The array
    is NumPy's: the compiled part allocates nothing (tests/test_allocations.py counts)."""
    perm = np.arange(n, dtype=np.int64)
    shuffle(perm, seed)
    return perm


@entry
def shuffle(perm, seed):
    """Shuffle ``perm`` in place, uniformly, from a 64-bit ``seed``.

    Each swap index is drawn without bias by Lemire's multiply-and-reject: the high
    half of r * (i + 1) for a 32-bit r, redrawn in the rare case (probability below
    (i + 1) / 2^32) that the low half falls in the short interval."""
    x = np.uint64(seed)
    for i in range(perm.shape[0] - 1, 0, -1):
        s = np.uint64(i + 1)
        while True:
            x += _GOLDEN
            z = (x ^ (x >> np.uint64(30))) * _M1
            z = (z ^ (z >> np.uint64(27))) * _M2
            z ^= z >> np.uint64(31)
            m = (z >> np.uint64(32)) * s
            low = m & _LOW32
            if low >= s or low >= (_TWO32 - s) % s:
                break
        j = np.int64(m >> np.uint64(32))
        perm[i], perm[j] = perm[j], perm[i]
