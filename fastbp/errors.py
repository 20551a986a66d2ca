"""Exceptions of fastbp: ValueError/TypeError subclasses, so callers can catch either."""


class ConfigError(ValueError):
    """A bad hyperparameter or model configuration (names the argument and the fix)."""


class DataError(ValueError):
    """Input arrays that cannot be trained on or predicted from as given."""


class DataTypeError(TypeError):
    """Input arrays of a dtype fastbp cannot use (object, string, complex)."""


class TrainingDivergedError(FloatingPointError, ValueError):
    """The loss became NaN or infinite; the model keeps its last finite weights. Also a
    ValueError, which is what scikit-learn raises for a fit that diverged."""


class ModelFileError(ValueError):
    """A model file is truncated, corrupted, foreign or from a future format version."""


class MissingDependencyError(ImportError):
    """An optional dependency (onnx, torch, safetensors, ...) is not installed; the message
    names the extra that installs it."""
