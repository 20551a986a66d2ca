"""fastbp: fast multilayer-perceptron training by backpropagation, compiled with Numba."""
import os as _os

# kernels/ sits beside fastbp/ in the source tree and is installed as fastbp.kernels (the
# package-dir mapping in pyproject.toml). When fastbp is imported straight from a checkout
# (the repo root on sys.path: python -m pytest, scripts run from the root), map it here too.
_here = _os.path.dirname(_os.path.abspath(__file__))
if not _os.path.isdir(_os.path.join(_here, "kernels")) and \
        _os.path.isfile(_os.path.join(_os.path.dirname(_here), "kernels", "__init__.py")):
    __path__.append(_os.path.dirname(_here))

from . import callbacks, schedules
from .callbacks import Callback, History
from .errors import (ConfigError, DataError, DataTypeError, MissingDependencyError,
                     ModelFileError, NotFittedError, TrainingDivergedError)
from .export.torch_interop import from_torch
from .model import MLP, load
from .optimizers import SGD, Adam, AdamW, Optimizer, RMSprop
from .plotting import plot_history
from .threads import get_num_threads, set_num_threads
from .warmup import warmup

__version__ = "0.1.0"

__all__ = ["MLP", "load", "from_torch", "SGD", "Adam", "AdamW", "RMSprop", "Optimizer",
           "History", "Callback", "warmup", "get_num_threads", "set_num_threads",
           "plot_history", "callbacks", "schedules",
           "ConfigError", "DataError", "DataTypeError", "MissingDependencyError",
           "ModelFileError", "NotFittedError", "TrainingDivergedError", "__version__"]
