"""The derivative of a cone program's solution through its homogeneous self-dual embedding,
with everything that depends only on the layer's sparsity precomputed.

For  minimize cᵀx  s.t.  Ax + s = b, s ∈ K  with solution (x, y, s), let
z = (u, v, w) = (x, y − s, 1) and Q the skew-symmetric embedding matrix

        ⎡  0    Aᵀ   c ⎤
    Q = ⎢ −A    0    b ⎥ .
        ⎣ −cᵀ  −bᵀ   0 ⎦

With Π the projection onto ℝⁿ × K* × ℝ₊ and M = ((Q − I) DΠ(z) + I) / w, the adjoint of the
solution map (Agrawal et al. 2019, *Differentiating through a cone program*, §3) is, for
incoming gradients (dx, dy) and ds = 0,

    dw = −(xᵀdx + yᵀdy),   dz = (dx, DΠ_K*(v)ᵀ dy, dw),   r = M⁻ᵀ dz,
    dA_ij = π(z)_j r_{n+i} − π(z)_{n+i} r_j,   db = π(z)_b r_N − r_b,   dc = π(z)_x r_N − r_x.

M is singular: the residual map z ↦ ((Q − I)Π(z) + z) is positively homogeneous, so by
Euler's identity M z = 0 at a solution (the embedding's solutions form a ray), and dz ⟂ z
(the dw entry makes it so: zᵀdz = xᵀdx + yᵀdy + dw = 0, since DΠ(v) v = Π(v) = y). The system
Mᵀ r = dz is therefore consistent, and the wanted r is the one orthogonal to the ray: LSQR,
started at 0, returns it (the minimum-norm solution). A dense LU solve of the singular M
does not — at a solution of the default accuracy, M has a singular value ~1e-5‖M‖, and LU
amplifies the solution's error along it (Jacobian errors of order 1 for SCS and Clarabel). The
dense mode therefore factors the deflated M + z zᵀ/‖z‖², which is invertible, has the same
solution on z⟂, and returns r ⟂ z: the LSQR answer, from one dense LU.

This is diffcp's computation otherwise, with diffcp's own C++ kernels (``M_dense``,
``M_operator``, ``dprojection``, its dense and LSQR solves). What diffcp redoes on every call
and this module does once per layout: assembling Q with ``scipy.sparse.bmat`` (about half of
diffcp's time on small problems), finding A's sparsity, parsing the cones, and building dA as
a sparse matrix; here Q is filled from the data row by a precomputed scatter, and dA is
written directly in the layer's CSC order. ``_diffcp`` is diffcp's private extension module,
so :func:`available` guards its use and the backend falls back to diffcp's public path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

#: Derivative modes computed here; others (lsmr, lpgd*) go through diffcp's own path.
MODES = ("dense", "lsqr")


def available() -> bool:
    """Whether diffcp's C++ kernels this module relies on are importable."""
    try:
        from diffcp import _diffcp  # noqa: F401
        from diffcp.cones import parse_cone_dict, parse_cone_dict_cpp, pi  # noqa: F401
    except ImportError:
        return False
    return all(hasattr(_diffcp, name) for name in
               ("M_dense", "M_operator", "dprojection", "_solve_adjoint_derivative_dense", "lsqr"))


@dataclass
class Linearization:
    """What the adjoint needs from one solved element."""

    M: object           # deflated dense ndarray (dense mode) or diffcp's LinearOperator (lsqr)
    d_proj: object      # DΠ_K*(v), a diffcp LinearOperator
    pi_z: np.ndarray
    x: np.ndarray
    y: np.ndarray


