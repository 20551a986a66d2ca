"""The one epoch loop of every fit: batches in compiled chunks, then Python between them.

Data path: validated arrays (fastbp.planning) -> engine.begin_fit (buffers, state) -> per
epoch a permutation -> the strategy turns the epoch's batches into optimizer steps ->
epoch logs, validation, callbacks -> engine.end_fit.

A strategy says how an epoch's batches become steps: ``LocalChunks`` here (chunks of
about CHUNK_SECONDS of compiled batches), or the data-parallel ones of
fastbp.distributed (a gradient Allreduce per step, or local SGD), which plug into the
same loop and give callbacks the same hooks with the same meaning:
``on_chunk_end(chunk, {"loss": mean training loss of the epoch so far})`` after each
stretch of compiled work (a chunk, or about CHUNK_SECONDS of distributed steps).
"""
import _signal
import math
import signal
import threading
import time
from contextlib import contextmanager

import numpy as np

from .engines.cpu import single_threaded_blas
from .callbacks import History, LearningRateScheduler, TerminateOnNaN
from .errors import TrainingDivergedError
from .kernels.shuffle import permutation
from .progress import Progress

# Python regains control after about this much compiled work (Ctrl-C, progress, callbacks).
CHUNK_SECONDS = 0.15


class InterruptFlag:
    requested = False


@contextmanager
def deferred_interrupt():
    """During a fit, Ctrl-C only raises a flag; the loop stops at the next safe point.

    A KeyboardInterrupt raised between a compiled call's return and the bookkeeping after it
    could leave the step count behind the weights; the flag is checked after it instead.
    A second Ctrl-C interrupts at once. Only in the main thread, and only when the default
    handler is installed (a caller's own handler is left alone).
    """
    flag = InterruptFlag()
    # _signal, not signal: the latter converts every handler to and from an enum, a
    # visible cost in a narrow net's fit.
    if threading.current_thread() is not threading.main_thread() or \
            _signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield flag
        return

    def handler(signum, frame):
        if flag.requested:
            raise KeyboardInterrupt
        flag.requested = True

    _signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        _signal.signal(signal.SIGINT, signal.default_int_handler)


def stop_if_interrupted(session):
    if session.interrupt.requested:
        raise KeyboardInterrupt


def chunk_batches(per_batch_s):
    if per_batch_s is None:
        # The engine's first chunk at this batch size (which may also pay compilation):
        # one batch, timed, then the chunks are sized by it.
        return 1
    return max(1, int(CHUNK_SECONDS / max(per_batch_s, 1e-7)))


def chunk_rates(optimizer, step_schedule, first_step, n):
    """Learning rates of optimizer steps first_step .. first_step + n - 1."""
    if step_schedule is None:
        return np.full(n, optimizer.lr, dtype=np.float64)
    return np.asarray(step_schedule(np.arange(first_step, first_step + n)), dtype=np.float64)


def batch_rows(start, stop, batch_size, done):
    """Rows of each of the ``done`` batches that begin at ``start`` (the last may be short)."""
    rows = np.full(done, batch_size, dtype=np.float64)
    if done:
        rows[-1] = min(batch_size, stop - (start + (done - 1) * batch_size))
    return rows


def epoch_sums(out, n, batch_size):
    """(loss sum, metric sum) of an epoch of ``n`` rows from its batches' [loss, metric
    sum] rows in ``out``, each loss weighted by its batch's rows; summed exactly
    (math.fsum), so the same whatever chunks the epoch ran in: their sizes follow the
    clock, and a running sum's rounding followed them."""
    rows = batch_rows(0, n, batch_size, out.shape[0])
    return math.fsum(out[:, 0] * rows), math.fsum(out[:, 1])


class Strategy:
    """How an epoch's batches become optimizer steps; see the module docstring."""

    rank = 0          # the process that logs, checkpoints and shows progress

    def params(self):
        """Entries for history.params."""
        return {}

    def prepare(self, model, plan):
        """Planning that needs the other processes (a collective)."""

    def begin(self, model, plan, session):
        """Set up before the first epoch (buffers of the strategy's own)."""

    def run_epoch(self, model, plan, session, perm, callbacks, progress, step_schedule):
        """Train one epoch in the order ``perm``: (loss sum, metric sum, rows), or None
        when a loss was not finite (session.bad_loss holds it)."""
        raise NotImplementedError

    def evaluate(self, model, X, Y, w):
        """Validation metrics (model.evaluate's dict)."""
        return model._evaluate_arrays(X, Y, w)

    def end_epoch(self, model, epoch):
        """After the epoch's logs and callbacks."""


