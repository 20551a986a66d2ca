"""Explicit SIMD vectors for ``@njit`` code: a vector type and a handful of intrinsics.

LLVM does not register-block the GEMM loops Numba hands it: every accumulator goes back to
memory on each step of the reduction, because it cannot prove that the output and input
arrays do not alias. With a value type for one machine vector, the accumulators of a
micro-kernel are plain SSA values that live in registers (measured: 32x64 @ 64x64 in float32
at up to ~190 GFLOP/s on one Zen 5 core, against ~60 through BLAS). A vector is VEC_BYTES
wide: one AVX-512 register where the CPU has them, else 32 bytes (one AVX2 register: the
micro-kernel's 8 accumulators of 64 bytes would not fit in AVX2's 16 registers).

All loads and stores address the flat data of a C-contiguous array (any number of
dimensions) by element index, without bounds checks, like the kernels that use them.
"""
import os

import llvmlite.binding as ll
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.datamodel import PrimitiveModel
from numba.extending import intrinsic, register_model


def _vector_bytes():
    # FASTBP_SIMD_BYTES=32 forces the narrower vectors (the tests run both widths on one
    # machine; numba's cache is keyed by CPU, not by this, so use a separate cache dir).
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
        vty = args[0].type
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty] * 3),
                                            f"llvm.fma.{_suffix(vty)}")
        return builder.call(fn, args)
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
