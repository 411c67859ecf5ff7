"""torch.compile over a model with a layer: graph breaks, and the per-step cost, eager vs compiled.

The model is ``Linear(4 -> 5)`` feeding the 5-dimensional ReLU projection of
``overhead.py`` (x*(y) = argmin ||x - y||² s.t. x ≥ 0), batch B = 8, float64, SCS at
``eps_abs = eps_rel = 1e-4``; one step is forward + backward of ``x*.sum()``.

Reported, in one run:

- graph breaks under ``torch._dynamo.explain`` and whether ``fullgraph=True`` compiles, for
  cvxlayers and for cvxpylayers 1.2 (the peer; compiled without ``fullgraph`` it runs in
  pieces between its breaks);
- per-step time (median of interleaved calls) of cvxlayers eager, cvxlayers compiled
  (``aot_eager`` and inductor, ``fullgraph=True``), cvxpylayers eager and cvxpylayers compiled
  (``aot_eager``, with its graph breaks). The compiled cvxlayers backward re-solves (see
  ``cvxlayers/_torch_ops.py``), so its step costs about one extra solve over eager.

Usage:
    python benchmarks/compile.py [--quick] [--repeats N] [--no-inductor] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    dump_json,
    environment,
    fmt_time,
    load_peer,
    print_environment,
    summarize,
    time_interleaved,
)

N, FEATURES, BATCH = 5, 4, 8
SOLVER_ARGS = {"eps_abs": 1e-4, "eps_rel": 1e-4, "max_iters": 100_000}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="50 steps instead of 300")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--no-inductor", action="store_true", help="skip the inductor row")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    repeats = args.repeats or (50 if args.quick else 300)

    import cvxpy as cp
    import torch

    from cvxlayers.torch import CvxpyLayer

    info = environment()
    print_environment(info)
    print(f"model: Linear({FEATURES}->{N}) -> ReLU projection layer, B={BATCH}, float64, SCS "
          f"{SOLVER_ARGS}; {repeats} timed steps per contender")

    x, y = cp.Variable(N), cp.Parameter(N)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - y)), [x >= 0])

    class Model(torch.nn.Module):
        def __init__(self, layer, peer):
            super().__init__()
            torch.manual_seed(0)
            self.linear = torch.nn.Linear(FEATURES, N).double()
            self.layer, self.peer = layer, peer

        def forward(self, z):
            y_hat = self.linear(z)
            if self.peer:
                return self.layer(y_hat, solver_args={"solve_method": "SCS", **SOLVER_ARGS})[0]
            return self.layer(y_hat, solver_args=SOLVER_ARGS)[0]

    z = torch.randn(BATCH, FEATURES, dtype=torch.float64)
    models = {"cvxlayers": Model(CvxpyLayer(problem, [y], [x]), peer=False)}
    PeerLayer, peer_version = load_peer()
    if PeerLayer is not None:
        models[f"cvxpylayers {peer_version}"] = Model(PeerLayer(problem, [y], [x]), peer=True)

    print("\ngraph breaks (torch._dynamo.explain) and fullgraph=True:")
    results = {"graph_breaks": {}, "fullgraph": {}}
    for name, model in models.items():
        torch._dynamo.reset()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            explanation = torch._dynamo.explain(model)(z)
        breaks = explanation.graph_break_count
        torch._dynamo.reset()
        try:
            torch.compile(model, fullgraph=True, backend="aot_eager")(z).sum().backward()
            fullgraph = "compiles and runs"
        except Exception as exc:  # noqa: BLE001 - the peer's failure is the finding
            fullgraph = f"fails: {type(exc).__name__}: {str(exc).splitlines()[0][:90]}"
        results["graph_breaks"][name], results["fullgraph"][name] = breaks, fullgraph
        print(f"  {name:<20} {breaks} graph break(s); fullgraph=True {fullgraph}")

    torch._dynamo.reset()
    contenders = {}

    def step_of(run, model):
        def step():
            model.zero_grad()
            run(z).sum().backward()
        return step

    ours = models["cvxlayers"]
    contenders["cvxlayers eager"] = step_of(ours, ours)
    contenders["cvxlayers compiled aot_eager"] = step_of(
        torch.compile(ours, fullgraph=True, backend="aot_eager"), ours)
    if not args.no_inductor:
        contenders["cvxlayers compiled inductor"] = step_of(torch.compile(
            ours, fullgraph=True), ours)
    if PeerLayer is not None:
        peer = models[f"cvxpylayers {peer_version}"]
        contenders[f"cvxpylayers {peer_version} eager"] = step_of(peer, peer)
        contenders[f"cvxpylayers {peer_version} compiled aot_eager"] = step_of(
            torch.compile(peer, backend="aot_eager"), peer)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fn in contenders.values():  # compile outside the timing
            fn()
        times = time_interleaved(contenders, repeats, warmup=5)
    summary = {name: summarize(t) for name, t in times.items()}
    base = summary["cvxlayers eager"]["median"]
    print(f"\n{'contender':<42} {'median':>11} {'p10':>11} {'p90':>11}   {'/ours eager':>10}")
    for name, s in summary.items():
        s["ratio"] = s["median"] / base
        print(f"{name:<42} {fmt_time(s['median'])} {fmt_time(s['p10'])} {fmt_time(s['p90'])}"
              f"   {s['ratio']:>9.2f}x")
    results.update(environment=info, repeats=repeats, summary=summary)
    dump_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
