"""ONNX export: per layer a MatMul, an Add and the activation, then the loss's head.

The graph takes ``input`` of shape (batch, n_in) in the model's dtype (float32 or float64;
the batch dimension is dynamic) and has one output:

* ``probabilities``: softmax rows (cross_entropy) or one sigmoid per output
  (binary_cross_entropy), as :meth:`fastbp.MLP.predict_proba`;
* ``predictions``: the values of :meth:`fastbp.MLP.predict` for the regression losses;
* ``logits`` with ``output="logits"``: the last layer before the head, as
  :meth:`fastbp.MLP.decision_function`.

Activations and heads come from two tables, ``ACTIVATION_OPS`` and ``LINK_OPS``; a name
missing from them is a ConfigError, not an identity. ONNX Runtime has no float64 kernels
for Erf and Elu, and LeakyRelu's ``alpha`` is a float32 attribute, so float64 graphs build
these three from ops that do have float64 kernels (GELU's erf from piecewise polynomials,
see :func:`erf_pieces`): float64 exports then agree with fastbp to about 1e-15.
"""
import functools
import json
import math
import numbers
import os

import numpy as np

from ..errors import ConfigError
from ..files import atomic_write
from ..kernels import math as km
from ..registry import ACTIVATIONS, LINKS
from .common import check_output, lookup, output_link, require

MIN_OPSET = 13          # Softmax over the last axis and every op used here, in one form
DEFAULT_OPSET = 17      # run by ONNX Runtime 1.13 and later, and by most other runtimes
INPUT_NAME = "input"
GRAPH_NAME = "fastbp_mlp"
# A serialized protobuf message cannot exceed 2 GiB: larger models keep their weights in a
# file beside the .onnx (ONNX's external data).
PROTOBUF_LIMIT = 2 ** 31 - 2 ** 20


# ------------------------------------------------------------------- graph builders
class GraphBuilder:
    """Nodes and initializers of one ONNX graph, every tensor name unique.

    ``op`` adds a node and returns its output's name; ``const`` and ``scalar`` add
    initializers in the builder's float dtype unless told otherwise. Subclasses redirect
    ``unique``, ``_initializer`` and ``_node`` (the skl2onnx converter writes into
    skl2onnx's container this way).
    """

    def __init__(self, onnx, dtype):
        self.onnx = onnx
        self.dtype = np.dtype(dtype)
        self.nodes, self.initializers = [], []
        self.memo = {}            # tensors shared by several layers (erf's tables)
        self._used = set()
        self._scalars = {}

    def unique(self, hint):
        name, i = hint, 1
        while name in self._used:
            i += 1
            name = f"{hint}_{i}"
        self._used.add(name)
        return name

    def reserve(self, name):
        """Claim an exact tensor name (a graph input or output)."""
        if name in self._used:
            raise ValueError(f"tensor name {name!r} is taken")
        self._used.add(name)
        return name

    def tensor(self, name, array):
        """A TensorProto of ``array`` (numbers, or strings as UTF-8 bytes)."""
        helper = self.onnx.helper
        if array.dtype.kind in "UO":
            return helper.make_tensor(name, self.onnx.TensorProto.STRING, array.shape,
                                      [str(s).encode("utf-8") for s in array.ravel()])
        return self.onnx.numpy_helper.from_array(np.ascontiguousarray(array), name)

    def const(self, hint, value, dtype=None):
        array = np.asarray(value, dtype=self.dtype if dtype is None else dtype)
        name = self.unique(hint)
        self._initializer(name, array)
        return name

    def scalar(self, value):
        """A 0-d constant of the builder's dtype, shared by every node that uses it."""
        key = float(value)
        if key not in self._scalars:
            self._scalars[key] = self.const(f"const_{key:g}".replace("-", "minus_"), key)
        return self._scalars[key]

    def op(self, op_type, inputs, hint, out=None, **attrs):
        out = self.unique(hint) if out is None else out
        self._node(op_type, list(inputs), out, **attrs)
        return out

    def _initializer(self, name, array):
        self.initializers.append(self.tensor(name, array))

    def _node(self, op_type, inputs, out, **attrs):
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, [out], name=out,
                                                     **attrs))


