"""The ``handgrad`` command: ``check`` (hand vs autograd vs finite differences, or the chapter's
Eq. 7.24 demonstration) and ``train`` (SGD with momentum on shipped or user data).

Exit codes: 0 success, 1 a gradient mismatch (or a failed demonstration / verification), 2 bad
usage or bad input (one line on stderr).  With ``--json`` standard output holds exactly one JSON
document; tables and progress go to standard error.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from .errors import HandgradInputError, bad


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit code 2."""

    def error(self, message):
        raise HandgradInputError(f"{self.prog}: {message}")


def _sizes(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise bad("--sizes", "comma-separated integer widths like 4,3,2", repr(text)) from None


def _add_network_args(p, *, defaults=True):
    d = (lambda v: v) if defaults else (lambda v: None)
    p.add_argument("--activation", default=d("logistic"), help="logistic, tanh, relu, identity")
    p.add_argument("--output-activation", default=None, help="output layer's activation (default: the hidden one)")
    p.add_argument("--alpha", type=float, default=d(1.0), help="logistic gain alpha (Eq. 7.5)")
    p.add_argument("--loss", default=d("sse"), help="sse, mse, cross_entropy")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="handgrad", description="Hand-written backprop, proved right against autograd.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    c = sub.add_parser("check", help="compare hand-written gradients with autograd and finite differences")
    c.add_argument("--sizes", type=_sizes, default=[4, 3, 2], help="widths, e.g. 4,3,2 (the chapter's)")
    _add_network_args(c)
    c.add_argument("--no-bias", action="store_true")
    c.add_argument("--batch", type=int, default=8)
    c.add_argument("--dtype", default="float64", help="float64 (three-way, with finite differences), float32, bfloat16")
    c.add_argument("--fd", choices=["auto", "on", "off"], default="auto",
                   help="finite-difference referee (auto: in float64)")
    c.add_argument("--chapter", action="store_true",
                   help="run the chapter's Eq. 7.24, as printed and corrected, through the oracle")

    t = sub.add_parser("train", help="train on a shipped data set or a CSV, SGD with momentum")
    t.add_argument("--data", required=True, help="xor, letters, iris, digits, breast-cancer, or PATH.csv")
    t.add_argument("--hidden", type=_sizes, default=None, help="hidden widths, e.g. 32 or 64,32")
    _add_network_args(t, defaults=False)
    t.add_argument("--eta", type=float, default=None, help="learning rate")
    t.add_argument("--momentum", type=float, default=None)
    t.add_argument("--batch", default=None, help="full, online, or a mini-batch size")
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--target-loss", type=float, default=None)
    t.add_argument("--verify-every", type=int, default=None, help="check hand vs oracle every N updates")
    t.add_argument("--test-fraction", type=float, default=0.25)
    t.add_argument("--dtype", default="float32")
    return parser


def _emit(args, text: str, doc: dict) -> None:
    if args.json:
        print(text, file=sys.stderr)
        print(json.dumps(doc))
    else:
        print(text)


def cmd_check(args) -> int:
    from . import validate
    from .check import check
    from .chapter import demonstrate
    from .mlp import MLP

    dtype = validate.resolve_dtype(args.dtype)
    if args.batch < 1:
        raise bad("--batch", "a positive batch size", str(args.batch))
    if args.chapter:
        demo = demonstrate(alpha=validate.check_alpha(args.alpha), seed=args.seed,
                           batch=1 if args.batch == 8 else args.batch, dtype=dtype)
        _emit(args, str(demo), demo.to_dict())
        return 0 if demo.ok else 1
    device = validate.resolve_device(args.device)
    net = MLP(args.sizes, activation=args.activation, alpha=args.alpha,
              output_activation=args.output_activation, loss=args.loss, bias=not args.no_bias,
              dtype=dtype, device=device, seed=args.seed)
    g = torch.Generator().manual_seed(args.seed + 1)
    X = torch.randn(args.batch, net.sizes[0], generator=g, dtype=torch.float64)
    if net.loss == "cross_entropy":
        T = torch.randint(0, net.sizes[-1], (args.batch,), generator=g)
    elif net.output_activation == "logistic":
        T = torch.rand(args.batch, net.sizes[-1], generator=g, dtype=torch.float64)
    else:
        T = torch.randn(args.batch, net.sizes[-1], generator=g, dtype=torch.float64)
    X = X.to(dtype=dtype, device=device)
    T = T.to(device=device, dtype=dtype if T.dtype.is_floating_point else T.dtype)
    fd = {"auto": "auto", "on": True, "off": False}[args.fd]
    report = check(net, X, T, fd=fd)
    _emit(args, str(report), report.to_dict())
    return 0 if report.ok else 1


def cmd_train(args) -> int:
    from .train import run_from_cli
    return run_from_cli(args, _emit)


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        return {"check": cmd_check, "train": cmd_train}[args.command](args)
    except HandgradInputError as e:
        print(f"handgrad: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("handgrad: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
