"""Compiled kernels of fastbp (importable as ``fastbp.kernels``); never imports the façade."""

# kernels/ is a top-level folder of the source tree, installed (and linked from fastbp/) as
# fastbp.kernels; imported as a package of its own, its relative imports of the facade-free
# modules would still work but Numba's cache and the team's globals would be duplicated.
if __name__ != "fastbp.kernels":
    raise ImportError(f"fastbp's kernels import as fastbp.kernels, not as {__name__!r}")
