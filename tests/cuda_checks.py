"""CUDA engine against the CPU engine, kernel by kernel and fit by fit.

Not collected by the normal run (the name has no ``test_`` prefix): ``test_cuda.py`` runs
this module in a subprocess with ``NUMBA_ENABLE_CUDASIM=1`` (the simulator must be switched
on before numba is imported), and on a real GPU without it. Shapes are tiny because the
simulator runs every GPU thread as a Python thread.
"""
import numpy as np
import pytest
from numba import config, cuda

import fastbp
from fastbp.errors import TrainingDivergedError
from fastbp.engines.cuda import CudaEngine
from fastbp.kernels import cuda as kc
from fastbp.kernels import math as km
from targets import targets_for
from fastbp.optimizers import SGD, Adagrad, Adam, AdamW, RMSprop

SIM = bool(config.ENABLE_CUDASIM)
# Simulated, the dropout hash runs on NumPy int64 scalars: its wrap-around is intended.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                                        "ignore:invalid value encountered:RuntimeWarning")
N_ROWS, N_IN = 10, 4
BATCH = 4          # batches of 4, 4 and 2 rows: the last one is partial


def _data(loss, n_out, n=N_ROWS, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_IN))
    return X, targets_for(loss, rng, n, n_out)


# The training paths of the CUDA engine: "layers" (layer-by-layer kernels), "fused" (one
# cooperative kernel per chunk; one block under the simulator) and "launches" (the fused
# kernels launched per batch, over as many blocks as the batch has tiles).
PATHS = ["layers", "fused", "launches"]
FUSED_PATHS = ["fused", "launches"]


@pytest.fixture
def path(request, monkeypatch):
    """Force one path (parametrize with indirect=True) and check that it is the one run."""
    name = request.param
    monkeypatch.setattr(kc, "FUSED_PATH", "layers" if name == "layers" else "fused")
    monkeypatch.setattr(kc, "FUSED_PERSISTENT", name == "fused")
    calls = []

    def spy(method):
        original = getattr(CudaEngine, method)

        def wrapper(self, *args, **kw):
            res = original(self, *args, **kw)
            calls.append((method, res))
            return res
        monkeypatch.setattr(CudaEngine, method, wrapper)

    for method in ("_layer_chunk", "_backward_layers", "_fused_chunk", "_fused_phase1",
                   "_fused_blocks"):
        spy(method)
    yield name
    ran = {method for method, _ in calls}
    assert bool(ran & {"_fused_chunk", "_fused_phase1"}) == (name != "layers"), ran
    assert bool(ran & {"_layer_chunk", "_backward_layers"}) == (name == "layers"), ran
    blocks = [res for method, res in calls if method == "_fused_blocks"]
    assert all(blocks) if name == "fused" else not any(blocks), blocks


def _pair(sizes, **kw):
    """The same model (same seed, same initial weights) on each engine."""
    cfg = dict(activation="tanh", loss="cross_entropy", dtype="float32", seed=3)
    cfg.update(kw)
    return (fastbp.MLP(sizes, device="cpu", **cfg), fastbp.MLP(sizes, device="cuda", **cfg))


def _assert_weights_close(a, b, rtol, atol):
    for i, (wa, wb) in enumerate(zip(a.get_weights(), b.get_weights())):
        np.testing.assert_allclose(wb, wa, rtol=rtol, atol=atol, err_msg=f"array {i}")


def _fit_both(a, b, X, y, rtol=1e-4, atol=1e-6, **fit):
    fit = dict(dict(epochs=1, batch_size=BATCH, shuffle=False), **fit)
    ha = a.fit(X, y, **fit).history
    hb = b.fit(X, y, **fit).history
    _assert_weights_close(a, b, rtol, atol)
    for key in ha:
        if key == "samples_per_s":
            continue
        np.testing.assert_allclose(hb[key], ha[key], rtol=rtol, atol=atol, err_msg=key)
    return ha, hb


# ----------------------------------------------------------------------- gradients

GRAD_CASES = [
    ("tanh", "cross_entropy", [4, 5, 3]),
    ("relu", "binary_cross_entropy", [4, 6, 5, 2]),
    ("gelu", "mse", [4, 5, 3]),
    ("elu", "mae", [4, 5, 2]),
    ("sigmoid", "huber", [4, 5, 3]),
    ("leaky_relu", "cross_entropy", [4, 3, 6, 3]),
    ("identity", "binary_cross_entropy", [4, 1]),
    ("silu", "poisson", [4, 5, 3]),
]


