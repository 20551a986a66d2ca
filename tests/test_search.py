"""fastbp.search.MLPSearchCV against scikit-learn's GridSearchCV over the same estimator."""
import warnings

import numpy as np
import pytest
from sklearn.datasets import make_classification, make_regression
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, KFold

from fastbp.search import MLPSearchCV
from fastbp.sklearn import MLPClassifier, MLPRegressor

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def test_classifier_search_agrees_with_grid_search():
    X, y = make_classification(600, 8, n_informative=5, random_state=0)
    est = MLPClassifier((16,), max_iter=15, batch_size=32, random_state=0)
    grid = {"learning_rate_init": [1e-3, 1e-2], "alpha": [1e-4, 1e-1],
            "hidden_layer_sizes": [(16,), (8, 8)]}
    ours = MLPSearchCV(est, grid, cv=3).fit(X, y)
    theirs = GridSearchCV(est, grid, cv=3).fit(X, y)
    assert set(ours.cv_results_) >= {k for k in theirs.cv_results_ if "train" not in k}
    assert ours.cv_results_["params"] == theirs.cv_results_["params"]
    assert ours.cv_results_["mean_test_score"].shape == (8,)
    assert abs(ours.best_score_ - theirs.best_score_) < 0.05
    assert ours.best_params_ == ours.cv_results_["params"][ours.best_index_]
    assert ours.cv_results_["rank_test_score"][ours.best_index_] == 1
    best = ours.best_estimator_
    assert isinstance(best, MLPClassifier) and best.get_params()["alpha"] == \
        ours.best_params_["alpha"]
    assert ours.score(X, y) == best.score(X, y)
    np.testing.assert_array_equal(ours.predict(X), best.predict(X))


def test_regression_search_scoring_and_no_refit():
    X, y = make_regression(300, 6, noise=0.1, random_state=1)
    y = y / y.std()
    est = MLPRegressor(hidden_layer_sizes=(16,), max_iter=10, batch_size=16, random_state=0)
    grid = {"learning_rate_init": [1e-3, 1e-2]}
    s = MLPSearchCV(est, grid, cv=KFold(4), scoring="neg_mean_squared_error",
                    refit=False).fit(X, y)
    assert s.cv_results_["split3_test_score"].shape == (2,)
    assert (s.cv_results_["mean_test_score"] < 0).all()
    assert not hasattr(s, "best_estimator_")
    with pytest.raises(AttributeError):
        s.predict(X)


def test_early_stopping_falls_back_to_one_fit_per_fold():
    X, y = make_classification(200, 5, random_state=0)
    est = MLPClassifier((8,), max_iter=5, early_stopping=True, random_state=0)
    grid = {"learning_rate_init": [1e-3, 1e-2]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = MLPSearchCV(est, grid, cv=2).fit(X, y)
        theirs = GridSearchCV(est, grid, cv=2).fit(X, y)
    np.testing.assert_allclose(ours.cv_results_["mean_test_score"],
                               theirs.cv_results_["mean_test_score"])


def test_bad_input():
    from sklearn.linear_model import LogisticRegression
    X, y = make_classification(50, 4, random_state=0)
    with pytest.raises(ValueError, match="fastbp"):
        MLPSearchCV(LogisticRegression(), {"C": [1.0]}).fit(X, y)
    with pytest.raises(ValueError, match="invalid parameters"):
        MLPSearchCV(MLPClassifier(), {"nope": [1]}).fit(X, y)
    with pytest.raises(ValueError, match="several metrics"):
        MLPSearchCV(MLPClassifier(), {"alpha": [1.0]}, scoring=["accuracy"]).fit(X, y)


@pytest.mark.parametrize("kind", ["binary", "multiclass", "regression", "sgd"])
def test_the_estimators_defaults_train_each_architecture_as_one_ensemble(kind, monkeypatch):
    """With the estimators' own parameters (solver by name, no optimizer object), every
    point and fold of one architecture is a member of one Ensemble fit, never an ordinary
    fit per fold, and the best score agrees with GridSearchCV's."""
    from fastbp.ensemble import Ensemble
    sizes = []
    fit = Ensemble.fit

    def counted(self, *args, **kwargs):
        sizes.append(self.n_models)
        return fit(self, *args, **kwargs)
    monkeypatch.setattr(Ensemble, "fit", counted)
    monkeypatch.setattr(MLPSearchCV, "_fit_each",
                        lambda *a, **k: pytest.fail("fitted point by point"))
    grid = {"learning_rate_init": [1e-3, 1e-2], "alpha": [1e-4, 1e-1]}
    if kind == "regression":
        X, y = make_regression(400, 6, n_targets=3, noise=0.1, random_state=1)
        y = y / y.std()
        est = MLPRegressor(hidden_layer_sizes=(16,), max_iter=20, batch_size=32,
                           random_state=0)
    else:
        X, y = make_classification(600, 8, n_informative=5, n_classes=3 if kind ==
                                   "multiclass" else 2, random_state=0)
        est = MLPClassifier((16,), max_iter=20, batch_size=32, random_state=0,
                            solver="sgd" if kind == "sgd" else "adam",
                            learning_rate_init=0.05)
        if kind == "sgd":
            grid = {"learning_rate_init": [0.02, 0.1], "alpha": [1e-4, 1e-1]}
    ours = MLPSearchCV(est, grid, cv=3).fit(X, y)
    assert sizes == [4 * 3]
    theirs = GridSearchCV(est, grid, cv=3).fit(X, y)
    assert abs(ours.best_score_ - theirs.best_score_) < 0.05
    np.testing.assert_array_equal(ours.predict(X), ours.best_estimator_.predict(X))


def test_members_get_the_optimizer_the_estimator_would_make():
    """The learning rate, weight decay, epsilon and momentum of a member are those of the
    estimator's own optimizer for the same point (scikit-learn's scale, four outputs)."""
    from fastbp.search import _member_optimizer
    from fastbp.sklearn_conventions import grad_scale
    X, y = make_regression(200, 5, n_targets=4, random_state=0)
    y = y / y.std()
    for solver in ("adam", "sgd"):
        est = MLPRegressor(hidden_layer_sizes=(8,), solver=solver, max_iter=1, batch_size=20,
                           alpha=0.3, learning_rate_init=0.01, momentum=0.7,
                           random_state=0).fit(X, y)
        own = est._make_optimizer(20).get_config()
        c = grad_scale(est.model_.loss, 4)
        assert c == 2.0
        assert own["lr"] == pytest.approx(0.01 * (c if solver == "sgd" else 1.0))
        assert own["weight_decay"] == pytest.approx(0.3 / (20 * c))
        member = _member_optimizer(est.get_params(), solver, 20, c).get_config()
        assert own.keys() == member.keys()
        for key in own:
            assert np.allclose(own[key], member[key]), (solver, key)
