"""The CPU engine: the glue between a network record and ``kernels.cpu``.

It trains chunks of mini-batches in single compiled calls, run by a team of threads
(``fastbp.threads``) when the batches are large enough to share, and predicts in tiles
that the threads claim one at a time.
"""
import itertools
import math
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from .. import precompile
from ..kernels import cpu
from ..kernels import math as km
from ..kernels.sync import members_joined, set_fuse_alone, set_grace, spent_cycles, sync_words
from ..kernels.tuning import (KEEP_WORKSPACE_BYTES, MIN_ROWS_PER_THREAD, MIN_WORK_PER_THREAD,
                              PREDICT_MIN_ROWS, PREDICT_SCRATCH_BYTES, PREDICT_TILE_BYTES,
                              PREDICT_TILE_MIN_ROWS, TEAM_MIN_WORK_PER_THREAD, GRACE_SHARE)
from ..threads import POOL, get_num_threads
from ..validation import require_finite
from ..workspace import Workspace
from .base import Engine, FitSession

_blas_controller = None


def load_blas():
    """Load SciPy's BLAS, the one Numba's np.dot calls, before any kernel can call it and
    before threadpoolctl first looks (loaded later, it would keep its own thread count).
    Only where a kernel may call BLAS (AVX2 machines, some layer sizes): SciPy's import
    was a third of ``import fastbp``."""
    import scipy.linalg.cython_blas  # noqa: F401  (loaded for its side effect)


@contextmanager
def single_threaded_blas(needed=True):
    """fastbp's threads may call BLAS each (AVX2 only): one BLAS thread each avoids
    oversubscription.

    The controller (a scan of the loaded libraries) is made once: rescanning on every call
    cost more than predicting a few thousand rows. ``needed=False`` (no BLAS call can
    happen) skips the limit, whose setting and restoring was a visible part of a narrow
    net's fit.
    """
    global _blas_controller
    if not needed:
        yield
        return
    load_blas()
    if _blas_controller is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - scikit-learn depends on it
            yield
            return
        _blas_controller = ThreadpoolController()
    with _blas_controller.limit(limits=1, user_api="blas"):
        yield


