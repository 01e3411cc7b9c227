"""Curvature-vector products by hand: the Hessian-vector product H v (Pearlmutter's R-operator, 1994)
and the generalised Gauss-Newton product G v, each checked against autograd and finite differences.

Notation as in :mod:`handgrad.mlp`: a_0 = X, z_k = a_{k-1} W_k + b_k, a_k = f(z_k) (k = 1..L; with
cross-entropy the output layer has no activation: z_L are the logits), delta_k = dloss/dz_k.  The
direction v is a dict keyed like ``net.params``: V_k for W_k, Vb_k for b_k.  The R-operator
R{x} = d/de x(theta + e v) |_{e=0} is applied to every line of the forward and backward pass.

Forward (directional derivatives of the node inputs and activations; R{a_0} = R{X} = 0):

    R{z_k} = R{a_{k-1}} W_k + a_{k-1} V_k + Vb_k
    R{a_k} = f'(z_k) * R{z_k}

Loss (g = dloss/dA; A = a_L the output activations):

    sse:   g = A - T,            R{g} = R{A}
    mse:   g = 2 (A - T) / N,    R{g} = 2 R{A} / N              (N = batch * outputs)
           delta_L = g * f'(z_L)
           R{delta_L} = R{g} * f'(z_L) + g * f''(z_L) * R{z_L}
    cross_entropy (p = softmax(z_L), B = batch):
           delta_L = (p - T) / B
           R{delta_L} = (p * R{z_L} - p * sum_o(p * R{z_L})) / B   (the softmax Jacobian times R{z_L})

Backward (k = L-1 .. 1):

    delta_k    = (delta_{k+1} W_{k+1}^T) * f'(z_k)
    R{delta_k} = (R{delta_{k+1}} W_{k+1}^T + delta_{k+1} V_{k+1}^T) * f'(z_k)
                 + (delta_{k+1} W_{k+1}^T) * f''(z_k) * R{z_k}

Products (the R-operator of dW_k = a_{k-1}^T delta_k and db_k = sum_batch delta_k):

    (H v)[W_k] = R{dW_k} = R{a_{k-1}}^T delta_k + a_{k-1}^T R{delta_k}
    (H v)[b_k] = R{db_k} = sum over the batch of R{delta_k}

Second derivatives of the activations, from their outputs:

    logistic (gain alpha), F = 1/(1+exp(-alpha z)):  f' = alpha F (1-F),  f'' = alpha^2 F (1-F) (1-2F)
    tanh, a = tanh z:                                 f' = 1 - a^2,        f'' = -2 a (1 - a^2)
    relu:                                             f' = [z > 0],        f'' = 0
    identity:                                         f' = 1,              f'' = 0

Gauss-Newton: G v = J^T H_L J v, with J the Jacobian of the network's output (the activations A for
sse/mse, the logits z_L for cross-entropy) with respect to the parameters and H_L the Hessian of the
loss with respect to that output.  J v = R{A} (or R{z_L}) is the same R-forward; H_L J v is R{g} for
sse/mse (c R{A}, c = 1 or 2/N) and the softmax product above for cross-entropy; J^T is an ordinary
backward pass from there, i.e. the R-backward without its second-order terms (no f'', no
delta V^T, no R{a}^T delta):

    u_L = R{g} * f'(z_L)  (sse/mse)   or   R{delta_L}  (cross-entropy)
    u_k = (u_{k+1} W_{k+1}^T) * f'(z_k)
    (G v)[W_k] = a_{k-1}^T u_k,    (G v)[b_k] = sum over the batch of u_k

H - G is the sum over outputs of (dloss/doutput) times the output's own Hessian in the parameters.
It vanishes when the residual dloss/doutput is zero (T equal to the network's output, or to its
softmax probabilities for cross-entropy), and when the output is linear in the parameters: a network
with no hidden layer and the identity output.  A *deep* linear network is not linear in its
parameters (its output is a product W_1 W_2 ...), so there H != G in general.

Everything here runs under ``torch.no_grad()`` on tensors that do not require grad: plain tensor ops,
no autograd.  :func:`hvp_report` compares the result with autograd (double backward over the
independent twin :func:`handgrad.oracle.forward_pass`) and, in float64, with central finite
differences of the oracle's gradients.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from types import SimpleNamespace

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

from . import oracle
from .check import FD_STEP, FD_TOLERANCE, Report, compare, missing_row, tolerances
from .errors import bad
from .layers import make_activation
from .losses import make_loss
from .validate import check_finite

Tensor = torch.Tensor

# Terms that tests may drop to prove that the report catches their absence (private).
_TERMS = ("f2", "delta_VT", "Ra_delta")


# ---------------------------------------------------------------------------- hand path
def _activation(name: str, alpha: float, z: Tensor, second: bool = True):
    """``(a, f'(z), f''(z))`` from the activation layer of :mod:`handgrad.layers` (derivatives taken
    from the output ``a``).  ``None`` stands for f' = 1 (identity) or f'' = 0 (relu, identity, or
    ``second=False``), so those factors and terms are skipped, not multiplied out."""
    layer = make_activation(name, alpha)
    a, cache = layer.forward(z)
    return a, layer.derivative(cache), layer.second_derivative(cache) if second else None


def _mul(x: Tensor, f: Tensor | None) -> Tensor:
    return x if f is None else x * f


def forward_cache(net, X: Tensor, second: bool = True):
    """The hand forward pass on checked input X (batch, inputs); ``second=False`` skips f''.

    Returns ``(inputs, zs, f1s, f2s, out)``: ``inputs[k-1]`` = a_{k-1} (the input of layer k),
    ``zs[k-1]`` = z_k, f'(z_k) and f''(z_k) (``None`` for 1 and 0; both ``None`` for the
    cross-entropy output layer, whose softmax lives in the loss), and the output (A, or the logits).
    """
    L = net.n_layers
    inputs, zs, f1s, f2s = [], [], [], []
    a = X
    for k in range(1, L + 1):
        W, b = net.params[f"W{k}"], net.params.get(f"b{k}")
        inputs.append(a)
        z = a @ W if b is None else torch.addmm(b, a, W)
        zs.append(z)
        if k == L and net.uses_logits:
            a, f1, f2 = z, None, None
        else:
            a, f1, f2 = _activation(net.activation if k < L else net.output_activation, net.alpha, z, second)
        f1s.append(f1)
        f2s.append(f2)
    return inputs, zs, f1s, f2s, a


def _check_v(net, v) -> "OrderedDict[str, Tensor]":
    names = list(net.params)
    if not isinstance(v, Mapping):
        raise bad("v", f"a dict of tensors keyed like net.params ({', '.join(names)})", type(v).__name__)
    missing = [k for k in names if k not in v]
    extra = [str(k) for k in v if k not in net.params]
    if missing or extra:
        got = "; ".join(s for s in (f"missing {missing}" if missing else "",
                                    f"unknown {extra}" if extra else "") if s)
        raise bad("v", f"exactly the keys of net.params {names}", got)
    out = OrderedDict()
    for k in names:
        t = v[k]
        arg = f"v[{k}]"
        p = net.params[k]
        if not isinstance(t, torch.Tensor):
            raise bad(arg, "a torch.Tensor", type(t).__name__)
        where = f"shape {tuple(t.shape)} {str(t.dtype).removeprefix('torch.')} on {t.device}"
        if tuple(t.shape) != tuple(p.shape):
            raise bad(arg, f"shape {tuple(p.shape)} (like net.params[{k!r}])", where)
        if t.dtype != p.dtype:
            raise bad(arg, f"dtype {str(p.dtype).removeprefix('torch.')} (the parameters' dtype)", where)
        if t.device != p.device:
            raise bad(arg, f"device {p.device} (the parameters' device)", where)
        t = t.detach()
        check_finite(arg, t)
        out[k] = t
    return out


def _r_pass(net, X: Tensor, T: Tensor, v, *, gn: bool = False, omit=()):
    """The R-forward and R-backward on checked inputs (X, T float rows) and a checked ``v``.

    Returns ``(loss, products, Rz, Rdelta)``: the product (H v, or G v with ``gn``) keyed like
    ``net.params``, and the lists R{z_k}, R{delta_k} (for G v: the back-propagated u_k).
    ``omit``: names from ``_TERMS`` to leave out (only to prove that the check catches them).
    """
    omit = frozenset(omit)
    unknown = omit - set(_TERMS)
    if unknown:
        raise bad("_omit", f"names from {_TERMS}", repr(sorted(unknown)))
    L = net.n_layers
    inputs, zs, f1s, f2s, out = forward_cache(net, X)

    # R-forward: R{z_k} = R{a_{k-1}} W_k + a_{k-1} V_k + Vb_k,  R{a_k} = f'(z_k) R{z_k}
    Rinputs: list[Tensor | None] = [None]               # R{a_0} = 0
    Rz = []
    for k in range(1, L + 1):
        a, Ra = inputs[k - 1], Rinputs[k - 1]
        r = a @ v[f"W{k}"]
        if Ra is not None:
            r = r + Ra @ net.params[f"W{k}"]
        if f"b{k}" in v:
            r = r + v[f"b{k}"]
        Rz.append(r)
        if k < L:
            Rinputs.append(_mul(r, f1s[k - 1]))

    # the loss, its gradient and the R-operator of its delta
    loss_fn = make_loss(net.loss)
    loss, cache = loss_fn.forward(out, T)
    g = loss_fn.backward(cache)                          # dloss/dA, or delta_L for cross-entropy
    RzL = Rz[-1]
    if net.uses_logits:
        p = torch.exp(cache[0])                          # softmax(z_L) from the stored log p
        pRz = p * RzL
        Rdelta = (pRz - p * pRz.sum(1, keepdim=True)) / X.shape[0]
        delta = g
    else:
        c = 1.0 if net.loss == "sse" else 2.0 / out.numel()
        RA = _mul(RzL, f1s[-1])
        Rg = RA if c == 1.0 else RA * c                  # R{g} = c R{A} = H_L J v
        Rdelta = _mul(Rg, f1s[-1])
        delta = None if gn else _mul(g, f1s[-1])
        if not gn and f2s[-1] is not None and "f2" not in omit:
            Rdelta = Rdelta + g * f2s[-1] * RzL

    Rdeltas: list[Tensor] = [None] * L
    products: dict[str, Tensor] = {}
    for k in range(L, 0, -1):
        Rdeltas[k - 1] = Rdelta
        dW = inputs[k - 1].t() @ Rdelta                  # a_{k-1}^T R{delta_k}
        if not gn and Rinputs[k - 1] is not None and "Ra_delta" not in omit:
            dW = dW + Rinputs[k - 1].t() @ delta         # + R{a_{k-1}}^T delta_k
        products[f"W{k}"] = dW
        if f"b{k}" in net.params:
            products[f"b{k}"] = Rdelta.sum(0)
        if k == 1:
            break
        W = net.params[f"W{k}"]
        Rback = Rdelta @ W.t()                           # R{delta_{k+1}} W_{k+1}^T, one layer down
        if not gn:
            back = delta @ W.t()                         # delta_{k+1} W_{k+1}^T
            if "delta_VT" not in omit:
                Rback = Rback + delta @ v[f"W{k}"].t()   # + delta_{k+1} V_{k+1}^T
            delta = _mul(back, f1s[k - 2])
        Rdelta = _mul(Rback, f1s[k - 2])
        if not gn and f2s[k - 2] is not None and "f2" not in omit:
            Rdelta = Rdelta + back * f2s[k - 2] * Rz[k - 2]
    products = OrderedDict((name, products[name]) for name in net.params)
    return loss, products, Rz, Rdeltas


@torch.no_grad()
def hvp(net, X: Tensor, T: Tensor, v, *, _omit=()) -> "OrderedDict[str, Tensor]":
    """H v: the Hessian of the loss with respect to all parameters times the direction ``v`` (a dict
    keyed like ``net.params``), by Pearlmutter's R-operator (see the module docstring for the
    equations).  Returns a dict keyed like ``net.params``.  X, T as for ``net.loss_and_grads``."""
    X2, T2, _ = net._inputs(X, T)
    return _r_pass(net, X2, T2, _check_v(net, v), omit=_omit)[1]


@torch.no_grad()
def gauss_newton(net, X: Tensor, T: Tensor, v) -> "OrderedDict[str, Tensor]":
    """G v = J^T H_L J v, the generalised Gauss-Newton matrix times ``v`` (J: the Jacobian of the
    output, A for sse/mse and the logits for cross-entropy; H_L: the loss Hessian in that output).
    The same R-forward as :func:`hvp`, then a backward pass without the second-order terms."""
    X2, T2, _ = net._inputs(X, T)
    return _r_pass(net, X2, T2, _check_v(net, v), gn=True)[1]


# ---------------------------------------------------------------------------- oracles
def _leaves(params) -> dict:
    return {k: p.detach() for k, p in params.items()}


def _loss_fn(net, X, T):
    return lambda p: oracle.forward_pass(net, p, X, T)[0]


def _reverse_hvp(f, inputs: tuple, vs: tuple) -> tuple:
    """Reverse-over-reverse H v (``torch.autograd.functional.hvp``: double backward).

    Not ``torch.func.jvp(torch.func.grad(f))``: in torch <= 2.15 forward-over-reverse through
    ``F.mse_loss(reduction="mean")`` raises "ZeroTensors are immutable" (pytorch/pytorch#123996)."""
    with torch.enable_grad():
        _, hv = torch.autograd.functional.hvp(f, inputs, vs)
    return tuple(h.detach() for h in hv)


def oracle_hvp(net, X, T, v):
    """Autograd's H v: double backward over the twin's loss."""
    names = list(net.params)
    f = lambda *ps: oracle.forward_pass(net, dict(zip(names, ps)), X, T)[0]
    hv = _reverse_hvp(f, tuple(p.detach() for p in net.params.values()), tuple(v[k] for k in names))
    return OrderedDict(zip(names, hv))


def oracle_grad(net, X, T, params):
    with torch.enable_grad():
        g = torch.func.grad(_loss_fn(net, X, T))(_leaves(params))
    return OrderedDict((k, g[k].detach()) for k in params)


def oracle_rz(net, X, T, v):
    """R{z_k} by autograd: the jvp of the twin's node inputs along v."""
    with torch.enable_grad():
        _, rz = torch.func.jvp(lambda p: tuple(oracle.forward_pass(net, p, X, T)[1]),
                               (_leaves(net.params),), (dict(v),))
    return [r.detach() for r in rz]


def oracle_rdelta(net, X, T, v):
    """R{delta_k} by autograd: dual tensors (forward AD, tangent v) through the twin's forward pass
    and through ``torch.autograd.grad(loss, zs, create_graph=True)``.  T: float rows (class indices
    would reach mse's double backward as a tangent-less one-hot, which forward AD refuses)."""
    with fwAD.dual_level(), torch.enable_grad():
        leaves = {k: fwAD.make_dual(p.detach().clone().requires_grad_(True), v[k])
                  for k, p in net.params.items()}
        # float targets carry a materialised zero tangent: without one, mse_loss's double backward
        # writes into an immutable ZeroTensor
        Td = fwAD.make_dual(T.detach(), torch.zeros_like(T)) if T.dtype.is_floating_point else T
        loss, zs = oracle.forward_pass(net, leaves, X, Td)
        ds = torch.autograd.grad(loss, zs, create_graph=True)
        out = []
        for d in ds:
            t = fwAD.unpack_dual(d).tangent
            out.append(torch.zeros_like(d).detach() if t is None else t.detach().clone())
    return out


def _output_fn(net, X, T):
    """The twin's network output as a function of the parameters: logits (cross-entropy) or A."""
    act = oracle._act(net.output_activation, net.alpha)

    def out(p):
        z_L = oracle.forward_pass(net, p, X, T)[1][-1]
        return z_L if net.loss == "cross_entropy" else act(z_L)
    return out


def _loss_of_output(net, T, n_rows):
    """The loss as a function of the network output (written here with torch.nn.functional)."""
    Tt = oracle._targets(net, T, n_rows)
    if net.loss == "cross_entropy":
        return lambda o: F.cross_entropy(o, Tt, reduction="mean")
    if net.loss == "sse":
        return lambda o: 0.5 * torch.sum((Tt - o) ** 2)
    return lambda o: F.mse_loss(o, Tt, reduction="mean")


def oracle_gauss_newton(net, X, T, v, *, fd_step=None):
    """Autograd's G v: J v = jvp of the twin's output, H_L (J v) = double backward of the loss in
    the output, then J^T (H_L J v) = vjp of the output.

    ``fd_step``: instead, the finite-difference referee: J v and H_L (J v) by central differences
    (of the output, and of the loss gradient in the output), only J^T by autograd's vjp.
    """
    params = _leaves(net.params)
    out_fn = _output_fn(net, X, T)
    n_rows = 1 if X.dim() == 1 else X.shape[0]
    loss_out = _loss_of_output(net, T, n_rows)
    with torch.enable_grad():
        out0, vjp_fn = torch.func.vjp(out_fn, params)
        if fd_step is None:
            _, Jv = torch.func.jvp(out_fn, (params,), (dict(v),))
            (HJv,) = _reverse_hvp(loss_out, (out0.detach(),), (Jv,))
        else:
            h = fd_step
            up = out_fn({k: p + h * v[k] for k, p in params.items()})
            down = out_fn({k: p - h * v[k] for k, p in params.items()})
            Jv = (up - down) / (2 * h)
            gl = torch.func.grad(loss_out)
            HJv = (gl(out0 + h * Jv) - gl(out0 - h * Jv)) / (2 * h)
        (gv,) = vjp_fn(HJv.detach())
    return OrderedDict((k, gv[k].detach()) for k in params)


def _float64_spec(net):
    return SimpleNamespace(sizes=net.sizes, activation=net.activation, alpha=net.alpha,
                           output_activation=net.output_activation, loss=net.loss,
                           dtype=torch.float64)


# ---------------------------------------------------------------------------- report
def hvp_report(net, X: Tensor, T: Tensor, v, *, gauss_newton: bool = False, fd: bool = True,
               _omit=()) -> Report:
    """Compare the hand-written H v (or G v with ``gauss_newton=True``) with autograd and, with
    ``fd``, with float64 central finite differences.

    Rows (tensor names ``W1``, ``b1``, ... for the product; ``Rz{k}``, ``Rdelta{k}`` for the R-pass):

    * ``loss`` and ``Rz{k}`` (R{z_k}, the shared R-forward) against the twin and its jvp;
    * H v: ``Rdelta{k}`` against forward-over-reverse autograd (dual tensors through
      ``autograd.grad``) and each product tensor against double-backward autograd
      (``torch.autograd.functional.hvp``);
      G v: each product tensor against jvp/vjp of the twin's output and the loss Hessian in the
      output;
    * finite differences (float64 copies of everything, whatever the network's dtype): H v against
      (g(theta + h v) - g(theta - h v)) / 2h with g the *oracle's* gradient; G v against J^T of
      central differences of J v and of the output-space loss gradient.  Both the hand result and the
      oracle are compared with the referee.

    Tolerances: ``tolerances(dtype)`` for hand vs autograd.  Finite differences: h = FD_STEP / max|v|
    (so the largest parameter moves by FD_STEP = 1e-5).  Truncation ~ FD_STEP^2/6 times the third
    derivative (~1e-11 of the curvature scale) and rounding ~ eps max|g| / h ~ 2e-11 max|g| max|v|,
    so (rtol, atol) = FD_TOLERANCE = (1e-5, 1e-7) with atol scaled by max(1, max|g| max|v|) (and, as
    every row, by max(1, max|ref|)), each widened to the network dtype's tolerance where that is looser (float32:
    both products carry float32 rounding): ~1e4 times the expected error and far below a missing term's.
    A relu unit whose node input lies within h |R{z}| of 0 would spoil the difference (not a smooth
    point); with random data that is improbable (~1e-5 per unit).
    """
    X2, T2, one_d = net._inputs(X, T)
    v = _check_v(net, v)
    with torch.no_grad():
        loss_h, prod_h, rz_h, rd_h = _r_pass(net, X2, T2, v, gn=gauss_newton, omit=_omit)
    what = "G v" if gauss_newton else "H v"
    rtol, atol = tolerances(net.dtype)
    batch = 1 if one_d else X2.shape[0]
    report = Report(f"handgrad {'Gauss-Newton' if gauss_newton else 'Hessian'}-vector check: "
                    f"{net.describe()}, batch {batch}")
    loss_o = oracle.loss_value(net, net.params, X, T)
    report.meta = {"loss (hand)": float(loss_h), "loss (autograd)": float(loss_o),
                   "|v| max": float(max(t.abs().max() for t in v.values())),
                   "tolerance": f"|got-ref| <= {atol:g}*max(1,max|ref|) + {rtol:g}*|ref|"}
    if _omit:
        report.meta["omitted terms (test injection)"] = sorted(_omit)
    rows = report.rows
    rows.append(compare("loss", "hand vs autograd", loss_h, loss_o, rtol, atol))
    for k, ref in enumerate(oracle_rz(net, X, T, v), start=1):
        rows.append(compare(f"Rz{k}", "R-forward: hand vs autograd jvp", rz_h[k - 1], ref, rtol, atol))
    if gauss_newton:
        prod_o = oracle_gauss_newton(net, X, T, v)
        label = "G v: hand vs autograd (jvp, loss Hessian, vjp)"
    else:
        for k, ref in enumerate(oracle_rdelta(net, X2, T2, v), start=1):
            rows.append(compare(f"Rdelta{k}", "R-backward: hand vs autograd forward-over-reverse",
                                rd_h[k - 1], ref, rtol, atol))
        prod_o = oracle_hvp(net, X, T, v)
        label = "H v: hand vs autograd (double backward)"
    for name, ref in prod_o.items():
        got = prod_h.get(name)
        rows.append(missing_row(name, label, ref, rtol, atol) if got is None
                    else compare(name, label, got, ref, rtol, atol))

    if fd:
        spec = _float64_spec(net)
        X64 = X.detach().to(torch.float64)
        T64 = T.detach().to(torch.float64) if T.dtype.is_floating_point else T
        p64 = OrderedDict((k, p.detach().to(torch.float64)) for k, p in net.params.items())
        v64 = OrderedDict((k, t.to(torch.float64)) for k, t in v.items())
        vmax = max(float(t.abs().max()) for t in v64.values())
        h = FD_STEP / vmax if vmax > 0 else FD_STEP
        g0 = oracle_grad(spec, X64, T64, p64)
        gmax = max(float(t.abs().max()) for t in g0.values())
        if gauss_newton:
            spec.params = p64
            fd_vals = oracle_gauss_newton(spec, X64, T64, v64, fd_step=h)
            how = ("J^T (central differences of J v and of the output-space loss gradient), "
                   "J^T by autograd's vjp")
        else:
            up = oracle_grad(spec, X64, T64, OrderedDict((k, p + h * v64[k]) for k, p in p64.items()))
            down = oracle_grad(spec, X64, T64, OrderedDict((k, p - h * v64[k]) for k, p in p64.items()))
            fd_vals = OrderedDict((k, (up[k] - down[k]) / (2 * h)) for k in p64)
            how = "(g(theta + h v) - g(theta - h v)) / 2h of the oracle's gradients"
        f_rtol, f_atol = FD_TOLERANCE
        h_rtol, h_atol = max(rtol, f_rtol), max(atol, f_atol)
        scale = max(1.0, gmax * vmax)
        for name, ref in fd_vals.items():
            # both products are in the network's dtype: float32 rounding bounds them, not the referee's
            for lab, src in ((f"{what}: hand vs fd", prod_h.get(name)), (f"{what}: autograd vs fd", prod_o[name])):
                if src is None:
                    continue  # already reported against autograd
                rows.append(compare(name, lab, src, ref, h_rtol, h_atol * scale))
        report.meta["finite differences"] = (f"central, float64, h = {FD_STEP:g}/max|v| = {h:.3g}: {how}; "
                                             f"tolerance ({h_rtol:g}, {h_atol:g}*max(1, max|g| max|v|) "
                                             f"= {h_atol * scale:.3g})")
    return report
