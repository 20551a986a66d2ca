"""A plain NumPy reference MLP, written from the textbook formulas.

Nothing here is shared with the package: activations, losses, backpropagation and the
optimizers (torch.optim's documented update rules) are written out again so that the
compiled kernels can be checked against an independent implementation. Everything is
computed in float64.

Conventions match fastbp's public API: ``weights`` is ``[W1, b1, W2, b2, ...]`` with
``W`` of shape (n_in, n_out); targets ``Y`` are 2-D (one-hot or probability rows for
cross_entropy, one column per output otherwise).
"""
import numpy as np
from scipy.special import erf, expit

SQRT2 = np.sqrt(2.0)
LEAKY_SLOPE = 0.01
ELU_ALPHA = 1.0
HUBER_DELTA = 1.0


# ----------------------------------------------------------------------- activations

def act_forward(name, z):
    if name == "identity":
        return z.copy()
    if name == "relu":
        return np.where(z > 0, z, 0.0)
    if name == "leaky_relu":
        return np.where(z > 0, z, LEAKY_SLOPE * z)
    if name == "elu":
        return np.where(z > 0, z, ELU_ALPHA * np.expm1(np.minimum(z, 0.0)))
    if name == "gelu":
        # Exact form: z * Phi(z), Phi the standard normal CDF.
        return 0.5 * z * (1.0 + erf(z / SQRT2))
    if name == "sigmoid":
        return expit(z)
    if name == "tanh":
        return np.tanh(z)
    if name == "silu":
        return z * expit(z)
    raise ValueError(f"unknown activation {name!r}")


def act_derivative(name, z):
    """f'(z), PyTorch's convention at the kinks (relu'(0) = 0, leaky_relu'(0) = slope)."""
    if name == "identity":
        return np.ones_like(z)
    if name == "relu":
        return (z > 0).astype(np.float64)
    if name == "leaky_relu":
        return np.where(z > 0, 1.0, LEAKY_SLOPE)
    if name == "elu":
        return np.where(z > 0, 1.0, ELU_ALPHA * np.exp(np.minimum(z, 0.0)))
    if name == "gelu":
        cdf = 0.5 * (1.0 + erf(z / SQRT2))
        pdf = np.exp(-0.5 * z * z) / np.sqrt(2.0 * np.pi)
        return cdf + z * pdf
    if name == "sigmoid":
        s = expit(z)
        return s * (1.0 - s)
    if name == "tanh":
        return 1.0 - np.tanh(z) ** 2
    if name == "silu":
        s = expit(z)
        return s + z * s * (1.0 - s)
    raise ValueError(f"unknown activation {name!r}")


def _hidden_names(activation, n_hidden):
    if isinstance(activation, str):
        return [activation] * n_hidden
    names = list(activation)
    assert len(names) == n_hidden
    return names


# ---------------------------------------------------------------------------- losses

def log_softmax(z):
    zmax = z.max(axis=1, keepdims=True)
    shifted = z - zmax
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax(z):
    return np.exp(log_softmax(z))


def loss_value(loss, z, Y):
    """Mean loss of logits/outputs ``z`` (n, k) against targets ``Y`` (n, k)."""
    n, k = z.shape
    if loss == "cross_entropy":
        return float(-(Y * log_softmax(z)).sum() / n)
    if loss == "binary_cross_entropy":
        # -[y log s(z) + (1-y) log(1-s(z))] = softplus(z) - y z, softplus written stably.
        softplus = np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z)))
        return float((softplus - Y * z).mean())
    if loss == "poisson":
        # torch's PoissonNLLLoss(log_input=True): exp(z) - y z, z the log of the rate.
        return float((np.exp(z) - Y * z).mean())
    d = z - Y
    if loss == "mse":
        return float((d * d).mean())
    if loss == "mae":
        return float(np.abs(d).mean())
    if loss == "huber":
        ad = np.abs(d)
        per = np.where(ad <= HUBER_DELTA, 0.5 * d * d, HUBER_DELTA * (ad - 0.5 * HUBER_DELTA))
        return float(per.mean())
    raise ValueError(f"unknown loss {loss!r}")


