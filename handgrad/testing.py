"""Check your own layer's hand-written backward against autograd and finite differences.

A layer follows the protocol of :mod:`handgrad.layers`: ``params`` (a dict of tensors, empty for a
parameter-free layer), ``forward(x) -> (y, cache)`` and ``backward(dy, cache) -> (dx, grads)`` with
``grads`` keyed like ``params``.

:func:`assert_layer_matches_autograd` runs the layer's own ``forward`` under autograd as the oracle
(``L = (y * dy).sum()`` with a random upstream gradient ``dy``, the CS231n / llm.c way), compares
``dx`` and every ``grads[k]`` with ``torch.autograd.grad`` element by element, adds a float64 central
finite-difference referee, and checks that ``backward`` left ``x``, ``dy`` and the cache unmodified.
It does this in float64 and in the layer's own dtype, and raises ``AssertionError`` carrying the
per-tensor report.  Because the oracle differentiates the layer's own forward, the finite
differences are the independent opinion here.
"""
from __future__ import annotations

import copy
import math

import torch

from .check import FD_STEP, FD_TOLERANCE, Report, Row, compare, tolerances

Tensor = torch.Tensor


def _cast_layer(layer, dtype):
    twin = copy.copy(layer)
    twin.params = {k: v.detach().to(dtype) for k, v in layer.params.items()}
    return twin


