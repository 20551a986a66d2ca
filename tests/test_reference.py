"""fastbp's training and inference against the NumPy reference (tests/reference.py).

Both start from the same weights (set_weights/get_weights), train 3 epochs over the rows in
order (shuffle=False) with a partial last batch, and must end with the same weights.
"""
import numpy as np
import pytest

import fastbp
import reference as ref
from fastbp import registry
from targets import targets_for

N_ROWS, BATCH = 23, 5          # 5 batches per epoch, the last one of 3 rows
EPOCHS = 3
SIZES = [5, 7, 6, 3]

# (id, fastbp optimizer object, reference spec)
OPTIMIZERS = [
    ("sgd", fastbp.SGD(lr=0.1), dict(name="sgd", lr=0.1)),
    ("sgd_momentum", fastbp.SGD(lr=0.05, momentum=0.9),
     dict(name="sgd", lr=0.05, momentum=0.9)),
    ("sgd_nesterov", fastbp.SGD(lr=0.05, momentum=0.8, nesterov=True),
     dict(name="sgd", lr=0.05, momentum=0.8, nesterov=True)),
    ("sgd_weight_decay", fastbp.SGD(lr=0.1, weight_decay=0.05),
     dict(name="sgd", lr=0.1, weight_decay=0.05)),
    ("adam", fastbp.Adam(lr=0.01), dict(name="adam", lr=0.01)),
    ("adam_weight_decay", fastbp.Adam(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1),
     dict(name="adam", lr=0.01, betas=(0.8, 0.99), weight_decay=0.1)),
    ("adamw", fastbp.AdamW(lr=0.01, weight_decay=0.1),
     dict(name="adamw", lr=0.01, weight_decay=0.1)),
    ("rmsprop", fastbp.RMSprop(lr=0.002), dict(name="rmsprop", lr=0.002)),
    ("rmsprop_momentum_weight_decay",
     fastbp.RMSprop(lr=0.002, alpha=0.9, momentum=0.7, weight_decay=0.05),
     dict(name="rmsprop", lr=0.002, alpha=0.9, momentum=0.7, weight_decay=0.05)),
]
TOL = {"float64": 1e-9, "float32": 1e-4}


