"""The hand path never touches autograd.

Three independent detectors, each shown to fire on the autograd oracle (so they can fail):

* the autograd engine and its entry points are replaced by ones that raise;
* a ``saved_tensors_hooks`` pack hook counts tensors saved for a backward pass (any recorded op);
* a ``TorchFunctionMode`` sees every torch call and flags any result that requires grad or has a
  ``grad_fn``, and any call to ``requires_grad_`` / ``backward`` / ``autograd.grad``.

Then: results carry no graph, parameters never require grad, the hand path works under
``torch.inference_mode()``, and the oracle leaves the parameters exactly as it found them.
"""

import pytest
import torch
from torch.autograd.variable import Variable
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from handgrad import MLP, check, oracle

# (sizes, activation, loss): a spread of the hand path's branches (hidden/output activations,
# losses on activations and on logits).
NETS = [
    ([4, 3, 2], "logistic", "sse"),
    ([4, 5, 3, 3], "tanh", "mse"),
    ([4, 5, 3], "relu", "cross_entropy"),
    ([4, 3, 2], "identity", "sse"),
]
NET_IDS = ["logistic-sse", "tanh-mse", "relu-ce", "identity-sse"]


def make(sizes, activation, loss, dtype=torch.float64):
    net = MLP(sizes, activation=activation, alpha=2.0, loss=loss, dtype=dtype, seed=2, init="chapter")
    gen = torch.Generator().manual_seed(2)
    X = torch.randn(6, sizes[0], generator=gen, dtype=dtype)
    T = torch.randint(0, sizes[-1], (6,), generator=gen)
    return net, X, T


def hand_path(net, X, T):
    """Everything the hand path offers; returns every tensor it produced."""
    loss, grads, deltas = net.loss_and_grads(X, T, return_deltas=True)
    loss2, grads2 = net.loss_and_grads(X, T)
    return [loss, *grads.values(), *deltas.values(), loss2, *grads2.values(),
            net.forward(X), net.forward(X[0]), net.loss_value(X, T)]


def run_oracle(net, X, T):
    loss, grads, deltas = oracle.loss_and_grads(net, X, T, return_deltas=True)
    return [loss, *grads.values(), *deltas.values()]


# --- detector 1: the autograd engine raises ----------------------------------------------------------

class AutogradCalled(AssertionError):
    pass


class _RaisingEngine:
    def run_backward(self, *args, **kwargs):
        raise AutogradCalled("the autograd engine was run")

    def __getattr__(self, name):
        raise AutogradCalled(f"the autograd engine was touched ({name})")


def _raise(what):
    def f(*args, **kwargs):
        raise AutogradCalled(f"{what} was called")
    return f


@pytest.fixture
def no_engine(monkeypatch):
    """Every way into autograd's backward raises: the C++ engine and the Python entry points."""
    monkeypatch.setattr(Variable, "_execution_engine", _RaisingEngine())
    monkeypatch.setattr(torch.autograd, "grad", _raise("torch.autograd.grad"))
    monkeypatch.setattr(torch.autograd, "backward", _raise("torch.autograd.backward"))
    monkeypatch.setattr(torch.Tensor, "backward", _raise("Tensor.backward"))


@pytest.mark.parametrize("sizes,activation,loss", NETS, ids=NET_IDS)
def test_hand_path_runs_with_autograd_disabled(no_engine, sizes, activation, loss):
    net, X, T = make(sizes, activation, loss)
    hand_path(net, X, T)  # raises AutogradCalled if anything reaches autograd


def test_engine_detector_fires_on_oracle(no_engine):
    net, X, T = make(*NETS[0])
    with pytest.raises(AutogradCalled):
        run_oracle(net, X, T)


def test_engine_detector_fires_below_python_entry_points(monkeypatch):
    """Only the C++ engine replaced: a direct backward still hits it (the patch is effective)."""
    monkeypatch.setattr(Variable, "_execution_engine", _RaisingEngine())
    w = torch.ones(2, requires_grad=True)
    with pytest.raises(AutogradCalled):
        (w * w).sum().backward()


# --- detector 2: no tensor is saved for backward ------------------------------------------------------

class SaveCounter:
    def __init__(self):
        self.saved = 0

    def __enter__(self):
        def pack(t):
            self.saved += 1
            return t
        self._hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)


