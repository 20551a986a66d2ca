"""Bad input gets a clear error before any compiled code runs, and a fitted model loses
nothing; what users expect to work (lists, ints, views, memmaps...) works."""
import re

import numpy as np
import pytest

import fastbp
from fastbp import ConfigError, DataError, DataTypeError
from fastbp.optimizers import OPTIMIZERS

N, N_IN, N_OUT = 24, 4, 3


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(N, N_IN)), np.arange(N) % N_OUT


@pytest.fixture(scope="module")
def fitted():
    """A fitted float64 classifier with Adam state, shared by the table (never changed)."""
    X, y = _data()
    net = fastbp.MLP([N_IN, 5, N_OUT], dtype="float64", device="cpu", seed=1)
    net.fit(X, y, epochs=2, batch_size=8)
    return net


def _state(net):
    return dict(weights=net.get_weights(), opt_state=None if net._opt_state is None
                else net._opt_state.copy(), step=net._step, history=net.history,
                losses=list(net.history.history["loss"]), optimizer=net.optimizer,
                trainable=net.trainable, rng=net._rng.bit_generator.state)


def _assert_unchanged(net, before):
    after = _state(net)
    for a, b in zip(before["weights"], after["weights"]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(before["opt_state"], after["opt_state"])
    assert after["step"] == before["step"]
    assert after["history"] is before["history"]
    assert after["losses"] == list(net.history.history["loss"]) == before["losses"]
    assert after["optimizer"] is before["optimizer"]
    np.testing.assert_array_equal(before["trainable"], after["trainable"])
    assert after["rng"] == before["rng"]          # the next fit shuffles the same way


X0, Y0 = _data()


def _with(a, idx, value):
    a = np.array(a, dtype=np.float64)
    a[idx] = value
    return a


def _weights(net, i, value):
    w = net.get_weights()
    w[i] = value
    return w


def _onehot(width, rows=N):
    Y = np.zeros((rows, width))
    Y[np.arange(rows), np.arange(rows) % width] = 1
    return Y


def _mlp(**kw):
    kw.setdefault("device", "cpu")
    return lambda net: fastbp.MLP(kw.pop("sizes", [N_IN, 5, N_OUT]), **kw)


# (id, call on the fitted model, exception type, message regex)
BAD = [
    # -- shapes and feature counts
    ("X 1-D", lambda m: m.fit(X0[0], Y0), DataError, r"X must be 2-D .*reshape"),
    ("X 3-D", lambda m: m.predict(X0[None]), DataError, r"X must be 2-D .*\(1, 24, 4\)"),
    ("X scalar", lambda m: m.predict_proba(3.0), DataError, r"X must be 2-D"),
    ("X feature count", lambda m: m.predict(X0[:, :3]), DataError,
     r"X has 3 features, but the model expects 4"),
    ("X ragged list", lambda m: m.predict([[1, 2, 3, 4], [1]]), DataError,
     r"X could not be read as an array.*rectangular"),
    ("X/y length", lambda m: m.fit(X0, Y0[:-1]), DataError,
     r"y has 23 rows but X has 24.*same number of samples"),
    ("X empty", lambda m: m.fit(X0[:0], Y0[:0]), DataError, r"X is empty \(0 samples\)"),
    ("X no features", lambda m: m.predict(np.zeros((3, 0))), DataError, r"X has 0 features"),
    ("transform features", lambda m: m.transform(X0[:, :2]), DataError, r"expects 4"),
    ("decision_function 1-D", lambda m: m.decision_function(X0[:, 0]), DataError, r"2-D"),
    ("partial_fit features", lambda m: m.partial_fit(X0[:, :3], Y0), DataError, r"expects 4"),
    ("X_val features", lambda m: m.fit(X0, Y0, validation_data=(X0[:, :2], Y0)), DataError,
     r"X_val has 2 features"),
    # -- non-finite values
    ("NaN in X", lambda m: m.fit(_with(X0, (3, 1), np.nan), Y0), DataError,
     r"X contains 1 NaN or infinite"),
    ("inf in X predict", lambda m: m.predict(_with(X0, (0, 0), np.inf)), DataError,
     r"X contains 1 NaN or infinite"),
    ("NaN in X loss_and_grads", lambda m: m.loss_and_grads(_with(X0, (0, 0), np.nan), Y0),
     DataError, r"NaN or infinite"),
    ("NaN in y ids", lambda m: m.fit(X0, _with(Y0, 2, np.nan)), DataError,
     r"y contains 1 NaN"),
    ("inf in one-hot y", lambda m: m.evaluate(X0, _with(_onehot(3), (0, 0), np.inf)),
     DataError, r"y contains 1 NaN or infinite"),
    ("NaN in sample_weight", lambda m: m.fit(X0, Y0, sample_weight=_with(np.ones(N), 0,
                                                                         np.nan)),
     DataError, r"sample_weight contains 1 NaN"),
    # -- dtypes
    ("object X", lambda m: m.fit(np.array([[1, "a", None, 2]] * N, dtype=object), Y0),
     DataTypeError, r"X has object dtype.*astype\(float\)"),
    ("string X", lambda m: m.predict(np.array([["1"] * 4])), DataTypeError,
     r"X has string dtype"),
    ("complex X", lambda m: m.predict(X0 + 1j), DataTypeError, r"X has complex dtype"),
    ("None X", lambda m: m.predict(None), DataTypeError, r"X has object dtype"),
    ("string y", lambda m: m.fit(X0, np.array(["cat"] * N)), DataTypeError,
     r"y has string dtype"),
    ("complex y", lambda m: m.evaluate(X0, Y0 + 0j), DataTypeError, r"y has complex dtype"),
    # -- labels and targets
    ("class id too large", lambda m: m.fit(X0, np.where(Y0 == 2, 3, Y0)), DataError,
     r"class ids in \[0, 3\] but the model has 3 outputs \(valid ids 0\.\.2\)"),
    ("negative class id", lambda m: m.evaluate(X0, np.where(Y0 == 0, -1, Y0)), DataError,
     r"class ids in \[-1, 2\]"),
    ("non-integer class ids", lambda m: m.fit(X0, Y0 + 0.5), DataError,
     r"integer class ids 0\.\.2"),
    ("huge class id", lambda m: m.loss_and_grads(X0, np.where(Y0 == 0, 10 ** 12, Y0)),
     DataError, r"valid ids 0\.\.2"),
    ("one-hot width", lambda m: m.fit(X0, _onehot(4)), DataError,
     r"y one-hot width is 4 but the model has 3 outputs"),
    ("ids as a column", lambda m: m.fit(X0, Y0[:, None]), DataError,
     r"one-hot width is 1.*1-D array"),
    ("one-hot rows sum", lambda m: m.fit(X0, 2 * _onehot(3)), DataError, r"summing to 1"),
    ("y_val class id", lambda m: m.fit(X0, Y0, validation_data=(X0, Y0 + 5)), DataError,
     r"y_val holds class ids"),
    ("BCE targets not 0/1", lambda m: _mlp(loss="binary_cross_entropy", sizes=[4, 3, 2])(m)
     .fit(X0, np.full((N, 2), 0.5)), DataError, r"binary_cross_entropy must contain only 0 and 1"),
    ("BCE column count", lambda m: _mlp(loss="binary_cross_entropy", sizes=[4, 3, 2])(m)
     .fit(X0, Y0 % 2), DataError, r"number of target columns is 1 but the model has 2"),
    ("regression columns", lambda m: _mlp(loss="mse", sizes=[4, 3, 1])(m)
     .fit(X0, np.zeros((N, 2))), DataError, r"number of target columns is 2"),
    ("sample_weight length", lambda m: m.fit(X0, Y0, sample_weight=np.ones(N - 1)),
     DataError, r"one weight per sample \(24\)"),
    ("negative sample_weight", lambda m: m.evaluate(X0, Y0, sample_weight=-np.ones(N)),
     DataError, r"sample_weight must be non-negative"),
    ("class_weight key", lambda m: m.fit(X0, Y0, class_weight={7: 2.0}), ConfigError,
     r"class_weight key 7 is not a class id in 0\.\.2"),
    # -- hyperparameters
    ("lr zero", lambda m: m.fit(X0, Y0, lr=0), ConfigError, r"lr must be a positive"),
    ("lr negative", lambda m: m.partial_fit(X0, Y0, lr=-0.1), ConfigError,
     r"lr must be a positive"),
    ("lr nan", lambda m: m.fit(X0, Y0, lr=float("nan")), ConfigError, r"lr must be a number"),
    ("lr string", lambda m: m.fit(X0, Y0, lr="fast"), ConfigError, r"lr must be a number"),
    ("batch_size zero", lambda m: m.fit(X0, Y0, batch_size=0), ConfigError,
     r"batch_size must be a positive integer"),
    ("batch_size float", lambda m: m.partial_fit(X0, Y0, batch_size=8.5), ConfigError,
     r"batch_size must be a positive integer"),
    ("epochs zero", lambda m: m.fit(X0, Y0, epochs=0), ConfigError,
     r"epochs must be a positive integer"),
    ("epochs negative", lambda m: m.fit(X0, Y0, epochs=-3), ConfigError, r"epochs"),
    ("dropout 1", _mlp(dropout=1.0), ConfigError, r"dropout rates must be numbers in \[0, 1\)"),
    ("dropout negative", _mlp(dropout=[-0.1]), ConfigError, r"dropout rates .*\[0, 1\)"),
    ("dropout count", _mlp(dropout=[0.1, 0.2]), ConfigError, r"dropout lists 2 rates"),
    ("unknown activation", _mlp(activation="relu6"), ConfigError,
     r"unknown activation 'relu6'; choose one of \['elu', 'gelu', 'identity'"),
    ("activation not a name", _mlp(activation=None), ConfigError,
     r"activation must be a name .*'tanh'"),
    ("unknown loss", _mlp(loss="hinge"), ConfigError,
     r"unknown loss 'hinge'; choose one of \['binary_cross_entropy', 'cross_entropy'"),
    ("unknown optimizer", lambda m: m.fit(X0, Y0, optimizer="adamx"), ConfigError,
     re.escape(f"unknown optimizer 'adamx'; choose one of {sorted(OPTIMIZERS)}")),
    ("optimizer type", lambda m: m.fit(X0, Y0, optimizer=3), ConfigError,
     r"optimizer must be a name"),
    ("unknown init", _mlp(init="zeros"), ConfigError, r"unknown init 'zeros'; choose one of"),
    ("unknown device", _mlp(device="gpu"), ConfigError,
     r"unknown device 'gpu'; choose one of \['auto', 'cpu', 'cuda'\]"),
    ("bad dtype", _mlp(dtype="float16"), ConfigError, r"dtype must be 'float32' or 'float64'"),
    ("bad sizes", _mlp(sizes=[4, 0, 3]), ConfigError, r"positive int"),
    ("negative seed", _mlp(seed=-1), ConfigError, r"seed must be a non-negative int"),
    ("validation_split 1", lambda m: m.fit(X0, Y0, validation_split=1.0), ConfigError,
     r"validation_split must be in \[0, 1\)"),
    ("clip_norm zero", lambda m: m.fit(X0, Y0, clip_norm=0), ConfigError,
     r"clip_norm must be positive"),
    ("verbose 3", lambda m: m.fit(X0, Y0, verbose=3), ConfigError, r"verbose must be"),
    ("callbacks not a list", lambda m: m.fit(X0, Y0, callbacks=fastbp.callbacks.History()),
     ConfigError, r"wrap the single callback in a list"),
    ("Adam betas", lambda m: m.fit(X0, Y0, optimizer=fastbp.Adam(betas=(1.0, 0.9))),
     ConfigError, r"betas\[0\] must be in \[0, 1\)"),
    ("SGD nesterov", lambda m: fastbp.SGD(nesterov=True), ConfigError,
     r"nesterov=True requires momentum > 0"),
    ("RMSprop eps", lambda m: fastbp.RMSprop(eps="tiny"), ConfigError, r"eps must be a number"),
    # -- set_weights and outputs
    ("set_weights count", lambda m: m.set_weights(m.get_weights()[:2]), DataError,
     r"set_weights needs 4 arrays"),
    ("set_weights shape", lambda m: m.set_weights(_weights(m, 0, np.zeros((5, 4)))), DataError,
     r"W1 has shape \(5, 4\), expected \(4, 5\)"),
    ("set_weights bias shape", lambda m: m.set_weights(_weights(m, 3, np.zeros((3, 1)))),
     DataError, r"b2 has shape \(3, 1\), expected \(3,\)"),
    ("set_weights dtype", lambda m: m.set_weights(_weights(m, 1, np.array(["a"] * 5))),
     DataTypeError, r"b1 has dtype <U1; a real numeric array"),
    ("set_weights NaN", lambda m: m.set_weights(_weights(m, 2, np.full((5, 3), np.nan))),
     DataError, r"W2 contains NaN"),
    ("set_weights not a list", lambda m: m.set_weights(5), DataTypeError,
     r"list of arrays \[W1, b1"),
    ("set_weights float32 overflow", lambda m: fastbp.MLP([4, 5, 3], device="cpu")
     .set_weights(_weights(m, 0, np.full((4, 5), 1e300))), DataError, r"overflow float32"),
    ("predict_proba regression", lambda m: _mlp(loss="mse", sizes=[4, 1])(m).predict_proba(X0),
     ConfigError, r"predict_proba needs a classification loss"),
    ("predict out dtype", lambda m: m.predict(X0, out=np.empty(N)), DataError,
     r"out for predict must be a writeable C-contiguous int64"),
    ("transform layer", lambda m: m.transform(X0, layer=5), ConfigError,
     r"layer index 5 is out of range for 2 dense layers"),
    ("freeze a float", lambda m: _mlp()(m).freeze(1.5), ConfigError,
     r"layers must be a layer index or a list"),
    ("freeze everything", lambda m: _mlp()(m).freeze([0, 1]).fit(X0, Y0), ConfigError,
     r"every layer is frozen"),
]


@pytest.mark.parametrize("call, exc, match", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_raises_a_clear_error_and_changes_nothing(fitted, call, exc, match):
    before = _state(fitted)
    with pytest.raises(exc, match=match):
        call(fitted)
    _assert_unchanged(fitted, before)


def test_the_table_is_large_enough():
    assert len(BAD) >= 30


def test_errors_are_value_or_type_errors():
    assert issubclass(ConfigError, ValueError) and issubclass(DataError, ValueError)
    assert issubclass(DataTypeError, TypeError)
    assert issubclass(fastbp.ModelFileError, ValueError)


def _failing_calls(bad_file):
    return [
        lambda m: m.fit(X0, Y0 + 9),
        lambda m: m.fit(X0, Y0, validation_data=(X0, Y0[:3])),
        lambda m: m.partial_fit(_with(X0, (1, 1), np.inf), Y0),
        lambda m: m.partial_fit(X0, Y0, optimizer="nope"),
        lambda m: m.set_weights(m.get_weights()[:-1] + [np.full(3, np.nan)]),
        lambda m: m.set_weights([np.zeros((4, 5))] * 4),
        lambda m: fastbp.load(bad_file),
    ]


def test_failing_calls_keep_a_fitted_model_and_its_next_step(tmp_path):
    """fit, fail in every way, then partial_fit: identical to never having failed."""
    bad_file = tmp_path / "bad.npz"
    bad_file.write_bytes(b"PK\x03\x04 truncated")
    ref, twin = (fastbp.MLP([N_IN, 5, N_OUT], dtype="float64", device="cpu", seed=1)
                 for _ in range(2))
    for net in (ref, twin):
        net.fit(X0, Y0, epochs=2, batch_size=8)
    before = _state(twin)
    for call in _failing_calls(bad_file):
        with pytest.raises((ValueError, TypeError)):
            call(twin)
        _assert_unchanged(twin, before)
    for net in (ref, twin):
        net.partial_fit(X0, Y0, batch_size=8)
    for a, b in zip(ref.get_weights(), twin.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ref._opt_state, twin._opt_state)
    assert ref._step == twin._step


# ------------------------------------------------------------------ accepted inputs

@pytest.fixture(scope="module")
def net32():
    return fastbp.MLP([N_IN, 6, N_OUT], device="cpu", seed=3)


def _read_only(a):
    a = np.array(a)
    a.flags.writeable = False
    return a


def _unaligned(a):
    a = np.asarray(a, dtype=np.float64)
    raw = np.zeros(a.nbytes + 1, dtype=np.uint8)[1:]
    out = raw.view(np.float64).reshape(a.shape)
    out[:] = a
    return out


ACCEPTED = {
    "list": lambda X: X.tolist(),
    "int": lambda X: np.round(X * 3).astype(np.int32),
    "bool": lambda X: X > 0,
    "float32": lambda X: X.astype(np.float32),
    "fortran": np.asfortranarray,
    "strided": lambda X: np.repeat(X, 2, axis=1)[:, ::2],
    "reversed rows": lambda X: X[::-1][::-1],
    "read-only": _read_only,
    "big-endian": lambda X: X.astype(">f8"),
    "unaligned": _unaligned,
}


@pytest.mark.parametrize("kind", list(ACCEPTED))
def test_accepted_inputs_give_the_canonical_result_and_are_not_mutated(net32, kind):
    X = X0.copy()
    if kind in ("int", "bool"):
        X = np.round(X0 * 3)
    Xin = ACCEPTED[kind](X)
    snapshot = np.array(Xin, copy=True)
    canonical = np.ascontiguousarray(np.asarray(Xin, dtype=np.float64))
    np.testing.assert_allclose(net32.predict_proba(Xin), net32.predict_proba(canonical),
                               rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(Xin), snapshot)


def test_memmap_read_only_and_caller_arrays_are_never_mutated(tmp_path):
    X, y = _data()
    path = tmp_path / "X.dat"
    mm = np.memmap(path, dtype=np.float64, mode="w+", shape=X.shape)
    mm[:] = X
    mm.flush()
    Xm = np.memmap(path, dtype=np.float64, mode="r", shape=X.shape)
    y_ro = _read_only(y)
    w = _read_only(np.linspace(0.5, 1.5, N))
    net = fastbp.MLP([N_IN, 5, N_OUT], dtype="float64", device="cpu", seed=0)
    twin = fastbp.MLP([N_IN, 5, N_OUT], dtype="float64", device="cpu", seed=0)
    net.fit(Xm, y_ro, epochs=2, batch_size=7, sample_weight=w, validation_split=0.25)
    twin.fit(X.copy(), y.copy(), epochs=2, batch_size=7, sample_weight=np.array(w),
             validation_split=0.25)
    for a, b in zip(net.get_weights(), twin.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.asarray(Xm), X)
    np.testing.assert_array_equal(y_ro, y)
    assert net.evaluate(Xm, y_ro)["loss"] == twin.evaluate(X, y)["loss"]
    net.loss_and_grads(Xm, y_ro)
    np.testing.assert_array_equal(np.asarray(Xm), X)


def test_single_row_single_feature_and_lists():
    net = fastbp.MLP([1, 4, 2], dtype="float64", device="cpu", seed=0)
    X = [[0.5], [-1.0], [2.0]]
    net.fit(X, [0, 1, 1], epochs=2, batch_size=2)
    assert net.predict([[0.3]]).shape == (1,)
    assert net.predict(np.array([0.3, 0.1])).shape == (2,)     # 1-D X with one feature
    assert net.predict_proba([[0.3]]).shape == (1, 2)
    one = fastbp.MLP([3, 1], loss="mse", dtype="float64", device="cpu")
    one.fit([[1, 2, 3]], [0.5], epochs=1)                       # one row, int list X
    loss, grads = one.loss_and_grads([[1, 2, 3]], [0.5])
    assert np.isfinite(loss) and all(np.isfinite(g).all() for g in grads)
    assert one.evaluate([[1, 2, 3]], [[0.5]])["loss"] >= 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_finite_check_finds_every_bad_value(dtype):
    """kernels.finite.all_finite (a vectorised sum of x * 0): one NaN, +inf or -inf at any
    position, the vector loop's or its remainder's, is found; extreme finite values (the
    largest, the smallest subnormal, -0.0) are not mistaken for one."""
    from fastbp.kernels.finite import all_finite
    info = np.finfo(dtype)
    a = np.tile(np.array([info.max, -info.max, info.smallest_subnormal, -0.0, 1.5],
                         dtype=dtype), 11)[:53]
    assert all_finite(a)
    for bad in (np.nan, np.inf, -np.inf):
        for i in range(a.shape[0]):
            b = a.copy()
            b[i] = bad
            assert not all_finite(b), (bad, i)


def test_finite_check_survives_an_overflowing_sum():
    """Huge but finite float32 values, whose plain sum overflows to inf, are accepted,
    while one inf among them is reported."""
    from fastbp.validation import check_X
    X = np.full((50, 3), 3e37, dtype=np.float32)
    with np.errstate(over="ignore"):
        assert np.isinf(X.sum())
    assert check_X(X, np.float32) is not None
    X[7, 1] = np.inf
    with pytest.raises(DataError, match="1 NaN or infinite"):
        check_X(X, np.float32)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_nan_deep_in_a_large_predict_is_found_and_out_is_untouched(loss):
    """Inference checks X for NaN/inf tile by tile inside the compiled pass: a bad value in
    a late tile of a multi-block input is reported like any other, and a caller's ``out``
    keeps its contents (its X is checked before anything is written)."""
    from fastbp.engines.cpu import predict_block_rows
    net = fastbp.MLP([3, 8, 2], loss=loss, dtype="float32", device="cpu", seed=0)
    n = predict_block_rows(net.layout, net.dtype) + 1000
    X = np.random.default_rng(0).normal(size=(n, 3)).astype(np.float32)
    X[n - 7, 2] = np.nan
    predict = net.predict_proba if loss == "cross_entropy" else net.predict
    with pytest.raises(DataError, match="X contains 1 NaN or infinite"):
        predict(X)
    out = np.full((n, 2), 7.0, dtype=np.float32)
    with pytest.raises(DataError, match="X contains 1 NaN or infinite"):
        predict(X, out=out)
    assert np.all(out == 7.0)
    X[n - 7, 2] = 0.5
    assert np.isfinite(predict(X)).all()
