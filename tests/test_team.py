"""The training team (kernels.sync): threads that share a chunk of batches in one parallel
region must give the same weights as one thread, form only when every member runs, and
never wait for a member that does not."""
import subprocess
import sys

import numba
import numpy as np
import pytest

import fastbp
from fastbp.kernels import cpu
from fastbp import backend
from fastbp.kernels.sync import (MODE_SOLO, MODE_TEAM, SOLO_OWNER, STRIDE, mode_slot, sync_words,
                                 team_broke_up, team_start, team_tried)
from fastbp.workspace import Workspace

_choose = backend.ThreadPolicy.choose
two_threads = pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2,
                                 reason="needs two Numba threads")


def _fit(threads, sizes, loss, X, y, **kw):
    """(weights, epoch losses) of a fit on ``threads`` Numba threads; with more than one,
    every chunk is offered to the team (not to the timing policy's pick) and it must form
    for at least one."""
    teams = []

    def recorded(sync):
        teams.append(team_tried(sync))
        return teams[-1]

    backend.ThreadPolicy.choose = lambda self: True
    backend.team_tried = recorded
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        net = fastbp.MLP(sizes, loss=loss, seed=0, device="cpu",
                         dtype=kw.pop("dtype", "float32"), dropout=kw.pop("dropout", 0.0))
        net.freeze(kw.pop("freeze", []))
        hist = net.fit(X, y, verbose=0, **kw)
        assert any(teams) == (threads > 1)
        return net.get_weights(), hist.history["loss"]
    finally:
        numba.set_num_threads(before)
        backend.ThreadPolicy.choose = _choose
        backend.team_tried = team_tried


@two_threads
@pytest.mark.parametrize("case", ["regression", "dropout_clip_frozen", "fused_frozen_middle"])
def test_a_team_gives_the_weights_of_one_thread_bitwise(case):
    rng = np.random.default_rng(0)
    if case == "regression":
        # 600 rows in batches of 32: the last has 24 rows, split over the team too
        X = rng.normal(size=(600, 32)).astype(np.float32)
        y = X[:, :4].sum(1)
        args = ([32, 64, 64, 1], "mse", X, y)
        kw = dict(epochs=2, batch_size=32, optimizer="adam", lr=1e-3)
    elif case == "dropout_clip_frozen":
        # float64, dropout, clipping, layer 0 frozen (the backward pass stops above it),
        # SGD with Nesterov momentum; the last batch has 10 rows, too few to split by rows
        X = rng.normal(size=(586, 30))
        y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 1)
        args = ([30, 64, 64, 3], "cross_entropy", X, y)
        kw = dict(epochs=2, batch_size=24, dtype="float64", dropout=0.2, clip_norm=0.5,
                  freeze=[0], optimizer=fastbp.SGD(0.05, momentum=0.9, nesterov=True))
    else:
        # Without clipping each member steps the gradient rows it made (update_part): 30
        # inputs split 8 / 22 in 8-row blocks, a frozen middle layer that the deltas still
        # cross, a 3-output head stepped whole by one member, RMSprop with momentum
        X = rng.normal(size=(586, 30))
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


def _chunk(tloss_rows, net, X, Y, perm, bs):
    lay = net.layout
    ws = Workspace(lay, bs, net.dtype, n_threads=2)
    opt = fastbp.Adam(1e-3)
    state = opt.init_state(lay.n_params, net.dtype)
    params = net._params.copy()
    trainable = np.ones(lay.n_layers, dtype=np.int64)
    blocks = lay.update_blocks(trainable)
    n = X.shape[0]
    nb = (n + bs - 1) // bs
    losses = np.zeros((nb, 2))
    done = cpu.train_chunk(X, Y, np.ones(n), perm, 0, n, bs, params, lay.sizes, net._acts,
                           lay.poff, lay.coff, trainable, 0, net._loss_code, ws.Z, ws.A, ws.D,
                           ws.grad, ws.tloss[:tloss_rows], opt.code, state, opt.hyper(),
                           np.full(nb, 1e-3), 0, 0.0, blocks, np.zeros(len(blocks)), losses,
                           net._drop, 0, ws.sync)
    return done, params, state, losses, ws.sync


@two_threads
def test_train_chunk_forms_a_team_and_survives_a_busy_core():
    rng = np.random.default_rng(1)
    n, bs = 4000, 32
    X = rng.normal(size=(n, 32)).astype(np.float32)
    Y = X[:, :1].copy()
    perm = rng.permutation(n).astype(np.int64)
    net = fastbp.MLP([32, 64, 64, 1], loss="mse", seed=0, device="cpu")
    done1, p1, s1, l1, _ = _chunk(1, net, X, Y, perm, bs)
    done2, p2, s2, l2, sync = _chunk(2, net, X, Y, perm, bs)
    assert done1 == done2 == n // bs
    assert sync[mode_slot(sync)] == MODE_TEAM
    assert np.array_equal(p1, p2) and np.array_equal(s1, s2)
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    # Another process on a core: a member may be descheduled for milliseconds, and the
    # team may hand the chunk to one thread midway. Same weights either way, no hang.
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        for _ in range(3):
            done, p, s, _, sync = _chunk(2, net, X, Y, perm, bs)
            assert done == done1 and np.array_equal(p, p1) and np.array_equal(s, s1)
            assert team_broke_up(sync) == (sync[SOLO_OWNER] > 0)
    finally:
        busy.kill()
        busy.wait()


def test_team_start_never_waits_for_a_member_that_does_not_run():
    """Members that a threading layer runs one after another on one thread: the first
    waits out its patience and claims the chunk, the later one finds it claimed."""
    sync = np.zeros(sync_words(2), dtype=np.int64)
    assert team_start(sync, 0, 2, 100_000) == MODE_SOLO + 0
    assert team_start(sync, 1, 2, 100_000) == MODE_SOLO + 0
    assert team_broke_up(sync)
    # every member arrived: a team
    sync[:] = 0
    sync[1 * STRIDE] = 1                   # member 1 is already there
    assert team_start(sync, 0, 2, 10 ** 12) == MODE_TEAM
    assert not team_broke_up(sync)


def test_thread_policy_times_both_and_keeps_the_faster():
    from fastbp.backend import ThreadPolicy
    p = ThreadPolicy()
    assert p.choose() is True                   # nothing measured: the team
    p.record(False, 1.0, True)                  # the kernel ran it alone by size: no data
    assert p.choose() is True
    p.record(True, 2.0, True)                   # the team: 2 s a batch
    assert p.choose() is False                  # then one thread, once
    p.record(False, 1.0, False)
    choices = []
    for _ in range(2 * ThreadPolicy.PROBE_EVERY):
        team = p.choose()
        choices.append(team)
        p.record(team, 2.0 if team else 1.0, team)
    assert choices.count(False) > choices.count(True) >= 1   # faster kept, other re-tried
    for _ in range(ThreadPolicy.KEEP):          # the machine changes: one thread slows
        p.record(False, 5.0, False)
    assert p.choose() is True