def onnx_elem_type(onnx, dtype):
    return {np.dtype(np.float32): onnx.TensorProto.FLOAT,
            np.dtype(np.float64): onnx.TensorProto.DOUBLE}[np.dtype(dtype)]


# ------------------------------------------------------------------------- erf, float64
ERF_PIECE = 0.5     # width of each polynomial piece of erf on [0, ERF_TOP]
ERF_TOP = 6.0       # erf(x) rounds to 1 in float64 from x = 5.93 on
ERF_DEGREE = 13     # with pieces of 0.5: within 2.3e-16 of math.erf (1 ulp at 1)


@functools.lru_cache(maxsize=None)
def erf_pieces():
    """Coefficients (ERF_DEGREE + 1, K) of erf on K pieces of [0, ERF_TOP].

    Piece k covers [k, k + 1] * ERF_PIECE; there erf(x) = sum_j c[j, k] u^j with
    u = 2 x / ERF_PIECE - (2k + 1) in [-1, 1]. Each piece interpolates math.erf (the C
    library's, which the kernels call too) at Chebyshev points, and one refinement step
    takes out the rounding of the fit, so the polynomials are derived here rather than
    copied from a table.
    """
    cheb = np.polynomial.chebyshev
    poly = np.polynomial.polynomial
    n = ERF_DEGREE + 1
    u = np.cos(np.pi * (np.arange(n) + 0.5) / n)
    n_pieces = int(round(ERF_TOP / ERF_PIECE))
    coef = np.zeros((n, n_pieces))
    for k in range(n_pieces):
        y = np.array([math.erf((k + (v + 1.0) / 2.0) * ERF_PIECE) for v in u])
        c = np.zeros(n)
        for _ in range(2):          # the fit, then the fit of its residual
            step = cheb.cheb2poly(cheb.chebfit(u, y - poly.polyval(u, c), ERF_DEGREE))
            c[:len(step)] += step
        coef[:, k] = c
    return coef


def _erf_float64(g, s, p):
    """erf(s) from ops with float64 kernels: odd symmetry, a clamp at ERF_TOP, and the
    piece's polynomial by Horner, its coefficients picked per element with Gather."""
    if "erf" not in g.memo:
        coef = erf_pieces()
        odd = 2.0 * np.arange(coef.shape[1]) + 1.0
        g.memo["erf"] = ([g.const(f"erf_c{j}", c) for j, c in enumerate(coef)],
                         g.const("erf_piece_center", odd),
                         g.const("erf_clamp", np.nextafter(ERF_TOP, 0.0)))
    coefs, centers, clamp = g.memo["erf"]
    a = g.op("Min", [g.op("Abs", [s], f"{p}/erf_abs"), clamp], f"{p}/erf_clamped")
    k = g.op("Cast", [g.op("Floor", [g.op("Mul", [a, g.scalar(1.0 / ERF_PIECE)],
                                          f"{p}/erf_scaled")], f"{p}/erf_floor")],
             f"{p}/erf_piece", to=g.onnx.TensorProto.INT64)
    u = g.op("Sub", [g.op("Mul", [a, g.scalar(2.0 / ERF_PIECE)], f"{p}/erf_twice"),
                     g.op("Gather", [centers, k], f"{p}/erf_center")], f"{p}/erf_u")
    acc = g.op("Gather", [coefs[-1], k], f"{p}/erf_c")
    for c in reversed(coefs[:-1]):
        acc = g.op("Add", [g.op("Mul", [acc, u], f"{p}/erf_horner"),
                           g.op("Gather", [c, k], f"{p}/erf_c")], f"{p}/erf_horner")
    return g.op("Mul", [g.op("Sign", [s], f"{p}/erf_sign"), acc], f"{p}/erf")


