"""skl2onnx converters for :mod:`fastbp.sklearn`'s ``MLPClassifier`` and ``MLPRegressor``.

With them ``skl2onnx.to_onnx(pipeline, X[:1])`` converts a Pipeline that ends in a fastbp
estimator. The network is the graph of :meth:`fastbp.MLP.to_onnx`; around it:

* the classifier has scikit-learn's two outputs, ``label`` (the user's class labels:
  int64, or strings) and ``probabilities`` (n_samples, n_classes), a ZipMap of them by
  default as for every skl2onnx classifier (options ``zipmap``, ``nocl`` and
  ``output_class_labels`` as for ``sklearn.neural_network.MLPClassifier``). ZipMap holds
  float32 values only, so under it the probabilities are float32 whatever the input (where
  skl2onnx's own MLP converter builds an invalid model for float64 inputs); with
  ``zipmap=False`` they keep the input's float type. A two-class model has scikit-learn's
  single logistic unit, whose p becomes the columns 1 - p and p; a multilabel model's
  ``label`` is the 0/1 matrix of ``predict``;
* the regressor has one output, ``variable`` (n_samples, n_targets);
* inputs of another dtype than the model's are cast to it, and the float outputs take the
  input's float type, as skl2onnx's own converters do.

Registration is lazy. skl2onnx finds converters in a registry it owns, so fastbp must
register there, but ``import fastbp.sklearn`` must not pay for importing onnx and
skl2onnx. :func:`register_when_imported` (called by ``fastbp.sklearn``) registers at once
when skl2onnx is already imported; otherwise it puts a finder on ``sys.meta_path`` that
lets the normal machinery import skl2onnx and registers the converters right after
skl2onnx's own ``__init__`` has run, then removes itself. Import order therefore does not
matter, and nothing is imported early. :func:`register` registers explicitly.
"""
import importlib
import importlib.abc
import sys
import warnings

import numpy as np

from ..errors import ConfigError
from .common import require

ALIASES = {"MLPClassifier": "FastbpMLPClassifier", "MLPRegressor": "FastbpMLPRegressor"}
# As skl2onnx registers scikit-learn's MLPClassifier; its classifier parser reads zipmap.
CLASSIFIER_OPTIONS = {"zipmap": [True, False, "columns"], "nocl": [False, True],
                      "output_class_labels": [False, True]}


# fastbp.sklearn hands its estimator classes over as it is imported (this module never
# imports it: the wrappers depend on the converters' registration, not the other way).
_ESTIMATORS = {}


def register():
    """Register the converters of fastbp.sklearn's estimators with skl2onnx (idempotent)."""
    skl2onnx = require("skl2onnx", "onnx", "converting fastbp estimators with skl2onnx")
    if not _ESTIMATORS:
        importlib.import_module("fastbp.sklearn")   # hands the classes over on import
    MLPClassifier, MLPRegressor = _ESTIMATORS["classifier"], _ESTIMATORS["regressor"]
    skl2onnx.update_registered_converter(
        MLPClassifier, ALIASES["MLPClassifier"], _shape_classifier, _convert_classifier,
        options=CLASSIFIER_OPTIONS)
    skl2onnx.update_registered_converter(
        MLPRegressor, ALIASES["MLPRegressor"], _shape_regressor, _convert_regressor)


# ----------------------------------------------------------------- lazy registration
class _RegisterOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when skl2onnx is about to be imported, it asks the other
    finders for skl2onnx's spec and has the converters registered after its loader ran."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "skl2onnx":
            return None
        _uninstall()
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module

        def exec_module(module):
            try:                    # one shot: a loader may serve other modules too
                del loader.exec_module
            except AttributeError:
                pass
            run(module)
            if module.__name__ == "skl2onnx":
                _register_quietly()

        try:
            loader.exec_module = exec_module
        except (AttributeError, TypeError):
            pass                    # a loader that takes no attributes: no hook, no harm
        return spec


