"""Targets of the kind each loss takes (fastbp.registry's ``targets``), for tests that
run over every loss."""
import numpy as np

from fastbp.registry import LOSSES


def targets_for(loss, rng, n, n_out):
    kind = LOSSES[loss].targets
    if kind == "classes":
        return np.arange(n) % n_out
    if kind == "binary":
        return (rng.random((n, n_out)) < 0.5).astype(np.float64)
    if kind == "nonnegative":
        return rng.poisson(2.0, size=(n, n_out)).astype(np.float64)
    assert kind == "real", kind
    return rng.normal(size=(n, n_out))
