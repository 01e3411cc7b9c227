"""Numerics at the extremes: saturated logistic and tanh units, saturated softmax cross-entropy.

Every expected value is either quoted (the issue's numbers) or computed here in float64 by the
test's own formula (``math``, written so that no exp can overflow), never by the library.  Every
check also runs with Python warnings turned into errors, and asserts that nothing is NaN or inf.
"""
import math
import warnings
from contextlib import contextmanager

import pytest
import torch

import handgrad
from handgrad import MLP, oracle
from handgrad.fast import FastStep
from handgrad.layers import Logistic, Tanh
from handgrad.losses import CrossEntropy, softmax


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


DTYPES = [torch.float32, torch.float64]
DTYPE_IDS = ["float32", "float64"]

# Relative tolerances against the float64 references, each with its reason:
# float64: the library's result is exp/sigmoid (<= 1 ulp) times at most three roundings
# (alpha * F * (1 - F)), a few ulp at eps 1.1e-16; 1e-12 leaves room for libm vs. vectorised exp and
# is still far below any wrong formula's error.
# float32: the same few roundings at eps 6e-8, plus the rounding of the float64 reference itself;
# 1e-6 is about 8 float32 ulp.
RTOL = {torch.float64: 1e-12, torch.float32: 1e-6}
# Below the smallest normal number a value carries only absolute precision: two units of the
# smallest subnormal (2^-1074 in float64, 2^-149 in float32) are the rounding of one or two ops.
SUBNORMAL_ATOL = {torch.float64: 2 * 2.0 ** -1074, torch.float32: 2 * 2.0 ** -149}


@contextmanager
def no_warnings():
    """Any Python warning raised inside becomes an error (so the test fails on it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_no_warnings_turns_a_warning_into_an_error():
    with pytest.raises(RuntimeWarning), no_warnings():
        warnings.warn("overflow encountered in exp", RuntimeWarning)


def F_ref(x: float, alpha: float = 1.0) -> float:
    """The logistic 1/(1+exp(-alpha x)) in float64, in the form whose exp cannot overflow."""
    u = alpha * x
    if u >= 0:
        return 1.0 / (1.0 + math.exp(-u))
    e = math.exp(u)  # <= 1; underflows to 0.0 (no exception) far below zero
    return e / (1.0 + e)


def dF_ref(x: float, alpha: float = 1.0) -> float:
    """F'(x) = alpha e^{-|u|} / (1 + e^{-|u|})^2, u = alpha x: symmetric in u, no overflow."""
    e = math.exp(-abs(alpha * x))
    return alpha * e / (1.0 + e) ** 2


def assert_close_to(got: torch.Tensor, ref: list, dtype, atol=None, what=""):
    """Element-wise |got - ref| <= rtol |ref| + atol, with ref in float64; got must be finite."""
    assert got.dtype == dtype
    g = got.detach().to(torch.float64).reshape(-1)
    assert bool(torch.isfinite(g).all()), f"{what}: non-finite values {g.tolist()}"
    r = torch.tensor(ref, dtype=torch.float64).reshape(-1)
    allowed = RTOL[dtype] * r.abs() + (SUBNORMAL_ATOL[dtype] if atol is None else atol)
    bad = (g - r).abs() > allowed
    assert not bool(bad.any()), (
        f"{what}: {int(bad.sum())} out of tolerance; at {bad.nonzero().reshape(-1).tolist()[:8]}: "
        f"got {g[bad].tolist()[:8]}, expected {r[bad].tolist()[:8]}")


def logistic_pair(z: torch.Tensor, alpha: float = 1.0):
    """The layer pair: F and F' (the backward pass of a gradient of ones)."""
    layer = Logistic(alpha)
    F, cache = layer.forward(z)
    dz, grads = layer.backward(torch.ones_like(F), cache)
    assert grads == {}
    return F, dz


# --- the quoted values (first the references, so the references themselves are checked) -------

