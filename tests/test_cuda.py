"""The CUDA backend: the checks of ``cuda_checks.py`` under numba's CUDA simulator (CI has no
GPU), the kernels compiled for a real GPU target (PTX needs no GPU, only libNVVM), and the
same checks on a real GPU when there is one."""
import importlib.util
import os
import sys

import pytest

import early

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CHECKS = os.path.join(HERE, "cuda_checks.py")

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("numba_cuda") is None,
    reason="numba-cuda is not installed (pip install 'fastbp[cuda]'); CUDA backend not tested")


def _checks(simulate):
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    if simulate:
        # Must be set before numba is imported: hence a fresh interpreter.
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", CHECKS]
    return f"cuda_checks simulate={simulate}", cmd, env, ROOT


def _run_checks(simulate, timeout):
    code, out, err = early.result(*_checks(simulate), timeout=timeout)
    assert code == 0, (f"CUDA checks failed (simulator={simulate}):\n"
                       f"{out[-12000:]}\n{err[-4000:]}")


@early.early(lambda: _checks(True))
def test_cuda_engine_matches_cpu_under_simulator():
    _run_checks(simulate=True, timeout=900)


def _real_gpu():
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return False
    from numba import cuda
    try:
        return bool(cuda.is_available())
    except Exception:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _real_gpu(), reason="needs a real CUDA GPU")
def test_cuda_engine_matches_cpu_on_gpu():
    _run_checks(simulate=False, timeout=1800)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_kernels_compile_for_gpu(dtype, monkeypatch):
    """Type inference and code generation for sm_90, which the simulator never runs."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        pytest.skip("compile_ptx is not available under the simulator")
    from numba import cuda

    def probe(a):
        a[0] = 1.0

    try:
        cuda.compile_ptx(probe, "void(float32[:])", cc=(9, 0))
    except Exception as e:  # no libNVVM: numba-cuda without its cu12/cu13 extra
        pytest.skip(f"libNVVM not found ({type(e).__name__}); install numba-cuda[cu12] or "
                    f"[cu13] to compile CUDA kernels")
    if not _real_gpu():
        # Device functions ask the current device for its compute capability; there is none.
        import types

        import numba.cuda.dispatcher as dispatcher
        if not hasattr(dispatcher, "get_current_device"):
            pytest.skip("numba-cuda internals changed: cannot compile device functions "
                        "without a GPU")
        monkeypatch.setattr(dispatcher, "get_current_device",
                            lambda: types.SimpleNamespace(compute_capability=(9, 0)))
    from fastbp.engines.cuda import signatures
    for name, (kernel, argtypes) in signatures(dtype).items():
        ptx, _ = cuda.compile_ptx(kernel.py_func, argtypes, cc=(9, 0))
        assert ".entry" in ptx, name


def test_members_launch_plan(monkeypatch):
    """How an ensemble's members are spread over cooperative launches on a GPU: all of
    them in one launch with as many blocks each as fit, or launches of a block per member
    where they do not; none where the partial gradients of one block would not fit."""
    import types

    import numpy as np
    from numba import config

    from fastbp.engines import cuda_members
    from fastbp.kernels.cuda import FUSED_PARTIAL_BYTES
    monkeypatch.setattr(config, "ENABLE_CUDASIM", False)

    def plan(n_members, n_slots, max_blocks, n_params=1000):
        stacks = types.SimpleNamespace(params=np.zeros((1, n_params), np.float32),
                                       max_blocks=max_blocks)
        return cuda_members._launch_plan(stacks, n_members, n_slots)

    assert plan(32, 16, 264) == ([(0, 32)], 8)
    assert plan(32, 2, 264) == ([(0, 32)], 2)       # no more blocks than a batch has tiles
    assert plan(300, 16, 264) == ([(0, 264), (264, 36)], 1)
    assert plan(264, 16, 264) == ([(0, 264)], 1)
    assert plan(3, 16, 0) is None                   # no cooperative launch
    # The partial gradients' budget binds before the device does.
    big = FUSED_PARTIAL_BYTES // (4 * 10)
    assert plan(4, 16, 264, n_params=big) == ([(0, 4)], 2)
    assert plan(5, 16, 264, n_params=FUSED_PARTIAL_BYTES) is None
