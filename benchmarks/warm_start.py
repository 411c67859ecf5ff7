"""Warm starts in training loops: SCS iterations per solve and wall time, cold against warm.

Two loops whose parameters move a little from one call to the next, each run cold
(``warm_start=False``) and warm (``warm_start=True``) from the same initial state on the
same data, in lockstep (one step of each in turn, the order rotated every step, so that a
shared machine's load hits both alike), ``--repeats`` times:

- ``socp``: full-batch SGD (100 steps) of the constraint matrix A of a robust-regression
  layer at B = 64, n = 30, m = 40 (the SOCP of ``batched.py``)::

      x*(A, bᵢ) = argmin ‖A x − bᵢ‖² + 0.1‖x‖₁  s.t.  ‖x‖₂ ≤ 1,
      loss(A) = mean_i ‖x*(A, bᵢ) − x̂ᵢ‖²   (x̂ᵢ from a hidden A₀; A starts at A₀ + noise)

  Each element i of step k starts from its own solution of step k − 1. (With fresh
  mini-batches every step the previous solution would be another problem's: warm starts
  pay where the same problems come back, as in full-batch training, fixed-point and
  bilevel loops, and rollouts.)
- ``control``: the control example's policy (``examples/control.py``: the convex ADP policy
  u = argmin ‖M u + d‖² s.t. ‖u‖∞ ≤ 1 at every time step of 64 rollouts of 30 steps), a few
  Adam steps on the closed-loop cost, with SCS and with the native QP backend. Each time
  step's solve starts from the same rollout's previous time step's input.

Reported per loop: the solver's iterations per solve (mean over elements and calls, from
``layer.core.last_stats``; for QP the Newton steps per element), the share of elements that
started warm (the first call, and a batch whose warm solve fell back to cold, start cold), the wall and CPU time of the layer calls (forward solves, backward not
included: the backward does no solve in PyTorch) and of the whole loop (forward +
backward + optimizer) and its CPU time (all threads of the process; steadier than wall
time on a shared machine), totals per loop, medians over repeats, the ratios cold/warm,
and the largest difference between the cold and warm loss curves (relative to the loss). cvxpylayers 1.2
is timed cold in the same run where importable: it cannot warm-start SCS (``warm_start=True``
raises for every solver but Moreau), so its cold loop is what its users run.

Usage:
    python benchmarks/warm_start.py [--quick] [--repeats N] [--json PATH]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _common import dump_json, environment, fmt_time, load_peer, print_environment  # noqa: E402

EXAMPLES = os.path.join(HERE, "..", "examples")


class _SCSClock:
    """Seconds spent inside SCS (its setup ``scs.SCS(...)``, ``update`` and ``solve``),
    summed over the threads that call it: the solver's own share of a layer call."""

    def __init__(self):
        import threading

        import scs

        self.seconds, self._lock = 0.0, threading.Lock()
        for name in ("__init__", "solve", "update"):
            setattr(scs.SCS, name, self._timed(getattr(scs.SCS, name)))

    def _timed(self, method):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                with self._lock:
                    self.seconds += time.perf_counter() - start
        return timed


_CLOCK = None


def _scs_seconds() -> float:
    global _CLOCK
    if _CLOCK is None:
        _CLOCK = _SCSClock()
    return _CLOCK.seconds


def _import_control():
    """examples/control.py, which imports the examples' own ``_common`` (not this folder's)."""
    if "control" in sys.modules:
        return sys.modules["control"]
    ours = sys.modules.pop("_common")
    sys.path.insert(0, EXAMPLES)
    try:
        import control
    finally:
        sys.path.remove(EXAMPLES)
        sys.modules["_common"] = ours
    return control


def socp_layer(layer_cls, n=30, m=40):
    import cvxpy as cp

    x = cp.Variable(n)
    A, b = cp.Parameter((m, n)), cp.Parameter(m)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b) + 0.1 * cp.norm(x, 1)),
                         [cp.norm(x, 2) <= 1.0])
    return layer_cls(problem, parameters=[A, b], variables=[x])