def test_references_reproduce_the_quoted_values():
    # the issue quotes 4 (4.476e-309) or 5 (7.6676e-53, 3.0671e-52) significant digits
    assert F_ref(-1234.1) == 0.0 and dF_ref(-1234.1) == 0.0
    assert dF_ref(-710.0) == pytest.approx(4.476e-309, rel=1e-4)
    assert F_ref(-30.0, 4.0) == pytest.approx(7.6676e-53, rel=1e-4)
    assert dF_ref(-30.0, 4.0) == pytest.approx(3.0671e-52, rel=1e-4)
    # the symmetric form agrees with alpha F (1 - F) where both are exact enough
    for x in (-50.0, -3.0, -0.25, 0.0, 0.25, 3.0):
        assert dF_ref(x, 1.5) == pytest.approx(1.5 * F_ref(x, 1.5) * (1 - F_ref(x, 1.5)), rel=1e-13)


# Shapes: one element (scalar kernels) and 2 x 67 (vectorised kernels plus a tail).
SHAPES = [(1,), (2, 67)]


@pytest.mark.parametrize("shape", SHAPES, ids=["one", "2x67"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_logistic_far_from_zero_is_exactly_0_and_1_with_zero_derivative(dtype, shape):
    with no_warnings():
        F, dF = logistic_pair(torch.full(shape, -1234.1, dtype=dtype))
        assert torch.equal(F, torch.zeros(shape, dtype=dtype))   # e^-1234.1 ~ 1e-536: rounds to 0
        assert torch.equal(dF, torch.zeros(shape, dtype=dtype))
        F, dF = logistic_pair(torch.full(shape, 1234.1, dtype=dtype))
        assert torch.equal(F, torch.ones(shape, dtype=dtype))
        assert torch.equal(dF, torch.zeros(shape, dtype=dtype))
        F, dF = logistic_pair(torch.full(shape, -1234.1, dtype=dtype), alpha=4.0)
        assert torch.equal(F, torch.zeros(shape, dtype=dtype)) and torch.equal(dF, torch.zeros(shape, dtype=dtype))


@pytest.mark.parametrize("shape", SHAPES, ids=["one", "2x67"])
def test_logistic_derivative_at_minus_710_is_subnormal_not_zero_float64(shape):
    with no_warnings():
        F, dF = logistic_pair(torch.full(shape, -710.0, dtype=torch.float64))
    assert bool((dF > 0).all()), f"F'(-710) should be 4.476e-309, got {dF.reshape(-1)[0].item()}"
    assert_close_to(F, [F_ref(-710.0)] * F.numel(), torch.float64, what="F(-710)")
    assert_close_to(dF, [dF_ref(-710.0)] * dF.numel(), torch.float64, what="F'(-710)")
    assert float(dF.reshape(-1)[0]) == pytest.approx(4.476e-309, rel=1e-4)  # the quoted 4 digits


@pytest.mark.parametrize("shape", SHAPES, ids=["one", "2x67"])
def test_logistic_gain_4_at_minus_30_float64(shape):
    with no_warnings():
        F, dF = logistic_pair(torch.full(shape, -30.0, dtype=torch.float64), alpha=4.0)
    assert_close_to(F, [F_ref(-30.0, 4.0)] * F.numel(), torch.float64, what="F(-30), alpha 4")
    assert_close_to(dF, [dF_ref(-30.0, 4.0)] * dF.numel(), torch.float64, what="F'(-30), alpha 4")
    assert float(F.reshape(-1)[0]) == pytest.approx(7.6676e-53, rel=1e-4)   # the quoted 5 digits
    assert float(dF.reshape(-1)[0]) == pytest.approx(3.0671e-52, rel=1e-4)


# --- a sweep over the whole range ---------------------------------------------------------------------

# Node inputs x <= 0, across float32's and float64's underflow (exp(x) subnormal from -87.3 / -708.4,
# zero below -103.3 / -744.4) and the library's switch to exp(x) at alpha x = -40.
NEGATIVE = [-1234.1, -800.0, -745.5, -744.0, -740.0, -720.0, -710.0, -709.0, -700.0, -500.0, -120.0,
            -104.0, -103.0, -100.0, -95.0, -88.0, -87.0, -60.0, -40.5, -40.0, -39.5, -30.0, -17.0,
            -5.0, -1.0, -0.25, 0.0]
POSITIVE = [0.25, 1.0, 5.0, 10.0, 17.0, 30.0, 40.0, 100.0, 710.0, 1234.1, 1e4]


@pytest.mark.parametrize("alpha", [1.0, 4.0, 0.5])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_logistic_sweep_below_zero_is_relatively_exact(dtype, alpha):
    """For x <= 0 F is small and stored with full relative precision, and so is alpha F (1 - F)."""
    z = torch.tensor(NEGATIVE, dtype=dtype)
    with no_warnings():
        F, dF = logistic_pair(z, alpha)
    # the references, rounded to the dtype first (what the best possible result would be)
    F_exp = torch.tensor([F_ref(x, alpha) for x in NEGATIVE], dtype=torch.float64).to(dtype).double()
    dF_exp = torch.tensor([dF_ref(x, alpha) for x in NEGATIVE], dtype=torch.float64).to(dtype).double()
    assert_close_to(F, F_exp.tolist(), dtype, what=f"F, alpha {alpha}")
    assert_close_to(dF, dF_exp.tolist(), dtype, what=f"F', alpha {alpha}")
    # nothing that is representable was lost: F is 0 only where the rounded reference is 0
    assert torch.equal(F == 0, F_exp == 0) and torch.equal(dF == 0, dF_exp == 0)


@pytest.mark.parametrize("alpha", [1.0, 4.0, 0.5])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_logistic_sweep_above_zero(dtype, alpha):
    z = torch.tensor(POSITIVE, dtype=dtype)
    with no_warnings():
        F, dF = logistic_pair(z, alpha)
    eps = torch.finfo(dtype).eps
    assert_close_to(F, [F_ref(x, alpha) for x in POSITIVE], dtype, atol=eps, what="F")  # F ~ 1: ulp eps
    # F' is taken from the stored F, which rounds near 1: 1 - F carries an absolute error of up to a
    # few ulp of 1 (the sigmoid's own error plus the rounding), so alpha F (1 - F) is exact to 4 alpha eps.
    assert_close_to(dF, [dF_ref(x, alpha) for x in POSITIVE], dtype, atol=4 * alpha * eps, what="F'")
    assert bool((dF >= 0).all())


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_tanh_pair_far_from_zero(dtype):
    z = torch.tensor([-1e4, -1234.1, -710.0, -30.0, 30.0, 710.0, 1234.1, 1e4], dtype=dtype)
    with no_warnings():
        layer = Tanh()
        a, cache = layer.forward(z)
        da, _ = layer.backward(torch.ones_like(a), cache)
    assert torch.equal(a, torch.sign(z))          # |tanh(30)| = 1 - 1.75e-26: rounds to 1 in both
    assert torch.equal(da, torch.zeros_like(z))   # 1 - tanh^2 = 3.5e-26 or less: 0 from the stored 1


# --- the same through a whole network -------------------------------------------------------------------

def one_unit_net(alpha: float, dtype) -> MLP:
    """1-1 network, logistic output, W = 1, no bias: the output unit's node input is X itself."""
    net = MLP([1, 1], activation="logistic", alpha=alpha, loss="sse", bias=False, dtype=dtype, seed=0)
    net.params["W1"].fill_(1.0)
    return net


@pytest.mark.parametrize("alpha", [1.0, 4.0])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_mlp_output_and_delta_of_a_saturated_logistic_unit(dtype, alpha):
    """forward = F(x); with T = 1 the SSE's delta1 = (F - 1) F'(x), row by row."""
    xs = NEGATIVE + POSITIVE
    net = one_unit_net(alpha, dtype)
    X = torch.tensor(xs, dtype=dtype).reshape(-1, 1)
    T = torch.ones_like(X)
    with no_warnings():
        A = net.forward(X)
        loss, grads, deltas = net.loss_and_grads(X, T, return_deltas=True)
    F_exp = [F_ref(x, alpha) for x in xs]
    d_exp = [(F_ref(x, alpha) - 1.0) * dF_ref(x, alpha) for x in xs]
    neg = slice(0, len(NEGATIVE))
    assert_close_to(A[neg], F_exp[neg], dtype, what="forward, x <= 0")
    assert_close_to(deltas["delta1"][neg], d_exp[neg], dtype, what="delta1, x <= 0")
    eps = torch.finfo(dtype).eps
    pos = slice(len(NEGATIVE), None)
    assert_close_to(A[pos], F_exp[pos], dtype, atol=eps, what="forward, x > 0")  # as in the sweep
    assert_close_to(deltas["delta1"][pos], d_exp[pos], dtype, atol=4 * alpha * eps, what="delta1, x > 0")
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(grads["W1"]).all())


@pytest.mark.parametrize("x, alpha", [(-1234.1, 1.0), (-710.0, 1.0), (-30.0, 4.0), (-1234.1, 4.0)])
def test_mlp_weight_gradient_of_a_saturated_logistic_unit_float64(x, alpha):
    """dSSE/dW = x (F - 1) F'(x) for one pattern with T = 1: 3.18e-306 at x = -710, not NaN, not 0."""
    net = one_unit_net(alpha, torch.float64)
    with no_warnings():
        loss, grads = net.loss_and_grads(torch.tensor([x], dtype=torch.float64),
                                         torch.tensor([1.0], dtype=torch.float64))
    expected = x * (F_ref(x, alpha) - 1.0) * dF_ref(x, alpha)
    assert_close_to(grads["W1"], [expected], torch.float64, what="dW")
    assert_close_to(loss, [0.5 * (1.0 - F_ref(x, alpha)) ** 2], torch.float64, what="loss")
    assert (float(grads["W1"]) > 0) == (expected > 0)


# --- softmax cross-entropy on saturated logits -------------------------------------------------------------

def ce(z, t, dtype):
    """The hand loss pair on one batch: (softmax, loss, dloss/dz)."""
    Z = torch.tensor(z, dtype=dtype)
    T = torch.tensor(t, dtype=dtype)
    loss_fn = CrossEntropy()
    loss, cache = loss_fn.forward(Z, T)
    return softmax(Z), loss, loss_fn.backward(cache)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_cross_entropy_pair_on_saturated_logits(dtype):
    with no_warnings():
        P, loss, g = ce([[-10000.0, -10000.0]], [[1.0, 0.0]], dtype)
        assert torch.equal(P, torch.tensor([[0.5, 0.5]], dtype=dtype))
        assert loss.item() == pytest.approx(math.log(2), rel=RTOL[dtype])
        assert torch.equal(g, torch.tensor([[-0.5, 0.5]], dtype=dtype))
        # softmax(1000, 0) = (1 - e^-1000, e^-1000): (1, 0) after rounding, in both dtypes
        P, loss, g = ce([[1000.0, 0.0]], [[1.0, 0.0]], dtype)
        assert torch.equal(P, torch.tensor([[1.0, 0.0]], dtype=dtype))
        assert loss.item() == 0.0                                        # log(1 + e^-1000) rounds to 0
        assert torch.equal(g, torch.zeros(1, 2, dtype=dtype))
        P, loss, g = ce([[1000.0, 0.0]], [[0.0, 1.0]], dtype)
        assert loss.item() == 1000.0                                     # 1000 + log(1 + e^-1000)
        assert torch.equal(g, torch.tensor([[1.0, -1.0]], dtype=dtype))  # batch of one: mean = the row
        # a batch of two: the mean over the batch
        P, loss, g = ce([[1000.0, 0.0], [-10000.0, -10000.0]], [[0.0, 1.0], [1.0, 0.0]], dtype)
        assert loss.item() == pytest.approx((1000.0 + math.log(2)) / 2, rel=RTOL[dtype])
        assert torch.equal(g, torch.tensor([[0.5, -0.5], [-0.25, 0.25]], dtype=dtype))


# Logits whose difference overflows the dtype: the shifted logit is -inf, softmax is exactly (1, 0),
# and the loss of the winning class is 0 (log(1 + e^-huge) rounds to 0), not 0 * -inf = NaN.
HUGE = {torch.float32: 3e38, torch.float64: 1e308}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_cross_entropy_pair_when_the_logit_gap_overflows(dtype):
    h = HUGE[dtype]
    with no_warnings():
        P, loss, g = ce([[h, -h]], [[1.0, 0.0]], dtype)
    assert torch.equal(P, torch.tensor([[1.0, 0.0]], dtype=dtype))
    assert loss.item() == 0.0, f"loss {loss.item()} (expected 0: the winning class, exactly)"
    assert torch.equal(g, torch.zeros(1, 2, dtype=dtype))
    P, loss, g = ce([[h, -h]], [[0.0, 1.0]], dtype)
    assert loss.item() == math.inf  # the true loss 2h exceeds the dtype's largest number
    assert torch.equal(g, torch.tensor([[1.0, -1.0]], dtype=dtype))


def logits_net(dtype) -> MLP:
    """2-2 network, cross-entropy, W = I, no bias: the logits are X itself."""
    net = MLP([2, 2], activation="identity", loss="cross_entropy", bias=False, dtype=dtype, seed=0)
    net.params["W1"].copy_(torch.eye(2, dtype=dtype))
    return net


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_cross_entropy_mlp_and_oracle_on_saturated_logits(dtype):
    net = logits_net(dtype)
    X = torch.tensor([[1000.0, 0.0], [1000.0, 0.0], [-10000.0, -10000.0]], dtype=dtype)
    with no_warnings():
        P = net.forward(X)
        assert torch.equal(P, torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.5, 0.5]], dtype=dtype))
        for x, t, want_loss, want_delta in [
                ([1000.0, 0.0], 0, 0.0, [0.0, 0.0]),
                ([1000.0, 0.0], 1, 1000.0, [1.0, -1.0]),
                ([-10000.0, -10000.0], 0, math.log(2), [-0.5, 0.5])]:
            Xb = torch.tensor([x], dtype=dtype)
            for T in (torch.tensor([t]), torch.nn.functional.one_hot(torch.tensor([t]), 2).to(dtype)):
                for source, (loss, grads, deltas) in (
                        ("hand", net.loss_and_grads(Xb, T, return_deltas=True)),
                        ("oracle", oracle.loss_and_grads(net, Xb, T, return_deltas=True))):
                    what = f"{source}, logits {x}, target {t} ({T.dtype})"
                    assert loss.item() == pytest.approx(want_loss, rel=RTOL[dtype], abs=0), what
                    assert torch.equal(deltas["delta1"], torch.tensor([want_delta], dtype=dtype)), what
                    # dW = X^T delta: the logits times the delta, exactly
                    assert torch.equal(grads["W1"], Xb.t() @ torch.tensor([want_delta], dtype=dtype)), what
                    for v in (loss, *grads.values(), *deltas.values()):
                        assert bool(torch.isfinite(v).all()), what
        # and the check sees the hand path and the oracle agree on the whole batch
        report = handgrad.check(net, X, torch.tensor([0, 1, 0]))
        assert report.ok, str(report)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_cross_entropy_mlp_agrees_with_oracle_when_the_logit_gap_overflows(dtype):
    net = logits_net(dtype)
    h = HUGE[dtype]
    X = torch.tensor([[h, -h], [1.0, 2.0]], dtype=dtype)
    T = torch.tensor([0, 1])  # class indices: the oracle's F.cross_entropy picks the log-probability
    with no_warnings():
        loss, grads, deltas = net.loss_and_grads(X, T, return_deltas=True)
        loss_o = oracle.loss_and_grads(net, X, T)[0]
    true_loss = (0.0 + math.log1p(math.exp(-1.0))) / 2  # row 0: exactly 0; row 1: log(1 + e^-1)
    assert loss.item() == pytest.approx(true_loss, rel=RTOL[dtype])
    assert loss_o.item() == pytest.approx(true_loss, rel=RTOL[dtype])
    assert torch.equal(deltas["delta1"][0], torch.zeros(2, dtype=dtype))
    assert bool(torch.isfinite(grads["W1"]).all())


