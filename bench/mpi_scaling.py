"""Data-parallel scaling on this machine: 1 vs N MPI ranks, same global batch and cores.

    python bench/mpi_scaling.py [--ranks 1,2] [--rows 20000] [--json out.json]

Each configuration runs under ``mpiexec -n R`` with the cores split evenly between ranks
(NUMBA_NUM_THREADS = cores / R), so the comparison is fair: the same hardware, the same
global batch (per-rank batch = global / R), float32 Adam on the MNIST-shaped network.
Reports training samples/s (median of the timed epochs after one warm-up epoch) for
per-step gradient averaging and for local SGD (parameters averaged every 8 steps), plus the
cost model's allreduce/compute split and crossover batch for 10 and 100 Gbit/s links.
"""
import argparse
import json
import os
import subprocess
import sys
import time

SIZES = [784, 256, 128, 10]
GLOBAL_BATCH = 256


def worker(rows, epochs, sync_every):
    import numpy as np
    from mpi4py import MPI

    import fastbp
    comm = MPI.COMM_WORLD
    rng = np.random.default_rng(comm.rank)
    n = rows // comm.size
    X = rng.random((n, SIZES[0]), dtype=np.float32)
    y = rng.integers(0, SIZES[-1], n)
    net = fastbp.MLP(SIZES, seed=0)
    bs = GLOBAL_BATCH // comm.size
    net.fit(X, y, epochs=1, batch_size=bs, comm=comm, sync_every=sync_every)   # warm-up
    rates = []
    for _ in range(epochs):
        comm.Barrier()
        t0 = time.perf_counter()
        net.fit(X, y, epochs=1, batch_size=bs, comm=comm, sync_every=sync_every,
                warm_start=True)
        comm.Barrier()
        rates.append(rows / (time.perf_counter() - t0))
    if comm.rank == 0:
        print(json.dumps({"samples_per_s": sorted(rates)[len(rates) // 2]}))


def mpiexec():
    cand = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return cand if os.path.exists(cand) else "mpiexec"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ranks", default="1,2")
    p.add_argument("--rows", type=int, default=20000)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--json")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--sync-every", type=int, default=1, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        return worker(a.rows, a.epochs, a.sync_every)
    cores = os.cpu_count()
    results = []
    for r in [int(x) for x in a.ranks.split(",")]:
        for sync in (1, 8) if r > 1 else (1,):
            env = dict(os.environ, NUMBA_NUM_THREADS=str(max(1, cores // r)))
            out = subprocess.run([mpiexec(), "-n", str(r), sys.executable, __file__,
                                  "--worker", "--rows", str(a.rows), "--epochs", str(a.epochs),
                                  "--sync-every", str(sync)],
                                 capture_output=True, text=True, env=env, check=True)
            sps = json.loads(out.stdout.strip().splitlines()[-1])["samples_per_s"]
            results.append(dict(ranks=r, threads_per_rank=max(1, cores // r),
                                sync_every=sync, samples_per_s=sps))
    base = results[0]["samples_per_s"]
    print(f"MNIST-shaped {SIZES}, global batch {GLOBAL_BATCH}, {cores} cores")
    print(f"{'ranks':>5} {'threads':>7} {'sync':>12} {'samples/s':>12} {'vs 1 rank':>9}")
    for res in results:
        sync = "grads/step" if res["sync_every"] == 1 else f"params/{res['sync_every']}"
        print(f"{res['ranks']:>5} {res['threads_per_rank']:>7} {sync:>12} "
              f"{res['samples_per_s']:>12,.0f} {res['samples_per_s'] / base:>9.2f}")

    from fastbp.distributed import cost_model, crossover_batch
    from fastbp.network import Layout
    n_params = Layout(SIZES).n_params
    flops = 6.0 * n_params * base      # the training FLOP/s one node sustains here
    model = {}
    for gbit in (10, 100):
        for nodes in (2, 8, 64):
            c, m = cost_model(n_params, GLOBAL_BATCH, flops, nodes, gbit)
            model[f"{gbit}G_{nodes}"] = dict(compute_s=c, allreduce_s=m,
                                            crossover_batch=crossover_batch(
                                                n_params, flops, nodes, gbit))
            print(f"{gbit:>4} Gbit/s, {nodes:>2} nodes: compute {c * 1e3:.2f} ms, allreduce "
                  f"{m * 1e3:.2f} ms per step; compute = allreduce at per-node batch "
                  f"{model[f'{gbit}G_{nodes}']['crossover_batch']:.0f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(date=time.strftime("%Y-%m-%d"), cores=cores, sizes=SIZES,
                           global_batch=GLOBAL_BATCH, results=results, cost_model=model), f,
                      indent=1)


if __name__ == "__main__":
    main()