# ------------------------------------------------------------------- activation table
# The registry gives each activation and link an ONNX expression; those ONNX Runtime
# cannot run as written in float64 (or that need an attribute rounded to float32) name a
# builder here instead.
def _leaky_relu(g, z, p, out=None):
    if g.dtype == np.float64:      # alpha is a float32 attribute: 0.01 would be rounded
        return g.op("Max", [z, g.op("Mul", [z, g.scalar(km.LEAKY_SLOPE)], f"{p}/slope")],
                    f"{p}/leaky_relu", out=out)
    return g.op("LeakyRelu", [z], f"{p}/leaky_relu", out=out, alpha=km.LEAKY_SLOPE)


def _elu(g, z, p, out=None):
    if g.dtype == np.float64:      # no float64 Elu kernel in ONNX Runtime
        neg = g.op("Sub", [g.op("Exp", [z], f"{p}/exp"), g.scalar(1.0)], f"{p}/exp_minus_1")
        if km.ELU_ALPHA != 1.0:
            neg = g.op("Mul", [neg, g.scalar(km.ELU_ALPHA)], f"{p}/alpha")
        positive = g.op("Greater", [z, g.scalar(0.0)], f"{p}/positive")
        return g.op("Where", [positive, z, neg], f"{p}/elu", out=out)
    return g.op("Elu", [z], f"{p}/elu", out=out, alpha=km.ELU_ALPHA)


def _gelu(g, z, p, out=None):
    # 0.5 z (1 + erf(z / sqrt 2)), the exact form, in the kernels' order of operations.
    s = g.op("Mul", [z, g.scalar(km._INV_SQRT2)], f"{p}/scaled")
    erf = _erf_float64(g, s, p) if g.dtype == np.float64 else g.op("Erf", [s], f"{p}/erf")
    half = g.op("Mul", [z, g.scalar(0.5)], f"{p}/half")
    return g.op("Mul", [half, g.op("Add", [erf, g.scalar(1.0)], f"{p}/one_plus_erf")],
                f"{p}/gelu", out=out)


BUILDERS = {"leaky_relu": _leaky_relu, "elu": _elu, "gelu": _gelu}


def _emit(g, expr, z, p, out=None):
    """The tensor of a registry expression over ``z``: "x", a number, or (op, argument...,
    {attributes}); ``out`` names the outermost node's output."""
    if isinstance(expr, str):
        if expr != "x":     # a builder's name
            return BUILDERS[expr](g, z, p, out=out)
        return z if out is None else g.op("Identity", [z], f"{p}/identity", out=out)
    if isinstance(expr, numbers.Real):
        return g.scalar(float(expr))
    op, *args = expr
    attrs = args.pop() if args and isinstance(args[-1], dict) else {}
    inputs = [_emit(g, a, z, p) for a in args]
    return g.op(op, inputs, f"{p}/{op.lower()}", out=out, **attrs)


def _emitter(expr):
    """fn(builder, pre_activation, name_prefix, out=None) -> tensor name; None for None."""
    if expr is None:
        return None
    if isinstance(expr, str) and expr != "x" and expr not in BUILDERS:
        raise KeyError(f"no ONNX builder {expr!r}")
    return lambda g, z, p, out=None: _emit(g, expr, z, p, out)


# One entry per hidden activation and per output link of fastbp.registry.
ACTIVATION_OPS = {name: _emitter(a.onnx) for name, a in ACTIVATIONS.items()}
LINK_OPS = {name: (_emitter(k.onnx), k.output_name) for name, k in LINKS.items()}


# ----------------------------------------------------------------------------- network
def plan(model, output):
    """The activation emitters, the head emitter and the output's name; every mapping is
    looked up before a node is added, so an unknown name leaves nothing half-built."""
    check_output(output)
    acts = [lookup(ACTIVATION_OPS, a, "activation", "ONNX export")
            for a in model.activations]
    if output == "logits":
        return acts, None, "logits"
    head, name = lookup(LINK_OPS, output_link(model.loss), "output link", "ONNX export")
    return acts, head, name


