"""Layers as symmetric pairs: ``forward(x) -> (y, cache)`` and ``backward(dy, cache) -> (dx, grads)``.

The layer protocol (CS231n style): a layer has a dict attribute ``params`` (empty for a parameter-free
layer); ``backward`` returns ``grads`` keyed like ``params``.  Everything here is hand-written chain
rule in plain tensor ops; nothing calls autograd.

Chapter notation (Maren, Ch. 7): a node's input is ``NdInpt = sum_i w_{i,h} * Input_i`` (Eq. 7.13, and
Eq. 7.8 for the output layer); its activation is ``F(NdInpt)`` (Eq. 7.3, 7.11); the logistic transfer
function F(x) = 1/(1+exp(-alpha x)) has derivative alpha F (1 - F) (Eq. 7.5).
"""
from __future__ import annotations

import torch

from .errors import bad

Tensor = torch.Tensor


class Linear:
    """Node inputs of a layer: ``z = x @ W + b`` (Eq. 7.8 / 7.13, plus an optional bias).

    ``W`` has shape (fan_in, fan_out) so ``W[i, h]`` is the chapter's w_{i,h}.
    ``backward`` gives dW = x^T dz (the sum over the batch of Input_i * delta_h, the last factor of
    Eq. 7.19 times the delta), db = sum_batch dz, and dx = dz W^T (the sum over o of v_{h,o} delta_o,
    the back-propagated sum of Eq. 7.24).  ``need_dx=False`` skips dx for a network's first layer.
    """

    def __init__(self, W: Tensor, b: Tensor | None = None, need_dx: bool = True):
        self.params = {"W": W} if b is None else {"W": W, "b": b}
        self.need_dx = need_dx

    def forward(self, x: Tensor):
        W, b = self.params["W"], self.params.get("b")
        z = x @ W if b is None else torch.addmm(b, x, W)
        return z, x

    def backward(self, dz: Tensor, cache: Tensor):
        x = cache
        grads = {"W": x.t() @ dz}
        if "b" in self.params:
            grads["b"] = dz.sum(0)
        dx = dz @ self.params["W"].t() if self.need_dx else None
        return dx, grads


class Logistic:
    """F(x) = 1 / (1 + exp(-alpha x)); backward multiplies by F' = alpha F (1 - F) (Eq. 7.5).

    The derivative is taken from the stored output F, never from exp(-x)/(1+exp(-x))^2, so it is 0
    (not NaN) deep in saturation.

    ``torch.sigmoid`` evaluates 1/(1+exp(-x)), whose exp(-x) overflows below x = -88.7 (float32) or
    -709.8 (float64) and gives F = 0 where the true value is still representable (F(-710) = 4.48e-309
    in float64).  Below x = -40, 1 + e^x rounds to 1 in every floating dtype (e^-40 = 4e-18 < 2^-53),
    so F = e^x there, exactly as rounded; that is what is stored.
    """

    # below this alpha*z, F = exp(alpha z) to the last bit (1 + e^x == 1)
    EXP_BELOW = -40.0

    def __init__(self, alpha: float = 1.0):
        self.alpha = float(alpha)
        self.params: dict = {}

    def forward(self, z: Tensor):
        x = z * self.alpha if self.alpha != 1.0 else z
        F = torch.where(x < self.EXP_BELOW, torch.exp(x), torch.sigmoid(x))
        return F, F

    def derivative(self, F: Tensor) -> Tensor:
        """F'(z) = alpha F (1 - F) from the stored output (Eq. 7.5)."""
        return self.alpha * F * (1.0 - F)

    def second_derivative(self, F: Tensor) -> Tensor:
        """F''(z) = alpha^2 F (1 - F) (1 - 2F), for the R-operator (:mod:`handgrad.hvp`)."""
        return self.alpha * self.derivative(F) * (1.0 - 2.0 * F)

    def backward(self, dF: Tensor, cache: Tensor):
        return dF * self.derivative(cache), {}


class Tanh:
    """tanh; backward multiplies by 1 - tanh^2, taken from the stored output a.

    It is evaluated as (1 - a)(1 + a), not 1 - a*a: near saturation a*a is rounded (by up to half an
    ulp, 2^-25 in float32) and 1 - (a*a) keeps that as a relative error of up to 2^-25 / (1 - a^2):
    2e-5 at |z| = 4 and 1e-3 at |z| = 6 in float32, beyond the check's tolerances.  For |a| >= 1/2 the
    small factor (1 - a or 1 + a) is exact (Sterbenz), so the product is within ~1 ulp of 1 - a^2
    for the stored a, as torch's ``tanh_backward`` is.
    """

    params: dict = {}

    def forward(self, z: Tensor):
        a = torch.tanh(z)
        return a, a

    def derivative(self, a: Tensor) -> Tensor:
        """1 - a^2, as (1 - a)(1 + a) (see the class docstring)."""
        return (1.0 - a) * (1.0 + a)

    def second_derivative(self, a: Tensor) -> Tensor:
        """-2 a (1 - a^2)."""
        return -2.0 * a * self.derivative(a)

    def backward(self, da: Tensor, cache: Tensor):
        return da * self.derivative(cache), {}


class ReLU:
    """max(0, x); backward passes the gradient where x > 0 (0 at exactly 0, as torch.relu)."""

    params: dict = {}

    def forward(self, z: Tensor):
        a = torch.clamp_min(z, 0.0)
        return a, a

    def derivative(self, a: Tensor) -> Tensor:
        """[z > 0] (0 at exactly 0)."""
        return (a > 0).to(a.dtype)

    def second_derivative(self, a: Tensor) -> None:
        """0 (None: the term is skipped)."""
        return None

    def backward(self, da: Tensor, cache: Tensor):
        return da * self.derivative(cache), {}


class Identity:
    """The identity (a linear output node); backward passes the gradient unchanged."""

    params: dict = {}

    def forward(self, z: Tensor):
        return z, None

    def derivative(self, cache) -> None:
        """1 (None: the factor is skipped)."""
        return None

    def second_derivative(self, cache) -> None:
        """0 (None: the term is skipped)."""
        return None

    def backward(self, da: Tensor, cache):
        return da, {}


ACTIVATIONS = ("logistic", "tanh", "relu", "identity")


def make_activation(name: str, alpha: float = 1.0, argument: str = "activation"):
    """Build an activation layer by name (``alpha`` is the logistic gain)."""
    if name == "logistic":
        return Logistic(alpha)
    if name == "tanh":
        return Tanh()
    if name == "relu":
        return ReLU()
    if name == "identity":
        return Identity()
    raise bad(argument, f"one of {', '.join(ACTIVATIONS)}", repr(name))
