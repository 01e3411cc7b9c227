"""The ``handgrad`` command: ``check`` (hand vs autograd vs finite differences, or the chapter's
Eq. 7.24 demonstration; with --per-sample / --hvp also those reports), ``train`` (SGD with momentum
on shipped or user data, with checkpoints) and ``reproduce`` (Rumelhart et al. 1986).

Exit codes: 0 success, 1 a gradient mismatch (or a failed demonstration / verification), 2 bad
usage or bad input (one line on stderr).  With ``--json`` standard output holds exactly one JSON
document; tables and progress go to standard error.
"""
from __future__ import annotations

import argparse
import json
import os
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
    except ValueError:  # argparse prints "argument --sizes/--hidden: <this>"
        raise argparse.ArgumentTypeError(f"expected comma-separated integer widths like 4,3,2, got {text!r}") from None


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
    c.add_argument("--per-sample", action="store_true",
                   help="also check the per-sample gradients (and their mean, variance) against vmap(grad)")
    c.add_argument("--hvp", action="store_true",
                   help="also check H v (R-operator) and G v (Gauss-Newton) for a random direction v "
                        "against double-backward autograd (and finite differences)")

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
    t.add_argument("--test-fraction", type=float, default=None, help="held-out fraction of a real data set (0.25)")
    t.add_argument("--split-seed", type=int, default=None, help="seed of the fixed train/test split (0)")
    t.add_argument("--dtype", default=None, help="float32 (default), float64, bfloat16")
    t.add_argument("--engine", choices=["fast", "reference"], default=None,
                   help="fast: the allocation-free step (default); reference: loss_and_grads + update")
    t.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="save the run to PATH (atomically) every --checkpoint-every updates and at the end; "
                        "a new run refuses an existing PATH")
    t.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                   help="save every N updates (default: at the end of every epoch)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run saved in --checkpoint PATH, bit for bit; its settings are used, "
                        "and a setting given here must equal the checkpoint's (except --epochs, "
                        "--target-loss, --verify-every, --checkpoint-every, which may change)")
    t.set_defaults(seed=None, device=None)  # None: not given (a resumed run takes the checkpoint's)
    r = sub.add_parser("reproduce", help="reproduce a published result with the hand-written backprop")
    r.add_argument("study", choices=["rumelhart1986"],
                   help="rumelhart1986: Rumelhart, Hinton & Williams (1986), Fig. 1 symmetry network, and XOR")
    r.add_argument("--seeds", type=int, default=1000, help="networks (seeds) trained at once (default 1000)")
    r.add_argument("--max-sweeps", type=int, default=20000, help="sweeps before a seed counts as not converged")
    r.add_argument("--seed", type=int, default=0, help="seed of the initial weights")
    r.add_argument("--out", default="reproduce-out", help="folder for rumelhart1986.{json,png}")
    r.add_argument("--json", action="store_true", help="print one JSON document on stdout")
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
    _check_seed(args.seed, limit=2**63)
    if not 1 <= args.batch <= 2**31 - 1:
        raise bad("--batch", "a batch size in 1..2147483647", str(args.batch))
    if (args.per_sample or args.hvp) and args.chapter:
        raise bad("--chapter", "alone (--per-sample and --hvp check a network of --sizes)", "with --per-sample/--hvp")
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
    if not (args.per_sample or args.hvp):
        _emit(args, str(report), report.to_dict())
        return 0 if report.ok else 1
    reports = {"gradients": report}
    if args.per_sample:
        from .per_sample import per_sample_report

        reports["per_sample"] = per_sample_report(net, X, T)
    if args.hvp:
        from .hvp import hvp_report

        gv = torch.Generator().manual_seed(args.seed + 2)
        v = {k: torch.randn(p.shape, generator=gv, dtype=torch.float64).to(p.device, p.dtype)
             for k, p in net.params.items()}
        fd_on = fd is True or (fd == "auto" and dtype == torch.float64)
        reports["hvp"] = hvp_report(net, X, T, v, fd=fd_on)
        reports["gauss_newton"] = hvp_report(net, X, T, v, gauss_newton=True, fd=fd_on)
    ok = all(r.ok for r in reports.values())
    _emit(args, "\n\n".join(map(str, reports.values())),
          {"ok": ok, **{k: r.to_dict() for k, r in reports.items()}})
    return 0 if ok else 1


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


