"""Tests of handgrad.data: shipped sets, split, standardisation, user CSVs, and every bad input."""

import gzip
import re
from pathlib import Path

import pytest
import torch

from handgrad import data
from handgrad.data import DATASETS, Dataset, load_dataset
from handgrad.errors import HandgradInputError

SHIPPED = {"iris": (150, 4, 3), "digits": (1797, 64, 10), "breast-cancer": (569, 30, 2)}


def raises(match, **kwargs):
    return pytest.raises(HandgradInputError, match=match, **kwargs)


def write(tmp_path, text, name="user.csv"):
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


# --- shipped data ------------------------------------------------------------------------------------

def test_datasets_tuple():
    assert DATASETS == ("xor", "letters", "iris", "digits", "breast-cancer")


def test_shipped_files_are_copies_of_shared_data():
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not shared.is_dir():
        pytest.skip("no shared/data next to the repository")
    for file in ("iris.csv", "breast_cancer.csv", "digits.csv.gz"):
        assert (data.DATA_DIR / file).read_bytes() == (shared / file).read_bytes()
    sources = (data.DATA_DIR / "SOURCES.md").read_text()
    for word in ("iris.csv", "digits.csv.gz", "breast_cancer.csv", "CC BY 4.0", "Maren", "XOR", "letters"):
        assert word in sources


@pytest.mark.parametrize("name", list(SHIPPED))
def test_shipped_shapes_and_classes(name):
    rows, features, classes = SHIPPED[name]
    d = load_dataset(name)
    assert isinstance(d, Dataset) and d.name == name and d.has_test_split
    assert d.n_features == features and d.n_classes == classes == len(d.class_names)
    assert len(d.y_train) + len(d.y_test) == rows
    assert d.X_train.shape == (len(d.y_train), features) and d.X_test.shape == (len(d.y_test), features)
    assert d.X_train.dtype == torch.float32 and d.y_train.dtype == torch.int64 and d.y_test.dtype == torch.int64
    assert set(torch.cat([d.y_train, d.y_test]).tolist()) == set(range(classes))
    assert "CC BY 4.0" in d.source and "\n" not in d.source
    assert d.mean.shape == (features,) and d.std.shape == (features,)


def test_class_names_and_counts():
    assert load_dataset("iris").class_names == ["setosa", "versicolor", "virginica"]
    assert load_dataset("digits").class_names == [str(i) for i in range(10)]
    bc = load_dataset("breast_cancer")  # underscore spelling accepted
    assert bc.name == "breast-cancer" and bc.class_names == ["malignant", "benign"]
    y = torch.cat([bc.y_train, bc.y_test])
    assert torch.bincount(y).tolist() == [212, 357]
    iris = load_dataset("iris")
    assert torch.bincount(torch.cat([iris.y_train, iris.y_test])).tolist() == [50, 50, 50]


def test_iris_first_row_raw_values():
    d = load_dataset("iris", standardize=False, dtype=torch.float64)
    X = torch.cat([d.X_train, d.X_test])
    assert [5.1, 3.5, 1.4, 0.2] in X.tolist()
    assert d.mean is None and d.std is None


# --- split -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(SHIPPED))
@pytest.mark.parametrize("fraction", [0.25, 0.1, 0.5])
def test_split_is_stratified(name, fraction):
    d = load_dataset(name, test_fraction=fraction)
    total = torch.bincount(torch.cat([d.y_train, d.y_test]), minlength=d.n_classes)
    test = torch.bincount(d.y_test, minlength=d.n_classes)
    for count, n_test in zip(total.tolist(), test.tolist()):
        assert n_test == max(round(fraction * count), 1)


def test_iris_split_sizes():
    d = load_dataset("iris")  # round(0.25 * 50) = 12 per class (round half to even)
    assert len(d.y_test) == 36 and len(d.y_train) == 114


def test_split_is_deterministic_and_seed_dependent():
    a = load_dataset("digits", seed=0, standardize=False)
    b = load_dataset("digits", seed=0, standardize=False)
    c = load_dataset("digits", seed=1, standardize=False)
    assert torch.equal(a.X_test, b.X_test) and torch.equal(a.y_test, b.y_test)
    assert torch.equal(a.X_train, b.X_train)
    assert not torch.equal(a.X_test, c.X_test)
    assert torch.bincount(a.y_test).tolist() == torch.bincount(c.y_test).tolist()


