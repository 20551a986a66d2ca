"""scikit-learn's ``MLPClassifier`` and ``MLPRegressor``, trained by fastbp's compiled code.

A drop-in for ``sklearn.neural_network``: change the import line and nothing else.

    from fastbp.sklearn import MLPClassifier     # was: from sklearn.neural_network import ...

Every constructor parameter of scikit-learn's estimators is here with its name, default and
meaning (``solver`` "adam", "sgd" or "lbfgs"; ``learning_rate`` "constant", "invscaling" or
"adaptive" with ``power_t``; ``max_fun``; ...), and so is every fitted attribute, with
scikit-learn's shapes and dtypes (``coefs_``, ``intercepts_``, ``n_layers_``, ``n_outputs_``,
``out_activation_``, ``loss_``, ``best_loss_``, ``loss_curve_``, ``validation_scores_``,
``best_validation_score_``, ``t_``, ``n_iter_``, ``classes_``, ``n_features_in_``,
``feature_names_in_``). fastbp's own extras are keyword-only and come last: ``optimizer``
(overrides ``solver``: "adamw", "rmsprop", "adagrad", ... or a :class:`fastbp.Optimizer`
used as given), ``dropout``, ``device`` and ``dtype``.

How the solvers map onto fastbp
-------------------------------
* ``solver="lbfgs"``: full-batch L-BFGS-B from ``scipy.optimize`` over the compiled loss
  and gradient of :meth:`fastbp.MLP.loss_and_grads`, plus scikit-learn's L2 term
  ``alpha / (2 * n) * ||W||^2`` on the weights (not the biases); ``max_iter``, ``max_fun``,
  ``tol`` (scipy's ``gtol``) and ``n_iter_`` as scikit-learn defines them.
* ``solver="sgd"`` / ``"adam"``: epochs of compiled mini-batches. scikit-learn's gradient
  of a batch is ``sum_j (output_j - y_j)`` per row (its squared error is ``1/2 (y - p)^2``
  and its log-losses sum over outputs); fastbp's losses average over outputs, so the
  wrapper rescales the step (sgd) or the epsilon (adam) to take scikit-learn's steps.
  ``alpha`` becomes the optimizer's ``weight_decay = alpha / batch_size`` (the same
  gradient term); unlike scikit-learn it also decays the biases. ``learning_rate`` is
  applied at each epoch end, as scikit-learn does: "invscaling" sets
  ``learning_rate_init / (t_ + 1) ** power_t`` (``t_`` counts samples seen), "adaptive"
  divides the rate by 5 after more than ``n_iter_no_change`` epochs without improvement
  and stops once it is at most 1e-6. ``loss_curve_`` is scikit-learn's: each epoch's mean
  data loss plus its L2 term.
* Initial weights are drawn as scikit-learn draws them (Glorot uniform, biases too, from
  ``random_state``), so a seeded lbfgs fit starts where scikit-learn's starts.
* ``sample_weight`` is normalised to mean 1 over the training rows; each batch's loss is
  then ``sum(w * loss) / rows`` where scikit-learn divides by ``sum(w)`` of the batch (the
  same when the weights are uniform, and the same full-batch, as lbfgs is).
* A fit whose loss becomes NaN or infinite raises :class:`fastbp.TrainingDivergedError`
  (a ``ValueError``) with scikit-learn's message, and the estimator stays as it was;
  with ``early_stopping`` the epoch scores NaN and the best weights are kept, as in
  scikit-learn, but training stops there instead of running on to ``max_iter``.
* Classification has scikit-learn's outputs: one logistic unit for two classes (and for a
  single class), softmax for more, one logistic unit per label for multilabel ``y``.
* ``dtype=None`` (default) follows X: float32 input keeps float32 weights, anything else is
  float64, as in scikit-learn. ``coefs_`` and ``intercepts_`` are live views of the
  weights on the CPU (writing into them, or assigning new lists, changes predictions).
* Sparse X (CSR/CSC) is accepted. A matrix whose dense copy takes at most
  ``SPARSE_DENSE_BYTES`` (256 MiB) is densified once; a larger one is densified a block of
  rows at a time of about that size, in fit (each epoch visits the blocks in a shuffled
  order, each block's rows shuffled within it) and in predict, so the dense matrix never
  exists whole.
"""
import numbers
import warnings

