"""Many models at once: fastbp.Ensemble against a loop of single fits, PyTorch's stacked
weights, and GridSearchCV.

    python bench/ensemble_vs_loop.py [--reps 5] [--quick] [--json out.json]
                                     [--only narrow,mnist,search] [--device cpu]
                                     [--rows 20000]

All in ONE process (GridSearchCV's n_jobs=-1 workers aside), the peers on the same data,
float32 Adam, every library on all cores. Each peer is warmed up once, untimed; each
repetition times the peers back to back, so that a slow spell of a shared machine hits
all of them, and the figures are medians over repetitions with their min and max.

* narrow: K=32 models [32, 64, 64, 1] (MSE), batch 32, 20,000 rows, one epoch each:
  aggregate model-samples/s (K x rows / seconds) of the Ensemble, of a loop of K
  ``MLP.fit`` calls, and of PyTorch eager training the K models as stacked weights
  (``torch.baddbmm`` per layer, one ``torch.optim.Adam`` over the stacked tensors).
* mnist: K=16 models [784, 256, 128, 10] (cross-entropy), batch 128, 10,000 rows, one
  epoch: the Ensemble against the loop of single fits.
* search: MLPSearchCV against GridSearchCV (n_jobs=-1) over fastbp's MLPClassifier, 4
  learning rates x 3 alphas x 5 folds, 10,000 x 50 rows (make_classification), both
  refitting the best point; wall seconds and best_score_ (GridSearchCV with n_jobs=1
  too, for reference).

``--device cuda`` times narrow and mnist on the GPU (search stays on the CPU): the
Ensemble with its members in the same launches, the same Ensemble with them in turn
(``kernels.cuda.FUSED_MEMBERS`` off), the loop of single fits, and PyTorch's stacked
weights on the GPU (synchronised at the end of each epoch).
"""
import argparse
import datetime
import json
import os
import statistics
import sys
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import fastbp  # noqa: E402
from fastbp.benchmark import cpu_model  # noqa: E402


def spread(values):
    return dict(median=statistics.median(values), min=min(values), max=max(values),
                all=list(values))


def narrow_data(n, sizes, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, sizes[0])).astype(np.float32)
    w = rng.normal(size=(sizes[0], sizes[-1])).astype(np.float32)
    return X, (X @ w / np.sqrt(sizes[0])).astype(np.float32)


