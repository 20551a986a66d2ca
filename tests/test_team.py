"""The training team (kernels.sync, fastbp.threads): threads that share a chunk of batches
must give the same weights as one thread, never wait for a member that does not run, and
take in a member that starts late at the next batch."""
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import fastbp
from fastbp.engines import cpu as backend
from fastbp.kernels import cpu
from fastbp.kernels.sync import (STRIDE, members_joined, set_grace, spent_cycles, sync_words,
                                 waited_cycles)
from fastbp import threads as threads_mod
from fastbp.threads import POOL
from fastbp.workspace import Workspace

_choose = backend.ThreadPolicy.choose
_joined = backend.members_joined


def _fit(threads, sizes, loss, X, y, **kw):
    """(weights, epoch losses) of a fit on ``threads`` threads; with more than one, every
    chunk is offered to the team (not to the timing policy's pick) and two members must
    run at least one batch together."""
    teams = []

    def recorded(sync):
        teams.append(_joined(sync))
        return teams[-1]

    backend.ThreadPolicy.choose = lambda self: True
    backend.members_joined = recorded
    before = fastbp.get_num_threads()
    fastbp.set_num_threads(threads)
    try:
        net = fastbp.MLP(sizes, loss=loss, seed=0, device="cpu",
                         dtype=kw.pop("dtype", "float32"), dropout=kw.pop("dropout", 0.0))
        net.freeze(kw.pop("freeze", []))
        hist = net.fit(X, y, verbose=0, **kw)
        assert (max(teams, default=1) > 1) == (threads > 1)
        return net.get_weights(), hist.history["loss"]
    finally:
        fastbp.set_num_threads(before)
        backend.ThreadPolicy.choose = _choose
        backend.members_joined = _joined


@pytest.mark.parametrize("case", ["regression", "dropout_clip_frozen", "fused_frozen_middle"])
def test_a_team_gives_the_weights_of_one_thread_bitwise(case):
    rng = np.random.default_rng(0)
    if case == "regression":
        # 6,008 rows in batches of 32: the last has 24 rows, split over the team too
        X = rng.normal(size=(6008, 32)).astype(np.float32)
        y = X[:, :4].sum(1)
        args = ([32, 64, 64, 1], "mse", X, y)
        kw = dict(epochs=2, batch_size=32, optimizer="adam", lr=1e-3)
    elif case == "dropout_clip_frozen":
        # float64, dropout, clipping, layer 0 frozen (the backward pass stops above it),
        # SGD with Nesterov momentum; the last batch has 10 rows, too few to split by rows
        X = rng.normal(size=(5866, 30))
        y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 1)
        args = ([30, 64, 64, 3], "cross_entropy", X, y)
        kw = dict(epochs=2, batch_size=24, dtype="float64", dropout=0.2, clip_norm=0.5,
                  freeze=[0], optimizer=fastbp.SGD(0.05, momentum=0.9, nesterov=True))
    else:
        # Without clipping each member steps the gradient rows it made (update_part): 30
        # inputs split 8 / 22 in 8-row blocks, a frozen middle layer that the deltas still
        # cross, a 3-output head stepped whole by one member, RMSprop with momentum
        X = rng.normal(size=(5866, 30))
        y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 1)
        args = ([30, 64, 64, 3], "cross_entropy", X, y)
        kw = dict(epochs=2, batch_size=24, dtype="float64", dropout=0.1, freeze=[1],
                  optimizer=fastbp.RMSprop(0.01, momentum=0.5, weight_decay=1e-3))
    w1, l1 = _fit(1, *args, **dict(kw))
    w2, l2 = _fit(2, *args, **dict(kw))
    for a, b in zip(w1, w2):
        assert np.array_equal(a, b)
    # the loss sums are made in another order: equal to rounding
    np.testing.assert_allclose(l1, l2, rtol=1e-6)


