"""Training workflow: validation, history, callbacks, schedules, regularisation, freezing."""
import csv
import math

import numpy as np
import pytest

import fastbp
from fastbp import callbacks as cbs
from fastbp import schedules
from fastbp.kernels import math as km


def blobs(n=120, n_features=4, n_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (n_classes, n_features))
    y = np.arange(n) % n_classes
    X = centers[y] + rng.normal(0, 1, (n, n_features))
    return X, y


def regression(n=100, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, (n, 2))
    return X, np.sin(2 * X[:, 0]) + X[:, 1] ** 2


def net64(sizes=(4, 8, 3), **kw):
    kw.setdefault("dtype", "float64")
    return fastbp.MLP(list(sizes), **kw)


def weights_close(a, b, rtol=1e-12):
    return all(np.allclose(x, y, rtol=rtol, atol=1e-14) for x, y in zip(a, b))


# ------------------------------------------------------------------- validation/history

def test_validation_split_holds_out_last_rows_before_shuffling():
    X, y = blobs()
    net = net64()
    h = net.fit(X, y, epochs=2, validation_split=0.25, shuffle=True)
    n_val = math.ceil(len(X) * 0.25)
    held = net.evaluate(X[-n_val:], y[-n_val:])
    assert h.history["val_loss"][-1] == pytest.approx(held["loss"], rel=1e-12)
    assert h.history["val_accuracy"][-1] == pytest.approx(held["accuracy"])
    assert h.params["samples"] == len(X) - n_val


def test_validation_data_overrides_split_and_history_keys():
    X, y = blobs()
    Xv, yv = blobs(30, seed=5)
    h = net64().fit(X, y, epochs=3, validation_split=0.5, validation_data=(Xv, yv))
    assert h.params["samples"] == len(X)
    assert set(h.history) == {"loss", "accuracy", "val_loss", "val_accuracy", "lr",
                              "samples_per_s"}
    assert all(len(v) == 3 for v in h.history.values())
    Xr, yr = regression()
    hr = net64((2, 8, 1), loss="mse").fit(Xr, yr, epochs=2, validation_split=0.2)
    assert {"r2", "val_r2"} <= set(hr.history)


def test_training_metrics_match_a_separate_pass_when_lr_is_tiny():
    # With a negligible learning rate the running epoch metric equals an evaluation pass.
    X, y = blobs()
    net = net64()
    h = net.fit(X, y, epochs=1, optimizer="sgd", lr=1e-12, shuffle=False)
    ev = net.evaluate(X, y)
    assert h.history["loss"][0] == pytest.approx(ev["loss"], rel=1e-8)
    assert h.history["accuracy"][0] == pytest.approx(ev["accuracy"])
    Xr, yr = regression()
    r = net64((2, 8, 1), loss="mse")
    hr = r.fit(Xr, yr, epochs=1, optimizer="sgd", lr=1e-12)
    assert hr.history["r2"][0] == pytest.approx(r.evaluate(Xr, yr)["r2"], rel=1e-8)


# ------------------------------------------------------------------------- callbacks

def test_early_stopping_stops_and_restores_best_weights():
    X, y = blobs()
    seen = []

    class Spy(cbs.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(self.model.get_weights())

    # Impossible improvement threshold: stops after exactly patience+1 epochs.
    stop = cbs.EarlyStopping(monitor="loss", patience=2, min_delta=1e9,
                             restore_best_weights=True)
    net = net64()
    h = net.fit(X, y, epochs=50, callbacks=[stop, Spy()])
    assert len(h.epoch) == 3 and stop.stopped_epoch == 2 and stop.best_epoch == 0
    assert weights_close(net.get_weights(), seen[0])


def test_early_stopping_requires_a_logged_monitor():
    X, y = blobs()
    with pytest.raises(ValueError, match="val_loss"):
        net64().fit(X, y, epochs=2, callbacks=[cbs.EarlyStopping()])


def test_reduce_lr_on_plateau_lowers_the_rate():
    X, y = blobs()
    cb = cbs.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1, min_delta=1e9)
    h = net64().fit(X, y, epochs=4, lr=0.01, callbacks=[cb])
    # Epoch 0 improves on +inf; each later epoch fails to and halves the next rate.
    assert h.history["lr"] == pytest.approx([0.01, 0.01, 0.005, 0.0025])


