"""The ``fastbp`` command: demo and info (train/predict/evaluate/bench build on these)."""
import argparse
import sys
import time


def cmd_demo(args):
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    import fastbp

    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)
    y = digits.target
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, stratify=y,
                                          random_state=args.seed)
    net = fastbp.MLP([64, 128, 64, 10], activation="relu", loss="cross_entropy",
                     seed=args.seed, device=args.device)
    print(f"fastbp demo: {net} on scikit-learn's 8x8 digits "
          f"({len(Xtr)} train / {len(Xte)} test rows)")
    t0 = time.perf_counter()
    compile_s = fastbp.warmup() if net.device == "cpu" else 0.0
    t1 = time.perf_counter()
    hist = net.fit(Xtr, ytr, epochs=args.epochs, batch_size=args.batch_size, optimizer="adam",
                   lr=args.lr, verbose=args.verbose, validation_data=(Xte, yte))
    t2 = time.perf_counter()
    res = net.evaluate(Xte, yte)
    sps = np.median(hist.history["samples_per_s"])
    print(f"compile/cache load: {compile_s:.2f} s")
    print(f"train: {args.epochs} epochs in {t2 - t1:.2f} s, median {sps:,.0f} samples/s")
    print(f"final train loss: {hist.history['loss'][-1]:.4f}")
    print(f"test accuracy: {res['accuracy']:.4f}  (test loss {res['loss']:.4f})")
    if args.plot:
        try:
            fastbp.plot_history(hist, args.plot, title="fastbp demo: 8x8 digits")
            print(f"loss curve: {args.plot}")
        except ImportError as e:
            print(f"(no plot: {e})")
    print(f"wall time: {time.perf_counter() - t0:.2f} s")
    return 0


def cmd_info(args):
    import numba
    import numpy as np

    import fastbp
    from fastbp.backend import blas_info, cuda_available, thread_info

    print(f"fastbp {fastbp.__version__}")
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, numba {numba.__version__}")
    for k, v in thread_info().items():
        print(f"{k}: {v}")
    for b in blas_info():
        print(f"blas: {b['api']} {b['version']} ({b['threads']} threads)")
    print(f"cuda available: {cuda_available()}")
    return 0


def build_parser():
    p = argparse.ArgumentParser(prog="fastbp", description="Fast MLP training by "
                                "backpropagation (Numba CPU and CUDA kernels).")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="train a digit classifier on scikit-learn's 8x8 digits")
    d.add_argument("--epochs", type=int, default=30)
    d.add_argument("--batch-size", type=int, default=32)
    d.add_argument("--lr", type=float, default=1e-3)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    d.add_argument("--verbose", type=int, default=0, choices=[0, 1, 2])
    d.add_argument("--plot", default="fastbp-demo.png",
                   help="PNG of loss/accuracy per epoch (needs matplotlib; '' to skip)")
    d.set_defaults(func=cmd_demo)
    i = sub.add_parser("info", help="versions, threads, BLAS and CUDA availability")
    i.set_defaults(func=cmd_info)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
