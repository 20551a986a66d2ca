"""scikit-learn's MLP conventions in fastbp's terms, shared by the estimators
(fastbp.sklearn) and the grid search (fastbp.search): its initial weights, and the scale
between its losses' gradients and fastbp's."""
import numpy as np


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
