"""fastbp: fast multilayer-perceptron training by backpropagation, compiled with Numba."""
from . import callbacks, schedules
from .callbacks import Callback, History
from .errors import (ConfigError, DataError, DataTypeError, MissingDependencyError,
                     ModelFileError, TrainingDivergedError)
from .ensemble import Ensemble, load
from .model import MLP, from_torch
from .optimizers import SGD, Adagrad, Adam, AdamW, Optimizer, RMSprop
from .plotting import plot_history
from .threads import get_num_threads, set_num_threads
from .version import __version__
from .warmup import warmup

__all__ = ["MLP", "Ensemble", "load", "from_torch", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad",
           "Optimizer", "History", "Callback", "warmup", "get_num_threads",
           "set_num_threads", "plot_history", "callbacks", "schedules",
           "ConfigError", "DataError", "DataTypeError", "MissingDependencyError",
           "ModelFileError", "TrainingDivergedError", "__version__"]