def test_keras_style_scheduler_sets_lr_per_epoch():
    X, y = blobs()
    cb = cbs.LearningRateScheduler(lambda epoch, lr: 0.1 / (epoch + 1))
    h = net64().fit(X, y, epochs=3, callbacks=[cb])
    assert h.history["lr"] == pytest.approx([0.1, 0.05, 0.1 / 3])


def test_per_step_schedule_is_applied_inside_the_kernel():
    # SGD without momentum is stateless: three full-batch steps at rates r1, r2, r3 from a
    # schedule must equal three single-step fits at those rates.
    X, y = blobs(60)
    sched = schedules.step_decay(0.2, step_size=1, gamma=0.5)
    a = net64(seed=3)
    a.fit(X, y, epochs=3, batch_size=len(X), optimizer="sgd", shuffle=False,
          callbacks=[cbs.LearningRateScheduler(sched)])
    b = net64(seed=3)
    for lr in (0.2, 0.1, 0.05):
        b.fit(X, y, epochs=1, batch_size=len(X), optimizer="sgd", lr=lr, shuffle=False)
    assert weights_close(a.get_weights(), b.get_weights())


def test_schedules_shapes():
    steps = np.arange(1, 11)
    cos = schedules.cosine_decay(1.0, total_steps=10, warmup_steps=2)(steps)
    assert cos[0] == pytest.approx(0.5) and cos[1] == pytest.approx(1.0)
    assert cos[-1] == pytest.approx(0.0, abs=1e-12) and np.all(np.diff(cos[1:]) <= 0)
    ex = schedules.exponential_decay(1.0, decay_steps=2, decay_rate=0.5, staircase=True)(steps)
    assert ex[:4] == pytest.approx([1, 1, 0.5, 0.5])
    with pytest.raises(ValueError):
        schedules.cosine_decay(1.0, total_steps=5, warmup_steps=5)


def test_model_checkpoint_and_atomic_write(tmp_path, monkeypatch):
    X, y = blobs()
    path = tmp_path / "best.npz"
    net = net64()
    net.fit(X, y, epochs=3, callbacks=[cbs.ModelCheckpoint(path, monitor="loss",
                                                           save_best_only=True)])
    saved = fastbp.load(path)
    assert np.array_equal(saved.predict_proba(X), net.predict_proba(X))
    before = path.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        net.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["best.npz"]   # no temp file left