def test_split_partitions_the_rows():
    d = load_dataset("iris", standardize=False, dtype=torch.float64)
    rows = sorted(map(tuple, torch.cat([d.X_train, d.X_test]).tolist()))
    raw = (data.DATA_DIR / "iris.csv").read_text().splitlines()[1:]
    assert rows == sorted(tuple(float(v) for v in line.split(",")[:4]) for line in raw)


# --- standardisation ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(SHIPPED))
def test_standardised_with_training_statistics(name):
    raw = load_dataset(name, standardize=False, dtype=torch.float64)
    d = load_dataset(name, dtype=torch.float64)
    mean, std = raw.X_train.mean(0), raw.X_train.std(0, correction=0)
    std = torch.where(std == 0, torch.ones_like(std), std)
    assert torch.allclose(d.mean, mean) and torch.allclose(d.std, std)
    assert torch.allclose(d.X_train, (raw.X_train - mean) / std)
    assert torch.allclose(d.X_test, (raw.X_test - mean) / std)  # test uses the TRAIN statistics
    assert torch.allclose(d.X_train.mean(0), torch.zeros(d.n_features, dtype=torch.float64), atol=1e-10)
    varying = raw.X_train.std(0) > 0
    assert torch.allclose(d.X_train.std(0, correction=0)[varying], torch.ones(int(varying.sum()), dtype=torch.float64))
    # the test split's own statistics were not used: its mean is not (exactly) zero
    assert d.X_test.mean(0).abs().max() > 1e-3


def test_digits_constant_pixels_stay_finite():
    d = load_dataset("digits")
    assert torch.isfinite(d.X_train).all() and torch.isfinite(d.X_test).all()
    assert d.std[0] == 1 and (d.X_train[:, 0] == 0).all()  # pixel 0 is always blank


def test_dtype_and_float64():
    d = load_dataset("iris", dtype=torch.float64)
    assert d.X_train.dtype == d.X_test.dtype == d.mean.dtype == torch.float64
    assert load_dataset("iris", dtype="float64").X_train.dtype == torch.float64


# --- the chapter's data ------------------------------------------------------------------------------

def test_xor_as_the_chapter_gives():
    d = load_dataset("xor")
    assert not d.has_test_split and d.mean is None and d.std is None
    assert d.X_train.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert d.y_train.tolist() == [1, 0, 0, 1]
    assert d.class_names == ["XOR", "XNOR"]
    assert d.onehot(d.y_train).tolist() == [[0, 1], [1, 0], [1, 0], [0, 1]]
    assert d.X_test is d.X_train and d.y_test is d.y_train
    assert "Maren" in d.source


def test_letters_as_the_chapter_gives():
    d = load_dataset("letters")
    grids = {"X": "10001 01010 00100 01010 10001", "M": "10001 11011 10101 10001 10001",
             "N": "10001 11001 10101 10011 10001", "H": "10001 10001 11111 10001 10001",
             "A": "00100 01010 11111 10001 10001"}
    assert d.class_names == ["X", "M", "N", "H", "A"] and d.n_features == 25 and d.n_classes == 5
    assert d.X_train.tolist() == [[float(c) for c in g.replace(" ", "")] for g in grids.values()]
    assert d.y_train.tolist() == [0, 1, 2, 3, 4]
    assert not d.has_test_split and d.mean is None and d.X_test is d.X_train
    assert torch.equal(d.onehot(d.y_train), torch.eye(5))


def test_xor_standardize_on_request():
    d = load_dataset("xor", standardize=True, dtype=torch.float64)
    assert d.X_train.tolist() == [[-1, -1], [-1, 1], [1, -1], [1, 1]] and d.X_test is d.X_train


# --- onehot ------------------------------------------------------------------------------------------

def test_onehot():
    d = load_dataset("iris", dtype=torch.float64)
    t = d.onehot(torch.tensor([2, 0, 1]))
    assert t.dtype == torch.float64 and t.tolist() == [[0, 0, 1], [1, 0, 0], [0, 1, 0]]
    assert d.onehot(d.y_test).sum(1).eq(1).all()


def test_onehot_bad_input():
    d = load_dataset("iris")
    with raises(r"^y: expected class indices in 0\.\.2, got values from 0 to 3$"):
        d.onehot(torch.tensor([0, 3]))
    with raises(r"^y: expected a 1-D integer tensor"):
        d.onehot(torch.tensor([0.0, 1.0]))


# --- user CSV files ----------------------------------------------------------------------------------

