"""Reliability: out-of-bounds checks, thread-count independence, Ctrl-C, divergence and
model files that are never half-written nor silently misread."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile

import numpy as np
import pytest

import fastbp
from fastbp import ModelFileError, persistence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_python(code, env_extra=None, timeout=600):
    env = dict(os.environ)
    env.update(env_extra or {})
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------ bounds checking

BOUNDSCHECK_SCRIPT = """
import numpy as np
import numba
import fastbp

assert numba.config.BOUNDSCHECK, "NUMBA_BOUNDSCHECK did not take effect"
rng = np.random.default_rng(0)
X = rng.normal(size=(23, 5))                     # 23 rows: partial last batches
ids = np.arange(23) % 3
runs = 0
for dtype in ("float32", "float64"):
    cases = [
        dict(activation="relu", loss="cross_entropy", optimizer="adam", batch_size=8,
             dropout=0.3),
        dict(activation=["tanh", "gelu"], loss="binary_cross_entropy", optimizer="sgd",
             batch_size=5, freeze=0, momentum=True),
        dict(activation="elu", loss="mse", optimizer="rmsprop", batch_size=100,
             freeze=-1, clip_norm=1.0),
        dict(activation="sigmoid", loss="huber", optimizer="adamw", batch_size=1),
        dict(activation="leaky_relu", loss="mae", optimizer="sgd", batch_size=23,
             dropout=[0.5, 0.1]),
    ]
    for c in cases:
        loss = c["loss"]
        n_out = 3 if loss == "cross_entropy" else 2
        net = fastbp.MLP([5, 7, 4, n_out], activation=c["activation"], loss=loss,
                         dtype=dtype, dropout=c.get("dropout", 0.0), device="cpu", seed=1)
        if "freeze" in c:
            net.freeze(c["freeze"])
        if loss == "cross_entropy":
            y = ids
        elif loss == "binary_cross_entropy":
            y = np.stack([ids % 2, ids == 1], axis=1).astype(float)
        else:
            y = rng.normal(size=(23, n_out))
        opt = fastbp.SGD(lr=0.05, momentum=0.9, nesterov=True) if c.get("momentum") \\
            else c["optimizer"]
        h = net.fit(X, y, epochs=2, batch_size=c["batch_size"], optimizer=opt,
                    clip_norm=c.get("clip_norm"), validation_split=0.2,
                    sample_weight=np.linspace(0.5, 1.5, 23))
        net.partial_fit(X[:3], y[:3], batch_size=2)
        net.evaluate(X, y)
        out = net.predict(X)
        if net.is_classifier:
            net.predict_proba(X[:1])
        net.transform(X, layer=0)
        net.decision_function(X)
        loss_value, grads = net.loss_and_grads(X, y)
        assert np.isfinite(loss_value), c
        fn, args = net.compiled_predictor(max_rows=4)
        res = np.empty((23, n_out), dtype=net.dtype)
        fn(*args, np.ascontiguousarray(X, dtype=net.dtype), res)
        runs += 1
print("boundscheck ok", runs)
"""


def test_kernels_stay_in_bounds_under_numba_boundscheck(tmp_path):
    """Every kernel path on tiny models, compiled with bounds checks (a private cache, so
    nothing compiled without them is reused): an out-of-bounds index raises IndexError."""
    t0 = time.perf_counter()
    res = _run_python(BOUNDSCHECK_SCRIPT, {"NUMBA_BOUNDSCHECK": "1",
                                           "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")})
    elapsed = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr[-4000:]
    assert "boundscheck ok 10" in res.stdout, (res.stdout, res.stderr[-2000:])
    print(f"boundscheck subprocess: {elapsed:.1f} s")


# ------------------------------------------------------------------ thread count

THREADS_SCRIPT = """
import numpy as np
import fastbp

rng = np.random.default_rng(0)
X = rng.normal(size=(300, 300))
y = (X[:, :3].sum(1) > 0).astype(int) + (X[:, 3] > 1)
Xs = X[:, :6].copy()


