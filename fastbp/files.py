"""Model files below the model: the record a file holds, its checks, and atomic writes.

Persistence and the exporters build on these; none of them imports the model (the model
builds itself from a :class:`ModelFile`).
"""
import os
import tempfile
from dataclasses import dataclass, field


@dataclass
class ModelFile:
    """What a model file holds: the constructor's config, the weights in ``get_weights``
    order ([W1 (n_in, n_out), b1, ...]), the per-layer trainable flags (None in files
    that predate them) and the caller's ``extra`` entries (str to str)."""
    config: dict
    weights: list
    trainable: list = None
    extra: dict = field(default_factory=dict)


@dataclass
class EnsembleFile:
    """What an ensemble file holds: the ensemble's config, each member's weights in
    ``get_weights`` order, each member's trainable flags and the caller's ``extra``."""
    config: dict
    members: list
    trainable: list
    extra: dict = field(default_factory=dict)


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


def check_extra(extra):
    """``extra`` as a new dict of str to str; ValueError otherwise."""
    extra = dict(extra or {})
    for k, v in extra.items():
        if not isinstance(k, str) or not isinstance(v, str) or k.startswith("fastbp.") or \
                k == "format":
            raise ValueError(f"extra entries must be str keys (not 'format' or 'fastbp.*') "
                             f"with str values, got {k!r}: {v!r}")
    return extra


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