def _snapshot(obj):
    """Deep copy of the tensors inside a (nested) cache."""
    if isinstance(obj, Tensor):
        return obj.detach().clone()
    if isinstance(obj, (list, tuple)):
        return type(obj)(_snapshot(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _snapshot(v) for k, v in obj.items()}
    return copy.copy(obj)


def _same(a, b) -> bool:
    if isinstance(a, Tensor):
        return isinstance(b, Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return True


def _flag(name: str, ok: bool, note: str) -> Row:
    return Row(name, "unmodified by backward", (), 1, 0.0 if ok else math.inf, 0.0 if ok else math.inf,
               (), math.nan, math.nan, 0 if ok else 1, 0.0, 0.0, ok, "" if ok else note)


def layer_report(layer, x: Tensor, *, dtype=None, seed: int = 0, fd: bool | None = None,
                 fd_max_per_tensor: int = 64) -> Report:
    """The per-tensor report for ``layer`` at input ``x`` in ``dtype`` (default: x's dtype)."""
    dtype = dtype or x.dtype
    lay = _cast_layer(layer, dtype)
    x = x.detach().to(dtype)
    g = torch.Generator().manual_seed(seed)
    rtol, atol = tolerances(dtype)
    name = type(layer).__name__
    report = Report(f"layer check: {name}, x {tuple(x.shape)}, {str(dtype).removeprefix('torch.')}")

    # hand: forward without autograd, then the hand-written backward
    with torch.no_grad():
        y, cache = lay.forward(x)
        dy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(dtype)
        x_before, dy_before, cache_before = x.clone(), dy.clone(), _snapshot(cache)
        params_before = {k: v.clone() for k, v in lay.params.items()}
        dx, grads = lay.backward(dy, cache)
    # oracle: the same forward under autograd, L = (y * dy).sum()
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in lay.params.items()}
    twin = copy.copy(lay)
    twin.params = leaves
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        y_o, _ = twin.forward(xg)
        if not y_o.requires_grad:
            raise AssertionError(f"{name}.forward is not differentiable by autograd (its output has no "
                                 "grad_fn: a torch.no_grad() inside it?), so it cannot be its own oracle")
        got = torch.autograd.grad((y_o * dy).sum(), [xg, *leaves.values()], allow_unused=True)
    dx_o = got[0] if got[0] is not None else torch.zeros_like(x)
    grads_o = {k: (gk if gk is not None else torch.zeros_like(leaves[k])) for k, gk in zip(leaves, got[1:])}

    rows = report.rows
    rows.append(compare("y", "forward: no_grad vs autograd", y, y_o.detach(), rtol, atol))
    rows.append(compare("dx", "hand vs autograd", dx, dx_o, rtol, atol) if dx is not None else
                Row("dx", "hand vs autograd", tuple(x.shape), 0, math.inf, math.inf, (), math.nan, math.nan,
                    x.numel(), atol, rtol, False, "backward returned dx=None"))
    for k in leaves:
        if k not in grads:
            rows.append(Row(k, "hand vs autograd", tuple(leaves[k].shape), 0, math.inf, math.inf, (),
                            math.nan, math.nan, leaves[k].numel(), atol, rtol, False, "missing from grads"))
        else:
            rows.append(compare(k, "hand vs autograd", grads[k], grads_o[k], rtol, atol))
    extra = sorted(set(grads) - set(leaves))
    if extra:
        rows.append(Row(",".join(extra), "hand vs autograd", (), 0, math.inf, math.inf, (), math.nan,
                        math.nan, 1, atol, rtol, False, "grads has keys that params lacks"))
    rows.append(_flag("x", _same(x, x_before), "backward changed its input x"))
    rows.append(_flag("dy", _same(dy, dy_before), "backward changed the upstream gradient dy"))
    rows.append(_flag("cache", _same(cache, cache_before), "backward changed its cache"))
    rows.append(_flag("params", _same(lay.params, params_before), "backward changed the parameters"))

    if fd if fd is not None else True:
        _fd_rows(lay, x, dy, dx, grads, dx_o, grads_o, fd_max_per_tensor, seed, rows, (rtol, atol))
    return report


def _fd_rows(lay, x, dy, dx, grads, dx_o, grads_o, fd_max, seed, rows, dtype_tol):
    """Central differences of L = (forward(x) * dy).sum() in float64 over x and every parameter."""
    lay64 = _cast_layer(lay, torch.float64)
    x64, dy64 = x.detach().to(torch.float64).clone(), dy.to(torch.float64)
    gen = torch.Generator().manual_seed(seed + 1)

    def L():
        with torch.no_grad():
            return float((lay64.forward(x64)[0] * dy64).sum())

    f_rtol, f_atol = FD_TOLERANCE
    h_rtol, h_atol = max(f_rtol, dtype_tol[0]), max(f_atol, dtype_tol[1])
    scale = max(1.0, abs(L()))
    targets = [("dx", x64, dx, dx_o)] + [(k, lay64.params[k], grads.get(k), grads_o[k]) for k in lay64.params]
    for name, t, hand, auto in targets:
        flat = t.view(-1)
        n = flat.numel()
        idx = torch.arange(n) if n <= fd_max else torch.randperm(n, generator=gen)[:fd_max].sort().values
        vals = torch.empty(idx.numel(), dtype=torch.float64)
        for j, i in enumerate(idx.tolist()):
            keep = float(flat[i])
            flat[i] = keep + FD_STEP
            up = L()
            flat[i] = keep - FD_STEP
            down = L()
            flat[i] = keep
            vals[j] = (up - down) / (2 * FD_STEP)
        for label, src, (rt, at) in (("hand vs fd", hand, (h_rtol, h_atol)),
                                     ("autograd vs fd", auto, (f_rtol, f_atol))):
            if src is None or tuple(src.shape) != tuple(t.shape):
                continue
            rows.append(compare(name, label, src.detach().reshape(-1)[idx], vals, rt, at * scale,
                                index=idx, shape=tuple(t.shape)))


def assert_layer_matches_autograd(layer, x: Tensor, *, seed: int = 0, dtypes=None,
                                  fd: bool = True, fd_max_per_tensor: int = 64) -> list:
    """Raise ``AssertionError`` with the per-tensor report unless ``layer.backward`` agrees with
    autograd (and, in float64, with finite differences) and leaves its inputs and cache unmodified.

    ``dtypes``: the dtypes to check in (default: float64 and x's dtype).  Returns the reports.
    """
    dtypes = dtypes or list(dict.fromkeys([torch.float64, x.dtype]))
    reports = [layer_report(layer, x, dtype=dt, seed=seed, fd=fd and dt == torch.float64,
                            fd_max_per_tensor=fd_max_per_tensor) for dt in dtypes]
    bad = [r for r in reports if not r.ok]
    if bad:
        raise AssertionError("\n\n".join(str(r) for r in bad))
    return reports


def assert_net_matches_autograd(net, X: Tensor, T: Tensor, **check_kwargs):
    """Raise ``AssertionError`` with the report unless :func:`handgrad.check` passes."""
    from .check import check
    report = check(net, X, T, **check_kwargs)
    if not report.ok:
        raise AssertionError(str(report))
    return report