def classes_data(n, sizes, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.random((n, sizes[0]), dtype=np.float32)
    return X, rng.integers(0, sizes[-1], n)


def fastbp_peers(sizes, K, loss, X, y, batch, device="cpu"):
    ens = fastbp.Ensemble(sizes, n_models=K, loss=loss, dtype="float32", device=device)
    singles = [fastbp.MLP(sizes, loss=loss, dtype="float32", seed=k, device=device)
               for k in range(K)]

    def ensemble():
        ens.fit(X, y, epochs=1, batch_size=batch, lr=1e-3)

    def loop():
        for m in singles:
            m.fit(X, y, epochs=1, batch_size=batch, lr=1e-3)
    peers = {"ensemble": ensemble, "loop": loop}
    if device == "cuda":
        from fastbp.kernels import cuda as kc

        def in_turn():
            kc.FUSED_MEMBERS = False
            try:
                ensemble()
            finally:
                kc.FUSED_MEMBERS = True
        peers["ensemble_in_turn"] = in_turn
    return peers


def torch_stacked(sizes, K, X, y, batch, device="cpu"):
    """K MLPs as stacked weights: one baddbmm per layer, one Adam over the stack."""
    import torch
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("this PyTorch build has no CUDA")
    torch.set_num_threads(os.cpu_count())
    g = torch.Generator().manual_seed(0)
    Ws, bs = [], []
    for a, b in zip(sizes[:-1], sizes[1:]):
        bound = 1 / np.sqrt(a)
        W = (torch.rand(K, a, b, generator=g) * 2 - 1) * bound
        Ws.append(W.to(device).requires_grad_())
        bs.append(torch.zeros(K, 1, b, device=device, requires_grad=True))
    opt = torch.optim.Adam(Ws + bs, lr=1e-3)
    Xt, yt = torch.from_numpy(X).to(device), torch.from_numpy(y).to(device)
    n = Xt.shape[0]

    def epoch():
        perm = torch.randperm(n, device=device)
        for s in range(0, n, batch):
            idx = perm[s:s + batch]
            h = Xt[idx].unsqueeze(0).expand(K, -1, -1)
            for layer, (W, b) in enumerate(zip(Ws, bs)):
                h = torch.baddbmm(b, h, W)
                if layer < len(Ws) - 1:
                    h = torch.relu(h)
            # Sum of the K models' mean losses: each model's gradient is its own.
            loss = ((h - yt[idx].unsqueeze(0)) ** 2).mean(dim=(1, 2)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
    return epoch


def run_rounds(peers, reps):
    for fn in peers.values():      # warm-up: compilation, first epoch, allocator
        fn()
    times = {name: [] for name in peers}
    for _ in range(reps):
        for name, fn in peers.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def bench_models(name, sizes, K, loss, n, batch, reps, with_torch, device="cpu"):
    make = narrow_data if loss == "mse" else classes_data
    X, y = make(n, sizes)
    peers = fastbp_peers(sizes, K, loss, X, y, batch, device)
    if with_torch:
        try:
            peers["torch_stacked"] = torch_stacked(sizes, K, X, y, batch, device)
        except (ImportError, RuntimeError) as e:
            print(f"no stacked-weights peer: {e}")
    times = run_rounds(peers, reps)
    rate = {p: [K * n / t for t in ts] for p, ts in times.items()}
    res = dict(sizes=sizes, n_models=K, batch_size=batch, rows=n, loss=loss, device=device,
               model_samples_per_s={p: spread(r) for p, r in rate.items()},
               ratio_ensemble_over={p: spread([a / b for a, b in zip(rate["ensemble"], r)])
                                    for p, r in rate.items() if p != "ensemble"})
    print(f"{name}: " + ", ".join(f"{p} {statistics.median(r) / 1e6:.3f}M"
                                  for p, r in rate.items()))
    for p, s in res["ratio_ensemble_over"].items():
        print(f"  ensemble / {p}: median {s['median']:.2f}x "
              f"(min {s['min']:.2f}, max {s['max']:.2f})")
    return res


def bench_search(reps, n=10_000, d=50, max_iter=10):
    from sklearn.datasets import make_classification
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    from fastbp.search import MLPSearchCV
    from fastbp.sklearn import MLPClassifier
    X, y = make_classification(n, d, n_informative=20, random_state=0)
    X = X.astype(np.float32)
    est = MLPClassifier((64,), max_iter=max_iter, batch_size=64, random_state=0,
                        dtype="float32")
    grid = {"learning_rate_init": [3e-4, 1e-3, 3e-3, 1e-2], "alpha": [1e-4, 1e-2, 1.0]}
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    runs = {"MLPSearchCV": lambda: MLPSearchCV(est, grid, cv=cv).fit(X, y),
            "GridSearchCV": lambda: GridSearchCV(est, grid, cv=cv, n_jobs=-1).fit(X, y),
            "GridSearchCV_n_jobs_1": lambda: GridSearchCV(est, grid, cv=cv).fit(X, y)}
    times = {k: [] for k in runs}
    scores = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fn in runs.values():
            fn()
        for _ in range(reps):
            for k, fn in runs.items():
                t0 = time.perf_counter()
                s = fn()
                times[k].append(time.perf_counter() - t0)
                scores[k] = (float(s.best_score_), s.best_params_)
    ratio = [g / m for g, m in zip(times["GridSearchCV"], times["MLPSearchCV"])]
    serial = [g / m for g, m in zip(times["GridSearchCV_n_jobs_1"], times["MLPSearchCV"])]
    res = dict(rows=n, features=d, hidden=[64], batch_size=64, max_iter=max_iter, folds=5,
               grid=grid, seconds={k: spread(v) for k, v in times.items()},
               speedup=spread(ratio), speedup_over_n_jobs_1=spread(serial),
               best_score={k: v[0] for k, v in scores.items()},
               best_params={k: v[1] for k, v in scores.items()},
               best_score_gap=abs(scores["MLPSearchCV"][0] - scores["GridSearchCV"][0]))
    print(f"search: MLPSearchCV {statistics.median(times['MLPSearchCV']):.2f} s, "
          f"GridSearchCV {statistics.median(times['GridSearchCV']):.2f} s, speedup median "
          f"{res['speedup']['median']:.2f}x (min {res['speedup']['min']:.2f}); best_score_ "
          f"{scores['MLPSearchCV'][0]:.4f} vs {scores['GridSearchCV'][0]:.4f}")
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="fewer rows and repetitions")
    ap.add_argument("--only", default="narrow,mnist,search")
    ap.add_argument("--json", default=None)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--rows", type=int, default=0,
                    help="rows of narrow (mnist: half as many); default 20,000")
    args = ap.parse_args(argv)
    reps = 2 if args.quick else args.reps
    scale = 4 if args.quick else 1
    parts = args.only.split(",")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    out = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               cpu=cpu_model(), cores=os.cpu_count(), threads=fastbp.get_num_threads(),
               load_average_1min_at_start=load, reps=reps, device=args.device,
               note="shared machine: other jobs ran beside this one; ratios are measured "
                    "in one run, peers timed back to back in each repetition")
    if args.device == "cuda":
        from gpu_compare import gpu_info
        out["gpu"] = gpu_info()
    rows = args.rows or 20_000 // scale
    if "narrow" in parts:
        out["narrow"] = bench_models("narrow", [32, 64, 64, 1], 32, "mse", rows, 32,
                                     reps, with_torch=True, device=args.device)
    if "mnist" in parts:
        out["mnist"] = bench_models("mnist", [784, 256, 128, 10], 16, "cross_entropy",
                                    rows // 2, 128, reps,
                                    with_torch=args.device == "cuda", device=args.device)
    if "search" in parts:
        out["search"] = bench_search(max(1, reps // 2))
    out["load_average_1min_at_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
