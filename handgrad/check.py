"""The check: hand-written gradients and deltas against the autograd oracle, element by element,
with a float64 central finite-difference referee as a third opinion.

A row of the report compares one tensor two ways (e.g. ``W1  hand vs autograd``): its shape, the
greatest absolute and relative error, the index of the worst element, how many elements are out of
tolerance, and pass/fail.  An element passes when

    |got - ref| <= atol_eff + rtol * |ref|,   atol_eff = atol * max(1, max |ref|)

with (rtol, atol) from the dtype (``TOLERANCES``): atol is scaled by the tensor's own magnitude
because the errors of a sum over a batch or a layer grow with the size of its terms, not with the
size of one element of the result.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import torch

from . import oracle

Tensor = torch.Tensor

# (rtol, atol) by dtype, each with its reason.
TOLERANCES = {
    # float64: hand and autograd differ only in rounding order (eps 2.2e-16); 1e-12 leaves room for
    # sums of ~1e4 terms and is still 1e7 times tighter than float32.
    torch.float64: (1e-9, 1e-12),
    # float32: torch.testing.assert_close's defaults (eps 1.2e-7, a few ulp of slack).
    torch.float32: (1.3e-6, 1e-5),
    # float16 (10-bit mantissa) and bfloat16 (7-bit mantissa): rounding compounds over the layers.
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (3.2e-2, 2e-2),
}
# Finite differences: central, step FD_STEP in float64.  Truncation ~ step^2/6 f''' ~ 1e-11 and
# rounding ~ eps |loss| / step ~ 2e-11 |loss|, so 1e-7 (relative to the loss and gradient scale)
# is ~1e4 times the expected error and far below any wrong formula's.
FD_STEP = 1e-5
FD_TOLERANCE = (1e-5, 1e-7)


@dataclass
class Row:
    tensor: str
    comparison: str
    shape: tuple
    n_compared: int
    max_abs_err: float
    max_rel_err: float
    worst_index: tuple
    got_at_worst: float
    ref_at_worst: float
    mismatched: int
    atol: float
    rtol: float
    passed: bool
    note: str = ""


def tolerances(dtype: torch.dtype) -> tuple[float, float]:
    """(rtol, atol) for comparisons in ``dtype``."""
    return TOLERANCES.get(dtype, TOLERANCES[torch.float32])


def missing_row(tensor: str, comparison: str, ref: Tensor, rtol: float, atol: float) -> Row:
    """A failed row for a tensor the hand result does not have at all."""
    return Row(tensor, comparison, tuple(ref.shape), 0, math.inf, math.inf, (), math.nan, math.nan,
               ref.numel(), atol, rtol, False, "missing")


def compare(tensor: str, comparison: str, got: Tensor, ref: Tensor, rtol: float, atol: float,
            index=None, shape=None) -> Row:
    """Compare ``got`` with ``ref`` element by element (both cast to float64).

    ``index``: optional flat indices the values belong to (finite-difference subsets), used to
    report the worst element's index in the full tensor of ``shape``.
    """
    shape = tuple(shape if shape is not None else ref.shape)
    if tuple(got.shape) != tuple(ref.shape):
        return Row(tensor, comparison, shape, 0, math.inf, math.inf, (), math.nan, math.nan,
                   ref.numel(), atol, rtol, False,
                   f"shape mismatch: got {tuple(got.shape)}, expected {tuple(ref.shape)}")
    g = got.detach().to(torch.float64).reshape(-1).cpu()
    r = ref.detach().to(torch.float64).reshape(-1).cpu()
    n = r.numel()
    if n == 0:
        return Row(tensor, comparison, shape, 0, 0.0, 0.0, (), 0.0, 0.0, 0, atol, rtol, True)
    finite_r = r[torch.isfinite(r)]
    scale = max(1.0, float(finite_r.abs().max())) if finite_r.numel() else 1.0
    atol_eff = atol * scale
    diff = (g - r).abs()
    diff = torch.where(torch.isnan(diff) | torch.isinf(g) | torch.isinf(r), torch.full_like(diff, math.inf), diff)
    allowed = atol_eff + rtol * r.abs()
    bad = diff > allowed
    ratio = diff / allowed
    worst = int(torch.argmax(torch.nan_to_num(ratio, nan=math.inf)))
    rel = diff / torch.clamp(r.abs(), min=atol_eff)
    flat = int(index[worst]) if index is not None else worst
    widx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), shape)) if shape else ()
    return Row(tensor, comparison, shape, n, float(diff.max()), float(rel.max()), widx,
               float(g[worst]), float(r[worst]), int(bad.sum()), atol_eff, rtol, not bool(bad.any()))


@dataclass
class Report:
    """The per-tensor comparison; ``ok`` is True when every row passed."""
    title: str
    rows: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(r.passed for r in self.rows)

    @property
    def failures(self) -> list:
        return [r for r in self.rows if not r.passed]

    def to_dict(self) -> dict:
        rows = []
        for r in self.rows:
            d = asdict(r)
            d["shape"], d["worst_index"] = list(r.shape), list(r.worst_index)
            for k in ("max_abs_err", "max_rel_err", "got_at_worst", "ref_at_worst"):
                if not math.isfinite(d[k]):
                    d[k] = str(d[k])
            rows.append(d)
        return {"title": self.title, "ok": self.ok, "meta": self.meta, "rows": rows,
                "failed": [f"{r.tensor} ({r.comparison})" for r in self.failures]}

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)

    def __str__(self) -> str:
        head = ("tensor", "shape", "comparison", "max abs err", "max rel err", "worst at",
                "got / ref at worst", "bad/n", "result")
        body = []
        for r in self.rows:
            body.append((r.tensor, "x".join(map(str, r.shape)) or "scalar", r.comparison,
                         f"{r.max_abs_err:.3e}", f"{r.max_rel_err:.3e}",
                         str(list(r.worst_index)) if r.worst_index else "-",
                         f"{r.got_at_worst:.6g} / {r.ref_at_worst:.6g}",
                         f"{r.mismatched}/{r.n_compared}",
                         ("ok" if r.passed else "FAIL") + (f" ({r.note})" if r.note else "")))
        widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h)
                  for i, h in enumerate(head)]
        line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
        out = [self.title]
        out += [f"  {k}: {v}" for k, v in self.meta.items() if k != "tolerances"]
        out += [line(head), line(["-" * w for w in widths])] + [line(b) for b in body]
        if self.ok:
            out.append(f"PASS: all {len(self.rows)} comparisons within tolerance")
        else:
            out.append("FAIL: " + ", ".join(f"{r.tensor} ({r.comparison})" for r in self.failures))
        return "\n".join(out)


def finite_difference_grads(net, X: Tensor, T: Tensor, max_per_tensor: int | None = None,
                            seed: int = 0, step: float = FD_STEP):
    """Central finite differences of the loss in float64, over every parameter element (or a
    seeded random subset of ``max_per_tensor`` elements per tensor).

    Returns ``{name: (flat_indices, values)}``.  The loss is evaluated by the oracle's forward pass on
    float64 copies of the parameters and inputs.
    """
    p64 = {k: v.detach().to(torch.float64).clone() for k, v in net.params.items()}
    X64 = X.detach().to(torch.float64)
    T64 = T.detach().to(torch.float64) if T.dtype.is_floating_point else T
    spec = _Float64View(net)
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, p in p64.items():
        flat = p.view(-1)
        n = flat.numel()
        idx = (torch.arange(n) if max_per_tensor is None or n <= max_per_tensor
               else torch.randperm(n, generator=gen)[:max_per_tensor].sort().values)
        vals = torch.empty(idx.numel(), dtype=torch.float64)
        for j, i in enumerate(idx.tolist()):
            keep = float(flat[i])
            flat[i] = keep + step
            up = float(oracle.loss_value(spec, p64, X64, T64))
            flat[i] = keep - step
            down = float(oracle.loss_value(spec, p64, X64, T64))
            flat[i] = keep
            vals[j] = (up - down) / (2 * step)
        out[name] = (idx, vals)
    return out


class _Float64View:
    """The network's settings with dtype float64 (what the oracle's forward pass reads)."""

    def __init__(self, net):
        for k in ("sizes", "activation", "alpha", "output_activation", "loss"):
            setattr(self, k, getattr(net, k))
        self.dtype = torch.float64


def check(net, X: Tensor, T: Tensor, *, grads=None, deltas=None, fd="auto",
          fd_max_per_tensor: int | None = None, seed: int = 0) -> Report:
    """Compare the hand-written gradients and deltas of ``net`` on (X, T) with the autograd oracle,
    and (``fd=True``, or ``"auto"`` in float64) with float64 finite differences.

    ``grads`` / ``deltas``: dicts to check instead of the hand path's own (for a user's own
    derivation, or to prove that a wrong gradient is caught).  ``fd_max_per_tensor``: finite
    differences on a random subset of this many elements per tensor (default: every element when the
    network has at most 5000 parameters, else 256 per tensor).
    """
    loss_h, grads_h, deltas_h = net.loss_and_grads(X, T, return_deltas=True)
    grads = grads_h if grads is None else grads
    deltas = deltas_h if deltas is None else deltas
    loss_o, grads_o, deltas_o = oracle.loss_and_grads(net, X, T, return_deltas=True)
    rtol, atol = tolerances(net.dtype)
    batch = 1 if X.dim() == 1 else X.shape[0]
    report = Report(f"handgrad check: {net.describe()}, batch {batch}")
    report.meta = {"loss (hand)": float(loss_h), "loss (autograd)": float(loss_o),
                   "tolerance": f"|got-ref| <= {atol:g}*max(1,max|ref|) + {rtol:g}*|ref|"}
    rows = report.rows
    rows.append(compare("loss", "hand vs autograd", loss_h, loss_o, rtol, atol))
    for name, ref in grads_o.items():
        got = grads.get(name)
        if got is None:
            rows.append(missing_row(name, "hand vs autograd", ref, rtol, atol))
        else:
            rows.append(compare(name, "hand vs autograd", got, ref, rtol, atol))
    for name, ref in deltas_o.items():
        got = deltas.get(name)
        if got is None:
            rows.append(missing_row(name, "hand vs autograd", ref, rtol, atol))
        else:
            rows.append(compare(name, "hand vs autograd", got, ref, rtol, atol))

    use_fd = (net.dtype == torch.float64) if fd == "auto" else bool(fd)
    if use_fd:
        if fd_max_per_tensor is None:
            total = sum(p.numel() for p in net.params.values())
            fd_max_per_tensor = None if total <= 5000 else 256
        fd_vals = finite_difference_grads(net, X, T, fd_max_per_tensor, seed)
        f_rtol, f_atol = FD_TOLERANCE
        # hand vs fd is judged at the looser of the dtype's and the referee's tolerances.
        h_rtol, h_atol = max(rtol, f_rtol), max(atol, f_atol)
        fd_scale = max(1.0, abs(float(loss_o)))
        for name, (idx, vals) in fd_vals.items():
            shape = tuple(net.params[name].shape)
            for label, src, (rt, at) in (("hand vs fd", grads.get(name), (h_rtol, h_atol)),
                                         ("autograd vs fd", grads_o[name], (f_rtol, f_atol))):
                if src is None or tuple(src.shape) != shape:
                    continue  # already reported against autograd
                sub = src.detach().reshape(-1)[idx.to(src.device)]
                rows.append(compare(name, label, sub, vals, rt, at * fd_scale, index=idx, shape=shape))
        report.meta["finite differences"] = (
            f"central, step {FD_STEP:g}, float64, "
            + ("every element" if fd_max_per_tensor is None else f"{fd_max_per_tensor} random elements per tensor"))
    return report
