"""The fast training step: forward, hand-written backward and SGD-with-momentum update, with no
per-step allocations once warm.

It computes what :meth:`handgrad.MLP.loss_and_grads` computes (a test compares them to the dtype's
tolerance), reorganised for speed:

* workspaces for activations, deltas, velocities and gradients, allocated once per batch size and
  reused; every op writes into them with ``out=`` or in place;
* ``torch.addmm`` adds the bias inside the GEMM; for the logistic the gain alpha is folded into the
  same GEMM's scalars (z' = alpha b + alpha a W) and the activation is applied in place;
* the activation derivative comes from the stored output in one fused kernel
  (``sigmoid_backward`` = dy F (1 - F), ``tanh_backward``, ``threshold_backward``); the constant
  factors (alpha of Eq. 7.5, 2/n of MSE, 1/batch of cross-entropy) are folded into the next GEMM's
  scalar instead of a separate pass, so the buffers hold delta' with delta_k = s_k delta'_k;
* the momentum update is folded into the gradient GEMM: v = m v - eta s_k a^T delta'_k is one
  ``addmm`` (beta = m, alpha = -eta s_k), the bias one ``addmv``; parameters get ``_foreach_add_``;
* the first layer's input gradient is never computed; transposes are strided views, not copies;
* on CUDA, :meth:`FastStep.capture` records the whole step in a CUDA graph that ``step`` replays.

With ``validate=True`` (the default) every call checks its inputs fully (shape, dtype, device, NaN/Inf,
label range) and raises a clear error; with ``validate=False`` only the cheap attribute tests (shape,
dtype, device) remain, for a trainer that has checked its data once (a full scan per step costs
reductions and, on CUDA, a sync).
"""
from __future__ import annotations

import torch

from . import validate
from .errors import bad

Tensor = torch.Tensor

_act_backward = {
    "logistic": lambda g, F, a: torch.ops.aten.sigmoid_backward.grad_input(g, F, grad_input=g),
    "tanh": lambda g, F, a: torch.ops.aten.tanh_backward.grad_input(g, F, grad_input=g),
    "relu": lambda g, F, a: torch.ops.aten.threshold_backward.grad_input(g, F, 0.0, grad_input=g),
    "identity": lambda g, F, a: g,
}


