"""Training checkpoints: one file, written atomically, that resumes a run bit for bit.

A checkpoint is a plain dict saved with :func:`torch.save` and read back with
``torch.load(path, weights_only=True)`` (only dicts, lists, tensors, numbers, strings, None):

    format, version        "handgrad-checkpoint", 1
    config                 TrainConfig.to_dict() of the run
    network                MLP.spec() (sizes, activation, alpha, output_activation, loss, bias, dtype, device)
    data                   {name, split_seed, test_fraction, n_train, n_features, n_classes, fingerprint}
                           (fingerprint: sha256 of the training split's features and labels; the
                           split settings are None where the caller did not say)
    dtype                  the parameters' dtype, e.g. "float32"
    params, velocity       {name: tensor} keyed like ``net.params`` (CPU copies); velocity is the
                           momentum state v of v <- m v - eta g, p <- p + v
    epoch                  completed epochs
    steps                  updates applied
    batch_in_epoch         batches of the epoch in progress (epoch + 1) already applied
    epoch_rng_state        the shuffle/pick generator's state at the start of that epoch: resuming
                           sets it, draws the epoch's permutation (or online picks) again and skips
                           the batches already done, so it continues exactly where the run was
    torch_rng_state        torch's global CPU generator state when saved (restored on resume)
    checks_run             gradient checks (verify_every) run so far
    history                {"epoch": int64 tensor, "loss": float64 tensor}: the whole training set's
                           loss after each completed epoch, from epoch 0 (not thinned)
    loss                   the last entry of history
    seconds                training time so far (all sessions)
    checkpoint_every       the cadence it was written with (None: at the end of every epoch)
    stopped_reason         None while the run is going on, else the TrainResult's reason
    message                the run's stop message ("" while going on)
    torch_version          torch.__version__ of the writer (informational)

:func:`save` writes to a temporary file in the same directory, flushes and fsyncs it, renames it
over the path (``os.replace``, atomic on POSIX and Windows) and fsyncs the directory, so a crash
at any moment leaves either the previous checkpoint or the new one, never a torn file.
:func:`load` checks the structure and reports a missing, truncated, corrupt or foreign file as a
:class:`~handgrad.errors.HandgradInputError` naming the file.
"""
from __future__ import annotations

import hashlib
import math
import numbers
import os
import tempfile
import zipfile
import zlib
from pathlib import Path

import torch

from .errors import bad

FORMAT = "handgrad-checkpoint"
VERSION = 1
# TrainConfig fields that only decide when to stop or what to check, never the trajectory: a
# resumed run may change them.  Every other field must be the checkpoint's.
FREE_FIELDS = ("epochs", "target_loss", "verify_every")


def _where(path) -> str:
    return f"checkpoint ({path})"


def save(path, state: dict) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, ``os.replace``, fsync of the
    directory).  On any error the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def fingerprint(X: torch.Tensor, y: torch.Tensor) -> str:
    """sha256 of the training features and labels (their dtype, shape and bytes)."""
    h = hashlib.sha256()
    for t in (X, y):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _tensor_dict(ck: dict, key: str, path) -> dict:
    d = ck[key]
    if not isinstance(d, dict) or not d or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                   for k, v in d.items()):
        raise bad(_where(path), f"'{key}' as a dict of named tensors", _kind(d))
    return d


