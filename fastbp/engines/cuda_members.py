"""An ensemble's members trained in the same launches on a GPU
(``kernels.cuda_fused.fused_members_chunk``).

The members of a ``fastbp.Ensemble`` share the data and the batches, and each is a
narrow network that alone keeps only a few of a GPU's multiprocessors busy. Once per fit,
``MemberStacks`` stacks their parameters, optimizer state and row weights on a leading
axis and gives each member's session views of its own row, so everything done to one
member (its weights synced to the host for a callback, a snapshot, ``end_fit``) is
unchanged. Each chunk is then one cooperative launch with a row of the grid per member,
or several launches where the members' blocks do not fit on the device at once.

``train_members`` returns None where the members cannot share launches: the
layer-by-layer path (widths past the fused kernels'), no cooperative launch, members
that differ in anything but their weights, optimizer hyper-parameters, row weights and
dropout seeds. The ensemble then runs them one after another.
"""
import numpy as np
from numba import config, cuda

from ..kernels import cuda as kc
from ..kernels import math as m
from ..kernels.cuda import FUSED_PARTIAL_BYTES, FUSED_THREADS, cdiv, cooperative_blocks


class MemberStacks:
    """The member-stacked device arrays of one ensemble fit, and the scratch of its
    launches (one row per grid row: gradient, partial gradients, partial sums)."""

    def __init__(self, engines, sessions):
        s0 = sessions[0]
        K = len(sessions)
        self.params = cuda.device_array((K,) + s0.params.shape, s0.params.dtype)
        self.state = cuda.device_array((K,) + s0.dev_state.shape, s0.dev_state.dtype)
        self.row_w = cuda.device_array((K,) + s0.row_w.shape, s0.row_w.dtype)
        for k, s in enumerate(sessions):
            self.params[k].copy_to_device(s.params)
            self.state[k].copy_to_device(s.dev_state)
            self.row_w[k].copy_to_device(s.row_w)
            s.params, s.dev_state, s.row_w = self.params[k], self.state[k], self.row_w[k]
            s.stacks = self
        self.index = {id(s): k for k, s in enumerate(sessions)}
        self.seeds = cuda.to_device(np.array([s.seed for s in sessions], dtype=np.int64))
        self.kernel = engines[0]._f["fused_members_chunk"]
        self.max_blocks = None
        self._out = None
        self._scratch = (0, 0, None)

    def out(self, n_batches):
        """(K, n_batches, 2) [loss, metric sum] rows, kept between chunks."""
        if self._out is None or self._out.shape[1] < n_batches:
            self._out = cuda.device_array((self.params.shape[0], n_batches, 2), np.float64)
        return self._out

    def scratch(self, n_rows, n_blocks):
        """(grads, partials, part) for n_rows grid rows of n_blocks blocks each, kept
        between chunks (and made again only when a launch needs more)."""
        rows, blocks, bufs = self._scratch
        if bufs is None or rows < n_rows or blocks < n_blocks:
            rows, blocks = max(rows, n_rows), max(blocks, n_blocks)
            P, dt = self.params.shape[1], self.params.dtype
            bufs = (cuda.device_array((rows, P), dt),
                    cuda.device_array((rows, blocks, P), dt),
                    cuda.device_array((rows, blocks, 3), np.float64))
            self._scratch = (rows, blocks, bufs)
        return bufs


def _same_network(engines, sessions):
    """Whether the jobs' networks differ in nothing the kernel takes once for all."""
    e0, s0 = engines[0], sessions[0]
    n0, f0 = e0.net, s0.fused
    for e, s in zip(engines, sessions):
        n, f = e.net, s.fused
        if f is None or f.tile_rows != f0.tile_rows or f.n_slots != f0.n_slots:
            return False
        if not (np.array_equal(n.layout.sizes, n0.layout.sizes) and n.dtype == n0.dtype
                and list(n.acts) == list(n0.acts) and list(n.drop) == list(n0.drop)
                and n.loss == n0.loss and np.array_equal(s.trainable, s0.trainable)
                and s.optimizer.code == s0.optimizer.code and s.slots == s0.slots
                and s.batch_size == s0.batch_size and s.X is s0.X and s.Y is s0.Y):
            return False
    return True


