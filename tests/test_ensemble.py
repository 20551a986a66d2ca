"""fastbp.Ensemble: each member against the MLP it stands for, fitted alone."""
import copy
import pickle
import warnings

import numpy as np
import pytest

import fastbp
from fastbp.callbacks import Callback, EarlyStopping
from fastbp.errors import ConfigError, DataError, ModelFileError
from fastbp.kernels.shuffle import permutation
from fastbp.optimizers import OPTIMIZERS
from fastbp.registry import LOSSES
from targets import targets_for

N, N_IN, K = 90, 5, 3
SIZES = [N_IN, 7, 6, 3]
TOL = {"float64": 1e-12, "float32": 1e-5}


def _data(loss, n_out=3, n=N, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, N_IN)), targets_for(loss, rng, n, n_out)


def _bags(n=N, k=K, seed=1):
    """Bootstrap-like weights: counts per row, some rows left out of each member."""
    rng = np.random.default_rng(seed)
    return np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(k)]) \
        .astype(np.float64)


def _assert_member_equals(member, alone, rtol):
    for i, (a, b) in enumerate(zip(alone.get_weights(), member.get_weights())):
        scale = np.maximum(np.abs(a), 1e-3)
        rel = float(np.max(np.abs(a - b) / scale))
        assert rel <= rtol, f"array {i}: relative difference {rel}"


def _check_against_alone(sizes, loss, dtype, optimizer, lrs, decays, fit, sample_weight=None,
                         act="tanh", dropout=0.0, seed=2):
    X, y = _data(loss, sizes[-1])
    ens = fastbp.Ensemble(sizes, n_models=len(lrs), activation=act, loss=loss, dtype=dtype,
                          seed=seed, device="cpu", dropout=dropout)
    hist = ens.fit(X, y, optimizer=optimizer, lr=lrs, weight_decay=decays,
                   sample_weight=sample_weight, shuffle=False, **fit)
    for k in range(len(lrs)):
        cfg = fastbp.optimizers.get_optimizer(optimizer).get_config()
        cfg.update(lr=lrs[k], weight_decay=decays[k])
        opt = OPTIMIZERS[optimizer](**cfg)
        alone = fastbp.MLP(sizes, activation=act, loss=loss, dtype=dtype, seed=seed + k,
                           device="cpu", dropout=dropout)
        w = None if sample_weight is None else np.asarray(sample_weight)
        w = w if w is None or w.ndim == 1 else w[k]
        h = alone.fit(X, y, optimizer=opt, sample_weight=w, shuffle=False, **fit)
        _assert_member_equals(ens[k], alone, TOL[dtype])
        np.testing.assert_allclose(hist.history["loss"][:, k], h.history["loss"],
                                   rtol=1e-6 if dtype == "float32" else 1e-10)
    return ens, hist


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_members_equal_single_fits_every_optimizer(optimizer, dtype):
    _check_against_alone(SIZES, "cross_entropy", dtype, optimizer, [1e-3, 3e-3, 1e-2],
                         [0.0, 1e-2, 1e-1], dict(epochs=3, batch_size=16),
                         sample_weight=_bags())


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_members_equal_single_fits_every_loss(loss, dtype):
    _check_against_alone([N_IN, 6, 2], loss, dtype, "adam", [1e-3, 2e-3, 5e-3, 1e-2],
                         [0.0, 0.0, 1e-3, 1e-2], dict(epochs=2, batch_size=13),
                         sample_weight=_bags(k=4))


def test_members_equal_single_fits_with_dropout_clipping_and_validation():
    X, y = _data("cross_entropy")
    _check_against_alone(SIZES, "cross_entropy", "float64", "sgd", [0.05, 0.1], [0.0, 0.01],
                         dict(epochs=2, batch_size=20, clip_norm=0.5, validation_split=0.2),
                         sample_weight=np.linspace(0.5, 2.0, N), dropout=0.3, act="relu")


def test_one_member_and_more_members_than_threads_agree():
    """Members run alone on a thread or in turn through the engine: same numbers."""
    X, y = _data("mse", 2)
    kw = dict(loss="mse", dtype="float64", seed=5, device="cpu")
    one = fastbp.Ensemble([N_IN, 6, 2], n_models=1, **kw)
    many = fastbp.Ensemble([N_IN, 6, 2], n_models=6, **kw)
    for ens in (one, many):
        ens.fit(X, y, epochs=2, batch_size=8, shuffle=True)
    # The shared permutation comes from the ensemble's generator, the same for both.
    for a, b in zip(one[0].get_weights(), many[0].get_weights()):
        np.testing.assert_array_equal(a, b)


