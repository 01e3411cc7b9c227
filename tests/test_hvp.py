"""H v (Pearlmutter's R-operator) and G v (generalised Gauss-Newton), by hand, against autograd and
float64 finite differences; their algebra (linearity, symmetry, G = H where it must be, G psd); the
check's power (each dropped term is caught and named); bad v; no autograd in the hand path."""

import pytest
import torch

from handgrad import MLP, HandgradInputError, oracle
from handgrad.hvp import gauss_newton, hvp, hvp_report
from handgrad.per_sample import per_sample_grads

ACTS = [("logistic", 1.0), ("logistic", 2.5), ("tanh", 1.0), ("relu", 1.0), ("identity", 1.0)]
ACT_IDS = ["logistic1", "logistic2.5", "tanh", "relu", "identity"]
LOSSES = ["sse", "mse", "cross_entropy"]
HIDDEN = {1: [4], 2: [4, 5], 3: [4, 5, 4]}
BATCH = 5
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


def make(activation="tanh", alpha=1.0, loss="sse", bias=True, depth=2, dtype=torch.float64,
         device="cpu", seed=0, batch=BATCH, n_in=3, n_out=3):
    sizes = [n_in] + HIDDEN.get(depth, []) + [n_out] if depth else [n_in, n_out]
    net = MLP(sizes, activation=activation, alpha=alpha, loss=loss, bias=bias, dtype=dtype,
              device=device, seed=seed, init="chapter")
    gen = torch.Generator().manual_seed(seed + 100)
    X = torch.randn(batch, n_in, generator=gen, dtype=torch.float64).to(device, dtype)
    if loss == "cross_entropy":
        T = torch.randint(0, n_out, (batch,), generator=gen).to(device)
    else:
        T = torch.rand(batch, n_out, generator=gen, dtype=torch.float64).to(device, dtype)
    return net, X, T


