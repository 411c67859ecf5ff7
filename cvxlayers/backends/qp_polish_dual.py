"""The polish's saddle-point system through the dual reduction, for strictly convex QPs.

With P ≻ 0 and R the active inequality rows plus every equality row (C_R = [G_a; A]), the
polish matrix K of :mod:`~cvxlayers.backends.qp_polish`, K (x, ν, v) = (r_x, r_ν, d∘r_λ),
reads P x + C_Rᵀ y_R = r_x, C_R x = [r_λ,a; r_ν], v = 0 off R. Eliminating x,

    H_RR y_R = C_R P⁻¹ r_x − [r_λ,a; r_ν],     x = P⁻¹ r_x − M y,

where H = C P⁻¹ Cᵀ and M = P⁻¹ Cᵀ are the interior point's (:class:`DualForm`) and y is
y_R scattered to the m + p rows. H_RR is a principal submatrix of H, k + p rows: the
(n + p + k)-row factorization of K becomes one of k + p rows, and the backward pass reuses it
exactly as it would K's.
"""

from __future__ import annotations

from array_api_compat import device

from cvxlayers.backends.batched_lu import lu_factor, lu_solve
from cvxlayers.backends.qp_arrays import mv

#: Refinement steps against H_RR (removing the regularization's bias), and the regularization
#: relative to H_RR's largest entry, as for K in qp_polish.
_REFINEMENTS = 2
_REGULARIZATION = 1e-12


class DualActiveSystem:
    """H_RR for a batch of active sets (elements ``idx`` of the dual form), compressed like
    qp_polish's system: active rows first, padded to the largest count k (padding rows are
    decoupled, y = 0 there)."""

    def __init__(self, xp, form, idx, active):
        self.xp = xp
        batch, m = active.shape
        p = form.d.shape[-1] - m
        dev = device(active)
        order = xp.argsort(xp.astype(~active, xp.int32), axis=-1, stable=True)
        k = int(xp.max(xp.sum(xp.astype(active, xp.int32), axis=-1)))
        self.batch_index = xp.arange(batch, device=dev)[:, None]
        self.rows = order[:, :k]
        self.d = active[self.batch_index, self.rows]
        eq = xp.broadcast_to(xp.arange(m, m + p, device=dev)[None, :], (batch, p))
        R = xp.concat([self.rows, xp.astype(eq, self.rows.dtype)], axis=-1)
        keep = xp.concat([self.d, xp.ones((batch, p), dtype=xp.bool, device=dev)], axis=-1)
        self.R, self.keep = R, keep
        whole = idx.shape[0] == form.d.shape[0]  # idx sorted and unique: the whole batch

        def pick(M):  # a copy of a (B, m, n) batch costs as much as a product with it
            return M if M.ndim == 2 or whole else xp.take(M, idx, axis=0)
        self.P_inv, self.C, self.M = pick(form.P_inv), pick(form.C), pick(form.M)
        H = form.H
        if H.ndim == 3 and whole:
            H_RR = H[self.batch_index[:, :, None], R[:, :, None], R[:, None, :]]
        elif H.ndim == 3:
            H_RR = H[idx[:, None, None], R[:, :, None], R[:, None, :]]
        else:
            H_RR = H[R[:, :, None], R[:, None, :]]
        weight = xp.astype(keep, H_RR.dtype)
        N = k + p
        every = xp.arange(N, device=dev)
        H_RR = H_RR * weight[:, :, None] * weight[:, None, :]
        H_RR[:, every, every] += 1.0 - weight  # padding rows: y = 0
        delta = _REGULARIZATION * (1.0 + xp.max(xp.abs(xp.reshape(H_RR, (batch, -1))), axis=-1))
        H_reg = xp.asarray(H_RR, copy=True)
        H_reg[:, every, every] += delta[:, None]
        self.K, self.factors = H_RR, lu_factor(H_reg)
        self.m, self.p = m, p

    def gather(self, v):
        """The active-first rows of a (B, m) batch of vectors."""
        return v[self.batch_index, self.rows]

    def solve(self, r_x, r_nu, r_lam):
        """(x, ν, v) with K (x, ν, v) = (r_x, r_ν, d∘r_λ) (qp_polish's K), v zero off the
        active rows; refined against H_RR (rounding only)."""
        xp, m = self.xp, self.m
        u = mv(self.P_inv, r_x)
        Cu = mv(self.C, u)
        target = Cu - xp.concat([r_lam, r_nu], axis=-1)
        batch_index = self.batch_index
        rhs = xp.where(self.keep, target[batch_index, self.R], 0.0)
        y_R = lu_solve(self.factors, rhs)
        for _ in range(_REFINEMENTS):
            y_R = y_R + lu_solve(self.factors, rhs - mv(self.K, y_R))
        y = xp.zeros_like(target)
        y[batch_index, self.R] = xp.where(self.keep, y_R, 0.0)
        x = u - mv(self.M, y)
        return x, y[:, m:], y[:, :m]