def forward_macs(layout):
    """Multiply-adds of one row's forward pass."""
    sizes = [int(n) for n in layout.sizes]
    return sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def team_size(rows, n_batches, max_threads, work):
    """How many threads train a chunk of ``n_batches`` batches of ``rows`` rows together
    (a team, see kernels.sync), ``work`` multiply-adds a row: each gets at least
    TEAM_MIN_WORK_PER_THREAD multiply-adds of every batch (what pays for the barriers)
    and MIN_WORK_PER_THREAD of the chunk (what pays for waking a thread). Not bounded by
    rows: a batch too short to split by rows is still split by rows of the weight
    gradients and by parameter spans."""
    by_batch = max(1, rows * work // TEAM_MIN_WORK_PER_THREAD)
    by_chunk = max(1, n_batches * rows * work // MIN_WORK_PER_THREAD)
    return min(max_threads, by_batch, by_chunk)


def split_size(rows, max_threads, work):
    """How many threads share ``rows`` rows of ``work`` multiply-adds each (inference):
    at least MIN_ROWS_PER_THREAD rows and MIN_WORK_PER_THREAD multiply-adds each."""
    by_rows = max(1, rows // MIN_ROWS_PER_THREAD)
    by_work = max(1, rows * work // MIN_WORK_PER_THREAD)
    return min(max_threads, by_rows, by_work)


def predict_block_rows(layout, dtype):
    """Scratch rows of inference, shared out among its threads (see
    cpu.forward_tiles): Z and A within PREDICT_SCRATCH_BYTES."""
    per_row = 2 * layout.row_width * np.dtype(dtype).itemsize
    return max(PREDICT_MIN_ROWS, PREDICT_SCRATCH_BYTES // per_row)


def predict_tile_rows(layout, dtype, n_layers):
    """Rows a thread carries through every layer at once: their Z and A rows fit
    PREDICT_TILE_BYTES, so each layer's output is still in cache when the next reads it."""
    per_row = 2 * int(sum(layout.sizes[1:n_layers + 1])) * np.dtype(dtype).itemsize
    return max(PREDICT_TILE_MIN_ROWS, PREDICT_TILE_BYTES // per_row)


@dataclass(eq=False)
class CPUFitSession(FitSession):
    """A CPU fit's buffers besides the common session."""
    ws: Workspace = None
    hyper: np.ndarray = None       # the optimizer's packed hyper-parameters
    blocks: np.ndarray = None      # (start, stop) blocks of the optimizer pass
    block_sq: np.ndarray = None    # their squared norms (clipping)


class ThreadPolicy:
    """Team or one thread for the chunks of one batch size, by measured time per batch.

    A team pays for moving each step's parameters and rows between cores, and waits for a
    member whose core is busy elsewhere; whether that beats one thread depends on the
    machine and its load at the time, not only on the shape (on a shared 2-core virtual
    machine the same net's team went from faster to slower than one thread from one
    minute to the next: bench/results/code-notes.md). So both are timed: the team first,
    then one thread, then whichever was faster over its last few chunks, trying the other
    again now and then. A retry runs only as many of a chunk's batches as time it
    (``probe_batches``) and costs the gap between the two for those; retries are spaced
    to cost at most PROBE_COST of the throughput even if each took a whole chunk: often
    when the two are close (cheap, and the choice may flip), rarely when one is far
    ahead.

    Each choice counts by the fastest of its last KEEP times: interference only ever
    slows a chunk, and a model's first team chunk often ran at one thread's speed (a
    member stalled for milliseconds on a virtual CPU, bench/results/README.md), which as
    a median or a single time handed the next chunks to the slower choice. Still, a load
    that lasts (another process on the member's core) slows all KEEP times, and then
    one thread wins."""

    PROBE_COST = 0.02   # the share of time retries of the slower choice may cost
    MIN_PERIOD = 4      # chunks between retries, at least
    MAX_PERIOD = 256    # ...and at most, so a change of load is still seen
    KEEP = 3
    # Shorter chunks (a fit's first, which sizes the others) are mostly fixed costs: not
    # timed, unless their batches are long enough to time on their own (a wide net's chunk
    # holds few batches; never timing one choice would keep it for good).
    MIN_BATCHES = 8
    MIN_SECONDS = 0.02

    def __init__(self):
        self.times = {True: [], False: []}
        self.chunks = 0
        self.since_retry = 0
        self.undecided = True   # no team formed yet: the kernel decides by size alone

    def _best(self):
        """The faster choice so far (the team while neither is timed)."""
        return min((True, False), key=lambda t: min(self.times[t], default=math.inf))

    def period(self):
        """Chunks between retries of the slower choice: gap / PROBE_COST, where gap is how
        much slower it was, within [MIN_PERIOD, MAX_PERIOD]. Sooner while the evidence is
        thin: the next chunk when the slower choice has one time only (it may be the
        outlier that lost), MIN_PERIOD until each has KEEP times."""
        n = min(len(self.times[True]), len(self.times[False]))
        if n < 2:
            return 1
        if n < self.KEEP:
            return self.MIN_PERIOD
        team, alone = (min(self.times[t]) for t in (True, False))
        gap = max(team, alone) / min(team, alone) - 1.0 if min(team, alone) > 0 else 1.0
        return int(min(self.MAX_PERIOD, max(self.MIN_PERIOD, math.ceil(gap / self.PROBE_COST))))

    def choose(self):
        if self.undecided or not self.times[True]:
            return True
        if not self.times[False]:
            return False
        best = self._best()
        if self.since_retry >= self.period():
            return not best
        return best

    def probe_batches(self, choice, n_batches):
        """Batches of a chunk of ``n_batches`` to run under ``choice``: all of them, unless
        it is a retry of the slower choice. A retry only needs to be timed: MIN_SECONDS of
        its expected time (2 batches at least), the rest of the chunk going to the faster
        choice. A whole chunk at the slower choice made that fit a fifth slower than the
        others on a wide net (bench/steadiness.py)."""
        if self.undecided or choice == self._best():
            return n_batches
        times = self.times[choice] or self.times[not choice]
        per_batch = min(times) if times else 0.0
        if per_batch <= 0.0:
            return n_batches
        return min(n_batches, max(2, math.ceil(self.MIN_SECONDS / per_batch)))

    def record(self, team, per_batch):
        """A chunk's time per batch under one choice: ``team`` allowed (whether or not
        every member came), or one thread."""
        self.undecided = False
        self.chunks += 1
        before = self._best()
        kept = self.times[team]
        kept.append(per_batch)
        del kept[:-self.KEEP]
        best = self._best()
        # Retries of the slower choice are counted from its last run, or from the moment
        # the other one took the lead.
        self.since_retry = self.since_retry + 1 if team == best == before else 0


class CPUEngine(Engine):
    name = "cpu"
    checks_in_pass = True   # forward(check=True) checks X for NaN/inf inside the pass

    def __init__(self, net):
        super().__init__(net)
        self._local = threading.local()
        self._policies = {}   # batch size -> ThreadPolicy, kept across fits
        self._kept_ws = None  # (key, Workspace) of the last fit, see _workspace
        self._blas_rule = {}  # batch size -> calls_blas
        self._trainable_plans = {}   # trainable flags' bytes -> _trainable_plan()
        self._syncs = []      # the teams' sync arrays, see _sync_array
        self._batch_cycles = {}   # (kind, batch rows) -> cycles of a batch, last timed
        self._forward_plans = {}  # n_layers -> _forward_plan()

    def calls_blas(self, batch_size):
        """Whether training at ``batch_size`` can call BLAS: a layer whose weight gradient
        or input delta misses kernels.gemm's size rule and meets use_blas's. Whatever is
        frozen (freezing changes between fits) and however a team slices the rows (fewer
        rows never turn BLAS on)."""
        rule = self._blas_rule.get(batch_size)
        if rule is None:
            sizes = [int(n) for n in self.net.layout.sizes]
            rule = any(cpu.use_blas.py_func(batch_size, n_in, n_out) and
                       not (cpu.gemm_weight_grad.py_func(n_in, n_out) and
                            cpu.gemm_input_delta.py_func(n_in, n_out))
                       for n_in, n_out in zip(sizes[:-1], sizes[1:]))
            self._blas_rule[batch_size] = rule
        return rule

    def train_together(self, jobs):
        """Every job alone on one thread (``train_members``) where there are at least as
        many jobs as threads; else None: fewer networks than cores train faster one
        after another, each with a team."""
        threads = get_num_threads()
        if threads > 1 and len(jobs) >= threads:
            return train_members(jobs, threads)
        return None

    # -- training ---------------------------------------------------------------------
    def begin_fit(self, X, Y, row_w, optimizer, state, batch_size, dropout_seed):
        """Buffers for the fit; ``state`` is the optimizer's flat state, updated in place."""
        m = self.net
        precompile.start(m.dtype)   # a first run: inference compiles on another core
        ws = self._workspace(batch_size)
        # Kernels index the row buffers by batch_size without bounds checks.
        assert batch_size <= X.shape[0] and ws.Z.shape[0] >= batch_size * m.layout.row_width
        trainable, lowest, blocks, block_sq = self._trainable_plan()
        return CPUFitSession(X=X, Y=Y, row_w=row_w, batch_size=batch_size,
                             optimizer=optimizer, state=state, trainable=trainable,
                             lowest=lowest, seed=dropout_seed, ws=ws,
                             hyper=optimizer.hyper(), blocks=blocks, block_sq=block_sq)

    def _trainable_plan(self):
        """(trainable flags as int64, lowest trainable layer, update blocks, their
        clipping scratch) for the model's current freezing, made once per pattern."""
        flags = self.net.trainable
        key = flags.tobytes()
        plan = self._trainable_plans.get(key)
        if plan is None:
            trainable = flags.astype(np.int64)
            blocks = self.net.layout.update_blocks(trainable)
            plan = (trainable, int(np.flatnonzero(trainable)[0]), blocks,
                    np.zeros(len(blocks)))
            self._trainable_plans[key] = plan
        return plan

    def _workspace(self, batch_size):
        """The fit's buffers: the last fit's when they match and are small. Making them
        was a fair part of the fixed cost of a narrow net's epoch; the kernels overwrite
        every row before they read it, so old contents do not matter. Large ones are not
        kept, to hold no memory between fits that a wide net would notice."""
        m = self.net
        key = (m.layout, batch_size, m.dtype, get_num_threads())
        if self._kept_ws is not None and self._kept_ws[0] == key:
            return self._kept_ws[1]
        ws = Workspace(m.layout, batch_size, m.dtype)
        self._kept_ws = (key, ws) if ws.nbytes <= KEEP_WORKSPACE_BYTES else None
        return ws

    def run_chunk(self, s, perm, start, stop, lrs, step, clip_norm, out):
        """Batches of perm[start:stop]; out[k] = [loss, metric sum]; returns steps applied.

        Whether a team of threads or one thread trains the chunk is chosen by measured
        time per batch (``ThreadPolicy``); either way the weights come out the same. A
        retry of the slower choice takes only the chunk's first batches
        (``ThreadPolicy.probe_batches``)."""
        lay, ws = self.net.layout, s.ws
        policy = self._policies.setdefault(s.batch_size, ThreadPolicy())
        n_batches = -(-(stop - start) // s.batch_size)
        size = team_size(min(s.batch_size, stop - start), n_batches, ws.n_threads,
                         3 * forward_macs(lay))
        team = size > 1 and policy.choose()
        k = policy.probe_batches(team, n_batches) if size > 1 else n_batches
        if k == n_batches:
            return self._train_batches(s, perm, start, stop, lrs, step, clip_norm, out,
                                       policy, size, team)
        split = start + k * s.batch_size
        done = self._train_batches(s, perm, start, split, lrs[:k], step, clip_norm, out[:k],
                                   policy, size, team)
        if done < k:
            return done
        return done + self._train_batches(s, perm, split, stop, lrs[k:], step + k, clip_norm,
                                          out[k:], policy, size, not team)

    def _train_batches(self, s, perm, start, stop, lrs, step, clip_norm, out, policy, size,
                       team):
        """run_chunk's batches under one choice (a team of ``size`` or one thread), timed
        for ``policy``."""
        m, lay, ws = self.net, self.net.layout, s.ws
        t0 = time.perf_counter()
        done, sync, grace = self._run_team(
            cpu.train_chunk, size if team else 1, size,
            (s.X, s.Y, s.row_w, perm, start, stop, s.batch_size, 0.0, m.params, lay.sizes,
             m.acts, lay.poff, lay.coff, s.trainable, s.lowest, m.loss, ws.Z, ws.A,
             ws.D, ws.grad, ws.tloss, s.optimizer.code, s.state, s.hyper, lrs, step,
             clip_norm, s.blocks, s.block_sq, out, m.drop, s.seed, ws.no_grads),
            timing_key=("train", s.batch_size), fuse_alone=not self.calls_blas(s.batch_size))
        elapsed = time.perf_counter() - t0
        # A team that had no grace to form (no batch timed yet) says nothing about teams.
        fair = not team or members_joined(sync) > 1 or grace > 0
        if size > 1 and done and fair and (done >= policy.MIN_BATCHES or
                                           elapsed >= policy.MIN_SECONDS):
            policy.record(team, elapsed / done)
        return done

    def _run_team(self, fn, n_members, n_slices, args, timing_key, fuse_alone):
        """``fn`` run by a team of ``n_members`` (the calling thread and pool threads) on a
        zeroed sync array, the batches in ``n_slices`` slices; returns (member 0's result,
        the sync array, the grace given). The leader may wait GRACE_SHARE of the last
        batch timed under ``timing_key`` for the members at the first batch
        (kernels.sync.lead_batch), in its own clock's cycles. ``fuse_alone``: a batch
        whose roster is one thread may go through as one slice (no layer calls BLAS)."""
        sync = self._sync_array(n_members)
        grace = int(GRACE_SHARE * self._batch_cycles.get(timing_key, 0)) if n_members > 1 else 0
        set_grace(sync, grace)
        set_fuse_alone(sync, fuse_alone)
        done = POOL.run(fn, n_members, (n_slices, sync) + args, shared=(sync,))
        if done > 0:
            self._batch_cycles[timing_key] = spent_cycles(sync) / done
        return done, sync, grace

    def _sync_array(self, n_members):
        """A zeroed sync array that no member of an earlier team still holds (one that
        started late may still be leaving it)."""
        ring = self._syncs
        for i, sync in enumerate(ring):
            if sync.shape[0] >= sync_words(n_members) and not POOL.busy_with(sync):
                ring.append(ring.pop(i))   # least recently used first
                sync[:] = 0
                return sync
        sync = np.zeros(sync_words(max(n_members, get_num_threads())), dtype=np.int64)
        ring.append(sync)
        return sync

    # -- data-parallel steps (fastbp.distributed): every buffer is in host memory --------
    def grad_buffer(self, s, on_device=False):
        """[gradient | loss, metric, interrupt flag]: the buffer of the per-step Allreduce."""
        return np.zeros(self.net.n_params + 3, dtype=self.net.dtype)

    def batch_grads(self, s, perm, b0, rows, scale, step, G, flag=None):
        """Gradient of one batch (rows perm[b0:b0+rows]) into G[:P], its scaled loss sum
        and metric sum into G[P] and G[P+1], ``flag`` (if given) into G[P+2]. ``scale`` is
        set by the caller (1/global rows for a batch split over processes), so summing G
        over processes gives the global batch's mean gradient. A process with no rows for
        this step contributes zeros; only trainable ranges are written."""
        m, lay, ws = self.net, self.net.layout, s.ws
        P = lay.n_params
        for lo, hi in s.blocks:
            G[lo:hi] = 0
        G[P:P + 2] = 0
        if rows:
            losses = ws.losses[:1]
            # The chunk numbers its one batch step + 1 (the dropout masks' key): step - 1.
            self._gradient(s.X, s.Y, s.row_w, perm, b0, b0 + rows, rows, scale, s.trainable,
                           s.lowest, ws, G[:P], losses, m.drop, s.seed, step - 1)
            G[P] = losses[0, 0]
            G[P + 1] = losses[0, 1]
        if flag is not None:
            G[P + 2] = flag

    def _gradient(self, X, Y, row_w, order, start, stop, block_rows, scale, trainable, lowest,
                  ws, grads, losses, drop, seed, step):
        """grads += the gradient of ``scale`` times the summed row losses of
        order[start:stop], in blocks of ``block_rows`` (kernels.cpu.train_chunk with
        GRADIENT_ONLY); losses[k] receives block k's [loss, metric sum]."""
        m, lay = self.net, self.net.layout
        precompile.start(m.dtype)   # the trainer's entry, as a fit's (L-BFGS's first call)
        n_blocks = -(-(stop - start) // block_rows)
        size = team_size(min(block_rows, stop - start), n_blocks, ws.n_threads,
                         3 * forward_macs(lay))
        self._run_team(cpu.train_chunk, size, size,
                       (X, Y, row_w, order, start, stop, block_rows, scale, m.params,
                        lay.sizes, m.acts, lay.poff, lay.coff, trainable, lowest,
                        m.loss, ws.Z, ws.A, ws.D, ws.grad, ws.tloss,
                        cpu.GRADIENT_ONLY, ws.no_state, ws.no_hyper, ws.no_lrs, step, 0.0,
                        ws.no_blocks, ws.no_hyper, losses, drop, seed, grads),
                       timing_key=("gradient", block_rows),
                       fuse_alone=not self.calls_blas(block_rows))

    def apply_update(self, s, G, lr, step, clip_norm):
        cpu.apply_update(s.optimizer.code, self.net.params, G, s.state, s.hyper, lr, step,
                         clip_norm, s.blocks, s.block_sq)

    # -- inference and gradients ------------------------------------------------------
    def forward(self, X, n_layers, pre_activation, out, check=False):
        """``out`` = the first ``n_layers`` layers on X. No BLAS call happens here (the
        products go through kernels.gemm), so no thread limit is set: that alone cost
        more than a small prediction. ``check``: X is checked for NaN/inf tile by tile
        while the pass reads it, and DataError raised after."""
        m, lay = self.net, self.net.layout
        precompile.start_predict(m.dtype)
        precompile.wait(m.dtype)
        n = X.shape[0]
        block_rows, tile_rows, macs = self._forward_plan(n_layers)
        rows = min(block_rows, n)
        Z, A = self._inference_scratch(rows)
        size = split_size(n, min(get_num_threads(), rows), macs)
        # Tiles as the rows would fall to each thread in even shares, each share in even
        # tiles of at most the tile size, in whole row blocks of the GEMM micro-kernel
        # where that fits (a short tile costs a pass over every weight matrix).
        tile = cpu.even_tile.py_func(-(-n // size), min(tile_rows, rows // size))
        work = np.zeros(2, dtype=np.int64)   # [next tile, tiles done]
        bad = np.zeros(1, dtype=np.int64)
        POOL.run(cpu.forward_tiles, size,
                 (X, m.params, lay.sizes, m.acts, lay.poff, lay.coff, m.loss,
                  n_layers, rows, Z, A, out, pre_activation, tile, work, check, bad))
        if bad[0]:
            require_finite(X, "X")
        return out

    def _forward_plan(self, n_layers):
        """(scratch rows, tile rows, multiply-adds a row) of inference through
        ``n_layers`` layers, worked out once: on a one-row predict, working them out
        again cost as much as the compiled pass."""
        plan = self._forward_plans.get(n_layers)
        if plan is None:
            lay, dtype = self.net.layout, self.net.dtype
            plan = (predict_block_rows(lay, dtype), predict_tile_rows(lay, dtype, n_layers),
                    forward_macs(lay))
            self._forward_plans[n_layers] = plan
        return plan

    def _inference_scratch(self, rows):
        """Z and A row buffers for ``rows`` rows, kept between calls (inference is called
        often, on small inputs too; zeroing fresh buffers each time cost more than the
        forward pass on narrow networks). One set per Python thread: the kernels release
        the GIL, so threads may predict concurrently."""
        need = rows * self.net.layout.row_width
        scratch = getattr(self._local, "scratch", None)
        if scratch is None or scratch[0].shape[0] < need:
            dtype = self.net.dtype
            scratch = (np.empty(need, dtype=dtype), np.empty(need, dtype=dtype))
            self._local.scratch = scratch
        return scratch[0][:need], scratch[1][:need]

    def loss_and_grads(self, X, Y, row_w):
        """Mean loss over all rows of X and its gradient (every layer); no update."""
        m, lay = self.net, self.net.layout
        n = X.shape[0]
        block = min(predict_block_rows(lay, m.dtype), n)
        ws = Workspace(lay, block, m.dtype)
        grads = np.zeros(lay.n_params, dtype=m.dtype)
        every = np.ones(lay.n_layers, dtype=np.int64)
        order = np.arange(n, dtype=np.int64)
        losses = np.zeros((-(-n // block), 2))
        scale = km.loss_scale(m.loss, n, int(lay.sizes[-1]))
        self._gradient(X, Y, row_w, order, 0, n, block, scale, every, 0, ws, grads, losses,
                       ws.no_drop(lay), 0, 0)
        return float(losses[:, 0].sum()), grads


def blas_info():
    try:
        from threadpoolctl import threadpool_info
        return [dict(api=d.get("internal_api"), threads=d.get("num_threads"),
                     version=d.get("version")) for d in threadpool_info()
                if d.get("user_api") == "blas"]
    except Exception:  # pragma: no cover
        return []


def thread_info():
    return dict(threads=get_num_threads(), cpu_count=os.cpu_count())


class _MemberJobs:
    """Chunks of several independent fits (an ensemble's members), claimed one at a time by
    the threads that run them: a thread whose core is busy elsewhere simply claims fewer."""

    def __init__(self, jobs):
        self.jobs = jobs
        self.claims = itertools.count()
        self.results = [None] * len(jobs)
        self.left = len(jobs)
        self.cond = threading.Condition()


def _run_member_jobs(u, n_members, work):
    sync = np.zeros(sync_words(1), dtype=np.int64)   # a team of one: only its plan line
    while True:
        i = next(work.claims)             # atomic under the GIL
        if i >= len(work.jobs):
            return 0
        engine, s, perm, start, stop, lrs, step, clip_norm, out = work.jobs[i]
        m, lay, ws = engine.net, engine.net.layout, s.ws
        try:
            result = cpu.train_chunk(
                0, 1, 1, sync, s.X, s.Y, s.row_w, perm, start, stop, s.batch_size, 0.0,
                m.params, lay.sizes, m.acts, lay.poff, lay.coff, s.trainable, s.lowest,
                m.loss, ws.Z, ws.A, ws.D, ws.grad, ws.tloss, s.optimizer.code, s.state,
                s.hyper, lrs, step, clip_norm, s.blocks, s.block_sq, out, m.drop, s.seed,
                ws.no_grads)
        except BaseException as e:   # noqa: BLE001 - handed to the caller, which re-raises
            result = e
        with work.cond:
            work.results[i] = result
            work.left -= 1
            if work.left == 0:
                work.cond.notify_all()


def train_members(jobs, n_threads):
    """Run ``jobs``, each ``(engine, session, perm, start, stop, lrs, step, clip_norm,
    out)`` as for ``CPUEngine.run_chunk``, every one alone on one thread (no barriers: the
    fits are independent), up to ``n_threads`` threads at once. A fit alone computes the
    same numbers as a team (kernels.cpu.chunk_steps), so the weights are those of
    ``run_chunk``. Returns the steps each job applied."""
    work = _MemberJobs(jobs)
    POOL.run(_run_member_jobs, max(1, min(n_threads, len(jobs))), (work,))
    with work.cond:
        while work.left:
            work.cond.wait()
    for r in work.results:
        if isinstance(r, BaseException):
            raise r
    return work.results
