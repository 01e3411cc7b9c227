"""Many independent networks of one architecture, trained in one batched hand-written step.

Every parameter gets a leading network axis: ``W{k}`` is (N, fan_in, fan_out), ``b{k}`` is
(N, fan_out).  The forward pass is ``torch.baddbmm`` over that axis, the backward pass the chain rule
of :mod:`handgrad.mlp` with ``torch.bmm`` (dW_k = a_{k-1}^T delta_k per network, dA = delta W^T).
The loss is the sum of the networks' own losses, so each network's gradient is its own.  Inputs are
shared, (B, n_in), or per network, (N, B, n_in).
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch

from . import validate
from .errors import bad
from .layers import make_activation
from .losses import make_loss
from .mlp import MLP

Tensor = torch.Tensor


class Ensemble:
    """N networks like ``MLP(sizes, activation, alpha, output_activation, loss, bias)``.

    ``init``: ``"glorot"``, ``"chapter"`` (uniform in (-1, 1), biases too) or ``"uniform"``
    (weights and biases uniform in (-init_range, init_range), e.g. 0.3 for Rumelhart et al. 1986).
    """

    def __init__(self, n_nets: int, sizes, activation="logistic", alpha=1.0, output_activation=None,
                 loss="sse", bias=True, dtype=torch.float32, device="cpu", seed=None, init="glorot",
                 init_range=1.0):
        if not isinstance(n_nets, int) or isinstance(n_nets, bool) or n_nets < 1:
            raise bad("n_nets", "a positive integer", repr(n_nets))
        if init not in ("glorot", "chapter", "uniform"):
            raise bad("init", "'glorot', 'chapter' or 'uniform'", repr(init))
        # one MLP carries (and validates) the settings; its parameters are not used
        self.spec_net = MLP(sizes, activation, alpha, output_activation, loss, bias, dtype, device)
        for k in ("sizes", "activation", "alpha", "output_activation", "loss", "bias", "dtype", "device"):
            setattr(self, k, getattr(self.spec_net, k))
        self.n_nets = n_nets
        gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        self.params: OrderedDict[str, Tensor] = OrderedDict()
        for k, (fi, fo) in enumerate(zip(self.sizes[:-1], self.sizes[1:]), start=1):
            r = {"glorot": math.sqrt(6.0 / (fi + fo)), "chapter": 1.0, "uniform": float(init_range)}[init]
            W = (torch.rand(n_nets, fi, fo, generator=gen, dtype=torch.float64) * 2 - 1) * r
            self.params[f"W{k}"] = W.to(dtype=self.dtype, device=self.device)
            if self.bias:
                b = (torch.rand(n_nets, fo, generator=gen, dtype=torch.float64) * 2 - 1) * r \
                    if init != "glorot" else torch.zeros(n_nets, fo, dtype=torch.float64)
                self.params[f"b{k}"] = b.to(dtype=self.dtype, device=self.device)

    @property
    def n_layers(self) -> int:
        return len(self.sizes) - 1

    @property
    def uses_logits(self) -> bool:
        return self.loss == "cross_entropy"

    def member(self, i: int) -> MLP:
        """Network ``i`` as a stand-alone :class:`MLP` (a copy of its parameters)."""
        net = MLP(self.sizes, self.activation, self.alpha, self.output_activation, self.loss,
                  self.bias, self.dtype, self.device)
        for k, p in self.params.items():
            net.params[k] = p[i].clone()
        return net

    # ------------------------------------------------------------------ input
    def _inputs(self, X, T=None):
        N, n_in, n_out = self.n_nets, self.sizes[0], self.sizes[-1]
        if not isinstance(X, Tensor):
            raise bad("X", "a torch.Tensor", type(X).__name__)
        if X.dim() == 2:
            validate.check_X(X, n_in, self.dtype, self.device)
            X3 = X.unsqueeze(0).expand(N, *X.shape)
        elif X.dim() == 3 and X.shape[0] == N:
            validate.check_X(X.reshape(-1, X.shape[-1]), n_in, self.dtype, self.device)
            X3 = X
        else:
            raise bad("X", f"shape (batch, {n_in}) shared by all nets or ({N}, batch, {n_in})",
                      f"shape {tuple(X.shape)}")
        if X3.shape[1] == 0:
            raise bad("X", "a non-empty batch", f"shape {tuple(X.shape)}")
        if T is None:
            return X3, None
        B = X3.shape[1]
        if not isinstance(T, Tensor):
            raise bad("T", "a torch.Tensor", type(T).__name__)
        shared = T.dim() == (2 if T.dtype.is_floating_point else 1)
        T2 = validate.check_T(T if shared else T.reshape(N * B, *T.shape[2:]),
                              B if shared else N * B, n_out, self.dtype, self.device, False)
        T3 = T2.unsqueeze(0).expand(N, B, n_out) if shared else T2.reshape(N, B, n_out)
        return X3, T3

    # ------------------------------------------------------------------ passes
    @torch.no_grad()
    def forward(self, X: Tensor) -> Tensor:
        """Output activations, (N, batch, outputs)."""
        a, _ = self._inputs(X)
        caches = self._forward(a)
        out = caches[-1][1]
        if self.uses_logits:
            from .losses import softmax
            out = softmax(out)
        return out

    def _forward(self, a: Tensor):
        """[(layer input, layer output, activation, activation cache)] for k = 1..L."""
        caches = []
        L = self.n_layers
        for k in range(1, L + 1):
            W, b = self.params[f"W{k}"], self.params.get(f"b{k}")
            z = torch.bmm(a, W) if b is None else torch.baddbmm(b.unsqueeze(1), a, W)  # Eq. 7.8/7.13
            if k == L and self.uses_logits:
                act, acache, out = None, None, z
            else:
                act = make_activation(self.activation if k < L else self.output_activation, self.alpha)
                out, acache = act.forward(z)  # Eq. 7.3 / 7.11
            caches.append((a, out, act, acache))
            a = out
        return caches

    @torch.no_grad()
    def loss_and_grads(self, X: Tensor, T: Tensor, return_deltas: bool = False):
        """Each network's loss, (N,), and gradients keyed like ``params`` (leading axis N)."""
        X3, T3 = self._inputs(X, T)
        caches = self._forward(X3)
        loss_fn = make_loss(self.loss)
        out = caches[-1][1]
        losses = self._per_net_loss(out, T3)
        _, lcache = loss_fn.forward(out, T3)  # the sum of the networks' losses
        d = loss_fn.backward(lcache)
        grads, deltas = OrderedDict(), OrderedDict()
        for k in range(self.n_layers, 0, -1):
            a_in, _, act, acache = caches[k - 1]
            if act is not None:
                d, _ = act.backward(d, acache)  # times F'(z_k): Eq. 7.5, 7.6, 7.19
            deltas[f"delta{k}"] = d
            grads[f"W{k}"] = torch.bmm(a_in.transpose(1, 2), d)  # sum over patterns of Input_i delta_h
            if self.bias:
                grads[f"b{k}"] = d.sum(1)
            if k > 1:
                d = torch.bmm(d, self.params[f"W{k}"].transpose(1, 2))  # sum_o v_{h,o} delta_o
        grads = OrderedDict((k, grads[k]) for k in self.params)
        if return_deltas:
            return losses, grads, OrderedDict(sorted(deltas.items()))
        return losses, grads

    def _per_net_loss(self, out: Tensor, T3: Tensor) -> Tensor:
        """Each network's own loss (the definitions of :mod:`handgrad.losses`, per network)."""
        if self.loss == "sse":
            return 0.5 * ((T3 - out) ** 2).sum((1, 2))
        if self.loss == "mse":
            return ((T3 - out) ** 2).mean((1, 2))
        log_p = torch.log_softmax(out, dim=-1)
        return -(T3 * log_p).sum((1, 2)) / out.shape[1]


