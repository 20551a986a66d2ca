"""scikit-learn estimators around :class:`fastbp.MLP`: ``MLPClassifier`` and ``MLPRegressor``.

Parameters keep scikit-learn's names where the meaning is the same, so these drop into
Pipelines, GridSearchCV and code written for ``sklearn.neural_network``. Each ``fit`` builds
a fresh :class:`fastbp.MLP` (``warm_start=True`` continues the previous one instead) from
``hidden_layer_sizes`` and the data's shape, and trains it in compiled chunks.

Mapping to scikit-learn's MLP
-----------------------------
* ``max_iter`` is the number of epochs; ``tol`` and ``n_iter_no_change`` stop training as
  scikit-learn does: when the epoch's training loss (or, with ``early_stopping``, the
  validation score) has not improved by ``tol`` for more than ``n_iter_no_change``
  consecutive epochs. With ``early_stopping`` the weights of the best validation score are
  restored at the end. Reaching ``max_iter`` first emits a ``ConvergenceWarning``.
* ``alpha`` is the L2 penalty. scikit-learn adds ``alpha / (2 * batch) * ||W||^2`` to each
  batch's mean loss, whose gradient is ``alpha / batch * W``; fastbp applies the same
  gradient term as the optimizer's ``weight_decay = alpha / batch_size`` (torch.optim's L2
  form). Unlike scikit-learn it also decays the biases, and ``loss_curve_`` holds the
  mean data loss of each epoch without the penalty term.
* ``optimizer`` replaces scikit-learn's ``solver``: "adam" (default; ``beta_1``, ``beta_2``,
  ``epsilon``), "sgd" (``momentum``, ``nesterovs_momentum``), "adamw", "rmsprop", or a
  :class:`fastbp.Optimizer` object used as given (its own lr and weight decay). There is
  no lbfgs and no learning-rate schedule parameter.
* ``activation``: "relu", "tanh", "logistic" (sigmoid), "identity", and fastbp's
  "leaky_relu", "elu", "gelu".
* Classification uses a softmax output with one unit per class, binary problems included
  (so ``n_outputs_`` is 2 there, where scikit-learn uses one logistic unit); multilabel
  ``y`` (2-D 0/1 indicator) uses one sigmoid unit per label.
* ``dtype`` defaults to float64, scikit-learn's precision: predictions then agree to
  round-off whatever the batch of rows they were computed in. float32 trains about twice
  as fast on the CPU.
* ``sample_weight`` is not accepted by ``fit``: weighting rows of a stochastic mini-batch
  fit is not equivalent to repeating them, which scikit-learn's estimator checks require.
"""
import inspect
import numbers
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from .callbacks import Callback
from .model import MLP
from .optimizers import OPTIMIZERS, Optimizer
from .registry import ACTIVATIONS, LOSSES, REGRESSION_LOSSES

__all__ = ["MLPClassifier", "MLPRegressor"]

# fastbp's names, and scikit-learn's where they differ.
_ACTIVATIONS = dict({name: name for name in ACTIVATIONS}, logistic="sigmoid")
_REGRESSION_LOSSES = {alias: name for name in REGRESSION_LOSSES
                      for alias in (name,) + LOSSES[name].aliases}


class _StopRule(Callback):
    """scikit-learn's stopping rule, run at each epoch end.

    Without a validation set: the epoch's training loss must beat the best loss by ``tol``;
    with one: the validation score (accuracy or R^2) must beat the best score by ``tol``.
    More than ``n_iter_no_change`` epochs in a row without that stops the fit.
    """

    def __init__(self, est, validation, verbose):
        self.est = est
        self.validation = validation
        self.verbose = verbose
        self.converged = False

    def on_epoch_end(self, epoch, logs=None):
        est = self.est
        loss = float(logs["loss"])
        est.loss_curve_.append(loss)
        est.n_iter_ += 1
        if self.validation is not None:
            Xv, yv = self.validation
            score = est._score_on(self.model, Xv, yv)
            est.validation_scores_.append(score)
            if self.verbose:
                print(f"Iteration {est.n_iter_}, loss = {loss:.8f}, validation score = "
                      f"{score:.8f}")
            if score < est.best_validation_score_ + est.tol:
                est._no_improvement_count += 1
            else:
                est._no_improvement_count = 0
            if score > est.best_validation_score_:
                est.best_validation_score_ = score
                est._best_weights = self.model.get_weights()
        else:
            if self.verbose:
                print(f"Iteration {est.n_iter_}, loss = {loss:.8f}")
            if loss > est.best_loss_ - est.tol:
                est._no_improvement_count += 1
            else:
                est._no_improvement_count = 0
            if loss < est.best_loss_:
                est.best_loss_ = loss
        if est._no_improvement_count > est.n_iter_no_change:
            if self.verbose:
                what = ("Validation score" if self.validation is not None
                        else "Training loss")
                print(f"{what} did not improve more than tol={est.tol} for "
                      f"{est.n_iter_no_change} consecutive epochs. Stopping.")
            self.converged = True
            self.model.stop_training = True


