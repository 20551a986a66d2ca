"""scikit-learn compatibility of fastbp.sklearn.MLPClassifier / MLPRegressor."""
import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import make_blobs, make_regression
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from fastbp.sklearn import MLPClassifier, MLPRegressor

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

# Small networks and few epochs keep the ~100 checks fast; the learning checks
# (accuracy > 0.83 on blobs, R^2 > 0.5) still pass at these settings.
SMALL = dict(hidden_layer_sizes=(16,), max_iter=40, batch_size=32, learning_rate_init=0.01,
             random_state=0)


def _stochastic_xfails(estimator):
    # scikit-learn runs these two checks with lbfgs too (a mini-batch step on a row of
    # weight 2 is not two steps on the row repeated); the lbfgs instances below pass them.
    reason = "mini-batch training: weighting a row is not repeating it"
    return {"check_sample_weight_equivalence_on_dense_data": reason,
            "check_sample_weight_equivalence_on_sparse_data": reason}


@parametrize_with_checks([MLPClassifier(**SMALL), MLPRegressor(**SMALL)],
                         expected_failed_checks=_stochastic_xfails)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@parametrize_with_checks([MLPClassifier(solver="lbfgs", hidden_layer_sizes=(8,), max_iter=60,
                                        random_state=0),
                          MLPRegressor(solver="lbfgs", hidden_layer_sizes=(8,), max_iter=60,
                                       random_state=0)])
