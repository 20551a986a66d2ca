"""fastbp's worker threads: the members of a team besides the calling thread.

A compiled entry that splits its work (kernels.cpu.train_chunk, forward_tiles) takes its
member number ``u`` and the team's size; the calling thread runs member 0 and this pool
runs the others on threads that wait for work between calls. The kernels release the
GIL, so the members run at once. The calling thread waits for a member to start at most
a short grace (kernels.sync): the kernels let a member that starts late join at the next
batch or take fewer tiles, and ``run`` returns when member 0 does, while late members may
still be leaving (``busy_with`` says which shared arrays they still hold).

Numba's parallel regions would do the same, but a ``prange`` costs a compile of its own
for every entry that holds one (about half of fastbp's first-fit compile time: see
bench/results/README.md, "Compile time") and leaves the waiting policy to the OpenMP
runtime.

A worker woken from sleep is placed by Linux on the waking thread's CPU about half the
time (wake-affine), where the two time-share one core until the scheduler moves one, often
many milliseconds later: teams ran at one thread's speed for whole chunks. So a worker
that finds itself on its caller's CPU steps aside to another one it may run on, and
between tasks it spins for SPIN_SECONDS before it sleeps, as OpenMP's threads do: a worker
still spinning is still on its own core.
"""
import ctypes
import os
import threading
import time

import numpy as np

SPIN_SECONDS = 0.003   # a worker's wait for its next task before it sleeps


def _cpu_reader():
    """The calling thread's CPU number (glibc's sched_getcpu), or None where unknown."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).sched_getcpu
        fn.restype, fn.argtypes = ctypes.c_int, ()
        return fn if fn() >= 0 else None
    except Exception:   # noqa: BLE001 - not glibc (macOS, Windows): no CPU numbers
        return None


_current_cpu = _cpu_reader()

_ENV = "FASTBP_NUM_THREADS"


def _default_threads():
    value = os.environ.get(_ENV)
    if value:
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n >= 1:
            return n
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):   # not on Linux
        return os.cpu_count() or 1


_num_threads = None


def get_num_threads():
    """How many threads fastbp's CPU kernels use: ``set_num_threads``, else the
    ``FASTBP_NUM_THREADS`` environment variable, else the CPUs this process may run on."""
    global _num_threads
    if _num_threads is None:
        _num_threads = _default_threads()
    return _num_threads


def set_num_threads(n):
    """Use ``n`` threads (at least 1) in later fits and predictions."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        from .errors import ConfigError
        raise ConfigError(f"the thread count must be a positive int, got {n!r}")
    _num_threads = n


class _Worker:
    """A thread that runs the tasks handed to it in turn: the one it runs, and at most one
    more waiting behind it (see Pool._workers_for)."""

    cycles_per_second = None   # of kernels.sync.cycles, measured by the first worker

    def __init__(self):
        self.cond = threading.Condition()
        self.tasks = []           # (fn, args, holding, caller's CPU): the running one first
        self.bell = np.zeros(16, dtype=np.int64)   # bell[0] counts submitted tasks
        self.thread = threading.Thread(target=self._loop, name="fastbp-worker", daemon=True)
        self.thread.start()

    def _loop(self):
        while True:
            with self.cond:
                while not self.tasks:
                    self.cond.wait()
                fn, args, _, caller_cpu = self.tasks[0]
            if caller_cpu is not None and _current_cpu() == caller_cpu:
                self._step_aside(caller_cpu)
            try:
                fn(*args)
            except BaseException:   # noqa: BLE001 - a member must never take its thread down
                pass
            with self.cond:
                self.tasks.pop(0)
                rung = int(self.bell[0])
                idle = not self.tasks
            if idle:
                self._spin(rung)

    @staticmethod
    def _step_aside(cpu):
        """Move this thread off ``cpu`` now: forbid it, then allow it again (a thread stays
        where it was moved)."""
        try:
            allowed = os.sched_getaffinity(0)
            if len(allowed) > 1:
                os.sched_setaffinity(0, allowed - {cpu})
                os.sched_setaffinity(0, allowed)
        except (AttributeError, OSError, ValueError):
            pass

    def _spin(self, rung):
        """Wait, off the GIL, for up to SPIN_SECONDS for the bell to ring again."""
        from .kernels.sync import spin_while
        if _Worker.cycles_per_second is None:
            c0, t0 = spin_while(self.bell, rung + 1, 0), time.perf_counter()
            time.sleep(0.005)
            c1, t1 = spin_while(self.bell, rung + 1, 0), time.perf_counter()
            _Worker.cycles_per_second = max(1.0, (c1 - c0) / (t1 - t0))
        spin_while(self.bell, rung, int(SPIN_SECONDS * _Worker.cycles_per_second))

    def load(self):
        return len(self.tasks)

    def holds(self, array):
        return any(a is array for task in list(self.tasks) for a in task[2])

    def submit(self, fn, args, holding, caller_cpu=None):
        with self.cond:
            self.tasks.append((fn, args, holding, caller_cpu))
            self.bell[0] += 1
            self.cond.notify()


class Pool:
    """Worker threads, made as needed and kept for the life of the process."""

    def __init__(self):
        self._workers = []
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def _workers_for(self, n):
        """Up to n workers for a team's members, started as needed up to
        get_num_threads() - 1 in all: idle ones first, then ones still running one task.
        A member of the last team is usually still on its way out when the caller starts
        the next: it needs the GIL to return, which the caller holds until its own member
        enters compiled code. Queued behind it, the new member starts a few microseconds
        later instead of missing the team (a leader waits a grace for it, kernels.sync).
        A member queued behind a long task comes late and leaves at once; the kernels do
        without it."""
        # After a fork only the forking thread exists in the child: start afresh.
        if os.getpid() != self._pid:
            self._workers, self._pid = [], os.getpid()
        idle = [w for w in self._workers if w.load() == 0]
        while len(idle) < n and len(self._workers) < get_num_threads() - 1:
            w = _Worker()
            self._workers.append(w)
            idle.append(w)
        busy = [w for w in self._workers if w.load() == 1]
        return (idle + busy)[:n]

    def run(self, fn, n_members, args, shared=()):
        """``fn(u, n_members, *args)`` for u = 0 .. n_members - 1: member 0 here, the
        others on worker threads; returns member 0's result. ``shared``: arrays the
        members write to coordinate (a sync array), held until each member has left."""
        if n_members > 1:
            with self._lock:
                helpers = self._workers_for(n_members - 1)
                # Members count only the threads that will come (a leader waits for them).
                n_members = 1 + len(helpers)
                cpu = _current_cpu() if _current_cpu is not None and helpers else None
                for u, w in enumerate(helpers, start=1):
                    w.submit(fn, (u, n_members) + tuple(args), tuple(shared), cpu)
        return fn(0, n_members, *args)

    def busy_with(self, array):
        """Whether a member started by ``run`` may still touch ``array``."""
        return any(w.holds(array) for w in self._workers)


POOL = Pool()