import numpy as np
import scipy.optimize
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import type_of_target, unique_labels
from sklearn.utils.validation import (_check_sample_weight, check_is_fitted, column_or_1d,
                                      validate_data)

from .callbacks import Callback
from .engines.cpu import single_threaded_blas
from .errors import TrainingDivergedError
from .model import MLP
from .optimizers import OPTIMIZERS, Optimizer
from .registry import ACTIVATIONS, LOSSES, REGRESSION_LOSSES
from .search import MLPSearchCV
from .sklearn_conventions import OPTIMIZER_PARAMS, glorot, grad_scale, scaled_optimizer

__all__ = ["MLPClassifier", "MLPRegressor", "MLPSearchCV", "SPARSE_DENSE_BYTES"]

# fastbp's names, and scikit-learn's where they differ.
_ACTIVATIONS = dict({name: name for name in ACTIVATIONS}, logistic="sigmoid")
_REGRESSION_LOSSES = {alias: name for name in REGRESSION_LOSSES
                      for alias in (name,) + LOSSES[name].aliases}
_OUT_ACTIVATION = {"softmax": "softmax", "sigmoid": "logistic", "identity": "identity",
                   "exp": "exp"}
_STOCHASTIC = ("sgd", "adam")

# The most bytes of dense rows a sparse X becomes at once (see the module notes).
SPARSE_DENSE_BYTES = 256 * 2 ** 20

_DIVERGED = ("Solver produced non-finite parameter weights. The input data may contain "
             "large values and need to be preprocessed.")


