"""fastbp's CUDA engine against PyTorch CUDA eager, on one GPU, in one process.

    python bench/gpu_compare.py [--shapes narrow,mnist,wide] [--reps 5] [--epochs 0]
                                [--paths] [--sweep] [--tiles] [--json out.json]

Same synthetic data for both (bench/compare.py's ``make_data``), float32, Adam (lr 1e-3),
ReLU hidden layers. A repetition is one ``fit`` of ``epochs`` shuffled epochs from host
arrays, timed from outside: fastbp's fit uploads X and y once, and the PyTorch loop does the
same (``.to("cuda")`` inside the timed region), then trains eagerly with its default Adam
(foreach) and reads nothing back per batch. Both are warmed up first (compilation, cuBLAS
handles, allocator). The figure is the median over the repetitions, interleaved between the
peers so that a noisy moment hits both.

Inference: ``predict`` (``predict_proba`` for classifiers) of every row from host memory to
host memory, for both peers.

"% fp32 roof" compares the training FLOP rate (6 x sum n_in*n_out per sample) with a
4096^3 float32 ``torch.matmul`` (TF32 off, PyTorch's default for float32 matmuls), the
rate fastbp's CUDA-core FMA kernels could reach at best.

--paths   times each training path of fastbp on the shapes where the fused one fits:
          "fused" (one cooperative kernel per chunk), "launches" (the fused kernels, three
          launches per batch) and "layers" (layer-by-layer kernels).
--sweep   the same three paths over widths x depths x batch sizes: the data behind the
          size rule ``kernels.cuda.fused_tile_rows``.
--tiles   the fused path's tile rows (FUSED_MAX_TILE_ROWS x FUSED_TARGET_BLOCKS).
"""
import argparse
import datetime
import json
import os
import statistics
import sys
import time


HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from compare import (fastbp_timers, make_data, train_flops_per_sample,  # noqa: E402
                     versions)
from fastbp.benchmark import interleaved_reps  # noqa: E402

GPU_SHAPES = {
    # name: (layer sizes, batch size, loss, rows, epochs per timed fit)
    "narrow": ([64, 64, 64, 64, 1], 16384, "mse", 262144, 8),
    "mnist": ([784, 256, 128, 10], 256, "cross_entropy", 60000, 2),
    "wide": ([1024, 1024, 1024, 10], 1024, "cross_entropy", 32768, 2),
}


def gpu_info():
    from numba import cuda
    dev = cuda.get_current_device()
    name = getattr(dev, "name", "simulator")
    info = dict(name=name.decode() if isinstance(name, bytes) else str(name),
                compute_capability=".".join(map(str, dev.compute_capability)),
                multiprocessors=getattr(dev, "MULTIPROCESSOR_COUNT", None))
    try:
        import numba_cuda
        info["numba_cuda"] = numba_cuda.__version__
    except Exception:
        pass
    try:
        from numba.cuda.cudadrv import runtime, driver
        info["cuda_runtime"] = ".".join(map(str, runtime.runtime.get_version()))
        info["cuda_driver"] = ".".join(map(str, driver.driver.get_version()))
    except Exception:
        pass
    return info


def fp32_roof_tflops(n=4096, reps=10):
    """Median TFLOP/s of an n^3 float32 torch.matmul on the GPU, TF32 off."""
    import torch
    torch.backends.cuda.matmul.allow_tf32 = False
    a = torch.randn(n, n, device="cuda")
    b = torch.randn(n, n, device="cuda")
    c = torch.empty(n, n, device="cuda")
    torch.matmul(a, b, out=c)
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.matmul(a, b, out=c)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 2.0 * n ** 3 / statistics.median(times) / 1e12


# ------------------------------------------------------------------------------ peers
# setup_* warm the peer up and return (train, infer): train() runs one timed fit of `epochs`
# epochs from host arrays and returns its seconds; infer() the seconds of one prediction of
# every row, host to host.

def setup_fastbp(sizes, bs, loss, X, y, epochs):
    import fastbp
    net = fastbp.MLP(sizes, activation="relu", loss=loss, dtype="float32", seed=0,
                     device="cuda")
    return fastbp_timers(net, bs, loss, X, y, epochs) + (net,)