class _BaseMLP(BaseEstimator):
    """Shared fit machinery; subclasses define the targets and the output layer."""

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, optimizer="adam",
                 alpha=0.0001, batch_size="auto", learning_rate_init=0.001, max_iter=200,
                 shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False,
                 validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 n_iter_no_change=10, dropout=0.0, device="cpu", dtype="float64"):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.optimizer = optimizer
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
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
        self.dropout = dropout
        self.device = device
        self.dtype = dtype

    # ----------------------------------------------------------------- parameters
    def _check_params(self):
        """Validate hyperparameters in fit (scikit-learn's rule: never in __init__)."""
        hls = self.hidden_layer_sizes
        if isinstance(hls, numbers.Integral) and not isinstance(hls, bool):
            hls = [hls]
        try:
            hls = [h for h in hls]
        except TypeError:
            raise ValueError(f"hidden_layer_sizes must be an int or a sequence of ints, got "
                             f"{self.hidden_layer_sizes!r}") from None
        for h in hls:
            if isinstance(h, bool) or not isinstance(h, numbers.Integral) or h <= 0:
                raise ValueError(f"hidden_layer_sizes must be > 0, got "
                                 f"{self.hidden_layer_sizes!r}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not supported; choose one of "
                             f"{sorted(_ACTIVATIONS)}")
        for name in ("max_iter", "n_iter_no_change"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        bs = self.batch_size
        if not (bs == "auto" or (isinstance(bs, numbers.Integral) and not isinstance(bs, bool)
                                 and bs > 0)):
            raise ValueError(f"batch_size must be 'auto' or a positive int, got {bs!r}")
        for name in ("alpha", "tol"):
            v = getattr(self, name)
            if not isinstance(v, numbers.Real) or not v >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        if not isinstance(self.learning_rate_init, numbers.Real) or \
                not self.learning_rate_init > 0:
            raise ValueError(f"learning_rate_init must be > 0, got {self.learning_rate_init!r}")
        if self.early_stopping and not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in (0, 1), got "
                             f"{self.validation_fraction!r}")
        return [int(h) for h in hls]

    def _make_optimizer(self, batch_size):
        opt = self.optimizer
        if isinstance(opt, Optimizer):
            return opt
        decay = float(self.alpha) / batch_size
        lr = float(self.learning_rate_init)
        cls = OPTIMIZERS.get(opt.lower()) if isinstance(opt, str) else None
        if cls is None:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)} or a fastbp "
                             f"Optimizer, got {opt!r}")
        # scikit-learn's parameters, to each rule that has them (momentum: SGD's only).
        accepts = inspect.signature(cls).parameters
        kwargs = dict(lr=lr, weight_decay=decay)
        if "betas" in accepts:
            kwargs["betas"] = (self.beta_1, self.beta_2)
        if "eps" in accepts:
            kwargs["eps"] = self.epsilon
        if "nesterov" in accepts:
            kwargs.update(momentum=self.momentum,
                          nesterov=bool(self.nesterovs_momentum and self.momentum > 0))
        return cls(**kwargs)

    def _seed(self):
        rs = self.random_state
        if isinstance(rs, numbers.Integral) and not isinstance(rs, bool):
            return int(rs)
        return int(check_random_state(rs).randint(np.iinfo(np.int32).max))

    # ------------------------------------------------------------------------ fit
    def _validate_X(self, X, reset):
        X = validate_data(self, X, reset=reset, dtype=(np.float64, np.float32),
                          order="C")
        return self._writeable(X)

    def _writeable(self, X):
        # The compiled kernels are specialised on array types; a read-only array (memmap,
        # joblib's shared inputs) would compile a second copy of every kernel. Copy instead.
        dtype = np.dtype(self.dtype)
        return np.require(X, dtype=dtype, requirements=["C", "W"])

    def _fit(self, X, y, incremental, classes=None):
        hidden = self._check_params()
        first = not hasattr(self, "model_")
        reset = not (incremental and not first)
        X, y = validate_data(self, X, y, reset=reset, dtype=(np.float64, np.float32),
                             order="C", multi_output=True, y_numeric=self._y_numeric)
        X = self._writeable(X)
        Y, y = self._encode_targets(y, incremental, classes)
        n_out = Y.shape[1] if Y.ndim == 2 else self._n_model_outputs()
        seed = self._seed()

        keep = (incremental and not first) or (self.warm_start and not first)
        if keep and (self.model_.sizes[0] != X.shape[1] or self.model_.sizes[-1] != n_out):
            if incremental:
                raise ValueError(f"partial_fit got data with {X.shape[1]} features and "
                                 f"{n_out} outputs; the model has {self.model_.sizes[0]} "
                                 f"and {self.model_.sizes[-1]}")
            keep = False
        if not keep:
            self.model_ = MLP([X.shape[1]] + hidden + [n_out],
                              activation=_ACTIVATIONS[self.activation], loss=self._loss_name(),
                              dtype=self.dtype, seed=seed, device=self.device,
                              dropout=self.dropout)
            self.loss_curve_ = []
            self.n_iter_ = 0
            self.t_ = 0
            self._no_improvement_count = 0
            self.best_loss_ = np.inf
            self.validation_scores_ = None
            self.best_validation_score_ = None

        early = bool(self.early_stopping) and not incremental
        validation = None
        if early:
            stratify = self._stratify(y)
            X, Xv, Y, yv_enc, _, yv = train_test_split(
                X, Y, y, random_state=seed, test_size=self.validation_fraction,
                stratify=stratify)
            if Xv.shape[0] < 2:
                raise ValueError("The validation set is too small; increase "
                                 "validation_fraction or the number of samples")
            X = np.ascontiguousarray(X)
            Y = np.ascontiguousarray(Y)
            validation = (np.ascontiguousarray(Xv), yv)
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self.best_loss_ = None
            self._best_weights = None
            self._no_improvement_count = 0
        elif keep and not incremental:
            self._no_improvement_count = 0

        batch = min(200 if self.batch_size == "auto" else int(self.batch_size), X.shape[0])
        rule = _StopRule(self, validation, self.verbose)
        epochs = 1 if incremental else int(self.max_iter)
        self.model_.fit(X, Y, epochs=epochs, batch_size=batch,
                        optimizer=self._make_optimizer(batch), shuffle=bool(self.shuffle),
                        verbose=0, callbacks=[rule], warm_start=keep)
        self.t_ = int(self.model_._step)
        if early and self._best_weights is not None:
            self.model_.set_weights(self._best_weights)
        self._best_weights = None
        if not incremental and not rule.converged and self.n_iter_ >= 1 \
                and self.model_.history is not None \
                and len(self.model_.history.epoch) == self.max_iter:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) "
                          f"reached and the optimization hasn't converged yet.",
                          ConvergenceWarning, stacklevel=2)
        return self

    def fit(self, X, y):
        """Train on (X, y) for up to ``max_iter`` epochs; returns self.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
        """
        return self._fit(X, y, incremental=False)

    def _score_on(self, model, X, y):
        """Validation score during fit: accuracy (classifier) or R^2 (regressor)."""
        return float(self.score(X, y))

    # ------------------------------------------------------------------ read-outs
    @property
    def coefs_(self):
        """Weight matrices, one (n_in, n_out) array per layer (copies)."""
        check_is_fitted(self)
        return self.model_.get_weights()[0::2]

    @property
    def intercepts_(self):
        """Bias vectors, one per layer (copies)."""
        check_is_fitted(self)
        return self.model_.get_weights()[1::2]

    @property
    def n_layers_(self):
        check_is_fitted(self)
        return len(self.model_.sizes)

    @property
    def n_outputs_(self):
        check_is_fitted(self)
        return self.model_.sizes[-1]

    @property
    def loss_(self):
        check_is_fitted(self)
        return self.loss_curve_[-1] if self.loss_curve_ else None

    def _forward(self, X):
        check_is_fitted(self)
        X = self._validate_X(X, reset=False)
        return X

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.device != "cpu"
        return tags


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multilayer-perceptron classifier trained by fastbp's compiled backpropagation.

    Parameters
    ----------
    hidden_layer_sizes : int or tuple of int, default (100,)
        Widths of the hidden layers.
    activation : {"relu", "tanh", "logistic", "identity", "leaky_relu", "elu", "gelu"}
    optimizer : {"adam", "sgd", "adamw", "rmsprop"} or fastbp.Optimizer, default "adam"
    alpha : float, default 1e-4
        L2 penalty (see the module notes for the mapping to weight decay).
    batch_size : int or "auto", default "auto" (min(200, n_samples))
    learning_rate_init : float, default 1e-3
    max_iter : int, default 200
        Epochs.
    shuffle, random_state, tol, verbose, warm_start, momentum, nesterovs_momentum,
    early_stopping, validation_fraction, beta_1, beta_2, epsilon, n_iter_no_change :
        As in ``sklearn.neural_network.MLPClassifier``.
    dropout : float or sequence of float, default 0.0
        Inverted-dropout rate after each hidden layer.
    device : {"cpu", "cuda", "auto"}, default "cpu"
    dtype : {"float64", "float32"}, default "float64"

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels (any sortable type, strings included); for multilabel ``y``, 0..n-1.
    n_features_in_, feature_names_in_ : as in scikit-learn.
    loss_curve_ : list of float
        Mean training loss of each epoch (all fits of a warm/partial sequence).
    n_iter_ : int
        Epochs run. ``t_``: optimizer steps.
    best_loss_, validation_scores_, best_validation_score_ : as in scikit-learn.
    coefs_, intercepts_ : lists of arrays (copies of the weights).
    model_ : fastbp.MLP
        The trained network (save it with ``model_.save(path)``).
    """

    _y_numeric = False

    def _loss_name(self):
        return "binary_cross_entropy" if self._multilabel else "cross_entropy"

    def _n_model_outputs(self):
        return len(self.classes_)

    def _stratify(self, y):
        return None if self._multilabel else y

    def _encode_targets(self, y, incremental, classes):
        first = not hasattr(self, "model_") or not incremental
        if isinstance(y, np.ndarray) and y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        kind = type_of_target(y)
        if kind == "multilabel-indicator":
            if not first and not self._multilabel:
                raise ValueError("partial_fit got multilabel y but the model was fitted on "
                                 "single-label y")
            if first:
                self._multilabel = True
                self.classes_ = np.arange(y.shape[1])
                self._label_dtype = np.asarray(y).dtype
            elif y.shape[1] != len(self.classes_):
                raise ValueError(f"y has {y.shape[1]} labels, the model has "
                                 f"{len(self.classes_)}")
            return np.ascontiguousarray(y, dtype=self.dtype), y
        y = column_or_1d(y)
        if first:
            self._multilabel = False
            if incremental:
                if classes is None:
                    raise ValueError("classes must be passed on the first call to "
                                     "partial_fit.")
                labels = np.unique(np.asarray(classes))
                unseen = np.setdiff1d(y, labels)
                if unseen.size:
                    raise ValueError(f"y has labels {unseen!r} that are not in classes "
                                     f"{labels!r}")
            else:
                labels = np.unique(y)
            if len(labels) < 2:
                raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes "
                                 f"in the data, but the data contains only one class: "
                                 f"{labels[0]!r}")
            self.classes_ = labels
        else:
            if self._multilabel:
                raise ValueError("partial_fit got single-label y but the model was fitted "
                                 "on multilabel y")
            if classes is not None and not np.array_equal(np.unique(classes), self.classes_):
                raise ValueError(f"classes={classes!r} differs from the classes of the first "
                                 f"partial_fit call {self.classes_!r}")
            unseen = np.setdiff1d(y, self.classes_)
            if unseen.size:
                raise ValueError(f"y has labels {unseen!r} that are not in classes_ "
                                 f"{self.classes_!r}")
        return np.searchsorted(self.classes_, y).astype(np.int64), y

    def partial_fit(self, X, y, classes=None):
        """One epoch over (X, y), continuing the current weights and optimizer state.

        ``classes`` (every label that will ever appear) is required on the first call.
        """
        return self._fit(X, y, incremental=True, classes=classes)

    def predict_proba(self, X):
        """Class probabilities, shape (n_samples, n_classes); columns follow ``classes_``.

        Multilabel models give one independent probability per label."""
        X = self._forward(X)
        return self.model_.predict_proba(X)

    def predict_log_proba(self, X):
        """Logarithm of :meth:`predict_proba`."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X):
        """Class labels (multilabel: a 0/1 indicator matrix of y's dtype)."""
        proba = self.predict_proba(X)
        if self._multilabel:
            return (proba >= 0.5).astype(self._label_dtype)
        return self.classes_[np.argmax(proba, axis=1)]

    def _score_on(self, model, X, y):
        proba = model.predict_proba(X)
        if self._multilabel:
            return float(np.mean(np.all((proba >= 0.5) == (y == 1), axis=1)))
        return float(np.mean(self.classes_[np.argmax(proba, axis=1)] == y))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multilayer-perceptron regressor trained by fastbp's compiled backpropagation.

    Parameters are those of :class:`MLPClassifier`, plus

    loss : {"squared_error", "absolute_error", "huber"}, default "squared_error"
        (also fastbp's names "mse", "mae"). Identity output; one unit per target column.

    Attributes are those of :class:`MLPClassifier` without ``classes_``; ``predict``
    returns a 1-D array when ``y`` was 1-D, otherwise (n_samples, n_targets).
    """

    _y_numeric = True

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, loss="squared_error",
                 optimizer="adam", alpha=0.0001, batch_size="auto", learning_rate_init=0.001,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False,
                 warm_start=False, momentum=0.9, nesterovs_momentum=True,
                 early_stopping=False, validation_fraction=0.1, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-8, n_iter_no_change=10, dropout=0.0, device="cpu",
                 dtype="float64"):
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes, activation=activation, optimizer=optimizer,
            alpha=alpha, batch_size=batch_size, learning_rate_init=learning_rate_init,
            max_iter=max_iter, shuffle=shuffle, random_state=random_state, tol=tol,
            verbose=verbose, warm_start=warm_start, momentum=momentum,
            nesterovs_momentum=nesterovs_momentum, early_stopping=early_stopping,
            validation_fraction=validation_fraction, beta_1=beta_1, beta_2=beta_2,
            epsilon=epsilon, n_iter_no_change=n_iter_no_change, dropout=dropout,
            device=device, dtype=dtype)
        self.loss = loss

    def _loss_name(self):
        if self.loss not in _REGRESSION_LOSSES:
            raise ValueError(f"loss {self.loss!r} is not supported; choose one of "
                             f"{sorted(_REGRESSION_LOSSES)}")
        return _REGRESSION_LOSSES[self.loss]

    def _n_model_outputs(self):
        return 1

    def _stratify(self, y):
        return None

    def _encode_targets(self, y, incremental, classes):
        y = np.asarray(y)
        if not incremental or not hasattr(self, "model_"):
            self._y_ndim = y.ndim
        return np.ascontiguousarray(y.reshape(y.shape[0], -1), dtype=self.dtype), y

    def partial_fit(self, X, y):
        """One epoch over (X, y), continuing the current weights and optimizer state."""
        return self._fit(X, y, incremental=True)

    def predict(self, X):
        """Predicted values: (n_samples,) for a 1-D training y, else (n_samples, n_targets)."""
        X = self._forward(X)
        out = np.asarray(self.model_.predict(X), dtype=np.float64)
        if self._y_ndim == 1:
            return out.reshape(-1)
        return out.reshape(X.shape[0], -1)

    def _score_on(self, model, X, y):
        from sklearn.metrics import r2_score
        pred = model.predict(X).reshape(X.shape[0], -1)
        return float(r2_score(np.asarray(y).reshape(X.shape[0], -1), pred))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags


# skl2onnx looks converters up in its own registry: fill it when skl2onnx is imported, not
# here, so that this import stays light (fastbp.export.sklearn_onnx explains how).
from .export.sklearn_onnx import register_when_imported as _register_onnx  # noqa: E402

_register_onnx(MLPClassifier, MLPRegressor)