@pytest.mark.parametrize("case", ["regression", "dropout_clip_frozen"])
def test_one_thread_of_two_gives_the_weights_and_losses_of_the_team_bitwise(case):
    """With two threads, a chunk the policy gives to one thread runs each batch as one
    slice (the team's loss parts kept): weights and loss history bitwise those of the team,
    so neither depends on the policy's timing."""
    rng = np.random.default_rng(1)
    if case == "regression":
        X = rng.normal(size=(3016, 32)).astype(np.float32)       # last batch: 8 rows
        y = X[:, :4].sum(1)
        sizes, loss = [32, 64, 64, 1], "mse"
        kw = dict(epochs=2, batch_size=32, optimizer="adam", lr=1e-3)
        dtype, dropout, frozen = "float32", 0.0, []
    else:
        X = rng.normal(size=(2930, 30))                           # last batch: 2 rows
        y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 1)
        sizes, loss = [30, 64, 64, 3], "cross_entropy"
        kw = dict(epochs=2, batch_size=24, clip_norm=0.5,
                  optimizer=fastbp.SGD(0.05, momentum=0.9, nesterov=True))
        dtype, dropout, frozen = "float64", 0.2, [0]
    results = []
    before = fastbp.get_num_threads()
    fastbp.set_num_threads(2)
    try:
        for team in (True, False):
            backend.ThreadPolicy.choose = lambda self, team=team: team
            net = fastbp.MLP(sizes, loss=loss, seed=0, device="cpu", dtype=dtype,
                             dropout=dropout)
            net.freeze(frozen)
            hist = net.fit(X, y, verbose=0, **kw)
            results.append((net.get_weights(), hist.history["loss"]))
    finally:
        fastbp.set_num_threads(before)
        backend.ThreadPolicy.choose = _choose
    (w_team, l_team), (w_one, l_one) = results
    assert l_team == l_one
    for a, b in zip(w_team, w_one):
        assert np.array_equal(a, b)


def _chunk(n_members, net, X, Y, perm, bs, late=0.0, busy_helper=False, grace=0,
           start=True):
    """One chunk of Adam steps on ``n_members`` members (the calling thread and pool
    threads); ``late``: seconds member 1 sleeps before it starts; ``grace``: cycles the
    leader may wait for it at the first batch; ``start``: whether the other members start
    at all. Returns (batches done, params, optimizer state, losses, sync)."""
    lay = net.layout
    ws = Workspace(lay, bs, net.dtype, n_threads=max(2, n_members))
    opt = fastbp.Adam(1e-3)
    state = opt.init_state(lay.n_params, net.dtype)
    params = net._params.copy()
    trainable = np.ones(lay.n_layers, dtype=np.int64)
    blocks = lay.update_blocks(trainable)
    n = X.shape[0]
    nb = (n + bs - 1) // bs
    losses = np.zeros((nb, 2))
    sync = np.zeros(sync_words(n_members), dtype=np.int64)
    set_grace(sync, grace)
    args = (sync, X, Y, np.ones(n), perm, 0, n, bs, 0.0, params, lay.sizes, net._acts,
            lay.poff, lay.coff, trainable, 0, net._loss_code, ws.Z, ws.A, ws.D, ws.grad,
            ws.tloss, opt.code, state, opt.hyper(), np.full(nb, 1e-3), 0, 0.0, blocks,
            np.zeros(len(blocks)), losses, net._drop, 0, ws.no_grads)

    def late_member(u):
        time.sleep(late)
        cpu.train_chunk(u, n_members, 2, *args)

    helpers = [threading.Thread(target=late_member, args=(u,))
               for u in range(1, n_members if start else 1)]
    for h in helpers:
        h.start()
    done = cpu.train_chunk(0, n_members, 2, *args)
    for h in helpers:
        h.join()
    return done, params, state, losses, sync