def test_sklearn_estimator_checks_lbfgs(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(n_samples=240, centers=3, n_features=5, random_state=0)
    return StandardScaler().fit_transform(X), y


def test_string_labels_proba_score_and_attributes(blobs):
    X, y = blobs
    labels = np.array(["cat", "dog", "emu"])[y]
    clf = MLPClassifier(**SMALL).fit(X, labels)
    assert list(clf.classes_) == ["cat", "dog", "emu"]
    assert clf.n_features_in_ == 5
    proba = clf.predict_proba(X)
    assert proba.shape == (240, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    pred = clf.predict(X)
    assert pred.dtype == labels.dtype and set(pred) <= set(labels)
    assert clf.score(X, labels) > 0.9
    assert len(clf.loss_curve_) == clf.n_iter_ >= 1
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]
    assert [w.shape for w in clf.coefs_] == [(5, 16), (16, 3)]


def test_binary_gives_two_probability_columns(blobs):
    X, y = blobs
    yb = np.where(y == 0, "no", "yes")
    clf = MLPClassifier(**SMALL).fit(X, yb)
    assert clf.predict_proba(X).shape == (240, 2)
    assert clf.score(X, yb) > 0.9


def test_multilabel_indicator():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    Y = np.stack([X[:, 0] > 0, X[:, 1] + X[:, 2] > 0], axis=1).astype(int)
    clf = MLPClassifier(**SMALL).fit(X, Y)
    assert clf.model_.loss == "binary_cross_entropy"
    assert clf.predict(X).shape == (200, 2) and clf.predict_proba(X).shape == (200, 2)
    assert clf.score(X, Y) > 0.8


def test_feature_names_in_with_a_dataframe_like():
    pd = pytest.importorskip("pandas")
    X = pd.DataFrame({"a": np.linspace(0, 1, 50), "b": np.linspace(1, 0, 50)})
    y = (X["a"] > 0.5).astype(int)
    clf = MLPClassifier(**SMALL).fit(X, y)
    assert list(clf.feature_names_in_) == ["a", "b"]


def test_partial_fit_needs_classes_and_continues(blobs):
    X, y = blobs
    clf = MLPClassifier(**SMALL)
    with pytest.raises(ValueError, match="classes"):
        clf.partial_fit(X, y)
    clf.partial_fit(X[:100], y[:100], classes=[0, 1, 2])
    w0 = clf.coefs_[0].copy()
    for _ in range(15):
        clf.partial_fit(X, y)
    assert not np.array_equal(w0, clf.coefs_[0])
    # scikit-learn's counts: n_iter_ is the epochs of the last call, t_ the samples seen.
    assert clf.n_iter_ == 1 and len(clf.loss_curve_) == 16
    assert clf.t_ == 100 + 15 * 240
    assert clf.score(X, y) > 0.9
    with pytest.raises(ValueError, match="classes not in"):
        clf.partial_fit(X[:3], [0, 1, 7])


def test_warm_start_false_reinitialises_and_true_continues(blobs):
    X, y = blobs
    clf = MLPClassifier(**{**SMALL, "max_iter": 3})
    a = clf.fit(X, y).coefs_[0]
    b = clf.fit(X, y).coefs_[0].copy()   # a view, as scikit-learn's arrays are updated in place
    np.testing.assert_array_equal(a, b)           # same seed, fresh network: same result
    clf.set_params(warm_start=True)
    c = clf.fit(X, y).coefs_[0]
    assert not np.array_equal(b, c)
    assert clf.n_iter_ == 3 and len(clf.loss_curve_) == 6


def test_tol_stops_early_as_sklearn_does(blobs):
    X, y = blobs
    clf = MLPClassifier(**{**SMALL, "max_iter": 500, "tol": 10.0, "n_iter_no_change": 3})
    clf.fit(X, y)
    # The first epoch always improves on inf; then 4 epochs without improvement (the count
    # must exceed n_iter_no_change, as in scikit-learn).
    assert clf.n_iter_ == 5


def test_early_stopping_uses_validation_score(blobs):
    X, y = blobs
    clf = MLPClassifier(**{**SMALL, "max_iter": 200, "early_stopping": True,
                           "n_iter_no_change": 4})
    clf.fit(X, y)
    assert clf.best_loss_ is None
    assert len(clf.validation_scores_) == clf.n_iter_ < 200
    assert clf.best_validation_score_ == max(clf.validation_scores_)


def test_convergence_warning_at_max_iter(blobs):
    X, y = blobs
    with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
        MLPClassifier(**{**SMALL, "max_iter": 2, "tol": 0.0}).fit(X, y)


def test_alpha_shrinks_weights(blobs):
    X, y = blobs
    small = MLPClassifier(**{**SMALL, "alpha": 0.0}).fit(X, y)
    big = MLPClassifier(**{**SMALL, "alpha": 50.0}).fit(X, y)
    assert np.linalg.norm(big.coefs_[0]) < np.linalg.norm(small.coefs_[0])


def test_regressor_multioutput_losses_and_shapes():
    X, y = make_regression(n_samples=200, n_features=6, n_targets=2, random_state=0)
    y = y / y.std(axis=0)
    for loss in ("squared_error", "absolute_error", "huber"):
        reg = MLPRegressor(**SMALL, loss=loss).fit(X, y)
        assert reg.predict(X).shape == (200, 2)
        assert reg.score(X, y) > 0.5
    reg = MLPRegressor(**SMALL).fit(X, y[:, 0])
    assert reg.predict(X).shape == (200,)
    with pytest.raises(ValueError, match="loss"):
        MLPRegressor(loss="gamma").fit(X, y)


@pytest.mark.parametrize("Est", [MLPClassifier, MLPRegressor])
def test_pickle_and_clone_round_trip(Est, blobs):
    X, y = blobs
    est = Est(**SMALL).fit(X, y)
    again = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(again.predict(X), est.predict(X))
    c = clone(est)
    assert c.get_params() == est.get_params() and not hasattr(c, "model_")


def test_pipeline_and_grid_search(blobs):
    X, y = blobs
    pipe = make_pipeline(StandardScaler(), MLPClassifier(**SMALL))
    grid = GridSearchCV(pipe, {"mlpclassifier__hidden_layer_sizes": [(8,), (16,)],
                               "mlpclassifier__alpha": [1e-4, 1e-2]}, cv=2)
    grid.fit(X, y)
    assert grid.best_score_ > 0.9
    assert grid.predict(X).shape == (240,)


def test_bad_parameters_fail_in_fit_not_init(blobs):
    X, y = blobs
    for bad in (dict(hidden_layer_sizes=(0,)), dict(activation="swish"), dict(max_iter=0),
                dict(optimizer="lbfgs"), dict(batch_size=-1), dict(learning_rate_init=0)):
        clf = MLPClassifier(**bad)
        with pytest.raises(ValueError):
            clf.fit(X, y)


# ------------------------------------------------------------ scikit-learn drop-in
import inspect  # noqa: E402
import warnings  # noqa: E402

import scipy.sparse as sp  # noqa: E402
from sklearn import neural_network as skl_nn  # noqa: E402

import fastbp.sklearn as fastbp_sklearn  # noqa: E402
from fastbp import TrainingDivergedError  # noqa: E402

PAIRS = [(MLPClassifier, skl_nn.MLPClassifier), (MLPRegressor, skl_nn.MLPRegressor)]


@pytest.mark.parametrize("ours, theirs", PAIRS)
def test_every_scikit_learn_parameter_with_its_default(ours, theirs):
    mine = inspect.signature(ours).parameters
    for name, p in inspect.signature(theirs).parameters.items():
        assert name in mine and mine[name].default == p.default and \
            mine[name].kind == p.kind, name
    extras = [n for n in mine if n not in inspect.signature(theirs).parameters]
    assert extras == ["optimizer", "dropout", "device", "dtype"]
    assert all(mine[n].kind is inspect.Parameter.KEYWORD_ONLY for n in extras)


def _regression(n=60, k=2, seed=0):
    X, y = make_regression(n_samples=n, n_features=4, n_targets=k, noise=5.0,
                           random_state=seed)
    return StandardScaler().fit_transform(X), y / y.std(axis=0)


@pytest.mark.parametrize("solver, schedule", [("sgd", "constant"), ("sgd", "invscaling"),
                                              ("adam", "constant")])
def test_stochastic_solvers_take_scikit_learns_steps(solver, schedule):
    # Same initial weights, no shuffling, no L2 (fastbp's also decays the biases): the
    # weights follow scikit-learn's to round-off, multi-output squared error included.
    X, y = _regression()
    params = dict(hidden_layer_sizes=(7,), solver=solver, learning_rate=schedule,
                  learning_rate_init=0.05, alpha=0.0, batch_size=20, shuffle=False,
                  max_iter=5, momentum=0.0 if schedule == "invscaling" else 0.9,
                  random_state=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = MLPRegressor(**params).fit(X, y)
        theirs = skl_nn.MLPRegressor(**params).fit(X, y)
    # Adam: torch.optim's epsilon is added after the bias correction of sqrt(v),
    # scikit-learn's before it, so their steps differ in the epsilon term alone.
    rtol = 1e-4 if solver == "adam" else 1e-7
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-9 if rtol < 1e-6 else 1e-6)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=rtol)
    assert (ours.n_iter_, ours.t_) == (theirs.n_iter_, theirs.t_)