# --- a network in deep saturation still checks out ---------------------------------------------------------

def saturated_case(activation, loss, dtype, depth):
    """Inputs ~1e4 and weights in (-1, 1): every hidden pre-activation is far in saturation."""
    sizes = [3, 6, 2] if depth == 1 else [3, 6, 5, 2]
    net = MLP(sizes, activation=activation, alpha=2.0, loss=loss, dtype=dtype, seed=3,
              init="chapter")  # seeds 3 and 4: chosen so that the premise below holds
    if depth == 2:
        net.params["W2"].mul_(1e3)  # the second hidden layer's inputs are 0/1 or +-1: scale them up
    g = torch.Generator().manual_seed(4)
    X = ((torch.rand(8, 3, generator=g, dtype=torch.float64) * 2 - 1) * 1e4).to(dtype)
    T = torch.randint(0, 2, (8,), generator=g)
    return net, X, T


def hidden_node_inputs(net, X):
    """alpha z_k (logistic) or z_k (tanh) of every hidden layer, by the test's own float64 forward."""
    a, out = X.double(), []
    for k in range(1, net.n_layers):
        z = a @ net.params[f"W{k}"].double() + net.params[f"b{k}"].double()
        u = net.alpha * z if net.activation == "logistic" else z
        out.append(u)
        a = torch.sigmoid(u) if net.activation == "logistic" else torch.tanh(u)
    return torch.cat([u.reshape(-1) for u in out])


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("loss", ["sse", "cross_entropy"])
@pytest.mark.parametrize("activation", ["logistic", "tanh"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_saturated_network_has_finite_gradients_equal_to_the_oracle(dtype, activation, loss, depth):
    net, X, T = saturated_case(activation, loss, dtype, depth)
    # the premise: every hidden unit is saturated, F' < alpha e^-40 (logistic), 1 - tanh^2 < 4 e^-80 (tanh)
    assert float(hidden_node_inputs(net, X).abs().min()) > 40
    with no_warnings():
        report = handgrad.check(net, X, T)   # hand vs autograd, and (float64) vs finite differences
        hand = net.loss_and_grads(X, T, return_deltas=True)
        ref = oracle.loss_and_grads(net, X, T, return_deltas=True)
        fast = FastStep(net, eta=0.1).loss_and_grads(X, T, return_deltas=True)
        report_fast = handgrad.check(net, X, T, grads=fast[1], deltas=fast[2], fd=False)
    assert report.ok, str(report)
    assert report_fast.ok, str(report_fast)
    for name, (loss_v, grads, deltas) in (("hand", hand), ("oracle", ref), ("fast", fast)):
        for key, v in [("loss", loss_v), *grads.items(), *deltas.items()]:
            assert bool(torch.isfinite(v).all()), f"{name} {key}: {v}"
    # not a vacuous pass: the output layer's gradient is far from zero
    out_W = f"W{net.n_layers}"
    assert float(hand[1][out_W].abs().max()) > 1e-3
