"""Explicit SIMD vectors for ``@njit`` code: a vector type and a handful of intrinsics.

LLVM does not register-block the GEMM loops Numba hands it: every accumulator goes back to
memory on each step of the reduction, because it cannot prove that the output and input
arrays do not alias. With a value type for one machine vector, the accumulators of a
micro-kernel are plain SSA values that live in registers (several times BLAS's speed on
narrow layers: bench/results/code-notes.md). A vector is VEC_BYTES
wide: one AVX-512 register where the CPU has them, else 32 bytes (one AVX2 register: the
micro-kernel's 8 accumulators of 64 bytes would not fit in AVX2's 16 registers).

All loads and stores address the flat data of a C-contiguous array (any number of
dimensions) by element index, without bounds checks, like the kernels that use them.
"""
import math
import os

import llvmlite.binding as ll
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.datamodel import PrimitiveModel
from numba.extending import intrinsic, register_model


def _vector_bytes():
    # FASTBP_SIMD_BYTES=32 forces the narrower vectors (the tests run both widths on one
    # machine; fastbp's cache key holds it, kernels.jit, Numba's own does not).
    forced = os.environ.get("FASTBP_SIMD_BYTES")
    if forced in ("32", "64"):
        return int(forced)
    try:
        avx512 = bool(ll.get_host_cpu_features().get("avx512f", False))
    except Exception:   # no feature query on this platform: the portable width
        avx512 = False
    return 64 if avx512 else 32


VEC_BYTES = _vector_bytes()


class Vector(types.Type):
    """VEC_BYTES of ``dtype`` lanes, held in a register."""

    def __init__(self, dtype):
        self.dtype = dtype
        self.lanes = VEC_BYTES // (dtype.bitwidth // 8)
        super().__init__(name=f"Vector({dtype} x {self.lanes})")


@register_model(Vector)
class _VectorModel(PrimitiveModel):
    def __init__(self, dmm, fe_type):
        element = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(element, fe_type.lanes))


_i32 = ir.IntType(32)


def _address(context, builder, arrty, arr, index, vty):
    data = context.make_array(arrty)(context, builder, arr).data
    return builder.bitcast(builder.gep(data, [index]), ir.PointerType(vty))


def _lane_mask(builder, n, lanes):
    """<lanes x i1>: lane i < n."""
    idx = ir.Constant(ir.VectorType(_i32, lanes), list(range(lanes)))
    n32 = builder.trunc(n, _i32) if n.type.width > 32 else n
    splat = builder.shuffle_vector(
        builder.insert_element(ir.Constant(ir.VectorType(_i32, lanes), ir.Undefined), n32,
                               ir.Constant(_i32, 0)),
        ir.Constant(ir.VectorType(_i32, lanes), ir.Undefined),
        ir.Constant(ir.VectorType(_i32, lanes), [0] * lanes))
    return builder.icmp_signed("<", idx, splat)


def _suffix(vty):
    return f"v{vty.count}{'f32' if vty.element == ir.FloatType() else 'f64'}"


def _fma(builder, a, b, c):
    """a * b + c on vectors, one rounding (llvm.fma)."""
    vty = a.type
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty] * 3),
                                        f"llvm.fma.{_suffix(vty)}")
    return builder.call(fn, [a, b, c])


@intrinsic
def lanes(typingctx, arr):
    """Lanes of a vector of ``arr``'s dtype (a compile-time constant)."""
    n = Vector(arr.dtype).lanes

    def codegen(context, builder, sig, args):
        return context.get_constant(types.intp, n)
    return types.intp(arr), codegen