@pytest.mark.parametrize("act, loss, sizes", GRAD_CASES)
def test_loss_and_grads_match_cpu(act, loss, sizes):
    a, b = _pair(sizes, activation=act, loss=loss, dtype="float64")
    X, y = _data(loss, sizes[-1])
    w = np.linspace(0.5, 1.5, N_ROWS)
    la, ga = a.loss_and_grads(X, y, sample_weight=w)
    lb, gb = b.loss_and_grads(X, y, sample_weight=w)
    assert lb == pytest.approx(la, rel=1e-6)
    for i, (p, q) in enumerate(zip(ga, gb)):
        np.testing.assert_allclose(q, p, rtol=1e-6, atol=1e-12, err_msg=f"array {i}")


# --------------------------------------------------------------------- training

OPTIMIZERS = [
    SGD(lr=0.1),
    SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    Adam(lr=0.01),
    AdamW(lr=0.01, weight_decay=0.1),
    RMSprop(lr=0.01),
    RMSprop(lr=0.01, momentum=0.5, weight_decay=1e-3),
    Adagrad(lr=0.05, lr_decay=0.01, weight_decay=1e-3, initial_accumulator_value=0.1),
]


@pytest.mark.parametrize("path", ["layers", "fused"], indirect=True)
@pytest.mark.parametrize("opt", OPTIMIZERS, ids=repr)
def test_one_epoch_matches_cpu_every_optimizer(opt, path):
    a, b = _pair([4, 5, 3], activation="relu")
    X, y = _data("cross_entropy", 3)
    _fit_both(a, b, X, y, optimizer=opt)


@pytest.mark.parametrize("loss, act", [("binary_cross_entropy", "gelu"), ("mse", "elu"),
                                       ("mae", "leaky_relu"), ("huber", "sigmoid")])
@pytest.mark.parametrize("path", ["layers", "fused"], indirect=True)
def test_one_epoch_matches_cpu_every_loss(loss, act, path):
    a, b = _pair([4, 5, 2], activation=act, loss=loss)
    X, y = _data(loss, 2)
    _fit_both(a, b, X, y, optimizer="sgd", lr=0.1)


def test_dropout_masks_match_cpu():
    rate, seed, step, b0, rows = 0.4, 123, 7, 2, 6
    m = fastbp.MLP([4, 6, 3], activation="tanh", dropout=rate, dtype="float64", seed=1,
                   device="cuda")
    X, y = _data("cross_entropy", 3)
    Y = np.eye(3)[y]
    eng = m._engine
    s = eng.begin_fit(X, Y, np.ones(N_ROWS), Adam(), np.zeros((2, m.n_params)), 8, seed)
    perm = np.arange(N_ROWS, dtype=np.int64)[::-1].copy()
    eng._upload_perm(s, perm)
    eng._forward_layers(s.params, s.X, s.perm, 1, b0, rows, s.bufs, 2, m._drop, seed, step,
                        s.status)
    Z = s.bufs.Z[1].copy_to_host()[:rows]
    A = s.bufs.A[1].copy_to_host()[:rows]
    keep = np.array([[km.dropout_keep(seed, step, 0, r, c, rate) for c in range(6)]
                     for r in range(rows)])
    assert 0 < keep.sum() < keep.size
    np.testing.assert_array_equal(A != 0, keep)
    np.testing.assert_allclose(A[keep], np.tanh(Z[keep]) / (1 - rate), rtol=1e-12)
    # The rows are those of the permutation.
    W, bias = m.get_weights()[:2]
    np.testing.assert_allclose(Z, X[perm[b0:b0 + rows]] @ W + bias, rtol=1e-12)
    eng.end_fit(s)


@pytest.mark.parametrize("path", PATHS, indirect=True)
def test_dropout_fit_matches_cpu(path):
    a, b = _pair([4, 6, 5, 3], activation="relu", dropout=[0.3, 0.5])
    X, y = _data("cross_entropy", 3)
    _fit_both(a, b, X, y, optimizer="adam", lr=0.01, epochs=2, shuffle=True)


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("frozen", [0, 1])
def test_frozen_layers(frozen, path):
    a, b = _pair([4, 5, 4, 3], activation="tanh")
    a.freeze(frozen)
    b.freeze(frozen)
    before = b.get_weights()
    X, y = _data("cross_entropy", 3)
    _fit_both(a, b, X, y, optimizer="adam", lr=0.01)
    after = b.get_weights()
    for i in (2 * frozen, 2 * frozen + 1):
        np.testing.assert_array_equal(after[i], before[i])
    assert not np.array_equal(after[4], before[4])


@pytest.mark.parametrize("path", PATHS, indirect=True)
def test_clip_norm_matches_cpu(path):
    a, b = _pair([4, 5, 3], activation="relu")
    X, y = _data("cross_entropy", 3)
    _fit_both(a, b, X, y, optimizer="sgd", lr=0.5, clip_norm=0.05)


