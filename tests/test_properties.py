"""Property tests: the output activations and losses stay finite and normalised for extreme
logits, and random networks agree with the NumPy reference (tests/reference.py)."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.special import logsumexp

import fastbp
import reference
from targets import targets_for
from fastbp.kernels import cpu
from fastbp.kernels import math as km
from fastbp.kernels.jit import entry_for

output_activation = entry_for(cpu.output_activation)

FEW = settings(max_examples=25, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

ACTIVATIONS = sorted(km.ACTIVATIONS)
LOSSES = sorted(km.LOSSES)
# Finite logits across most of each dtype's range (float32 tops out near 3.4e38).
LIMIT = {np.float32: 2.0 ** 100, np.float64: 2.0 ** 500}


def logits(dtype):
    return hnp.arrays(dtype, hnp.array_shapes(min_dims=2, max_dims=2, max_side=6),
                      elements=st.floats(-LIMIT[dtype], LIMIT[dtype], allow_nan=False,
                                         width=32 if dtype == np.float32 else 64))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@FEW
@given(data=st.data())
def test_softmax_rows_are_finite_and_sum_to_one_for_extreme_logits(dtype, data):
    Z = data.draw(logits(dtype))
    A = np.empty_like(Z)
    output_activation(Z, A, km.CROSS_ENTROPY)
    assert np.isfinite(A).all() and (A >= 0).all() and (A <= 1).all()
    np.testing.assert_allclose(A.sum(axis=1), 1.0, rtol=1e-5 if dtype == np.float32 else 1e-12)
    # the largest logit of each row gets the largest probability
    rows = np.arange(Z.shape[0])
    assert (A[rows, Z.argmax(axis=1)] == A.max(axis=1)).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@FEW
@given(data=st.data())
def test_sigmoid_outputs_are_finite_probabilities_for_extreme_logits(dtype, data):
    Z = data.draw(logits(dtype))
    A = np.empty_like(Z)
    output_activation(Z, A, km.BINARY_CROSS_ENTROPY)
    assert np.isfinite(A).all() and (A >= 0).all() and (A <= 1).all()
    assert (A[Z > 40] == 1).all() and (A[Z < -800] == 0).all()
    np.testing.assert_array_equal(A[Z == 0], 0.5)


def _reference_row_losses(Z, Y, loss):
    Z = Z.astype(np.float64)
    if loss == km.CROSS_ENTROPY:
        return -(Y * (Z - logsumexp(Z, axis=1, keepdims=True))).sum(axis=1)
    # BCE with logits, softplus(z) - y z, per row mean over outputs
    return (np.logaddexp(0.0, Z) - Y * Z).mean(axis=1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss", [km.CROSS_ENTROPY, km.BINARY_CROSS_ENTROPY])
@FEW
@given(data=st.data())
def test_log_sum_exp_and_bce_with_logits_losses_are_finite_and_exact(dtype, loss, data):
    Z = data.draw(logits(dtype))
    n, k = Z.shape
    labels = data.draw(hnp.arrays(np.int64, n, elements=st.integers(0, k - 1)))
    if loss == km.CROSS_ENTROPY:
        Y = np.zeros((n, k), dtype=dtype)
        Y[np.arange(n), labels] = 1
    else:
        Y = data.draw(hnp.arrays(np.int64, (n, k), elements=st.integers(0, 1))).astype(dtype)
    w = np.ones(n)
    total = cpu.loss_sum(Z, Y, w, loss)
    expected = _reference_row_losses(Z, Y, loss).sum()
    assert np.isfinite(total) and total >= 0
    scale = max(1.0, float(np.abs(Z.astype(np.float64)).max()))
    eps = 1e-6 if dtype == np.float32 else 1e-9
    assert abs(total - expected) <= eps * (scale * n + abs(expected))


def _model(sizes, activation, loss, dtype, seed):
    return fastbp.MLP(sizes, activation=activation, loss=loss, dtype=dtype, device="cpu",
                      seed=seed)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@FEW
@given(log_scale=st.floats(-8, 6), activation=st.sampled_from(ACTIVATIONS),
       loss=st.sampled_from(["cross_entropy", "binary_cross_entropy"]),
       seed=st.integers(0, 2 ** 16))
def test_probabilities_loss_and_grads_stay_finite_with_huge_or_tiny_weights(
        dtype, log_scale, activation, loss, seed):
    rng = np.random.default_rng(seed)
    net = _model([5, 8, 3], activation, loss, dtype, seed)
    net.set_weights([w * 10.0 ** log_scale + 10.0 ** log_scale * (w.ndim == 1)
                     for w in net.get_weights()])
    X = rng.normal(size=(17, 5))
    P = net.predict_proba(X)
    assert np.isfinite(P).all() and (P >= 0).all() and (P <= 1).all()
    if loss == "cross_entropy":
        np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-5)
        y = rng.integers(0, 3, 17)
    else:
        y = rng.integers(0, 2, (17, 3))
    res = net.evaluate(X, y)
    assert np.isfinite(res["loss"]) and res["loss"] >= 0
    value, grads = net.loss_and_grads(X, y)
    assert np.isfinite(value) and all(np.isfinite(g).all() for g in grads)


@st.composite
def networks(draw):
    n_hidden = draw(st.integers(0, 2))
    sizes = [draw(st.integers(1, 6))] + [draw(st.integers(1, 8)) for _ in range(n_hidden)]
    loss = draw(st.sampled_from(LOSSES))
    sizes.append(draw(st.integers(2 if loss == "cross_entropy" else 1, 4)))
    activation = [draw(st.sampled_from(ACTIVATIONS)) for _ in range(n_hidden)]
    return sizes, activation, loss, draw(st.integers(1, 40)), draw(st.integers(0, 2 ** 16))


@FEW
@given(net_spec=networks())
def test_random_networks_match_the_numpy_reference(net_spec):
    sizes, activation, loss, n, seed = net_spec
    rng = np.random.default_rng(seed)
    net = _model(sizes, activation, loss, "float64", seed)
    weights = [rng.normal(0, 0.7, w.shape) for w in net.get_weights()]
    net.set_weights(weights)
    X = rng.normal(size=(n, sizes[0]))
    k = sizes[-1]
    y = Y = targets_for(loss, rng, n, k)
    if loss == "cross_entropy":
        y = rng.integers(0, k, n)
        Y = reference.one_hot(y, k)
    expected = reference.predict_proba(weights, X, activation, loss)
    got = net.predict_proba(X) if net.is_classifier else net.predict(X).reshape(n, k)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(net.decision_function(X),
                               reference.forward(weights, X, activation, loss)[0][-1],
                               rtol=1e-9, atol=1e-12)
    value, grads = net.loss_and_grads(X, y)
    ref_value, ref_grads = reference.loss_and_grads(weights, X, Y, activation, loss)
    assert value == pytest.approx(ref_value, rel=1e-9, abs=1e-12)
    assert reference.relative_error(grads, ref_grads) < 1e-7
