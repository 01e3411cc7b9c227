"""Per-sample gradients by hand: every parameter's gradient for every pattern of a batch, in one pass.

"Per-sample gradient" g_n means the gradient of the loss applied to pattern n alone (a batch of
one).  The batch deltas delta_k = dloss/dz_k of the hand backward pass (see :mod:`handgrad.mlp`) are
row-separable: row n depends on pattern n only.  For pattern n's own loss they are

    sse (1/2 sum E^2, summed over the batch):   the batch loss is the sum of the patterns' terms, so
                                                 delta_k^(n) = delta_k[n]                (s = 1)
    mse (mean over batch * outputs):            a batch of one is the mean over its outputs only,
                                                 delta_k^(n) = B delta_k[n]              (s = B)
    cross_entropy (mean over the batch):        delta_k^(n) = B delta_k[n]              (s = B)

and the gradients are each pattern's outer product of layer input and delta (einsum, no loop):

    g_n[W_k] = s a_{k-1}[n]^T delta_k[n]   (fan_in x fan_out),    g_n[b_k] = s delta_k[n]

so that  sum_n g_n = the batch gradient (sse)  and  mean_n g_n = the batch gradient (mse,
cross_entropy).

Variance: the *unbiased* sample variance over the batch (Bessel's correction, divide by B - 1,
``correction=1`` as ``torch.var``): the estimate of the spread of one pattern's gradient over the
data, the quantity gradient-noise and batch-size rules use.  ``correction=0`` gives the population
variance of the batch at hand.  With a single pattern (B - correction <= 0) the variance is undefined
and returned as NaN (as ``torch.var`` does).

Everything runs under ``torch.no_grad()`` on tensors that do not require grad.  The oracle,
:func:`oracle_per_sample_grads`, is ``torch.func.vmap(torch.func.grad(f))`` over the independent twin
:func:`handgrad.oracle.forward_pass` with f the loss of one pattern.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch

from . import oracle
from .check import Report, compare, missing_row, tolerances
from .errors import bad
from .hvp import _mul, forward_cache
from .losses import make_loss

Tensor = torch.Tensor


def _sample_scale(net, batch: int) -> float:
    """s: the factor from the batch deltas to each pattern's own deltas."""
    return 1.0 if net.loss == "sse" else float(batch)


def _check_correction(correction) -> int:
    if isinstance(correction, bool) or not isinstance(correction, int) or correction < 0:
        raise bad("correction", "a non-negative integer (1: unbiased, 0: population)", repr(correction))
    return correction


def moments(grads, correction: int):
    """(mean, var) over the batch axis of per-sample ``grads``; var divides by B - correction (NaN
    where that is <= 0)."""
    mean = OrderedDict((k, g.mean(0)) for k, g in grads.items())
    B = next(iter(grads.values())).shape[0]
    dof = B - correction
    var = OrderedDict()
    for k, g in grads.items():
        if dof <= 0:
            var[k] = torch.full_like(mean[k], math.nan)
        else:
            d = g - mean[k]
            var[k] = d.mul_(d).sum(0) / dof  # squared in place: one (B, ...) temporary, not two
    return mean, var


def per_sample_hand(net, X: Tensor, T: Tensor, _scale=None):
    """Per-sample gradients on checked input (X rows, T float rows).  ``_scale`` overrides s (only
    for tests that prove a wrong scaling is caught)."""
    L = net.n_layers
    inputs, zs, f1s, _, out = forward_cache(net, X, second=False)
    loss_fn = make_loss(net.loss)
    loss, cache = loss_fn.forward(out, T)
    d = loss_fn.backward(cache)                      # dloss/dA, or delta_L for cross-entropy
    if not net.uses_logits:
        d = _mul(d, f1s[-1])                         # delta_L
    s = _sample_scale(net, X.shape[0]) if _scale is None else _scale
    d = d * s                                        # each pattern's own delta_L
    grads = {}
    for k in range(L, 0, -1):
        grads[f"W{k}"] = torch.einsum("bi,bj->bij", inputs[k - 1], d)
        if f"b{k}" in net.params:
            grads[f"b{k}"] = d
        if k > 1:
            d = _mul(d @ net.params[f"W{k}"].t(), f1s[k - 2])
    return loss, OrderedDict((k, grads[k]) for k in net.params)