def test_checkpoint_path_template(tmp_path):
    X, y = blobs()
    net64().fit(X, y, epochs=2, callbacks=[cbs.ModelCheckpoint(
        str(tmp_path / "m-{epoch:02d}.npz"), monitor="loss")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-01.npz", "m-02.npz"]


def test_divergence_raises_naming_epoch_and_keeps_finite_weights():
    X, y = regression()
    net = net64((2, 16, 1), loss="mse")
    with pytest.raises(fastbp.TrainingDivergedError, match=r"epoch \d"):
        net.fit(X * 1e3, y, epochs=20, optimizer="sgd", lr=1e3)
    assert all(np.isfinite(w).all() for w in net.get_weights())
    assert np.isfinite(net.predict(X)).all()


def test_csv_logger(tmp_path):
    X, y = blobs()
    path = tmp_path / "log.csv"
    h = net64().fit(X, y, epochs=3, callbacks=[cbs.CSVLogger(path)])
    rows = list(csv.DictReader(open(path)))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert float(rows[2]["loss"]) == pytest.approx(h.history["loss"][2])


def test_keyboard_interrupt_stops_cleanly_between_chunks():
    X, y = blobs()

    class Interrupt(cbs.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    net = net64()
    h = net.fit(X, y, epochs=10, batch_size=10, callbacks=[Interrupt()])
    assert h.interrupted and len(h.epoch) == 2
    assert net._step == 2 * 12
    assert all(np.isfinite(w).all() for w in net.get_weights())


# ----------------------------------------------------------------- regularisation

def test_dropout_matches_a_numpy_reference_step():
    """One SGD step with dropout equals a NumPy forward/backward using the same hash mask."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(5, 4))
    y = np.array([0, 1, 2, 1, 0])
    rate = 0.4
    net = net64((4, 6, 3), dropout=rate, seed=7)
    W1, b1, W2, b2 = net.get_weights()
    # The fit draws its dropout seed from the model's generator, right after the weights.
    twin = net64((4, 6, 3), dropout=rate, seed=7)
    seed = int(twin._rng.integers(0, 2 ** 31 - 1))
    net.fit(X, y, epochs=1, batch_size=5, optimizer="sgd", lr=0.1, shuffle=False)

    keep = np.array([[km.dropout_keep(seed, 1, 0, i, j, rate) for j in range(6)]
                     for i in range(5)], dtype=float)
    assert 0 < keep.mean() < 1
    z1 = X @ W1 + b1
    a1 = np.maximum(z1, 0) * keep / (1 - rate)
    z2 = a1 @ W2 + b2
    p = np.exp(z2 - z2.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    d2 = (p - np.eye(3)[y]) / 5
    d1 = (d2 @ W2.T) * (z1 > 0) * keep / (1 - rate)
    expect = [W1 - 0.1 * X.T @ d1, b1 - 0.1 * d1.sum(0), W2 - 0.1 * a1.T @ d2,
              b2 - 0.1 * d2.sum(0)]
    assert weights_close(net.get_weights(), expect, rtol=1e-10)


def test_dropout_is_deterministic_and_off_at_predict():
    X, y = blobs()
    a, b = net64(dropout=0.3, seed=1), net64(dropout=0.3, seed=1)
    a.fit(X, y, epochs=2)
    b.fit(X, y, epochs=2)
    assert weights_close(a.get_weights(), b.get_weights(), rtol=0)
    c = net64(dropout=0.0, seed=1)
    c.fit(X, y, epochs=2)
    assert not weights_close(a.get_weights(), c.get_weights())
    assert np.array_equal(a.predict_proba(X), a.predict_proba(X))


def test_clip_norm_bounds_the_sgd_step():
    X, y = blobs()
    net = net64()
    w0 = np.concatenate([w.ravel() for w in net.get_weights()])
    net.fit(X, y, epochs=1, batch_size=len(X), optimizer="sgd", lr=1.0, clip_norm=1e-3)
    w1 = np.concatenate([w.ravel() for w in net.get_weights()])
    assert np.linalg.norm(w1 - w0) == pytest.approx(1e-3, rel=1e-4)


def test_sample_weight_scales_the_loss_and_class_weight_balanced():
    X, y = blobs()
    a, b = net64(seed=2), net64(seed=2)
    a.fit(X, y, epochs=2, optimizer="sgd", lr=0.05, shuffle=False,
          sample_weight=np.full(len(X), 2.0))
    b.fit(X, y, epochs=2, optimizer="sgd", lr=0.1, shuffle=False)
    assert weights_close(a.get_weights(), b.get_weights(), rtol=1e-9)

    from sklearn.utils.class_weight import compute_sample_weight
    yi = np.r_[np.zeros(90, int), np.ones(20, int), np.full(10, 2)]
    c, d = net64(seed=2), net64(seed=2)
    c.fit(X, yi, epochs=2, shuffle=False, class_weight="balanced")
    d.fit(X, yi, epochs=2, shuffle=False, sample_weight=compute_sample_weight("balanced", yi))
    assert weights_close(c.get_weights(), d.get_weights(), rtol=1e-12)
    with pytest.raises(ValueError, match="class_weight"):
        net64().fit(X, yi, class_weight={7: 1.0})


# ------------------------------------------------------------- fine-tuning and state

def test_freeze_keeps_layers_bitwise_and_trains_the_rest():
    X, y = blobs()
    net = net64((4, 8, 8, 3))
    net.fit(X, y, epochs=2)
    before = net.get_weights()
    net.freeze([0, 1])
    net.fit(X, y, epochs=3, optimizer=fastbp.AdamW(1e-2, weight_decay=0.1))
    after = net.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before[:4], after[:4]))
    assert not np.array_equal(before[4], after[4])
    assert list(net.trainable) == [False, False, True]
    net.unfreeze()
    net.freeze(-1)
    assert list(net.trainable) == [True, True, False]
    with pytest.raises(ValueError, match="out of range"):
        net.freeze(3)
    net.freeze([0, 1])
    with pytest.raises(ValueError, match="frozen"):
        net.fit(X, y)


def test_frozen_layer_gradient_is_not_needed_below():
    # Freezing the first layer must give the same update of the others as computing all.
    X, y = blobs()
    a, b = net64((4, 8, 3), seed=4), net64((4, 8, 3), seed=4)
    a.freeze(0)
    a.fit(X, y, epochs=1, optimizer="sgd", lr=0.1, shuffle=False, batch_size=len(X))
    _, grads = b.loss_and_grads(X, y)
    expect = b.get_weights()
    expect[2:] = [w - 0.1 * g for w, g in zip(expect[2:], grads[2:])]
    assert weights_close(a.get_weights(), expect, rtol=1e-10)


def test_partial_fit_and_warm_start_continue_optimizer_state():
    X, y = blobs()
    one = net64(seed=5)
    one.fit(X, y, epochs=2, shuffle=False)
    two = net64(seed=5)
    two.partial_fit(X, y, shuffle=False)
    two.partial_fit(X, y, shuffle=False)
    assert weights_close(one.get_weights(), two.get_weights())
    three = net64(seed=5)
    three.fit(X, y, epochs=1, shuffle=False)
    three.fit(X, y, epochs=1, shuffle=False, warm_start=True)
    assert weights_close(one.get_weights(), three.get_weights())
    cold = net64(seed=5)
    cold.fit(X, y, epochs=1, shuffle=False)
    cold.fit(X, y, epochs=1, shuffle=False)          # fresh Adam state: a different path
    assert not weights_close(one.get_weights(), cold.get_weights())


def test_transform_and_autoencoder():
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(200, 2))
    X = np.c_[Z, Z @ rng.normal(size=(2, 4))]          # 6 features on a 2-D plane
    ae = net64((6, 16, 2, 16, 6), activation=["tanh", "identity", "tanh"], loss="mse")
    h = ae.fit(X, X, epochs=60, batch_size=16, lr=3e-3)
    assert h.history["loss"][-1] < 0.1 * h.history["loss"][0]
    assert ae.transform(X, layer=1).shape == (200, 2)
    assert ae.transform(X).shape == (200, 16)
    z1 = ae.transform(X, layer=0)
    W1, b1 = ae.get_weights()[:2]
    assert np.allclose(z1, np.tanh(X @ W1 + b1))


def test_verbose_modes(capsys):
    X, y = blobs()
    net64().fit(X, y, epochs=2, verbose=2)
    err = capsys.readouterr().err
    assert "Epoch 1/2" in err and "Epoch 2/2" in err and "loss" in err
    net64().fit(X, y, epochs=2, verbose=1)
    assert "sample" in capsys.readouterr().err            # the tqdm bar
    net64().fit(X, y, epochs=2, verbose="auto")            # stderr is no terminal: silent
    assert capsys.readouterr().err == ""
    with pytest.raises(ValueError, match="verbose"):
        net64().fit(X, y, verbose=3)


def test_plot_history_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    X, y = blobs()
    h = net64().fit(X, y, epochs=3, validation_split=0.2)
    out = fastbp.plot_history(h, tmp_path / "h.png")
    assert open(out, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError):
        fastbp.plot_history({}, tmp_path / "x.png")