def _kind(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a tensor {tuple(x.shape)} {x.dtype}"
    return f"a {type(x).__name__}"


def _int(ck, key, path, minimum=0) -> int:
    v = ck[key]
    if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < minimum:
        raise bad(_where(path), f"'{key}' as an integer >= {minimum}", repr(v))
    return int(v)


REQUIRED = ("config", "network", "data", "dtype", "params", "velocity", "epoch", "steps",
            "batch_in_epoch", "epoch_rng_state", "torch_rng_state", "checks_run", "history", "loss",
            "seconds", "checkpoint_every", "stopped_reason", "message")


def load(path) -> dict:
    """Read and check a checkpoint file; every problem is a HandgradInputError naming the file."""
    p = Path(path)
    if not p.exists():
        raise bad(_where(path), "an existing checkpoint file to resume from", "no such file")
    if not p.is_file():
        raise bad(_where(path), "a checkpoint file", "a directory or other non-file")
    # torch.load does not check the archive's CRCs: bytes changed inside a tensor would load as
    # other weights.  zipfile checks every member's CRC-32 first.
    try:
        with zipfile.ZipFile(p) as z:
            damaged = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, zlib.error) as e:
        damaged = None if isinstance(e, zipfile.BadZipFile) else f"({type(e).__name__})"  # BadZipFile: torch says why
    if damaged is not None:
        raise bad(_where(path), "a handgrad checkpoint written by torch.save",
                  f"a corrupt file (CRC mismatch in {damaged})")
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds (RuntimeError, UnpicklingError, EOFError...)
        lines = [s.strip() for s in str(e).strip().splitlines() if s.strip()] or [type(e).__name__]
        reason = next((s for s in lines if "Unpickler error" in s), lines[0])
        reason = reason.split(". ")[0][:200]
        raise bad(_where(path), "a handgrad checkpoint written by torch.save",
                  f"an unreadable, truncated or corrupt file ({type(e).__name__}: {reason})") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        what = _kind(ck) if not isinstance(ck, dict) else f"a dict with format {ck.get('format')!r}"
        raise bad(_where(path), f"a handgrad checkpoint (a dict with format {FORMAT!r})", what)
    if ck.get("version") != VERSION:
        raise bad(_where(path), f"checkpoint format version {VERSION}", repr(ck.get("version")))
    missing = [k for k in REQUIRED if k not in ck]
    if missing:
        raise bad(_where(path), "every checkpoint entry", "no " + ", ".join(map(repr, missing)))
    for key in ("config", "network", "data"):
        if not isinstance(ck[key], dict):
            raise bad(_where(path), f"'{key}' as a dict", _kind(ck[key]))
    params, velocity = _tensor_dict(ck, "params", path), _tensor_dict(ck, "velocity", path)
    if list(params) != list(velocity) or any(params[k].shape != velocity[k].shape
                                             or params[k].dtype != velocity[k].dtype for k in params):
        raise bad(_where(path), "a velocity tensor shaped like each parameter",
                  f"params {[(k, tuple(v.shape)) for k, v in params.items()]}, "
                  f"velocity {[(k, tuple(v.shape)) for k, v in velocity.items()]}")
    for key, d in (("params", params), ("velocity", velocity)):
        for k, t in d.items():
            if not t.dtype.is_floating_point:
                raise bad(_where(path), f"floating-point '{key}'", f"{k} {t.dtype}")
            finite = torch.isfinite(t)
            if not bool(finite.all()):
                i = [int(j) for j in (~finite).nonzero()[0]]
                raise bad(_where(path), f"finite '{key}'", f"{k}{i} = {float(t[tuple(i)])}")
    for key in ("epoch", "steps", "batch_in_epoch", "checks_run"):
        _int(ck, key, path)
    for key in ("epoch_rng_state", "torch_rng_state"):
        t = ck[key]
        if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8 or t.dim() != 1:
            raise bad(_where(path), f"'{key}' as a 1-D uint8 generator state", _kind(t))
        size = torch.Generator().get_state().numel()  # a CPU generator's state (5056 bytes in torch 2.x)
        if t.numel() != size:
            raise bad(_where(path), f"'{key}' as a CPU generator state of {size} bytes", f"{t.numel()} bytes")
    hist = ck["history"]
    if not isinstance(hist, dict) or not isinstance(hist.get("epoch"), torch.Tensor) \
            or not isinstance(hist.get("loss"), torch.Tensor) or hist["epoch"].dim() != 1 \
            or hist["epoch"].shape != hist["loss"].shape or len(hist["epoch"]) == 0:
        raise bad(_where(path), "'history' as {'epoch': tensor, 'loss': tensor} of one length >= 1",
                  _kind(hist))
    if int(hist["epoch"][-1]) != ck["epoch"]:
        raise bad(_where(path), f"history up to epoch {ck['epoch']} (the checkpoint's epoch)",
                  f"history up to epoch {int(hist['epoch'][-1])}")
    for key in ("loss", "seconds"):
        if not isinstance(ck[key], numbers.Real) or isinstance(ck[key], bool):
            raise bad(_where(path), f"'{key}' as a number", repr(ck[key]))
    if not math.isfinite(ck["loss"]):
        raise bad(_where(path), "a finite training loss", repr(ck["loss"]))
    every = ck["checkpoint_every"]
    if every is not None and (not isinstance(every, numbers.Integral) or isinstance(every, bool) or every < 1):
        raise bad(_where(path), "'checkpoint_every' as None or an integer >= 1", repr(every))
    return ck


def _show(v) -> str:
    if isinstance(v, float):
        return f"{v:g}" if float(f"{v:g}") == v else repr(v)
    return str(v)


def check_matches(ck: dict, path, *, config: dict, network: dict, data: dict) -> None:
    """Raise a HandgradInputError naming the first setting in which the checkpoint ``ck`` differs
    from this run's: the network spec, then the config (except FREE_FIELDS), then the data."""
    for key, mine in network.items():
        theirs = ck["network"].get(key)
        if theirs != mine:
            raise bad(_where(path), f"{key} {_show(mine)} (this run's)", _show(theirs))
    for key, mine in config.items():
        if key in FREE_FIELDS:
            continue
        theirs = ck["config"].get(key, "(absent)")
        if theirs != mine:
            raise bad(_where(path), f"{key} {_show(mine)} (this run's)", _show(theirs))
    for key, mine in data.items():
        theirs = ck["data"].get(key, "(absent)")
        if mine is None or theirs is None:  # the caller did not say (a library run): not compared
            continue
        if key == "fingerprint" and theirs != mine:
            raise bad(_where(path), f"training data with fingerprint {mine[:16]}... (this run's)",
                      f"{str(theirs)[:16]}... (other data, another split, or a changed file)")
        if theirs != mine:
            raise bad(_where(path), f"data {key} {_show(mine)} (this run's)", _show(theirs))
