"""Training by the chapter's gradient descent, with the hand-written gradients only.

The chapter's learning rule changes each weight against its error gradient,

    delta w = -eta * dSSE/dw                                  (the chapter's weight change, Eq. 7.2)

with SSE = 1/2 sum E^2 and eta the learning rate.  :func:`train` applies it to every parameter of an
:class:`~handgrad.mlp.MLP`, with the gradient from the hand-written backward pass
(``net.loss_and_grads``; autograd is never used for learning), optionally with momentum:

    v <- momentum * v - eta * dloss/dp,   p <- p + v          (momentum 0: exactly delta w above)

Batches: ``"full"`` (one update per epoch on every training pattern), an ``int`` mini-batch size (the
training set reshuffled every epoch), or ``"online"``, as the chapter author's programs: each update
uses one randomly chosen pattern, and an "epoch" is n_train such updates.  After each epoch the loss on
the whole training set is computed and training stops once it is <= ``target_loss``.

``verify_every=N`` proves the gradients while training: the gradient of updates 1, N+1, 2N+1, ... is
compared with the autograd oracle (:func:`handgrad.check.check`) on the same mini-batch before it is
applied, and a mismatch stops training at once with the failing report.

Everything random (initial weights, shuffles, online picks) comes from ``cfg.seed``: two runs with the
same settings give the same parameters bit for bit (on the same machine and torch build).
"""
from __future__ import annotations

import math
import numbers
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch

from . import checkpoint as checkpoint_io
from .check import Report, check
from .data import DATASETS
from .errors import bad
from .fast import FastStep
from .layers import ACTIVATIONS
from .losses import LOSSES
from .mlp import MLP

Tensor = torch.Tensor

HISTORY_POINTS = 1000      # history is thinned to at most this many (epoch, loss) points
PROGRESS_INTERVAL = 0.25   # seconds between progress calls (at most 4 a second, plus the last one)
STOP_REASONS = ("target", "epochs", "verify-mismatch", "non-finite")
ENGINES = ("fast", "reference")
# Parameters are checked for NaN/Inf every this many updates (and before every gradient check and
# checkpoint, and at the end); a failed check replays the updates since the last good one to find
# the first bad update exactly.  One check costs ~8 us (one _foreach_norm and a readout) plus a
# snapshot copy: every update it would add ~17 % to the xor/letters steps, every 32 under 1 %.
CHECK_FINITE_EVERY = 32


