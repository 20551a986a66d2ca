"""The installed version, read from the package metadata (pyproject.toml is its source)."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fastbp")
except PackageNotFoundError:     # a checkout that was never installed
    __version__ = "0+unknown"