def test_shuffle_is_one_permutation_per_epoch_from_the_ensemble_generator():
    X, y = _data("cross_entropy")
    ens = fastbp.Ensemble(SIZES, n_models=2, dtype="float64", seed=7, device="cpu")
    ens.fit(X, y, epochs=1, batch_size=16, shuffle=True)
    perm = permutation(N, int(np.random.default_rng(7).integers(0, 2 ** 63)))
    for k in range(2):
        alone = fastbp.MLP(SIZES, dtype="float64", seed=7 + k, device="cpu")
        alone.fit(X[perm], y[perm], epochs=1, batch_size=16, shuffle=False)
        _assert_member_equals(ens[k], alone, 1e-12)


def test_history_is_per_member_and_members_are_models():
    X, y = _data("cross_entropy")
    ens = fastbp.Ensemble(SIZES, n_models=K, seed=0, device="cpu")
    hist = ens.fit(X, y, epochs=4, batch_size=32, validation_data=(X[:20], y[:20]))
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        assert hist.history[key].shape == (4, K), key
    assert hist.history["samples_per_s"].shape == (4,)
    assert len(ens) == K and [m.seed for m in ens] == [0, 1, 2]
    assert isinstance(ens[1], fastbp.MLP) and ens[-1] is ens[K - 1]
    with pytest.raises(IndexError):
        ens[K]
    assert ens[1].history.history["loss"] == list(hist.history["loss"][:, 1])


def test_per_member_early_stopping_keeps_a_stopped_member_as_it_stopped():
    X, y = _data("cross_entropy")
    lrs = [1e-2, 1e-12, 1e-2]     # member 1 does not improve: it stops after 2 epochs
    ens = fastbp.Ensemble(SIZES, n_models=3, dtype="float64", seed=0, device="cpu")
    hist = ens.fit(X, y, epochs=6, batch_size=16, lr=lrs, shuffle=False,
                   callbacks=[EarlyStopping(monitor="loss", patience=1, min_delta=1e-3)])
    loss = hist.history["loss"]
    assert loss.shape == (6, 3)
    assert np.isfinite(loss[:, 0]).all() and np.isfinite(loss[:, 2]).all()
    stop = int(hist.stopped_epoch[1])
    assert 0 < stop < 5 and np.isnan(loss[stop + 1:, 1]).all()
    alone = fastbp.MLP(SIZES, dtype="float64", seed=1, device="cpu")
    alone.fit(X, y, epochs=stop + 1, batch_size=16, lr=lrs[1], shuffle=False)
    _assert_member_equals(ens[1], alone, 1e-12)


