"""Model files: one .npz holding weights, a JSON config and a format version; no pickle."""
import json
import os
import tempfile
import zipfile

import numpy as np

from .errors import ModelFileError

FORMAT_NAME = "fastbp-mlp"
FORMAT_VERSION = 1


def atomic_write(path, write):
    """Call ``write(fileobj)`` on a temp file beside ``path``, then rename it into place.

    A crash mid-write leaves any previous file at ``path`` intact.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".fastbp-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def save(model, path):
    header = dict(format=FORMAT_NAME, format_version=FORMAT_VERSION,
                  config=model.get_config(), trainable=model._trainable.tolist())
    arrays = {"header": np.array(json.dumps(header))}
    for i, w in enumerate(model.get_weights()):
        arrays[f"w{i}"] = w
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load(path, device=None):
    from .model import MLP
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no model file at {path!r}")
    try:
        with np.load(path, allow_pickle=False) as z:
            files = dict((k, z[k]) for k in z.files)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise ModelFileError(f"{path!r} is not a readable fastbp model file "
                             f"(truncated or corrupted?): {e}") from None
    try:
        header = json.loads(str(files.pop("header")))
    except (KeyError, ValueError, TypeError):
        raise ModelFileError(f"{path!r} has no fastbp header; it was not written by "
                             f"fastbp's save") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{path!r} is not a fastbp model file")
    version = header.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFileError(f"{path!r} has format version {version!r}; this fastbp reads up "
                             f"to {FORMAT_VERSION}. Upgrade fastbp to load it")
    cfg = dict(header.get("config") or {})
    if device is not None:
        cfg["device"] = device
    try:
        model = MLP(**cfg)
        n = 2 * model.layout.n_layers
        model.set_weights([files[f"w{i}"] for i in range(n)])
        trainable = header.get("trainable")
        if trainable is not None:
            model._trainable[:] = np.asarray(trainable, dtype=bool)
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFileError(f"{path!r} is inconsistent: {e}") from None
    return model
