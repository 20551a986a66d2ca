"""Data-parallel training over MPI: a real 2-rank run with mpiexec (mpi extra/test extra)."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("mpi4py")
HERE = os.path.dirname(os.path.abspath(__file__))


def mpiexec():
    for cand in (os.path.join(os.path.dirname(sys.executable), "mpiexec"),
                 shutil.which("mpiexec")):
        if cand and os.path.exists(cand):
            return cand
    pytest.skip("no mpiexec (pip install 'fastbp[mpi]' provides MPICH)")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("mpi")
    proc = subprocess.run([mpiexec(), "-n", "2", sys.executable,
                           os.path.join(HERE, "mpi_checks.py"), str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def two_cuda_ranks():
    """tests/mpi_cuda_checks.py: 2 CUDA ranks under the simulator, staged and direct."""
    if importlib.util.find_spec("numba_cuda") is None:
        pytest.skip("numba-cuda is not installed (pip install 'fastbp[cuda]')")
    # Must be set before numba is imported: hence fresh interpreters. One Numba thread each:
    # the simulator runs GPU threads as Python threads anyway.
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", NUMBA_NUM_THREADS="1")
    proc = subprocess.run([mpiexec(), "-n", "2", sys.executable,
                           os.path.join(HERE, "mpi_cuda_checks.py")],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_two_ranks_equal_one_process_at_double_batch(two_ranks):
    assert two_ranks["equiv_adam"] <= 1e-10
    assert two_ranks["equiv_sgd"] <= 1e-10


def test_ranks_stay_bitwise_in_sync_and_share_validation(two_ranks):
    assert two_ranks["sync_shuffled"]
    assert two_ranks["val_same_on_all_ranks"]
    assert two_ranks["csv_rows"] == 4          # written by rank 0 alone


def test_local_sgd_keeps_ranks_in_sync_and_learns(two_ranks):
    assert two_ranks["sync_local_sgd"]
    loss = two_ranks["local_sgd_loss"]
    assert loss[-1] < loss[0]


def test_bad_input_on_one_rank_stops_every_rank(two_ranks):
    assert two_ranks["bad_input_raised"] == ["DistributedError", "DataError"]


def test_cost_model():
    from fastbp.distributed import cost_model, crossover_batch
    compute, comm = cost_model(1_000_000, 64, 1e11, 8, 10)
    assert compute == pytest.approx(6e6 * 64 / 1e11)
    assert comm == pytest.approx(2 * 7 / 8 * 4e6 / 1.25e9 + 14 * 5e-6)
    b = crossover_batch(1_000_000, 1e11, 8, 10)
    c2, m2 = cost_model(1_000_000, b, 1e11, 8, 10)
    assert c2 == pytest.approx(m2)


# ------------------------------------------------- CUDA ranks (simulator): staged and direct

@pytest.mark.parametrize("mode, where", [("0", "host"), ("1", "device")])
@pytest.mark.parametrize("dtype, tol", [("float64", 1e-10), ("float32", 1e-5)])
def test_cuda_ranks_equal_one_process_at_double_batch(two_cuda_ranks, mode, where, dtype, tol):
    r, key = two_cuda_ranks, f"{mode}_{dtype}"
    assert r[f"buffers_{key}"] == where
    assert r[f"equiv_{key}"] <= tol
    assert r[f"sync_{key}"]
    # Every step's gradient Allreduce got a device array (direct) or a host array (staged).
    n = r[f"grad_allreduces_{key}"]
    assert n == 6           # 2 epochs x 3 steps
    assert r[f"grad_on_device_{key}"] == (n if where == "device" else 0)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cuda_direct_and_staged_paths_agree_bitwise(two_cuda_ranks, dtype):
    r = two_cuda_ranks
    assert r[f"weights_1_{dtype}"] == r[f"weights_0_{dtype}"]


def test_cuda_local_sgd_averages_device_params_when_direct(two_cuda_ranks):
    r = two_cuda_ranks
    for mode in ("0", "1"):
        assert r[f"local_sgd_sync_{mode}"]
        assert r[f"local_sgd_param_allreduces_{mode}"] == 4   # every 2 of 3 steps, 2 epochs
    assert r["local_sgd_on_device_0"] == 0
    assert r["local_sgd_on_device_1"] == 4
    assert r["local_sgd_weights_1"] == r["local_sgd_weights_0"]


def test_cuda_interrupt_flag_travels_in_the_device_buffer(two_cuda_ranks):
    stop = two_cuda_ranks.get("interrupt")
    if stop is None:
        pytest.skip("SIGINT is not Python's default handler under this mpiexec")
    assert stop["buffers"] == "device"
    assert stop["interrupted"] == [True, True]
    # Ctrl-C on rank 1 before epoch 1: both ranks stop after its first step.
    assert stop["steps"] == [stop["steps_per_epoch"] + 1] * 2
    assert stop["same_weights"]


def test_cuda_aware_auto_asks_the_library(two_cuda_ranks):
    r = two_cuda_ranks
    assert r["libmpi_found"]
    kinds = (r["alloc_kinds"] or "").split(",")
    if "cuda" in kinds or "cuda:device" in kinds:
        pytest.skip("this MPI is CUDA-aware; the test expects the CUDA-less MPICH wheel")
    assert r["auto_reported"] is False
    assert r["auto_buffers"] == "host"


def test_bad_cuda_aware_override_on_one_rank_stops_every_rank(two_cuda_ranks):
    (kind0, msg0), (kind1, msg1) = two_cuda_ranks["bad_env_raised"]
    assert (kind0, kind1) == ("DistributedError", "ConfigError")
    assert "FASTBP_MPI_CUDA_AWARE='maybe'" in msg1 and "rank 1" in msg0
