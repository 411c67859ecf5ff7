"""The native batched QP backend against the peers.

1. The cvxpylayers paper's dense QP — n = 128 variables, 128 inequalities, batch 128 —
   forward + backward of <w, x*> with respect to (q, G, h), against cvxpylayers 1.2 (SCS
   through diffcp), proxsuite's ``QPFunction`` and qpth's ``QPFunction``, all in one run,
   and the accuracy of each against Clarabel at tight tolerance.
2. Scaling: batch 1..1024 at n = 10, and n = 10..500 at batch 32, time per element, for
   the QP backend and the diffcp path (SCS), on a dense QP and on a sparse one (a box
   projection), to locate the crossover.
3. Floating-point work per interior-point iteration and the throughput achieved, against
   the machine's dense matrix-multiply throughput measured in the same run.
4. Issue 12's sections (``--only paper|box|sparse``, in ``_qp_issue12.py``): the paper's dense
   QP in the users' form ½‖Lx‖² + qᵀx against proxsuite, Moreau, qpth and cvxpylayers 1.2,
   with x and gradients graded against tight references; the box projection at n = 25..500;
   the paper's sparse QP (n = 1024, batch 32).

The peers are not dependencies. ``benchmarks/run_qp.sh`` makes one venv with all of them
(proxsuite 0.8's wheels now build against NumPy 2; qpth goes in with --no-deps, as its
metadata would pull an old CVXPY and NumPy < 2) and runs every section into
benchmarks/results/*_LABEL.{txt,json}:
    bash benchmarks/run_qp.sh after           # or: python benchmarks/qp.py --quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import cvxpy as cp
import numpy as np
import torch

import _qp_issue12
from _common import environment
from cvxlayers.backends.qp_solver import solve_qp
from cvxlayers.torch import CvxpyLayer, qp

warnings.filterwarnings("ignore")
torch.set_default_dtype(torch.float64)


def dense_qp(rng, n=128, m=128, batch=128):
    """Q = LLᵀ/n + 0.1 I (shared); q, G, h per element; h = G x₀ + s₀ keeps it feasible."""
    L = rng.standard_normal((n, n))
    Q = L @ L.T / n + 0.1 * np.eye(n)
    q = rng.standard_normal((batch, n))
    G = rng.standard_normal((batch, m, n))
    x0 = rng.standard_normal((batch, n))
    h = np.einsum("bmn,bn->bm", G, x0) + rng.uniform(0.1, 1.0, (batch, m))
    return Q, q, G, h


def cvxpy_problem(Q, n, m):
    x = cp.Variable(n)
    q, G, h = cp.Parameter(n), cp.Parameter((m, n)), cp.Parameter(m)
    # quad_form with a constant PSD matrix keeps P = Q; sum_squares(F @ x) would add n
    # auxiliary variables and n equalities (a 2n-by-2n problem for the QP backend).
    problem = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, cp.psd_wrap(Q)) + q @ x),
                         [G @ x <= h])
    return problem, [q, G, h], [x]


def reference(Q, q, G, h):
    """Clarabel through CVXPY at tolerance 1e-12 (1e-10 where 1e-12 fails)."""
    out, relaxed = [], 0
    for i in range(q.shape[0]):
        x = cp.Variable(q.shape[1])
        problem = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, cp.psd_wrap(Q)) + q[i] @ x),
                             [G[i] @ x <= h[i]])
        try:
            problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12,
                          tol_feas=1e-12, max_iter=500)
        except cp.error.SolverError:
            relaxed += 1
            problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10,
                          tol_feas=1e-10)
        out.append(x.value)
    if relaxed:
        print(f"note: the reference used tolerance 1e-10 for {relaxed} element(s)")
    return np.array(out)


def timed(fn, repeats):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), result


def forward_backward(solve, data, w):
    """One forward + backward; returns x* (detached)."""
    q, G, h = (torch.tensor(d, requires_grad=True) for d in data)
    x = solve(q, G, h)
    (x * w).sum().backward()
    return x.detach().numpy()


def contenders(args, Q, n, m):
    Qt = torch.tensor(Q)
    found = {
        "cvxlayers torch.qp": lambda q, G, h: qp(Qt, q, G, h),
    }
    problem, params, variables = cvxpy_problem(Q, n, m)
    layer = CvxpyLayer(problem, params, variables, solver="QP")
    found["cvxlayers CvxpyLayer(solver='QP')"] = lambda q, G, h: layer(q, G, h)[0]
    try:
        from proxsuite.torch.qplayer import QPFunction as ProxQP

        empty = torch.empty(0)
        low = torch.full((m,), -1e20)
        found["proxsuite QPFunction"] = lambda q, G, h: ProxQP(eps=1e-9)(
            Qt, q, empty, empty, G, low, h)[0]
    except ImportError:
        print("note: proxsuite not importable; skipped")
    try:
        from qpth.qp import QPFunction as QpthQP

        empty = torch.empty(0)
        found["qpth QPFunction"] = lambda q, G, h: QpthQP(verbose=-1)(Qt, q, G, h, empty, empty)
    except ImportError:
        print("note: qpth not importable; skipped")
    try:
        from cvxpylayers.torch import CvxpyLayer as PeerLayer

        peer = PeerLayer(problem, params, variables)
        found["cvxpylayers 1.2 (SCS defaults)"] = lambda q, G, h: peer(q, G, h)[0]
    except Exception as exc:  # noqa: BLE001 - e.g. not installed, or a CVXPY it can't use
        print(f"note: cvxpylayers unavailable here ({type(exc).__name__}: {exc}); skipped")
    if args.contenders:
        wanted = [w.strip().lower() for w in args.contenders.split(",")]
        found = {k: v for k, v in found.items() if any(w in k.lower() for w in wanted)}
    return found


def headline(args, rng, record):
    n = m = 128
    batch = 128
    Q, q, G, h = dense_qp(rng, n, m, batch)
    w = torch.tensor(rng.standard_normal((batch, n)))
    x_ref = reference(Q, q, G, h)
    print(f"\n== dense QP: n={n}, m={m} inequalities, batch {batch}; forward + backward ==")
    solvers = contenders(args, Q, n, m)
    repeats = 1 if args.quick else 5
    slow = ("cvxpylayers", "qpth")
    times = {name: [] for name in solvers}
    answers = {}
    for name, solve in solvers.items():  # warm-up (and the answer checked for accuracy)
        answers[name] = forward_backward(solve, (q, G, h), w)
    # Interleaved rounds, so that the machine's drifts hit every contender alike.
    for round_ in range(repeats):
        for name, solve in solvers.items():
            if round_ >= 2 and any(word in name for word in slow):
                continue  # a few seconds per call: two timed calls suffice
            start = time.perf_counter()
            forward_backward(solve, (q, G, h), w)
            times[name].append(time.perf_counter() - start)
    rows = []
    for name in solvers:
        median, best = statistics.median(times[name]), min(times[name])
        error = float(np.abs(answers[name] - x_ref).max())
        rows.append((name, median, best, error))
        print(f"{name:38s} median {median:8.3f} s  min {best:8.3f} s  "
              f"max|x - x_ref| {error:.1e}  ({len(times[name])} timed call(s))")
    ours = rows[0][1]
    for name, median, _, _ in rows[1:]:
        print(f"  {name}: {median / ours:.2f}x the time of {rows[0][0]}")
    record["headline"] = [dict(name=r[0], median_s=r[1], min_s=r[2], max_abs_error=r[3])
                          for r in rows]


def scaling(args, rng, record):
    print("\n== scaling: seconds per element, forward + backward ==")
    batches = [1, 8, 64, 256] if args.quick else [1, 4, 16, 64, 256, 1024]
    sizes = [10, 50, 100] if args.quick else [10, 25, 50, 100, 200, 500]
    results = []

    def measure(kind, n, batch):
        m = n
        if kind == "dense":
            Q, q, G, h = dense_qp(rng, n, m, batch)
            problem, params, variables = cvxpy_problem(Q, n, m)
            values = (q, G, h)
        else:  # sparse: project y onto the box [0, 1]^n
            x, y = cp.Variable(n), cp.Parameter(n)
            problem = cp.Problem(cp.Minimize(cp.sum_squares(x - y)), [x >= 0, x <= 1])
            params, variables, values = [y], [x], (rng.standard_normal((batch, n)),)
        row = dict(kind=kind, n=n, batch=batch)
        for solver, args_ in (("QP", None), ("SCS", {"eps_abs": 1e-6, "eps_rel": 1e-6})):
            layer = CvxpyLayer(problem, params, variables, solver=solver)
            tensors = [torch.tensor(v, requires_grad=True) for v in values]

            def call(layer=layer, tensors=tensors, args_=args_):
                layer(*tensors, solver_args=args_)[0].sum().backward()

            call()
            median, _, _ = timed(call, 1 if batch * n >= 16000 else 3)
            row[solver] = median / batch
        results.append(row)
        print(f"{kind:6s} n={n:4d} batch={batch:5d}: QP {row['QP'] * 1e3:9.3f} ms/elt   "
              f"SCS (diffcp) {row['SCS'] * 1e3:9.3f} ms/elt   SCS/QP {row['SCS'] / row['QP']:6.2f}")

    for batch in batches:
        measure("dense", 10, batch)
    for n in sizes:
        measure("dense", n, 32)
    for n in sizes:
        measure("sparse", n, 32)
    record["scaling"] = results


def flops(args, rng, record):
    """Work per interior-point iteration for each reduction, against the rates this
    machine reaches on the same kernels (batched 128² LU and batched matmul)."""
    n = m = 128
    batch = 128
    Q, q, G, h = dense_qp(rng, n, m, batch)
    data = [torch.tensor(Q), torch.tensor(q), torch.zeros(0, n), torch.zeros(batch, 0),
            torch.tensor(G), torch.tensor(h)]
    A = torch.randn(batch, n, n)
    matmul_median, _, _ = timed(lambda: A @ A, 20)
    peak_matmul = 2 * batch * n ** 3 / matmul_median / 1e9
    K = A @ A.mT / n + torch.eye(n)
    lu_median, _, _ = timed(lambda: torch.linalg.lu_factor(K), 20)
    lu_rate = batch * (2 / 3) * n ** 3 / lu_median / 1e9
    big = torch.randn(2048, 2048)
    big_median, _, _ = timed(lambda: big @ big, 5)
    peak_big = 2 * 2048 ** 3 / big_median / 1e9
    print(f"\n== floating-point work (n=m={n}, batch {batch}, float64, torch on CPU) ==")
    print(f"machine (same run): batched {n}x{n} matmul {peak_matmul:.1f} GFLOP/s, batched "
          f"{n}x{n} LU {lu_rate:.1f} GFLOP/s, 2048x2048 matmul {peak_big:.1f} GFLOP/s")
    record["flops"] = dict(batched_matmul_gflops=peak_matmul, batched_lu_gflops=lu_rate,
                           big_matmul_gflops=peak_big)
    for form in ("dual", "primal"):
        solve = lambda form=form: solve_qp(*data, kkt_form=form)  # noqa: E731
        solve()
        median, _, solution = timed(solve, 3)
        if form == "dual":
            # Once: C P⁻¹ and H = (C P⁻¹) Cᵀ (2mn² each). Per iteration: the LU of H + D
            # ((2/3)m³), two solves with it (4m² each), H y (2m²) and O(m) vector work.
            once = batch * 4 * m * n * n
            per_iteration = batch * ((2 / 3) * m ** 3 + 10 * m * m)
        else:
            # Per iteration: GᵀWG (2mn²), the LU of n×n ((2/3)n³), four triangular-pair
            # solves (8n²), and about twelve products with G or P (≈ 2mn + 2n² each).
            once = 0
            per_iteration = batch * (2 * m * n * n + (2 / 3) * n ** 3 + 8 * n * n
                                     + 12 * (2 * m * n + 2 * n * n))
        # Iterations actually run per element (the batch shrinks as elements finish), plus
        # the start's factorization and the adjoint's (the dual reduction's; the primal
        # keeps its last iterate's).
        per_element = solution.element_iterations / batch + (2 if form == "dual" else 1)
        total = once + per_iteration * per_element
        achieved = total / median / 1e9
        print(f"solve_qp, {form} reduction: {solution.iterations} iterations "
              f"({per_element:.1f} factorizations per element), {median:.3f} s; "
              f"{per_iteration / 1e9:.2f} GFLOP per full-batch iteration (+{once / 1e9:.2f} "
              f"once); achieved {achieved:.1f} GFLOP/s = {achieved / lu_rate:.0%} of the "
              f"batched LU rate, {achieved / peak_matmul:.0%} of the batched matmul rate")
        record["flops"][form] = dict(iterations=solution.iterations,
                                     factorizations_per_element=per_element, seconds=median,
                                     gflop_per_iteration=per_iteration / 1e9,
                                     gflop_once=once / 1e9, achieved_gflops=achieved)


def _commit() -> str:
    """HEAD of the checkout measured, with "+dirty" when its tracked files differ."""
    import subprocess

    def git(*cmd):
        return subprocess.run(["git", *cmd], capture_output=True, text=True,
                              cwd=__file__.rsplit("/", 2)[0] or ".").stdout.strip()

    dirty = git("status", "--short", "-uno", "--", ".", ":!benchmarks/results")
    return git("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else "")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat, fewer sizes")
    parser.add_argument("--only", choices=["headline", "scaling", "flops", "paper", "box", "sparse"])
    parser.add_argument("--json", help="write the raw figures here")
    parser.add_argument("--contenders", help="comma-separated name fragments to run, e.g. "
                        "'cvxlayers,proxsuite' (default: every one importable here)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    gpu = "CUDA available (rows still run on CPU)" if torch.cuda.is_available() else \
        "no GPU: CUDA rows not measured"
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), numpy {np.__version__}, "
          f"cvxlayers at {_commit()}; {gpu}")
    record = {"environment": environment(), "commit": _commit()}
    for part in (headline, scaling, flops, _qp_issue12.paper, _qp_issue12.box,
                 _qp_issue12.sparse):
        if args.only in (None, part.__name__):
            part(args, rng, record)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2, default=str)


if __name__ == "__main__":
    main()
