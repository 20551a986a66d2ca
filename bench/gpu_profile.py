"""Where a CUDA fit's time goes: fixed cost per fit, cost per epoch, host profile, launch cost.

    python bench/gpu_profile.py [--shapes narrow,mnist,wide] [--profile]

For each shape of bench/gpu_compare.py: the median seconds of a fit of 1 and of N epochs
(their difference over N - 1 is the cost of an epoch, the rest the fixed cost of a fit:
input checks, upload, buffers), and with --profile the host functions that took the most
time in one fit (cProfile; time spent waiting for the GPU shows up in the copy that reads
the chunk's losses back). Last, what one launch of a numba-cuda kernel with 20 arguments
costs the host (the floor of the layer-by-layer path's per-batch time).
"""
import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from compare import make_data  # noqa: E402
from gpu_compare import GPU_SHAPES  # noqa: E402


def fit_costs(name, reps=3, n_epochs=5, profile=False):
    import fastbp
    sizes, bs, loss, rows, _ = GPU_SHAPES[name]
    X, y = make_data(sizes, loss, rows)
    net = fastbp.MLP(sizes, activation="relu", loss=loss, dtype="float32", seed=0,
                     device="cuda")

    def fit(epochs):
        t0 = time.perf_counter()
        net.fit(X, y, epochs=epochs, batch_size=bs, optimizer="adam", lr=1e-3, verbose=0,
                warm_start=True)
        return time.perf_counter() - t0

    fit(1)
    t1 = statistics.median(fit(1) for _ in range(reps))
    tn = statistics.median(fit(n_epochs) for _ in range(reps))
    per_epoch = (tn - t1) / (n_epochs - 1)
    batches = -(-rows // bs)
    print(f"{name}: fit of 1 epoch {t1 * 1e3:.1f} ms, of {n_epochs} {tn * 1e3:.1f} ms -> "
          f"{per_epoch * 1e3:.1f} ms per epoch ({per_epoch / batches * 1e6:.0f} us per batch "
          f"of {bs}), fixed {max(t1 - per_epoch, 0) * 1e3:.1f} ms per fit", flush=True)
    if profile:
        pr = cProfile.Profile()
        pr.enable()
        fit(n_epochs)
        pr.disable()
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(14)
        print("\n".join(s.getvalue().splitlines()[6:26]), flush=True)
    net.predict(X[:1000])   # compiles the inference kernels: not part of the timing
    t0 = time.perf_counter()
    net.predict(X)
    print(f"{name}: predict {rows} rows {(time.perf_counter() - t0) * 1e3:.1f} ms", flush=True)


def launch_cost(n=2000):
    import numpy as np
    from numba import cuda

    @cuda.jit
    def k20(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, s0, s1, s2, s3, s4, s5, s6, s7, s8, s9):
        if s0 < 0:
            a0[0] = s1

    arrs = [cuda.device_array(16, np.float32) for _ in range(10)]
    scal = [1, 2, 3, 4, 5, 6.0, 7, 8, 9, 10]
    k20[1, 32](*arrs, *scal)
    cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        k20[1, 32](*arrs, *scal)
    cuda.synchronize()
    dt = (time.perf_counter() - t0) / n
    print(f"numba-cuda launch of a 20-argument kernel: {dt * 1e6:.1f} us (host)", flush=True)
    return dt


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default=",".join(GPU_SHAPES))
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args(argv)
    launch_cost()
    for name in [s for s in args.shapes.split(",") if s]:
        fit_costs(name, profile=args.profile)


if __name__ == "__main__":
    main()
