"""Micro-benchmarks of fastbp's CPU training path, one group per operation.

    pytest bench/ --benchmark-only                      # ~1-2 minutes on 2 cores
    pytest bench/ --benchmark-only --benchmark-group-by=group --benchmark-columns=median,ops

Groups (each for the three comparison shapes narrow, mnist, wide):

* ``forward``: inference of a block of rows through the engine (``CPUEngine.forward``, what
  ``predict`` runs, without input validation).
* ``forward+backward``: mean loss and full gradient over a block of rows through the engine
  (``CPUEngine.loss_and_grads``, what ``MLP.loss_and_grads`` runs; forward included, no update).
* ``adam-update``: one optimizer pass after a batch, ``kernels.cpu.update_all``: one
  Adam step over the whole flat parameter vector (what ``train_chunk`` runs after every
  batch).
* ``epoch``: one shuffled training epoch through the public ``MLP.fit`` (Adam, warm start).

Compilation is excluded: every kernel is compiled (or loaded from the cache) and run once
in the fixtures before any timing. Timings are per call; divide ``rows`` by the time for
samples/s. This file is collected only when ``bench/`` is named (pyproject's testpaths is
``tests``) and is skipped as a whole when pytest-benchmark is not installed.
"""
import numpy as np
import pytest

pytest.importorskip("pytest_benchmark")

import fastbp  # noqa: E402
from fastbp.engines.cpu import single_threaded_blas  # noqa: E402
from fastbp.kernels import cpu  # noqa: E402
from fastbp.kernels.jit import entry_for  # noqa: E402

update_all = entry_for(cpu.update_all)

SHAPES = {
    # name: (sizes, batch size, loss, rows for forward / forward+backward, rows per epoch)
    "narrow": ([32, 64, 64, 1], 32, "mse", 8192, 8192),
    "mnist": ([784, 256, 128, 10], 128, "cross_entropy", 4096, 4096),
    "wide": ([1024, 1024, 1024, 10], 256, "cross_entropy", 1024, 1024),
}


class Case:
    """A compiled, warmed-up model with its data for one shape."""

    def __init__(self, name):
        sizes, bs, loss, block_rows, epoch_rows = SHAPES[name]
        self.sizes, self.bs, self.loss = sizes, bs, loss
        rng = np.random.default_rng(0)
        n = max(block_rows, epoch_rows)
        self.X = rng.standard_normal((n, sizes[0]), dtype=np.float32)
        if loss == "cross_entropy":
            self.y = rng.integers(0, sizes[-1], n)
        else:
            self.y = rng.standard_normal(n).astype(np.float32)
        self.net = fastbp.MLP(sizes, loss=loss, dtype="float32", seed=0, device="cpu")
        self.net.fit(self.X[:epoch_rows], self.y[:epoch_rows], epochs=1, batch_size=bs)
        self.epoch_rows = epoch_rows
        # Validated, converted arrays, as fit/predict hand them to the engine.
        self.Xb = np.ascontiguousarray(self.X[:block_rows])
        self.Yb = self.net._Y(self.y[:block_rows], block_rows)
        self.wb = np.ones(block_rows, dtype=np.float64)
        self.out = np.empty((block_rows, sizes[-1]), dtype=np.float32)
        self.engine = self.net._engine


@pytest.fixture(scope="module", params=list(SHAPES))
def case(request):
    fastbp.warmup()
    return Case(request.param)


def test_forward(benchmark, case):
    benchmark.group = "forward"
    benchmark.extra_info["rows"] = case.Xb.shape[0]
    L = case.net.layout.n_layers

    def run():
        with single_threaded_blas():
            case.engine.forward(case.Xb, L, False, case.out)

    run()
    benchmark(run)
    assert np.isfinite(case.out).all()


def test_forward_backward(benchmark, case):
    benchmark.group = "forward+backward"
    benchmark.extra_info["rows"] = case.Xb.shape[0]

    def run():
        with single_threaded_blas():
            return case.engine.loss_and_grads(case.Xb, case.Yb, case.wb)

    run()
    loss, grads = benchmark(run)
    assert np.isfinite(loss) and grads.shape == (case.net.n_params,)


def test_adam_update(benchmark, case):
    benchmark.group = "adam-update"
    net = case.net
    n = net.n_params
    benchmark.extra_info["params"] = n
    opt = fastbp.Adam(lr=1e-6)
    state = opt.init_state(n, net.dtype)
    hyper = opt.hyper()
    params = net._params.copy()
    rng = np.random.default_rng(0)
    grad = rng.standard_normal(n, dtype=np.float32) * np.float32(1e-3)
    blocks = net.layout.update_blocks(np.ones(net.layout.n_layers, dtype=bool))
    block_sq = np.zeros(len(blocks))
    step = [0]

    def run():
        step[0] += 1
        update_all(opt.code, params, grad, 0.0, state, hyper, opt.lr, step[0], blocks,
                       block_sq)

    run()
    benchmark(run)
    assert np.isfinite(params).all()


def test_epoch(benchmark, case):
    benchmark.group = "epoch"
    rows = case.epoch_rows
    benchmark.extra_info["rows"] = rows
    X, y = case.X[:rows], case.y[:rows]

    def run():
        return case.net.fit(X, y, epochs=1, batch_size=case.bs, optimizer="adam", lr=1e-3,
                            warm_start=True, verbose=0)

    hist = benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    assert np.isfinite(hist.history["loss"][-1])
