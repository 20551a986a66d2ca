"""Input checks, run once before any compiled code (kernels do no bounds checks)."""
import numbers

import numpy as np

from .errors import ConfigError, DataError, DataTypeError
from .kernels.finite import all_finite
from .registry import LOSSES, check_target_values

DTYPES = {"float32": np.float32, "float64": np.float64}
ALL_FINITE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))   # compiled all_finite's


def check_dtype(dtype):
    try:
        key = np.dtype(dtype).name
    except TypeError:
        key = None
    if key not in DTYPES:
        raise ConfigError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return np.dtype(DTYPES[key])


def _as_array(a, name):
    if hasattr(a, "to_numpy") and not isinstance(a, np.ndarray):  # pandas objects
        a = a.to_numpy()
    try:
        arr = np.asarray(a)
    except (ValueError, TypeError) as e:
        raise DataError(f"{name} could not be read as an array ({e}); pass a rectangular "
                        f"numeric array") from None
    if arr.dtype.kind in "OUSVMm" or arr.dtype.kind == "c":
        what = {"O": "object", "U": "string", "S": "bytes", "V": "structured",
                "c": "complex", "M": "datetime", "m": "timedelta"}[arr.dtype.kind]
        raise DataTypeError(f"{name} has {what} dtype {arr.dtype}; convert it to a real "
                            f"numeric array (e.g. {name}.astype(float))")
    return arr


def require_finite(arr, name):
    """DataError naming how many elements of ``arr`` are NaN or infinite, if any."""
    if arr.dtype in ALL_FINITE_DTYPES and arr.flags.c_contiguous:
        # Compiled, without a temporary; only a failing array is looked at again below.
        if all_finite(arr.reshape(-1)):
            return
    elif np.isfinite(arr).all():
        return
    bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
    rng = " (values beyond float32's range become inf: rescale them)" \
        if arr.dtype == np.float32 else ""
    raise DataError(f"{name} contains {bad} NaN or infinite value(s){rng}; remove or "
                    f"impute them before calling fastbp")


def check_X(X, dtype, n_features=None, name="X", finite=True):
    """X as a C-contiguous 2-D array of ``dtype`` (no copy when it already is one).

    ``finite=False`` leaves the NaN/inf check to the caller (inference does it inside the
    compiled pass, see CPUEngine.forward)."""
    arr = _as_array(X, name)
    if arr.ndim == 1 and n_features == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2:
        hint = " (use X.reshape(-1, 1) for a single feature or X.reshape(1, -1) for a " \
               "single sample)" if arr.ndim == 1 else ""
        raise DataError(f"{name} must be 2-D (n_samples, n_features), got shape "
                        f"{arr.shape}{hint}")
    if arr.shape[0] == 0:
        raise DataError(f"{name} is empty (0 samples); at least one row is needed")
    if arr.shape[1] == 0:
        raise DataError(f"{name} has 0 features")
    if n_features is not None and arr.shape[1] != n_features:
        raise DataError(f"{name} has {arr.shape[1]} features, but the model expects "
                        f"{n_features} (its sizes[0])")
    if arr.dtype == dtype and arr.flags.c_contiguous:
        out = arr      # no conversion, so no overflow to silence (errstate is a visible
    else:              # part of a one-row predict)
        with np.errstate(over="ignore"):
            out = np.ascontiguousarray(arr, dtype=dtype)
    # Unaligned views (into byte buffers) slow the loops; read-only arrays (memmaps, joblib)
    # are a distinct Numba type and would compile every kernel a second time.
    if not (out.flags.aligned and out.flags.writeable):
        out = out.copy()
    if finite:
        require_finite(out, name)
    return out


def check_targets(y, loss, n_out, n_rows, dtype, name="y"):
    """Targets as a C-contiguous (n_rows, n_out) array of ``dtype``.

    cross_entropy takes int class ids 0..n_out-1 (converted to one-hot rows) or rows of
    n_out class probabilities; binary_cross_entropy takes 0/1 values, one column per
    output; the regression losses take values, one column per output (poisson:
    non-negative); fastbp.registry's ``targets`` of each loss says which.
    """
    classes = LOSSES[loss].targets == "classes"
    arr = _as_array(y, name)
    if arr.shape[:1] != (n_rows,):
        raise DataError(f"{name} has {arr.shape[0] if arr.ndim else 0} rows but X has "
                        f"{n_rows}; X and {name} must have the same number of samples")
    if classes and arr.ndim == 1:
        if arr.dtype.kind == "f":
            require_finite(arr, name)
            if np.any(arr != np.round(arr)):
                raise DataError(f"{name} for {loss} must hold integer class ids "
                                f"0..{n_out - 1} or one-hot rows; got non-integer values")
        elif arr.dtype.kind not in "iub":
            raise DataTypeError(f"{name} for {loss} must be integer class ids, got "
                                f"dtype {arr.dtype}")
        ids = arr.astype(np.int64)
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= n_out:
            raise DataError(f"{name} holds class ids in [{lo}, {hi}] but the model has "
                            f"{n_out} outputs (valid ids 0..{n_out - 1})")
        Y = np.zeros((n_rows, n_out), dtype=dtype)
        Y[np.arange(n_rows), ids] = 1
        return Y
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2:
        raise DataError(f"{name} must be 1-D or 2-D, got shape {arr.shape}")
    if arr.shape[1] != n_out:
        kind = "one-hot width" if classes else "number of target columns"
        hint = ""
        if classes and arr.shape[1] == 1:
            hint = f"; pass class ids as a 1-D array ({name}.ravel())"
        raise DataError(f"{name} {kind} is {arr.shape[1]} but the model has {n_out} "
                        f"outputs{hint}")
    with np.errstate(over="ignore"):
        Y = np.ascontiguousarray(arr, dtype=dtype)
    if not (Y.flags.aligned and Y.flags.writeable):   # see check_X
        Y = Y.copy()
    require_finite(Y, name)
    check_target_values(loss, Y, name)
    return Y


def check_sample_weight(sample_weight, n_rows, name="sample_weight"):
    if sample_weight is None:
        return np.ones(n_rows, dtype=np.float64)
    w = _as_array(sample_weight, name)
    if w.ndim != 1 or w.shape[0] != n_rows:
        raise DataError(f"{name} must be 1-D with one weight per sample ({n_rows}), got "
                        f"shape {w.shape}")
    w = np.ascontiguousarray(w, dtype=np.float64)
    if not (w.flags.aligned and w.flags.writeable):     # see check_X
        w = w.copy()
    require_finite(w, name)
    if np.any(w < 0):
        raise DataError(f"{name} must be non-negative")
    return w


def check_number(value, name):
    """A real number (int, float, NumPy scalar) as a Python float; ConfigError otherwise."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if value != value:
        raise ConfigError(f"{name} must be a number, got nan")
    return value


def check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_choice(value, name, choices):
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; choose one of {sorted(choices)}")
    return value