def run(threads):
    fastbp.set_num_threads(threads)
    out = []
    # a wide first layer and narrow ones, dropout, clipping; batches split over threads
    wide = fastbp.MLP([300, 256, 8, 3], dtype="float64", dropout=0.2, device="cpu", seed=0)
    wide.fit(X, y, epochs=2, batch_size=64, optimizer="adam", lr=1e-3, clip_norm=5.0)
    out += wide.get_weights() + [wide.predict_proba(X)]
    # a frozen middle layer: two threads split the weight gradients of the others
    frozen = fastbp.MLP([300, 256, 8, 3], dtype="float64", device="cpu", seed=1)
    frozen.freeze(1)
    frozen.fit(X, y, epochs=2, batch_size=64, optimizer="sgd", lr=0.05)
    out += frozen.get_weights()
    narrow = fastbp.MLP([6, 16, 16, 1], activation="tanh", loss="mse", dtype="float64",
                        device="cpu", seed=0)
    narrow.fit(Xs, y.astype(float), epochs=3, batch_size=40, optimizer="sgd", lr=0.05)
    loss, grads = narrow.loss_and_grads(Xs, y.astype(float))
    out += narrow.get_weights() + grads + [np.array([loss]), narrow.predict(Xs)]
    out.append(np.array([wide.evaluate(X, y)["loss"]]))
    return out


one, two = run(1), run(2)
worst = 0.0
for a, b in zip(one, two):
    scale = max(np.abs(a).max(), 1e-12)
    worst = max(worst, float(np.abs(a - b).max() / scale))
print("max relative difference", worst)
assert worst < 1e-5, worst
"""


def test_results_do_not_depend_on_the_thread_count():
    res = _run_python(THREADS_SCRIPT, {})
    assert res.returncode == 0, res.stdout + res.stderr[-4000:]


# ------------------------------------------------------------------ Ctrl-C

SIGINT_SCRIPT = """
import signal
import sys

# A process started in the background by a non-interactive shell inherits SIGINT ignored,
# and Python then installs no handler of its own: restore the usual one.
signal.signal(signal.SIGINT, signal.default_int_handler)

import numpy as np
import fastbp
from fastbp.callbacks import Callback

path = sys.argv[1]


class Ready(Callback):
    # Mid-fit, in the third epoch: everything a fit compiles (lazily, at its first use)
    # is compiled by then, so the signal lands in training, not in a compiler.
    epoch = 0
    printed = False

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_chunk_end(self, chunk, logs=None):
        if self.epoch == 2 and not self.printed:
            self.printed = True
            print("READY", flush=True)


