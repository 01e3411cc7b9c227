"""Per-sample gradients: the hand-written pass (``net.loss_and_grads(X, T, per_sample=True)``: one
forward, one backward, outer products by einsum) against its oracle ``torch.func.vmap(torch.func.grad)``
over the autograd twin, and against a Python loop of one autograd backward per pattern; the plain
batch gradient (hand) is shown as the floor.  Default: the digits network (64-64-10 tanh, softmax
cross-entropy, as ``handgrad train --data digits``) at batch 256, float32, on real digits patterns.

    python -m benchmarks.per_sample [--batch 256] [--dtype float32] [--out DIR]

Writes per-sample-cpu.json and per-sample-cpu.md (medians and IQRs of torch.utils.benchmark, all
methods measured side by side in one run; the thread count set explicitly).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from handgrad import oracle
from handgrad.data import load_dataset
from handgrad.per_sample import moments, oracle_per_sample_grads, per_sample_hand
from handgrad.train import build_net, default_config

from .measure import time_step
from .suite import environment


def setup(batch: int, dtype):
    data = load_dataset("digits", dtype=dtype)
    cfg = default_config("digits")
    net = build_net(cfg, data)
    X, T = data.X_train[:batch], data.y_train[:batch]
    return net, X, T


def methods(net, X, T):
    X2, T2, _ = net._inputs(X, T)

    def hand():  # the API: per-sample gradients, their mean and variance
        net.loss_and_grads(X, T, per_sample=True)

    def hand_grads():
        per_sample_hand(net, X2, T2)

    def vmap_oracle():
        oracle_per_sample_grads(net, X2, T2)

    def vmap_with_moments():
        moments(oracle_per_sample_grads(net, X2, T2), 1)

    def autograd_loop():
        for n in range(X.shape[0]):
            oracle.loss_and_grads(net, X[n:n + 1], T[n:n + 1])

    def batch_gradient():
        net.loss_and_grads(X, T)

    return {"hand per-sample + mean + var (loss_and_grads)": hand, "hand per-sample gradients only": hand_grads,
            "vmap(grad) oracle, gradients only": vmap_oracle, "vmap(grad) oracle + the same mean + var": vmap_with_moments,
            "autograd loop (one backward a pattern)": autograd_loop, "hand batch gradient (floor)": batch_gradient}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.per_sample")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--min-run-time", type=float, default=1.0)
    p.add_argument("--out", default=os.environ.get("OUT") or "bench-out")
    args = p.parse_args(argv)
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    dtype = getattr(torch, args.dtype)
    net, X, T = setup(args.batch, dtype)
    rows = []
    for name, fn in methods(net, X, T).items():
        t = time_step(fn, threads, args.min_run_time)
        rows.append({"method": name, **t})
        print(f"{name:50s} {t['median_s'] * 1e3:9.3f} ms  (IQR {t['iqr_s'] * 1e3:.3f} ms)", file=sys.stderr, flush=True)
    by = {r["method"]: r["median_s"] for r in rows}
    base = rows[0]["method"]
    for r in rows:
        r["time_over_hand"] = r["median_s"] / by[base]
    doc = {"environment": environment("cpu", threads), "dtype": args.dtype, "batch": args.batch,
           "network": f"{net.describe()} (handgrad train --data digits defaults)", "rows": rows}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "per-sample-cpu.json"), "w") as f:
        json.dump(doc, f, indent=1)
    md = [f"Per-sample gradients, {net.describe()}, batch {args.batch}, {threads} threads "
          f"(torch {torch.__version__}):", "",
          "| method | median | IQR | time / the first row's |", "|---|---:|---:|---:|"]
    for r in rows:
        md.append(f"| {r['method']} | {r['median_s'] * 1e3:.3f} ms | {r['iqr_s'] * 1e3:.3f} ms | "
                  f"{r['time_over_hand']:.2f}× |")
    text = "\n".join(md) + "\n"
    with open(os.path.join(args.out, "per-sample-cpu.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