def test_user_csv_without_header(tmp_path):
    path = write(tmp_path, "1,2,5\n2,3,7\n3,4,5\n4,5,7\n5,6,5.0\n6,7,7\n7,8,-1\n8,9,-1\n")
    d = load_dataset(str(path), dtype=torch.float64, standardize=False)
    assert d.class_names == ["-1", "5", "7"] and d.n_classes == 3 and d.n_features == 2
    assert d.has_test_split and len(d.y_test) == 3 and len(d.y_train) == 5  # 1 test row per class
    rows = dict(zip(map(tuple, torch.cat([d.X_train, d.X_test]).tolist()), torch.cat([d.y_train, d.y_test]).tolist()))
    assert rows == {(1, 2): 1, (2, 3): 2, (3, 4): 1, (4, 5): 2, (5, 6): 1, (6, 7): 2, (7, 8): 0, (8, 9): 0}
    assert d.name == str(path) and str(path) in d.source


def test_user_csv_with_header_and_gzip(tmp_path):
    text = "width,height,label\n1,2,0\n2,1,1\n3,3,0\n4,1,1\n"
    for path in (write(tmp_path, text), write(tmp_path, gzip.compress(text.encode()), "user.csv.gz")):
        d = load_dataset(path)  # a Path works as well as a str
        assert d.class_names == ["0", "1"] and d.n_features == 2
        assert len(d.y_train) + len(d.y_test) == 4 and d.mean is not None


def test_user_csv_crlf_bom_blank_lines(tmp_path):
    path = write(tmp_path, b"\xef\xbb\xbfa,b,y\r\n1,2,0\r\n\r\n3,4,1\r\n5,6,0\r\n7,8,1\r\n")
    assert load_dataset(path).n_features == 2


def test_user_csv_other_extension_if_it_exists(tmp_path):
    path = write(tmp_path, "1,0\n2,1\n3,0\n4,1\n", "points.txt")
    assert load_dataset(str(path)).n_classes == 2


def test_user_csv_in_handgrad_header_format(tmp_path):
    path = write(tmp_path, "4,2,no,yes\n1,2,0\n2,1,1\n3,3,0\n4,1,1\n")
    assert load_dataset(path).class_names == ["no", "yes"]
    shipped = load_dataset(data.DATA_DIR / "breast_cancer.csv")
    assert shipped.class_names == ["malignant", "benign"] and shipped.n_features == 30


# --- bad input ---------------------------------------------------------------------------------------

def test_unknown_name_lists_the_known_ones():
    with raises(r"^name: expected one of xor, letters, iris, digits, breast-cancer or a path .*, got 'irsi'$"):
        load_dataset("irsi")
    with raises(r"^name: expected one of"):
        load_dataset(None)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.csv"
    with raises(rf"^name: expected an existing CSV file, got '{re.escape(str(path))}' \(no such file\)$"):
        load_dataset(str(path))


def test_directory_is_not_a_file(tmp_path):
    with raises(r"^name: expected a CSV file, got .*\(a directory\)$"):
        load_dataset(tmp_path)


def test_empty_file(tmp_path):
    path = write(tmp_path, "")
    with raises(rf"^name \({re.escape(str(path))}\): expected a CSV file with data rows, got an empty file$"):
        load_dataset(path)
    with raises(r"an empty file"):
        load_dataset(write(tmp_path, "\n  \n", "blank.csv"))


def test_header_only(tmp_path):
    path = write(tmp_path, "a,b,label\n")
    with raises(rf"^name \({re.escape(str(path))}\): expected data rows after the header line, got none"):
        load_dataset(path)


def test_ragged_row(tmp_path):
    path = write(tmp_path, "1,2,0\n3,4,1\n5,1\n")
    with raises(rf"^name \({re.escape(str(path))}, line 3\): expected 3 fields \(as the first line\), got 2 fields$"):
        load_dataset(path)
    path = write(tmp_path, "x,y,label\n1,2,0\n3,4,5,1\n", "h.csv")
    with raises(r", line 3\): expected 3 fields \(as the header says\), got 4 fields$"):
        load_dataset(path)


def test_non_numeric_field(tmp_path):
    path = write(tmp_path, "x,y,label\n1,2,0\n3,abc,1\n")
    with raises(rf"^name \({re.escape(str(path))}, line 3\): expected a number in column 2, got 'abc'$"):
        load_dataset(path)


