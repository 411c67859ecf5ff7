"""Where a tiny cvxlayers call spends its time, stage by stage (the overhead.py problem).

Each stage of ``LayerCore.forward``/``backward`` and of the torch adapter is timed in
isolation on the same inputs a real call sees (median of many repeats), next to the raw
diffcp calls it wraps. The stages' sum is compared with the full call's time.

Usage:
    python benchmarks/profile_overhead.py [--quick] [--mode dense] [--cprofile]
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import environment, fmt_time, print_environment, summarize, time_interleaved  # noqa: E402
from overhead import N, SEED, build_problem  # noqa: E402


def stage_timer(repeats):
    def measure(fn):
        return summarize(time_interleaved({"s": fn}, repeats, warmup=max(10, repeats // 20))["s"])["median"]
    return measure


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--mode", default="dense")
    parser.add_argument("--cprofile", action="store_true", help="also print a cProfile of 2000 torch calls")
    args = parser.parse_args(argv)
    repeats = args.repeats or (300 if args.quick else 3000)
    measure = stage_timer(repeats)

    import diffcp
    import torch
    from diffcp import cone_program

    from cvxlayers import status as st
    from cvxlayers.backends.diffcp_backend import _aligned_values
    from cvxlayers.backends.pool import map_batch
    from cvxlayers.core import ForwardState
    from cvxlayers.parameters import validate_batch
    from cvxlayers.torch import CvxpyLayer

    print_environment(environment())
    solver_kwargs = {"eps_abs": 1e-4, "eps_rel": 1e-4, "max_iters": 100_000}
    problem, x, y = build_problem()
    y_value = np.random.default_rng(SEED).standard_normal(N)
    layer = CvxpyLayer(problem, parameters=[y], variables=[x], mode=args.mode)
    core = layer.core
    compiled = core.compiled
    pmap, layout, smap = compiled.parameter_map, compiled.layout, compiled.solution_map
    g = np.ones(N)

    # Inputs of every stage, computed once.
    batch = validate_batch(core.parameter_specs, [y_value])
    backend, options = core._options(solver_kwargs)
    phi = pmap.features(batch.values, batch.batched, batch.size)
    data = pmap.forward(phi)
    solution = backend.solve(layout, data, True, options, core.n_jobs)
    usable = st.apply_policy(solution.statuses, solution.messages, backend.name, core.on_failure)
    outputs = smap.forward(solution.x, solution.y)
    dx, dy = smap.adjoint([g[None]], outputs)
    d_data = backend.adjoint(layout, solution, dx, dy, usable, core.n_jobs)
    d_phi = pmap.adjoint(d_data)
    a_values, b0, c0 = (v.copy() for v in layout.split(data[0]))
    A0 = layout.matrix(a_values)
    mode = options["mode"]
    scs_opts = {k: v for k, v in options.items() if k != "mode"}
    DT = diffcp.solve_and_derivative(A0.copy(), b0.copy(), c0.copy(), layout.cone_dict,
                                     mode=mode, solve_method="SCS", **scs_opts)[4]
    zeros_m = np.zeros(layout.m)

    rows = []

    def add(name, fn, group):
        rows.append((group, name, measure(fn)))

    # raw diffcp pieces
    add("raw: solve_and_derivative", lambda: diffcp.solve_and_derivative(
        A0.copy(), b0.copy(), c0.copy(), layout.cone_dict, mode=mode, solve_method="SCS",
        **scs_opts), "raw")
    add("raw: DT(dx, dy, ds)", lambda: DT(dx[0], dy[0], zeros_m), "raw")

    # core forward stages
    add("validate_batch", lambda: validate_batch(core.parameter_specs, [y_value]), "fwd")
    add("_options (backend + check_cones)", lambda: core._options(solver_kwargs), "fwd")
    add("ParameterMap.features", lambda: pmap.features(batch.values, batch.batched, batch.size), "fwd")
    add("ParameterMap.forward (sparse matmul)", lambda: pmap.forward(phi), "fwd")
    add("backend.solve (incl. diffcp)", lambda: backend.solve(layout, data, True, options, core.n_jobs), "fwd")

    def solve_internal_only():
        return cone_program.solve_and_derivative_internal(
            A0.copy(), b0.copy(), c0.copy(), layout.cone_dict, solve_method="SCS", mode=mode,
            raise_on_error=False, **scs_opts)
    add("  of which diffcp solve_and_derivative_internal", solve_internal_only, "fwd-detail")
    add("  layout.matrix + split + 3 copies", lambda: (layout.matrix(layout.split(data[0])[0].copy()),
                                                       data[0].copy(), data[0].copy()), "fwd-detail")
    add("  map_batch (1 element, trivial fn)", lambda: map_batch(lambda i: i, 1, core.n_jobs), "fwd-detail")

    def catch():
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Solved/Inaccurate")
    add("  warnings.catch_warnings + filter", catch, "fwd-detail")
    add("apply_policy", lambda: st.apply_policy(solution.statuses, solution.messages, backend.name,
                                                core.on_failure), "fwd")
    add("SolutionMap.forward", lambda: smap.forward(solution.x, solution.y), "fwd")
    add("ForwardState(...)", lambda: ForwardState(batch, solution, outputs, usable, backend, 1), "fwd")

    # core backward stages
    add("SolutionMap.adjoint", lambda: smap.adjoint([g[None]], outputs), "bwd")
    add("backend.adjoint (incl. DT)", lambda: backend.adjoint(layout, solution, dx, dy, usable,
                                                              core.n_jobs), "bwd")
    dA = solution.adjoint_fns[0](dx[0], dy[0], zeros_m)[0]
    add("  of which _aligned_values", lambda: _aligned_values(dA, layout), "bwd-detail")
    add("ParameterMap.adjoint (sparse matmul)", lambda: pmap.adjoint(d_data), "bwd")
    add("ParameterMap.feature_adjoint", lambda: pmap.feature_adjoint(d_phi, batch.values, batch.batched), "bwd")

    # whole calls
    add("LayerCore.forward (need_grad)", lambda: core.forward([y_value], solver_kwargs, True), "total")
    _, state = core.forward([y_value], solver_kwargs, True)
    add("LayerCore.backward", lambda: core.backward(state, [g]), "total")
    y_t = torch.tensor(y_value, requires_grad=True)
    grad_out = torch.ones(N, dtype=torch.float64)

    def torch_fwd():
        return layer(y_t, solver_args=solver_kwargs)
    add("torch layer forward", torch_fwd, "total")

    def torch_call():
        y_t.grad = None
        (xs,) = layer(y_t, solver_args=solver_kwargs)
        xs.backward(grad_out)
    add("torch layer forward + backward", torch_call, "total")

    y_np = torch.tensor(y_value)
    add("torch: 1 tensor -> float64 numpy", lambda: y_np.detach().to(device="cpu", dtype=torch.float64).numpy(), "torch")
    out0 = outputs[0][0]
    add("torch: torch.as_tensor(out, dtype, device)", lambda: torch.as_tensor(out0, dtype=torch.float64, device="cpu"), "torch")

    class Identity(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a):
            return a.detach().clone()

        @staticmethod
        def backward(ctx, ga):
            return ga

    def identity_call():
        y_t.grad = None
        Identity.apply(y_t).backward(grad_out)
    add("torch: trivial autograd.Function fwd+bwd", identity_call, "torch")

    base = {n: t for _, n, t in rows}
    raw_total = base["raw: solve_and_derivative"] + base["raw: DT(dx, dy, ds)"]
    print(f"\nstage medians over {repeats} repeats each (mode={mode!r}):")
    group = None
    for grp, name, t in rows:
        if grp != group:
            print(f"-- {grp}")
            group = grp
        print(f"  {name:<48} {fmt_time(t)}   {t / raw_total * 100:6.1f}% of raw")
    fwd = sum(t for grp, _, t in rows if grp == "fwd")
    bwd = sum(t for grp, _, t in rows if grp == "bwd")
    print(f"\nraw diffcp (solve_and_derivative + DT):        {fmt_time(raw_total)}")
    print(f"sum of core forward stages:                    {fmt_time(fwd)}")
    print(f"sum of core backward stages:                   {fmt_time(bwd)}")
    print(f"core overhead (stages - raw):                  {fmt_time(fwd + bwd - raw_total)}")
    print(f"torch adapter (torch call - core fwd - bwd):   "
          f"{fmt_time(base['torch layer forward + backward'] - base['LayerCore.forward (need_grad)'] - base['LayerCore.backward'])}")

    if args.cprofile:
        import cProfile
        import pstats
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(2000):
            torch_call()
        pr.disable()
        pstats.Stats(pr).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