def _problem(n=4000, bs=32):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(n, 32)).astype(np.float32)
    Y = X[:, :1].copy()
    perm = rng.permutation(n).astype(np.int64)
    net = fastbp.MLP([32, 64, 64, 1], loss="mse", seed=0, device="cpu")
    return net, X, Y, perm, bs


def test_a_team_of_two_gives_the_weights_of_one_thread():
    net, X, Y, perm, bs = _problem()
    done1, p1, s1, l1, _ = _chunk(1, net, X, Y, perm, bs)
    joined = []
    # On a loaded machine the second thread may not run before the chunk is over; each try
    # must give the same weights, and some try must have formed the team.
    for _ in range(5):
        done2, p2, s2, l2, sync = _chunk(2, net, X, Y, perm, bs)
        assert done1 == done2 == X.shape[0] // bs
        assert np.array_equal(p1, p2) and np.array_equal(s1, s2)
        np.testing.assert_allclose(l1, l2, rtol=1e-5)
        joined.append(members_joined(sync))
        if joined[-1] == 2:
            break
    assert 2 in joined, joined


def test_a_member_that_starts_late_still_joins():
    """Member 1 starts 5 ms after the leader: the leader trains the first batches alone
    and member 1 joins at the next batch it can; same weights as one thread."""
    net, X, Y, perm, bs = _problem(n=128000)
    done1, p1, s1, _, _ = _chunk(1, net, X, Y, perm, bs)
    t0 = time.perf_counter()
    done2, p2, s2, _, sync = _chunk(2, net, X, Y, perm, bs, late=0.005)
    assert done2 == done1
    assert np.array_equal(p1, p2) and np.array_equal(s1, s2)
    # member 1 ran batches: its arrival word moved past the first batch
    assert members_joined(sync) == 2, "the late member never joined"
    assert sync[1 * STRIDE + 1] > 1
    assert time.perf_counter() - t0 < 60


def test_a_chunk_of_one_batch_waits_its_grace_for_a_late_member():
    """A wide net's chunk may hold a single batch, which a member joining at the next
    batch would never share: the leader waits up to the grace for a member woken with it,
    so a member 5 ms late still trains half the batch; same weights as one thread."""
    net, X, Y, perm, bs = _problem(n=2048, bs=2048)
    done1, p1, s1, _, _ = _chunk(1, net, X, Y, perm, bs)
    _, _, _, _, sync = _chunk(1, net, X, Y, perm, bs)
    grace = 1000 * spent_cycles(sync)        # far more than any wake-up takes
    done2, p2, s2, _, sync = _chunk(2, net, X, Y, perm, bs, late=0.005, grace=grace)
    assert done1 == done2 == 1
    assert np.array_equal(p1, p2) and np.array_equal(s1, s2)
    assert members_joined(sync) == 2, "the member missed the chunk's only batch"
    # the leader stopped waiting when the member came, long before the grace ran out
    assert spent_cycles(sync) < grace // 10


def test_a_leader_waits_no_longer_than_its_grace():
    """A member that never starts costs the leader the grace, once, and no more: a leader
    that waited at every batch would wait ``done`` graces. (The bound leaves room for the
    virtual machine's stalls, up to a scheduler tick, between the wait and its record.)"""
    net, X, Y, perm, bs = _problem(n=2048, bs=256)
    _, _, _, _, sync = _chunk(1, net, X, Y, perm, bs)
    grace = spent_cycles(sync)               # about a chunk's time
    done, p, s, _, sync = _chunk(2, net, X, Y, perm, bs, grace=grace, start=False)
    done1, p1, s1, _, _ = _chunk(1, net, X, Y, perm, bs)
    assert done == done1 == 8 and np.array_equal(p, p1) and np.array_equal(s, s1)
    assert members_joined(sync) == 1
    waited = waited_cycles(sync, 2)[0]
    assert grace <= waited < done * grace


