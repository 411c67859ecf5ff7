"""Where a tiny cvxlayers call spends its time (the overhead.py problem), stage by stage.

Stages are timed *in context*: the real functions are wrapped with timers (monkeypatched
in this process only; ~0.3 us per wrapper) and the whole torch call runs as in
overhead.py, interleaved with raw diffcp calls. Timing stages in isolation instead
understates them 2-4x: after a diffcp/SCS solve the caches are cold, and the small
NumPy/SciPy calls of the core run slower than in a hot loop. What both sides call
(``scs.solve``, diffcp's ``solve_internal`` and C++ kernels) is also timed inside the raw
diffcp calls, reported as ``raw: ...``, so the two sides' SCS time can be compared.

Usage:
    python benchmarks/profile_overhead.py [--quick] [--mode dense] [--cprofile]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
import warnings
from collections import defaultdict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import environment, fmt_time, print_environment, summarize, time_interleaved  # noqa: E402
from overhead import SEED, N, build_problem  # noqa: E402

TIMES = defaultdict(list)
_clock = time.perf_counter
#: whose call is running: "torch" (the cvxlayers torch layer) or "raw" (raw diffcp); the
#: shared functions (scs.solve, diffcp's solve_internal and kernels) record under its prefix.
_ACTIVE = [None]


def _wrap(owner, name, label, static=False, shared=False):
    """Replaces ``owner.name`` by a timed wrapper recording under ``label`` while the
    cvxlayers call runs; ``shared``: also while the raw diffcp call runs, as ``raw: ...``."""
    fn = getattr(owner, name)

    def timed(*a, **k):
        who = _ACTIVE[0]
        if who is None or (who == "raw" and not shared):
            return fn(*a, **k)
        t0 = _clock()
        try:
            return fn(*a, **k)
        finally:
            TIMES[label if who == "torch" else "raw: " + label.split(":", 1)[1].strip()].append(
                _clock() - t0)

    setattr(owner, name, staticmethod(timed) if static else timed)


def instrument():
    import diffcp._diffcp as _diffcp
    import scs
    from diffcp import cone_program

    import cvxlayers.backends.diffcp_backend as dbm
    import cvxlayers.core as core_mod
    import cvxlayers.torch as torch_mod
    from cvxlayers.backends.embedding import EmbeddingPlan
    from cvxlayers.core import LayerCore
    from cvxlayers.parameter_map import ConeDataLayout, ParameterMap
    from cvxlayers.solution_map import SolutionMap

    _wrap(core_mod, "validate_batch", "fwd: validate_batch")
    _wrap(LayerCore, "_options", "fwd: LayerCore._options")
    _wrap(ParameterMap, "features", "fwd: ParameterMap.features")
    _wrap(ParameterMap, "forward", "fwd: ParameterMap.forward")
    _wrap(dbm.DiffcpBackend, "solve", "fwd: backend.solve (incl. SCS)")
    _wrap(ConeDataLayout, "matrix", "fwd:   ConeDataLayout.matrix")
    _wrap(cone_program, "solve_internal", "fwd:   diffcp solve_internal", shared=True)
    _wrap(scs, "solve", "fwd:     scs.solve", shared=True)
    _wrap(EmbeddingPlan, "linearize", "fwd:   EmbeddingPlan.linearize")
    _wrap(_diffcp, "M_dense", "fwd:     _diffcp.M_dense", shared=True)
    _wrap(_diffcp, "dprojection", "fwd:     _diffcp.dprojection", shared=True)
    _wrap(core_mod.st, "apply_policy", "fwd: status.apply_policy")
    _wrap(SolutionMap, "forward", "fwd: SolutionMap.forward")
    _wrap(LayerCore, "forward", "core: LayerCore.forward")
    _wrap(SolutionMap, "adjoint", "bwd: SolutionMap.adjoint")
    _wrap(dbm.DiffcpBackend, "adjoint", "bwd: backend.adjoint")
    _wrap(EmbeddingPlan, "adjoint", "bwd:   EmbeddingPlan.adjoint")
    _wrap(_diffcp, "_solve_adjoint_derivative_dense", "bwd:     _diffcp adjoint dense solve",
          shared=True)
    _wrap(_diffcp, "lsqr", "bwd:     _diffcp.lsqr", shared=True)
    _wrap(ParameterMap, "adjoint", "bwd: ParameterMap.adjoint")
    _wrap(ParameterMap, "feature_adjoint", "bwd: ParameterMap.feature_adjoint")
    _wrap(LayerCore, "backward", "core: LayerCore.backward")
    _wrap(torch_mod._SolveFunction, "forward", "torch: _SolveFunction.forward body", static=True)
    _wrap(torch_mod._SolveFunction, "backward", "torch: _SolveFunction.backward body", static=True)

    # raw diffcp: its forward (solve + derivative set-up) and its adjoint DT.
    inner = cone_program.solve_and_derivative_internal

    def solve_and_derivative_internal(*a, **k):
        t0 = _clock()
        result = inner(*a, **k)
        if _ACTIVE[0] == "raw":
            TIMES["raw: solve_and_derivative_internal"].append(_clock() - t0)
        adjoint = result.get("DT")
        if adjoint is not None:
            def DT(*aa, **kk):
                t1 = _clock()
                try:
                    return adjoint(*aa, **kk)
                finally:
                    if _ACTIVE[0] == "raw":
                        TIMES["raw: DT"].append(_clock() - t1)
            result["DT"] = DT
        return result

    cone_program.solve_and_derivative_internal = solve_and_derivative_internal


def inside_diffcp(layout, A, b, c, solver_kwargs, mode, repeats):
    """Isolated medians of the parts of diffcp's forward (its Python scaffolding vs SCS)."""
    import diffcp._diffcp as _diffcp
    import diffcp.cones as cone_lib
    import scipy.sparse as sparse
    import scs
    from diffcp import cone_program

    cone_dict = layout.cone_dict
    result = scs.solve({"A": A.copy(), "b": b, "c": c, "P": None}, cone_dict, verbose=False,
                       **solver_kwargs)
    xs, v = result["x"], result["y"] - result["s"]
    cones = cone_lib.parse_cone_dict_cpp(cone_lib.parse_cone_dict(cone_dict))

    def bmat():
        return sparse.bmat([[None, A.T, np.expand_dims(c, -1)], [-A, None, np.expand_dims(b, -1)],
                            [-np.expand_dims(c, -1).T, -np.expand_dims(b, -1).T, None]])
    Q = bmat()
    parts = {
        "solve_and_derivative_internal (whole forward)": lambda: cone_program.solve_and_derivative_internal(
            A.copy(), b.copy(), c.copy(), cone_dict, solve_method="SCS", mode=mode, **solver_kwargs),
        "scs.solve (setup + solve)": lambda: scs.solve({"A": A.copy(), "b": b, "c": c, "P": None},
                                                       cone_dict, verbose=False, **solver_kwargs),
        "sparse.bmat building Q": bmat,
        "Q.todense() + _diffcp.M_dense": lambda: _diffcp.M_dense(Q.todense(), cones, xs, v, 1.0),
    }
    times = time_interleaved(parts, repeats, warmup=20)
    print(f"\ninside diffcp's forward, isolated medians over {repeats} calls each:")
    for k, t in times.items():
        print(f"  {k:<48} {fmt_time(summarize(t)['median'])}")


