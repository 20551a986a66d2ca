"""Models that leave fastbp: ONNX (against ONNX Runtime), the skl2onnx converter, PyTorch
in and out, safetensors model files (untrusted ones included) and ``fastbp export``.

Lists of activations and losses come from the registries in ``fastbp.kernels.math``, so a
new entry without an export mapping fails here. CUDA-trained models are exported under
the simulator by ``export_cuda_checks.py`` in a subprocess.
"""
import functools
import importlib.util
import json
import math
import os
import struct
import subprocess
import sys
import tracemalloc

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import safetensors
import safetensors.numpy
import safetensors.torch
import skl2onnx
import torch
from sklearn.datasets import make_blobs
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import fastbp
from fastbp import cli
from fastbp.errors import ConfigError, MissingDependencyError, ModelFileError
from fastbp.export.common import OUTPUT_LINKS
from fastbp.export import onnx_graph, sklearn_onnx, torch_interop
from fastbp.kernels import math as km
from fastbp.sklearn import MLPClassifier, MLPRegressor
from targets import targets_for

import early

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ACTS = sorted(km.ACTIVATIONS)
LOSSES = sorted(km.LOSSES)
DTYPES = ["float32", "float64"]
# The targets: ONNX Runtime and PyTorch within 1e-5 (float32) and 1e-12 (float64) of
# fastbp, relative to the outputs' scale.
TOL = {"float32": 1e-5, "float64": 1e-12}
N_IN = 5

pytestmark = pytest.mark.filterwarnings(
    "ignore::sklearn.exceptions.ConvergenceWarning")


def _close(got, want, dtype):
    tol = TOL[np.dtype(dtype).name]
    want = np.asarray(want)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(np.abs(want).max(), 1e-30))


def _data(loss, n_out, n=60, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_IN)) * 2.0
    return X, targets_for(loss, rng, n, n_out)


@functools.lru_cache(maxsize=None)
def _trained(activation, loss, dtype, depth, n_out=3, dropout=0.0):
    """A CPU-trained model (shared: tests must not change it) and its data."""
    X, y = _data(loss, n_out)
    widths = [7, 6, 8, 5, 6, 7][:depth]
    net = fastbp.MLP([N_IN] + widths + [n_out], activation=activation, loss=loss,
                     dtype=dtype, device="cpu", seed=depth, dropout=dropout)
    net.fit(X, y, epochs=3, batch_size=16, lr=0.02)
    return net, X


def _expected(net, X):
    """predict_proba for classifiers, predict as (n, n_out) otherwise."""
    if net.is_classifier:
        return net.predict_proba(X)
    return net.predict(X).reshape(len(X), -1)


def _session(proto):
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def _run_onnx(proto, X, dtype):
    return _session(proto).run(None, {"input": np.asarray(X, dtype=dtype)})[0]


def _torch_out(module, X, dtype):
    with torch.no_grad():
        return module.eval()(torch.from_numpy(np.asarray(X, dtype=dtype))).numpy()


# ============================================================================ registries

def test_every_activation_and_loss_has_an_export_mapping():
    assert set(km.ACTIVATIONS) == set(onnx_graph.ACTIVATION_OPS)
    assert set(km.ACTIVATIONS) == set(torch_interop.ACTIVATION_MODULES)
    assert set(km.LOSSES) == set(OUTPUT_LINKS)
    assert set(OUTPUT_LINKS.values()) <= set(onnx_graph.LINK_OPS)
    assert set(OUTPUT_LINKS.values()) <= set(torch_interop.LINK_MODULES)


@pytest.mark.parametrize("what", ["activation", "loss"])
def test_an_unmapped_name_is_a_clear_error_not_a_wrong_export(what, tmp_path):
    net = fastbp.MLP([3, 4, 2], activation="relu", device="cpu")
    if what == "activation":
        net.activations[0] = "swish"        # as if the registry had grown without a mapping
        match = "no mapping for the activation 'swish'"
    else:
        net.loss = "poisson_like"
        match = "loss 'poisson_like' has no output link"
    for export in (net.to_onnx, net.to_torch):
        with pytest.raises(ConfigError, match=match):
            export()
    if what == "activation":
        for export in (net.to_onnx, net.to_torch):
            with pytest.raises(ConfigError, match=match):
                export(output="logits")
        with pytest.raises(ConfigError, match=match):
            net.save(tmp_path / "m.safetensors")
        assert list(tmp_path.iterdir()) == []
    else:                                   # the logits do not depend on the loss
        assert net.to_onnx(output="logits").graph.output[0].name == "logits"
        assert len(net.to_torch(output="logits")) == 3


# ================================================================================ ONNX

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTS)
def test_onnx_matches_fastbp_for_every_activation(activation, dtype):
    depth = 1 + ACTS.index(activation) % 6 if activation != "gelu" else 6
    net, X = _trained(activation, "cross_entropy", dtype, depth)
    _close(_run_onnx(net.to_onnx(), X, dtype), net.predict_proba(X), dtype)
    _close(_run_onnx(net.to_onnx(output="logits"), X, dtype), net.decision_function(X), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", LOSSES)
def test_onnx_matches_fastbp_for_every_head(loss, dtype):
    net, X = _trained("gelu", loss, dtype, 2)
    got = _run_onnx(net.to_onnx(), X, dtype)
    _close(got, _expected(net, X), dtype)
    _close(_run_onnx(net.to_onnx(output="logits"), X, dtype), net.decision_function(X), dtype)
    if loss == "cross_entropy":
        np.testing.assert_array_equal(got.argmax(axis=1), net.predict(X))


@pytest.mark.parametrize("depth", [0, 1, 2, 3, 4, 5, 6])
def test_onnx_matches_at_every_depth(depth):
    acts = [ACTS[(depth + i) % len(ACTS)] for i in range(depth)]
    X, y = _data("mse", 2)
    net = fastbp.MLP([N_IN] + [6] * depth + [2], activation=acts, loss="mse",
                     dtype="float64", device="cpu", seed=depth)
    net.fit(X, y, epochs=2, batch_size=16)
    _close(_run_onnx(net.to_onnx(), X, "float64"), net.predict(X), "float64")


def test_onnx_graph_is_matmul_add_activation_per_layer():
    net = fastbp.MLP([4, 6, 5, 3], activation=["relu", "tanh"], dtype="float32",
                     device="cpu", seed=0)
    proto = net.to_onnx()
    onnx.checker.check_model(proto, full_check=True)
    assert [n.op_type for n in proto.graph.node] == \
        ["MatMul", "Add", "Relu", "MatMul", "Add", "Tanh", "MatMul", "Add", "Softmax"]
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    for l, (W, b) in enumerate(zip(net.get_weights()[::2], net.get_weights()[1::2])):
        np.testing.assert_array_equal(weights[f"W{l + 1}"], W)      # (n_in, n_out), no copy
        np.testing.assert_array_equal(weights[f"b{l + 1}"], b)
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert inp.name == "input" and out.name == "probabilities"
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and dims[1].dim_value == 4
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert out.type.tensor_type.shape.dim[1].dim_value == 3
    assert proto.opset_import[0].version == onnx_graph.DEFAULT_OPSET
    assert proto.producer_name == "fastbp"
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["fastbp.config"]) == net.get_config()
    assert props["fastbp.output"] == "probabilities"


