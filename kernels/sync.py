"""Atomics, spin barriers and the roster of a training team, for compiled code.

A team trains a chunk of mini-batches on several threads (fastbp.threads starts them; each
calls the same compiled entry with its member number). Member 0, the leader, is the
calling thread and waits for a member that has not arrived only at the chunk's first
batch, and then at most a grace of a tenth of a batch: before each batch it publishes the
batch's roster, the members already waiting for it, and the batch's work is split among
them. A member that starts later (its thread woken late, its core busy with another
process) joins at the next batch, so lateness costs at most the batch it falls in, never
the chunk. Within a batch the roster meets at spin barriers; the leader waits at the
end of each batch for the roster to finish (the next batch reads the updated weights).

Numba offers no atomics on the CPU; these intrinsics are LLVM's atomic loads, stores and
read-modify-writes on the elements of an int64 array (sequentially consistent, which on
x86 costs nothing more than acquire/release for loads and stores).

Layout of a sync array (int64, zeroed before each chunk): member u's words on line u, the
leader's plan on the last line; lines are 128 bytes apart (adjacent-line prefetch pairs
64-byte lines), so a word one member writes shares no line with another's.
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .jit import entry, kernel

_i64 = ir.IntType(64)


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

@intrinsic
def fetch_add(typingctx, arr, index, value):
    """arr.flat[index] += value atomically; returns the value before."""
    if not _check(arr, index):
        return None

    def codegen(context, builder, sig, args):
        ptr = _pointer(context, builder, sig, args)
        v = context.cast(builder, args[2], sig.args[2], types.int64)
        return builder.atomic_rmw("add", ptr, v, "seq_cst")
    return types.int64(arr, index, value), codegen


STRIDE = 16
PHASE = 0            # in member u's line: the last barrier it reached
ARRIVE = 1           # in member u's line: the batch (1-based) it waits to run; 0: not here
WAITED = 2           # in member u's line: cycles it spent at barriers (statistics)
PLAN_BATCH = 0       # in the last line: the batch published (1-based), or PLAN_DONE
PLAN_MASK = 1        # in the last line: the published batch's roster, a bit per member
RESULT = 2           # in the last line: what the chunk returns
JOINED = 3           # in the last line: every member that ran at least one batch
GRACE = 4            # in the last line: cycles the leader may wait for members at batch 1
SPENT = 5            # in the last line: cycles the leader spent in the chunk
FUSE_ALONE = 6       # in the last line: a roster of one may run a batch as one slice
PLAN_DONE = 1 << 62
PATIENCE = 1 << 33   # cycles a member waits for a batch before it leaves (seconds)
MAX_MEMBERS = 62     # members are bits of an int64 mask


def sync_words(n_members):
    """Length of the sync array of a team of up to ``n_members``."""
    return STRIDE * (n_members + 1)


@kernel
def plan_slot(sync):
    return sync.shape[0] - STRIDE


@kernel
def popcount_below(mask, u):
    """Members of ``mask`` numbered below ``u``: u's rank in the roster."""
    r = 0
    for v in range(u):
        r += (mask >> v) & 1
    return r


@kernel
def popcount(mask):
    r = 0
    while mask:
        r += mask & 1
        mask >>= 1
    return r


@kernel
def barrier(sync, u, mask, value):
    """Member u of the roster ``mask`` reaches barrier ``value`` (increasing within a chunk):
    returns when every member of the roster has; adds the cycles waited to u's WAITED."""
    atomic_store(sync, u * STRIDE + PHASE, value)
    c0 = cycles()
    m = mask
    v = 0
    while m:
        if (m & 1) and v != u:
            while atomic_load(sync, v * STRIDE + PHASE) < value:
                spin_pause()
        m >>= 1
        v += 1
    waited = cycles() - c0
    sync[u * STRIDE + WAITED] += waited
    return waited


@kernel
def lead_batch(sync, n_members, batch, roster):
    """The leader opens ``batch`` (1-based): waits until every member of ``roster`` (the
    previous batch's) is done with it, then takes in as the new roster every member
    waiting for this batch (it claims each by turning its arrival word negative, so a
    member cannot leave once taken in) and publishes it. Returns the new roster.

    The chunk's first batch has no roster yet, and the members were woken just before
    the leader started: it waits up to the plan's GRACE cycles for them (set by the
    caller, a share of a batch's time). Without it a chunk of one long batch (a wide
    net's) would always run alone, since a member only ever joins at a later batch."""
    c0 = cycles()
    for v in range(1, n_members):
        if (roster >> v) & 1:
            while atomic_load(sync, v * STRIDE + ARRIVE) < batch:
                spin_pause()
    p = plan_slot(sync)
    if batch == 1:
        grace = sync[p + GRACE]
        for v in range(1, n_members):
            while (atomic_load(sync, v * STRIDE + ARRIVE) != batch
                   and cycles() - c0 < grace):
                spin_pause()
    sync[WAITED] += cycles() - c0
    mask = 1
    for v in range(1, n_members):
        if compare_exchange(sync, v * STRIDE + ARRIVE, batch, -batch):
            mask |= 1 << v
    atomic_store(sync, p + PLAN_MASK, mask)
    atomic_store(sync, p + PLAN_BATCH, batch)
    sync[p + JOINED] |= mask
    return mask


