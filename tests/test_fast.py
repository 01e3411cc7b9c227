"""The fast training step computes what the reference hand path computes, without allocating."""
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from handgrad import HandgradInputError, check
from handgrad.fast import FastStep
from handgrad.mlp import MLP

CASES = [(act, loss, bias) for act in ("logistic", "tanh", "relu", "identity")
         for loss in ("sse", "mse", "cross_entropy") for bias in (True, False)]


def make(act, loss, bias, dtype=torch.float64, sizes=(5, 7, 6, 3), batch=9, seed=0):
    net = MLP(list(sizes), activation=act, alpha=1.7, loss=loss, bias=bias, dtype=dtype, seed=seed)
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(batch, sizes[0], generator=g, dtype=torch.float64).to(dtype)
    T = torch.randint(0, sizes[-1], (batch,), generator=g)
    return net, X, T


@pytest.mark.parametrize("act, loss, bias", CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fast_gradients_and_deltas_pass_the_check(act, loss, bias, dtype):
    net, X, T = make(act, loss, bias, dtype)
    lf, gf, df = FastStep(net, eta=0.1).loss_and_grads(X, T, return_deltas=True)
    report = check(net, X, T, grads=gf, deltas=df, fd=False)
    assert report.ok, str(report)
    lr, gr = net.loss_and_grads(X, T)
    rtol, atol = (1e-12, 1e-14) if dtype == torch.float64 else (1e-5, 1e-6)  # same maths, reordered
    torch.testing.assert_close(lf, lr, rtol=rtol, atol=atol)


@pytest.mark.parametrize("act, loss, bias", CASES)
def test_fast_step_equals_reference_sgd_with_momentum(act, loss, bias):
    net, X, T = make(act, loss, bias)
    ref = MLP(net.sizes, activation=act, alpha=1.7, loss=loss, bias=bias, dtype=torch.float64, seed=0)
    eta, m = 0.01, 0.9
    vel = {k: torch.zeros_like(p) for k, p in ref.params.items()}
    fast = FastStep(net, eta=eta, momentum=m)
    for _ in range(4):
        _, g = ref.loss_and_grads(X, T)
        for k, p in ref.params.items():  # v = m v - eta g; p = p + v
            vel[k] = m * vel[k] - eta * g[k]
            p += vel[k]
        fast.step(X, T)
    for k in ref.params:
        # float64; four steps of the same arithmetic in another order.
        torch.testing.assert_close(net.params[k], ref.params[k], rtol=1e-12, atol=1e-13)


def test_float_targets_and_index_targets_give_the_same_step():
    net_a, X, T = make("logistic", "sse", True)
    net_b, _, _ = make("logistic", "sse", True)
    FastStep(net_a, 0.1, 0.5).step(X, T)
    FastStep(net_b, 0.1, 0.5).step(X, torch.nn.functional.one_hot(T, 3).double())
    for k in net_a.params:
        assert torch.equal(net_a.params[k], net_b.params[k])


def _allocated_bytes(fn):
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return sum(e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0)


@pytest.mark.parametrize("loss", ["sse", "cross_entropy"])
def test_no_allocations_once_warm(loss):
    net, X, T = make("logistic", loss, True, torch.float32, sizes=(64, 32, 10), batch=32)
    fast = FastStep(net, 0.1, 0.9, validate=False)  # full validation scans (allocates) each call
    fast.step(X, T)  # warm: workspaces allocated here
    assert _allocated_bytes(lambda: [fast.step(X, T) for _ in range(3)]) == 0
    # the measurement can see allocations: the reference path allocates its intermediates
    assert _allocated_bytes(lambda: net.loss_and_grads(X, T)) > 0


def test_workspaces_are_reused_and_reallocated_on_a_new_batch_size():
    net, X, T = make("tanh", "mse", True)
    fast = FastStep(net, 0.1)
    fast.step(X, T)
    ptrs = [b.data_ptr() for b in fast._acts_full + [fast._dout]]
    fast.step(X, T)
    assert ptrs == [b.data_ptr() for b in fast._acts_full + [fast._dout]]
    fast.step(X[:4], T[:4])
    assert fast._acts[0].shape[0] == 4


def test_returned_gradients_are_copies_not_workspace_views():
    net, X, T = make("logistic", "sse", True)
    fast = FastStep(net, 0.1)
    _, g1 = fast.loss_and_grads(X, T)
    g1["W1"].fill_(123.0)
    _, g2 = fast.loss_and_grads(X, T)
    assert not torch.equal(g1["W1"], g2["W1"])


@pytest.mark.parametrize("kwargs, needle", [({"eta": 0}, "eta"), ({"eta": 0.1, "momentum": 1.0}, "momentum")])
def test_bad_hyperparameters(kwargs, needle):
    net, _, _ = make("logistic", "sse", True)
    with pytest.raises(HandgradInputError, match=needle):
        FastStep(net, **kwargs)


def test_bad_inputs_name_the_argument():
    net, X, T = make("logistic", "sse", True)
    fast = FastStep(net, 0.1)
    with pytest.raises(HandgradInputError, match="X"):
        fast.step(X[:, :3], T)
    with pytest.raises(HandgradInputError, match="X"):
        fast.step(X.float(), T)
    with pytest.raises(HandgradInputError, match="T"):
        fast.step(X, T[:3])
    with pytest.raises(HandgradInputError, match="T"):
        fast.step(X, torch.full((9,), 7))
    with pytest.raises(HandgradInputError, match="X"):
        fast.step(X * float("nan"), T)
    unchecked = FastStep(net, 0.1, validate=False)  # cheap checks only: shape and dtype still caught
    with pytest.raises(HandgradInputError, match="X"):
        unchecked.step(X[:, :3], T)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_step_equals_eager_step():
    net_g, X, T = make("logistic", "cross_entropy", True, torch.float32, sizes=(64, 32, 10), batch=32)
    net_e, _, _ = make("logistic", "cross_entropy", True, torch.float32, sizes=(64, 32, 10), batch=32)
    net_g.to("cuda"), net_e.to("cuda")
    X, T = X.cuda(), T.cuda()
    fg, fe = FastStep(net_g, 0.1, 0.9), FastStep(net_e, 0.1, 0.9)
    fg.capture(X, T)
    for _ in range(5):
        fg.step(X, T)
        fe.step(X, T)
    torch.cuda.synchronize()
    for k in net_g.params:
        # float32 on GPU; identical kernels, so differences are at most a few ulp.
        torch.testing.assert_close(net_g.params[k], net_e.params[k], rtol=1e-5, atol=1e-6)