@pytest.mark.parametrize("Est", [MLPClassifier, MLPRegressor])
def test_lbfgs_follows_scikit_learns_lbfgs(Est):
    X, y = make_blobs(n_samples=90, centers=3, n_features=4, random_state=1)
    X = StandardScaler().fit_transform(X)
    if Est is MLPRegressor:
        y = X[:, 0] * 2 - X[:, 1] ** 2
    params = dict(hidden_layer_sizes=(6,), solver="lbfgs", alpha=1e-3, max_iter=8,
                  random_state=0, activation="tanh")
    theirs_cls = dict(PAIRS)[Est]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours, theirs = Est(**params).fit(X, y), theirs_cls(**params).fit(X, y)
    assert ours.n_iter_ == theirs.n_iter_
    np.testing.assert_allclose(ours.loss_, theirs.loss_, rtol=1e-6)
    for a, b in zip(ours.coefs_, theirs.coefs_):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    with pytest.warns(ConvergenceWarning, match="lbfgs failed to converge"):
        Est(**{**params, "max_fun": 3}).fit(X, y)
    assert not hasattr(Est(solver="lbfgs"), "partial_fit")


def test_adaptive_learning_rate_divides_by_five_then_stops():
    X, y = [[3, 2], [1, 6]], [1, 0]
    params = dict(tol=0.5, max_iter=3000, solver="sgd", learning_rate="adaptive",
                  random_state=0)
    ours = MLPClassifier(**params).fit(X, y)
    theirs = skl_nn.MLPClassifier(**params).fit(X, y)
    assert ours.n_iter_ == theirs.n_iter_ < 3000
    # every division by 5 took n_iter_no_change + 1 epochs, until the rate fell below 1e-6
    assert ours.n_iter_ == 1 + 11 * (1 + int(np.ceil(np.log(1e-3 / 1e-6) / np.log(5))))


