"""Inference of an exported model: ONNX Runtime vs torch.nn.Sequential eager on the CPU.

    python bench/onnx_vs_torch.py [--shapes narrow,mnist,wide] [--calls 1,64,4096]
                                  [--rows 4096] [--rounds 5] [--reps 3] [--gap 0.5]
                                  [--threads N] [--dtype float32] [--json out.json] [--quick]

One process, one fastbp model per shape (ReLU hidden layers, the weights of a short fit on
synthetic data), exported both ways: ``net.to_onnx()`` run by an ONNX Runtime session and
``net.to_torch()`` run eagerly under ``torch.inference_mode()``; both end in the loss's head
(softmax for the classifiers), so they compute the same function on the same float32
inputs. fastbp's own ``predict_proba``/``predict`` is timed alongside for reference.

Method:
* Same threads: ``torch.set_num_threads(T)``, the session's ``intra_op_num_threads = T``
  and ``fastbp.set_num_threads(T)`` (T = all cores unless --threads), one inter-op
  thread. Each library keeps its own way of waiting for work: ONNX Runtime's workers spin
  (its default; ``--ort-no-spin`` turns that off), torch's OpenMP pool follows
  ``OMP_WAIT_POLICY`` (unset: OpenMP's default), fastbp's own threads wait passively.
* Each configuration predicts ``--rows`` rows per repetition in calls of ``c`` rows (c in
  --calls): c = 1 is a service answering one request at a time, the largest c one batch.
* Peers run in blocks, round-robin: per round, each peer in turn gets a pause of ``--gap``
  seconds, one warm-up repetition (not timed) and ``--reps`` timed ones back to back.
  Finer interleaving measured the neighbours, not the peer: after an ONNX Runtime call its
  spinning workers keep the second core busy for tens of milliseconds, and torch's next
  call ran at half speed (25 ms instead of 12.4 for the MNIST shape at 4096 rows); a pause
  long enough to prevent that left every library's threads cold. ``--rounds`` rounds
  spread a noisy spell over all peers; the median, min and max of all timed repetitions
  are reported, and the ratio of medians torch / ONNX Runtime (above 1: ONNX Runtime
  faster).
* Before timing, the session's first call and the first pass of each peer (allocator,
  first-call paths) happen in the warm-up; the outputs of the three are compared once
  (max abs difference).
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from compare import LOAD_WARN, SHAPES, cpu_model, make_data, versions  # noqa: E402

PEERS = ("onnxruntime", "torch", "fastbp")


def build_peers(sizes, loss, dtype, threads, X, y, spin=True):
    """{peer: fn(x) -> outputs} for one shape, and a fastbp model trained briefly."""
    import onnxruntime as ort
    import torch

    import fastbp
    net = fastbp.MLP(sizes, activation="relu", loss=loss, dtype=dtype, seed=0, device="cpu")
    net.fit(X[:2048], y[:2048], epochs=1, batch_size=64, verbose=0)

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(net.to_onnx().SerializeToString(), sess_options=opts,
                                providers=["CPUExecutionProvider"])
    out_name = sess.get_outputs()[0].name

    torch.set_num_threads(threads)
    module = net.to_torch().eval()
    fastbp.set_num_threads(threads)   # fastbp's own team, the same count

    def run_ort(x):
        return sess.run([out_name], {"input": x})[0]

    def run_torch(x):
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()

    predict = net.predict_proba if net.is_classifier else net.predict

    def run_fastbp(x):
        return predict(x)

    return {"onnxruntime": run_ort, "torch": run_torch, "fastbp": run_fastbp}, net


def timed_pass(fn, batches):
    t0 = time.perf_counter()
    for b in batches:
        fn(b)
    return time.perf_counter() - t0


def run(args):
    import fastbp  # noqa: F401
    import onnxruntime as ort
    import torch
    threads = args.threads or os.cpu_count()
    cpu = cpu_model()
    report = dict(
        date=datetime.date.today().isoformat(),
        machine=dict(cpu=cpu, cores=os.cpu_count(), platform=platform.platform(),
                     load_before=os.getloadavg()[0] if hasattr(os, "getloadavg") else None),
        versions=dict(versions(), onnxruntime=ort.__version__, onnx=__import__("onnx").__version__),
        method=dict(threads=threads, dtype=args.dtype, rows_per_rep=args.rows,
                    rounds=args.rounds, reps_per_round=args.reps, warmup_passes_per_round=1,
                    blocks_round_robin=True, gap_s=args.gap,
                    ort_spinning=not args.ort_no_spin,
                    omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
                    torch="nn.Sequential eager, inference_mode, torch.set_num_threads(T)",
                    ort="InferenceSession CPUExecutionProvider, intra_op_num_threads=T, "
                        "inter_op_num_threads=1, sequential, ORT_ENABLE_ALL"),
        results=[])
    print(f"ONNX Runtime vs torch eager inference: {cpu}, {os.cpu_count()} cores, {threads} "
          f"threads each, {args.dtype}, {args.rows} rows per repetition, median of "
          f"{args.rounds} x {args.reps}")
    print(f"onnxruntime {ort.__version__}, torch {torch.__version__}")
    header = (f"{'shape':8} {'rows/call':>9} | {'onnxruntime ms':>22} | {'torch ms':>22} | "
              f"{'fastbp ms':>22} | torch/ort")
    print(header)
    print("-" * len(header))
    for name in args.shapes:
        sizes, _, loss = SHAPES[name]
        X_all, y = make_data(sizes, loss, max(args.rows, 2048), seed=0)
        peers, net = build_peers(sizes, loss, args.dtype, threads, X_all, y,
                                 spin=not args.ort_no_spin)
        X = np.ascontiguousarray(X_all[:args.rows], dtype=args.dtype)
        n_check = min(256, args.rows)
        outs = {p: np.asarray(fn(X[:n_check])).reshape(n_check, -1) for p, fn in peers.items()}
        diff = {p: float(np.abs(outs[p] - outs["fastbp"]).max()) for p in ("onnxruntime",
                                                                           "torch")}
        for calls in args.calls:
            if calls > args.rows:
                continue
            batches = [np.ascontiguousarray(X[s:s + calls]) for s in range(0, args.rows, calls)]
            times = {p: [] for p in PEERS}
            for _ in range(args.rounds):
                for p in PEERS:
                    time.sleep(args.gap)            # the previous peer's threads settle
                    timed_pass(peers[p], batches)   # warm-up, not timed
                    times[p].extend(timed_pass(peers[p], batches) for _ in range(args.reps))
            med = {p: statistics.median(t) for p, t in times.items()}
            ratio = med["torch"] / med["onnxruntime"]
            cells = " | ".join(f"{1e3 * med[p]:7.2f} ({1e3 * min(times[p]):6.2f}-"
                               f"{1e3 * max(times[p]):6.2f})" for p in PEERS)
            print(f"{name:8} {calls:>9} | {cells} | {ratio:8.2f}x")
            report["results"].append(dict(
                shape=name, sizes=sizes, loss=loss, rows=args.rows, rows_per_call=calls,
                seconds={p: times[p] for p in PEERS},
                median_s={p: med[p] for p in PEERS},
                rows_per_s={p: args.rows / med[p] for p in PEERS},
                torch_over_ort=ratio, ort_at_least_as_fast=bool(ratio >= 1.0),
                max_abs_diff_vs_fastbp=diff))
    wins = sum(r["ort_at_least_as_fast"] for r in report["results"])
    print(f"\nONNX Runtime at least as fast as torch eager in {wins} of "
          f"{len(report['results'])} configurations (ratio of medians; spread in brackets)")
    report["summary"] = dict(ort_at_least_as_fast=wins, configurations=len(report["results"]),
                             min_ratio=min(r["torch_over_ort"] for r in report["results"]))
    if hasattr(os, "getloadavg"):
        report["machine"]["load_after"] = os.getloadavg()[0]
        busiest = max(report["machine"]["load_before"], report["machine"]["load_after"])
        if busiest > LOAD_WARN * os.cpu_count():
            print(f"warning: load average {busiest:.2f} on {os.cpu_count()} cores around the "
                  f"run: other processes shared the cores, and the figures are noisy")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.json}")
    return report


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="narrow,mnist,wide",
                   type=lambda s: [t for t in s.split(",") if t])
    p.add_argument("--calls", default="1,64,4096",
                   type=lambda s: [int(t) for t in s.split(",") if t],
                   help="rows per call, one configuration each (default 1,64,4096)")
    p.add_argument("--rows", type=int, default=4096, help="rows predicted per repetition")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions per round")
    p.add_argument("--rounds", type=int, default=5, help="rounds of blocks (peer by peer)")
    p.add_argument("--threads", type=int, default=None, help="default: all cores")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--gap", type=float, default=0.5,
                   help="seconds of pause before each peer's block (not timed)")
    p.add_argument("--ort-no-spin", action="store_true",
                   help="ONNX Runtime's worker threads block instead of spinning")
    p.add_argument("--json", default=None)
    p.add_argument("--quick", action="store_true",
                   help="narrow and mnist, 512 rows, 2 rounds of 3 reps")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.quick:
        args.shapes = [s for s in args.shapes if s != "wide"] or ["narrow"]
        args.rows, args.reps, args.rounds = min(args.rows, 512), min(args.reps, 3), 2
        args.calls = [c for c in args.calls if c <= 512] or [args.rows]
    unknown = [s for s in args.shapes if s not in SHAPES]
    if unknown:
        raise SystemExit(f"unknown shapes {unknown}; choose from {sorted(SHAPES)}")
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