@pytest.mark.parametrize("loss, name, last", [("binary_cross_entropy", "probabilities",
                                               "Sigmoid"), ("huber", "predictions", "Add")])
def test_onnx_head_follows_the_loss(loss, name, last):
    net = fastbp.MLP([3, 4, 2], activation="elu", loss=loss, dtype="float64", device="cpu")
    proto = net.to_onnx()
    onnx.checker.check_model(proto, full_check=True)
    assert proto.graph.output[0].name == name and proto.graph.node[-1].op_type == last
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    logits = net.to_onnx(output="logits")
    assert logits.graph.output[0].name == "logits" and logits.graph.node[-1].op_type == "Add"


def test_batch_dimension_is_dynamic():
    net, _ = _trained("tanh", "cross_entropy", "float32", 2)
    sess = _session(net.to_onnx())
    for n in (1, 2, 513):
        X = np.random.default_rng(n).normal(size=(n, N_IN)).astype(np.float32)
        got = sess.run(None, {"input": X})[0]
        assert got.shape == (n, 3)
        _close(got, net.predict_proba(X), "float32")


def test_float64_gelu_erf_is_exact_through_onnx_runtime():
    """ONNX Runtime has no float64 Erf: the exported piecewise polynomial must agree with
    the C library's erf (what the kernels call) to a few ulps over the whole line."""
    net = fastbp.MLP([1, 1, 1], activation="gelu", loss="mse", dtype="float64", device="cpu")
    net.set_weights([np.ones((1, 1)), np.zeros(1), np.ones((1, 1)), np.zeros(1)])
    x = np.concatenate([np.linspace(-40, 40, 40001), [0.0, 1e-300, -1e-300, 5.93, 6.0,
                                                      -6.0, 1e300, -1e300]])
    got = _run_onnx(net.to_onnx(), x[:, None], "float64")[:, 0]
    want = np.array([0.5 * v * (1.0 + math.erf(v * km._INV_SQRT2)) for v in x])
    np.testing.assert_allclose(got, want, rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(got, net.predict(x[:, None]), rtol=1e-15, atol=1e-15)
    # The pieces themselves, evaluated as the graph does (Horner in u per piece).
    a = np.linspace(0.0, onnx_graph.ERF_TOP, 120001)
    coef = onnx_graph.erf_pieces()
    k = np.minimum((a / onnx_graph.ERF_PIECE).astype(int), coef.shape[1] - 1)
    u = a * (2.0 / onnx_graph.ERF_PIECE) - (2 * k + 1)
    p = coef[-1, k]
    for c in coef[-2::-1]:
        p = p * u + c[k]
    assert np.abs(p - np.array([math.erf(v) for v in a])).max() <= 2.5e-16


def test_float64_leaky_relu_and_elu_use_exact_constants():
    for act in ("leaky_relu", "elu"):
        net = fastbp.MLP([1, 1, 1], activation=act, loss="mse", dtype="float64",
                         device="cpu")
        net.set_weights([np.ones((1, 1)), np.zeros(1), np.ones((1, 1)), np.zeros(1)])
        x = np.linspace(-30, 30, 6001)[:, None]
        got = _run_onnx(net.to_onnx(), x, "float64")
        np.testing.assert_allclose(got, net.predict(x).reshape(-1, 1), rtol=1e-15, atol=0)


def test_to_onnx_writes_the_file(tmp_path):
    net, X = _trained("relu", "cross_entropy", "float32", 1)
    for path in (tmp_path / "m.onnx", str(tmp_path / "n.onnx")):
        proto = net.to_onnx(path)
        assert onnx.load(path).SerializeToString() == proto.SerializeToString()
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        _close(sess.run(None, {"input": X.astype(np.float32)})[0], net.predict_proba(X),
               "float32")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "n.onnx"]


def test_weights_past_protobufs_limit_go_to_external_data(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_graph, "PROTOBUF_LIMIT", 100)
    X, _ = _data("cross_entropy", 3)
    net = fastbp.MLP([N_IN, 64, 3], activation="gelu", dtype="float64", device="cpu")
    path = tmp_path / "big.onnx"
    net.to_onnx(path)
    assert (tmp_path / "big.onnx.data").stat().st_size >= 64 * N_IN * 8   # W1 at least
    stored = onnx.load(path, load_external_data=False)
    external = {t.name for t in stored.graph.initializer
                if t.data_location == onnx.TensorProto.EXTERNAL}
    assert {"W1", "W2"} <= external
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    _close(sess.run(None, {"input": X})[0], net.predict_proba(X), "float64")


