"""Equilibration's added work on the headline QP (n = m = 128, batch 128, PyTorch CPU), in one
process: the well-scaled check and the judgment on the user's data, against the solve; and the
scaling itself on a copy with every other column multiplied by 1e3. ``--families``: the badly
scaled families (benchmarks/_qp_families.py, which the tests use too; copy it with this script
to run it on a checkout from before equilibration): statuses and error against Clarabel.

    python benchmarks/qp_scaling.py [--families]
"""

import os
import sys
import time
from collections import Counter

import cvxpy as cp
import numpy as np
import torch
from array_api_compat import array_namespace

from cvxlayers.backends.qp_solver import solve_qp

sys.path.insert(0, os.path.dirname(__file__))
from _qp_families import FAMILIES, skewed_qps  # noqa: E402
from qp import dense_qp  # noqa: E402


def best(f, k=5):
    times = []
    for _ in range(k):
        t0 = time.perf_counter()
        result = f()
        times.append(time.perf_counter() - t0)
    return min(times), result


def families():
    seeds = {"fails": 0, "inaccurate": 7}   # as in tests/test_qp_scaling.py
    for name, spec in FAMILIES.items():
        seed = seeds[name]
        P, q, A, b, G, h = data = skewed_qps(seed, **spec)
        reference = []
        for i in range(16):
            x = cp.Variable(q.shape[1])
            cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, cp.psd_wrap(P[i])) + q[i] @ x),
                       [A[i] @ x == b[i], G[i] @ x <= h[i]]).solve(
                solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
            reference.append(x.value)
        reference = np.array(reference)
        for form in ("primal", "dual"):
            try:
                s = solve_qp(*data, kkt_form=form)
            except ValueError as error:
                print(f"{name}, {form}: refused ({str(error)[:60]}...)")
                continue
            err = np.abs(s.x - reference).max(axis=1) / np.abs(reference).max(axis=1)
            optimal = [e for e, st in zip(err, s.statuses) if st == "optimal"]
            print(f"{name}, {form}: {dict(Counter(s.statuses))}; error of those reported "
                  f"optimal ≤ {max(optimal, default=0):.1e}")


def main():
    if "--families" in sys.argv:
        return families()
    from cvxlayers.backends.qp_scaling import equilibrate, judge

    Q, q, G, h = dense_qp(np.random.default_rng(0), 128, 128, 128)
    no_A, no_b = torch.zeros(0, 128, dtype=torch.float64), torch.zeros(128, 0, dtype=torch.float64)
    data = [torch.tensor(Q), torch.tensor(q), no_A, no_b, torch.tensor(G), torch.tensor(h)]
    xp = array_namespace(data[1])
    t_eq, _ = best(lambda: equilibrate(xp, *data))
    for form in ("dual", "primal"):
        t_solve, s = best(lambda form=form: solve_qp(*data, kkt_form=form), 3)
        t_judge, _ = best(lambda s=s: judge(xp, data, s.x, s.nu, s.lam, s.s, 1e-9, 1e3))
        print(f"{form}: solve_qp {t_solve:.3f} s; equilibrate (skipped: well scaled) "
              f"{t_eq * 1e3:.1f} ms + judge on the user's data {t_judge * 1e3:.1f} ms = "
              f"{(t_eq + t_judge) / t_solve:.1%}")
    d = np.where(np.arange(128) % 2, 1e3, 1.0)
    bad = [torch.tensor(d[:, None] * Q * d), torch.tensor(d * q), no_A, no_b,
           torch.tensor(G * d), data[5]]
    t_bad, _ = best(lambda: equilibrate(xp, *bad))
    t_solve, s = best(lambda: solve_qp(*bad, kkt_form="dual"), 3)
    print(f"every other column x1e3: equilibrate {t_bad * 1e3:.1f} ms, solve_qp (dual) "
          f"{t_solve:.3f} s ({t_bad / t_solve:.1%}), statuses {sorted(set(s.statuses))}")


if __name__ == "__main__":
    main()
