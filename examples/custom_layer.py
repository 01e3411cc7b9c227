"""Add your own layer with a hand-written backward, and let handgrad prove it (or catch it).

    python examples/custom_layer.py

Two layers: the softsign activation y = x / (1 + |x|), and layer normalisation over the features,
y = gamma (x - mean) / sqrt(var + eps) + beta.  Each follows handgrad's layer protocol:
``params`` (a dict), ``forward(x) -> (y, cache)``, ``backward(dy, cache) -> (dx, grads)``.
A third, deliberately wrong softsign backward shows what a failed check looks like.
"""
import torch

from handgrad.compose import Sequential
from handgrad.layers import Linear, Tanh
from handgrad.testing import assert_layer_matches_autograd


class Softsign:
    """y = x / (1 + |x|);  dy/dx = 1 / (1 + |x|)^2."""

    params: dict = {}

    def forward(self, x):
        d = 1.0 + x.abs()
        return x / d, d

    def backward(self, dy, d):
        return dy / (d * d), {}


class WrongSoftsign(Softsign):
    """A plausible mistake: differentiating x/(1+|x|) as if |x| were a constant."""

    def backward(self, dy, d):
        return dy / d, {}


class LayerNorm:
    """Normalise each row over its features, then scale by gamma and shift by beta."""

    def __init__(self, n: int, eps: float = 1e-5, dtype=torch.float64):
        self.eps = eps
        g = torch.Generator().manual_seed(1)
        self.params = {"gamma": 1 + 0.1 * torch.randn(n, generator=g, dtype=dtype),
                       "beta": 0.1 * torch.randn(n, generator=g, dtype=dtype)}

    def forward(self, x):
        mean = x.mean(1, keepdim=True)
        xc = x - mean
        rstd = (xc.pow(2).mean(1, keepdim=True) + self.eps).rsqrt()
        xhat = xc * rstd
        return self.params["gamma"] * xhat + self.params["beta"], (xhat, rstd)

    def backward(self, dy, cache):
        xhat, rstd = cache
        grads = {"gamma": (dy * xhat).sum(0), "beta": dy.sum(0)}
        g = dy * self.params["gamma"]
        # dx = rstd (g - mean(g) - xhat mean(g xhat)), the llm.c / CS231n form
        dx = rstd * (g - g.mean(1, keepdim=True) - xhat * (g * xhat).mean(1, keepdim=True))
        return dx, grads


def main() -> int:
    x = torch.randn(6, 5, dtype=torch.float64) * 2
    for layer in (Softsign(), LayerNorm(5)):
        for report in assert_layer_matches_autograd(layer, x.float()):
            print(report.title, "->", "PASS" if report.ok else "FAIL")
    stack = Sequential([Linear(torch.randn(5, 4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)),
                        LayerNorm(4), Softsign(), Tanh()])
    assert_layer_matches_autograd(stack, x)
    print("a Linear-LayerNorm-Softsign-Tanh stack -> PASS")
    try:
        assert_layer_matches_autograd(WrongSoftsign(), x)
    except AssertionError as e:
        print("\nThe wrong softsign backward is caught:\n" + str(e).split("\n\n")[0])
        return 0
    print("UNEXPECTED: the wrong backward passed")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
