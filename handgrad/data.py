"""Data for handgrad: the chapter's own patterns, three small real data sets, and users' CSV files.

``load_dataset(name)`` returns a :class:`Dataset` of float features and int64 class indices.

* ``xor`` and ``letters`` are the chapter author's (Alianna J. Maren) tutorial patterns, written out
  below.  They have no test split (``X_test``/``y_test`` are the training set) and are not standardised.
* ``iris``, ``digits`` and ``breast-cancer`` are read from the copies in ``handgrad/data/`` (sources and
  licences in ``handgrad/data/SOURCES.md``).
* Anything else ending in ``.csv``/``.csv.gz``, or naming an existing file, is read as a user's CSV:
  features, then an integer class label in the last column, with an optional header row.

Real data get a fixed, seeded, stratified train/test split, and are standardised with the mean and
standard deviation of the training split only.  Every bad input raises
:class:`handgrad.errors.HandgradInputError` naming the argument and, for files, the path and line.
"""

from __future__ import annotations

import csv
import gzip
import math
import numbers
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from handgrad.errors import bad

DATASETS = ("xor", "letters", "iris", "digits", "breast-cancer")
DATA_DIR = Path(__file__).with_name("data")

_UCI = "UCI Machine Learning Repository; licence CC BY 4.0"
_SHIPPED = {  # name: (file, class names if the file has no header, source line)
    "iris": ("iris.csv", None, "R. A. Fisher (1936), iris, via the " + _UCI),
    "digits": ("digits.csv.gz", [str(d) for d in range(10)],
               "E. Alpaydin, C. Kaynak, Optical Recognition of Handwritten Digits (test-set copy), " + _UCI),
    "breast-cancer": ("breast_cancer.csv", None,
                      "W. H. Wolberg, W. N. Street, O. L. Mangasarian, Breast Cancer Wisconsin (Diagnostic), " + _UCI),
}
_MAREN = "Alianna J. Maren, backpropagation tutorial (the chapter), written out in handgrad/data.py; no licence stated"

# XOR/XNOR: class 0 is "XOR is on" (desired (1,0)), class 1 "XNOR is on" (desired (0,1)).
XOR_X = [[0, 0], [0, 1], [1, 0], [1, 1]]
XOR_Y = [1, 0, 0, 1]
# The five 5x5 letters, classes 0-4 in this order, rows top to bottom.
LETTERS = {
    "X": "10001 01010 00100 01010 10001",
    "M": "10001 11011 10101 10001 10001",
    "N": "10001 11001 10101 10011 10001",
    "H": "10001 10001 11111 10001 10001",
    "A": "00100 01010 11111 10001 10001",
}
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(repr=False)
class Dataset:
    """A classification data set: float features ``(n, f)`` and int64 class indices ``(n,)``."""

    name: str
    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int
    class_names: list[str]
    source: str
    has_test_split: bool
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None

    @property
    def n_features(self) -> int:
        return self.X_train.shape[1]

    def onehot(self, y: torch.Tensor) -> torch.Tensor:
        """Class indices ``(n,)`` -> one-hot targets ``(n, n_classes)`` in the features' dtype."""
        if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.dtype == torch.bool \
                or y.is_floating_point() or y.is_complex():
            raise bad("y", "a 1-D integer tensor of class indices", _describe(y))
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.n_classes):
            raise bad("y", f"class indices in 0..{self.n_classes - 1}",
                      f"values from {int(y.min())} to {int(y.max())}")
        return torch.nn.functional.one_hot(y.long(), self.n_classes).to(self.X_train.dtype)

    def __repr__(self) -> str:
        split = f"{len(self.y_train)} train / {len(self.y_test)} test" if self.has_test_split \
            else f"{len(self.y_train)} patterns, no test split"
        return (f"Dataset({self.name!r}: {split}, {self.n_features} features, {self.n_classes} classes, "
                f"{self.X_train.dtype}, {self.X_train.device}, standardised={self.mean is not None})")


