"""The ``fastbp`` command: train, predict, evaluate, export, bench, demo, info.

    fastbp train DATA --target COLUMN --layers 256,128 --out model.npz
    fastbp predict model.npz DATA --out preds.csv
    fastbp evaluate model.npz DATA --target COLUMN
    fastbp export model.npz model.onnx [--opset 17] [--output auto|logits]

DATA is .csv (header row), .npy (2-D; columns named 0, 1, ...), .npz (arrays X and y) or
.parquet (needs pyarrow). Errors print one line to stderr and exit with status 1 (usage
errors: 2).
"""
import argparse
import json
import math
import os
import shutil
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
    hist = net.fit(Xtr, ytr, epochs=args.epochs, batch_size=args.batch_size, optimizer="adam",
                   lr=args.lr, verbose=args.verbose, validation_data=(Xte, yte))
    t2 = time.perf_counter()
    res = net.evaluate(Xte, yte)
    rates = hist.history["samples_per_s"]
    # Each epoch's time is measured around its compiled chunks; the first epoch's includes
    # compiling them (a first run) or loading them from the cache (every later run).
    epoch_s = [len(Xtr) / r for r in rates]
    print(f"first epoch, with compiling or loading the kernels: {epoch_s[0]:.2f} s")
    if len(rates) > 1:
        print(f"train: {len(rates) - 1} more epochs in {sum(epoch_s[1:]):.2f} s, median "
              f"{np.median(rates[1:]):,.0f} samples/s")
    print(f"validation and the rest of the fit: {t2 - t0 - sum(epoch_s):.2f} s")
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
    from fastbp.engines import cuda_available
    from fastbp.engines.cpu import blas_info, thread_info

    print(f"fastbp {fastbp.__version__}")
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, numba {numba.__version__}")
    for k, v in thread_info().items():
        print(f"{k}: {v}")
    for b in blas_info():
        print(f"blas: {b['api']} {b['version']} ({b['threads']} threads)")
    print(f"cuda available: {cuda_available()}")
    from fastbp.kernels import jit
    mine = jit.cache_dir()
    size = _folder_bytes(mine) / 2 ** 20 if os.path.isdir(mine) else 0.0
    print(f"compiled kernels: {mine} ({size:.1f} MB; `fastbp cache` for more)")
    return 0


def _folder_bytes(folder):
    total = 0
    for base, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(base, name))
            except OSError:
                pass
    return total


def cmd_cache(args):
    import datetime

    from fastbp.kernels import jit
    root, mine = jit.cache_root(), jit.cache_dir()
    folders = jit.version_folders()
    if args.clear:
        freed = sum(_folder_bytes(f) for f in folders)
        for f in folders:
            shutil.rmtree(f, ignore_errors=True)
        print(f"removed {len(folders)} cache folder(s), {freed / 2 ** 20:.1f} MB, from {root}; "
              f"the next fit compiles its kernels again")
        return 0
    print(f"compiled kernels of this version: {mine} "
          f"({_folder_bytes(mine) / 2 ** 20:.1f} MB)" if mine in folders else
          f"compiled kernels of this version: {mine} (none yet)")
    for f in folders:
        if f != mine:
            when = datetime.datetime.fromtimestamp(jit.last_used(f)).strftime("%Y-%m-%d")
            print(f"  another version's: {os.path.basename(f)}, "
                  f"{_folder_bytes(f) / 2 ** 20:.1f} MB, last used {when}")
    print(f"Other versions' folders unused for {jit.KEEP_UNUSED_DAYS} days are removed when "
          f"fastbp starts; `fastbp cache --clear` removes them all now.")
    return 0


# --------------------------------------------------------------------- train/predict
META_KEY = "cli_meta"
MAX_AUTO_CLASSES = 20


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


def _labels_as_strings(col):
    """Class labels as strings: integer-valued numbers lose their '.0'."""
    import numpy as np
    if col.dtype.kind in "fiub":
        v = col.astype(np.float64)
        if np.all(v == np.round(v)):
            return np.array([str(int(x)) for x in v])
        return np.array([repr(float(x)) for x in v])
    return col.astype(str)


def _sorted_classes(col):
    import numpy as np
    if col.dtype.kind in "fiub":
        uniq = np.unique(col.astype(np.float64))
        return list(_labels_as_strings(uniq))
    return sorted(set(col.astype(str)))