class EnsembleSGD:
    """SGD with momentum for every network at once: v = m v - eta g; p = p + v."""

    def __init__(self, ens: Ensemble, eta: float, momentum: float = 0.0):
        if not (float(eta) > 0):
            raise bad("eta", "a learning rate > 0", repr(eta))
        if not (0 <= float(momentum) < 1):
            raise bad("momentum", "a value in [0, 1)", repr(momentum))
        self.ens, self.eta, self.momentum = ens, float(eta), float(momentum)
        self.velocity = OrderedDict((k, torch.zeros_like(p)) for k, p in ens.params.items())

    @torch.no_grad()
    def step(self, X: Tensor, T: Tensor) -> Tensor:
        """One update of every network on (X, T); returns each network's loss before it."""
        losses, grads = self.ens.loss_and_grads(X, T)
        vs, ps = list(self.velocity.values()), list(self.ens.params.values())
        torch._foreach_mul_(vs, self.momentum)
        torch._foreach_add_(vs, list(grads.values()), alpha=-self.eta)
        torch._foreach_add_(ps, vs)
        return losses


def vmap_oracle(ens: Ensemble, X: Tensor, T: Tensor):
    """Autograd's per-network losses and gradients: ``torch.func.vmap(torch.func.grad(...))`` over
    the oracle's independent forward pass, one network per mapped slice."""
    from torch.func import grad_and_value, vmap

    from . import oracle

    def f(params, X, T):
        return oracle.forward_pass(ens.spec_net, params, X, T)[0]

    dims = (0, 0 if X.dim() == 3 else None,
            0 if T.dim() == (3 if T.dtype.is_floating_point else 2) else None)
    if not T.dtype.is_floating_point and ens.loss != "cross_entropy":  # one_hot cannot run under vmap
        T = torch.nn.functional.one_hot(T.long(), ens.sizes[-1]).to(ens.dtype)
    params = {k: p.detach() for k, p in ens.params.items()}
    grads, losses = vmap(grad_and_value(f), in_dims=dims)(params, X, T)
    return losses, OrderedDict((k, grads[k]) for k in ens.params)


def ensemble_report(ens: Ensemble, X: Tensor, T: Tensor):
    """The check's report for an ensemble: every network's loss and gradients, hand vs vmap."""
    from .check import Report, compare, tolerances

    losses, grads = ens.loss_and_grads(X, T)
    losses_o, grads_o = vmap_oracle(ens, X, T)
    rtol, atol = tolerances(ens.dtype)
    report = Report(f"ensemble check: {ens.n_nets} x {ens.spec_net.describe()}")
    report.rows.append(compare("loss", "hand vs vmap(autograd)", losses, losses_o, rtol, atol))
    for k in grads_o:
        report.rows.append(compare(k, "hand vs vmap(autograd)", grads[k], grads_o[k], rtol, atol))
    return report
