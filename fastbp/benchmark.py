"""``fastbp bench``: the machine's FMA peak, then fastbp against every installed peer.

    fastbp bench [--quick] [--shapes narrow,mnist,wide] [--peers fastbp,torch,sklearn]
                 [--reps 5] [--rows 20000] [--json out.json] [--png out.png]

Everything runs in ONE process on the same synthetic data, float32, Adam (lr 1e-3), with
every library on all of fastbp's threads (torch.set_num_threads(fastbp.get_num_threads())).
Each peer is warmed up first (compilation, first epoch, allocator) and never timed then; a
repetition is one full shuffled epoch and one forward pass over every row, the peers taking
turns rep by rep so that a noisy machine hits them alike. Each timed epoch and pass comes
right after an untimed one of the same peer: timed straight after another library, a peer
paid for what that one left behind (PyTorch's OpenMP threads still spinning on the cores,
its own threads asleep). On a 2-core Zen 4 that cost fastbp's MNIST-shaped training a
third of its speed and PyTorch's a sixth (bench/results/README.md). Figures are the median
over the repetitions, with the spread (min..max) beside them. Peers that are not installed
are skipped with a note.

The FMA peak comes from ``fastbp.kernels.peak``: vector FMA chains on one thread and on
all threads at once, float32 and float64, measured before and after the models (the better
reading is the roof: a reading taken in a busy moment is low, and a low roof would flatter
every percentage). Training is counted as 6 x sum(n_in * n_out) FLOP per sample (forward,
input-delta and weight-gradient products), inference as 2 x sum(n_in * n_out); elementwise
work is left out, so "% of peak" slightly understates what the cores did.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import threading
import time
import warnings

import numpy as np

SHAPES = {
    # name: (layer sizes, batch size, loss)
    "narrow": ([32, 64, 64, 1], 32, "mse"),
    "mnist": ([784, 256, 128, 10], 128, "cross_entropy"),
    "wide": ([1024, 1024, 1024, 10], 256, "cross_entropy"),
}
LOAD_WARN = 0.3  # 1-minute load average per core above which timings are flagged
# An epoch is capped at this many training GFLOP (6 x weights x rows), so that the wide net
# runs on fewer rows than the others (the cut is printed and stored); a fixed rule, not a
# timing, so every run on every machine uses the same rows.
MAX_EPOCH_GFLOP = 128.0
PEAK_SECONDS = 0.05   # length of one timed FMA run per thread


# ----------------------------------------------------------------------------- helpers

def train_flops_per_sample(sizes):
    return 6 * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def infer_flops_per_sample(sizes):
    return 2 * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


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
    """The CPU's model name (Linux: /proc/cpuinfo; elsewhere what platform knows)."""
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
    except Exception:  # not a checkout, or no git
        out["fastbp_commit"] = None
    try:
        from threadpoolctl import threadpool_info
        out["blas"] = sorted({f"{d.get('internal_api')} {d.get('version')} "
                              f"({d.get('architecture')})" for d in threadpool_info()
                              if d.get("user_api") == "blas"})
    except Exception:
        pass
    return out


# --------------------------------------------------------------------------- FMA peak

def _fma_run(dtype, steps, n_threads):
    """GFLOP/s of ``n_threads`` threads each running ``steps`` FMA rounds at once."""
    from .kernels.peak import CHAINS, fma_chains
    bufs = [np.ones(CHAINS * 64, dtype=dtype) for _ in range(n_threads)]
    flops = [0.0] * n_threads
    start = threading.Barrier(n_threads + 1)

    def work(i):
        start.wait()
        flops[i] = fma_chains(bufs[i], steps)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return sum(flops) / (time.perf_counter() - t0) / 1e9