def loss_gradient(loss, z, Y):
    """d(mean loss)/dz, shape (n, k)."""
    n, k = z.shape
    if loss == "cross_entropy":
        # d/dz of -sum_j y_j log softmax_j = softmax * sum_j y_j - y
        return (softmax(z) * Y.sum(axis=1, keepdims=True) - Y) / n
    if loss == "binary_cross_entropy":
        return (expit(z) - Y) / (n * k)
    if loss == "poisson":
        return (np.exp(z) - Y) / (n * k)
    d = z - Y
    if loss == "mse":
        return 2.0 * d / (n * k)
    if loss == "mae":
        return np.sign(d) / (n * k)   # sign(0) = 0, as torch
    if loss == "huber":
        return np.clip(d, -HUBER_DELTA, HUBER_DELTA) / (n * k)
    raise ValueError(f"unknown loss {loss!r}")


def output_activation(loss, z):
    if loss == "cross_entropy":
        return softmax(z)
    if loss == "binary_cross_entropy":
        return expit(z)
    if loss == "poisson":
        return np.exp(z)
    return z.copy()


def one_hot(y, k):
    Y = np.zeros((len(y), k))
    Y[np.arange(len(y)), np.asarray(y, dtype=np.int64)] = 1.0
    return Y


# ------------------------------------------------------------------ forward/backward

def forward(weights, X, activation="relu", loss="cross_entropy"):
    """Returns (Zs, As): pre-activations per layer and activations (As[0] is X).

    The last entry of As is the output activation fixed by the loss.
    """
    L = len(weights) // 2
    names = _hidden_names(activation, L - 1)
    A = np.asarray(X, dtype=np.float64)
    Zs, As = [], [A]
    for l in range(L):
        W = np.asarray(weights[2 * l], dtype=np.float64)
        b = np.asarray(weights[2 * l + 1], dtype=np.float64)
        Z = A @ W + b
        A = output_activation(loss, Z) if l == L - 1 else act_forward(names[l], Z)
        Zs.append(Z)
        As.append(A)
    return Zs, As


def predict_proba(weights, X, activation="relu", loss="cross_entropy"):
    return forward(weights, X, activation, loss)[1][-1]


def predict(weights, X, activation="relu", loss="cross_entropy"):
    out = predict_proba(weights, X, activation, loss)
    if loss == "cross_entropy":
        return out.argmax(axis=1)
    if loss == "binary_cross_entropy":
        return (out >= 0.5).astype(np.int64)
    return out


def loss_and_grads(weights, X, Y, activation="relu", loss="cross_entropy"):
    """Mean loss and its gradient ``[dW1, db1, ...]`` by the chain rule."""
    L = len(weights) // 2
    names = _hidden_names(activation, L - 1)
    Y = np.asarray(Y, dtype=np.float64)
    Zs, As = forward(weights, X, activation, loss)
    value = loss_value(loss, Zs[-1], Y)
    grads = [None] * (2 * L)
    delta = loss_gradient(loss, Zs[-1], Y)          # dLoss/dZ of the output layer
    for l in range(L - 1, -1, -1):
        grads[2 * l] = As[l].T @ delta
        grads[2 * l + 1] = delta.sum(axis=0)
        if l > 0:
            W = np.asarray(weights[2 * l], dtype=np.float64)
            delta = (delta @ W.T) * act_derivative(names[l - 1], Zs[l - 1])
    return value, grads


# ------------------------------------------------------------------------ optimizers
# torch.optim's documented algorithms, one state dict per parameter array.

class SGD:
    def __init__(self, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0):
        self.lr, self.momentum, self.nesterov, self.wd = lr, momentum, nesterov, weight_decay
        self.buf = None

    def step(self, params, grads):
        if self.buf is None:
            self.buf = [None] * len(params)
        for i, (p, g) in enumerate(zip(params, grads)):
            if self.wd != 0:
                g = g + self.wd * p
            if self.momentum != 0:
                if self.buf[i] is None:
                    self.buf[i] = g.copy()       # first step: b_1 = g_1
                else:
                    self.buf[i] = self.momentum * self.buf[i] + g   # dampening 0
                if self.nesterov:
                    g = g + self.momentum * self.buf[i]
                else:
                    g = self.buf[i]
            p -= self.lr * g