@torch.no_grad()
def per_sample_grads(net, X: Tensor, T: Tensor, *, correction: int = 1):
    """Each parameter's gradient for every pattern, by hand.

    Returns ``(grads, mean, var)``: ``grads[name]`` of shape ``(B, *param.shape)`` (a 1-D X is a batch
    of one), and the mean and variance over the batch (unbiased by default, see the module
    docstring), each keyed like ``net.params``.  X, T as for ``net.loss_and_grads``.
    """
    correction = _check_correction(correction)
    X2, T2, _ = net._inputs(X, T)
    _, grads = per_sample_hand(net, X2, T2)
    mean, var = moments(grads, correction)
    return grads, mean, var


def oracle_per_sample_grads(net, X: Tensor, T: Tensor) -> "OrderedDict[str, Tensor]":
    """``torch.func.vmap(torch.func.grad(f))`` with f(params, x, t) the twin's loss of the single
    pattern (x, t); X (B, inputs) and T float rows (B, outputs)."""
    params = {k: p.detach() for k, p in net.params.items()}

    def f(p, x, t):
        return oracle.forward_pass(net, p, x.unsqueeze(0), t.unsqueeze(0))[0]

    with torch.enable_grad():
        g = torch.func.vmap(torch.func.grad(f), in_dims=(None, 0, 0))(params, X, T)
    return OrderedDict((k, g[k].detach()) for k in net.params)


def per_sample_report(net, X: Tensor, T: Tensor, *, correction: int = 1, _scale=None) -> Report:
    """Compare the hand per-sample gradients with the vmap(grad) oracle, element by element.

    Rows (tensor names ``W1``, ``b1``, ...): the per-sample gradients, their mean and variance
    (against the same statistics of the oracle's), and the identity sum_n g_n (sse) or mean_n g_n
    (mse, cross_entropy) against the batch gradient of :func:`handgrad.oracle.loss_and_grads`.
    Tolerances: ``tolerances(dtype)``.  ``_scale``: private, injects a wrong per-sample factor.
    """
    correction = _check_correction(correction)
    X2, T2, one_d = net._inputs(X, T)
    with torch.no_grad():
        loss_h, grads_h = per_sample_hand(net, X2, T2, _scale)
        mean_h, var_h = moments(grads_h, correction)
    grads_o = oracle_per_sample_grads(net, X2, T2)
    mean_o, var_o = moments(grads_o, correction)
    loss_o, batch_o = oracle.loss_and_grads(net, X, T)
    rtol, atol = tolerances(net.dtype)
    B = X2.shape[0]
    how = "sum" if net.loss == "sse" else "mean"
    report = Report(f"handgrad per-sample gradient check: {net.describe()}, batch {B}")
    report.meta = {"loss (hand)": float(loss_h), "loss (autograd)": float(loss_o),
                   "per-sample loss": ("the pattern's own 1/2 sum E^2" if net.loss == "sse" else
                                       "the loss of a batch of one (mean over that pattern's "
                                       + ("outputs)" if net.loss == "mse" else "single row)")),
                   "variance": f"over the batch, correction={correction}"
                               + (" (unbiased)" if correction == 1 else ""),
                   "tolerance": f"|got-ref| <= {atol:g}*max(1,max|ref|) + {rtol:g}*|ref|"}
    rows = report.rows
    rows.append(compare("loss", "hand vs autograd", loss_h, loss_o, rtol, atol))
    for name, ref in grads_o.items():
        got = grads_h.get(name)
        if got is None:
            rows.append(missing_row(name, "per-sample: hand vs vmap(grad)", ref, rtol, atol))
            continue
        rows.append(compare(name, "per-sample: hand vs vmap(grad)", got, ref, rtol, atol))
        rows.append(compare(name, "batch mean: hand vs vmap(grad)", mean_h[name], mean_o[name], rtol, atol))
        if B > correction:
            rows.append(compare(name, "batch variance: hand vs vmap(grad)", var_h[name], var_o[name],
                                rtol, atol))
        total = got.sum(0) if how == "sum" else mean_h[name]
        rows.append(compare(name, f"{how}_n g_n (hand) vs batch gradient (autograd)", total,
                            batch_o[name], rtol, atol))
    return report
