"""Where fastbp's compile time goes: per step of a first run, per entry point, per function.

Each measurement runs in a fresh Python process, so nothing compiled earlier helps it:

* cold: an empty compile cache (a new FASTBP_CACHE_DIR). The process imports fastbp, fits
  a small net for two epochs, predicts, evaluates and takes a full-data gradient, each
  step timed. Numba's compile events are recorded: for every function compiled, how many
  times (one per signature), its own time and its time with what it compiled inside it,
  and how much of it LLVM took (optimisation and machine code).
* warm: the same steps in a second process that finds the cache the first one filled;
  the time to the first trained batch is what a user pays on every later run.

    python bench/compile_profile.py                  # float32, a [20, 64, 2] net
    python bench/compile_profile.py --dtype float64 --json bench/results/compile-DATE.json
    python bench/compile_profile.py --top 40         # more functions in the table
    python bench/compile_profile.py --alone          # no background child: all the work

By default the measured process runs as a user's does: its first fit starts the child
that types the trainer's back half and compiles inference on another core
(fastbp.precompile), so the table shows the fit's share of the work, and the kernels the
child typed are loaded from the cache. ``--alone`` turns the child off, so every compile
happens, and is listed, in the one process.

The steps are cumulative in one process: "predict" costs only what "fit" did not already
compile. Figures are wall seconds on this machine (its CPU model is printed); compare
runs on one machine, not across machines.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

from fastbp.benchmark import cpu_model

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def child(args):
    """Runs in the measured process: the steps, timed, and the compile events."""
    t0 = time.perf_counter()
    from numba.core import event

    compiles = event.RecordingListener()
    llvm = event.RecordingListener()
    event.register("numba:compile", compiles)
    event.register("numba:llvm_lock", llvm)
    import numpy as np

    import fastbp
    from fastbp.kernels import jit
    steps = {"import": time.perf_counter() - t0}
    rng = np.random.default_rng(0)
    X = rng.normal(size=(args.rows, 20)).astype(args.dtype)
    y = (X[:, 0] > 0).astype(int)
    net = fastbp.MLP([20, 64, 2], dtype=args.dtype, seed=0, device="cpu")
    first_batch = {}

    class FirstBatch(fastbp.Callback):
        def on_chunk_end(self, chunk, logs=None):
            first_batch.setdefault("t", time.perf_counter() - t0)

    t = time.perf_counter()
    net.fit(X, y, epochs=2, batch_size=32, callbacks=[FirstBatch()])
    steps["fit"] = time.perf_counter() - t
    for name, call in [("predict", lambda: net.predict(X)),
                       ("evaluate", lambda: net.evaluate(X, y)),
                       ("loss_and_grads", lambda: net.loss_and_grads(X, y))]:
        t = time.perf_counter()
        call()
        steps[name] = time.perf_counter() - t
    out = dict(steps=steps, total=time.perf_counter() - t0,
               first_batch=first_batch.get("t"), link_only=jit.LINK_ONLY,
               functions=_functions(compiles.buffer, llvm.buffer))
    print("RESULT " + json.dumps(out))


def _functions(compile_events, llvm_events):
    """Per function: compiles, own seconds, seconds with nested compiles, LLVM seconds."""
    llvm_spans = []
    start = None
    for ts, ev in llvm_events:
        if ev.is_start:
            start = ts
        elif start is not None:
            llvm_spans.append((start, ts))
            start = None
    stack, rows = [], {}
    for ts, ev in compile_events:
        disp = (ev.data or {}).get("dispatcher")
        name = getattr(getattr(disp, "py_func", None), "__qualname__", str(disp))
        if ev.is_start:
            stack.append([name, ts, 0.0, 0.0])
            continue
        name, t0, nested, nested_llvm = stack.pop()
        total = ts - t0
        in_llvm = sum(max(0.0, min(b, ts) - max(a, t0)) for a, b in llvm_spans)
        row = rows.setdefault(name, dict(compiles=0, own=0.0, inclusive=0.0, llvm_own=0.0,
                                         entry=False))
        row["compiles"] += 1
        row["own"] += total - nested
        row["inclusive"] += total
        row["llvm_own"] += in_llvm - nested_llvm
        row["entry"] |= not stack
        if stack:
            stack[-1][2] += total
            stack[-1][3] += in_llvm
    return rows


def run_child(args, cache):
    env = dict(os.environ, FASTBP_CACHE_DIR=cache, PYTHONPATH=ROOT + os.pathsep +
               os.environ.get("PYTHONPATH", ""))
    if args.alone:
        env["FASTBP_BACKGROUND_COMPILE"] = "0"
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--dtype", args.dtype,
           "--rows", str(args.rows)]
    t = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    for line in res.stdout.splitlines():
        if line.startswith("RESULT "):
            out = json.loads(line[7:])
            out["process_wall"] = wall
            return out
    raise RuntimeError(f"the measured process failed:\n{res.stdout}\n{res.stderr[-3000:]}")


def report(cold, warm, top):
    print(f"{'step':<16}{'cold s':>10}{'warm s':>10}")
    for step in cold["steps"]:
        print(f"{step:<16}{cold['steps'][step]:>10.2f}{warm['steps'][step]:>10.3f}")
    print(f"{'process':<16}{cold['process_wall']:>10.2f}{warm['process_wall']:>10.3f}")
    print(f"{'first batch at':<16}{cold['first_batch']:>10.2f}{warm['first_batch']:>10.3f}")
    rows = cold["functions"]
    llvm = sum(r["llvm_own"] for r in rows.values())
    own = sum(r["own"] for r in rows.values())
    print(f"\ncold compile: {own:.1f} s in {sum(r['compiles'] for r in rows.values())} "
          f"compiles of {len(rows)} functions, {llvm:.1f} s of it in LLVM "
          f"(link-only kernels: {cold['link_only']})")
    print(f"{'function':<44}{'n':>3}{'own s':>8}{'llvm s':>8}{'incl s':>8}")
    for name, r in sorted(rows.items(), key=lambda kv: -kv[1]["own"])[:top]:
        mark = " (entry)" if r["entry"] else ""
        print(f"{(name + mark)[:43]:<44}{r['compiles']:>3}{r['own']:>8.2f}"
              f"{r['llvm_own']:>8.2f}{r['inclusive']:>8.2f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--json", help="write every figure here")
    p.add_argument("--alone", action="store_true",
                   help="no background compile child: every compile in the one process")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return 0
    import numba
    with tempfile.TemporaryDirectory(prefix="fastbp-compile-") as cache:
        cold = run_child(args, cache)
        warm = run_child(args, cache)
    print(f"fastbp compile profile: {cpu_model()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, Numba {numba.__version__}, {args.dtype}\n")
    report(cold, warm, args.top)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(cpu=cpu_model(), cpus=os.cpu_count(), numba=numba.__version__,
                           python=platform.python_version(), dtype=args.dtype,
                           background_child=not args.alone,
                           date=time.strftime("%Y-%m-%d"), cold=cold, warm=warm), f,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
