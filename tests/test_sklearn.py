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
