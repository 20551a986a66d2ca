"""PyTorch in and out: :meth:`fastbp.MLP.to_torch` and :func:`fastbp.from_torch`.

``to_torch`` builds a ``torch.nn.Sequential`` of ``Linear`` modules and activation modules
(``Dropout`` after a hidden layer that has a rate), and ends in the loss's head
(``Softmax(dim=-1)`` or ``Sigmoid``) unless ``output="logits"``. ``from_torch`` reads such a
Sequential back. Weights are copied bit for bit both ways: fastbp stores W as
(n_in, n_out), ``Linear.weight`` is (n_out, n_in), and a transpose changes no value.

torch is imported only inside these functions.
"""
import numpy as np

from ..errors import ConfigError
from ..files import ModelFile
from ..kernels import math as km
from ..registry import ACTIVATIONS, LINKS, LOSSES
from .common import check_output, lookup, output_link, require

_DTYPES = ("float32", "float64")


def _torch():
    return require("torch", "torch", "PyTorch interop")


# A factory of the module of each hidden activation and each output link, from the registry
# (None: no module, the Linear's output goes on as it is). from_torch reads the same
# tables backwards: a module of an entry's type must have the entry's constants.
ACTIVATION_MODULES = {name: a.torch for name, a in ACTIVATIONS.items()}
LINK_MODULES = {name: k.torch for name, k in LINKS.items()}


def module_plan(model, output="logits"):
    """``[(kind, argument)]``, the Sequential's modules in order: ("linear", layer),
    ("activation", name), ("dropout", rate) and ("head", link). Shared by to_torch and the
    safetensors writer, which names its tensors as this Sequential's state_dict does."""
    check_output(output)
    n_layers = len(model.sizes) - 1
    plan = []
    for l in range(n_layers):
        plan.append(("linear", l))
        if l < n_layers - 1:
            act = model.activations[l]
            if lookup(ACTIVATION_MODULES, act, "activation", "to_torch") is not None:
                plan.append(("activation", act))
            rate = float(model._drop[l])
            if rate > 0.0:
                plan.append(("dropout", rate))
    if output == "auto":
        link = output_link(model.loss)
        if lookup(LINK_MODULES, link, "output link", "to_torch") is not None:
            plan.append(("head", link))
    return plan


def state_dict_keys(model):
    """``[(weight key, bias key)]`` per layer, as in to_torch(...).state_dict()."""
    return [(f"{i}.weight", f"{i}.bias")
            for i, (kind, _) in enumerate(module_plan(model)) if kind == "linear"]


def to_torch(model, output="auto"):
    """The network as a ``torch.nn.Sequential`` with the same weights.

    Parameters
    ----------
    model : fastbp.MLP
    output : "auto" or "logits"
        "auto" ends in the loss's head (``Softmax(dim=-1)`` for cross_entropy, ``Sigmoid``
        for binary_cross_entropy, nothing for regression), so the module's output equals
        predict_proba / predict. "logits" stops before it: what ``nn.CrossEntropyLoss`` and
        ``nn.BCEWithLogitsLoss`` expect when training on in PyTorch.

    Returns
    -------
    torch.nn.Sequential
        ``Linear(n_in, n_out)`` per layer (weight (n_out, n_in) = W.T, float32 or float64
        as the model), the hidden activations (PyTorch's modules with fastbp's constants)
        and ``Dropout(rate)`` where the model has dropout. Parameters require grad, except
        those of frozen layers, and the module is in training mode, as a new PyTorch
        module is: call ``.eval()`` before inference when it has Dropout. torch's random
        generator is not touched.
    """
    plan = module_plan(model, output)       # checks every mapping before torch is imported
    torch = _torch()
    nn = torch.nn
    dtype = getattr(torch, model.dtype.name)
    sync = getattr(model, "_engine_sync", None)
    if sync is not None:
        sync()
    weights = model.get_weights()
    modules = []
    for kind, arg in plan:
        if kind == "linear":
            W, b = weights[2 * arg], weights[2 * arg + 1]
            # skip_init: no random initialisation to overwrite, and no draw from torch's
            # global generator behind the caller's back.
            lin = torch.nn.utils.skip_init(nn.Linear, W.shape[0], W.shape[1], dtype=dtype)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))
                lin.bias.copy_(torch.from_numpy(b))
            if not model.trainable[arg]:
                lin.requires_grad_(False)        # PyTorch's way of freezing a layer
            modules.append(lin)
        elif kind == "activation":
            modules.append(ACTIVATION_MODULES[arg](nn))
        elif kind == "dropout":
            modules.append(nn.Dropout(p=arg))
        else:
            modules.append(LINK_MODULES[arg](nn))
    return nn.Sequential(*modules)


