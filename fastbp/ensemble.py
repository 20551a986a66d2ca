"""Many MLPs of one architecture trained at once: seeds, bags, hyper-parameter grids.

Every member is a :class:`fastbp.MLP` with its own parameters, optimizer state and
workspace. A fit plans every member as ``MLP.fit`` would, then runs all of them over the
same batches in the same order, each chunk of batches handed to the engine for all of
them at once (``Engine.train_together``). On the CPU it is one job per member, the jobs
claimed by the worker threads (``engines.cpu.train_members``) and run alone on their
thread, with no barrier between threads since the members share nothing they write. On
a GPU the members train in the same launches, a row of the grid each
(``engines.cuda_members``). Where an engine cannot (fewer members than threads, the
GPU's layer-by-layer path), the members' chunks run one after another. A member's numbers
are those of its own ``MLP.fit`` either way.
"""
import copy
import numbers
import time
import warnings

import numpy as np

from . import persistence, registry
from .callbacks import (EarlyStopping, History, LearningRateScheduler,
                        ModelCheckpoint, ReduceLROnPlateau, TerminateOnNaN)
from .engines.cpu import single_threaded_blas
from .errors import ConfigError, DataError, ModelFileError
from .files import EnsembleFile
from .kernels.shuffle import permutation
from .model import MLP, from_file
from .optimizers import get_optimizer
from .planning import _check_callbacks as check_callback_list
from .planning import class_weights, optimizer_state, plan_fit
from .progress import Progress
from .training import (LocalChunks, batch_rows, chunk_batches, chunk_rates,
                       deferred_interrupt, epoch_sums)
from .validation import (check_positive_int, check_sample_weight, check_targets, check_X)

REDUCTIONS = ("mean", "median", "std")
# Callbacks that act on each member apart, on a copy of their own with the member as its
# model; any other callback sees the ensemble, and logs whose values hold one per member.
PER_MEMBER_CALLBACKS = (EarlyStopping, ReduceLROnPlateau, LearningRateScheduler)


