"""The MLP model: configuration, weights, and the fit/predict façade over the engines."""
import math
import numbers
import time

import numpy as np

from . import persistence
from .backend import make_engine, resolve_device, single_threaded_blas
from .callbacks import History
from .errors import ConfigError, DataError, NotFittedError, TrainingDivergedError
from .kernels import math as km
from .optimizers import get_optimizer
from .progress import Progress
from .validation import (check_choice, check_dtype, check_positive_int, check_sample_weight,
                         check_targets, check_X)
from .workspace import Layout

INITS = ("auto", "he_normal", "he_uniform", "glorot_normal", "glorot_uniform")
RELU_FAMILY = ("relu", "leaky_relu", "elu", "gelu")
CLASSIFICATION = ("cross_entropy", "binary_cross_entropy")
# Python regains control after about this much compiled work (Ctrl-C, progress, callbacks).
CHUNK_SECONDS = 0.15


class MLP:
    """A multilayer perceptron trained by backpropagation in compiled chunks.

    Parameters
    ----------
    sizes : sequence of int
        ``[n_in, hidden..., n_out]``: input width, hidden widths, output width.
    activation : str or sequence of str
        Hidden activation, one name or one per hidden layer: relu, leaky_relu (slope 0.01),
        elu (alpha 1), gelu (exact erf form), sigmoid, tanh, identity.
    loss : str
        cross_entropy (softmax output; y class ids or one-hot rows), binary_cross_entropy
        (sigmoid outputs, 0/1 targets, multi-label allowed), mse, mae, huber (delta 1;
        identity output).
    dtype : "float32" or "float64"
    seed : int or None
        Seeds weight initialisation and shuffling: same seed, same weights, same run.
    device : "auto", "cpu" or "cuda"
    init : "auto" (He normal for the ReLU family, Glorot uniform otherwise), "he_normal",
        "he_uniform", "glorot_normal", "glorot_uniform". Biases start at zero.
    """

    def __init__(self, sizes, activation="relu", loss="cross_entropy", dtype="float32", seed=0,
                 device="auto", init="auto"):
        self.sizes = self._check_sizes(sizes)
        n_hidden = len(self.sizes) - 2
        if isinstance(activation, str):
            self.activations = [activation] * n_hidden
        else:
            self.activations = list(activation)
            if len(self.activations) != n_hidden:
                raise ConfigError(f"activation lists {len(self.activations)} names but the "
                                  f"model has {n_hidden} hidden layers")
        for a in self.activations:
            check_choice(a, "activation", km.ACTIVATIONS)
        self.activation = activation
        self.loss = check_choice(loss, "loss", km.LOSSES)
        self.dtype = check_dtype(dtype)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
            raise ConfigError(f"seed must be an int or None, got {seed!r}")
        self.seed = seed
        self.init = check_choice(init, "init", INITS)
        self.device = resolve_device(device)
        self.requested_device = device

        self.layout = Layout(self.sizes)
        self._acts = np.array([km.ACTIVATIONS[a] for a in self.activations] + [0],
                              dtype=np.int64)
        self._loss_code = km.LOSSES[self.loss]
        self._trainable = np.ones(self.layout.n_layers, dtype=bool)
        self._rng = np.random.default_rng(seed)
        self._params = self._initial_params()
        self._engine = make_engine(self, self.device)
        self._optimizer = None
        self._opt_state = None
        self._step = 0
        self.history = None

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _check_sizes(sizes):
        try:
            sizes = list(sizes)
        except TypeError:
            raise ConfigError(f"sizes must be a list [n_in, hidden..., n_out], got "
                              f"{sizes!r}") from None
        if len(sizes) < 2:
            raise ConfigError(f"sizes needs at least [n_in, n_out], got {sizes!r}")
        for s in sizes:
            if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s <= 0:
                raise ConfigError(f"every layer width in sizes must be a positive int, got "
                                  f"{sizes!r}")
        return [int(s) for s in sizes]

    def _init_scheme(self, l):
        if self.init != "auto":
            return self.init
        is_hidden = l < len(self.activations)
        if is_hidden and self.activations[l] in RELU_FAMILY:
            return "he_normal"
        return "glorot_uniform"

    def _initial_params(self):
        """Weights drawn in float64 from the seeded generator, so dtype never changes them."""
        params = np.zeros(self.layout.n_params, dtype=self.dtype)
        for l in range(self.layout.n_layers):
            fan_in, fan_out = self.sizes[l], self.sizes[l + 1]
            scheme = self._init_scheme(l)
            shape = (fan_in, fan_out)
            if scheme == "he_normal":
                w = self._rng.normal(0.0, math.sqrt(2.0 / fan_in), shape)
            elif scheme == "he_uniform":
                lim = math.sqrt(6.0 / fan_in)
                w = self._rng.uniform(-lim, lim, shape)
            elif scheme == "glorot_normal":
                w = self._rng.normal(0.0, math.sqrt(2.0 / (fan_in + fan_out)), shape)
            else:
                lim = math.sqrt(6.0 / (fan_in + fan_out))
                w = self._rng.uniform(-lim, lim, shape)
            params[self.layout.w_slice(l)] = w.ravel()
        return params

    def get_config(self):
        return dict(sizes=self.sizes, activation=self.activation, loss=self.loss,
                    dtype=self.dtype.name, seed=self.seed, device=self.requested_device,
                    init=self.init)

    def __repr__(self):
        return (f"MLP({self.sizes}, activation={self.activation!r}, loss={self.loss!r}, "
                f"dtype={self.dtype.name!r}, device={self.device!r})")

    @property
    def n_params(self):
        return self.layout.n_params

    @property
    def n_outputs(self):
        return self.sizes[-1]

    @property
    def is_classifier(self):
        return self.loss in CLASSIFICATION

    # -------------------------------------------------------------------- weights
    def get_weights(self):
        """Copies of ``[W1, b1, W2, b2, ...]`` with W of shape (n_in, n_out)."""
        return self._unflatten(self._params)

    def _unflatten(self, flat):
        out = []
        for l in range(self.layout.n_layers):
            out.append(flat[self.layout.w_slice(l)].reshape(self.sizes[l], self.sizes[l + 1])
                       .copy())
            out.append(flat[self.layout.b_slice(l)].copy())
        return out

    def set_weights(self, weights):
        """Replace every W and b (same layout as get_weights); all checked before any change."""
        weights = list(weights)
        expected = 2 * self.layout.n_layers
        if len(weights) != expected:
            raise DataError(f"set_weights needs {expected} arrays [W1, b1, ...], got "
                            f"{len(weights)}")
        new = np.empty_like(self._params)
        for i, w in enumerate(weights):
            l, is_bias = divmod(i, 2)
            shape = (self.sizes[l + 1],) if is_bias else (self.sizes[l], self.sizes[l + 1])
            name = f"{'b' if is_bias else 'W'}{l + 1}"
            arr = np.asarray(w)
            if arr.dtype.kind not in "fiu":
                raise DataError(f"set_weights: {name} has dtype {arr.dtype}; a real numeric "
                                f"array is required")
            if arr.shape != shape:
                raise DataError(f"set_weights: {name} has shape {arr.shape}, expected {shape}")
            if not np.isfinite(arr).all():
                raise DataError(f"set_weights: {name} contains NaN or infinite values")
            sl = self.layout.b_slice(l) if is_bias else self.layout.w_slice(l)
            new[sl] = arr.ravel()
        self._params[:] = new
        self._engine_params_changed()

    def _engine_params_changed(self):
        hook = getattr(self._engine, "params_changed", None)
        if hook is not None:
            hook()

    # ---------------------------------------------------------------- data checks
    def _X(self, X):
        return check_X(X, self.dtype, n_features=self.sizes[0])

    def _Y(self, y, n_rows):
        return check_targets(y, self.loss, self.n_outputs, n_rows, self.dtype)

    # ---------------------------------------------------------------------- fit
    def fit(self, X, y, epochs=20, batch_size=64, optimizer="adam", lr=None, shuffle=True,
            verbose=0, sample_weight=None, clip_norm=None, callbacks=None, warm_start=False):
        """Train by mini-batch backpropagation; returns a :class:`History`.

        Each epoch visits every row once in batches of ``batch_size`` (the last, partial
        batch is trained, its loss averaged over its own rows); with ``shuffle`` a new
        permutation per epoch comes from the model's seeded generator. ``optimizer`` is a
        name ("sgd", "adam", "adamw", "rmsprop") or an optimizer object; ``lr`` overrides its
        learning rate. ``warm_start`` keeps the optimizer state of the previous fit.
        ``history.history["loss"][e]`` is epoch e's mean loss over its batches' rows.
        Ctrl-C stops after the compiled chunk in flight, keeping the weights of the last
        completed step (``history.interrupted`` is then True).
        """
        epochs = check_positive_int(epochs, "epochs")
        batch_size = check_positive_int(batch_size, "batch_size")
        if lr is not None:
            lr = float(lr)
        opt = get_optimizer(optimizer, lr)
        if clip_norm is not None:
            clip_norm = float(clip_norm)
            if not clip_norm > 0:
                raise ConfigError(f"clip_norm must be positive or None, got {clip_norm!r}")
        Xc = self._X(X)
        Y = self._Y(y, Xc.shape[0])
        row_w = check_sample_weight(sample_weight, Xc.shape[0])
        if not self._trainable.any():
            raise ConfigError("every layer is frozen; unfreeze at least one layer to train")
        callbacks = list(callbacks or [])

        state, step = self._optimizer_state(opt, warm_start)
        history = History()
        history.params = dict(epochs=epochs, batch_size=batch_size, optimizer=repr(opt),
                              samples=Xc.shape[0])
        for cb in [history] + callbacks:
            cb.set_model(self)
        n = Xc.shape[0]
        with single_threaded_blas():
            session = self._engine.begin_fit(Xc, Y, row_w, opt, state, batch_size)
            progress = Progress(verbose, epochs, n)
            for cb in callbacks:
                cb.on_train_begin({})
            try:
                step = self._train_epochs(session, history, callbacks, progress, opt, epochs,
                                          batch_size, shuffle, clip_norm or 0.0, n, step)
            except KeyboardInterrupt:
                history.interrupted = True
            finally:
                self._engine.end_fit(session)
                self._optimizer, self._opt_state, self._step = opt, state, session.step_done
                progress.close()
            for cb in callbacks:
                cb.on_train_end({})
        self.history = history
        return history

    def _optimizer_state(self, opt, warm_start):
        same = (warm_start and self._optimizer is not None
                and type(self._optimizer) is type(opt) and self._opt_state is not None
                and self._opt_state.shape == (opt.n_slots, self.n_params)
                and self._opt_state.dtype == self.dtype)
        if same:
            return self._opt_state, self._step
        return opt.init_state(self.n_params, self.dtype), 0

    def _train_epochs(self, session, history, callbacks, progress, opt, epochs, batch_size,
                      shuffle, clip_norm, n, step):
        session.step_done = step
        n_batches_epoch = -(-n // batch_size)
        losses = np.empty(n_batches_epoch, dtype=np.float64)
        lrs = np.full(n_batches_epoch, opt.lr, dtype=np.float64)
        per_batch_s = None
        for epoch in range(epochs):
            for cb in callbacks:
                cb.on_epoch_begin(epoch, {})
            perm = (self._rng.permutation(n) if shuffle else np.arange(n)).astype(np.int64)
            snapshot = self._params.copy()
            t0 = time.perf_counter()
            loss_sum = 0.0
            start = 0
            chunk = 0
            while start < n:
                nb = self._chunk_batches(per_batch_s, batch_size)
                stop = min(n, start + nb * batch_size)
                nb = -(-(stop - start) // batch_size)
                tc = time.perf_counter()
                done = self._engine.run_chunk(session, perm, start, stop, lrs[:nb],
                                              session.step_done, clip_norm, losses[:nb])
                per_batch_s = (time.perf_counter() - tc) / max(done, 1)
                session.step_done += done
                rows = np.full(done, batch_size, dtype=np.float64)
                if done and start + done * batch_size > stop:
                    rows[-1] = stop - (start + (done - 1) * batch_size)
                loss_sum += float(np.dot(losses[:done], rows))
                if done < nb:
                    self._diverged(session, snapshot, epoch, losses[done])
                start = stop
                chunk += 1
                progress.chunk(stop, loss_sum / stop)
                for cb in callbacks:
                    cb.on_chunk_end(chunk, {"loss": loss_sum / stop})
            elapsed = time.perf_counter() - t0
            logs = {"loss": loss_sum / n, "lr": opt.lr,
                    "samples_per_s": n / elapsed if elapsed > 0 else float("inf")}
            history.on_epoch_end(epoch, logs)
            progress.epoch_end(epoch, logs)
            for cb in callbacks:
                cb.on_epoch_end(epoch, logs)
        return session.step_done

    @staticmethod
    def _chunk_batches(per_batch_s, batch_size):
        if per_batch_s is None:
            return 1   # the first call also pays compilation; measure, then size the chunks
        return max(1, int(CHUNK_SECONDS / max(per_batch_s, 1e-7)))

    def _diverged(self, session, snapshot, epoch, bad_loss):
        self._engine.end_fit(session)
        if not np.isfinite(self._params).all():
            self._params[:] = snapshot
            self._engine_params_changed()
        raise TrainingDivergedError(
            f"loss became {bad_loss} in epoch {epoch} (after {session.step_done} steps); "
            f"training stopped and the model keeps its last finite weights. Lower the "
            f"learning rate, scale the inputs, or set clip_norm")

    # ------------------------------------------------------------------- inference
    def _check_fitted(self):
        """Weights exist from construction; nothing to check (kept for the estimators)."""

    def _forward(self, X, n_layers=None, pre_activation=False, out=None):
        n_layers = self.layout.n_layers if n_layers is None else n_layers
        width = self.sizes[n_layers]
        if out is None:
            out = np.empty((X.shape[0], width), dtype=self.dtype)
        with single_threaded_blas():
            return self._engine.forward(X, n_layers, pre_activation, out)

    def predict_proba(self, X):
        """Class probabilities (n, n_out): softmax rows, or sigmoid per output for BCE."""
        if not self.is_classifier:
            raise ConfigError(f"predict_proba needs a classification loss; this model's loss "
                              f"is {self.loss!r} (use predict)")
        return self._forward(self._X(X))

    def predict(self, X):
        """Class ids (cross_entropy), 0/1 per output (binary_cross_entropy), or values.

        Regression and BCE with one output give a 1-D array, otherwise (n, n_out).
        """
        out = self._forward(self._X(X))
        if self.loss == "cross_entropy":
            return out.argmax(axis=1)
        if self.loss == "binary_cross_entropy":
            pred = (out >= 0.5).astype(np.int64)
            return pred.ravel() if self.n_outputs == 1 else pred
        return out.ravel() if self.n_outputs == 1 else out

    def transform(self, X, layer=None):
        """Activations of dense layer ``layer`` (1-based; default the last hidden layer)."""
        L = self.layout.n_layers
        layer = L - 1 if layer is None else layer
        if isinstance(layer, bool) or not isinstance(layer, numbers.Integral) or \
                not 1 <= layer <= L:
            raise ConfigError(f"layer must be an int in 1..{L}, got {layer!r}")
        return self._forward(self._X(X), n_layers=int(layer))

    def decision_function(self, X):
        """Output-layer pre-activations (logits)."""
        return self._forward(self._X(X), pre_activation=True)

    def evaluate(self, X, y, sample_weight=None):
        """``{"loss", "accuracy"}`` for classification, ``{"loss", "r2", "mae"}`` otherwise."""
        Xc = self._X(X)
        Y = self._Y(y, Xc.shape[0])
        w = check_sample_weight(sample_weight, Xc.shape[0])
        Z = self._forward(Xc, pre_activation=True)
        from .kernels.cpu import loss_sum
        loss = float(loss_sum(Z, Z, Y, w, self._loss_code)) / Xc.shape[0]
        res = {"loss": loss}
        if self.loss == "cross_entropy":
            res["accuracy"] = float(np.average(Z.argmax(1) == Y.argmax(1), weights=w))
        elif self.loss == "binary_cross_entropy":
            res["accuracy"] = float(np.average(((Z >= 0) == (Y >= 0.5)).mean(axis=1),
                                               weights=w))
        else:
            ss_res = ((Z - Y) ** 2 * w[:, None]).sum(0)
            mean = np.average(Y, axis=0, weights=w)
            ss_tot = ((Y - mean) ** 2 * w[:, None]).sum(0)
            with np.errstate(divide="ignore", invalid="ignore"):
                r2 = np.where(ss_tot > 0, 1 - ss_res / ss_tot, 0.0)
            res["r2"] = float(np.mean(r2))
            res["mae"] = float(np.average(np.abs(Z - Y).mean(1), weights=w))
        return res

    def loss_and_grads(self, X, y, sample_weight=None):
        """Mean loss over all rows and its gradient, in get_weights() layout; no update."""
        Xc = self._X(X)
        Y = self._Y(y, Xc.shape[0])
        w = check_sample_weight(sample_weight, Xc.shape[0])
        with single_threaded_blas():
            loss, grads = self._engine.loss_and_grads(Xc, Y, w)
        return loss, self._unflatten(grads)

    # ----------------------------------------------------------------- persistence
    def save(self, path):
        """Write weights and config to one .npz (no pickle); the write is atomic."""
        persistence.save(self, path)


def load(path, device=None):
    """Read a model written by :meth:`MLP.save`."""
    return persistence.load(path, device=device)
