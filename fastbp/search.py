"""Grid search with cross-validation, every grid point and fold of one architecture trained
as one :class:`fastbp.Ensemble`.

:class:`MLPSearchCV` works from a fastbp ``MLPClassifier`` or ``MLPRegressor``'s parameters
(``get_params``/``set_params``), never from the estimator module itself.
"""
import numbers
import time
from collections import defaultdict

import numpy as np
from sklearn.base import clone, is_classifier
from sklearn.metrics import check_scoring
from sklearn.model_selection import ParameterGrid, check_cv
from sklearn.utils.multiclass import type_of_target

from .callbacks import EarlyStopping
from .ensemble import Ensemble
from .optimizers import OPTIMIZERS
from .registry import ACTIVATIONS, LOSSES

# Grid keys that may differ between the members of one ensemble; every other key splits
# the grid into separate ensembles.
MEMBER_KEYS = ("learning_rate_init", "alpha")
_ACTIVATIONS = dict({name: name for name in ACTIVATIONS}, logistic="sigmoid")
_REGRESSION_LOSSES = {alias: name for name, loss in LOSSES.items() if not loss.classifies
                      for alias in (name,) + loss.aliases}


class _TrainingLossStop(EarlyStopping):
    """scikit-learn's rule without a validation set, for each member: more than
    ``n_iter_no_change`` epochs in a row whose training loss does not beat the best by
    ``tol`` stop it."""

    def __init__(self, tol, n_iter_no_change):
        super().__init__(monitor="loss")
        self.tol, self.n_iter_no_change = float(tol), int(n_iter_no_change)

    def on_train_begin(self, logs=None):
        self.best, self.count, self.stopped_epoch = np.inf, 0, None

    def on_epoch_end(self, epoch, logs=None):
        loss = float(logs["loss"])
        self.count = self.count + 1 if loss > self.best - self.tol else 0
        self.best = min(self.best, loss)
        if self.count > self.n_iter_no_change:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        pass


