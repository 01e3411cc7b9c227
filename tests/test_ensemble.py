"""Ensembles: N networks in one batched hand-written step, checked against vmap and a loop."""
import pytest
import torch

from handgrad import HandgradInputError, oracle
from handgrad.ensemble import Ensemble, EnsembleSGD, ensemble_report, vmap_oracle
from handgrad.mlp import MLP

XOR_X = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=torch.float64)
XOR_T = torch.tensor([[0], [1], [1], [0]], dtype=torch.float64)


@pytest.mark.parametrize("act", ["logistic", "tanh", "relu", "identity"])
@pytest.mark.parametrize("loss", ["sse", "mse", "cross_entropy"])
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_hand_matches_vmap_oracle(act, loss, shared, dtype):
    g = torch.Generator().manual_seed(1)
    ens = Ensemble(7, [3, 5, 4, 2], activation=act, alpha=1.7, loss=loss, dtype=dtype, seed=0)
    X = torch.randn(7, 6, 3, generator=g, dtype=torch.float64).to(dtype)
    T = torch.randint(0, 2, (7, 6), generator=g)
    if shared:
        X, T = X[0], T[0]
    report = ensemble_report(ens, X, T)
    assert report.ok, str(report)


def test_each_member_matches_its_own_oracle_and_hand_path():
    ens = Ensemble(4, [2, 3, 1], dtype=torch.float64, seed=3, init="uniform", init_range=0.3)
    losses, grads = ens.loss_and_grads(XOR_X, XOR_T)
    for i in range(4):
        net = ens.member(i)
        lo, go = oracle.loss_and_grads(net, XOR_X, XOR_T)
        lh, gh = net.loss_and_grads(XOR_X, XOR_T)
        # float64, 4-pattern sums: equal to rounding
        torch.testing.assert_close(losses[i], lo, rtol=1e-12, atol=1e-15)
        for k in go:
            torch.testing.assert_close(grads[k][i], go[k], rtol=1e-10, atol=1e-15)
            torch.testing.assert_close(grads[k][i], gh[k], rtol=1e-10, atol=1e-15)


def test_a_wrong_ensemble_gradient_is_caught(monkeypatch):
    ens = Ensemble(5, [2, 2, 1], dtype=torch.float64, seed=0)
    real = Ensemble.loss_and_grads

    def wrong(self, X, T, return_deltas=False):
        losses, grads = real(self, X, T)
        grads["W2"] = grads["W2"].clone()
        grads["W2"][3] *= 1.01  # one network's output weights off by 1 %
        return losses, grads

    monkeypatch.setattr(Ensemble, "loss_and_grads", wrong)
    report = ensemble_report(ens, XOR_X, XOR_T)
    assert [r.tensor for r in report.failures] == ["W2"]
    assert report.failures[0].worst_index[0] == 3


def test_sgd_step_equals_n_separate_reference_updates():
    ens = Ensemble(6, [2, 2, 1], dtype=torch.float64, seed=0, init="uniform", init_range=0.3)
    nets = [ens.member(i) for i in range(6)]
    vel = [{k: torch.zeros_like(p) for k, p in n.params.items()} for n in nets]
    opt = EnsembleSGD(ens, eta=0.5, momentum=0.9)
    for _ in range(5):
        opt.step(XOR_X, XOR_T)
        for net, v in zip(nets, vel):
            _, g = net.loss_and_grads(XOR_X, XOR_T)
            for k, p in net.params.items():
                v[k] = 0.9 * v[k] - 0.5 * g[k]
                p += v[k]
    for i, net in enumerate(nets):
        for k in net.params:
            # float64, five updates of the same arithmetic
            torch.testing.assert_close(ens.params[k][i], net.params[k], rtol=1e-12, atol=1e-14)


def test_members_start_different_and_seed_is_deterministic():
    a = Ensemble(3, [2, 2, 1], seed=0, init="chapter")
    b = Ensemble(3, [2, 2, 1], seed=0, init="chapter")
    assert torch.equal(a.params["W1"], b.params["W1"])
    assert not torch.equal(a.params["W1"][0], a.params["W1"][1])
    assert float(a.params["W1"].abs().max()) <= 1.0


def test_bad_input():
    ens = Ensemble(3, [2, 2, 1])
    with pytest.raises(HandgradInputError, match="X"):
        ens.loss_and_grads(torch.zeros(4, 3), torch.zeros(4, 1))
    with pytest.raises(HandgradInputError, match="X"):
        ens.loss_and_grads(torch.zeros(5, 4, 2), torch.zeros(4, 1))
    with pytest.raises(HandgradInputError, match="T"):
        ens.loss_and_grads(torch.zeros(4, 2), torch.zeros(4, 2))
    with pytest.raises(HandgradInputError, match="n_nets"):
        Ensemble(0, [2, 2, 1])
    with pytest.raises(HandgradInputError, match="init"):
        Ensemble(2, [2, 2, 1], init="zeros")