@pytest.mark.parametrize("text", ["nan", "inf", "-Infinity"])
def test_nan_inf_field(tmp_path, text):
    path = write(tmp_path, f"1,2,0\n3,{text},1\n5,6,0\n")
    with raises(rf"^name \(.*user\.csv, line 2\): expected a finite number in column 2, got '{text}'$"):
        load_dataset(path)


def test_non_integer_label(tmp_path):
    path = write(tmp_path, "1,2,0\n3,4,1.5\n")
    with raises(r", line 2\): expected an integer class label in column 3, got '1.5'$"):
        load_dataset(path)


def test_non_utf8(tmp_path):
    path = write(tmp_path, b"x,y,label\n1,2,0\n3,4,\xff\n")
    with raises(rf"^name \({re.escape(str(path))}, line 3\): expected UTF-8 text, got the byte 0xff$"):
        load_dataset(path)


def test_bad_gzip(tmp_path):
    path = write(tmp_path, b"not gzip at all", "broken.csv.gz")
    with raises(r"^name \(.*broken\.csv\.gz\): expected a readable file \(gzip"):
        load_dataset(path)


def test_fewer_than_two_classes(tmp_path):
    path = write(tmp_path, "1,2,3\n3,4,3\n5,6,3\n")
    with raises(r"^name \(.*\): expected at least 2 data rows and 2 distinct class labels, got 3 row\(s\), label\(s\) 3$"):
        load_dataset(path)


def test_fewer_than_two_rows(tmp_path):
    path = write(tmp_path, "a,b,y\n1,2,3\n")
    with raises(r"expected at least 2 data rows and 2 distinct class labels, got 1 row\(s\)"):
        load_dataset(path)


def test_only_single_row_classes_cannot_be_split(tmp_path):
    path = write(tmp_path, "1,2,0\n3,4,1\n")
    with raises(r"^name \(.*\): expected a class with at least 2 rows"):
        load_dataset(path)


def test_handgrad_header_counts_checked(tmp_path):
    path = write(tmp_path, "5,2,no,yes\n1,2,0\n2,1,1\n3,3,0\n4,1,1\n")
    with raises(r", line 1\): expected 5 data rows as the header says, got 4$"):
        load_dataset(path)
    path = write(tmp_path, "4,3,no,yes\n1,2,0\n2,1,1\n3,3,0\n4,1,1\n", "f.csv")
    with raises(r", line 2\): expected 4 fields \(as the header says\), got 3 fields$"):
        load_dataset(path)
    path = write(tmp_path, "4,2,no,yes\n1,2,0\n2,1,2\n3,3,0\n4,1,1\n", "g.csv")
    with raises(r", line 3\): expected a class index in 0\.\.1 in column 3 \(2 classes: no, yes\), got '2'$"):
        load_dataset(path)


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, float("nan"), "0.2", True, None])
def test_test_fraction_out_of_range(fraction):
    with raises(r"^test_fraction: expected a number strictly between 0 and 1, got "):
        load_dataset("iris", test_fraction=fraction)


def test_cuda_device_without_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with raises(r"^device: expected an available device, got 'cuda' \(no CUDA GPU is present\)$"):
        load_dataset("xor", device="cuda")
    with raises(r"^device: expected an available device, got 'cuda:1' \(no CUDA GPU is present\)$"):
        load_dataset("xor", device=torch.device("cuda", 1))


def test_bad_device_string():
    with raises(r"^device: expected a torch device such as 'cpu' or 'cuda', got 'gpu0'$"):
        load_dataset("xor", device="gpu0")


@pytest.mark.parametrize("dtype", [torch.int64, "float99", "nn", 3, None])
def test_unknown_dtype(dtype):
    with raises(r"^dtype: expected a floating torch dtype"):
        load_dataset("iris", dtype=dtype)


@pytest.mark.parametrize("seed", [1.5, "0", 2**70])
def test_bad_seed(seed):
    with raises(r"^seed: expected an integer"):
        load_dataset("iris", seed=seed)


def test_bad_standardize():
    with raises(r"^standardize: expected True, False or None, got 'yes'$"):
        load_dataset("iris", standardize="yes")


def test_errors_are_value_errors():
    with pytest.raises(ValueError):
        load_dataset("nothing-like-this")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cuda_device():
    d = load_dataset("digits", device="cuda", dtype=torch.float64)
    assert d.X_train.is_cuda and d.y_test.is_cuda and d.mean.is_cuda
    cpu = load_dataset("digits", dtype=torch.float64)
    assert torch.allclose(d.X_test.cpu(), cpu.X_test)
