"""The engine interface: what the model and the training loop ask of a backend.

An engine trains and runs a :class:`fastbp.network.Network` record, never the model: the
CPU engine (``engines.cpu``) with compiled kernels over host buffers, the CUDA engine
(``engines.cuda``) with device-resident ones. Both implement every method below; the
defaults here are those of an engine whose parameters live in host memory.
"""
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


@dataclass(eq=False)
class FitSession:
    """What one fit keeps between chunks. Engines extend it with their buffers."""
    X: np.ndarray            # validated training rows (host)
    Y: np.ndarray            # (n, n_out) targets of the model's dtype
    row_w: np.ndarray        # per-row loss weights (float64)
    batch_size: int
    optimizer: object        # a fastbp.optimizers.Optimizer
    state: np.ndarray        # the optimizer's flat state slots, updated in place
    trainable: np.ndarray    # int64 flag per dense layer
    lowest: int              # lowest trainable layer: the backward pass stops there
    seed: int                # the fit's dropout seed
    step_done: int = 0       # optimizer steps taken, this fit and before
    last_lr: float = 0.0
    interrupt: object = None   # training.InterruptFlag
    bad_loss: float = 0.0      # the non-finite loss that stopped an epoch
    G: object = None           # the data-parallel Allreduce buffer, when there is one


class Engine(ABC):
    """A backend. ``name`` is "cpu" or "cuda"; ``checks_in_pass``: forward(check=True)
    checks X for NaN/inf inside its pass (else the model checks first)."""

    name = ""
    checks_in_pass = False

    def __init__(self, net):
        self.net = net
        self.batch_seconds = {}   # batch size -> last measured seconds per batch

    # -- training -------------------------------------------------------------------
    @abstractmethod
    def begin_fit(self, X, Y, row_w, optimizer, state, batch_size, dropout_seed):
        """Buffers for a fit; returns its FitSession."""

    @abstractmethod
    def run_chunk(self, s, perm, start, stop, lrs, step, clip_norm, out):
        """Batches of perm[start:stop], one optimizer step each (learning rates ``lrs``,
        ``step`` steps taken before); out[k] = [loss, metric sum] of batch k. Returns the
        steps applied: fewer than the batches when a loss was not finite."""

    def end_fit(self, s):
        """Bring the parameters and optimizer state back to the host."""

    # -- many networks of one architecture on the same batches (fastbp.Ensemble) -------
    def shared_data(self, X, Y):
        """X and Y as every member's ``begin_fit`` should get them: one copy where the
        engine keeps its own (the host arrays themselves here)."""
        return X, Y

    def train_together(self, jobs):
        """Run ``jobs``, each ``(engine, session, perm, start, stop, lrs, step, clip_norm,
        out)`` as for ``run_chunk``, all engines of this class, every job a different
        network on the same batches; returns the steps each applied, or None where this
        engine has no way better than one ``run_chunk`` after another."""
        return None

    def calls_blas(self, batch_size):
        """Whether training at ``batch_size`` can call a multithreaded BLAS."""
        return False

    def sync_params(self, s):
        """Make net.params current mid-fit (callbacks read the weights)."""

    def snapshot(self, s):
        """The parameters as they are, to go back to on divergence."""
        return self.net.params.copy()

    def restore(self, s, snapshot):
        self.net.params[:] = snapshot

    # -- data-parallel steps (fastbp.distributed) -----------------------------------
    @abstractmethod
    def grad_buffer(self, s, on_device=False):
        """[gradient | loss, metric, interrupt flag]: the buffer of the per-step Allreduce."""

    @abstractmethod
    def batch_grads(self, s, perm, b0, rows, scale, step, G, flag=None):
        """One batch's gradient (rows perm[b0:b0+rows], loss times ``scale``) into G."""

    def synchronize(self):
        """Wait until the buffers MPI reads are written."""

    def step_scalars(self, G):
        """[loss, metric, flag] of the (reduced) G."""
        return G[self.net.n_params:]

    @abstractmethod
    def apply_update(self, s, G, lr, step, clip_norm):
        """One optimizer step from the flat gradient G[:P]."""

    def param_buffer(self, s, on_device=False):
        """The parameters to sum across ranks (local SGD)."""
        return self.net.params

    def set_param_mean(self, s, params, n_ranks):
        """``params`` holds the sum over ``n_ranks`` ranks: make it their mean."""
        params /= n_ranks

    # -- inference and gradients ----------------------------------------------------
    @abstractmethod
    def forward(self, X, n_layers, pre_activation, out, check=False):
        """``out`` = the first ``n_layers`` layers on X (Z, the logits, of the last one with
        ``pre_activation``); ``check``: raise DataError if X holds NaN or inf."""

    @abstractmethod
    def loss_and_grads(self, X, Y, row_w):
        """(mean loss over all rows, flat gradient of every layer); no update."""

    def params_to_host(self):
        """Bring net.params up to date from wherever the engine keeps them."""

    def params_changed(self):
        """net.params was written from outside (set_weights, reset, unpickling)."""
