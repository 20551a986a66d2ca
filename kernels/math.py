"""Scalar activations, derivatives and losses: the one source of truth for the math.

Plain Python functions over scalars using only ``math``; ``kernels.cpu`` compiles them with
``@njit`` and ``kernels.cuda`` with ``@cuda.jit(device=True)``, so both backends share the
formulas. Codes are small integers so a kernel can branch on them in its epilogue.
"""
import math
import types

# Hidden-layer activations.
IDENTITY = 0
RELU = 1
LEAKY_RELU = 2
ELU = 3
GELU = 4
SIGMOID = 5
TANH = 6
SILU = 7

ACTIVATIONS = {
    "identity": IDENTITY,
    "relu": RELU,
    "leaky_relu": LEAKY_RELU,
    "elu": ELU,
    "gelu": GELU,
    "sigmoid": SIGMOID,
    "tanh": TANH,
    "silu": SILU,
}

# Losses; each fixes its output activation so the output delta is (a - y) up to a scale.
CROSS_ENTROPY = 0          # softmax output
BINARY_CROSS_ENTROPY = 1   # sigmoid output, loss computed from logits
MSE = 2                    # identity output
MAE = 3
HUBER = 4
POISSON = 5                # exp output (log link), loss exp(z) - y z

LOSSES = {
    "cross_entropy": CROSS_ENTROPY,
    "binary_cross_entropy": BINARY_CROSS_ENTROPY,
    "mse": MSE,
    "mae": MAE,
    "huber": HUBER,
    "poisson": POISSON,
}

# PyTorch's defaults.
LEAKY_SLOPE = 0.01
ELU_ALPHA = 1.0
HUBER_DELTA = 1.0
_INV_SQRT2 = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327


def sigmoid(z):
    # Two branches so that exp never overflows.
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def activate(code, z):
    """f(z) for activation ``code``."""
    if code == RELU:
        return z if z > 0 else 0.0 * z
    if code == LEAKY_RELU:
        return z if z > 0 else LEAKY_SLOPE * z
    if code == ELU:
        return z if z > 0 else ELU_ALPHA * (math.exp(z) - 1.0)
    if code == GELU:
        return 0.5 * z * (1.0 + math.erf(z * _INV_SQRT2))
    if code == SIGMOID:
        return sigmoid(z)
    if code == TANH:
        return math.tanh(z)
    if code == SILU:
        return z * sigmoid(z)
    if code == IDENTITY:
        return z
    return math.nan       # an unknown code: NaN, caught as divergence, never another f


def activate_grad(code, z, a):
    """f'(z), given the pre-activation ``z`` and the activation ``a = f(z)``.

    Derivatives at the kinks follow PyTorch (relu'(0) = 0, leaky_relu'(0) = slope).
    """
    if code == RELU:
        return 1.0 if z > 0 else 0.0
    if code == LEAKY_RELU:
        return 1.0 if z > 0 else LEAKY_SLOPE
    if code == ELU:
        return 1.0 if z > 0 else a + ELU_ALPHA
    if code == GELU:
        return 0.5 * (1.0 + math.erf(z * _INV_SQRT2)) + z * _INV_SQRT_2PI * math.exp(-0.5 * z * z)
    if code == SIGMOID:
        return a * (1.0 - a)
    if code == TANH:
        return 1.0 - a * a
    if code == SILU:
        s = sigmoid(z)
        return s * (1.0 + z * (1.0 - s))
    if code == IDENTITY:
        return 1.0
    return math.nan


def bce_with_logits(z, y):
    """-(y log sigmoid(z) + (1 - y) log(1 - sigmoid(z))), stable for any z."""
    return max(z, 0.0) - z * y + math.log1p(math.exp(-abs(z)))


def pointwise_loss(code, z, y):
    """Elementwise loss of the regression losses and BCE (softmax CE is row-wise)."""
    if code == BINARY_CROSS_ENTROPY:
        return bce_with_logits(z, y)
    if code == POISSON:
        return math.exp(z) - y * z       # torch's PoissonNLLLoss(log_input=True)
    d = z - y
    if code == MSE:
        return d * d
    if code == MAE:
        return abs(d)
    if code == HUBER:
        ad = abs(d)
        if ad <= HUBER_DELTA:
            return 0.5 * d * d
        return HUBER_DELTA * (ad - 0.5 * HUBER_DELTA)
    return math.nan


