"""The derivative of a quadratic cone program's solution, through its residual map.

SCS and Clarabel solve cone programs with a quadratic objective,

    minimize ½xᵀPx + cᵀx  subject to  Ax + s = b,  s ∈ K,

which is how a layer compiles ``cp.quad_form(x, P)`` with a parameter P (no linear-objective
cone form is affine in P). diffcp 1.1.9 solves these but differentiates them only in its
LPGD modes (finite differences of perturbed re-solves); this module gives the exact
derivative of the solution map, computed with diffcp's cone projections.

**Residual map.** With v = y − s, Moreau's decomposition gives y = Π(v) ∈ K* and
s = Π(v) − v = Π_K(−v) ∈ K, orthogonal (Π is the projection onto K*). The KKT conditions
Px + Aᵀy + c = 0, Ax + s = b are then R(x, v; θ) = 0 with

    R = ⎡ Px + AᵀΠ(v) + c ⎤          J = ∂R/∂(x, v) = ⎡ P   Aᵀ D  ⎤,   D = DΠ(v)
        ⎣ Ax + Π(v) − v − b ⎦,                          ⎣ A   D − I ⎦

(D is symmetric: Π is the gradient of a convex function). Perturbing the data,
∂R/∂θ · dθ = (dP x + dAᵀy + dc, dA x − db), so J (dx, dv) = −∂R/∂θ · dθ and dy = D dv.

**Adjoint.** For gradients (g_x, g_y) of (x, y), solve Jᵀ r = (g_x, D g_y) for r = (r_x, r_v):

    ∇c = −r_x,   ∇b = r_v,   ∇A = −(y r_xᵀ + r_v xᵀ),   ∇P = −½(r_x xᵀ + x r_xᵀ),

∇P symmetrized, as P's data are (see :func:`cvxlayers.parameter_map._symmetrized`). With
P = 0 this is the derivative diffcp computes through the self-dual embedding, written at
w = 1; the solution map is the same function, so the two agree where it is differentiable.
The solve is dense (LU, least squares where J is singular) in mode ``"dense"``, and LSQR or
LSMR on J's operator in modes ``"lsqr"`` and ``"lsmr"``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

#: Derivative modes for quadratic cone programs (diffcp's LPGD modes are not among them).
MODES = ("dense", "lsqr", "lsmr")
#: A QP's J up to this many rows is solved densely in the iterative modes too: the minimum-
#: norm least-squares solution they converge to, without SciPy's per-call set-up (the
#: 5-variable ReLU layer: 1.0 ms a call with the sparse J and LSQR).
_DENSE_ROWS = 100


def differentiates(options: dict) -> bool:
    """Whether a call with the solver ``options`` (its ``mode``, default ``"lsqr"``, and
    ``derivative_kwargs``) is differentiated here when P is kept."""
    return options.get("mode", "lsqr") in MODES and options.get("derivative_kwargs") is None


@dataclass
class Linearization:
    """What the derivative and its adjoint need from one solved element."""

    P: sp.csc_matrix
    A: sp.csc_matrix
    D: object            # DΠ(v): dense (dense mode) or diffcp's LinearOperator
    J: object            # dense J (dense mode) or None
    x: np.ndarray
    y: np.ndarray


class ConeQPPlan:
    """A quadratic cone program's structure, for one layer: where A, b, c and P sit in a
    data row ``d = [A values (CSC order); b; c; P values (CSC order, full symmetric)]``.

    Args:
        layout: the layer's :class:`~cvxlayers.parameter_map.ConeDataLayout`, with P.
    """

    def __init__(self, layout):
        from diffcp.cones import parse_cone_dict, parse_cone_dict_cpp

        self.layout = layout
        self.n, self.m, self.nnz = layout.n, layout.m, layout.nnz
        self.a_rows, self.a_cols = layout.entries("A")
        self.p_rows, self.p_cols = layout.entries("P")
        self.upper = self.p_rows <= self.p_cols   # SCS and Clarabel read P's upper triangle
        upper_cols = self.p_cols[self.upper]
        self.upper_indptr = np.concatenate(
            [[0], np.cumsum(np.bincount(upper_cols, minlength=self.n))]).astype(np.int32)
        self.cones = parse_cone_dict(layout.cone_dict)
        self.cones_cpp = parse_cone_dict_cpp(self.cones)
        # Zero and nonnegative cones only (a QP): DΠ is diagonal, D = diag(1 on the zero
        # cone's rows (Π onto its dual cone, all of ℝ, is the identity), [v > 0] on the rest).
        self.diagonal = not any(size for key, size in layout.cone_dict.items()
                                if key not in ("z", "l"))
        self.n_zero = layout.cone_dict.get("z", 0)

    def split(self, row: np.ndarray):
        """(A, b, c, P) of one data row, A and P as fresh CSC matrices (full P)."""
        a_values, b, c, p_values = self.layout.split(row)
        P = sp.csc_matrix((p_values, self.layout.p_indices.copy(), self.layout.p_indptr.copy()),
                          shape=(self.n, self.n))
        return self.layout.matrix(a_values.copy()), b.copy(), c.copy(), P

    def solver_P(self, row: np.ndarray) -> sp.csc_matrix:
        """P's upper triangle, as SCS and Clarabel take it."""
        p_values = self.layout.split(row)[3]
        return sp.csc_matrix((p_values[self.upper], self.p_rows[self.upper].astype(np.int32),
                              self.upper_indptr.copy()), shape=(self.n, self.n))

    def linearize(self, row: np.ndarray, x, y, s, mode: str) -> Linearization:
        """J (or its pieces) at the solution (x, y, s) of the program with data ``row``."""
        from diffcp import _diffcp

        A, _, _, P = self.split(row)
        v = y - s
        if mode == "dense":
            D = _diffcp.dprojection_dense(v, self.cones_cpp, True)
            J = np.block([[P.toarray(), A.T.toarray() @ D],
                          [A.toarray(), D - np.eye(self.m)]])
            return Linearization(P, A, D, J, x, y)
        if self.diagonal:
            D = np.concatenate([np.ones(self.n_zero), (v[self.n_zero:] > 0).astype(float)])
            if self.n + self.m <= _DENSE_ROWS:   # a small J: dense least squares, no SciPy
                A, P = A.toarray(), P.toarray()  # sparse set-up cost ~0.5 ms a call here
                J = np.block([[P, A.T * D], [A, np.diag(D - 1.0)]])
            else:   # J as one sparse matrix: LSQR's products in C, not Python
                J = sp.bmat([[P, A.T @ sp.diags(D)], [A, sp.diags(D - 1.0)]], format="csr")
            return Linearization(P, A, D, J, x, y)
        return Linearization(P, A, _diffcp.dprojection(v, self.cones_cpp, True), None, x, y)

    # --- the derivative (for tests) and its adjoint --------------------------------------

    def derivative(self, lin: Linearization, d_row: np.ndarray, mode: str = "dense"):
        """(dx, dy) for a perturbation ``d_row`` of the data row: J (dx, dv) = −∂R/∂θ·dθ."""
        dA, db, dc, dP = self.split(d_row)
        rhs = -np.concatenate([dP @ lin.x + dA.T @ lin.y + dc, dA @ lin.x - db])
        dz = self._solve(lin, rhs, transpose=False, mode=mode)
        return dz[:self.n], _apply(lin.D, dz[self.n:])

    def adjoint(self, lin: Linearization, dx: np.ndarray, dy: np.ndarray,
                mode: str) -> np.ndarray:
        """The data row [∇A values (CSC order); ∇b; ∇c; ∇P values] for gradients (dx, dy)."""
        n = self.n
        out = np.zeros(self.layout.size)
        g = np.concatenate([dx, _apply(lin.D, dy)])
        if not g.any():
            return out
        r = self._solve(lin, g, transpose=True, mode=mode)
        self.data_row(lin.x, lin.y, r[:n], r[n:], out)
        return out

    def data_row(self, x, y, r_x, r_v, out) -> None:
        """Writes [∇A values; ∇b; ∇c; ∇P values] (the module docstring's adjoint formulas)
        for the solution (x, y) and adjoint directions (r_x, r_v) into ``out``."""
        n, m, nnz = self.n, self.m, self.nnz
        out[:nnz] = -(y[self.a_rows] * r_x[self.a_cols] + r_v[self.a_rows] * x[self.a_cols])
        out[nnz:nnz + m] = r_v
        out[nnz + m:nnz + m + n] = -r_x
        out[nnz + m + n:] = -0.5 * (r_x[self.p_rows] * x[self.p_cols]
                                    + x[self.p_rows] * r_x[self.p_cols])

    def _solve(self, lin: Linearization, rhs: np.ndarray, transpose: bool, mode: str):
        """J⁻¹ rhs or J⁻ᵀ rhs: LU, or least squares where J is singular (dense); LSQR/LSMR."""
        if mode == "dense":
            J = lin.J.T if transpose else lin.J
            try:
                return np.linalg.solve(J, rhs)
            except np.linalg.LinAlgError:
                return np.linalg.lstsq(J, rhs, rcond=None)[0]
        from scipy.sparse.linalg import LinearOperator, aslinearoperator

        n, m = self.n, self.m
        P, A, D = lin.P, lin.A, lin.D
        if isinstance(lin.J, np.ndarray):   # a small QP's J (see linearize): the least-
            J = lin.J.T if transpose else lin.J  # squares solution LSQR converges to
            return np.linalg.lstsq(J, rhs, rcond=None)[0]
        if lin.J is not None:   # the sparse J of a QP (see linearize)
            operator = aslinearoperator(lin.J.T if transpose else lin.J)
            return _iterative(operator, rhs, mode, n + m)

        def J_mv(z):   # J (z_x, z_v) = (P z_x + Aᵀ D z_v, A z_x + D z_v − z_v)
            Dv = _apply(D, z[n:])
            return np.concatenate([P @ z[:n] + A.T @ Dv, A @ z[:n] + Dv - z[n:]])

        def JT_mv(z):  # Jᵀ (z_x, z_v) = (P z_x + Aᵀ z_v, D (A z_x + z_v) − z_v)
            return np.concatenate([P @ z[:n] + A.T @ z[n:],
                                   _apply(D, A @ z[:n] + z[n:]) - z[n:]])

        forward, backward = (JT_mv, J_mv) if transpose else (J_mv, JT_mv)
        operator = LinearOperator((n + m, n + m), matvec=forward, rmatvec=backward,
                                  dtype=float)
        return _iterative(operator, rhs, mode, n + m)


def _iterative(operator, rhs, mode: str, size: int) -> np.ndarray:
    """LSQR's or LSMR's least-squares solution of ``operator @ z = rhs``."""
    from scipy.sparse.linalg import lsmr, lsqr

    if mode == "lsqr":
        return lsqr(operator, rhs, atol=1e-12, btol=1e-12, iter_lim=20 * size)[0]
    return lsmr(operator, rhs, atol=1e-12, btol=1e-12, maxiter=20 * size)[0]


def _apply(D, v: np.ndarray) -> np.ndarray:
    """D v for a dense D, a diagonal one (its vector) or diffcp's LinearOperator."""
    if isinstance(D, np.ndarray):
        return D * v if D.ndim == 1 else D @ v
    return D.matvec(v)
