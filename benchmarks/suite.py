"""Benchmark suite: hand-written training steps vs autograd (eager and torch.compile), with the
matmul ceiling of the same GEMM shapes, per network size x batch x dtype x device.

    python -m benchmarks.suite --quick            # what `make bench` runs (< 2 min on 2 cores)
    python -m benchmarks.suite --full             # the whole sweep (`make bench-full`)
    python -m benchmarks.suite --device cuda --out bench-out

Writes ``bench.json`` and ``bench.md`` (and ``bench.png`` where matplotlib is installed) under
``--out`` (default ``$OUT`` or ``./bench-out``).  Times are medians over many repetitions after
warm-up; ratios are measured side by side in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

from handgrad.mlp import MLP
from handgrad.validate import resolve_device, resolve_dtype

from .measure import matmul_ceiling, peak_step_bytes, step_flops, time_step
from .methods import METHODS

# (label, sizes, batch, overhead-bound?)
CONFIGS = [
    ("2-2-1 (XOR)", [2, 2, 1], 4),
    ("25-6-5 (letters)", [25, 6, 5], 5),
    ("64-32-10", [64, 32, 10], 32),
    ("784-256-10", [784, 256, 10], 128),
    ("1024-1024-1024", [1024, 1024, 1024], 256),
    ("2048-2048-2048-2048-10", [2048, 2048, 2048, 2048, 10], 1024),
]
QUICK = CONFIGS[:4]
COMPILE_QUICK = 3  # in --quick, torch.compile rows (tens of seconds of compiling each) for the first 3


def environment(device, threads: int) -> dict:
    dev = torch.device(device)
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                name = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
        except (OSError, StopIteration):
            pass
    return {"torch": torch.__version__, "device": str(dev), "device_name": name,
            "threads": threads, "python": platform.python_version(),
            "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
            "cudnn_tf32": bool(torch.backends.cudnn.allow_tf32),
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def run_config(label, sizes, batch, dtype, device, methods, threads, min_run_time, log) -> list:
    rows = []
    g = torch.Generator().manual_seed(0)
    X = torch.randn(batch, sizes[0], generator=g).to(dtype=dtype, device=device)
    T = torch.rand(batch, sizes[-1], generator=g).to(dtype=dtype, device=device)
    ceiling = matmul_ceiling(sizes, batch, dtype, device, threads, min_run_time)
    flops = step_flops(sizes, batch)
    base = None
    for name in methods:
        net = MLP(sizes, activation="logistic", loss="sse", dtype=dtype, device=device, seed=0)
        t0 = time.perf_counter()
        try:
            step, extra = METHODS[name](net, X, T, 1e-3, 0.9)
            timing = time_step(step, threads, min_run_time)
            # torch's CPU profiler does not see the buffers that compiled (Inductor C++) kernels
            # allocate, so compiled rows get no CPU memory figure rather than a wrong one
            mem = None if ("compile" in name and device.type == "cpu") else peak_step_bytes(step, extra, device)
        except Exception as e:  # a method that cannot run here is recorded, not fatal
            log(f"  {label:18} {name:17} skipped: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
            rows.append({"config": label, "method": name, "error": f"{type(e).__name__}: {e}"[:300]})
            continue
        row = {"config": label, "sizes": sizes, "batch": batch, "dtype": str(dtype).removeprefix("torch."),
               "device": str(device), "method": name, **timing,
               "setup_s": time.perf_counter() - t0 - timing["median_s"] * timing["runs"] * timing["per_run"],
               "flops_per_step": flops, "gflops": flops / timing["median_s"] / 1e9,
               "ceiling_median_s": ceiling["median_s"], "ceiling_gflops": ceiling["gflops"],
               "fraction_of_ceiling": ceiling["median_s"] / timing["median_s"],
               "peak_step_bytes": mem}
        if name == "autograd":
            base = row
        rows.append(row)
        log(f"  {label:18} {name:17} {timing['median_s'] * 1e6:11.1f} us  (IQR {timing['iqr_s'] * 1e6:8.1f})"
            f"  {row['gflops']:8.2f} GFLOP/s  {row['fraction_of_ceiling'] * 100:6.1f}% of ceiling"
            + ("" if mem is None else f"  mem {mem / 2**20:9.3f} MiB"))
    for row in rows:
        if base and "error" not in row:
            row["speedup_vs_autograd"] = base["median_s"] / row["median_s"]
            row["memory_vs_autograd"] = (row["peak_step_bytes"] / base["peak_step_bytes"]
                                         if base["peak_step_bytes"] and row["peak_step_bytes"] is not None else None)
    return rows


def markdown(doc: dict) -> str:
    env = doc["environment"]
    out = [f"# handgrad benchmark ({doc['mode']})", "",
           f"torch {env['torch']}, {env['device_name']} ({env['device']}), {env['threads']} threads, "
           f"TF32 matmul {'on' if env['tf32_matmul'] else 'off'}, {env['time']}", "",
           "Median time per full training step (forward, backward, SGD-momentum update); speed-up is "
           "autograd-eager time / this time, measured side by side in this run; ceiling = the same "
           "GEMMs timed alone.", "",
           "| config | batch | dtype | method | median | IQR | speed-up vs autograd | GFLOP/s | % of matmul ceiling | step memory | memory vs autograd |",
           "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]

    def fmt_t(s):
        return f"{s * 1e6:.1f} µs" if s < 1e-3 else f"{s * 1e3:.2f} ms"

    for r in doc["rows"]:
        if "error" in r:
            out.append(f"| {r['config']} | | | {r['method']} | skipped: {r['error'][:60]} | | | | | | |")
            continue
        mv = r.get("memory_vs_autograd")
        out.append(f"| {r['config']} | {r['batch']} | {r['dtype']} | {r['method']} | {fmt_t(r['median_s'])} | "
                   f"{fmt_t(r['iqr_s'])} | {r.get('speedup_vs_autograd', float('nan')):.2f}x | {r['gflops']:.2f} | "
                   f"{100 * r['fraction_of_ceiling']:.1f}% | {_mib(r['peak_step_bytes'])} | "
                   f"{'-' if mv is None else f'{100 * mv:.0f}%'} |")
    return "\n".join(out) + "\n"


def _mib(b) -> str:
    if b is None:
        return "n/a"
    return f"{b / 2**20:.3f} MiB" if b >= 2**20 / 100 else f"{b / 1024:.2f} KiB"


def plot(doc: dict, path: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [r for r in doc["rows"] if "error" not in r]
    configs = list(dict.fromkeys(r["config"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, ax = plt.subplots(figsize=(10, 4.5))
    w = 0.8 / max(1, len(methods))
    for j, m in enumerate(methods):
        xs, ys = [], []
        for i, c in enumerate(configs):
            r = next((r for r in rows if r["config"] == c and r["method"] == m), None)
            if r and r.get("speedup_vs_autograd"):
                xs.append(i + j * w)
                ys.append(r["speedup_vs_autograd"])
        ax.bar(xs, ys, width=w, label=m)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks([i + 0.4 - w / 2 for i in range(len(configs))], configs, rotation=15)
    ax.set_ylabel("speed-up over autograd eager (x)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title(f"handgrad training step, {doc['environment']['device_name']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.suite", description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small sizes, short timings (default)")
    mode.add_argument("--full", action="store_true", help="every size, longer timings")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", action="append", help="float32 (default), float64, bfloat16; repeatable")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--configs", default=None, help="comma-separated config indices, e.g. 0,1")
    p.add_argument("--methods", default=None, help="comma-separated methods (default: all that apply)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    p.add_argument("--min-run-time", type=float, default=None, help="seconds of timing per row")
    p.add_argument("--out", default=os.environ.get("OUT") or "bench-out")
    args = p.parse_args(argv)

    try:
        device = resolve_device(args.device)
        dtypes = [resolve_dtype(d) for d in (args.dtype or ["float32"])]
    except ValueError as e:
        print(f"benchmarks: error: {e}", file=sys.stderr)
        return 2
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    full = args.full
    configs = CONFIGS if full else QUICK
    if args.configs:
        configs = [CONFIGS[int(i)] for i in args.configs.split(",")]
    min_run_time = args.min_run_time or (1.0 if full else 0.25)
    methods = args.methods.split(",") if args.methods else [
        m for m in METHODS if m != "hand-cuda-graph" or device.type == "cuda"]
    log = lambda s: print(s, file=sys.stderr, flush=True)
    env = environment(device, threads)
    log(f"handgrad benchmark: torch {env['torch']}, {env['device_name']}, {threads} threads")
    rows = []
    t0 = time.perf_counter()
    for dtype in dtypes:
        for i, (label, sizes, batch) in enumerate(configs):
            ms = methods
            if args.no_compile or (not full and not args.configs and i >= COMPILE_QUICK):
                ms = [m for m in ms if "compile" not in m]
            rows += run_config(label, sizes, batch, dtype, device, ms, threads, min_run_time, log)
    doc = {"mode": "full" if full else "quick", "environment": env, "rows": rows,
           "seconds": time.perf_counter() - t0}
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"bench-{device.type}")
    with open(stem + ".json", "w") as f:
        json.dump(doc, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(markdown(doc))
    made_png = plot(doc, stem + ".png")
    log(f"wrote {stem}.json, {stem}.md" + (f", {stem}.png" if made_png else "") +
        f" in {doc['seconds']:.0f} s")
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