def pointwise_loss_grad(code, z, y):
    """d loss / d z of ``pointwise_loss`` (before the 1/count of the mean)."""
    if code == BINARY_CROSS_ENTROPY:
        return sigmoid(z) - y
    if code == POISSON:
        return math.exp(z) - y
    d = z - y
    if code == MSE:
        return 2.0 * d
    if code == MAE:
        # torch.sign(0) == 0
        if d > 0:
            return 1.0
        if d < 0:
            return -1.0
        return 0.0
    if code == HUBER:
        if d > HUBER_DELTA:
            return HUBER_DELTA
        if d < -HUBER_DELTA:
            return -HUBER_DELTA
        return d
    return math.nan


def loss_scale(code, rows, n_out):
    """Factor of a batch's summed loss: 1/rows for cross-entropy (mean over rows), 1/(rows *
    n_out) for the elementwise losses (mean over all elements)."""
    if code == CROSS_ENTROPY:
        return 1.0 / rows
    return 1.0 / (rows * n_out)


def output_activate(code, z):
    """Output activation of the pointwise losses (softmax is handled row-wise)."""
    if code == BINARY_CROSS_ENTROPY:
        return sigmoid(z)
    if code == POISSON:
        return math.exp(z)
    if code == MSE or code == MAE or code == HUBER:
        return z
    return math.nan


# Dropout: a counter-based hash decides each unit's fate from (seed, step, layer, row, col),
# so the mask is the same whatever the thread count or backend, and backward recomputes it
# instead of storing it. Products are masked to 32 bits after each multiply, so int64
# wrap-around in compiled code and Python's big ints give the same bits.
_M32 = 0xFFFFFFFF


def hash32(x):
    x = x & _M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _M32
    x ^= x >> 16
    return x


def dropout_keep(seed, step, layer, row, col, rate):
    """True when unit (row, col) of ``layer`` survives dropout at optimizer step ``step``."""
    h = hash32(seed + hash32(step + hash32(layer + hash32(row + hash32(col)))))
    return h >= rate * 4294967296.0


# Optimizers: one element's update, torch.optim's rules. Each optimizer has a code, its
# hyper-parameters by name (their order is that of the packed ``hyper`` array the kernels
# get: fastbp.optimizers packs it by these names) and its state slots by name (torch.optim's
# state keys; a slot is a row of the flat (slots, n_params) state). Both backends call the
# two functions below, and nothing else decodes ``hyper``:
#
# * optimizer_coefficients(code, hyper, lr, step): what one step computes once (in
#   float64): the rule's constants, N_COEFFS of them, named per rule below;
# * optimizer_step(code, p, g, s0, s1, k0 .. k9): one element's update from those
#   constants, cast to the parameters' dtype by the caller (a float literal here would
#   promote float32 updates to float64 and stop them vectorising).
#
# An unknown code gives NaN (never another optimizer's rule), caught as divergence.
SGD = 0
ADAM = 1
RMSPROP = 2
ADAGRAD = 3

OPTIMIZER_HYPER = {
    SGD: ("momentum", "nesterov", "weight_decay"),
    ADAM: ("beta1", "beta2", "eps", "weight_decay", "decoupled"),
    RMSPROP: ("alpha", "eps", "momentum", "weight_decay"),
    ADAGRAD: ("lr_decay", "weight_decay", "eps", "initial_accumulator_value"),
}
OPTIMIZER_STATE = {
    SGD: ("momentum_buffer",),
    ADAM: ("exp_avg", "exp_avg_sq"),
    RMSPROP: ("square_avg", "momentum_buffer"),
    ADAGRAD: ("sum",),
}
N_COEFFS = 10


def _hyper_index(code, name):
    return OPTIMIZER_HYPER[code].index(name)


SGD_MOMENTUM = _hyper_index(SGD, "momentum")
SGD_NESTEROV = _hyper_index(SGD, "nesterov")
SGD_WEIGHT_DECAY = _hyper_index(SGD, "weight_decay")
ADAM_BETA1 = _hyper_index(ADAM, "beta1")
ADAM_BETA2 = _hyper_index(ADAM, "beta2")
ADAM_EPS = _hyper_index(ADAM, "eps")
ADAM_WEIGHT_DECAY = _hyper_index(ADAM, "weight_decay")
ADAM_DECOUPLED = _hyper_index(ADAM, "decoupled")
RMSPROP_ALPHA = _hyper_index(RMSPROP, "alpha")
RMSPROP_EPS = _hyper_index(RMSPROP, "eps")
RMSPROP_MOMENTUM = _hyper_index(RMSPROP, "momentum")
RMSPROP_WEIGHT_DECAY = _hyper_index(RMSPROP, "weight_decay")
ADAGRAD_LR_DECAY = _hyper_index(ADAGRAD, "lr_decay")
ADAGRAD_WEIGHT_DECAY = _hyper_index(ADAGRAD, "weight_decay")
ADAGRAD_EPS = _hyper_index(ADAGRAD, "eps")


