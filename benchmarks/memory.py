"""Does memory grow with the number of calls? Each adapter, forward + backward, N calls.

The layer is least squares, x*(A, b) = argmin_x ||A x - b||², with A (B, m, n) and b (B, m)
parameters (m=100, n=50, B=16 by default), solved by SCS at its defaults. One step is a
batched forward and the backward of sum(x*), through each adapter's public API:

- ``torch``: ``cvxlayers.torch.CvxpyLayer`` and ``.backward()``;
- ``torch-compile``: the same under ``torch.compile(fullgraph=True, backend="aot_eager")``;
- ``tf``: ``cvxlayers.tensorflow.CvxpyLayer`` (Keras 3, eager) under ``tf.GradientTape``;
- ``jax``: ``cvxlayers.jax.CvxpyLayer`` with ``jax.grad`` called eagerly (float64).

Each (adapter, N) runs in a fresh subprocess, so that no run inherits another's heap. The
child takes a few warm-up steps (compilation, first allocations, thread pool), reads its
current resident set size (RSS, from /proc/self/statm, after gc.collect()), takes N steps,
keeping nothing, and reads it again. Reported: RSS after warm-up, the growth over the N
steps, the growth per step, and the peak RSS (ru_maxrss). A layer that keeps nothing per
call grows by about the same small amount for every N; one that keeps state per call
grows in proportion to N (until whatever cap it has).

Usage:
    python benchmarks/memory.py [--quick] [--calls 20,80] [--adapters torch,tf,jax]
        [--batch 16] [--m 100] [--n 50] [--out results/memory.txt]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import gc, json, os, resource, sys, warnings
warnings.filterwarnings("ignore")
adapter, calls, batch, m, n, warmup = sys.argv[1], *map(int, sys.argv[2:7])
import cvxpy as cp
import numpy as np

def rss_mib():
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

A, b, x = cp.Parameter((m, n)), cp.Parameter(m), cp.Variable(n)
problem = cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b)))
rng = np.random.default_rng(0)
A_value, b_value = rng.standard_normal((batch, m, n)), rng.standard_normal((batch, m))

if adapter == "torch":
    import torch
    from cvxlayers.torch import CvxpyLayer
    layer = CvxpyLayer(problem, [A, b], [x])
    A_t = torch.tensor(A_value, requires_grad=True)
    b_t = torch.tensor(b_value, requires_grad=True)
    def step():
        out, = layer(A_t, b_t)
        out.sum().backward()
        A_t.grad = b_t.grad = None
elif adapter == "torch-compile":
    import torch
    from cvxlayers.torch import CvxpyLayer
    layer = CvxpyLayer(problem, [A, b], [x])
    run = torch.compile(lambda A_, b_: layer(A_, b_)[0], fullgraph=True, backend="aot_eager")
    A_t = torch.tensor(A_value, requires_grad=True)
    b_t = torch.tensor(b_value, requires_grad=True)
    def step():
        run(A_t, b_t).sum().backward()
        A_t.grad = b_t.grad = None
elif adapter == "tf":
    import tensorflow as tf
    from cvxlayers.tensorflow import CvxpyLayer
    layer = CvxpyLayer(problem, [A, b], [x])
    A_t, b_t = tf.constant(A_value), tf.constant(b_value)
    def step():
        with tf.GradientTape() as tape:
            tape.watch([A_t, b_t])
            out, = layer(A_t, b_t)
            loss = tf.reduce_sum(out)
        tape.gradient(loss, [A_t, b_t])
elif adapter == "jax":
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from cvxlayers.jax import CvxpyLayer
    layer = CvxpyLayer(problem, [A, b], [x])
    A_t, b_t = jnp.asarray(A_value), jnp.asarray(b_value)
    grad = jax.grad(lambda A_, b_: layer(A_, b_)[0].sum(), argnums=(0, 1))
    def step():
        jax.block_until_ready(grad(A_t, b_t))
else:
    raise SystemExit(f"unknown adapter {adapter!r}")

for _ in range(warmup):
    step()
start = rss_mib()
for _ in range(calls):
    step()
end = rss_mib()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"adapter": adapter, "calls": calls, "rss_after_warmup_mib": start,
                  "rss_end_mib": end, "growth_mib": end - start,
                  "growth_per_call_mib": (end - start) / calls, "peak_rss_mib": peak}))
"""


def run_child(adapter: str, calls: int, args) -> dict:
    """One (adapter, N) measurement in a fresh interpreter."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="3")
    begin = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, adapter, str(calls), str(args.batch), str(args.m),
         str(args.n), str(args.warmup)],
        env=env, capture_output=True, text=True, timeout=args.timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{adapter} N={calls} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - begin
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 5, 20 instead of 20, 80")
    parser.add_argument("--calls", default=None, help="comma-separated N (default 20,80)")
    parser.add_argument("--adapters", default="torch,tf,jax")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--m", type=int, default=100)
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600, help="seconds per subprocess")
    parser.add_argument("--out", default=None, help="also write the table here")
    args = parser.parse_args()
    calls = [int(c) for c in (args.calls or ("5,20" if args.quick else "20,80")).split(",")]

    lines = [f"memory after N calls with backward: least squares m={args.m}, n={args.n}, "
             f"B={args.batch}, SCS defaults, {args.warmup} warm-up steps; RSS in MiB "
             f"(/proc/self/statm after gc.collect), python {sys.version.split()[0]}",
             f"{'adapter':8} {'N':>4} {'RSS warm':>9} {'RSS end':>9} {'growth':>8} "
             f"{'per call':>9} {'peak':>8} {'wall s':>7}"]
    print("\n".join(lines), flush=True)
    verdicts = []
    for adapter in args.adapters.split(","):
        rows = []
        for n_calls in calls:
            r = run_child(adapter, n_calls, args)
            rows.append(r)
            line = (f"{adapter:8} {n_calls:>4} {r['rss_after_warmup_mib']:>9.1f} "
                    f"{r['rss_end_mib']:>9.1f} {r['growth_mib']:>+8.1f} "
                    f"{r['growth_per_call_mib']:>+9.3f} {r['peak_rss_mib']:>8.1f} "
                    f"{r['wall_s']:>7.1f}")
            lines.append(line)
            print(line, flush=True)
        if len(rows) > 1:
            extra = rows[-1]["growth_mib"] - rows[0]["growth_mib"]
            per = extra / (rows[-1]["calls"] - rows[0]["calls"])
            verdicts.append(f"{adapter}: growth(N={rows[-1]['calls']}) - growth(N={rows[0]['calls']}) "
                            f"= {extra:+.1f} MiB ({per:+.2f} MiB per extra call)")
    lines += [""] + verdicts
    print("\n" + "\n".join(verdicts))
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
