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
import decimal
import gzip
import math
import numbers
import os
import re
import stat
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
    mean: torch.Tensor | None = None   # float64 training-split statistics (None: not standardised)
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
    lines = None  # the file's line number of each row (user and shipped CSVs)
    if key == "xor":
        X, y, names, source, split = np.array(XOR_X, float), np.array(XOR_Y), ["XOR", "XNOR"], _MAREN, False
    elif key == "letters":
        X = np.array([[float(b) for b in grid.replace(" ", "")] for grid in LETTERS.values()])
        y, names, source, split = np.arange(len(LETTERS)), list(LETTERS), _MAREN, False
    elif key in _SHIPPED:
        file, names, source = _SHIPPED[key]
        X, y, names, lines = _read_csv(DATA_DIR / file, names)
    elif isinstance(name, (str, os.PathLike)) and (
            str(name).lower().endswith((".csv", ".csv.gz")) or _exists(Path(name))):
        path = Path(name)
        X, y, names, lines = _read_csv(path)
        key, source = str(path), f"user file {_show(path)} (licence: the user's own)"
    else:
        raise bad("name", f"one of {', '.join(DATASETS)} or a path to a CSV file", repr(name))

    X, y = torch.from_numpy(X), torch.from_numpy(y).long()
    if split:
        train, test = _stratified_split(y, float(test_fraction), int(seed), key)
        X_train, y_train, X_test, y_test = X[train], y[train], X[test], y[test]
    else:
        train, test = torch.arange(len(y)), torch.arange(0)
        X_train, y_train, X_test, y_test = X, y, X, y
    mean = std = None
    if standardize if standardize is not None else split:
        X_train, X_test, mean, std = _standardize(X_train, X_test)
        # the statistics stay float64 (on the data's device): 1e-300 or 1e300 would not survive float32
        mean, std = mean.to(device), std.to(device)
    for part, rows in ((X_train, train), (X_test, test)):
        _check_fits(part, rows, dtype, key, lines, mean is not None)
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


def _show(path) -> str:
    """The path as text for a one-line message: control characters (a newline in a file name) escaped."""
    text = str(path)
    return text if text.isprintable() else ascii(text)[1:-1]


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # a name too long, a directory we may not search, a NUL byte
        return False


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def _rows(path: Path) -> list[tuple[int, list[str]]]:
    """(1-based line number, fields) of every non-blank line of a UTF-8 CSV file, gzip if .gz.

    Lines end in LF, CRLF or CR; a UTF-8 byte-order mark is dropped; a line whose fields are all blank
    is skipped.  Only regular files are read: a FIFO or a device (``/dev/zero``) could block forever or
    never end.
    """
    shown = _show(path)
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError, ValueError):
        why = "a broken symbolic link" if _is_symlink(path) else "no such file"
        raise bad("name", "an existing CSV file", f"'{shown}' ({why})") from None
    except OSError as e:
        raise bad("name", "an existing CSV file", f"'{shown}' ({e.strerror or type(e).__name__})") from None
    if stat.S_ISDIR(st.st_mode):
        raise bad("name", "a CSV file", f"'{shown}' (a directory)")
    if not stat.S_ISREG(st.st_mode):
        kind = next((k for test, k in _KINDS if test(st.st_mode)), "not a regular file")
        raise bad("name", "a regular CSV file", f"'{shown}' ({kind})")
    try:
        raw = path.read_bytes()
        if path.name.lower().endswith(".gz"):
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise bad(f"name ({shown})", "a readable file (gzip if it ends in .gz)",
                  _show(f"{type(e).__name__}: {e}")) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        # utf-8-sig counts its error offsets after a leading byte-order mark
        at = e.start + (3 if raw.startswith(b"\xef\xbb\xbf") else 0)
        line = len(re.findall(rb"\r\n|\r|\n", raw[:at])) + 1  # lines end as the reader below splits them
        raise bad(f"name ({shown}, line {line})", "UTF-8 text", f"the byte 0x{raw[at]:02x}") from None
    del raw
    text = text.lstrip("\ufeff")  # a second byte-order mark (files concatenated by some tools)
    reader = csv.reader(re.split(r"\r\n|\r|\n", text))
    rows = []
    try:
        for fields in reader:
            if any(f.strip() for f in fields):
                rows.append((reader.line_num, fields))
    except csv.Error as e:
        raise bad(f"name ({shown}, line {reader.line_num})", "valid CSV", _show(e)) from None
    if not rows:
        raise bad(f"name ({shown})", "a CSV file with data rows", "an empty file")
    return rows


