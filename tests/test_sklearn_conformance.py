"""scikit-learn's own MLP tests, run against fastbp.sklearn with the import line swapped.

The test module is the one shipped in the installed scikit-learn
(``sklearn/neural_network/tests/test_mlp.py``), loaded at run time and never copied here.
Its ``MLPClassifier``/``MLPRegressor`` are replaced by fastbp's, in its globals and in the
values of its ``parametrize`` marks, and each of its tests runs as one case of
``test_scikit_learn_mlp``. Tests that reach into scikit-learn's private internals are
skipped with the reason; everything else must pass.
"""
import importlib.util
import inspect
import itertools
import pathlib

import pytest
import sklearn
import sklearn.neural_network as skl_nn

import fastbp.sklearn as fastbp_sklearn

SOURCE = pathlib.Path(sklearn.__file__).parent / "neural_network" / "tests" / "test_mlp.py"

# Tests that read or write scikit-learn's private state: nothing a user's code touches.
PRIVATE = {
    "test_fit": "sets scikit-learn's private training state (_coef_grads, _coef_velocity, "
                "_intercept_velocity, ...) on an unfitted estimator and expects partial_fit "
                "to continue from it",
    "test_gradient": "calls the private _loss_grad_lbfgs with scikit-learn's buffers "
                     "(fastbp's gradient is checked against finite differences in "
                     "tests/test_gradients.py)",
    "test_learning_rate_warmstart": "reads the private _optimizer.learning_rate (the "
                                    "invscaling rate is checked in tests/test_sklearn.py)",
    "test_adaptive_learning_rate": "reads the private _optimizer.learning_rate (the "
                                   "adaptive rate is checked in tests/test_sklearn.py)",
}

# scikit-learn's conftest provides this fixture; its default seed.
GLOBAL_RANDOM_SEED = 42


def _load():
    spec = importlib.util.spec_from_file_location("sklearn_test_mlp_on_fastbp", SOURCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.MLPClassifier = fastbp_sklearn.MLPClassifier
    module.MLPRegressor = fastbp_sklearn.MLPRegressor
    return module


_SWAP = {skl_nn.MLPClassifier: fastbp_sklearn.MLPClassifier,
         skl_nn.MLPRegressor: fastbp_sklearn.MLPRegressor}


def _swap(value):
    if isinstance(value, (list, tuple)):
        return type(value)(_swap(v) for v in value)
    try:
        return _SWAP.get(value, value)
    except TypeError:           # unhashable values (arrays) are data, never a class
        return value


def _value_id(value):
    return getattr(value, "__name__", None) or (str(value) if isinstance(value, (str, int))
                                                else None)


def _cases(module):
    """One pytest.param per test and parametrization, with the swapped classes."""
    cases = []
    for name, func in sorted(vars(module).items()):
        if not (name.startswith("test_") and inspect.isfunction(func)):
            continue
        marks = getattr(func, "pytestmark", [])
        other = [m for m in marks if m.name != "parametrize"]
        grids = []
        for m in marks:
            if m.name != "parametrize":
                continue
            names = m.args[0]
            names = [s.strip() for s in names.split(",")] if isinstance(names, str) \
                else list(names)
            rows = []
            for j, values in enumerate(m.args[1]):
                values = values if len(names) > 1 else (values,)
                ident = "-".join(_value_id(v) or f"{names[0]}{j}" for v in values)
                rows.append((dict(zip(names, _swap(list(values)))), ident))
            grids.append(rows)
        for combo in itertools.product(*grids):
            kwargs, ids = {}, []
            for params, ident in combo:
                kwargs.update(params)
                ids.append(ident)
            case_marks = list(other)
            if name in PRIVATE:
                case_marks.append(pytest.mark.skip(reason=PRIVATE[name]))
            cases.append(pytest.param(name, kwargs, marks=case_marks,
                                      id="-".join([name] + ids)))
    return cases


if SOURCE.exists():
    MODULE = _load()
    CASES = _cases(MODULE)
else:           # a scikit-learn installed without its tests
    MODULE, CASES = None, [pytest.param(None, None, marks=pytest.mark.skip(
        reason=f"scikit-learn {sklearn.__version__} was installed without its tests"))]


@pytest.mark.parametrize("name, kwargs", CASES)
def test_scikit_learn_mlp(name, kwargs, request):
    func = getattr(MODULE, name)
    args = dict(kwargs)
    for param in inspect.signature(func).parameters:
        if param in args:
            continue
        if param == "global_random_seed":
            args[param] = GLOBAL_RANDOM_SEED
        else:
            args[param] = request.getfixturevalue(param)
    func(**args)


def test_every_estimator_in_the_module_is_fastbps():
    if MODULE is None:
        pytest.skip("scikit-learn's tests are not installed")
    assert MODULE.MLPClassifier is fastbp_sklearn.MLPClassifier
    assert MODULE.MLPRegressor is fastbp_sklearn.MLPRegressor
    assert len(CASES) >= 56
