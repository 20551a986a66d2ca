"""fastbp.sklearn against sklearn.neural_network: the same estimator call, both libraries.

    python bench/sklearn_dropin.py [--rows 20000] [--features 100] [--hidden 256,128]
                                   [--solvers adam,sgd,lbfgs] [--reps 3] [--dtype float64]
                                   [--threads N] [--json out.json] [--quick]

One process. The data: ``make_classification`` (3 classes, 20 informative features of
``--features``), standardised, float64 (or ``--dtype float32``: both libraries then keep float32
weights), ``--rows`` rows to train on and a quarter as many
held out. For each solver both estimators get the same parameters
(``hidden_layer_sizes``, ``solver``, ``random_state=0`` and scikit-learn's defaults for
everything else, so the default iterations: ``max_iter=200`` with the ``tol`` /
``n_iter_no_change`` stopping rule, lbfgs's ``max_fun=15000``); the import line is the only
difference. Reported per solver: the wall time of ``fit`` (median, min and max over
``--reps`` repetitions; the peers alternate, the first to go changing every repetition, so
a noisy spell hits both), the ratio of medians scikit-learn / fastbp, epochs or iterations
run, and the held-out accuracy of each (the accuracy difference is of the first
repetition: both are deterministic for a seed).

fastbp's kernels are compiled (or loaded from the on-disk cache) by a small fit of each
solver before the timed ones; that first fit's time is reported as ``first_fit_s``. Both
libraries use the same threads: every core, or ``--threads N`` (fastbp's thread team through
``fastbp.set_num_threads``, scikit-learn's BLAS through threadpoolctl). On a machine shared
with other work, one thread each is the steadier comparison: BLAS threads that wait for a
descheduled partner made scikit-learn's epochs vary tenfold from one minute to the next.
"""
import argparse
import datetime
import json
import os
import statistics
import sys
import time
import warnings


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import cpu_model, versions  # noqa: E402


def make_data(rows, features, seed=0):
    from sklearn.datasets import make_classification
    from sklearn.preprocessing import StandardScaler
    n_test = max(rows // 4, 10)
    X, y = make_classification(n_samples=rows + n_test, n_features=features,
                               n_informative=min(20, features), n_redundant=0, n_classes=3,
                               random_state=seed)
    X = StandardScaler().fit_transform(X)
    return X[:rows], y[:rows], X[rows:], y[rows:]


def timed_fit(cls, params, X, y):
    from sklearn.exceptions import ConvergenceWarning
    est = cls(**params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        t0 = time.perf_counter()
        est.fit(X, y)
        seconds = time.perf_counter() - t0
    return seconds, est


def run(args):
    from sklearn import neural_network as skl_nn

    import fastbp.sklearn as fastbp_sklearn
    hidden = tuple(int(h) for h in args.hidden.split(","))
    solvers = args.solvers.split(",")
    X, y, Xt, yt = make_data(args.rows, args.features)
    X, Xt = X.astype(args.dtype), Xt.astype(args.dtype)
    peers = {"fastbp": fastbp_sklearn.MLPClassifier, "sklearn": skl_nn.MLPClassifier}
    threads = args.threads or os.cpu_count() or 1
    from threadpoolctl import threadpool_limits

    import fastbp
    fastbp.set_num_threads(threads)
    blas_limit = threadpool_limits(limits=threads, user_api="blas")
    load_before = os.getloadavg()[0]

    first_fit = {}
    for solver in solvers:     # compile or load fastbp's kernels for each solver
        t, _ = timed_fit(peers["fastbp"], dict(hidden_layer_sizes=(8,), solver=solver,
                                               max_iter=2, random_state=0), X[:300], y[:300])
        first_fit[solver] = t

    results = []
    for solver in solvers:
        params = dict(hidden_layer_sizes=hidden, solver=solver, random_state=0)
        times = {p: [] for p in peers}
        info = {}
        for rep in range(args.reps):
            order = list(peers) if rep % 2 == 0 else list(peers)[::-1]
            for peer in order:
                t, est = timed_fit(peers[peer], params, X, y)
                times[peer].append(t)
                if peer not in info:
                    info[peer] = dict(n_iter=int(est.n_iter_),
                                      test_accuracy=float(est.score(Xt, yt)),
                                      train_accuracy=float(est.score(X, y)))
                print(f"{solver:6s} rep {rep + 1} {peer:8s} {t:8.2f} s  "
                      f"n_iter={est.n_iter_}", flush=True)
        med = {p: statistics.median(v) for p, v in times.items()}
        results.append(dict(
            solver=solver, params={k: v for k, v in params.items()},
            fit_seconds={p: dict(median=med[p], min=min(v), max=max(v), all=v)
                         for p, v in times.items()},
            speedup=med["sklearn"] / med["fastbp"],
            accuracy_difference=info["fastbp"]["test_accuracy"] -
            info["sklearn"]["test_accuracy"],
            **{p: info[p] for p in peers}))

    blas_limit.restore_original_limits()
    load_after = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    report = dict(
        benchmark="fastbp.sklearn.MLPClassifier vs sklearn.neural_network.MLPClassifier, fit",
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        data=dict(rows=args.rows, features=args.features, classes=3,
                  test_rows=int(Xt.shape[0]), dtype=args.dtype, hidden_layer_sizes=hidden),
        reps=args.reps, threads=threads, first_fit_s=first_fit,
        machine=dict(cpu=cpu_model(), cores=cores, load_before=load_before,
                     load_after=load_after,
                     noisy=bool(max(load_before, load_after) > 0.3 * cores)),
        versions=versions(), results=results)
    if report["machine"]["noisy"]:
        report["machine"]["note"] = ("the machine was shared with other work during the run "
                                     "(load average above 0.3 per core): timings are noisy")
        print(f"warning: load average {max(load_before, load_after):.2f} on {cores} cores: "
              f"other work shared the machine, timings are noisy", file=sys.stderr)
    print()
    print(f"{'solver':8s}{'fastbp s':>10s}{'sklearn s':>11s}{'speedup':>9s}"
          f"{'acc fastbp':>12s}{'acc sklearn':>12s}")
    for r in results:
        fs = r["fit_seconds"]
        print(f"{r['solver']:8s}{fs['fastbp']['median']:10.2f}{fs['sklearn']['median']:11.2f}"
              f"{r['speedup']:8.1f}x{r['fastbp']['test_accuracy']:12.4f}"
              f"{r['sklearn']['test_accuracy']:12.4f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return report


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=20000)
    p.add_argument("--features", type=int, default=100)
    p.add_argument("--hidden", default="256,128")
    p.add_argument("--solvers", default="adam,sgd,lbfgs")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    p.add_argument("--threads", type=int, default=0, help="threads of each library "
                   "(default: every core)")
    p.add_argument("--json", default=None)
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 400 rows, 10 features, (16,), one repetition")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.quick:
        args.rows, args.features, args.hidden, args.reps = 400, 10, "16", 1
    return run(args)


if __name__ == "__main__":
    main()
