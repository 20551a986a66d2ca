"""Planning a fit: every argument and the data checked and converted before anything about
the model changes. A fit that fails here leaves the model as it was."""
import math
import numbers
from dataclasses import dataclass

import numpy as np

from . import registry
from .callbacks import Callback
from .errors import ConfigError
from .optimizers import get_optimizer
from .progress import Progress
from .validation import (check_number, check_positive_int, check_sample_weight, check_targets,
                         check_X)


@dataclass(eq=False)
class FitPlan:
    """Everything a fit needs, validated."""
    X: np.ndarray                 # training rows, C-contiguous, the model's dtype
    Y: np.ndarray                 # (n, n_out) targets
    row_w: np.ndarray             # per-row loss weights (float64)
    optimizer: object             # a private copy: callbacks may change its rate
    state: np.ndarray             # the optimizer's flat state (carried on with warm_start)
    step: int                     # optimizer steps taken before this fit
    epochs: int
    batch_size: int
    shuffle: bool
    verbose: object
    clip_norm: float              # 0: no clipping
    callbacks: list
    validation: object            # (X_val, Y_val, w_val) or None
    ss_tot: float                 # the training targets' total sum of squares (R^2)
    dropout_seed: int
    strategy: object              # how an epoch's batches become steps (fastbp.training)


def plan_fit(model, X, y, epochs, batch_size, optimizer, lr, shuffle, verbose,
             validation_split, validation_data, sample_weight, class_weight, clip_norm,
             callbacks, warm_start, strategy):
    """A FitPlan for ``model``; raises ConfigError/DataError/DataTypeError on bad input."""
    epochs = check_positive_int(epochs, "epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    if lr is not None:
        lr = check_number(lr, "lr")
    opt = get_optimizer(optimizer, lr)
    opt = opt.with_lr(opt.lr)   # callbacks may change the rate: never the caller's object
    Progress(verbose, epochs, 1)  # validates ``verbose``
    if clip_norm is not None:
        clip_norm = check_number(clip_norm, "clip_norm")
        if not clip_norm > 0:
            raise ConfigError(f"clip_norm must be positive or None, got {clip_norm!r}")
    callbacks = _check_callbacks(callbacks)
    if not model.trainable.any():
        raise ConfigError("every layer is frozen; unfreeze at least one layer to train")
    vs = check_number(validation_split, "validation_split")
    if not 0.0 <= vs < 1.0:
        raise ConfigError(f"validation_split must be in [0, 1), got {validation_split!r}")

    Xc = check_X(X, model.dtype, n_features=model.sizes[0])
    Y = check_targets(y, model.loss, model.n_outputs, Xc.shape[0], model.dtype)
    row_w = check_sample_weight(sample_weight, Xc.shape[0])
    if class_weight is not None:
        row_w = row_w * class_weights(model, class_weight, Y)

    validation = None
    if validation_data is not None:
        validation = validation_arrays(model, validation_data)
    elif vs > 0.0:
        n_val = int(math.ceil(Xc.shape[0] * vs))
        n_train = Xc.shape[0] - n_val
        if n_train < 1 or n_val < 1:
            raise ConfigError(f"validation_split={vs} leaves no rows to train or "
                              f"validate on ({Xc.shape[0]} samples)")
        validation = (Xc[n_train:], Y[n_train:], row_w[n_train:])
        Xc, Y, row_w = Xc[:n_train], Y[:n_train], row_w[:n_train]
    # A batch larger than the data is one full-data batch; the buffers hold that many rows.
    batch_size = min(batch_size, Xc.shape[0])
    ss_tot = 0.0
    if not registry.loss(model.loss).classifies:
        ss_tot = float(((Y - Y.mean(axis=0)) ** 2).sum())
    state, step = optimizer_state(model, opt, warm_start)
    return FitPlan(X=Xc, Y=Y, row_w=row_w, optimizer=opt, state=state, step=step,
                   epochs=epochs, batch_size=batch_size, shuffle=bool(shuffle),
                   verbose=verbose, clip_norm=clip_norm or 0.0, callbacks=callbacks,
                   validation=validation, ss_tot=ss_tot,
                   dropout_seed=int(model._rng.integers(0, 2 ** 31 - 1)), strategy=strategy)


def _check_callbacks(callbacks):
    if isinstance(callbacks, Callback):
        raise ConfigError("callbacks must be a list of Callback instances; wrap the "
                          "single callback in a list: callbacks=[cb]")
    try:
        callbacks = list(callbacks or [])
    except TypeError:
        raise ConfigError(f"callbacks must be a list of Callback instances, got "
                          f"{type(callbacks).__name__}") from None
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise ConfigError(f"callbacks must be fastbp.callbacks.Callback instances, "
                              f"got {type(cb).__name__}")
    return callbacks


def validation_arrays(model, validation_data):
    """(X_val, Y_val, w_val) from ``validation_data``, checked like the training data."""
    try:
        parts = tuple(validation_data)
    except TypeError:
        parts = ()
    if len(parts) not in (2, 3):
        raise ConfigError("validation_data must be (X_val, y_val) or (X_val, y_val, "
                          "sample_weight_val)")
    Xv = check_X(parts[0], model.dtype, n_features=model.sizes[0], name="X_val")
    Yv = check_targets(parts[1], model.loss, model.n_outputs, Xv.shape[0], model.dtype,
                       name="y_val")
    wv = check_sample_weight(parts[2] if len(parts) == 3 else None, Xv.shape[0],
                             name="sample_weight_val")
    return Xv, Yv, wv


def class_weights(model, class_weight, Y):
    """Per-row weights from a class-weight dict or "balanced" (scikit-learn's rule)."""
    kind = registry.loss(model.loss).targets
    if kind == "classes":
        ids = Y.argmax(axis=1)
        n_classes = model.n_outputs
    elif kind == "binary" and model.n_outputs == 1:
        ids = (Y[:, 0] >= 0.5).astype(np.int64)
        n_classes = 2
    else:
        raise ConfigError("class_weight needs cross_entropy or a single-output "
                          "binary_cross_entropy; use sample_weight otherwise")
    counts = np.bincount(ids, minlength=n_classes).astype(np.float64)
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ConfigError(f"class_weight must be a dict or 'balanced', got "
                              f"{class_weight!r}")
        present = counts > 0
        per_class = np.zeros(n_classes)
        per_class[present] = len(ids) / (present.sum() * counts[present])
    elif isinstance(class_weight, dict):
        per_class = np.ones(n_classes)
        for c, wgt in class_weight.items():
            if isinstance(c, bool) or not isinstance(c, numbers.Integral) or \
                    not 0 <= c < n_classes:
                raise ConfigError(f"class_weight key {c!r} is not a class id in "
                                  f"0..{n_classes - 1}")
            wgt = float(wgt)
            if not (wgt >= 0 and math.isfinite(wgt)):
                raise ConfigError(f"class_weight[{c}] must be a finite number >= 0")
            per_class[int(c)] = wgt
    else:
        raise ConfigError(f"class_weight must be a dict or 'balanced', got "
                          f"{type(class_weight).__name__}")
    return per_class[ids]


def optimizer_state(model, opt, warm_start):
    """(state, steps taken): the last fit's with ``warm_start`` and the same kind of
    optimizer, else fresh zeros."""
    same = (warm_start and model.optimizer is not None
            and type(model.optimizer) is type(opt) and model._opt_state is not None
            and model._opt_state.shape == (opt.n_slots, model.n_params)
            and model._opt_state.dtype == model.dtype)
    if same:
        return model._opt_state, model._step
    return opt.init_state(model.n_params, model.dtype), 0
