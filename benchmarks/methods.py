"""The training steps being compared.  Each ``make_*`` returns ``(step, extra_bytes)``: a no-argument
callable doing one full training step (forward, backward, SGD-with-momentum update) and a callable
giving the bytes the method keeps between steps beyond the parameters, inputs and momentum state.

All steps share one network definition (logistic hidden and output layers with biases, SSE): the
hand paths run on ``handgrad.MLP``; the autograd paths on the oracle's independent forward pass with
``loss.backward()`` and ``torch.optim.SGD(momentum, foreach=True)``.
"""
from __future__ import annotations

import copy

import torch

from handgrad import oracle
from handgrad.fast import FastStep


def _zero() -> int:
    return 0


def make_hand_fast(net, X, T, eta, momentum):
    fast = FastStep(net, eta, momentum, validate=False)
    return (lambda: fast.step(X, T)), fast.workspace_bytes


def make_hand_graph(net, X, T, eta, momentum):
    """CUDA only: the fast step captured in a CUDA graph and replayed."""
    fast = FastStep(net, eta, momentum, validate=False)
    fast.capture(X, T)
    return (lambda: fast._graph.replay()), lambda: fast.workspace_bytes() + 2 * X.numel() * X.element_size()


def _hand_reference_step(net, vel, eta, momentum):
    params = list(net.params.values())

    @torch.no_grad()
    def update(X, T):
        loss, grads, _ = net.backprop(X, T)
        torch._foreach_mul_(vel, momentum)
        torch._foreach_add_(vel, list(grads.values()), alpha=-eta)
        torch._foreach_add_(params, vel)
        return loss

    return update


def make_hand_reference(net, X, T, eta, momentum):
    """The reference hand path as a user calls it (input checks included) plus a foreach update."""
    vel = [torch.zeros_like(p) for p in net.params.values()]
    params = list(net.params.values())

    @torch.no_grad()
    def step():
        _, grads = net.loss_and_grads(X, T)
        torch._foreach_mul_(vel, momentum)
        torch._foreach_add_(vel, list(grads.values()), alpha=-eta)
        torch._foreach_add_(params, vel)

    return step, _zero


def make_hand_compiled(net, X, T, eta, momentum):
    vel = [torch.zeros_like(p) for p in net.params.values()]
    fn = torch.compile(_hand_reference_step(net, vel, eta, momentum))
    return (lambda: fn(X, T)), _zero


def make_autograd(net, X, T, eta, momentum, compiled=False):
    spec = copy.copy(net)  # the settings; the parameters below are the autograd leaves
    leaves = {k: p.detach().clone().requires_grad_(True) for k, p in net.params.items()}
    opt = torch.optim.SGD(list(leaves.values()), lr=eta, momentum=momentum, foreach=True)

    def loss_fn():
        return oracle.forward_pass(spec, leaves, X, T)[0]

    fn = torch.compile(loss_fn) if compiled else loss_fn

    def step():
        fn().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, _zero


def make_autograd_compiled(net, X, T, eta, momentum):
    return make_autograd(net, X, T, eta, momentum, compiled=True)


METHODS = {
    "hand-fast": make_hand_fast,
    "hand-reference": make_hand_reference,
    "autograd": make_autograd,
    "autograd-compile": make_autograd_compiled,
    "hand-compile": make_hand_compiled,
    "hand-cuda-graph": make_hand_graph,
}
