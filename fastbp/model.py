"""The MLP model: configuration, weights, and the fit/predict façade over the engines."""
import numbers

import numpy as np

from . import initializers, persistence, registry, training
from .engines import make_engine, resolve_device
from .engines.cpu import single_threaded_blas
from .errors import ConfigError, DataError, DataTypeError, ModelFileError
from .files import EnsembleFile
from .kernels.cpu import loss_sum
from .network import Layout, Network, aligned_zeros
from .planning import plan_fit
from .validation import (check_choice, check_dtype, check_positive_int, check_sample_weight,
                         check_targets, check_X, require_finite)


class MLP:
    """A multilayer perceptron trained by backpropagation in compiled chunks.

    Parameters
    ----------
    sizes : sequence of int
        ``[n_in, hidden..., n_out]``: input width, hidden widths, output width.
    activation : str or sequence of str
        Hidden activation, one name or one per hidden layer, from
        ``fastbp.registry.ACTIVATIONS``: relu, leaky_relu (slope 0.01), elu (alpha 1), gelu
        (exact erf form), sigmoid, tanh, identity (PyTorch's definitions).
    loss : str
        From ``fastbp.registry.LOSSES``: cross_entropy (softmax output; y class ids or
        one-hot rows), binary_cross_entropy (sigmoid outputs, 0/1 targets, multi-label
        allowed), mse, mae, huber (delta 1; identity output).
    dtype : "float32" or "float64"
    seed : int or None
        Seeds weight initialisation and shuffling: same seed, same weights, same run.
    device : "auto", "cpu" or "cuda"
    init : "auto" (He normal for the ReLU family, Glorot uniform otherwise), "he_normal",
        "he_uniform", "glorot_normal", "glorot_uniform". Biases start at zero.
    dropout : float or sequence of float
        Inverted-dropout rate after each hidden layer (one rate or one per hidden layer), in
        [0, 1); applied in training only, deterministic for a given seed.
    """

    def __init__(self, sizes, activation="relu", loss="cross_entropy", dtype="float32", seed=0,
                 device="auto", init="auto", dropout=0.0):
        self.sizes = self._check_sizes(sizes)
        n_hidden = len(self.sizes) - 2
        if isinstance(activation, str):
            self.activations = [activation] * n_hidden
        else:
            try:
                self.activations = list(activation)
            except TypeError:
                raise ConfigError(f"activation must be a name or a list of names, one per "
                                  f"hidden layer; choose from {sorted(registry.ACTIVATIONS)}, "
                                  f"got {activation!r}") from None
            if len(self.activations) != n_hidden:
                raise ConfigError(f"activation lists {len(self.activations)} names but the "
                                  f"model has {n_hidden} hidden layers")
        acts = [registry.activation(a).code for a in self.activations]
        self.activation = activation
        self.loss = registry.loss(loss).name
        self.dtype = check_dtype(dtype)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
                                 or seed < 0):
            raise ConfigError(f"seed must be a non-negative int or None, got {seed!r}")
        self.seed = seed
        self.init = check_choice(init, "init", initializers.INITS)
        self.device = resolve_device(device)
        self.requested_device = device
        self.dropout = dropout
        drop = self._check_dropout(dropout, n_hidden)

        layout = Layout(self.sizes)
        self._rng = np.random.default_rng(seed)
        params = initializers.initial_params(layout, self.activations, self.init, self._rng,
                                             aligned_zeros(layout.n_params, self.dtype))
        self.net = Network(layout=layout, acts=np.array(acts + [0], dtype=np.int64),
                           loss=registry.loss(self.loss).code, drop=drop, params=params,
                           trainable=np.ones(layout.n_layers, dtype=bool))
        self._engine = make_engine(self.net, self.device)
        self.optimizer = None       # the optimizer of the current/last fit (callbacks set lr)
        self.stop_training = False
        self._opt_state = None
        self._step = 0
        self.history = None

    # The network record's parts, under the names the rest of the package reads.
    layout = property(lambda self: self.net.layout)
    _params = property(lambda self: self.net.params)
    _acts = property(lambda self: self.net.acts)
    _drop = property(lambda self: self.net.drop)
    _trainable = property(lambda self: self.net.trainable)
    _loss_code = property(lambda self: self.net.loss)

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

    def _check_dropout(self, dropout, n_hidden):
        rates = [dropout] * n_hidden if np.ndim(dropout) == 0 else list(dropout)
        if len(rates) != n_hidden:
            raise ConfigError(f"dropout lists {len(rates)} rates but the model has {n_hidden} "
                              f"hidden layers")
        for r in rates:
            if isinstance(r, bool) or not isinstance(r, numbers.Real) or not 0.0 <= r < 1.0:
                raise ConfigError(f"dropout rates must be numbers in [0, 1), got {dropout!r}")
        return np.array([float(r) for r in rates] + [0.0], dtype=np.float64)

    def get_config(self):
        return dict(sizes=self.sizes, activation=self.activation, loss=self.loss,
                    dtype=self.dtype.name, seed=self.seed, device=self.requested_device,
                    init=self.init, dropout=self.dropout)

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
        return registry.loss(self.loss).classifies

    # -------------------------------------------------------------------- weights
    def get_weights(self):
        """Copies of ``[W1, b1, W2, b2, ...]`` with W of shape (n_in, n_out)."""
        self._engine_sync()
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
        try:
            weights = list(weights)
        except TypeError:
            raise DataTypeError(f"set_weights needs a list of arrays [W1, b1, W2, b2, ...] "
                                f"(as get_weights returns), got {type(weights).__name__}") \
                from None
        expected = 2 * self.layout.n_layers
        if len(weights) != expected:
            raise DataError(f"set_weights needs {expected} arrays [W1, b1, ...], got "
                            f"{len(weights)}")
        new = np.empty_like(self._params)
        for i, w in enumerate(weights):
            l, is_bias = divmod(i, 2)
            shape = (self.sizes[l + 1],) if is_bias else (self.sizes[l], self.sizes[l + 1])
            name = f"{'b' if is_bias else 'W'}{l + 1}"
            try:
                arr = np.asarray(w)
            except (ValueError, TypeError):
                raise DataError(f"set_weights: {name} is not a rectangular array; pass an "
                                f"array of shape {shape}") from None
            if arr.dtype.kind not in "fiu":
                raise DataTypeError(f"set_weights: {name} has dtype {arr.dtype}; a real numeric "
                                f"array is required")
            if arr.shape != shape:
                raise DataError(f"set_weights: {name} has shape {arr.shape}, expected {shape}")
            if not np.isfinite(arr).all():
                raise DataError(f"set_weights: {name} contains NaN or infinite values")
            sl = self.layout.b_slice(l) if is_bias else self.layout.w_slice(l)
            with np.errstate(over="ignore"):
                new[sl] = arr.ravel()
        if not np.isfinite(new).all():   # finite float64 values may overflow float32
            raise DataError(f"set_weights: some values overflow {self.dtype.name} (|w| too "
                            f"large); rescale the weights")
        self._params[:] = new
        self._engine_params_changed()

    def _engine_params_changed(self):
        self._engine.params_changed()

    # ---------------------------------------------------------------- data checks
    def _X(self, X, finite=True):
        return check_X(X, self.dtype, n_features=self.sizes[0], finite=finite)

    def _Y(self, y, n_rows):
        return check_targets(y, self.loss, self.n_outputs, n_rows, self.dtype)

    # ---------------------------------------------------------------------- fit
    def fit(self, X, y, epochs=20, batch_size=64, optimizer="adam", lr=None, shuffle=True,
            verbose=0, validation_split=0.0, validation_data=None, sample_weight=None,
            class_weight=None, clip_norm=None, callbacks=None, warm_start=False, comm=None,
            sync_every=1):
        """Train by mini-batch backpropagation; returns a :class:`History`.

        Parameters
        ----------
        X : array (n, n_in);  y : class ids (n,) or one-hot/targets (n, n_out)
        epochs, batch_size : int
            Each epoch visits every row once; the last, partial batch is trained, its loss
            averaged over its own rows.
        optimizer : "sgd", "adam", "adamw", "rmsprop" or an optimizer object
        lr : float, optional
            Overrides the optimizer's learning rate.
        shuffle : bool
            A new permutation per epoch from the model's seeded generator.
        verbose : "auto", 0, 1 or 2
            Keras-style: a progress bar (1, or "auto" on a terminal) or a line per epoch (2).
        validation_split : float in [0, 1)
            Hold out the last fraction of rows (before shuffling) as validation data.
        validation_data : (X_val, y_val) or (X_val, y_val, sample_weight_val)
            Overrides ``validation_split``.
        sample_weight : array (n,), optional
            Per-row weights of the loss (each batch's loss is sum(w * loss) / rows).
        class_weight : dict {class id: weight} or "balanced", optional
            Multiplies ``sample_weight``; "balanced" is n / (n_classes * bincount(y)).
        clip_norm : float, optional
            Clip the global gradient norm to this value before each update.
        callbacks : list of :class:`fastbp.callbacks.Callback`
        warm_start : bool
            Continue the previous fit's optimizer state and step count (weights always
            carry over between fits; ``reset()`` re-initialises them).
        comm : mpi4py communicator, optional
            Data-parallel training: each rank passes its own shard and ``batch_size`` rows
            per rank per step (see :mod:`fastbp.distributed`). Start ranks from identical
            weights (same ``seed``). CUDA models hand MPI device buffers when the MPI
            library reports CUDA support; the environment variable
            ``FASTBP_MPI_CUDA_AWARE`` (auto, 1 or 0) overrides that detection.
        sync_every : int
            With ``comm``: 1 averages gradients every step (equivalent to one process at
            batch size ranks x batch_size); k > 1 averages parameters every k steps
            (local SGD, k times fewer messages).

        Ctrl-C stops after the compiled chunk in flight, keeping the weights of its last
        step (``history.interrupted`` is then True). A non-finite loss raises
        :class:`fastbp.TrainingDivergedError` and keeps the last finite weights.
        """
        if comm is None:
            check_positive_int(sync_every, "sync_every")
            plan = plan_fit(self, X, y, epochs, batch_size, optimizer, lr, shuffle, verbose,
                            validation_split, validation_data, sample_weight, class_weight,
                            clip_norm, callbacks, warm_start, training.LocalChunks())
            return training.train(self, plan)
        from .distributed import Collective, data_parallel
        coll = Collective(comm)
        error, plan = None, None
        try:    # anything one rank alone may reject, before any rank waits on another
            strategy = data_parallel(comm, check_positive_int(sync_every, "sync_every"))
            plan = plan_fit(self, X, y, epochs, batch_size, optimizer, lr, shuffle, verbose,
                            validation_split, validation_data, sample_weight, class_weight,
                            clip_norm, callbacks, warm_start, strategy)
        except (ValueError, TypeError) as e:
            error = e
        coll.agree(error)          # every rank raises if any rank's input was bad
        strategy.prepare(self, plan)
        return training.train(self, plan)

    def partial_fit(self, X, y, batch_size=64, optimizer="adam", lr=None, shuffle=True,
                    sample_weight=None, class_weight=None, clip_norm=None, verbose=0):
        """One pass over (X, y), continuing the optimizer state of earlier calls."""
        return self.fit(X, y, epochs=1, batch_size=batch_size, optimizer=optimizer, lr=lr,
                        shuffle=shuffle, sample_weight=sample_weight,
                        class_weight=class_weight, clip_norm=clip_norm, verbose=verbose,
                        warm_start=True)

    def _metric_name(self):
        return registry.loss(self.loss).metric

    # ------------------------------------------------------------- freezing layers
    def _layer_indices(self, layers):
        L = self.layout.n_layers
        if isinstance(layers, numbers.Integral) and not isinstance(layers, bool):
            layers = [layers]
        elif isinstance(layers, str) or not hasattr(layers, "__iter__"):
            raise ConfigError(f"layers must be a layer index or a list of indices "
                              f"(0..{L - 1}, or negative from the end), got {layers!r}")
        out = []
        for l in layers:
            if isinstance(l, bool) or not isinstance(l, numbers.Integral) or not -L <= l < L:
                raise ConfigError(f"layer index {l!r} is out of range for {L} dense layers "
                                  f"(0..{L - 1}, or negative from the end)")
            out.append(int(l) % L)
        return out

    def freeze(self, layers):
        """Freeze dense layers (0-based; negative from the end): their W and b stay bitwise
        unchanged by fit and their gradients are not computed."""
        idx = self._layer_indices(layers)
        self._trainable[idx] = False
        return self

    def unfreeze(self, layers=None):
        """Make dense layers trainable again (all of them when ``layers`` is None)."""
        idx = range(self.layout.n_layers) if layers is None else self._layer_indices(layers)
        self._trainable[list(idx)] = True
        return self

    @property
    def trainable(self):
        """One bool per dense layer."""
        return self._trainable.copy()

    def reset(self):
        """Re-initialise weights (from the seed) and forget the optimizer state."""
        self._rng = np.random.default_rng(self.seed)
        self._params[:] = 0
        initializers.initial_params(self.layout, self.activations, self.init, self._rng,
                                    self._params)
        self._engine_params_changed()
        self.optimizer, self._opt_state, self._step = None, None, 0
        self.history = None
        return self

    # ------------------------------------------------------------------- inference
    def _forward(self, X, n_layers=None, pre_activation=False, out=None, check=False):
        """The first ``n_layers`` layers on X into ``out``; ``check``: X has not been checked
        for NaN/inf yet (the engine does it inside its pass where it can, else here first;
        DataError either way)."""
        if check and not self._engine.checks_in_pass:
            require_finite(X, "X")
            check = False
        n_layers = self.layout.n_layers if n_layers is None else n_layers
        width = self.sizes[n_layers]
        if out is None:
            out = np.empty((X.shape[0], width), dtype=self.dtype)
        return self._engine.forward(X, n_layers, pre_activation, out, check)

    def _output_buffer(self, out, n, dtype, shapes, what):
        """Check a caller's ``out`` array; None means allocate one."""
        if out is None:
            return np.empty(shapes[0], dtype=dtype)
        if not isinstance(out, np.ndarray) or out.dtype != dtype or \
                out.shape not in shapes or not out.flags.c_contiguous or not out.flags.writeable:
            raise DataError(f"out for {what} must be a writeable C-contiguous {np.dtype(dtype)} "
                            f"array of shape {' or '.join(map(str, shapes))}")
        return out

    def predict_proba(self, X, out=None):
        """Class probabilities (n, n_out): softmax rows, or sigmoid per output for BCE.

        ``out``: optional preallocated (n, n_out) array of the model's dtype to write into.
        """
        if not self.is_classifier:
            raise ConfigError(f"predict_proba needs a classification loss; this model's loss "
                              f"is {self.loss!r} (use predict)")
        # X is checked for NaN/inf inside the forward pass (one pass over memory, not two),
        # but up front when the caller's own ``out`` would take the results of bad input.
        mine = out is None
        Xc = self._X(X, finite=not mine)
        n = Xc.shape[0]
        out = self._output_buffer(out, n, self.dtype, [(n, self.n_outputs)], "predict_proba")
        return self._forward(Xc, out=out, check=mine)

    def predict(self, X, out=None):
        """Class ids (cross_entropy), 0/1 per output (binary_cross_entropy), or values.

        Regression and BCE with one output give a 1-D array, otherwise (n, n_out).
        ``out``: optional preallocated result array (int64 for class ids, the model's dtype
        for values) written in place; C-contiguous inputs of the model's dtype are read
        without a copy.
        """
        # The NaN/inf check of X as in predict_proba: in the forward pass, unless its
        # results go straight into the caller's ``out``.
        classify = self.is_classifier
        mine = out is None
        Xc = self._X(X, finite=not (mine or classify))
        n, k = Xc.shape[0], self.n_outputs
        one_of_k = registry.loss(self.loss).targets == "classes"
        shapes = [(n,)] if k == 1 or one_of_k else [(n, k)]
        if classify:
            out = self._output_buffer(out, n, np.int64, shapes, "predict")
            proba = self._forward(Xc, check=True)
            if one_of_k:
                np.argmax(proba, axis=1, out=out)
            else:
                np.greater_equal(proba.reshape(out.shape), 0.5, out=out, casting="unsafe")
            return out
        if k == 1:
            shapes = [(n,), (n, 1)]
        out = self._output_buffer(out, n, self.dtype, shapes, "predict")
        self._forward(Xc, out=out.reshape(n, k), check=mine)
        return out

    def compiled_predictor(self, max_rows=256):
        """``fn, args`` such that ``fn(*args, x_batch, out)`` predicts inside ``@njit`` code.

        ``fn`` is the serial compiled inference kernel; ``args`` holds the model's flat
        parameters (a live view: later training shows through), layout and scratch buffers
        for ``max_rows`` rows at a time. ``x_batch``: C-contiguous (m, n_in) of the model's
        dtype; ``out``: (m, n_out), receives probabilities or values. Not for concurrent use
        from several threads (one ``compiled_predictor()`` per thread).
        """
        from .kernels.cpu import predict_rows
        lay = self.layout
        rows = check_positive_int(max_rows, "max_rows")
        Z = np.zeros(rows * lay.row_width, dtype=self.dtype)
        A = np.zeros(rows * lay.row_width, dtype=self.dtype)
        self._engine_sync()
        return predict_rows, (self._params, lay.sizes, self._acts, lay.poff, lay.coff,
                              self._loss_code, Z, A)

    def compiled_trainer(self, batch_size=64, optimizer="adam", lr=None, clip_norm=None):
        """``fn, args`` such that ``loss = fn(*args, x_batch, y_batch)`` runs one training
        step inside ``@njit`` code; see :func:`fastbp.embedding.compiled_trainer`."""
        from .embedding import compiled_trainer
        return compiled_trainer(self, batch_size, optimizer, lr=lr, clip_norm=clip_norm)

    def _engine_sync(self):
        self._engine.params_to_host()

    def transform(self, X, layer=-2):
        """Activations (n, width) of dense layer ``layer``: 0-based like freeze, negative
        from the end; the default -2 is the last hidden layer (an autoencoder's code when
        the code layer is the middle one, pass its index)."""
        (l,) = self._layer_indices(layer)
        return self._forward(self._X(X), n_layers=l + 1)

    def decision_function(self, X):
        """Output-layer pre-activations (logits)."""
        return self._forward(self._X(X), pre_activation=True)

    def evaluate(self, X, y, sample_weight=None):
        """``{"loss", "accuracy"}`` for classification, ``{"loss", "r2", "mae"}`` otherwise."""
        Xc = self._X(X)
        Y = self._Y(y, Xc.shape[0])
        w = check_sample_weight(sample_weight, Xc.shape[0])
        return self._evaluate_arrays(Xc, Y, w)

    def _row_hits(self, Z, Y):
        """Per row, the fraction of outputs predicted right from logits Z: the class for
        cross_entropy, each 0/1 label for binary_cross_entropy."""
        if registry.loss(self.loss).targets == "classes":
            return (Z.argmax(1) == Y.argmax(1)).astype(np.float64)
        return ((Z >= 0) == (Y >= 0.5)).mean(axis=1)

    def _evaluate_arrays(self, Xc, Y, w):
        Z = self._forward(Xc, pre_activation=True)
        loss = float(loss_sum(Z, Y, w, self._loss_code)) / Xc.shape[0]
        res = {"loss": loss}
        if self.is_classifier:
            res["accuracy"] = float(np.average(self._row_hits(Z, Y), weights=w))
        else:
            P = registry.link_of(self.loss).apply(Z)   # the outputs the metrics are about
            ss_res = ((P - Y) ** 2 * w[:, None]).sum(0)
            mean = np.average(Y, axis=0, weights=w)
            ss_tot = ((Y - mean) ** 2 * w[:, None]).sum(0)
            with np.errstate(divide="ignore", invalid="ignore"):
                r2 = np.where(ss_tot > 0, 1 - ss_res / ss_tot, 0.0)
            res["r2"] = float(np.mean(r2))
            res["mae"] = float(np.average(np.abs(P - Y).mean(1), weights=w))
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
    def save(self, path, format=None, extra=None):
        """Write weights and config to one file, atomically and without pickle: .npz, or
        .safetensors (needs the ``safetensors`` extra); the format comes from the suffix
        unless ``format`` ("npz" or "safetensors") is given. ``extra``: str-to-str entries
        stored beside them (``fastbp.persistence.read(path).extra`` gives them back)."""
        persistence.save(self, path, format=format, extra=extra)

    def to_onnx(self, path=None, opset=None, output="auto"):
        """The network as an ``onnx.ModelProto`` (needs the ``onnx`` extra), written to
        ``path`` when given: MatMul, Add and the activation per layer, then softmax,
        sigmoid or nothing as the loss's head (``output="logits"``: no head). Input
        ``input`` (batch, n_in), output (batch, n_out), in the model's dtype; ``opset`` 13
        to the newest the installed onnx knows, default 17. See
        :func:`fastbp.export.onnx_graph.to_onnx`."""
        from .export.onnx_graph import to_onnx
        return to_onnx(self, path=path, opset=opset, output=output)

    def to_torch(self, output="auto"):
        """The network as a ``torch.nn.Sequential`` of ``Linear`` and activation modules
        with the same weights, ending in the loss's head unless ``output="logits"``. See
        :func:`fastbp.export.torch_interop.to_torch`."""
        from .export.torch_interop import to_torch
        return to_torch(self, output=output)

    def __getstate__(self):
        """Everything but the engine (device buffers, compiled objects, thread-local
        scratch), which unpickling builds afresh: pickle, copy.deepcopy, joblib and
        multiprocessing carry the weights, the optimizer state and step (so a warm-started
        fit goes on where it stopped), the shuffling generator, frozen layers and history."""
        self._engine_sync()
        state = dict(self.__dict__)
        del state["_engine"]
        return state

    def __setstate__(self, state):
        state = dict(state)
        net = state["net"]
        # The kernels' buffers start on a cache line; an unpickled array need not.
        params = aligned_zeros(net.params.shape, net.params.dtype)
        params[...] = net.params
        state["net"] = Network(layout=net.layout, acts=net.acts, loss=net.loss, drop=net.drop,
                               params=params, trainable=net.trainable)
        opt_state = state.get("_opt_state")
        if opt_state is not None:
            state["_opt_state"] = aligned_zeros(opt_state.shape, opt_state.dtype)
            state["_opt_state"][...] = opt_state
        self.__dict__.update(state)
        # "auto" picks again where the model lands (a GPU model moves to a CPU-only host).
        self.device = resolve_device(self.requested_device)
        self._engine = make_engine(self.net, self.device)