def _is_symlink(path: Path) -> bool:
    try:
        return path.is_symlink()
    except (OSError, ValueError):
        return False


# A number as handgrad reads it: ASCII digits, an optional sign, point and exponent ("-1.5e3", "2.", ".5"),
# with spaces or tabs around it.  Python's float() also takes "1_000", other scripts' digits ("١٢") and
# Unicode spaces; a CSV file meaning them as numbers is more likely a mistake, so they are refused.
_PLAIN = re.compile(r"[ \t]*([+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)[ \t]*")
_NONFINITE = re.compile(r"[ \t]*[+-]?(?:nan|inf|infinity)[ \t]*", re.IGNORECASE)
_COUNT = re.compile(r"[ \t]*[0-9]{1,15}[ \t]*")  # a count in handgrad's header line
LABEL_LIMIT = 2**53  # class labels are integers below this in magnitude (exact in float64)


def _number(text: str):
    """The float of a plain ASCII decimal ``text`` (possibly inf for "1e999"), else None."""
    m = _PLAIN.fullmatch(text)
    if m:
        return float(m.group(1))
    return math.nan if _NONFINITE.fullmatch(text) else None


def _numberish(text: str) -> bool:
    """Whether a first-line field reads as a (possibly unusual) number or is blank: not a header name."""
    if not text.strip():
        return True
    try:
        float(text)
        return True
    except ValueError:
        return False


def _label(text: str) -> int | None:
    """The exact integer of a label's text (its float being finite), or None if not an integer."""
    try:
        d = decimal.Decimal(_PLAIN.fullmatch(text).group(1))
        if abs(d) >= LABEL_LIMIT:
            return LABEL_LIMIT  # out of range: the caller reports it
        return int(d) if d == d.to_integral_value() else None
    except (decimal.DecimalException, ValueError, OverflowError):
        return None