@pytest.mark.parametrize("path", PATHS, indirect=True)
def test_partial_batches_match_cpu(path):
    """Batches of 3, 3, 3 and 1 rows (under the simulator, fused tiles of 2 rows and 1 row),
    with sample weights."""
    a, b = _pair([4, 6, 5, 3], activation="elu", dropout=0.25)
    X, y = _data("cross_entropy", 3)
    _fit_both(a, b, X, y, optimizer="adam", lr=0.01, batch_size=3, clip_norm=0.5,
              sample_weight=np.linspace(0.5, 1.5, N_ROWS))


def test_warm_start_carries_optimizer_state():
    a, b = _pair([4, 5, 3])
    X, y = _data("cross_entropy", 3)
    _fit_both(a, b, X, y, optimizer="rmsprop", batch_size=5)
    for m in (a, b):
        m.partial_fit(X, y, optimizer="rmsprop", batch_size=5, shuffle=False)
    np.testing.assert_allclose(b._opt_state, a._opt_state, rtol=1e-4, atol=1e-7)
    assert a._step == b._step == 4
    _assert_weights_close(a, b, 1e-4, 1e-6)


def test_validation_and_shuffle_match_cpu():
    a, b = _pair([4, 5, 1], loss="mse")
    X, y = _data("mse", 1)
    ha, hb = _fit_both(a, b, X, y[:, 0], optimizer="adam", lr=0.01, epochs=2, shuffle=True,
                       validation_data=(X[:3], y[:3, 0]))
    assert "val_loss" in hb


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("bad_batch", [0, 1])
def test_non_finite_loss_stops_like_cpu(bad_batch, path):
    a, b = _pair([4, 5, 1], loss="mse", activation="identity")
    X, y = _data("mse", 1)
    # The squared residuals overflow float32: that batch's loss is inf, and the chunk stops
    # before its update.
    X[bad_batch * BATCH] *= 1e30
    start = b.get_weights()
    for m in (a, b):
        with pytest.raises(TrainingDivergedError):
            m.fit(X, y, epochs=1, batch_size=BATCH, shuffle=False, optimizer="sgd", lr=0.1)
    assert a._step == b._step == bad_batch
    if bad_batch == 0:
        _assert_weights_close(a, b, 0, 0)
        _assert_weights_close(b, type("M", (), {"get_weights": lambda self: start})(), 0, 0)
    else:
        _assert_weights_close(a, b, 1e-5, 1e-7)