def test_members_that_arrive_at_random_times_never_hang_or_change_a_weight():
    """Many short chunks, member 1 starting anywhere from at once to after the end: each
    ends, with the weights of one thread."""
    net, X, Y, perm, bs = _problem(n=1600)
    _, p1, s1, _, _ = _chunk(1, net, X, Y, perm, bs)
    rng = np.random.default_rng(7)
    joined = 0
    for late in rng.uniform(0, 0.004, size=40):
        t0 = time.perf_counter()
        done, p, s, _, sync = _chunk(2, net, X, Y, perm, bs, late=float(late))
        assert done == X.shape[0] // bs
        assert np.array_equal(p, p1) and np.array_equal(s, s1)
        joined += members_joined(sync) == 2
        # a member that came after the end left at once, not after PATIENCE of spinning
        assert time.perf_counter() - t0 < 1
    assert joined > 0


def test_the_leader_never_waits_for_a_member_that_does_not_run():
    """A team of two whose second member never starts: the leader trains the whole chunk
    alone and returns."""
    net, X, Y, perm, bs = _problem(n=640)
    lay = net.layout
    ws = Workspace(lay, bs, net.dtype, n_threads=2)
    opt = fastbp.Adam(1e-3)
    trainable = np.ones(lay.n_layers, dtype=np.int64)
    blocks = lay.update_blocks(trainable)
    nb = 640 // bs
    params = net._params.copy()
    sync = np.zeros(sync_words(2), dtype=np.int64)
    done = cpu.train_chunk(0, 2, 2, sync, X, Y, np.ones(640), perm, 0, 640, bs, 0.0, params,
                           lay.sizes, net._acts, lay.poff, lay.coff, trainable, 0,
                           net._loss_code, ws.Z, ws.A, ws.D, ws.grad, ws.tloss, opt.code,
                           opt.init_state(lay.n_params, net.dtype), opt.hyper(),
                           np.full(nb, 1e-3), 0, 0.0, blocks, np.zeros(len(blocks)),
                           np.zeros((nb, 2)), net._drop, 0, ws.no_grads)
    assert done == nb and members_joined(sync) == 1
    # a member that arrives after the end finds no work and leaves at once
    t0 = time.perf_counter()
    assert cpu.train_chunk(1, 2, 2, sync, X, Y, np.ones(640), perm, 0, 640, bs, 0.0, params,
                           lay.sizes, net._acts, lay.poff, lay.coff, trainable, 0,
                           net._loss_code, ws.Z, ws.A, ws.D, ws.grad, ws.tloss, opt.code,
                           opt.init_state(lay.n_params, net.dtype), opt.hyper(),
                           np.full(nb, 1e-3), 0, 0.0, blocks, np.zeros(len(blocks)),
                           np.zeros((nb, 2)), net._drop, 0, ws.no_grads) == -1
    # at once: well under the PATIENCE a member would otherwise spin (seconds)
    assert time.perf_counter() - t0 < 1


def test_a_busy_core_changes_no_weight_and_hangs_nothing():
    """Another process on a core: a member may be descheduled for milliseconds, and the
    leader may let it go midway. Same weights either way, no hang."""
    net, X, Y, perm, bs = _problem()
    done1, p1, s1, _, _ = _chunk(1, net, X, Y, perm, bs)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        for _ in range(3):
            done, p, s, _, _ = _chunk(2, net, X, Y, perm, bs)
            assert done == done1 and np.array_equal(p, p1) and np.array_equal(s, s1)
    finally:
        busy.kill()
        busy.wait()


