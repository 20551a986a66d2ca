"""Data-parallel training over MPI: a real 2-rank run with mpiexec (mpi extra/test extra)."""
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