def sgd_step(p, g, buf, lr, momentum, nesterov, weight_decay):
    """torch.optim.SGD with dampening 0: g += wd*p; buf = mu*buf + g; p -= lr*(g + mu*buf | buf)."""
    if weight_decay != 0:
        g = g + weight_decay * p
    if momentum != 0:
        # A zero-initialised buffer makes the first step buf = g, as torch's clone does.
        buf = momentum * buf + g
        if nesterov != 0:
            g = g + momentum * buf
        else:
            g = buf
    return p - lr * g, buf


def adam_step(p, g, m, v, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, l2, decay,
              step_size, inv_bias2_sqrt):
    """torch.optim.Adam (L2: g += l2*p) and AdamW (decay = 1 - lr*wd, else 1).

    m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g^2;
    p -= step_size * m / (sqrt(v) * inv_bias2_sqrt + eps)
    with step_size = lr / (1 - b1^t) and inv_bias2_sqrt = 1 / sqrt(1 - b2^t).
    """
    if l2 != 0:
        g = g + l2 * p
    p = p * decay
    m = beta1 * m + one_minus_beta1 * g
    v = beta2 * v + one_minus_beta2 * g * g
    p = p - step_size * m / (math.sqrt(v) * inv_bias2_sqrt + eps)
    return p, m, v


def rmsprop_step(p, g, sq, buf, lr, alpha, one_minus_alpha, eps, momentum, weight_decay):
    """torch.optim.RMSprop (centered=False).

    sq = alpha*sq + (1-alpha)*g^2; avg = sqrt(sq) + eps;
    momentum: buf = mu*buf + g/avg, p -= lr*buf; else p -= lr*g/avg
    """
    if weight_decay != 0:
        g = g + weight_decay * p
    sq = alpha * sq + one_minus_alpha * g * g
    avg = math.sqrt(sq) + eps
    if momentum > 0:
        buf = momentum * buf + g / avg
        return p - lr * buf, sq, buf
    return p - lr * g / avg, sq, buf


def adam_constants(lr, beta1, beta2, weight_decay, decoupled, step):
    """(step_size, inv_bias2_sqrt, l2, decay) of Adam/AdamW at optimizer step ``step``."""
    step_size = lr / (1.0 - beta1 ** step)
    inv_bias2_sqrt = 1.0 / math.sqrt(1.0 - beta2 ** step)
    if decoupled != 0:
        return step_size, inv_bias2_sqrt, 0.0, 1.0 - lr * weight_decay
    return step_size, inv_bias2_sqrt, weight_decay, 1.0


def optimizer_slots(code, hyper):
    """State slots optimizer ``code`` uses with these hyper-parameters (SGD's momentum
    buffer and RMSprop's only with momentum): the kernels touch no others."""
    if code == SGD:
        return 1 if hyper[SGD_MOMENTUM] != 0 else 0
    if code == ADAM:
        return 2
    if code == RMSPROP:
        return 2 if hyper[RMSPROP_MOMENTUM] > 0 else 1
    if code == ADAGRAD:
        return 1
    return 0


def optimizer_coefficients(code, hyper, lr, step):
    """The N_COEFFS constants of one step of optimizer ``code`` at step ``step`` (1-based)
    and learning rate ``lr``, in float64 (see optimizer_step for what each rule reads)."""
    z = 0.0
    if code == SGD:
        return (lr, hyper[SGD_MOMENTUM], hyper[SGD_NESTEROV], hyper[SGD_WEIGHT_DECAY], z, z,
                z, z, z, z)
    if code == ADAM:
        step_size, inv_b2, l2, decay = adam_constants(
            lr, hyper[ADAM_BETA1], hyper[ADAM_BETA2], hyper[ADAM_WEIGHT_DECAY],
            hyper[ADAM_DECOUPLED], step)
        return (hyper[ADAM_BETA1], 1.0 - hyper[ADAM_BETA1], hyper[ADAM_BETA2],
                1.0 - hyper[ADAM_BETA2], hyper[ADAM_EPS], l2, decay, step_size, inv_b2, z)
    if code == RMSPROP:
        return (lr, hyper[RMSPROP_ALPHA], 1.0 - hyper[RMSPROP_ALPHA], hyper[RMSPROP_EPS],
                hyper[RMSPROP_MOMENTUM], hyper[RMSPROP_WEIGHT_DECAY], z, z, z, z)
    if code == ADAGRAD:
        # torch.optim.Adagrad: g += wd*p; sum += g^2; p -= clr g / (sqrt(sum) + eps), with
        # clr = lr / (1 + (t - 1) lr_decay): RMSprop's step with alpha and 1 - alpha both
        # 1 and no momentum, exactly (x 1.0 rounds nothing). One rule fewer keeps the
        # update loop small enough for LLVM to inline and vectorise.
        clr = lr / (1.0 + (step - 1) * hyper[ADAGRAD_LR_DECAY])
        return (clr, 1.0, 1.0, hyper[ADAGRAD_EPS], z, hyper[ADAGRAD_WEIGHT_DECAY], z, z, z, z)
    n = math.nan
    return (n, n, n, n, n, n, n, n, n, n)


