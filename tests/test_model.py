"""The MLP façade: persistence, seeding, dtypes, tiny inputs, optimizer objects, History."""
import json

import numpy as np
import pytest

import fastbp


def _data(n=40, n_in=4, k=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_in))
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5).astype(int)   # 3 classes
    return X, y % k


def _assert_weights_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


# ------------------------------------------------------------------------- persistence

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_save_load_round_trip(tmp_path, dtype):
    X, y = _data()
    net = fastbp.MLP([4, 8, 6, 3], activation=["tanh", "gelu"], loss="cross_entropy",
                     dtype=dtype, seed=3, device="cpu", init="he_uniform")
    net.fit(X, y, epochs=3, batch_size=8)
    path = tmp_path / "model.npz"
    net.save(path)

    # The file is plain arrays: readable without pickle.
    with np.load(path, allow_pickle=False) as z:
        assert len(z.files) >= 1 + 2 * 3
        for k in z.files:
            assert z[k].dtype != object

    loaded = fastbp.load(path)
    assert isinstance(loaded, fastbp.MLP)
    assert loaded.get_config() == net.get_config()
    assert loaded.sizes == [4, 8, 6, 3]
    assert loaded.activations == ["tanh", "gelu"]
    assert loaded.loss == "cross_entropy" and loaded.dtype == np.dtype(dtype)
    _assert_weights_equal(loaded.get_weights(), net.get_weights())
    for w in loaded.get_weights():
        assert w.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(loaded.predict_proba(X), net.predict_proba(X))
    np.testing.assert_array_equal(loaded.predict(X), net.predict(X))


def test_load_keeps_regression_config(tmp_path):
    X = np.random.default_rng(0).normal(size=(10, 3))
    net = fastbp.MLP([3, 5, 2], activation="elu", loss="huber", dtype="float64", seed=9,
                     device="cpu")
    net.save(tmp_path / "reg.npz")
    loaded = fastbp.load(tmp_path / "reg.npz")
    assert loaded.loss == "huber" and loaded.activations == ["elu"]
    np.testing.assert_array_equal(loaded.predict(X), net.predict(X))


def test_pickle_carries_training_state_and_warm_start_goes_on_identically():
    import copy
    import pickle
    X, y = _data(n=64)
    net = fastbp.MLP([4, 8, 3], activation="tanh", loss="cross_entropy", seed=5, device="cpu",
                     dropout=0.1)
    # an unfitted model pickles too
    assert pickle.loads(pickle.dumps(fastbp.MLP([4, 3], device="cpu"))).sizes == [4, 3]
    net.fit(X, y, epochs=3, batch_size=8, optimizer="adam", lr=0.01)
    net.freeze(0)
    again = pickle.loads(pickle.dumps(net))
    twin = copy.deepcopy(net)
    for other in (again, twin):
        assert other.get_config() == net.get_config()
        _assert_weights_equal(other.get_weights(), net.get_weights())
        np.testing.assert_array_equal(other.trainable, [False, True])
        assert other.history.history["loss"] == net.history.history["loss"]
        np.testing.assert_array_equal(other.predict_proba(X), net.predict_proba(X))
        assert other._params.ctypes.data % 64 == 0
    # Same optimizer moments, step and shuffling generator: one more epoch of each, started
    # warm, ends on the same weights (the frozen layer untouched in all three).
    W0 = net.get_weights()[0]
    for m in (net, again, twin):
        m.fit(X, y, epochs=1, batch_size=8, optimizer="adam", lr=0.01, warm_start=True)
    _assert_weights_equal(again.get_weights(), net.get_weights())
    _assert_weights_equal(twin.get_weights(), net.get_weights())
    np.testing.assert_array_equal(net.get_weights()[0], W0)
    # Copies are independent: training one leaves the other as it was.
    before = again.get_weights()
    twin.fit(X, y, epochs=1, batch_size=8)
    _assert_weights_equal(again.get_weights(), before)


