"""The hand-written backward pass agrees with the autograd oracle over a matrix of networks.

Every combination of depth (1-3 hidden layers), hidden activation, loss, bias, batch shape
(1, 16, one 1-D pattern), dtype and target kind (class indices or float rows) is compared tensor by
tensor: the loss, every gradient and every delta dloss/dz_k.  A float64 subset also runs the
finite-difference referee, which must give a "hand vs fd" and an "autograd vs fd" row for every
parameter.  Widths are small so the whole matrix runs in a few seconds.
"""

import pytest
import torch

from handgrad import MLP, check, oracle

# Hidden widths for depths 1-3; 3 inputs, 3 outputs (3 classes for cross-entropy).
N_IN, N_OUT = 3, 3
HIDDEN = [5, 4, 3]

# (activation, alpha): logistic at the chapter's gain 1 and at a gain where dropping alpha matters.
ACTIVATIONS = [("logistic", 1.0), ("logistic", 2.5), ("tanh", 1.0), ("relu", 1.0), ("identity", 1.0)]
ACT_IDS = ["logistic-a1", "logistic-a2.5", "tanh", "relu", "identity"]
LOSSES = ["sse", "mse", "cross_entropy"]
BATCHES = [1, 16, "1d"]  # "1d": X is one pattern of shape (N_IN,)
DTYPES = [torch.float32, torch.float64]

# Explicit tolerances for hand vs autograd, by dtype: (rtol, atol).
TOL = {
    # float32 (eps 1.2e-7): the two paths round sums of <= 16 O(1) terms in a different order, so
    # they may differ by a few ulp of the largest term; 1e-5 is ~100 ulp and far below any real bug.
    torch.float32: (1e-5, 1e-5),
    # float64 (eps 2.2e-16): same argument, ~100 ulp of the largest O(1-10) term.
    torch.float64: (1e-10, 1e-12),
}

CUDA = pytest.param(
    "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU present"))
DEVICES = ["cpu", CUDA]


def make_case(depth, activation, alpha, loss, bias, batch, dtype, device, t_kind, seed=0):
    """A network and (X, T) on ``device``; ``t_kind`` is "index" (class indices) or "rows"."""
    sizes = [N_IN] + HIDDEN[:depth] + [N_OUT]
    net = MLP(sizes, activation=activation, alpha=alpha, loss=loss, bias=bias, dtype=dtype,
              device=device, seed=seed, init="chapter")
    gen = torch.Generator().manual_seed(1000 + seed)
    n = 1 if batch == "1d" else batch
    X = torch.randn(n, N_IN, generator=gen, dtype=torch.float64)
    if t_kind == "index":
        T = torch.randint(0, N_OUT, (n,), generator=gen)
    elif loss == "cross_entropy":  # probability rows (each sums to 1), not only one-hot
        T = torch.softmax(torch.randn(n, N_OUT, generator=gen, dtype=torch.float64), dim=1)
    else:
        T = torch.rand(n, N_OUT, generator=gen, dtype=torch.float64)
    if batch == "1d":
        X, T = X[0], T[0]  # X (N_IN,); T (N_OUT,) or a 0-d class index
    X = X.to(dtype).to(device)
    T = (T.to(dtype) if T.dtype.is_floating_point else T).to(device)
    return net, X, T


