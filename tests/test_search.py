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
