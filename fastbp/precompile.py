"""A second process compiling while the first fit compiles: the trainer's back half, then
inference.

With an empty compile cache, a process's first fit spends most of its first seconds
compiling the trainer, on one core. When neither the trainer nor the inference entries
(prediction, evaluation) are cached, a child process uses another core meanwhile and fills
the same on-disk cache: it types the trainer's kernels from the last the fit reaches
backwards until it meets the fit (fastbp.compile_plan), so the fit loads those from the
cache, then compiles inference, whose forward pass it mostly finds cached by the fit. The
first ``predict`` waits for the child if it is still running and then loads its entries.
Compiled code does not depend on which process compiled it (kernels.jit), so the numbers
are the same either way; the child only saves time.

A first prediction with no fit before it (a model loaded in a fresh environment) gets a
helper too: it types the forward pass's kernels from the last the prediction reaches
backwards while the prediction types the first ones, and nobody waits for it.

It runs only where it can help: a cold cache, at least two threads for fastbp, and not
when ``FASTBP_BACKGROUND_COMPILE=0``.
"""
import os
import subprocess
import sys
import threading

from .threads import get_num_threads

_children = {}          # dtype name -> Popen
_helpers = {}           # dtype -> Popen or None: a first prediction's helper
_lock = threading.Lock()
WAIT_SECONDS = 120      # the longest a predict waits for the child before compiling itself


def _cached(dispatcher, dtype):
    """Whether ``dispatcher`` has a compiled overload for ``dtype`` in memory or on disk
    for this machine (Numba's cache index, read without loading anything)."""
    import numpy as np
    from numba import from_dtype, types
    nd = from_dtype(np.dtype(dtype))

    def of_dtype(sig):
        return any(isinstance(t, types.Array) and t.dtype == nd for t in sig)

    if any(of_dtype(sig) for sig in dispatcher.overloads):
        return True
    try:
        index = dispatcher._cache._cache_file._load_index()
        magic = dispatcher.targetctx.codegen().magic_tuple()
    except Exception:   # noqa: BLE001 - no readable index: treat as not cached
        return False
    return any(of_dtype(key[0]) and key[1] == magic for key in index)


def _enabled():
    return os.environ.get("FASTBP_BACKGROUND_COMPILE", "1") != "0" and get_num_threads() >= 2


def _spawn(code):
    """A niced child running ``code``: on a machine whose cores are all busy it takes only
    what the parent leaves."""
    try:
        return subprocess.Popen(
            [sys.executable, "-c", "import os; os.nice(10); " + code],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=_child_env())
    except OSError:
        return None


def start_predict(dtype):
    """Called as a prediction begins: where nothing has compiled inference for ``dtype``
    yet (no fit's child, nothing cached), start a helper that types the forward pass from
    its end. Once per dtype and process; every later call returns at once."""
    if dtype in _helpers:   # every prediction asks: keyed by the dtype as given (str() of a
        return              # NumPy dtype alone costs 3 us, a quarter of a one-row predict)
    from .kernels import cpu
    name = str(dtype)
    with _lock:
        if dtype in _helpers:
            return
        if not _enabled() or _children.get(name) is not None or \
                _cached(cpu.forward_tiles, name):
            _helpers[dtype] = None
            return
        _helpers[dtype] = _spawn(f"from fastbp.compile_plan import compile_back; "
                                 f"compile_back({name!r}, 'predict')")


def start(dtype):
    """Called as a fit begins: where the trainer for ``dtype`` is not cached (a first fit)
    and a core is free, start the child that types the trainer's back half, then compiles
    inference. (Where the trainer is cached, so are its kernels, and inference compiles
    from them in about a second.)"""
    from .kernels import cpu
    dtype = str(dtype)
    if not _enabled():
        return
    with _lock:
        if dtype in _children:
            return
        if _cached(cpu.train_chunk, dtype):
            _children[dtype] = None
            return
        _children[dtype] = _spawn(
            f"from fastbp.compile_plan import compile_back; compile_back({dtype!r}); "
            f"from fastbp.warmup import compile_inference; compile_inference({dtype!r})")


def _child_env():
    import fastbp
    env = dict(os.environ, FASTBP_BACKGROUND_COMPILE="0", FASTBP_NUM_THREADS="1")
    # The child must import this same fastbp, installed or from a checkout.
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastbp.__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def wait(dtype):
    """Before the first inference of ``dtype``: let a running child finish (it started
    earlier, so it finishes sooner than compiling here would)."""
    if not any(_children.values()):   # the usual case, checked first: every predict asks
        return
    child = _children.get(str(dtype))
    if child is None:
        return
    try:
        child.wait(timeout=WAIT_SECONDS)
    except subprocess.TimeoutExpired:
        pass
    _children[str(dtype)] = None