@dataclass
class TrainConfig:
    """The settings of a training run (the network's shape, and the learning rule's).

    ``hidden``, ``activation``, ``alpha``, ``loss`` and ``init`` are read by :func:`build_net`;
    :func:`train` reads the rest (and takes the loss from the network it is given).

    hidden: hidden-layer widths, e.g. ``[2]`` for the chapter's 2-2-2 XOR net.
    activation, alpha: hidden (and, for sse/mse, output) activation; alpha is the logistic gain.
    loss: ``sse`` (the chapter's 1/2 sum E^2), ``mse`` or ``cross_entropy`` (softmax outputs).
    eta: the learning rate in delta w = -eta dloss/dw.
    momentum: in [0, 1); 0 is the chapter's plain rule.
    batch: ``"full"``, ``"online"`` (one random pattern per update) or a mini-batch size.
    epochs: the most epochs to run.
    target_loss: stop when the whole training set's loss is <= this (None: run every epoch).
    verify_every: check the hand gradient against autograd every this many updates (0: never).
    seed: seeds the initial weights and every shuffle / pick.
    init: ``"glorot"`` or ``"chapter"`` (weights and biases uniform in (-1, 1)).
    engine: ``"fast"`` (the allocation-free :class:`~handgrad.fast.FastStep`, the default) or
        ``"reference"`` (``net.loss_and_grads`` and a plain update); both are hand-written and both
        are what ``verify_every`` checks.
    """

    hidden: list = field(default_factory=lambda: [16])
    activation: str = "logistic"
    alpha: float = 1.0
    loss: str = "sse"
    eta: float = 0.5
    momentum: float = 0.0
    batch: object = "online"
    epochs: int = 1000
    target_loss: float | None = None
    verify_every: int = 0
    seed: int = 0
    init: str = "glorot"
    engine: str = "fast"

    def __post_init__(self):
        if isinstance(self.hidden, (str, bytes)) or not hasattr(self.hidden, "__iter__"):
            raise bad("hidden", "a list of positive integer widths such as [6]", repr(self.hidden))
        hidden = list(self.hidden)
        if not all(_is_int(h) and h > 0 for h in hidden):
            raise bad("hidden", "positive integer widths such as [6]", repr(self.hidden))
        self.hidden = [int(h) for h in hidden]
        if self.activation not in ACTIVATIONS:
            raise bad("activation", f"one of {', '.join(ACTIVATIONS)}", repr(self.activation))
        self.alpha = _positive("alpha", self.alpha)
        if self.loss not in LOSSES:
            raise bad("loss", f"one of {', '.join(LOSSES)}", repr(self.loss))
        self.eta = _positive("eta", self.eta)
        if not _is_real(self.momentum) or not 0 <= self.momentum < 1:
            raise bad("momentum", "a number in [0, 1)", repr(self.momentum))
        self.momentum = float(self.momentum)
        if isinstance(self.batch, str):
            if self.batch not in ("full", "online"):
                raise bad("batch", "'full', 'online' or a positive integer mini-batch size", repr(self.batch))
        elif _is_int(self.batch) and self.batch > 0:
            self.batch = int(self.batch)
        else:
            raise bad("batch", "'full', 'online' or a positive integer mini-batch size", repr(self.batch))
        if not _is_int(self.epochs) or self.epochs < 0:
            raise bad("epochs", "an integer >= 0", repr(self.epochs))
        self.epochs = int(self.epochs)
        if self.target_loss is not None:
            if not _is_real(self.target_loss) or not 0 <= self.target_loss < math.inf:
                raise bad("target_loss", "a finite number >= 0 or None", repr(self.target_loss))
            self.target_loss = float(self.target_loss)
        if not _is_int(self.verify_every) or self.verify_every < 0:
            raise bad("verify_every", "an integer >= 0 (0 = off)", repr(self.verify_every))
        self.verify_every = int(self.verify_every)
        if not _is_int(self.seed) or not -2**63 <= self.seed < 2**64:
            raise bad("seed", "an integer that fits in 64 bits", repr(self.seed))
        self.seed = int(self.seed)
        if self.init not in ("glorot", "chapter"):
            raise bad("init", "'glorot' or 'chapter'", repr(self.init))
        if self.engine not in ENGINES:
            raise bad("engine", f"one of {', '.join(ENGINES)}", repr(self.engine))

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """A config from a dict of its fields (unknown keys are an error)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise bad("config", f"fields among {', '.join(sorted(known))}", ", ".join(map(repr, unknown)))
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **changes) -> "TrainConfig":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)


# The defaults, one per shipped data set and one ("csv") for a user's CSV of similar size (tens to a
# few thousand rows, tens of features).  Results of exactly these settings, seed 0, on
# load_dataset(name, seed=0) (test_fraction 0.25), float32, torch 2.13 CPU on a 2-core machine:
#
#   set            stop     epochs  updates  final train loss  train acc  test acc          seconds
#   xor            target      602     2408  0.1963 (SSE)      100 %      (no test split)   0.29
#   letters        target      284     1420  0.0496 (SSE)      100 %      (no test split)   0.17
#   iris           epochs      200     1600  0.0360 (CE)       98.2 %     97.2 % (35/36)    0.24
#   digits         epochs       30     1290  0.0032 (CE)       100 %      98.4 % (443/450)  0.24
#   breast-cancer  epochs       30      420  0.0318 (CE)       99.5 %     96.5 % (137/142)  0.07
#
# How they were chosen: xor and letters keep the chapter author's rule.  For the real sets a small
# grid (hidden width, eta with/without momentum, epochs) was scored by mean test accuracy over the
# *other* splits, load_dataset(name, seed=1..4) with training seeds 1..4, and the seed-0 split above
# was only measured afterwards (those splits' test rows overlap seed 0's, so this is like
# cross-validation, not a sealed hold-out, but no setting was picked for its seed-0 test score).  Longer runs (e.g.
# 100 epochs on breast-cancer) fit the training set perfectly and test no better or slightly worse.
DEFAULTS: dict[str, dict] = {
    # The chapter author's XOR: a 2-2-2 logistic net (output 0 XOR, output 1 XNOR), alpha 1, eta 0.5,
    # SSE, weights and biases uniform in (-1, 1), one randomly chosen pattern per update, stopping
    # when the SSE over all 4 patterns is below 0.2.
    # MOMENTUM 0.5 IS ADDED to her rule, and not for speed: from seed 0's initial weights plain online
    # SGD (momentum 0) falls into XOR's well-known local minimum (SSE ~0.50, one pattern wrong, still
    # there after 20000 epochs).  Momentum does not make the 2-2-2 net more reliable in general: over
    # seeds 0-19 (5000 epochs) plain SGD reaches the target for 14 of 20 seeds and momentum 0.5 for 14
    # of 20 (momentum 0.9: 11, eta 1.0: 14); it changes the trajectory so that seed 0 reaches it.
    "xor": dict(hidden=[2], activation="logistic", alpha=1.0, loss="sse", eta=0.5, momentum=0.5,
                batch="online", epochs=20000, target_loss=0.2, verify_every=0, seed=0, init="chapter"),
    # The chapter author's 25-6-5 letters net (X, M, N, H, A on a 5x5 grid), same rule, plain online
    # SGD with no momentum; her criterion was SSE < 0.05 per pattern, and a total below 0.05 implies it.
    "letters": dict(hidden=[6], activation="logistic", alpha=1.0, loss="sse", eta=0.5, momentum=0.0,
                    batch="online", epochs=20000, target_loss=0.05, verify_every=0, seed=0, init="chapter"),
    # 4-16-3, softmax cross-entropy, mini-batches of 16.
    "iris": dict(hidden=[16], activation="tanh", alpha=1.0, loss="cross_entropy", eta=0.01,
                 momentum=0.9, batch=16, epochs=200, target_loss=None, verify_every=0, seed=0,
                 init="glorot"),
    # 64-64-10; 30 epochs already give 100 % on the training split (100 epochs test the same).
    "digits": dict(hidden=[64], activation="tanh", alpha=1.0, loss="cross_entropy", eta=0.05,
                   momentum=0.9, batch=32, epochs=30, target_loss=None, verify_every=0, seed=0,
                   init="glorot"),
    # 30-16-2, plain mini-batch SGD (no momentum); stopping at 30 epochs is the regularisation.
    "breast-cancer": dict(hidden=[16], activation="tanh", alpha=1.0, loss="cross_entropy", eta=0.1,
                          momentum=0.0, batch=32, epochs=30, target_loss=None, verify_every=0, seed=0,
                          init="glorot"),
    # A user's CSV (standardised by load_dataset).  On the three shipped files read as CSV paths it
    # tests 97.2 % (iris), 96.5 % (breast-cancer) and 98.4 % (digits) with the seed-0 split.
    "csv": dict(hidden=[32], activation="tanh", alpha=1.0, loss="cross_entropy", eta=0.05,
                momentum=0.9, batch=32, epochs=50, target_loss=None, verify_every=0, seed=0,
                init="glorot"),
}


def default_config(name, **changes) -> TrainConfig:
    """The default :class:`TrainConfig` for a shipped data set name or (``"csv"``) any CSV path."""
    key = name.strip().lower().replace("_", "-") if isinstance(name, str) else None
    if key not in DEFAULTS:
        if not isinstance(name, (str, Path)):
            raise bad("name", f"one of {', '.join(DEFAULTS)} or a CSV path", repr(name))
        key = "csv"
    return TrainConfig.from_dict({**DEFAULTS[key], **changes})


@dataclass
class TrainResult:
    """What a training run did and reached.

    stopped_reason: ``"target"``, ``"epochs"``, ``"verify-mismatch"`` or ``"non-finite"``.
    epochs: completed epochs; steps: updates applied.
    final_loss: the whole training set's loss at the end; reached_target: final_loss <= target_loss.
    train_accuracy, test_accuracy: fractions in [0, 1]; test_accuracy is None without a test split.
    history: (epoch, training loss) from epoch 0 (the initial weights), thinned to <= 1000 points.
    checks_run: gradient checks run (verify_every); failed_report: the failing check's Report.
    seconds: wall time of the run (all sessions of a resumed run); message: one line saying why it stopped.
    resumed_from: the step the run was resumed at (None: not resumed); checkpoint: its path (None:
    none); checkpoint_step: the step of the checkpoint now on disk (None: none written).
    """

    stopped_reason: str
    epochs: int
    steps: int
    final_loss: float
    reached_target: bool
    train_accuracy: float
    test_accuracy: float | None
    history: list
    checks_run: int
    failed_report: Report | None
    seconds: float
    message: str
    resumed_from: int | None = None
    checkpoint: str | None = None
    checkpoint_step: int | None = None

    def to_dict(self) -> dict:
        """A JSON-able dict (no tensors; non-finite numbers as strings)."""
        return {
            "stopped_reason": self.stopped_reason, "epochs": self.epochs, "steps": self.steps,
            "final_loss": _json_float(self.final_loss), "reached_target": self.reached_target,
            "train_accuracy": _json_float(self.train_accuracy),
            "test_accuracy": None if self.test_accuracy is None else _json_float(self.test_accuracy),
            "history": [[int(e), _json_float(l)] for e, l in self.history],
            "checks_run": self.checks_run,
            "failed_report": None if self.failed_report is None else self.failed_report.to_dict(),
            "seconds": self.seconds, "message": self.message, "resumed_from": self.resumed_from,
            "checkpoint": self.checkpoint, "checkpoint_step": self.checkpoint_step,
        }


def accuracy(net: MLP, X: Tensor, y: Tensor) -> float:
    """Fraction of rows whose largest output (argmax of ``net.forward``) is the class in ``y``."""
    with torch.no_grad():
        pred = net.forward(X).argmax(dim=1)
        return float((pred == y.to(pred.device)).to(torch.float64).mean())


def build_net(cfg: TrainConfig, data, dtype=None, device=None) -> MLP:
    """The network for ``cfg`` and ``data``: sizes ``[n_features, *hidden, n_classes]``, biases on,
    the output activation the hidden one (sse/mse) or the softmax (cross_entropy), initial weights
    seeded by ``cfg.seed``.  ``dtype``/``device`` default to the data's."""
    dtype = data.X_train.dtype if dtype is None else dtype
    device = data.X_train.device if device is None else device
    return MLP([data.n_features, *cfg.hidden, data.n_classes], activation=cfg.activation,
               alpha=cfg.alpha, output_activation=None, loss=cfg.loss, dtype=dtype, device=device,
               seed=cfg.seed, init=cfg.init)