def test_opsets():
    net, X = _trained("elu", "binary_cross_entropy", "float32", 2)
    newest = onnx.defs.onnx_opset_version()
    for opset in (onnx_graph.MIN_OPSET, 18, newest):
        proto = net.to_onnx(opset=opset)
        assert proto.opset_import[0].version == opset
        onnx.checker.check_model(proto, full_check=True)
        _close(_run_onnx(proto, X, "float32"), net.predict_proba(X), "float32")
    for bad in (12, 1, newest + 1, "17", 17.0, True, -1):
        with pytest.raises(ConfigError, match=f"opset {bad!r} is not supported: fastbp "
                                              f"exports ONNX opsets 13 to {newest}"):
            net.to_onnx(opset=bad)


@pytest.mark.parametrize("bad", ["proba", "probabilities", None, "LOGITS"])
def test_bad_output_argument(bad):
    net = fastbp.MLP([2, 2], device="cpu")
    for export in (net.to_onnx, net.to_torch):
        with pytest.raises(ConfigError, match="output must be 'auto'"):
            export(output=bad)


@pytest.mark.parametrize("module, extra, call", [
    ("onnx", "onnx", lambda net, p: net.to_onnx()),
    ("torch", "torch", lambda net, p: net.to_torch()),
    ("torch", "torch", lambda net, p: fastbp.from_torch(None)),
    ("safetensors", "safetensors", lambda net, p: net.save(p / "m.safetensors")),
    ("safetensors", "safetensors", lambda net, p: fastbp.load(p / "x.safetensors")),
    ("skl2onnx", "onnx", lambda net, p: sklearn_onnx.register()),
])
def test_missing_optional_dependency_names_the_extra(module, extra, call, monkeypatch,
                                                     tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    net = fastbp.MLP([2, 2], device="cpu")
    monkeypatch.setitem(sys.modules, module, None)        # import raises ImportError
    with pytest.raises(MissingDependencyError,
                       match=rf"needs the '{module}' package.*pip install \"fastbp\[{extra}\]\""):
        call(net, tmp_path)
    assert issubclass(MissingDependencyError, ImportError)
    assert not (tmp_path / "m.safetensors").exists()


def test_importing_fastbp_imports_no_exporter_library():
    code = ("import sys, fastbp, fastbp.sklearn, fastbp.export, fastbp.export.onnx_graph, "
            "fastbp.export.torch_interop, fastbp.export.safetensors_io, "
            "fastbp.export.sklearn_onnx\n"
            "heavy = [m for m in ('onnx', 'onnxruntime', 'skl2onnx', 'torch', 'safetensors') "
            "if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


# ============================================================= CUDA-trained (simulator)

def _export_cuda_checks():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           os.path.join(HERE, "export_cuda_checks.py")]
    return "export_cuda_checks", cmd, env, ROOT


@pytest.mark.skipif(importlib.util.find_spec("numba_cuda") is None,
                    reason="numba-cuda is not installed: no CUDA simulator")
@early.early(_export_cuda_checks)
def test_cuda_trained_models_export_under_the_simulator():
    code, out, err = early.result(*_export_cuda_checks(), timeout=900)
    assert code == 0, out[-8000:] + err[-3000:]
    assert " passed" in out and "skipped" not in out


# ============================================================================ skl2onnx

@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(n_samples=150, centers=3, n_features=N_IN, random_state=0)
    return X * 3.0 + 1.0, y          # unscaled: the pipeline's StandardScaler matters


SMALL = dict(hidden_layer_sizes=(8, 6), max_iter=15, batch_size=16, learning_rate_init=0.01,
             random_state=0)


def _convert(pipe, X, options=None, dtype=np.float64):
    proto = skl2onnx.to_onnx(pipe, X[:1].astype(dtype), options=options)
    onnx.checker.check_model(proto)
    sess = _session(proto)
    outs = sess.run(None, {sess.get_inputs()[0].name: X.astype(dtype)})
    return proto, sess, outs


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("labels", ["strings", "ints", "binary"])
def test_skl2onnx_pipeline_classifier(blobs, labels, dtype):
    X, y = blobs
    if labels == "strings":
        y = np.array(["cat", "dog", "emu"])[y]
    elif labels == "ints":
        y = np.array([-5, 10, 42])[y]
    else:
        y = np.where(y == 0, "no", "yes")
    pipe = make_pipeline(StandardScaler(), MLPClassifier(activation="tanh", dtype=dtype,
                                                         **SMALL)).fit(X, y)
    clf = pipe[-1]
    # The call of the issue: skl2onnx.to_onnx(pipeline, X[:1]), float64 X, default options.
    _, sess, (label, zipped) = _convert(pipe, X)
    assert [o.name for o in sess.get_outputs()] == ["output_label", "output_probability"]
    np.testing.assert_array_equal(label, pipe.predict(X))
    assert label.dtype == (np.int64 if labels == "ints" else object)
    proba = pipe.predict_proba(X)
    assert list(zipped[0]) == list(clf.classes_)
    got = np.array([[row[c] for c in clf.classes_] for row in zipped])
    np.testing.assert_allclose(got, proba, rtol=1e-5, atol=1e-6)
    # Without ZipMap: label and probabilities tensors, float64 like the input.
    _, sess, (label, got) = _convert(pipe, X, options={id(clf): {"zipmap": False}})
    assert [o.name for o in sess.get_outputs()] == ["label", "probabilities"]
    np.testing.assert_array_equal(label, pipe.predict(X))
    assert got.dtype == np.float64 and got.shape == (len(X), len(clf.classes_))
    np.testing.assert_allclose(got, proba, rtol=1e-5, atol=1e-7)
    if dtype == "float64":      # the whole graph in float64: scikit-learn's round-off only
        np.testing.assert_allclose(got, proba, rtol=1e-12, atol=1e-14)
    # float32 inputs work too (the cast is in the graph).
    _, _, (label, got) = _convert(pipe, X, {id(clf): {"zipmap": False}}, np.float32)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, proba, rtol=1e-5, atol=1e-5)


