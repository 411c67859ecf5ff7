"""Declarative nodes against CVXPY layers and plain framework ops (issue 14's targets).

1. Huber pooling of B sets of N points in C dimensions (each channel an independent 1-D
   problem y = argmin Σᵢ huber(y − xᵢ; α)), forward + backward of a random linear
   functional: ``cvxlayers.declarative.torch.robust_pool`` against the same problem as a
   ``CvxpyLayer`` with SCS and with ``solver="QP"``. The layers solve B·C problems of N
   points; at full size that takes hours, so they are timed on the first ``--layer-problems``
   problems and the time is scaled linearly to B·C (said in the output). Accuracy: each
   contender's pooled values against a tight reference (the node's own answer is checked
   against Clarabel at 1e-10 on the same subset).
2. The projection nodes (simplex, L1/L2/L∞ balls and spheres), forward + backward, against a
   plain framework op on the same input: ``torch.sort`` along the last axis (what the simplex
   projection itself needs), forward + backward of ``sort(x).values``.

Usage:
    python benchmarks/declarative.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cvxpy as cp
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment  # noqa: E402

from cvxlayers.declarative import torch as dnodes  # noqa: E402
from cvxlayers.torch import CvxpyLayer  # noqa: E402

ALPHA = 1.0


def _median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _huber_layer(points, solver):
    x, y = cp.Parameter(points), cp.Variable()
    problem = cp.Problem(cp.Minimize(cp.sum(cp.huber(y - x, ALPHA))))
    return CvxpyLayer(problem, parameters=[x], variables=[y], solver=solver)


def _reference(values):
    """Clarabel at 1e-10 on each row of ``values`` (problems, N)."""
    out = []
    for row in values:
        y = cp.Variable()
        cp.Problem(cp.Minimize(cp.sum(cp.huber(y - row, ALPHA)))).solve(
            solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
        out.append(y.value)
    return np.asarray(out, dtype=float)


def pooling(batch, points, channels, layer_problems, repeats):
    rng = np.random.default_rng(0)
    data = rng.standard_normal((batch, points, channels))
    data[:, : points // 10] += 8.0  # 10 % outliers: the penalty's two regimes both occur
    weights = torch.as_tensor(rng.standard_normal((batch, channels)))
    x = torch.tensor(data, requires_grad=True)

    def node():
        x.grad = None
        (dnodes.robust_pool(x, "huber", alpha=ALPHA, dim=1) * weights).sum().backward()

    node()  # warm-up
    node_s = _median_time(node, repeats)
    # The first `layer_problems` channel problems, as the layers see them: rows of (B·C, N).
    rows = torch.as_tensor(data).transpose(1, 2).reshape(batch * channels, points)
    subset = rows[:layer_problems].clone().requires_grad_(True)
    sub_w = weights.reshape(-1)[:layer_problems]
    reference = _reference(subset.detach().numpy())
    pooled = dnodes.robust_pool(torch.as_tensor(data), "huber", alpha=ALPHA, dim=1)
    node_err = float(np.abs(pooled.reshape(-1)[:layer_problems].numpy() - reference).max())
    rows_out = {"node": {"seconds": node_s, "problems": batch * channels,
                         "max_err": node_err}}
    total = batch * channels
    for solver in ("SCS", "QP"):
        layer = _huber_layer(points, solver)

        def call():
            subset.grad = None
            y, = layer(subset)
            (y * sub_w).sum().backward()
            return y

        y = call()  # warm-up (compiles, plans)
        err = float(np.abs(y.detach().numpy() - reference).max())
        seconds = _median_time(call, max(1, repeats // 3))
        rows_out[solver] = {"seconds_subset": seconds, "problems": layer_problems,
                            "seconds": seconds * total / layer_problems, "max_err": err}
    print(f"Huber pooling, B={batch} sets of N={points} points in C={channels} dims "
          f"({total} channel problems), forward + backward; median of {repeats}")
    print(f"  node (robust_pool)      {node_s * 1e3:10.1f} ms   max|y - y_ref| {node_err:.1e}"
          f" (on the first {layer_problems} problems)")
    for solver in ("SCS", "QP"):
        r = rows_out[solver]
        print(f"  CvxpyLayer({solver:3})        {r['seconds'] * 1e3:10.1f} ms   "
              f"max|y - y_ref| {r['max_err']:.1e}   (timed on {layer_problems} problems: "
              f"{r['seconds_subset'] * 1e3:.1f} ms, scaled x{total / layer_problems:.0f}); "
              f"{r['seconds'] / node_s:.0f}x the node")
    return rows_out


def projections(batch, dim, repeats):
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.standard_normal((batch, dim)), requires_grad=True)
    w = torch.as_tensor(rng.standard_normal((batch, dim)))

    def call_of(fn):
        def call():
            x.grad = None
            (fn(x) * w).sum().backward()
        return call

    def sort(v):
        return torch.sort(v, dim=-1).values

    def run(fn):
        """Interleaved with the baseline (the machine is shared): per round one sort call,
        one node call; returns the node's median time and the median per-round ratio."""
        node, base = call_of(fn), call_of(sort)
        node(), base()
        times, ratios = [], []
        for _ in range(repeats):
            b = _median_time(base, 1)
            t = _median_time(node, 1)
            times.append(t)
            ratios.append(t / b)
        return float(np.median(times)), float(np.median(ratios))

    base, _ = run(sort)
    print(f"projections, x of shape ({batch}, {dim}), forward + backward; median of {repeats}"
          " rounds, each round one torch.sort call then one node call (ratio: median per round)")
    print(f"  torch.sort (baseline)   {base * 1e3:8.2f} ms")
    out = {"sort": base}
    for name in ("simplex", "l1_ball", "l1_sphere", "l2_ball", "l2_sphere",
                 "linf_ball", "linf_sphere"):
        fn = getattr(dnodes, f"project_{name}")
        seconds, ratio = run(fn)
        out[name] = {"seconds": seconds, "ratio_to_sort": ratio}
        print(f"  project_{name:12}   {seconds * 1e3:8.2f} ms   {ratio:5.2f}x sort")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--layer-problems", type=int, default=None)
    args = parser.parse_args()
    torch.set_default_dtype(torch.float64)
    env = environment()
    print(", ".join(f"{k}={v}" for k, v in env.items()))
    if args.quick:
        results = {"pooling": pooling(8, 200, 16, args.layer_problems or 8, 3),
                   "projections": projections(256, 64, 5)}
    else:
        results = {"pooling": pooling(256, 1000, 64, args.layer_problems or 32, 5),
                   "projections": projections(4096, 256, 20)}
    if args.json:
        args.json.write_text(json.dumps({"environment": env, **results}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
