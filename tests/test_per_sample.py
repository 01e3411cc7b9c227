"""Per-sample gradients by hand (``net.loss_and_grads(..., per_sample=True)``) against the
``vmap(grad)`` oracle: every activation, loss, depth, bias, dtype, batch 1; the identities
sum_n g_n / mean_n g_n = batch gradient; the statistics; the check's power; bad input; CUDA."""

import math

import pytest
import torch

from handgrad import MLP, HandgradInputError, oracle
from handgrad.per_sample import oracle_per_sample_grads, per_sample_grads, per_sample_report

ACTS = [("logistic", 1.0), ("logistic", 2.5), ("tanh", 1.0), ("relu", 1.0), ("identity", 1.0)]
ACT_IDS = ["logistic1", "logistic2.5", "tanh", "relu", "identity"]
LOSSES = ["sse", "mse", "cross_entropy"]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


def make(activation="tanh", alpha=1.0, loss="sse", bias=True, hidden=(4, 5), dtype=torch.float64,
         device="cpu", seed=0, batch=6, n_in=3, n_out=3):
    net = MLP([n_in, *hidden, n_out], activation=activation, alpha=alpha, loss=loss, bias=bias,
              dtype=dtype, device=device, seed=seed, init="chapter")
    gen = torch.Generator().manual_seed(seed + 100)
    X = torch.randn(batch, n_in, generator=gen, dtype=torch.float64).to(device, dtype)
    if loss == "cross_entropy":
        T = torch.randint(0, n_out, (batch,), generator=gen).to(device)
    else:
        T = torch.rand(batch, n_out, generator=gen, dtype=torch.float64).to(device, dtype)
    return net, X, T


