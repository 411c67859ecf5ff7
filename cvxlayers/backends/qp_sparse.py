"""The QP backend's sparse path: one element at a time, with sparse LDLᵀ factorizations.

The batched interior point factors dense matrices, (2/3)N³ flops per element and
iteration however sparse the problem; a box projection with n = 500 then costs 40x what
SCS's sparse factorization does. For large, sparse QPs the backend instead solves each
element with Clarabel's sparse interior point (P passed as it is), polishes the solution
by a sparse active-set solve (as :mod:`~cvxlayers.backends.qp_polish` does for the dense
path), and differentiates it with the same factorization. The elements run in the layer's
thread pool.

**Polish.** In SCS form the equality rows are A_eq x = b_eq and the inequality rows
G x ≤ h, with duals ν, λ and slacks s. With the active-set guess d = [λ > s] (the
inequalities only; equalities are always "active"), write C = [A_eq; G] and
D = diag(1, …, 1, d). One sparse factorization of the symmetric matrix

    K = ⎡ P     (DC)ᵀ  ⎤
        ⎣ DC   −(I − D) ⎦       (an inactive row reads −y_i = 0)

gives (x, y) = K⁻¹(−c, D b): exact stationarity, equalities and complementarity. It is
accepted when s = h − Gx ≥ 0 and λ ≥ 0 (to the tolerance); else the guess is corrected
(rows with λ < 0 leave, rows with s < 0 enter), twice at most, and failing that Clarabel's
point is kept, with d from it.

**Derivative.** At that point every inequality has λ_i = 0 or s_i = 0, and the transposed
KKT system of the backward pass, in v = Λw_λ (see :mod:`~cvxlayers.backends.qp_solver`), is
K itself: K (w_x, w_y) = (g_x, D g_y), and

    ∇c = −w_x,  ∇b = w_y,  ∇A = −(y w_xᵀ + w_y xᵀ),  ∇P = −½(w_x xᵀ + x w_xᵀ).

This is the derivative of the KKT residual map with D = DΠ(y − s) (cone_qp's), written
symmetric, and the data row is formed by cone_qp's own ``ConeQPPlan.data_row``. K is quasi-definite once regularized (+δ on P, −δ on the rest), so QDLDL's
LDLᵀ (the factorization OSQP uses) factors it without pivoting, 10x faster than SuperLU's
LU of the unsymmetric form on the cvxpylayers paper's sparse QP; iterative refinement
against K removes δ's bias.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from cvxlayers.backends.diffcp_backend import ClarabelBackend

_ATTEMPTS = 3
_REFINEMENTS = 3
_REGULARIZATION = 1e-10   # δ relative to K's largest entry


class SparseQPPath(ClarabelBackend):
    """Clarabel, then the polish and derivative of the module docstring."""

    polish_tol = 1e-9

    def _finish(self, result, row, plan, mode, planned):
        from cvxlayers import status as st

        status = st.normalize_status(result["info"]["status"])
        if status not in st.USABLE:
            return None, status, f"{self.name} status '{result['info']['status']}'"
        try:
            system = ActiveSetSystem(plan, row, result["x"], result["y"], result["s"],
                                     self.polish_tol)
        except Exception as exc:  # noqa: BLE001 - e.g. a non-finite solution
            return None, st.FAILED, f"derivative: {type(exc).__name__}: {exc}"
        from cvxlayers.backends.diffcp_backend import _iterations

        adjoint = system.adjoint if planned else None
        return (system.x, system.y, system.s, _iterations(result), adjoint), status, ""


class ActiveSetSystem:
    """One element's polished solution (x, y) and the factorization of K."""

    def __init__(self, plan, row, x, y, s, tol):
        self.plan = plan
        A, b, c, P = plan.split(row)
        self.a_values, self.p_values = A.data, plan.layout.split(row)[3]
        n_eq = plan.layout.cone_dict.get("z", 0)
        self.n, self.m = P.shape[0], A.shape[0]
        C = A.tocsr()
        scale_primal = 1.0 + np.abs(b).max(initial=0.0)
        scale_dual = 1.0 + np.abs(c).max(initial=0.0)
        active = np.concatenate([np.ones(n_eq, dtype=bool), y[n_eq:] > s[n_eq:]])
        first = None
        for _ in range(_ATTEMPTS):
            self._factor(P, C, active)
            rhs = np.concatenate([-c, np.where(active, b, 0.0)])
            u = self.solve(rhs)
            if first is None:   # Clarabel's own active set: the fallback's factorization
                first = (self.factor, self.d)
            if not (np.all(np.isfinite(u)) and np.abs(self.apply(u) - rhs).max()
                    <= 1e-8 * (1.0 + np.abs(rhs).max())):
                break   # K singular (a dependent active set): no guess will do
            x_t, y_t = u[:self.n], np.where(active, u[self.n:], 0.0)
            slack = np.where(active, 0.0, b - C @ x_t)
            if (slack.min(initial=0.0) >= -tol * scale_primal
                    and y_t[n_eq:].min(initial=0.0) >= -tol * scale_dual):
                self.x, self.y = x_t, np.concatenate([y_t[:n_eq], np.clip(y_t[n_eq:], 0, None)])
                self.s = np.clip(slack, 0.0, None)
                return
            active = active & np.concatenate([np.ones(n_eq, dtype=bool), y_t[n_eq:] >= 0])
            active |= np.concatenate([np.zeros(n_eq, dtype=bool), slack[n_eq:] < 0])
        # No feasible guess (a degenerate vertex): Clarabel's point, differentiated with
        # the active set it shows.
        self.factor, self.d = first
        self.x, self.y, self.s = x, y, s

    def _factor(self, P, C, active):
        """Factors K (its upper triangle, regularized, for QDLDL); K itself is applied as
        an operator in the refinement. K's structure is the layout's, planned once
        (:class:`_UpperStructure`); only its values are written here."""
        import qdldl

        self.d = active.astype(float)
        self.P, self.C = P, C
        self.factor = qdldl.Solver(_UpperStructure.of(self.plan).matrix(
            self.p_values, self.a_values, self.d), upper=True)

    def apply(self, u):
        """K u = (P u_x + Cᵀ(d∘u_y), d∘(C u_x) − (1 − d)∘u_y)."""
        u_x, u_y = u[:self.n], u[self.n:]
        return np.concatenate([self.P @ u_x + self.C.T @ (self.d * u_y),
                               self.d * (self.C @ u_x) - (1.0 - self.d) * u_y])

    def solve(self, rhs):
        """K⁻¹ rhs, refined against K (removing the regularization's bias)."""
        u = self.factor.solve(rhs)
        for _ in range(_REFINEMENTS):
            u = u + self.factor.solve(rhs - self.apply(u))
        return u

    def adjoint(self, dx, dy):
        """The data row [∇A values (CSC order); ∇b; ∇c; ∇P values] for gradients (dx, dy)."""
        plan, n = self.plan, self.n
        out = np.zeros(plan.layout.size)
        if not (dx.any() or dy.any()):
            return out
        w = self.solve(np.concatenate([dx, self.d * dy]))
        plan.data_row(self.x, self.y, w[:n], self.d * w[n:], out)
        return out


