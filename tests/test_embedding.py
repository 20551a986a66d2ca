"""Embedding fastbp in numeric code: predict(out=), compiled_predictor, compiled_trainer."""
import numpy as np
import pytest
from numba import njit

import fastbp
from fastbp.errors import DataError


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def _data(rng, n=96, k=5):
    X = rng.normal(size=(n, k))
    return X, (X[:, 0] - X[:, 1] > 0).astype(np.int64)


def test_predict_out_writes_in_place_and_returns_it(rng):
    X, y = _data(rng)
    net = fastbp.MLP([5, 8, 2], loss="cross_entropy", dtype="float64", seed=1)
    ids = np.full(len(X), -1, dtype=np.int64)
    assert net.predict(X, out=ids) is ids
    np.testing.assert_array_equal(ids, net.predict(X))
    proba = np.empty((len(X), 2))
    assert net.predict_proba(X, out=proba) is proba
    np.testing.assert_allclose(proba, net.predict_proba(X))

    reg = fastbp.MLP([5, 8, 1], loss="mse", dtype="float32", seed=1)
    X32 = np.ascontiguousarray(X, dtype=np.float32)
    for shape in [(len(X),), (len(X), 1)]:
        out = np.zeros(shape, dtype=np.float32)
        assert reg.predict(X32, out=out) is out
        np.testing.assert_array_equal(out.ravel(), reg.predict(X32).ravel())


def test_predict_out_is_checked(rng):
    X, _ = _data(rng)
    net = fastbp.MLP([5, 8, 1], loss="mse", dtype="float64")
    for bad in (np.empty(len(X), dtype=np.float32), np.empty(len(X) + 1),
                np.empty((len(X), 2))[:, 0], [0.0] * len(X)):
        with pytest.raises(DataError, match="out"):
            net.predict(X, out=bad)


def test_contiguous_input_of_model_dtype_reaches_the_kernel_uncopied(rng):
    X, _ = _data(rng)
    net = fastbp.MLP([5, 8, 2], dtype="float64", seed=0)
    seen = []
    forward = net._engine.forward

    def spy(Xk, *rest):
        seen.append(Xk)
        return forward(Xk, *rest)

    net._engine.forward = spy
    out = np.empty(len(X), dtype=np.int64)
    net.predict(X, out=out)
    assert np.shares_memory(seen[-1], X)
    net.predict(np.asfortranarray(X))      # other layouts are converted, not rejected
    assert not np.shares_memory(seen[-1], X)


@njit
def monte_carlo_mean(fn, args, n_draws, batch, n_in, n_out, seed):
    """Mean network output over random inputs, batch by batch, in compiled code."""
    np.random.seed(seed)
    x = np.empty((batch, n_in))
    out = np.empty((batch, n_out))
    total = np.zeros(n_out)
    for _ in range(n_draws // batch):
        for i in range(batch):
            for j in range(n_in):
                x[i, j] = np.random.normal()
        fn(*args, x, out)
        for i in range(batch):
            for j in range(n_out):
                total[j] += out[i, j]
    return total / (n_draws // batch * batch)


def test_compiled_predictor_inside_user_njit_loop(rng):
    X, y = _data(rng)
    net = fastbp.MLP([5, 16, 2], loss="cross_entropy", dtype="float64", seed=3)
    net.fit(X, y, epochs=3, batch_size=32)
    fn, args = net.compiled_predictor(max_rows=16)     # smaller than a batch: blocks
    got = monte_carlo_mean(fn, args, 640, 40, 5, 2, 7)
    np.random.seed(7)
    draws = np.empty((640, 5))
    for b in range(16):
        for i in range(40):
            for j in range(5):
                draws[b * 40 + i, j] = np.random.normal()
    np.testing.assert_allclose(got, net.predict_proba(draws).mean(axis=0), rtol=1e-10)
    # The args hold a live view of the weights: later training shows through.
    net.fit(X, y, epochs=1, batch_size=32)
    out = np.empty((len(X), 2))
    fn(*args, X, out)
    np.testing.assert_allclose(out, net.predict_proba(X), rtol=1e-10)


@njit
def online_fit(fn, args, n_steps, batch, seed):
    """Learn y = 2 x0 - x1 from a stream of fresh batches generated in compiled code."""
    np.random.seed(seed)
    x = np.empty((batch, 2))
    y = np.empty((batch, 1))
    loss = 0.0
    for _ in range(n_steps):
        for i in range(batch):
            x[i, 0] = np.random.uniform(-1.0, 1.0)
            x[i, 1] = np.random.uniform(-1.0, 1.0)
            y[i, 0] = 2.0 * x[i, 0] - x[i, 1]
        loss = fn(*args, x, y)
    return loss


def test_compiled_trainer_from_user_njit_code():
    net = fastbp.MLP([2, 16, 1], loss="mse", dtype="float64", seed=0)
    fn, args = net.compiled_trainer(batch_size=32, optimizer="adam", lr=0.01)
    first = online_fit(fn, args, 1, 32, 0)
    last = online_fit(fn, args, 400, 32, 1)
    assert args[17][0] == 401            # the step counter
    assert last < first / 20
    Xt = np.random.default_rng(0).uniform(-1, 1, (200, 2))
    assert net.evaluate(Xt, Xt @ np.array([2.0, -1.0]))["r2"] > 0.98


def test_compiled_trainer_step_equals_a_fit_step(rng):
    X, y = _data(rng, n=40)
    a = fastbp.MLP([5, 8, 2], dtype="float64", seed=4)
    b = fastbp.MLP([5, 8, 2], dtype="float64", seed=4)
    a.fit(X, y, epochs=1, batch_size=40, shuffle=False, optimizer="adam", lr=0.05)
    fn, args = b.compiled_trainer(batch_size=40, optimizer="adam", lr=0.05)
    loss = fn(*args, X, np.eye(2)[y])
    assert np.isclose(loss, a.history.history["loss"][0])
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-12, atol=1e-14)


def test_compiled_trainer_checks_shapes(rng):
    net = fastbp.MLP([5, 8, 2], dtype="float64")
    fn, args = net.compiled_trainer(batch_size=8)
    before = net.get_weights()
    x, y = np.zeros((8, 5)), np.eye(2)[np.zeros(8, dtype=int)]
    for bx, by in [(np.zeros((9, 5)), np.zeros((9, 2))), (np.zeros((8, 4)), y),
                   (x, np.zeros((8, 3))), (x, np.zeros((7, 2)))]:
        with pytest.raises(ValueError):
            fn(*args, bx, by)
    for w0, w1 in zip(before, net.get_weights()):
        np.testing.assert_array_equal(w0, w1)
