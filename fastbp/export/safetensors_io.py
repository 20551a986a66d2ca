"""Model files in the safetensors format: ``net.save("m.safetensors")``, ``fastbp.load``.

The tensors are named and laid out as the state_dict of ``net.to_torch()``:
``"<i>.weight"`` of shape (n_out, n_in) and ``"<i>.bias"``, where i is the Linear's index
in that Sequential, so ``net.to_torch().load_state_dict(safetensors.torch.load_file(p))``
works too. The header's metadata holds the config as JSON (``fastbp.config``), with the
format name and version and the frozen-layer flags; ``format`` is "pt", as hubs expect of
PyTorch-layout files.

Reading treats the file as untrusted. The safetensors library parses the header (its
offsets and sizes must fit the file); then the config's sizes, activations, loss and dtype
and every tensor's name, shape and dtype are checked against one another before a model
or a tensor is allocated. Any mismatch is a :class:`fastbp.ModelFileError`. No pickle.
"""
import json
import os
import re

import numpy as np

from ..errors import ModelFileError
from ..files import ModelFile, atomic_write, check_extra, check_layer_shapes
from .common import require

FORMAT_NAME = "fastbp-mlp"
FORMAT_VERSION = 1
PREFIX = "fastbp."
CONFIG_KEYS = ("sizes", "activation", "loss", "dtype", "seed", "device", "init", "dropout")
# safetensors' dtype names of the float dtypes fastbp computes in.
DTYPE_CODES = {"float32": "F32", "float64": "F64"}
_KEY = re.compile(r"(0|[1-9][0-9]{0,8})\.(weight|bias)")


def _library(purpose):
    require("safetensors", "safetensors", purpose)
    import safetensors
    import safetensors.numpy
    return safetensors


def save(model, path, metadata=None):
    """Write ``model``'s weights and config to ``path`` (atomically).

    Parameters
    ----------
    model : fastbp.MLP
    path : str or os.PathLike
    metadata : dict of str to str, optional
        More header entries (their keys may not start with "fastbp." or be "format").
    """
    from .torch_interop import state_dict_keys
    st = _library("saving a .safetensors model")
    weights = model.get_weights()
    tensors = {}
    for l, (wk, bk) in enumerate(state_dict_keys(model)):
        tensors[wk] = np.ascontiguousarray(weights[2 * l].T)     # torch's (out, in)
        tensors[bk] = weights[2 * l + 1]
    meta = {"format": "pt",
            PREFIX + "format": FORMAT_NAME,
            PREFIX + "format_version": str(FORMAT_VERSION),
            PREFIX + "config": json.dumps(model.get_config()),
            PREFIX + "trainable": json.dumps(model.trainable.tolist()),
            PREFIX + "layout": "torch.nn.Sequential state_dict: <i>.weight (n_out, n_in), "
                               "<i>.bias (n_out,)"}
    meta.update(check_extra(metadata))     # fastbp's own keys and "format" are refused
    data = st.numpy.save(tensors, metadata=meta)
    atomic_write(path, lambda f: f.write(data))


def read_metadata(path):
    """The header's metadata of a .safetensors file (str to str); ModelFileError if the
    file is not one."""
    st = _library("reading a .safetensors model")
    try:
        with st.safe_open(os.fspath(path), framework="numpy") as f:
            return dict(f.metadata() or {})
    except (st.SafetensorError, OSError) as e:
        raise ModelFileError(f"{os.fspath(path)!r} is not a readable safetensors file "
                             f"(truncated, corrupted or another format): {e}") from None


def _bad(path, why):
    return ModelFileError(f"{path!r} is inconsistent: {why}")


def _header(meta, path):
    """The checked format, config and trainable flags of the metadata."""
    if meta.get(PREFIX + "format") != FORMAT_NAME:
        raise ModelFileError(f"{path!r} is a safetensors file without fastbp's config in its "
                             f"metadata (it was not written by fastbp's save); a PyTorch "
                             f"state_dict of a Sequential loads into one and "
                             f"fastbp.from_torch reads that")
    version = meta.get(PREFIX + "format_version")
    if not isinstance(version, str) or not version.isdigit() or int(version) < 1:
        raise ModelFileError(f"{path!r} has an invalid format version {version!r}; the file "
                             f"is corrupted")
    if int(version) > FORMAT_VERSION:
        raise ModelFileError(f"{path!r} has format version {version}; this fastbp reads up "
                             f"to {FORMAT_VERSION}. Upgrade fastbp to load it")
    try:
        cfg = json.loads(meta.get(PREFIX + "config", ""))
        trainable = json.loads(meta.get(PREFIX + "trainable", "null"))
    except ValueError:
        raise _bad(path, "its config is not JSON") from None
    if not isinstance(cfg, dict):
        raise _bad(path, "its config is not a JSON object")
    unknown = sorted(set(cfg) - set(CONFIG_KEYS))
    if unknown:
        raise _bad(path, f"unknown config entries {unknown}")
    return cfg, trainable


