"""Ways out of fastbp, and back in: ONNX, PyTorch and safetensors.

``onnx_graph``      :meth:`fastbp.MLP.to_onnx`: MatMul, Add and activation nodes per layer
``sklearn_onnx``    the skl2onnx converter of :mod:`fastbp.sklearn`'s estimators
``torch_interop``   :meth:`fastbp.MLP.to_torch` and :func:`fastbp.from_torch`
``safetensors_io``  ``save("m.safetensors")`` and its loader

Every exporter is driven by tables with one entry per activation and one per output link
(the function a loss puts on the last layer), keyed by the names in
``fastbp.kernels.math``. A name without an entry is an error at export time, never a
silent identity. Importing this package imports none of the optional libraries; each is
imported inside the function that needs it, through :func:`require`.
"""
import importlib
import os

from ..errors import ConfigError, MissingDependencyError

# The output link of each loss: what turns the last layer's values into predict_proba /
# predict's values. Kept here, beside the exporters, because the kernels encode it in
# their loss code only.
OUTPUT_LINKS = {
    "cross_entropy": "softmax",
    "binary_cross_entropy": "sigmoid",
    "mse": "identity",
    "mae": "identity",
    "huber": "identity",
}

# The exporters' ``output`` argument: "auto" ends in the loss's link, "logits" before it.
OUTPUTS = ("auto", "logits")

# What fastbp writes, by file suffix. "npz" and "safetensors" load back with fastbp.load.
SUFFIX_FORMATS = {
    ".npz": "npz",
    ".safetensors": "safetensors",
    ".onnx": "onnx",
    ".pt": "torch",
    ".pth": "torch",
}


def output_link(loss):
    """The link name of ``loss``; ConfigError for a loss no exporter knows."""
    try:
        return OUTPUT_LINKS[loss]
    except KeyError:
        raise ConfigError(f"loss {loss!r} has no output link in fastbp.export.OUTPUT_LINKS; "
                          f"it cannot be exported until one is added") from None


def check_output(output):
    if not isinstance(output, str) or output not in OUTPUTS:
        raise ConfigError(f"output must be 'auto' (the loss's head: probabilities or values) "
                          f"or 'logits' (the last layer before the head), got {output!r}")
    return output


def lookup(table, name, kind, exporter):
    """``table[name]``, or a ConfigError naming the missing mapping."""
    try:
        return table[name]
    except (KeyError, TypeError):
        raise ConfigError(f"{exporter} has no mapping for the {kind} {name!r} (it knows "
                          f"{sorted(table)}); add one before exporting such a model") from None


def require(module, extra, purpose):
    """Import an optional dependency, or raise MissingDependencyError naming its extra."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(
            f"{purpose} needs the '{module}' package, which is not installed: "
            f"pip install \"fastbp[{extra}]\"") from e


def format_of(path, formats, what):
    """The format named by ``path``'s suffix among ``formats``; ConfigError otherwise."""
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    fmt = SUFFIX_FORMATS.get(suffix)
    if fmt not in formats:
        known = ", ".join(s for s, f in SUFFIX_FORMATS.items() if f in formats)
        raise ConfigError(f"{what}: cannot tell the format from the suffix "
                          f"{suffix or '(none)'!r} of {os.fspath(path)!r}; use one of {known}")
    return fmt


EXPORT_FORMATS = ("onnx", "safetensors", "npz", "torch")


def export(model, path, opset=None, output="auto", metadata=None):
    """Write ``model`` to ``path`` in the format its suffix names (``fastbp export``).

    Parameters
    ----------
    model : fastbp.MLP
    path : str or os.PathLike
        .onnx (:meth:`fastbp.MLP.to_onnx`), .safetensors or .npz (fastbp model files that
        ``fastbp.load`` reads), or .pt/.pth (the state_dict of :meth:`fastbp.MLP.to_torch`,
        which ``torch.load(path, weights_only=True)`` reads without pickle's code).
    opset : int, optional
        ONNX opset (.onnx only).
    output : "auto" or "logits"
        The head of .onnx and .pt exports (only "auto" for model files).
    metadata : dict of str to str, optional
        Extra entries for ONNX's metadata_props or the safetensors header (those two
        formats only).

    Returns
    -------
    str
        The format written.
    """
    fmt = format_of(path, EXPORT_FORMATS, "export")
    check_output(output)
    if opset is not None and fmt != "onnx":
        raise ConfigError(f"opset applies to .onnx exports, not to {fmt}")
    if output != "auto" and fmt in ("npz", "safetensors"):
        raise ConfigError(f"output={output!r} applies to .onnx and .pt exports; a {fmt} "
                          f"model file keeps the whole model")
    metadata = dict(metadata or {})
    if fmt == "onnx":
        from .onnx_graph import to_onnx, write
        proto = to_onnx(model, opset=opset, output=output)
        if metadata:
            onnx = require("onnx", "onnx", "to_onnx")
            props = {p.key: p.value for p in proto.metadata_props}
            props.update(metadata)
            onnx.helper.set_model_props(proto, props)
        write(require("onnx", "onnx", "to_onnx"), proto, path)
    elif fmt == "safetensors":
        from . import safetensors_io
        safetensors_io.save(model, path, metadata=metadata)
    elif metadata:
        raise ConfigError(f"a {fmt} export takes no metadata")
    elif fmt == "npz":
        model.save(path, format="npz")
    else:
        from ..persistence import atomic_write
        torch = require("torch", "torch", "a .pt export")
        state = model.to_torch(output=output).state_dict()
        atomic_write(path, lambda f: torch.save(state, f))
    return fmt
