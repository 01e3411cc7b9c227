"""Hostile input: the CSV loader and ``handgrad train --data FILE`` fuzzed with hypothesis.

Every input must end in one of two ways: a :class:`HandgradInputError` (from the command: exit code 2
and one line on stderr naming the file), or a correct load (finite features, integer labels 0..K-1,
shapes and the split right) that trains to a finite loss.  Never a traceback, a hang or a NaN/Inf
carried into training.

(a) arbitrary bytes (raw, CSV-flavoured, gzip) -> an error or a Dataset that passes every invariant;
(b) valid-looking tables with one injected fault -> exactly the expected message, naming the right line;
    without a fault -> exactly the table back;
(c) the command in-process on both kinds of file (and a few in real processes) -> exit 0 or 2, one
    line on stderr, no "Traceback";
(d) valid random tables, huge and tiny numbers included -> training ends with a finite loss;
plus a catalogue of named hostile files (empty, header only, NaN strings, Arabic-Indic digits, "1_000",
BOM, CR line ends, 3 000 columns, a FIFO, a broken symlink, ...).

Size: ``HANDGRAD_FUZZ_EXAMPLES=N`` gives every property test N examples (default: a run of ~30 s);
the number of cases run is printed at the end of the module's tests.
"""
from __future__ import annotations

import collections
import contextlib
import gzip
import json
import math
import os
import re
import signal
import stat
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, given, note, settings, strategies as st

from handgrad import cli
from handgrad.data import Dataset, load_dataset
from handgrad.errors import HandgradInputError
from handgrad.train import build_net, default_config, train

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = int(os.environ.get("HANDGRAD_FUZZ_EXAMPLES", "0") or 0)
CASES = collections.Counter()  # fuzz cases run, by test
PER_CASE_SECONDS = 30          # a hang guard: no single load or command may take longer


def fuzz(default: int):
    """Settings of a property test: ``default`` examples, or HANDGRAD_FUZZ_EXAMPLES of them."""
    return settings(max_examples=EXAMPLES or default, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large, HealthCheck.filter_too_much])


@pytest.fixture(scope="module", autouse=True)
def _report_counts(request):
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    line = (f"test_fuzz: {sum(CASES.values())} fuzz cases run ("
            + ", ".join(f"{k} {v}" for k, v in sorted(CASES.items())) + ")")
    if reporter is not None:
        reporter.write_line("")
        reporter.write_line(line)
    if os.environ.get("HANDGRAD_FUZZ_COUNTS"):
        Path(os.environ["HANDGRAD_FUZZ_COUNTS"]).write_text(json.dumps(dict(CASES)))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@contextlib.contextmanager
def time_limit(seconds=PER_CASE_SECONDS):
    """Fail, rather than hang, if the block takes longer than ``seconds`` (SIGALRM, main thread)."""
    def expired(signum, frame):
        raise TimeoutError(f"took longer than {seconds} s: a hang")
    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def load(path, **kw):
    with time_limit():
        return load_dataset(str(path), **kw)


def expected_test_rows(count: int, fraction: float) -> int:
    return min(max(round(fraction * count), 1 if count >= 2 else 0), count - 1)


def check_dataset(d: Dataset, *, fraction: float, dtype=torch.float32):
    """The invariants of every Dataset load_dataset returns for a user's file."""
    assert isinstance(d, Dataset) and d.has_test_split
    n_train, n_test = len(d.y_train), len(d.y_test)
    assert n_train >= 1 and n_test >= 1
    assert d.X_train.shape == (n_train, d.n_features) and d.X_test.shape == (n_test, d.n_features)
    assert d.n_features >= 1
    assert d.X_train.dtype == d.X_test.dtype == dtype
    assert d.y_train.dtype == d.y_test.dtype == torch.int64
    assert torch.isfinite(d.X_train).all() and torch.isfinite(d.X_test).all()
    assert d.n_classes >= 2 and len(d.class_names) == d.n_classes
    y = torch.cat([d.y_train, d.y_test])
    assert int(y.min()) >= 0 and int(y.max()) < d.n_classes
    # the split: per class, round(fraction * count) rows (at least 1 of 2+, never all) went to test
    total = torch.bincount(y, minlength=d.n_classes).tolist()
    test = torch.bincount(d.y_test, minlength=d.n_classes).tolist()
    assert test == [expected_test_rows(c, fraction) for c in total]
    if d.mean is not None:  # the statistics are kept in float64, whatever the data's dtype
        assert d.mean.dtype == d.std.dtype == torch.float64
        assert torch.isfinite(d.mean).all() and torch.isfinite(d.std).all() and (d.std > 0).all()