def _build(record, device=None):
    cfg = dict(record.config)
    if device is not None:
        cfg["device"] = device
    model = MLP(**cfg)
    model.set_weights(record.weights)
    if record.trainable is not None:
        model._trainable[:] = record.trainable
    return model


def from_file(model_file, device=None):
    """The :class:`MLP` of a :class:`fastbp.files.ModelFile`; ``device`` overrides the one
    in its config. ModelFileError when config and weights disagree."""
    if isinstance(model_file, EnsembleFile):
        raise ModelFileError(f"the file holds an ensemble of {len(model_file.members)} "
                             f"models, not one MLP; read it with fastbp.load or "
                             f"fastbp.Ensemble.load")
    try:
        return _build(model_file, device)
    except (ValueError, TypeError) as e:
        raise ModelFileError(f"the model file is inconsistent: {e}") from None


def from_torch(module, loss=None, dtype=None, **kwargs):
    """An :class:`MLP` with the layers and weights of a ``torch.nn.Sequential`` (see
    :func:`fastbp.export.torch_interop.read_torch` for what it reads); its W is
    ``weight.T`` and its b ``bias``, bit for bit, and a Linear none of whose parameters
    requires grad becomes a frozen layer. ``kwargs`` go to :class:`MLP` (``seed``,
    ``device``, ``init``)."""
    from .export.torch_interop import read_torch
    return _build(read_torch(module, loss=loss, dtype=dtype, **kwargs))


def load(path, device=None):
    """Read a model written by :meth:`MLP.save` (.npz or .safetensors); ``device``
    overrides the device in its config."""
    return from_file(persistence.read(path), device=device)