def test_binary_float32_attributes_as_scikit_learn(blobs):
    X, y = blobs
    yb = np.where(y == 0, "no", "yes")
    clf = MLPClassifier(**SMALL).fit(X.astype(np.float32), yb)
    assert clf.n_outputs_ == 1 and clf.out_activation_ == "logistic"
    assert [w.shape for w in clf.coefs_] == [(5, 16), (16, 1)]
    assert all(a.dtype == np.float32 for a in clf.coefs_ + clf.intercepts_)
    assert clf.n_layers_ == 3 and isinstance(clf.loss_, float)
    reg = MLPRegressor(**SMALL, loss="poisson").fit(X.astype(np.float32), np.exp(X[:, 0]))
    assert reg.out_activation_ == "exp" and reg.predict(X[:3]).dtype == np.float32
    multi = MLPClassifier(**SMALL).fit(X, y)
    assert multi.out_activation_ == "softmax" and multi.n_outputs_ == 3


def test_single_class_fits_and_predicts_it(blobs):
    X, _ = blobs
    clf = MLPClassifier(**SMALL).fit(X, np.full(len(X), "only"))
    assert list(clf.predict(X[:4])) == ["only"] * 4
    assert clf.predict_proba(X[:4]).shape == (4, 2)


def test_coefs_are_live_and_settable(blobs):
    X, y = blobs
    clf = MLPClassifier(**SMALL).fit(X, y)
    before = clf.predict_proba(X)
    clf.coefs_[1][:] = 0.0                 # in place, as scikit-learn's arrays
    clf.intercepts_[1][:] = [5.0, 0.0, 0.0]
    assert np.all(clf.predict(X) == clf.classes_[0])
    clf.coefs_ = [clf.coefs_[0], np.ones((16, 3))]
    assert not np.allclose(clf.predict_proba(X), before)
    with pytest.raises(ValueError):
        clf.coefs_ = [np.ones((2, 2))]


