"""handgrad.testing: a user's own layers checked by the same oracle, and caught when wrong."""
import importlib.util
import pathlib

import pytest
import torch

from handgrad import MLP
from handgrad.compose import Sequential
from handgrad.layers import Identity, Linear, Logistic, ReLU, Tanh
from handgrad.testing import assert_layer_matches_autograd, assert_net_matches_autograd, layer_report

_spec = importlib.util.spec_from_file_location(
    "custom_layer", pathlib.Path(__file__).parents[1] / "examples" / "custom_layer.py")
example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(example)

X = torch.randn(6, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2


@pytest.mark.parametrize("layer", [
    Linear(torch.randn(5, 3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)),
    Linear(torch.randn(5, 3, dtype=torch.float64)), Logistic(2.5), Tanh(), ReLU(), Identity(),
    example.Softsign(), example.LayerNorm(5)], ids=lambda l: type(l).__name__)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_builtin_and_example_layers_pass(layer, dtype):
    reports = assert_layer_matches_autograd(layer, X.to(dtype))
    assert all(r.ok for r in reports)
    if dtype == torch.float64:  # the finite-difference referee ran
        assert any(row.comparison == "hand vs fd" for row in reports[0].rows)


def test_a_composed_stack_is_a_layer_too():
    stack = Sequential([Linear(torch.randn(5, 4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)),
                        example.LayerNorm(4), example.Softsign(), Logistic(1.5)])
    reports = assert_layer_matches_autograd(stack, X)
    names = {row.tensor for row in reports[0].rows}
    assert {"0.W", "0.b", "1.gamma", "1.beta", "dx"} <= names


def test_wrong_backward_is_caught_with_a_readable_report():
    with pytest.raises(AssertionError) as e:
        assert_layer_matches_autograd(example.WrongSoftsign(), X)
    text = str(e.value)
    assert "FAIL: dx (hand vs autograd), dx (hand vs fd)" in text


class _Scale:
    """y = x * s; a correct backward, and variants that break the protocol."""

    def __init__(self):
        self.params = {"s": torch.tensor([1.5, -0.5, 2.0, 0.3, 1.0], dtype=torch.float64)}

    def forward(self, x):
        return x * self.params["s"], x

    def backward(self, dy, x):
        return dy * self.params["s"], {"s": (dy * x).sum(0)}


class _ScalesItsInput(_Scale):
    def backward(self, dy, x):
        dx, g = super().backward(dy, x)
        x.mul_(2.0)  # corrupts the caller's x (the cache is x)
        return dx, g


class _WrongParamGrad(_Scale):
    def backward(self, dy, x):
        dx, g = super().backward(dy, x)
        return dx, {"s": g["s"] * 1.001}


class _MissingGrad(_Scale):
    def backward(self, dy, x):
        return super().backward(dy, x)[0], {}


class _NoGradForward(_Scale):
    @torch.no_grad()
    def forward(self, x):
        return super().forward(x)


def test_correct_parameter_layer_passes():
    assert_layer_matches_autograd(_Scale(), X)


@pytest.mark.parametrize("layer, needle", [
    (_ScalesItsInput(), "backward changed its input x"),
    (_WrongParamGrad(), "FAIL: s (hand vs autograd)"),
    (_MissingGrad(), "missing from grads"),
])
def test_protocol_violations_are_caught(layer, needle):
    with pytest.raises(AssertionError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        assert_layer_matches_autograd(layer, X)


def test_forward_that_autograd_cannot_see_is_refused_clearly():
    with pytest.raises(AssertionError, match="not differentiable by autograd"):
        layer_report(_NoGradForward(), X)


def test_whole_network_helper(monkeypatch):
    net = MLP([5, 4, 3], dtype=torch.float64, seed=0)
    T = torch.randint(0, 3, (6,))
    assert assert_net_matches_autograd(net, X, T).ok
    real = MLP.loss_and_grads

    def wrong(self, X, T, return_deltas=False):
        out = real(self, X, T, return_deltas)
        out[1]["b1"] = out[1]["b1"] + 1e-3
        return out

    monkeypatch.setattr(MLP, "loss_and_grads", wrong)
    with pytest.raises(AssertionError, match="FAIL: b1"):
        assert_net_matches_autograd(net, X, T)