class Adam:
    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 decoupled=False):
        self.lr, self.b1, self.b2, self.eps = lr, betas[0], betas[1], eps
        self.wd, self.decoupled = weight_decay, decoupled
        self.t = 0
        self.m = self.v = None

    def step(self, params, grads):
        if self.m is None:
            self.m = [np.zeros_like(p) for p in params]
            self.v = [np.zeros_like(p) for p in params]
        self.t += 1
        t = self.t
        for i, (p, g) in enumerate(zip(params, grads)):
            if self.wd != 0:
                if self.decoupled:
                    p *= 1.0 - self.lr * self.wd          # AdamW: decay the weights first
                else:
                    g = g + self.wd * p                   # Adam: L2 penalty in the gradient
            self.m[i] = self.b1 * self.m[i] + (1.0 - self.b1) * g
            self.v[i] = self.b2 * self.v[i] + (1.0 - self.b2) * g * g
            m_hat = self.m[i] / (1.0 - self.b1 ** t)
            v_hat = self.v[i] / (1.0 - self.b2 ** t)
            p -= self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


class AdamW(Adam):
    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(lr, betas, eps, weight_decay, decoupled=True)


class RMSprop:
    def __init__(self, lr=0.01, alpha=0.99, eps=1e-8, momentum=0.0, weight_decay=0.0):
        self.lr, self.alpha, self.eps = lr, alpha, eps
        self.momentum, self.wd = momentum, weight_decay
        self.sq = self.buf = None

    def step(self, params, grads):
        if self.sq is None:
            self.sq = [np.zeros_like(p) for p in params]
            self.buf = [np.zeros_like(p) for p in params]
        for i, (p, g) in enumerate(zip(params, grads)):
            if self.wd != 0:
                g = g + self.wd * p
            self.sq[i] = self.alpha * self.sq[i] + (1.0 - self.alpha) * g * g
            denom = np.sqrt(self.sq[i]) + self.eps
            if self.momentum > 0:
                self.buf[i] = self.momentum * self.buf[i] + g / denom
                p -= self.lr * self.buf[i]
            else:
                p -= self.lr * g / denom


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop}


def make_optimizer(spec):
    """``spec``: {"name": "adam", "lr": ..., other torch-style keyword arguments}."""
    spec = dict(spec)
    return OPTIMIZERS[spec.pop("name")](**spec)


# -------------------------------------------------------------------------- training

def train(weights, X, Y, epochs, batch_size, optimizer_spec, activation="relu",
          loss="cross_entropy"):
    """Mini-batch training over the rows in order (no shuffling).

    Every batch, the last partial one included, takes one optimizer step on its mean loss
    (averaged over its own rows). Returns (new weights, per-epoch mean losses), the epoch
    loss being the row-weighted mean of the batch losses.
    """
    params = [np.array(w, dtype=np.float64) for w in weights]
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim == 1:
        Y = Y.reshape(-1, 1)
    opt = make_optimizer(optimizer_spec)
    n = X.shape[0]
    epoch_losses = []
    for _ in range(epochs):
        total = 0.0
        for b0 in range(0, n, batch_size):
            xb, yb = X[b0:b0 + batch_size], Y[b0:b0 + batch_size]
            value, grads = loss_and_grads(params, xb, yb, activation, loss)
            total += value * xb.shape[0]
            opt.step(params, grads)
        epoch_losses.append(total / n)
    return params, epoch_losses


def relative_error(a, b):
    """max over arrays of ||a - b|| / max(||b||, tiny): a norm-based relative error."""
    if isinstance(a, np.ndarray) or np.isscalar(a):
        a, b = [a], [b]
    worst = 0.0
    for x, y in zip(a, b):
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        assert x.shape == y.shape, (x.shape, y.shape)
        worst = max(worst, float(np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-300)))
    return worst