def test_sample_weight_normalised_and_zero_weight_drops_a_row_in_lbfgs(blobs):
    X, y = blobs
    params = dict(hidden_layer_sizes=(6,), solver="lbfgs", max_iter=30, random_state=0)
    w = np.ones(len(X))
    w[:40] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = MLPClassifier(**params).fit(X, y, sample_weight=w)
        b = MLPClassifier(**params).fit(X[40:], y[40:])
        c = MLPClassifier(**SMALL).fit(X, y, sample_weight=np.full(len(X), 3.0))
        d = MLPClassifier(**SMALL).fit(X, y)
    np.testing.assert_allclose(a.coefs_[0], b.coefs_[0], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(c.coefs_[0], d.coefs_[0], rtol=1e-10)
    with pytest.raises(ValueError):
        MLPClassifier(**SMALL).fit(X, y, sample_weight=np.ones(3))


def test_large_sparse_input_is_densified_a_block_at_a_time(blobs, monkeypatch):
    X, y = blobs
    Xs = sp.csr_matrix(np.where(np.abs(X) > 0.5, X, 0.0))
    dense_rows = []
    real = fastbp_sklearn._dense

    def spy(block, dtype):
        if sp.issparse(block):
            dense_rows.append(block.shape[0])
        return real(block, dtype)

    small = MLPClassifier(**SMALL, solver="lbfgs").fit(Xs, y)
    monkeypatch.setattr(fastbp_sklearn, "SPARSE_DENSE_BYTES", 50 * 5 * 8)
    monkeypatch.setattr(fastbp_sklearn, "_dense", spy)
    blocked = MLPClassifier(**SMALL, solver="lbfgs").fit(Xs, y)
    assert max(dense_rows) == 50
    np.testing.assert_allclose(blocked.coefs_[0], small.coefs_[0], rtol=1e-6, atol=1e-8)
    np.testing.assert_array_equal(blocked.predict(Xs), small.predict(Xs.toarray()))
    sgd = MLPClassifier(**SMALL).fit(Xs, y)
    assert sgd.n_iter_ == len(sgd.loss_curve_) and sgd.score(Xs, y) > 0.85
    assert max(dense_rows) == 50


def _state(est, X):
    return (est.predict_proba(X) if hasattr(est, "predict_proba") else est.predict(X),
            [c.copy() for c in est.coefs_], est.n_iter_, list(est.loss_curve_), est.t_)


def _same(a, b):
    np.testing.assert_array_equal(a[0], b[0])
    for x, y in zip(a[1], b[1]):
        np.testing.assert_array_equal(x, y)
    assert a[2:] == b[2:]


def test_a_failed_call_leaves_the_fitted_estimator_as_it_was(blobs):
    X, y = blobs
    clf = MLPClassifier(**SMALL).fit(X, y)
    before = _state(clf, X)
    bad_X = X.copy()
    bad_X[3, 1] = np.nan
    for call in (lambda: clf.partial_fit(X[:5], [0, 1, 2, 7, 0]),
                 lambda: clf.partial_fit(bad_X, y),
                 lambda: clf.partial_fit(X[:, :3], y),
                 lambda: clf.set_params(warm_start=True).fit(X, np.minimum(y, 1)),
                 lambda: clf.set_params(warm_start=False, learning_rate_init=1e6,
                                        optimizer="sgd", max_iter=50).fit(X * 1e6, y)):
        with pytest.raises(ValueError):
            call()
        _same(_state(clf, X), before)
    clf.set_params(learning_rate_init=SMALL["learning_rate_init"], optimizer=None,
                   max_iter=SMALL["max_iter"])
    _same(_state(clf, X), before)


def test_divergence_is_scikit_learns_value_error():
    rng = np.random.RandomState(0)
    X = np.finfo(np.float64).max * rng.uniform(size=(10, 2))
    reg = MLPRegressor()
    with pytest.raises(TrainingDivergedError, match="Solver produced non-finite") as info:
        reg.fit(X, rng.standard_normal(10))
    assert isinstance(info.value, ValueError) and not hasattr(reg, "model_")


def test_partial_fit_after_early_stopping_fit_is_refused_cleanly(blobs):
    X, y = blobs
    clf = MLPClassifier(**SMALL, early_stopping=True).fit(X, y)
    before = _state(clf, X)
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping"):
        clf.partial_fit(X, y)
    _same(_state(clf, X), before)
    clf.set_params(early_stopping=False).partial_fit(X, y)   # the crash of issue 25
    assert clf.n_iter_ == 1


def test_stratified_split_error_names_the_users_labels():
    X, y = [[1, 2], [2, 3], [3, 4], [4, 5]], ["cat", "cat", "cat", "dog"]
    with pytest.raises(ValueError, match=r"too few members are \['dog'\]"):
        MLPClassifier(early_stopping=True).fit(X, y)


def test_optimizer_extra_overrides_solver(blobs):
    X, y = blobs
    from fastbp.optimizers import RMSprop
    a = MLPClassifier(**SMALL, solver="lbfgs", optimizer="rmsprop").fit(X, y)
    assert len(a.loss_curve_) == a.n_iter_ == SMALL["max_iter"] or a.n_iter_ < 40
    assert hasattr(a, "partial_fit")
    b = MLPClassifier(**SMALL, optimizer=RMSprop(lr=0.01)).fit(X, y)
    assert b.score(X, y) > 0.9
    with pytest.raises(ValueError):
        MLPClassifier(optimizer="lbfgs").fit(X, y)
