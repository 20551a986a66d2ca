"""Collected only when bench/ is named: skip the micro-benchmarks without pytest-benchmark."""
import pytest


def pytest_collection_modifyitems(config, items):
    if config.pluginmanager.hasplugin("benchmark"):
        return
    skip = pytest.mark.skip(reason="pytest-benchmark is not installed or disabled "
                                   "(pip install 'fastbp[test]')")
    for item in items:
        item.add_marker(skip)