@pytest.mark.parametrize("sizes,activation,loss", NETS, ids=NET_IDS)
def test_hand_path_saves_nothing_for_backward(sizes, activation, loss):
    net, X, T = make(sizes, activation, loss)
    assert torch.is_grad_enabled()  # the caller's default mode; the hand path must not record
    with SaveCounter() as counter:
        hand_path(net, X, T)
    assert counter.saved == 0


def test_save_counter_fires_on_oracle():
    net, X, T = make(*NETS[0])
    with SaveCounter() as counter:
        run_oracle(net, X, T)
    assert counter.saved > 0


# --- detector 3: every torch call, watched --------------------------------------------------------------

class AutogradSpy(TorchFunctionMode):
    """Records torch calls that build or run a graph."""

    FORBIDDEN = {"requires_grad_", "backward", "grad", "retain_grad"}
    SET_REQUIRES_GRAD = torch._C.TensorBase.requires_grad.__set__

    def __init__(self):
        super().__init__()
        self.offences = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", repr(func))
        if name in self.FORBIDDEN:
            self.offences.append(f"called {name}")
        if func == self.SET_REQUIRES_GRAD and args[1]:
            self.offences.append("set requires_grad = True")
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and (t.requires_grad or t.grad_fn is not None):
                self.offences.append(f"{name} returned a tensor in a graph")
        return out


@pytest.mark.parametrize("sizes,activation,loss", NETS, ids=NET_IDS)
def test_hand_path_builds_no_graph(sizes, activation, loss):
    net, X, T = make(sizes, activation, loss)
    with AutogradSpy() as spy:
        hand_path(net, X, T)
    assert spy.offences == []


def test_spy_fires_on_oracle():
    net, X, T = make(*NETS[0])
    with AutogradSpy() as spy:
        run_oracle(net, X, T)
    assert any("graph" in o for o in spy.offences)
    assert "called requires_grad_" in spy.offences


def test_spy_fires_on_requires_grad_set_and_autograd_grad():
    w = torch.ones(2)
    with AutogradSpy() as spy:
        w.requires_grad = True
        torch.autograd.grad((w * w).sum(), w)
    assert spy.offences[0] == "set requires_grad = True"
    assert "called grad" in spy.offences


# --- results, parameters, inference mode ------------------------------------------------------------------

@pytest.mark.parametrize("sizes,activation,loss", NETS, ids=NET_IDS)
def test_results_carry_no_graph(sizes, activation, loss):
    net, X, T = make(sizes, activation, loss)
    for t in hand_path(net, X, T):
        assert t.requires_grad is False and t.grad_fn is None


def test_results_carry_no_graph_even_for_an_input_that_requires_grad():
    net, X, T = make(*NETS[0])
    X = X.clone().requires_grad_(True)
    for t in hand_path(net, X, T):
        assert t.requires_grad is False and t.grad_fn is None


@pytest.mark.parametrize("sizes,activation,loss", NETS, ids=NET_IDS)
def test_params_never_require_grad(sizes, activation, loss):
    net, X, T = make(sizes, activation, loss)

    def assert_plain():
        for name, p in net.params.items():
            assert p.requires_grad is False and p.grad is None and p.grad_fn is None, name

    assert_plain()
    hand_path(net, X, T)
    assert_plain()
    run_oracle(net, X, T)
    assert_plain()
    assert check(net, X, T).ok
    assert_plain()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("sizes,activation,loss", NETS, ids=NET_IDS)
def test_works_inside_inference_mode(sizes, activation, loss, dtype):
    net, X, T = make(sizes, activation, loss, dtype)
    outside = hand_path(net, X, T)
    with torch.inference_mode():
        inside = hand_path(net, X, T)
    assert len(inside) == len(outside)
    for a, b in zip(inside, outside):
        # same ops on the same values in the same order: identical bits
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("sizes,activation,loss", NETS, ids=NET_IDS)
def test_oracle_leaves_params_untouched(sizes, activation, loss):
    net, X, T = make(sizes, activation, loss)
    before = {k: (v, v.clone(), v.data_ptr()) for k, v in net.params.items()}
    run_oracle(net, X, T)
    oracle.loss_and_grads(net, X[0], T[0])  # the 1-D path too
    check(net, X, T)  # the oracle plus the finite-difference referee
    assert list(net.params) == list(before)
    for name, p in net.params.items():
        obj, copy, ptr = before[name]
        assert p is obj and p.data_ptr() == ptr, name
        torch.testing.assert_close(p, copy, rtol=0, atol=0)  # not a bit changed
        assert p.requires_grad is False and p.grad is None and p.is_leaf, name
