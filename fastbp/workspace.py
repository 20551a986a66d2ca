"""The CPU engine's buffers, made once per fit and reused for every batch."""
import numpy as np

from .network import aligned_zeros
from .threads import get_num_threads


class Workspace:
    """Row buffers for ``batch_rows`` rows, the gradient and per-thread loss sums (their rows
    bound how many threads share a batch), made once; and the empty arrays that stand for
    the optimizer's when kernels.cpu.train_chunk only adds up gradients."""

    def __init__(self, layout, batch_rows, dtype, n_threads=None):
        self.layout = layout
        self.batch_rows = int(batch_rows)
        self.dtype = np.dtype(dtype)
        self.n_threads = int(n_threads or get_num_threads())
        size = self.batch_rows * layout.row_width
        self.Z = aligned_zeros(size, self.dtype)
        self.A = aligned_zeros(size, self.dtype)
        self.D = aligned_zeros(size, self.dtype)
        self.grad = aligned_zeros(layout.n_params, self.dtype)
        self.tloss = np.zeros((self.n_threads, 2), dtype=np.float64)   # [loss, metric]
        self.losses = np.zeros((1, 2), dtype=np.float64)
        self.no_grads = np.zeros(0, dtype=self.dtype)
        self.no_state = np.zeros((0, 0), dtype=self.dtype)
        self.no_hyper = np.zeros(0, dtype=np.float64)
        self.no_lrs = self.no_hyper
        self.no_blocks = np.zeros((0, 2), dtype=np.int64)

    @staticmethod
    def no_drop(layout):
        return np.zeros(layout.n_layers, dtype=np.float64)

    @property
    def nbytes(self):
        return sum(a.nbytes for a in (self.Z, self.A, self.D, self.grad, self.tloss))
