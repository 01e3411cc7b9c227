"""Ensemble throughput: N XOR networks (2-2-1, logistic, SSE, full batch of 4 patterns) trained in one
batched hand-written step, against a Python loop of autograd steps and against ``vmap`` of the
autograd twin.

    python -m benchmarks.ensemble [--sizes 1,100,1000,10000] [--out DIR]

Throughput is network-updates per second (N / time of one step of all N); a 1000-sweep training run
of N networks takes 1000 N / throughput seconds.  Writes ensemble-cpu.json and ensemble-cpu.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from torch.utils.benchmark import Timer

from handgrad import oracle
from handgrad.ensemble import Ensemble, EnsembleSGD

from .suite import environment

X = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=torch.float32)
T = torch.tensor([[0], [1], [1], [0]], dtype=torch.float32)


def _time(fn, threads, min_run_time):
    fn()
    m = Timer("fn()", globals={"fn": fn}, num_threads=threads).blocked_autorange(min_run_time=min_run_time)
    return m.median, m.iqr


def hand(N, threads, mrt):
    opt = EnsembleSGD(Ensemble(N, [2, 2, 1], seed=0, init="uniform", init_range=0.3), 0.5, 0.9)
    return _time(lambda: opt.step(X, T), threads, mrt)


def vmap_twin(N, threads, mrt):
    from torch.func import grad, vmap
    ens = Ensemble(N, [2, 2, 1], seed=0, init="uniform", init_range=0.3)
    params = dict(ens.params)
    vel = {k: torch.zeros_like(p) for k, p in params.items()}
    g = vmap(grad(lambda p, x, t: oracle.forward_pass(ens.spec_net, p, x, t)[0]), in_dims=(0, None, None))

    def step():
        grads = g(params, X, T)
        with torch.no_grad():
            for k in params:
                vel[k].mul_(0.9).add_(grads[k], alpha=-0.5)
                params[k].add_(vel[k])

    return _time(step, threads, mrt)


def autograd_loop(N, threads, mrt):
    ens = Ensemble(N, [2, 2, 1], seed=0, init="uniform", init_range=0.3)
    nets = []
    for i in range(N):
        leaves = {k: p[i].clone().requires_grad_(True) for k, p in ens.params.items()}
        nets.append((leaves, torch.optim.SGD(list(leaves.values()), lr=0.5, momentum=0.9)))

    def loop():
        for leaves, opt in nets:
            oracle.forward_pass(ens.spec_net, leaves, X, T)[0].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    if N >= 1000:  # a loop of thousands of steps is long enough to time directly, once or twice
        loop()
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            loop()
            times.append(time.perf_counter() - t0)
        return sorted(times)[0], abs(times[1] - times[0])
    return _time(loop, threads, mrt)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ensemble")
    p.add_argument("--sizes", default="1,100,1000,10000")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--min-run-time", type=float, default=0.5)
    p.add_argument("--out", default=os.environ.get("OUT") or "bench-out")
    args = p.parse_args(argv)
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    rows = []
    for N in [int(s) for s in args.sizes.split(",")]:
        row = {"N": N}
        for name, fn in (("hand", hand), ("vmap", vmap_twin), ("autograd_loop", autograd_loop)):
            med, iqr = fn(N, threads, args.min_run_time)
            row[f"{name}_step_s"], row[f"{name}_iqr_s"] = med, iqr
            row[f"{name}_nets_per_s"] = N / med
        row["hand_vs_loop"] = row["hand_nets_per_s"] / row["autograd_loop_nets_per_s"]
        row["hand_vs_vmap"] = row["hand_nets_per_s"] / row["vmap_nets_per_s"]
        rows.append(row)
        print(f"N={N:6d}  hand {row['hand_nets_per_s']:12.0f} net-updates/s  vmap {row['vmap_nets_per_s']:12.0f}"
              f"  autograd loop {row['autograd_loop_nets_per_s']:10.0f}  hand/loop {row['hand_vs_loop']:8.1f}x"
              f"  hand/vmap {row['hand_vs_vmap']:5.2f}x", file=sys.stderr, flush=True)
    doc = {"environment": environment("cpu", threads), "network": "2-2-1 logistic SSE, XOR, full batch",
           "rows": rows}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "ensemble-cpu.json"), "w") as f:
        json.dump(doc, f, indent=1)
    md = ["| N | hand (one batched step) | vmap of the autograd twin | loop of autograd steps | hand / loop | hand / vmap |",
          "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        md.append(f"| {r['N']} | {r['hand_nets_per_s']:,.0f}/s ({r['hand_step_s'] * 1e6:.0f} µs/step) | "
                  f"{r['vmap_nets_per_s']:,.0f}/s | {r['autograd_loop_nets_per_s']:,.0f}/s | "
                  f"**{r['hand_vs_loop']:.0f}×** | {r['hand_vs_vmap']:.2f}× |")
    text = "\n".join(md) + "\n"
    with open(os.path.join(args.out, "ensemble-cpu.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