def _layer_keys(names, path):
    """``[(weight key, bias key)]`` in layer order; every name must be one of them."""
    index = {}
    for name in names:
        m = _KEY.fullmatch(name)
        if m is None:
            raise _bad(path, f"unexpected tensor {name!r} (a fastbp file holds only "
                             f"'<i>.weight' and '<i>.bias')")
        index.setdefault(int(m.group(1)), set()).add(m.group(2))
    for i, kinds in sorted(index.items()):
        if kinds != {"weight", "bias"}:
            missing = ({"weight", "bias"} - kinds).pop()
            raise _bad(path, f"tensor '{i}.{missing}' is missing")
    return [(f"{i}.weight", f"{i}.bias") for i in sorted(index)]


def check(cfg, trainable, specs, path):
    """Check the config against the tensors' ``specs`` {name: (shape, dtype code)}: names,
    shapes, dtypes and flags. Returns the layer keys; raises ModelFileError."""
    from ..kernels import math as km
    keys = _layer_keys(specs, path)
    sizes = cfg.get("sizes")
    problem = check_layer_shapes(sizes, [(specs[w][0], specs[b][0]) for w, b in keys],
                                 names=[(repr(w), repr(b)) for w, b in keys], transposed=True)
    if problem:
        raise _bad(path, problem)
    dtype = cfg.get("dtype")
    if dtype not in DTYPE_CODES:
        raise _bad(path, f"dtype {dtype!r} is not float32 or float64")
    for name, (_, code) in specs.items():
        if code != DTYPE_CODES[dtype]:
            raise _bad(path, f"tensor {name!r} is {code}, the config's dtype {dtype} is "
                             f"stored as {DTYPE_CODES[dtype]}")
    acts = cfg.get("activation", "relu")
    acts = [acts] * (len(sizes) - 2) if isinstance(acts, str) else acts
    if not isinstance(acts, list) or len(acts) != len(sizes) - 2 or \
            any(not isinstance(a, str) or a not in km.ACTIVATIONS for a in acts):
        raise _bad(path, f"activation {cfg.get('activation')!r} does not name one of "
                         f"{sorted(km.ACTIVATIONS)} for each of {len(sizes) - 2} hidden layers")
    loss = cfg.get("loss", "cross_entropy")
    if not isinstance(loss, str) or loss not in km.LOSSES:
        raise _bad(path, f"unknown loss {loss!r}")
    if trainable is not None and (not isinstance(trainable, list) or
                                  len(trainable) != len(keys) or
                                  any(not isinstance(t, bool) for t in trainable)):
        raise _bad(path, f"trainable flags {trainable!r} do not match {len(keys)} layers")
    return keys


def read(path):
    """The :class:`fastbp.persistence.ModelFile` in the .safetensors file at ``path``;
    ModelFileError when it is not a safetensors file, not fastbp's, from a newer fastbp,
    or its config does not match its tensors. Header entries other than fastbp's come back
    as ``extra``."""
    path = os.fspath(path)
    st = _library("loading a .safetensors model")
    try:
        with st.safe_open(path, framework="numpy") as f:
            meta = dict(f.metadata() or {})
            cfg, trainable = _header(meta, path)
            specs = {}
            for name in f.keys():
                s = f.get_slice(name)
                specs[name] = (tuple(s.get_shape()), s.get_dtype())
            keys = check(cfg, trainable, specs, path)
            arrays = [f.get_tensor(k) for pair in keys for k in pair]
    except (st.SafetensorError, OSError) as e:
        raise ModelFileError(f"{path!r} is not a readable safetensors file (truncated, "
                             f"corrupted or another format): {e}") from None
    extra = {k: v for k, v in meta.items()
             if k != "format" and (not k.startswith(PREFIX) or k == LEGACY_CLI_KEY)}
    if LEGACY_CLI_KEY in extra:
        extra["cli_meta"] = extra.pop(LEGACY_CLI_KEY)
    weights = [np.ascontiguousarray(a.T) if i % 2 == 0 else a for i, a in enumerate(arrays)]
    return ModelFile(cfg, weights, trainable, extra)


# The command line's entry of earlier files, read back as extra["cli_meta"].
LEGACY_CLI_KEY = PREFIX + "cli_meta"