@pytest.mark.parametrize("hidden", [(), (4,), (4, 5, 4)], ids=["h0", "h1", "h3"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_hand_agrees_with_vmap_grad(dtype, act, loss, bias, hidden):
    net, X, T = make(act[0], act[1], loss, bias, hidden, dtype)
    report = per_sample_report(net, X, T)
    assert report.ok, str(report)
    names = {r.tensor for r in report.rows}
    assert names == {"loss", *net.params}
    # per-sample, mean, variance and the batch identity: four rows a parameter
    assert len(report.rows) == 1 + 4 * len(net.params)


@pytest.mark.parametrize("loss", LOSSES)
def test_api_shapes_statistics_and_batch_identity(loss):
    net, X, T = make(loss=loss, batch=7)
    loss_v, grads, mean, var = net.loss_and_grads(X, T, per_sample=True)
    batch_loss, batch_grads = net.loss_and_grads(X, T)
    assert float(loss_v) == float(batch_loss)
    ref = oracle.loss_and_grads(net, X, T)[1]
    for k, p in net.params.items():
        assert grads[k].shape == (7, *p.shape)
        # statistics computed here independently with torch's own reductions
        torch.testing.assert_close(mean[k], grads[k].mean(0), rtol=0, atol=1e-15)  # float64, 7 terms
        torch.testing.assert_close(var[k], torch.var(grads[k], dim=0, correction=1), rtol=1e-12, atol=1e-15)
        total = grads[k].sum(0) if loss == "sse" else grads[k].mean(0)
        # float64 sums of 7 terms against autograd's batch gradient
        torch.testing.assert_close(total, ref[k], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(total, batch_grads[k], rtol=1e-12, atol=1e-14)


def test_each_sample_is_that_patterns_own_gradient():
    """g_n equals the batch-of-one gradient of pattern n (a second, loop-based oracle)."""
    for loss in LOSSES:
        net, X, T = make(loss=loss, batch=5)
        grads = net.loss_and_grads(X, T, per_sample=True)[1]
        for n in range(5):
            own = oracle.loss_and_grads(net, X[n:n + 1], T[n:n + 1])[1]
            for k in net.params:
                torch.testing.assert_close(grads[k][n], own[k], rtol=1e-12, atol=1e-14)  # float64


def test_one_pattern_and_1d_input():
    net, X, T = make(batch=1)
    loss_v, grads, mean, var = net.loss_and_grads(X[0], T[0], per_sample=True)
    ref = oracle.loss_and_grads(net, X[0], T[0])[1]
    for k, p in net.params.items():
        assert grads[k].shape == (1, *p.shape)
        torch.testing.assert_close(grads[k][0], ref[k], rtol=1e-12, atol=1e-14)  # float64
        assert torch.isnan(var[k]).all()  # undefined with one pattern (as torch.var)
    assert per_sample_report(net, X[0], T[0]).ok


def test_with_deltas_and_population_variance():
    net, X, T = make(batch=4)
    out = net.loss_and_grads(X, T, per_sample=True, return_deltas=True)
    assert len(out) == 5
    deltas = out[4]
    assert list(deltas) == ["delta1", "delta2", "delta3"]
    torch.testing.assert_close(deltas["delta3"], net.loss_and_grads(X, T, return_deltas=True)[2]["delta3"],
                               rtol=0, atol=0)
    grads, _, var0 = per_sample_grads(net, X, T, correction=0)
    for k in net.params:
        torch.testing.assert_close(var0[k], torch.var(grads[k], dim=0, correction=0), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("loss, wrong", [("mse", 1.0), ("cross_entropy", 1.0), ("sse", 6.0), ("sse", -1.0)])
def test_a_wrong_per_sample_scale_is_caught(loss, wrong):
    """The per-pattern factor s (1 for sse, B for the mean losses): using the other one is caught on
    every parameter's per-sample row."""
    net, X, T = make(loss=loss, batch=6)
    report = per_sample_report(net, X, T, _scale=wrong)
    assert not report.ok
    failed = {(r.tensor, r.comparison) for r in report.failures}
    for k in net.params:
        assert (k, "per-sample: hand vs vmap(grad)") in failed


def test_a_perturbed_sample_is_caught_and_located(monkeypatch):
    """One element of one pattern's gradient off by 1e-6: the report names the tensor and the index."""
    import handgrad.per_sample as ps

    net, X, T = make(batch=6)
    original = ps.per_sample_hand

    def perturbed(*a, **kw):
        loss, grads = original(*a, **kw)
        grads["W2"] = grads["W2"].clone()
        grads["W2"][3, 1, 2] += 1e-6
        return loss, grads

    monkeypatch.setattr(ps, "per_sample_hand", perturbed)
    report = per_sample_report(net, X, T)
    rows = [r for r in report.failures if r.comparison == "per-sample: hand vs vmap(grad)"]
    assert [r.tensor for r in rows] == ["W2"] and rows[0].worst_index == (3, 1, 2)


def test_oracle_is_vmap_of_the_twin_not_the_hand_path():
    net, X, T = make(batch=3)
    import handgrad.per_sample as ps

    g = oracle_per_sample_grads(net, X, T)
    assert all(not t.requires_grad for t in g.values())
    assert "per_sample_hand" not in ps.oracle_per_sample_grads.__code__.co_names


def test_hand_path_records_nothing_for_autograd():
    net, X, T = make(batch=3)
    with torch.enable_grad():
        out = net.loss_and_grads(X, T, per_sample=True)
    for part in out[1:]:
        for t in part.values():
            assert not t.requires_grad and t.grad_fn is None
    assert out[0].grad_fn is None


def test_bad_arguments_are_named():
    net, X, T = make()
    with pytest.raises(HandgradInputError, match="per_sample: expected True or False, got 'yes'"):
        net.loss_and_grads(X, T, per_sample="yes")
    with pytest.raises(HandgradInputError, match="correction"):
        per_sample_grads(net, X, T, correction=-1)
    with pytest.raises(HandgradInputError, match="X"):
        net.loss_and_grads(X[:, :2], T, per_sample=True)


@cuda
@pytest.mark.parametrize("loss", LOSSES)
def test_cuda(loss):
    net, X, T = make(loss=loss, device="cuda", dtype=torch.float32)
    assert per_sample_report(net, X, T).ok
    grads = net.loss_and_grads(X, T, per_sample=True)[1]
    assert all(g.device.type == "cuda" for g in grads.values())
