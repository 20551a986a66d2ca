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
from ..errors import ConfigError
from ..files import atomic_write
from .common import check_output, format_of, require

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
        Extra entries for ONNX's metadata_props or a model file's ``extra`` (.npz and
        .safetensors; not .pt).

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
    elif fmt == "npz":
        model.save(path, format="npz", extra=metadata)
    elif metadata:
        raise ConfigError(f"a {fmt} export takes no metadata")
    else:
        torch = require("torch", "torch", "a .pt export")
        state = model.to_torch(output=output).state_dict()
        atomic_write(path, lambda f: torch.save(state, f))
    return fmt
