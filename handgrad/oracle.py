"""The autograd twin: the same network, the same parameter values, ordinary torch ops, and
``torch.autograd.grad``.

Written independently of the hand path (it imports nothing from ``layers``, ``losses`` or ``mlp``):
it reads the network's settings and its ``params`` tensors (through ``detach()``, which shares their
storage, so there is no copy that can drift) and rebuilds the computation with ``F.linear``,
``torch.sigmoid``, ``torch.relu``, ``F.mse_loss`` and ``F.cross_entropy``.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def _act(name: str, alpha: float):
    return {
        "logistic": lambda z: torch.sigmoid(alpha * z),
        "tanh": torch.tanh,
        "relu": torch.relu,
        "identity": lambda z: z,
    }[name]


def _targets(net, T: Tensor, n_rows: int) -> Tensor:
    """Desired outputs as float rows, or class indices for cross-entropy."""
    n_out = net.sizes[-1]
    if not T.dtype.is_floating_point:
        idx = T.reshape(n_rows).long()
        return idx if net.loss == "cross_entropy" else F.one_hot(idx, n_out).to(net.dtype)
    return T.reshape(n_rows, n_out)


def forward_pass(net, params: dict, X: Tensor, T: Tensor):
    """Loss and the node inputs z_1..z_L for ``params`` (any dict keyed like ``net.params``)."""
    a = X.reshape(1, -1) if X.dim() == 1 else X
    hidden, out = _act(net.activation, net.alpha), _act(net.output_activation, net.alpha)
    zs = []
    L = len(net.sizes) - 1
    for k in range(1, L + 1):
        z = F.linear(a, params[f"W{k}"].t(), params.get(f"b{k}"))
        zs.append(z)
        a = hidden(z) if k < L else z
    Tt = _targets(net, T, a.shape[0])
    if net.loss == "cross_entropy":
        loss = F.cross_entropy(a, Tt, reduction="mean")
    else:
        A = out(a)
        if net.loss == "sse":
            loss = 0.5 * torch.sum((Tt - A) ** 2)
        else:
            loss = F.mse_loss(A, Tt, reduction="mean")
    return loss, zs


def loss_value(net, params: dict, X: Tensor, T: Tensor) -> Tensor:
    """The loss alone, for the finite-difference referee."""
    with torch.no_grad():
        return forward_pass(net, params, X, T)[0]


def loss_and_grads(net, X: Tensor, T: Tensor, return_deltas: bool = False):
    """Autograd's loss, gradients (keyed like ``net.params``) and deltas dloss/dz_k.

    Same signature and return shape as :meth:`handgrad.MLP.loss_and_grads`.
    """
    with torch.enable_grad():
        leaves = OrderedDict((name, p.detach().requires_grad_(True)) for name, p in net.params.items())
        loss, zs = forward_pass(net, leaves, X, T)
        got = torch.autograd.grad(loss, list(leaves.values()) + zs)
    n = len(leaves)
    grads = OrderedDict((name, g.detach()) for name, g in zip(leaves, got[:n]))
    loss = loss.detach()
    if not return_deltas:
        return loss, grads
    one_d = X.dim() == 1
    deltas = OrderedDict((f"delta{k}", (d.reshape(-1) if one_d else d).detach())
                         for k, d in enumerate(got[n:], start=1))
    return loss, grads, deltas
