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
    t.add_argument("--test-fraction", type=float, default=0.25, help="held-out fraction of a real data set")
    t.add_argument("--split-seed", type=int, default=0, help="seed of the fixed train/test split")
    t.add_argument("--dtype", default="float32")
    t.add_argument("--engine", choices=["fast", "reference"], default="fast",
                   help="fast: the allocation-free step (default); reference: loss_and_grads + update")
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


class _Progress:
    """Progress on stderr: one rewritten line on a terminal, a line every few seconds otherwise."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.last = 0.0

    def __call__(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r" + text[:150].ljust(150))
            self.stream.flush()
        elif time.monotonic() - self.last >= 3.0:
            print(text, file=self.stream, flush=True)
            self.last = time.monotonic()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")


def cmd_train(args) -> int:
    from . import validate
    from .data import load_dataset
    from .train import build_net, default_config, train

    device = validate.resolve_device(args.device)
    dtype = validate.resolve_dtype(args.dtype)
    overrides = {k: v for k, v in {
        "hidden": args.hidden, "activation": args.activation, "alpha": args.alpha, "loss": args.loss,
        "eta": args.eta, "momentum": args.momentum, "epochs": args.epochs,
        "target_loss": args.target_loss, "verify_every": args.verify_every, "seed": args.seed,
        "engine": args.engine}.items() if v is not None}
    if args.batch is not None:
        overrides["batch"] = args.batch if args.batch in ("full", "online") else _int_arg("--batch", args.batch)
    cfg = default_config(args.data, **overrides)
    data = load_dataset(args.data, test_fraction=args.test_fraction, seed=args.split_seed,
                        dtype=dtype, device=device)
    net = build_net(cfg, data)
    out = sys.stderr if args.json else sys.stdout
    print(f"handgrad train: {data.name} ({data.X_train.shape[0]} train"
          + (f" / {data.X_test.shape[0]} test" if data.has_test_split else "") + f" patterns), "
          f"{net.describe()}", file=out)
    print(f"  eta {cfg.eta:g}, momentum {cfg.momentum:g}, batch {cfg.batch}, epochs {cfg.epochs}"
          + (f", target loss {cfg.target_loss:g}" if cfg.target_loss is not None else "")
          + (f", verify every {cfg.verify_every} updates" if cfg.verify_every else "")
          + f", seed {cfg.seed}, {cfg.engine} engine", file=out)
    progress = _Progress()
    result = train(net, data, cfg, progress=progress)
    progress.close()
    lines = [f"  stopped: {result.stopped_reason} - {result.message}",
             f"  final training loss ({net.loss}): {result.final_loss:.6g}",
             f"  train accuracy: {result.train_accuracy:.2%}"]
    if result.test_accuracy is not None:
        lines.append(f"  test accuracy:  {result.test_accuracy:.2%} ({data.X_test.shape[0]} held-out patterns)")
    if cfg.verify_every:
        lines.append(f"  gradient checks against autograd: {result.checks_run} run, "
                     + ("all passed" if result.failed_report is None else "one FAILED"))
    lines.append(f"  {result.steps} updates in {result.seconds:.2f} s")
    text = "\n".join(lines)
    if result.failed_report is not None:
        text += "\n\n" + str(result.failed_report)
    doc = {"data": data.name, "source": data.source, "config": cfg.to_dict(), "network": net.spec(),
           "result": result.to_dict()}
    _emit(args, text, doc)
    return 1 if result.stopped_reason in ("verify-mismatch", "non-finite") else 0


def _int_arg(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise bad(name, "'full', 'online' or a positive integer", repr(text)) from None


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