def assert_agree(got, ref, dtype, what):
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(got, ref, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("t_kind", ["index", "rows"])
@pytest.mark.parametrize("batch", BATCHES, ids=["b1", "b16", "x1d"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation,alpha", ACTIVATIONS, ids=ACT_IDS)
@pytest.mark.parametrize("depth", [1, 2, 3], ids=["h1", "h2", "h3"])
def test_hand_matches_autograd(depth, activation, alpha, loss, bias, batch, t_kind, dtype, device):
    net, X, T = make_case(depth, activation, alpha, loss, bias, batch, dtype, device, t_kind)
    loss_h, grads_h, deltas_h = net.loss_and_grads(X, T, return_deltas=True)
    loss_o, grads_o, deltas_o = oracle.loss_and_grads(net, X, T, return_deltas=True)

    assert loss_h.shape == () and loss_h.dtype == dtype and loss_h.device.type == device
    assert_agree(loss_h, loss_o, dtype, "loss")

    assert list(grads_h) == list(net.params) == list(grads_o)
    for name, p in net.params.items():
        assert grads_h[name].shape == p.shape, name
        assert grads_h[name].dtype == dtype and grads_h[name].device == p.device, name
        assert_agree(grads_h[name], grads_o[name], dtype, name)

    L = len(net.sizes) - 1
    assert list(deltas_h) == [f"delta{k}" for k in range(1, L + 1)] == list(deltas_o)
    for k in range(1, L + 1):
        want = (net.sizes[k],) if batch == "1d" else (X.shape[0], net.sizes[k])
        assert tuple(deltas_h[f"delta{k}"].shape) == want, f"delta{k}"
        assert_agree(deltas_h[f"delta{k}"], deltas_o[f"delta{k}"], dtype, f"delta{k}")

    # The checker's own verdict (finite differences are covered by the float64 test below).
    report = check(net, X, T, fd=False)
    assert report.ok, str(report)
    assert {r.tensor for r in report.rows} == {"loss", *net.params, *deltas_h}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("t_kind", ["index", "rows"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation,alpha", ACTIVATIONS, ids=ACT_IDS)
def test_float64_three_way_agreement(activation, alpha, loss, t_kind, device):
    """hand, autograd and float64 central finite differences all agree, for every parameter."""
    net, X, T = make_case(2, activation, alpha, loss, True, 4, torch.float64, device, t_kind, seed=3)
    report = check(net, X, T)  # fd="auto": on in float64
    assert report.ok, str(report)
    for name in net.params:
        comparisons = [r.comparison for r in report.rows if r.tensor == name]
        assert comparisons.count("hand vs autograd") == 1, name
        assert comparisons.count("hand vs fd") == 1, name
        assert comparisons.count("autograd vs fd") == 1, name
    for r in report.rows:
        if r.comparison.endswith("vs fd"):
            # every element compared (the network is far below the 5000-parameter subset limit)
            assert r.n_compared == net.params[r.tensor].numel(), r.tensor


@pytest.mark.parametrize("t_kind", ["index", "rows"])
def test_float64_three_way_one_pattern(t_kind):
    """The referee also handles a 1-D X with a 1-D T or a 0-d class index."""
    net, X, T = make_case(1, "logistic", 2.5, "cross_entropy", True, "1d", torch.float64, "cpu", t_kind)
    report = check(net, X, T)
    assert report.ok, str(report)
    assert {r.comparison for r in report.rows} == {"hand vs autograd", "hand vs fd", "autograd vs fd"}


@pytest.mark.parametrize("output_activation", ["identity", "logistic", "tanh"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_distinct_output_activation(output_activation, dtype):
    """A hidden activation different from the output one (e.g. a linear output node)."""
    net = MLP([N_IN, 5, 4, N_OUT], activation="relu", output_activation=output_activation,
              loss="sse", dtype=dtype, seed=7, init="chapter")
    gen = torch.Generator().manual_seed(7)
    X = torch.randn(8, N_IN, generator=gen, dtype=dtype)
    T = torch.rand(8, N_OUT, generator=gen, dtype=dtype)
    loss_h, grads_h, deltas_h = net.loss_and_grads(X, T, return_deltas=True)
    loss_o, grads_o, deltas_o = oracle.loss_and_grads(net, X, T, return_deltas=True)
    assert_agree(loss_h, loss_o, dtype, "loss")
    for name in grads_o:
        assert_agree(grads_h[name], grads_o[name], dtype, name)
    for name in deltas_o:
        assert_agree(deltas_h[name], deltas_o[name], dtype, name)
    assert check(net, X, T).ok


def test_chapter_net_by_hand():
    """The chapter's 4-3-2 logistic SSE net on one pattern, against Eq. 7.1-7.24 written out."""
    net = MLP([4, 3, 2], activation="logistic", alpha=1.0, loss="sse", bias=False,
              dtype=torch.float64, seed=0, init="chapter")
    x = torch.tensor([0.1, 0.9, 0.2, 0.7], dtype=torch.float64)
    t = torch.tensor([1.0, 0.0], dtype=torch.float64)
    w, v = net.params["W1"], net.params["W2"]
    H = torch.sigmoid(x @ w)                       # Eq. 7.11
    A = torch.sigmoid(H @ v)                       # Eq. 7.3
    E = t - A                                      # desired - actual
    delta_o = -E * A * (1 - A)                     # Eq. 7.21, 7.22, 7.5
    delta_h = (v @ delta_o) * H * (1 - H)          # Eq. 7.24
    loss, grads, deltas = net.loss_and_grads(x, t, return_deltas=True)
    # float64, 4-3-2 net: the two evaluations differ only in rounding order of <= 4-term sums.
    tol = dict(rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(loss, 0.5 * (E * E).sum(), **tol)
    torch.testing.assert_close(grads["W2"], torch.outer(H, delta_o), **tol)
    torch.testing.assert_close(grads["W1"], torch.outer(x, delta_h), **tol)
    torch.testing.assert_close(deltas["delta2"], delta_o, **tol)
    torch.testing.assert_close(deltas["delta1"], delta_h, **tol)
