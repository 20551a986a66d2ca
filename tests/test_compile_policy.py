"""How kernels compile (kernels.jit): once per signature, only inside entry points, cached
with every kernel source in the key; and the first run's background compile of inference
(fastbp.precompile), which must change no number."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastbp
from fastbp.kernels import cpu, jit

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def test_kernels_are_link_only_and_refuse_python_calls():
    assert jit.LINK_ONLY, "Numba's internals moved: kernels compile the slow way"
    assert isinstance(cpu.gemm_weight_grad, jit.KernelDispatcher)
    with pytest.raises(TypeError, match="entry_for"):
        cpu.exp_inplace(np.zeros(4), 0, 4)
    a = np.array([0.0, 1.0, 2.0])
    jit.entry_for(cpu.exp_inplace)(a, 0, 3)
    np.testing.assert_allclose(a, np.exp([0.0, 1.0, 2.0]), rtol=1e-15)


def test_a_fit_and_its_inference_compile_each_entry_once():
    """A constant and a variable argument, a kernel reached from two entries, a gradient
    and a fit: one signature of each entry (literal types are not specialised)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 5)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    net = fastbp.MLP([5, 16, 2], device="cpu", seed=0)
    net.fit(X, y, epochs=2, batch_size=32, validation_split=0.2)
    net.predict(X)
    net.evaluate(X, y)
    net.loss_and_grads(X, y)
    for entry in (cpu.train_chunk, cpu.forward_tiles, cpu.loss_sum):
        f32 = [s for s in entry.signatures if "float32" in str(s)]
        assert len(f32) == 1, (entry.py_func.__name__, f32)


SCRIPT = r"""
import sys
import numpy as np
import fastbp
from fastbp import precompile
rng = np.random.default_rng(0)
X = rng.normal(size=(500, 6)).astype(np.float32)
y = (X[:, 0] > 0).astype(int)
net = fastbp.MLP([6, 8, 2], seed=0, device="cpu")
net.fit(X, y, epochs=1, batch_size=32)
child = precompile._children.get("float32")
print("CHILD", child is not None)
p = net.predict_proba(X)
print("PROBA", p.tobytes().hex()[:64], float(p.sum()))
"""


