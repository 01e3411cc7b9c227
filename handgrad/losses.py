"""Losses as pairs: ``forward(y, T) -> (loss, cache)`` and ``backward(cache) -> dloss/dy``.

``T`` arrives here already checked and in float form (one row of desired outputs per pattern).
Patterns are the second-to-last axis and outputs the last, so a leading axis of independent networks
(:mod:`handgrad.ensemble`) sums their losses, each reduced over its own batch.

* ``sse``: the chapter's summed squared error, SSE = 1/2 sum E^2 with E = desired - actual, summed
  over outputs and patterns.  dSSE/dA_o = E_o * dE_o/dA_o = -E_o (Eq. 7.21, 7.22).
* ``mse``: mean of (A - T)^2 over every element (as ``torch.nn.functional.mse_loss``).
* ``cross_entropy``: softmax over the output *node inputs* z with cross-entropy, mean over the batch.
  Its ``y`` is the logits; its backward gives dloss/dz = (softmax(z) - T) / batch directly, so the
  output layer's activation is the softmax inside the loss.
"""
from __future__ import annotations

import torch

from .errors import bad

Tensor = torch.Tensor

LOSSES = ("sse", "mse", "cross_entropy")


class SSE:
    on_logits = False

    def forward(self, A: Tensor, T: Tensor):
        E = T - A  # E = desired - actual
        return 0.5 * (E * E).sum(), E

    def backward(self, E: Tensor) -> Tensor:
        return -E  # Eq. 7.21 times Eq. 7.22


class MSE:
    on_logits = False

    def forward(self, A: Tensor, T: Tensor):
        E = T - A
        return (E * E).sum() / (E.shape[-2] * E.shape[-1]), E

    def backward(self, E: Tensor) -> Tensor:
        return E * (-2.0 / (E.shape[-2] * E.shape[-1]))


def softmax(z: Tensor) -> Tensor:
    """Row-wise softmax, shifted by the row maximum so that no exp overflows."""
    e = torch.exp(z - z.amax(dim=-1, keepdim=True))
    return e / e.sum(dim=-1, keepdim=True)


class CrossEntropy:
    on_logits = True

    def forward(self, z: Tensor, T: Tensor):
        shifted = z - z.amax(dim=-1, keepdim=True)
        log_p = shifted - torch.log(torch.exp(shifted).sum(dim=-1, keepdim=True))
        # 0 log p = 0 even where log p = -inf (a logit gap past the dtype's range): T * log_p alone
        # would give 0 * -inf = NaN there, where the true loss is finite.
        loss = -torch.where(T != 0, T * log_p, 0.0).sum() / z.shape[-2]
        return loss, (log_p, T)

    def backward(self, cache) -> Tensor:
        log_p, T = cache
        return (torch.exp(log_p) - T) / log_p.shape[-2]


def make_loss(name: str):
    """Build a loss by name."""
    if name == "sse":
        return SSE()
    if name == "mse":
        return MSE()
    if name == "cross_entropy":
        return CrossEntropy()
    raise bad("loss", f"one of {', '.join(LOSSES)}", repr(name))