@intrinsic
def vstore(typingctx, arr, index, v):
    """arr.flat[index : index + lanes] = v."""
    def codegen(context, builder, sig, args):
        ptr = _address(context, builder, sig.args[0], args[0], args[1], args[2].type)
        builder.store(args[2], ptr, align=arr.dtype.bitwidth // 8)
        return context.get_dummy_value()
    return types.void(arr, index, v), codegen


@intrinsic
def vload_part(typingctx, arr, index, n):
    """The first ``n`` (< lanes) elements from arr.flat[index], zeros after: never touches
    memory past them (a masked load)."""
    vt = Vector(arr.dtype)

    def codegen(context, builder, sig, args):
        vty = context.get_value_type(vt)
        ptr = _address(context, builder, sig.args[0], args[0], args[1], vty)
        mask = _lane_mask(builder, args[2], vt.lanes)
        fn = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(vty, [ptr.type, _i32, mask.type, vty]),
            f"llvm.masked.load.{_suffix(vty)}.p0")
        return builder.call(fn, [ptr, ir.Constant(_i32, arr.dtype.bitwidth // 8), mask,
                                 ir.Constant(vty, None)])
    return vt(arr, index, n), codegen


@intrinsic
def vstore_part(typingctx, arr, index, v, n):
    """arr.flat[index : index + n] = the first ``n`` lanes of v (a masked store)."""
    def codegen(context, builder, sig, args):
        vty = args[2].type
        ptr = _address(context, builder, sig.args[0], args[0], args[1], vty)
        mask = _lane_mask(builder, args[3], vty.count)
        fn = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(ir.VoidType(), [vty, ptr.type, _i32, mask.type]),
            f"llvm.masked.store.{_suffix(vty)}.p0")
        builder.call(fn, [args[2], ptr, ir.Constant(_i32, arr.dtype.bitwidth // 8), mask])
        return context.get_dummy_value()
    return types.void(arr, index, v, n), codegen


@intrinsic
def vsplat(typingctx, arr, x):
    """A vector of ``arr``'s dtype with every lane = x."""
    vt = Vector(arr.dtype)

    def codegen(context, builder, sig, args):
        vty = context.get_value_type(vt)
        x = context.cast(builder, args[1], sig.args[1], vt.dtype)
        one = builder.insert_element(ir.Constant(vty, ir.Undefined), x, ir.Constant(_i32, 0))
        return builder.shuffle_vector(one, ir.Constant(vty, ir.Undefined),
                                      ir.Constant(ir.VectorType(_i32, vt.lanes), [0] * vt.lanes))
    return vt(arr, x), codegen


@intrinsic
def vfma(typingctx, a, b, c):
    """a * b + c, lane by lane, one rounding."""
    def codegen(context, builder, sig, args):
        return _fma(builder, *args)
    return a(a, b, c), codegen


@intrinsic
def at(typingctx, arr, index):
    """arr.flat[index] as a plain load: Numba's indexing wraps negative indices, a branch
    and a mask per access that, in a micro-kernel's inner loop, cost more than the FMAs."""
    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        return builder.load(builder.gep(data, [args[1]]))
    return arr.dtype(arr, index), codegen


@intrinsic
def stack_buffer(typingctx, like, nbytes):
    """Pointer to ``nbytes`` (a literal int) of ``like``'s dtype in the calling function's
    stack frame: scratch that costs no allocation (wrap it with numba.carray). The slot is
    made once in the function's entry block, so a call inside a loop reuses it."""
    if not isinstance(nbytes, types.IntegerLiteral):
        return None
    count = nbytes.literal_value // (like.dtype.bitwidth // 8)

    def codegen(context, builder, sig, args):
        ty = context.get_value_type(like.dtype)
        return cgutils.alloca_once(builder, ty, size=ir.Constant(ir.IntType(64), count))
    return types.CPointer(like.dtype)(like, nbytes), codegen


@intrinsic
def vrelu(typingctx, v, on):
    """v with its negative lanes set to zero when ``on`` (else v unchanged). NaN lanes stay
    NaN (a select on v < 0, not a max), so divergence still shows in the loss."""
    def codegen(context, builder, sig, args):
        x = args[0]
        neg = builder.fcmp_ordered("<", x, ir.Constant(x.type, None))
        clipped = builder.select(neg, ir.Constant(x.type, None), x)
        return builder.select(args[1], clipped, x)
    return v(v, types.boolean), codegen


# exp on vectors: n = round(x / ln 2), r = x - n ln 2 (ln 2 split in two for an exact
# product), e^r from a polynomial on |r| <= ln2 / 2, times 2^n built in the exponent bits.
# n comes from the round-to-nearest of adding 1.5 * 2^(mantissa bits): its low bits are n
# itself, so no float-to-int conversion (undefined for NaN) is needed. float32: Cephes'
# expf polynomial (about 1 ulp); float64: the Taylor series to r^13 (error < 4e-18).
_EXP = {
    32: dict(int_ty=ir.IntType(32), shift=23, one_bits=0x3F800000, magic=12582912.0,
             ln2_hi=0.693359375, ln2_lo=-2.12194440e-4, lo=-87.33654, hi=88.37626,
             poly=(1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
                   1.6666665459e-1, 5.0000001201e-1, 1.0, 1.0)),
    64: dict(int_ty=ir.IntType(64), shift=52, one_bits=0x3FF0000000000000,
             magic=6755399441055744.0, ln2_hi=6.93145751953125e-1,
             ln2_lo=1.42860682030941723212e-6, lo=-708.3964185322641, hi=709.0895657128241,
             poly=tuple(1.0 / math.factorial(k) for k in range(13, -1, -1))),
}


@intrinsic
def vexp(typingctx, v):
    """e^x in every lane. NaN stays NaN; x above 88.376 (float32) or 709.09 (float64) gives
    inf, a little early (e^x overflows at 88.72 and 709.78), and x below the point where
    e^x stops being a normal number (-87.34, -708.40) gives 0."""
    def codegen(context, builder, sig, args):
        x = args[0]
        vty = x.type
        bits = 32 if vty.element == ir.FloatType() else 64
        c = _EXP[bits]
        ity = ir.VectorType(c["int_ty"], vty.count)

        def k(value):
            return ir.Constant(vty, [value] * vty.count)

        # Clamp into the range where 2^n is a normal number (NaN passes both selects); the
        # same two masks give 0 and inf at the end.
        below = builder.fcmp_ordered("<", x, k(c["lo"]))
        above = builder.fcmp_ordered(">", x, k(c["hi"]))
        xc = builder.select(below, k(c["lo"]), builder.select(above, k(c["hi"]), x))
        t = _fma(builder, xc, k(1.4426950408889634), k(c["magic"]))
        n = builder.fsub(t, k(c["magic"]))
        r = _fma(builder, n, k(-c["ln2_hi"]), xc)
        r = _fma(builder, n, k(-c["ln2_lo"]), r)
        coeffs = c["poly"]
        p = k(coeffs[0])
        if bits == 32:   # Cephes: ((..)r + 0.5) r^2 + r + 1
            for a in coeffs[1:6]:
                p = _fma(builder, p, r, k(a))
            p = _fma(builder, p, builder.fmul(r, r), r)
            p = builder.fadd(p, k(1.0))
        else:
            for a in coeffs[1:]:
                p = _fma(builder, p, r, k(a))
        shift = ir.Constant(ity, [c["shift"]] * vty.count)
        two_n = builder.add(builder.shl(builder.bitcast(t, ity), shift),
                            ir.Constant(ity, [c["one_bits"]] * vty.count))
        y = builder.fmul(p, builder.bitcast(two_n, vty))
        return builder.select(below, k(0.0), builder.select(above, k(math.inf), y))
    return v(v), codegen


@intrinsic
def prefetch(typingctx, arr, index):
    """Ask for the cache line holding arr.flat[index] into every cache level (a hint: it
    never faults, even past the end of arr)."""
    def codegen(context, builder, sig, args):
        ptr = _address(context, builder, sig.args[0], args[0], args[1], ir.IntType(8))
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [ptr.type, _i32, _i32, _i32]),
            "llvm.prefetch.p0")
        builder.call(fn, [ptr, ir.Constant(_i32, 0), ir.Constant(_i32, 3),
                          ir.Constant(_i32, 1)])
        return context.get_dummy_value()
    return types.void(arr, index), codegen


@intrinsic
def vtranspose(typingctx, src, s0, lds, dst, d0, ldd):
    """dst.flat[d0 + c*ldd + r] = src.flat[s0 + r*lds + c] for r, c < lanes: one square
    block, transposed in registers (a scalar copy moves one element a cycle; this moves a
    block of 256 float32 in about 64 two-source shuffles). Each stage swaps the
    off-diagonal sub-blocks of half the size of the last: lanes/2, ..., 1."""
    vt = Vector(src.dtype)

    def codegen(context, builder, sig, args):
        vty = context.get_value_type(vt)
        L = vt.lanes
        align = src.dtype.bitwidth // 8
        s0_, lds_ = args[1], args[2]
        rows = []
        for r in range(L):
            idx = builder.add(s0_, builder.mul(lds_, ir.Constant(lds_.type, r)))
            rows.append(builder.load(_address(context, builder, sig.args[0], args[0], idx,
                                              vty), align=align))
        b = L // 2
        while b >= 1:
            lo = ir.Constant(ir.VectorType(_i32, L),
                             [e if e & b == 0 else L + e - b for e in range(L)])
            hi = ir.Constant(ir.VectorType(_i32, L),
                             [e + b if e & b == 0 else L + e for e in range(L)])
            for i in range(L):
                if i & b == 0:
                    x, y = rows[i], rows[i + b]
                    rows[i] = builder.shuffle_vector(x, y, lo)
                    rows[i + b] = builder.shuffle_vector(x, y, hi)
            b //= 2
        d0_, ldd_ = args[4], args[5]
        for c in range(L):
            idx = builder.add(d0_, builder.mul(ldd_, ir.Constant(ldd_.type, c)))
            builder.store(rows[c], _address(context, builder, sig.args[3], args[3], idx, vty),
                          align=align)
        return context.get_dummy_value()
    return types.void(src, s0, lds, dst, d0, ldd), codegen