def exact_standardised_square(column: list[float], x: float) -> Fraction:
    """((x - mean) / std)^2 in exact rational arithmetic, with the training column's mean and
    population variance; a constant column keeps x - its value (std taken as 1)."""
    xs = [Fraction(v) for v in column]
    mean = sum(xs) / len(xs)
    var = sum((v - mean) ** 2 for v in xs) / len(xs)
    if var == 0:
        return (Fraction(x) - xs[0]) ** 2
    return (Fraction(x) - mean) ** 2 / var


def one_line_error(err: str, path) -> str:
    """The command's stderr after a bad input: exactly one line, naming the file."""
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n") and err.count("\n") == 1, repr(err)
    assert lines[0].startswith("handgrad: error: "), repr(err)
    shown = str(path) if str(path).isprintable() else ascii(str(path))[1:-1]
    assert shown in lines[0], (shown, lines[0])
    return lines[0]


def run_cli(capsys, path, *extra):
    capsys.readouterr()
    with time_limit():
        code = cli.main(["train", "--data", str(path), "--epochs", "1", "--json", *extra])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


# --- generators ----------------------------------------------------------------------------------

# Pieces of CSV-ish bytes: numbers, separators, every kind of line end, NaN/inf words, BOM, NUL,
# quotes, non-UTF-8 bytes, Arabic-Indic and fullwidth digits, underscores, Unicode spaces.
PIECES = [b"0", b"1", b"2", b"7", b"-", b"+", b".", b"e", b"E", b"5", b"9", b"1e308", b"1e309", b"-1e400",
          b",", b",", b",", b"\n", b"\n", b"\r\n", b"\r", b" ", b"\t", b'"', b"nan", b"NaN", b"inf",
          b"-Infinity", b"\xef\xbb\xbf", b"\x00", b"\xff", b"\xc3", b"\xd9\xa1", b"\xef\xbc\x91", b"_",
          b"1_000", b"a", b"label", b"2.5", b"1e20", b"\xe2\x80\x83", b"\x0c", b"\x85", b"\xed\xa0\x80"]
csv_bytes = st.lists(st.sampled_from(PIECES), max_size=120).map(b"".join)
# mostly-valid numeric grids with a few hostile pieces sprinkled in
grid_bytes = st.lists(
    st.lists(st.one_of(st.integers(-3, 9).map(lambda v: str(v).encode()),
                       st.floats(allow_nan=False, allow_infinity=False).map(lambda v: repr(v).encode()),
                       st.sampled_from(PIECES)), min_size=1, max_size=5).map(b",".join),
    max_size=12).map(b"\n".join)
any_bytes = st.one_of(st.binary(max_size=400), csv_bytes, grid_bytes)

# features: anything finite, including 1.8e308, subnormals and -0.0
features = st.one_of(st.floats(allow_nan=False, allow_infinity=False),
                     st.integers(-1000, 1000).map(float),
                     st.sampled_from([0.0, -0.0, 1e308, -1e308, 1.7976931348623157e308, 5e-324, 1e-300, 3.4e38]))
small_labels = st.integers(-3, 12)
labels = st.one_of(small_labels, st.integers(-(2**53 - 1), 2**53 - 1))


def fmt_feature(draw, x: float) -> str:
    text = draw(st.sampled_from([repr(x), f"{x:.17g}", f"{x:.17e}", f"{x:.3e}", f"{x:.6E}"]))
    if not math.isfinite(float(text)):  # 1.798e+308 rounds up to inf
        text = repr(x)
    if draw(st.booleans()):
        text = draw(st.sampled_from(["", " ", "\t", "  "])) + text + draw(st.sampled_from(["", " ", "\t"]))
    if draw(st.integers(0, 5)) == 0:
        text = '"' + text + '"'
    return text


def fmt_label(draw, v: int) -> str:
    text = draw(st.sampled_from([str(v), f"{v}.0", f"+{v}" if v >= 0 else str(v), f"{v}."]))
    if draw(st.integers(0, 5)) == 0:
        text = f" {text} "
    return text