class EmbeddingPlan:
    """Q's scatter from a data row ``d = [A values (CSC order); b; c]``, and A's pattern.

    Args:
        layout: the layer's :class:`~cvxlayers.parameter_map.ConeDataLayout`.
    """

    def __init__(self, layout):
        from diffcp.cones import parse_cone_dict, parse_cone_dict_cpp

        n, m = layout.n, layout.m
        size = n + m + 1
        last = size - 1
        self.n, self.m, self.nnz, self.size = n, m, layout.nnz, size
        self.rows = layout.a_indices.astype(np.int64)
        self.cols = np.repeat(np.arange(n), np.diff(layout.a_indptr))
        i_b, j_c = np.arange(m), np.arange(n)
        # Entry k of d lands at (row, col) with + sign and at its mirror with − sign.
        plus_r = np.concatenate([self.cols, n + i_b, j_c])
        plus_c = np.concatenate([n + self.rows, np.full(m, last), np.full(n, last)])
        self.plus_flat = plus_r * size + plus_c    # row-major positions in a dense Q
        self.minus_flat = plus_c * size + plus_r   # skew-symmetry: Q[c, r] = −Q[r, c]
        # The same entries as one CSC matrix: a fixed pattern and a permutation of ±d.
        q_rows = np.concatenate([plus_r, plus_c])
        q_cols = np.concatenate([plus_c, plus_r])
        order = np.lexsort((q_rows, q_cols))
        self.csc_indices = q_rows[order].astype(np.int32)
        self.csc_indptr = np.concatenate(
            [[0], np.cumsum(np.bincount(q_cols, minlength=size))]).astype(np.int32)
        k = layout.size
        self.csc_source = np.concatenate([np.arange(k), np.arange(k)])[order]
        self.csc_sign = np.concatenate([np.ones(k), -np.ones(k)])[order]
        self.cones = parse_cone_dict(layout.cone_dict)
        self.cones_cpp = parse_cone_dict_cpp(self.cones)

    def linearize(self, row: np.ndarray, x, y, s, mode: str) -> Linearization:
        """M, DΠ and π(z) at the solution (x, y, s) of the program with data ``row``."""
        from diffcp import _diffcp
        from diffcp.cones import pi

        v = y - s
        if mode == "dense":
            Q = np.zeros(self.size * self.size)
            Q[self.plus_flat] = row
            Q[self.minus_flat] = -row
            M = _diffcp.M_dense(Q.reshape(self.size, self.size), self.cones_cpp, x, v, 1.0)
            z = np.concatenate([x, v, [1.0]])
            M += np.outer(z, z / (z @ z))  # deflate the ray: see the module docstring
        else:
            Q = sp.csc_matrix((self.csc_sign * row[self.csc_source], self.csc_indices.copy(),
                               self.csc_indptr.copy()), shape=(self.size, self.size))
            M = _diffcp.M_operator(Q, self.cones_cpp, x, v, 1.0)
        d_proj = _diffcp.dprojection(v, self.cones_cpp, True)
        pi_z = np.concatenate([x, pi(v, self.cones, dual=True), [1.0]])
        return Linearization(M, d_proj, pi_z, x, y)

    def adjoint(self, lin: Linearization, dx: np.ndarray, dy: np.ndarray,
                mode: str) -> np.ndarray:
        """The data row [dA values (CSC order); db; dc] for gradients (dx, dy)."""
        from diffcp import _diffcp

        n, m, nnz = self.n, self.m, self.nnz
        out = np.zeros(nnz + m + n)
        dw = -(lin.x @ dx + lin.y @ dy)
        dz = np.concatenate([dx, lin.d_proj.rmatvec(dy), [dw]])
        if not dz.any():
            return out
        if mode == "dense":
            r = _diffcp._solve_adjoint_derivative_dense(lin.M, lin.M.T, dz)
        else:
            r = _diffcp.lsqr(lin.M.transpose(), dz).solution
        pi_z = lin.pi_z
        out[:nnz] = pi_z[self.cols] * r[n + self.rows] - pi_z[n + self.rows] * r[self.cols]
        out[nnz:nnz + m] = pi_z[n:n + m] * r[-1] - r[n:n + m]
        out[nnz + m:] = pi_z[:n] * r[-1] - r[:n]
        return out