def load_dataset(name, *, test_fraction=0.25, seed=0, dtype=torch.float32, device="cpu",
                 standardize=None) -> Dataset:
    """Load a shipped data set (one of :data:`DATASETS`) or a user's CSV file.

    ``standardize=None`` means True for real data (shipped CSVs and user files), False for xor/letters.
    """
    dtype, device = _check_dtype(dtype), _check_device(device)
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, numbers.Real) \
            or not 0 < test_fraction < 1:
        raise bad("test_fraction", "a number strictly between 0 and 1", repr(test_fraction))
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not -2**63 <= seed < 2**64:
        raise bad("seed", "an integer that fits in 64 bits", repr(seed))
    if standardize is not None and not isinstance(standardize, bool):
        raise bad("standardize", "True, False or None", repr(standardize))

    key = name.strip().lower().replace("_", "-") if isinstance(name, str) else None
    split = True
    if key == "xor":
        X, y, names, source, split = np.array(XOR_X, float), np.array(XOR_Y), ["XOR", "XNOR"], _MAREN, False
    elif key == "letters":
        X = np.array([[float(b) for b in grid.replace(" ", "")] for grid in LETTERS.values()])
        y, names, source, split = np.arange(len(LETTERS)), list(LETTERS), _MAREN, False
    elif key in _SHIPPED:
        file, names, source = _SHIPPED[key]
        X, y, names = _read_csv(DATA_DIR / file, names)
    elif isinstance(name, (str, os.PathLike)) and (
            str(name).lower().endswith((".csv", ".csv.gz")) or Path(name).exists()):
        path = Path(name)
        X, y, names = _read_csv(path)
        key, source = str(path), f"user file {path} (licence: the user's own)"
    else:
        raise bad("name", f"one of {', '.join(DATASETS)} or a path to a CSV file", repr(name))

    X, y = torch.from_numpy(X), torch.from_numpy(y).long()
    if split:
        train, test = _stratified_split(y, float(test_fraction), int(seed), key)
        X_train, y_train, X_test, y_test = X[train], y[train], X[test], y[test]
    else:
        X_train, y_train, X_test, y_test = X, y, X, y
    mean = std = None
    if standardize if standardize is not None else split:
        mean, std = X_train.mean(0), X_train.std(0, correction=0)
        std[std == 0] = 1.0  # constant features (digits' blank corner pixels) stay constant (0)
        X_train, X_test = (X_train - mean) / std, (X_test - mean) / std
        mean, std = mean.to(device, dtype), std.to(device, dtype)
    X_train, X_test = X_train.to(device, dtype), X_test.to(device, dtype)
    y_train, y_test = y_train.to(device), y_test.to(device)
    if not split:
        X_test, y_test = X_train, y_train
    return Dataset(key, X_train, y_train, X_test, y_test, len(names), names, source, split, mean, std)


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return f"{type(x).__name__} {x!r}"


def _check_dtype(dtype) -> torch.dtype:
    resolved = getattr(torch, dtype.strip().replace("torch.", ""), None) if isinstance(dtype, str) else dtype
    if resolved not in _FLOAT_DTYPES:
        raise bad("dtype", "a floating torch dtype (torch.float32, torch.float64, torch.float16 or "
                  "torch.bfloat16)", repr(dtype))
    return resolved


