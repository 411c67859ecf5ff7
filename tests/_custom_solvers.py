"""Solvers written for the custom-solver tests: Clarabel called directly, and the
derivative of the cone program's solution map from its self-dual embedding with the
projections' derivatives in closed form (zero, nonnegative and second-order cones) — an
implementation independent of cvxlayers' and of diffcp's."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import lsqr


def clarabel_solve(A, b, c, cone_dict, **settings):
    """(x, y, s, status) of  min cᵀx s.t. Ax + s = b, s ∈ K  for K of z, l, q cones."""
    import clarabel

    cones = []
    if cone_dict.get("z", 0):
        cones.append(clarabel.ZeroConeT(cone_dict["z"]))
    if cone_dict.get("l", 0):
        cones.append(clarabel.NonnegativeConeT(cone_dict["l"]))
    cones += [clarabel.SecondOrderConeT(k) for k in cone_dict.get("q", [])]
    options = clarabel.DefaultSettings()
    options.verbose = False
    for key, value in {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10,
                       **settings}.items():
        setattr(options, key, value)
    n = c.size
    solution = clarabel.DefaultSolver(sp.csc_matrix((n, n)), c, sp.csc_matrix(A), b, cones,
                                      options).solve()
    return (np.array(solution.x), np.array(solution.z), np.array(solution.s),
            str(solution.status))


def _dual_projection_derivative(v, cone_dict):
    """DΠ_K*(v) as a dense matrix: K* of {0} is ℝ (identity), ℝ₊ and Q are self-dual."""
    blocks, row = [np.eye(cone_dict.get("z", 0))], cone_dict.get("z", 0)
    k = cone_dict.get("l", 0)
    blocks.append(np.diag((v[row:row + k] > 0).astype(float)))
    row += k
    for k in cone_dict.get("q", []):
        t, u = v[row], v[row + 1:row + k]
        r = np.linalg.norm(u)
        if r <= t:
            block = np.eye(k)
        elif r <= -t:
            block = np.zeros((k, k))
        else:
            e = u / r
            block = np.zeros((k, k))
            block[0, 0] = 1.0
            block[0, 1:] = block[1:, 0] = e
            block[1:, 1:] = (1 + t / r) * np.eye(k - 1) - (t / r) * np.outer(e, e)
            block /= 2
        blocks.append(block)
        row += k
    return sp.block_diag([b for b in blocks if b.size], format="csr").toarray()


def embedding_adjoint(A, b, c, cone_dict, x, y, s, dx, dy):
    """(dA dense, db, dc) for gradients (dx, dy) at the solution (x, y, s): the adjoint of
    the solution map through the homogeneous self-dual embedding (Agrawal et al. 2019)."""
    A = sp.csc_matrix(A).toarray()
    m, n = A.shape
    N = n + m + 1
    Q = np.zeros((N, N))
    Q[:n, n:n + m], Q[:n, -1] = A.T, c
    Q[n:n + m, :n], Q[n:n + m, -1] = -A, b
    Q[-1, :n], Q[-1, n:n + m] = -c, -b
    D = np.eye(N)
    D[n:n + m, n:n + m] = _dual_projection_derivative(y - s, cone_dict)
    M = (Q - np.eye(N)) @ D + np.eye(N)
    dz = np.concatenate([dx, D[n:n + m, n:n + m].T @ dy, [-(x @ dx + y @ dy)]])
    # M is singular (the embedding's solutions form a ray); LSQR from 0 returns the
    # minimum-norm solution, orthogonal to the ray. A dense least-squares solve does not
    # truncate the tiny singular values an inexact solution leaves, and blows up.
    r = lsqr(M.T, dz, atol=1e-12, btol=1e-12, iter_lim=20 * N)[0]
    pi = np.concatenate([x, y, [1.0]])
    dA = np.outer(r[n:n + m], pi[:n]) - np.outer(pi[n:n + m], r[:n])
    return dA, y * r[-1] - r[n:n + m], x * r[-1] - r[:n]


class ClarabelKKT:
    """A per-element custom solver: solve() and derivative()."""

    name = "ClarabelKKT"
    supported_cones = {"z", "l", "q"}

    def __init__(self):
        self.calls = 0

    def solve(self, A, b, c, cone_dict, need_derivative, **options):
        self.calls += 1
        x, y, s, status = clarabel_solve(A, b, c, cone_dict, **options)
        state = (A, b, c, cone_dict, x, y, s) if need_derivative else None
        return {"x": x, "y": y, "status": status, "state": state}

    def derivative(self, state, dx, dy):
        return embedding_adjoint(*state, dx, dy)


class BatchedClarabelKKT(ClarabelKKT):
    """The same solver through the batched contract: solve_batch() and derivative_batch()."""

    name = "BatchedClarabelKKT"
    solve = derivative = None  # only the batched pair

    def solve_batch(self, batch, need_derivative, **options):
        results = [clarabel_solve(batch.matrix(i), batch.b[i], batch.c[i], batch.cone_dict,
                                  **options) for i in range(batch.b.shape[0])]
        return {"x": np.stack([r[0] for r in results]), "y": np.stack([r[1] for r in results]),
                "status": [r[3] for r in results], "state": (batch, results)}

    def derivative_batch(self, state, dx, dy):
        batch, results = state
        out_A, out_b, out_c = [], [], []
        pattern_rows = batch.a_indices
        pattern_cols = np.repeat(np.arange(batch.shape[1]), np.diff(batch.a_indptr))
        for i, (x, y, s, _) in enumerate(results):
            if not (dx[i].any() or dy[i].any()):  # a failed element's zero row
                out_A.append(np.zeros(batch.a_indices.size))
                out_b.append(np.zeros(batch.shape[0]))
                out_c.append(np.zeros(batch.shape[1]))
                continue
            dA, db, dc = embedding_adjoint(batch.matrix(i), batch.b[i], batch.c[i],
                                           batch.cone_dict, x, y, s, dx[i], dy[i])
            out_A.append(dA[pattern_rows, pattern_cols])
            out_b.append(db)
            out_c.append(dc)
        return np.stack(out_A), np.stack(out_b), np.stack(out_c)