def optimizer_step(code, p, g, s0, s1, k0, k1, k2, k3, k4, k5, k6, k7, k8, k9):
    """One element's update: (p, s0, s1) after the step, s0/s1 its state slots (a slot the
    rule does not use comes back as it went in); k0..k9 the step's coefficients."""
    if code == SGD:
        p, s0 = sgd_step(p, g, s0, k0, k1, k2, k3)
        return p, s0, s1
    if code == ADAM:
        return adam_step(p, g, s0, s1, k0, k1, k2, k3, k4, k5, k6, k7, k8)
    if code == RMSPROP or code == ADAGRAD:
        return rmsprop_step(p, g, s0, s1, k0, k1, k2, k3, k4, k5)
    nan = (p - p) / (p - p)     # NaN of p's type: an unknown code diverges, loudly
    return nan, s0, s1


def row_metric(Z, r, Y, s, n, loss):
    """Training metric of row ``r`` of logits Z against target row ``s`` of Y: correct (0/1)
    for cross-entropy, fraction of correct outputs for BCE, squared residual summed over
    the outputs for regression (R^2 from it). Indexed in 2-D, not through row views: on
    the CPU a view per row cost more than a narrow row's arithmetic."""
    if loss == CROSS_ENTROPY:
        zbest = 0
        ybest = 0
        for j in range(1, n):
            if Z[r, j] > Z[r, zbest]:
                zbest = j
            if Y[s, j] > Y[s, ybest]:
                ybest = j
        return 1.0 if zbest == ybest else 0.0
    acc = 0.0
    if loss == POISSON:          # residuals of the outputs exp(z), not of the logits
        for j in range(n):
            d = math.exp(Z[r, j]) - Y[s, j]
            acc += d * d
        return acc
    for j in range(n):
        if loss == BINARY_CROSS_ENTROPY:
            if (Z[r, j] >= 0) == (Y[s, j] >= 0.5):
                acc += 1.0
        else:
            d = Z[r, j] - Y[s, j]
            acc += d * d
    if loss == BINARY_CROSS_ENTROPY:
        return acc / n
    return acc


def output_rows(Z, z0, A, a0, count, n, loss):
    """Rows a0.. of A = the output activation of rows z0.. of logits Z (``count`` rows):
    softmax (cross-entropy), sigmoid (BCE) or identity. The CPU passes a whole block (a
    call per row costs many times the work of a one-output row); a GPU thread, its row."""
    for q in range(count):
        r = z0 + q
        ra = a0 + q
        if loss == CROSS_ENTROPY:
            zmax = Z[r, 0]
            for j in range(1, n):
                zmax = max(zmax, Z[r, j])
            s = 0.0
            for j in range(n):
                e = math.exp(Z[r, j] - zmax)
                A[ra, j] = e
                s += e
            inv = 1.0 / s
            for j in range(n):
                A[ra, j] *= inv
        else:
            for j in range(n):
                A[ra, j] = output_activate(loss, Z[r, j])


_FUNCTIONS = ("hash32", "dropout_keep", "sigmoid", "activate", "activate_grad",
              "bce_with_logits", "pointwise_loss", "pointwise_loss_grad", "loss_scale",
              "output_activate", "sgd_step", "adam_step", "rmsprop_step",
              "adam_constants", "optimizer_slots", "optimizer_coefficients", "optimizer_step",
              "row_metric", "output_rows")


def compile_with(jit, tag):
    """Compile every scalar function above with ``jit`` (``njit`` or a CUDA device jit).

    Each function is cloned over a namespace in which the functions it calls are the
    compiled ones, so calls between them stay inside compiled code. ``tag`` (say, a hash of
    the compile options) goes into each clone's name: Numba's on-disk cache keys a function
    by its file and name, not by its options, so without it a cached clone compiled with
    other options would be loaded after those options change.
    """
    namespace = dict(globals())
    compiled = {}
    for name in _FUNCTIONS:
        f = namespace[name]
        clone = types.FunctionType(f.__code__, namespace, name, f.__defaults__, f.__closure__)
        clone.__qualname__ = f"{f.__qualname__}_{tag}"
        clone.__module__ = f.__module__
        clone.__doc__ = f.__doc__
        namespace[name] = compiled[name] = jit(clone)
    return types.SimpleNamespace(**compiled)
