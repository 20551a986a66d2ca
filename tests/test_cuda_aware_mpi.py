"""Detecting a CUDA-aware MPI and the FASTBP_MPI_CUDA_AWARE override (no MPI needed: stand-in
communicators). The 2-rank runs of both paths are in test_mpi.py."""
import pytest

from fastbp import distributed
from fastbp.distributed import CUDA_AWARE_ENV, cuda_aware, cuda_aware_setting, device_buffers
from fastbp.errors import ConfigError


class Info:
    def __init__(self, values):
        self.values = values
        self.freed = False

    def Get(self, key):
        return self.values.get(key)

    def Free(self):
        self.freed = True


class Comm:
    """What cuda_aware reads of an mpi4py communicator: its info."""

    def __init__(self, kinds=None):
        self.info = Info({} if kinds is None else {"mpi_memory_alloc_kinds": kinds})

    def Get_info(self):
        return self.info


class UnaskableComm:
    def Get_info(self):
        raise AssertionError("an explicit override must not ask the MPI library")


class Coll:
    """Collective stand-in: the other ranks' answers are given."""

    def __init__(self, comm, others):
        self.comm, self.others = comm, others

    def allgather(self, value):
        return [value] + list(self.others)


@pytest.mark.parametrize("value, expected", [
    (None, None), ("auto", None), (" AUTO ", None), ("", None), ("1", True), ("0", False)])
def test_setting_parses_auto_1_0(value, expected):
    env = {} if value is None else {CUDA_AWARE_ENV: value}
    assert cuda_aware_setting(env) is expected


@pytest.mark.parametrize("value", ["yes", "2", "true", "cuda"])
def test_bad_setting_is_a_config_error_naming_the_variable(value):
    with pytest.raises(ConfigError, match=rf"FASTBP_MPI_CUDA_AWARE='{value}': use 1 .* 0 .* "
                                          r"or auto"):
        cuda_aware_setting({CUDA_AWARE_ENV: value})


def test_setting_reads_the_process_environment(monkeypatch):
    monkeypatch.setenv(CUDA_AWARE_ENV, "1")
    assert cuda_aware_setting() is True
    monkeypatch.delenv(CUDA_AWARE_ENV)
    assert cuda_aware_setting() is None


@pytest.mark.parametrize("kinds, expected", [
    ("mpi,system", False),
    ("mpi,system,cuda:device,cuda:managed", True),
    ("mpi, system, cuda", True),              # a kind without restrictor: all of them
    ("mpi,system,cuda:host", False),          # pinned host memory only, not device memory
    ("mpi,system,rocm:device,level_zero", False),
])
def test_memory_alloc_kinds_info_decides(kinds, expected, monkeypatch):
    monkeypatch.setattr(distributed, "_mpix_query_cuda_support",
                        lambda: pytest.fail("the info key answers; no MPIX query"))
    comm = Comm(kinds)
    assert cuda_aware(comm) is expected
    assert comm.info.freed


@pytest.mark.parametrize("answer", [True, False])
def test_without_the_info_key_the_mpix_query_decides(answer, monkeypatch):
    monkeypatch.setattr(distributed, "_mpix_query_cuda_support", lambda: answer)
    assert cuda_aware(Comm(kinds=None)) is answer


def test_mpix_query_is_false_without_a_loaded_library(monkeypatch):
    monkeypatch.setattr(distributed, "_loaded_libmpi", lambda: None)
    assert distributed._mpix_query_cuda_support() is False


@pytest.mark.parametrize("setting", [True, False])
def test_override_is_not_second_guessed(setting):
    assert cuda_aware(UnaskableComm(), setting) is setting


def test_ranks_agree_all_direct_or_all_staged():
    yes = Comm("mpi,system,cuda")
    assert device_buffers(Coll(yes, [True]), cuda_engine=True, setting=None) is True
    # One rank that cannot (a CPU engine, or an MPI that says no) stages every rank.
    assert device_buffers(Coll(yes, [False]), cuda_engine=True, setting=None) is False
    assert device_buffers(Coll(yes, [True]), cuda_engine=False, setting=True) is False
    assert device_buffers(Coll(Comm("mpi,system"), [True]), True, None) is False