def test_save_writes_json_header_not_pickle(tmp_path):
    net = fastbp.MLP([3, 4, 2], device="cpu")
    path = tmp_path / "m.npz"
    net.save(path)
    with np.load(path, allow_pickle=False) as z:
        headers = [k for k in z.files if z[k].dtype.kind == "U"]
        assert headers, "no text header in the model file"
        json.loads(str(z[headers[0]]))        # config as JSON text


def test_load_rejects_a_foreign_file(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, a=np.arange(3))
    with pytest.raises(ValueError):
        fastbp.load(path)
    bad = tmp_path / "garbage.npz"
    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError):
        fastbp.load(bad)


# ----------------------------------------------------------------------------- seeding

def test_same_seed_same_weights_and_same_training():
    X, y = _data()
    a = fastbp.MLP([4, 16, 3], seed=42, device="cpu")
    b = fastbp.MLP([4, 16, 3], seed=42, device="cpu")
    _assert_weights_equal(a.get_weights(), b.get_weights())
    ha = a.fit(X, y, epochs=4, batch_size=8, shuffle=True)
    hb = b.fit(X, y, epochs=4, batch_size=8, shuffle=True)
    _assert_weights_equal(a.get_weights(), b.get_weights())
    assert ha.history["loss"] == hb.history["loss"]


def test_different_seed_different_weights_and_shuffling():
    X, y = _data()
    a = fastbp.MLP([4, 16, 3], seed=1, device="cpu")
    b = fastbp.MLP([4, 16, 3], seed=2, device="cpu")
    assert not np.array_equal(a.get_weights()[0], b.get_weights()[0])
    # Same start, different seeds: only the shuffling differs, and it changes the result.
    b.set_weights(a.get_weights())
    a.fit(X, y, epochs=2, batch_size=8, optimizer="sgd", shuffle=True)
    b.fit(X, y, epochs=2, batch_size=8, optimizer="sgd", shuffle=True)
    assert not np.allclose(a.get_weights()[0], b.get_weights()[0])


def test_initial_weights_do_not_depend_on_dtype():
    a = fastbp.MLP([5, 7, 2], dtype="float32", seed=5, device="cpu")
    b = fastbp.MLP([5, 7, 2], dtype="float64", seed=5, device="cpu")
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb.astype(np.float32))


def test_biases_start_at_zero_and_weights_are_scaled_by_fan_in():
    net = fastbp.MLP([200, 100, 3], activation="relu", seed=0, device="cpu")
    W1, b1, W2, b2 = net.get_weights()
    assert not b1.any() and not b2.any()
    assert np.std(W1) == pytest.approx(np.sqrt(2.0 / 200), rel=0.05)        # He normal


# ------------------------------------------------------------------------------ dtypes

def test_float32_is_the_default_end_to_end():
    X, y = _data()
    net = fastbp.MLP([4, 8, 3], device="cpu")
    assert net.dtype == np.float32
    net.fit(X, y, epochs=2, batch_size=8)
    assert all(w.dtype == np.float32 for w in net.get_weights())
    assert net.predict_proba(X).dtype == np.float32
    assert net.decision_function(X).dtype == np.float32
    assert net.transform(X).dtype == np.float32
    _, grads = net.loss_and_grads(X, y)
    assert all(g.dtype == np.float32 for g in grads)


def test_float64_end_to_end():
    X = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)   # converted
    Y = np.random.default_rng(1).normal(size=(30, 2))
    net = fastbp.MLP([4, 8, 2], activation="tanh", loss="mse", dtype="float64", device="cpu")
    assert net.dtype == np.float64
    net.fit(X, Y, epochs=2, batch_size=8)
    assert all(w.dtype == np.float64 for w in net.get_weights())
    assert net.predict(X).dtype == np.float64
    assert net.transform(X).dtype == np.float64
    _, grads = net.loss_and_grads(X, Y)
    assert all(g.dtype == np.float64 for g in grads)
    # float64 keeps precision a float32 model could not hold.
    w = net.get_weights()
    w[1] = w[1] + 1e-12
    net.set_weights(w)
    assert np.array_equal(net.get_weights()[1], w[1])


