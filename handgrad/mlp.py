"""The multilayer perceptron of the chapter, any depth, with a hand-written backward pass.

Layer k (k = 1..L) computes node inputs z_k = a_{k-1} W_k + b_k (Eq. 7.8, 7.13) and activations
a_k = F(z_k) (Eq. 7.3, 7.11); a_0 = X.  With one hidden layer, ``W1[i, h]`` is the chapter's w_{i,h}
and ``W2[h, o]`` its v_{h,o}.  The backward pass is the chain rule of Eq. 7.1-7.24 for any depth:

    delta_L = dloss/dA * F'(z_L)                  (Eq. 7.21, 7.22 and the output factor of Eq. 7.6)
    delta_k = (delta_{k+1} W_{k+1}^T) * F'(z_k)   (Eq. 7.24's sum over o of v_{h,o} delta_o, Eq. 7.19)
    dW_k    = a_{k-1}^T delta_k,  db_k = sum over the batch of delta_k

where delta_k = dloss/dz_k is the back-propagated delta of layer k.  Nothing here touches autograd:
the whole pass runs under ``torch.no_grad()`` on tensors that do not require grad.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch

from . import validate
from .errors import bad
from .layers import ACTIVATIONS, Linear, make_activation
from .losses import LOSSES, make_loss

Tensor = torch.Tensor


class MLP:
    """A multilayer perceptron with hand-written backprop.

    Args:
        sizes: widths, input first and output last; ``[4, 3, 2]`` is the chapter's network.
        activation: hidden activation, one of ``logistic`` (gain ``alpha``), ``tanh``, ``relu``,
            ``identity``.
        alpha: the logistic gain (Eq. 7.5); must be > 0.
        output_activation: the output layer's activation; ``None`` means the hidden one.  With
            ``loss="cross_entropy"`` the output activation is the softmax inside the loss.
        loss: ``sse`` (the chapter's 1/2 sum E^2), ``mse`` or ``cross_entropy``.
        bias: whether layers have biases (the chapter's equations have none).
        dtype, device: of the parameters; inputs must match.
        seed: seeds the initial weights (``None``: torch's global generator).
        init: ``"glorot"`` (uniform in +-sqrt(6/(fan_in+fan_out)), zero biases) or ``"chapter"``
            (weights and biases uniform in (-1, 1), as the chapter author's programs).
    """

    def __init__(self, sizes, activation="logistic", alpha=1.0, output_activation=None, loss="sse",
                 bias=True, dtype=torch.float32, device="cpu", seed=None, init="glorot"):
        self.sizes = validate.check_sizes(sizes)
        self.alpha = validate.check_alpha(alpha)
        make_activation(activation)  # validates the name
        if output_activation is not None:
            make_activation(output_activation, argument="output_activation")
        make_loss(loss)
        if init not in ("glorot", "chapter"):
            raise bad("init", "'glorot' or 'chapter'", repr(init))
        self.activation = activation
        self.output_activation = output_activation or activation
        self.loss = loss
        self.bias = bool(bias)
        self.dtype = validate.resolve_dtype(dtype)
        self.device = validate.resolve_device(device)
        self.params: OrderedDict[str, Tensor] = OrderedDict()
        gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        for k, (fan_in, fan_out) in enumerate(zip(self.sizes[:-1], self.sizes[1:]), start=1):
            r = 1.0 if init == "chapter" else math.sqrt(6.0 / (fan_in + fan_out))
            W = (torch.rand(fan_in, fan_out, generator=gen, dtype=torch.float64) * 2 - 1) * r
            self.params[f"W{k}"] = W.to(self.dtype).to(self.device)
            if self.bias:
                b = (torch.rand(fan_out, generator=gen, dtype=torch.float64) * 2 - 1
                     if init == "chapter" else torch.zeros(fan_out, dtype=torch.float64))
                self.params[f"b{k}"] = b.to(self.dtype).to(self.device)

    # ------------------------------------------------------------------ structure
    @property
    def n_layers(self) -> int:
        """Number of weight layers L (hidden layers + 1)."""
        return len(self.sizes) - 1

    @property
    def uses_logits(self) -> bool:
        return self.loss == "cross_entropy"

    def describe(self) -> str:
        act = f"logistic(alpha={self.alpha:g})" if self.activation == "logistic" else self.activation
        out = "softmax" if self.uses_logits else self.output_activation
        return (f"{'-'.join(map(str, self.sizes))} {act} -> {out}, loss {self.loss}, "
                f"bias {'on' if self.bias else 'off'}, {str(self.dtype).removeprefix('torch.')}, "
                f"{self.device}")

    def spec(self) -> dict:
        """The settings that define the architecture (for checkpoints and reports)."""
        return {"sizes": self.sizes, "activation": self.activation, "alpha": self.alpha,
                "output_activation": self.output_activation, "loss": self.loss, "bias": self.bias,
                "dtype": str(self.dtype).removeprefix("torch."), "device": str(self.device)}

    def layers(self, first_needs_dx: bool = False):
        """The chain of layers [Linear, activation, Linear, activation, ...] built on ``params``.

        The output activation is omitted for cross-entropy (the softmax lives in the loss).
        """
        chain = []
        for k in range(1, self.n_layers + 1):
            chain.append(Linear(self.params[f"W{k}"], self.params.get(f"b{k}"),
                                need_dx=(k > 1 or first_needs_dx)))
            if k < self.n_layers:
                chain.append(make_activation(self.activation, self.alpha))
            elif not self.uses_logits:
                chain.append(make_activation(self.output_activation, self.alpha))
        return chain

    # ------------------------------------------------------------------ input
    def _inputs(self, X, T=None):
        X = validate.check_X(X, self.sizes[0], self.dtype, self.device)
        one_d = X.dim() == 1
        X2 = X.reshape(1, -1) if one_d else X
        if T is None:
            return X2, None, one_d
        T2 = validate.check_T(T, X2.shape[0], self.sizes[-1], self.dtype, self.device, one_d)
        if self.uses_logits and T.dtype.is_floating_point:
            sums = T2.sum(1)
            wrong = (T2 < 0).any(1) | ((sums - 1).abs() > 1e-3)
            if bool(wrong.any()):
                r = int(wrong.nonzero()[0])
                raise bad("T", "one-hot (or probability) rows, non-negative and summing to 1, "
                          "for cross_entropy", f"row {r} = {T2[r].tolist()[:8]} (sum {float(sums[r]):g})")
        return X2, T2, one_d

    # ------------------------------------------------------------------ passes
    @torch.no_grad()
    def forward(self, X: Tensor) -> Tensor:
        """Output activations for X (softmax probabilities with cross-entropy)."""
        X2, _, one_d = self._inputs(X)
        a = X2
        for layer in self.layers():
            a, _ = layer.forward(a)
        if self.uses_logits:
            from .losses import softmax
            a = softmax(a)
        return a.reshape(-1) if one_d else a

    @torch.no_grad()
    def loss_and_grads(self, X: Tensor, T: Tensor, return_deltas: bool = False, per_sample: bool = False):
        """Loss and its gradient for every parameter, by the hand-written chain rule.

        Returns ``(loss, grads)``, or ``(loss, grads, deltas)`` with ``return_deltas=True``, where
        ``deltas["delta{k}"]`` = dloss/dz_k, the back-propagated delta of layer k (shape like z_k;
        1-D for a 1-D X).  ``T``: desired outputs (batch, outputs) or int64 class indices (batch,).

        ``per_sample=True``: the gradient of every pattern's own loss, by hand (each pattern's outer
        product of layer input and delta, :mod:`handgrad.per_sample`).  Returns
        ``(loss, grads, mean, var)`` (plus the batch ``deltas`` last with ``return_deltas=True``):
        ``grads[name]`` has shape ``(batch, *param.shape)``; ``mean`` and ``var`` (unbiased, NaN for a
        batch of one) are over the batch, keyed like ``params``.  sum_n g_n is the batch gradient for
        ``sse``; mean_n g_n for ``mse`` and ``cross_entropy``.
        """
        for name, flag in (("return_deltas", return_deltas), ("per_sample", per_sample)):
            if not isinstance(flag, bool):
                raise bad(name, "True or False", repr(flag))
        X2, T2, one_d = self._inputs(X, T)
        if per_sample:
            from .per_sample import moments, per_sample_hand

            loss, grads = per_sample_hand(self, X2, T2)
            out = (loss, grads, *moments(grads, 1))
        else:
            loss, grads, deltas = self.backprop(X2, T2)
            out = (loss, grads)
        if not return_deltas:
            return out
        if per_sample:
            deltas = self.backprop(X2, T2)[2]
        if one_d:
            deltas = OrderedDict((k, d.reshape(-1)) for k, d in deltas.items())
        return (*out, deltas)

    def hvp(self, X: Tensor, T: Tensor, vector) -> "OrderedDict[str, Tensor]":
        """H v: the Hessian of the loss with respect to all parameters times ``vector`` (a dict keyed
        like ``params``), by hand with Pearlmutter's R-operator (:mod:`handgrad.hvp`).  Returns a
        dict keyed like ``params``; check it with :func:`handgrad.hvp.hvp_report`."""
        from .hvp import hvp

        return hvp(self, X, T, vector)

    def gauss_newton(self, X: Tensor, T: Tensor, vector) -> "OrderedDict[str, Tensor]":
        """G v: the generalised Gauss-Newton matrix (J^T H_L J) times ``vector``, by hand
        (:mod:`handgrad.hvp`).  Keyed like ``params``."""
        from .hvp import gauss_newton

        return gauss_newton(self, X, T, vector)

    def backprop(self, X: Tensor, T: Tensor):
        """The hand-written forward and backward pass on checked inputs: X (batch, inputs) and T
        float rows (batch, outputs).  Returns ``(loss, grads, deltas)``; no input checks (use
        :meth:`loss_and_grads`), so it can be traced by ``torch.compile``."""
        chain = self.layers()
        caches = []
        a = X
        for layer in chain:
            a, cache = layer.forward(a)
            caches.append(cache)
        loss_fn = make_loss(self.loss)
        loss, lcache = loss_fn.forward(a, T)
        d = loss_fn.backward(lcache)

        grads: dict[str, Tensor] = {}
        deltas: dict[str, Tensor] = {}
        k = self.n_layers
        for layer, cache in zip(reversed(chain), reversed(caches)):
            if isinstance(layer, Linear):
                deltas[f"delta{k}"] = d  # dloss/dz_k
                d, g = layer.backward(d, cache)
                grads[f"W{k}"] = g["W"]
                if "b" in g:
                    grads[f"b{k}"] = g["b"]
                k -= 1
            else:
                d, _ = layer.backward(d, cache)  # times F'(z_k): Eq. 7.5 / 7.6 / 7.19
        grads = OrderedDict((name, grads[name]) for name in self.params)
        deltas = OrderedDict((f"delta{j}", deltas[f"delta{j}"]) for j in range(1, self.n_layers + 1))
        return loss, grads, deltas

    @torch.no_grad()
    def loss_value(self, X: Tensor, T: Tensor) -> Tensor:
        """The loss alone (a forward pass and the loss, no backward)."""
        X2, T2, _ = self._inputs(X, T)
        a = X2
        for layer in self.layers():
            a, _ = layer.forward(a)
        return make_loss(self.loss).forward(a, T2)[0]

    def to(self, device=None, dtype=None) -> "MLP":
        """Move (and/or cast) the parameters in place; returns the network."""
        if device is not None:
            self.device = validate.resolve_device(device)
        if dtype is not None:
            self.dtype = validate.resolve_dtype(dtype)
        for k, p in self.params.items():
            self.params[k] = p.to(device=self.device, dtype=self.dtype)
        return self

    def state_dict(self) -> dict:
        return {"spec": self.spec(), "params": OrderedDict((k, v.clone()) for k, v in self.params.items())}