def rand_v(net, seed=1, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return {k: (scale * torch.randn(p.shape, generator=gen, dtype=torch.float64)).to(p.device, p.dtype)
            for k, p in net.params.items()}


def dot(a, b):
    return sum(float((a[k].double() * b[k].double()).sum()) for k in a)


def failing(report):
    return {r.tensor for r in report.failures}


# --- agreement: every activation, loss, bias, depth ----------------------------------------------

@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_hv_and_gv_agree_with_autograd_and_fd(dtype, act, loss, bias, depth):
    net, X, T = make(act[0], act[1], loss, bias, depth, dtype)
    v = rand_v(net)
    for gn in (False, True):
        report = hvp_report(net, X, T, v, gauss_newton=gn)
        assert report.ok, str(report)
        comps = {r.comparison.split(": ", 1)[-1] for r in report.rows}
        assert {"hand vs fd", "autograd vs fd"} <= comps
        names = {r.tensor for r in report.rows}
        assert set(net.params) <= names and {f"Rz{k}" for k in range(1, depth + 2)} <= names
        if not gn:
            assert {f"Rdelta{k}" for k in range(1, depth + 2)} <= names


@pytest.mark.parametrize("loss", LOSSES)
def test_other_target_forms_and_one_pattern(loss):
    net, X, _ = make("logistic", 2.5, loss)
    v = rand_v(net)
    labels = torch.tensor([0, 2, 1, 1, 0])
    if loss == "cross_entropy":  # probability rows
        T = torch.softmax(torch.randn(BATCH, 3, dtype=torch.float64), 1)
    else:                        # class indices, one-hot for sse/mse
        T = labels
    for gn in (False, True):
        assert hvp_report(net, X, T, v, gauss_newton=gn).ok
        # one pattern as a 1-D X
        assert hvp_report(net, X[1], labels[1] if loss == "cross_entropy" else X.new_tensor([.2, .5, .9]),
                          v, gauss_newton=gn).ok


def test_full_hessian_equals_autograds():
    """H e_i for every basis vector e_i builds the whole Hessian: equal to autograd's, symmetric."""
    net, X, T = make("tanh", loss="cross_entropy", depth=1)
    names = list(net.params)
    shapes = [net.params[k].shape for k in names]
    sizes = [net.params[k].numel() for k in names]
    n = sum(sizes)
    cols = []
    for i in range(n):
        e = torch.zeros(n, dtype=torch.float64)
        e[i] = 1.0
        v = dict(zip(names, (c.reshape(s) for c, s in zip(e.split(sizes), shapes))))
        cols.append(torch.cat([t.reshape(-1) for t in hvp(net, X, T, v).values()]))
    H = torch.stack(cols, 1)

    def f(flat):
        p = dict(zip(names, (c.reshape(s) for c, s in zip(flat.split(sizes), shapes))))
        return oracle.forward_pass(net, p, X, T)[0]

    flat0 = torch.cat([net.params[k].reshape(-1) for k in names])
    H_o = torch.autograd.functional.hessian(f, flat0)
    torch.testing.assert_close(H, H_o, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(H, H.t(), rtol=1e-9, atol=1e-12)


# --- algebra ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_linear_in_v_and_symmetric(act, loss):
    net, X, T = make(act[0], act[1], loss, depth=2)
    u, w = rand_v(net, 1), rand_v(net, 2)
    for prod in (hvp, gauss_newton):
        Hu, Hw = prod(net, X, T, u), prod(net, X, T, w)
        combo = {k: 0.7 * u[k] - 1.9 * w[k] for k in u}
        H_combo = prod(net, X, T, combo)
        for k in u:
            torch.testing.assert_close(H_combo[k], 0.7 * Hu[k] - 1.9 * Hw[k], rtol=1e-9, atol=1e-12)
        a, b = dot(u, Hw), dot(w, Hu)
        assert abs(a - b) <= 1e-12 * max(1.0, abs(a)), (prod.__name__, a, b)


@pytest.mark.parametrize("loss", ["sse", "mse"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_gauss_newton_is_the_hessian_of_a_single_linear_layer(loss, bias):
    """Output linear in the parameters (no hidden layer, identity output) and a quadratic loss:
    H = J^T H_L J exactly; the hand path adds no term, so the products are bit-for-bit equal."""
    net, X, T = make("identity", loss=loss, bias=bias, depth=0)
    v = rand_v(net)
    Hv, Gv = hvp(net, X, T, v), gauss_newton(net, X, T, v)
    for k in net.params:
        assert torch.equal(Hv[k], Gv[k]), k
    assert hvp_report(net, X, T, v).ok and hvp_report(net, X, T, v, gauss_newton=True).ok


def test_deep_linear_network_is_not_linear_in_its_parameters():
    """Identity activations but a hidden layer: the output W1 W2 is bilinear in the parameters, so
    H = G + sum_o residual_o * (its Hessian) differs from G (both still agree with autograd)."""
    net, X, T = make("identity", loss="sse", depth=1)
    v = rand_v(net)
    Hv, Gv = hvp(net, X, T, v), gauss_newton(net, X, T, v)
    assert max(float((Hv[k] - Gv[k]).abs().max()) for k in Hv) > 1e-2
    assert hvp_report(net, X, T, v).ok and hvp_report(net, X, T, v, gauss_newton=True).ok


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_gauss_newton_equals_hessian_at_zero_residual(act, loss):
    """T = the network's own output (softmax probabilities for cross-entropy): every delta is 0, so
    all of H's extra terms vanish and H v = G v, for any activation and depth."""
    net, X, _ = make(act[0], act[1], loss, depth=3)
    T = net.forward(X)
    v = rand_v(net)
    Hv, Gv = hvp(net, X, T, v), gauss_newton(net, X, T, v)
    for k in net.params:
        torch.testing.assert_close(Hv[k], Gv[k], rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_gauss_newton_is_positive_semidefinite(act, loss):
    net, X, T = make(act[0], act[1], loss, depth=2)
    for seed in range(5):
        v = rand_v(net, seed)
        q = dot(v, gauss_newton(net, X, T, v))
        assert q >= -1e-12 * max(1.0, dot(v, v)), (seed, q)


def test_hessian_can_be_indefinite_where_gauss_newton_is_not():
    """Contrast: on a non-convex net some direction has v.Hv < 0 while v.Gv >= 0 for all."""
    net, X, T = make("tanh", loss="sse", depth=2, seed=3)
    qs = []
    for seed in range(40):
        v = rand_v(net, seed)
        qs.append((dot(v, hvp(net, X, T, v)), dot(v, gauss_newton(net, X, T, v))))
    assert min(h for h, _ in qs) < 0 <= min(g for _, g in qs) + 1e-12


# --- the check can fail: each dropped term is caught and named --------------------------------------

DROPS = {
    # dropped term: tensors that must fail (2 hidden layers, cross-entropy: no output f'')
    "f2": {"Rdelta1", "Rdelta2", "W1", "b1", "W2", "b2"},
    "delta_VT": {"Rdelta1", "Rdelta2", "W1", "b1", "W2", "b2"},
    "Ra_delta": {"W2", "W3"},
}


@pytest.mark.parametrize("term", list(DROPS))
def test_dropping_a_term_fails_and_names_the_tensor(term):
    net, X, T = make("logistic", 2.5, "cross_entropy", depth=2)
    v = rand_v(net)
    assert hvp_report(net, X, T, v).ok
    report = hvp_report(net, X, T, v, _omit=(term,))
    assert not report.ok
    assert failing(report) == DROPS[term], str(report)
    # the finite-difference referee, which never sees the hand path's deltas, also rejects them
    fd_fail = {r.tensor for r in report.failures if r.comparison.endswith("hand vs fd")}
    assert fd_fail == DROPS[term] - {"Rdelta1", "Rdelta2"}
    assert all(r.passed for r in report.rows if r.comparison.endswith("autograd vs fd"))
    assert "FAIL: " in str(report) and sorted(DROPS[term])[0] in str(report).split("FAIL: ")[1]


def test_dropping_the_output_f2_fails_for_sse():
    net, X, T = make("tanh", loss="sse", depth=1)
    report = hvp_report(net, X, T, rand_v(net), _omit=("f2",))
    assert {"Rdelta2", "W2", "Rdelta1", "W1"} <= failing(report)


def test_omit_is_checked():
    net, X, T = make()
    with pytest.raises(HandgradInputError, match="_omit"):
        hvp(net, X, T, rand_v(net), _omit=("nonsense",))


# --- bad v ------------------------------------------------------------------------------------------

def test_bad_v_is_named():
    net, X, T = make(depth=1)
    good = rand_v(net)
    cases = [
        ([1, 2], r"^v: expected a dict"),
        ({k: t for k, t in good.items() if k != "b2"}, r"^v: .*missing \['b2'\]"),
        ({**good, "W9": good["W1"]}, r"^v: .*unknown \['W9'\]"),
        ({**good, "W1": good["W1"].t()}, r"^v\[W1\]: expected shape \(3, 4\)"),
        ({**good, "b1": good["b1"].float()}, r"^v\[b1\]: expected dtype float64"),
        ({**good, "W2": good["W2"].tolist()}, r"^v\[W2\]: expected a torch.Tensor"),
        ({**good, "W2": good["W2"].clone().index_put_((torch.tensor(1), torch.tensor(2)),
                                                       torch.tensor(float("nan"), dtype=torch.float64))},
         r"^v\[W2\]: expected finite values, got nan at index \(1, 2\)"),
    ]
    for fn in (hvp, gauss_newton, hvp_report):
        for v, pattern in cases:
            with pytest.raises(HandgradInputError, match=pattern):
                fn(net, X, T, v)


@cuda
def test_v_on_the_wrong_device_is_named():
    net, X, T = make(depth=1)
    v = {k: t.to("cuda") if k == "W2" else t for k, t in rand_v(net).items()}
    with pytest.raises(HandgradInputError, match=r"^v\[W2\]: expected device cpu"):
        hvp(net, X, T, v)


def test_v_requiring_grad_is_used_detached():
    net, X, T = make(depth=1)
    v = {k: t.requires_grad_(True) for k, t in rand_v(net).items()}
    out = hvp(net, X, T, v)
    assert not any(t.requires_grad for t in out.values())


# --- the hand path never touches autograd --------------------------------------------------------------

def test_hand_paths_record_nothing_for_autograd():
    net, X, T = make("logistic", 2.5, "cross_entropy", depth=2)
    v = rand_v(net)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(1) or t, lambda t: t):
        with torch.enable_grad():
            outs = [hvp(net, X, T, v), gauss_newton(net, X, T, v), *per_sample_grads(net, X, T)]
        assert saved == []
        with torch.enable_grad():  # the detector fires on the oracle
            oracle.loss_and_grads(net, X, T)
        assert saved
    for d in outs:
        assert not any(t.requires_grad or t.grad_fn is not None for t in d.values())
    with torch.inference_mode():
        hvp(net, X, T, v), gauss_newton(net, X, T, v), per_sample_grads(net, X, T)
    assert not any(p.requires_grad for p in net.params.values())


# --- CUDA (skipped where none is present) ------------------------------------------------------------

@cuda
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_cuda_hv_and_gv(dtype, loss):
    net, X, T = make("logistic", 2.5, loss, depth=2, dtype=dtype, device="cuda")
    v = rand_v(net)
    for gn in (False, True):
        report = hvp_report(net, X, T, v, gauss_newton=gn)
        assert report.ok, str(report)
    for k, t in hvp(net, X, T, v).items():
        assert t.device.type == "cuda" and t.dtype == dtype
