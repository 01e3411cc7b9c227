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

FUSE_MAX_WEIGHTS = 1 << 16  # see FastStep.__init__
_sigmoid_bw = torch.ops.aten.sigmoid_backward.grad_input
_tanh_bw = torch.ops.aten.tanh_backward.grad_input
_threshold_bw = torch.ops.aten.threshold_backward.grad_input
_softmax_out = torch.ops.aten._softmax.out

# In place: g <- g * F'(z) / s, from the stored output F (Eq. 7.5 without its alpha, which is folded
# into a GEMM scalar).
_ACT_BACKWARD = {  # (g, F) -> F = g F'(z) / s, in place over F
    "logistic": lambda g, F: _sigmoid_bw(g, F, grad_input=F),
    "tanh": lambda g, F: _tanh_bw(g, F, grad_input=F),
    "relu": lambda g, F: _threshold_bw(g, F, 0.0, grad_input=F),
    "identity": None,
    "softmax": None,
}
_OUTPUT_BACKWARD = {  # (g, F) -> g = g F'(z) / s, in place over g (the outputs stay for the loss)
    "logistic": lambda g, F: _sigmoid_bw(g, F, grad_input=g),
    "tanh": lambda g, F: _tanh_bw(g, F, grad_input=g),
    "relu": lambda g, F: _threshold_bw(g, F, 0.0, grad_input=g),
    "identity": None,
    "softmax": None,
}
_ACT_FORWARD = {"logistic": Tensor.sigmoid_, "tanh": Tensor.tanh_, "relu": Tensor.relu_,
                "identity": None, "softmax": None}


