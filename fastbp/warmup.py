"""Compile (or load from the on-disk cache) every CPU kernel ahead of the first fit."""
import time

import numpy as np


def warmup(dtypes=("float32",), verbose=False):
    """Run each kernel once on a tiny problem per dtype; returns the seconds it took.

    Kernels are compiled for the dtype, not for shapes or codes, so one tiny model per
    dtype covers every architecture, activation, loss and optimizer.
    """
    if isinstance(dtypes, str):
        dtypes = (dtypes,)
    t0 = time.perf_counter()
    for dtype in dtypes:
        net, X, y = fit_once(dtype)
        net.predict(X)
        net.evaluate(X, y)
        net.loss_and_grads(X, y)
    _compile_worker_wait()
    dt = time.perf_counter() - t0
    if verbose:
        print(f"fastbp warmup: {dt:.2f} s for {list(dtypes)}")
    return dt


def fit_once(dtype):
    """The smallest fit: it compiles the whole trainer for ``dtype``. The optimizer, like
    the activation and the loss, is a runtime code, so one fit compiles the update of
    every optimizer. Returns the model and its data."""
    from .model import MLP
    X = np.random.default_rng(0).normal(size=(8, 3))
    y = np.arange(8) % 2
    net = MLP([3, 4, 2], dtype=dtype, device="cpu")
    net.fit(X, y, epochs=1, batch_size=4, verbose=0)
    return net, X, y


def predict_once(dtype):
    """The smallest prediction: it compiles the forward pass for ``dtype``. Returns the
    model and its prediction."""
    from .model import MLP
    net = MLP([3, 4, 2], dtype=dtype, device="cpu")
    return net, net.predict_proba(np.random.default_rng(0).normal(size=(8, 3)))


def compile_inference(dtype):
    """In fastbp.precompile's child: one tiny predict and evaluate, the calls whose entries
    the parent will need (the same argument types as a fit's data and model)."""
    from .model import MLP
    t = time.perf_counter()
    X = np.zeros((4, 3), dtype=dtype)
    for loss, y in (("cross_entropy", np.arange(4) % 2), ("mse", np.zeros(4))):
        net = MLP([3, 4, 2 if loss == "cross_entropy" else 1], loss=loss, dtype=dtype,
                  device="cpu")
        net.predict(X)
        net.evaluate(X, y)
    _compile_worker_wait()
    return time.perf_counter() - t


def _compile_worker_wait():
    """The pool workers' wait between tasks (fastbp.threads), compiled here rather than by
    the first worker to go idle, in the middle of a fit."""
    from .kernels.sync import spin_while
    spin_while(np.zeros(1, dtype=np.int64), 1, 0)
