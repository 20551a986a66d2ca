"""Model files: one .npz holding weights, a JSON config and a format version; no pickle.

``save`` and ``read`` also handle .safetensors (``fastbp.export.safetensors_io``). Reading
gives a :class:`ModelFile` record; :func:`fastbp.load` builds the model from it, so this
module never imports the model.
"""
import json
import os
import zipfile
import zlib

import numpy as np

from .errors import ConfigError, ModelFileError
from .files import EnsembleFile, ModelFile, atomic_write, check_extra, check_layer_shapes


FORMAT_NAME = "fastbp-mlp"
FORMAT_VERSION = 1
ENSEMBLE_FORMAT_NAME = "fastbp-ensemble"
ENSEMBLE_FORMAT_VERSION = 1


def save(model, path, format=None, extra=None):
    """Write ``model`` to ``path`` as .npz (default) or .safetensors, by suffix or
    ``format``; ConfigError for any other suffix. ``extra`` (str to str) is stored beside
    the config and comes back in ``read(path).extra``."""
    extra = check_extra(extra)
    if save_format(path, format) == "safetensors":
        from .export import safetensors_io
        safetensors_io.save(model, path, metadata=extra)
        return
    header = dict(format=FORMAT_NAME, format_version=FORMAT_VERSION,
                  config=model.get_config(), trainable=model.trainable.tolist(), extra=extra)
    arrays = {"header": np.array(json.dumps(header))}
    for i, w in enumerate(model.get_weights()):
        arrays[f"w{i}"] = w
    atomic_write(path, lambda f: np.savez(f, **arrays))


def save_ensemble(ensemble, path, extra=None):
    """Write an ensemble (``get_config()`` and members with ``get_weights()`` and
    ``trainable``) to ``path`` as one .npz: member k's i-th array is ``m{k}_w{i}``."""
    extra = check_extra(extra)
    if save_format(path) != "npz":
        raise ConfigError("an ensemble saves as .npz only (one file for every member)")
    header = dict(format=ENSEMBLE_FORMAT_NAME, format_version=ENSEMBLE_FORMAT_VERSION,
                  config=ensemble.get_config(),
                  trainable=[m.trainable.tolist() for m in ensemble], extra=extra)
    arrays = {"header": np.array(json.dumps(header))}
    for k, member in enumerate(ensemble):
        for i, w in enumerate(member.get_weights()):
            arrays[f"m{k}_w{i}"] = w
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
            AttributeError, NotImplementedError, zlib.error) as e:
        raise ModelFileError(f"{path!r} is not a readable fastbp model file "
                             f"(truncated or corrupted?): {e}") from None


def save_format(path, format=None):
    """"npz" or "safetensors": ``format`` when given, else from ``path``'s suffix."""
    from .export.common import SUFFIX_FORMATS, format_of
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


def read(path):
    """The :class:`ModelFile` at ``path`` (.npz or .safetensors, by content, else suffix);
    ModelFileError for anything that is not a consistent fastbp model file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no model file at {path!r}")
    kind = _sniff(path)
    suffix = os.path.splitext(path)[1].lower()
    if kind == "safetensors" or (kind is None and suffix == ".safetensors"):
        from .export import safetensors_io
        return safetensors_io.read(path)
    if kind is None and suffix in (".onnx", ".pt", ".pth"):
        raise ModelFileError(f"{path!r}: fastbp.load reads fastbp's .npz and .safetensors "
                             f"model files; ONNX and PyTorch files are exports (a "
                             f"torch.nn.Sequential comes back with fastbp.from_torch)")
    return _read_npz(path)


# A key the command line once wrote beside the header; read as extra["cli_meta"].
_LEGACY_CLI_KEY = "cli_meta"


def _read_npz(path):
    files = _read_arrays(path)
    try:
        header = json.loads(str(files.pop("header")))
    except (KeyError, ValueError, TypeError):
        raise ModelFileError(f"{path!r} has no fastbp header; it was not written by "
                             f"fastbp's save") from None
    if isinstance(header, dict) and header.get("format") == ENSEMBLE_FORMAT_NAME:
        return _read_ensemble(path, header, files)
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
    try:
        extra = check_extra(header.get("extra"))
        if _LEGACY_CLI_KEY in files:
            extra.setdefault(_LEGACY_CLI_KEY, str(files.pop(_LEGACY_CLI_KEY)))
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
        trainable = header.get("trainable")
        if trainable is not None:
            flags = np.asarray(trainable)
            if flags.shape != (n // 2,) or flags.dtype != bool:
                raise ValueError(f"trainable flags {trainable!r} do not match "
                                 f"{n // 2} layers")
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFileError(f"{path!r} is inconsistent: {e}") from None
    return ModelFile(dict(cfg), [files[f"w{i}"] for i in range(n)], trainable, extra)


def _read_ensemble(path, header, files):
    version = header.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or \
            not 1 <= version <= ENSEMBLE_FORMAT_VERSION:
        raise ModelFileError(f"{path!r} has ensemble format version {version!r}; this fastbp "
                             f"reads 1 to {ENSEMBLE_FORMAT_VERSION}")
    cfg = header.get("config")
    try:
        if not isinstance(cfg, dict):
            raise ValueError("no ensemble config in the header")
        extra = check_extra(header.get("extra"))
        sizes, k = cfg.get("sizes"), cfg.get("n_models")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"n_models {k!r} is not a positive int")
        n = 2 * (len(sizes) - 1) if isinstance(sizes, list) else 0
        members, flags = [], header.get("trainable")
        if not isinstance(flags, list) or len(flags) != k:
            raise ValueError(f"trainable flags do not list {k} members")
        for m in range(k):
            names = [f"m{m}_w{i}" for i in range(n)]
            missing = [a for a in names if a not in files]
            if missing:
                raise KeyError(f"missing weight arrays {missing}")
            problem = check_layer_shapes(sizes, [(files[names[i]].shape,
                                                  files[names[i + 1]].shape)
                                                 for i in range(0, n, 2)])
            if problem:
                raise ValueError(f"member {m}: {problem}")
            f = np.asarray(flags[m])
            if f.shape != (n // 2,) or f.dtype != bool:
                raise ValueError(f"member {m}'s trainable flags do not match {n // 2} layers")
            members.append([files[a] for a in names])
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFileError(f"{path!r} is inconsistent: {e}") from None
    return EnsembleFile(dict(cfg), members, flags, extra)
