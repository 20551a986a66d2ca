"""Backends: the engine interface (``base``), the CPU engine and the CUDA engine.

``make_engine(net, device)`` gives the engine of a resolved device; ``resolve_device``
turns "auto" into "cpu" or "cuda".
"""
import ctypes
import functools
import logging
import os
import sys

from ..errors import ConfigError
from .base import Engine, FitSession

log = logging.getLogger("fastbp")
DEVICES = ("auto", "cpu", "cuda")
_auto_logged = False


def _driver_loadable():
    """Whether a CUDA driver library loads, tried by the names and places numba-cuda tries
    (its driver module's locate_driver_and_loader) before numba.cuda is imported: that
    import alone took 0.9 s on a machine without a GPU, paid by every first model with
    device="auto". The simulator and a driver named in NUMBA_CUDA_DRIVER need no library
    here."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0") or \
            os.environ.get("NUMBA_CUDA_DRIVER"):
        return True
    return _driver_library_found()


@functools.lru_cache(maxsize=None)
def _driver_library_found():
    """The search itself, once per process: six failed loads took 0.2 ms, on every model
    built with device="auto"."""
    if sys.platform == "win32":
        loader, dirs, names = ctypes.WinDLL, ["\\windows\\system32"], ["nvcuda.dll"]
    elif sys.platform == "darwin":
        loader, dirs, names = ctypes.CDLL, ["/usr/local/cuda/lib"], ["libcuda.dylib"]
    else:
        loader, dirs, names = ctypes.CDLL, ["/usr/lib", "/usr/lib64"], ["libcuda.so",
                                                                      "libcuda.so.1"]
    for path in names + [os.path.join(d, n) for d in dirs for n in names]:
        try:
            loader(path)
            return True
        except OSError:
            continue
    return False


def cuda_available():
    """True when numba-cuda is installed and sees a GPU (or the simulator is on)."""
    if not _driver_loadable():
        return False
    try:
        from numba import cuda
    except Exception:  # noqa: BLE001 - numba-cuda missing or broken: the CPU serves
        return False
    try:
        return bool(cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


def resolve_device(device):
    global _auto_logged
    if device not in DEVICES:
        raise ConfigError(f"unknown device {device!r}; choose one of {list(DEVICES)}")
    if device == "cpu":
        return "cpu"
    available = cuda_available()
    if device == "cuda":
        if not available:
            raise ConfigError("device='cuda' but no CUDA GPU is available (install the 'cuda' "
                              "extra, pip install 'fastbp[cuda]', and check the driver), or "
                              "use device='cpu'")
        return "cuda"
    choice = "cuda" if available else "cpu"
    if not _auto_logged:
        log.info("fastbp: device='auto' chose %s", choice)
        _auto_logged = True
    return choice


def make_engine(net, device):
    """The engine for ``net`` on a resolved ``device``."""
    if device == "cuda":
        from .cuda import CudaEngine
        return CudaEngine(net)
    from .cpu import CPUEngine
    return CPUEngine(net)


__all__ = ["DEVICES", "Engine", "FitSession", "cuda_available", "make_engine",
           "resolve_device"]