def fma_peak(n_threads=None, reps=5, seconds=PEAK_SECONDS):
    """The machine's FMA peak in GFLOP/s: ``{"float32": {"1": [...], "N": [...]}, ...}``,
    the readings of ``reps`` runs on one thread and on ``n_threads`` threads (default:
    fastbp.get_num_threads()), each run about ``seconds`` long."""
    from .kernels.peak import CHAINS, fma_chains
    from .threads import get_num_threads
    n_threads = n_threads or get_num_threads()
    out = {}
    for dtype in (np.float32, np.float64):
        x = np.ones(CHAINS * 64, dtype=dtype)
        fma_chains(x, 1000)                       # compile or load, then calibrate
        t0 = time.perf_counter()
        flop = fma_chains(x, 200_000)
        rate = flop / max(time.perf_counter() - t0, 1e-6)
        steps = max(1000, int(200_000 * seconds * rate / flop))
        counts = sorted({1, n_threads})
        out[np.dtype(dtype).name] = {str(n): [_fma_run(dtype, steps, n) for _ in range(reps)]
                                     for n in counts}
    return out


def physical_cores():
    """Cores among the CPUs this process may run on, SMT siblings counted once (Linux);
    None where the topology cannot be read."""
    try:
        siblings = set()
        for c in os.sched_getaffinity(0):
            path = f"/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list"
            with open(path) as f:
                siblings.add(f.read().strip())
        return len(siblings)
    except (AttributeError, OSError):
        return None


def peak_roof(*readings, cores=None):
    """The float32 roof from ``fma_peak`` results: the best all-thread reading, or the best
    one-thread reading times the cores the threads can use, whichever is higher. On a
    shared machine the all-thread run finds some cores busy and reads low; one core's
    reading times the cores is what the cores can do (a little above it on a CPU whose
    clock drops as more cores work, so percentages err low)."""
    best_all = best_one = 0.0
    n_all = 1
    for r in readings:
        f32 = r["float32"]
        n_all = max(int(n) for n in f32)
        best_all = max(best_all, max(f32[str(n_all)]))
        best_one = max(best_one, max(f32["1"]))
    cores = physical_cores() if cores is None else cores
    return max(best_all, best_one * min(n_all, cores or 1))


# ------------------------------------------------------------------------------ peers
# Each ``setup_<peer>`` warms its library up and returns (train_epoch, infer): each call
# times one shuffled epoch / one forward pass over every row and returns its seconds (infer
# may be None). A missing library raises ImportError.

_warmed_up = []


def fastbp_timers(net, bs, loss, X, y, epochs=1):
    """Warm ``net`` up (first fit, first prediction) and return (train, infer): one timed
    fit of ``epochs`` shuffled epochs, and one timed prediction of every row. Timed from
    outside, like the peers: the fit includes input checks, buffer set-up (and on a GPU the
    upload)."""
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

    from .threads import get_num_threads
    torch.set_num_threads(get_num_threads())
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

    predict = est.predict_proba if loss == "cross_entropy" else est.predict

    def infer():
        t0 = time.perf_counter()
        predict(X)
        return time.perf_counter() - t0

    train_epoch()
    infer()
    return train_epoch, infer


SETUPS = {"fastbp": setup_fastbp, "torch": setup_torch, "sklearn": setup_sklearn}
LABELS = {"fastbp": "fastbp", "torch": "PyTorch", "sklearn": "scikit-learn", "numpy": "NumPy"}


# ------------------------------------------------------------------------------- runs

def rows_for(sizes, rows):
    """The requested rows, cut so that one epoch stays under MAX_EPOCH_GFLOP."""
    cap = int(MAX_EPOCH_GFLOP * 1e9 / train_flops_per_sample(sizes))
    if rows > cap:
        return max(1000, cap - cap % 1000)
    return rows


def _spread(values):
    return [min(values), max(values)]


def interleaved_reps(ready, reps):
    """({peer: seconds of each timed training epoch}, {peer: seconds of each timed
    inference pass}) of ``reps`` repetitions of every peer's (train_epoch, infer) in
    ``ready`` (infer may be None), the peers taking turns rep by rep, each timed call
    right after an untimed one of the same peer (see the module docstring)."""
    train_t = {p: [] for p in ready}
    infer_t = {p: [] for p in ready if ready[p][1] is not None}
    for _ in range(reps):
        for peer, (train_epoch, infer) in ready.items():
            train_epoch()       # untimed: what the previous peer left behind is paid here
            train_t[peer].append(train_epoch())
            if infer is not None:
                infer()
                infer_t[peer].append(infer())
    return train_t, infer_t