@pytest.mark.parametrize("path", ["layers", "launches"], indirect=True)
def test_data_parallel_steps_match_cpu(path):
    """batch_grads / apply_update, the engine calls of fastbp.distributed."""
    a, b = _pair([4, 5, 3], activation="relu", dropout=0.2)
    a.freeze(0)
    b.freeze(0)
    X, y = _data("cross_entropy", 3)
    Y = np.eye(3, dtype=np.float32)[y]
    Xc = X.astype(np.float32)
    perm = np.arange(N_ROWS, dtype=np.int64)[::-1].copy()
    P = a.n_params
    results = []
    for m in (a, b):
        opt = Adam(lr=0.01)
        state = opt.init_state(P, m.dtype)
        s = m._engine.begin_fit(Xc, Y, np.ones(N_ROWS), opt, state, BATCH, 11)
        G = np.full(P + 2, 7.0, dtype=m.dtype)
        m._engine.batch_grads(s, perm, 4, 4, 0.25, 1, G)
        m._engine.apply_update(s, G, 0.01, 1, 0.5)
        G0 = np.full(P + 2, 7.0, dtype=m.dtype)
        m._engine.batch_grads(s, perm, 8, 0, 0.25, 2, G0)
        m._engine.end_fit(s)
        results.append((G, G0, state))
    (Ga, G0a, sa), (Gb, G0b, sb) = results
    np.testing.assert_allclose(Gb, Ga, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(G0b, G0a)
    np.testing.assert_allclose(sb, sa, rtol=1e-4, atol=1e-9)
    _assert_weights_close(a, b, 1e-5, 1e-7)


def test_device_allreduce_buffer_matches_host_staging():
    """The buffers a CUDA-aware MPI gets (fastbp.distributed): the device G holds what the
    staged host G holds, and updates from either give the same weights."""
    cfg = dict(activation="relu", dtype="float32", seed=4)
    X, y = _data("cross_entropy", 3)
    Y = np.eye(3, dtype=np.float32)[y]
    Xc = X.astype(np.float32)
    perm = np.arange(N_ROWS, dtype=np.int64)[::-1].copy()
    results = []
    for on_device in (False, True):
        m = fastbp.MLP([4, 5, 3], device="cuda", **cfg)
        m.freeze(0)
        P = m.n_params
        opt = SGD(lr=0.05, momentum=0.9)
        state = opt.init_state(P, m.dtype)
        eng = m._engine
        s = eng.begin_fit(Xc, Y, np.ones(N_ROWS), opt, state, BATCH, 11)
        G = eng.grad_buffer(s, on_device)
        assert isinstance(G, np.ndarray) != on_device
        eng.batch_grads(s, perm, 4, 4, 0.25, 1, G, flag=1.0)
        eng.synchronize()
        G1 = G.copy() if not on_device else G.copy_to_host()
        tail1 = np.array(eng.step_scalars(G))
        eng.apply_update(s, G, 0.05, 1, 0.5)
        eng.batch_grads(s, perm, 8, 0, 0.25, 2, G, flag=0.0)    # a rank without rows
        G0 = G.copy() if not on_device else G.copy_to_host()
        eng.end_fit(s)
        results.append((G1, tail1, G0, state, m.get_weights()))
    (G1a, ta, G0a, sa, wa), (G1b, tb, G0b, sb, wb) = results
    np.testing.assert_array_equal(G1b, G1a)
    assert G1a[-1] == 1.0 and ta[2] == 1.0 and ta[0] > 0
    np.testing.assert_array_equal(tb, ta)
    np.testing.assert_array_equal(G0b, np.zeros_like(G0a))
    np.testing.assert_array_equal(G0a, np.zeros_like(G0a))
    np.testing.assert_array_equal(sb, sa)
    for p, q in zip(wa, wb):
        np.testing.assert_array_equal(q, p)


# ------------------------------------------------------------------ fused path

# GRAD_CASES with dropout on the hidden layers and frozen layers: a frozen bottom layer
# (the backward pass stops above it) and a frozen middle one (deltas pass through it).
FUSED_GRAD_CASES = [case + extra for case, extra in zip(GRAD_CASES, [
    (0.3, []), (0.0, [0]), (0.5, []), (0.0, []), (0.2, []), (0.3, [1]), (0.0, []),
    (0.2, [])])]


@pytest.mark.parametrize("path", ["launches"], indirect=True)
@pytest.mark.parametrize("act, loss, sizes, rate, frozen", FUSED_GRAD_CASES)
def test_fused_gradients_match_cpu(act, loss, sizes, rate, frozen, path):
    """One batch's gradient (float64) from the fused kernels, over 4 blocks of tiles of 2
    rows (the last one partial), against the CPU engine's."""
    a, b = _pair(sizes, activation=act, loss=loss, dtype="float64", dropout=rate)
    X, y = _data(loss, sizes[-1])
    Y = np.eye(sizes[-1])[y] if loss == "cross_entropy" else y
    w = np.linspace(0.5, 1.5, N_ROWS)
    perm = np.random.default_rng(4).permutation(N_ROWS)
    b0, rows = 2, 7
    scale = km.loss_scale(a._loss_code, rows, sizes[-1])
    P = a.n_params
    grads = []
    for m in (a, b):
        m.freeze(frozen)
        s = m._engine.begin_fit(X, Y, w, SGD(), np.zeros((0, P)), 8, 21)
        G = np.full(P + 2, 7.0)
        m._engine.batch_grads(s, perm, b0, rows, scale, 5, G)
        m._engine.end_fit(s)
        grads.append(G)
    if kc.FUSED_ROW_BLOCK == 2:     # the simulator's tiles: 4 blocks, the last one partial
        assert (s.fused.tile_rows, s.fused.n_slots) == (2, 4)
    Ga, Gb = grads
    np.testing.assert_allclose(Gb[:P], Ga[:P], rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(Gb[P:], Ga[P:], rtol=1e-9)
    for l in frozen:   # frozen layers keep the caller's values, on both engines
        sl = a.layout.layer_slice(l)
        assert (Gb[sl] == 7.0).all()


def test_size_rule(monkeypatch):
    f32, f64 = np.float32, np.float64
    W = kc.FUSED_MAX_WIDTH
    # Narrow networks take the fused path: large batches in tiles of FUSED_MAX_TILE_ROWS,
    # smaller ones in smaller tiles, down to FUSED_MIN_TILE_ROWS, to make more blocks.
    narrow = [4, 8, 8, 3]
    huge = kc.FUSED_MAX_TILE_ROWS * kc.FUSED_TARGET_BLOCKS
    assert kc.fused_tile_rows(narrow, f32, huge) == kc.FUSED_MAX_TILE_ROWS
    for batch in (64, 1000, huge // 2):
        rows = kc.fused_tile_rows(narrow, f32, batch)
        assert rows % kc.FUSED_ROW_BLOCK == 0
        assert kc.FUSED_MIN_TILE_ROWS <= rows <= kc.FUSED_MAX_TILE_ROWS
        assert rows == kc.FUSED_MIN_TILE_ROWS or -(-batch // rows) >= kc.FUSED_TARGET_BLOCKS
    assert kc.fused_tile_rows([W, W, W, 10], f32, 64) > 0
    # A small batch gets one tile (in whole register blocks of rows).
    assert kc.fused_tile_rows([4, 8, 3], f32, 1) == kc.FUSED_ROW_BLOCK
    # Any width over FUSED_MAX_WIDTH, input and output included: the layer path, unless
    # the batch is small enough to be launch-bound (then fused, where the tile fits).
    big = kc.FUSED_WIDE_MAX_BATCH + 1
    for sizes in ([4, W + 1, 3], [W + 1, 8, 3], [4, 8, W + 1]):
        assert kc.fused_tile_rows(sizes, f32, big) == 0
        assert kc.fused_tile_rows(sizes, f32, kc.FUSED_WIDE_MAX_BATCH) > 0
    too_wide = [kc.FUSED_SMEM_BYTES // (4 * kc.FUSED_MIN_TILE_ROWS), 8, 3]
    assert kc.fused_tile_rows(too_wide, f32, kc.FUSED_WIDE_MAX_BATCH) == 0
    # A deep network whose tile no longer fits the shared-memory budget: the layer path.
    per_layer = W * kc.FUSED_ROW_BLOCK * 8
    depth = kc.FUSED_SMEM_BYTES // per_layer + 2
    deep = [W] * depth + [10]
    assert kc.fused_smem_bytes(deep, kc.FUSED_ROW_BLOCK, 8) > kc.FUSED_SMEM_BYTES
    assert kc.fused_tile_rows(deep, f64, 64) == 0
    # Where shared memory binds, tiles take as many rows as fit; float64 fits fewer.
    mid = [W, W, W, W, 10]
    with monkeypatch.context() as mp:
        mp.setattr(kc, "FUSED_TARGET_BLOCKS", 1)           # no spreading over blocks
        mp.setattr(kc, "FUSED_PARTIAL_BYTES", 2 ** 62)
        r32, r64 = kc.fused_tile_rows(mid, f32, 10 ** 6), kc.fused_tile_rows(mid, f64, 10 ** 6)
    assert 0 < r64 <= r32
    for r, item in ((r32, 4), (r64, 8)):
        assert kc.fused_smem_bytes(mid, r, item) <= kc.FUSED_SMEM_BYTES
        assert (r == kc.FUSED_MAX_TILE_ROWS or kc.fused_smem_bytes(
            mid, r + kc.FUSED_ROW_BLOCK, item) > kc.FUSED_SMEM_BYTES)
    # The gradient partials' budget caps the blocks (a block then takes several tiles);
    # where not even one block's partials fit, the layer path.
    slot = kc._n_params(mid) * 4
    rows = kc.fused_tile_rows(mid, f32, 10 ** 6)
    assert kc.fused_slots(mid, 4, 10 ** 6, rows) == min(
        kc.FUSED_MAX_BLOCKS, -(-10 ** 6 // rows), kc.FUSED_PARTIAL_BYTES // slot)
    with monkeypatch.context() as mp:
        mp.setattr(kc, "FUSED_PARTIAL_BYTES", 3 * slot)
        assert kc.fused_slots(mid, 4, 10 ** 6, rows) == 3
        assert kc.fused_tile_rows(mid, f32, 10 ** 6) == rows
        mp.setattr(kc, "FUSED_PARTIAL_BYTES", slot - 1)
        assert kc.fused_tile_rows(mid, f32, 10 ** 6) == 0
    # Forcing: "layers" always wins; "fused" takes a wide net that fits, refuses one that
    # does not.
    assert kc.fused_tile_rows([4, 8, 3], f32, 64, path="layers") == 0
    assert kc.fused_tile_rows([4, W + 1, 3], f32, 64, path="fused") > 0
    with pytest.raises(ValueError):
        kc.fused_tile_rows(deep, f64, 64, path="fused")
    # The engine follows the rule.
    X, y = _data("cross_entropy", 3)
    Y = np.eye(3)[y]
    monkeypatch.setattr(kc, "FUSED_WIDE_MAX_BATCH", BATCH - 1)
    for sizes, fused in (([4, 5, 3], True), ([4, W + 1, 3], False)):
        m = fastbp.MLP(sizes, device="cuda", seed=0)
        s = m._engine.begin_fit(X, Y, np.ones(N_ROWS), SGD(), np.zeros((0, m.n_params)),
                                BATCH, 0)
        assert (s.fused is not None) == fused
        m._engine.end_fit(s)


# -------------------------------------------------------------------- inference

@pytest.mark.parametrize("infer_path", ["fused", "layers"])
def test_inference_matches_cpu(infer_path, monkeypatch):
    monkeypatch.setattr(kc, "FUSED_PATH", "auto" if infer_path == "fused" else "layers")
    launched = []
    original = CudaEngine._fused_forward

    def spy(self, *args):
        launched.append(True)
        return original(self, *args)
    monkeypatch.setattr(CudaEngine, "_fused_forward", spy)
    a, b = _pair([4, 6, 5, 3], activation="gelu", dtype="float64")
    X, _ = _data("cross_entropy", 3, n=9)
    for loss in ("mse", "binary_cross_entropy"):      # the other output activations
        c, d = _pair([4, 6, 2], activation="relu", dtype="float64", loss=loss)
        np.testing.assert_allclose(d.predict(X), c.predict(X), rtol=1e-12)
        np.testing.assert_allclose(d.transform(X, layer=0), c.transform(X, layer=0),
                                   rtol=1e-12)
    np.testing.assert_allclose(b.predict_proba(X), a.predict_proba(X), rtol=1e-12)
    np.testing.assert_array_equal(b.predict(X), a.predict(X))
    np.testing.assert_allclose(b.decision_function(X), a.decision_function(X), rtol=1e-12)
    for layer in (0, 1):
        np.testing.assert_allclose(b.transform(X, layer=layer), a.transform(X, layer=layer),
                                   rtol=1e-12)
    # Host weights stay authoritative outside a fit.
    new = [w * 0.5 for w in a.get_weights()]
    a.set_weights(new)
    b.set_weights(new)
    np.testing.assert_allclose(b.predict_proba(X), a.predict_proba(X), rtol=1e-12)
    assert bool(launched) == (infer_path == "fused")


def test_inference_refuses_nan_input_before_the_upload():
    """The CUDA kernels check nothing: the model checks X on the host first."""
    b = fastbp.MLP([4, 5, 3], seed=0, device="cuda")
    X, _ = _data("cross_entropy", 3)
    X[7, 2] = np.nan
    for call in (b.predict, b.predict_proba):
        with pytest.raises(fastbp.DataError, match="NaN"):
            call(X)


def test_trained_on_cuda_loads_on_cpu(tmp_path):
    X, y = _data("binary_cross_entropy", 2)
    b = fastbp.MLP([4, 5, 2], loss="binary_cross_entropy", seed=5, device="cuda")
    b.fit(X, y, epochs=1, batch_size=BATCH, optimizer="adam", lr=0.05)
    path = tmp_path / "m.npz"
    b.save(path)
    c = fastbp.load(path, device="cpu")
    assert c.device == "cpu"
    np.testing.assert_allclose(c.predict_proba(X), b.predict_proba(X), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(c.predict(X), b.predict(X))


def test_pickled_model_comes_back_on_the_device_with_its_weights():
    import pickle
    X, y = _data("binary_cross_entropy", 2)
    b = fastbp.MLP([4, 5, 2], loss="binary_cross_entropy", seed=5, device="cuda")
    b.fit(X, y, epochs=1, batch_size=BATCH, optimizer="adam", lr=0.05)
    c = pickle.loads(pickle.dumps(b))
    assert c.device == "cuda" and c._opt_state is not None
    for w, v in zip(c.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(w, v)
    np.testing.assert_array_equal(c.predict_proba(X), b.predict_proba(X))


# ------------------------------------------------------ real GPU only (too slow simulated)

@pytest.mark.skipif(SIM, reason="wide layers are too slow under the simulator")
@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-9), ("float32", 2e-3)])
def test_wide_layers_match_cpu(dtype, rtol):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(1000, 70))
    y = rng.integers(0, 10, 1000)
    cfg = dict(activation="relu", dtype=dtype, seed=2, dropout=0.1)
    a = fastbp.MLP([70, 300, 129, 10], device="cpu", **cfg)
    b = fastbp.MLP([70, 300, 129, 10], device="cuda", **cfg)
    la, ga = a.loss_and_grads(X, y)
    lb, gb = b.loss_and_grads(X, y)
    assert lb == pytest.approx(la, rel=rtol)
    for p, q in zip(ga, gb):
        np.testing.assert_allclose(q, p, rtol=rtol, atol=rtol * np.abs(p).max())
    fit = dict(epochs=2, batch_size=100, optimizer="sgd", lr=0.01, shuffle=True)
    a.fit(X, y, **fit)
    b.fit(X, y, **fit)
    for p, q in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(q, p, rtol=rtol, atol=rtol * np.abs(p).max())


def test_every_code_has_its_branch_on_the_device():
    """The device functions, as test_registry checks the CPU's: each known activation,
    loss and optimizer code finite, an unknown one NaN."""
    f = kc._scalar
    acts = np.array(sorted(km.ACTIVATIONS.values()) + [max(km.ACTIVATIONS.values()) + 1])
    losses = np.array([c for c in km.LOSSES.values() if c != km.CROSS_ENTROPY] +
                      [max(km.LOSSES.values()) + 1])
    opts = np.array(sorted(km.OPTIMIZER_HYPER) + [max(km.OPTIMIZER_HYPER) + 1])

    @cuda.jit
    def probe(acts, losses, opts, out):
        i = cuda.grid(1)
        if i < acts.shape[0]:
            out[0, i] = f.activate_grad(acts[i], 0.4, f.activate(acts[i], 0.4))
        if i < losses.shape[0]:
            out[1, i] = f.pointwise_loss_grad(losses[i], 0.3, 1.0) + \
                f.pointwise_loss(losses[i], 0.3, 1.0) + f.output_activate(losses[i], 0.3)
        if i < opts.shape[0] - (1 if config.ENABLE_CUDASIM else 0):
            p, s0, s1 = f.optimizer_step(opts[i], 1.0, 0.5, 0.2, 0.3, 0.1, 0.9, 0.1, 0.999,
                                         1e-3, 0.0, 1.0, 0.1, 1.0, 0.0)
            out[2, i] = p + s0 + s1

    n = max(len(acts), len(losses), len(opts))
    out = np.zeros((3, n))
    # Simulated, 0/0 raises as in Python (the unknown optimizer's NaN): test_registry
    # covers that case; on a GPU it is NaN.
    out[2, len(opts) - 1] = np.nan
    probe[1, n](acts, losses, opts, out)
    for row, codes in enumerate((acts, losses, opts)):
        assert np.isfinite(out[row, :len(codes) - 1]).all(), (row, out[row])
        assert np.isnan(out[row, len(codes) - 1]), (row, out[row])


def test_inference_keeps_parameters_on_the_device_and_follows_every_change():
    """predict uploads the parameters once and again only after they change, whoever
    changed them: set_weights, a fit, reset, or a write into the flat vector."""
    X, y = _data("cross_entropy", 3)
    a, b = _pair([N_IN, 5, 3], dtype="float64")
    eng = b._engine
    uploads = []
    original = CudaEngine._params_on_device

    def spy(self):
        before = self._resident
        res = original(self)
        if self._resident is not before:
            uploads.append(1)
        return res

    CudaEngine._params_on_device = spy
    try:
        def same():
            np.testing.assert_allclose(b.predict_proba(X), a.predict_proba(X), rtol=1e-12)

        same()
        same()
        assert len(uploads) == 1
        w = a.get_weights()
        w[0] = w[0] * 0.5
        a.set_weights(w)
        b.set_weights(w)
        same()
        assert len(uploads) == 2
        for m in (a, b):
            m.fit(X, y, epochs=1, batch_size=BATCH, shuffle=False)
        np.testing.assert_allclose(b.predict_proba(X), a.predict_proba(X), rtol=1e-8)
        for m in (a, b):
            m._params[0] += 0.25
        np.testing.assert_allclose(b.predict_proba(X), a.predict_proba(X), rtol=1e-8)
        assert len(uploads) == 4
        assert eng is b._engine
    finally:
        CudaEngine._params_on_device = original

# ------------------------------------------------------------------------- ensembles

@pytest.fixture
def together(monkeypatch):
    """What engines.cuda_members.train_members returned, chunk by chunk: (jobs, steps done
    per job, or None where the members ran in turn)."""
    from fastbp.engines import cuda_members
    calls = []
    original = cuda_members.train_members

    def spy(jobs):
        res = original(jobs)
        calls.append((len(jobs), res))
        return res
    monkeypatch.setattr(cuda_members, "train_members", spy)
    return calls


def _ensembles(sizes, **kw):
    cfg = dict(n_models=3, activation="relu", dtype="float32", seed=3)
    cfg.update(kw)
    return (fastbp.Ensemble(sizes, device="cpu", **cfg),
            fastbp.Ensemble(sizes, device="cuda", **cfg))


def _assert_members_close(a, b, rtol, atol):
    for k in range(len(a)):
        _assert_weights_close(a[k], b[k], rtol, atol)


@pytest.mark.parametrize("dtype, rtol, atol", [("float32", 1e-4, 1e-6),
                                               ("float64", 1e-9, 1e-12)])
@pytest.mark.parametrize("clip_norm", [None, 0.5])
def test_ensemble_members_share_launches(dtype, rtol, atol, clip_norm, together):
    """The members train in the same launches (a grid row each), with their own learning
    rates, weight decays, row weights and dropout seeds, and end as the CPU's."""
    X, y = _data("cross_entropy", 3)
    w = np.ones((3, N_ROWS))
    w[1, :3] = 0.0
    w[2, 5:] = 2.0
    a, b = _ensembles([N_IN, 6, 5, 3], dtype=dtype, dropout=0.2)
    fit = dict(epochs=2, batch_size=BATCH, shuffle=True, lr=[1e-2, 3e-2, 5e-3],
               weight_decay=[0.0, 0.1, 0.01], sample_weight=w, clip_norm=clip_norm,
               optimizer="adamw")
    ha, hb = a.fit(X, y, **fit), b.fit(X, y, **fit)
    assert together and all(n == 3 and res is not None for n, res in together), together
    _assert_members_close(a, b, rtol, atol)
    for key in ("loss", "accuracy"):
        np.testing.assert_allclose(hb.history[key], ha.history[key], rtol=rtol, atol=atol)
    np.testing.assert_allclose(b.predict_proba(X), a.predict_proba(X), rtol=rtol, atol=atol)
    for k in range(3):
        assert b[k]._step == a[k]._step == 6
        np.testing.assert_allclose(b[k]._opt_state, a[k]._opt_state, rtol=rtol, atol=atol)


def test_ensemble_member_diverges_others_go_on(together):
    """A member whose loss overflows stops before that batch's step, with the CPU's
    weights; the others go on in launches of their own rows."""
    X, y = _data("mse", 1)
    a, b = _ensembles([N_IN, 5, 1], loss="mse", activation="identity")
    fit = dict(epochs=2, batch_size=BATCH, shuffle=False, optimizer="sgd",
               lr=[0.01, 1e20, 0.02])
    with pytest.warns(RuntimeWarning, match=r"member\(s\) \[1\]"):
        ha = a.fit(X, y, **fit)
    with pytest.warns(RuntimeWarning, match=r"member\(s\) \[1\]"):
        hb = b.fit(X, y, **fit)
    np.testing.assert_array_equal(hb.diverged, ha.diverged)
    np.testing.assert_array_equal(hb.stopped_epoch, ha.stopped_epoch)
    assert [b[k]._step for k in range(3)] == [a[k]._step for k in range(3)]
    assert b[1]._step < b[0]._step
    _assert_members_close(a, b, 1e-4, 1e-6)
    assert all(res is not None for _, res in together), together
    assert {n for n, _ in together} == {3, 2}, together


def test_ensemble_members_stop_early_alone(together):
    """Per-member early stopping: a stopped member leaves the launches with its best
    weights, the others go on in launches of their own rows, all as on the CPU."""
    from fastbp.callbacks import EarlyStopping
    X, y = _data("cross_entropy", 3, n=16)
    a, b = _ensembles([N_IN, 6, 3], n_models=3, activation="tanh")
    hists = []
    for ens in (a, b):
        hists.append(ens.fit(X[:12], y[:12], epochs=6, batch_size=BATCH, shuffle=False,
                             lr=[0.5, 1e-3, 0.05], validation_data=(X[12:], y[12:]),
                             callbacks=[EarlyStopping(patience=0,
                                                      restore_best_weights=True)]))
    ha, hb = hists
    np.testing.assert_array_equal(hb.stopped_epoch, ha.stopped_epoch)
    assert len(set(ha.stopped_epoch.tolist())) > 1, ha.stopped_epoch   # they differ
    _assert_members_close(a, b, 1e-4, 1e-6)
    assert all(res is not None for _, res in together), together
    assert len({n for n, _ in together}) > 1, together      # fewer rows once one stopped


@pytest.mark.parametrize("switch", ["layers", "members off"])
def test_ensemble_members_in_turn(switch, together, monkeypatch):
    """Where the members cannot share launches (the layer-by-layer path) or are told not
    to, they train one after another, with the same numbers."""
    if switch == "layers":
        monkeypatch.setattr(kc, "FUSED_PATH", "layers")
    else:
        monkeypatch.setattr(kc, "FUSED_MEMBERS", False)
    X, y = _data("cross_entropy", 3)
    a, b = _ensembles([N_IN, 5, 3], n_models=2, activation="tanh")
    fit = dict(epochs=2, batch_size=BATCH, shuffle=True, lr=[1e-2, 3e-2],
               weight_decay=[0.0, 0.1])
    ha, hb = a.fit(X, y, **fit), b.fit(X, y, **fit)
    assert together and all(res is None for _, res in together), together
    _assert_members_close(a, b, 1e-4, 1e-6)
    np.testing.assert_allclose(hb.history["loss"], ha.history["loss"], rtol=1e-4)
