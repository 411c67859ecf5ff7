"""Small batches of a small dense QP: where the fixed cost per call decides (issue 12).

A dense QP with n = 10 variables and m = 10 inequalities (``benchmarks/qp.py``'s
``dense_qp``: Q = LLᵀ/n + 0.1 I shared, q, G, h per element), at batch sizes
B = 1, 4, 16, 64, 256; each call is forward + backward of <w, x*> with respect to (q, G, h).
The figure is the median over many calls after warm-up, the contenders interleaved round by
round so that the machine's drifts hit every one alike; every contender's x* is checked
against Clarabel through CVXPY at tolerance 1e-12.

Contenders (each skipped with a note where it is not importable):

* ``cvxlayers torch.qp``: the functional form, ``qp(Q, q, G, h)``;
* ``cvxlayers CvxpyLayer(solver='QP')``: the natural CVXPY formulation,
  ``0.5 * quad_form(x, psd_wrap(Q)) + q @ x`` subject to ``G @ x <= h``;
* ``proxsuite QPFunction`` (eps = 1e-9, as in ``benchmarks/qp.py``);
* ``moreau`` (its native batched torch API, ``moreau.torch.Solver`` with a dense CSR
  pattern, one solver per batch size, device "cpu", its default settings);
* ``qpax`` (``solve_qp_primal`` under ``jax.jit(jax.vmap(...))`` in float64,
  solver_tol = 1e-8; its gradients are those of its relaxed problem, target_kappa = 1e-3).

The peers are not dependencies; install them in a venv of your own::

    python3 -m venv --system-site-packages /tmp/venv-small-peers
    /tmp/venv-small-peers/bin/pip install proxsuite moreau moreau-cpu qpax
    /tmp/venv-small-peers/bin/python benchmarks/qp_small.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from qp import cvxpy_problem, dense_qp, reference  # noqa: E402

from cvxlayers.backends import qp_small  # noqa: E402
from cvxlayers.torch import CvxpyLayer, qp  # noqa: E402

warnings.filterwarnings("ignore")
torch.set_default_dtype(torch.float64)


def torch_call(solve, data, w):
    """Forward + backward with torch tensors; returns x* as NumPy."""
    q, G, h = (torch.tensor(d, requires_grad=True) for d in data)
    x = solve(q, G, h)
    (x * w).sum().backward()
    return x.detach().numpy()


def contenders(Q, n, m, batch):
    """name -> (call(data, w) -> x*, note)."""
    Qt = torch.tensor(Q)
    found = {"cvxlayers torch.qp": lambda d, w: torch_call(lambda q, G, h: qp(Qt, q, G, h), d, w)}
    problem, params, variables = cvxpy_problem(Q, n, m)
    layer = CvxpyLayer(problem, params, variables, solver="QP")
    found["cvxlayers CvxpyLayer(QP)"] = lambda d, w: torch_call(
        lambda q, G, h: layer(q, G, h)[0], d, w)
    try:
        from proxsuite.torch.qplayer import QPFunction as ProxQP

        empty, low = torch.empty(0), torch.full((m,), -1e20)
        found["proxsuite QPFunction"] = lambda d, w: torch_call(
            lambda q, G, h: ProxQP(eps=1e-9)(Qt, q, empty, empty, G, low, h)[0], d, w)
    except ImportError:
        print("note: proxsuite not importable; skipped")
    try:
        import moreau
        from moreau.torch import Solver

        dense_rows = lambda r, c: (torch.arange(0, r * c + 1, c),  # noqa: E731
                                   torch.arange(c).repeat(r))
        P_ro, P_ci = dense_rows(n, n)
        A_ro, A_ci = dense_rows(m, n)
        solver = Solver(n, m, P_ro, P_ci, A_ro, A_ci, moreau.Cones(num_nonneg_cones=m),
                        settings=moreau.Settings(batch_size=batch, device="cpu"))
        P_values = Qt.reshape(-1).expand(batch, -1).contiguous()

        def moreau_solve(q, G, h):
            x = solver.solve(P_values, G.reshape(batch, m * n), q, h).x
            return x.reshape(batch, n)
        found["moreau (native)"] = lambda d, w: torch_call(moreau_solve, d, w)
    except ImportError:
        print("note: moreau not importable; skipped")
    try:
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp
        import qpax

        Qj, A0, b0 = jnp.asarray(Q), jnp.zeros((0, n)), jnp.zeros(0)

        def loss(q, G, h, w):
            x = jax.vmap(lambda q, G, h: qpax.solve_qp_primal(
                Qj, q, A0, b0, G, h, solver_tol=1e-8))(q, G, h)
            return jnp.sum(x * w), x
        grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))

        def qpax_call(d, w):
            grads, x = grad(*(jnp.asarray(v) for v in d), jnp.asarray(w.numpy()))
            jax.block_until_ready(grads)
            return np.asarray(x)
        found["qpax (jit, vmap)"] = qpax_call
    except ImportError:
        print("note: qpax not importable; skipped")
    return found


def breakdown(batches, calls=200):
    """Where our two paths spend a call: CPU time (``time.thread_time``, which a busy
    machine's preemption does not inflate) of the forward and the backward, and within them
    of ``solve_qp`` and ``adjoint_directions``; the best of ``calls`` calls."""
    import cvxlayers.backends.qp_solver as qp_solver

    clock, spent = time.thread_time, {}

    def timed(name):
        inner = getattr(qp_solver, name)

        def wrapper(*args, **kwargs):
            start = clock()
            try:
                return inner(*args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + clock() - start
        return wrapper

    originals = {name: getattr(qp_solver, name) for name in ("solve_qp", "adjoint_directions")}
    for name in originals:
        setattr(qp_solver, name, timed(name))
    try:
        rng, n = np.random.default_rng(0), 10
        for batch in batches:
            Q, q, G, h = dense_qp(rng, n, n, batch)
            Qt = torch.tensor(Q)
            layer = CvxpyLayer(*cvxpy_problem(Q, n, n), solver="QP")
            for label, solve in (("torch.qp", lambda q, G, h: qp(Qt, q, G, h)),
                                 ("CvxpyLayer", lambda q, G, h: layer(q, G, h)[0])):
                best = None
                for _ in range(calls):
                    spent.clear()
                    inputs = [torch.tensor(d, requires_grad=True) for d in (q, G, h)]
                    t0 = clock()
                    x = solve(*inputs)
                    t1 = clock()
                    x.sum().backward()
                    row = (clock() - t0, t1 - t0, spent["solve_qp"],
                           spent["adjoint_directions"])
                    best = row if best is None or row[0] < best[0] else best
                total, forward, solve_time, adjoint = (v * 1e3 for v in best)
                print(f"B={batch:3d} {label:10s} total {total:.3f} ms: forward {forward:.3f} "
                      f"(solve_qp {solve_time:.3f}), backward {total - forward:.3f} "
                      f"(adjoint_directions {adjoint:.3f})")
    finally:
        for name, inner in originals.items():
            setattr(qp_solver, name, inner)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,4,16,64,256")
    parser.add_argument("--repeats", type=int, default=60, help="timed calls at B = 1 "
                        "(fewer for larger B, at least 5)")
    parser.add_argument("--only", help="comma-separated name fragments of the contenders")
    parser.add_argument("--breakdown", action="store_true", help="only the CPU-time split "
                        "of our two paths (forward, backward, solve_qp, adjoint_directions)")
    args = parser.parse_args()
    if args.breakdown:
        breakdown([int(b) for b in args.batches.split(",")])
        return
    n = m = 10
    rng = np.random.default_rng(0)
    # The compiled small-QP path (Numba, the `fast` extra) compiles in a background thread
    # at its first use and the general method serves the calls until then; a training loop
    # runs on the compiled kernels after its first seconds, so they are compiled (and that
    # one-time cost printed) before anything is timed.
    if qp_small.available():
        start = time.perf_counter()
        qp_small.prepare(wait=True)
        print(f"compiled small-QP path: kernels compiled in {time.perf_counter() - start:.1f} s "
              "(once per process; not in the timings)")
    else:
        print("compiled small-QP path: Numba not installed (the general method throughout)")
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"numpy {np.__version__}; dense QP n={n}, m={m}; forward + backward of <w, x*> "
          f"w.r.t. (q, G, h); median ms per call")
    table = {}
    for batch in (int(b) for b in args.batches.split(",")):
        Q, q, G, h = dense_qp(rng, n, m, batch)
        w = torch.tensor(rng.standard_normal((batch, n)))
        x_ref = reference(Q, q, G, h)
        found = contenders(Q, n, m, batch)
        if args.only:
            wanted = [s.strip().lower() for s in args.only.split(",")]
            found = {k: v for k, v in found.items() if any(s in k.lower() for s in wanted)}
        errors = {}
        for name, call in found.items():  # warm-up (jit compiles), and the accuracy check
            for _ in range(3):
                x = call((q, G, h), w)
            errors[name] = float(np.abs(x - x_ref).max())
        repeats = max(5, args.repeats // max(1, batch // 4))
        times = {name: [] for name in found}
        for _ in range(repeats):
            for name, call in found.items():
                start = time.perf_counter()
                call((q, G, h), w)
                times[name].append(time.perf_counter() - start)
        print(f"\nB = {batch} ({repeats} timed calls each)")
        ours = statistics.median(times["cvxlayers torch.qp"]) if "cvxlayers torch.qp" in times \
            else None
        for name in found:
            med = statistics.median(times[name])
            table[(batch, name)] = (med, min(times[name]))
            ratio = f"  {med / ours:5.2f}x torch.qp" if ours else ""
            print(f"  {name:28s} median {med * 1e3:8.3f} ms  min {min(times[name]) * 1e3:8.3f}"
                  f" ms  max|x - x_ref| {errors[name]:.1e}{ratio}")
    # On a busy machine the median mostly measures preemption; the minimum is then the
    # better estimate of each contender's own cost, so both ratios are printed.
    print("\nratios, peer time / ours (> 1: we are faster), from medians | from minima")
    for ours in ("cvxlayers torch.qp", "cvxlayers CvxpyLayer(QP)"):
        for batch in sorted({b for b, _ in table}):
            if (batch, ours) not in table:
                continue
            mine = table[(batch, ours)]
            peers = [(k, v) for (b, k), v in table.items() if b == batch and "cvxlayers" not in k]
            cells = ", ".join(f"{k.split()[0]} {v[0] / mine[0]:.2f} | {v[1] / mine[1]:.2f}"
                              for k, v in peers)
            print(f"  {ours:26s} B={batch:4d}: {cells}")


if __name__ == "__main__":
    main()