def _read_csv(path: Path, names: list[str] | None = None):
    """Features (float64), class indices (int64), class names and each row's line number from a CSV file.

    A first line with a field that is not a number (nor blank) is a header.  handgrad's own header
    ``N_ROWS,N_FEATURES,class names...`` is checked against the data and its labels must be class
    indices; otherwise (and without a header) the sorted distinct integer labels become classes 0..K-1,
    named by the labels.  ``names`` gives the classes of a file without a header whose labels are
    indices (digits).  Numbers are plain ASCII decimals (``-1.5e3``); features must be finite and
    labels integers below 2**53 in magnitude.
    """
    shown = _show(path)
    rows = _rows(path)
    first = rows[0][1]
    header = None if all(_numberish(f) for f in first) else first
    counts = None
    if header is not None:
        rows = rows[1:]
        if len(header) >= 3 and all(_COUNT.fullmatch(f) for f in header[:2]):
            counts, names = (int(header[0]), int(header[1])), [f.strip() for f in header[2:]]
    if not rows:
        raise bad(f"name ({shown})", "data rows after the header line", "none (header only)")
    width = counts[1] + 1 if counts else len(header) if header is not None else len(rows[0][1])
    said = " (as the header says)" if header is not None else " (as the first line)"
    if width < 2:
        raise bad(f"name ({shown}, line {rows[0][0]})", "at least 2 fields (features, then the class label)",
                  f"{width} field")
    for line, fields in rows:  # every row's width before any memory is allocated for them
        if len(fields) != width:
            raise bad(f"name ({shown}, line {line})", f"{width} fields{said}", f"{len(fields)} fields")
    X, labels = np.empty((len(rows), width - 1)), np.empty(len(rows), dtype=np.int64)
    for i, (line, fields) in enumerate(rows):
        at = f"name ({shown}, line {line})"
        for column, text in enumerate(fields, 1):
            value = _number(text)
            if value is None:
                if _numberish(text) and text.strip():
                    raise bad(at, f"a number in column {column} in plain ASCII notation (digits 0-9, "
                              "an optional sign, '.' and exponent, like -1.5e3)", repr(text))
                raise bad(at, f"a number in column {column}", repr(text))
            if not math.isfinite(value):
                raise bad(at, f"a finite number in column {column}", repr(text))
            if column < width:
                X[i, column - 1] = value
        label = _label(text)
        if label is None:
            raise bad(at, f"an integer class label in column {width}", repr(text))
        if label == LABEL_LIMIT:
            raise bad(at, f"an integer class label in column {width} below 2**53 in magnitude", repr(text))
        labels[i] = label
        if names is not None and not 0 <= label < len(names):
            raise bad(at, f"a class index in 0..{len(names) - 1} in column {width} "
                      f"({len(names)} classes: {_show(', '.join(names))})", repr(text))
    if counts and counts[0] != len(rows):
        raise bad(f"name ({shown}, line 1)", f"{counts[0]} data rows as the header says", f"{len(rows)}")
    distinct = np.unique(labels)
    if len(rows) < 2 or len(distinct) < 2:
        raise bad(f"name ({shown})", "at least 2 data rows and 2 distinct class labels",
                  f"{len(rows)} row(s), label(s) {', '.join(map(str, distinct))}")
    if names is None:
        names, labels = [str(v) for v in distinct], np.searchsorted(distinct, labels)
    return X, labels, names, np.array([line for line, _ in rows], dtype=np.int64)


def _standardize(X_train: torch.Tensor, X_test: torch.Tensor):
    """(x - mean) / std with the training split's mean and (population) std per column, computed on
    the column divided by a power of two near its largest magnitude, so that features up to 1.8e308
    neither overflow the sums nor give inf - inf: the result is bit for bit the plain formula's
    wherever that one is finite.  Constant columns (std 0) become 0."""
    top = X_train.abs().amax(0) if len(X_train) else torch.zeros(X_train.shape[1], dtype=X_train.dtype)
    exponent = torch.frexp(top).exponent
    scale = torch.where(top > 0, torch.ldexp(torch.ones_like(top), exponent - 1), torch.ones_like(top))
    train, test = X_train / scale, X_test / scale
    mean, std = train.mean(0), train.std(0, correction=0)
    constant = (std == 0) | (X_train.amax(0) == X_train.amin(0))
    mean = torch.where(constant, train[0] if len(train) else mean, mean)
    std = torch.where(constant, torch.ones_like(std), std)
    X_train, X_test = (train - mean) / std, (test - mean) / std
    # a std below float64's range (a column of 0 and 5e-324) is kept as the smallest positive float64
    std = torch.where(constant, torch.ones_like(std), (std * scale).clamp_min(math.ulp(0.0)))
    return X_train, X_test, mean * scale, std


def _check_fits(X: torch.Tensor, rows: torch.Tensor, dtype: torch.dtype, name: str, lines, standardised: bool):
    """Every feature finite in ``dtype`` (1e300 is finite in float64, inf in float32)."""
    bad_entries = ~torch.isfinite(X.to(dtype))
    if not bool(bad_entries.any()):
        return
    i, j = (int(v) for v in bad_entries.nonzero()[0])
    where = f", line {int(lines[int(rows[i])])}" if lines is not None and len(rows) > i else ""
    what = "its standardised value" if standardised else "it"
    raise bad(f"name ({_show(name)}{where})", f"features that fit in {str(dtype).removeprefix('torch.')}",
              f"{float(X[i, j])!r} in column {j + 1} ({what} is out of range)")


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
