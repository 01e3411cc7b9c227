"""Every bad input raises HandgradInputError (a ValueError) whose message names the argument and
says what came: ``ARGUMENT: expected ..., got ...``."""

import re

import pytest
import torch

from handgrad import MLP, HandgradInputError, check

N_IN, N_OUT, BATCH = 4, 3, 5


def raises(match):
    return pytest.raises(HandgradInputError, match=match)


def net(dtype=torch.float32, loss="sse"):
    return MLP([N_IN, 3, N_OUT], loss=loss, dtype=dtype, seed=0)


def data(dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(BATCH, N_IN, generator=gen).to(dtype)
    T = torch.rand(BATCH, N_OUT, generator=gen).to(dtype)
    return X, T


# Each entry point that takes (X, T) validates them the same way.
ENTRY_POINTS = {
    "loss_and_grads": lambda n, X, T: n.loss_and_grads(X, T),
    "loss_value": lambda n, X, T: n.loss_value(X, T),
    "check": lambda n, X, T: check(n, X, T),
}
ENTRIES = list(ENTRY_POINTS)


def test_error_is_a_value_error():
    assert issubclass(HandgradInputError, ValueError)


def test_valid_input_raises_nothing():
    """Control: the inputs the tests below spoil are accepted as they are."""
    X, T = data()
    n = net()
    for call in ENTRY_POINTS.values():
        call(n, X, T)
    n.forward(X)
    net(loss="cross_entropy").loss_and_grads(X, torch.tensor([0, 1, 2, 0, 2]))
    net(loss="cross_entropy").loss_and_grads(X, torch.softmax(T, dim=1))


# --- X ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("entry", ENTRIES)
def test_X_wrong_number_of_features(entry):
    _, T = data()
    with raises(r"^X: expected 4 features .*got shape \(5, 3\)$"):
        ENTRY_POINTS[entry](net(), torch.randn(BATCH, 3), T)


def test_X_one_pattern_wrong_number_of_features():
    with raises(r"^X: expected 4 features .*got shape \(6,\)$"):
        net().loss_and_grads(torch.randn(6), torch.rand(N_OUT))
    with raises(r"^X: expected 4 features .*got shape \(6,\)$"):
        net().forward(torch.randn(6))


@pytest.mark.parametrize("X,kind", [([[0.0] * N_IN] * BATCH, "list"),
                                    (((0.0,) * N_IN,), "tuple"),
                                    (torch.zeros(BATCH, N_IN).numpy(), "ndarray"),
                                    (None, "NoneType")], ids=["list", "tuple", "ndarray", "None"])
def test_X_not_a_tensor(X, kind):
    _, T = data()
    with raises(rf"^X: expected a torch.Tensor, got {kind}$"):
        net().loss_and_grads(X, T)
    with raises(rf"^X: expected a torch.Tensor, got {kind}$"):
        net().forward(X)


@pytest.mark.parametrize("shape", [(2, BATCH, N_IN), ()], ids=["3d", "0d"])
def test_X_wrong_number_of_dimensions(shape):
    _, T = data()
    want = re.escape(f"got shape {shape}")
    with raises(rf"^X: expected shape \(batch, 4\) or \(4,\), {want}$"):
        net().loss_and_grads(torch.zeros(shape), T)
    with raises(rf"^X: expected shape \(batch, 4\) or \(4,\), {want}$"):
        net().forward(torch.zeros(shape))


@pytest.mark.parametrize("entry", ENTRIES)
def test_empty_batch(entry):
    with raises(r"^X: expected a non-empty batch, got shape \(0, 4\)$"):
        ENTRY_POINTS[entry](net(), torch.zeros(0, N_IN), torch.zeros(0, N_OUT))


def test_empty_batch_forward():
    with raises(r"^X: expected a non-empty batch, got shape \(0, 4\)$"):
        net().forward(torch.zeros(0, N_IN))


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("x_dtype,p_dtype", [(torch.float64, torch.float32), (torch.float32, torch.float64)],
                         ids=["X64-params32", "X32-params64"])
def test_X_dtype_differs_from_params(entry, x_dtype, p_dtype):
    X, T = data(p_dtype)
    p_name, x_name = str(p_dtype)[6:], str(x_dtype)[6:]
    with raises(rf"^X: expected dtype {p_name} \(the parameters' dtype\), got \(5, 4\) {x_name} on cpu$"):
        ENTRY_POINTS[entry](net(p_dtype), X.to(x_dtype), T)


def test_X_dtype_differs_from_params_forward():
    with raises(r"^X: expected dtype float32 .*got \(5, 4\) float64 on cpu$"):
        net().forward(data(torch.float64)[0])


@pytest.mark.parametrize("value,shown", [(float("nan"), "nan"), (float("inf"), "inf"),
                                         (float("-inf"), "-inf")], ids=["nan", "inf", "-inf"])
def test_X_not_finite_names_the_index(value, shown):
    X, T = data()
    X[3, 2] = value
    with raises(rf"^X: expected finite values, got {shown} at index \(3, 2\)$"):
        net().loss_and_grads(X, T)
    with raises(rf"^X: expected finite values, got {shown} at index \(3, 2\)$"):
        net().forward(X)
    x = data()[0][0]
    x[1] = value
    with raises(rf"^X: expected finite values, got {shown} at index \(1,\)$"):
        net().loss_and_grads(x, T[0])


# --- T ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("shape", [(BATCH, N_OUT + 1), (BATCH - 1, N_OUT), (N_OUT,), (BATCH, N_OUT, 1)],
                         ids=["too-many-outputs", "wrong-batch", "1d-for-a-batch", "3d"])
