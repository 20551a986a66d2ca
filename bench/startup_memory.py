"""Start-up time and peak memory of a fit, each in a fresh process.

    python bench/startup_memory.py [--json out.json]

Start-up: seconds from process start to the end of the first trained batch, with Numba's
on-disk cache warm (the installed kernels) and cold (an empty private cache directory).
Memory: peak RSS during a fit of the MNIST-shaped network on 20,000 rows, against a budget
of the interpreter's baseline (after imports), the data, four copies of the parameters
(weights, gradient, two Adam slots) and the batch buffers.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CHILD_STARTUP = r"""
import time, sys
t0 = float(sys.argv[1])
import numpy as np, fastbp
t_import = time.time() - t0
X = np.random.default_rng(0).random((256, 784), dtype=np.float32)
y = np.arange(256) % 10
net = fastbp.MLP([784, 256, 128, 10], device="cpu")
net.fit(X, y, epochs=1, batch_size=128)
print(t_import, time.time() - t0)
"""

CHILD_MEMORY = r"""
import resource, sys, json
import numpy as np, fastbp
from fastbp.network import Layout
from fastbp.workspace import Workspace
rng = np.random.default_rng(0)
net = fastbp.MLP([784, 256, 128, 10], device="cpu")
net.fit(rng.random((256, 784), dtype=np.float32), np.arange(256) % 10, epochs=1)  # warm up
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
X = rng.random((20000, 784), dtype=np.float32)
y = rng.integers(0, 10, 20000)
data = X.nbytes + 20000 * 10 * 4 + 20000 * 8           # X, one-hot targets, row weights
net.fit(X, y, epochs=2, batch_size=128)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
lay = Layout([784, 256, 128, 10])
ws = Workspace(lay, 128, np.float32)
params4 = 4 * lay.n_params * 4
buffers = ws.Z.nbytes + ws.A.nbytes + ws.D.nbytes
print(json.dumps(dict(baseline=base, peak=peak, data=data, params_x4=params4,
                      batch_buffers=buffers)))
"""


def run(code, env=None):
    out = subprocess.run([sys.executable, "-c", code, repr(time.time())], capture_output=True,
                         text=True, env=env, check=True)
    return out.stdout.strip().splitlines()[-1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json")
    a = p.parse_args(argv)
    res = {}
    with tempfile.TemporaryDirectory() as cache:
        cold = run(CHILD_STARTUP, dict(os.environ, NUMBA_CACHE_DIR=cache)).split()
        warm = run(CHILD_STARTUP, dict(os.environ, NUMBA_CACHE_DIR=cache)).split()
    res["cold_first_batch_s"], res["cold_import_s"] = float(cold[1]), float(cold[0])
    res["warm_first_batch_s"], res["warm_import_s"] = float(warm[1]), float(warm[0])
    mem = json.loads(run(CHILD_MEMORY))
    res["memory"] = mem
    budget = mem["baseline"] + mem["data"] + mem["params_x4"] + mem["batch_buffers"]
    res["memory_budget"] = budget
    mib = 2 ** 20
    print(f"start-up to the first trained batch: cold cache {res['cold_first_batch_s']:.1f} s, "
          f"warm cache {res['warm_first_batch_s']:.2f} s (imports {res['warm_import_s']:.2f} s)")
    print(f"peak RSS {mem['peak'] / mib:.0f} MiB vs budget {budget / mib:.0f} MiB "
          f"(baseline {mem['baseline'] / mib:.0f}, data {mem['data'] / mib:.0f}, "
          f"4 x params {mem['params_x4'] / mib:.1f}, batch buffers "
          f"{mem['batch_buffers'] / mib:.1f})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
