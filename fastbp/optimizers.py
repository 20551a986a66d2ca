"""Optimizers as (init, update) over explicit flat state, following torch.optim exactly.

An optimizer object holds hyperparameters only. ``init_state(n_params, dtype)`` makes its
flat state slots; the compiled kernel applies ``update`` in place over the flat parameter
vector (see ``kernels/math.py`` for the per-element rules).
"""
import math
import numbers

import numpy as np

from .errors import ConfigError
from .kernels import math as km
from .network import aligned_zeros


def _number(name, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    return float(value)


def _positive(name, value):
    value = _number(name, value)
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive finite number, got {value!r}")
    return value


def _non_negative(name, value):
    value = _number(name, value)
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def _unit(name, value):
    value = _number(name, value)
    if not (0.0 <= value < 1.0):
        raise ConfigError(f"{name} must be in [0, 1), got {value!r}")
    return value


OPTIMIZERS = {}     # name -> class, filled as each rule's class is defined


class Optimizer:
    """Base class: ``code`` selects the kernel rule; the hyper-parameters are attributes
    named as ``kernels.math.OPTIMIZER_HYPER[code]`` lists them, packed in that order by
    ``hyper()``; the state slots are ``kernels.math.OPTIMIZER_STATE[code]``."""

    code = -1
    name = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name:
            OPTIMIZERS[cls.name] = cls

    def __init__(self, lr):
        self.lr = _positive("lr", lr)

    @property
    def n_slots(self):
        """State slots the rule uses with these hyper-parameters."""
        return km.optimizer_slots(self.code, self.hyper())

    @property
    def slot_names(self):
        return km.OPTIMIZER_STATE[self.code][:self.n_slots]

    def init_state(self, n_params, dtype):
        """Flat state slots, zero-initialised (torch's lazily created buffers)."""
        return aligned_zeros((self.n_slots, n_params), dtype)

    def hyper(self):
        """The hyper-parameters, float64, in the kernels' order (OPTIMIZER_HYPER)."""
        return np.array([float(getattr(self, n)) for n in km.OPTIMIZER_HYPER[self.code]])

    def get_config(self):
        raise NotImplementedError

    def with_lr(self, lr):
        cfg = self.get_config()
        cfg["lr"] = lr
        return type(self)(**cfg)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent, ``torch.optim.SGD`` with dampening 0.

    g <- g + weight_decay * p
    buf <- momentum * buf + g            (if momentum; buf starts at g)
    g <- g + momentum * buf  (nesterov)  or  g <- buf
    p <- p - lr * g
    """

    code = km.SGD
    name = "sgd"

    def __init__(self, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(lr)
        self.momentum = _unit("momentum", momentum)
        self.nesterov = bool(nesterov)
        self.weight_decay = _non_negative("weight_decay", weight_decay)
        if self.nesterov and self.momentum == 0.0:
            raise ConfigError("nesterov=True requires momentum > 0 (as in torch.optim.SGD)")

    def get_config(self):
        return dict(lr=self.lr, momentum=self.momentum, nesterov=self.nesterov,
                    weight_decay=self.weight_decay)


class Adam(Optimizer):
    """``torch.optim.Adam`` (L2 penalty added to the gradient).

    g <- g + weight_decay * p
    m <- b1 m + (1 - b1) g ;  v <- b2 v + (1 - b2) g^2
    p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    """

    code = km.ADAM
    name = "adam"
    decoupled = False

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(lr)
        try:
            if isinstance(betas, str):
                raise TypeError
            b1, b2 = betas
        except (TypeError, ValueError):
            raise ConfigError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
        self.betas = (_unit("betas[0]", b1), _unit("betas[1]", b2))
        self.eps = _positive("eps", eps)
        self.weight_decay = _non_negative("weight_decay", weight_decay)

    beta1 = property(lambda self: self.betas[0])
    beta2 = property(lambda self: self.betas[1])

    def get_config(self):
        return dict(lr=self.lr, betas=tuple(self.betas), eps=self.eps,
                    weight_decay=self.weight_decay)


class AdamW(Adam):
    """``torch.optim.AdamW``: decoupled weight decay, p <- p (1 - lr weight_decay), then Adam."""

    name = "adamw"
    decoupled = True

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(lr, betas, eps, weight_decay)


class RMSprop(Optimizer):
    """``torch.optim.RMSprop`` (centered=False).

    g <- g + weight_decay * p
    s <- alpha s + (1 - alpha) g^2 ;  d <- sqrt(s) + eps
    momentum: buf <- momentum buf + g / d ; p <- p - lr buf     else p <- p - lr g / d
    """

    code = km.RMSPROP
    name = "rmsprop"

    def __init__(self, lr=0.01, alpha=0.99, eps=1e-8, momentum=0.0, weight_decay=0.0):
        super().__init__(lr)
        self.alpha = _unit("alpha", alpha)
        self.eps = _positive("eps", eps)
        self.momentum = _unit("momentum", momentum)
        self.weight_decay = _non_negative("weight_decay", weight_decay)

    def get_config(self):
        return dict(lr=self.lr, alpha=self.alpha, eps=self.eps, momentum=self.momentum,
                    weight_decay=self.weight_decay)


class Adagrad(Optimizer):
    """``torch.optim.Adagrad``.

    g <- g + weight_decay * p ;  s <- s + g^2  (s starts at initial_accumulator_value)
    p <- p - lr / (1 + (t - 1) lr_decay) * g / (sqrt(s) + eps)
    """

    code = km.ADAGRAD
    name = "adagrad"

    def __init__(self, lr=0.01, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
                 eps=1e-10):
        super().__init__(lr)
        self.lr_decay = _non_negative("lr_decay", lr_decay)
        self.weight_decay = _non_negative("weight_decay", weight_decay)
        self.initial_accumulator_value = _non_negative("initial_accumulator_value",
                                                       initial_accumulator_value)
        self.eps = _positive("eps", eps)

    def init_state(self, n_params, dtype):
        state = super().init_state(n_params, dtype)
        state[:] = self.initial_accumulator_value
        return state

    def get_config(self):
        return dict(lr=self.lr, lr_decay=self.lr_decay, weight_decay=self.weight_decay,
                    initial_accumulator_value=self.initial_accumulator_value, eps=self.eps)


def get_optimizer(optimizer, lr=None):
    """An optimizer object from a name or an object; ``lr`` overrides its learning rate."""
    if isinstance(optimizer, str):
        key = optimizer.lower()
        if key not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {optimizer!r}; choose one of "
                              f"{sorted(OPTIMIZERS)} or pass an optimizer object")
        return OPTIMIZERS[key]() if lr is None else OPTIMIZERS[key](lr=lr)
    if isinstance(optimizer, Optimizer):
        return optimizer if lr is None else optimizer.with_lr(lr)
    raise ConfigError(f"optimizer must be a name {sorted(OPTIMIZERS)} or an Optimizer, "
                      f"got {type(optimizer).__name__}")