def test_skl2onnx_classifier_options(blobs):
    X, y = blobs
    pipe = make_pipeline(StandardScaler(), MLPClassifier(**SMALL)).fit(X, y + 3)
    clf = pipe[-1]
    _, _, (label, _) = _convert(pipe, X, {id(clf): {"zipmap": False, "nocl": True}})
    np.testing.assert_array_equal(label, pipe.predict(X) - 3)   # class indices
    _, sess, outs = _convert(pipe, X, {id(clf): {"zipmap": "columns"}})
    assert len(outs) == 1 + len(clf.classes_)
    np.testing.assert_allclose(np.column_stack(outs[1:]), pipe.predict_proba(X), rtol=1e-5,
                               atol=1e-7)
    _, sess, outs = _convert(pipe, X, {id(clf): {"zipmap": False,
                                                 "output_class_labels": True}})
    np.testing.assert_array_equal(outs[2], clf.classes_)
    with pytest.raises(ConfigError, match="target_opset 12 is below 13"):
        skl2onnx.to_onnx(pipe, X[:1], target_opset=12)


def test_skl2onnx_multilabel_and_regressors(blobs):
    X, y = blobs
    Y = np.column_stack([y == 0, y == 2, X[:, 0] > 1.0]).astype(int)
    pipe = make_pipeline(StandardScaler(), MLPClassifier(**SMALL)).fit(X, Y)
    _, _, (label, proba) = _convert(pipe, X, {id(pipe[-1]): {"zipmap": False}})
    np.testing.assert_array_equal(label, pipe.predict(X))
    np.testing.assert_allclose(proba, pipe.predict_proba(X), rtol=1e-5, atol=1e-7)
    for target in (X[:, 0] * 2.0 - X[:, 1], np.column_stack([X[:, 0], X[:, 1] ** 2])):
        for dtype in DTYPES:
            reg = make_pipeline(StandardScaler(), MLPRegressor(dtype=dtype, **SMALL))
            reg.fit(X, target)
            _, sess, (variable,) = _convert(reg, X)
            assert sess.get_outputs()[0].name == "variable"
            want = reg.predict(X).reshape(len(X), -1)
            assert variable.shape == want.shape and variable.dtype == np.float64
            np.testing.assert_allclose(variable, want, rtol=1e-5,
                                       atol=1e-5 * np.abs(want).max())


def test_skl2onnx_whole_float_labels_become_int64(blobs):
    X, y = blobs
    pipe = make_pipeline(StandardScaler(), MLPClassifier(**SMALL)).fit(X, y * 2.0)
    _, _, (label, _) = _convert(pipe, X, {id(pipe[-1]): {"zipmap": False}})
    assert label.dtype == np.int64
    np.testing.assert_array_equal(label, pipe.predict(X))


@pytest.mark.parametrize("order", ["fastbp first", "skl2onnx first", "skl2onnx.convert only"])
def test_skl2onnx_registration_is_lazy_and_order_free(order):
    """In a fresh interpreter: importing fastbp.sklearn imports no onnx, and conversion
    works whichever of the two was imported first."""
    imports = {"fastbp first": "import fastbp.sklearn as fs\nimport skl2onnx\n",
               "skl2onnx first": "import skl2onnx\nimport fastbp.sklearn as fs\n",
               "skl2onnx.convert only": "import fastbp.sklearn as fs\n"
                                        "from skl2onnx.convert import to_onnx\n"}[order]
    code = imports + textwrap_dedent("""
        import sys
        import numpy as np
        import onnxruntime as ort
        from skl2onnx import to_onnx
        X = np.random.default_rng(0).normal(size=(30, 3))
        y = (X[:, 0] > 0).astype(int)
        clf = fs.MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, random_state=0).fit(X, y)
        reg = fs.MLPRegressor(hidden_layer_sizes=(4,), max_iter=2, random_state=0).fit(X, X[:, 1])
        for est in (clf, reg):
            sess = ort.InferenceSession(to_onnx(est, X[:1]).SerializeToString(),
                                        providers=["CPUExecutionProvider"])
            out = sess.run(None, {sess.get_inputs()[0].name: X})[0]
            assert np.allclose(np.ravel(out), est.predict(X)), type(est)
        assert not any(type(f).__name__ == "_RegisterOnImport" for f in sys.meta_path)
        print("converted")
    """)
    if order == "fastbp first":
        code = ("import sys\nimport fastbp.sklearn\nassert 'skl2onnx' not in sys.modules and "
                "'onnx' not in sys.modules\n") + code
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "converted" in proc.stdout, proc.stderr[-3000:]


def textwrap_dedent(text):
    import textwrap
    return textwrap.dedent(text)


# ============================================================================= PyTorch

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTS)
def test_to_torch_matches_fastbp_for_every_activation(activation, dtype):
    net, X = _trained(activation, "cross_entropy", dtype, 1 + ACTS.index(activation) % 6)
    module = net.to_torch()
    assert isinstance(module, torch.nn.Sequential)
    _close(_torch_out(module, X, dtype), net.predict_proba(X), dtype)
    _close(_torch_out(net.to_torch(output="logits"), X, dtype), net.decision_function(X),
           dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", LOSSES)
def test_to_torch_matches_fastbp_for_every_head_and_round_trips_bitwise(loss, dtype):
    net, X = _trained("gelu", loss, dtype, 3, dropout=0.2)
    module = net.to_torch()
    _close(_torch_out(module, X, dtype), _expected(net, X), dtype)
    back = fastbp.from_torch(module, loss=None if net.is_classifier else loss)
    for a, b in zip(back.get_weights(), net.get_weights()):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)             # bit for bit
    assert back.get_config() == dict(net.get_config(), seed=0, device="auto")
    np.testing.assert_array_equal(_expected(back, X), _expected(net, X))
    logits = fastbp.from_torch(net.to_torch(output="logits"), loss=loss)
    assert logits.loss == loss
    np.testing.assert_array_equal(_expected(logits, X), _expected(net, X))


