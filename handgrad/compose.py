"""Networks composed from layers that follow the protocol of :mod:`handgrad.layers`.

:class:`Sequential` is itself a layer (``params``, ``forward(x) -> (y, cache)``,
``backward(dy, cache) -> (dx, grads)``), so a whole stack of your own layers can be checked with
:func:`handgrad.testing.assert_layer_matches_autograd` exactly like one layer.
"""
from __future__ import annotations

import copy

import torch

Tensor = torch.Tensor


class Sequential:
    """Layers applied in order.  ``params`` are keyed ``"{index}.{name}"`` (e.g. ``"0.W"``)."""

    def __init__(self, layers):
        self.layers = list(layers)

    @property
    def params(self) -> dict:
        return {f"{i}.{k}": v for i, layer in enumerate(self.layers) for k, v in layer.params.items()}

    @params.setter
    def params(self, new: dict) -> None:
        layers = []
        for i, layer in enumerate(self.layers):
            twin = copy.copy(layer)
            twin.params = {k: new[f"{i}.{k}"] for k in layer.params}
            layers.append(twin)
        self.layers = layers

    def forward(self, x: Tensor):
        caches = []
        for layer in self.layers:
            x, cache = layer.forward(x)
            caches.append(cache)
        return x, caches

    def backward(self, dy: Tensor, caches):
        grads = {}
        for i in range(len(self.layers) - 1, -1, -1):
            dy, g = self.layers[i].backward(dy, caches[i])
            grads.update({f"{i}.{k}": v for k, v in g.items()})
        return dy, grads

    @torch.no_grad()
    def loss_and_grads(self, X: Tensor, T: Tensor, loss):
        """``loss`` follows :mod:`handgrad.losses`: ``forward(y, T) -> (value, cache)``,
        ``backward(cache) -> dloss/dy``.  Returns ``(loss value, grads)``."""
        y, caches = self.forward(X)
        value, lcache = loss.forward(y, T)
        _, grads = self.backward(loss.backward(lcache), caches)
        return value, grads