_TRAIN_DEFAULTS = {"split_seed": 0, "test_fraction": 0.25, "dtype": "float32", "device": "cpu"}


def cmd_train(args) -> int:
    """``handgrad train``: exit 0 (stopped by target or epochs), 1 (verification failure or non-finite
    values), 2 (bad input, a bad or mismatched checkpoint), 130 (Ctrl-C; with --checkpoint the state
    is saved first and the command to resume is printed)."""
    from .train import TrainingInterrupted

    if args.output_activation is not None:
        raise bad("--output-activation", "no such option for train (its output layer is the softmax for "
                  "cross_entropy, else the hidden activation); use it with check", repr(args.output_activation))
    if args.resume and not args.checkpoint:
        raise bad("--resume", "--checkpoint PATH (the checkpoint to resume from)", "no --checkpoint")
    if args.checkpoint_every is not None and not args.checkpoint:
        raise bad("--checkpoint-every", "--checkpoint PATH as well", "no --checkpoint")
    if args.checkpoint_every is not None and args.checkpoint_every < 1:
        raise bad("--checkpoint-every", "a positive number of updates", str(args.checkpoint_every))
    progress = _Progress()
    try:
        return _run_train(args, progress)
    except TrainingInterrupted as e:
        progress.close()
        if e.saved:
            print(f"handgrad: {e}; resume with: {_resume_command(args)}", file=sys.stderr)
        else:
            print(f"handgrad: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        progress.close()
        where = (f"nothing new was saved ({args.checkpoint} holds the last checkpoint written, if any)"
                 if args.checkpoint else "nothing was saved (give --checkpoint PATH to be able to resume)")
        print(f"handgrad: training interrupted; {where}", file=sys.stderr)
        return 130


def _run_train(args, progress) -> int:
    from . import validate
    from .data import load_dataset
    from .train import build_net, check_checkpoint, default_config, train

    overrides = {k: v for k, v in {
        "hidden": args.hidden, "activation": args.activation, "alpha": args.alpha, "loss": args.loss,
        "eta": args.eta, "momentum": args.momentum, "epochs": args.epochs,
        "target_loss": args.target_loss, "verify_every": args.verify_every, "seed": args.seed,
        "engine": args.engine}.items() if v is not None}
    if args.batch is not None:
        overrides["batch"] = args.batch if args.batch in ("full", "online") else _int_arg("--batch", args.batch)
    given = {k: getattr(args, k) for k in _TRAIN_DEFAULTS}
    every, notes = args.checkpoint_every, []
    if args.resume:
        cfg, settings, every, notes = _resume_settings(args, overrides, given)
    else:
        cfg = default_config(args.data, **overrides)
        settings = {k: _TRAIN_DEFAULTS[k] if v is None else v for k, v in given.items()}
    device = validate.resolve_device(settings["device"])
    dtype = validate.resolve_dtype(settings["dtype"])
    try:
        data = load_dataset(args.data, test_fraction=settings["test_fraction"], seed=settings["split_seed"],
                            dtype=dtype, device=device)
    except HandgradInputError as e:  # the loader's argument is `name`: the user typed --data
        text = str(e)
        raise HandgradInputError("--data" + text[4:] if text.startswith("name") else text) from None
    net = build_net(cfg, data)
    run_info = {"split_seed": settings["split_seed"], "test_fraction": settings["test_fraction"]}
    check_checkpoint(net, data, cfg, args.checkpoint, resume=args.resume, run_info=run_info)  # errors first
    out = sys.stderr if args.json else sys.stdout
    print(f"handgrad train: {data.name} ({data.X_train.shape[0]} train"
          + (f" / {data.X_test.shape[0]} test" if data.has_test_split else "") + f" patterns), "
          f"{net.describe()}", file=out)
    print(f"  eta {cfg.eta:g}, momentum {cfg.momentum:g}, batch {cfg.batch}, epochs {cfg.epochs}"
          + (f", target loss {cfg.target_loss:g}" if cfg.target_loss is not None else "")
          + (f", verify every {cfg.verify_every} updates" if cfg.verify_every else "")
          + f", seed {cfg.seed}, {cfg.engine} engine", file=out)
    result = train(net, data, cfg, progress=progress, checkpoint=args.checkpoint, checkpoint_every=every,
                   resume=args.resume, run_info=run_info)
    progress.close()
    lines = []
    if args.checkpoint:
        cadence = f"every {every} updates" if every else "at the end of every epoch"
        if result.resumed_from is not None:
            lines.append(f"  resumed from {args.checkpoint} at step {result.resumed_from}"
                         + "".join(f"; {n}" for n in notes))
        lines.append(f"  checkpoint: {args.checkpoint} ({cadence} and at the end; "
                     + (f"now at step {result.checkpoint_step})" if result.checkpoint_step is not None
                        else "none written)"))
    lines += [f"  stopped: {result.stopped_reason} - {result.message}",
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


# TrainConfig field -> its option, for messages about a resumed run's settings
_FLAGS = {"hidden": "--hidden", "activation": "--activation", "alpha": "--alpha", "loss": "--loss",
          "eta": "--eta", "momentum": "--momentum", "batch": "--batch", "epochs": "--epochs",
          "target_loss": "--target-loss", "verify_every": "--verify-every", "seed": "--seed",
          "engine": "--engine", "split_seed": "--split-seed", "test_fraction": "--test-fraction",
          "dtype": "--dtype", "device": "--device"}


def _show(value) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, float):
        return f"{value:g}" if float(f"{value:g}") == value else repr(value)
    return str(value)


def _resume_settings(args, overrides: dict, given: dict):
    """A resumed run's settings: the checkpoint's, with the stop/check settings given on the command
    line (--epochs, --target-loss, --verify-every, --checkpoint-every) replacing them; any other
    setting given must be the checkpoint's (an error names it).  Returns (cfg, data settings,
    checkpoint_every, notes on what changed)."""
    from . import validate
    from .checkpoint import FREE_FIELDS, load
    from .data import DATASETS
    from .train import TrainConfig

    path = args.checkpoint
    ck = load(path)

    def conflict(flag, theirs, mine):
        return bad(f"checkpoint ({path})", f"{flag} {_show(theirs)} (the checkpoint's; leave {flag} out "
                   "to resume with it)", f"{flag} {_show(mine)}")

    def key(name):
        k = str(name).strip().lower().replace("_", "-")
        return k if k in DATASETS else None

    theirs_data = ck["data"].get("name")
    if (key(args.data) or key(theirs_data)) and key(args.data) != key(theirs_data):
        raise conflict("--data", theirs_data, args.data)
    base = dict(ck["config"])
    try:
        stored = TrainConfig.from_dict(base)
        wanted = TrainConfig.from_dict({**base, **overrides})
    except HandgradInputError as e:
        if "config" in str(e).split(":")[0]:
            raise bad(f"checkpoint ({path})", "a config of this handgrad's TrainConfig", str(e)) from None
        raise
    notes = []
    for field, value in wanted.to_dict().items():
        old = stored.to_dict()[field]
        if value == old:
            continue
        if field not in FREE_FIELDS:
            raise conflict(_FLAGS[field], old, value)
        notes.append(f"{_FLAGS[field]} {_show(value)} (the checkpoint's run: {_show(old)})")
    settings = {}
    stored_settings = {"split_seed": ck["data"].get("split_seed"), "test_fraction": ck["data"].get("test_fraction"),
                       "dtype": ck["network"].get("dtype"), "device": ck["network"].get("device")}
    for name, mine in given.items():
        theirs = stored_settings[name]
        if theirs is None:
            theirs = _TRAIN_DEFAULTS[name]
        if mine is not None:
            norm = {"dtype": lambda v: str(validate.resolve_dtype(v)).removeprefix("torch."),
                    "device": lambda v: str(validate.resolve_device(v))}.get(name, lambda v: v)
            if norm(mine) != norm(theirs):
                raise conflict(_FLAGS[name], theirs, mine)
        settings[name] = theirs
    every = args.checkpoint_every
    if every is None:
        every = ck["checkpoint_every"]
    elif every != ck["checkpoint_every"]:
        notes.append(f"--checkpoint-every {every} (the checkpoint's run: "
                     f"{ck['checkpoint_every'] or 'every epoch'})")
    return wanted, settings, every, notes


def _resume_command(args) -> str:
    """The command that resumes this run (its settings are in the checkpoint)."""
    import os
    import shlex

    prog = ["handgrad"] if os.path.basename(sys.argv[0] or "") == "handgrad" else [sys.executable, "-m", "handgrad"]
    cmd = prog + ["train", "--data", args.data, "--checkpoint", args.checkpoint, "--resume"]
    if args.json:
        cmd.append("--json")
    return shlex.join(cmd)


def cmd_reproduce(args) -> int:
    """``handgrad reproduce rumelhart1986``: the table on stdout (or in the JSON document), the
    histogram PNG (with matplotlib) and the JSON under --out."""
    from .reproduce import reproduce

    if args.seeds < 1:
        raise bad("--seeds", "a positive number of networks", str(args.seeds))
    if args.max_sweeps < 1:
        raise bad("--max-sweeps", "a positive number of sweeps", str(args.max_sweeps))
    _check_seed(args.seed, limit=2**63)
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        raise bad("--out", "a folder that can be created", f"{args.out!r} ({e.strerror})") from None
    for name in ("rumelhart1986.json", "rumelhart1986.png"):  # checked now, not after a 10-minute run
        target = os.path.join(args.out, name)
        if os.path.lexists(target) and not os.path.isfile(target):
            raise bad("--out", f"a folder where {name} can be written", f"{target!r} is not a regular file")
    if not os.access(args.out, os.W_OK):
        raise bad("--out", "a writable folder", repr(args.out))
    progress = _Progress()
    doc = reproduce(seeds=args.seeds, max_sweeps=args.max_sweeps, seed=args.seed, out_dir=args.out,
                    progress=progress)
    progress.close()
    png = doc["histogram"] or "no histogram (install matplotlib: pip install 'handgrad[plot]')"
    text = (f"Rumelhart, Hinton & Williams (1986), Fig. 1, and XOR: {args.seeds} seeds each, "
            f"hand-written backprop\n\n{doc['table']}\n\nhistogram: {png}\n"
            f"JSON: {os.path.join(args.out, 'rumelhart1986.json')}")
    _emit(args, text, doc)
    return 0


def _check_seed(seed: int, limit: int) -> None:
    """torch generators take seeds in [0, 2**64); check adds up to 2 to its seed."""
    if not 0 <= seed < limit:
        raise bad("--seed", f"an integer in 0..{limit - 1}", str(seed))


def _int_arg(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise bad(name, "'full', 'online' or a positive integer", repr(text)) from None


def main(argv=None) -> int:
    parser = build_parser()
    try:
        code = _main(parser, argv)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:  # stdout closed early (`handgrad ... | head`): stop quietly, as cat does
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        return 141  # 128 + SIGPIPE, what a shell reports for a command killed by a closed pipe


def _main(parser, argv) -> int:
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        return {"check": cmd_check, "train": cmd_train, "reproduce": cmd_reproduce}[args.command](args)
    except HandgradInputError as e:
        print(f"handgrad: error: {e}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:  # a size too large for this machine, not a bug: one line
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not isinstance(e, MemoryError) and not any(k in text for k in ("alloc", "out of memory", "Out of memory")):
            raise
        print(f"handgrad: error: not enough memory for the sizes asked for ({text[:200]})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("handgrad: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