rng = np.random.default_rng(0)
X = rng.normal(size=(2000, 20))
y = (X[:, 0] > 0).astype(int)
net = fastbp.MLP([20, 64, 2], dtype="float64", device="cpu", seed=0)
h = net.fit(X, y, epochs=100000, batch_size=16, callbacks=[Ready()])
assert h.interrupted, "fit was not interrupted"
assert all(np.isfinite(w).all() for w in net.get_weights())
assert net._step > 0 and net._opt_state is not None
net.save(path)
print("SAVED", net._step, flush=True)
"""


def test_sigint_mid_fit_exits_cleanly_with_finite_weights_saved(tmp_path):
    path = tmp_path / "interrupted.npz"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", SIGINT_SCRIPT, str(path)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "READY", line + proc.stderr.read()[-3000:]
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    assert "SAVED" in out
    loaded = fastbp.load(path)
    assert all(np.isfinite(w).all() for w in loaded.get_weights())
    assert np.isfinite(loaded.predict_proba(np.zeros((2, 20)))).all()


# ------------------------------------------------------------------ divergence

def test_divergence_in_a_later_epoch_keeps_finite_weights_and_no_history():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 3))
    y = X @ np.array([1.0, -2.0, 0.5])
    net = fastbp.MLP([3, 8, 1], loss="mse", dtype="float64", device="cpu", seed=0)
    net.fit(X, y, epochs=2, optimizer="sgd", lr=0.01)
    good_history = net.history
    with pytest.raises(fastbp.TrainingDivergedError, match=r"epoch \d+.*last finite weights"):
        net.fit(X * 1e4, y, epochs=30, optimizer="sgd", lr=50.0)
    assert all(np.isfinite(w).all() for w in net.get_weights())
    assert net.history is good_history       # the failed fit recorded no history
    # the kept weights may be huge but are usable: a fresh fit from them starts cleanly
    h = net.reset().fit(X, y, epochs=3, optimizer="adam", lr=1e-3)
    assert np.isfinite(h.history["loss"]).all()


# ------------------------------------------------------------------ model files

@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 4))
    net = fastbp.MLP([4, 6, 3], dtype="float64", device="cpu", seed=2)
    net.fit(X, np.arange(30) % 3, epochs=2)
    path = tmp_path_factory.mktemp("model") / "m.npz"
    net.save(path)
    return net, path, path.read_bytes()


def _write(tmp_path, data, name="x.npz"):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def _rewrite(saved_path, tmp_path, edit_header=None, edit_arrays=None):
    """A copy of the saved model with its header/arrays edited (written like save does)."""
    with np.load(saved_path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(str(arrays["header"]))
    if edit_header:
        edit_header(header)
    arrays["header"] = np.array(json.dumps(header))
    if edit_arrays:
        edit_arrays(arrays)
    p = tmp_path / "edited.npz"
    np.savez(p, **arrays)
    return p


def test_model_file_has_a_version_and_no_pickle(saved):
    _, path, _ = saved
    with zipfile.ZipFile(path) as zf:
        assert all(n.endswith(".npy") for n in zf.namelist())
    with np.load(path, allow_pickle=False) as z:      # would raise on any pickled member
        assert all(z[k].dtype.kind != "O" for k in z.files)
        header = json.loads(str(z["header"]))
    assert header["format"] == "fastbp-mlp"
    assert header["format_version"] == persistence.FORMAT_VERSION


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.9, 0.99])
def test_truncated_file_raises_model_file_error(saved, tmp_path, fraction):
    _, _, data = saved
    p = _write(tmp_path, data[:int(len(data) * fraction)])
    with pytest.raises(ModelFileError, match="not a fastbp model file|truncated or corrupted"):
        fastbp.load(p)


def test_corrupted_weight_bytes_raise_model_file_error(saved, tmp_path):
    net, _, data = saved
    w0 = net.get_weights()[0].tobytes()
    at = data.find(w0)
    assert at > 0
    bad = bytearray(data)
    bad[at + 5] ^= 0xFF
    with pytest.raises(ModelFileError, match="truncated or corrupted"):
        fastbp.load(_write(tmp_path, bytes(bad)))


def test_any_corrupted_byte_loads_the_same_model_or_raises_model_file_error(saved, tmp_path):
    net, _, data = saved
    X = np.random.default_rng(1).normal(size=(5, 4))
    expected = net.predict_proba(X)
    for at in np.linspace(0, len(data) - 1, 41).astype(int):
        bad = bytearray(data)
        bad[at] ^= 0x5A
        try:
            loaded = fastbp.load(_write(tmp_path, bytes(bad)))
        except ModelFileError:
            continue
        np.testing.assert_array_equal(loaded.predict_proba(X), expected)


@pytest.mark.parametrize("kind, match", [
    ("npy", "not an .npz archive"),
    ("pickle", "not an .npz archive"),
    ("text", "not an .npz archive"),
    ("zip", "no fastbp header"),
    ("foreign npz", "no fastbp header"),
    ("other format", "is not a fastbp model file"),
    ("header not json", "no fastbp header"),
])
def test_foreign_files_raise_model_file_error(tmp_path, kind, match):
    p = tmp_path / "foreign.npz"
    if kind == "npy":
        with open(p, "wb") as f:
            np.save(f, np.arange(4))
    elif kind == "pickle":
        import pickle
        p.write_bytes(pickle.dumps({"weights": [1, 2]}))
    elif kind == "text":
        p.write_text("sizes: [4, 3]\n")
    elif kind == "zip":
        with zipfile.ZipFile(p, "w") as zf:
            zf.writestr("readme.txt", "hello")
    elif kind == "foreign npz":
        np.savez(p, a=np.arange(3))
    elif kind == "other format":
        np.savez(p, header=np.array(json.dumps({"format": "keras", "format_version": 1})))
    else:
        np.savez(p, header=np.array("{not json"))
    with pytest.raises(ModelFileError, match=match):
        fastbp.load(p)


@pytest.mark.parametrize("edit, match", [
    (dict(format_version=2), r"format version 2; this fastbp reads up to 1\. Upgrade"),
    (dict(format_version=999), r"format version 999"),
    (dict(format_version="1"), r"invalid format version '1'"),
    (dict(format_version=0), r"invalid format version 0"),
    (dict(config=None), r"no model config"),
    (dict(config={"sizes": [4, 6, 3], "loss": "hinge"}), r"inconsistent: unknown loss"),
    (dict(config={"sizes": [4, 6, 3], "colour": "red"}), r"inconsistent"),
    (dict(config={"sizes": [4, 7, 3]}), r"inconsistent: W1 has shape \(4, 6\), the config's "
                                        r"sizes \[4, 7, 3\] need \(4, 7\)"),
    (dict(trainable=[True]), r"inconsistent: trainable flags"),
])
def test_future_or_inconsistent_headers_raise_model_file_error(saved, tmp_path, edit, match):
    p = _rewrite(saved[1], tmp_path, edit_header=lambda h: h.update(edit))
    with pytest.raises(ModelFileError, match=match):
        fastbp.load(p)


@pytest.mark.parametrize("edit, match", [
    (lambda a: a.pop("w3"), r"missing weight arrays \['w3'\]"),
    (lambda a: a.update(w0=a["w0"][:2]), r"W1 has shape \(2, 6\)"),
    (lambda a: a.update(w1=np.full(6, np.nan)), r"b1 contains NaN"),
    (lambda a: a.update(w2=a["w2"].astype("U8")), r"W2 has dtype <U"),
])
def test_bad_weight_arrays_raise_model_file_error(saved, tmp_path, edit, match):
    p = _rewrite(saved[1], tmp_path, edit_arrays=edit)
    with pytest.raises(ModelFileError, match=match):
        fastbp.load(p)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model file"):
        fastbp.load(tmp_path / "nope.npz")


@pytest.mark.parametrize("failure", ["oserror", "keyboard_interrupt", "replace_fails"])
def test_interrupted_save_leaves_the_previous_file_intact(saved, tmp_path, monkeypatch,
                                                          failure):
    net, _, data = saved
    path = _write(tmp_path, data, "model.npz")
    other = fastbp.MLP([4, 6, 3], dtype="float64", device="cpu", seed=99)
    if failure == "replace_fails":
        def broken(*args, **kwargs):
            raise OSError("cross-device link")
        monkeypatch.setattr(os, "replace", broken)
        exc = OSError
    else:
        exc = OSError if failure == "oserror" else KeyboardInterrupt

        def broken(f, **arrays):
            f.write(b"PK\x03\x04 half an archive")
            raise exc("disk full")
        monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(exc):
        other.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]    # no temp file
    np.testing.assert_array_equal(fastbp.load(path).get_weights()[0], net.get_weights()[0])


def test_failed_first_save_leaves_no_file(tmp_path, monkeypatch):
    def broken(f, **arrays):
        f.write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError):
        fastbp.MLP([2, 2], device="cpu").save(tmp_path / "new.npz")
    assert list(tmp_path.iterdir()) == []


def test_saved_file_gets_ordinary_permissions(tmp_path):
    path = tmp_path / "m.npz"
    fastbp.MLP([2, 2], device="cpu").save(path)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    path.chmod(0o640)
    fastbp.MLP([2, 2], device="cpu").save(path)          # overwriting keeps the mode
    assert path.stat().st_mode & 0o777 == 0o640
