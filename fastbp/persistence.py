"""Model files: one .npz holding weights, a JSON config and a format version; no pickle.

``save`` and ``load`` also read and write .safetensors (``fastbp.export.safetensors_io``).
"""
import json
import os
import tempfile
import zipfile
import zlib

import numpy as np

from .errors import ConfigError, ModelFileError

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


def save(model, path, format=None):
    """Write ``model`` to ``path`` as .npz (default) or .safetensors, by suffix or
    ``format``; ConfigError for any other suffix."""
    if save_format(path, format) == "safetensors":
        from .export import safetensors_io
        safetensors_io.save(model, path)
        return
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


def save_format(path, format=None):
    """"npz" or "safetensors": ``format`` when given, else from ``path``'s suffix."""
    from .export import SUFFIX_FORMATS, format_of
    if format is not None:
        if format not in SAVE_FORMATS:
            raise ConfigError(f"format must be one of {list(SAVE_FORMATS)} or None (from the "
                              f"suffix), got {format!r}")
        return format
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if SUFFIX_FORMATS.get(suffix) in EXPORT_HINTS:
        raise ConfigError(f"save writes fastbp model files (.npz, .safetensors), not "
                          f"{suffix!r}: {EXPORT_HINTS[SUFFIX_FORMATS[suffix]]}")
    return format_of(path, SAVE_FORMATS, "save")


SAVE_FORMATS = ("npz", "safetensors")
EXPORT_HINTS = {"onnx": "export ONNX with net.to_onnx(path)",
                "torch": "net.to_torch() gives a torch.nn.Sequential to torch.save"}


def _sniff(path):
    """"npz" or "safetensors" from the file's first bytes, or None."""
    if zipfile.is_zipfile(path):
        return "npz"
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        size = os.path.getsize(path)
    except OSError:
        return None
    # safetensors: an 8-byte little-endian header length, then the JSON header.
    if len(head) == 9 and head[8:9] == b"{" and \
            2 <= int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    return None


def check_layer_shapes(sizes, shapes, names=None, transposed=False):
    """None when ``shapes``, ``[(W shape, b shape)]`` per layer, are those of a network of
    ``sizes``; otherwise the reason, for ModelFileError. W is (n_in, n_out), or (n_out,
    n_in) when ``transposed`` (PyTorch's layout); ``names`` name the tensors in messages
    (default W1, b1, ...). Run on an untrusted file's config before anything is allocated
    from its sizes."""
    if not isinstance(sizes, list) or len(sizes) < 2 or \
            any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in sizes):
        return f"sizes {sizes!r} is not a list of at least two positive ints"
    if len(shapes) != len(sizes) - 1:
        return (f"the config's sizes {sizes} make {len(sizes) - 1} layers, the file holds "
                f"weights of {len(shapes)}")
    for l, (w, b) in enumerate(shapes):
        wname, bname = names[l] if names else (f"W{l + 1}", f"b{l + 1}")
        want = (sizes[l + 1], sizes[l]) if transposed else (sizes[l], sizes[l + 1])
        if tuple(w) != want:
            return f"{wname} has shape {tuple(w)}, the config's sizes {sizes} need {want}"
        if tuple(b) != (sizes[l + 1],):
            return (f"{bname} has shape {tuple(b)}, the config's sizes {sizes} need "
                    f"{(sizes[l + 1],)}")
    return None


def load(path, device=None):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no model file at {path!r}")
    kind = _sniff(path)
    suffix = os.path.splitext(path)[1].lower()
    if kind == "safetensors" or (kind is None and suffix == ".safetensors"):
        from .export import safetensors_io
        return safetensors_io.load(path, device=device)
    if kind is None and suffix in (".onnx", ".pt", ".pth"):
        raise ModelFileError(f"{path!r}: fastbp.load reads fastbp's .npz and .safetensors "
                             f"model files; ONNX and PyTorch files are exports (a "
                             f"torch.nn.Sequential comes back with fastbp.from_torch)")
    return _load_npz(path, device)


def _load_npz(path, device):
    from .model import MLP
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
        sizes = cfg.get("sizes")
        n = 2 * (len(sizes) - 1) if isinstance(sizes, list) else 0
        missing = [f"w{i}" for i in range(n) if f"w{i}" not in files]
        if missing:
            raise KeyError(f"missing weight arrays {missing}")
        # Sizes from the file are checked against the arrays actually in it before the
        # model allocates anything from them.
        problem = check_layer_shapes(sizes, [(files[f"w{i}"].shape, files[f"w{i + 1}"].shape)
                                             for i in range(0, n, 2)])
        if problem:
            raise ValueError(problem)
        model = MLP(**cfg)
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
