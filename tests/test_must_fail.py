"""The checker can fail: each classic backprop mistake, injected into an independent manual backward
pass written here, is caught, and the failing rows name the tensor that is wrong.

The network is the chapter's kind (one hidden layer, logistic, SSE = 1/2 sum E^2, E = desired -
actual, no bias) with gain alpha = 2 so that dropping alpha changes the result, and a square 3x3
hidden->output matrix so that a transposed W2 in the back-propagation still has the right shape.
"""

import json

import pytest
import torch

from handgrad import MLP, check

ALPHA = 2.0
SIZES = [4, 3, 3]
BATCH = 8
DTYPES = [torch.float32, torch.float64]
DTYPE_IDS = ["float32", "float64"]
# Relative size of the one-element perturbation: ~1e4 ulp in each dtype, far above rounding noise
# yet small enough that only an element-wise comparison can see it.
PERTURB = {torch.float32: 1e-3, torch.float64: 1e-6}


def make_net(dtype):
    net = MLP(SIZES, activation="logistic", alpha=ALPHA, loss="sse", bias=False, dtype=dtype,
              seed=11, init="chapter")
    gen = torch.Generator().manual_seed(5)
    X = torch.randn(BATCH, SIZES[0], generator=gen, dtype=torch.float64).to(dtype)
    T = torch.rand(BATCH, SIZES[-1], generator=gen, dtype=torch.float64).to(dtype)
    return net, X, T


def manual_backward(net, X, T, *, hidden_alpha=True, output_alpha=True, output_factor=True,
                    transpose=False, flip_sign=False, batch_mean=False):
    """The chapter's backward pass, written out independently; each switch injects one mistake.

    Returns ``(grads, deltas)`` keyed like the hand path's (``W1``, ``W2``; ``delta1``, ``delta2``).
    """
    W1, W2 = net.params["W1"], net.params["W2"]
    a = net.alpha
    H = torch.sigmoid(a * (X @ W1))                       # hidden activations (Eq. 7.11)
    A = torch.sigmoid(a * (H @ W2))                       # outputs (Eq. 7.3)
    E = T - A                                             # desired - actual
    dA = E if flip_sign else -E                           # dSSE/dA = -E (Eq. 7.21, 7.22)
    out_deriv = (a if output_alpha else 1.0) * (A * (1 - A) if output_factor else 1.0)  # Eq. 7.5
    delta2 = dA * out_deriv
    back = delta2 @ (W2 if transpose else W2.t())         # sum over o of v_{h,o} delta_o (Eq. 7.24)
    delta1 = back * ((a if hidden_alpha else 1.0) * H * (1 - H))
    scale = 1.0 / X.shape[0] if batch_mean else 1.0      # the batch sum taken as a mean
    grads = {"W1": X.t() @ delta1 * scale, "W2": H.t() @ delta2 * scale}
    return grads, {"delta1": delta1, "delta2": delta2}


def failing(report):
    return {r.tensor for r in report.failures}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_correct_manual_backward_passes(dtype):
    net, X, T = make_net(dtype)
    grads, deltas = manual_backward(net, X, T)
    report = check(net, X, T, grads=grads, deltas=deltas)
    assert report.ok, str(report)
    if dtype == torch.float64:  # the finite-difference referee ran and agreed too
        assert {r.comparison for r in report.rows} == {"hand vs autograd", "hand vs fd", "autograd vs fd"}


