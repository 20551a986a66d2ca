"""The benchmark harness runs: each micro-benchmark once (timing disabled), so a change to a
kernel's signature cannot leave bench/ broken unnoticed. Timing itself is never asserted."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env():
    """The harnesses in bench/ import fastbp: the one these tests import, wherever it is."""
    import fastbp
    return dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(fastbp.__file__)))


def test_micro_benchmarks_run():
    pytest.importorskip("pytest_benchmark")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "--benchmark-disable", os.path.join(ROOT, "bench", "test_bench_kernels.py")],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout


def test_onnx_vs_torch_harness_runs(tmp_path):
    """bench/onnx_vs_torch.py end to end on a tiny configuration (timings not checked)."""
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "onnx_vs_torch.py"), "--shapes",
         "narrow", "--calls", "16,64", "--rows", "64", "--reps", "1", "--rounds", "1",
         "--gap", "0", "--json", str(out)],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    import json
    report = json.loads(out.read_text())
    assert report["machine"]["cpu"] and len(report["results"]) == 2
    for r in report["results"]:
        assert set(r["median_s"]) == {"onnxruntime", "torch", "fastbp"}
        assert max(r["max_abs_diff_vs_fastbp"].values()) < 1e-5


def test_compare_wrapper_runs_with_the_numpy_peer(tmp_path):
    """bench/compare.py is fastbp.benchmark plus the NumPy trainer (timings not checked)."""
    import json
    out = tmp_path / "c.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "compare.py"), "--quick", "--shapes",
         "narrow", "--peers", "fastbp,numpy", "--rows", "200", "--reps", "1", "--json",
         str(out)], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    row = json.loads(out.read_text())["summary"][0]
    assert row["numpy_train"] > 0 and row["train_ratio_vs_numpy"] > 0


def test_fma_peak_kernel_counts_its_flops():
    """kernels.peak does CHAINS vector FMAs per step (2 FLOP per lane each) and its chains
    stay finite, in both dtypes."""
    import numpy as np

    from fastbp.kernels.peak import CHAINS, fma_chains
    from fastbp.kernels.simd import VEC_BYTES
    for dtype in (np.float32, np.float64):
        x = np.ones(CHAINS * 64, dtype=dtype)
        lanes = VEC_BYTES // x.itemsize
        assert fma_chains(x, 1000) == 2 * CHAINS * lanes * 1000
        assert np.isfinite(x).all() and abs(float(x[0]) - 1.0) < 1e-3


def test_peak_roof_uses_the_cores_when_the_all_thread_run_reads_low():
    from fastbp.benchmark import peak_roof
    busy = {"float32": {"1": [100.0, 98.0], "2": [110.0, 105.0]}}
    quiet = {"float32": {"1": [100.0], "2": [205.0]}}
    assert peak_roof(busy, cores=2) == 200.0
    assert peak_roof(busy, quiet, cores=2) == 205.0
    assert peak_roof(busy, cores=1) == 110.0


def test_sklearn_dropin_harness_runs(tmp_path):
    """bench/sklearn_dropin.py end to end on its --quick configuration (timings not
    checked), on this tree's fastbp."""
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "sklearn_dropin.py"), "--quick",
         "--json", str(out)], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    import json
    report = json.loads(out.read_text())
    assert report["machine"]["cpu"] and "noisy" in report["machine"]
    assert [r["solver"] for r in report["results"]] == ["adam", "sgd", "lbfgs"]
    for r in report["results"]:
        assert set(r["fit_seconds"]) == {"fastbp", "sklearn"} and r["speedup"] > 0
        assert abs(r["accuracy_difference"]) <= 0.1


def test_each_timed_repetition_follows_an_untimed_one_of_the_same_peer():
    """A peer timed straight after another library paid for what that one left running:
    every timed epoch and pass comes right after an untimed one of its own."""
    from fastbp import benchmark
    calls = []

    def fake(peer):
        def setup(sizes, bs, loss, X, y):
            def run(kind):
                def fn():
                    calls.append((peer, kind))
                    # untimed calls report a huge time: any that got timed would show
                    return 1.0 if sum(c == (peer, kind) for c in calls) % 2 == 0 else 1e9
                return fn
            return run("train"), run("infer")
        return setup

    res = benchmark.bench_shape("narrow", 64, 3, ["a", "b"], lambda *a: None,
                                setups={"a": fake("a"), "b": fake("b")})
    rep = [("a", "train")] * 2 + [("a", "infer")] * 2 + [("b", "train")] * 2 + \
        [("b", "infer")] * 2
    assert calls == rep * 3
    for peer in "ab":
        assert res["peers"][peer]["train"] == res["rows"] / 1.0
        assert res["peers"][peer]["infer"] == res["rows"] / 1.0