class MLPSearchCV:
    """Exhaustive search over ``param_grid`` with cross-validation, as
    ``sklearn.model_selection.GridSearchCV`` (same ``cv_results_``, ``best_params_``,
    ``best_score_``, ``best_index_``, ``best_estimator_``, ``refit`` and scorer
    conventions), for fastbp's ``MLPClassifier`` and ``MLPRegressor``.

    The grid points that share every parameter but ``learning_rate_init`` and ``alpha``
    train with all their folds as one :class:`fastbp.Ensemble`: one member per point and
    fold, with its own rate and weight decay (``alpha / batch_size``), and its fold's
    held-out rows given weight zero. Other parameters (architecture, batch size,
    optimizer, ...) split the grid into one ensemble each.

    How a fold here differs from fitting the estimator on the fold's rows alone:

    * each epoch passes over all rows, held-out rows included: a fold of ``cv`` folds
      takes ``cv / (cv - 1)`` times the steps per epoch, each on about ``(cv - 1) / cv``
      of ``batch_size`` training rows, and each batch's loss is still divided by its full
      row count (``MLP.fit``'s sample-weight rule), so steps are about that much smaller;
    * the training loss that ``tol`` and ``n_iter_no_change`` judge is scaled the same
      way;
    * member k starts from ``random_state + k`` (members must differ in seed), and every
      member follows the ensemble's one shuffled order;
    * ``early_stopping=True``, an optimizer object or multilabel targets fall back to one
      ordinary fit per point and fold, as GridSearchCV does.

    ``refit=True`` fits ``best_estimator_`` on all rows with the best parameters, an
    ordinary fit.
    """

    def __init__(self, estimator, param_grid, cv=5, scoring=None, refit=True):
        self.estimator = estimator
        self.param_grid = param_grid
        self.cv = cv
        self.scoring = scoring
        self.refit = refit

    # ------------------------------------------------------------------ checks
    def _check(self, X, y):
        est = self.estimator
        if not hasattr(est, "get_params") or "hidden_layer_sizes" not in est.get_params() \
                or not type(est).__module__.startswith("fastbp"):
            raise ValueError(f"MLPSearchCV searches fastbp's MLPClassifier or MLPRegressor, "
                             f"got {type(est).__name__}")
        if not (self.scoring is None or isinstance(self.scoring, str) or
                callable(self.scoring)):
            raise ValueError("scoring must be None, a scorer name or a callable scorer "
                             "(several metrics at once are not supported)")
        grid = list(ParameterGrid(self.param_grid))
        if not grid:
            raise ValueError("param_grid is empty")
        valid = set(est.get_params())
        for point in grid:
            unknown = set(point) - valid
            if unknown:
                raise ValueError(f"invalid parameters {sorted(unknown)} for "
                                 f"{type(est).__name__}")
        X = np.asarray(X)
        y = np.asarray(y)
        if X.ndim != 2 or len(y) != X.shape[0]:
            raise ValueError(f"X must be 2-D with one row per target: X {X.shape}, y "
                             f"{y.shape}")
        return grid, X, y

    # --------------------------------------------------------------------- fit
    def fit(self, X, y):
        """Run the search on (X, y); returns self."""
        grid, X, y = self._check(X, y)
        classifier = is_classifier(self.estimator)
        cv = check_cv(self.cv, y, classifier=classifier)
        folds = list(cv.split(X, y))
        self.n_splits_ = len(folds)
        n_points, n_folds = len(grid), len(folds)
        scores = np.full((n_points, n_folds), np.nan)
        fit_times = np.zeros((n_points, n_folds))
        score_times = np.zeros((n_points, n_folds))

        groups = defaultdict(list)
        for i, point in enumerate(grid):
            key = repr(sorted((k, v) for k, v in point.items() if k not in MEMBER_KEYS))
            groups[key].append(i)
        for members in groups.values():
            est = clone(self.estimator).set_params(**grid[members[0]])
            if self._can_share(est, y):
                self._fit_ensemble(est, grid, members, folds, X, y, scores, fit_times,
                                   score_times)
            else:
                self._fit_each(grid, members, folds, X, y, scores, fit_times, score_times)

        self._results(grid, scores, fit_times, score_times)
        if self.refit:
            t0 = time.perf_counter()
            self.best_estimator_ = clone(self.estimator).set_params(**self.best_params_)
            self.best_estimator_.fit(X, y)
            self.refit_time_ = time.perf_counter() - t0
        return self

    def _can_share(self, est, y):
        p = est.get_params()
        multilabel = is_classifier(est) and type_of_target(y) == "multilabel-indicator"
        return not (p.get("early_stopping") or not isinstance(p.get("optimizer"), str)
                    or multilabel)

    def _scorer(self, est):
        return check_scoring(est, scoring=self.scoring)

    def _fit_each(self, grid, members, folds, X, y, scores, fit_times, score_times):
        """One ordinary fit per point and fold (GridSearchCV's way)."""
        for i in members:
            for f, (train, test) in enumerate(folds):
                est = clone(self.estimator).set_params(**grid[i])
                t0 = time.perf_counter()
                est.fit(X[train], y[train])
                t1 = time.perf_counter()
                scores[i, f] = self._scorer(est)(est, X[test], y[test])
                fit_times[i, f] = t1 - t0
                score_times[i, f] = time.perf_counter() - t1

    def _fit_ensemble(self, est, grid, members, folds, X, y, scores, fit_times,
                      score_times):
        """Every point of ``members`` times every fold as one Ensemble."""
        p = est.get_params()
        classifier = is_classifier(est)
        n = X.shape[0]
        X = np.require(X, dtype=np.dtype(p["dtype"]), requirements=["C", "W"])
        if classifier:
            classes = np.unique(y)
            if len(classes) < 2:
                raise ValueError("the data contains only one class")
            Y = np.searchsorted(classes, y).astype(np.int64)
            n_out, loss = len(classes), "cross_entropy"
        else:
            Y = np.asarray(y, dtype=np.dtype(p["dtype"]))
            n_out = 1 if Y.ndim == 1 else Y.shape[1]
            Y = Y.reshape(n, n_out)
            if p["loss"] not in _REGRESSION_LOSSES:
                raise ValueError(f"loss {p['loss']!r} is not supported")
            loss = _REGRESSION_LOSSES[p["loss"]]
        hidden = p["hidden_layer_sizes"]
        hidden = [hidden] if isinstance(hidden, numbers.Integral) else list(hidden)
        if p["activation"] not in _ACTIVATIONS:
            raise ValueError(f"activation {p['activation']!r} is not supported")
        batch = min(200 if p["batch_size"] == "auto" else int(p["batch_size"]), n)
        rs = p["random_state"]
        seed = int(rs) if isinstance(rs, numbers.Integral) and not isinstance(rs, bool) \
            else int(np.random.default_rng(rs if rs is not None else None)
                     .integers(0, 2 ** 31 - 1))
        F = len(folds)
        K = len(members) * F
        lrs, decays = np.empty(K), np.empty(K)
        W = np.zeros((K, n))
        for j, i in enumerate(members):
            point = dict(p, **grid[i])
            for f, (train, _) in enumerate(folds):
                lrs[j * F + f] = float(point["learning_rate_init"])
                decays[j * F + f] = float(point["alpha"]) / batch
                W[j * F + f, train] = 1.0
        ens = Ensemble([X.shape[1]] + [int(h) for h in hidden] + [n_out], n_models=K,
                       activation=_ACTIVATIONS[p["activation"]], loss=loss,
                       dtype=p["dtype"], seed=seed, device=p["device"], dropout=p["dropout"])
        t0 = time.perf_counter()
        ens.fit(X, Y, epochs=int(p["max_iter"]), batch_size=batch,
                optimizer=_optimizer(p), lr=lrs, weight_decay=decays, sample_weight=W,
                shuffle=bool(p["shuffle"]),
                callbacks=[_TrainingLossStop(p["tol"], p["n_iter_no_change"])])
        elapsed = (time.perf_counter() - t0) / K
        for j, i in enumerate(members):
            for f, (_, test) in enumerate(folds):
                k = j * F + f
                fitted = _adopt(clone(self.estimator).set_params(**grid[i]), ens, k, X,
                                classes if classifier else None, np.ndim(y))
                t1 = time.perf_counter()
                scores[i, f] = self._scorer(fitted)(fitted, X[test], y[test])
                score_times[i, f] = time.perf_counter() - t1
                fit_times[i, f] = elapsed

    def _results(self, grid, scores, fit_times, score_times):
        n_points, n_folds = scores.shape
        results = {"mean_fit_time": fit_times.mean(1), "std_fit_time": fit_times.std(1),
                   "mean_score_time": score_times.mean(1),
                   "std_score_time": score_times.std(1)}
        names = sorted({k for point in grid for k in point})
        for name in names:
            col = np.ma.MaskedArray(np.empty(n_points, dtype=object), mask=True)
            for i, point in enumerate(grid):
                if name in point:
                    col[i] = point[name]
            results[f"param_{name}"] = col
        results["params"] = grid
        for f in range(n_folds):
            results[f"split{f}_test_score"] = scores[:, f]
        mean = scores.mean(1)
        results["mean_test_score"] = mean
        results["std_test_score"] = scores.std(1)
        # GridSearchCV's ranks: ties share the lowest rank, NaN scores rank last.
        order = np.where(np.isnan(mean), -np.inf, mean)
        results["rank_test_score"] = (np.searchsorted(np.sort(-order), -order) + 1) \
            .astype(np.int32)
        self.cv_results_ = results
        self.best_index_ = int(np.argmin(results["rank_test_score"]))
        self.best_params_ = grid[self.best_index_]
        self.best_score_ = float(mean[self.best_index_])

    # ------------------------------------------------------------- delegation
    def _best(self):
        if not getattr(self, "best_estimator_", None):
            raise AttributeError("refit=False: no best_estimator_ to predict with")
        return self.best_estimator_

    def predict(self, X):
        return self._best().predict(X)

    def predict_proba(self, X):
        return self._best().predict_proba(X)

    def score(self, X, y):
        est = self._best()
        return check_scoring(est, scoring=self.scoring)(est, X, y)

    @property
    def classes_(self):
        return self._best().classes_


