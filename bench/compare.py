"""Side-by-side training and inference throughput: fastbp vs PyTorch, scikit-learn, NumPy.

    python bench/compare.py [--shapes narrow,mnist,wide] [--reps 5] [--rows 20000]
                            [--json out.json] [--png out.png] [--quick]

Everything runs in ONE process on the same synthetic data, float32, Adam (lr 1e-3), with
every library on all cores (torch.set_num_threads(os.cpu_count()), Numba's default thread
count, BLAS default). Each peer is warmed up first (compilation, first epoch, allocator) and
never timed then; a repetition is one full shuffled epoch, and the reported figure is the
median over the repetitions. Peers that are not installed are skipped with a note.

Training FLOPs per sample are taken as 6 x sum(n_in * n_out) (forward GEMM, input-delta GEMM,
weight-gradient GEMM; elementwise work ignored). "% sgemm" compares fastbp's training FLOP
rate with a 2048^3 float32 ``np.dot`` on the same machine.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

SHAPES = {
    # name: (layer sizes, batch size, loss)
    "narrow": ([32, 64, 64, 1], 32, "mse"),
    "mnist": ([784, 256, 128, 10], 128, "cross_entropy"),
    "wide": ([1024, 1024, 1024, 10], 256, "cross_entropy"),
}
PEERS = ("fastbp", "torch", "sklearn", "numpy")
LOAD_WARN = 0.3  # 1-minute load average per core above which timings are flagged
# An epoch is capped at this many training GFLOP (6 x weights x rows): 'wide' at 20,000 rows
# would need ~250 GFLOP per epoch, several seconds per peer and repetition, so it runs on
# 10,000 rows (the reduction is printed and stored in the JSON). A fixed rule, not a timing,
# so every run of the harness uses the same rows.
MAX_EPOCH_GFLOP = 128.0


# ----------------------------------------------------------------------------- helpers

def train_flops_per_sample(sizes):
    return 6 * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def median_time(fn, reps):
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def sgemm_gflops(n=2048, reps=7):
    """Median GFLOP/s of an n^3 float32 np.dot (BLAS at its default thread count)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), dtype=np.float32)
    np.dot(a, b, out=c)  # warm-up: thread pool start, page faults
    t, _ = median_time(lambda: np.dot(a, b, out=c), reps)
    return 2.0 * n ** 3 / t / 1e9


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_data(sizes, loss, rows, seed=0):
    """Synthetic float32 inputs; labels from a random linear teacher (learnable, balanced)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, sizes[0]), dtype=np.float32)
    T = rng.standard_normal((sizes[0], sizes[-1]), dtype=np.float32) / np.sqrt(sizes[0])
    S = X @ T
    if loss == "cross_entropy":
        y = S.argmax(axis=1).astype(np.int64)
    else:
        y = np.tanh(S).astype(np.float32)
        if sizes[-1] == 1:
            y = y.ravel()
    return X, y


def versions():
    out = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("fastbp", "numba", "scipy", "torch", "sklearn", "matplotlib"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # not installed
            out[mod] = None
    try:
        import subprocess

        import fastbp
        root = os.path.dirname(os.path.dirname(os.path.abspath(fastbp.__file__)))
        out["fastbp_commit"] = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
            text=True, timeout=10).stdout.strip() or None
    except Exception:  # not a checkout
        out["fastbp_commit"] = None
    out["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY")
    try:
        from threadpoolctl import threadpool_info
        out["blas"] = sorted({f"{d.get('internal_api')} {d.get('version')} "
                              f"({d.get('architecture')})" for d in threadpool_info()
                              if d.get("user_api") == "blas"})
    except Exception:
        pass
    return out


# ------------------------------------------------------------------------------ peers
# Each ``setup_<peer>`` warms its library up (compilation, first epoch, allocator) and returns
# (train_epoch, infer): train_epoch() runs one timed, shuffled epoch and returns its seconds;
# infer() returns the seconds of one forward pass over all rows, or infer is None. A missing
# library raises ImportError. The timed repetitions of all peers are interleaved (rep 1 of
# every peer, then rep 2, ...) so that a noisy machine hits every peer alike.

_warmed_up = []


def fastbp_timers(net, bs, loss, X, y, epochs=1):
    """Warm ``net`` up (first fit, first prediction) and return (train, infer): one timed
    fit of ``epochs`` shuffled epochs, and one timed prediction of every row. Timed from
    outside, like the peers: the fit includes input checks, buffer set-up (and on a GPU the
    upload) and the first (measuring) chunk."""
    net.fit(X, y, epochs=1, batch_size=bs, optimizer="adam", lr=1e-3, verbose=0)

    def train():
        t0 = time.perf_counter()
        net.fit(X, y, epochs=epochs, batch_size=bs, optimizer="adam", lr=1e-3, shuffle=True,
                verbose=0, warm_start=True)
        return time.perf_counter() - t0

    infer_fn = net.predict_proba if loss == "cross_entropy" else net.predict
    infer_fn(X)

    def infer():
        t0 = time.perf_counter()
        infer_fn(X)
        return time.perf_counter() - t0

    return train, infer


def setup_fastbp(sizes, bs, loss, X, y):
    import fastbp
    if not _warmed_up:
        _warmed_up.append(fastbp.warmup())  # compile or load every kernel once per process
    net = fastbp.MLP(sizes, activation="relu", loss=loss, dtype="float32", seed=0, device="cpu")
    return fastbp_timers(net, bs, loss, X, y)


def setup_torch(sizes, bs, loss, X, y):
    import torch
    from torch import nn
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    lossfn = nn.CrossEntropyLoss() if loss == "cross_entropy" else nn.MSELoss()
    Xt = torch.from_numpy(X)
    yt = torch.from_numpy(y if loss == "cross_entropy" else y.reshape(len(y), -1))
    n = Xt.shape[0]
    gen = torch.Generator().manual_seed(0)

    def train_epoch():
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(n, generator=gen)
        for s in range(0, n, bs):
            idx = perm[s:s + bs]
            xb, yb = Xt[idx], yt[idx]
            opt.zero_grad(set_to_none=True)
            lossfn(model(xb), yb).backward()
            opt.step()
        return time.perf_counter() - t0

    def infer():
        t0 = time.perf_counter()
        model.eval()
        with torch.no_grad():
            out = model(Xt)
            if loss == "cross_entropy":
                out = torch.softmax(out, dim=1)
        return time.perf_counter() - t0

    train_epoch()
    infer()
    return train_epoch, infer


def setup_sklearn(sizes, bs, loss, X, y):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    cls = MLPClassifier if loss == "cross_entropy" else MLPRegressor
    est = cls(hidden_layer_sizes=tuple(sizes[1:-1]), activation="relu", solver="adam",
              alpha=0.0, batch_size=bs, learning_rate_init=1e-3, max_iter=1, shuffle=True,
              random_state=0, tol=0.0, n_iter_no_change=10 ** 9)
    kw = {"classes": np.arange(sizes[-1])} if loss == "cross_entropy" else {}

    def train_epoch():
        # partial_fit = one shuffled epoch of Adam steps (warnings about convergence off).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.simplefilter("ignore", UserWarning)
            t0 = time.perf_counter()
            est.partial_fit(X, y, **kw)
            return time.perf_counter() - t0

    train_epoch()
    kw = {}
    if est.coefs_[0].dtype != np.float32:
        print(f"  note: scikit-learn trains in {est.coefs_[0].dtype}")
    return train_epoch, None


def setup_numpy(sizes, bs, loss, X, y):
    from numpy_mlp import NumpyMLP
    net = NumpyMLP(sizes, loss=loss, dtype=np.float32, seed=0)
    rng = np.random.default_rng(0)

    def train_epoch():
        t0 = time.perf_counter()
        net.fit_epoch(X, y, bs, rng)
        return time.perf_counter() - t0

    train_epoch()
    return train_epoch, None


SETUPS = {"fastbp": setup_fastbp, "torch": setup_torch, "sklearn": setup_sklearn,
          "numpy": setup_numpy}


# ------------------------------------------------------------------------------- main

def rows_for(sizes, rows):
    """The requested rows, cut so that one epoch stays under MAX_EPOCH_GFLOP."""
    cap = int(MAX_EPOCH_GFLOP * 1e9 / train_flops_per_sample(sizes))
    if rows > cap:
        return max(1000, cap - cap % 1000)
    return rows


def bench_shape(name, rows_req, reps, peers, log):
    sizes, bs, loss = SHAPES[name]
    rows = rows_for(sizes, rows_req)
    X, y = make_data(sizes, loss, rows)
    res = dict(sizes=sizes, batch_size=bs, loss=loss, rows=rows,
               flops_per_sample=train_flops_per_sample(sizes), peers={}, notes=[])
    if rows != rows_req:
        msg = f"{name}: {rows} rows instead of {rows_req} (an epoch is capped at " \
              f"{MAX_EPOCH_GFLOP:.0f} training GFLOP to keep the run short)"
        res["notes"].append(msg)
        log(f"  note: {msg}")
    ready = {}
    for peer in peers:
        try:
            ready[peer] = SETUPS[peer](sizes, bs, loss, X, y)
        except ImportError as e:
            msg = f"{peer} skipped: not installed ({e.name or e})"
            res["notes"].append(msg)
            log(f"  {msg}")
    train_t = {p: [] for p in ready}
    infer_t = {p: [] for p in ready if ready[p][1] is not None}
    for _ in range(reps):
        for peer, (train_epoch, infer) in ready.items():
            train_t[peer].append(train_epoch())
            if infer is not None:
                infer_t[peer].append(infer())
    for peer in ready:
        r = dict(train=rows / statistics.median(train_t[peer]),
                 train_rep_sps=[rows / t for t in train_t[peer]])
        if peer in infer_t:
            r["infer"] = rows / statistics.median(infer_t[peer])
            r["infer_rep_sps"] = [rows / t for t in infer_t[peer]]
        res["peers"][peer] = r
        log(f"  {peer:8s} train {r['train']:>12,.0f} samples/s"
            + (f"   infer {r['infer']:>12,.0f} samples/s" if r.get("infer") else "")
            + f"   (reps spread {min(r['train_rep_sps']):,.0f}..{max(r['train_rep_sps']):,.0f})")
    return res


def ratio(a, b):
    return a / b if a and b else None


def summarise(results, sgemm):
    """Table rows: one per shape, samples/s per peer, fastbp/torch ratios, % of sgemm."""
    rows = []
    for name, r in results.items():
        p = r["peers"]
        fb = p.get("fastbp", {})
        th = p.get("torch", {})
        row = dict(shape=name, sizes=r["sizes"], batch_size=r["batch_size"], rows=r["rows"])
        for peer in PEERS:
            row[f"{peer}_train"] = p.get(peer, {}).get("train")
        row["fastbp_infer"] = fb.get("infer")
        row["torch_infer"] = th.get("infer")
        row["train_ratio_vs_torch"] = ratio(fb.get("train"), th.get("train"))
        row["infer_ratio_vs_torch"] = ratio(fb.get("infer"), th.get("infer"))
        for peer in ("sklearn", "numpy"):
            row[f"train_ratio_vs_{peer}"] = ratio(fb.get("train"), p.get(peer, {}).get("train"))
        gf = fb.get("train", 0) * r["flops_per_sample"] / 1e9 if fb else None
        row["fastbp_train_gflops"] = gf
        row["fastbp_pct_sgemm"] = 100 * gf / sgemm if gf else None
        th_gf = th.get("train", 0) * r["flops_per_sample"] / 1e9 if th else None
        row["torch_pct_sgemm"] = 100 * th_gf / sgemm if th_gf else None
        rows.append(row)
    return rows


def fmt(v, spec=",.0f", none="-"):
    return none if v is None else format(v, spec)


def table(rows, sgemm):
    head = (f"{'shape':7s} {'batch':>5s} {'rows':>6s} | {'fastbp':>10s} {'torch':>10s} "
            f"{'sklearn':>9s} {'numpy':>9s} | {'x torch':>7s} {'%sgemm':>6s} | "
            f"{'fb infer':>10s} {'th infer':>10s} {'x torch':>7s}")
    lines = [f"training / inference samples/s (float32, Adam); sgemm {sgemm:.1f} GFLOP/s",
             head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['shape']:7s} {r['batch_size']:>5d} {r['rows']:>6d} | "
            f"{fmt(r['fastbp_train']):>10s} {fmt(r['torch_train']):>10s} "
            f"{fmt(r['sklearn_train']):>9s} {fmt(r['numpy_train']):>9s} | "
            f"{fmt(r['train_ratio_vs_torch'], '.2f'):>7s} "
            f"{fmt(r['fastbp_pct_sgemm'], '.1f'):>6s} | "
            f"{fmt(r['fastbp_infer']):>10s} {fmt(r['torch_infer']):>10s} "
            f"{fmt(r['infer_ratio_vs_torch'], '.2f'):>7s}")
    return "\n".join(lines)


def markdown_table(rows, sgemm):
    out = ["| shape | layers | batch | rows | fastbp train | PyTorch train | scikit-learn "
           "train | NumPy train | fastbp / PyTorch | fastbp % sgemm | fastbp infer | "
           "PyTorch infer | infer fastbp / PyTorch |",
           "|" + "---|" * 13]
    for r in rows:
        out.append(
            f"| {r['shape']} | {r['sizes']} | {r['batch_size']} | {r['rows']} | "
            f"{fmt(r['fastbp_train'])} | {fmt(r['torch_train'])} | {fmt(r['sklearn_train'])} | "
            f"{fmt(r['numpy_train'])} | {fmt(r['train_ratio_vs_torch'], '.2f')}x | "
            f"{fmt(r['fastbp_pct_sgemm'], '.1f')}% | {fmt(r['fastbp_infer'])} | "
            f"{fmt(r['torch_infer'])} | {fmt(r['infer_ratio_vs_torch'], '.2f')}x |")
    out.append("")
    out.append(f"samples/s, median of the repetitions; sgemm (2048^3 float32 np.dot): "
               f"{sgemm:.1f} GFLOP/s")
    return "\n".join(out)


def plot(results, rows, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    shapes = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = {"fastbp": "#d62728", "torch": "#1f77b4", "sklearn": "#ff7f0e", "numpy": "#7f7f7f"}
    labels = {"fastbp": "fastbp", "torch": "PyTorch", "sklearn": "scikit-learn",
              "numpy": "NumPy"}
    x = np.arange(len(shapes))
    for ax, kind, peers in ((axes[0], "train", PEERS), (axes[1], "infer", ("fastbp", "torch"))):
        w = 0.8 / len(peers)
        for i, peer in enumerate(peers):
            vals = [results[s]["peers"].get(peer, {}).get(kind) or 0 for s in shapes]
            bars = ax.bar(x + (i - (len(peers) - 1) / 2) * w, vals, w, label=labels[peer],
                          color=colors[peer])
            for b, v in zip(bars, vals):
                if v:
                    ax.annotate(f"{v / 1e3:,.0f}k" if v >= 1e3 else f"{v:.0f}",
                                (b.get_x() + b.get_width() / 2, v), ha="center",
                                va="bottom", fontsize=7, rotation=90, xytext=(0, 2),
                                textcoords="offset points")
        ax.set_yscale("log")
        ax.set_xticks(x)
        ax.set_xticklabels([f"{s}\n{results[s]['sizes']}\nbs {results[s]['batch_size']}"
                            for s in shapes], fontsize=8)
        ax.set_ylabel("samples/s (log)")
        ax.set_title("training (Adam, float32)" if kind == "train" else "inference")
        ax.legend(fontsize=8)
        ax.margins(y=0.25)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default="narrow,mnist,wide",
                   help=f"comma-separated subset of {','.join(SHAPES)}")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions (epochs), >= 1")
    p.add_argument("--rows", type=int, default=20000, help="synthetic training rows")
    p.add_argument("--peers", default=",".join(PEERS),
                   help=f"comma-separated subset of {','.join(PEERS)}")
    p.add_argument("--json", default="fastbp-bench.json",
                   help="write the results here ('' to skip; default %(default)s)")
    p.add_argument("--png", default="fastbp-bench.png",
                   help="write a bar chart here (needs matplotlib; '' to skip; default "
                        "%(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 3 reps, 4000 rows (numbers are indicative only)")
    return p


def main(argv=None):
    """Entry point of ``python bench/compare.py`` and of a ``fastbp bench`` command.

    ``argv`` as for the command line (None: sys.argv[1:]); returns the exit status 0.
    """
    _import_torch_first()
    run(build_parser().parse_args(argv))
    return 0


def _import_torch_first():
    """PyTorch's OpenMP runtime reads OMP_WAIT_POLICY when torch is imported; importing it
    before fastbp (which sets a passive policy for its own pool) leaves torch at its
    defaults, so each library runs as it would alone."""
    try:
        import torch  # noqa: F401
    except ImportError:
        pass


def run(args):
    """Run the comparison for parsed ``args``; returns the report dict (as in the JSON)."""
    if args.quick:
        args.reps = min(args.reps, 3)
        args.rows = min(args.rows, 4000)
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    peers = [s.strip() for s in args.peers.split(",") if s.strip()]
    for s in shapes:
        if s not in SHAPES:
            raise SystemExit(f"unknown shape {s!r}; choose from {', '.join(SHAPES)}")
    for s in peers:
        if s not in PEERS:
            raise SystemExit(f"unknown peer {s!r}; choose from {', '.join(PEERS)}")
    if args.reps < 1 or args.rows < 100:
        raise SystemExit("--reps must be >= 1 and --rows >= 100")

    import numba
    log = print
    cores = os.cpu_count()
    log(f"fastbp compare: {cpu_model()}, {cores} cores, numba threads "
        f"{numba.get_num_threads()}, {args.reps} reps, {args.rows} rows"
        + (" (quick)" if args.quick else ""))
    load_before = os.getloadavg()[0]
    if load_before > LOAD_WARN * cores:
        log(f"warning: load average {load_before:.2f} on {cores} cores before the run; other "
            f"processes compete for the cores and multi-threaded timings suffer most")
    sgemm = sgemm_gflops()
    log(f"sgemm 2048^3 float32: {sgemm:.1f} GFLOP/s")
    results = {}
    for name in shapes:
        sizes, bs, loss = SHAPES[name]
        log(f"{name}: sizes {sizes}, batch {bs}, loss {loss}")
        results[name] = bench_shape(name, args.rows, args.reps, peers, log)
    sgemm_after = sgemm_gflops()
    if abs(sgemm_after - sgemm) > 0.15 * sgemm:
        log(f"warning: sgemm moved from {sgemm:.1f} to {sgemm_after:.1f} GFLOP/s during the "
            f"run; the machine was not quiet")
    # The roof is the better of the two sgemm readings: a noisy (low) reading would
    # flatter fastbp's percentage, the better one never does.
    roof = max(sgemm, sgemm_after)
    rows = summarise(results, roof)
    log("")
    log(table(rows, roof))
    notes = [n for r in results.values() for n in r["notes"]]
    for n in notes:
        log(f"note: {n}")

    now = datetime.datetime.now()
    report = dict(date=now.date().isoformat(), time=now.isoformat(timespec="seconds"),
                  machine=dict(cpu=cpu_model(), cores=cores, platform=platform.platform(),
                               numba_threads=numba.get_num_threads()),
                  versions=versions(), sgemm_gflops=sgemm, sgemm_gflops_after=sgemm_after,
                  sgemm_roof=roof,
                  load_average_before=load_before, reps=args.reps, quick=args.quick,
                  rows_requested=args.rows, method=dict(
                      dtype="float32", optimizer="adam lr=1e-3", timed="full shuffled epochs "
                      "after warm-up; peers interleaved rep by rep; median of reps",
                      flops_per_sample="6 * sum(n_in * n_out)",
                      threads="torch.set_num_threads(os.cpu_count()); numba default; BLAS "
                      "default"),
                  results=results, summary=rows, notes=notes)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        log(f"wrote {args.json}")
    if args.png:
        try:
            plot(results, rows, args.png, f"fastbp vs peers - {cpu_model()}, {cores} cores, "
                 f"{report['date']}")
            log(f"wrote {args.png}")
        except ImportError:
            log("note: matplotlib not installed; no chart written")
    return report


if __name__ == "__main__":
    sys.exit(main())