def test_the_pool_runs_every_member_and_tracks_what_they_hold():
    seen = []
    gate = threading.Event()
    shared = np.zeros(4)
    counts = []

    def member(u, n, out):
        if u:
            gate.wait(5)
        out.append(u)
        return u

    def counted(u, n, out):
        counts.append(n)
        return member(u, n, out)

    before = fastbp.get_num_threads()
    fastbp.set_num_threads(3)
    try:
        assert POOL.run(member, 3, (seen,), shared=(shared,)) == 0
        assert POOL.busy_with(shared)              # members 1 and 2 are still waiting
        # their workers are busy: a second team's members queue behind them, and hold
        # what they share from then on
        other, later = [], np.zeros(4)
        assert POOL.run(counted, 3, (other,), shared=(later,)) == 0 and other == [0]
        assert POOL.busy_with(later)
        # one task waits behind a running one, no more: a third team does without them
        third = []
        assert POOL.run(counted, 3, (third,)) == 0 and third == [0]
        gate.set()
        for _ in range(500):
            if not POOL.busy_with(shared) and not POOL.busy_with(later):
                break
            time.sleep(0.01)
        assert sorted(seen) == [0, 1, 2] and not POOL.busy_with(shared)
        assert sorted(other) == [0, 1, 2] and not POOL.busy_with(later)
        # every member was told the size of the team that came: 3, then 1 alone
        assert counts == [3, 1, 3, 3]
    finally:
        fastbp.set_num_threads(before)


def test_thread_policy_times_both_and_keeps_the_faster():
    from fastbp.engines.cpu import ThreadPolicy
    p = ThreadPolicy()
    assert p.choose() is True                   # nothing measured: the team
    p.record(True, 2.0)                   # the team: 2 s a batch
    assert p.choose() is False                  # then one thread, once
    p.record(False, 1.0)
    choices = []
    for _ in range(4 * ThreadPolicy.MAX_PERIOD):
        team = p.choose()
        choices.append(team)
        p.record(team, 2.0 if team else 1.0)
    assert choices.count(False) > choices.count(True) >= 1   # faster kept, other re-tried
    # Until each choice has KEEP times, retries come every MIN_PERIOD chunks (one time
    # may be far off); from then on retries of a choice twice as slow cost at most
    # PROBE_COST of the time.
    settled = choices[2 * ThreadPolicy.KEEP * ThreadPolicy.MIN_PERIOD:]
    assert choices[:2 * ThreadPolicy.KEEP * ThreadPolicy.MIN_PERIOD].count(True) >= 2
    extra = settled.count(True) * (2.0 - 1.0) / len(settled)
    assert extra <= ThreadPolicy.PROBE_COST
    for _ in range(ThreadPolicy.KEEP):          # the machine changes: one thread slows
        p.record(False, 5.0)
    assert p.choose() is True


def test_thread_policy_retries_often_when_the_two_are_close():
    from fastbp.engines.cpu import ThreadPolicy
    p = ThreadPolicy()
    p.record(True, 1.0)
    p.record(False, 1.01)
    choices = []
    for _ in range(10 * ThreadPolicy.MIN_PERIOD):
        team = p.choose()
        choices.append(team)
        p.record(team, 1.0 if team else 1.01)
    assert choices.count(False) >= 5            # a 1% gap: retried every few chunks


def test_thread_policy_gives_a_slow_first_team_time_a_second_chance():
    """A model's first team chunk ran at one thread's speed (a member stalled): the team is
    tried again at once, and once it has shown its speed it is kept."""
    from fastbp.engines.cpu import ThreadPolicy
    p = ThreadPolicy()
    p.record(True, 2.0)                   # the team's first chunk: no faster than alone
    p.record(False, 1.9)
    choices = []
    for _ in range(40):
        team = p.choose()
        choices.append(team)
        p.record(team, 1.0 if team else 1.9)
    assert choices[:2].count(True) == 1         # retried within two chunks
    assert choices[2:].count(True) >= 35        # then kept: the slow time does not count
    for _ in range(ThreadPolicy.KEEP):          # a load that lasts: every team time slows
        p.record(True, 3.0)
    assert p.choose() is False


