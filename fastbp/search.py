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
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import type_of_target

from .callbacks import EarlyStopping
from .ensemble import Ensemble
from .optimizers import OPTIMIZERS
from .registry import ACTIVATIONS, LOSSES
from .sklearn_conventions import OPTIMIZER_PARAMS, glorot, grad_scale, scaled_optimizer

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
    * member k starts from the weights the estimator draws with ``random_state + k``
      (members must differ in seed), and every member follows the ensemble's one
      shuffled order;
    * ``solver="lbfgs"``, sgd with an ``invscaling`` or ``adaptive`` rate,
      ``early_stopping=True``, an optimizer object, a Poisson loss, multilabel or
      single-class targets fall back to one ordinary fit per point and fold, as
      GridSearchCV does.

    Each member's optimizer is the one the estimator would make for its point: the same
    rate, weight decay, betas, epsilon and momentum, in fastbp's loss scale.

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
        """Whether the estimator's fits can be ensemble members: a stochastic solver given
        by name with a constant rate, no early stopping, and binary or multiclass targets
        of at least two classes, or a regression loss other than Poisson."""
        p = est.get_params()
        solver = p.get("optimizer") or p.get("solver")
        if p.get("early_stopping") or not isinstance(solver, str) or \
                solver.lower() not in OPTIMIZERS or solver.lower() == "lbfgs":
            return False
        if solver.lower() == "sgd" and p.get("learning_rate", "constant") != "constant":
            return False   # invscaling and adaptive follow each fit's own epochs
        if is_classifier(est):
            return type_of_target(y) in ("binary", "multiclass") and len(np.unique(y)) > 1
        return _REGRESSION_LOSSES.get(p.get("loss")) not in (None, "poisson")

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
        # The estimator's dtype: its own, else X's (float32 or float64).
        dtype = np.dtype(p["dtype"]) if p["dtype"] is not None else \
            X.dtype if X.dtype in (np.float32, np.float64) else np.dtype(np.float64)
        X = np.require(X, dtype=dtype, requirements=["C", "W"])
        binarizer = None
        if classifier:
            # The estimator's output layer: one logistic unit for two classes, softmax
            # over the classes for more.
            binarizer = LabelBinarizer().fit(y)
            T = binarizer.transform(y)
            if binarizer.y_type_ == "multiclass":
                loss, n_out, Y = "cross_entropy", T.shape[1], T.argmax(axis=1)
            else:
                loss, n_out, Y = "binary_cross_entropy", 1, T.astype(dtype)
        else:
            Y = np.asarray(y, dtype=dtype)
            n_out = 1 if Y.ndim == 1 else Y.shape[1]
            Y = Y.reshape(n, n_out)
            loss = _REGRESSION_LOSSES[p["loss"]]
        c = grad_scale(loss, n_out)
        solver = (p["optimizer"] or p["solver"]).lower()
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
            # The estimator's optimizer for the point: its rate and weight decay are the
            # members', the rest (the same for every point) the ensemble's.
            opt = _member_optimizer(dict(p, **grid[i]), solver, batch, c)
            for f, (train, _) in enumerate(folds):
                lrs[j * F + f] = opt.lr
                decays[j * F + f] = opt.weight_decay
                W[j * F + f, train] = 1.0
        sizes = [X.shape[1]] + [int(h) for h in hidden] + [n_out]
        ens = Ensemble(sizes, n_models=K, activation=_ACTIVATIONS[p["activation"]], loss=loss,
                       dtype=dtype.name, seed=seed, device=p["device"], dropout=p["dropout"])
        for k in range(K):   # the estimator's initial weights for random_state = seed + k
            ens[k].set_weights(glorot(check_random_state(seed + k), sizes, p["activation"],
                                       dtype))
        t0 = time.perf_counter()
        ens.fit(X, Y, epochs=int(p["max_iter"]), batch_size=batch,
                optimizer=opt, lr=lrs, weight_decay=decays,
                sample_weight=W,
                shuffle=bool(p["shuffle"]),
                callbacks=[_TrainingLossStop(p["tol"], p["n_iter_no_change"])])
        elapsed = (time.perf_counter() - t0) / K
        for j, i in enumerate(members):
            for f, (_, test) in enumerate(folds):
                k = j * F + f
                fitted = _adopt(clone(self.estimator).set_params(**grid[i]), ens, k, X,
                                binarizer)
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


def _member_optimizer(point, solver, batch_size, c):
    """The optimizer the estimator would make (``_make_optimizer``) for grid point
    ``point`` (its parameters), ``c`` the loss scale (sklearn_conventions.grad_scale)."""
    return scaled_optimizer(solver, float(point["learning_rate_init"]), float(point["alpha"]),
                            batch_size, c, **{k: point[k] for k in OPTIMIZER_PARAMS})


def _adopt(est, ens, k, X, binarizer):
    """``est`` fitted as member k of ``ens``: the attributes its predict and score read
    (``binarizer``: the classifier's LabelBinarizer, None for a regressor)."""
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
    if binarizer is not None:
        est._label_binarizer = binarizer
        est.classes_ = binarizer.classes_
    return est
