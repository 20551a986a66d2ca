"""Where does fastbp win or lose against PyTorch? A sampled sweep of MLP shapes.

    python bench/sweep.py [--quick] [--rows N] [--reps 5] [--json out.json]
                          [--widths 16,64,...] [--depths 1,2,...] [--batches 16,64,...]

For every configuration (hidden width, number of hidden layers, batch size) it trains a
ReLU MLP ``[n_in, width x depth, 10]`` with cross-entropy and Adam on the same synthetic
float32 data in both libraries (same process, all cores) and prints training and inference
(class probabilities of every row) samples/s and the fastbp/PyTorch ratios; inference does
not depend on the batch size, so its ratio repeats across a row of batches as a sample of
the noise. The input width equals the hidden width, so one number sizes
every GEMM of a configuration.

The full grid is sampled, not exhaustive: widths 16..2048, 1..6 hidden layers, batches
16..1024 would be 9 x 6 x 7 = 378 runs; instead every width is crossed with every batch at
depth 2, and every depth with every batch at widths 64 and 512 (112 configurations,
about 12 minutes on 2 cores: every timed repetition follows an untimed one of the same
library). ``--quick`` runs a dozen small configurations (~2 minutes).
Rows per configuration are chosen so that an epoch is a fixed amount of work (capped at
--rows), so wide layers do not take minutes.
"""
import argparse
import json
import os
import statistics
import sys
import time


HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from compare import cpu_model, make_data, setup_fastbp, setup_torch, versions  # noqa: E402

from fastbp.benchmark import interleaved_reps  # noqa: E402

WIDTHS = (16, 32, 64, 128, 256, 512, 1024, 2048)
DEPTHS = (1, 2, 3, 4, 6)
BATCHES = (16, 32, 64, 128, 256, 512, 1024)
N_OUT = 10
EPOCH_GFLOP = 6.0   # training work per epoch of each configuration (rows follow from it)


def sampled_grid(widths, depths, batches, quick):
    """(width, depth, batch) configurations: two crossings instead of the full product."""
    if quick:
        return [(w, d, b) for w in (32, 256) for d in (1, 3) for b in (32, 256)] + \
               [(1024, 2, 128), (64, 6, 64)]
    grid = {(w, 2, b) for w in widths for b in batches}
    for w in (64, 512):
        if w in widths or not widths:
            grid |= {(w, d, b) for d in depths for b in batches}
    return sorted(grid)


def rows_for(width, depth, batch, max_rows):
    sizes = [width] * (depth + 1) + [N_OUT]
    flops = 6 * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    rows = int(EPOCH_GFLOP * 1e9 / flops)
    rows = max(8 * batch, min(max_rows, rows))
    return sizes, rows - rows % batch or batch


def run_config(sizes, batch, rows, reps):
    """{peer: (training samples/s, inference samples/s)}, medians of ``reps``."""
    X, y = make_data(sizes, "cross_entropy", rows)
    peers = {"fastbp": setup_fastbp(sizes, batch, "cross_entropy", X, y),
             "torch": setup_torch(sizes, batch, "cross_entropy", X, y)}
    # Interleaved repetitions (noise hits both alike), each timed one right after an
    # untimed one of the same peer (fastbp.benchmark's module docstring says why).
    train, infer = interleaved_reps(peers, reps)
    return {p: (rows / statistics.median(train[p]), rows / statistics.median(infer[p]))
            for p in peers}


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a dozen small configurations")
    p.add_argument("--rows", type=int, default=20000, help="most rows per configuration")
    p.add_argument("--reps", type=int, default=5, help="timed epochs per peer (median)")
    p.add_argument("--widths", help=f"comma-separated, default {','.join(map(str, WIDTHS))}")
    p.add_argument("--depths", help=f"comma-separated, default {','.join(map(str, DEPTHS))}")
    p.add_argument("--batches", help=f"comma-separated, default {','.join(map(str, BATCHES))}")
    p.add_argument("--json", help="write the results here")
    return p


def ints(text, default):
    return tuple(int(v) for v in text.split(",")) if text else default


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        import torch  # noqa: F401
    except ImportError:
        print("sweep needs PyTorch (pip install 'torch==2.13.0'); nothing to compare against")
        return 1
    widths = ints(args.widths, WIDTHS)
    depths = ints(args.depths, DEPTHS)
    batches = ints(args.batches, BATCHES)
    grid = sampled_grid(widths, depths, batches, args.quick)
    if args.quick:
        args.rows = min(args.rows, 4000)
    print(f"fastbp sweep: {cpu_model()}, {os.cpu_count()} cores, {len(grid)} configurations, "
          f"{args.reps} reps")
    print(f"{'width':>5s} {'depth':>5s} {'batch':>5s} {'rows':>6s} | {'fastbp':>10s} "
          f"{'torch':>10s} {'ratio':>6s} | {'fb infer':>10s} {'th infer':>10s} "
          f"{'ratio':>6s}")
    out = []
    t_start = time.perf_counter()
    for width, depth, batch in grid:
        sizes, rows = rows_for(width, depth, batch, args.rows)
        sps = run_config(sizes, batch, rows, args.reps)
        (fb, fbi), (th, thi) = sps["fastbp"], sps["torch"]
        r, ri = fb / th, fbi / thi
        flag = "  <- loses" if min(r, ri) < 1 else ""
        print(f"{width:>5d} {depth:>5d} {batch:>5d} {rows:>6d} | {fb:>10,.0f} {th:>10,.0f} "
              f"{r:>6.2f} | {fbi:>10,.0f} {thi:>10,.0f} {ri:>6.2f}{flag}", flush=True)
        out.append(dict(width=width, depth=depth, batch=batch, sizes=sizes, rows=rows,
                        fastbp=fb, torch=th, ratio=r, fastbp_infer=fbi, torch_infer=thi,
                        infer_ratio=ri))
    print(f"\n{len(out)} configurations in {time.perf_counter() - t_start:.0f} s")
    for what, key in (("training", "ratio"), ("inference", "infer_ratio")):
        ratios = [o[key] for o in out]
        print(f"{what} fastbp/PyTorch: median {statistics.median(ratios):.2f}, min "
              f"{min(ratios):.2f}, max {max(ratios):.2f}; fastbp slower in "
              f"{sum(r < 1 for r in ratios)}")
        by_width = {}
        for o in out:
            if o["depth"] == 2:
                by_width.setdefault(o["width"], []).append(o[key])
        if by_width:
            print(f"  median {what} ratio by width (depth 2): " + ", ".join(
                f"{w}: {statistics.median(v):.2f}" for w, v in sorted(by_width.items())))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(cpu=cpu_model(), cores=os.cpu_count(), versions=versions(),
                           reps=args.reps, quick=args.quick, results=out), f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
