"""The chapter's own equations, as printed and as corrected, run through the oracle.

Maren's Eq. 7.24 gives the gradient of the SSE with respect to an input-to-hidden weight as

    dSSE/dw_{i,h} = -alpha F_h (1 - F_h) Input_i  sum_o v_{h,o} E_o                    (Eq. 7.24, printed)

but the chain rule of Eq. 7.1 passes through the output node's transfer function, whose derivative
alpha F_o (1 - F_o) (Eq. 7.5, kept in Eq. 7.6) is lost in Eq. 7.20.  With it restored:

    dSSE/dw_{i,h} = -alpha F_h (1 - F_h) Input_i  sum_o v_{h,o} E_o alpha F_o (1 - F_o)  (corrected)

Both are written here literally, index by index, for the chapter's 4-3-2 network (logistic with gain
alpha, no biases, SSE = 1/2 sum E^2), summed over the patterns of a batch, and compared by
:func:`handgrad.check.check` with autograd and finite differences.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .check import Report, check, compare, tolerances
from .mlp import MLP

Tensor = torch.Tensor


def chapter_network(alpha: float = 1.0, seed: int = 0, dtype=torch.float64) -> MLP:
    """The chapter's network: 4 inputs, 3 hidden, 2 outputs, logistic with gain alpha, SSE, no bias,
    weights uniform in (-1, 1) as in the author's programs."""
    return MLP([4, 3, 2], activation="logistic", alpha=alpha, loss="sse", bias=False,
               dtype=dtype, seed=seed, init="chapter")


def chapter_patterns(batch: int = 1, seed: int = 0, dtype=torch.float64):
    """Inputs in [0, 1) and desired outputs in (0.05, 0.95), seeded."""
    g = torch.Generator().manual_seed(seed + 1)
    X = torch.rand(batch, 4, generator=g, dtype=torch.float64)
    T = 0.05 + 0.9 * torch.rand(batch, 2, generator=g, dtype=torch.float64)
    return X.to(dtype), T.to(dtype)


def _forward(net: MLP, X: Tensor):
    """H_h = F(sum_i w_{i,h} Input_i) (Eq. 7.14); A_o = F(sum_h v_{h,o} H_h) (Eq. 7.3, 7.8)."""
    w, v, a = net.params["W1"], net.params["W2"], net.alpha
    F_h = 1.0 / (1.0 + torch.exp(-a * (X @ w)))
    F_o = 1.0 / (1.0 + torch.exp(-a * (F_h @ v)))
    return F_h, F_o


@torch.no_grad()
def dsse_dv(net: MLP, X: Tensor, T: Tensor) -> Tensor:
    """dSSE/dv_{h,o} = -E_o alpha F_o (1 - F_o) H_h, summed over patterns (the previous chapter's
    result for the hidden-to-output weights; Eq. 7.5, 7.21, 7.22)."""
    F_h, F_o = _forward(net, X)
    E = T - F_o
    return -torch.einsum("po,po,ph->ho", E, net.alpha * F_o * (1 - F_o), F_h)


@torch.no_grad()
def dsse_dw_printed(net: MLP, X: Tensor, T: Tensor) -> Tensor:
    """Eq. 7.24 exactly as printed: -alpha F_h (1 - F_h) Input_i sum_o v_{h,o} E_o."""
    F_h, F_o = _forward(net, X)
    E = T - F_o
    back = torch.einsum("ho,po->ph", net.params["W2"], E)  # sum_o v_{h,o} E_o
    return -net.alpha * torch.einsum("ph,pi->ih", F_h * (1 - F_h) * back, X)


@torch.no_grad()
def dsse_dw_corrected(net: MLP, X: Tensor, T: Tensor) -> Tensor:
    """Eq. 7.24 with the output factor alpha F_o (1 - F_o) of Eq. 7.6 restored inside the sum."""
    F_h, F_o = _forward(net, X)
    E = T - F_o
    back = torch.einsum("ho,po->ph", net.params["W2"], E * net.alpha * F_o * (1 - F_o))
    return -net.alpha * torch.einsum("ph,pi->ih", F_h * (1 - F_h) * back, X)


@dataclass
class ChapterDemo:
    printed: Report
    corrected: Report
    autograd_w: Tensor
    printed_w: Tensor
    corrected_w: Tensor

    @property
    def ok(self) -> bool:
        """True when the demonstration comes out as it should: printed rejected, corrected accepted."""
        return (not self.printed.ok) and self.corrected.ok

    def element_table(self) -> str:
        """dSSE/dw_{i,h} per element: autograd, Eq. 7.24 printed and corrected, and their errors."""
        rtol, atol = tolerances(self.autograd_w.dtype)
        lines = [f"{'w':8} {'autograd':>13} {'Eq.7.24 printed':>16} {'error':>11} {'ratio':>7}"
                 f" {'corrected':>13} {'error':>10}"]
        for i in range(self.autograd_w.shape[0]):
            for h in range(self.autograd_w.shape[1]):
                ref = float(self.autograd_w[i, h])
                p, c = float(self.printed_w[i, h]), float(self.corrected_w[i, h])
                ratio = f"{p / ref:7.3f}" if ref != 0 else "    -  "
                lines.append(f"w[{i},{h}]   {ref:13.6e} {p:16.6e} {p - ref:11.3e} {ratio}"
                             f" {c:13.6e} {c - ref:10.1e}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "printed_rejected": not self.printed.ok,
                "corrected_accepted": self.corrected.ok,
                "autograd_dSSE_dw": self.autograd_w.tolist(),
                "eq_7_24_printed": self.printed_w.tolist(),
                "eq_7_24_corrected": self.corrected_w.tolist(),
                "printed_report": self.printed.to_dict(), "corrected_report": self.corrected.to_dict()}

    def __str__(self) -> str:
        verdict = ("Eq. 7.24 as printed is REJECTED by the oracle; the corrected form is ACCEPTED."
                   if self.ok else "UNEXPECTED: the demonstration did not come out as printed-rejected,"
                   " corrected-accepted.")
        return "\n\n".join([
            "The chapter's Eq. 7.24 (dSSE/dw_{i,h}) through the oracle",
            "As printed: -alpha F_h(1-F_h) Input_i sum_o v_{h,o} E_o\n" + str(self.printed),
            "Corrected (output factor alpha F_o(1-F_o) of Eq. 7.6 restored):\n" + str(self.corrected),
            "Per element of w:\n" + self.element_table(), verdict])


def demonstrate(alpha: float = 1.0, seed: int = 0, batch: int = 1, dtype=torch.float64) -> ChapterDemo:
    """Run Eq. 7.24 as printed and as corrected through the check on the chapter's 4-3-2 network."""
    net = chapter_network(alpha, seed, dtype)
    X, T = chapter_patterns(batch, seed, dtype)
    v = dsse_dv(net, X, T)
    w_printed, w_corrected = dsse_dw_printed(net, X, T), dsse_dw_corrected(net, X, T)
    printed = check(net, X, T, grads={"W1": w_printed, "W2": v})
    printed.title = "Eq. 7.24 as printed vs autograd and finite differences (chapter's 4-3-2 net)"
    corrected = check(net, X, T, grads={"W1": w_corrected, "W2": v})
    corrected.title = "Eq. 7.24 corrected vs autograd and finite differences (chapter's 4-3-2 net)"
    from . import oracle
    _, g = oracle.loss_and_grads(net, X, T)
    return ChapterDemo(printed, corrected, g["W1"], w_printed, w_corrected)
