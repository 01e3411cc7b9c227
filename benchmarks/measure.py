"""Timing, memory, FLOP counting and the matmul ceiling for one configuration."""
from __future__ import annotations

import contextlib
import os
import sys

import torch
from torch.utils.benchmark import Timer


def time_step(step, threads: int, min_run_time: float) -> dict:
    """Median and interquartile range of one call, after warm-up, with ``torch.utils.benchmark``
    (which synchronises CUDA around its timings); ``threads`` set explicitly."""
    for _ in range(3):
        step()
    m = Timer("step()", globals={"step": step}, num_threads=threads).blocked_autorange(
        min_run_time=min_run_time)
    return {"median_s": m.median, "iqr_s": m.iqr, "runs": len(m.times),
            "per_run": m.number_per_run}


def step_flops(sizes, batch: int) -> int:
    """Matrix-multiply FLOPs of one training step: 2 per weight per sample forward, 4 backward
    (dW and dX), minus the first layer's skipped input gradient: 6 B sum(W) - 2 B W_1."""
    weights = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
    return 6 * batch * sum(weights) - 2 * batch * weights[0]


def gemm_shapes(sizes, batch: int):
    """The step's GEMMs as (m, k, n): forward a W, backward a^T delta, and delta W^T (not layer 1)."""
    shapes = []
    for k, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        shapes.append((batch, n_in, n_out))       # z = a W
        shapes.append((n_in, batch, n_out))       # dW = a^T delta
        if k > 1:
            shapes.append((batch, n_out, n_in))   # dA = delta W^T
    return shapes


def matmul_ceiling(sizes, batch: int, dtype, device, threads: int, min_run_time: float) -> dict:
    """Time the same GEMMs alone (preallocated operands and outputs): the ceiling a step can reach."""
    ops = []
    for m, k, n in gemm_shapes(sizes, batch):
        a = torch.randn(m, k, dtype=dtype, device=device)
        b = torch.randn(k, n, dtype=dtype, device=device)
        ops.append((a, b, torch.empty(m, n, dtype=dtype, device=device)))

    def gemms():
        for a, b, o in ops:
            torch.mm(a, b, out=o)

    t = time_step(gemms, threads, min_run_time)
    flops = step_flops(sizes, batch)
    t["gflops"] = flops / t["median_s"] / 1e9
    return t


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the profiler's C++ start/stop lines (written straight to file descriptor 2)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_step_bytes(step, extra_bytes, device) -> int:
    """Memory a step needs beyond the parameters, inputs and momentum state: the transient peak
    during one (warm) step plus the method's persistent workspaces (``extra_bytes()``).

    CUDA: ``torch.cuda.max_memory_allocated`` above the level before the step.  CPU: torch's own
    profiler, replaying each allocation (an op's self memory) and free in time order."""
    step()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before + extra_bytes()
    from torch.profiler import ProfilerActivity, profile
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = []
    for e in prof.events():
        b = e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage
        if b:
            events.append((e.time_range.start, b))
    level = peak = 0
    for _, b in sorted(events):
        level += b
        peak = max(peak, level)
    return peak + extra_bytes()
