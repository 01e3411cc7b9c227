"""Checks of user input, each raising :class:`~handgrad.errors.HandgradInputError` with the
argument's name, what was expected and what came."""
from __future__ import annotations

import torch

from .errors import bad

DTYPES = {
    "float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def resolve_dtype(dtype) -> torch.dtype:
    """Accept a torch floating dtype or its name ("float32", "float64", "bfloat16", "float16")."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.removeprefix("torch.")]
    raise bad("dtype", f"one of {', '.join(DTYPES)}", repr(dtype))


def resolve_device(device) -> torch.device:
    """Accept "cpu", "cuda", "cuda:N" or a torch.device; refuse CUDA where none is present."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise bad("device", "'cpu', 'cuda' or 'cuda:N'", repr(device)) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise bad("device", "an available device", f"{str(device)!r} (no CUDA GPU is present)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise bad("device", f"a CUDA index below {torch.cuda.device_count()}", repr(str(device)))
    elif dev.type != "cpu":
        raise bad("device", "'cpu' or 'cuda'", repr(str(device)))
    return dev


def check_sizes(sizes) -> list[int]:
    try:
        out = [int(s) for s in sizes]
        ok = all(int(s) == s and not isinstance(s, bool) for s in sizes)
    except (TypeError, ValueError):
        raise bad("sizes", "a list of positive integer widths like [4, 3, 2]", repr(sizes)) from None
    if not ok:
        raise bad("sizes", "integer widths", repr(sizes))
    if len(out) < 2:
        raise bad("sizes", "at least two entries (an input and an output width)", repr(list(sizes)))
    if any(s <= 0 for s in out):
        raise bad("sizes", "positive widths", repr(out))
    return out


def check_alpha(alpha) -> float:
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise bad("alpha", "a positive number", repr(alpha)) from None
    if not (a > 0 and a < float("inf")):
        raise bad("alpha", "a finite number > 0", repr(alpha))
    return a


def _where(t: torch.Tensor) -> str:
    return f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')} on {t.device}"


def check_finite(name: str, t: torch.Tensor) -> None:
    finite = torch.isfinite(t)
    if not bool(finite.all()):
        idx = tuple(int(i) for i in (~finite).nonzero()[0])
        raise bad(name, "finite values", f"{t[idx].item()} at index {idx}")


def check_X(X, n_inputs: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """X: (batch, n_inputs) or one pattern (n_inputs,); same dtype and device as the parameters."""
    if not isinstance(X, torch.Tensor):
        raise bad("X", "a torch.Tensor", type(X).__name__)
    if X.dim() not in (1, 2):
        raise bad("X", f"shape (batch, {n_inputs}) or ({n_inputs},)", f"shape {tuple(X.shape)}")
    if X.shape[-1] != n_inputs:
        raise bad("X", f"{n_inputs} features (shape (batch, {n_inputs}))", f"shape {tuple(X.shape)}")
    if X.dim() == 2 and X.shape[0] == 0:
        raise bad("X", "a non-empty batch", f"shape {tuple(X.shape)}")
    if X.dtype != dtype:
        raise bad("X", f"dtype {str(dtype).removeprefix('torch.')} (the parameters' dtype)", _where(X))
    if X.device != device:
        raise bad("X", f"device {device} (the parameters' device)", _where(X))
    check_finite("X", X)
    return X


def check_T(T, batch: int, n_outputs: int, dtype: torch.dtype, device: torch.device,
            one_d: bool) -> torch.Tensor:
    """T: desired outputs (batch, n_outputs) in the parameters' dtype, or integer class indices (batch,).

    Returns T as float rows (class indices become one-hot rows), shaped (batch, n_outputs).
    """
    if not isinstance(T, torch.Tensor):
        raise bad("T", "a torch.Tensor", type(T).__name__)
    if T.device != device:
        raise bad("T", f"device {device} (the parameters' device)", _where(T))
    if not T.dtype.is_floating_point:
        if T.dtype == torch.bool or T.is_complex():
            raise bad("T", "float desired outputs or integer class indices", _where(T))
        want = () if one_d else (batch,)
        if tuple(T.shape) != want:
            raise bad("T", f"class indices of shape {want}", f"shape {tuple(T.shape)}")
        if T.numel() and (int(T.min()) < 0 or int(T.max()) >= n_outputs):
            badv = int(T.min()) if int(T.min()) < 0 else int(T.max())
            raise bad("T", f"class labels in 0..{n_outputs - 1} ({n_outputs} outputs)", f"label {badv}")
        return torch.nn.functional.one_hot(T.reshape(batch).long(), n_outputs).to(dtype)
    want = (n_outputs,) if one_d else (batch, n_outputs)
    if tuple(T.shape) != want:
        raise bad("T", f"shape {want} (one row of {n_outputs} desired outputs per pattern)",
                  f"shape {tuple(T.shape)}")
    if T.dtype != dtype:
        raise bad("T", f"dtype {str(dtype).removeprefix('torch.')} (the parameters' dtype)", _where(T))
    check_finite("T", T)
    return T.reshape(batch, n_outputs)
