"""Activations, output links and losses: one table per family, keyed by name.

Every list elsewhere derives from these tables: the model's checks, validation, metrics,
the CLI's choices, the scikit-learn wrappers, the exporters and the tests. A compiled
formula lives in ``fastbp.kernels.math`` under the entry's ``code``; the facts the Python
side needs live here. (Optimizers are classes, one per rule: ``fastbp.optimizers``
registers them with their named hyper-parameters and state slots.)

Adding an activation: its code and formulas in kernels/math.py, its entry here. Adding a
loss: the same, with a link from LINKS (or a new one).
"""
import functools
from dataclasses import dataclass, field

import numpy as np

from .errors import ConfigError, DataError
from .kernels import math as km


@dataclass(frozen=True)
class Activation:
    """A hidden-layer activation.

    ``init``: the weight scheme ``init="auto"`` picks ("he" for the ReLU family, else
    "glorot"). ``torch``: builds the equivalent ``torch.nn`` module from ``torch.nn``
    (None: no module). ``onnx``: the ONNX expression of f(x), a nested tuple
    ``(op, argument, ...)`` over "x", numbers and named attributes, or the name of a
    builder of fastbp.export.onnx_graph for those ONNX Runtime lacks in float64.
    """
    name: str
    code: int
    init: str
    torch: object
    onnx: object


@dataclass(frozen=True)
class Link:
    """What turns the last layer's values (logits) into the model's outputs."""
    name: str
    apply: object          # numpy: logits (n, k) -> outputs (n, k)
    torch: object          # torch.nn -> module, or None for none
    onnx: object           # as Activation.onnx, or None for none
    output_name: str       # the name of an exported graph's output


@dataclass(frozen=True)
class Loss:
    """A loss: its link (the output activation, so that the last delta is output - target
    up to a scale), whether it classifies, what its targets must be, and its metric."""
    name: str
    code: int
    link: str
    classifies: bool
    targets: str           # "classes" | "binary" | "real" | "nonnegative"
    metric: str            # "accuracy" | "r2"
    aliases: tuple = field(default_factory=tuple)   # scikit-learn's names


@functools.lru_cache(maxsize=None)
def _torch_exp_module(nn):
    """torch.nn has no exp module; the exp link's, one class per torch."""
    class Exp(nn.Module):
        def forward(self, x):
            return x.exp()
    return Exp


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))   # no overflow warnings at large |z|


ACTIVATIONS = {a.name: a for a in [
    Activation("identity", km.IDENTITY, "glorot", None, "x"),
    Activation("relu", km.RELU, "he", lambda nn: nn.ReLU(), ("Relu", "x")),
    Activation("leaky_relu", km.LEAKY_RELU, "he",
               lambda nn: nn.LeakyReLU(negative_slope=km.LEAKY_SLOPE), "leaky_relu"),
    Activation("elu", km.ELU, "he", lambda nn: nn.ELU(alpha=km.ELU_ALPHA), "elu"),
    Activation("gelu", km.GELU, "he", lambda nn: nn.GELU(approximate="none"), "gelu"),
    Activation("sigmoid", km.SIGMOID, "glorot", lambda nn: nn.Sigmoid(), ("Sigmoid", "x")),
    Activation("tanh", km.TANH, "glorot", lambda nn: nn.Tanh(), ("Tanh", "x")),
    Activation("silu", km.SILU, "he", lambda nn: nn.SiLU(), ("Mul", "x", ("Sigmoid", "x"))),
]}

LINKS = {k.name: k for k in [
    Link("softmax", _softmax, lambda nn: nn.Softmax(dim=-1), ("Softmax", "x", {"axis": -1}),
         "probabilities"),
    Link("sigmoid", _sigmoid, lambda nn: nn.Sigmoid(), ("Sigmoid", "x"), "probabilities"),
    Link("identity", lambda z: z, None, None, "predictions"),
    Link("exp", np.exp, lambda nn: _torch_exp_module(nn)(), ("Exp", "x"), "predictions"),
]}

LOSSES = {loss.name: loss for loss in [
    Loss("cross_entropy", km.CROSS_ENTROPY, "softmax", True, "classes", "accuracy",
         ("log_loss",)),
    Loss("binary_cross_entropy", km.BINARY_CROSS_ENTROPY, "sigmoid", True, "binary",
         "accuracy"),
    Loss("mse", km.MSE, "identity", False, "real", "r2", ("squared_error",)),
    Loss("mae", km.MAE, "identity", False, "real", "r2", ("absolute_error",)),
    Loss("huber", km.HUBER, "identity", False, "real", "r2"),
    Loss("poisson", km.POISSON, "exp", False, "nonnegative", "r2"),
]}

CLASSIFICATION_LOSSES = tuple(name for name, loss in LOSSES.items() if loss.classifies)
REGRESSION_LOSSES = tuple(name for name, loss in LOSSES.items() if not loss.classifies)


def _get(table, name, kind):
    if not isinstance(name, str) or name not in table:
        raise ConfigError(f"unknown {kind} {name!r}; choose one of {sorted(table)}")
    return table[name]


def activation(name):
    """The Activation named ``name``; ConfigError naming the choices otherwise."""
    return _get(ACTIVATIONS, name, "activation")


def loss(name):
    """The Loss named ``name``; ConfigError naming the choices otherwise."""
    return _get(LOSSES, name, "loss")


def link_of(loss_name):
    return LINKS[LOSSES[loss_name].link]


def check_target_values(loss_name, Y, name="y"):
    """DataError when the (n, k) targets Y are not what ``loss_name`` takes (class ids were
    one-hot encoded before this)."""
    kind = LOSSES[loss_name].targets
    if kind == "binary" and np.any((Y != 0) & (Y != 1)):
        raise DataError(f"{name} for {loss_name} must contain only 0 and 1 (one column per "
                        f"output); threshold or encode the targets first")
    if kind == "classes" and (np.any(Y < 0) or
                              not np.allclose(Y.sum(axis=1), 1.0, atol=1e-3)):
        raise DataError(f"{name} rows for {loss_name} must be one-hot or probabilities "
                        f"(non-negative, summing to 1)")
    if kind == "nonnegative" and np.any(Y < 0):
        raise DataError(f"{name} for {loss_name} must be non-negative (counts or rates)")
