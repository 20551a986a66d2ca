"""scikit-learn's MLP conventions in fastbp's terms, shared by the estimators
(fastbp.sklearn) and the grid search (fastbp.search): its initial weights, the scale
between its losses' gradients and fastbp's, and the optimizer that takes its steps."""
import numpy as np

from .optimizers import OPTIMIZERS

# The estimator parameters, besides the rate and alpha, that shape its optimizer.
OPTIMIZER_PARAMS = ("momentum", "nesterovs_momentum", "beta_1", "beta_2", "epsilon")


def grad_scale(loss, n_outputs):
    """scikit-learn's gradient over fastbp's for fastbp loss ``loss`` with ``n_outputs``
    outputs (fastbp.sklearn's module notes): the estimators scale the learning rate (sgd), epsilon
    (adam) and weight decay by it."""
    if loss == "cross_entropy" or loss in ("mae", "huber"):
        return 1.0
    return n_outputs / 2.0 if loss == "mse" else float(n_outputs)


def glorot(rs, sizes, activation, dtype):
    """scikit-learn's initial weights: uniform in +-sqrt(6 / (fan_in + fan_out)) (2 for
    logistic), biases too, drawn in its order from its generator."""
    factor = 2.0 if activation == "logistic" else 6.0
    out = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        bound = np.sqrt(factor / (fan_in + fan_out))
        out.append(rs.uniform(-bound, bound, (fan_in, fan_out)).astype(dtype, copy=False))
        out.append(rs.uniform(-bound, bound, fan_out).astype(dtype, copy=False))
    return out


def scaled_optimizer(name, lr, alpha, batch_size, c, *, momentum, nesterovs_momentum, beta_1,
                     beta_2, epsilon):
    """fastbp's optimizer ``name`` taking scikit-learn's steps in fastbp's loss scale ``c``
    (grad_scale): the L2 penalty ``alpha`` as weight decay, sgd's rate and adam's epsilon
    scaled, sgd's momentum, adam's betas; another optimizer gets the rate and decay only."""
    cls = OPTIMIZERS[name]
    decay = alpha / (batch_size * c)
    if name == "sgd":
        # A scaled step is scikit-learn's step on its (c times larger) gradient.
        return cls(lr=lr * c, momentum=momentum, weight_decay=decay,
                   nesterov=bool(nesterovs_momentum and momentum > 0))
    if name in ("adam", "adamw"):
        return cls(lr=lr, betas=(beta_1, beta_2), eps=epsilon / c, weight_decay=decay)
    return cls(lr=lr, weight_decay=decay)