class Ensemble:
    """``n_models`` MLPs of one architecture, trained together on the same batches.

    Parameters
    ----------
    sizes, activation, loss, dtype, device, init, dropout
        As for :class:`fastbp.MLP`, shared by every member.
    n_models : int
        K, the number of members.
    seed : int
        Member k is initialised exactly as ``MLP(sizes, seed=seed + k, ...)``. The
        ensemble's own generator, ``numpy.random.default_rng(seed)``, draws the one
        permutation of each epoch that every member follows (``shuffle=True``).

    ``len(ens)`` is K, ``ens[k]`` is member k (a live :class:`fastbp.MLP`: training it
    trains the ensemble's member) and iterating gives the members in order.
    """

    def __init__(self, sizes, n_models=10, activation="relu", loss="cross_entropy",
                 dtype="float32", seed=0, device="auto", init="auto", dropout=0.0):
        k = check_positive_int(n_models, "n_models")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ConfigError(f"seed must be a non-negative int (member k uses seed + k), "
                              f"got {seed!r}")
        self.n_models = k
        self.seed = int(seed)
        self.members = [MLP(sizes, activation=activation, loss=loss, dtype=dtype,
                            seed=self.seed + i, device=device, init=init, dropout=dropout)
                        for i in range(k)]
        first = self.members[0]
        self.sizes, self.activation, self.loss = first.sizes, activation, first.loss
        self.dtype, self.device, self.requested_device = first.dtype, first.device, device
        self.init, self.dropout = first.init, dropout
        self._rng = np.random.default_rng(self.seed)
        self.history = None
        self.stop_training = False
        self._batch_seconds = {}    # batch size -> seconds of one batch of every member

    # ------------------------------------------------------------------ members
    def __len__(self):
        return self.n_models

    def __iter__(self):
        return iter(self.members)

    def __getitem__(self, k):
        if isinstance(k, bool) or not isinstance(k, numbers.Integral):
            raise TypeError(f"an ensemble is indexed by member number, got {k!r}")
        if not -self.n_models <= k < self.n_models:
            raise IndexError(f"member {k} out of range for {self.n_models} members")
        return self.members[int(k)]

    def get_config(self):
        return dict(sizes=self.sizes, n_models=self.n_models, activation=self.activation,
                    loss=self.loss, dtype=self.dtype.name, seed=self.seed,
                    device=self.requested_device, init=self.init, dropout=self.dropout)

    def __repr__(self):
        return (f"Ensemble({self.sizes}, n_models={self.n_models}, loss={self.loss!r}, "
                f"dtype={self.dtype.name!r}, device={self.device!r})")

    @property
    def is_classifier(self):
        return registry.loss(self.loss).classifies

    # ---------------------------------------------------------------------- fit
    def _per_member(self, value, name):
        """One float or None per member from a number or K numbers."""
        K = self.n_models
        if value is None:
            return [None] * K
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a number or {K} numbers (one per member), got "
                              f"{value!r}") from None
        if arr.ndim == 0:
            return [float(arr)] * K
        if arr.shape != (K,):
            raise ConfigError(f"{name} must be a number or {K} numbers (one per member), got "
                              f"shape {arr.shape}")
        return [float(v) for v in arr]

    def _optimizers(self, optimizer, lr, weight_decay):
        """One optimizer per member (each checked by its constructor)."""
        base = get_optimizer(optimizer)
        lrs = self._per_member(lr, "lr")
        decays = self._per_member(weight_decay, "weight_decay")
        cfg0 = base.get_config()
        if weight_decay is not None and "weight_decay" not in cfg0:
            raise ConfigError(f"{type(base).__name__} has no weight_decay to set per member")
        opts = []
        for k in range(self.n_models):
            cfg = dict(cfg0)
            if lrs[k] is not None:
                cfg["lr"] = lrs[k]
            if decays[k] is not None:
                cfg["weight_decay"] = decays[k]
            opts.append(type(base)(**cfg))
        return opts

    def _member_weights(self, sample_weight, n):
        """(K, n) float64 per-row weights, from None, (n,) or (K, n)."""
        K = self.n_models
        if sample_weight is None:
            return np.ones((K, n))
        w = np.asarray(sample_weight) if not isinstance(sample_weight, np.ndarray) \
            else sample_weight
        if w.ndim == 1:
            # Copies, not a broadcast view: the kernels are compiled for writeable arrays.
            return np.tile(check_sample_weight(w, n), (K, 1))
        if w.ndim != 2 or w.shape != (K, n):
            raise DataError(f"sample_weight must be (n,) = ({n},) for every member or "
                            f"(n_models, n) = ({K}, {n}), got shape {w.shape}")
        return np.stack([check_sample_weight(w[k], n, name=f"sample_weight[{k}]")
                         for k in range(K)])

    def fit(self, X, y, epochs=20, batch_size=64, optimizer="adam", lr=None, shuffle=True,
            verbose=0, validation_split=0.0, validation_data=None, sample_weight=None,
            class_weight=None, clip_norm=None, callbacks=None, warm_start=False,
            weight_decay=None):
        """Train every member on the same batches; returns a :class:`History`.

        Arguments mean what they mean for :meth:`fastbp.MLP.fit`, for each member, and:

        lr, weight_decay : number or K numbers, optional
            Override the optimizer's learning rate and weight decay, one per member.
        sample_weight : (n,) or (K, n), optional
            Row weights, shared or one row per member. A member's zero weights exclude
            those rows from it (bootstrap bags, cross-validation folds); its batch loss is
            still sum(w * loss) over the batch's rows, as in ``MLP.fit``.
        shuffle : bool
            Each epoch's one permutation, followed by every member, comes from the
            ensemble's generator (see the class); with ``shuffle=False`` member k ends
            with the weights of ``MLP(sizes, seed=seed + k).fit`` on the same arguments.
        callbacks : list
            EarlyStopping, ReduceLROnPlateau and LearningRateScheduler act on each member
            apart (a copy each): a member stopped early trains no more (with
            ``restore_best_weights=True`` it goes back to its best weights when it
            stops). Other callbacks see the ensemble, with logs holding one value per
            member (NaN for a stopped one).

        ``history.history[key]`` is an array (epochs, K) for the loss, the metric, their
        ``val_`` versions and ``lr``, NaN where a member had stopped; ``samples_per_s``
        (epochs,) counts rows times training members. A member whose loss stops being
        finite stops with its last finite weights (``history.diverged``) and a
        RuntimeWarning names it; the others go on.
        """
        plans = self._plan(X, y, epochs, batch_size, optimizer, lr, shuffle, verbose,
                           validation_split, validation_data, sample_weight, class_weight,
                           clip_norm, callbacks, warm_start, weight_decay)
        return self._train(plans)

    def _plan(self, X, y, epochs, batch_size, optimizer, lr, shuffle, verbose,
              validation_split, validation_data, sample_weight, class_weight, clip_norm,
              callbacks, warm_start, weight_decay):
        """Every member's FitPlan, or an error with nothing changed."""
        K, first = self.n_models, self.members[0]
        opts = self._optimizers(optimizer, lr, weight_decay)
        callbacks = _check_callbacks(callbacks)
        Xc = check_X(X, self.dtype, n_features=self.sizes[0])
        n = Xc.shape[0]
        W = self._member_weights(sample_weight, n)
        if class_weight is not None:
            Y = check_targets(y, self.loss, first.n_outputs, n, self.dtype)
            W = W * class_weights(first, class_weight, Y)
        rngs = [m._rng.bit_generator.state for m in self.members]
        try:
            plan0 = plan_fit(first, Xc, y, epochs, batch_size, opts[0], None, shuffle,
                             verbose, validation_split, validation_data, W[0], None,
                             clip_norm, [], warm_start, LocalChunks())
            n_train = plan0.X.shape[0]
            split = validation_data is None and n_train < n
            for k in range(K):
                if not W[k, :n_train].sum() > 0:
                    raise DataError(f"sample_weight leaves member {k} no rows to train on "
                                    f"(its weights of the {n_train} training rows are all "
                                    f"zero)")
            plans = [plan0]
            for k in range(1, K):
                member = self.members[k]
                opt = opts[k].with_lr(opts[k].lr)
                state, step = optimizer_state(member, opt, warm_start)
                validation = plan0.validation
                if split:
                    validation = (validation[0], validation[1],
                                  np.ascontiguousarray(W[k, n_train:]))
                plans.append(copy.copy(plan0))
                p = plans[-1]
                p.row_w = np.ascontiguousarray(W[k, :n_train])
                p.optimizer, p.state, p.step, p.validation = opt, state, step, validation
                p.dropout_seed = int(member._rng.integers(0, 2 ** 31 - 1))
            if plan0.validation is not None and any(
                    not p.validation[2].sum() > 0 for p in plans):
                raise DataError("sample_weight leaves a member no validation rows with "
                                "weight (all its held-out weights are zero)")
            for p in plans:
                p.callbacks = callbacks
            return plans
        except BaseException:
            for m, state in zip(self.members, rngs):
                m._rng.bit_generator.state = state
            raise

    # ------------------------------------------------------------------ training
    def _train(self, plans):
        K, plan0 = self.n_models, plans[0]
        n, bs = plan0.X.shape[0], plan0.batch_size
        members = self.members
        history = History()
        history.params = dict(epochs=plan0.epochs, batch_size=bs, samples=n, n_models=K,
                              optimizer=[repr(p.optimizer) for p in plans],
                              validation_samples=(0 if plan0.validation is None
                                                  else plan0.validation[0].shape[0]))
        per_member = [[] for _ in range(K)]
        shared = []
        for cb in plan0.callbacks:
            if isinstance(cb, TerminateOnNaN):
                continue
            if isinstance(cb, PER_MEMBER_CALLBACKS):
                for k in range(K):
                    mine = copy.copy(cb)
                    mine.set_model(members[k])
                    per_member[k].append(mine)
            else:
                cb.set_model(self)
                shared.append(cb)
        schedules = [next((cb.schedule for cb in cbs if isinstance(cb, LearningRateScheduler)
                           and cb.per_step), None) for cbs in per_member]
        histories = [History() for _ in range(K)]
        for k, m in enumerate(members):
            m.optimizer = plans[k].optimizer
            m.stop_training = False
            histories[k].set_model(m)
        self.stop_training = False
        active = list(range(K))
        diverged = np.zeros(K, dtype=bool)
        stopped = np.full(K, -1, dtype=np.int64)
        sessions = [None] * K
        progress = Progress(plan0.verbose, plan0.epochs, n)
        blas = any(m._engine.calls_blas(bs) for m in members)

        def finish(k):
            """Member k trains no more: its engine hands back, its fit's state is kept."""
            if sessions[k] is None:
                return
            members[k]._engine.end_fit(sessions[k])
            members[k]._opt_state = plans[k].state
            members[k]._step = sessions[k].step_done
            members[k].history = histories[k]
            sessions[k] = None

        with single_threaded_blas(blas), deferred_interrupt() as interrupt:
            try:
                X, Y = plan0.X, plan0.Y
                if len({type(m._engine) for m in members}) == 1:
                    X, Y = members[0]._engine.shared_data(X, Y)   # one upload for all
                for k in range(K):
                    p = plans[k]
                    s = members[k]._engine.begin_fit(X, Y, p.row_w, p.optimizer, p.state,
                                                     bs, p.dropout_seed)
                    s.step_done, s.last_lr, s.interrupt = p.step, p.optimizer.lr, interrupt
                    sessions[k] = s
                for cb in shared:
                    cb.on_train_begin({})
                for k in range(K):
                    for cb in per_member[k]:
                        cb.on_train_begin({})
                for epoch in range(plan0.epochs):
                    for cb in shared:
                        cb.on_epoch_begin(epoch, {})
                    for k in active:
                        for cb in per_member[k]:
                            cb.on_epoch_begin(epoch, {})
                    perm = (permutation(n, int(self._rng.integers(0, 2 ** 63)))
                            if plan0.shuffle else np.arange(n, dtype=np.int64))
                    t0 = time.perf_counter()
                    sums, bad = self._run_epoch(plans, sessions, active, perm, schedules,
                                                shared, per_member, progress, interrupt)
                    elapsed = time.perf_counter() - t0
                    trained = len(active)
                    logs = {}
                    for k in bad:
                        diverged[k] = True
                        stopped[k] = epoch
                        finish(k)
                        active.remove(k)
                    for k in active:
                        members[k]._engine.sync_params(sessions[k])
                    member_logs = {}
                    for k in active:
                        loss_sum, metric_sum = sums[k]
                        lk = {"loss": loss_sum / n}
                        metric = members[k]._metric_name()
                        if metric == "r2":
                            lk["r2"] = (1.0 - metric_sum / plan0.ss_tot if plan0.ss_tot > 0
                                        else 0.0)
                        else:
                            lk["accuracy"] = metric_sum / n
                        if plan0.validation is not None:
                            res = members[k]._evaluate_arrays(*plans[k].validation)
                            lk["val_loss"] = res["loss"]
                            lk["val_" + metric] = res[metric]
                        lk["lr"] = sessions[k].last_lr
                        member_logs[k] = lk
                    keys = next(iter(member_logs.values())).keys() if member_logs else ()
                    for key in keys:
                        col = np.full(K, np.nan)
                        for k, lk in member_logs.items():
                            col[k] = lk[key]
                        logs[key] = col
                    logs["samples_per_s"] = (trained * n / elapsed if elapsed > 0
                                             else float("inf"))
                    history.on_epoch_end(epoch, logs)
                    progress.epoch_end(epoch, {key: float(np.nanmean(v)) if np.ndim(v)
                                               else v for key, v in logs.items()})
                    for k, lk in member_logs.items():
                        histories[k].on_epoch_end(epoch, dict(lk, samples_per_s=(
                            n / elapsed if elapsed > 0 else float("inf"))))
                        if not all(np.isfinite(v) for key, v in lk.items()
                                   if key.endswith("loss")):
                            diverged[k] = True
                    for cb in shared:
                        cb.on_epoch_end(epoch, logs)
                    for k in list(active):
                        for cb in per_member[k]:
                            cb.on_epoch_end(epoch, member_logs[k])
                        if diverged[k] or members[k].stop_training:
                            stopped[k] = epoch
                            finish(k)
                            active.remove(k)
                            for cb in per_member[k]:
                                cb.on_train_end({})
                    if self.stop_training or not active:
                        break
            except KeyboardInterrupt:
                history.interrupted = True
            finally:
                for k in range(K):
                    finish(k)
                progress.close()
            for k in active:
                for cb in per_member[k]:
                    cb.on_train_end({})
            for cb in shared:
                cb.on_train_end({})
        history.history = {key: np.array(v) for key, v in history.history.items()}
        history.diverged = diverged
        history.stopped_epoch = stopped
        if diverged.any():
            warnings.warn(f"the loss of member(s) {np.flatnonzero(diverged).tolist()} stopped "
                          f"being finite; they stopped with their last finite weights. "
                          f"Lower their learning rates or set clip_norm",
                          RuntimeWarning, stacklevel=3)
        self.history = history
        return history

    def _run_epoch(self, plans, sessions, active, perm, schedules, shared, per_member,
                   progress, interrupt):
        """One epoch of every active member over ``perm``: ({member that ran it all: (loss
        sum, metric sum)}, as MLP.fit sums them (training.epoch_sums), members whose loss
        stopped being finite, each put back to its last finite weights)."""
        plan0 = plans[0]
        n, bs, clip = plan0.X.shape[0], plan0.batch_size, plan0.clip_norm
        members = self.members
        engines = {k: members[k]._engine for k in active}
        snapshots = {k: engines[k].snapshot(sessions[k]) for k in active}
        out = {k: np.empty((-(-n // bs), 2)) for k in active}
        loss_run = {k: 0.0 for k in active}   # running loss sums, for progress and callbacks
        running = list(active)
        bad = []
        start, chunk, b = 0, 0, 0
        per_batch_s = self._batch_seconds.get(bs)
        together = len({type(e) for e in engines.values()}) == 1
        while start < n and running:
            stop = min(n, start + chunk_batches(per_batch_s) * bs)
            nb = -(-(stop - start) // bs)
            lrs = {k: chunk_rates(members[k].optimizer, schedules[k],
                                  sessions[k].step_done + 1, nb) for k in running}
            t0 = time.perf_counter()
            jobs = [(engines[k], sessions[k], perm, start, stop, lrs[k],
                     sessions[k].step_done, clip, out[k][b:b + nb]) for k in running]
            done = engines[running[0]].train_together(jobs) if together else None
            if done is None:
                done = [engine.run_chunk(*job) for engine, *job in jobs]
            per_batch_s = self._batch_seconds[bs] = (time.perf_counter() - t0) / nb
            for k, d in zip(list(running), done):
                s = sessions[k]
                s.step_done += d
                rows = batch_rows(start, stop, bs, d)
                loss_run[k] += float(out[k][b:b + d, 0] @ rows)
                if d:
                    s.last_lr = float(lrs[k][d - 1])
                if d < nb:
                    engines[k].end_fit(s)
                    if not np.isfinite(members[k]._params).all():
                        engines[k].restore(s, snapshots[k])
                    running.remove(k)
                    bad.append(k)
            chunk += 1
            mean_loss = np.mean([loss_run[k] / stop for k in running]) if running else np.nan
            progress.chunk(stop, mean_loss)
            for cb in shared:
                cb.on_chunk_end(chunk, {"loss": np.array(
                    [loss_run[k] / stop if k in running else np.nan
                     for k in range(self.n_models)])})
            for k in running:
                for cb in per_member[k]:
                    cb.on_chunk_end(chunk, {"loss": loss_run[k] / stop})
            start, b = stop, b + nb
            if interrupt.requested:
                raise KeyboardInterrupt
        return {k: epoch_sums(out[k], n, bs) for k in running}, bad

    # ---------------------------------------------------------------- inference
    def _reduce(self, stack, reduce):
        if reduce is None:
            return stack
        if reduce == "mean":
            return stack.mean(axis=0)
        if reduce == "median":
            return np.median(stack, axis=0)
        return stack.std(axis=0)

    @staticmethod
    def _check_reduce(reduce):
        if reduce is not None and reduce not in REDUCTIONS:
            raise ConfigError(f"reduce must be None (every member) or one of "
                              f"{list(REDUCTIONS)}, got {reduce!r}")

    def predict_proba(self, X, reduce=None):
        """Class probabilities of every member, (K, n, n_out), or reduced over the
        members by ``reduce``: "mean", "median" or "std" (their spread), (n, n_out)."""
        self._check_reduce(reduce)
        if not self.is_classifier:
            raise ConfigError(f"predict_proba needs a classification loss; this ensemble's "
                              f"loss is {self.loss!r} (use predict)")
        Xc = check_X(X, self.dtype, n_features=self.sizes[0])
        return self._reduce(np.stack([m.predict_proba(Xc) for m in self.members]), reduce)

    def predict(self, X, reduce=None):
        """Every member's predictions, (K, n) or (K, n, n_out) as ``MLP.predict`` shapes
        them, or reduced over the members: "mean", "median" or "std" of the values for
        regression; for a classifier "mean" (soft voting) or "median" of the
        probabilities, then the decision as ``MLP.predict`` makes it ("std" has no class:
        use ``predict_proba(X, reduce="std")``)."""
        self._check_reduce(reduce)
        if self.is_classifier and reduce is not None:
            if reduce == "std":
                raise ConfigError("reduce='std' of class predictions has no meaning; use "
                                  "predict_proba(X, reduce='std') for the spread")
            proba = self.predict_proba(X, reduce=reduce)
            if registry.loss(self.loss).targets == "classes":
                return np.argmax(proba, axis=1)
            out = (proba >= 0.5).astype(np.int64)
            return out.reshape(-1) if proba.shape[1] == 1 else out
        Xc = check_X(X, self.dtype, n_features=self.sizes[0])
        return self._reduce(np.stack([m.predict(Xc) for m in self.members]), reduce)

    def evaluate(self, X, y, sample_weight=None):
        """Each member's ``MLP.evaluate`` as a dict of arrays (K,)."""
        res = [m.evaluate(X, y, sample_weight) for m in self.members]
        return {key: np.array([r[key] for r in res]) for key in res[0]}

    # -------------------------------------------------------------- persistence
    def save(self, path, extra=None):
        """Every member's weights, trainable flags and the config in one .npz (atomic,
        no pickle); :func:`fastbp.load` or :meth:`Ensemble.load` reads it back."""
        persistence.save_ensemble(self, path, extra=extra)

    @classmethod
    def load(cls, path, device=None):
        """The ensemble saved at ``path``; ``device`` overrides the saved one."""
        record = persistence.read(path)
        if not isinstance(record, EnsembleFile):
            raise ConfigError(f"{path!r} holds one MLP, not an ensemble; read it with "
                              f"fastbp.load")
        return from_ensemble_file(record, device)


def from_ensemble_file(record, device=None):
    cfg = dict(record.config)
    if device is not None:
        cfg["device"] = device
    try:
        ens = Ensemble(**cfg)
        for member, weights, flags in zip(ens.members, record.members, record.trainable):
            member.set_weights(weights)
            member._trainable[:] = flags
    except (ValueError, TypeError) as e:
        raise ModelFileError(f"the ensemble file is inconsistent: {e}") from None
    return ens


def load(path, device=None):
    """Read a file written by ``MLP.save`` or ``Ensemble.save``: an :class:`MLP` or an
    :class:`Ensemble`; ``device`` overrides the device in its config."""
    record = persistence.read(path)
    if isinstance(record, EnsembleFile):
        return from_ensemble_file(record, device)
    return from_file(record, device=device)


def _check_callbacks(callbacks):
    callbacks = check_callback_list(callbacks)
    for cb in callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.save_best_only:
            raise ConfigError("ModelCheckpoint(save_best_only=True) compares one number per "
                              "epoch; an ensemble logs one per member. Use it without "
                              "save_best_only, or EarlyStopping(restore_best_weights=True)")
    return callbacks


__all__ = ["Ensemble", "load", "from_ensemble_file"]
