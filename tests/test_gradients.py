"""Gradients of ``MLP.loss_and_grads`` against central finite differences (float64) and
against the NumPy reference, for every hidden activation and every loss."""
import itertools

import numpy as np
import pytest

import fastbp
import reference as ref
from fastbp import registry
from targets import targets_for

ACTIVATIONS = sorted(registry.ACTIVATIONS)
LOSSES = sorted(registry.LOSSES)
HIDDEN_WIDTHS = [5, 4, 6, 3]
N_IN, N_OUT, N_ROWS = 4, 3, 6

# Every (activation, loss) pair; the depth cycles 1..4 over the cases so that each depth,
# and several depths per activation and per loss, are covered without the full product.
CASES = [(act, loss, 1 + i % 4)
         for i, (act, loss) in enumerate(itertools.product(ACTIVATIONS, LOSSES))]

FD_STEP = 1e-6
FD_RTOL = 1e-6
# Pre-activations (and MAE/Huber residuals) are kept this far from a kink so that a step of
# FD_STEP can never cross one.
KINK_MARGIN = 1e-3


def _flat(weights):
    return np.concatenate([np.ravel(w) for w in weights])


def _unflat(flat, like):
    out, o = [], 0
    for w in like:
        out.append(flat[o:o + w.size].reshape(w.shape))
        o += w.size
    return out


def _target_matrix(loss, y, k):
    return ref.one_hot(y, k) if loss == "cross_entropy" else np.asarray(y, dtype=np.float64)


def _kink_distance(activation, loss, weights, X, Y):
    """Smallest distance of any pre-activation/residual to a kink of this problem."""
    Zs, _ = ref.forward(weights, X, activation, loss)
    dist = np.inf
    if activation in ("relu", "leaky_relu", "elu"):
        for Z in Zs[:-1]:
            dist = min(dist, np.abs(Z).min())
    if loss == "mae":
        dist = min(dist, np.abs(Zs[-1] - Y).min())
    if loss == "huber":
        dist = min(dist, np.abs(np.abs(Zs[-1] - Y) - ref.HUBER_DELTA).min())
    return dist


def make_problem(activation, loss, depth, dtype="float64", seed=0):
    """A small model with random biases, data and targets away from every kink."""
    sizes = [N_IN] + HIDDEN_WIDTHS[:depth] + [N_OUT]
    for attempt in range(100):
        rng = np.random.default_rng([seed, attempt])
        net = fastbp.MLP(sizes, activation=activation, loss=loss, dtype=dtype,
                         seed=seed + attempt, device="cpu")
        weights = net.get_weights()
        for i in range(1, len(weights), 2):
            weights[i] = rng.normal(0.0, 0.3, size=weights[i].shape)
        net.set_weights(weights)
        X = rng.normal(size=(N_ROWS, N_IN))
        y = targets_for(loss, rng, N_ROWS, N_OUT)
        if _kink_distance(activation, loss, weights, X, _target_matrix(loss, y, N_OUT)) \
                > KINK_MARGIN:
            return net, X, y
    raise AssertionError("could not draw a problem away from the kinks")


def finite_difference_grads(net, X, y, step=FD_STEP):
    base = net.get_weights()
    flat = _flat(base)
    fd = np.empty_like(flat)
    for i in range(flat.size):
        hi, lo = flat.copy(), flat.copy()
        hi[i] += step
        lo[i] -= step
        net.set_weights(_unflat(hi, base))
        f_hi, _ = net.loss_and_grads(X, y)
        net.set_weights(_unflat(lo, base))
        f_lo, _ = net.loss_and_grads(X, y)
        fd[i] = (f_hi - f_lo) / (2 * step)
    net.set_weights(base)
    return _unflat(fd, base)


@pytest.mark.parametrize("activation,loss,depth", CASES,
                         ids=[f"{a}-{l}-d{d}" for a, l, d in CASES])
def test_grads_match_finite_differences(activation, loss, depth):
    net, X, y = make_problem(activation, loss, depth)
    before = net.get_weights()
    value, grads = net.loss_and_grads(X, y)
    assert isinstance(value, float) and np.isfinite(value)
    assert len(grads) == 2 * (depth + 1)
    for g, w in zip(grads, before):
        assert g.shape == w.shape and g.dtype == np.float64
    # No update happened.
    for w0, w1 in zip(before, net.get_weights()):
        np.testing.assert_array_equal(w0, w1)

    fd = finite_difference_grads(net, X, y)
    err = ref.relative_error(_flat(grads), _flat(fd))
    assert err <= FD_RTOL, f"relative error {err:.3g} vs central differences"
    # Every layer's gradient, not just the total, is right.
    for l, (g, f) in enumerate(zip(grads, fd)):
        scale = max(np.linalg.norm(_flat(fd)), 1e-12)
        assert np.linalg.norm(g - f) / scale <= FD_RTOL, f"array {l}"


