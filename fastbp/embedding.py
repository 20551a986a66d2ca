"""Training steps callable from a user's own ``@njit`` code.

``compiled_trainer(model, batch_size, optimizer)`` returns ``fn, args`` such that
``loss = fn(*args, x_batch, y_batch)`` runs one optimizer step of ``model`` on the batch,
entirely in compiled code (no Python per step), updating ``model``'s weights in place.
It is the training counterpart of :meth:`fastbp.MLP.compiled_predictor`: a simulation or
an online-learning loop written with Numba can fit the network as it goes.
"""
import numpy as np

from .engines.cpu import load_blas
from .errors import ConfigError
from .kernels.cpu import train_chunk
from .kernels.jit import entry
from .kernels.sync import sync_words
from .optimizers import get_optimizer
from .validation import check_positive_int
from .workspace import Workspace

# train_step may call BLAS from the caller's compiled code, outside any fit of fastbp's.
load_blas()


@entry
def train_step(params, sizes, acts, poff, coff, trainable, lowest, loss, Zbuf, Abuf, Dbuf,
               grad, tloss, opt, state, hyper, lr, step, clip_norm, blocks, block_sq, losses,
               drop, seed, sync, perm, row_w, no_grads, X, Y):
    """One optimizer step on the rows of X (at most the trainer's batch size).

    ``Y``: (rows, n_out) targets of the model's dtype: one-hot rows for cross_entropy, 0/1
    for binary_cross_entropy, values otherwise. ``lr`` (1,) and ``step`` (1,) are the
    learning rate and the step counter, shared with later calls. Returns the batch's mean
    loss; a non-finite loss leaves the weights unchanged.
    """
    n = X.shape[0]
    n_out = sizes[sizes.shape[0] - 1]
    # The kernels do no bounds checks: check every shape they will index by.
    if n < 1 or n > perm.shape[0]:
        raise ValueError("x_batch must have between 1 and batch_size rows")
    if X.shape[1] != sizes[0]:
        raise ValueError("x_batch has the wrong number of columns")
    if Y.shape[0] != n or Y.shape[1] != n_out:
        raise ValueError("y_batch must have shape (rows of x_batch, n_outputs)")
    for i in range(sync.shape[0]):
        sync[i] = 0
    # A team of one: the serial trainer, in the calling thread.
    done = train_chunk(0, 1, 1, sync, X, Y, row_w, perm, 0, n, perm.shape[0], 0.0, params,
                       sizes, acts, poff, coff, trainable, lowest, loss, Zbuf, Abuf, Dbuf,
                       grad, tloss, opt, state, hyper, lr, step[0], clip_norm, blocks,
                       block_sq, losses, drop, seed, no_grads)
    step[0] += done
    return losses[0, 0]


def compiled_trainer(model, batch_size=64, optimizer="adam", lr=None, clip_norm=None):
    """``fn, args`` such that ``fn(*args, x_batch, y_batch)`` trains one step in ``@njit`` code.

    Parameters
    ----------
    model : fastbp.MLP on the CPU
    batch_size : int
        The most rows one call takes (the scratch buffers are sized for it).
    optimizer : name or fastbp.Optimizer; ``lr`` overrides its learning rate.
    clip_norm : float, optional
        Clip the global gradient norm before each update.

    The args hold live views of the model's parameters (training shows in ``predict``
    and in a ``compiled_predictor``), its own optimizer state (independent of ``fit``'s),
    the learning rate ``args[16]`` and the step counter ``args[17]`` (both 1-element
    arrays you may read or change). ``x_batch``: C-contiguous (m, n_in) of the model's
    dtype with m <= batch_size; ``y_batch``: (m, n_out) targets of the model's dtype
    (one-hot rows for cross_entropy). Each call trains on the calling thread; use one
    trainer per model at a time.
    """
    if model.device != "cpu":
        raise ConfigError("compiled_trainer needs a model on the CPU (device='cpu')")
    bs = check_positive_int(batch_size, "batch_size")
    opt = get_optimizer(optimizer, None if lr is None else float(lr))
    clip = 0.0 if clip_norm is None else float(clip_norm)
    if not clip >= 0:
        raise ConfigError(f"clip_norm must be positive or None, got {clip_norm!r}")
    trainable = model._trainable.astype(np.int64)
    if not trainable.any():
        raise ConfigError("every layer is frozen; unfreeze at least one layer to train")
    lay = model.layout
    ws = Workspace(lay, bs, model.dtype)
    blocks = lay.update_blocks(trainable)
    model._engine_sync()
    args = (model._params, lay.sizes, model._acts, lay.poff, lay.coff, trainable,
            int(np.flatnonzero(trainable)[0]), model._loss_code, ws.Z, ws.A, ws.D, ws.grad,
            ws.tloss, opt.code, opt.init_state(model.n_params, model.dtype), opt.hyper(),
            np.array([opt.lr], dtype=np.float64), np.zeros(1, dtype=np.int64), clip,
            blocks, np.zeros(len(blocks)), np.zeros((1, 2), dtype=np.float64), model._drop,
            int(model._rng.integers(0, 2 ** 31 - 1)), np.zeros(sync_words(1), dtype=np.int64),
            np.arange(bs, dtype=np.int64), np.ones(bs, dtype=np.float64), ws.no_grads)
    return train_step, args