def bench_shape(name, rows_req, reps, peers, log, setups=SETUPS):
    sizes, bs, loss = SHAPES[name]
    rows = rows_for(sizes, rows_req)
    X, y = make_data(sizes, loss, rows)
    res = dict(sizes=sizes, batch_size=bs, loss=loss, rows=rows,
               flops_per_sample=train_flops_per_sample(sizes),
               infer_flops_per_sample=infer_flops_per_sample(sizes), peers={}, notes=[])
    if rows != rows_req:
        msg = f"{name}: {rows} rows instead of {rows_req} (an epoch is capped at " \
              f"{MAX_EPOCH_GFLOP:.0f} training GFLOP to keep the run short)"
        res["notes"].append(msg)
        log(f"  note: {msg}")
    ready = {}
    for peer in peers:
        try:
            ready[peer] = setups[peer](sizes, bs, loss, X, y)
        except ImportError as e:
            msg = f"{peer} skipped: not installed ({e.name or e})"
            res["notes"].append(msg)
            log(f"  {msg}")
    train_t, infer_t = interleaved_reps(ready, reps)
    for peer in ready:
        r = dict(train=rows / statistics.median(train_t[peer]),
                 train_rep_sps=[rows / t for t in train_t[peer]])
        if peer in infer_t:
            r["infer"] = rows / statistics.median(infer_t[peer])
            r["infer_rep_sps"] = [rows / t for t in infer_t[peer]]
        res["peers"][peer] = r
        log(f"  {peer:8s} train {r['train']:>12,.0f} samples/s "
            f"({min(r['train_rep_sps']):,.0f}..{max(r['train_rep_sps']):,.0f})"
            + (f"   infer {r['infer']:>12,.0f} samples/s "
               f"({min(r['infer_rep_sps']):,.0f}..{max(r['infer_rep_sps']):,.0f})"
               if r.get("infer") else ""))
    return res


def ratio(a, b):
    return a / b if a and b else None


def summarise(results, peak, peers):
    """One row per shape: samples/s per peer, fastbp's ratio to each peer (median and the
    min..max of the rep-by-rep ratios), and every peer's % of the FMA peak."""
    rows = []
    for name, r in results.items():
        p = r["peers"]
        fb = p.get("fastbp", {})
        row = dict(shape=name, sizes=r["sizes"], batch_size=r["batch_size"], rows=r["rows"])
        for kind, fps in (("train", r["flops_per_sample"]), ("infer", r["infer_flops_per_sample"])):
            for peer in peers:
                q = p.get(peer, {})
                row[f"{peer}_{kind}"] = q.get(kind)
                row[f"{peer}_{kind}_pct_peak"] = (100 * q[kind] * fps / 1e9 / peak
                                                  if q.get(kind) else None)
                if peer == "fastbp":
                    continue
                row[f"{kind}_ratio_vs_{peer}"] = ratio(fb.get(kind), q.get(kind))
                a, b = fb.get(f"{kind}_rep_sps"), q.get(f"{kind}_rep_sps")
                row[f"{kind}_ratio_vs_{peer}_spread"] = (
                    _spread([x / y for x, y in zip(a, b)]) if a and b else None)
        rows.append(row)
    return rows


def fmt(v, spec=",.0f", none="-"):
    return none if v is None else format(v, spec)


def _ratio_cell(row, kind, peer):
    r = row.get(f"{kind}_ratio_vs_{peer}")
    s = row.get(f"{kind}_ratio_vs_{peer}_spread")
    if r is None:
        return "-"
    return f"{r:.2f}x ({s[0]:.2f}-{s[1]:.2f})"


