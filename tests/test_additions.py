"""SiLU, Adagrad and the Poisson loss against PyTorch: each was added through the
registries alone (kernels/math.py, fastbp/registry.py, fastbp/optimizers.py), so these
tests check that everything else (the model, CLI, scikit-learn wrappers, exporters)
picked them up from the tables."""
import numpy as np
import pytest
import torch

import fastbp
from fastbp import cli
from fastbp.errors import DataError
from fastbp.sklearn import MLPRegressor


def _torch_net(net):
    """The model's Sequential, float64, logits out (no head)."""
    return net.to_torch(output="logits").double()


def _grads(seq):
    """The gradients after backward, in get_weights() layout."""
    return [g for m in seq if isinstance(m, torch.nn.Linear)
            for g in (m.weight.grad.numpy().T, m.bias.grad.numpy())]


def _problem(n=40, n_in=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_in))
    counts = rng.poisson(np.exp(0.3 * X[:, :2]), size=(n, 2)).astype(np.float64)
    return X, counts


# --------------------------------------------------------------------------- SiLU
def test_silu_forward_and_gradients_match_torch():
    X, _ = _problem()
    y = np.arange(len(X)) % 3
    net = fastbp.MLP([5, 7, 6, 3], activation="silu", dtype="float64", seed=1)
    seq = _torch_net(net)
    assert any(isinstance(m, torch.nn.SiLU) for m in seq)
    logits = seq(torch.from_numpy(X))
    np.testing.assert_allclose(net.decision_function(X), logits.detach().numpy(),
                               rtol=1e-12, atol=1e-12)
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y))
    loss.backward()
    got_loss, got = net.loss_and_grads(X, y)
    assert got_loss == pytest.approx(loss.item(), rel=1e-12)
    for g, w in zip(got, _grads(seq)):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-13)


def test_silu_initialises_as_the_relu_family():
    assert fastbp.registry.activation("silu").init == "he"


# ------------------------------------------------------------------------- Adagrad
@pytest.mark.parametrize("kw", [{}, dict(lr_decay=0.05, weight_decay=0.01,
                                         initial_accumulator_value=0.2, eps=1e-8)])
def test_adagrad_trajectory_matches_torch_to_1e_12(kw):
    X, _ = _problem(n=48)
    y = np.arange(len(X)) % 3
    net = fastbp.MLP([5, 8, 3], activation="tanh", dtype="float64", seed=2)
    seq = _torch_net(net)
    opt = torch.optim.Adagrad(seq.parameters(), lr=0.05, **kw)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    batch, epochs = 16, 5
    for _ in range(epochs):
        for b0 in range(0, len(X), batch):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(seq(Xt[b0:b0 + batch]), yt[b0:b0 + batch]) \
                .backward()
            opt.step()
    hist = net.fit(X, y, epochs=epochs, batch_size=batch, shuffle=False,
                   optimizer=fastbp.Adagrad(lr=0.05, **kw))
    want = [g for m in seq if isinstance(m, torch.nn.Linear)
            for g in (m.weight.detach().numpy().T, m.bias.detach().numpy())]
    start = fastbp.MLP([5, 8, 3], activation="tanh", dtype="float64", seed=2).get_weights()
    moved = max(np.abs(w - s).max() for w, s in zip(want, start))
    assert moved > 1e-2, "torch hardly moved: the comparison would prove nothing"
    for g, w in zip(net.get_weights(), want):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-12)
    assert len(hist.history["loss"]) == epochs


def test_adagrad_state_names_and_validation():
    opt = fastbp.Adagrad(initial_accumulator_value=0.5)
    assert opt.slot_names == ("sum",)
    state = opt.init_state(4, np.float64)
    assert state.shape == (1, 4) and np.all(state == 0.5)
    with pytest.raises(fastbp.ConfigError):
        fastbp.Adagrad(lr_decay=-1)
    with pytest.raises(fastbp.ConfigError):
        fastbp.Adagrad(eps=0)
    net = fastbp.MLP([2, 3, 2], seed=0)
    net.fit(np.zeros((4, 2)), np.array([0, 1, 0, 1]), epochs=1, optimizer="adagrad")
    assert type(net.optimizer).__name__ == "Adagrad"


