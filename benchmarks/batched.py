"""Batched forward + backward: cvxlayers vs cvxpylayers 1.2, same problems, SCS, same tolerances.

Problems (parameters in the constraint matrix and the right-hand side, DPP):

- ``socp``: constrained robust regression, B=64, n=30, m=40::

      minimize ||A x - b||² + 0.1 ||x||_1   s.t.  ||x||_2 <= 1           parameters A, b

- ``qp``: the dense QP of the cvxpylayers paper (Agrawal et al. 2019, §7), B=128,
  n=128 variables, 128 inequality constraints::

      minimize 0.5 ||L x||² + qᵀx   s.t.  G x <= h                       parameters q, G, h

  (L a fixed well-conditioned matrix; h = G x₀ + s₀ with s₀ > 0 keeps every element feasible).

One call = forward on the whole batch + backward of ⟨w, x*⟩ for a fixed random w.
Both layers use SCS through diffcp with the same tolerances, the same derivative mode
and the same number of threads. Accuracy: the max abs deviation of each layer's x* from a
high-accuracy Clarabel solve through CVXPY (tolerances 1e-9), and of its gradient from the
gradient at a high-accuracy solution (diffcp's derivative at an SCS solve with eps 1e-9).

Usage (with cvxpylayers installed in the benchmark venv, see README.md):
    /tmp/bench-venv/bin/python benchmarks/batched.py [--quick] [--problems socp,qp]
        [--modes dense,lsqr] [--repeats N] [--eps 1e-5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import dump_json, environment, fmt_time, load_peer, print_environment  # noqa: E402

SEED = 0
#: Clarabel settings of the high-accuracy reference.
REF_TOL = {"tol_gap_abs": 1e-9, "tol_gap_rel": 1e-9, "tol_feas": 1e-9, "max_iter": 500}
#: SCS settings of the gradient reference.
GRAD_REF_ARGS = {"eps_abs": 1e-9, "eps_rel": 1e-9, "max_iters": 200_000}


def socp_problem(batch, rng):
    import cvxpy as cp

    n, m = 30, 40
    x = cp.Variable(n)
    A, b = cp.Parameter((m, n)), cp.Parameter(m)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b) + 0.1 * cp.norm(x, 1)),
                         [cp.norm(x, 2) <= 1.0])
    values = [rng.standard_normal((batch, m, n)) / np.sqrt(n), rng.standard_normal((batch, m))]
    return dict(name=f"socp (B={batch}, n={n}, m={m})", problem=problem, parameters=[A, b],
                variables=[x], values=values, n=n)


def qp_problem(batch, rng):
    import cvxpy as cp

    n = m = 128
    x = cp.Variable(n)
    q, G, h = cp.Parameter(n), cp.Parameter((m, n)), cp.Parameter(m)
    L = np.eye(n) + 0.1 * rng.standard_normal((n, n)) / np.sqrt(n)
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(L @ x) + q @ x), [G @ x <= h])
    G_v = rng.standard_normal((batch, m, n)) / np.sqrt(n)
    x0 = rng.standard_normal((batch, n))
    s0 = rng.uniform(0.1, 1.0, (batch, m))
    h_v = np.einsum("bij,bj->bi", G_v, x0) + s0
    q_v = rng.standard_normal((batch, n))
    return dict(name=f"qp (B={batch}, n={n}, m={m})", problem=problem, parameters=[q, G, h],
                variables=[x], values=[q_v, G_v, h_v], n=n)


PROBLEMS = {"socp": (socp_problem, 64), "qp": (qp_problem, 128)}
#: default timed calls per contender (a qp call takes seconds, a socp call a fraction of one)
DEFAULT_REPEATS = {"socp": 9, "qp": 3}


def reference_solutions(spec):
    """x* per element from Clarabel through CVXPY at tight tolerances."""
    import cvxpy as cp

    problem, params, (x,) = spec["problem"], spec["parameters"], spec["variables"]
    batch = spec["values"][0].shape[0]
    xs = np.empty((batch, spec["n"]))
    inaccurate = 0
    for i in range(batch):
        for p, v in zip(params, spec["values"]):
            p.value = v[i]
        problem.solve(solver=cp.CLARABEL, **REF_TOL)
        if problem.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
            raise RuntimeError(f"reference solve of element {i}: {problem.status}")
        inaccurate += problem.status == cp.OPTIMAL_INACCURATE
        xs[i] = x.value
    return xs, inaccurate


def run_call(layer, tensors, w, solver_args):
    """One forward + backward; returns (seconds, x*, grads)."""
    for t in tensors:
        t.grad = None
    t0 = time.perf_counter()
    (x_star,) = layer(*tensors, solver_args=solver_args)
    (x_star * w).sum().backward()
    elapsed = time.perf_counter() - t0
    return elapsed, x_star.detach().numpy().copy(), [t.grad.numpy().copy() for t in tensors]


def profile_elements(args, PeerLayer, scs_args, modes):
    """cProfile of one single-threaded call per layer and mode, top functions by own time."""
    import cProfile
    import pstats

    import torch

    from cvxlayers.torch import CvxpyLayer

    for key in args.problems.split(","):
        builder, _ = PROBLEMS[key]
        batch = args.profile_elements
        spec = builder(batch, np.random.default_rng(SEED))
        w = torch.tensor(np.random.default_rng(SEED + 1).standard_normal((batch, spec["n"])))
        for mode in modes:
            layers = {"cvxlayers": (CvxpyLayer(spec["problem"], spec["parameters"],
                                               spec["variables"], n_jobs=1, mode=mode),
                                    dict(scs_args))}
            if PeerLayer is not None:
                layers["cvxpylayers"] = (PeerLayer(spec["problem"], parameters=spec["parameters"],
                                                   variables=spec["variables"]),
                                         {"solve_method": "SCS", "mode": mode, "n_jobs_forward": 1,
                                          "n_jobs_backward": 1, **scs_args})
            for name, (layer, solver_args) in layers.items():
                def call(layer=layer, solver_args=solver_args, values=spec["values"], w=w):
                    tensors = [torch.tensor(v, requires_grad=True) for v in values]
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        run_call(layer, tensors, w, solver_args)
                call()
                profiler = cProfile.Profile()
                profiler.enable()
                call()
                profiler.disable()
                print(f"\n=== {spec['name']}, {name}, 1 thread, {mode} mode: per-call own time "
                      f"(divide by {batch} for per element)")
                pstats.Stats(profiler).sort_stats("tottime").print_stats(8)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 timed call per contender, dense mode only")
    parser.add_argument("--problems", default="socp,qp")
    parser.add_argument("--modes", default=None, help="derivative modes, comma-separated "
                        "(default dense,lsqr; --quick: dense)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per contender (default: socp 9, qp 3; --quick: 1)")
    parser.add_argument("--eps", type=float, default=1e-5, help="SCS eps_abs = eps_rel")
    parser.add_argument("--n-jobs", type=int, default=None, help="threads (default: usable CPUs)")
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--no-reference", action="store_true", help="skip the accuracy check")
    parser.add_argument("--profile-elements", type=int, default=0, metavar="B",
                        help="instead of timing: cProfile one call of each layer per mode (--modes, "
                        "default dense) on B elements, single-threaded, and print where the time goes")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    repeats_arg = args.repeats or (1 if args.quick else None)
    modes = (args.modes or ("dense" if args.quick or args.profile_elements
                            else "dense,lsqr")).split(",")

    import torch

    from cvxlayers.backends.pool import default_jobs
    from cvxlayers.torch import CvxpyLayer

    n_jobs = args.n_jobs or default_jobs()
    info = environment()
    print_environment(info)
    PeerLayer, peer_version = (None, None) if args.no_peer else load_peer()
    scs_args = {"eps_abs": args.eps, "eps_rel": args.eps, "max_iters": 100_000}
    print(f"SCS options {scs_args}; threads {n_jobs}; modes {modes}; timed calls per contender "
          "interleaved, after one untimed warm-up call each")

    if args.profile_elements:
        return profile_elements(args, PeerLayer, scs_args, modes)

    results = {}
    for key in args.problems.split(","):
        builder, batch = PROBLEMS[key]
        repeats = repeats_arg or DEFAULT_REPEATS[key]
        spec = builder(batch, np.random.default_rng(SEED))
        print(f"\n=== {spec['name']}: {repeats} timed call(s) per contender")
        w = torch.tensor(np.random.default_rng(SEED + 1).standard_normal((batch, spec["n"])))

        def tensors(values=spec["values"]):
            return [torch.tensor(v, requires_grad=True) for v in values]

        t0 = time.perf_counter()
        ours = {mode: CvxpyLayer(spec["problem"], spec["parameters"], spec["variables"],
                                 n_jobs=n_jobs, mode=mode) for mode in modes}
        build_ours = time.perf_counter() - t0
        contenders = {}
        for mode in modes:
            contenders[f"cvxlayers ({mode})"] = (ours[mode], dict(scs_args))
        if PeerLayer is not None:
            t0 = time.perf_counter()
            peer = PeerLayer(spec["problem"], parameters=spec["parameters"],
                             variables=spec["variables"])
            build_peer = time.perf_counter() - t0
            for mode in modes:
                contenders[f"cvxpylayers {peer_version} ({mode})"] = (
                    peer, {"solve_method": "SCS", "mode": mode, "n_jobs_forward": n_jobs,
                           "n_jobs_backward": n_jobs, **scs_args})
            print(f"layer construction: cvxlayers {build_ours / len(modes):.2f} s, "
                  f"cvxpylayers {build_peer:.2f} s")

        # Reference: x* from Clarabel through CVXPY at tight tolerances. Gradient reference:
        # diffcp's derivative at a tight SCS solution (eps 1e-9) through cvxlayers (Clarabel
        # through diffcp stalls on the SOC form of these problems at such tolerances).
        ref_x = ref_grads = None
        if not args.no_reference:
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ref_x, n_inaccurate = reference_solutions(spec)
            ref_layer = CvxpyLayer(spec["problem"], spec["parameters"], spec["variables"],
                                   n_jobs=n_jobs, mode="dense", on_failure="warn")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _, ref_x_layer, ref_grads = run_call(ref_layer, tensors(), w, GRAD_REF_ARGS)
            ref_ok = ~np.isnan(ref_x_layer).any(axis=1)  # elements the reference solved
            print(f"x reference: CVXPY-Clarabel {REF_TOL} ({n_inaccurate} element(s) "
                  f"'optimal_inaccurate'); gradient reference: cvxlayers SCS {GRAD_REF_ARGS} on "
                  f"{ref_ok.sum()}/{batch} elements; its x* vs the x reference: "
                  f"{np.nanmax(np.abs(ref_x_layer - ref_x)):.1e}; {time.perf_counter() - t0:.1f} s")

        rows = {}
        for layer, solver_args in contenders.values():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                run_call(layer, tensors(), w, solver_args)  # warm-up (thread pools, caches)
        times = {name: [] for name in contenders}
        outs = {}
        names = list(contenders)
        for r in range(repeats):  # interleaved, order rotated per round
            k = r % len(names)
            for name in names[k:] + names[:k]:
                layer, solver_args = contenders[name]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    elapsed, x_star, grads = run_call(layer, tensors(), w, solver_args)
                times[name].append(elapsed)
                outs[name] = (x_star, grads)
        for name in names:
            x_star, grads = outs[name]
            row = {"median_s": statistics.median(times[name]), "min_s": min(times[name]),
                   "times_s": times[name]}
            if ref_x is not None:
                row["max_abs_dx_vs_clarabel"] = float(np.abs(x_star - ref_x).max())
                row["max_abs_dgrad_vs_clarabel"] = float(max(
                    np.abs(g[ref_ok] - rg[ref_ok]).max() for g, rg in zip(grads, ref_grads)))
                row["grad_scale"] = float(max(np.abs(rg[ref_ok]).max() for rg in ref_grads))
            rows[name] = row

        print(f"{'contender':<30} {'median':>11} {'ratio':>8} {'min':>11} {'ratio':>8}   {'max|x-x_ref|':>13} "
              f"{'max|g-g_ref|':>13}   (max|g_ref| = {rows[names[0]].get('grad_scale', float('nan')):.2g})")
        for name, row in rows.items():
            mode = name.rsplit("(", 1)[1].rstrip(")")
            ratio = row["median_s"] / rows[f"cvxlayers ({mode})"]["median_s"]
            ratio_min = row["min_s"] / rows[f"cvxlayers ({mode})"]["min_s"]
            row["ratio_vs_cvxlayers_same_mode"] = ratio
            row["ratio_min_vs_cvxlayers_same_mode"] = ratio_min
            print(f"{name:<30} {fmt_time(row['median_s'])} {ratio:>7.2f}x {fmt_time(row['min_s'])} "
                  f"{ratio_min:>7.2f}x   "
                  f"{row.get('max_abs_dx_vs_clarabel', float('nan')):>13.2e} "
                  f"{row.get('max_abs_dgrad_vs_clarabel', float('nan')):>13.2e}")
        print("(ratio = contender time / cvxlayers time in the same derivative mode; "
              ">1 means cvxlayers is faster)")
        results[key] = {"name": spec["name"], "repeats": repeats, "rows": rows}

    dump_json(args.json, {"environment": info, "scs_args": scs_args, "n_jobs": n_jobs,
                          "modes": modes, "results": results})
    return results


if __name__ == "__main__":
    main()
