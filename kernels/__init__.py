"""Compiled kernels of fastbp (importable as ``fastbp.kernels``); never imports the façade."""
