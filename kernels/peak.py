"""The machine's FMA peak: independent chains of vector fused multiply-adds, nothing else.

A core retires its FMAs at full rate only when enough of them are in flight: two FMA pipes
of about four cycles' latency need at least eight independent accumulators. Twelve chains
cover that on the cores this runs on and still fit AVX2's sixteen vector registers beside
the two constants (AVX-512 has 32). Each step is ``c = c * a + b`` with ``a`` just below 1,
so the values stay near 1: no overflow, no denormals, and nothing for LLVM to fold.

fastbp.benchmark runs ``fma_chains`` on one thread and on every thread at once (the entry
releases the GIL) and reports each model's figures as a percentage of the result.
"""
from .jit import entry
from .simd import lanes, vfma, vload_part, vsplat, vstore_part

CHAINS = 12


@entry
def fma_chains(x, steps):
    """``steps`` rounds of CHAINS independent vector FMAs on x's dtype; the chains end in
    x[: CHAINS * lanes]. Returns the floating-point operations done (2 per lane per FMA)."""
    V = lanes(x)
    a = vsplat(x, 0.999999)
    b = vsplat(x, 1e-6)
    c0 = vload_part(x, 0, V)
    c1 = vload_part(x, V, V)
    c2 = vload_part(x, 2 * V, V)
    c3 = vload_part(x, 3 * V, V)
    c4 = vload_part(x, 4 * V, V)
    c5 = vload_part(x, 5 * V, V)
    c6 = vload_part(x, 6 * V, V)
    c7 = vload_part(x, 7 * V, V)
    c8 = vload_part(x, 8 * V, V)
    c9 = vload_part(x, 9 * V, V)
    c10 = vload_part(x, 10 * V, V)
    c11 = vload_part(x, 11 * V, V)
    for _ in range(steps):
        c0 = vfma(c0, a, b)
        c1 = vfma(c1, a, b)
        c2 = vfma(c2, a, b)
        c3 = vfma(c3, a, b)
        c4 = vfma(c4, a, b)
        c5 = vfma(c5, a, b)
        c6 = vfma(c6, a, b)
        c7 = vfma(c7, a, b)
        c8 = vfma(c8, a, b)
        c9 = vfma(c9, a, b)
        c10 = vfma(c10, a, b)
        c11 = vfma(c11, a, b)
    vstore_part(x, 0, c0, V)
    vstore_part(x, V, c1, V)
    vstore_part(x, 2 * V, c2, V)
    vstore_part(x, 3 * V, c3, V)
    vstore_part(x, 4 * V, c4, V)
    vstore_part(x, 5 * V, c5, V)
    vstore_part(x, 6 * V, c6, V)
    vstore_part(x, 7 * V, c7, V)
    vstore_part(x, 8 * V, c8, V)
    vstore_part(x, 9 * V, c9, V)
    vstore_part(x, 10 * V, c10, V)
    vstore_part(x, 11 * V, c11, V)
    return 2.0 * CHAINS * V * steps