def test_to_torch_modules_dtype_grad_and_rng():
    net = fastbp.MLP([4, 6, 5, 5, 3], activation=["leaky_relu", "identity", "elu"],
                     loss="binary_cross_entropy", dtype="float64", device="cpu",
                     dropout=[0.0, 0.3, 0.0])
    net.freeze(1)
    state = torch.get_rng_state()
    module = net.to_torch()
    assert torch.equal(torch.get_rng_state(), state)       # no draw from torch's generator
    nn = torch.nn
    assert [type(m) for m in module] == [nn.Linear, nn.LeakyReLU, nn.Linear, nn.Dropout,
                                         nn.Linear, nn.ELU, nn.Linear, nn.Sigmoid]
    assert module[1].negative_slope == km.LEAKY_SLOPE and module[5].alpha == km.ELU_ALPHA
    assert module[3].p == 0.3 and module.training
    assert all(p.dtype == torch.float64 for p in module.parameters())
    assert module[0].weight.shape == (6, 4)                # torch's (out, in)
    assert [p.requires_grad for p in module.parameters()] == [True] * 2 + [False] * 2 + \
        [True] * 4
    # A fine-tuning step in PyTorch works on the exported module.
    X = torch.randn(8, 4, dtype=torch.float64)
    loss = nn.BCEWithLogitsLoss()(net.to_torch(output="logits")(X), torch.ones(8, 3,
                                                                               dtype=torch.float64))
    loss.backward()
    back = fastbp.from_torch(module)
    assert back.loss == "binary_cross_entropy" and back.trainable.tolist() == \
        [True, False, True, True]
    assert back.activations == ["leaky_relu", "identity", "elu"]
    assert back.dropout == [0.0, 0.3, 0.0]


def test_from_torch_reads_a_pytorch_trained_sequential():
    torch.manual_seed(0)
    nn = torch.nn
    module = nn.Sequential(
        nn.Sequential(nn.Linear(4, 8), nn.Tanh()),
        nn.Identity(),
        nn.Linear(8, 6, bias=False), nn.GELU(), nn.Dropout(0.1),
        nn.Linear(6, 6), nn.Linear(6, 3), nn.Softmax(dim=1)).double()
    X = torch.randn(64, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (64,))
    opt = torch.optim.Adam(module.parameters(), lr=0.01)
    for _ in range(5):
        opt.zero_grad()
        nn.NLLLoss()(torch.log(module(X)), y).backward()
        opt.step()
    net = fastbp.from_torch(module, seed=3, device="cpu")
    assert net.sizes == [4, 8, 6, 6, 3] and net.loss == "cross_entropy"
    assert net.activations == ["tanh", "gelu", "identity"] and net.dtype == np.float64
    assert net.dropout == [0.0, 0.1, 0.0] and net.seed == 3
    np.testing.assert_array_equal(net.get_weights()[3], np.zeros(6))   # bias=False
    _close(net.predict_proba(X.numpy()), _torch_out(module, X.numpy(), "float64"), "float64")
    half = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).to(torch.bfloat16)
    with pytest.raises(ConfigError, match=r"\['bfloat16'\].*pass dtype="):
        fastbp.from_torch(half)
    net = fastbp.from_torch(half, dtype="float32", loss="huber")
    np.testing.assert_array_equal(net.get_weights()[0],
                                  half[0].weight.float().detach().numpy().T)
    assert net.loss == "huber"


def _bad_sequentials():
    nn = torch.nn
    L = nn.Linear
    return [
        (nn.Sequential(L(3, 4), nn.Conv1d(4, 4, 1), L(4, 2)), r"module 1 \(Conv1d.*not supported"),
        (nn.Sequential(L(3, 4), nn.BatchNorm1d(4), L(4, 2)), r"module 1 \(BatchNorm1d"),
        (nn.Sequential(L(3, 4), nn.LeakyReLU(0.2), L(4, 2)),
         r"module 1 \(LeakyReLU\(negative_slope=0.2\)\) is not fastbp's leaky_relu activation, "
         r"which is LeakyReLU\(negative_slope=0.01\)"),
        (nn.Sequential(L(3, 4), nn.ELU(0.5), L(4, 2)),
         r"module 1 \(ELU\(alpha=0.5\)\) is not fastbp's elu"),
        (nn.Sequential(L(3, 4), nn.GELU("tanh"), L(4, 2)),
         r"is not fastbp's gelu activation, which is GELU\(approximate='none'\)"),
        (nn.Sequential(L(3, 4), nn.ReLU(), nn.Tanh(), L(4, 2)), r"module 2 \(Tanh\(\)\) does not"),
        (nn.Sequential(L(3, 4), nn.Dropout(0.1), nn.ReLU(), L(4, 2)), r"module 1 \(Dropout"),
        (nn.Sequential(L(3, 4), nn.ReLU(), L(4, 2), nn.ReLU()), r"module 3 \(ReLU\(\)\) follows "
                                                               r"the last Linear"),
        (nn.Sequential(L(3, 4), L(4, 2), nn.Dropout(0.5)), r"module 2 .*follows the last"),
        (nn.Sequential(L(3, 4), L(4, 2), nn.Softmax(dim=0)),
         r"module 2 \(Softmax\(dim=0\)\) is not "
                                                             r"fastbp's softmax output head"),
        (nn.Sequential(L(3, 4), L(4, 2), nn.Softmax(-1), nn.Identity(), nn.Sigmoid()),
         r"module 2 .*follows the last Linear"),
        (nn.Sequential(L(3, 4), L(4, 2), nn.LogSoftmax(dim=1)), r"module 2 \(LogSoftmax"),
        (nn.Sequential(L(3, 4), nn.Softmax(dim=1), L(4, 2)), r"module 1 \(Softmax"),
        (nn.Sequential(nn.ReLU(), L(3, 2)), r"module 0 \(ReLU\(\)\) comes before the first"),
        (nn.Sequential(nn.Sequential(L(3, 4)), nn.Sequential(nn.ReLU(), nn.Flatten()), L(4, 2)),
         r"module 1.1 \(Flatten"),
        (nn.Sequential(), r"has no Linear layer"),
        (nn.Sequential(L(3, 4), nn.ReLU(), L(5, 2)), r"module 2 .*takes 5 inputs but the "
                                                      r"Linear at 0 gives 4"),
        (L(3, 2), r"needs a torch.nn.Sequential, got Linear"),
        (nn.Sequential(L(3, 4).double(), L(4, 2)), r"\['float32', 'float64'\]"),
        (nn.Sequential(nn.LazyLinear(4), L(4, 2)), r"module 0 .*not initialized"),
    ]