def socp_loop(layer, steps, batch, warm, seed=0, n=30, m=40, lr=0.05):
    """Full-batch SGD on A, one step per ``next``: yields (loss, iterations per solve,
    layer seconds, step seconds, step CPU seconds)."""
    import torch

    rng = np.random.default_rng(seed)
    A0 = rng.standard_normal((m, n)) / np.sqrt(n)
    b = torch.tensor(rng.standard_normal((batch, m)))
    with torch.no_grad():
        target, = socp_layer_call(layer, torch.tensor(A0), b, None)
    A = torch.tensor(A0 + 0.3 * rng.standard_normal((m, n)) / np.sqrt(n), requires_grad=True)
    optimizer = torch.optim.SGD([A], lr=lr)
    for _ in range(steps):
        start, cpu, scs0 = time.perf_counter(), time.process_time(), _scs_seconds()
        x, = socp_layer_call(layer, A, b, warm)
        layer_time, layer_cpu = time.perf_counter() - start, time.process_time() - cpu
        scs_time = _scs_seconds() - scs0
        iterations = _iterations(layer)
        loss = ((x - target) ** 2).sum(dim=1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        yield (loss.item(), iterations, layer_time, time.perf_counter() - start,
               time.process_time() - cpu, layer_cpu, _warm_fraction(layer), scs_time)


def socp_layer_call(layer, A, b, warm):
    if warm is None:  # the peer: no keyword
        return layer(A, b)
    return layer(A, b, warm_start=warm)


def _iterations(layer):
    core = getattr(layer, "core", None)
    if core is None or core.last_stats is None:
        return float("nan")
    return float(np.mean(core.last_stats.iterations))


def _warm_fraction(layer):
    """The fraction of the last call's elements that started warm (NaN for the peer)."""
    core = getattr(layer, "core", None)
    if core is None or core.last_stats is None:
        return float("nan")
    return float(np.mean(core.last_stats.warm))


def control_loop(solver, steps, batch, warm, seed=0):
    """Adam steps of the control example's policy, one rollout time step per ``next``
    (the loss is reported at a rollout's last time step, NaN before): yields as
    socp_loop."""
    import torch

    control = _import_control()
    rng = np.random.default_rng(seed)
    A, B = control.make_system(rng)
    policy = control.ADPPolicy(A, B, control.lqr_value_matrix(A, B))
    if solver != "QP":
        policy.layer = _scs_policy_layer("lsqr" if solver == "SCS-lsqr" else "dense")
    args = {"tol": 1e-7} if solver == "QP" else None  # the example's QP tolerance
    optimizer = torch.optim.Adam(policy.parameters(), lr=3.0)
    At, Bt = torch.as_tensor(A), torch.as_tensor(B)
    n_in = B.shape[1]
    for _ in range(steps):
        x0, w = control.draw_scenarios(batch, control.HORIZON, rng)
        x, cost = x0, 0.0
        for t, w_t in enumerate(w):
            start, cpu = time.perf_counter(), time.process_time()
            M = torch.cat([torch.eye(n_in, dtype=x.dtype), policy.L @ policy.B])
            d = torch.cat([torch.zeros(len(x), n_in, dtype=x.dtype),
                           x @ (policy.L @ policy.A).T], dim=1)
            t0, c0, scs0 = time.perf_counter(), time.process_time(), _scs_seconds()
            u, = policy.layer(M, d, solver_args=args, warm_start=warm)
            layer_time, layer_cpu = time.perf_counter() - t0, time.process_time() - c0
            scs_time = _scs_seconds() - scs0
            iterations = _iterations(policy.layer)
            cost = cost + (x ** 2).sum(dim=1) + (u ** 2).sum(dim=1)
            x = x @ At.T + u @ Bt.T + w_t
            loss = float("nan")
            if t == len(w) - 1:
                total = (cost / len(w)).mean()
                optimizer.zero_grad()
                total.backward()
                optimizer.step()
                loss = total.item()
            yield (loss, iterations, layer_time, time.perf_counter() - start,
                   time.process_time() - cpu, layer_cpu, _warm_fraction(policy.layer),
                   scs_time)


def _scs_policy_layer(mode="dense"):
    """The policy as an SCS layer. The embedding is 20 x 20 (5 variables, 14 cone rows), so
    mode "dense" (one small LU) is the right derivative: LSQR's operator costs 2-3x more per
    element to set up than SCS's warm solve itself; "SCS-lsqr" runs the default mode."""
    import cvxpy as cp

    from cvxlayers.torch import CvxpyLayer

    u = cp.Variable(3)
    M, d = cp.Parameter((5, 3)), cp.Parameter(5)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(M @ u + d)), [cp.norm(u, "inf") <= 1])
    return CvxpyLayer(problem, parameters=[M, d], variables=[u], solver="SCS", mode=mode)


