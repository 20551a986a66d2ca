"""Backends: the engine interface (``base``), the CPU engine and the CUDA engine.

``make_engine(net, device)`` gives the engine of a resolved device; ``resolve_device``
turns "auto" into "cpu" or "cuda".
"""
import logging

from ..errors import ConfigError
from .base import Engine, FitSession

log = logging.getLogger("fastbp")
DEVICES = ("auto", "cpu", "cuda")
_auto_logged = False


def cuda_available():
    """True when numba-cuda is installed and sees a GPU (or the simulator is on)."""
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