@pytest.mark.parametrize("index", range(20))
def test_from_torch_rejects_what_fastbp_cannot_represent(index):
    bad = _bad_sequentials()
    assert len(bad) == 20
    module, match = bad[index]
    with pytest.raises(ConfigError, match=match):
        fastbp.from_torch(module)


def test_from_torch_checks_loss_and_arguments():
    nn = torch.nn
    module = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.Softmax(-1))
    with pytest.raises(ConfigError, match="softmax head, which is the head of "
                                          "'cross_entropy', not of loss 'mse'"):
        fastbp.from_torch(module, loss="mse")
    with pytest.raises(ConfigError, match="unknown loss 'hinge'"):
        fastbp.from_torch(module, loss="hinge")
    with pytest.raises(ConfigError, match="reads sizes from the module"):
        fastbp.from_torch(module, sizes=[3, 4, 2])
    sig = nn.Sequential(nn.Linear(3, 4), nn.Sigmoid(), nn.Linear(4, 2), nn.Sigmoid())
    net = fastbp.from_torch(sig)
    assert net.activations == ["sigmoid"] and net.loss == "binary_cross_entropy"
    assert fastbp.from_torch(module[:3]).loss == "mse"
    quiet = nn.Sequential(nn.Linear(3, 4), nn.ReLU(inplace=True), nn.Linear(4, 4),
                          nn.ELU(inplace=True), nn.Linear(4, 2), nn.Softmax())
    net = fastbp.from_torch(quiet)      # in-place modules and Softmax's implicit dim
    assert net.activations == ["relu", "elu"] and net.loss == "cross_entropy"
    with pytest.raises(ConfigError, match=r"module 0 \(Conv1d.*reads Sequentials of "
                                          r"Linear, ReLU\(\), LeakyReLU"):
        fastbp.from_torch(nn.Sequential(nn.Conv1d(1, 1, 1)))


# ========================================================================= safetensors

@pytest.mark.parametrize("dtype", DTYPES)
def test_safetensors_round_trip(tmp_path, dtype):
    net, X = _trained("elu", "binary_cross_entropy", dtype, 2, dropout=0.1)
    net = fastbp.MLP(net.sizes, activation=["elu", "tanh"], loss="binary_cross_entropy",
                     dtype=dtype, device="cpu", seed=4, dropout=[0.1, 0.0])
    net.freeze(0)
    path = tmp_path / "m.safetensors"
    net.save(path)
    loaded = fastbp.load(path)
    assert loaded.get_config() == net.get_config()
    assert loaded.trainable.tolist() == [False, True, True]
    for a, b in zip(loaded.get_weights(), net.get_weights()):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.predict_proba(X), net.predict_proba(X))
    # Plain safetensors: an 8-byte header length, a JSON header, raw little-endian data.
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__")
    assert meta["format"] == "pt" and meta["fastbp.format"] == "fastbp-mlp"
    assert json.loads(meta["fastbp.config"]) == net.get_config()
    assert sorted(header) == ["0.bias", "0.weight", "3.bias", "3.weight", "5.bias", "5.weight"]
    assert header["0.weight"]["shape"] == [7, N_IN]
    # The tensors are to_torch()'s state_dict: PyTorch loads the file directly.
    module = net.to_torch()
    module.load_state_dict(safetensors.torch.load_file(path))
    _close(_torch_out(module, X, dtype), net.predict_proba(X), dtype)
    # A device override, as for .npz.
    assert fastbp.load(path, device="cpu").device == "cpu"


def test_save_format_comes_from_the_suffix(tmp_path):
    net = fastbp.MLP([3, 2], device="cpu")
    for name, match in [("m.bin", r"save: cannot tell the format from the suffix '.bin'.*"
                                  r"use one of .npz, .safetensors"),
                        ("m", r"suffix '\(none\)'"),
                        ("m.onnx", r"not '.onnx': export ONNX with net.to_onnx\(path\)"),
                        ("m.pt", r"not '.pt': net.to_torch\(\)")]:
        with pytest.raises(ConfigError, match=match):
            net.save(tmp_path / name)
    with pytest.raises(ConfigError, match="format must be one of"):
        net.save(tmp_path / "m.npz", format="onnx")
    net.save(tmp_path / "weights.bin", format="safetensors")
    assert fastbp.load(tmp_path / "weights.bin").sizes == [3, 2]      # found by content
    net.save(tmp_path / "npz.bin", format="npz")
    assert fastbp.load(tmp_path / "npz.bin").sizes == [3, 2]
    assert list(tmp_path.glob("*.tmp")) == [] and len(list(tmp_path.iterdir())) == 2
    net.to_onnx(tmp_path / "m.onnx")
    with pytest.raises(ModelFileError, match="ONNX and PyTorch files are exports"):
        fastbp.load(tmp_path / "m.onnx")


