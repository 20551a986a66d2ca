"""The benchmark harness runs: each micro-benchmark once (timing disabled), so a change to a
kernel's signature cannot leave bench/ broken unnoticed. Timing itself is never asserted."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    import json
    report = json.loads(out.read_text())
    assert report["machine"]["cpu"] and len(report["results"]) == 2
    for r in report["results"]:
        assert set(r["median_s"]) == {"onnxruntime", "torch", "fastbp"}
        assert max(r["max_abs_diff_vs_fastbp"].values()) < 1e-5


def test_sklearn_dropin_harness_runs(tmp_path):
    """bench/sklearn_dropin.py end to end on its --quick configuration (timings not
    checked), on this tree's fastbp."""
    out = tmp_path / "r.json"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "sklearn_dropin.py"), "--quick",
         "--json", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    import json
    report = json.loads(out.read_text())
    assert report["machine"]["cpu"] and "noisy" in report["machine"]
    assert [r["solver"] for r in report["results"]] == ["adam", "sgd", "lbfgs"]
    for r in report["results"]:
        assert set(r["fit_seconds"]) == {"fastbp", "sklearn"} and r["speedup"] > 0
        assert abs(r["accuracy_difference"]) <= 0.1