# ------------------------------------------------------------------------- Poisson
def test_poisson_loss_and_gradients_match_torch():
    X, counts = _problem()
    net = fastbp.MLP([5, 6, 2], activation="silu", loss="poisson", dtype="float64", seed=3)
    seq = _torch_net(net)
    logits = seq(torch.from_numpy(X))
    loss = torch.nn.PoissonNLLLoss(log_input=True)(logits, torch.from_numpy(counts))
    loss.backward()
    got_loss, got = net.loss_and_grads(X, counts)
    assert got_loss == pytest.approx(loss.item(), rel=1e-12)
    for g, w in zip(got, _grads(seq)):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-13)
    # The outputs are exp(logits): rates, as torch's exp(input) is the mean.
    np.testing.assert_allclose(net.predict(X), np.exp(logits.detach().numpy()), rtol=1e-12)


def test_poisson_learns_rates_and_reports_metrics_on_them():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 3))
    rate = np.exp(0.5 * X[:, 0] - 0.3 * X[:, 1])
    y = rng.poisson(rate).astype(np.float64)
    net = fastbp.MLP([3, 16, 1], loss="poisson", dtype="float64", seed=0)
    net.fit(X, y, epochs=40, batch_size=64, optimizer=fastbp.Adam(lr=0.01))
    pred = net.predict(X)
    assert np.all(pred > 0)
    assert np.corrcoef(pred, rate)[0, 1] > 0.95
    res = net.evaluate(X, y)
    r2 = 1 - ((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    assert res["r2"] == pytest.approx(r2, rel=1e-9)          # on exp(z), not on z
    assert res["mae"] == pytest.approx(np.abs(pred - y).mean(), rel=1e-9)


def test_poisson_refuses_negative_targets_and_keeps_the_model():
    net = fastbp.MLP([2, 3, 1], loss="poisson", seed=0)
    before = net.get_weights()
    with pytest.raises(DataError, match="non-negative"):
        net.fit(np.zeros((3, 2)), np.array([1.0, -1.0, 2.0]), epochs=1)
    for a, b in zip(before, net.get_weights()):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------- every other part, from the tables
def test_poisson_silu_adagrad_through_the_cli(tmp_path, capsys):
    X, counts = _problem(n=60)
    path = tmp_path / "counts.csv"
    header = ",".join([f"x{i}" for i in range(5)] + ["y"])
    np.savetxt(path, np.column_stack([X, counts[:, 0]]), delimiter=",", header=header,
               comments="")
    model = tmp_path / "m.npz"
    assert cli.main(["train", str(path), "--target", "y", "--loss", "poisson",
                     "--activation", "silu", "--optimizer", "adagrad", "--epochs", "3",
                     "--out", str(model)]) == 0
    net = fastbp.load(model)
    assert (net.loss, net.activations) == ("poisson", ["silu"])
    assert np.all(net.predict(X) > 0)


def test_poisson_silu_adagrad_in_the_sklearn_wrapper():
    X, counts = _problem(n=80)
    est = MLPRegressor(hidden_layer_sizes=(8,), activation="silu", loss="poisson",
                       optimizer="adagrad", max_iter=5, random_state=0).fit(X, counts[:, 0])
    assert est.model_.loss == "poisson"
    assert np.all(est.predict(X) > 0)


@pytest.mark.parametrize("fmt", ["onnx", "safetensors", "torch"])
def test_poisson_silu_models_export(fmt, tmp_path):
    X, counts = _problem()
    net = fastbp.MLP([5, 6, 2], activation="silu", loss="poisson", dtype="float64", seed=4)
    want = net.predict(X)
    if fmt == "onnx":
        import onnxruntime as ort
        net.to_onnx(tmp_path / "m.onnx")
        sess = ort.InferenceSession(str(tmp_path / "m.onnx"))
        got = sess.run(None, {"input": X})[0]
    elif fmt == "safetensors":
        net.save(tmp_path / "m.safetensors")
        got = fastbp.load(tmp_path / "m.safetensors").predict(X)
    else:
        seq = net.to_torch().double()
        got = seq(torch.from_numpy(X)).detach().numpy()
        back = fastbp.from_torch(seq)
        assert back.loss == "poisson"
        np.testing.assert_array_equal(back.predict(X), want)
    np.testing.assert_allclose(got, want, rtol=1e-12)