class FastStep:
    """Allocation-free SGD-with-momentum training step for an :class:`~handgrad.MLP`.

    ``step(X, T)`` updates ``net.params`` in place: v = momentum v - eta dloss/dp; p = p + v.
    ``loss_and_grads(X, T, return_deltas=False)`` gives the same gradients as the reference path
    (copies, not views of the workspaces), so :func:`handgrad.check` can verify this path too.

    The step is compiled into plans (lists of tensors and scalars per layer) when the batch size or
    the parameter tensors change; replacing a tensor in ``net.params`` is noticed on the next call.
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
        # layers whose bias update rides in the weight GEMM (small ones, where a launch costs more
        # than the extra row; for large layers the odd-sized GEMM costs more than an addmv)
        self._fused = {k for k in range(2, net.n_layers + 1)
                       if net.bias and net.params[f"W{k}"].numel() <= FUSE_MAX_WEIGHTS}
        self.velocity, self._vel_aug = self._fused_store()
        self._batch = None
        self._graph = None
        self._grads = None
        self._params = []
        L = net.n_layers
        self._kinds = [net.activation] * (L - 1) + ["softmax" if net.uses_logits else net.output_activation]
        # s_k: the constant folded out of layer k's derivative (the logistic gain alpha, Eq. 7.5)
        self._scales = [net.alpha if kind == "logistic" else 1.0 for kind in self._kinds]

    # ------------------------------------------------------------------ workspaces and plans
    def _fused_store(self):
        """Zeroed tensors keyed like ``params``.  For the fused layers (k >= 2, biases), W_k's and b_k's
        live in one (fan_in + 1, fan_out) tensor (rows of W, then b), so that a single GEMM against
        the layer input with a column of ones appended, [a, 1]^T delta, updates both."""
        net, store, fused = self.net, {}, {}
        for k in range(1, net.n_layers + 1):
            W = net.params[f"W{k}"]
            if k in self._fused:
                both = torch.zeros(W.shape[0] + 1, W.shape[1], dtype=W.dtype, device=W.device)
                store[f"W{k}"], store[f"b{k}"], fused[k] = both[:-1], both[-1], both
            else:
                store[f"W{k}"] = torch.zeros_like(W)
                if net.bias:
                    store[f"b{k}"] = torch.zeros_like(net.params[f"b{k}"])
        return store, fused

    def _ready(self, B: int) -> None:
        """(Re)build workspaces and plans if the batch size or a parameter tensor changed."""
        params = self.net.params
        if self._batch == B and len(params) == len(self._params) and all(
                p is q for p, q in zip(params.values(), self._params)):
            return
        net = self.net
        opts = dict(dtype=net.dtype, device=net.device)
        widths = net.sizes[1:]
        L = net.n_layers
        if self._batch != B:
            # a layer feeding a fused layer gets a trailing column of ones (see _fused_store);
            # its own values are the view [:, :n]
            self._acts_full = [torch.empty(B, n + (1 if j + 2 in self._fused else 0), **opts)
                               for j, n in enumerate(widths)]
            for j, buf in enumerate(self._acts_full):
                if j + 2 in self._fused:
                    buf[:, -1] = 1.0
            self._acts = [buf[:, :n] for buf, n in zip(self._acts_full, widths)]  # F_k (logits: softmax)
            # Deltas need little room of their own: delta'_L goes to _dout; below the top,
            # dA_{k-1} = delta_k W_k^T goes to _tmp and delta'_{k-1} = dA_{k-1} F'/s overwrites
            # layer k-1's activation buffer in place (its last use): deltas cost no more memory.
            self._dout = torch.empty(B, widths[-1], **opts)
            self._tmp = torch.empty(B * max(widths[:-1]), **opts) if L > 1 else None
            self._d = self._acts[:-1] + [self._dout]  # where delta'_k lives after the backward
            self._probs = torch.empty(B, widths[-1], **opts) if self._kinds[-1] == "softmax" else None
            self._onehot = self._neg_ones = None  # made on the first call with class-index targets
            self._ones = torch.ones(B, **opts)
            self._batch = B
            self._graph = None
        self._params = list(params.values())
        kinds, scales = self._kinds, self._scales
        if kinds[-1] == "softmax":
            s_out = 1.0 / B                                      # (P - Y) / B
        else:
            s_out = scales[-1] * (2.0 / (B * widths[-1]) if net.loss == "mse" else 1.0)
        self._s = scales[:-1] + [s_out]                          # delta_k = s_k delta'_k
        self._fwd = []
        for k in range(1, L + 1):
            W, b, s = params[f"W{k}"], params.get(f"b{k}"), scales[k - 1]
            self._fwd.append((W, b, s, self._acts[k - 1], _ACT_FORWARD[kinds[k - 1]]))
        self._bwd_vel = self._plan(self.velocity, self._vel_aug)
        self._bwd_grad = None if self._grads is None else self._plan(self._grads, self._grads_aug)
        self._param_list = list(params.values())
        self._vel_list = [self.velocity[k] for k in params]

    def _plan(self, targets: dict, fused: dict) -> list:
        """The backward walk, layer L down to 1, writing into ``targets``."""
        net, params, kinds = self.net, self.net.params, self._kinds
        plan = []
        for k in range(net.n_layers, 0, -1):
            prev = k - 2  # index of layer k-1's buffers
            if k in fused:  # [a, 1]^T delta' into the fused (W; b) target
                tW, tb, a_in = fused[k], None, self._acts_full[prev]
            else:
                tW, tb = targets[f"W{k}"], targets.get(f"b{k}")
                a_in = self._acts[prev] if k > 1 else None  # None: the network's input X
            act_bw = _ACT_BACKWARD[kinds[prev]] if k > 1 else None
            if k == 1:
                dA = None
            elif act_bw is None:  # identity: dA_{k-1} is delta'_{k-1}; write it in place at once
                dA = self._acts[prev]
            else:
                dA = self._tmp[:self._acts[prev].numel()].view(self._acts[prev].shape)
            plan.append((tW, tb, a_in, self._s[k - 1], self._d[k - 1], params[f"W{k}"],
                         dA, self._acts[prev] if k > 1 else None, act_bw))
        return plan

    def workspace_bytes(self) -> int:
        """Bytes held in workspaces beyond the parameters and the momentum state (each storage
        counted once)."""
        if not self._batch:
            return 0
        bufs = self._acts_full + [self._dout, self._ones] + [
            t for t in (self._tmp, self._probs, self._onehot, self._neg_ones) if t is not None]
        bufs += list(self._grads.values()) if self._grads else []
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in bufs}
        return sum(storages.values())

    def reset(self) -> None:
        """Zero the momentum (velocity) state."""
        for v in self.velocity.values():
            v.zero_()

    # ------------------------------------------------------------------ passes
    def _forward(self, X: Tensor) -> Tensor:
        """z_k = a_{k-1} W_k + b_k (Eq. 7.8, 7.13), scaled by s_k = alpha for the logistic, then
        F in place (Eq. 7.3, 7.11)."""
        a = X
        for W, b, s, out, act in self._fwd:
            if b is None:
                if s == 1.0:
                    torch.mm(a, W, out=out)
                else:
                    torch.addmm(out, a, W, beta=0, alpha=s, out=out)
            elif s == 1.0:
                torch.addmm(b, a, W, out=out)
            else:
                torch.addmm(b, a, W, beta=s, alpha=s, out=out)  # alpha (Eq. 7.5) folded in
            if act is not None:
                act(out)
            a = out
        return a

    def _output_delta(self, T: Tensor) -> None:
        """delta'_L into the last delta buffer (delta_L = s_out delta'_L)."""
        out, d, kind = self._acts[-1], self._dout, self._kinds[-1]
        if kind == "softmax":
            _softmax_out(out, 1, False, out=self._probs)
            if T.dtype.is_floating_point:
                torch.sub(self._probs, T, out=d)                 # P - Y
            else:
                if self._neg_ones is None:
                    self._neg_ones = torch.full((self._batch, 1), -1.0, dtype=d.dtype, device=d.device)
                d.copy_(self._probs)
                d.scatter_add_(1, T.view(-1, 1), self._neg_ones)  # P - onehot(T)
            return
        if not T.dtype.is_floating_point:
            if self._onehot is None:
                self._onehot = torch.zeros_like(d)
            self._onehot.zero_()
            self._onehot.scatter_(1, T.view(-1, 1), 1.0)
            T = self._onehot
        torch.sub(out, T, out=d)  # dSSE/dA = -E = A - T (Eq. 7.21, 7.22)
        bw = _OUTPUT_BACKWARD[kind]
        if bw is not None:
            bw(d, out)  # times F'(z_L) / s: the output factor of Eq. 7.6 (the output is kept)

    def _backward(self, X: Tensor, plan: list, beta: float, scale: float) -> None:
        """Walk the layers backwards, writing into the plan's targets (velocities or gradients):
        target_W = beta target_W + scale s_k a_{k-1}^T delta'_k (and the same for the bias).
        With the velocities, beta = momentum and scale = -eta this is the momentum update; with
        gradients, beta = 0 and scale = 1."""
        ones = self._ones
        for tW, tb, a_in, s, d, W, dA, F_prev, act_bw in plan:
            torch.addmm(tW, X.t() if a_in is None else a_in.t(), d, beta=beta, alpha=scale * s, out=tW)
            if tb is not None:
                torch.addmv(tb, d.t(), ones, beta=beta, alpha=scale * s, out=tb)
            if dA is not None:  # dA_{k-1} = delta_k W_k^T; none for the network's input
                if s == 1.0:
                    torch.mm(d, W.t(), out=dA)
                else:
                    torch.addmm(dA, d, W.t(), beta=0, alpha=s, out=dA)
                if act_bw is not None:  # delta'_{k-1} = dA F'(z_{k-1}) / s_{k-1} (Eq. 7.19),
                    act_bw(dA, F_prev)  # written over the activation F_{k-1}, its last use

    def _check(self, X: Tensor, T: Tensor) -> None:
        net = self.net
        if self.validate:
            validate.check_X(X, net.sizes[0], net.dtype, net.device)
            validate.check_T(T, X.shape[0] if X.dim() == 2 else 1, net.sizes[-1], net.dtype,
                             net.device, X.dim() == 1)
        if not isinstance(X, Tensor) or X.dim() != 2 or X.shape[1] != net.sizes[0] \
                or X.dtype != net.dtype or X.device != net.device or X.shape[0] == 0:
            validate.check_X(X, net.sizes[0], net.dtype, net.device)  # raises the precise error
            raise bad("X", f"a batch of shape (batch, {net.sizes[0]}) for the fast step",
                      f"shape {tuple(X.shape)}")
        B = X.shape[0]
        if not isinstance(T, Tensor) or T.device != net.device or (
                T.dtype.is_floating_point and (T.dtype != net.dtype or tuple(T.shape) != (B, net.sizes[-1]))
        ) or (not T.dtype.is_floating_point and (T.dtype != torch.int64 or tuple(T.shape) != (B,))):
            validate.check_T(T, B, net.sizes[-1], net.dtype, net.device, False)
            raise bad("T", f"float rows ({B}, {net.sizes[-1]}) or int64 class indices ({B},)",
                      f"{tuple(T.shape)} {T.dtype}")

    def _step(self, X: Tensor, T: Tensor) -> None:
        self._forward(X)
        self._output_delta(T)
        self._backward(X, self._bwd_vel, self.momentum, -self.eta)
        torch._foreach_add_(self._param_list, self._vel_list)

    # ------------------------------------------------------------------ public
    def step(self, X: Tensor, T: Tensor) -> None:
        """One SGD-with-momentum update on the batch (X, T), with gradients disabled (set
        directly: the ``no_grad`` context manager alone costs a tenth of a small net's step)."""
        grad_was = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)
        try:
            if self._graph is not None and X.shape[0] == self._batch:
                self._static_X.copy_(X)
                self._static_T.copy_(T)
                self._graph.replay()
                return
            self._check(X, T)
            self._ready(X.shape[0])
            self._step(X, T)
        finally:
            torch._C._set_grad_enabled(grad_was)

    @torch.no_grad()
    def loss_and_grads(self, X: Tensor, T: Tensor, return_deltas: bool = False):
        """Loss and gradients computed with the fast path's kernels (copies, safe to keep)."""
        self._check(X, T)
        self._ready(X.shape[0])
        if self._grads is None:
            self._grads, self._grads_aug = self._fused_store()
            self._bwd_grad = self._plan(self._grads, self._grads_aug)
        self._forward(X)
        self._output_delta(T)
        self._backward(X, self._bwd_grad, 0.0, 1.0)
        from .losses import make_loss  # the loss value itself, for the report
        Y = T if T.dtype.is_floating_point else torch.nn.functional.one_hot(T, self.net.sizes[-1]).to(X.dtype)
        loss = make_loss(self.net.loss).forward(self._acts[-1], Y)[0]
        grads = {k: g.clone() for k, g in self._grads.items()}
        if not return_deltas:
            return loss, grads
        # the buffers hold delta' (constants folded out); multiply the constants back in
        deltas = {f"delta{k + 1}": self._d[k] * self._s[k] for k in range(len(self._d))}
        return loss, grads, deltas

    def capture(self, X: Tensor, T: Tensor) -> None:
        """CUDA only: record the whole step for inputs shaped like (X, T) in a CUDA graph; later
        ``step`` calls with that batch size copy their inputs in and replay it."""
        if self.net.device.type != "cuda":
            raise bad("device", "a CUDA network for CUDA-graph capture", str(self.net.device))
        self._check(X, T)
        self._ready(X.shape[0])
        self._static_X, self._static_T = X.clone(), T.clone()
        snapshot = {k: p.clone() for k, p in self.net.params.items()}
        vsnap = {k: v.clone() for k, v in self.velocity.items()}
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s), torch.no_grad():
            for _ in range(3):  # warm up on a side stream, as torch.cuda.graphs requires
                self._step(self._static_X, self._static_T)
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad():
            self._step(self._static_X, self._static_T)
        with torch.no_grad():  # undo the warm-up and capture updates
            for k, p in self.net.params.items():
                p.copy_(snapshot[k])
            for k, v in self.velocity.items():
                v.copy_(vsnap[k])
        self._graph = graph