def run(name, make_loop, repeats, peer_loop=None):
    """Runs the cold and warm loops (and the peer's) in lockstep, one step of each in turn
    (the order rotated every step), so that a shared machine's drifts hit all alike;
    ``repeats`` times. Prints and returns the summary (times: medians over repeats of
    the loop's totals)."""
    runs = {"cold": [], "warm": [], "cvxpylayers": []}
    for _ in range(repeats):
        loops = {"cold": make_loop(False), "warm": make_loop(True)}
        if peer_loop is not None:
            loops["cvxpylayers"] = peer_loop()
        steps = {kind: [] for kind in loops}
        names = list(loops)
        for k in itertools.count():
            order = names[k % len(names):] + names[:k % len(names)]
            try:
                for kind in order:
                    steps[kind].append(next(loops[kind]))
            except StopIteration:
                break
        for kind, rows in steps.items():
            runs[kind].append(np.array(rows))
    out = {}
    for kind, results in runs.items():
        if not results:
            continue
        first = results[0]
        out[kind] = {
            "iterations_per_solve": float(np.mean(first[:, 1])),
            "layer_s": statistics.median(float(r[:, 2].sum()) for r in results),
            "loop_s": statistics.median(float(r[:, 3].sum()) for r in results),
            "loop_cpu_s": statistics.median(float(r[:, 4].sum()) for r in results),
            "layer_cpu_s": statistics.median(float(r[:, 5].sum()) for r in results),
            "losses": [float(v) for v in first[:, 0] if not np.isnan(v)],
            "iterations_first_call": float(first[0, 1]),
            "warm_fraction": float(np.mean(first[:, 6])),
            "scs_s": statistics.median(float(r[:, 7].sum()) for r in results),
        }
    cold, warm = out["cold"], out["warm"]
    scale = max(abs(v) for v in cold["losses"])
    curve = max(abs(a - b) for a, b in zip(cold["losses"], warm["losses"])) / scale
    print(f"\n{name}")
    print(f"  {'':12} {'iters/solve':>12} {'started warm':>12} {'layer calls':>12} "
          f"{'layer CPU':>12} {'in SCS':>12} {'whole loop':>12} {'loop CPU':>12}")
    for kind, r in out.items():
        iters = "-" if np.isnan(r["iterations_per_solve"]) else f"{r['iterations_per_solve']:.1f}"
        share = "-" if np.isnan(r["warm_fraction"]) else f"{100 * r['warm_fraction']:.1f} %"
        scs = fmt_time(r["scs_s"]) if r["scs_s"] > 0 else "-"
        print(f"  {kind:12} {iters:>12} {share:>12} {fmt_time(r['layer_s']):>12} "
              f"{fmt_time(r['layer_cpu_s']):>12} {scs:>12} {fmt_time(r['loop_s']):>12} "
              f"{fmt_time(r['loop_cpu_s']):>12}")
    ratios = {"iterations": cold["iterations_per_solve"] / warm["iterations_per_solve"],
              "layer_time": cold["layer_s"] / warm["layer_s"],
              "loop_time": cold["loop_s"] / warm["loop_s"],
              "loop_cpu": cold["loop_cpu_s"] / warm["loop_cpu_s"],
              "layer_cpu": cold["layer_cpu_s"] / warm["layer_cpu_s"],
              "scs_time": cold["scs_s"] / warm["scs_s"] if warm["scs_s"] > 0 else float("nan")}
    scs_ratio = ("" if np.isnan(ratios["scs_time"])
                 else f"; {ratios['scs_time']:.2f}x less time in SCS")
    print(f"  cold/warm: {ratios['iterations']:.2f}x fewer iterations, "
          f"{ratios['layer_time']:.2f}x less layer (solve) time ({ratios['layer_cpu']:.2f}x "
          f"CPU{scs_ratio}), {ratios['loop_time']:.2f}x "
          f"less loop time ({ratios['loop_cpu']:.2f}x CPU); loss curves differ by at most "
          f"{curve:.1e} (relative)")
    absolute = curve * scale
    print(f"  loss: first {cold['losses'][0]:.6g}, last cold {cold['losses'][-1]:.6g}, "
          f"last warm {warm['losses'][-1]:.6g}; largest |cold - warm| {absolute:.1e}")
    if "cvxpylayers" in out:
        peer = out["cvxpylayers"]
        print(f"  cvxpylayers 1.2 (cold; it cannot warm-start SCS) / cvxlayers warm: "
              f"{peer['layer_s'] / warm['layer_s']:.2f}x layer time, "
              f"{peer['loop_s'] / warm['loop_s']:.2f}x loop time")
    return {"name": name, "runs": out, "ratios": ratios, "loss_curve_rel_diff": curve}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 SGD steps, 1 control step")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--only", default=None,
                        help="run only the loops whose name contains this (e.g. 'control')")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    steps, control_steps, batch = (20, 1, 64) if args.quick else (100, 3, 64)

    from cvxlayers.torch import CvxpyLayer

    info = environment()
    print_environment(info)
    print(f"repeats={repeats} (medians of times; cold, warm and peer loops in lockstep), "
          f"B={batch}, SCS defaults (eps_abs = eps_rel = 1e-4), n_jobs = default (one per CPU)")
    peer_cls, peer_version = load_peer()
    results = []
    peer_loop = None
    if peer_cls is not None:
        peer_loop = lambda: socp_loop(socp_layer(peer_cls), steps, batch, None)  # noqa: E731
    name = f"socp: {steps} SGD steps, B={batch}, n=30, m=40"
    if args.only is None or args.only in name:
        results.append(run(name, lambda warm: socp_loop(socp_layer(CvxpyLayer), steps, batch,
                                                        warm),
                           repeats, peer_loop))
    labels = {"SCS": "SCS, mode dense", "SCS-lsqr": "SCS, mode lsqr (the default)", "QP": "QP"}
    for solver, label in labels.items():
        name = f"control ({label}): {control_steps} Adam steps x 30 time steps, {batch} rollouts"
        if args.only is not None and args.only not in name:
            continue
        results.append(run(name,
                           lambda warm, s=solver: control_loop(s, control_steps, batch, warm),
                           repeats))
    dump_json(args.json, {"environment": info, "peer": peer_version, "results": results})


if __name__ == "__main__":
    main()
