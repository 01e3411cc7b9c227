"""handgrad: hand-written backpropagation in PyTorch tensors, proved right against an autograd oracle
and a float64 finite-difference referee."""
from . import oracle
from .check import Report, check
from .errors import HandgradInputError
from .mlp import MLP

__all__ = ["MLP", "check", "oracle", "Report", "HandgradInputError"]
__version__ = "0.1.0"