def _stacks_for(engines, sessions):
    """The MemberStacks all the sessions are in (made on the first chunk), or None."""
    stacks = sessions[0].stacks
    if stacks is None and all(s.stacks is None for s in sessions):
        if not _same_network(engines, sessions):
            return None
        return MemberStacks(engines, sessions)
    if stacks is None or any(s.stacks is not stacks for s in sessions):
        return None
    return stacks


def _launch_plan(stacks, n_members, n_slots):
    """[(first, count)] member ranges of the launches, and the blocks per member: every
    member's blocks on the device at once, as many per member as fit (at most a batch's
    tiles), within the partial gradients' memory budget; None where no launch can run."""
    if config.ENABLE_CUDASIM:
        return [(0, n_members)], 1      # grid sync is the block's sync there: one each
    P, itemsize = stacks.params.shape[1], stacks.params.dtype.itemsize
    most = min(stacks.max_blocks, FUSED_PARTIAL_BYTES // (P * itemsize))
    if most < 1:
        return None
    if n_members <= most:
        return [(0, n_members)], max(1, min(n_slots, most // n_members))
    return [(i, min(most, n_members - i)) for i in range(0, n_members, most)], 1


def train_members(jobs):
    """Run ``jobs`` (``Engine.train_together``'s) in the same launches; the steps each
    applied, or None where they cannot share launches."""
    if not kc.FUSED_MEMBERS or not kc.FUSED_PERSISTENT:
        return None
    engines = [j[0] for j in jobs]
    sessions = [j[1] for j in jobs]
    stacks = _stacks_for(engines, sessions)
    if stacks is None:
        return None
    e0, s0 = engines[0], sessions[0]
    _, _, perm, start, stop, _, _, clip, _ = jobs[0]
    net, f = e0.net, s0.fused
    nb = cdiv(stop - start, s0.batch_size)
    K = stacks.params.shape[0]
    rows = np.array([stacks.index[id(s)] for s in sessions], dtype=np.int64)
    rates = np.zeros((K, nb, m.N_COEFFS), dtype=np.float64)
    steps = np.zeros(K, dtype=np.int64)
    for k, (e, s, _, _, _, lrs, step, _, _) in zip(rows, jobs):
        rates[k] = e._coefficients(s, lrs, step, nb, nb)
        steps[k] = step
    e0._upload_perm(s0, perm)
    out = stacks.out(nb)
    status = cuda.to_device(np.zeros(K, dtype=np.int64))
    d_rates, d_steps = cuda.to_device(rates), cuda.to_device(steps)

    def args(members, grads, partials, part):
        return (s0.X, s0.Y, stacks.row_w, s0.perm, start, stop, s0.batch_size,
                stacks.params, grads, partials, part, f.sizes, f.poff, f.acts, f.drop,
                f.trainable, s0.lowest, int(net.loss), stacks.seeds, d_steps, f.tile_rows,
                s0.optimizer.code, stacks.state, s0.slots, s0.ranges, s0.n_trainable,
                d_rates, float(clip or 0.0), out, status, members)

    if stacks.max_blocks is None and not config.ENABLE_CUDASIM:
        stacks.max_blocks = cooperative_blocks(
            stacks.kernel, args(cuda.to_device(rows), *stacks.scratch(1, 1)), f.smem)
    plan = _launch_plan(stacks, len(rows), f.n_slots)
    if plan is None:
        return None
    launches, per_member = plan
    for first, count in launches:
        members = cuda.to_device(rows[first:first + count])
        bufs = stacks.scratch(count, per_member)
        stacks.kernel[(per_member, count), FUSED_THREADS, 0, f.smem](*args(members, *bufs))
    res, bad = out.copy_to_host(), status.copy_to_host()
    done = []
    for k, job in zip(rows, jobs):
        job[8][:nb] = res[k, :nb]
        done.append(int(bad[k]) - 1 if bad[k] else nb)
    return done
