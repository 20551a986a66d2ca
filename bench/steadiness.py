"""Steadiness: consecutive one-epoch fits of one model in one process, fit by fit.

For each named shape it fits the same model for one epoch ``--fits`` times in a row (the
weights go on training; the work per fit is the same) and records samples/s per fit. The
figure of merit is the slowest fit over the median (target: at least 0.9), with the
spread, and PyTorch's the same way in the same run when it is installed, the two taking
turns fit by fit so that a slow spell of the machine hits both. ``--busy``
starts one competing process that spins on a core for the whole run, as a neighbour
would.

    python bench/steadiness.py                       # idle machine
    python bench/steadiness.py --busy --json bench/results/steadiness-DATE-busy.json
"""
import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time

import numpy as np

from fastbp.benchmark import cpu_model

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# name: (sizes, batch size, rows of one epoch)
SHAPES = {
    "narrow": ([32, 64, 64, 1], 32, 20000),
    "mnist": ([784, 256, 128, 10], 128, 20000),
    "deep": ([256, 512, 512, 256, 1], 512, 20000),
    "wide": ([1024, 1024, 1024, 10], 256, 8192),
}


def _spin(stop):
    while not stop.is_set():
        pass


def _data(sizes, rows, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, sizes[0])).astype(np.float32)
    if sizes[-1] == 1:
        return X, (X[:, :4].sum(1) * 0.5).astype(np.float32)
    return X, rng.integers(0, sizes[-1], rows)


def fastbp_fitter(sizes, batch, rows):
    """One-epoch fits of one fastbp model, warmed up: a function that fits once and
    returns samples/s."""
    import fastbp
    X, y = _data(sizes, rows)
    net = fastbp.MLP(sizes, loss="mse" if sizes[-1] == 1 else "cross_entropy", seed=0)
    net.fit(X[:batch * 20], y[:batch * 20], epochs=1, batch_size=batch)   # compile, warm up

    def fit():
        t = time.perf_counter()
        net.fit(X, y, epochs=1, batch_size=batch, optimizer="adam")
        return rows / (time.perf_counter() - t)
    return fit


def torch_fitter(sizes, batch, rows):
    """The same for PyTorch eager (Adam, the same data), warmed up."""
    import torch
    torch.set_num_threads(int(os.environ.get("FASTBP_NUM_THREADS") or os.cpu_count()))
    X, y = _data(sizes, rows)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    Xt = torch.from_numpy(X)
    yt = torch.from_numpy(y if sizes[-1] > 1 else y[:, None])
    loss_fn = torch.nn.CrossEntropyLoss() if sizes[-1] > 1 else torch.nn.MSELoss()

    def epoch(n):
        perm = torch.randperm(n)
        for b0 in range(0, n, batch):
            idx = perm[b0:b0 + batch]
            opt.zero_grad(set_to_none=True)
            loss_fn(net(Xt[idx]), yt[idx]).backward()
            opt.step()

    epoch(batch * 20)

    def fit():
        t = time.perf_counter()
        epoch(rows)
        return rows / (time.perf_counter() - t)
    return fit


def alternated(fitters, fits):
    """{name: samples/s of each of ``fits`` fits}, the peers taking turns fit by fit, so
    that a slow spell of a shared machine hits both."""
    rates = {name: [] for name in fitters}
    for _ in range(fits):
        for name, fit in fitters.items():
            rates[name].append(fit())
    return rates


def summary(rates):
    med = statistics.median(rates)
    return {"samples_per_s": [round(r) for r in rates], "median": round(med),
            "slowest_over_median": round(min(rates) / med, 3),
            "fastest_over_median": round(max(rates) / med, 3)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fits", type=int, default=20)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--busy", action="store_true", help="one competing spinning process")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    sys.path.insert(0, ROOT)
    stop, busy = None, None
    if args.busy:
        stop = multiprocessing.Event()
        busy = multiprocessing.Process(target=_spin, args=(stop,), daemon=True)
        busy.start()
    results = {"cpu": cpu_model(), "cores": os.cpu_count(), "fits": args.fits,
               "busy_neighbour": args.busy, "date": time.strftime("%Y-%m-%d"),
               "shapes": {}}
    try:
        for name in args.shapes.split(","):
            sizes, batch, rows = SHAPES[name]
            fitters = {"fastbp": fastbp_fitter(sizes, batch, rows)}
            if not args.no_torch:
                try:
                    fitters["torch"] = torch_fitter(sizes, batch, rows)
                except ImportError:
                    pass
            entry = {"sizes": sizes, "batch": batch, "rows": rows}
            for peer, rates in alternated(fitters, args.fits).items():
                entry[peer] = summary(rates)
            results["shapes"][name] = entry
            line = f"{name:7s} fastbp slowest/median {entry['fastbp']['slowest_over_median']}"
            if "torch" in entry:
                line += (f", torch {entry['torch']['slowest_over_median']}; median ratio "
                         f"{entry['fastbp']['median'] / entry['torch']['median']:.2f}x")
            print(line, flush=True)
    finally:
        if busy is not None:
            stop.set()
            busy.join(5)
    try:
        load = os.getloadavg()[0]
        results["load_average_after"] = round(load, 2)
    except OSError:
        pass
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