def _register_quietly():
    """register(), but a failure warns instead of failing the user's import of skl2onnx."""
    try:
        register()
    except Exception as e:     # an incompatible skl2onnx: its import must still work
        warnings.warn(f"fastbp could not register its skl2onnx converters ({type(e).__name__}: "
                      f"{e}); call fastbp.export.sklearn_onnx.register() to see why",
                      RuntimeWarning, stacklevel=2)


def _uninstall():
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _RegisterOnImport)]


def register_when_imported(classifier, regressor):
    """Register the estimator classes now if skl2onnx is imported, else as soon as it is
    (see the module notes)."""
    _ESTIMATORS.update(classifier=classifier, regressor=regressor)
    if "skl2onnx" in sys.modules:
        _register_quietly()
    elif not any(isinstance(f, _RegisterOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterOnImport())


# ---------------------------------------------------------------------- conversion
def _builder(scope, container, dtype):
    from .onnx_graph import MIN_OPSET, GraphBuilder
    onnx = require("onnx", "onnx", "converting fastbp estimators with skl2onnx")
    opset = container.target_opset
    if opset is not None and opset < MIN_OPSET:
        raise ConfigError(f"target_opset {opset} is below {MIN_OPSET}, the lowest opset "
                          f"fastbp exports")

    class ContainerBuilder(GraphBuilder):
        """Writes into skl2onnx's container, with names from its scope."""

        def unique(self, hint):
            return scope.get_unique_variable_name("fastbp_" + hint.replace("/", "_"))

        def _initializer(self, name, array):
            if array.dtype.kind in "UO":
                container.add_initializer(name, onnx.TensorProto.STRING, list(array.shape),
                                          [str(s).encode("utf-8") for s in array.ravel()])
            else:
                container.add_initializer(name, None, None, self.tensor(name, array))

        def _node(self, op_type, inputs, out, **attrs):
            container.add_node(op_type, inputs, [out],
                               name=scope.get_unique_operator_name("fastbp_" + op_type),
                               **attrs)

    return ContainerBuilder(onnx, dtype)


def _float_dtype(variable):
    """The NumPy float dtype of a skl2onnx variable's type (float32 unless double)."""
    from skl2onnx.common.data_types import DoubleTensorType
    return np.dtype(np.float64 if isinstance(variable.type, DoubleTensorType) else np.float32)


def _model_input(g, operator, model):
    """The model's input tensor: the operator's input, cast to the model's dtype if need be."""
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType
    from .onnx_graph import onnx_elem_type
    var = operator.inputs[0]
    shape = getattr(var.type, "shape", None)
    if shape and len(shape) == 2 and isinstance(shape[1], int) and shape[1] != model.sizes[0]:
        raise ConfigError(f"the estimator's input has {shape[1]} features, its network "
                          f"takes {model.sizes[0]}")
    same = (isinstance(var.type, FloatTensorType) and model.dtype == np.float32) or \
        (isinstance(var.type, DoubleTensorType) and model.dtype == np.float64)
    if same:
        return var.full_name
    return g.op("Cast", [var.full_name], "input_cast", to=onnx_elem_type(g.onnx, model.dtype))


def _write_output(g, name, variable, model, dtype):
    """Copy ``name`` into the operator's output ``variable``, cast to ``dtype``."""
    from .onnx_graph import onnx_elem_type
    if dtype == model.dtype:
        g.op("Identity", [name], "output", out=variable.full_name)
    else:
        g.op("Cast", [name], "output_cast", out=variable.full_name,
             to=onnx_elem_type(g.onnx, dtype))


def class_labels(scope, est):
    """The label tensor's values: int64, or str (skl2onnx's ``nocl`` gives indices)."""
    from skl2onnx.common.utils_classifier import get_label_classes
    classes = np.asarray(get_label_classes(scope, est))
    if classes.dtype.kind in "iub":
        return classes.astype(np.int64)
    if classes.dtype.kind == "f":
        if np.all(np.isfinite(classes)) and np.all(classes == np.round(classes)):
            return classes.astype(np.int64)
        raise ConfigError(f"class labels {classes.tolist()[:10]} are floats that are not "
                          f"whole numbers; ONNX classifier labels are int64 or strings")
    if classes.dtype.kind == "U" or all(isinstance(c, str) for c in classes):
        return classes.astype(str)
    raise ConfigError(f"class labels of dtype {classes.dtype} cannot be ONNX labels (int64 "
                      f"or strings)")


def _shape_classifier(operator):
    from skl2onnx.common.data_types import (DoubleTensorType, FloatTensorType,
                                            Int64TensorType, StringTensorType)
    est = operator.raw_operator
    n = operator.inputs[0].get_first_dimension()
    k = est.model_.sizes[-1]
    if _multilabel(est):
        label = Int64TensorType([n, k])
    else:
        labels = class_labels(operator.scope_inst, est)
        label = StringTensorType([n]) if labels.dtype.kind == "U" else Int64TensorType([n])
    operator.outputs[0].set_type(label)
    proba = DoubleTensorType if _proba_dtype(operator.scope_inst, operator) == np.float64 \
        else FloatTensorType
    operator.outputs[1].set_type(proba([n, max(k, 2)]))


def _multilabel(est):
    """One sigmoid output per label; two classes have one sigmoid unit too, as in
    scikit-learn, whose probabilities are the columns 1 - p and p."""
    return est.model_.loss == "binary_cross_entropy" and est._is_multilabel


def _proba_dtype(options_source, operator):
    """The probabilities' dtype: the input's float type, but float32 under the default
    ZipMap, whose values can only be float32 (skl2onnx's own converters give an invalid
    model there for float64 inputs)."""
    zipmap = options_source.get_options(operator.raw_operator, dict(zipmap=True))["zipmap"]
    if zipmap is True:
        return np.dtype(np.float32)
    return _float_dtype(operator.inputs[0])


def _convert_classifier(scope, operator, container):
    from .onnx_graph import emit_network
    est = operator.raw_operator
    model = est.model_
    g = _builder(scope, container, model.dtype)
    proba = emit_network(g, model, _model_input(g, operator, model), "auto")
    if model.sizes[-1] == 1 and not _multilabel(est):
        negative = g.op("Sub", [g.scalar(1.0), proba], "negative")
        proba = g.op("Concat", [negative, proba], "binary_proba", axis=1)
    label, probabilities = operator.outputs[0], operator.outputs[1]
    _write_output(g, proba, probabilities, model, _proba_dtype(container, operator))
    if _multilabel(est):
        # predict's rule for each label: probability >= 0.5.
        hit = g.op("GreaterOrEqual", [proba, g.scalar(0.5)], "label_hit")
        g.op("Cast", [hit], "label", out=label.full_name, to=g.onnx.TensorProto.INT64)
        return
    index = g.op("ArgMax", [proba], "argmax", axis=1, keepdims=0)
    labels = class_labels(scope, est)
    classes = g.const("classes", labels, dtype=labels.dtype)
    g.op("Gather", [classes, index], "label", out=label.full_name, axis=0)


def _shape_regressor(operator):
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType
    est = operator.raw_operator
    n = operator.inputs[0].get_first_dimension()
    kind = DoubleTensorType if _float_dtype(operator.inputs[0]) == np.float64 \
        else FloatTensorType
    operator.outputs[0].set_type(kind([n, est.model_.sizes[-1]]))


def _convert_regressor(scope, operator, container):
    from .onnx_graph import emit_network
    model = operator.raw_operator.model_
    g = _builder(scope, container, model.dtype)
    values = emit_network(g, model, _model_input(g, operator, model), "auto")
    _write_output(g, values, operator.outputs[0], model, _float_dtype(operator.inputs[0]))