def test_restore_best_weights_per_member():
    X, y = _data("mse", 2)
    seen = []

    class Spy(Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(np.array(logs["val_loss"]))

    ens = fastbp.Ensemble([N_IN, 6, 2], n_models=2, loss="mse", dtype="float64",
                          device="cpu")
    # A rate this large makes the validation loss go up and down.
    hist = ens.fit(X, y, epochs=8, batch_size=4, optimizer="sgd", lr=[0.3, 0.01],
                   validation_data=(X[:30], y[:30]),
                   callbacks=[Spy(), EarlyStopping(patience=2, restore_best_weights=True)])
    assert len(seen) == len(hist.history["loss"]) and seen[0].shape == (2,)
    assert hist.stopped_epoch[0] >= 0
    for k in range(2):
        if hist.stopped_epoch[k] >= 0:
            best = np.nanmin(hist.history["val_loss"][:, k])
            assert ens[k].evaluate(X[:30], y[:30])["loss"] == pytest.approx(best, rel=1e-12)


def test_predict_shapes_and_reductions():
    X, y = _data("cross_entropy")
    ens = fastbp.Ensemble(SIZES, n_models=K, dtype="float64", device="cpu")
    ens.fit(X, y, epochs=2, batch_size=16)
    proba = ens.predict_proba(X)
    assert proba.shape == (K, N, 3)
    np.testing.assert_allclose(ens.predict_proba(X, reduce="mean"), proba.mean(0))
    np.testing.assert_allclose(ens.predict_proba(X, reduce="median"), np.median(proba, 0))
    np.testing.assert_allclose(ens.predict_proba(X, reduce="std"), proba.std(0))
    assert ens.predict(X).shape == (K, N)
    np.testing.assert_array_equal(ens.predict(X, reduce="mean"), proba.mean(0).argmax(1))
    for k in range(K):
        np.testing.assert_array_equal(ens.predict(X)[k], ens[k].predict(X))
    Xr, yr = _data("mse", 1)
    reg = fastbp.Ensemble([N_IN, 4, 1], n_models=4, loss="mse", device="cpu")
    reg.fit(Xr, yr, epochs=1)
    assert reg.predict(Xr).shape == (4, N)
    assert reg.predict(Xr, reduce="std").shape == (N,)
    with pytest.raises(ConfigError, match="reduce"):
        ens.predict(X, reduce="max")
    with pytest.raises(ConfigError, match="std"):
        ens.predict(X, reduce="std")


def _state(ens):
    return ([w.copy() for m in ens for w in m.get_weights()],
            [copy.deepcopy(m._rng.bit_generator.state) for m in ens],
            copy.deepcopy(ens._rng.bit_generator.state), ens.history)


def _same_state(a, b):
    assert all(np.array_equal(x, y) for x, y in zip(a[0], b[0]))
    assert a[1] == b[1] and a[2] == b[2] and a[3] is b[3]


@pytest.mark.parametrize("bad, match", [
    (dict(lr=[1e-3, 1e-3]), "lr must be a number or 3 numbers"),
    (dict(weight_decay=np.zeros(4)), "weight_decay must be"),
    (dict(lr=[1e-3, -1.0, 1e-3]), "lr must be a positive"),
    (dict(sample_weight=np.ones((2, N))), r"\(n_models, n\)"),
    (dict(sample_weight=np.vstack([np.ones(N), np.zeros(N), np.ones(N)])),
     "leaves member 1 no rows"),
    (dict(sample_weight=-np.ones((3, N))), "non-negative"),
    (dict(optimizer="sgdx"), "unknown optimizer"),
    (dict(batch_size=0), "batch_size"),
])
def test_bad_input_is_rejected_and_leaves_the_ensemble_as_it_was(bad, match):
    X, y = _data("cross_entropy")
    ens = fastbp.Ensemble(SIZES, n_models=3, device="cpu")
    ens.fit(X, y, epochs=1, batch_size=16)
    before = _state(ens)
    with pytest.raises((ConfigError, DataError), match=match):
        ens.fit(X, y, **dict(dict(epochs=1, batch_size=16), **bad))
    _same_state(before, _state(ens))


def test_zero_weight_validation_rows_are_rejected():
    X, y = _data("cross_entropy")
    ens = fastbp.Ensemble(SIZES, n_models=2, device="cpu")
    w = np.ones((2, N))
    w[1, -9:] = 0
    with pytest.raises(DataError, match="validation"):
        ens.fit(X, y, epochs=1, sample_weight=w, validation_split=0.1)


def test_a_diverging_member_stops_alone():
    X, y = _data("mse", 2)
    X = X * 100
    ens = fastbp.Ensemble([N_IN, 6, 2], n_models=2, loss="mse", dtype="float64",
                          device="cpu")
    with pytest.warns(RuntimeWarning, match=r"member\(s\) \[0\]"):
        hist = ens.fit(X, y, epochs=3, batch_size=8, optimizer="sgd", lr=[1e3, 1e-5])
    assert hist.diverged.tolist() == [True, False]
    assert np.isfinite(ens[0].get_weights()[0]).all()
    assert np.isfinite(hist.history["loss"][:, 1]).all()


def test_save_load_and_pickle(tmp_path):
    X, y = _data("cross_entropy")
    ens = fastbp.Ensemble(SIZES, n_models=K, dtype="float64", seed=3, device="cpu")
    ens.fit(X, y, epochs=2, batch_size=16)
    ens[1].freeze(0)
    expect = ens.predict_proba(X)
    path = tmp_path / "ens.npz"
    ens.save(path, extra={"note": "bags"})
    for back in (fastbp.load(path), fastbp.Ensemble.load(path),
                 pickle.loads(pickle.dumps(ens))):
        assert isinstance(back, fastbp.Ensemble) and len(back) == K
        np.testing.assert_array_equal(back.predict_proba(X), expect)
        assert back[1].trainable.tolist() == [False, True, True]
    assert fastbp.persistence.read(path).extra == {"note": "bags"}
    with pytest.raises(ModelFileError, match="ensemble"):
        fastbp.model.load(path)
    ens[0].save(tmp_path / "one.npz")
    assert isinstance(fastbp.load(tmp_path / "one.npz"), fastbp.MLP)
    with pytest.raises(ConfigError, match="one MLP"):
        fastbp.Ensemble.load(tmp_path / "one.npz")
    # The pickled ensemble trains on as the original does.
    twin = pickle.loads(pickle.dumps(ens))
    for e in (ens, twin):
        e.fit(X, y, epochs=1, batch_size=16)
    np.testing.assert_array_equal(twin.predict_proba(X), ens.predict_proba(X))


def test_bad_constructor_arguments():
    with pytest.raises(ConfigError, match="n_models"):
        fastbp.Ensemble(SIZES, n_models=0)
    with pytest.raises(ConfigError, match="seed"):
        fastbp.Ensemble(SIZES, n_models=2, seed=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert repr(fastbp.Ensemble(SIZES, n_models=2, device="cpu")).startswith("Ensemble(")