@st.composite
def tables(draw, max_rows=24, max_features=6):
    """A valid CSV file and what it holds: (lines, data-row line numbers, X rows, label texts, class
    names, header kind, line ending, BOM)."""
    n_features = draw(st.integers(1, max_features))
    n_classes = draw(st.integers(2, 4))
    header = draw(st.sampled_from(["none", "names", "counts"]))
    if header == "counts":  # handgrad's own header: labels are indices 0..K-1
        values = list(range(n_classes))
        names = [f"class{k}" for k in range(n_classes)]
    else:
        values = draw(st.lists(st.one_of(small_labels, labels), min_size=n_classes, max_size=n_classes, unique=True))
        names = [str(v) for v in sorted(values)]
    counts = draw(st.lists(st.integers(2, max(2, max_rows // n_classes)), min_size=n_classes, max_size=n_classes))
    ys = draw(st.permutations([v for v, c in zip(values, counts) for _ in range(c)]))
    rows, texts = [], []
    for v in ys:
        x = draw(st.lists(features, min_size=n_features, max_size=n_features))
        fields = [fmt_feature(draw, f) for f in x]
        label_text = fmt_label(draw, v)
        rows.append(([float(f.strip(' \t"')) for f in fields], v))
        texts.append(fields + [label_text])
    lines, data_lines = [], []

    def blanks():
        for _ in range(draw(st.integers(0, 1)) and draw(st.integers(1, 2))):
            lines.append(draw(st.sampled_from(["", " ", "\t", ",", ",," + " " * 2])))

    if header == "names":
        lines.append(",".join(["col_" + draw(st.from_regex(r"[A-Za-z0-9 ]{0,6}", fullmatch=True))
                               for _ in range(n_features)] + ["label"]))
    elif header == "counts":
        lines.append(",".join([str(len(ys)), str(n_features)] + names))
    for fields in texts:
        blanks()
        lines.append(",".join(fields))
        data_lines.append(len(lines))
    blanks()
    ending = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    bom = draw(st.booleans())
    trailing = draw(st.booleans())
    return dict(lines=lines, data_lines=data_lines, rows=rows, texts=texts, names=names, header=header,
                ending=ending, bom=bom, trailing=trailing, width=n_features + 1)


def render(t, lines=None) -> bytes:
    lines = t["lines"] if lines is None else lines
    parts = [ln if isinstance(ln, bytes) else ln.encode() for ln in lines]
    raw = t["ending"].encode().join(parts) + (t["ending"].encode() if t["trailing"] else b"")
    return (b"\xef\xbb\xbf" if t["bom"] else b"") + raw


def write(path: Path, raw: bytes) -> Path:
    path.write_bytes(raw)
    return path


# Faults: (token, what the message says).  "finite": not a finite number; "ascii": a number Python's
# float() reads but handgrad refuses; "number": not a number at all.
FEATURE_FAULTS = ([(t, "finite") for t in ["nan", "NaN", "-nan", "inf", "+inf", "-Infinity", "INFINITY",
                                           "1e309", "-1e400", "1e99999", "  nan "]]
                  + [(t, "ascii") for t in ["\u0661\u0662", "1_000", "\uff11", "1\u2003", "\u0967", "\u0663.\u0665",
                                            "\u00a01", "10_0.5"]]
                  + [(t, "number") for t in ["abc", "", "  ", "\t", "0x10", "1e", "--1", "1.2.3", "1\x00",
                                             "\x00", "\ufeff1", "1 2", "e5", ".", "+", "1,5", '"', "true",
                                             "1e+", "\u00b2", "nanx", "infinit"]])
LABEL_FAULTS = [("2.5", "integer"), ("-0.5", "integer"), ("1e-3", "integer"), ("1.0000001", "integer"),
                ("1e20", "huge"), ("-1e20", "huge"), ("9007199254740992", "huge"), ("1e16", "huge"),
                ("nan", "finite"), ("-Infinity", "finite"), ("1e309", "finite"), ("1_0", "ascii"),
                ("\u0661", "ascii"), ("x", "number"), ("", "number")]
BAD_UTF8 = [b"\xff", b"\xfe", b"\xc3(", b"\xed\xa0\x80", b"\x80", b"\xf8\x88\x80\x80\x80", b"\xc0\xaf"]


def quote(token: str) -> str:
    return '"' + token.replace('"', '""') + '"' if ("," in token or '"' in token) else token


def message_for(kind: str, column: int, token: str, width: int) -> str:
    if kind == "finite":
        return f"expected a finite number in column {column}, got {token!r}"
    if kind == "ascii":
        return f"expected a number in column {column} in plain ASCII notation (digits 0-9, an optional sign, " \
               f"'.' and exponent, like -1.5e3), got {token!r}"
    if kind == "number":
        return f"expected a number in column {column}, got {token!r}"
    if kind == "integer":
        return f"expected an integer class label in column {width}, got {token!r}"
    if kind == "huge":
        return f"expected an integer class label in column {width} below 2**53 in magnitude, got {token!r}"
    raise AssertionError(kind)


@st.composite
def faulty_tables(draw):
    """A table with one fault in one data row, and the exact message it must give."""
    t = draw(tables())
    width, header = t["width"], t["header"]
    # a non-numeric field in the first line of a file without a header makes that line the header,
    # so without one the fault goes in a later row (the first row gets its own tests below)
    r = draw(st.integers(0 if header != "none" else 1, len(t["texts"]) - 1))
    line = t["data_lines"][r]
    fields = list(t["texts"][r])
    kind = draw(st.sampled_from(["feature", "label", "width", "utf8"]))
    lines = list(t["lines"])
    said = "(as the header says)" if header != "none" else "(as the first line)"
    if kind == "feature":
        token, what = draw(st.sampled_from(FEATURE_FAULTS))
        column = draw(st.integers(1, width - 1))
        fields[column - 1] = quote(token)
        expected = message_for(what, column, token, width)
    elif kind == "label":
        token, what = draw(st.sampled_from(LABEL_FAULTS))
        fields[-1] = quote(token)
        expected = message_for(what, width, token, width)
    elif kind == "width":
        if draw(st.booleans()):
            fields.insert(draw(st.integers(0, len(fields))), draw(st.sampled_from(["1", "0", "", "x"])))
        else:
            del fields[draw(st.integers(0, len(fields) - 1))]
        expected = f"expected {width} fields {said}, got {len(fields)} fields"
    else:
        bad = draw(st.sampled_from(BAD_UTF8))
        column = draw(st.integers(0, width - 1))
        raw_fields = [f.encode() for f in fields]
        raw_fields[column] = raw_fields[column] + bad
        lines[line - 1] = b",".join(raw_fields)
        expected = f"expected UTF-8 text, got the byte 0x{bad[0]:02x}"
    if kind != "utf8":
        lines[line - 1] = ",".join(fields)
    return render(t, lines), line, expected


# --- (a) arbitrary bytes ---------------------------------------------------------------------------

@fuzz(1500)
@given(raw=any_bytes, as_gzip=st.sampled_from(["no", "gzip", "raw-as-gz", "truncated-gz"]),
       fraction=st.floats(0.05, 0.95), seed=st.integers(0, 2**32), standardize=st.sampled_from([None, False]),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_arbitrary_bytes_error_or_valid(workdir, raw, as_gzip, fraction, seed, standardize, dtype):
    CASES["a_bytes"] += 1
    if as_gzip == "no":
        path = write(workdir / "any.csv", raw)
    else:
        packed = {"gzip": gzip.compress(raw), "raw-as-gz": raw, "truncated-gz": gzip.compress(raw)[:-5]}[as_gzip]
        path = write(workdir / "any.csv.gz", packed)
    try:
        d = load(path, test_fraction=fraction, seed=seed, standardize=standardize, dtype=dtype)
    except HandgradInputError as e:
        message = str(e)
        assert "\n" not in message and len(message.splitlines()) == 1
        assert str(path) in message
        return
    check_dataset(d, fraction=fraction, dtype=dtype)
    text = raw.decode("utf-8-sig")  # loaded, so it was UTF-8 (gzip-compressed or not)
    assert len(d.y_train) + len(d.y_test) <= len(re.split(r"\r\n|\r|\n", text))
    if standardize is False and dtype == torch.float64:
        # every feature is a number written in the file, in plain ASCII notation
        written = {float(m) for m in re.findall(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", text)}
        assert set(torch.cat([d.X_train, d.X_test]).flatten().tolist()) <= written


# --- (b) valid tables, and one fault each ----------------------------------------------------------

@fuzz(200)
@given(t=tables(), fraction=st.floats(0.05, 0.95), seed=st.integers(0, 2**32))
def test_valid_table_loads_exactly(workdir, t, fraction, seed):
    CASES["b_valid"] += 1
    path = write(workdir / "valid.csv", render(t))
    raw = load(path, test_fraction=fraction, seed=seed, standardize=False, dtype=torch.float64)
    check_dataset(raw, fraction=fraction, dtype=torch.float64)
    assert raw.class_names == t["names"] and raw.n_features == t["width"] - 1
    index = {v: k for k, v in enumerate(sorted({v for _, v in t["rows"]}))}  # labels 0..K-1 in their order
    got = sorted((tuple(x), int(y)) for x, y in zip(torch.cat([raw.X_train, raw.X_test]).tolist(),
                                                   torch.cat([raw.y_train, raw.y_test]).tolist()))
    want = sorted((tuple(x), index[v]) for x, v in t["rows"])
    assert got == want
    # standardised (the default), in float32: finite, even from 1.8e308 columns, or a clear error
    # naming a cell whose standardised value really is beyond float32 (checked in exact arithmetic)
    try:
        d = load(path, test_fraction=fraction, seed=seed)
    except HandgradInputError as e:
        m = re.fullmatch(rf"name \({re.escape(str(path))}, line (\d+)\): expected features that fit in "
                         r"float32, got \S+ in column (\d+) \(its standardised value is out of range\)", str(e))
        assert m, str(e)
        line, column = int(m.group(1)), int(m.group(2))
        x = t["rows"][t["data_lines"].index(line)][0][column - 1]
        z2 = exact_standardised_square(raw.X_train[:, column - 1].tolist(), x)
        assert z2 > Fraction(torch.finfo(torch.float32).max) ** 2 * Fraction(99, 100), (str(e), float(z2))
        return
    check_dataset(d, fraction=fraction)
    assert torch.equal(d.y_train, raw.y_train) and torch.equal(d.y_test, raw.y_test)


@fuzz(500)
@given(case=faulty_tables())
def test_fault_gives_its_message_and_line(workdir, case):
    CASES["b_fault"] += 1
    raw, line, expected = case
    path = write(workdir / "fault.csv", raw)
    note(repr(raw))
    with pytest.raises(HandgradInputError) as info:
        load(path)
    assert str(info.value) == f"name ({path}, line {line}): {expected}"


@fuzz(100)
@given(t=tables(), token=st.sampled_from([t for t, k in FEATURE_FAULTS if k != "number"] + ["", " "]))
def test_fault_in_first_row_without_header_is_not_taken_for_a_header(workdir, t, token):
    """A first line whose odd fields are numbers Python reads (nan, 1_000, Arabic-Indic) or blank is
    data, so the fault is reported on it rather than the line silently dropped as a header."""
    CASES["b_first_row"] += 1
    assume(t["header"] == "none")
    fields = list(t["texts"][0])
    fields[0] = token
    lines = list(t["lines"])
    lines[t["data_lines"][0] - 1] = ",".join(fields)
    path = write(workdir / "first.csv", render(t, lines))
    kind = dict(FEATURE_FAULTS).get(token, "number")
    with pytest.raises(HandgradInputError) as info:
        load(path)
    assert str(info.value) == f"name ({path}, line {t['data_lines'][0]}): {message_for(kind, 1, token, t['width'])}"


@fuzz(200)
@given(t=tables(), dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
def test_unstandardised_features_must_fit_the_dtype(workdir, t, dtype):
    CASES["b_dtype"] += 1
    path = write(workdir / "fit.csv", render(t))
    limit = torch.finfo(dtype).max
    too_big = [line for line, (x, _) in zip(t["data_lines"], t["rows"])
               if any(not math.isfinite(float(torch.tensor(v, dtype=torch.float64).to(dtype))) for v in x)]
    try:
        d = load(path, standardize=False, dtype=dtype)
    except HandgradInputError as e:
        m = re.fullmatch(rf"name \({re.escape(str(path))}, line (\d+)\): expected features that fit in "
                         rf"{str(dtype)[6:]}, got (\S+) in column \d+ \(it is out of range\)", str(e))
        assert m and int(m.group(1)) in too_big and abs(float(m.group(2))) > limit / 2, str(e)
        return
    assert not too_big
    check_dataset(d, fraction=0.25, dtype=dtype)


# --- (c) the command, in-process -------------------------------------------------------------------

@fuzz(250)
@given(raw=st.one_of(any_bytes, tables().map(render), faulty_tables().map(lambda c: c[0])))
def test_cli_exits_0_or_2_with_one_line(workdir, capsys, raw):
    CASES["c_cli"] += 1
    path = write(workdir / "cli.csv", raw)
    try:
        with time_limit():
            load_dataset(str(path))
        loads = None
    except HandgradInputError as e:
        loads = str(e)
    code, out, err = run_cli(capsys, path)
    if loads is None:
        assert code == 0, err
        doc = json.loads(out)
        assert math.isfinite(doc["result"]["final_loss"]) and doc["result"]["stopped_reason"] == "epochs"
    else:
        assert code == 2 and out == ""
        assert one_line_error(err, path) == f"handgrad: error: --data{loads.removeprefix('name')}"


# --- (d) valid random tables train to a finite loss ------------------------------------------------

@fuzz(30)
@given(t=tables(max_rows=40, max_features=12), loss=st.sampled_from(["cross_entropy", "sse", "mse"]),
       engine=st.sampled_from(["fast", "reference"]), dtype=st.sampled_from([torch.float32, torch.float64]),
       batch=st.sampled_from(["full", "online", 4]))
def test_valid_table_trains_to_a_finite_loss(workdir, t, loss, engine, dtype, batch):
    CASES["d_train"] += 1
    path = write(workdir / "train.csv", render(t))
    with time_limit():
        try:
            d = load_dataset(str(path), dtype=dtype)
        except HandgradInputError as e:  # a standardised value beyond float32: test_valid_table_loads_exactly
            assert dtype == torch.float32 and "its standardised value is out of range" in str(e), str(e)
            assume(False)
        check_dataset(d, fraction=0.25, dtype=dtype)
        cfg = default_config(str(path), epochs=3, loss=loss, engine=engine, batch=batch, verify_every=7)
        result = train(build_net(cfg, d), d, cfg)
    assert result.stopped_reason == "epochs", result.message
    assert math.isfinite(result.final_loss) and all(math.isfinite(l) for _, l in result.history)
    assert result.failed_report is None


# --- a catalogue of named hostile files ------------------------------------------------------------

CATALOGUE = {  # name: (bytes, a regex the error message must match after "name (PATH...)", or None: loads)
    "empty": (b"", r"\): expected a CSV file with data rows, got an empty file$"),
    "blank lines only": (b"\n \r\n\t\r,,\n", r"\): expected a CSV file with data rows, got an empty file$"),
    "header only": (b"a,b,label\r\n", r"\): expected data rows after the header line, got none \(header only\)$"),
    "single column": (b"1\n2\n1\n2\n", r", line 1\): expected at least 2 fields .*, got 1 field$"),
    "one class": (b"1,0\n2,0\n", r"\): expected at least 2 data rows and 2 distinct class labels"),
    "1e308 loads": (b"1e308,0\n-1e308,1\n1.7976931348623157e308,0\n1e308,1\n", None),
    "5e-324 column loads (std below float64's range)": (b"0,0\n5e-324,0\n0,0\n5e-324,0\n0,1\n5e-324,1\n0,1\n5e-324,1\n",
                                                         None),
    "1e309": (b"1,0\n1e309,1\n", r", line 2\): expected a finite number in column 1, got '1e309'$"),
    "-1e400": (b"1,0\n2,1\n-1e400,1\n", r", line 3\): expected a finite number in column 1, got '-1e400'$"),
    "nan": (b"nan,0\n1,1\n", r", line 1\): expected a finite number in column 1, got 'nan'$"),
    "NaN": (b"1,0\nNaN,1\n", r", line 2\): expected a finite number in column 1, got 'NaN'$"),
    "inf": (b"x,y\n1,0\ninf,1\n", r", line 3\): expected a finite number in column 1, got 'inf'$"),
    "-Infinity label": (b"1,0\n2,-Infinity\n", r", line 2\): expected a finite number in column 2, got '-Infinity'$"),
    "negative labels load": (b"1,-1\n2,-2\n3,-1\n4,-2\n", None),
    "label 2.5": (b"1,0\n2,2.5\n", r", line 2\): expected an integer class label in column 2, got '2.5'$"),
    "label 1e20": (b"1,0\n2,1e20\n", r", line 2\): expected an integer class label in column 2 below 2\*\*53 in "
                                     r"magnitude, got '1e20'$"),
    "label 1e15 loads": (b"1,1e15\n2,0\n3,1e15\n4,0\n", None),
    "label out of range (handgrad header)": (b"2,1,no,yes\n1,0\n2,2\n",
                                             r", line 3\): expected a class index in 0\.\.1 in column 2 "
                                             r"\(2 classes: no, yes\), got '2'$"),
    "negative label (handgrad header)": (b"2,1,no,yes\n1,0\n2,-1\n", r", line 3\): expected a class index in 0\.\.1"),
    "non-UTF-8": (b"1,0\n2,1\n3\xe9,0\n", r", line 3\): expected UTF-8 text, got the byte 0xe9$"),
    "non-UTF-8 after CR line ends": (b"1,0\r2,1\r3\xff,0\r", r", line 3\): expected UTF-8 text, got the byte 0xff$"),
    "UTF-16": ("a,b\n1,0\n".encode("utf-16"), r", line 1\): expected UTF-8 text, got the byte 0xff$"),
    "NUL": (b"1,0\n2\x00,1\n", r", line 2\): expected a number in column 1, got '2\\x00'$"),
    "NUL alone": (b"1,0\n\x00\n", r", line 2\): expected 2 fields \(as the first line\), got 1 fields$"),
    "BOM CRLF loads": (b"\xef\xbb\xbfx,label\r\n1,0\r\n2,1\r\n3,0\r\n4,1\r\n", None),
    "BOM twice loads": (b"\xef\xbb\xbf\xef\xbb\xbf1,0\n2,1\n3,0\n4,1\n", None),
    "CR only loads": (b"1,0\r2,1\r3,0\r4,1", None),
    "long line": (b"1,0\n" + b"1" * 200_000 + b",1\n", r", line 2\): expected valid CSV, got field larger than field limit"),
    "long number loads": (b"1,0\n2,1\n0." + b"3" * 100_000 + b",0\n4,1\n", None),
    "arabic-indic digits": ("1,0\n\u0662,1\n".encode(), r", line 2\): expected a number in column 1 in plain ASCII"),
    "arabic-indic first row": ("\u0661,0\n2,1\n".encode(), r", line 1\): expected a number in column 1 in plain ASCII"),
    "underscores": (b"1,0\n1_000,1\n", r", line 2\): expected a number in column 1 in plain ASCII .*got '1_000'$"),
    "underscore label": (b"1,0\n2,1_0\n", r", line 2\): expected a number in column 2 in plain ASCII"),
    "fullwidth digit": ("1,0\n\uff12,1\n".encode(), r", line 2\): expected a number in column 1 in plain ASCII"),
    "em space": ("1,0\n2\u2003,1\n".encode(), r", line 2\): expected a number in column 1 in plain ASCII"),
    "whitespace field": (b"1,0\n  ,1\n", r", line 2\): expected a number in column 1, got '  '$"),
    "empty first field": (b"1,,0\n3,4,1\n", r", line 1\): expected a number in column 2, got ''$"),
    "spaces around numbers load": (b" 1 ,\t0\n2 , 1 \n 3,0\n4,1\n", None),
    "quoted fields load": (b'"1","0"\n"2",1\n3,"0"\n4,"1"\n', None),
    "quoted comma": (b'1,0\n"1,5",1\n', r", line 2\): expected a number in column 1, got '1,5'$"),
    "unterminated quote": (b'1,0\n"2,1\n3,0\n', r"expected (valid CSV|\d fields)"),
    "superscript count header": ("4,\u00b2,a,b\n1,0\n".encode(), r", line 2\): expected 4 fields \(as the header says\)"),
    "huge count header": (b"4,99999999999,a,b\n1,2,0\n2,1,1\n", r", line 2\): expected 100000000000 fields"),
    "5000-digit count header": (b"9" * 5000 + b",2,a,b\n1,2,0\n",
                                r", line 2\): expected 4 fields \(as the header says\), got 3 fields$"),
    "too many rows in header": (b"5,1,a,b\n1,0\n2,1\n3,0\n4,1\n", r", line 1\): expected 5 data rows as the header says"),
    "3000 columns load": ((",".join(["col"] * 3000) + "\n" + "\n".join(
        ",".join(str((r * 7 + c) % 11) for c in range(2999)) + f",{r % 2}" for r in range(8)) + "\n").encode(), None),
    "ragged 3000 columns": (("\n".join(",".join(["1"] * (3000 - (r == 3))) + f",{r % 2}" for r in range(6))).encode(),
                            r", line 4\): expected 3001 fields \(as the first line\), got 3000 fields$"),
}


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_catalogue(tmp_path, capsys, name):
    raw, pattern = CATALOGUE[name]
    path = write(tmp_path / "hostile.csv", raw)
    if pattern is None:
        d = load(path)
        check_dataset(d, fraction=0.25)
        code, out, err = run_cli(capsys, path)
        assert code == 0 and math.isfinite(json.loads(out)["result"]["final_loss"])
        return
    with pytest.raises(HandgradInputError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(f"name ({path}") and re.search(pattern, message[len(f"name ({path}"):]), message
    code, out, err = run_cli(capsys, path)
    assert code == 2 and one_line_error(err, path) == f"handgrad: error: --data{message.removeprefix('name')}"


def special_paths(tmp_path):
    """Paths that are not regular files (name: (path, message regex))."""
    (tmp_path / "dir.csv").mkdir()
    os.symlink(tmp_path / "gone.csv", tmp_path / "dangling.csv")
    os.symlink(tmp_path / "loop.csv", tmp_path / "loop.csv")
    os.mkfifo(tmp_path / "fifo.csv")
    newline = write(tmp_path / "new\nline.csv", b"1,0\n2,x\n")
    return {
        "directory": (tmp_path / "dir.csv", r"^name: expected a CSV file, got '.*dir\.csv' \(a directory\)$"),
        "missing": (tmp_path / "missing.csv", r"^name: expected an existing CSV file, got '.*' \(no such file\)$"),
        "broken symlink": (tmp_path / "dangling.csv", r"^name: expected an existing CSV file, got '.*dangling\.csv' "
                                                      r"\(a broken symbolic link\)$"),
        "symlink loop": (tmp_path / "loop.csv", r"^name: expected an existing CSV file, got '.*loop\.csv' \(.+\)$"),
        "fifo (would block forever)": (tmp_path / "fifo.csv", r"^name: expected a regular CSV file, got '.*' \(a FIFO\)$"),
        "/dev/zero (never ends)": (Path("/dev/zero"), r"^name: expected a regular CSV file, got '/dev/zero' "
                                                     r"\(a character device\)$"),
        "/dev/null": (Path("/dev/null"), r"\(a character device\)$"),
        "name too long": (tmp_path / ("x" * 300 + ".csv"), r"^name: expected an existing CSV file, got '.*' \(.+\)$"),
        "newline in the name": (newline, r"^name \(.*new\\nline\.csv, line 2\): expected a number in column 2, got 'x'$"),
        "file under a file": (newline / "x.csv", r"^name: expected an existing CSV file"),
    }


def test_special_paths(tmp_path, capsys):
    for name, (path, pattern) in special_paths(tmp_path).items():
        with pytest.raises(HandgradInputError, match=pattern):
            load(path)
        code, out, err = run_cli(capsys, path)
        assert code == 2 and out == "", name
        one_line_error(err, path)


def test_unreadable_file(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    path = write(tmp_path / "secret.csv", b"1,0\n2,1\n")
    path.chmod(0)
    with pytest.raises(HandgradInputError, match=r"expected a readable file"):
        load(path)
    assert run_cli(capsys, path)[0] == 2


# --- a few in real processes -----------------------------------------------------------------------

def test_real_process_exits_2_without_a_traceback(tmp_path):
    """The installed command: exit status 2 and one line on stderr, for files that used to raise a
    traceback (a huge label, a 10^11-column header) or hang (a FIFO).  (Each start imports torch: a few
    seconds, so the many other cases run in-process.)"""
    files = {
        "garbage": write(tmp_path / "garbage.csv", bytes(range(256)) * 3),
        "huge label": write(tmp_path / "label.csv", b"1,0\n2,1e20\n"),
        "huge header": write(tmp_path / "header.csv", b"4,99999999999,a,b\n1,2,0\n"),
        "fifo": tmp_path / "fifo.csv",
    }
    os.mkfifo(files["fifo"])
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for name, path in files.items():
        try:
            proc = subprocess.run([sys.executable, "-m", "handgrad", "train", "--data", str(path), "--epochs", "1"],
                                  cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{name}: hung")
        CASES["c_process"] += 1
        out, err = proc.stdout, proc.stderr
        assert proc.returncode == 2 and "Traceback" not in err and out == "", (name, err)
        one_line_error(err, files[name])
