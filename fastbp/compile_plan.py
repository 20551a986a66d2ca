"""The kernels of a first fit (or first predict) in the order its compile reaches them, for
a second process.

A first fit types and lowers the trainer's kernels one after another on one core, from
the top of its call tree down (bench/compile_profile.py); a first predict does the same
with the forward pass. Kernels are cached one by one (kernels.jit), so a second process
can type the ones the call reaches last while the call types the first ones:
fastbp.precompile's child walks this plan backwards and stops where the cache shows that
the call has got there. Whichever process typed a kernel, the entry that links it is the
same IR and the same machine code (kernels.jit), so the numbers do not depend on how far
the child got.

The plan is a list per role ("train": a fit's trainer, "predict": a prediction) and dtype
of (module, kernel, argument types), recorded from cold calls and shipped in
``compile_plan.json``. It only decides what the child types first: a stale plan (a kernel
renamed, a signature changed) costs time, never a wrong number, and a test keeps it
current. Rewrite it with::

    python -m fastbp.compile_plan
"""
import importlib
import json
import os
import subprocess
import sys
import tempfile

PLAN_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "compile_plan.json")
DTYPES = ("float32", "float64")
ROLES = ("train", "predict")


def record(dtype, role="train"):
    """The plan for ``role`` and ``dtype``, recorded in a fresh process with an empty
    compile cache."""
    code = ("import json; from fastbp.compile_plan import record_here; "
            f"print(json.dumps(record_here({dtype!r}, {role!r})[0]))")
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, FASTBP_CACHE_DIR=cache, FASTBP_BACKGROUND_COMPILE="0",
                   FASTBP_NUM_THREADS="2")
        out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                             capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def record_here(dtype, role="train"):
    """Every kernel that the smallest fit (``role="train"``) or prediction ("predict") of
    ``dtype`` compiles here, in the order it starts (all of them when the cache is empty),
    and the model with its result: (kernels, model, the fitted weights or the
    prediction)."""
    from numba.core import event

    from .kernels.jit import KernelDispatcher
    from .warmup import fit_once, predict_once
    seen = []

    class Starts(event.Listener):
        def on_start(self, ev):
            d = ev.data["dispatcher"]
            if isinstance(d, KernelDispatcher):
                f = d.py_func
                seen.append([f.__module__, f.__qualname__, repr(tuple(ev.data["args"]))])

        def on_end(self, ev):
            pass

    listener = Starts()
    event.register("numba:compile", listener)
    try:
        if role == "train":
            net = fit_once(dtype)[0]
            out = net.get_weights()
        else:
            net, out = predict_once(dtype)
    finally:
        event.unregister("numba:compile", listener)
    return seen, net, out


def load(dtype, role="train"):
    """The shipped plan for ``role`` and ``dtype`` as (kernel, argument types) pairs,
    leaving out any entry this fastbp or Numba cannot resolve."""
    try:
        with open(PLAN_FILE) as f:
            entries = json.load(f).get(role, {}).get(str(dtype), [])
    except (OSError, ValueError, AttributeError):
        return []
    from numba.core import types

    from .kernels import cpu  # noqa: F401 - the trainer's module makes every kernel it uses
    from .kernels.jit import KERNELS
    names = dict(vars(types), bool=types.boolean)
    plan = []
    for module, qualname, args in entries:
        try:
            importlib.import_module(module)
            kern = KERNELS[module, qualname]
            sig = eval(args, {"__builtins__": {}}, names)   # noqa: S307 - our own file
        except Exception:   # noqa: BLE001 - a stale entry is skipped, not fatal
            continue
        if isinstance(sig, tuple):
            plan.append((kern, sig))
    return plan


def compile_back(dtype, role="train", meet=True):
    """Type the plan's kernels from the last the call reaches to the first. With ``meet``,
    stop at the first kernel found in the cache: the call has typed it and every kernel it
    reaches before it. Returns how many kernels this process typed."""
    from .kernels import jit
    if jit.LINK_ONLY and not jit.KERNEL_CACHE:   # nothing typed here would reach the call
        return 0
    typed = 0
    for kern, sig in reversed(load(dtype, role)):
        if sig in kern.overloads:   # typed here already, inside a kernel that calls it
            continue
        kern.compile(sig)
        if kern.stats.cache_hits.get(sig):
            if meet:
                break
        else:
            typed += 1
    return typed


def _text(plan):
    """compile_plan.json's text: one kernel a line, so that a change reads as a diff."""
    roles = []
    for role, by_dtype in plan.items():
        lists = [f"{json.dumps(dtype)}: [\n" + ",\n".join(map(json.dumps, entries)) + "\n]"
                 for dtype, entries in by_dtype.items()]
        roles.append(f"{json.dumps(role)}: {{\n" + ",\n".join(lists) + "\n}")
    return "{\n" + ",\n".join(roles) + "\n}\n"


def write():
    plan = {role: {dtype: record(dtype, role) for dtype in DTYPES} for role in ROLES}
    with open(PLAN_FILE, "w") as f:
        f.write(_text(plan))
    return plan


if __name__ == "__main__":
    for role, by_dtype in write().items():
        for dtype, entries in by_dtype.items():
            print(f"{role} {dtype}: {len(entries)} kernels")
