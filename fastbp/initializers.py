"""Weight initialisation: one scheme per name, drawn in float64 from the model's generator
(so the dtype never changes the weights), biases zero."""
import math

from . import registry

INITS = ("auto", "he_normal", "he_uniform", "glorot_normal", "glorot_uniform")


def scheme(init, activation):
    """The scheme of a layer followed by ``activation`` (None: the output layer):
    ``init`` itself, or for "auto" He normal for the ReLU family, Glorot uniform
    otherwise (as PyTorch and Keras users expect)."""
    if init != "auto":
        return init
    if activation is not None and registry.activation(activation).init == "he":
        return "he_normal"
    return "glorot_uniform"


def draw(rng, scheme_name, fan_in, fan_out):
    """A (fan_in, fan_out) float64 weight matrix of ``scheme_name``."""
    shape = (fan_in, fan_out)
    if scheme_name == "he_normal":
        return rng.normal(0.0, math.sqrt(2.0 / fan_in), shape)
    if scheme_name == "he_uniform":
        lim = math.sqrt(6.0 / fan_in)
        return rng.uniform(-lim, lim, shape)
    if scheme_name == "glorot_normal":
        return rng.normal(0.0, math.sqrt(2.0 / (fan_in + fan_out)), shape)
    if scheme_name == "glorot_uniform":
        lim = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-lim, lim, shape)
    raise ValueError(f"unknown init scheme {scheme_name!r}")


def initial_params(layout, activations, init, rng, params):
    """Fill the flat ``params`` (zeros) with every layer's initial weights."""
    for l in range(layout.n_layers):
        act = activations[l] if l < len(activations) else None
        w = draw(rng, scheme(init, act), int(layout.sizes[l]), int(layout.sizes[l + 1]))
        params[layout.w_slice(l)] = w.ravel()
    return params
