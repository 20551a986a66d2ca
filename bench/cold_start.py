"""A new user's first minute: import, build, fit and predict in a fresh process, against peers.

Each repetition starts fresh Python processes, in turn, that each do the same work:
import the library, build a [20, 64, 2] ReLU classifier, train it for 2 epochs of 2,000
rows in batches of 32 with Adam, and predict every row:

* ``fastbp cold``: with an empty compile cache (a new FASTBP_CACHE_DIR), as after a fresh
  install;
* ``fastbp warm``: with the cache the cold runs filled, as on every later run (it also
  reports when the first chunk of batches was trained);
* ``torch``: PyTorch eager, the same net, loss and optimizer;
* ``sklearn``: scikit-learn's MLPClassifier(solver="adam", batch_size=32, max_iter=2).

Wall time of each whole process (interpreter start included), median and spread over
the repetitions, and each one's ratio to PyTorch's median.

    python bench/cold_start.py                       # 3 repetitions
    python bench/cold_start.py --reps 5 --json bench/results/cold-start-DATE.json
    python bench/cold_start.py --demo                # and `fastbp demo`, cold and warm
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from fastbp.benchmark import cpu_model

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

WORK = r"""
import time
t0 = time.perf_counter()
import numpy as np
rng = np.random.default_rng(0)
X = rng.normal(size=(2000, 20)).astype(np.float32)
y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
"""

PEERS = {
    "fastbp": WORK + r"""
import fastbp
first = {}
class First(fastbp.Callback):
    def on_chunk_end(self, chunk, logs=None):
        first.setdefault("t", time.perf_counter() - t0)
net = fastbp.MLP([20, 64, 2], seed=0, device="cpu")
net.fit(X, y, epochs=2, batch_size=32, optimizer="adam", callbacks=[First()])
acc = float((net.predict(X) == y).mean())
print("RESULT", acc, first["t"])
""",
    "torch": WORK + r"""
import torch
torch.manual_seed(0)
Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
net = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
opt = torch.optim.Adam(net.parameters(), lr=1e-3)
loss_fn = torch.nn.CrossEntropyLoss()
for epoch in range(2):
    perm = torch.randperm(len(Xt))
    for i in range(0, len(Xt), 32):
        idx = perm[i:i + 32]
        opt.zero_grad()
        loss_fn(net(Xt[idx]), yt[idx]).backward()
        opt.step()
with torch.no_grad():
    acc = float((net(Xt).argmax(1) == yt).float().mean())
print("RESULT", acc, float("nan"))
""",
    "sklearn": WORK + r"""
import warnings
from sklearn.neural_network import MLPClassifier
warnings.simplefilter("ignore")
net = MLPClassifier((64,), solver="adam", batch_size=32, max_iter=2, random_state=0)
net.fit(X, y)
acc = float((net.predict(X) == y).mean())
print("RESULT", acc, float("nan"))
""",
}


def available(module):
    return subprocess.run([sys.executable, "-c", f"import {module}"],
                          capture_output=True).returncode == 0


def run(code, env):
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True)
    wall = time.perf_counter() - t
    for line in res.stdout.splitlines():
        if line.startswith("RESULT"):
            _, acc, first = line.split()
            return wall, float(acc), float(first)
    raise RuntimeError(f"run failed:\n{res.stdout}\n{res.stderr[-3000:]}")


def run_demo(env):
    """`fastbp demo` (its plot into a temporary folder) as a user runs it: the wall time
    from the command to its last line, and the test accuracy it prints."""
    with tempfile.TemporaryDirectory() as where:
        t = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "fastbp.cli", "demo"], env=env, cwd=where,
                             capture_output=True, text=True)
        wall = time.perf_counter() - t
    if res.returncode:
        raise RuntimeError(f"fastbp demo failed:\n{res.stdout}\n{res.stderr[-3000:]}")
    acc = next(float(line.split()[2]) for line in res.stdout.splitlines()
               if line.startswith("test accuracy:"))
    return wall, acc, float("nan")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--json")
    p.add_argument("--demo", action="store_true",
                   help="also time `fastbp demo` from the command to its last line, with "
                        "an empty cache and with the warm one")
    args = p.parse_args(argv)
    base = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    peers = ["fastbp cold", "fastbp warm"] + [k for k in ("torch", "sklearn") if available(k)]
    if args.demo:
        peers += ["demo cold", "demo warm"]
    times = {k: [] for k in peers}
    first = {"fastbp cold": [], "fastbp warm": []}
    acc = {}
    warm_cache = tempfile.mkdtemp(prefix="fastbp-warm-")
    try:
        run(PEERS["fastbp"], dict(base, FASTBP_CACHE_DIR=warm_cache))   # fills the cache
        for rep in range(args.reps):
            for peer in peers:
                if peer == "fastbp cold":
                    cache = tempfile.mkdtemp(prefix="fastbp-cold-")
                    try:
                        wall, a, f = run(PEERS["fastbp"], dict(base, FASTBP_CACHE_DIR=cache))
                    finally:
                        shutil.rmtree(cache, ignore_errors=True)
                elif peer == "fastbp warm":
                    wall, a, f = run(PEERS["fastbp"], dict(base, FASTBP_CACHE_DIR=warm_cache))
                elif peer.startswith("demo"):
                    cache = warm_cache if peer == "demo warm" else \
                        tempfile.mkdtemp(prefix="fastbp-cold-")
                    try:
                        wall, a, f = run_demo(dict(base, FASTBP_CACHE_DIR=cache))
                    finally:
                        if cache != warm_cache:
                            shutil.rmtree(cache, ignore_errors=True)
                else:
                    wall, a, f = run(PEERS[peer], base)
                times[peer].append(wall)
                acc[peer] = a
                if peer in first:
                    first[peer].append(f)
                print(f"rep {rep + 1} {peer:<12} {wall:7.2f} s", flush=True)
    finally:
        shutil.rmtree(warm_cache, ignore_errors=True)
    ref = statistics.median(times["torch"]) if "torch" in times else None
    print(f"\nfresh-process start, {cpu_model()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, {args.reps} repetitions")
    print(f"{'':<13}{'median s':>9}{'min':>8}{'max':>8}{'x torch':>9}{'accuracy':>10}")
    for peer in peers:
        t = times[peer]
        ratio = f"{statistics.median(t) / ref:9.1f}" if ref else f"{'-':>9}"
        print(f"{peer:<13}{statistics.median(t):>9.2f}{min(t):>8.2f}{max(t):>8.2f}{ratio}"
              f"{acc[peer]:>10.3f}")
    for peer, f in first.items():
        print(f"{peer}: first chunk trained {statistics.median(f):.2f} s after the "
              f"process started its script (median)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(cpu=cpu_model(), cpus=os.cpu_count(),
                           python=platform.python_version(), date=time.strftime("%Y-%m-%d"),
                           reps=args.reps, seconds=times, first_chunk=first, accuracy=acc,
                           ratio_to_torch={k: statistics.median(v) / ref for k, v in
                                           times.items()} if ref else None), fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
