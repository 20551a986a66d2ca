"""End-to-end learning: the trainer reaches good solutions on small, real tasks."""
import numpy as np
import pytest

import fastbp


@pytest.mark.slow
def test_digits_classifier_reaches_97_percent(digits_split):
    Xtr, Xte, ytr, yte = digits_split
    net = fastbp.MLP([64, 128, 64, 10], activation="relu", loss="cross_entropy", seed=0,
                     device="cpu")
    hist = net.fit(Xtr, ytr, epochs=30, batch_size=32, optimizer="adam", lr=1e-3)
    res = net.evaluate(Xte, yte)
    assert res["accuracy"] >= 0.97, res
    assert np.mean(net.predict(Xte) == yte) == pytest.approx(res["accuracy"])
    assert hist.history["loss"][-1] < 0.1 * hist.history["loss"][0]


def _smooth_surface(P):
    return np.sin(P[:, 0]) * np.cos(P[:, 1])


@pytest.mark.slow
def test_smooth_2d_regression_reaches_r2_099():
    rng = np.random.default_rng(0)
    P = rng.uniform(-2.0, 2.0, size=(1500, 2))
    Q = rng.uniform(-2.0, 2.0, size=(500, 2))
    net = fastbp.MLP([2, 64, 64, 1], activation="tanh", loss="mse", seed=0, device="cpu")
    net.fit(P, _smooth_surface(P), epochs=60, batch_size=32, optimizer="adam", lr=3e-3)
    res = net.evaluate(Q, _smooth_surface(Q))
    assert set(res) >= {"loss", "r2", "mae"}
    assert res["r2"] >= 0.99, res
    pred = net.predict(Q)
    assert pred.shape == (500,)
    ss_res = np.sum((pred - _smooth_surface(Q)) ** 2)
    ss_tot = np.sum((_smooth_surface(Q) - _smooth_surface(Q).mean()) ** 2)
    assert 1 - ss_res / ss_tot == pytest.approx(res["r2"], rel=1e-4)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_xor_is_learned_exactly(dtype):
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=float)
    y = np.array([0, 1, 1, 0])
    net = fastbp.MLP([2, 8, 2], activation="tanh", loss="cross_entropy", dtype=dtype, seed=0,
                     device="cpu")
    net.fit(X, y, epochs=300, batch_size=4, optimizer="adam", lr=0.05)
    np.testing.assert_array_equal(net.predict(X), y)
    assert net.evaluate(X, y)["accuracy"] == 1.0


def test_multilabel_binary_cross_entropy_learns_every_label():
    rng = np.random.default_rng(1)

    def labels(X):
        return np.stack([X[:, 0] > 0,                     # linear
                         X[:, 1] + X[:, 2] > 0,           # linear, two features
                         X[:, 0] * X[:, 3] > 0],          # XOR-like, needs the hidden layer
                        axis=1).astype(np.float64)

    Xtr, Xte = rng.normal(size=(1200, 4)), rng.normal(size=(400, 4))
    Ytr, Yte = labels(Xtr), labels(Xte)
    net = fastbp.MLP([4, 32, 32, 3], activation="relu", loss="binary_cross_entropy", seed=0,
                     device="cpu")
    net.fit(Xtr, Ytr, epochs=40, batch_size=32, optimizer="adam", lr=3e-3)
    pred = net.predict(Xte)
    assert pred.shape == (400, 3) and set(np.unique(pred)) <= {0, 1}
    per_label = (pred == Yte).mean(axis=0)
    assert np.all(per_label >= 0.9), per_label           # chance is about 0.5 each
    proba = net.predict_proba(Xte)
    assert proba.shape == (400, 3) and np.all((proba >= 0) & (proba <= 1))
    assert net.evaluate(Xte, Yte)["accuracy"] == pytest.approx(per_label.mean())
