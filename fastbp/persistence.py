"""Model files: one .npz holding weights, a JSON config and a format version; no pickle."""
import json
import os
import tempfile
import zipfile
import zlib

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
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        os.chmod(tmp, _file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _file_mode(path):
    """The existing file's permissions, else 0666 less the process umask."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def save(model, path):
    header = dict(format=FORMAT_NAME, format_version=FORMAT_VERSION,
                  config=model.get_config(), trainable=model._trainable.tolist())
    arrays = {"header": np.array(json.dumps(header))}
    for i, w in enumerate(model.get_weights()):
        arrays[f"w{i}"] = w
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _read_arrays(path):
    """Every array of the .npz at ``path``; ModelFileError for anything else."""
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"{path!r} is not a fastbp model file (not an .npz archive; "
                             f"truncated, corrupted, or a different format)")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, TypeError,
            AttributeError, zlib.error) as e:
        raise ModelFileError(f"{path!r} is not a readable fastbp model file "
                             f"(truncated or corrupted?): {e}") from None


def load(path, device=None):
    from .model import MLP
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no model file at {path!r}")
    files = _read_arrays(path)
    try:
        header = json.loads(str(files.pop("header")))
    except (KeyError, ValueError, TypeError):
        raise ModelFileError(f"{path!r} has no fastbp header; it was not written by "
                             f"fastbp's save") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{path!r} is not a fastbp model file")
    version = header.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ModelFileError(f"{path!r} has an invalid format version {version!r}; the file "
                             f"is corrupted")
    if version > FORMAT_VERSION:
        raise ModelFileError(f"{path!r} has format version {version!r}; this fastbp reads up "
                             f"to {FORMAT_VERSION}. Upgrade fastbp to load it")
    cfg = header.get("config")
    if not isinstance(cfg, dict):
        raise ModelFileError(f"{path!r} has no model config in its header; the file is "
                             f"corrupted")
    cfg = dict(cfg)
    if device is not None:
        cfg["device"] = device
    try:
        model = MLP(**cfg)
        n = 2 * model.layout.n_layers
        missing = [f"w{i}" for i in range(n) if f"w{i}" not in files]
        if missing:
            raise KeyError(f"missing weight arrays {missing}")
        model.set_weights([files[f"w{i}"] for i in range(n)])
        trainable = header.get("trainable")
        if trainable is not None:
            trainable = np.asarray(trainable)
            if trainable.shape != (n // 2,) or trainable.dtype != bool:
                raise ValueError(f"trainable flags {trainable.tolist()!r} do not match "
                                 f"{n // 2} layers")
            model._trainable[:] = trainable
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFileError(f"{path!r} is inconsistent: {e}") from None
    return model