def test_failed_safetensors_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    fastbp.MLP([3, 2], device="cpu", seed=1).save(path)
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(safetensors.numpy, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        fastbp.MLP([3, 2], device="cpu", seed=2).save(path)
    assert path.read_bytes() == before and len(list(tmp_path.iterdir())) == 1


def test_checkpoints_can_be_safetensors(tmp_path):
    X, y = _data("cross_entropy", 3)
    net = fastbp.MLP([N_IN, 4, 3], device="cpu")
    net.fit(X, y, epochs=2, callbacks=[fastbp.callbacks.ModelCheckpoint(
        str(tmp_path / "ckpt-{epoch}.safetensors"), monitor="loss")])
    np.testing.assert_array_equal(
        fastbp.load(tmp_path / "ckpt-2.safetensors").get_weights()[0], net.get_weights()[0])


# ------------------------------------------------------------ untrusted .safetensors

def _safetensors_bytes(tensors, metadata, header_edit=None):
    """A safetensors file built by hand: {name: array}, str metadata."""
    header, data = {}, b""
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        code = {"float32": "F32", "float64": "F64", "float16": "F16", "int64": "I64"}[a.dtype.name]
        header[name] = {"dtype": code, "shape": list(a.shape),
                        "data_offsets": [len(data), len(data) + a.nbytes]}
        data += a.tobytes()
    header["__metadata__"] = metadata
    if header_edit:
        header_edit(header)
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + data


def _fastbp_meta(config, trainable=None, version="1"):
    meta = {"format": "pt", "fastbp.format": "fastbp-mlp", "fastbp.format_version": version,
            "fastbp.config": config if isinstance(config, str) else json.dumps(config)}
    if trainable is not None:
        meta["fastbp.trainable"] = json.dumps(trainable)
    return meta


GOOD_CONFIG = {"sizes": [3, 4, 2], "activation": "tanh", "loss": "cross_entropy",
               "dtype": "float64", "seed": 0, "device": "cpu", "init": "auto",
               "dropout": 0.0}


def _good_tensors(dtype="float64"):
    rng = np.random.default_rng(0)
    return {"0.weight": rng.normal(size=(4, 3)).astype(dtype), "0.bias": np.zeros(4, dtype),
            "2.weight": rng.normal(size=(2, 4)).astype(dtype), "2.bias": np.ones(2, dtype)}


def test_hand_built_safetensors_file_loads(tmp_path):
    p = tmp_path / "ok.safetensors"
    p.write_bytes(_safetensors_bytes(_good_tensors(), _fastbp_meta(GOOD_CONFIG)))
    net = fastbp.load(p)
    np.testing.assert_array_equal(net.get_weights()[0], _good_tensors()["0.weight"].T)


def _edit(key, value):
    return lambda cfg: dict(cfg, **{key: value})


UNTRUSTED = [
    # (tensors edit, config or metadata edit, expected message)
    ("config sizes", None, _edit("sizes", [3, 5, 2]),
     r"inconsistent: '0.weight' has shape \(4, 3\), the config's sizes \[3, 5, 2\] need "
     r"\(5, 3\)"),
    ("huge sizes", None, _edit("sizes", [3, 10 ** 9, 10 ** 9, 2]),
     r"sizes \[3, 1000000000, 1000000000, 2\] make 3 layers, the file holds weights of 2"),
    ("sizes not ints", None, _edit("sizes", [3, 4.0, 2]), r"is not a list of at least two"),
    ("missing tensor", lambda t: t.pop("2.bias"), None, r"tensor '2.bias' is missing"),
    ("extra tensor", lambda t: t.update(extra=np.zeros(1)), None, r"unexpected tensor 'extra'"),
    ("odd name", lambda t: t.update({"02.weight": t.pop("2.weight"),
                                     "02.bias": t.pop("2.bias")}), None, r"unexpected tensor '02"),
    ("wrong dtype", lambda t: t.update({"2.bias": np.ones(2, np.float32)}), None,
     r"tensor '2.bias' is F32, the config's dtype float64 is stored as F64"),
    ("half dtype", lambda t: t.update({"0.bias": np.zeros(4, np.float16)}), None, r"is F16"),
    ("int dtype", lambda t: t.update({"0.bias": np.zeros(4, np.int64)}), None, r"is I64"),
    ("bad dtype", None, _edit("dtype", "float16"), r"dtype 'float16' is not float32"),
    ("transposed", lambda t: t.update({"0.weight": t["0.weight"].T.copy()}), None,
     r"'0.weight' has shape \(3, 4\)"),
    ("activation", None, _edit("activation", "swish"), r"activation 'swish' does not name"),
    ("activation list", None, _edit("activation", ["tanh", "relu"]), r"for each of 1 hidden"),
    ("loss", None, _edit("loss", "hinge"), r"unknown loss 'hinge'"),
    ("unknown entry", None, _edit("colour", "red"), r"unknown config entries \['colour'\]"),
    ("dropout", None, _edit("dropout", 1.5), r"inconsistent: dropout rates"),
    ("nan", lambda t: t["0.bias"].__setitem__(0, np.nan), None, r"b1 contains NaN"),
]


@pytest.mark.parametrize("case", UNTRUSTED, ids=[c[0] for c in UNTRUSTED])
def test_untrusted_safetensors_config_must_match_its_tensors(tmp_path, case):
    _, edit_tensors, edit_config, match = case
    tensors = _good_tensors()
    if edit_tensors:
        edit_tensors(tensors)
    cfg = edit_config(GOOD_CONFIG) if edit_config else GOOD_CONFIG
    p = tmp_path / "bad.safetensors"
    p.write_bytes(_safetensors_bytes(tensors, _fastbp_meta(cfg)))
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match=match):
            fastbp.load(p)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 ** 20          # nothing allocated from the file's claimed sizes


@pytest.mark.parametrize("meta, match", [
    ({"format": "pt"}, "without fastbp's config in its metadata"),
    (_fastbp_meta(GOOD_CONFIG, version="2"), r"format version 2; this fastbp reads up to 1"),
    (_fastbp_meta(GOOD_CONFIG, version="x"), r"invalid format version 'x'"),
    (_fastbp_meta("{not json"), r"config is not JSON"),
    (_fastbp_meta("[1, 2]"), r"config is not a JSON object"),
    (_fastbp_meta(GOOD_CONFIG, trainable=[True]), r"trainable flags \[True\] do not match 2"),
    (_fastbp_meta(GOOD_CONFIG, trainable=[1, 0]), r"trainable flags \[1, 0\]"),
])
def test_untrusted_safetensors_metadata(tmp_path, meta, match):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(_safetensors_bytes(_good_tensors(), meta))
    with pytest.raises(ModelFileError, match=match):
        fastbp.load(p)