@kernel
def lead_finish(sync, n_members, roster, result):
    """The leader closes the chunk: waits for the last roster to finish, then tells every
    member still waiting that there is no more work."""
    last = atomic_load(sync, plan_slot(sync) + PLAN_BATCH)
    c0 = cycles()
    for v in range(1, n_members):
        if (roster >> v) & 1:
            while atomic_load(sync, v * STRIDE + ARRIVE) <= last:
                spin_pause()
    sync[WAITED] += cycles() - c0
    p = plan_slot(sync)
    atomic_store(sync, p + RESULT, result)
    atomic_store(sync, p + PLAN_BATCH, PLAN_DONE)


@kernel
def await_batch(sync, u, want):
    """Member u (not the leader) waits to run batch ``want`` (1-based) or a later one.
    Returns (batch, roster) of the batch the leader took it into, or (PLAN_DONE, 0) when
    the chunk is over. A member the leader did not take in (it arrived after the leader
    looked) waits for the next batch. One that has waited PATIENCE cycles without being
    taken in leaves: no roster holds it, so nobody waits for it, and a spinning thread
    gives up its core."""
    p = plan_slot(sync)
    mine = u * STRIDE + ARRIVE
    c0 = cycles()
    while True:
        # Say which batch this member waits for, unless the leader has already taken it
        # in for that batch (done_with said so first): a plain store would undo the claim.
        cur = atomic_load(sync, mine)
        while cur != -want and cur != want:
            if compare_exchange(sync, mine, cur, want):
                break
            cur = atomic_load(sync, mine)
        w0 = cycles()
        while True:
            b = atomic_load(sync, p + PLAN_BATCH)
            if b >= want:
                break
            if cycles() - w0 > PATIENCE and compare_exchange(sync, mine, want, 0):
                sync[u * STRIDE + WAITED] += cycles() - c0
                return PLAN_DONE, 0
            spin_pause()
        if atomic_load(sync, mine) == -want:   # taken in: the plan is this batch's
            sync[u * STRIDE + WAITED] += cycles() - c0
            return want, atomic_load(sync, p + PLAN_MASK)
        if b >= PLAN_DONE:
            sync[u * STRIDE + WAITED] += cycles() - c0
            return PLAN_DONE, 0
        want = b + 1


@kernel
def done_with(sync, u, batch):
    """Member u is done with ``batch``: the leader may open the next one."""
    atomic_store(sync, u * STRIDE + ARRIVE, batch + 1)


@kernel
def claim(counter, index):
    """The next item of a shared work list: counter[index] before adding one to it."""
    return fetch_add(counter, index, 1)


@entry
def spin_while(word, value, max_cycles):
    """Spin while word[0] == value, at most ``max_cycles``; returns the cycle counter (a
    pool worker waits for its next task this way: see fastbp.threads)."""
    c0 = cycles()
    while atomic_load(word, 0) == value and cycles() - c0 < max_cycles:
        spin_pause()
    return cycles()


# From Python, after a run, in plain NumPy (a compiled call would box its arguments).

def members_joined(sync):
    """How many members ran at least one batch of the last chunk run on ``sync``."""
    return bin(int(sync[len(sync) - STRIDE + JOINED])).count("1")


def set_grace(sync, cycles):
    """Let the leader wait up to ``cycles`` for the members at the chunk's first batch."""
    sync[len(sync) - STRIDE + GRACE] = int(cycles)


def set_fuse_alone(sync, allowed):
    """Let a roster of one run its batches as one slice (kernels.cpu.chunk_steps)."""
    sync[len(sync) - STRIDE + FUSE_ALONE] = int(bool(allowed))


def spent_cycles(sync):
    """Cycles the leader spent in the last chunk run on ``sync``."""
    return int(sync[len(sync) - STRIDE + SPENT])


def waited_cycles(sync, n_members):
    """Cycles each member spent waiting at barriers in the last chunk."""
    return [int(sync[u * STRIDE + WAITED]) for u in range(n_members)]