# ------------------------------------------------------------------------ from_torch
def _flatten(module, torch, prefix=""):
    """``[(position, module)]`` of a Sequential, nested Sequentials opened in place."""
    out = []
    for name, child in module.named_children():
        where = f"{prefix}{name}"
        if isinstance(child, torch.nn.Sequential):
            out.extend(_flatten(child, torch, where + "."))
        else:
            out.append((where, child))
    return out


def _signature(m, nn):
    """What a module computes, for comparing it with a table entry: its type and its
    constants (extra_repr), less in-place-ness, with Softmax over dim 1 or None taken as
    over the last dim (the same rows for fastbp's 2-D inputs)."""
    text = m.extra_repr().replace(", inplace=True", "").replace("inplace=True", "")
    if isinstance(m, nn.Softmax) and m.dim in (1, None):
        text = "dim=-1"
    return type(m), text


def _match(m, where, table, nn, what):
    """The table's name for module ``m`` (the table's factories read backwards), None if
    no entry has its type; ConfigError if one has its type but other constants."""
    for name, factory in table.items():
        if factory is None:
            continue
        ref = factory(nn)
        if type(m) is type(ref):
            if _signature(m, nn) != _signature(ref, nn):
                raise ConfigError(f"module {where} ({m}) is not fastbp's {name} {what}, "
                                  f"which is {ref}")
            return name
    return None


# The loss that each head implies when from_torch is given none: the one loss of its link.
HEAD_LOSSES = {link: names[0] for link, names in
               ((k, [n for n, loss in LOSSES.items() if loss.link == k]) for k in LINKS)
               if len(names) == 1}

def _supported(nn):
    """The modules from_torch reads, for error messages (from the tables)."""
    acts = [str(f(nn)) for f in ACTIVATION_MODULES.values() if f is not None]
    heads = [str(f(nn)) for f in LINK_MODULES.values() if f is not None]
    return (f"Linear, {', '.join(acts)}, Identity and Dropout, ending in an optional "
            f"{' or '.join(heads)}")


def _layers(items, nn):
    """Split the flat module list into layers: ``[(where, Linear, [(where, module)...])]``,
    each Linear with the modules that follow it up to the next Linear."""
    layers = []
    for where, m in items:
        if isinstance(m, nn.Identity):
            continue                # computes nothing
        if isinstance(m, nn.Linear):
            layers.append((where, m, []))
        elif not layers:
            raise ConfigError(f"module {where} ({m}) comes before the first Linear; "
                              f"from_torch reads Sequentials of {_supported(nn)}")
        else:
            layers[-1][2].append((where, m))
    if not layers:
        raise ConfigError(f"from_torch: the Sequential has no Linear layer; it reads "
                          f"Sequentials of {_supported(nn)}")
    return layers


def _hidden_tail(tail, nn):
    """(activation, dropout rate) from the modules after a hidden Linear: at most one
    activation, then at most one Dropout (fastbp drops out the activation's output)."""
    act, rate = "identity", 0.0
    for i, (where, m) in enumerate(tail):
        if isinstance(m, nn.Dropout) and rate == 0.0 and i == len(tail) - 1:
            rate = float(m.p)
            continue
        name = _match(m, where, ACTIVATION_MODULES, nn, "activation")
        if name is not None and i == 0:
            act = name
            continue
        if isinstance(m, nn.Dropout) or name is not None:
            raise ConfigError(f"module {where} ({m}) does not fit fastbp's layer: a Linear "
                              f"is followed by at most one activation, then at most one "
                              f"Dropout")
        raise ConfigError(f"module {where} ({m}) is not supported by from_torch; it reads "
                          f"Sequentials of {_supported(nn)}")
    return act, rate


def _output_tail(tail, nn):
    """The output link after the last Linear: None, "softmax" or "sigmoid"."""
    for i, (where, m) in enumerate(tail):
        link = _match(m, where, LINK_MODULES, nn, "output head")
        if link is not None and i == len(tail) - 1:
            return link
        if link is not None or isinstance(m, nn.Dropout) or \
                _match(m, where, ACTIVATION_MODULES, nn, "activation") is not None:
            raise ConfigError(f"module {where} ({m}) follows the last Linear; fastbp's "
                              f"output layer has no activation or dropout of its own, only "
                              f"the loss's head as the very last module: Softmax(dim=-1) "
                              f"(cross_entropy) or Sigmoid (binary_cross_entropy)")
        raise ConfigError(f"module {where} ({m}) is not supported by from_torch; it reads "
                          f"Sequentials of {_supported(nn)}")
    return None


def _as_numpy(t, torch):
    """A parameter's values as NumPy, bits unchanged (float16/bfloat16 go up to float32,
    which represents every one of their values)."""
    t = t.detach().cpu()
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.to(torch.float32)
    return t.numpy()


