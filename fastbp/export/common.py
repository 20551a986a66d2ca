"""What every exporter shares: the output link of each loss, the ``output`` argument,
file formats by suffix, table lookups and optional imports."""
import importlib
import os

from ..errors import ConfigError, MissingDependencyError

from ..registry import LOSSES

# The output link of each loss: what turns the last layer's values into predict_proba /
# predict's values.
OUTPUT_LINKS = {name: loss.link for name, loss in LOSSES.items()}

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
        raise ConfigError(f"loss {loss!r} has no output link in fastbp.export.common.OUTPUT_LINKS; "
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
