"""A small, fast NumPy MLP trainer: the plain-BLAS baseline of the comparison harness.

Same maths as fastbp (ReLU hidden layers, softmax + cross-entropy or identity + MSE output,
Adam as in torch.optim.Adam), written the way a careful NumPy user would: one GEMM per
product, in-place elementwise work, every buffer allocated once per batch size. It is a
benchmark peer only; the test suite keeps its own reference in tests/.
"""
import numpy as np


class NumpyMLP:
    """MLP ``sizes = [n_in, hidden..., n_out]`` with ReLU hidden layers, trained by Adam.

    Parameters
    ----------
    sizes : list of int
    loss : "cross_entropy" (y: int class ids, shape (n,)) or "mse" (y: (n,) or (n, n_out))
    dtype : numpy float dtype of parameters and buffers
    seed : int, seeds the He-normal initialisation
    """

    def __init__(self, sizes, loss="cross_entropy", dtype=np.float32, seed=0, lr=1e-3,
                 betas=(0.9, 0.999), eps=1e-8):
        if loss not in ("cross_entropy", "mse"):
            raise ValueError(f"loss must be 'cross_entropy' or 'mse', got {loss!r}")
        self.sizes = [int(s) for s in sizes]
        self.loss = loss
        self.dtype = np.dtype(dtype)
        rng = np.random.default_rng(seed)
        self.W, self.b = [], []
        for n_in, n_out in zip(self.sizes[:-1], self.sizes[1:]):
            self.W.append(rng.normal(0.0, np.sqrt(2.0 / n_in), (n_in, n_out)).astype(self.dtype))
            self.b.append(np.zeros(n_out, dtype=self.dtype))
        self.params = [p for pair in zip(self.W, self.b) for p in pair]
        self.grads = [np.zeros_like(p) for p in self.params]
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]
        self.tmp = [np.zeros_like(p) for p in self.params]
        self.lr, self.b1, self.b2, self.eps = lr, betas[0], betas[1], eps
        self.step = 0
        self._rows = None

    # ----------------------------------------------------------------- buffers
    def _buffers(self, rows):
        """Activations (A[0] is the input batch) and deltas for ``rows`` rows, made once."""
        if self._rows != rows:
            self.A = [np.empty((rows, s), dtype=self.dtype) for s in self.sizes]
            self.D = [None] + [np.empty((rows, s), dtype=self.dtype) for s in self.sizes[1:]]
            self.mask = [None] + [np.empty((rows, s), dtype=bool) for s in self.sizes[1:]]
            self._rows = rows
        return self.A, self.D

    # ----------------------------------------------------------------- forward
    def forward(self, X, out=None):
        """Network output (softmax probabilities or identity outputs) for rows of X."""
        A = X
        L = len(self.W)
        for l in range(L):
            Z = A @ self.W[l]
            Z += self.b[l]
            if l < L - 1:
                np.maximum(Z, 0, out=Z)
            A = Z
        if self.loss == "cross_entropy":
            A -= A.max(axis=1, keepdims=True)
            np.exp(A, out=A)
            A /= A.sum(axis=1, keepdims=True)
        return A

    def _train_batch(self, Xb, Yb):
        rows = Xb.shape[0]
        A, D = self._buffers(rows)
        L = len(self.W)
        A[0][...] = Xb
        for l in range(L):
            np.dot(A[l], self.W[l], out=A[l + 1])
            A[l + 1] += self.b[l]
            if l < L - 1:
                np.greater(A[l + 1], 0, out=self.mask[l + 1])
                np.maximum(A[l + 1], 0, out=A[l + 1])
        out = A[L]
        Do = D[L]
        if self.loss == "cross_entropy":
            out -= out.max(axis=1, keepdims=True)
            np.exp(out, out=out)
            out /= out.sum(axis=1, keepdims=True)
            # delta of mean cross-entropy w.r.t. the logits: (softmax - onehot) / rows
            Do[...] = out
            Do[np.arange(rows), Yb] -= 1.0
            Do *= 1.0 / rows
        else:
            np.subtract(out, Yb, out=Do)
            Do *= 2.0 / (rows * out.shape[1])
        for l in range(L - 1, -1, -1):
            gW, gb = self.grads[2 * l], self.grads[2 * l + 1]
            np.dot(A[l].T, D[l + 1], out=gW)
            np.sum(D[l + 1], axis=0, out=gb)
            if l > 0:
                np.dot(D[l + 1], self.W[l].T, out=D[l])
                D[l] *= self.mask[l]
        self._adam()

    def _adam(self):
        self.step += 1
        b1, b2 = self.b1, self.b2
        bias1 = 1.0 - b1 ** self.step
        bias2_sqrt = np.sqrt(1.0 - b2 ** self.step)
        step_size = self.lr / bias1
        for p, g, m, v, t in zip(self.params, self.grads, self.m, self.v, self.tmp):
            m *= b1
            m += (1.0 - b1) * g
            np.multiply(g, g, out=t)
            v *= b2
            t *= 1.0 - b2
            v += t
            np.sqrt(v, out=t)
            t /= bias2_sqrt
            t += self.eps
            np.divide(m, t, out=t)
            t *= step_size
            p -= t

    # --------------------------------------------------------------------- fit
    def fit_epoch(self, X, y, batch_size, rng):
        """One shuffled pass over (X, y) in mini-batches, one Adam step per batch."""
        n = X.shape[0]
        perm = rng.permutation(n)
        Y = y if self.loss == "cross_entropy" else y.reshape(n, -1)
        for s in range(0, n, batch_size):
            idx = perm[s:s + batch_size]
            self._train_batch(X[idx], Y[idx])
