"""The shared problem zoo: one small DPP problem per cone family and feature.

Each entry builds a fresh CVXPY problem and returns a :class:`Case`: the problem, its
parameters and requested outputs, a generator of valid parameter values, and the
solvers that support it. Every adapter and backend is checked against the same cases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cvxpy as cp
import numpy as np


@dataclass
class Case:
    name: str
    problem: cp.Problem
    parameters: list
    variables: list
    sample: Callable  # (rng, batch or None) -> list of arrays
    solvers: tuple = ("SCS", "ECOS", "CLARABEL")
    gp: bool = False
    # Which entries of `sample` are batched (None = all).
    broadcast: tuple | None = None


def _batched(draw, batch):
    """Stacks `batch` draws, or returns one draw when batch is None."""
    if batch is None:
        return draw()
    return np.stack([draw() for _ in range(batch)])


def lp():
    n, m = 4, 6
    x = cp.Variable(n)
    c, G, h = cp.Parameter(n), cp.Parameter((m, n)), cp.Parameter(m)
    # A box keeps the LP bounded; the entropy-free LP solution is a vertex, so we add a
    # small quadratic term in `qp`; here the LP is well-posed with a unique vertex a.s.
    problem = cp.Problem(cp.Minimize(c @ x), [G @ x <= h, x >= -1, x <= 1])

    def sample(rng, batch):
        return [_batched(lambda: rng.standard_normal(n), batch),
                _batched(lambda: rng.standard_normal((m, n)), batch),
                _batched(lambda: rng.uniform(1, 2, m), batch)]

    return Case("lp", problem, [c, G, h], [x], sample)


def qp():
    n, m, p = 5, 4, 2
    x = cp.Variable(n)
    L, q = cp.Parameter((n, n)), cp.Parameter(n)
    G, h = cp.Parameter((m, n)), cp.Parameter(m)
    A, b = cp.Parameter((p, n)), cp.Parameter(p)
    cons = [G @ x <= h, A @ x == b]
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(L @ x) + q @ x), cons)

    def sample(rng, batch):
        return [_batched(lambda: np.eye(n) + 0.2 * rng.standard_normal((n, n)), batch),
                _batched(lambda: rng.standard_normal(n), batch),
                _batched(lambda: rng.standard_normal((m, n)), batch),
                _batched(lambda: rng.uniform(0.5, 1.5, m), batch),
                _batched(lambda: rng.standard_normal((p, n)), batch),
                _batched(lambda: 0.1 * rng.standard_normal(p), batch)]

    return Case("qp", problem, [L, q, G, h, A, b], [x], sample)


def socp():
    n, m = 4, 6
    x = cp.Variable(n)
    A, b, lam = cp.Parameter((m, n)), cp.Parameter(m), cp.Parameter(nonneg=True)
    problem = cp.Problem(cp.Minimize(cp.norm(A @ x - b, 2) + lam * cp.sum_squares(x)),
                         [cp.norm(x, 2) <= 2])

    def sample(rng, batch):
        return [_batched(lambda: rng.standard_normal((m, n)), batch),
                _batched(lambda: rng.standard_normal(m), batch),
                _batched(lambda: np.array(rng.uniform(0.1, 1.0)), batch)]

    return Case("socp", problem, [A, b, lam], [x], sample)


def exponential():
    """Entropy-regularized linear objective on the simplex (a softmax)."""
    n = 4
    x = cp.Variable(n)
    z = cp.Parameter(n)
    problem = cp.Problem(cp.Minimize(-z @ x - cp.sum(cp.entr(x))), [cp.sum(x) == 1])

    def sample(rng, batch):
        return [_batched(lambda: rng.standard_normal(n), batch)]

    return Case("exp", problem, [z], [x], sample)


def sdp():
    """Nearest correlation-like matrix: PSD variable, symmetric parameter."""
    n = 3
    X = cp.Variable((n, n), symmetric=True)
    C = cp.Parameter((n, n), symmetric=True)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(X - C)), [X >> 0, cp.diag(X) == 1])

    def draw(rng):
        M = rng.standard_normal((n, n))
        return (M + M.T) / 2

    def sample(rng, batch):
        return [_batched(lambda: draw(rng), batch)]

    return Case("sdp", problem, [C], [X], sample, solvers=("SCS", "CLARABEL"))


def power():
    """Power atoms (compiled to second-order cones): x^1.5 penalty and a geometric mean."""
    n = 3
    x = cp.Variable(n, nonneg=True)
    a = cp.Parameter(n)
    problem = cp.Problem(cp.Minimize(cp.sum(cp.power(x, 1.5)) - a @ x),
                         [cp.geo_mean(x) >= 0.1, cp.sum(x) <= 3])

    def sample(rng, batch):
        return [_batched(lambda: rng.uniform(0.5, 1.5, n), batch)]

    return Case("power", problem, [a], [x], sample)


def dgp():
    """A geometric program: maximize a box's volume under area constraints."""
    h, w, d = (cp.Variable(pos=True) for _ in range(3))
    A_wall, A_floor = cp.Parameter(pos=True), cp.Parameter(pos=True)
    alpha = cp.Parameter(pos=True)
    problem = cp.Problem(cp.Maximize(h * w * d),
                         [2 * (h * w + h * d) <= A_wall, w * d <= A_floor, h / w >= alpha,
                          h / w <= 2.0])

    def sample(rng, batch):
        return [_batched(lambda: np.array(rng.uniform(80, 120)), batch),
                _batched(lambda: np.array(rng.uniform(8, 12)), batch),
                _batched(lambda: np.array(rng.uniform(0.5, 0.9)), batch)]

    return Case("dgp", problem, [A_wall, A_floor, alpha], [h, w, d], sample,
                solvers=("SCS", "ECOS", "CLARABEL"), gp=True)


