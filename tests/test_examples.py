"""Every script in examples/ runs and does what it claims (shortened where it can be)."""
import importlib.util
import pathlib

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_example_is_covered():
    names = {p.stem for p in EXAMPLES.glob("*.py")}
    assert names == {"digits_ocr", "imbalanced_fraud", "digits_autoencoder",
                     "fine_tune_last_layer", "regression_early_stopping"}


def test_digits_ocr(tmp_path):
    pytest.importorskip("matplotlib")
    acc = load("digits_ocr").main(epochs=20, plot=tmp_path / "curve.png")
    assert acc >= 0.96
    assert (tmp_path / "curve.png").stat().st_size > 1000


def test_imbalanced_fraud_class_weight_raises_recall():
    res = load("imbalanced_fraud").main(epochs=10)
    assert res["balanced"][0] > res["unweighted"][0] + 0.2
    assert res["balanced"][1] > res["unweighted"][1]


def test_digits_autoencoder():
    mse, baseline = load("digits_autoencoder").main(epochs=15)
    assert mse < 0.5 * baseline


def test_fine_tune_last_layer():
    unchanged, acc = load("fine_tune_last_layer").main(epochs=10)
    assert unchanged and acc > 0.7


def test_regression_early_stopping():
    epochs, r2 = load("regression_early_stopping").main(epochs=200)
    assert epochs < 200 and r2 > 0.9