def test_a_torch_state_dict_file_is_not_a_fastbp_model_but_from_torch_reads_it(tmp_path):
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    p = tmp_path / "torch.safetensors"
    safetensors.torch.save_file(module.state_dict(), p)
    with pytest.raises(ModelFileError, match="fastbp.from_torch reads that"):
        fastbp.load(p)
    module.load_state_dict(safetensors.torch.load_file(p))
    assert fastbp.from_torch(module).sizes == [3, 4, 2]


@pytest.mark.parametrize("damage", ["truncate", "header length", "header bytes", "empty",
                                    "text", "offsets"])
def test_damaged_safetensors_files_raise_model_file_error(tmp_path, damage):
    good = _safetensors_bytes(_good_tensors(), _fastbp_meta(GOOD_CONFIG))
    (n,) = struct.unpack("<Q", good[:8])
    if damage == "truncate":
        cuts = [bytes(good[:k]) for k in (1, 8, 9, n // 2, n + 8, len(good) - 1)]
    elif damage == "header length":
        cuts = [struct.pack("<Q", v) + good[8:] for v in (2 ** 63, len(good), n - 5, 0)]
    elif damage == "header bytes":
        cuts = [good[:8 + k] + b"\x00" + good[9 + k:] for k in (0, n // 3, n - 1)]
    elif damage == "empty":
        cuts = [b""]
    elif damage == "text":
        cuts = [b"sizes: [3, 4, 2]\n" * 4]
    else:                        # offsets that point past the data or overlap
        cuts = [_safetensors_bytes(_good_tensors(), _fastbp_meta(GOOD_CONFIG),
                                   lambda h: h["2.bias"].update(data_offsets=[0, 10 ** 9])),
                _safetensors_bytes(_good_tensors(), _fastbp_meta(GOOD_CONFIG),
                                   lambda h: h["0.weight"].update(shape=[40000, 30000]))]
    for i, data in enumerate(cuts):
        p = tmp_path / f"damaged{i}.safetensors"
        p.write_bytes(data)
        with pytest.raises(ModelFileError):
            fastbp.load(p)


def test_npz_sizes_are_checked_against_the_arrays_before_allocating(tmp_path):
    net = fastbp.MLP([3, 4, 2], device="cpu")
    path = tmp_path / "m.npz"
    net.save(path)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(str(arrays["header"]))
    header["config"]["sizes"] = [3, 10 ** 9, 2]
    arrays["header"] = np.array(json.dumps(header))
    np.savez(path, **arrays)
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match=r"W1 has shape \(3, 4\), the config's sizes"):
            fastbp.load(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 ** 20


# ============================================================================ CLI

def test_cli_export_every_format(tmp_path, capsys):
    net, X = _trained("gelu", "cross_entropy", "float64", 2)
    src = tmp_path / "model.npz"
    net.save(src)
    assert cli.main(["export", str(src), str(tmp_path / "m.onnx")]) == 0
    assert "wrote" in capsys.readouterr().out
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    _close(sess.run(None, {"input": X})[0], net.predict_proba(X), "float64")
    assert cli.main(["export", str(src), str(tmp_path / "l.onnx"), "--output", "logits",
                     "--opset", "13"]) == 0
    proto = onnx.load(tmp_path / "l.onnx")
    assert proto.opset_import[0].version == 13 and proto.graph.output[0].name == "logits"
    _close(_run_onnx(proto, X, "float64"), net.decision_function(X), "float64")
    assert cli.main(["export", str(src), str(tmp_path / "m.safetensors")]) == 0
    assert cli.main(["export", str(tmp_path / "m.safetensors"), str(tmp_path / "m2.npz")]) == 0
    np.testing.assert_array_equal(fastbp.load(tmp_path / "m2.npz").get_weights()[2],
                                  net.get_weights()[2])
    assert cli.main(["export", str(src), str(tmp_path / "m.pt"), "--output", "logits"]) == 0
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    module = net.to_torch(output="logits")
    module.load_state_dict(state)
    _close(_torch_out(module, X, "float64"), net.decision_function(X), "float64")


@pytest.mark.parametrize("args, match", [
    (["m.bin"], "cannot tell the format from the suffix '.bin'"),
    (["m.safetensors", "--opset", "17"], "opset applies to .onnx exports"),
    (["m.npz", "--output", "logits"], "output='logits' applies to .onnx and .pt"),
    (["m.onnx", "--opset", "12"], "opset 12 is not supported"),
])
def test_cli_export_errors(tmp_path, capsys, args, match):
    src = tmp_path / "model.npz"
    fastbp.MLP([3, 2], device="cpu").save(src)
    out = [str(tmp_path / args[0])] + args[1:]
    assert cli.main(["export", str(src)] + out) == 1
    err = capsys.readouterr().err
    assert err.startswith("fastbp: error: ") and match in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]
    assert cli.main(["export", str(tmp_path / "missing.npz"), str(tmp_path / "m.onnx")]) == 1


def test_cli_export_keeps_class_labels_and_safetensors_predicts(tmp_path, capsys):
    from sklearn.datasets import load_iris
    d = load_iris()
    data = tmp_path / "iris.csv"
    with open(data, "w") as f:
        f.write("a,b,c,d,species\n")
        for x, t in zip(d.data, d.target):
            f.write(",".join(map(str, x)) + f",{d.target_names[t]}\n")
    model = tmp_path / "iris.safetensors"
    assert cli.main(["train", str(data), "--target", "species", "--layers", "8", "--epochs",
                     "30", "--lr", "0.02", "--quiet", "--out", str(model)]) == 0
    assert cli.main(["predict", str(model), str(data), "--out", str(tmp_path / "p.csv")]) == 0
    preds = (tmp_path / "p.csv").read_text().splitlines()
    assert preds[0] == "species" and set(preds[1:]) <= set(d.target_names)
    assert cli.main(["export", str(model), str(tmp_path / "iris.onnx")]) == 0
    props = {p.key: p.value for p in onnx.load(tmp_path / "iris.onnx").metadata_props}
    meta = json.loads(props["cli_meta"])
    assert meta["classes"] == list(d.target_names) and meta["features"] == list("abcd")
