"""Learning-rate schedules evaluated per optimizer step (``step`` counts from 1).

A schedule maps an array of step numbers to learning rates; the trainer evaluates it once
per compiled chunk for the chunk's steps, and the kernel applies each step's own rate.
Pass one to :class:`fastbp.callbacks.LearningRateScheduler`.
"""
import math

import numpy as np

from .errors import ConfigError


def _positive(name, v):
    v = float(v)
    if not v > 0 or not math.isfinite(v):
        raise ConfigError(f"{name} must be a positive number, got {v!r}")
    return v


class Schedule:
    """Base class: ``schedule(steps) -> lrs`` for an int array of step numbers."""

    def __call__(self, steps):
        steps = np.asarray(steps, dtype=np.float64)
        return self.rates(steps)

    def rates(self, steps):  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class StepDecay(Schedule):
    """lr * gamma ** floor((step - 1) / step_size)  (torch's StepLR, counted in steps)."""

    def __init__(self, lr, step_size, gamma=0.1):
        self.lr = _positive("lr", lr)
        self.step_size = int(_positive("step_size", step_size))
        self.gamma = _positive("gamma", gamma)

    def rates(self, steps):
        return self.lr * self.gamma ** np.floor((steps - 1) / self.step_size)


class ExponentialDecay(Schedule):
    """lr * decay_rate ** ((step - 1) / decay_steps), floored when ``staircase`` (Keras)."""

    def __init__(self, lr, decay_steps, decay_rate, staircase=False):
        self.lr = _positive("lr", lr)
        self.decay_steps = _positive("decay_steps", decay_steps)
        self.decay_rate = _positive("decay_rate", decay_rate)
        self.staircase = bool(staircase)

    def rates(self, steps):
        p = (steps - 1) / self.decay_steps
        if self.staircase:
            p = np.floor(p)
        return self.lr * self.decay_rate ** p


class CosineDecay(Schedule):
    """Linear warmup from 0 to ``lr`` over ``warmup_steps``, then cosine decay to ``final_lr``
    at ``total_steps``; constant ``final_lr`` after that."""

    def __init__(self, lr, total_steps, warmup_steps=0, final_lr=0.0):
        self.lr = _positive("lr", lr)
        self.total_steps = int(_positive("total_steps", total_steps))
        self.warmup_steps = int(warmup_steps)
        if not 0 <= self.warmup_steps < self.total_steps:
            raise ConfigError(f"warmup_steps must be in [0, total_steps), got {warmup_steps!r}")
        self.final_lr = float(final_lr)
        if not 0 <= self.final_lr <= self.lr:
            raise ConfigError(f"final_lr must be in [0, lr], got {final_lr!r}")

    def rates(self, steps):
        out = np.empty_like(steps)
        w = self.warmup_steps
        warm = steps <= w
        out[warm] = self.lr * steps[warm] / max(w, 1)
        t = np.clip((steps[~warm] - w) / (self.total_steps - w), 0.0, 1.0)
        out[~warm] = self.final_lr + 0.5 * (self.lr - self.final_lr) * (1 + np.cos(np.pi * t))
        return out


def step_decay(lr, step_size, gamma=0.1):
    return StepDecay(lr, step_size, gamma)


def exponential_decay(lr, decay_steps, decay_rate, staircase=False):
    return ExponentialDecay(lr, decay_steps, decay_rate, staircase)


def cosine_decay(lr, total_steps, warmup_steps=0, final_lr=0.0):
    return CosineDecay(lr, total_steps, warmup_steps, final_lr)