def _choose_loss(loss, y):
    import numpy as np
    if loss != "auto":
        return loss, f"loss: {loss}"
    if y.dtype.kind not in "fiub":
        return "cross_entropy", "loss: cross_entropy (auto: the target is not numeric)"
    v = y.astype(np.float64)
    n_unique = len(np.unique(v))
    if np.all(v == np.round(v)) and n_unique <= MAX_AUTO_CLASSES:
        return "cross_entropy", (f"loss: cross_entropy (auto: {n_unique} integer classes; "
                                 f"pass --loss mse for regression)")
    return "mse", "loss: mse (auto: numeric target; pass --loss cross_entropy to classify)"


def _target(table, name):
    """The target column: ``name`` from the table, or an .npz file's ``y``."""
    if name is None:
        if table.y is not None:
            return table.y, "y", []
        raise CLIError(f"{table.path}: pass --target COLUMN (columns: "
                       f"{', '.join(table.names[:12])})")
    if name not in table.names and table.y is not None and name == "y":
        return table.y, "y", []
    return table.column(name), name, [name]


def _encode(y, loss, classes=None):
    """Targets for the model: class ids (with the class list) or float values."""
    import numpy as np
    from .registry import CLASSIFICATION_LOSSES
    if loss in CLASSIFICATION_LOSSES:
        if y.ndim != 1:
            raise CLIError("classification needs a single target column")
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            raise CLIError("the target has missing, NaN or infinite values")
        labels = _labels_as_strings(y)
        if classes is None:
            classes = _sorted_classes(y)
        index = {c: i for i, c in enumerate(classes)}
        unknown = sorted(set(labels) - set(index))
        if unknown:
            raise CLIError(f"target has label(s) {unknown[:10]} that the model does not know "
                           f"(its classes: {classes[:20]})")
        ids = np.array([index[s] for s in labels], dtype=np.int64)
        if loss == "binary_cross_entropy":
            if len(classes) != 2:
                raise CLIError(f"binary_cross_entropy needs exactly 2 classes, the target has "
                               f"{len(classes)}; use --loss cross_entropy")
            return ids.astype(np.float64).reshape(-1, 1), classes
        return ids, classes
    if y.dtype.kind not in "fiub":
        raise CLIError("a regression target must be numeric; use --loss cross_entropy for "
                       "class labels")
    y = y.astype(np.float64)
    if not np.isfinite(y).all():
        raise CLIError("the target has missing, NaN or infinite values")
    return y, None


def _fold_standardization(net, mean, scale):
    """Make the first layer take raw inputs: W' = W / s (per input row), b' = b - (m/s) W."""
    weights = net.get_weights()
    W, b = weights[0].astype("float64"), weights[1].astype("float64")
    weights[0] = W / scale[:, None]
    weights[1] = b - (mean / scale) @ W
    net.set_weights(weights)


def _save_with_meta(net, path, meta):
    """``net.save`` with the CLI's feature names and class labels as an extra entry."""
    net.save(path, extra={META_KEY: json.dumps(meta)})


def _load_model(path):
    from .model import from_file
    from .persistence import read
    stored = read(path)
    text = stored.extra.get(META_KEY)
    return from_file(stored, device="cpu"), (json.loads(text) if text else {})


def _model_features(net, meta, table, exclude=()):
    """The model's input matrix from ``table``: its training columns by name when present,
    else every column (minus ``exclude``) when their number matches."""
    names = meta.get("features")
    if names and all(n in table.names for n in names):
        X, _ = table.features(names)
        return X
    X, used = table.features(exclude=exclude)
    if X.shape[1] != net.sizes[0]:
        want = f" ({', '.join(names[:12])})" if names else ""
        raise CLIError(f"{table.path}: {X.shape[1]} feature column(s), the model expects "
                       f"{net.sizes[0]}{want}")
    return X


def _metrics_line(res):
    return ", ".join(f"{k} {v:.4f}" for k, v in res.items())


WORKER_ENV = "FASTBP_MPI_WORKER"


def _launch_workers(args):
    """Re-run this ``train`` command under ``mpiexec -n N`` (one rank per worker)."""
    import shutil
    import subprocess
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if not os.path.exists(mpiexec):
        mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        raise CLIError("--workers needs MPI: pip install 'fastbp[mpi]' (it brings MPICH and "
                       "mpiexec)")
    cmd = [mpiexec, "-n", str(args.workers), sys.executable, "-m", "fastbp.cli", "train",
           *args.argv]
    env = dict(os.environ, **{WORKER_ENV: "1"})
    return subprocess.run(cmd, env=env).returncode


