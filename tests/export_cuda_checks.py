"""Exports of CUDA-trained models against ONNX Runtime and PyTorch.

Not collected by the normal run (no ``test_`` prefix): ``test_export.py`` runs this module
in a subprocess with ``NUMBA_ENABLE_CUDASIM=1``, as ``test_cuda.py`` does for the engine's
checks (the simulator must be on before numba is imported), and on a real GPU there is
one. Shapes are tiny: the simulator runs each GPU thread as a Python thread.
"""
import numpy as np
import pytest

import fastbp
from fastbp.kernels import math as km
from targets import targets_for

# The simulator's dropout hash runs on NumPy int64 scalars: its wrap-around is intended.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
TOL = {"float32": 1e-5, "float64": 1e-12}
ACTS = sorted(km.ACTIVATIONS)
LOSSES = sorted(km.LOSSES)


def _data(loss, n_out, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(10, 4))
    return X, targets_for(loss, rng, 10, n_out)


def _cuda_model(activation, loss, dtype, depth):
    X, y = _data(loss, 3)
    net = fastbp.MLP([4] + [5] * depth + [3], activation=activation, loss=loss, dtype=dtype,
                     device="cuda", seed=2)
    net.fit(X, y, epochs=2, batch_size=4, lr=0.05)
    assert net.device == "cuda"
    return net, X


def _expected(net, X):
    return net.predict_proba(X) if net.is_classifier else net.predict(X).reshape(len(X), -1)


def _close(got, want, dtype):
    tol = TOL[dtype]
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


def _onnx_run(net, X, output="auto"):
    import onnxruntime as ort
    sess = ort.InferenceSession(net.to_onnx(output=output).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": X.astype(net.dtype)})[0]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("activation", ACTS)
def test_cuda_trained_onnx_matches_every_activation(activation, dtype):
    net, X = _cuda_model(activation, "cross_entropy", dtype, 1 + ACTS.index(activation) % 3)
    _close(_onnx_run(net, X), net.predict_proba(X), dtype)
    _close(_onnx_run(net, X, "logits"), net.decision_function(X), dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("loss", LOSSES)
def test_cuda_trained_onnx_and_torch_match_every_head(loss, dtype):
    import torch
    net, X = _cuda_model("gelu", loss, dtype, 2)
    _close(_onnx_run(net, X), _expected(net, X), dtype)
    with torch.no_grad():
        out = net.to_torch().eval()(torch.from_numpy(X.astype(net.dtype))).numpy()
    _close(out, _expected(net, X), dtype)
    # The weights the exports read are the device's: a CPU copy predicts the same.
    cpu = fastbp.MLP(net.sizes, activation="gelu", loss=loss, dtype=dtype, device="cpu")
    cpu.set_weights(net.get_weights())
    _close(_onnx_run(net, X), _expected(cpu, X), dtype)
