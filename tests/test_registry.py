"""The tables agree with each other, and every code has its branch: each activation,
loss and optimizer code gives a finite result in the Python formulas and in compiled
code, and an unknown code gives NaN (a divergence the fit reports), never another rule.
The CUDA device functions get the same check in cuda_checks.py, under the simulator."""
import math

import numpy as np
import pytest
from numba import njit

from fastbp import registry
from fastbp.kernels import math as km
from fastbp.optimizers import OPTIMIZERS

POINTWISE_LOSSES = [c for c in km.LOSSES.values() if c != km.CROSS_ENTROPY]
UNKNOWN_ACT = max(km.ACTIVATIONS.values()) + 1
UNKNOWN_LOSS = max(km.LOSSES.values()) + 1
UNKNOWN_OPT = max(km.OPTIMIZER_HYPER) + 1


def test_registry_and_kernel_tables_name_the_same_codes():
    assert {n: a.code for n, a in registry.ACTIVATIONS.items()} == km.ACTIVATIONS
    assert {n: loss.code for n, loss in registry.LOSSES.items()} == km.LOSSES
    assert {loss.link for loss in registry.LOSSES.values()} <= set(registry.LINKS)
    assert {c.code for c in OPTIMIZERS.values()} == set(km.OPTIMIZER_HYPER) == \
        set(km.OPTIMIZER_STATE)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_each_optimizer_names_its_hyper_parameters_and_slots(name):
    opt = OPTIMIZERS[name]()
    hyper = opt.hyper()
    assert hyper.shape == (len(km.OPTIMIZER_HYPER[opt.code]),)
    assert 0 <= opt.n_slots <= len(km.OPTIMIZER_STATE[opt.code])
    assert opt.init_state(3, np.float32).shape == (opt.n_slots, 3)
    assert type(opt)(**opt.get_config()).get_config() == opt.get_config()


def test_public_lists_derive_from_the_tables():
    from fastbp import cli, sklearn
    parser = cli.build_parser()
    train = next(a for a in parser._subparsers._group_actions[0].choices["train"]._actions
                 if a.dest == "activation")
    assert set(train.choices) == set(registry.ACTIVATIONS)
    assert set(registry.ACTIVATIONS) <= set(sklearn._ACTIVATIONS)
    assert set(registry.REGRESSION_LOSSES) <= set(sklearn._REGRESSION_LOSSES)


def _check_branches(f):
    """``f``: the math functions (Python or compiled)."""
    for code in km.ACTIVATIONS.values():
        for z in (-0.7, 0.0, 0.4):
            a = f.activate(code, z)
            assert math.isfinite(a) and math.isfinite(f.activate_grad(code, z, a)), code
    assert math.isnan(f.activate(UNKNOWN_ACT, 0.4))
    assert math.isnan(f.activate_grad(UNKNOWN_ACT, 0.4, 0.4))
    for code in POINTWISE_LOSSES:
        for fn in (f.pointwise_loss, f.pointwise_loss_grad):
            assert math.isfinite(fn(code, 0.3, 1.0)), (fn, code)
        assert math.isfinite(f.output_activate(code, 0.3)), code
    for fn in (f.pointwise_loss, f.pointwise_loss_grad):
        assert math.isnan(fn(UNKNOWN_LOSS, 0.3, 1.0))
    assert math.isnan(f.output_activate(UNKNOWN_LOSS, 0.3))
    for cls in OPTIMIZERS.values():
        opt = cls()
        k = f.optimizer_coefficients(opt.code, opt.hyper(), 0.1, 3)
        assert all(math.isfinite(c) for c in k), cls
        assert all(math.isfinite(v) for v in f.optimizer_step(opt.code, 1.0, 0.5, 0.2, 0.3, *k))
    k = f.optimizer_coefficients(UNKNOWN_OPT, np.zeros(5), 0.1, 3)
    assert all(math.isnan(c) for c in k)
    try:
        p = f.optimizer_step(UNKNOWN_OPT, 1.0, 0.5, 0.2, 0.3, *([0.1] * 10))[0]
    except ZeroDivisionError:       # plain Python: 0/0 raises (compiled: NaN, as on a GPU)
        p = math.nan
    assert math.isnan(p)


def test_every_code_has_its_branch_in_python():
    _check_branches(km)


def test_every_code_has_its_branch_compiled():
    # The kernels' error model: 0/0 is NaN, as on a GPU.
    _check_branches(km.compile_with(njit(error_model="numpy"), "dispatch_test"))


def test_every_exporter_maps_every_name():
    from fastbp.export import onnx_graph, torch_interop
    assert set(onnx_graph.ACTIVATION_OPS) == set(registry.ACTIVATIONS)
    assert set(onnx_graph.LINK_OPS) == set(torch_interop.LINK_MODULES) == set(registry.LINKS)
    assert set(torch_interop.ACTIVATION_MODULES) == set(registry.ACTIVATIONS)