def train(net: MLP, data, cfg: TrainConfig, *, progress=None, checkpoint=None, checkpoint_every=None,
          resume: bool = False, run_info: dict | None = None) -> TrainResult:
    """Train ``net`` on ``data.X_train``/``y_train`` by the chapter's rule delta w = -eta dSSE/dw
    (any loss in place of SSE, plus momentum), with gradients from ``net.loss_and_grads`` only.

    Updates ``net.params`` in place.  Targets are the desired rows ``data.onehot(y)`` for sse/mse and
    the class indices for cross_entropy.  ``progress``: None or a callable taking a short status string,
    called at most about 4 times a second and once at the end.

    Checkpoints (:mod:`handgrad.checkpoint`): with ``checkpoint=PATH`` the run is saved atomically to
    PATH every ``checkpoint_every`` updates (None: at the end of every epoch) and at the end of the
    run, whatever the stop reason, except after non-finite values, where the last good checkpoint
    is kept.  A new run refuses a PATH that already exists.  ``resume=True`` continues the run saved
    in PATH, bit for bit as if it had never stopped; the checkpoint must be for this network, this
    ``cfg`` (only ``epochs``, ``target_loss`` and ``verify_every`` may differ: they decide when to
    stop and what to check, not the trajectory) and this data, else a HandgradInputError names the
    file and the first difference (the file is never written then).  ``run_info``: optional
    ``{"split_seed": ..., "test_fraction": ...}`` recorded in the checkpoint and compared on resume.
    With a checkpoint, Ctrl-C (SIGINT, in the main thread) stops at the end of the update in progress,
    saves, and raises :class:`TrainingInterrupted` (a KeyboardInterrupt) saying so.

    Non-finite parameters stop training at the update that made them (the message names the step,
    the tensor and its first bad element); they are looked for every ``CHECK_FINITE_EVERY`` updates,
    before every gradient check and save, and at the end, and a failed look replays the updates since
    the last good one from a snapshot to find the first bad one, so the result is as if every update
    had been checked.
    """
    if not isinstance(cfg, TrainConfig):
        raise bad("cfg", "a TrainConfig", type(cfg).__name__)
    if not isinstance(net, MLP):
        raise bad("net", "a handgrad MLP", type(net).__name__)
    if progress is not None and not callable(progress):
        raise bad("progress", "a callable taking a string, or None", repr(progress))
    X, y = data.X_train, data.y_train
    if net.sizes[0] != data.n_features or net.sizes[-1] != data.n_classes:
        raise bad("net", f"{data.n_features} inputs and {data.n_classes} outputs (the data's)",
                  f"sizes {net.sizes}")
    if X.dtype != net.dtype or X.device != net.device:
        raise bad("data", f"features in {net.dtype} on {net.device} (the net's)", f"{X.dtype} on {X.device}")
    every = _checkpoint_args(checkpoint, checkpoint_every, resume, run_info)
    info = ck = None
    if checkpoint is not None:
        info = _data_info(data, run_info)
        ck = _open_checkpoint(checkpoint, resume, net, cfg, info)
    T = y if net.loss == "cross_entropy" else data.onehot(y)
    n = X.shape[0]
    gen = torch.Generator().manual_seed(cfg.seed)
    start = time.perf_counter()

    with torch.no_grad():
        loss = float(net.loss_value(X, T))  # also checks X and T once, fully
        fast = FastStep(net, cfg.eta, cfg.momentum, validate=False) if cfg.engine == "fast" else None
        velocity = fast.velocity if fast else {k: torch.zeros_like(p) for k, p in net.params.items()}
        history = [(0, loss)]
        epoch = steps = checks = skip = 0
        if ck is not None:  # resume: parameters, momentum, counters, history, generators
            for k, p in net.params.items():
                p.copy_(ck["params"][k])
                velocity[k].copy_(ck["velocity"][k])
            history = list(zip(ck["history"]["epoch"].tolist(), ck["history"]["loss"].tolist()))
            loss = history[-1][1]
            epoch, steps, checks, skip = ck["epoch"], ck["steps"], ck["checks_run"], ck["batch_in_epoch"]
            gen.set_state(ck["epoch_rng_state"])
            torch.set_rng_state(ck["torch_rng_state"])
            start -= float(ck["seconds"])
        first_step, first_epoch = steps, epoch
        saved_step = None if ck is None else ck["steps"]  # the step of the checkpoint now on disk
        reason, failed, message = None, None, ""
        last_progress = -math.inf
        b_done, epoch_state = skip, None  # position inside the epoch (for checkpoints)

        def apply(Xb, Tb, grads):
            if fast is not None:
                fast.step(Xb, Tb)  # v = momentum v - eta g;  p += v, fused
                return
            if grads is None:
                grads = net.loss_and_grads(Xb, Tb)[1]
            for name, p in net.params.items():   # v = momentum v - eta g;  p += v
                v = velocity[name]
                v.mul_(cfg.momentum).add_(grads[name], alpha=-cfg.eta)
                p.add_(v)

        guard = _FiniteGuard(net.params, velocity, apply)

        def non_finite():
            """Find the first update that left a non-finite parameter and stop there."""
            nonlocal reason, message, steps, epoch, history, loss
            bad_step, bad_epoch, where = guard.locate()
            steps, epoch = bad_step, bad_epoch - 1
            history = [h for h in history if h[0] <= epoch]
            loss = history[-1][1]
            reason = "non-finite"
            message = f"non-finite values at step {bad_step} (epoch {bad_epoch}): {where}"

        def save(stopped=None, stop_message=""):
            nonlocal saved_step
            state = _checkpoint_state(net, velocity, cfg, info, every, epoch, steps, b_done,
                                      gen.get_state() if epoch_state is None else epoch_state, checks,
                                      history, time.perf_counter() - start, stopped, stop_message)
            try:
                checkpoint_io.save(checkpoint, state)
            except OSError as e:
                raise bad(f"checkpoint ({checkpoint})", "a writable file (the previous checkpoint, if any, "
                          "is left as it was)", f"{type(e).__name__}: {e}") from None
            saved_step = steps

        def status(prefix=""):
            return (f"{prefix}epoch {epoch}/{cfg.epochs}  loss {loss:.6g}  "
                    f"train acc {accuracy(net, X, y):.2%}")

        if ck is None and not math.isfinite(loss):
            reason, message = "non-finite", f"non-finite training loss {loss} at the initial weights (epoch 0)"
        elif cfg.target_loss is not None and loss <= cfg.target_loss and (ck is None or skip == 0):
            # (resumed mid-epoch, the last recorded loss is not the current weights': an uninterrupted
            # run checks the target at the end of this epoch, and so does the resumed one)
            reason = "target"
        interrupted = False
        with _SigintFlag(checkpoint is not None) as sigint:
            try:
                while reason is None and epoch < cfg.epochs:
                    epoch_state = gen.get_state() if checkpoint is not None else None
                    b_done = skip
                    for Xb, Tb in _batches(X, T, n, cfg.batch, gen, skip):
                        grads = None
                        if fast is None:  # the reference path: loss_and_grads, then the update below
                            # A non-finite batch loss alone does not stop training (the fast step never
                            # computes it): the guard stops at the first update that makes a parameter
                            # non-finite, the same update for both engines.
                            grads = net.loss_and_grads(Xb, Tb)[1]
                        if cfg.verify_every and steps % cfg.verify_every == 0:
                            if not guard.check():
                                non_finite()
                                break
                            if grads is None:
                                grads = fast.loss_and_grads(Xb, Tb)[1]
                            report = check(net, Xb, Tb, grads=grads)
                            checks += 1
                            if not report.ok:
                                reason, failed = "verify-mismatch", report
                                names = ", ".join(f"{r.tensor} ({r.comparison})" for r in report.failures)
                                message = (f"gradient check failed at step {steps + 1} (epoch {epoch + 1}): "
                                           f"{names}; stopped before that update")
                                break
                        apply(Xb, Tb, grads)
                        steps += 1
                        b_done += 1
                        if guard.record(Xb, Tb, steps, epoch + 1) and not guard.check():
                            non_finite()
                            break
                        if every and steps % every == 0:
                            if not guard.check():
                                non_finite()
                                break
                            save()
                        if sigint.hit:
                            interrupted = True
                            break
                    skip = 0
                    if reason is not None or interrupted:
                        break
                    epoch += 1
                    b_done, epoch_state = 0, None
                    loss = float(net.loss_value(X, T))
                    history.append((epoch, loss))
                    if not math.isfinite(loss):
                        if not guard.check():
                            non_finite()
                        else:
                            reason = "non-finite"
                            message = f"non-finite training loss {loss} after epoch {epoch} (step {steps})"
                    elif cfg.target_loss is not None and loss <= cfg.target_loss:
                        reason = "target"
                    if progress is not None and time.perf_counter() - last_progress >= PROGRESS_INTERVAL:
                        progress(status())
                        last_progress = time.perf_counter()
                    if checkpoint is not None and not every and reason is None and epoch < cfg.epochs:
                        if not guard.check():  # the default cadence: at the end of every epoch
                            non_finite()
                            break
                        save()
                    if sigint.hit:
                        interrupted = True
                        break
                if interrupted:
                    if guard.check():
                        save()
                        where = (f"{epoch} epochs and {b_done} batches of epoch {epoch + 1}" if b_done
                                 else f"{epoch} epochs")
                        raise TrainingInterrupted(
                            f"interrupted after step {steps} ({where} done); checkpoint saved to {checkpoint}",
                            checkpoint=checkpoint, saved=True, epoch=epoch, steps=steps)
                    non_finite()
            except TrainingInterrupted:
                raise
            except KeyboardInterrupt:
                # a second Ctrl-C inside an update (the first one only asks to stop after it), or one
                # where no handler could be installed: the state may be half-updated, so it is not saved
                kept = (f"the checkpoint in {checkpoint} (step {saved_step}) is kept" if saved_step is not None
                        else "nothing was saved")
                raise TrainingInterrupted(f"interrupted during step {steps + 1}; {kept}",
                                          checkpoint=checkpoint, saved=False, epoch=epoch, steps=steps) from None
        reason = reason or "epochs"
        if reason != "non-finite" and not guard.check():
            non_finite()

        final_loss = float(net.loss_value(X, T))
        train_acc = accuracy(net, X, y)
        test_acc = accuracy(net, data.X_test, data.y_test) if data.has_test_split else None
    reached = cfg.target_loss is not None and final_loss <= cfg.target_loss
    if reason == "target":
        message = (f"reached target loss: {final_loss:.6g} <= {cfg.target_loss:g} after {epoch} epochs "
                   f"({steps} updates)")
    elif reason == "epochs":
        message = (f"ran {epoch} epochs ({steps} updates); final loss {final_loss:.6g}"
                   + ("" if cfg.target_loss is None else f", above target {cfg.target_loss:g}"))
    ran = steps != first_step or epoch != first_epoch
    if ck is not None and not ran and reason in ("target", "epochs"):
        message = f"already finished (resumed at step {steps}): {message}"
    if checkpoint is not None:
        if reason == "non-finite":
            message += (f"; the last good checkpoint (step {saved_step}) is kept in {checkpoint}"
                        if saved_step is not None else "; no checkpoint had been written")
        elif ran or ck is None or ck["stopped_reason"] != reason:
            with _SigintFlag(True):  # the final save is not cut short by Ctrl-C
                save(reason, message)
    seconds = time.perf_counter() - start
    if progress is not None:
        progress(f"{reason}: epoch {epoch}/{cfg.epochs}  loss {final_loss:.6g}  train acc {train_acc:.2%}"
                 + ("" if test_acc is None else f"  test acc {test_acc:.2%}") + f"  {seconds:.1f}s")
    return TrainResult(reason, epoch, steps, final_loss, reached, train_acc, test_acc,
                       _thin(history, HISTORY_POINTS), checks, failed, seconds, message,
                       resumed_from=None if ck is None else first_step,
                       checkpoint=None if checkpoint is None else str(checkpoint), checkpoint_step=saved_step)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`train`.  ``saved``: whether a checkpoint of the state after the last whole
    update was written to ``checkpoint``; ``epoch``/``steps``: completed epochs and updates."""

    def __init__(self, message: str, *, checkpoint=None, saved=False, epoch=0, steps=0):
        super().__init__(message)
        self.message, self.checkpoint, self.saved, self.epoch, self.steps = message, checkpoint, saved, epoch, steps

    def __str__(self) -> str:
        return self.message


class _SigintFlag:
    """While active (and in the main thread), the first SIGINT only sets ``hit``, so training stops
    between two updates; a second one raises KeyboardInterrupt as usual."""

    def __init__(self, active: bool):
        self.active = active and threading.current_thread() is threading.main_thread()
        self.hit = False
        self._old = None

    def _handler(self, signum, frame):
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True

    def __enter__(self):
        if self.active:
            try:
                self._old = signal.signal(signal.SIGINT, self._handler)
            except (ValueError, OSError):
                self.active = False
        return self

    def __exit__(self, *exc):
        if self.active:
            signal.signal(signal.SIGINT, self._old)
        return False


class _FiniteGuard:
    """Watches that the parameters stay finite, cheaply: one fused reduction (``torch._foreach_norm``
    with ord inf: a NaN or an infinity anywhere makes it non-finite, and a max cannot overflow) every
    ``every`` updates, or when asked.  A passing check snapshots the parameters and velocities; a
    failing one is resolved by :meth:`locate`, which restores the snapshot and replays the recorded
    updates one by one, checking each (the updates are deterministic), so the first bad update is
    found exactly and the state is left just after it."""

    def __init__(self, params: dict, velocity: dict, apply, every: int | None = None):
        self.names = list(params)
        self.P = list(params.values())
        self.state = self.P + [velocity[k] for k in params]
        self.snap = [t.clone() for t in self.state]
        self.apply = apply
        self.every = CHECK_FINITE_EVERY if every is None else every
        self.window = []   # (Xb, Tb, step, epoch) of the updates since the snapshot

    def record(self, Xb, Tb, step: int, epoch: int) -> bool:
        """Note an applied update; True when a check is due."""
        self.window.append((Xb, Tb, step, epoch))
        return len(self.window) >= self.every

    def finite(self) -> bool:
        return all(map(math.isfinite, torch.stack(torch._foreach_norm(self.P, math.inf)).tolist()))

    def check(self) -> bool:
        """True (and a new snapshot) if every parameter is finite; False leaves things for locate()."""
        if not self.window:
            return True
        if not self.finite():
            return False
        torch._foreach_copy_(self.snap, self.state)
        self.window.clear()
        return True

    def first_bad(self) -> str:
        for name, p in zip(self.names, self.P):
            ok = torch.isfinite(p)
            if not bool(ok.all()):
                idx = [int(i) for i in (~ok).nonzero()[0]]
                return f"{name}[{', '.join(map(str, idx))}] = {float(p[tuple(idx)])}"
        return "(none found)"

    def locate(self):
        """(step, epoch, 'W1[2, 0] = nan') of the first update since the snapshot that left a
        non-finite parameter; the parameters and velocities are left as that update left them."""
        window, self.window = self.window, []
        for t, s in zip(self.state, self.snap):
            t.copy_(s)
        for Xb, Tb, step, epoch in window:
            self.apply(Xb, Tb, None)
            if not self.finite():
                return step, epoch, self.first_bad()
        step, epoch = window[-1][2], window[-1][3]  # not reproduced by the replay (a nondeterministic backend)
        return step, epoch, "seen at the check after this step, not reproduced when replayed"


def check_checkpoint(net: MLP, data, cfg: TrainConfig, checkpoint, *, resume: bool = False,
                     run_info: dict | None = None):
    """What :func:`train` checks before it starts, for a caller that wants the errors first: for a
    new run, that ``checkpoint`` can be written and does not exist (returns None); for a resumed one,
    that it is a readable checkpoint of this network, config and data (returns it)."""
    _checkpoint_args(checkpoint, None, resume, run_info)
    if checkpoint is None:
        return None
    return _open_checkpoint(checkpoint, resume, net, cfg, _data_info(data, run_info))


def _checkpoint_args(checkpoint, checkpoint_every, resume, run_info):
    if checkpoint is not None and not isinstance(checkpoint, (str, Path)):
        raise bad("checkpoint", "a file path or None", repr(checkpoint))
    if checkpoint_every is not None and (not _is_int(checkpoint_every) or checkpoint_every < 1):
        raise bad("checkpoint_every", "None (at the end of every epoch) or an integer >= 1", repr(checkpoint_every))
    if not isinstance(resume, bool):
        raise bad("resume", "True or False", repr(resume))
    if checkpoint is None and (resume or checkpoint_every is not None):
        raise bad("checkpoint", "a path (resume and checkpoint_every need one)", "None")
    if run_info is not None:
        unknown = sorted(set(run_info) - {"split_seed", "test_fraction"}) if isinstance(run_info, dict) else None
        if unknown is None or unknown:
            raise bad("run_info", "None or a dict with split_seed and/or test_fraction",
                      repr(run_info) if unknown is None else ", ".join(map(repr, unknown)))
    return None if checkpoint_every is None else int(checkpoint_every)


def _data_info(data, run_info) -> dict:
    run_info = run_info or {}
    return {"name": str(data.name), "split_seed": run_info.get("split_seed"),
            "test_fraction": run_info.get("test_fraction"), "n_train": int(data.X_train.shape[0]),
            "n_features": int(data.n_features), "n_classes": int(data.n_classes),
            "fingerprint": checkpoint_io.fingerprint(data.X_train, data.y_train)}


def _open_checkpoint(path, resume: bool, net: MLP, cfg: TrainConfig, info: dict):
    """For a new run: check that PATH can be written and holds nothing yet (None).  For a resumed
    one: the checkpoint, checked against this run."""
    p = Path(path)
    if not resume:
        if p.exists() or p.is_symlink():
            raise bad(f"checkpoint ({path})", "a new file for a new run (resume the run it holds, or "
                      "remove it, or choose another path)", "an existing file")
        parent = p.parent if str(p.parent) else Path(".")
        if not parent.is_dir():
            raise bad(f"checkpoint ({path})", "a path in an existing directory", f"no directory {parent}")
        if not os.access(parent, os.W_OK):
            raise bad(f"checkpoint ({path})", "a path in a writable directory", f"read-only directory {parent}")
        return None
    ck = checkpoint_io.load(path)
    mine = dict(info)
    if info["name"] not in DATASETS and ck["data"].get("name") not in DATASETS:
        mine["name"] = None  # two users' files: compared by their fingerprint, wherever they lie
    checkpoint_io.check_matches(ck, path, config=cfg.to_dict(), network=net.spec(), data=mine)
    shapes = {k: (tuple(v.shape), v.dtype) for k, v in net.params.items()}
    theirs = {k: (tuple(v.shape), v.dtype) for k, v in ck["params"].items()}
    if shapes != theirs:
        raise bad(f"checkpoint ({path})", f"parameters {shapes} (this run's)", str(theirs))
    return ck


def _checkpoint_state(net, velocity, cfg, info, every, epoch, steps, b_done, epoch_rng_state, checks,
                      history, seconds, stopped, message) -> dict:
    return {
        "format": checkpoint_io.FORMAT, "version": checkpoint_io.VERSION,
        "config": cfg.to_dict(), "network": net.spec(), "data": dict(info),
        "dtype": str(net.dtype).removeprefix("torch."),
        "params": {k: p.detach().to("cpu", copy=True) for k, p in net.params.items()},
        "velocity": {k: velocity[k].detach().to("cpu", copy=True) for k in net.params},
        "epoch": int(epoch), "steps": int(steps), "batch_in_epoch": int(b_done),
        "epoch_rng_state": epoch_rng_state.clone(), "torch_rng_state": torch.get_rng_state(),
        "checks_run": int(checks),
        "history": {"epoch": torch.tensor([e for e, _ in history], dtype=torch.int64),
                    "loss": torch.tensor([l for _, l in history], dtype=torch.float64)},
        "loss": float(history[-1][1]), "seconds": float(seconds), "checkpoint_every": every,
        "stopped_reason": stopped, "message": message, "torch_version": str(torch.__version__),
    }


def _batches(X: Tensor, T: Tensor, n: int, batch, gen: torch.Generator, skip: int = 0):
    """The (X, T) batches of one epoch, less the first ``skip`` (already done before a resume; the
    generator draws the epoch's whole permutation or picks all the same, so what follows is exact)."""
    if batch == "full":
        if skip < 1:
            yield X, T
    elif batch == "online":   # n updates, each on one pattern drawn at random (with replacement)
        for i in torch.randint(n, (n,), generator=gen).tolist()[skip:]:
            yield X[i:i + 1], T[i:i + 1]
    else:
        perm = torch.randperm(n, generator=gen).to(X.device)
        for j in range(skip * batch, n, batch):
            idx = perm[j:j + batch]
            yield X[idx], T[idx]


def _thin(history: list, limit: int) -> list:
    """At most ``limit`` evenly spread points, always keeping the first and the last."""
    if len(history) <= limit:
        return list(history)
    last = len(history) - 1
    picks = sorted({round(i * last / (limit - 1)) for i in range(limit)})
    return [history[i] for i in picks]


def _json_float(x: float):
    return x if math.isfinite(x) else str(x)


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _positive(name: str, x) -> float:
    if not _is_real(x) or not 0 < x < math.inf:
        raise bad(name, "a finite number > 0", repr(x))
    return float(x)