class _UpperStructure:
    """The upper triangle of K = [[P + δI, (DC)ᵀ], [DC, −(I − D) − δI]] as a fixed CSC
    structure for a layout (D's zeros kept as explicit zeros), with the map from the data's
    values (P's and A's, in their data order) to its entries: building K per element is
    then one weighted bincount instead of a handful of SciPy constructions."""

    def __init__(self, plan):
        n, m = plan.n, plan.m
        N = n + m
        upper = plan.p_rows <= plan.p_cols
        self.p_upper = np.flatnonzero(upper)
        rows = np.concatenate([plan.p_rows[upper], np.arange(n), plan.a_cols, n + np.arange(m)])
        cols = np.concatenate([plan.p_cols[upper], np.arange(n), n + plan.a_rows,
                               n + np.arange(m)])
        unique, self.position = np.unique(cols.astype(np.int64) * N + rows, return_inverse=True)
        self.indices = (unique % N).astype(np.int32)
        self.indptr = np.concatenate(
            [[0], np.cumsum(np.bincount(unique // N, minlength=N))]).astype(np.int32)
        self.n, self.m, self.a_rows, self.size = n, m, plan.a_rows, unique.size

    @classmethod
    def of(cls, plan) -> _UpperStructure:
        structure = plan.__dict__.get("_qdldl_upper")
        if structure is None:
            structure = plan.__dict__["_qdldl_upper"] = cls(plan)
        return structure

    def matrix(self, p_values, a_values, d) -> sp.csc_matrix:
        scale = 1.0 + max(np.abs(p_values).max(initial=0.0), np.abs(a_values).max(initial=0.0))
        delta = _REGULARIZATION * scale
        weights = np.concatenate([p_values[self.p_upper], np.full(self.n, delta),
                                  d[self.a_rows] * a_values, -(1.0 - d) - delta])
        data = np.bincount(self.position, weights=weights, minlength=self.size)
        return sp.csc_matrix((data, self.indices, self.indptr),
                             shape=(self.n + self.m, self.n + self.m))