def test_a_retry_of_the_slower_choice_takes_only_the_batches_that_time_it():
    """Retrying the slower choice for a whole chunk made that fit a fifth slower than the
    others on a wide net: a retry runs MIN_SECONDS of its own time (2 batches at least),
    the rest of the chunk goes to the faster choice, and the weights are the same."""
    from fastbp.engines.cpu import ThreadPolicy
    p = ThreadPolicy()
    assert p.probe_batches(True, 50) == 50                # undecided: the whole chunk
    p.record(True, 0.01)
    assert p.probe_batches(True, 50) == 50                # the faster choice: all of it
    assert p.probe_batches(False, 50) == 2                # one thread, untimed: as the team
    p.record(False, 0.001)
    assert p.probe_batches(False, 50) == 50               # one thread leads now
    assert p.probe_batches(True, 50) == 2                 # 0.01 s a batch: 2 time it
    p.record(True, 1e-4)
    p.record(False, 1e-3)
    assert p.probe_batches(False, 50) == 20               # 0.02 s of its own time
    assert p.probe_batches(False, 10) == 10

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("the split chunk needs two CPUs")
    before = fastbp.get_num_threads()
    fastbp.set_num_threads(2)
    try:
        rng = np.random.default_rng(0)
        X = rng.normal(size=(64 * 12, 64)).astype(np.float32)
        y = rng.integers(0, 4, X.shape[0])
        nets = [fastbp.MLP([64, 96, 4], seed=1) for _ in range(2)]
        runs = []
        original = backend.CPUEngine._train_batches

        def spy(self, s, perm, start, stop, *args):
            runs.append((stop - start, args[-1]))
            return original(self, s, perm, start, stop, *args)
        backend.CPUEngine._train_batches = spy
        try:
            for net, retry in zip(nets, (False, True)):
                policy = net._engine._policies.setdefault(64, ThreadPolicy())
                policy.record(True, 1e-3)
                policy.record(False, 1e-2)
                if retry:       # due for a retry of one thread (the slower)
                    policy.choose = lambda: False
                else:
                    policy.choose = lambda: True
                runs.clear()
                net.fit(X, y, epochs=1, batch_size=64, shuffle=False)
            # (A fit's first chunk is one batch: it sizes the others.)
            alone = [rows for rows, team in runs if not team]
            assert alone and max(alone) == 2 * 64, runs
            i = runs.index((2 * 64, False))
            assert runs[i + 1][1] is True, runs
        finally:
            backend.CPUEngine._train_batches = original
        for a, b in zip(nets[0].get_weights(), nets[1].get_weights()):
            np.testing.assert_array_equal(a, b)
    finally:
        fastbp.set_num_threads(before)


@pytest.mark.skipif(threads_mod._current_cpu is None or len(os.sched_getaffinity(0)) < 2,
                    reason="needs sched_getcpu and two CPUs")
def test_a_worker_on_its_callers_cpu_steps_aside():
    """A thread moved off a CPU is elsewhere at once, and may run anywhere again after."""
    seen = []

    def probe():
        cpu = threads_mod._current_cpu()
        threads_mod._Worker._step_aside(cpu)
        seen.append((cpu, threads_mod._current_cpu(), os.sched_getaffinity(0)))

    t = threading.Thread(target=probe)
    t.start()
    t.join()
    before, after, allowed = seen[0]
    assert after != before and allowed == os.sched_getaffinity(0)


def test_a_task_handed_to_a_spinning_worker_runs():
    """Tasks submitted while the worker spins after its last one (and after it slept)
    all run, none lost between the bell and the condition."""
    before = fastbp.get_num_threads()
    fastbp.set_num_threads(2)
    try:
        for pause in (0.0, 0.001, threads_mod.SPIN_SECONDS * 3):
            done = threading.Event()
            POOL.run(lambda u, n: None, 2, ())
            time.sleep(pause)
            POOL.run(lambda u, n, ev: ev.set() if u else None, 2, (done,))
            assert done.wait(5)
    finally:
        fastbp.set_num_threads(before)