def test_a_first_run_compiles_inference_in_a_second_process_and_changes_nothing(tmp_path):
    """Empty cache: the fit starts a child that compiles inference; the next process finds
    everything cached, starts none, and predicts the same bits."""
    env = dict(os.environ, FASTBP_CACHE_DIR=str(tmp_path), FASTBP_NUM_THREADS="2",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("FASTBP_BACKGROUND_COMPILE", None)
    runs = []
    for _ in range(2):
        res = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                             text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        runs.append(dict(line.split(" ", 1) for line in res.stdout.splitlines()
                         if line.startswith(("CHILD", "PROBA"))))
    assert runs[0]["CHILD"] == "True" and runs[1]["CHILD"] == "False"
    assert runs[0]["PROBA"] == runs[1]["PROBA"]


def test_device_auto_without_a_cuda_driver_does_not_import_numba_cuda():
    """numba.cuda's import alone cost 0.9 s of every first model on a machine without a
    GPU: where no driver library loads, device="auto" picks the CPU without it. The
    simulator still counts as a device."""
    code = ("import sys\n"
            "from fastbp.engines import _driver_loadable, resolve_device\n"
            "print(_driver_loadable(), resolve_device('auto'), 'numba.cuda' in sys.modules)\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_ENABLE_CUDASIM", "NUMBA_CUDA_DRIVER")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    loadable, device, imported = out.stdout.split()
    if loadable == "False":
        assert (device, imported) == ("cpu", "False")
    sim = dict(env, NUMBA_ENABLE_CUDASIM="1")
    out = subprocess.run([sys.executable, "-c", code], env=sim, capture_output=True,
                         text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    loadable, device, imported = out.stdout.split()
    try:
        import numba.cuda  # noqa: F401
        has_numba_cuda = True
    except Exception:   # noqa: BLE001
        has_numba_cuda = False
    assert loadable == "True"
    assert device == ("cuda" if has_numba_cuda else "cpu")


PLAN_SCRIPT = r"""
import hashlib, json, sys
import numpy as np
from fastbp import compile_plan
step, role = sys.argv[1], sys.argv[2]
if step == "type":
    print("TYPED", compile_plan.compile_back("float32", role, meet=False))
elif step == "front":   # what a fit has typed when it finishes its forward pass
    plan = compile_plan.load("float32")
    kern, sig = next(p for p in plan if p[0].py_func.__name__ == "forward_rows")
    kern.compile(sig)
elif step == "meet":
    plan = compile_plan.load("float32")
    print("TYPED", compile_plan.compile_back("float32"))
    print("UNTYPED", json.dumps([k.py_func.__name__ for k, s in plan if s not in k.overloads]))
else:
    plan, net, out = compile_plan.record_here("float32", role)
    print("PLAN", json.dumps(plan))
    print("RESULT", hashlib.sha256(b"".join(
        np.ascontiguousarray(a).tobytes() for a in out)).hexdigest())
"""


def _plan_run(cache, step, role="train"):
    env = dict(os.environ, FASTBP_CACHE_DIR=str(cache), FASTBP_BACKGROUND_COMPILE="0",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", PLAN_SCRIPT, step, role], env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return dict(line.split(" ", 1) for line in res.stdout.splitlines())


@pytest.mark.parametrize("role", ["train", "predict"])
def test_kernels_typed_in_another_process_change_no_bit_and_the_plan_is_current(tmp_path,
                                                                                 role):
    """A cold fit (a cold prediction) types every kernel of the trainer (the forward pass),
    in the order the shipped plan lists them. With every kernel typed beforehand by
    another process (the plan walked without stopping), a cold call types none and ends
    with the same weights (the same prediction), bit for bit."""
    from fastbp.compile_plan import PLAN_FILE
    alone = _plan_run(tmp_path / "alone", "call", role)
    with open(PLAN_FILE) as f:
        shipped = json.load(f)[role]["float32"]
    assert json.loads(alone["PLAN"]) == shipped, "stale plan: python -m fastbp.compile_plan"
    assert int(_plan_run(tmp_path / "split", "type", role)["TYPED"]) > 0
    split = _plan_run(tmp_path / "split", "call", role)
    assert json.loads(split["PLAN"]) == []
    assert split["RESULT"] == alone["RESULT"]


def test_the_child_types_the_trainer_from_its_end_and_stops_where_the_fit_has_been(tmp_path):
    """With the forward pass cached (as when the fit has typed it), the child types the
    kernels a fit reaches after it, loads the first kernel of the forward pass it comes
    to, and stops there: the kernels the fit reaches first (its root, the forward pass's
    parent) it leaves to the fit."""
    _plan_run(tmp_path, "front")
    meet = _plan_run(tmp_path, "meet")
    untyped = json.loads(meet["UNTYPED"])
    assert int(meet["TYPED"]) > 0
    assert "backward_rows" not in untyped
    assert {"chunk_steps", "slice_loss_grad"} <= set(untyped)


PREDICT_SCRIPT = r"""
import numpy as np
import fastbp
from fastbp import precompile
net = fastbp.MLP([6, 8, 2], seed=0, device="cpu")
X = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
p = net.predict_proba(X)
helper = precompile._helpers.get(np.dtype("float32"))
if helper is not None:
    helper.wait(timeout=300)
print("HELPER", helper is not None)
print("PROBA", p.tobytes().hex())
"""


def test_a_first_prediction_without_a_fit_gets_a_helper_only_while_nothing_is_cached(
        tmp_path):
    """Empty cache, no fit: the prediction starts a helper typing the forward pass from its
    end. The next process finds it cached, starts none, and predicts the same bits."""
    env = dict(os.environ, FASTBP_CACHE_DIR=str(tmp_path), FASTBP_NUM_THREADS="2",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("FASTBP_BACKGROUND_COMPILE", None)
    runs = []
    for _ in range(2):
        res = subprocess.run([sys.executable, "-c", PREDICT_SCRIPT], env=env,
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        runs.append(dict(line.split(" ", 1) for line in res.stdout.splitlines()))
    assert runs[0]["HELPER"] == "True" and runs[1]["HELPER"] == "False"
    assert runs[0]["PROBA"] == runs[1]["PROBA"]


def test_other_versions_caches_unused_for_a_month_are_removed(tmp_path, monkeypatch, capsys):
    """Every version (an upgrade, an edited source) compiles into a folder of its own: the
    ones no process has used for KEEP_UNUSED_DAYS go at the next start, nothing else does,
    and `fastbp cache` lists them and `--clear` removes them all."""
    from fastbp import cli
    monkeypatch.setenv("FASTBP_CACHE_DIR", str(tmp_path))
    now = 1_900_000_000.0
    day = 86400.0
    mine = jit.cache_dir()
    os.makedirs(mine)

    def folder(name, days_ago, mark=True):
        path = tmp_path / name
        (path / "cpu").mkdir(parents=True)
        (path / "cpu" / "entry.nbc").write_bytes(b"x" * 1000)
        t = now - days_ago * day
        if mark:
            (path / jit.USED_MARK).write_text("")
            os.utime(path / jit.USED_MARK, (t, t))
        os.utime(path, (t, t))
        return path

    stale = folder("0123456789abcdef", 40)
    recent = folder("fedcba9876543210", 10)
    unmarked = folder("00000000000000aa", 40, mark=False)
    foreign = folder("not-a-version", 400, mark=False)
    assert sorted(jit.prune_cache(now)) == sorted([str(stale), str(unmarked)])
    assert not stale.exists() and not unmarked.exists()
    assert recent.exists() and foreign.exists()
    mark = os.path.join(mine, jit.USED_MARK)
    assert os.stat(mark).st_mtime > now - day     # this version's: marked as used

    # The mark is written at most once a day (a process start should not write).
    os.utime(mark, (now - 3600, now - 3600))
    jit.prune_cache(now)
    assert os.stat(mark).st_mtime == now - 3600
    os.utime(mark, (now - 2 * day, now - 2 * day))
    jit.prune_cache(now)
    assert os.stat(mark).st_mtime == now

    assert cli.main(["cache"]) == 0
    out = capsys.readouterr().out
    assert mine in out and "fedcba9876543210" in out and "not-a-version" not in out
    assert cli.main(["info"]) == 0
    assert f"compiled kernels: {mine}" in capsys.readouterr().out
    assert cli.main(["cache", "--clear"]) == 0
    assert "removed 2 cache folder(s)" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-version"]