def _row_blocks(X):
    """Row ranges of X small enough to densify (one range unless X is a large sparse)."""
    n, m = X.shape
    if not sp.issparse(X):
        return [(0, n)]
    rows = max(1, SPARSE_DENSE_BYTES // max(1, m * X.dtype.itemsize))
    return [(s, min(n, s + rows)) for s in range(0, n, rows)]


def _dense(X, dtype):
    """C-contiguous, writeable, of the model's dtype: the kernels are specialised on array
    types, and a read-only array (memmap, joblib's inputs) would compile another copy."""
    if sp.issparse(X):
        X = X.toarray()
    return np.require(X, dtype=dtype, requirements=["C", "W"])


class _EpochEnd(Callback):
    """scikit-learn's end of an epoch (loss curve, stopping rule, learning-rate schedule)."""

    def __init__(self, est, run):
        self.est = est
        self.run = run

    def on_epoch_end(self, epoch, logs=None):
        if self.est._end_epoch(float(logs["loss"]), self.run):
            self.model.stop_training = True


class _Run:
    """What one call of fit/partial_fit trains on."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


class _BaseMLP(BaseEstimator):
    """Shared fit machinery; subclasses define the targets and the output layer."""

    _parameter_constraints = {
        "hidden_layer_sizes": ["array-like", Interval(numbers.Integral, 1, None,
                                                      closed="left")],
        "activation": [StrOptions(set(_ACTIVATIONS))],
        "solver": [StrOptions({"lbfgs", "sgd", "adam"})],
        "alpha": [Interval(numbers.Real, 0, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(numbers.Integral, 1, None,
                                                      closed="left")],
        "learning_rate": [StrOptions({"constant", "invscaling", "adaptive"})],
        "learning_rate_init": [Interval(numbers.Real, 0, None, closed="neither")],
        "power_t": [Interval(numbers.Real, 0, None, closed="left")],
        "max_iter": [Interval(numbers.Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "tol": [Interval(numbers.Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "momentum": [Interval(numbers.Real, 0, 1, closed="both")],
        "nesterovs_momentum": ["boolean"],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(numbers.Real, 0, 1, closed="left")],
        "beta_1": [Interval(numbers.Real, 0, 1, closed="left")],
        "beta_2": [Interval(numbers.Real, 0, 1, closed="left")],
        "epsilon": [Interval(numbers.Real, 0, None, closed="neither")],
        "n_iter_no_change": [Interval(numbers.Integral, 1, None, closed="left"),
                             Options(numbers.Real, {np.inf})],
        "max_fun": [Interval(numbers.Integral, 1, None, closed="left")],
        "optimizer": [None, StrOptions(set(OPTIMIZERS)), Optimizer],
        "dropout": "no_validation",          # fastbp.MLP checks it
        "device": [StrOptions({"cpu", "cuda", "auto"})],
        "dtype": [None, StrOptions({"float32", "float64"}), type, np.dtype],
    }

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 optimizer=None, dropout=0.0, device="cpu", dtype=None):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.optimizer = optimizer
        self.dropout = dropout
        self.device = device
        self.dtype = dtype

    # ----------------------------------------------------------------- parameters
    def _solver(self):
        """The rule that trains: ``optimizer`` when given, else ``solver``."""
        return self.solver if self.optimizer is None else self.optimizer

    def _stochastic(self):
        if self._solver() == "lbfgs":
            raise AttributeError(f"partial_fit is only available for stochastic optimizers. "
                                 f"{self.solver} is not stochastic.")
        return True

    def _hidden_sizes(self):
        hls = self.hidden_layer_sizes
        hls = list(hls) if hasattr(hls, "__iter__") else [hls]
        if any(isinstance(h, bool) or not isinstance(h, numbers.Integral) or h <= 0
               for h in hls):
            raise ValueError(f"hidden_layer_sizes must be > 0, got {hls}.")
        return [int(h) for h in hls]

    def _grad_scale(self):
        """scikit-learn's gradient over fastbp's for the model's loss (see module notes)."""
        return grad_scale(self.model_.loss, self.model_.sizes[-1])

    def _loss_value(self, fastbp_loss):
        """scikit-learn's value of the data loss from fastbp's (mean over rows)."""
        loss, k = self.model_.loss, self.model_.sizes[-1]
        if loss == "mse":
            return 0.5 * fastbp_loss
        if loss == "binary_cross_entropy":
            return k * fastbp_loss
        if loss == "poisson":       # fastbp's exp(z) - y z lacks the deviance's y log y - y
            return fastbp_loss + self._poisson_offset
        return fastbp_loss

    def _weight_mask(self):
        lay = self.model_.layout
        mask = np.zeros(lay.n_params, dtype=bool)
        for layer in range(lay.n_layers):
            mask[lay.w_slice(layer)] = True
        return mask

    # -------------------------------------------------------- state of a failed call
    def _snapshot(self):
        state = {k: (list(v) if isinstance(v, list) else v) for k, v in vars(self).items()}
        model = state.get("model_")
        if model is None:
            return state, None
        model._engine_sync()
        return state, (model, model._params.copy(),
                       None if model._opt_state is None else model._opt_state.copy(),
                       model._step, model._rng.bit_generator.state, model.optimizer,
                       model.history)

    def _restore(self, snapshot):
        state, saved = snapshot
        self.__dict__.clear()
        self.__dict__.update(state)
        if saved is not None:
            model, params, opt_state, step, rng, optimizer, history = saved
            model._params[:] = params
            model._engine_params_changed()
            model._opt_state, model._step, model.optimizer = opt_state, step, optimizer
            model._rng.bit_generator.state = rng
            model.history = history

    # ------------------------------------------------------------------------ fit
    def _fit(self, X, y, sample_weight=None, incremental=False):
        self._validate_params()
        hidden = self._hidden_sizes()
        if incremental and self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True")
        snapshot = self._snapshot()
        try:
            self._fit_checked(X, y, sample_weight, incremental, hidden)
        except BaseException:
            self._restore(snapshot)
            raise
        return self

    def _fit_checked(self, X, y, sample_weight, incremental, hidden):
        first_pass = not hasattr(self, "model_") or (not self.warm_start and not incremental)
        X, y = self._validate_input(X, y, incremental, reset=first_pass)
        if sp.issparse(X):
            X = X.tocsr()
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64)
        Y = y.reshape(-1, 1) if y.ndim == 1 else y
        rs = check_random_state(self.random_state)
        sizes = [X.shape[1]] + hidden + [Y.shape[1]]
        if first_pass:
            self._initialize(sizes, X.dtype, rs)
        elif self.model_.sizes != sizes:
            raise ValueError(f"{'partial_fit' if incremental else 'warm_start'} got a "
                             f"network of layer sizes {sizes}; the fitted one has "
                             f"{self.model_.sizes}")
        model = self.model_
        if sp.issparse(X):
            X = X.astype(model.dtype)
        else:
            X = _dense(X, model.dtype)
        Y = np.ascontiguousarray(Y, dtype=model.dtype)
        if model.loss == "poisson":
            w = np.ones(len(Y)) if sample_weight is None else sample_weight
            with np.errstate(divide="ignore", invalid="ignore"):
                ylogy = np.where(Y > 0, Y * np.log(np.where(Y > 0, Y, 1)), 0.0)
            self._poisson_offset = float(np.average((ylogy - Y).mean(axis=1), weights=w))
        if self._solver() == "lbfgs":
            self._fit_lbfgs(X, Y, sample_weight)
        else:
            self._fit_stochastic(X, Y, sample_weight, rs, incremental)
        model._engine_sync()
        if not np.isfinite(model._params).all():
            raise TrainingDivergedError(_DIVERGED)

    def _initialize(self, sizes, dtype, rs):
        dtype = np.dtype(dtype if self.dtype is None else self.dtype)
        weights = glorot(rs, sizes, self.activation, dtype)
        model = MLP(sizes, activation=_ACTIVATIONS[self.activation],
                    loss=self._loss_name(sizes[-1]), dtype=dtype.name,
                    seed=int(rs.randint(np.iinfo(np.int32).max)), device=self.device,
                    dropout=self.dropout)
        model.set_weights(weights)
        self.model_ = model
        self.n_iter_ = 0
        self.t_ = 0
        self._fastbp_optimizer = None
        if self._solver() != "lbfgs":
            self.loss_curve_ = []
            self._no_improvement_count = 0
            if self.early_stopping:
                self.validation_scores_ = []
                self.best_validation_score_ = -np.inf
                self.best_loss_ = None
            else:
                self.best_loss_ = np.inf
                self.validation_scores_ = None
                self.best_validation_score_ = None

    # ---------------------------------------------------------------------- lbfgs
    def _loss_and_grads(self, X, Y, w):
        """fastbp's mean loss and flat gradient over all rows, a row block at a time."""
        engine, n = self.model_._engine, X.shape[0]
        total, grads = 0.0, None
        for start, stop in _row_blocks(X):
            Xb = _dense(X[start:stop], self.model_.dtype)
            loss, g = engine.loss_and_grads(Xb, Y[start:stop], w[start:stop])
            share = (stop - start) / n
            total += float(loss) * share
            g = np.asarray(g, dtype=np.float64) * share
            grads = g if grads is None else grads + g
        return total, grads

    def _fit_lbfgs(self, X, Y, sample_weight):
        model = self.model_
        n = X.shape[0]
        w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, np.float64)
        sw_sum = float(w.sum())
        Yc = model._Y(Y if model.loss != "cross_entropy" else Y.argmax(axis=1), n)
        mask = self._weight_mask()
        alpha, c, per_row = float(self.alpha), self._grad_scale(), n / sw_sum
        model._engine_sync()
        theta0 = model._params.astype(np.float64)

        def objective(theta):
            model._params[:] = theta
            model._engine_params_changed()
            loss, grads = self._loss_and_grads(X, Yc, w)
            wts = theta[mask]
            l2 = 0.5 * alpha * float(wts @ wts) / sw_sum
            grads *= c * per_row
            grads[mask] += alpha / sw_sum * wts
            objective.loss = self._loss_value(loss) * per_row + l2
            return c * loss * per_row + l2, grads

        with single_threaded_blas():
            res = scipy.optimize.minimize(
                objective, theta0, method="L-BFGS-B", jac=True,
                options={"maxfun": self.max_fun, "maxiter": self.max_iter, "gtol": self.tol})
        model._params[:] = res.x
        model._engine_params_changed()
        if self.verbose:
            print(f"L-BFGS-B: {res.nit} iterations, {res.nfev} evaluations, loss = "
                  f"{res.fun:.8f}: {res.message}")
        if not res.success:
            warnings.warn(f"lbfgs failed to converge after {res.nit} iteration(s) "
                          f"(status={res.status}):\n{res.message}\n\nIncrease the number of "
                          f"iterations to improve the convergence "
                          f"(max_iter={self.max_iter}).\nYou might also want to scale the "
                          f"data.", ConvergenceWarning, stacklevel=5)
        self.n_iter_ = min(int(res.nit), int(self.max_iter))
        objective(res.x)
        self.loss_ = float(objective.loss)

    # ------------------------------------------------------------ sgd and adam
    def _make_optimizer(self, batch_size):
        solver = self._solver()
        if isinstance(solver, Optimizer):
            return solver
        return scaled_optimizer(solver, float(self._learning_rate), float(self.alpha),
                                batch_size, self._grad_scale(),
                                **{k: getattr(self, k) for k in OPTIMIZER_PARAMS})

    def _fit_stochastic(self, X, Y, sample_weight, rs, incremental):
        model = self.model_
        early = bool(self.early_stopping)
        if not incremental or getattr(self, "_learning_rate", None) is None:
            self._learning_rate = float(self.learning_rate_init)
        Xv = yv = wv = None
        if not hasattr(self, "loss_curve_"):      # warm start after an lbfgs fit
            self.loss_curve_, self._no_improvement_count = [], 0
            self.validation_scores_ = self.best_validation_score_ = None
        if not early and getattr(self, "best_loss_", None) is None:
            self.best_loss_ = np.inf        # after a fit with early stopping
        if early:
            if self.validation_scores_ is None:       # warm start after a fit without it
                self.validation_scores_, self.best_validation_score_ = [], -np.inf
                self.best_loss_ = None
            stratify = Y.astype(bool) if self._stratified(Y) else None
            arrays = [X, Y] + ([] if sample_weight is None else [sample_weight])
            try:
                parts = train_test_split(*arrays, random_state=rs,
                                         test_size=self.validation_fraction, stratify=stratify)
            except ValueError as e:
                raise self._split_error(e, Y) from None
            X, Xv, Y, Yv = parts[:4]
            if sample_weight is not None:
                sample_weight, wv = parts[4], parts[5]
            if Xv.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase "
                                 "'validation_fraction' or the size of your dataset.")
            yv = self._decode(Yv)
        n = X.shape[0]
        if self.batch_size == "auto":
            batch = min(200, n)
        else:
            if self.batch_size > n:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It "
                              "is going to be clipped", stacklevel=5)
            batch = int(np.clip(self.batch_size, 1, n))
        if sample_weight is not None:
            sample_weight = sample_weight * (n / sample_weight.sum())
        targets = Y.argmax(axis=1) if model.loss == "cross_entropy" else Y
        run = _Run(n=n, n_batches=-(-n // batch), validation=(Xv, yv, wv), early=early,
                   stopped=False)
        self.n_iter_ = 0
        self._best_params = None
        epochs = 1 if incremental else int(self.max_iter)
        opt = self._make_optimizer(batch)
        fit_args = dict(batch_size=batch, shuffle=bool(self.shuffle), verbose=0,
                        sample_weight=sample_weight)
        try:
            if len(_row_blocks(X)) == 1:
                model.fit(_dense(X, model.dtype), targets, epochs=epochs, optimizer=opt,
                          callbacks=[_EpochEnd(self, run)], warm_start=incremental,
                          **fit_args)
                if model.history.interrupted:
                    warnings.warn("Training interrupted by user.", stacklevel=5)
            else:
                self._fit_blocks(X, targets, epochs, opt, run, incremental, fit_args)
        except TrainingDivergedError:
            if not (early and self._best_params is not None):
                raise TrainingDivergedError(_DIVERGED) from None
            # scikit-learn scores the epoch NaN and keeps the best weights.
            self.loss_curve_.append(np.nan)
            self.validation_scores_.append(np.nan)
            self.n_iter_ += 1
            self.t_ += n
            run.stopped = True
        self._fastbp_optimizer = model.optimizer
        if early and self._best_params is not None:
            model._params[:] = self._best_params
            model._engine_params_changed()
        self._best_params = None
        if not incremental and not run.stopped and self.n_iter_ == self.max_iter:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) "
                          f"reached and the optimization hasn't converged yet.",
                          ConvergenceWarning, stacklevel=5)

    def _fit_blocks(self, X, targets, epochs, opt, run, incremental, fit_args):
        """Epochs over a large sparse X, densified a block of rows at a time."""
        model, n = self.model_, X.shape[0]
        blocks = _row_blocks(X)
        weights = fit_args.pop("sample_weight")
        first = not incremental
        for _ in range(epochs):
            order = model._rng.permutation(len(blocks)) if self.shuffle else \
                range(len(blocks))
            total = 0.0
            for b in order:
                start, stop = blocks[b]
                history = model.fit(_dense(X[start:stop], model.dtype), targets[start:stop],
                                    epochs=1, optimizer=opt if first else model.optimizer,
                                    warm_start=not first,
                                    sample_weight=None if weights is None else
                                    weights[start:stop], **fit_args)
                first = False
                total += history.history["loss"][0] * (stop - start)
            if self._end_epoch(total / n, run):
                break

    def _end_epoch(self, fastbp_loss, run):
        """scikit-learn's bookkeeping after an epoch; True to stop."""
        model = self.model_
        penalty = 0.0
        if self.alpha:
            model._engine_sync()
            wts = model._params[self._weight_mask()].astype(np.float64)
            penalty = 0.5 * float(self.alpha) * float(np.square(wts).sum()) * run.n_batches / run.n
        loss = self._loss_value(fastbp_loss) + penalty
        self.n_iter_ += 1
        self.loss_ = loss
        self.t_ += run.n
        self.loss_curve_.append(loss)
        if self.verbose:
            print(f"Iteration {self.n_iter_}, loss = {loss:.8f}")
        if run.early:
            Xv, yv, wv = run.validation
            score = self._validation_score(Xv, yv, wv)
            self.validation_scores_.append(score)
            if self.verbose:
                print(f"Validation score: {score:f}")
            if score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                model._engine_sync()
                self._best_params = model._params.copy()
        else:
            if loss > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if loss < self.best_loss_:
                self.best_loss_ = loss
        sgd = self._solver() == "sgd" and self.optimizer is None
        if sgd and self.learning_rate == "invscaling":
            self._learning_rate = float(self.learning_rate_init) / (self.t_ + 1) ** self.power_t
            model.optimizer.lr = self._learning_rate * self._grad_scale()
        if self._no_improvement_count > self.n_iter_no_change:
            what = "Validation score" if run.early else "Training loss"
            msg = (f"{what} did not improve more than tol={self.tol:f} for "
                   f"{self.n_iter_no_change} consecutive epochs.")
            if sgd and self.learning_rate == "adaptive" and self._learning_rate > 1e-6:
                self._learning_rate /= 5.0
                model.optimizer.lr = self._learning_rate * self._grad_scale()
                self._no_improvement_count = 0
                if self.verbose:
                    print(f"{msg} Setting learning rate to {self._learning_rate:f}")
                return False
            if self.verbose:
                tail = " Learning rate too small." if sgd and \
                    self.learning_rate == "adaptive" else ""
                print(f"{msg}{tail} Stopping.")
            run.stopped = True
            return True
        return False

    def _validation_score(self, X, y, sample_weight):
        """Accuracy or R^2 on the held-out rows; NaN when the outputs are not finite."""
        out = self._outputs(X)
        if not np.isfinite(out).all():
            return np.nan
        return float(self._score_function(y, self._predict_from(out),
                                          sample_weight=sample_weight))

    def fit(self, X, y, sample_weight=None):
        """Fit the model to data matrix X and target(s) y.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        self
        """
        return self._fit(X, y, sample_weight=sample_weight, incremental=False)

    # ------------------------------------------------------------------ read-outs
    def _outputs(self, X):
        """The network's outputs (n, n_outputs) for validated X, in the model's dtype."""
        model = self.model_
        predict = model.predict_proba if model.is_classifier else model.predict
        parts = [np.asarray(predict(_dense(X[a:b], model.dtype))).reshape(b - a, -1)
                 for a, b in _row_blocks(X)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _forward(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, accept_sparse=["csr", "csc"],
                          dtype=(np.float64, np.float32))
        return self._outputs(X.tocsr() if sp.issparse(X) else X)

    def _weights_view(self, bias):
        check_is_fitted(self)
        model = self.model_
        model._engine_sync()
        lay, flat = model.layout, model._params
        out = []
        for layer in range(lay.n_layers):
            if bias:
                out.append(flat[lay.b_slice(layer)])
            else:
                out.append(flat[lay.w_slice(layer)].reshape(model.sizes[layer],
                                                             model.sizes[layer + 1]))
        if model.device != "cpu":       # the device holds the weights: copies only
            out = [a.copy() for a in out]
        return out

    def _set_weights(self, values, bias):
        check_is_fitted(self)
        weights = self.model_.get_weights()
        values = list(values)
        if len(values) != len(weights) // 2:
            raise ValueError(f"{'intercepts_' if bias else 'coefs_'} needs "
                             f"{len(weights) // 2} arrays, got {len(values)}")
        weights[int(bias)::2] = values
        self.model_.set_weights(weights)

    coefs_ = property(lambda self: self._weights_view(False),
                      lambda self, v: self._set_weights(v, False),
                      doc="Weight matrices (n_in, n_out) per layer; live views on the CPU.")
    intercepts_ = property(lambda self: self._weights_view(True),
                           lambda self, v: self._set_weights(v, True),
                           doc="Bias vectors per layer; live views on the CPU.")

    @property
    def n_layers_(self):
        check_is_fitted(self)
        return len(self.model_.sizes)

    @property
    def n_outputs_(self):
        check_is_fitted(self)
        return self.model_.sizes[-1]

    @property
    def out_activation_(self):
        check_is_fitted(self)
        return _OUT_ACTIVATION[LOSSES[self.model_.loss].link]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.non_deterministic = self.device != "cpu"
        return tags


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier: ``sklearn.neural_network.MLPClassifier``'s
    parameters, attributes and behaviour, trained by fastbp's compiled code.

    Parameters
    ----------
    hidden_layer_sizes, activation, solver, alpha, batch_size, learning_rate,
    learning_rate_init, power_t, max_iter, shuffle, random_state, tol, verbose, warm_start,
    momentum, nesterovs_momentum, early_stopping, validation_fraction, beta_1, beta_2,
    epsilon, n_iter_no_change, max_fun :
        As in scikit-learn (same defaults). ``activation`` also takes fastbp's
        "leaky_relu", "elu", "gelu" and "silu".
    optimizer : str or fastbp.Optimizer, default None (keyword-only, fastbp's)
        Overrides ``solver``: "sgd", "adam", "adamw", "rmsprop", "adagrad", or an
        optimizer object used as given (its own learning rate and weight decay).
    dropout : float or sequence of float, default 0.0 (keyword-only, fastbp's)
        Inverted-dropout rate after each hidden layer, in training only.
    device : {"cpu", "cuda", "auto"}, default "cpu" (keyword-only, fastbp's)
    dtype : {None, "float32", "float64"}, default None (keyword-only, fastbp's)
        None: float32 for float32 X, else float64, as scikit-learn.

    Attributes
    ----------
    classes_, loss_, best_loss_, loss_curve_, validation_scores_, best_validation_score_,
    t_, coefs_, intercepts_, n_features_in_, feature_names_in_, n_iter_, n_layers_,
    n_outputs_, out_activation_ :
        As in scikit-learn. ``coefs_`` and ``intercepts_`` are views of the weights.
    model_ : fastbp.MLP
        The trained network (``model_.save(path)``, ``model_.to_onnx()``, ...).
    """

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 optimizer=None, dropout=0.0, device="cpu", dtype=None):
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes, activation=activation, solver=solver,
            alpha=alpha, batch_size=batch_size, learning_rate=learning_rate,
            learning_rate_init=learning_rate_init, power_t=power_t, max_iter=max_iter,
            shuffle=shuffle, random_state=random_state, tol=tol, verbose=verbose,
            warm_start=warm_start, momentum=momentum, nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping, validation_fraction=validation_fraction,
            beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, n_iter_no_change=n_iter_no_change,
            max_fun=max_fun, optimizer=optimizer, dropout=dropout, device=device,
            dtype=dtype)

    _score_function = staticmethod(accuracy_score)

    @property
    def _is_multilabel(self):
        return self._label_binarizer.y_type_.startswith("multilabel")

    def _loss_name(self, n_outputs):
        return "cross_entropy" if self._label_binarizer.y_type_ == "multiclass" \
            else "binary_cross_entropy"

    def _stratified(self, Y):
        return Y.shape[1] == 1        # as scikit-learn: binary y only

    def _split_error(self, error, Y):
        """train_test_split's error, with the user's labels that have too few rows."""
        labels, counts = np.unique(self._decode(Y), return_counts=True)
        few = [lab for lab, c in zip(labels.tolist(), counts) if c < 2]
        return ValueError(f"{error} (early_stopping splits the rows stratified by class: "
                          f"the classes of y with too few members are {few})")

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, reset=reset, accept_sparse=["csr", "csc"],
                             multi_output=True, dtype=(np.float64, np.float32))
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer().fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError(f"warm_start can only be used where `y` has the same "
                                     f"classes as in the previous call to fit. Previously "
                                     f"got {self.classes_}, `y` has {classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` "
                                 f"has {self.classes_}. 'y' has {classes}.")
        return X, self._label_binarizer.transform(y)

    def _decode(self, Y):
        return self._label_binarizer.inverse_transform(Y.ravel() if Y.shape[1] == 1 else Y)

    def _predict_from(self, out):
        return self._label_binarizer.inverse_transform(out.ravel() if out.shape[1] == 1
                                                       else out)

    @available_if(lambda est: est._stochastic())
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """Update the model with a single epoch over (X, y).

        ``classes`` (every label that will ever appear) is required on the first call.
        """
        known = getattr(self, "classes_", None)
        if known is None and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit.")
        if classes is not None and known is not None:
            if not np.array_equal(known, unique_labels(classes)):
                raise ValueError(f"`classes={classes!r}` is not the same as on last call to "
                                 f"partial_fit, was: {known!r}")
        if classes is None or known is not None:
            return self._fit(X, y, sample_weight=sample_weight, incremental=True)
        snapshot = self._snapshot()
        try:
            self._validate_params()
            multilabel = type_of_target(y).startswith("multilabel")
            self._label_binarizer = LabelBinarizer().fit(y if multilabel else classes)
            self.classes_ = self._label_binarizer.classes_
            return self._fit(X, y, sample_weight=sample_weight, incremental=True)
        except BaseException:
            self._restore(snapshot)
            raise

    def predict(self, X):
        """Class labels, shape (n_samples,), or the 0/1 matrix of multilabel y."""
        return self._predict_from(self._forward(X))

    def predict_proba(self, X):
        """Probabilities (n_samples, n_classes), columns in the order of ``classes_``."""
        out = self._forward(X)
        if out.shape[1] == 1:
            p = out.ravel()
            return np.vstack([1 - p, p]).T
        return out

    def predict_log_proba(self, X):
        """``log(predict_proba(X))``."""
        proba = self.predict_proba(X)
        with np.errstate(divide="ignore"):
            return np.log(proba, out=proba)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor: ``sklearn.neural_network.MLPRegressor``'s
    parameters, attributes and behaviour, trained by fastbp's compiled code.

    Parameters are those of :class:`MLPClassifier`, plus

    loss : {"squared_error", "poisson"}, default "squared_error"
        scikit-learn's losses (poisson: exp output); fastbp's "absolute_error" ("mae") and
        "huber" too.

    Attributes are those of :class:`MLPClassifier` without ``classes_``; ``predict``
    returns (n_samples,) for one output, else (n_samples, n_outputs), in the weights' dtype.
    """

    _parameter_constraints = {**_BaseMLP._parameter_constraints,
                              "loss": [StrOptions(set(_REGRESSION_LOSSES))]}

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *,
                 solver="adam", alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 optimizer=None, dropout=0.0, device="cpu", dtype=None):
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes, activation=activation, solver=solver,
            alpha=alpha, batch_size=batch_size, learning_rate=learning_rate,
            learning_rate_init=learning_rate_init, power_t=power_t, max_iter=max_iter,
            shuffle=shuffle, random_state=random_state, tol=tol, verbose=verbose,
            warm_start=warm_start, momentum=momentum, nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping, validation_fraction=validation_fraction,
            beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, n_iter_no_change=n_iter_no_change,
            max_fun=max_fun, optimizer=optimizer, dropout=dropout, device=device,
            dtype=dtype)
        self.loss = loss

    _score_function = staticmethod(r2_score)

    def _loss_name(self, n_outputs):
        return _REGRESSION_LOSSES[self.loss]

    def _stratified(self, Y):
        return False

    def _split_error(self, error, Y):
        return error

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, reset=reset, accept_sparse=["csr", "csc"],
                             multi_output=True, y_numeric=True,
                             dtype=(np.float64, np.float32))
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return X, y

    def _decode(self, Y):
        return Y.ravel() if Y.shape[1] == 1 else Y

    def _predict_from(self, out):
        return out.ravel() if out.shape[1] == 1 else out

    @available_if(lambda est: est._stochastic())
    def partial_fit(self, X, y, sample_weight=None):
        """Update the model with a single epoch over (X, y)."""
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def predict(self, X):
        """Predicted values: (n_samples,) for one output, else (n_samples, n_outputs)."""
        return self._predict_from(self._forward(X))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags


# skl2onnx looks converters up in its own registry: fill it when skl2onnx is imported, not
# here, so that this import stays light (fastbp.export.sklearn_onnx explains how).
from .export.sklearn_onnx import register_when_imported as _register_onnx  # noqa: E402

_register_onnx(MLPClassifier, MLPRegressor)
