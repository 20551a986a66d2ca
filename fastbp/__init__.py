"""fastbp: fast multilayer-perceptron training by backpropagation, compiled with Numba."""
from .callbacks import Callback, History
from .errors import (ConfigError, DataError, DataTypeError, ModelFileError, NotFittedError,
                     TrainingDivergedError)
from .model import MLP, load
from .optimizers import SGD, Adam, AdamW, Optimizer, RMSprop
from .warmup import warmup

__version__ = "0.1.0"

__all__ = ["MLP", "load", "SGD", "Adam", "AdamW", "RMSprop", "Optimizer", "History",
           "Callback", "warmup", "ConfigError", "DataError", "DataTypeError",
           "ModelFileError", "NotFittedError", "TrainingDivergedError", "__version__"]
