"""The ``fastbp`` command line: end-to-end round trips in a subprocess, errors in-process."""
import csv
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import fastbp
from fastbp import cli


def run_cli(*args, cwd):
    proc = subprocess.run([sys.executable, "-m", "fastbp.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def iris_csv(tmp_path_factory):
    from sklearn.datasets import load_iris
    d = load_iris()
    path = tmp_path_factory.mktemp("cli") / "iris.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sepal length", "sepal width", "petal length", "petal width", "species"])
        for x, t in zip(d.data, d.target):
            w.writerow(list(x) + [d.target_names[t]])
    return path


def test_train_predict_evaluate_round_trip_on_csv(iris_csv, tmp_path):
    model, preds = tmp_path / "model.npz", tmp_path / "preds.csv"
    rc, out, err = run_cli("train", iris_csv, "--target", "species", "--layers", "16,8",
                           "--epochs", "40", "--batch-size", "16", "--lr", "0.01",
                           "--val-split", "0.2", "--seed", "1", "--out", model, cwd=tmp_path)
    assert rc == 0, err
    assert "3 classes" in out and "cross_entropy" in out
    assert "Epoch 40/40" in out + err                # progress
    assert "validation: loss" in out and "accuracy" in out
    assert model.exists()

    rc, out, err = run_cli("predict", model, iris_csv, "--out", preds, "--proba",
                           cwd=tmp_path)
    assert rc == 0, err
    with open(preds, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["species", "p_setosa", "p_versicolor", "p_virginica"]
    assert len(rows) == 151
    truth = [r[-1] for r in csv.reader(open(iris_csv, newline=""))][1:]
    predicted = [r[0] for r in rows[1:]]
    assert np.mean(np.array(predicted) == np.array(truth)) > 0.9
    proba = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)

    rc, out, err = run_cli("evaluate", model, iris_csv, "--target", "species", cwd=tmp_path)
    assert rc == 0, err
    metrics = dict(line.split(": ") for line in out.splitlines() if line.count(": ") == 1)
    assert float(metrics["accuracy"]) > 0.9

    # The file is an ordinary fastbp model taking raw (unscaled) feature values.
    net = fastbp.load(model)
    X = np.loadtxt(iris_csv, delimiter=",", skiprows=1, usecols=range(4))
    names = np.array(["setosa", "versicolor", "virginica"])
    np.testing.assert_array_equal(names[net.predict(X)], predicted)


def test_regression_round_trip_on_npz(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3))
    y = X @ np.array([1.5, -2.0, 0.5]) + 3.0
    np.savez(tmp_path / "data.npz", X=X, y=y)
    rc, out, err = run_cli("train", "data.npz", "--layers", "16", "--epochs", "60",
                           "--loss", "mse", "--lr", "0.01", "--quiet", "--out", "reg.npz",
                           cwd=tmp_path)
    assert rc == 0, err
    assert "r2" in out and "Epoch" not in out + err
    rc, out, err = run_cli("evaluate", "reg.npz", "data.npz", cwd=tmp_path)
    assert rc == 0, err
    assert float(out.split("r2: ")[1].split()[0]) > 0.95
    rc, out, err = run_cli("predict", "reg.npz", "data.npz", cwd=tmp_path)   # to stdout
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == "y" and len(lines) == 301


@pytest.mark.parametrize("command", ["train", "predict", "evaluate", "demo", "info", "cache"])
def test_help_for_each_command(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    assert f"usage: fastbp {command}" in capsys.readouterr().out


def test_errors_are_one_line_and_nonzero(iris_csv, tmp_path, capsys):
    out = str(tmp_path / "m.npz")
    cases = [
        (["train", str(tmp_path / "missing.csv"), "--target", "y", "--out", out],
         "no such data file"),
        (["train", str(iris_csv), "--target", "colour", "--out", out], "no column 'colour'"),
        (["train", str(iris_csv), "--target", "species", "--out", str(tmp_path / "m.txt")],
         ".npz"),
        (["predict", str(tmp_path / "nomodel.npz"), str(iris_csv)], "no model file"),
        (["evaluate", str(iris_csv), str(iris_csv), "--target", "species"], "model file"),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("fastbp: error:") and message in err, err
        assert "Traceback" not in err


def test_non_numeric_feature_column_is_named(tmp_path, capsys):
    path = tmp_path / "bad.csv"
    path.write_text("a,b,label\n1,x,0\n2,y,1\n")
    assert cli.main(["train", str(path), "--target", "label", "--out",
                     str(tmp_path / "m.npz")]) == 1
    assert "column 'b' is not numeric" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--epochs", "0"), ("--layers", "16,-2"),
                                         ("--val-split", "1.5"), ("--lr", "abc"),
                                         ("--loss", "hinge")])
def test_bad_values_are_usage_errors(flag, value, iris_csv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", str(iris_csv), "--target", "species", "--out", "m.npz",
                  flag, value])
    assert e.value.code == 2
    assert flag in capsys.readouterr().err


def test_bench_runs_outside_a_checkout(tmp_path):
    """``fastbp bench`` needs no source tree: run from an empty folder, it measures the FMA
    peak and fastbp and prints the CPU model and fastbp's share of the peak (the figures
    themselves are not checked)."""
    from fastbp.benchmark import cpu_model
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(fastbp.__file__)))
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "fastbp.cli", "bench", "--quick", "--shapes", "narrow",
         "--peers", "fastbp", "--rows", "200", "--reps", "1", "--json", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert cpu_model() in proc.stdout
    assert re.search(r"narrow: fastbp trains at \d+\.\d% of peak", proc.stdout)
    report = json.loads(out.read_text())
    assert report["machine"]["cpu"] == cpu_model()
    assert report["fma_peak_gflops"]["roof"] > 0
    assert report["summary"][0]["fastbp_train_pct_peak"] > 0


def test_train_with_two_mpi_workers(iris_csv, tmp_path):
    pytest.importorskip("mpi4py")
    if not os.path.exists(os.path.join(os.path.dirname(sys.executable), "mpiexec")):
        pytest.skip("no mpiexec beside this Python (pip install 'fastbp[mpi]')")
    model = tmp_path / "m.npz"
    rc, out, err = run_cli("train", iris_csv, "--target", "species", "--layers", "16",
                           "--epochs", "40", "--lr", "0.01", "--workers", "2", "--quiet",
                           "--out", model, cwd=tmp_path)
    assert rc == 0, err
    assert "workers: 2 MPI ranks" in out
    assert out.count("saved:") == 1          # rank 0 alone writes
    rc, out, err = run_cli("evaluate", model, iris_csv, "--target", "species", cwd=tmp_path)
    assert rc == 0, err
    assert float(out.split("accuracy:")[1].split()[0]) > 0.8