class LocalChunks(Strategy):
    """One process: the epoch as chunks of compiled batches.

    Chunks are sized by the time per batch the engine last measured at this batch size,
    in this fit or an earlier one: a fit that began with a one-batch chunk to measure it
    paid a call and a pass of this loop for that, a visible part of a narrow net's
    epoch."""

    def run_epoch(self, model, plan, session, perm, callbacks, progress, step_schedule):
        opt, n, bs = plan.optimizer, plan.X.shape[0], plan.batch_size
        engine = model._engine
        out = np.empty((-(-n // bs), 2), dtype=np.float64)    # per batch [loss, metric sum]
        loss_sum = 0.0
        timing = engine.batch_seconds
        start, chunk, per_batch_s, b = 0, 0, timing.get(bs), 0
        while start < n:
            stop = min(n, start + chunk_batches(per_batch_s) * bs)
            nb = -(-(stop - start) // bs)
            lrs = chunk_rates(opt, step_schedule, session.step_done + 1, nb)
            tc = time.perf_counter()
            done = engine.run_chunk(session, perm, start, stop, lrs, session.step_done,
                                    plan.clip_norm, out[b:b + nb])
            per_batch_s = timing[bs] = (time.perf_counter() - tc) / max(done, 1)
            session.step_done += done
            loss_sum += float(out[b:b + done, 0] @ batch_rows(start, stop, bs, done))
            if done:
                session.last_lr = float(lrs[done - 1])
            if done < nb:
                session.bad_loss = out[b + done, 0]
                return None
            chunk += 1
            progress.chunk(stop, loss_sum / stop)
            for cb in callbacks:
                cb.on_chunk_end(chunk, {"loss": loss_sum / stop})
            start, b = stop, b + nb
            stop_if_interrupted(session)
        return epoch_sums(out, n, bs) + (n,)


def train(model, plan):
    """Run ``plan`` on ``model``; returns the History."""
    opt, strategy = plan.optimizer, plan.strategy
    history = History()
    history.params = dict(epochs=plan.epochs, batch_size=plan.batch_size, optimizer=repr(opt),
                          samples=plan.X.shape[0], validation_samples=(
                              0 if plan.validation is None else plan.validation[0].shape[0]))
    history.params.update(strategy.params())
    callbacks = [cb for cb in plan.callbacks if not isinstance(cb, TerminateOnNaN)]
    if strategy.rank != 0:
        # Rank 0 alone writes checkpoints and logs; decisions (early stopping, rate changes)
        # run on every rank from the same reduced logs, so the ranks stay in step.
        callbacks = [cb for cb in callbacks if not cb.rank0_only]
    callbacks += [TerminateOnNaN()]   # always on, and last: it sees the complete logs
    for cb in [history] + callbacks:
        cb.set_model(model)
    step_schedule = None
    for cb in callbacks:
        if isinstance(cb, LearningRateScheduler) and cb.per_step:
            step_schedule = cb.schedule

    model.optimizer = opt
    model.stop_training = False
    n = plan.X.shape[0]
    progress = Progress(plan.verbose if strategy.rank == 0 else 0, plan.epochs, n)
    with single_threaded_blas(model._engine.calls_blas(plan.batch_size)), \
            deferred_interrupt() as interrupt:
        session = model._engine.begin_fit(plan.X, plan.Y, plan.row_w, opt, plan.state,
                                          plan.batch_size, plan.dropout_seed)
        session.step_done = plan.step
        session.last_lr = opt.lr
        session.interrupt = interrupt
        strategy.begin(model, plan, session)
        try:
            for cb in callbacks:
                cb.on_train_begin({})
            for epoch in range(plan.epochs):
                logs = _run_epoch(model, plan, session, epoch, callbacks, progress,
                                  step_schedule)
                history.on_epoch_end(epoch, logs)
                progress.epoch_end(epoch, logs)
                for cb in callbacks:
                    cb.on_epoch_end(epoch, logs)
                strategy.end_epoch(model, epoch)
                if model.stop_training:
                    break
        except KeyboardInterrupt:
            # The chunk in flight completed; weights are those of its last step.
            history.interrupted = True
        finally:
            model._engine.end_fit(session)
            model._opt_state = plan.state
            model._step = session.step_done
            progress.close()
        for cb in callbacks:
            cb.on_train_end({})
    model.history = history
    return history


def _run_epoch(model, plan, session, epoch, callbacks, progress, step_schedule):
    for cb in callbacks:
        cb.on_epoch_begin(epoch, {})
    n = plan.X.shape[0]
    if plan.shuffle:
        perm = permutation(n, int(model._rng.integers(0, 2 ** 63)))
    else:
        perm = np.arange(n, dtype=np.int64)
    snapshot = model._engine.snapshot(session)
    t0 = time.perf_counter()
    sums = plan.strategy.run_epoch(model, plan, session, perm, callbacks, progress,
                                   step_schedule)
    if sums is None:
        _diverged(model, session, snapshot, epoch, session.bad_loss)
    loss_sum, metric_sum, n_rows = sums
    elapsed = time.perf_counter() - t0
    logs = {"loss": loss_sum / n_rows}
    metric = model._metric_name()
    if metric == "r2":
        logs["r2"] = 1.0 - metric_sum / plan.ss_tot if plan.ss_tot > 0 else 0.0
    else:
        logs["accuracy"] = metric_sum / n_rows
    model._engine.sync_params(session)     # callbacks read and save the epoch's weights
    if plan.validation is not None:
        res = plan.strategy.evaluate(model, *plan.validation)
        logs["val_loss"] = res["loss"]
        logs["val_" + metric] = res[metric]
    logs["lr"] = session.last_lr
    logs["samples_per_s"] = n_rows / elapsed if elapsed > 0 else float("inf")
    return logs


def _diverged(model, session, snapshot, epoch, bad_loss):
    """Keep the last finite weights: the current ones if finite, else the epoch's start."""
    model._engine.end_fit(session)
    if not np.isfinite(model._params).all():
        model._engine.restore(session, snapshot)
    raise TrainingDivergedError(
        f"loss became {bad_loss} in epoch {epoch} (after {session.step_done} optimizer "
        f"steps); training stopped and the model keeps its last finite weights. Lower the "
        f"learning rate, scale the inputs, or set clip_norm")