FAULTS = {
    # fault: (switches, tensors that must fail)
    "alpha_dropped_hidden": (dict(hidden_alpha=False), {"W1", "delta1"}),
    "alpha_dropped_output": (dict(output_alpha=False), {"W1", "W2", "delta1", "delta2"}),
    "alpha_dropped_both": (dict(hidden_alpha=False, output_alpha=False), {"W1", "W2", "delta1", "delta2"}),
    "output_factor_dropped": (dict(output_factor=False), {"W1", "W2", "delta1", "delta2"}),
    "W2_transposed": (dict(transpose=True), {"W1", "delta1"}),
    "E_sign_flipped": (dict(flip_sign=True), {"W1", "W2", "delta1", "delta2"}),
    "batch_mean": (dict(batch_mean=True), {"W1", "W2"}),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("fault", list(FAULTS))
def test_wrong_formula_is_caught(fault, dtype):
    switches, expected = FAULTS[fault]
    net, X, T = make_net(dtype)
    grads, deltas = manual_backward(net, X, T, **switches)
    report = check(net, X, T, grads=grads, deltas=deltas)
    assert not report.ok
    assert failing(report) == expected, str(report)
    for r in report.failures:
        assert r.mismatched > 0 and r.max_abs_err > 0 and r.note == ""
    if dtype == torch.float64:
        # the referee sides with autograd: every wrong gradient also fails against finite
        # differences, while autograd vs fd passes everywhere
        for r in report.rows:
            if r.comparison == "hand vs fd":
                assert r.passed == (r.tensor not in expected), r
            if r.comparison == "autograd vs fd":
                assert r.passed, r


def test_faults_really_change_the_gradient():
    """Guard for the fault list: each switch must change what it claims (e.g. W2 is not symmetric)."""
    net, X, T = make_net(torch.float64)
    good_g, good_d = manual_backward(net, X, T)
    for fault, (switches, expected) in FAULTS.items():
        g, d = manual_backward(net, X, T, **switches)
        changed = {k for k in g if not torch.equal(g[k], good_g[k])}
        changed |= {k for k in d if not torch.equal(d[k], good_d[k])}
        assert changed == expected, fault


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", ["W1", "W2"])
def test_one_perturbed_element_is_caught(name, dtype):
    net, X, T = make_net(dtype)
    grads, deltas = manual_backward(net, X, T)
    g = grads[name].clone()
    flat = int(g.abs().argmax())  # the largest element, so the change is far above atol
    idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), g.shape))
    g[idx] = g[idx] * (1 + PERTURB[dtype])
    grads[name] = g
    report = check(net, X, T, grads=grads, deltas=deltas)
    assert not report.ok
    assert failing(report) == {name}, str(report)
    row = next(r for r in report.failures if r.comparison == "hand vs autograd")
    assert row.tensor == name and row.mismatched == 1 and row.worst_index == idx


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_wrong_shape_gradient_fails_readably(dtype):
    net, X, T = make_net(dtype)
    grads, deltas = manual_backward(net, X, T)
    grads["W1"] = grads["W1"].t().contiguous()  # (3, 4) instead of (4, 3)
    report = check(net, X, T, grads=grads, deltas=deltas)
    assert not report.ok
    assert failing(report) == {"W1"}
    (row,) = report.failures
    assert row.comparison == "hand vs autograd" and row.shape == (4, 3)
    assert row.note == "shape mismatch: got (3, 4), expected (4, 3)"
    text = str(report)
    assert "shape mismatch: got (3, 4), expected (4, 3)" in text
    assert "FAIL: W1 (hand vs autograd)" in text


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("missing", ["W2", "delta1"])
def test_missing_key_fails_readably(missing, dtype):
    net, X, T = make_net(dtype)
    grads, deltas = manual_backward(net, X, T)
    (grads if missing in grads else deltas).pop(missing)
    report = check(net, X, T, grads=grads, deltas=deltas)
    assert not report.ok
    assert failing(report) == {missing}
    (row,) = report.failures
    assert row.note == "missing"
    assert f"FAIL: {missing} (hand vs autograd)" in str(report)


def test_failed_report_text_and_json():
    net, X, T = make_net(torch.float64)
    grads, deltas = manual_backward(net, X, T, hidden_alpha=False)
    grads["W2"] = grads["W2"][:2]  # also a wrong shape, so non-finite errors reach the JSON
    report = check(net, X, T, grads=grads, deltas=deltas)
    text = str(report)
    assert "FAIL" in text and "W1" in text and "W2" in text and "delta1" in text
    assert text.splitlines()[-1].startswith("FAIL: ")
    assert "PASS" not in text

    def no_bare_constants(token):  # NaN / Infinity are not JSON
        raise AssertionError(f"non-standard JSON constant {token}")

    data = json.loads(report.to_json(), parse_constant=no_bare_constants)
    assert data["ok"] is False
    assert data == report.to_dict()
    assert set(data["failed"]) >= {"W1 (hand vs autograd)", "W2 (hand vs autograd)",
                                   "delta1 (hand vs autograd)"}
    by_name = {(r["tensor"], r["comparison"]): r for r in data["rows"]}
    assert by_name[("W1", "hand vs autograd")]["passed"] is False
    assert by_name[("delta2", "hand vs autograd")]["passed"] is True
    assert by_name[("W2", "hand vs autograd")]["note"].startswith("shape mismatch")


def test_passing_report_says_pass():
    """Control for the text test above: a correct gradient gives PASS and no FAIL."""
    net, X, T = make_net(torch.float64)
    grads, deltas = manual_backward(net, X, T)
    report = check(net, X, T, grads=grads, deltas=deltas)
    text = str(report)
    assert report.ok and "FAIL" not in text and text.splitlines()[-1].startswith("PASS")
    assert json.loads(report.to_json())["ok"] is True