def duals():
    """Duals as outputs, alongside the primal (several outputs)."""
    n, m = 4, 3
    x = cp.Variable(n)
    y, G, h = cp.Parameter(n), cp.Parameter((m, n)), cp.Parameter(m)
    cons = [G @ x <= h, cp.sum(x) == 1]
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - y)), cons)

    def sample(rng, batch):
        return [_batched(lambda: rng.standard_normal(n), batch),
                _batched(lambda: rng.standard_normal((m, n)), batch),
                _batched(lambda: rng.uniform(0.0, 0.3, m), batch)]

    return Case("duals", problem, [y, G, h],
                [x, cons[0].dual_variables[0], cons[1].dual_variables[0]], sample)


def broadcast():
    """A shared (unbatched) matrix with batched right-hand sides."""
    n, m = 3, 5
    x = cp.Variable(n)
    A, b = cp.Parameter((m, n)), cp.Parameter(m)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b) + 0.1 * cp.norm1(x)), [x >= -1])

    def sample(rng, batch):
        return [rng.standard_normal((m, n)),
                _batched(lambda: rng.standard_normal(m), batch)]

    return Case("broadcast", problem, [A, b], [x], sample, broadcast=(False, True))


def psd_parameter():
    """A PSD (symmetric) parameter: checked, lowered to its upper triangle, differentiated."""
    n = 3
    x = cp.Variable(n)
    P = cp.Parameter((n, n), PSD=True)
    q = cp.Parameter(n)
    # P enters the linear term (P 1)ᵀx, so the solution depends on every entry of P.
    problem = cp.Problem(cp.Minimize((P @ np.ones(n)) @ x + q @ x + cp.sum_squares(x)),
                         [x >= -1, x <= 1])

    def draw(rng):
        M = rng.standard_normal((n, n))
        return M @ M.T / n

    def sample(rng, batch):
        return [_batched(lambda: draw(rng), batch),
                _batched(lambda: rng.standard_normal(n), batch)]

    return Case("psd_param", problem, [P, q], [x], sample)


ZOO = {f.__name__: f for f in (lp, qp, socp, exponential, sdp, power, dgp, duals,
                               broadcast, psd_parameter)}

# Solver options tight enough for finite-difference checks.
TIGHT = {"SCS": {"eps_abs": 1e-10, "eps_rel": 1e-10, "max_iters": 200_000},
         "ECOS": {"abstol": 1e-9, "reltol": 1e-9, "feastol": 1e-9},
         "CLARABEL": {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10}}


def reference_solution(case: Case, values, index=None):
    """CVXPY's own solve of one element (Clarabel, tight), as a list of output values."""
    for param, value, batched in zip(case.parameters, values,
                                     case.broadcast or (True,) * len(values)):
        param.value = value[index] if (index is not None and batched) else value
    case.problem.solve(solver=cp.CLARABEL, gp=case.gp, tol_gap_abs=1e-10, tol_gap_rel=1e-10,
                       tol_feas=1e-10)
    return [np.asarray(v.value, dtype=float) for v in case.variables]