def test_T_shape_does_not_fit(entry, shape):
    X, _ = data()
    want = re.escape(f"got shape {shape}")
    with raises(rf"^T: expected shape \(5, 3\) \(one row of 3 desired outputs per pattern\), {want}$"):
        ENTRY_POINTS[entry](net(), X, torch.rand(shape))


def test_T_shape_for_one_pattern():
    X, _ = data()
    with raises(r"^T: expected shape \(3,\) .*got shape \(1, 3\)$"):
        net().loss_and_grads(X[0], torch.rand(1, N_OUT))


@pytest.mark.parametrize("loss", ["sse", "cross_entropy"])
def test_class_index_shape_does_not_fit(loss):
    X, _ = data()
    with raises(r"^T: expected class indices of shape \(5,\), got shape \(4,\)$"):
        net(loss=loss).loss_and_grads(X, torch.zeros(BATCH - 1, dtype=torch.long))
    with raises(r"^T: expected class indices of shape \(\), got shape \(1,\)$"):
        net(loss=loss).loss_and_grads(X[0], torch.zeros(1, dtype=torch.long))


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("loss", ["sse", "cross_entropy"])
@pytest.mark.parametrize("label", [-1, N_OUT, 100], ids=["negative", "n_out", "large"])
def test_class_label_out_of_range(entry, loss, label):
    X, _ = data()
    T = torch.tensor([0, 1, label, 2, 0])
    with raises(rf"^T: expected class labels in 0\.\.2 \(3 outputs\), got label {label}$"):
        ENTRY_POINTS[entry](net(loss=loss), X, T)


def test_class_label_out_of_range_one_pattern():
    X, _ = data()
    with raises(r"^T: expected class labels in 0\.\.2 .*got label 3$"):
        net(loss="cross_entropy").loss_and_grads(X[0], torch.tensor(3))


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("t_dtype,p_dtype", [(torch.float64, torch.float32), (torch.float32, torch.float64),
                                             (torch.float16, torch.float32)],
                         ids=["T64-params32", "T32-params64", "T16-params32"])
def test_T_dtype_differs_from_params(entry, t_dtype, p_dtype):
    X, T = data(p_dtype)
    p_name, t_name = str(p_dtype)[6:], str(t_dtype)[6:]
    with raises(rf"^T: expected dtype {p_name} \(the parameters' dtype\), got \(5, 3\) {t_name} on cpu$"):
        ENTRY_POINTS[entry](net(p_dtype), X, T.to(t_dtype))


def test_T_bool_is_neither_rows_nor_indices():
    X, _ = data()
    with raises(r"^T: expected float desired outputs or integer class indices, got \(5,\) bool on cpu$"):
        net().loss_and_grads(X, torch.zeros(BATCH, dtype=torch.bool))


def test_T_not_a_tensor():
    X, _ = data()
    with raises(r"^T: expected a torch.Tensor, got list$"):
        net().loss_and_grads(X, [[0.0] * N_OUT] * BATCH)


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("value,shown", [(float("nan"), "nan"), (float("inf"), "inf"),
                                         (float("-inf"), "-inf")], ids=["nan", "inf", "-inf"])
def test_T_not_finite_names_the_index(entry, value, shown):
    X, T = data()
    T[4, 1] = value
    with raises(rf"^T: expected finite values, got {shown} at index \(4, 1\)$"):
        ENTRY_POINTS[entry](net(), X, T)


