"""Atomics and a spin barrier for ``@njit`` code: threads that stay in one parallel region.

Opening a numba parallel region wakes its pool threads, which wait passively between
regions: 50-150 us measured on the development machine, which is several mini-batch steps
of a narrow network. A team of threads that enters one region per chunk of batches and meets
at a spin barrier between the phases of each step pays that once per chunk instead of
twice per step. Numba offers no atomics on the CPU; these intrinsics are LLVM's atomic
loads, stores and read-modify-writes on the elements of an int64 array (sequentially
consistent, which on x86 costs nothing more than acquire/release for loads and stores).

A team must never wait for a thread that is not running: a threading layer may run the
iterations of a prange one after another on one thread (TBB's work stealing can). So a
team forms only after every member has been seen to arrive (``team_start``); a member that
waits too long claims the whole chunk for itself, and the others, arriving late, find the
work claimed and leave.
"""
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

_i64 = ir.IntType(64)

# Slots of a team's sync array (int64): each member's arrival counter sits on its own
# 128 bytes (adjacent-line prefetch pairs 64-byte lines), the mode word after them.
STRIDE = 16
MODE_WAITING = 0
MODE_TEAM = 1
MODE_SOLO = 2          # MODE_SOLO + t: member t claimed the chunk and runs it alone
SOLO_OWNER = 1         # in member 0's line: t + 1 once member t takes over the chunk alone


def sync_words(n_threads):
    """Length of the int64 sync array for a team of up to ``n_threads`` (zeroed before
    each use): the members' lines, then one line with the mode word and the result word."""
    return STRIDE * (n_threads + 1)


@njit(cache=True, nogil=True)
def mode_slot(sync):
    return sync.shape[0] - STRIDE


@njit(cache=True, nogil=True)
def result_slot(sync):
    """Where a team leaves what its run returns (beside the mode word)."""
    return sync.shape[0] - STRIDE + 1


def _pointer(context, builder, sig, args):
    data = context.make_array(sig.args[0])(context, builder, args[0]).data
    return builder.gep(data, [context.cast(builder, args[1], sig.args[1], types.intp)])


def _check(arr, index):
    return (isinstance(arr, types.Array) and arr.dtype == types.int64
            and isinstance(index, types.Integer))


@intrinsic
def atomic_load(typingctx, arr, index):
    """arr.flat[index], read atomically (never cached in a register across a spin loop)."""
    if not _check(arr, index):
        return None

    def codegen(context, builder, sig, args):
        ptr = _pointer(context, builder, sig, args)
        return builder.load_atomic(ptr, "seq_cst", 8)
    return types.int64(arr, index), codegen


@intrinsic
def atomic_store(typingctx, arr, index, value):
    """arr.flat[index] = value, atomically; every earlier write is visible to a thread that
    reads this value."""
    if not _check(arr, index):
        return None

    def codegen(context, builder, sig, args):
        ptr = _pointer(context, builder, sig, args)
        v = context.cast(builder, args[2], sig.args[2], types.int64)
        builder.store_atomic(v, ptr, "seq_cst", 8)
        return context.get_dummy_value()
    return types.void(arr, index, value), codegen


@intrinsic
def compare_exchange(typingctx, arr, index, expected, new):
    """If arr.flat[index] == expected, set it to ``new``; returns whether it did."""
    if not _check(arr, index):
        return None

    def codegen(context, builder, sig, args):
        ptr = _pointer(context, builder, sig, args)
        e = context.cast(builder, args[2], sig.args[2], types.int64)
        n = context.cast(builder, args[3], sig.args[3], types.int64)
        pair = builder.cmpxchg(ptr, e, n, "seq_cst", "seq_cst")
        return builder.extract_value(pair, 1)
    return types.boolean(arr, index, expected, new), codegen


def _host_is_x86():
    import llvmlite.binding as ll
    return ll.get_process_triple().startswith(("x86_64", "i386", "i686"))


_X86 = _host_is_x86()


@intrinsic
def spin_pause(typingctx):
    """A spin-wait hint (x86 ``pause``): eases the core while a loop polls; nothing
    elsewhere."""
    def codegen(context, builder, sig, args):
        if _X86:
            fn = cgutils.get_or_insert_function(builder.module,
                                                ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()
    return types.void(), codegen


@intrinsic
def cycles(typingctx):
    """A cycle counter (x86: the TSC): cheap, monotonic, for spin timeouts."""
    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_i64, []),
                                            "llvm.readcyclecounter")
        return builder.call(fn, [])
    return types.int64(), codegen


@njit(cache=True, nogil=True)
def barrier(sync, t, nt, k):
    """The k-th barrier (k = 1, 2, ...) of member ``t`` of a team of ``nt``: returns when
    every member has reached it; returns the cycles it waited. Each member bumps only its
    own counter, so the only line that moves between cores is the one each waiter reads."""
    atomic_store(sync, t * STRIDE, k)
    c0 = cycles()
    for u in range(nt):
        if u != t:
            while atomic_load(sync, u * STRIDE) < k:
                spin_pause()
    return cycles() - c0


@njit(cache=True, nogil=True)
def team_start(sync, t, nt, patience):
    """Member t arrives; returns MODE_TEAM when all ``nt`` members run at once, else the
    mode that decides who runs the chunk alone (MODE_SOLO + its member number).

    A member waits ``patience`` cycles for the others, then claims the chunk: whoever's
    compare-exchange wins runs it; the mode word is set once, so every member agrees."""
    mode = mode_slot(sync)
    atomic_store(sync, t * STRIDE, 1)
    t0 = cycles()
    while True:
        state = atomic_load(sync, mode)
        if state != MODE_WAITING:
            return state
        here = 0
        for u in range(nt):
            if atomic_load(sync, u * STRIDE) >= 1:
                here += 1
        if here == nt:
            compare_exchange(sync, mode, MODE_WAITING, MODE_TEAM)
        elif cycles() - t0 > patience:
            compare_exchange(sync, mode, MODE_WAITING, MODE_SOLO + t)
        spin_pause()


# From Python, after a run, in plain NumPy: calling the compiled mode_slot would box its
# argument (one runtime allocation per call, which tests/test_allocations counts).

def team_tried(sync):
    """Whether a team was formed, or waited for, for the last chunk run on ``sync``; a
    chunk the size rule ran on the calling thread leaves the mode word at MODE_WAITING."""
    return bool(sync[len(sync) - STRIDE] != MODE_WAITING)


def team_broke_up(sync):
    """Whether the last chunk run on ``sync`` ended up on one thread although a team was
    formed for it."""
    mode = sync[len(sync) - STRIDE]
    return bool(mode >= MODE_SOLO or (mode == MODE_TEAM and sync[SOLO_OWNER] > 0))