def thread_limits(repeats):
    """Cost of limiting BLAS/OpenMP threads around a batched map (cvxlayers.backends.pool)."""
    from threadpoolctl import ThreadpoolController, threadpool_limits

    def fresh():
        with threadpool_limits(limits=1):
            pass

    controller = ThreadpoolController()

    def cached():
        with controller.limit(limits=1):
            pass

    times = time_interleaved({"threadpool_limits(limits=1) (a fresh scan each time)": fresh,
                              "cached controller.limit(limits=1) (pool.map_batch)": cached},
                             repeats, warmup=3)
    print(f"\nentering + leaving a thread limit, medians over {repeats} calls each:")
    for k, t in times.items():
        print(f"  {k:<52} {fmt_time(summarize(t)['median'])}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--mode", default="dense", help="dense or lsqr (the modes the backend "
                        "computes itself; other modes go through diffcp whole)")
    parser.add_argument("--cprofile", action="store_true",
                        help="also print a cProfile (by own time) of 2000 torch calls")
    args = parser.parse_args(argv)
    repeats = args.repeats or (300 if args.quick else 2000)

    import diffcp
    import torch

    from cvxlayers.torch import CvxpyLayer

    print_environment(environment())
    solver_kwargs = {"eps_abs": 1e-4, "eps_rel": 1e-4, "max_iters": 100_000}
    problem, x, y = build_problem()
    y_value = np.random.default_rng(SEED).standard_normal(N)
    layer = CvxpyLayer(problem, parameters=[y], variables=[x], mode=args.mode)
    compiled = layer.core.compiled
    pmap, layout = compiled.parameter_map, compiled.layout
    data = pmap.forward(pmap.features([y_value], [False], 1))[0]
    a_values, b0, c0 = (v.copy() for v in layout.split(data))
    A0 = layout.matrix(a_values)
    dx, dy = compiled.solution_map.adjoint([np.ones((1, N))], [np.zeros((1, N))])
    dx, dy, ds = dx[0].copy(), dy[0].copy(), np.zeros(layout.m)
    y_t = torch.tensor(y_value, requires_grad=True)
    grad_out = torch.ones(N, dtype=torch.float64)

    def raw():
        _ACTIVE[0] = "raw"
        try:
            DT = diffcp.solve_and_derivative(A0.copy(), b0.copy(), c0.copy(), layout.cone_dict,
                                             mode=args.mode, solve_method="SCS",
                                             **solver_kwargs)[4]
            DT(dx, dy, ds)
        finally:
            _ACTIVE[0] = None

    def torch_call():
        y_t.grad = None
        _ACTIVE[0] = "torch"
        try:
            t0 = _clock()
            (xs,) = layer(y_t, solver_args=solver_kwargs)
            t1 = _clock()
            xs.backward(grad_out)
            t2 = _clock()
        finally:
            _ACTIVE[0] = None
        TIMES["torch: layer(...) forward"].append(t1 - t0)
        TIMES["torch: x.backward(...)"].append(t2 - t1)
        TIMES["torch: total"].append(t2 - t0)

    warnings.simplefilter("ignore")
    inside_diffcp(layout, A0, b0, c0, solver_kwargs, args.mode, max(200, repeats // 4))
    thread_limits(max(20, repeats // 40))
    for _ in range(max(20, repeats // 20)):
        raw()
        torch_call()
    instrument()
    raw_times = []
    for _ in range(20):
        raw()
        torch_call()
    TIMES.clear()
    gc.collect()
    gc.disable()
    for r in range(repeats):  # interleaved with raw calls
        t0 = _clock()
        raw()
        raw_times.append(_clock() - t0)
        torch_call()
        if r % 100 == 99:
            gc.collect()
    gc.enable()

    med = {k: statistics.median(v) for k, v in TIMES.items()}
    raw_med = statistics.median(raw_times)
    print(f"\nin-context medians over {repeats} torch calls (mode={args.mode!r}); "
          f"raw diffcp call (solve_and_derivative + DT) interleaved: {fmt_time(raw_med)}")
    order = ["raw", "fwd", "bwd", "core", "torch"]
    for k in sorted(med, key=lambda k: order.index(k.split(":")[0])):
        print(f"  {k:<44} {fmt_time(med[k])}  {med[k] / raw_med * 100:6.1f}% of raw")

    def get(key):
        return med.get(key, 0.0)

    scs_ours, scs_raw = get("fwd:     scs.solve"), get("raw: scs.solve")
    top_fwd = [k for k in med if k.startswith("fwd: ") and not k.startswith("fwd:  ")]
    top_bwd = [k for k in med if k.startswith("bwd: ") and not k.startswith("bwd:  ")]
    print("\nderived (medians, so only roughly additive):")
    print(f"  raw diffcp outside scs.solve             {fmt_time(raw_med - scs_raw)}")
    print(f"    forward (solve_and_derivative_internal - scs.solve) "
          f"{fmt_time(get('raw: solve_and_derivative_internal') - scs_raw)}")
    print(f"  cvxlayers torch outside scs.solve        {fmt_time(get('torch: total') - scs_ours)}")
    print(f"  core forward outside scs.solve           {fmt_time(get('core: LayerCore.forward') - scs_ours)}")
    print(f"    of which backend.solve outside scs.solve  "
          f"{fmt_time(get('fwd: backend.solve (incl. SCS)') - scs_ours)}")
    print(f"    of which diffcp solve_internal outside scs.solve "
          f"{fmt_time(get('fwd:   diffcp solve_internal') - scs_ours)}")
    print(f"  core backward                            {fmt_time(get('core: LayerCore.backward'))}")
    print(f"    of which backend.adjoint outside EmbeddingPlan.adjoint "
          f"{fmt_time(get('bwd: backend.adjoint') - get('bwd:   EmbeddingPlan.adjoint'))}")
    print(f"  torch adapter, forward                   "
          f"{fmt_time(get('torch: layer(...) forward') - get('core: LayerCore.forward'))}")
    print(f"  torch adapter, backward                  "
          f"{fmt_time(get('torch: x.backward(...)') - get('core: LayerCore.backward'))}")
    print(f"  sum of top-level forward stages          {fmt_time(sum(med[k] for k in top_fwd))}")
    print(f"  sum of top-level backward stages         {fmt_time(sum(med[k] for k in top_bwd))}")
    print(f"  torch total / raw                        {get('torch: total') / raw_med:.3f}x")

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