def emit_network(g, model, x, output="auto", out=None):
    """Add ``model``'s layers to ``g``, reading tensor ``x`` (batch, n_in) of the model's
    dtype. Returns the output tensor's name: ``out`` when given, else the plan's name."""
    acts, head, name = plan(model, output)
    out = g.unique(name) if out is None else out
    sync = getattr(model, "_engine_sync", None)
    if sync is not None:
        sync()                      # a CUDA model mid-fit: the device holds the weights
    weights = model.get_weights()
    n_layers = len(weights) // 2
    h = x
    for l in range(n_layers):
        p = f"layer{l + 1}"
        W = g.const(f"W{l + 1}", weights[2 * l])
        b = g.const(f"b{l + 1}", weights[2 * l + 1])
        last = l == n_layers - 1
        z = g.op("MatMul", [h, W], f"{p}/matmul")
        z = g.op("Add", [z, b], f"{p}/add", out=out if last and head is None else None)
        if not last:
            h = acts[l](g, z, p)
        elif head is not None:
            return head(g, z, "head", out=out)
    return z


def check_opset(opset, onnx):
    newest = onnx.defs.onnx_opset_version()
    if opset is None:
        return min(DEFAULT_OPSET, newest)
    if isinstance(opset, bool) or not isinstance(opset, numbers.Integral) or \
            not MIN_OPSET <= opset <= newest:
        raise ConfigError(f"opset {opset!r} is not supported: fastbp exports ONNX opsets "
                          f"{MIN_OPSET} to {newest} (the newest that the installed onnx "
                          f"{onnx.__version__} knows); the default is {DEFAULT_OPSET}")
    return int(opset)


def to_onnx(model, path=None, opset=None, output="auto"):
    """The network as an ``onnx.ModelProto``; written to ``path`` when one is given.

    Parameters
    ----------
    model : fastbp.MLP
    path : str or os.PathLike, optional
        Where to write the model (atomically). Models whose weights exceed protobuf's
        2 GiB also write ``<path>.data`` with the weights (ONNX external data).
    opset : int, optional
        ONNX opset, from 13 to the newest the installed onnx knows; default 17.
    output : "auto" or "logits"
        "auto": the loss's head, so the output equals predict_proba (cross_entropy,
        binary_cross_entropy) or predict (regression); "logits": the values before it.

    Returns
    -------
    onnx.ModelProto
        Input ``input`` (batch, n_in) and one output (batch, n_out), ``probabilities``,
        ``predictions`` or ``logits``, both in the model's dtype.
    """
    onnx = require("onnx", "onnx", "to_onnx")
    opset = check_opset(opset, onnx)
    helper = onnx.helper
    g = GraphBuilder(onnx, model.dtype)
    x = g.reserve(INPUT_NAME)
    y = emit_network(g, model, x, output)
    elem = onnx_elem_type(onnx, model.dtype)
    graph = helper.make_graph(
        g.nodes, GRAPH_NAME,
        [helper.make_tensor_value_info(x, elem, ["batch", model.sizes[0]])],
        [helper.make_tensor_value_info(y, elem, ["batch", model.sizes[-1]])],
        initializer=g.initializers)
    from ..version import __version__
    proto = helper.make_model_gen_version(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="fastbp",
        producer_version=__version__, doc_string=repr(model))
    helper.set_model_props(proto, {"fastbp.config": json.dumps(model.get_config()),
                                   "fastbp.output": y})
    if path is not None:
        write(onnx, proto, path)
    return proto


def write(onnx, proto, path):
    """Write ``proto`` to ``path``: atomically, or with external data past 2 GiB."""
    path = os.fspath(path)
    weight_bytes = sum(int(np.prod(t.dims)) *
                       onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
                       for t in proto.graph.initializer)
    if weight_bytes <= PROTOBUF_LIMIT:
        atomic_write(path, lambda f: f.write(proto.SerializeToString()))
        return
    onnx.save_model(proto, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=os.path.basename(path) + ".data", size_threshold=1024)
