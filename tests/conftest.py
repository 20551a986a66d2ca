"""Shared fixtures. The suite runs with --import-mode=importlib, so the NumPy reference
beside this file is made importable here (``import reference``)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def digits_split():
    """scikit-learn's 8x8 digits scaled to [0, 1], 25% stratified holdout, seed 0."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    X = d.data / 16.0
    return train_test_split(X, d.target, test_size=0.25, stratify=d.target, random_state=0)


def pytest_collection_modifyitems(session, config, items):
    """Start the subprocess suites of the selected tests now (see early.py)."""
    import early
    for item in items:
        spec = getattr(getattr(item, "function", None), "early_subprocess", None)
        if spec is not None and not item.get_closest_marker("skip") and \
                not any(m.args and m.args[0] for m in item.iter_markers("skipif")):
            early.start(*spec())
