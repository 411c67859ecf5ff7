"""Tight references for the QP benchmarks: Clarabel's solution and the active set's gradient.

For one element of the dense QP

    x* = argmin_x ½ xᵀQx + qᵀx   subject to  Gx ≤ h,

Clarabel (through CVXPY, tolerance 1e-12) gives x*, the multipliers λ ≥ 0 and the slacks
s = h − Gx* ≥ 0. Where the active set 𝒜 = {j : λ_j > s_j} is non-degenerate (strict
complementarity with a margin, G_𝒜 of full row rank), x* is locally the solution of the
equality-constrained QP on 𝒜, whose KKT system

    K [x; λ_𝒜] = [−q; h_𝒜],    K = [[Q, G_𝒜ᵀ], [G_𝒜, 0]],

is smooth in (q, G, h). For the loss ℓ = ⟨w, x*⟩, with u = K⁻¹ [w; 0] (K is symmetric),
ℓ = uᵀ[−q; h_𝒜], hence

    ∂ℓ/∂q = −u_x,   ∂ℓ/∂h_𝒜 = u_λ,   ∂ℓ/∂G_𝒜 = −(λ_𝒜 u_xᵀ + u_λ x*ᵀ),

and zero on the inactive rows of G and h. These are exact up to Clarabel's accuracy; an
interior-point layer's implicit gradient converges to them as its barrier parameter → 0.
On degenerate elements the formula gives one of the one-sided derivatives.

Not part of the package; imported by benchmarks/qp.py (and tested by
tests/test_benchmark_reference.py).
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np

#: Clarabel's settings for the references (relaxed to 1e-10 where 1e-12 fails).
TIGHT = dict(tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12, max_iter=500)
RELAXED = dict(tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10, max_iter=500)

#: An element counts as non-degenerate when every constraint has max(λ_j, s_j) above this
#: margin (strict complementarity) and G_𝒜 has full row rank.
MARGIN = 1e-6


def _solve_tight(problem: cp.Problem) -> bool:
    """Solves with Clarabel at 1e-12; returns True where it had to relax to 1e-10."""
    try:
        problem.solve(solver=cp.CLARABEL, **TIGHT)
        if problem.status == cp.OPTIMAL:
            return False
    except cp.error.SolverError:
        pass
    problem.solve(solver=cp.CLARABEL, **RELAXED)
    return True


def clarabel_qp(Q, q, G, h, A=None, b=None):
    """Per-element Clarabel solutions of ½xᵀQx + qᵀx s.t. Gx ≤ h (, Ax = b).

    Args:
        Q: (n, n), shared. q: (B, n). G: (m, n) shared or (B, m, n). h: (B, m).
        A: (p, n) shared, or None. b: (B, p), or None.

    Returns:
        x (B, n), λ (B, m) (the multipliers of Gx ≤ h), and the number of elements solved at
        the relaxed tolerance.
    """
    batch, n = q.shape
    xs, lams, relaxed = [], [], 0
    for i in range(batch):
        x = cp.Variable(n)
        Gi = G if G.ndim == 2 else G[i]
        constraints = [Gi @ x <= h[i]]
        if A is not None:
            constraints.append(A @ x == b[i])
        problem = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, cp.psd_wrap(Q)) + q[i] @ x),
                             constraints)
        relaxed += _solve_tight(problem)
        xs.append(x.value)
        lams.append(constraints[0].dual_value)
    return np.array(xs), np.array(lams), relaxed


def active_set_gradient(Q, q, G, h, x, lam, w, margin=MARGIN):
    """Exact gradients of ⟨w, x*⟩ in (q, G, h) from the active set, per element.

    Args:
        Q: (n, n). q: (B, n). G: (B, m, n). h: (B, m). x: (B, n) and lam: (B, m), a tight
        solution and its multipliers. w: (B, n), the loss weights.
        margin: see :data:`MARGIN`.

    Returns:
        dq (B, n), dG (B, m, n), dh (B, m), and a (B,) boolean array: True where the active
        set is non-degenerate.
    """
    batch, m, n = G.shape
    dq, dG, dh = np.zeros_like(q), np.zeros_like(G), np.zeros_like(h)
    regular = np.zeros(batch, dtype=bool)
    for i in range(batch):
        slack = h[i] - G[i] @ x[i]
        active = lam[i] > slack
        Ga = G[i][active]
        k = Ga.shape[0]
        K = np.block([[Q, Ga.T], [Ga, np.zeros((k, k))]])
        u = np.linalg.solve(K, np.concatenate([w[i], np.zeros(k)]))
        ux, ul = u[:n], u[n:]
        dq[i] = -ux
        dh[i][active] = ul
        dG[i][active] = -(np.outer(lam[i][active], ux) + np.outer(ul, x[i]))
        complementary = np.maximum(lam[i], slack).min() > margin
        regular[i] = complementary and (k == 0 or np.linalg.matrix_rank(Ga) == k)
    return dq, dG, dh, regular