def table(rows, peers, peak):
    others = [p for p in peers if p != "fastbp"]
    lines = [f"samples/s, median of the repetitions; x peer: fastbp / peer (spread of the "
             f"rep-by-rep ratios); % peak: of {peak:.0f} GFLOP/s"]
    for kind, title in (("train", "training (float32, Adam)"), ("infer", "inference")):
        head = f"{title:26s} {'fastbp':>11s} {'% peak':>6s}"
        for p in others:
            head += f" | {LABELS[p]:>12s} {'% peak':>6s} {'x ' + LABELS[p]:>22s}"
        lines += ["", head, "-" * len(head)]
        for r in rows:
            line = (f"{r['shape']:7s} bs {r['batch_size']:<4d} {r['rows']:>6d} rows  "
                    f"{fmt(r['fastbp_' + kind]):>11s} "
                    f"{fmt(r['fastbp_' + kind + '_pct_peak'], '.1f'):>6s}")
            for p in others:
                line += (f" | {fmt(r[p + '_' + kind]):>12s} "
                         f"{fmt(r[p + '_' + kind + '_pct_peak'], '.1f'):>6s} "
                         f"{_ratio_cell(r, kind, p):>22s}")
            lines.append(line)
    return "\n".join(lines)


def plot(results, path, title, peers):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    shapes = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = {"fastbp": "#d62728", "torch": "#1f77b4", "sklearn": "#ff7f0e", "numpy": "#7f7f7f"}
    x = np.arange(len(shapes))
    for ax, kind in ((axes[0], "train"), (axes[1], "infer")):
        w = 0.8 / len(peers)
        for i, peer in enumerate(peers):
            vals = [results[s]["peers"].get(peer, {}).get(kind) or 0 for s in shapes]
            bars = ax.bar(x + (i - (len(peers) - 1) / 2) * w, vals, w,
                          label=LABELS.get(peer, peer), color=colors.get(peer))
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


def build_parser(peers=tuple(SETUPS), prog=None):
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default="narrow,mnist,wide",
                   help=f"comma-separated subset of {','.join(SHAPES)}")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions (epochs), >= 1")
    p.add_argument("--rows", type=int, default=20000, help="synthetic training rows")
    p.add_argument("--peers", default=",".join(peers),
                   help=f"comma-separated subset of {','.join(peers)} (the installed ones "
                        f"run)")
    p.add_argument("--json", default="fastbp-bench.json",
                   help="write the results here ('' to skip; default %(default)s)")
    p.add_argument("--png", default="",
                   help="write a bar chart here (needs matplotlib; default: none)")
    p.add_argument("--note", default="", help="a remark stored in the JSON (the machine's "
                   "state, say)")
    p.add_argument("--quick", action="store_true",
                   help="a short run: 3 reps, 4000 rows (figures are indicative only)")
    return p


