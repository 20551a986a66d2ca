"""Training history and callbacks, with Keras's names and semantics.

Callbacks run in Python between compiled chunks and at epoch ends, never per batch. They
see the model as ``self.model``; setting ``model.stop_training = True`` ends the fit after
the current epoch, and ``model.optimizer.lr`` is the base learning rate of the next chunk.
"""
import csv
import math
import os

import numpy as np

from .errors import ConfigError
from .schedules import Schedule


class Callback:
    """Base class: override any hook. ``self.model`` is set before on_train_begin.

    ``on_chunk_end(chunk, logs)`` runs after each stretch of compiled training within an
    epoch (a chunk of batches, about 0.15 s of work) with ``logs["loss"]``, the mean
    training loss of the epoch so far. ``rank0_only``: in data-parallel training only the
    first process runs it (writers: checkpoints, CSV logs)."""

    model = None
    rank0_only = False

    def set_model(self, model):
        self.model = model

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_chunk_end(self, chunk, logs=None):
        """After a stretch of compiled work; logs["loss"]: the epoch's mean loss so far."""


class History(Callback):
    """Per-epoch logs: ``history["loss"][e]`` is epoch e's mean training loss; also the
    metric (``accuracy`` or ``r2``), their ``val_`` versions, ``lr`` and ``samples_per_s``."""

    def __init__(self):
        self.history = {}
        self.epoch = []
        self.params = {}
        self.interrupted = False

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(v)

    def __repr__(self):
        keys = ", ".join(self.history)
        return f"History(epochs={len(self.epoch)}, keys=[{keys}])"


class _Monitor:
    """``monitor``/``mode``/``min_delta`` bookkeeping shared by the plateau callbacks."""

    def _init_monitor(self, monitor, mode, min_delta):
        if mode not in ("auto", "min", "max"):
            raise ConfigError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        if mode == "auto":
            mode = "max" if any(k in monitor for k in ("acc", "r2")) else "min"
        self.monitor = monitor
        self.mode = mode
        self.min_delta = abs(float(min_delta))
        self._reset()

    def _reset(self):
        self.best = math.inf if self.mode == "min" else -math.inf

    def _improved(self, value):
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def _current(self, logs):
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise ConfigError(f"{type(self).__name__} monitors {self.monitor!r}, which is "
                              f"not among the logged metrics {sorted(logs or {})}; pass "
                              f"validation data for val_* metrics")
        return float(value)


class EarlyStopping(Callback, _Monitor):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs."""

    def __init__(self, monitor="val_loss", patience=5, min_delta=0.0, mode="auto",
                 restore_best_weights=False):
        self._init_monitor(monitor, mode, min_delta)
        self.patience = int(patience)
        self.restore_best_weights = bool(restore_best_weights)
        self.stopped_epoch = None
        self.best_epoch = None

    def on_train_begin(self, logs=None):
        self._reset()
        self.wait = 0
        self.stopped_epoch = None
        self.best_epoch = None
        self.best_weights = None

    def on_epoch_end(self, epoch, logs=None):
        value = self._current(logs)
        if self._improved(value):
            self.best = value
            self.best_epoch = epoch
            self.wait = 0
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.restore_best_weights and self.best_weights is not None \
                and self.stopped_epoch is not None:
            self.model.set_weights(self.best_weights)


class ReduceLROnPlateau(Callback, _Monitor):
    """Multiply the learning rate by ``factor`` after ``patience`` epochs without improvement."""

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, min_delta=1e-4,
                 mode="auto", cooldown=0, min_lr=0.0):
        if not 0.0 < factor < 1.0:
            raise ConfigError(f"factor must be in (0, 1), got {factor!r}")
        self._init_monitor(monitor, mode, min_delta)
        self.factor = float(factor)
        self.patience = int(patience)
        self.cooldown = int(cooldown)
        self.min_lr = float(min_lr)

    def on_train_begin(self, logs=None):
        self._reset()
        self.wait = 0
        self.cooldown_counter = 0

    def on_epoch_end(self, epoch, logs=None):
        value = self._current(logs)
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improved(value):
            self.best = value
            self.wait = 0
        elif self.cooldown_counter <= 0:
            self.wait += 1
            if self.wait >= self.patience:
                opt = self.model.optimizer
                new = max(opt.lr * self.factor, self.min_lr)
                if new < opt.lr:
                    opt.lr = new
                self.cooldown_counter = self.cooldown
                self.wait = 0


class LearningRateScheduler(Callback):
    """Set the learning rate from a schedule.

    ``schedule`` is either a :class:`fastbp.schedules.Schedule` (evaluated per optimizer
    step, applied inside the kernel) or a Keras-style ``fn(epoch, lr) -> lr`` called at each
    epoch's start.
    """

    def __init__(self, schedule):
        if not callable(schedule):
            raise ConfigError("LearningRateScheduler needs a Schedule or a function "
                              "fn(epoch, lr) -> lr")
        self.schedule = schedule

    @property
    def per_step(self):
        return isinstance(self.schedule, Schedule)

    def on_epoch_begin(self, epoch, logs=None):
        if self.per_step:
            return
        lr = float(self.schedule(epoch, self.model.optimizer.lr))
        if not lr > 0 or not math.isfinite(lr):
            raise ConfigError(f"the learning-rate schedule returned {lr!r} at epoch {epoch}")
        self.model.optimizer.lr = lr


class ModelCheckpoint(Callback, _Monitor):
    """Save the model after each epoch (atomically: temp file, then rename).

    ``path`` may hold ``{epoch}`` and any logged metric, Keras-style
    (``"model-{epoch:02d}-{val_loss:.3f}.npz"``); with ``save_best_only`` only epochs that
    improve ``monitor`` are written.
    """

    rank0_only = True

    def __init__(self, path, monitor="val_loss", save_best_only=False, mode="auto"):
        self.path = os.fspath(path)
        self.save_best_only = bool(save_best_only)
        self._init_monitor(monitor, mode, 0.0)

    def on_train_begin(self, logs=None):
        self._reset()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.save_best_only:
            value = self._current(logs)
            if not self._improved(value):
                return
            self.best = value
        self.model.save(self.path.format(epoch=epoch + 1, **logs))


class TerminateOnNaN(Callback):
    """Always active in fit: a non-finite loss stops training with
    :class:`fastbp.TrainingDivergedError` naming the epoch, and the model keeps its last
    finite weights. The kernel checks every batch; this callback checks validation loss too.
    """

    def on_epoch_end(self, epoch, logs=None):
        for k, v in (logs or {}).items():
            if k.endswith("loss") and not math.isfinite(v):
                from .errors import TrainingDivergedError
                raise TrainingDivergedError(f"{k} became {v} in epoch {epoch}")


class CSVLogger(Callback):
    """Append one row per epoch (epoch, then the logs) to a CSV file."""

    rank0_only = True

    def __init__(self, path, separator=",", append=False):
        self.path = os.fspath(path)
        self.separator = separator
        self.append = bool(append)
        self._keys = None

    def on_train_begin(self, logs=None):
        self._keys = None
        self._fresh = not (self.append and os.path.exists(self.path))
        if self._fresh:
            open(self.path, "w").close()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self._keys is None:
            self._keys = sorted(logs)
        with open(self.path, "a", newline="") as f:
            w = csv.writer(f, delimiter=self.separator)
            if self._fresh:
                w.writerow(["epoch"] + self._keys)
                self._fresh = False
            w.writerow([epoch] + [_fmt(logs.get(k, "")) for k in self._keys])


def _fmt(v):
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    return v
