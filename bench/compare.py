"""Side-by-side training and inference throughput: ``fastbp bench`` plus a NumPy trainer.

    python bench/compare.py [--shapes narrow,mnist,wide] [--reps 5] [--rows 20000]
                            [--peers fastbp,torch,sklearn,numpy] [--json out.json]
                            [--png out.png] [--quick] [--note TEXT]

The harness is fastbp.benchmark (what ``fastbp bench`` runs from an installed package):
the machine's FMA peak, then fastbp, PyTorch and scikit-learn in one process on the same
data. From a checkout this adds the plain NumPy trainer of bench/numpy_mlp.py as a fourth
peer. The names the other harnesses of bench/ import from here are fastbp.benchmark's.
"""
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from fastbp.benchmark import (LOAD_WARN, SETUPS, SHAPES, cpu_model,  # noqa: E402, F401
                              fastbp_timers, fma_peak, make_data, main as _main,
                              setup_fastbp, setup_sklearn, setup_torch,
                              train_flops_per_sample, versions)


def setup_numpy(sizes, bs, loss, X, y):
    from numpy_mlp import NumpyMLP
    net = NumpyMLP(sizes, loss=loss, dtype=np.float32, seed=0)
    rng = np.random.default_rng(0)

    def train_epoch():
        t0 = time.perf_counter()
        net.fit_epoch(X, y, bs, rng)
        return time.perf_counter() - t0

    train_epoch()
    return train_epoch, None


def main(argv=None):
    return _main(argv, dict(SETUPS, numpy=setup_numpy), prog="bench/compare.py")


if __name__ == "__main__":
    sys.exit(main())