# -------------------------------------------------------------------------- tiny inputs

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_one_row_predict(dtype):
    net = fastbp.MLP([4, 8, 3], dtype=dtype, device="cpu")
    x = np.random.default_rng(0).normal(size=(1, 4))
    proba = net.predict_proba(x)
    assert proba.shape == (1, 3)
    np.testing.assert_allclose(proba.sum(), 1.0, rtol=1e-5)
    assert net.predict(x).shape == (1,)
    assert net.predict(x)[0] == proba.argmax()


def test_large_predict_matches_reference_across_blocks_and_tiles(monkeypatch):
    """Rows split into blocks, blocks over threads, each thread's rows in tiles: every row
    must come out as the reference forward pass computes it, with uneven remainders."""
    import fastbp.engines.cpu as backend
    from reference import forward
    net = fastbp.MLP([5, 16, 7, 3], activation="tanh", dtype="float64", device="cpu", seed=1)
    X = np.random.default_rng(2).normal(size=(1001, 5))
    expected = forward(net.get_weights(), X, activation="tanh")
    monkeypatch.setattr(backend, "predict_block_rows", lambda *a: 400)
    monkeypatch.setattr(backend, "predict_tile_rows", lambda *a: 37)
    np.testing.assert_allclose(net.predict_proba(X), expected[1][-1], rtol=1e-12)
    np.testing.assert_allclose(net.transform(X, 1), expected[1][2], rtol=1e-12)