def cmd_train(args):
    if args.workers > 1 and not os.environ.get(WORKER_ENV):
        return _launch_workers(args)
    import numpy as np

    import fastbp
    from .dataio import read_table
    from .errors import ConfigError
    comm, rank, size = None, 0, 1
    if os.environ.get(WORKER_ENV):
        from mpi4py import MPI
        comm, rank, size = MPI.COMM_WORLD, MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()
    say = print if rank == 0 else (lambda *a, **k: None)
    if not args.out.endswith((".npz", ".safetensors")):
        raise CLIError(f"--out must name a .npz or .safetensors file, got {args.out!r}")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        raise CLIError(f"--out: directory {out_dir} does not exist")
    table = read_table(args.data)
    y_raw, target, exclude = _target(table, args.target)
    X, features = table.features(exclude=exclude)
    loss, loss_note = _choose_loss(args.loss, y_raw)
    y, classes = _encode(y_raw, loss, None)
    if loss == "cross_entropy" and len(classes) < 2:
        raise CLIError(f"target {target!r} has a single class {classes[0]!r}; nothing to learn")
    n_out = len(classes) if loss == "cross_entropy" else (1 if y.ndim == 1 else y.shape[1])

    rng = np.random.default_rng(args.seed)
    n = X.shape[0]
    n_val = int(math.ceil(n * args.val_split)) if args.val_split > 0 else 0
    if n_val and n - n_val < 1:
        raise CLIError(f"--val-split {args.val_split} leaves no training rows ({n} rows)")
    order = rng.permutation(n)
    tr, va = order[n_val:], order[:n_val]

    mean = np.zeros(X.shape[1])
    scale = np.ones(X.shape[1])
    if args.standardize:
        mean = X[tr].mean(axis=0)
        scale = X[tr].std(axis=0)
        scale[scale == 0] = 1.0
    Xs = (X - mean) / scale

    sizes = [X.shape[1]] + args.layers + [n_out]
    try:
        net = fastbp.MLP(sizes, activation=args.activation, loss=loss, seed=args.seed,
                         device=args.device, dtype=args.dtype)
    except ConfigError as e:
        raise CLIError(str(e)) from None
    say(f"data: {args.data}: {n} rows, {X.shape[1]} features, target {target!r}"
        f"{f' ({len(classes)} classes)' if classes else ''}; "
        f"{len(tr)} train / {len(va)} validation rows")
    say(loss_note)
    say(f"model: {net}, {net.n_params:,} parameters")
    batch_size = args.batch_size
    fit_tr, fit_va = tr, va
    if comm is not None:
        # Each rank takes every size-th row; --batch-size is the global batch.
        fit_tr, fit_va = tr[rank::size], va[rank::size]
        batch_size = max(1, args.batch_size // size)
        if len(va) < size:
            fit_va = va[:0]
        say(f"workers: {size} MPI ranks, {batch_size} rows per rank per step")
    validation = (Xs[fit_va], y[fit_va]) if len(fit_va) else None
    t0 = time.perf_counter()
    hist = net.fit(Xs[fit_tr], y[fit_tr], epochs=args.epochs, batch_size=batch_size,
                   optimizer=args.optimizer, lr=args.lr, verbose=0 if args.quiet else 2,
                   validation_data=validation, comm=comm)
    elapsed = time.perf_counter() - t0
    if rank != 0:
        return 0                      # rank 0 reports and writes the model
    note = " (interrupted)" if hist.interrupted else ""
    print(f"trained {len(hist.epoch)} epoch(s) in {elapsed:.2f} s{note}")
    print(f"train: {_metrics_line(net.evaluate(Xs[tr], y[tr]))}")
    if n_val:
        print(f"validation: {_metrics_line(net.evaluate(Xs[va], y[va]))}")
    if args.standardize:
        _fold_standardization(net, mean, scale)
    meta = dict(features=features, target=target, loss=loss, classes=classes,
                source=os.path.basename(args.data))
    _save_with_meta(net, args.out, meta)
    print(f"saved: {args.out}")
    return 0


def cmd_predict(args):
    import numpy as np

    from .dataio import read_table, write_csv
    net, meta = _load_model(args.model)
    table = read_table(args.data)
    target = meta.get("target")
    exclude = [target] if target in table.names else []
    X = _model_features(net, meta, table, exclude=exclude).astype(net.dtype)
    name = target or "prediction"
    classes = meta.get("classes")
    if net.is_classifier:
        proba = net.predict_proba(X)
        if net.loss == "binary_cross_entropy" and proba.shape[1] == 1:
            proba = np.concatenate([1 - proba, proba], axis=1)
        k = proba.shape[1]
        labels = np.array(classes if classes else [str(i) for i in range(k)])
        if net.loss == "binary_cross_entropy" and not classes and net.n_outputs > 1:
            header = [f"{name}_{j}" for j in range(k)]
            columns = [c for c in (proba >= 0.5).astype(int).T]
        else:
            header = [name]
            columns = [labels[np.argmax(proba, axis=1)]]
        if args.proba:
            header += [f"p_{c}" for c in labels]
            columns += list(proba.T)
    else:
        pred = net.predict(X).reshape(X.shape[0], -1)
        header = [name] if pred.shape[1] == 1 else [f"{name}_{j}" for j in range(pred.shape[1])]
        columns = list(pred.T)
    write_csv(args.out, header, columns)
    if args.out not in (None, "-"):
        print(f"wrote {X.shape[0]} predictions to {args.out}")
    return 0


def cmd_evaluate(args):
    from .dataio import read_table
    net, meta = _load_model(args.model)
    table = read_table(args.data)
    target = args.target or (meta.get("target") if meta.get("target") in table.names
                             else None)
    y_raw, target, exclude = _target(table, target)
    X = _model_features(net, meta, table, exclude=exclude)
    classes = meta.get("classes")
    if net.loss == "cross_entropy" and not classes:
        classes = [str(i) for i in range(net.n_outputs)]
    y, _ = _encode(y_raw, net.loss, classes)
    res = net.evaluate(X, y)
    print(f"{args.data}: {X.shape[0]} rows, target {target!r}")
    for k, v in res.items():
        print(f"{k}: {v:.6f}")
    return 0


def cmd_export(args):
    from .export import export
    net, meta = _load_model(args.model)
    # The class labels and feature names of 'fastbp train' go where the format has room.
    carries = os.path.splitext(args.out)[1].lower() in (".onnx", ".safetensors", ".npz")
    metadata = {META_KEY: json.dumps(meta)} if meta and carries else None
    fmt = export(net, args.out, opset=args.opset, output=args.output, metadata=metadata)
    print(f"wrote {args.out} ({fmt}) from {args.model}: {net}")
    return 0


# --------------------------------------------------------------------------- bench
def cmd_bench(argv):
    from .benchmark import main as bench_main
    return int(bench_main(argv) or 0)


# -------------------------------------------------------------------------- parser
def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _positive_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def _fraction(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return v


def _layers(text):
    if text.strip() in ("", "none"):
        return []
    try:
        sizes = [int(t) for t in text.split(",")]
    except ValueError:
        sizes = [0]
    if any(s <= 0 for s in sizes):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive widths such as "
                                         f"256,128 (or 'none'), got {text!r}")
    return sizes


def build_parser():
    from .engines import DEVICES
    from .optimizers import OPTIMIZERS
    from .registry import ACTIVATIONS, LOSSES
    p = argparse.ArgumentParser(prog="fastbp", description="Fast MLP training by "
                                "backpropagation (Numba CPU and CUDA kernels).")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train an MLP on a data file and save it (.npz)",
                       description="Train an MLP on DATA and save it. Features are every "
                       "column but the target, standardised for training (the scaling is "
                       "folded into the first layer, so the saved model takes raw inputs).")
    t.add_argument("data", metavar="DATA", help=".csv (header row), .npy, .npz (X, y) or "
                   ".parquet")
    t.add_argument("--target", metavar="COLUMN", help="target column (for .npz: default y; "
                   "for .npy: a column index)")
    t.add_argument("--layers", type=_layers, default=[64], metavar="W1,W2,...",
                   help="hidden layer widths (default 64; 'none' for no hidden layer)")
    t.add_argument("--activation", default="relu", choices=sorted(ACTIVATIONS))
    t.add_argument("--loss", default="auto", choices=["auto"] + sorted(LOSSES),
                   help="auto: cross_entropy for labels or up to 20 integer classes, "
                   "else mse")
    t.add_argument("--epochs", type=_positive_int, default=20)
    t.add_argument("--batch-size", type=_positive_int, default=64)
    t.add_argument("--optimizer", default="adam", choices=sorted(OPTIMIZERS))
    t.add_argument("--lr", type=_positive_float, default=None,
                   help="learning rate (default: the optimizer's)")
    t.add_argument("--val-split", type=_fraction, default=0.1,
                   help="random fraction of rows held out for validation (default 0.1)")
    t.add_argument("--device", default="auto", choices=DEVICES)
    t.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--no-standardize", dest="standardize", action="store_false",
                   help="train on the raw feature values")
    t.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    t.add_argument("--out", required=True, metavar="MODEL.npz")
    t.add_argument("--workers", type=_positive_int, default=1,
                   help="data-parallel MPI ranks on this machine (launched with mpiexec; "
                        "needs the 'mpi' extra); --batch-size is then the global batch")
    t.set_defaults(func=cmd_train)

    pr = sub.add_parser("predict", help="predict with a saved model, write a CSV",
                        description="Predict for every row of DATA (the model's feature "
                        "columns by name when it was trained by 'fastbp train', else all "
                        "columns).")
    pr.add_argument("model", metavar="MODEL.npz")
    pr.add_argument("data", metavar="DATA")
    pr.add_argument("--out", default="-", metavar="PREDS.csv",
                    help="output CSV (default: standard output)")
    pr.add_argument("--proba", action="store_true",
                    help="add one probability column per class")
    pr.set_defaults(func=cmd_predict)

    ev = sub.add_parser("evaluate", help="loss and accuracy/R^2 of a saved model on data",
                        description="Print the loss and accuracy (classification) or R^2 and "
                        "MAE (regression) of MODEL on DATA.")
    ev.add_argument("model", metavar="MODEL.npz")
    ev.add_argument("data", metavar="DATA")
    ev.add_argument("--target", metavar="COLUMN",
                    help="target column (default: the training target, or an .npz's y)")
    ev.set_defaults(func=cmd_evaluate)

    ex = sub.add_parser("export", help="write a saved model as ONNX, safetensors, .npz or a "
                        "PyTorch state_dict (the format from the suffix)",
                        description="Write MODEL (.npz or .safetensors) as OUT: .onnx (ONNX "
                        "graph; needs the 'onnx' extra), .safetensors (needs the "
                        "'safetensors' extra), .npz, or .pt/.pth (the state_dict of "
                        "MLP.to_torch(); needs PyTorch). The format comes from OUT's suffix.")
    ex.add_argument("model", metavar="MODEL")
    ex.add_argument("out", metavar="OUT")
    ex.add_argument("--opset", type=_positive_int, default=None,
                    help="ONNX opset (default 17; 13 to the newest the installed onnx knows)")
    ex.add_argument("--output", default="auto", choices=["auto", "logits"],
                    help="auto: end in the loss's head (probabilities or values), as "
                    "predict_proba/predict; logits: the last layer before it (.onnx, .pt)")
    ex.set_defaults(func=cmd_export)

    sub.add_parser("bench", help="the machine's FMA peak, then training and inference throughput "
                   "against every installed peer (PyTorch, scikit-learn); --help for options",
                   add_help=False)

    d = sub.add_parser("demo", help="train a digit classifier on scikit-learn's 8x8 digits")
    d.add_argument("--epochs", type=int, default=30)
    d.add_argument("--batch-size", type=int, default=32)
    d.add_argument("--lr", type=float, default=1e-3)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="auto", choices=DEVICES)
    d.add_argument("--verbose", type=int, default=0, choices=[0, 1, 2])
    d.add_argument("--plot", default="fastbp-demo.png",
                   help="PNG of loss/accuracy per epoch (needs matplotlib; '' to skip)")
    d.set_defaults(func=cmd_demo)
    i = sub.add_parser("info", help="versions, threads, BLAS and CUDA availability")
    i.set_defaults(func=cmd_info)
    c = sub.add_parser("cache", help="where the compiled kernels are kept, and how much; "
                                     "--clear removes them")
    c.add_argument("--clear", action="store_true",
                   help="remove every version's compiled kernels (the next fit compiles)")
    c.set_defaults(func=cmd_cache)
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    from .errors import (ConfigError, DataError, MissingDependencyError, ModelFileError,
                         TrainingDivergedError)
    try:
        if argv[:1] == ["bench"]:
            return cmd_bench(argv[1:])
        args = build_parser().parse_args(argv)
        args.argv = [a for a in argv[1:]]
        return args.func(args)
    except KeyboardInterrupt:
        print("fastbp: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ConfigError, DataError, ModelFileError, TrainingDivergedError,
            FileNotFoundError, MissingDependencyError) as e:
        print(f"fastbp: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"fastbp: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