def setup_torch(sizes, bs, loss, X, y, epochs):
    import torch
    from torch import nn
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    dev = torch.device("cuda")
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    lossfn = nn.CrossEntropyLoss() if loss == "cross_entropy" else nn.MSELoss()
    Xh = torch.from_numpy(X)
    yh = torch.from_numpy(y if loss == "cross_entropy" else y.reshape(len(y), -1))
    n = Xh.shape[0]
    gen = torch.Generator(device=dev).manual_seed(0)

    def train(n_epochs=epochs):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        Xt, yt = Xh.to(dev), yh.to(dev)
        model.train()
        for _ in range(n_epochs):
            perm = torch.randperm(n, generator=gen, device=dev)
            for s in range(0, n, bs):
                idx = perm[s:s + bs]
                opt.zero_grad(set_to_none=True)
                lossfn(model(Xt[idx]), yt[idx]).backward()
                opt.step()
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    def infer():
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        model.eval()
        with torch.no_grad():
            out = model(Xh.to(dev))
            if loss == "cross_entropy":
                out = torch.softmax(out, dim=1)
            out.cpu().numpy()
        return time.perf_counter() - t0

    train(1)
    infer()
    return train, infer, None


def bench_shape(name, reps, epochs_override):
    sizes, bs, loss, rows, epochs = GPU_SHAPES[name]
    epochs = epochs_override or epochs
    X, y = make_data(sizes, loss, rows)
    peers = {"fastbp": setup_fastbp(sizes, bs, loss, X, y, epochs)}
    try:
        peers["torch"] = setup_torch(sizes, bs, loss, X, y, epochs)
    except ImportError as e:
        print(f"  torch skipped: not installed ({e})")
    # The peers take turns, each timed call after an untimed one of the same peer (the
    # CPU harness's rule: what the previous peer left running is paid untimed).
    train_all, infer_all = interleaved_reps({k: (v[0], v[1]) for k, v in peers.items()},
                                            reps)
    train_med = {k: statistics.median(v) for k, v in train_all.items()}
    infer_med = {k: statistics.median(v) for k, v in infer_all.items()}
    net = peers["fastbp"][2]
    res = dict(sizes=sizes, batch_size=bs, loss=loss, rows=rows, epochs=epochs,
               flops_per_sample=train_flops_per_sample(sizes),
               fastbp_path=_path_of(net, bs), peers={})
    for k in peers:
        res["peers"][k] = dict(train=rows * epochs / train_med[k],
                               train_reps_s=train_all[k],
                               infer=rows / infer_med[k], infer_reps_s=infer_all[k])
    return res


def _path_of(net, bs):
    from fastbp.kernels import cuda as kc
    rows = kc.fused_tile_rows(net.layout.sizes, net.dtype, bs)
    if not rows:
        return "layers"
    return f"fused ({rows} rows per tile, {'persistent' if kc.FUSED_PERSISTENT else 'launches'})"


# -------------------------------------------------------------------- path and size rule

def _fastbp_epoch_timer(sizes, bs, loss, X, y, epochs):
    import fastbp
    net = fastbp.MLP(sizes, activation="relu", loss=loss, dtype="float32", seed=0,
                     device="cuda")

    def train():
        t0 = time.perf_counter()
        net.fit(X, y, epochs=epochs, batch_size=bs, optimizer="adam", lr=1e-3, verbose=0,
                warm_start=True)
        return time.perf_counter() - t0

    return train


PATH_SETTINGS = {"fused": ("fused", True), "launches": ("fused", False),
                 "layers": ("layers", True)}