def test_inference_tiles_are_even_and_no_more_than_needed():
    """A thread's rows go through in as few tiles as the scratch allows, of even size: a
    short last tile (2 rows after three of 170) costs a whole pass over the weights."""
    from fastbp.kernels.cpu import even_tile as kernel
    even_tile = kernel.py_func
    from fastbp.kernels.gemm import BLOCK_ROWS
    for tile in (1, 7, 8, 37, 128, 170, 256):
        for rows in range(1, 1100, 3):
            S = even_tile(rows, tile)
            n_tiles = -(-rows // S)
            last = rows - (n_tiles - 1) * S
            assert 1 <= S <= tile and n_tiles == -(-rows // tile), (rows, tile, S)
            assert last >= S - n_tiles * BLOCK_ROWS, (rows, tile, S, last)
            if S < rows and S % BLOCK_ROWS:   # whole row blocks wherever they fit
                assert -(-S // BLOCK_ROWS) * BLOCK_ROWS > tile, (rows, tile, S)
    assert even_tile(512, 170) == 128 and even_tile(340, 170) == 170


def test_one_row_fit_with_matching_batch_size():
    x = np.array([[0.5, -1.0, 2.0, 0.1]])
    net = fastbp.MLP([4, 8, 3], dtype="float64", device="cpu")
    hist = net.fit(x, [2], epochs=5, batch_size=1, optimizer="sgd", lr=0.1)
    assert len(hist.history["loss"]) == 5
    assert hist.history["loss"][-1] < hist.history["loss"][0]


def test_one_row_fit_with_default_batch_size():
    """A data set smaller than batch_size is one (partial) batch per epoch."""
    x = np.array([[0.5, -1.0, 2.0, 0.1]])
    net = fastbp.MLP([4, 8, 3], dtype="float64", device="cpu")
    hist = net.fit(x, [2], epochs=5, optimizer="sgd", lr=0.1)     # batch_size=64 > 1 row
    assert len(hist.history["loss"]) == 5
    assert hist.history["loss"][-1] < hist.history["loss"][0]


def test_batch_size_larger_than_the_data_is_full_batch():
    X, y = _data(n=10)
    a = fastbp.MLP([4, 8, 3], dtype="float64", seed=0, device="cpu")
    b = fastbp.MLP([4, 8, 3], dtype="float64", seed=0, device="cpu")
    a.fit(X, y, epochs=3, batch_size=10, optimizer="sgd", shuffle=False)
    b.fit(X, y, epochs=3, batch_size=32, optimizer="sgd", shuffle=False)
    np.testing.assert_allclose(np.concatenate([w.ravel() for w in b.get_weights()]),
                               np.concatenate([w.ravel() for w in a.get_weights()]),
                               rtol=1e-12)


# -------------------------------------------------------------------------- optimizers

def test_optimizer_object_is_used():
    X, y = _data()
    start = fastbp.MLP([4, 8, 3], dtype="float64", seed=0, device="cpu").get_weights()

    def trained(optimizer, **kw):
        net = fastbp.MLP([4, 8, 3], dtype="float64", seed=0, device="cpu")
        net.set_weights(start)
        net.fit(X, y, epochs=2, batch_size=8, optimizer=optimizer, shuffle=False, **kw)
        return net.get_weights()[0]

    by_name = trained("sgd", lr=0.05)
    by_object = trained(fastbp.SGD(lr=0.05))
    np.testing.assert_array_equal(by_name, by_object)
    with_momentum = trained(fastbp.SGD(lr=0.05, momentum=0.9))
    assert not np.allclose(with_momentum, by_object)


def test_lr_argument_overrides_the_optimizer_lr():
    X, y = _data()
    start = fastbp.MLP([4, 8, 3], dtype="float64", seed=0, device="cpu").get_weights()

    def trained(optimizer, **kw):
        net = fastbp.MLP([4, 8, 3], dtype="float64", seed=0, device="cpu")
        net.set_weights(start)
        net.fit(X, y, epochs=2, batch_size=8, optimizer=optimizer, shuffle=False, **kw)
        return net.get_weights()[0]

    opt = fastbp.Adam(lr=0.5, betas=(0.8, 0.9))
    overridden = trained(opt, lr=0.001)
    assert opt.lr == 0.5                     # the caller's object is not modified
    np.testing.assert_array_equal(overridden, trained(fastbp.Adam(lr=0.001, betas=(0.8, 0.9))))
    assert not np.allclose(overridden, trained(opt))


def test_invalid_hyperparameters_are_rejected():
    with pytest.raises(ValueError):
        fastbp.SGD(lr=-1.0)
    with pytest.raises(ValueError):
        fastbp.SGD(lr=0.1, nesterov=True)           # torch: nesterov needs momentum
    with pytest.raises(ValueError):
        fastbp.Adam(betas=(1.0, 0.9))
    with pytest.raises(ValueError):
        fastbp.MLP([4, 8, 3], device="cpu").fit(*_data(), optimizer="nope")


# ----------------------------------------------------------------------------- History

class _CountChunks(fastbp.Callback):
    def __init__(self):
        self.calls = 0

    def on_chunk_end(self, chunk, logs=None):
        self.calls += 1


def test_a_refit_sizes_its_first_chunk_by_the_time_measured_before():
    """The first compiled call at a batch size is one batch, timed, that sizes the
    chunks; a later fit at that batch size reuses the time and makes no such call (it
    cost a narrow net's fit about 0.3 ms), while a new batch size is timed again."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(320, 4)), rng.integers(0, 2, 320)
    net = fastbp.MLP([4, 8, 2], device="cpu", seed=0)
    calls = []
    for bs in (16, 16, 8):
        cb = _CountChunks()
        net.fit(X, y, epochs=1, batch_size=bs, callbacks=[cb], verbose=0)
        calls.append(cb.calls)
    assert calls[0] >= 2 and calls[1] == 1 and calls[2] >= 2, calls


def test_history_has_one_loss_per_epoch_and_decreases():
    X, y = _data(n=64)
    net = fastbp.MLP([4, 16, 3], seed=0, device="cpu")
    hist = net.fit(X, y, epochs=12, batch_size=16, optimizer="adam", lr=0.01)
    assert isinstance(hist, fastbp.History)
    losses = hist.history["loss"]
    assert len(losses) == 12 and hist.epoch == list(range(12))
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0]
    assert net.history is hist


def test_epoch_loss_is_the_mean_training_loss_of_the_epoch():
    """With lr tiny, the epoch-1 loss is the mean loss at the starting weights."""
    X, y = _data(n=30)
    net = fastbp.MLP([4, 8, 3], dtype="float64", seed=0, device="cpu")
    before, _ = net.loss_and_grads(X, y)
    hist = net.fit(X, y, epochs=1, batch_size=7, optimizer="sgd", lr=1e-12, shuffle=False)
    assert hist.history["loss"][0] == pytest.approx(before, rel=1e-9)