def _optimizer(p):
    """The optimizer name and its scikit-learn-named parameters, as the estimators map them
    (learning rate and weight decay are set per member)."""
    name = p["optimizer"].lower()
    cls = OPTIMIZERS.get(name)
    if cls is None:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got "
                         f"{p['optimizer']!r}")
    cfg = cls().get_config()
    if "betas" in cfg:
        cfg["betas"] = (p["beta_1"], p["beta_2"])
    if "eps" in cfg:
        cfg["eps"] = p["epsilon"]
    if "nesterov" in cfg:
        cfg.update(momentum=p["momentum"],
                   nesterov=bool(p["nesterovs_momentum"] and p["momentum"] > 0))
    return cls(**cfg)


def _adopt(est, ens, k, X, classes, y_ndim):
    """``est`` fitted as member k of ``ens``: the attributes its predict and score read."""
    member = ens[k]
    curve = ens.history.history["loss"][:, k]
    est.model_ = member
    est.n_features_in_ = X.shape[1]
    est.loss_curve_ = [float(v) for v in curve[np.isfinite(curve)]]
    est.n_iter_ = len(est.loss_curve_)
    est.t_ = int(member._step)
    est.best_loss_ = min(est.loss_curve_) if est.loss_curve_ else np.inf
    est.validation_scores_ = None
    est.best_validation_score_ = None
    if classes is not None:
        est.classes_ = classes
        est._multilabel = False
    else:
        est._y_ndim = y_ndim
    return est