def run(args, setups=SETUPS, log=print):
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
        if s not in setups:
            raise SystemExit(f"unknown peer {s!r}; choose from {', '.join(setups)}")
    if "fastbp" not in peers:
        peers.insert(0, "fastbp")
    if args.reps < 1 or args.rows < 100:
        raise SystemExit("--reps must be >= 1 and --rows >= 100")

    from .threads import get_num_threads
    from .version import __version__
    cores = os.cpu_count()
    threads = get_num_threads()
    cpu = cpu_model()
    log(f"fastbp {__version__} bench: {cpu}, {cores} CPUs, {threads} threads, "
        f"{args.reps} reps, {args.rows} rows" + (" (quick)" if args.quick else ""))
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if load_before is not None and load_before > LOAD_WARN * cores:
        log(f"warning: load average {load_before:.2f} on {cores} CPUs before the run; other "
            f"processes compete for the cores and multi-threaded timings suffer most")
    peak_reps = 3 if args.quick else 5
    peak_before = fma_peak(threads, peak_reps)
    log(_peak_line(peak_before, threads))
    results = {}
    for name in shapes:
        sizes, bs, loss = SHAPES[name]
        log(f"{name}: sizes {sizes}, batch {bs}, loss {loss}")
        results[name] = bench_shape(name, args.rows, args.reps, peers, log, setups)
    peak_after = fma_peak(threads, peak_reps)
    roof = peak_roof(peak_before, peak_after)
    measured_all = max(max(r["float32"][str(max(int(n) for n in r["float32"]))])
                       for r in (peak_before, peak_after))
    if measured_all < 0.85 * roof:
        log(f"warning: all {threads} threads at once read {measured_all:.0f} GFLOP/s, "
            f"below {roof:.0f} (one thread's best x the cores): other processes held "
            f"cores, and every figure of this run is lower than on a quiet machine")
    sgemm = sgemm_gflops()
    present = [p for p in peers if any(p in r["peers"] for r in results.values())]
    rows = summarise(results, roof, present)
    log("")
    log(table(rows, present, roof))
    log(f"FMA peak (float32, {threads} threads): {roof:.0f} GFLOP/s; NumPy's 2048^3 sgemm: "
        f"{sgemm:.0f} GFLOP/s ({100 * sgemm / roof:.0f}% of peak)")
    for r in rows:
        log(_summary_line(r, present))
    notes = [n for r in results.values() for n in r["notes"]]
    for n in notes:
        log(f"note: {n}")

    now = datetime.datetime.now(datetime.timezone.utc)
    report = dict(date=now.date().isoformat(), time=now.isoformat(timespec="seconds"),
                  machine=dict(cpu=cpu, cores=cores, platform=platform.platform(),
                               threads=threads),
                  versions=versions(), note=args.note,
                  fma_peak_gflops=dict(before=peak_before, after=peak_after, roof=roof,
                                       all_threads_best=measured_all,
                                       physical_cores=physical_cores()),
                  sgemm_gflops=sgemm, load_average_before=load_before, reps=args.reps,
                  quick=args.quick, rows_requested=args.rows, method=dict(
                      dtype="float32", optimizer="adam lr=1e-3", timed="full shuffled epochs "
                      "and full forward passes after warm-up; peers interleaved rep by rep, each "
                      "timed epoch and pass right after an untimed one of the same peer; "
                      "median of reps, spread = min..max",
                      flops_per_sample="training 6 * sum(n_in * n_out), inference "
                      "2 * sum(n_in * n_out)",
                      peak="kernels.peak.fma_chains, float32: the best reading before "
                      "and after the models of all threads at once, or of one thread "
                      "times the physical cores the threads may use, whichever is higher",
                      threads="fastbp.get_num_threads(); torch.set_num_threads(the same); "
                      "BLAS default"),
                  results=results, summary=rows, notes=notes)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        log(f"wrote {args.json}")
    if args.png:
        try:
            plot(results, args.png, f"fastbp vs peers - {cpu}, {cores} CPUs, "
                 f"{report['date']}", present)
            log(f"wrote {args.png}")
        except ImportError:
            log("note: matplotlib not installed; no chart written")
    return report


def _summary_line(row, peers):
    parts = []
    for kind, verb in (("train", "trains"), ("infer", "predicts")):
        pct = row.get(f"fastbp_{kind}_pct_peak")
        if pct is None:
            continue
        vs = [f"{row[f'{kind}_ratio_vs_{p}']:.2f}x {LABELS.get(p, p)}" for p in peers
              if row.get(f"{kind}_ratio_vs_{p}")]
        parts.append(f"{verb} at {pct:.1f}% of peak" + (f" ({', '.join(vs)})" if vs else ""))
    return f"{row['shape']}: fastbp " + "; ".join(parts)


def _peak_line(peak, threads):
    parts = []
    for dtype, by_threads in peak.items():
        for n, vals in by_threads.items():
            parts.append(f"{dtype} x{n} {max(vals):.0f}")
    return f"FMA peak, GFLOP/s (best of {len(vals)}): " + ", ".join(parts)


def main(argv=None, setups=SETUPS, prog="fastbp bench"):
    """Entry point of ``fastbp bench``; ``argv`` as on the command line. Returns 0."""
    run(build_parser(tuple(setups), prog).parse_args(argv), setups)
    return 0