def _check_device(device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise bad("device", "a torch device such as 'cpu' or 'cuda'", repr(device)) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise bad("device", "an available device", f"{str(device)!r} (no CUDA GPU is present)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise bad("device", "an available device",
                      f"{str(device)!r} (only {torch.cuda.device_count()} CUDA GPU(s) present)")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise bad("device", "an available device", f"{str(device)!r} (MPS is not available)")
    elif dev.type != "cpu":
        raise bad("device", "'cpu', 'cuda' or 'mps'", repr(device))
    return dev


def _rows(path: Path) -> list[tuple[int, list[str]]]:
    """(1-based line number, fields) of every non-blank line of a UTF-8 CSV file, gzip if .gz."""
    if path.is_dir():
        raise bad("name", "a CSV file", f"'{path}' (a directory)")
    if not path.exists():
        raise bad("name", "an existing CSV file", f"'{path}' (no such file)")
    try:
        raw = path.read_bytes()
        if path.name.lower().endswith(".gz"):
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise bad(f"name ({path})", "a readable file (gzip if it ends in .gz)", f"{type(e).__name__}: {e}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise bad(f"name ({path}, line {line})", "UTF-8 text", f"the byte 0x{raw[e.start]:02x}") from None
    reader = csv.reader(text.replace("\r\n", "\n").split("\n"))
    rows = []
    try:
        for fields in reader:
            if any(f.strip() for f in fields):
                rows.append((reader.line_num, fields))
    except csv.Error as e:
        raise bad(f"name ({path}, line {reader.line_num})", "valid CSV", str(e)) from None
    if not rows:
        raise bad(f"name ({path})", "a CSV file with data rows", "an empty file")
    return rows


def _number(text: str):
    try:
        return float(text)
    except ValueError:
        return None


def _read_csv(path: Path, names: list[str] | None = None):
    """Features (float64), class indices (int64) and class names from a CSV file.

    A first line with a non-numeric field is a header.  handgrad's own header ``N_ROWS,N_FEATURES,class
    names...`` is checked against the data and its labels must be class indices; otherwise (and
    without a header) the sorted distinct integer labels become classes 0..K-1, named by the labels.
    ``names`` gives the classes of a file without a header whose labels are indices (digits).
    """
    rows = _rows(path)
    first = rows[0][1]
    header = first if any(_number(f) is None for f in first) else None
    counts = None
    if header is not None:
        rows = rows[1:]
        if len(header) >= 3 and all(f.strip().isdigit() for f in header[:2]):
            counts, names = (int(header[0]), int(header[1])), [f.strip() for f in header[2:]]
    if not rows:
        raise bad(f"name ({path})", "data rows after the header line", "none (header only)")
    width = counts[1] + 1 if counts else len(header) if header is not None else len(rows[0][1])
    said = " (as the header says)" if header is not None else " (as the first line)"
    if width < 2:
        raise bad(f"name ({path}, line {rows[0][0]})", "at least 2 fields (features, then the class label)",
                  f"{width} field")
    X, labels = np.empty((len(rows), width - 1)), np.empty(len(rows), dtype=np.int64)
    for i, (line, fields) in enumerate(rows):
        at = f"name ({path}, line {line})"
        if len(fields) != width:
            raise bad(at, f"{width} fields{said}", f"{len(fields)} fields")
        for column, text in enumerate(fields, 1):
            value = _number(text)
            if value is None:
                raise bad(at, f"a number in column {column}", repr(text))
            if not math.isfinite(value):
                raise bad(at, f"a finite number in column {column}", repr(text))
            if column < width:
                X[i, column - 1] = value
        if not value.is_integer():
            raise bad(at, f"an integer class label in column {width}", repr(text))
        labels[i] = int(value)
        if names is not None and not 0 <= labels[i] < len(names):
            raise bad(at, f"a class index in 0..{len(names) - 1} in column {width} "
                      f"({len(names)} classes: {', '.join(names)})", repr(text))
    if counts and counts[0] != len(rows):
        raise bad(f"name ({path}, line 1)", f"{counts[0]} data rows as the header says", f"{len(rows)}")
    distinct = np.unique(labels)
    if len(rows) < 2 or len(distinct) < 2:
        raise bad(f"name ({path})", "at least 2 data rows and 2 distinct class labels",
                  f"{len(rows)} row(s), label(s) {', '.join(map(str, distinct))}")
    if names is None:
        names, labels = [str(v) for v in distinct], np.searchsorted(distinct, labels)
    return X, labels, names


def _stratified_split(y: torch.Tensor, test_fraction: float, seed: int, name: str):
    """Sorted (train, test) row indices; each class gives round(test_fraction * count) rows to test,
    at least 1 if it has 2 or more rows, and always keeps at least 1 for training."""
    generator = torch.Generator().manual_seed(seed)
    test = []
    for c in range(int(y.max()) + 1):
        rows = torch.nonzero(y == c).flatten()
        if len(rows):
            n_test = min(max(round(test_fraction * len(rows)), 1 if len(rows) >= 2 else 0), len(rows) - 1)
            test.append(rows[torch.randperm(len(rows), generator=generator)[:n_test]])
    test = torch.sort(torch.cat(test)).values
    if not len(test):
        raise bad(f"name ({name})", "a class with at least 2 rows, to give the test split a row",
                  "only classes of 1 row")
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[test] = False
    return torch.nonzero(keep).flatten(), test