def _problem(loss, dtype, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N_ROWS, SIZES[0]))
    if loss == "cross_entropy":
        y = rng.integers(0, SIZES[-1], N_ROWS)
        Y = ref.one_hot(y, SIZES[-1])
    else:
        y = Y = targets_for(loss, rng, N_ROWS, SIZES[-1])
    X = X.astype(dtype)
    # Random non-zero biases so that the bias updates are exercised from the first step.
    net = fastbp.MLP(SIZES, activation="tanh", loss=loss, dtype=dtype, seed=seed,
                     device="cpu")
    weights = net.get_weights()
    for i in range(1, len(weights), 2):
        weights[i] = rng.normal(0.0, 0.2, size=weights[i].shape)
    net.set_weights(weights)
    return net, X, y, Y


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("opt_id,opt,spec", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
def test_training_matches_reference(opt_id, opt, spec, dtype):
    net, X, y, Y = _problem("cross_entropy", dtype)
    start = net.get_weights()
    hist = net.fit(X, y, epochs=EPOCHS, batch_size=BATCH, optimizer=opt, shuffle=False)
    got = net.get_weights()
    want, ref_losses = ref.train(start, X, Y, EPOCHS, BATCH, spec, activation="tanh",
                                 loss="cross_entropy")
    assert all(w.dtype == np.dtype(dtype) for w in got)
    moved = ref.relative_error(want, start)
    assert moved > 1e-3, "the reference hardly moved: the test would prove nothing"
    err = ref.relative_error(got, want)
    assert err <= TOL[dtype], f"{opt_id}/{dtype}: weights differ by {err:.3g} (relative)"
    np.testing.assert_allclose(hist.history["loss"], ref_losses, rtol=TOL[dtype])


@pytest.mark.parametrize("loss", sorted(set(registry.LOSSES) - {"cross_entropy"}))
def test_training_matches_reference_for_every_loss(loss):
    net, X, y, Y = _problem(loss, "float64", seed=1)
    start = net.get_weights()
    spec = dict(name="adam", lr=0.01)
    net.fit(X, y, epochs=EPOCHS, batch_size=BATCH, optimizer=fastbp.Adam(lr=0.01),
            shuffle=False)
    want, _ = ref.train(start, X, Y, EPOCHS, BATCH, spec, activation="tanh", loss=loss)
    assert ref.relative_error(net.get_weights(), want) <= 1e-9


def test_relu_network_with_momentum_matches_reference():
    """The default activation, deeper, batch size not dividing n, over 2 fit calls."""
    rng = np.random.default_rng(8)
    sizes = [6, 16, 12, 8, 4]
    net = fastbp.MLP(sizes, activation="relu", loss="cross_entropy", dtype="float64",
                     device="cpu", seed=8)
    X = rng.normal(size=(37, 6))
    y = rng.integers(0, 4, 37)
    start = net.get_weights()
    opt = fastbp.SGD(lr=0.05, momentum=0.9, nesterov=True)
    net.fit(X, y, epochs=4, batch_size=8, optimizer=opt, shuffle=False)
    want, _ = ref.train(start, X, ref.one_hot(y, 4), 4, 8,
                        dict(name="sgd", lr=0.05, momentum=0.9, nesterov=True))
    assert ref.relative_error(net.get_weights(), want) <= 1e-9


def test_warm_start_continues_the_optimizer_state():
    """fit(warm_start=True) twice == one reference run of the summed epochs (Adam's step
    count and moments carry over)."""
    net, X, y, Y = _problem("mse", "float64", seed=2)
    start = net.get_weights()
    opt = fastbp.Adam(lr=0.01)
    net.fit(X, y, epochs=2, batch_size=BATCH, optimizer=opt, shuffle=False)
    net.fit(X, y, epochs=1, batch_size=BATCH, optimizer=opt, shuffle=False, warm_start=True)
    want, _ = ref.train(start, X, Y, 3, BATCH, dict(name="adam", lr=0.01), activation="tanh",
                        loss="mse")
    assert ref.relative_error(net.get_weights(), want) <= 1e-9


def test_batch_equal_to_all_rows_is_full_batch_descent():
    net, X, y, Y = _problem("mse", "float64", seed=3)
    start = net.get_weights()
    net.fit(X, y, epochs=3, batch_size=N_ROWS, optimizer=fastbp.SGD(lr=0.1), shuffle=False)
    want, _ = ref.train(start, X, Y, 3, N_ROWS, dict(name="sgd", lr=0.1), activation="tanh",
                        loss="mse")
    assert ref.relative_error(net.get_weights(), want) <= 1e-9


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("loss", ["cross_entropy", "binary_cross_entropy", "mse"])
def test_forward_matches_reference(loss, dtype):
    rng = np.random.default_rng(11)
    net = fastbp.MLP([5, 9, 7, 3], activation=["gelu", "elu"], loss=loss, dtype=dtype,
                     device="cpu", seed=11)
    weights = net.get_weights()
    for i in range(1, len(weights), 2):
        weights[i] = rng.normal(0.0, 0.5, size=weights[i].shape)
    net.set_weights(weights)
    X = rng.normal(size=(300, 5)).astype(dtype)      # more rows than one inference block
    acts = ["gelu", "elu"]
    tol = TOL[dtype]
    want = ref.predict_proba(net.get_weights(), X, acts, loss)
    if loss == "mse":
        with pytest.raises(ValueError):
            net.predict_proba(X)
        out = net.predict(X)
        assert out.dtype == np.dtype(dtype) and out.shape == (300, 3)
        assert ref.relative_error(out, want) <= tol
        return
    proba = net.predict_proba(X)
    assert proba.dtype == np.dtype(dtype) and proba.shape == (300, 3)
    assert ref.relative_error(proba, want) <= tol
    if loss == "cross_entropy":
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=tol)
    pred = net.predict(X)
    want_pred = ref.predict(net.get_weights(), X, acts, loss)
    # Ties at the decision boundary could only differ by rounding; none are this close.
    np.testing.assert_array_equal(pred, want_pred)
    logits = net.decision_function(X)
    Zs, _ = ref.forward(net.get_weights(), X, acts, loss)
    assert ref.relative_error(logits, Zs[-1]) <= tol


def test_transform_returns_hidden_activations():
    net = fastbp.MLP([4, 6, 5, 2], activation=["tanh", "sigmoid"], dtype="float64",
                     device="cpu", seed=12)
    X = np.random.default_rng(12).normal(size=(8, 4))
    _, As = ref.forward(net.get_weights(), X, ["tanh", "sigmoid"], "cross_entropy")
    # Layers are 0-based; the default is the last hidden layer.
    assert ref.relative_error(net.transform(X, layer=0), As[1]) <= 1e-12
    assert ref.relative_error(net.transform(X, layer=1), As[2]) <= 1e-12
    assert ref.relative_error(net.transform(X), As[2]) <= 1e-12


def test_evaluate_loss_matches_reference():
    net, X, y, Y = _problem("cross_entropy", "float64", seed=13)
    res = net.evaluate(X, y)
    Zs, _ = ref.forward(net.get_weights(), X, "tanh", "cross_entropy")
    assert res["loss"] == pytest.approx(ref.loss_value("cross_entropy", Zs[-1], Y), rel=1e-12)
    assert res["accuracy"] == pytest.approx(np.mean(Zs[-1].argmax(1) == y))