def read_torch(module, loss=None, dtype=None, **kwargs):
    """The :class:`fastbp.files.ModelFile` of a ``torch.nn.Sequential``: the config and
    weights of :func:`fastbp.from_torch`'s model.

    Parameters
    ----------
    module : torch.nn.Sequential
        ``Linear`` layers, each but the last optionally followed by one activation
        (``ReLU``, ``LeakyReLU(0.01)``, ``ELU(alpha=1)``, ``GELU()``, ``Sigmoid``, ``Tanh``;
        none means identity) and then one ``Dropout``. After the last ``Linear``, as the
        very last module: ``Softmax(dim=-1)`` (loss cross_entropy), ``Sigmoid``
        (binary_cross_entropy), or nothing. ``Identity`` modules are skipped and nested
        Sequentials read in order. ``Linear(bias=False)`` gets zero biases; a Linear none of
        whose parameters requires grad becomes a frozen layer.
    loss : str, optional
        Default: the head's loss, else "mse" (identity output, so predict gives the last
        Linear's values). Pass the loss of a network that ends in logits, e.g.
        ``loss="cross_entropy"`` for one trained with ``nn.CrossEntropyLoss``. A head and a
        ``loss`` must agree.
    dtype : "float32" or "float64", optional
        Default: the dtype of the Linear weights, which must then all be float32 or all
        float64; float16/bfloat16 weights need an explicit dtype.
    **kwargs
        Passed on to :class:`fastbp.MLP` (``seed``, ``device``, ``init``).

    Returns
    -------
    fastbp.files.ModelFile
        Its W are ``weight.T`` and its b ``bias``, bit for bit (converted when ``dtype``
        differs from the weights').

    Raises
    ------
    ConfigError
        A module that fastbp cannot represent, named with its position in the Sequential.
    """
    torch = _torch()
    nn = torch.nn
    if not isinstance(module, nn.Sequential):
        raise ConfigError(f"from_torch needs a torch.nn.Sequential, got "
                          f"{type(module).__name__}; it reads Sequentials of {_supported(nn)}")
    for key in ("sizes", "activation", "dropout", "loss", "dtype"):
        if key in kwargs:
            raise ConfigError(f"from_torch reads {key} from the module; do not pass it")
    layers = _layers(_flatten(module, torch), nn)
    for where, lin, _ in layers:
        if isinstance(lin.weight, nn.parameter.UninitializedParameter):
            raise ConfigError(f"module {where} ({lin}) is not initialized yet (a lazy "
                              f"module): run one forward pass first")
    for (w0, a, _), (w1, b, _) in zip(layers, layers[1:]):
        if b.in_features != a.out_features:
            raise ConfigError(f"module {w1} ({b}) takes {b.in_features} inputs but the "
                              f"Linear at {w0} gives {a.out_features}")
    hidden = [_hidden_tail(tail, nn) for _, _, tail in layers[:-1]]
    link = _output_tail(layers[-1][2], nn)
    loss = _loss_for(loss, link)
    dtype = _dtype_for(dtype, layers, torch)

    weights, frozen = [], []
    for l, (_, lin, _) in enumerate(layers):
        weights.append(_as_numpy(lin.weight, torch).T)
        weights.append(_as_numpy(lin.bias, torch) if lin.bias is not None
                       else np.zeros(lin.out_features))
        params = [lin.weight] + ([lin.bias] if lin.bias is not None else [])
        if not any(p.requires_grad for p in params):
            frozen.append(l)
    acts = [a for a, _ in hidden]
    rates = [r for _, r in hidden]
    sizes = [layers[0][1].in_features] + [lin.out_features for _, lin, _ in layers]
    config = dict(kwargs, sizes=sizes, loss=loss, dtype=dtype,
                  activation=acts[0] if acts and len(set(acts)) == 1 else acts,
                  dropout=rates[0] if len(set(rates)) == 1 else rates)
    return ModelFile(config, weights, [l not in frozen for l in range(len(layers))])


def _loss_for(loss, link):
    if loss is None:
        return HEAD_LOSSES[link] if link is not None else "mse"
    if not isinstance(loss, str) or loss not in km.LOSSES:
        raise ConfigError(f"unknown loss {loss!r}; choose one of {sorted(km.LOSSES)}")
    if link is not None and output_link(loss) != link:
        raise ConfigError(f"the Sequential ends in a {link} head, which is the head of "
                          f"{HEAD_LOSSES[link]!r}, not of loss {loss!r}")
    return loss


def _dtype_for(dtype, layers, torch):
    if dtype is not None:
        from ..validation import check_dtype
        return check_dtype(dtype).name
    found = {p.dtype for _, lin, _ in layers for p in lin.parameters()}
    names = {str(d).replace("torch.", "") for d in found}
    if len(names) == 1 and names <= set(_DTYPES):
        return names.pop()
    raise ConfigError(f"the Linear parameters are {sorted(names)}; fastbp computes in "
                      f"float32 or float64: pass dtype='float32' or dtype='float64'")