@pytest.mark.parametrize("activation,loss,depth", CASES,
                         ids=[f"{a}-{l}-d{d}" for a, l, d in CASES])
def test_loss_and_grads_match_reference(activation, loss, depth):
    net, X, y = make_problem(activation, loss, depth, seed=7)
    value, grads = net.loss_and_grads(X, y)
    ref_value, ref_grads = ref.loss_and_grads(net.get_weights(), X,
                                              _target_matrix(loss, y, N_OUT), activation, loss)
    assert value == pytest.approx(ref_value, rel=1e-12, abs=1e-14)
    assert ref.relative_error(grads, ref_grads) <= 1e-10


def test_reference_itself_matches_finite_differences():
    """The reference's chain rule agrees with differencing its own loss."""
    rng = np.random.default_rng(3)
    sizes = [3, 4, 5, 2]
    weights = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        weights += [rng.normal(size=(a, b)) * 0.7, rng.normal(size=b) * 0.3]
    X = rng.normal(size=(5, 3))
    Y = ref.one_hot([0, 1, 1, 0, 1], 2)
    acts = ["gelu", "tanh"]
    _, grads = ref.loss_and_grads(weights, X, Y, acts, "cross_entropy")
    flat = _flat(weights)
    fd = np.empty_like(flat)
    for i in range(flat.size):
        hi, lo = flat.copy(), flat.copy()
        hi[i] += 1e-6
        lo[i] -= 1e-6
        fd[i] = (ref.loss_value("cross_entropy", ref.forward(_unflat(hi, weights), X, acts,
                                                             "cross_entropy")[0][-1], Y)
                 - ref.loss_value("cross_entropy", ref.forward(_unflat(lo, weights), X, acts,
                                                               "cross_entropy")[0][-1], Y))
        fd[i] /= 2e-6
    assert ref.relative_error(_flat(grads), fd) <= 1e-7


def test_mixed_activations_per_layer_match_reference():
    acts = ["relu", "gelu", "sigmoid", "elu"]
    net = fastbp.MLP([4, 5, 4, 6, 3, 2], activation=acts, loss="mse", dtype="float64",
                     device="cpu", seed=1)
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(9, 4)), rng.normal(size=(9, 2))
    value, grads = net.loss_and_grads(X, Y)
    ref_value, ref_grads = ref.loss_and_grads(net.get_weights(), X, Y, acts, "mse")
    assert value == pytest.approx(ref_value, rel=1e-12)
    assert ref.relative_error(grads, ref_grads) <= 1e-10


def test_soft_cross_entropy_targets_match_reference():
    """Probability rows (not one-hot) as cross-entropy targets."""
    net = fastbp.MLP([4, 6, 3], activation="tanh", loss="cross_entropy", dtype="float64",
                     device="cpu", seed=2)
    rng = np.random.default_rng(2)
    X = rng.normal(size=(7, 4))
    P = rng.random((7, 3))
    P /= P.sum(axis=1, keepdims=True)
    value, grads = net.loss_and_grads(X, P)
    ref_value, ref_grads = ref.loss_and_grads(net.get_weights(), X, P, "tanh", "cross_entropy")
    assert value == pytest.approx(ref_value, rel=1e-12)
    assert ref.relative_error(grads, ref_grads) <= 1e-10


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_many_rows_over_several_blocks_match_reference(loss):
    """More rows than one inference block: the mean is over all rows, not per block."""
    n = 600
    net = fastbp.MLP([5, 8, 3], activation="tanh", loss=loss, dtype="float64", device="cpu",
                     seed=4)
    rng = np.random.default_rng(4)
    X = rng.normal(size=(n, 5))
    y = rng.integers(0, 3, n) if loss == "cross_entropy" else targets_for(loss, rng, n, 3)
    value, grads = net.loss_and_grads(X, y)
    ref_value, ref_grads = ref.loss_and_grads(net.get_weights(), X, _target_matrix(loss, y, 3),
                                              "tanh", loss)
    assert value == pytest.approx(ref_value, rel=1e-11)
    assert ref.relative_error(grads, ref_grads) <= 1e-10


@pytest.mark.parametrize("loss", LOSSES)
def test_float32_loss_and_grads_match_reference(loss):
    net = fastbp.MLP([4, 6, 5, 3], activation="tanh", loss=loss, dtype="float32",
                     device="cpu", seed=5)
    rng = np.random.default_rng(5)
    X = rng.normal(size=(10, 4)).astype(np.float32)
    y = targets_for(loss, rng, 10, 3)
    value, grads = net.loss_and_grads(X, y)
    assert all(g.dtype == np.float32 for g in grads)
    Y = _target_matrix(loss, y, 3).astype(np.float32)
    ref_value, ref_grads = ref.loss_and_grads(net.get_weights(), X, Y, "tanh", loss)
    assert value == pytest.approx(ref_value, rel=1e-5)
    assert ref.relative_error(grads, ref_grads) <= 1e-4