def time_paths(sizes, bs, loss, rows, epochs, reps, names=tuple(PATH_SETTINGS)):
    """Samples/s of fastbp on each forced path (None where that path does not fit)."""
    from fastbp.kernels import cuda as kc
    X, y = make_data(sizes, loss, rows)
    saved = kc.FUSED_PATH, kc.FUSED_PERSISTENT
    out = {}
    try:
        for name in names:
            kc.FUSED_PATH, kc.FUSED_PERSISTENT = PATH_SETTINGS[name]
            try:
                kc.fused_tile_rows(sizes, "float32", bs)
            except ValueError:      # the fused path does not fit this network
                out[name] = None
                continue
            fn = _fastbp_epoch_timer(sizes, bs, loss, X, y, epochs)
            fn()  # warm-up: buffers, first-chunk measurement
            ts = sorted(fn() for _ in range(reps))
            out[name] = rows * epochs / ts[len(ts) // 2]
    finally:
        kc.FUSED_PATH, kc.FUSED_PERSISTENT = saved
    return out


def sweep(reps):
    res = []
    for width in (16, 32, 64, 128):
        for depth in (1, 2, 4):
            for bs in (256, 1024, 4096, 16384):
                sizes = [width] * (depth + 1) + [1]
                rows = max(bs * 8, 32768)
                sps = time_paths(sizes, bs, "mse", rows, 1, reps)
                from fastbp.kernels import cuda as kc
                rule = "fused" if kc.fused_tile_rows(sizes, "float32", bs) else "layers"
                best = max((k for k in sps if sps[k]), key=lambda k: sps[k])
                res.append(dict(sizes=sizes, batch_size=bs, sps=sps, rule=rule, best=best))
                print(f"  {str(sizes):28s} bs {bs:6d}  " + "  ".join(
                    f"{k} {v / 1e6:7.2f}M" if v else f"{k}      -" for k, v in sps.items())
                    + f"   rule {rule:6s} best {best}", flush=True)
    return res


def tiles(reps):
    from fastbp.kernels import cuda as kc
    saved = kc.FUSED_MAX_TILE_ROWS, kc.FUSED_TARGET_BLOCKS
    res = []
    try:
        for name in ("narrow",):
            sizes, bs, loss, rows, epochs = GPU_SHAPES[name]
            for max_rows in (16, 32, 64, 128):
                for target in (132, 264, 528, 1056):
                    kc.FUSED_MAX_TILE_ROWS, kc.FUSED_TARGET_BLOCKS = max_rows, target
                    t = kc.fused_tile_rows(sizes, "float32", bs, "fused")
                    sps = time_paths(sizes, bs, loss, rows, epochs, reps, names=("fused",))
                    res.append(dict(shape=name, max_tile_rows=max_rows, target_blocks=target,
                                    tile_rows=t, sps=sps["fused"]))
                    print(f"  {name} max_tile_rows {max_rows:4d} target_blocks {target:5d} "
                          f"-> tile {t:4d}: {sps['fused'] / 1e6 if sps['fused'] else 0:.2f}M"
                          " samples/s", flush=True)
    finally:
        kc.FUSED_MAX_TILE_ROWS, kc.FUSED_TARGET_BLOCKS = saved
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default=",".join(GPU_SHAPES))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=0, help="epochs per timed fit (0: per shape)")
    ap.add_argument("--paths", action="store_true")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--tiles", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    out = dict(date=datetime.date.today().isoformat(), gpu=gpu_info(), versions=versions(),
               reps=args.reps)
    try:
        import torch
        out["versions"]["torch_cuda"] = torch.version.cuda
        out["fp32_roof_tflops"] = roof = fp32_roof_tflops()
    except ImportError:
        roof = None
    print(f"GPU: {out['gpu']}  fp32 matmul roof: {roof and round(roof, 1)} TFLOP/s", flush=True)
    results = {}
    for name in [s for s in args.shapes.split(",") if s]:
        r = bench_shape(name, args.reps, args.epochs)
        results[name] = r
        fb, th = r["peers"]["fastbp"], r["peers"].get("torch")
        tfl = fb["train"] * r["flops_per_sample"] / 1e12
        r["fastbp_train_tflops"] = tfl
        r["fastbp_pct_roof"] = 100 * tfl / roof if roof else None
        line = (f"{name:7s} {r['fastbp_path']:40s} fastbp train {fb['train']:>13,.0f}/s "
                f"({tfl:5.2f} TFLOP/s)  infer {fb['infer']:>13,.0f}/s")
        if th:
            r["train_ratio"] = fb["train"] / th["train"]
            r["infer_ratio"] = fb["infer"] / th["infer"]
            line += (f" | torch train {th['train']:>13,.0f}/s infer {th['infer']:>13,.0f}/s"
                     f" | ratio train {r['train_ratio']:.2f}x infer {r['infer_ratio']:.2f}x")
        print(line, flush=True)
    out["shapes"] = results
    if args.paths:
        out["paths"] = {}
        for name in [s for s in args.shapes.split(",") if s]:
            sizes, bs, loss, rows, epochs = GPU_SHAPES[name]
            sps = time_paths(sizes, bs, loss, rows, args.epochs or epochs, args.reps)
            out["paths"][name] = sps
            print(f"paths {name}: " + "  ".join(
                f"{k} {v:,.0f}/s" if v else f"{k} -" for k, v in sps.items()), flush=True)
    if args.tiles:
        out["tiles"] = tiles(args.reps)
    if args.sweep:
        out["sweep"] = sweep(max(3, args.reps // 2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
    return out


if __name__ == "__main__":
    main()