class FastStep:
    """Allocation-free SGD-with-momentum training step for an :class:`~handgrad.MLP`.

    ``step(X, T)`` updates ``net.params`` in place: v = momentum v - eta dloss/dp; p = p + v.
    ``loss_and_grads(X, T, return_deltas=False)`` gives the same gradients as the reference path
    (copies, not views of the workspaces), so :func:`handgrad.check` can verify this path too.
    """

    def __init__(self, net, eta: float, momentum: float = 0.0, validate: bool = True):
        self.net = net
        self.validate = bool(validate)
        self.eta = float(eta)
        self.momentum = float(momentum)
        if not (self.eta > 0):
            raise bad("eta", "a learning rate > 0", repr(eta))
        if not (0 <= self.momentum < 1):
            raise bad("momentum", "a value in [0, 1)", repr(momentum))
        self.velocity = {k: torch.zeros_like(p) for k, p in net.params.items()}
        self._batch = None
        self._graph = None
        L = net.n_layers
        kinds = [net.activation] * (L - 1) + ["softmax" if net.uses_logits else net.output_activation]
        # per layer: (W name, b name, activation kind, scale s_k folded out of its derivative)
        self._layers = [(f"W{k}", f"b{k}" if net.bias else None, kinds[k - 1],
                         net.alpha if kinds[k - 1] == "logistic" else 1.0) for k in range(1, L + 1)]

    # ------------------------------------------------------------------ workspaces
    def _workspace(self, B: int) -> None:
        if self._batch == B:
            return
        net = self.net
        opts = dict(dtype=net.dtype, device=net.device)
        widths = net.sizes[1:]
        self._acts = [torch.empty(B, n, **opts) for n in widths]  # F_k (logits for softmax)
        self._d = [torch.empty(B, n, **opts) for n in widths]     # delta'_k, then dA_{k}
        self._probs = torch.empty(B, widths[-1], **opts)
        self._onehot = torch.zeros(B, widths[-1], **opts)
        self._ones = torch.ones(B, **opts)
        self._grads = None  # allocated by loss_and_grads only; the training step never needs them
        self._batch = B
        self._graph = None

    def workspace_bytes(self) -> int:
        """Bytes held in workspaces beyond the parameters and the momentum state."""
        bufs = self._acts + self._d + [self._probs, self._onehot, self._ones] if self._batch else []
        bufs += list(self._grads.values()) if self._batch and self._grads else []
        return sum(b.numel() * b.element_size() for b in bufs)

    def reset(self) -> None:
        """Zero the momentum (velocity) state."""
        for v in self.velocity.values():
            v.zero_()

    # ------------------------------------------------------------------ passes
    def _forward(self, X: Tensor) -> Tensor:
        a = X
        params = self.net.params
        for (wn, bn, kind, s), out in zip(self._layers, self._acts):
            W = params[wn]
            if bn is None:
                torch.addmm(out, a, W, beta=0, alpha=s, out=out)
            else:
                torch.addmm(params[bn], a, W, beta=s, alpha=s, out=out)  # alpha folded (Eq. 7.5)
            if kind == "logistic":
                out.sigmoid_()
            elif kind == "tanh":
                out.tanh_()
            elif kind == "relu":
                out.relu_()
            a = out
        return a

    def _targets(self, T: Tensor) -> Tensor:
        if T.dtype.is_floating_point:
            return T
        self._onehot.zero_()
        self._onehot.scatter_(1, T.view(-1, 1), 1.0)
        return self._onehot

    def _output_delta(self, T: Tensor) -> float:
        """delta'_L into self._d[-1]; returns the scale s with delta_L = s delta'_L."""
        net, B = self.net, self._batch
        out, d = self._acts[-1], self._d[-1]
        Y = self._targets(T)
        wn, bn, kind, s = self._layers[-1]
        if kind == "softmax":
            torch.ops.aten._softmax.out(out, 1, False, out=self._probs)
            torch.sub(self._probs, Y, out=d)  # dloss/dz = (P - Y) / B
            return 1.0 / B
        torch.sub(out, Y, out=d)  # dSSE/dA = -E = A - T (Eq. 7.21, 7.22)
        _act_backward[kind](d, out, None)  # times F'(z) / s  (Eq. 7.6's output factor)
        return s * (2.0 / d.numel() if net.loss == "mse" else 1.0)

    def _backward(self, X: Tensor, write_grads: bool) -> None:
        """Walk the layers backwards.  write_grads=False: fold the momentum update into the GEMMs
        (into the velocities); True: write plain gradients into self._grads."""
        params, L = self.net.params, len(self._layers)
        s_out = self._s_out = self._output_delta(self._T)
        m, eta = self.momentum, self.eta
        for k in range(L, 0, -1):
            wn, bn, kind, s_k = self._layers[k - 1]
            s = s_out if k == L else s_k
            d = self._d[k - 1]
            a_prev = X if k == 1 else self._acts[k - 2]
            if write_grads:
                torch.addmm(self._grads[wn], a_prev.t(), d, beta=0, alpha=s, out=self._grads[wn])
                if bn is not None:
                    torch.addmv(self._grads[bn], d.t(), self._ones, beta=0, alpha=s, out=self._grads[bn])
            else:
                v = self.velocity[wn]
                torch.addmm(v, a_prev.t(), d, beta=m, alpha=-eta * s, out=v)
                if bn is not None:
                    vb = self.velocity[bn]
                    torch.addmv(vb, d.t(), self._ones, beta=m, alpha=-eta * s, out=vb)
            if k > 1:  # no gradient for the network's input
                d_prev = self._d[k - 2]
                torch.addmm(d_prev, d, params[wn].t(), beta=0, alpha=s, out=d_prev)  # dA_{k-1}
                _act_backward[self._layers[k - 2][2]](d_prev, self._acts[k - 2], None)

    def _check(self, X: Tensor, T: Tensor) -> None:
        net = self.net
        if self.validate:
            validate.check_X(X, net.sizes[0], net.dtype, net.device)
            validate.check_T(T, X.shape[0] if X.dim() == 2 else 1, net.sizes[-1], net.dtype,
                             net.device, X.dim() == 1)
        if not isinstance(X, Tensor) or X.dim() != 2 or X.shape[1] != net.sizes[0] \
                or X.dtype != net.dtype or X.device != net.device or X.shape[0] == 0:
            validate.check_X(X, net.sizes[0], net.dtype, net.device)  # raises the precise error
            if X.dim() == 1:
                raise bad("X", f"a batch of shape (batch, {net.sizes[0]}) for the fast step",
                          f"shape {tuple(X.shape)}")
        B = X.shape[0]
        if not isinstance(T, Tensor) or T.device != net.device or (
                T.dtype.is_floating_point and (T.dtype != net.dtype or tuple(T.shape) != (B, net.sizes[-1]))
        ) or (not T.dtype.is_floating_point and (T.dtype != torch.int64 or tuple(T.shape) != (B,))):
            validate.check_T(T, B, net.sizes[-1], net.dtype, net.device, False)
            raise bad("T", f"float rows ({B}, {net.sizes[-1]}) or int64 class indices ({B},)",
                      f"{tuple(T.shape)} {T.dtype}")

    # ------------------------------------------------------------------ public
    @torch.no_grad()
    def step(self, X: Tensor, T: Tensor) -> None:
        """One SGD-with-momentum update on the batch (X, T)."""
        if self._graph is not None and X.shape[0] == self._batch:
            self._static_X.copy_(X)
            self._static_T.copy_(T)
            self._graph.replay()
            return
        self._check(X, T)
        self._workspace(X.shape[0])
        self._T = T
        self._forward(X)
        self._backward(X, write_grads=False)
        torch._foreach_add_(list(self.net.params.values()), list(self.velocity.values()))

    @torch.no_grad()
    def loss_and_grads(self, X: Tensor, T: Tensor, return_deltas: bool = False):
        """Loss and gradients computed with the fast path's kernels (copies, safe to keep)."""
        self._check(X, T)
        self._workspace(X.shape[0])
        if self._grads is None:
            self._grads = {k: torch.empty_like(p) for k, p in self.net.params.items()}
        self._T = T
        self._forward(X)
        self._backward(X, write_grads=True)
        from .losses import make_loss  # the loss value itself, for the report
        out = self._acts[-1]
        loss = make_loss(self.net.loss).forward(out, self._targets(T).clone())[0]
        grads = {k: g.clone() for k, g in self._grads.items()}
        if not return_deltas:
            return loss, grads
        # the deltas in the buffers are delta' (scale folded out); multiply it back in
        L = len(self._layers)
        scales = [self._layers[k][3] for k in range(L - 1)] + [self._s_out]
        deltas = {f"delta{k + 1}": self._d[k] * scales[k] for k in range(L)}
        return loss, grads, deltas

    def capture(self, X: Tensor, T: Tensor) -> None:
        """CUDA only: record the whole step for inputs shaped like (X, T) in a CUDA graph; later
        ``step`` calls with that batch size copy their inputs in and replay it."""
        if self.net.device.type != "cuda":
            raise bad("device", "a CUDA network for CUDA-graph capture", str(self.net.device))
        self._check(X, T)
        self._workspace(X.shape[0])
        self._static_X, self._static_T = X.clone(), T.clone()
        snapshot = {k: p.clone() for k, p in self.net.params.items()}
        vsnap = {k: v.clone() for k, v in self.velocity.items()}
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s), torch.no_grad():
            for _ in range(3):  # warm up on a side stream, as torch.cuda.graphs requires
                self._T = self._static_T
                self._forward(self._static_X)
                self._backward(self._static_X, write_grads=False)
                torch._foreach_add_(list(self.net.params.values()), list(self.velocity.values()))
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad():
            self._T = self._static_T
            self._forward(self._static_X)
            self._backward(self._static_X, write_grads=False)
            torch._foreach_add_(list(self.net.params.values()), list(self.velocity.values()))
        with torch.no_grad():  # undo the warm-up and capture updates
            for k, p in self.net.params.items():
                p.copy_(snapshot[k])
            for k, v in self.velocity.items():
                v.copy_(vsnap[k])
        self._graph = graph
