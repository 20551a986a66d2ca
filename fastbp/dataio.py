"""Reading tables for the command line: CSV (header row), .npy, .npz and Parquet.

Every reader returns a :class:`Table`: named columns, each a 1-D NumPy array (float64 when
every value parses as a number, otherwise strings). Problems raise :class:`DataFileError`
with a message that names the file, the column and, for CSV, the line.
"""
import csv
import os

import numpy as np

from .errors import DataError


class DataFileError(DataError):
    """A data file that is missing, unreadable, or lacks what the command needs."""


class Table:
    """Columns in file order: ``names`` and ``columns`` (1-D arrays of equal length)."""

    def __init__(self, path, names, columns, y=None):
        self.path = path
        self.names = list(names)
        self.columns = list(columns)
        self.y = y      # a separate target array (.npz files with a "y" entry)

    @property
    def n_rows(self):
        return len(self.columns[0]) if self.columns else 0

    def column(self, name):
        if name not in self.names:
            raise DataFileError(f"{self.path}: no column {name!r}; columns are "
                                f"{_show(self.names)}")
        return self.columns[self.names.index(name)]

    def features(self, names=None, exclude=()):
        """(n, k) float64 matrix of the named columns (default: all but ``exclude``)."""
        if names is None:
            names = [n for n in self.names if n not in exclude]
        else:
            missing = [n for n in names if n not in self.names]
            if missing:
                raise DataFileError(f"{self.path}: missing feature column(s) "
                                    f"{_show(missing)}; the model was trained on "
                                    f"{_show(names)}")
        if not names:
            raise DataFileError(f"{self.path}: no feature columns left")
        cols = []
        for n in names:
            c = self.column(n)
            if c.dtype.kind not in "fiub":
                bad = _first_non_number(c)
                raise DataFileError(f"{self.path}: column {n!r} is not numeric (value "
                                    f"{bad!r}); encode it as numbers or drop it")
            cols.append(c.astype(np.float64))
        X = np.stack(cols, axis=1)
        if not np.isfinite(X).all():
            bad = np.argwhere(~np.isfinite(X))[0]
            raise DataFileError(f"{self.path}: column {names[bad[1]]!r} has a missing, NaN "
                                f"or infinite value at row {bad[0] + 1}")
        return np.ascontiguousarray(X), list(names)


def _show(names, limit=12):
    names = list(names)
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(repr(n) for n in names[:limit]) + more


def _first_non_number(col):
    for v in col:
        try:
            float(v)
        except (TypeError, ValueError):
            return v
    return None


def _column_array(values):
    """float64 when every value is a number, else the strings themselves."""
    try:
        return np.array([float(v) if v.strip() != "" else np.nan for v in values],
                        dtype=np.float64)
    except ValueError:
        return np.array(values, dtype=str)


def read_table(path):
    """Read ``path`` by its extension (.csv, .npy, .npz, .parquet)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataFileError(f"no such data file: {path}")
    if os.path.isdir(path):
        raise DataFileError(f"{path} is a directory, not a data file")
    ext = os.path.splitext(path)[1].lower()
    readers = {".csv": read_csv, ".npy": read_npy, ".npz": read_npz,
               ".parquet": read_parquet, ".pq": read_parquet}
    if ext not in readers:
        raise DataFileError(f"{path}: unknown data format {ext or '(no extension)'!r}; use "
                            f".csv (with a header row), .npy, .npz or .parquet")
    return readers[ext](path)


def read_csv(path):
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise DataFileError(f"{path}: the file is empty; a header row is needed")
            header = [h.strip() for h in header]
            if len(set(header)) != len(header):
                dup = sorted({h for h in header if header.count(h) > 1})
                raise DataFileError(f"{path}: duplicate column name(s) {_show(dup)}")
            rows = []
            for line_no, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) != len(header):
                    raise DataFileError(f"{path}, line {line_no}: {len(row)} fields, the "
                                        f"header has {len(header)}")
                rows.append(row)
    except UnicodeDecodeError as e:
        raise DataFileError(f"{path}: not a UTF-8 text file ({e})") from None
    if not rows:
        raise DataFileError(f"{path}: no data rows after the header")
    columns = [_column_array(list(col)) for col in zip(*rows)]
    return Table(path, header, columns)


def _load_npy(path, **kw):
    try:
        return np.load(path, allow_pickle=False, **kw)
    except (ValueError, OSError, EOFError) as e:
        raise DataFileError(f"{path}: not a readable NumPy file ({e})") from None


def read_npy(path):
    """A 2-D array; its columns are named "0", "1", ..."""
    arr = _load_npy(path)
    if arr.ndim != 2:
        raise DataFileError(f"{path}: expected a 2-D array (rows, columns), got shape "
                            f"{arr.shape}")
    return Table(path, [str(i) for i in range(arr.shape[1])], list(arr.T))


def read_npz(path):
    """An archive with ``X`` (2-D; columns "0", "1", ...) and optionally ``y``."""
    with _load_npy(path) as z:
        files = {k: z[k] for k in z.files}
    if "X" not in files:
        raise DataFileError(f"{path}: an .npz data file needs an array named 'X' (and 'y' "
                            f"for training); it holds {_show(sorted(files))}")
    X = files["X"]
    if X.ndim != 2:
        raise DataFileError(f"{path}: X must be 2-D, got shape {X.shape}")
    y = files.get("y")
    if y is not None and y.shape[:1] != X.shape[:1]:
        raise DataFileError(f"{path}: y has {y.shape[0] if y.ndim else 0} rows, X has "
                            f"{X.shape[0]}")
    return Table(path, [str(i) for i in range(X.shape[1])], list(X.T), y=y)


def read_parquet(path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataFileError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow, "
                            f"or the 'parquet' extra of fastbp)") from None
    try:
        t = pq.read_table(path)
    except Exception as e:   # pyarrow raises several unrelated types for bad files
        raise DataFileError(f"{path}: not a readable Parquet file ({e})") from None
    cols = []
    for c in t.columns:
        a = c.to_numpy(zero_copy_only=False)
        if a.dtype.kind not in "fiub":
            a = a.astype(str)
        cols.append(a)
    return Table(path, t.column_names, cols)


def write_csv(path, header, columns):
    """Write columns (1-D arrays) under ``header``; ``path`` None or "-" means stdout."""
    import sys
    rows = zip(*[[_fmt(v) for v in col] for col in columns])
    if path in (None, "-"):
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
        return
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _fmt(v):
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    if isinstance(v, np.generic):
        return v.item()
    return v
