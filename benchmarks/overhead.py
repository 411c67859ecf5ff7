"""Per-call overhead of a tiny layer: cvxlayers vs raw diffcp vs cvxpylayers.

The layer is a 5-dimensional ReLU written as a projection,

    x*(y) = argmin_x ||x - y||²  s.t.  x >= 0,

called with batch size 1 on a float64 tensor that requires grad; one call is the
forward solve plus the backward pass (upstream gradient of ones).

Contenders, all on exactly the same cone program, SCS options and derivative mode:

- ``raw diffcp``: ``diffcp.solve_and_derivative(A, b, c, cone_dict, mode=..., solve_method="SCS",
  **solver_kwargs)`` followed by its adjoint ``DT(dx, dy, ds)``, on cone data taken from our
  compiled layer (A is copied each call because diffcp prunes it in place). dx is the
  upstream gradient already mapped to the cone program's x (computed once, untimed).
- ``minimal torch Function``: raw diffcp inside the least possible ``torch.autograd.Function``
  (dense parameter/solution maps, nothing else): the floor of what torch itself adds.
- ``cvxlayers core``: ``LayerCore.forward`` + ``LayerCore.backward`` on NumPy arrays
  (no torch), to separate the core's overhead from the adapter's.
- ``cvxlayers torch``: ``cvxlayers.torch.CvxpyLayer`` forward + ``.backward``.
- ``cvxpylayers torch``: ``cvxpylayers.torch.CvxpyLayer`` (1.2) forward + ``.backward``,
  if importable (run with the benchmark venv's python, see README.md).

Calls are interleaved round-robin (order rotated every round); the garbage collector
is off while timing, as in ``timeit``. Reported: median and mean per-call time, and
the ratio to raw diffcp.

With ``--keras``, two more rows: ``cvxlayers.keras.CvxpyLayer`` on the JAX backend (the
gradient under ``jax.jit``, as ``model.fit`` runs it) and on the torch backend, each timed in
its own process (Keras fixes its backend at import) against the PyTorch layer in that process.
With ``--mlx``, the same for ``cvxlayers.mlx.CvxpyLayer`` (``mx.grad``, float64 on the CPU).

Usage:
    python benchmarks/overhead.py [--quick] [--repeats N] [--mode lsqr|dense] [--json out.json]
                                  [--keras] [--mlx]
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import numpy as np

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

N = 5
SEED = 0


def build_problem():
    import cvxpy as cp

    x = cp.Variable(N)
    y = cp.Parameter(N)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - y)), [x >= 0])
    return problem, x, y


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 calls instead of 2000")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per contender")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--mode", default="lsqr",
                        help="diffcp derivative mode, both sides (default: the layer's)")
    parser.add_argument("--no-peer", action="store_true", help="skip cvxpylayers")
    parser.add_argument("--no-core", action="store_true", help="skip the torch-free core row")
    parser.add_argument("--json", default=None, help="write the raw summary here")
    parser.add_argument("--keras", action="store_true",
                        help="also time the Keras layer on the JAX and torch backends")
    parser.add_argument("--mlx", action="store_true",
                        help="also time the MLX layer (mx.grad) against the PyTorch layer")
    parser.add_argument("--keras-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.keras_child:
        return keras_child(args)
    repeats = args.repeats or (200 if args.quick else 2000)
    warmup = args.warmup if args.warmup is not None else (20 if args.quick else 100)

    import diffcp
    import torch

    from cvxlayers.core import LayerCore
    from cvxlayers.torch import CvxpyLayer

    info = environment()
    print_environment(info)
    # SCS options, identical on every side (SCS defaults written out, so they are explicit).
    solver_kwargs = {"eps_abs": 1e-4, "eps_rel": 1e-4, "max_iters": 100_000}
    print(f"problem: ReLU projection, n={N}, batch 1, float64; solver SCS {solver_kwargs}, "
          f"mode={args.mode!r}; {repeats} timed calls per contender after {warmup} warmup rounds")

    problem, x, y = build_problem()
    rng = np.random.default_rng(SEED)
    y_value = rng.standard_normal(N)  # the same value every call: same SCS iterations everywhere

    # --- cvxlayers (torch) -------------------------------------------------------------
    layer = CvxpyLayer(problem, parameters=[y], variables=[x], mode=args.mode)
    y_ours = torch.tensor(y_value, dtype=torch.float64, requires_grad=True)
    grad_out = torch.ones(N, dtype=torch.float64)

    def ours_torch():
        y_ours.grad = None
        (x_star,) = layer(y_ours, solver_args=solver_kwargs)
        x_star.backward(grad_out)
        return y_ours.grad

    # --- cvxlayers core (NumPy only) ------------------------------------------------------
    core = LayerCore(problem, [y], [x], mode=args.mode)
    grad_np = np.ones(N)

    def ours_core():
        outs, state = core.forward([y_value], solver_kwargs, need_grad=True)
        return core.backward(state, [grad_np])[0]

    # --- raw diffcp, on the cone data of our compiled layer --------------------------------
    # diffcp differentiates linear-objective cone programs only: its data is the layer's
    # cone form (sum_squares as a second-order cone), which the layer itself solves only
    # for LPGD calls since SCS takes P (the layer's rows time its default, the P form).
    compiled = layer.core._formulation(False)
    pmap, layout = compiled.parameter_map, compiled.layout
    data = pmap.forward(pmap.features([y_value], [False], 1))[0]
    a_values, b0, c0 = (v.copy() for v in layout.split(data))
    A0 = layout.matrix(a_values)
    cone_dict = layout.cone_dict
    dx_cone, dy_cone = compiled.solution_map.adjoint([grad_np[None]], [np.zeros((1, N))])
    dx_cone, dy_cone = dx_cone[0].copy(), dy_cone[0].copy()
    ds_cone = np.zeros(layout.m)
    print(f"cone program: n={layout.n}, m={layout.m}, nnz(A)={layout.nnz}, cones={cone_dict}")

    def raw():
        _, _, _, _, DT = diffcp.solve_and_derivative(
            A0.copy(), b0.copy(), c0.copy(), cone_dict, mode=args.mode, solve_method="SCS",
            **solver_kwargs)
        return DT(dx_cone, dy_cone, ds_cone)

    # --- the least any torch layer over diffcp can do: a minimal autograd.Function ---------
    # (dense maps, no validation, no status handling, no batching): the floor of the torch
    # overhead, to tell what the adapter could save from what torch itself costs.
    M_dense = pmap.matrix.toarray()
    S_dense = compiled.solution_map.selection.toarray()
    nnz, m_rows = layout.nnz, layout.m

    class MinimalFn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, param):
            d = M_dense @ param.detach().numpy() + pmap.offset
            A = layout.matrix(d[:nnz].copy())
            xs, ys, _, _, DT = diffcp.solve_and_derivative(
                A, d[nnz:nnz + m_rows].copy(), d[nnz + m_rows:].copy(), cone_dict, mode=args.mode,
                solve_method="SCS", **solver_kwargs)
            ctx.DT = DT
            return torch.from_numpy(S_dense @ np.concatenate([xs, ys]))

        @staticmethod
        def backward(ctx, grad):
            dz = S_dense.T @ grad.numpy()
            dA, db, dc = ctx.DT(dz[:layout.n], dz[layout.n:], ds_cone)
            return torch.from_numpy(M_dense.T @ np.concatenate([dA.data, db, dc]))

    y_min = torch.tensor(y_value, dtype=torch.float64, requires_grad=True)

    def minimal_torch():
        y_min.grad = None
        MinimalFn.apply(y_min).backward(grad_out)
        return y_min.grad

    contenders = {"raw diffcp": raw, "minimal torch Function": minimal_torch}
    if not args.no_core:
        contenders["cvxlayers core"] = ours_core
    contenders["cvxlayers torch"] = ours_torch

    # --- cvxpylayers (peer) -------------------------------------------------------------
    PeerLayer, peer_version = (None, None) if args.no_peer else load_peer()
    if PeerLayer is not None:
        peer = PeerLayer(problem, parameters=[y], variables=[x])
        peer_args = {"solve_method": "SCS", "mode": args.mode, **solver_kwargs}
        y_peer = torch.tensor(y_value, dtype=torch.float64, requires_grad=True)
        dims = peer.ctx.solver_ctx.A_shape
        print(f"cvxpylayers {peer_version}: cone program m={dims[0]}, n={dims[1] - 1}")

        def peer_torch():
            y_peer.grad = None
            (x_star,) = peer(y_peer, solver_args=peer_args)
            x_star.backward(grad_out)
            return y_peer.grad

        contenders[f"cvxpylayers {peer_version} torch"] = peer_torch

    # Sanity: every contender computes the same gradient.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = ours_torch().numpy().copy()
        checks = {"cvxlayers core": ours_core()}
        for name, fn in contenders.items():
            if "cvxpylayers" in name or "minimal" in name:
                checks[name] = fn().numpy().copy()
    _, db, dc = raw()
    print(f"gradient dL/dy (cvxlayers torch): {np.round(ref, 6).tolist()}")
    for name, g in checks.items():
        print(f"  max |grad - cvxlayers torch| for {name}: {np.abs(g - ref).max():.2e}")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        times = time_interleaved(contenders, repeats, warmup)
    summary = {name: summarize(t) for name, t in times.items()}
    base = summary["raw diffcp"]
    print()
    print(f"{'contender':<28} {'median':>11} {'mean':>11} {'p10':>11} {'p90':>11}"
          f"   {'median/raw':>10} {'mean/raw':>9}")
    for name, s in summary.items():
        s["ratio_median"] = s["median"] / base["median"]
        s["ratio_mean"] = s["mean"] / base["mean"]
        print(f"{name:<28} {fmt_time(s['median'])} {fmt_time(s['mean'])} {fmt_time(s['p10'])} "
              f"{fmt_time(s['p90'])}   {s['ratio_median']:>9.3f}x {s['ratio_mean']:>8.3f}x")
    backends = (["jax", "torch"] if args.keras else []) + (["mlx"] if args.mlx else [])
    if backends:
        summary.update(adapter_rows(args, backends))
    dump_json(args.json, {"environment": info, "solver_kwargs": solver_kwargs,
                          "mode": args.mode, "repeats": repeats, "summary": summary})
    return summary


# --- Keras 3 on the JAX and torch backends, and MLX -------------------------------------
# Keras fixes its backend at import, so each backend is timed in its own interpreter, against
# cvxlayers' PyTorch layer timed in that same process, interleaved (same machine state); MLX
# the same way, so that every row is measured alike.

#: SCS options of every row (the main table's too).
SCS_KWARGS = {"eps_abs": 1e-4, "eps_rel": 1e-4, "max_iters": 100_000}


def keras_child(args):
    """Times one Keras backend, or MLX (``args.keras_child``: ``jax``, ``torch`` or ``mlx``)
    against the PyTorch layer; writes the summary to ``args.json``. One call: forward +
    gradient of sum(x*) w.r.t. y, float64."""
    backend = args.keras_child
    os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("JAX_ENABLE_X64", "1")  # float64, like the torch row
    repeats = args.repeats or (200 if args.quick else 2000)
    warmup = args.warmup if args.warmup is not None else (20 if args.quick else 100)
    import torch

    from cvxlayers.torch import CvxpyLayer as TorchLayer

    problem, x, y = build_problem()
    y_value = np.random.default_rng(SEED).standard_normal(N)
    torch_layer = TorchLayer(problem, parameters=[y], variables=[x], mode=args.mode)
    y_torch = torch.tensor(y_value, requires_grad=True)

    def torch_call():
        y_torch.grad = None
        torch_layer(y_torch, solver_args=SCS_KWARGS)[0].sum().backward()
        return y_torch.grad.numpy()

    if backend == "mlx":
        import mlx.core as mx

        from cvxlayers.mlx import CvxpyLayer as MLXLayer

        mlx_layer = MLXLayer(problem, parameters=[y], variables=[x], mode=args.mode)
        grad = mx.grad(lambda v: mlx_layer(v, solver_args=SCS_KWARGS)[0].sum())
        y_mlx = mx.array(y_value, dtype=mx.float64)

        def keras_call():  # (named for the other rows) forward + mx.grad, evaluated
            g = grad(y_mlx)
            mx.eval(g)
            return np.array(g)
    else:
        from cvxlayers.keras import CvxpyLayer as KerasLayer

        keras_layer = KerasLayer(problem, parameters=[y], variables=[x], mode=args.mode)
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        # model.fit's path: the gradient jit-compiled (pure_callback + custom_vjp).
        grad = jax.jit(jax.grad(lambda v: jnp.sum(keras_layer(v, solver_args=SCS_KWARGS)[0])))
        y_jax = jnp.asarray(y_value)

        def keras_call():
            return np.asarray(grad(y_jax).block_until_ready())
    elif backend == "torch":
        y_keras = torch.tensor(y_value, requires_grad=True)

        def keras_call():  # the Keras layer's __call__ around the torch autograd Function
            y_keras.grad = None
            keras_layer(y_keras, solver_args=SCS_KWARGS)[0].sum().backward()
            return y_keras.grad.numpy()

    gap = np.abs(keras_call() - torch_call()).max()
    name = row_name(backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        times = time_interleaved({"cvxlayers torch": torch_call, name: keras_call},
                                 repeats, warmup)
    summary = {k: summarize(t) for k, t in times.items()}
    summary[name]["max_grad_gap"] = float(gap)
    dump_json(args.json, summary)
    return summary


def row_name(backend: str) -> str:
    return "cvxlayers mlx" if backend == "mlx" else f"keras on {backend}"


def adapter_rows(args, backends) -> dict:
    """The Keras-on-JAX, Keras-on-torch and MLX rows, each as a ratio to the PyTorch layer
    timed in the same child process."""
    import json
    import subprocess
    import tempfile

    rows = {}
    print(f"\n{'other adapters':<28} {'median':>11} {'torch layer':>11}   {'ratio':>7}"
          f"  (target <= 1.2x; grad gap)")
    for backend in backends:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "summary.json")
            command = [sys.executable, os.path.abspath(__file__), "--keras-child", backend,
                       "--mode", args.mode, "--json", out]
            if args.quick:
                command.append("--quick")
            if args.repeats:
                command += ["--repeats", str(args.repeats)]
            env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{row_name(backend)}: failed\n{done.stderr[-2000:]}")
                continue
            with open(out) as f:
                child = json.load(f)
        ours, base = child[row_name(backend)], child["cvxlayers torch"]
        ours["ratio_to_torch_median"] = ours["median"] / base["median"]
        print(f"{row_name(backend):<28} {fmt_time(ours['median'])} "
              f"{fmt_time(base['median'])}   {ours['ratio_to_torch_median']:>6.2f}x"
              f"  {ours['max_grad_gap']:.1e}")
        rows[row_name(backend)] = ours
    return rows


if __name__ == "__main__":
    main()