def test_T_not_finite_one_pattern():
    X, T = data()
    t = T[0].clone()
    t[2] = float("nan")
    with raises(r"^T: expected finite values, got nan at index \(2,\)$"):
        net().loss_and_grads(X[0], t)


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("rows", [
    [[0.5, 0.4, 0.0]] * BATCH,                         # sums 0.9
    [[1.0, 1.0, 0.0]] * BATCH,                         # two ones: sums 2
    [[1.5, -0.5, 0.0]] * BATCH,                        # sums 1 but has a negative entry
    [[1.0, 0.0, 0.0]] * (BATCH - 1) + [[0.0, 0.0, 0.0]],  # one all-zero row among one-hot rows
], ids=["sum-0.9", "sum-2", "negative", "one-zero-row"])
def test_cross_entropy_rows_must_be_distributions(entry, rows):
    X, _ = data()
    with raises(r"^T: expected one-hot \(or probability\) rows, non-negative and summing to 1, "
                r"for cross_entropy, got row \d+ = \["):
        ENTRY_POINTS[entry](net(loss="cross_entropy"), X, torch.tensor(rows))


# --- constructor arguments ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["sigmoid", "softmax", "Logistic", ""])
def test_unknown_activation(name):
    with raises(rf"^activation: expected one of logistic, tanh, relu, identity, got {re.escape(repr(name))}$"):
        MLP([N_IN, 3, N_OUT], activation=name)


@pytest.mark.parametrize("name", ["sigmoid", "softmax"])
def test_unknown_output_activation(name):
    # The message must name the argument the caller got wrong: output_activation, not activation.
    with raises(rf"^output_activation: expected one of logistic, tanh, relu, identity, got {repr(name)}$"):
        MLP([N_IN, 3, N_OUT], output_activation=name)


@pytest.mark.parametrize("name", ["nll", "SSE", "cross-entropy"])
def test_unknown_loss(name):
    with raises(rf"^loss: expected one of sse, mse, cross_entropy, got {re.escape(repr(name))}$"):
        MLP([N_IN, 3, N_OUT], loss=name)


@pytest.mark.parametrize("alpha,shown", [(0, "0"), (0.0, "0.0"), (-1.5, "-1.5"), (float("nan"), "nan"),
                                         (float("inf"), "inf")], ids=["0", "0.0", "negative", "nan", "inf"])
def test_alpha_not_positive_finite(alpha, shown):
    with raises(rf"^alpha: expected a finite number > 0, got {shown}$"):
        MLP([N_IN, 3, N_OUT], alpha=alpha)


def test_alpha_not_a_number():
    with raises(r"^alpha: expected a positive number, got 'big'$"):
        MLP([N_IN, 3, N_OUT], alpha="big")


@pytest.mark.parametrize("sizes", [[], [4], (4,)], ids=["empty", "one", "tuple-one"])
def test_sizes_fewer_than_two(sizes):
    with raises(r"^sizes: expected at least two entries \(an input and an output width\), got \[4?\]$"):
        MLP(sizes)


@pytest.mark.parametrize("sizes", [[4, 0, 2], [4, -3, 2], [0, 3], [4, 3, 0]],
                         ids=["zero-hidden", "negative-hidden", "zero-input", "zero-output"])
def test_sizes_zero_or_negative_width(sizes):
    with raises(rf"^sizes: expected positive widths, got {re.escape(repr(sizes))}$"):
        MLP(sizes)


def test_sizes_fractional_width():
    with raises(r"^sizes: expected integer widths, got \[4, 2\.5, 2\]$"):
        MLP([4, 2.5, 2])


@pytest.mark.parametrize("sizes", [[4, "three", 2], [4, None, 2], 4, None], ids=["str", "None-width", "int", "None"])
def test_sizes_not_integers(sizes):
    with raises(rf"^sizes: expected a list of positive integer widths like \[4, 3, 2\], got {re.escape(repr(sizes))}$"):
        MLP(sizes)


@pytest.mark.parametrize("dtype", ["float8", "float", "int32", torch.int64, torch.complex64, None],
                         ids=["float8", "float", "int32", "torch.int64", "torch.complex64", "None"])
def test_unknown_dtype(dtype):
    with raises(rf"^dtype: expected one of float32, float64, float16, bfloat16, got {re.escape(repr(dtype))}$"):
        MLP([N_IN, 3, N_OUT], dtype=dtype)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda")], ids=["cuda", "cuda:0", "torch.device"])
def test_cuda_without_gpu(device):
    with raises(r"^device: expected an available device, got 'cuda(:0)?' \(no CUDA GPU is present\)$"):
        MLP([N_IN, 3, N_OUT], device=device)


@pytest.mark.parametrize("device", ["tpu", "gpu", 3.5])
def test_unknown_device(device):
    with raises(r"^device: expected 'cpu'"):
        MLP([N_IN, 3, N_OUT], device=device)


def test_unknown_init():
    with raises(r"^init: expected 'glorot' or 'chapter', got 'he'$"):
        MLP([N_IN, 3, N_OUT], init="he")
