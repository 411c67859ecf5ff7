"""A batch of QPs, its per-element scales, and the certificates of infeasibility and
unboundedness that the interior-point iterates can carry."""

from __future__ import annotations

from dataclasses import dataclass

from cvxlayers.backends.qp_arrays import inf_norm, mT, mv

_REGULARIZATION = 1e-10   # δ, relative to the data's scale
# The gap must be small in absolute terms: for strongly convex P, ‖x − x*‖² ≤ 2·gap/λ_min(P),
# so a gap merely relative to a large objective leaves x inaccurate. Only objectives above
# 1/_GAP_RELATIVE relax it, where float64 cannot resolve an absolute 1e-9 anyway.
_GAP_RELATIVE = 1e-2


@dataclass
class QPData:
    """minimize ½xᵀPx + qᵀx subject to Ax = b, Gx ≤ h, for each batch element.

    Matrices may be shared by the batch (2-D); everything else has a leading batch axis.
    ``scale`` is 1 + the largest entry of an element's data, ``delta`` the regularization
    δ = 1e-10·scale, and ``norm_q``, ``norm_bh`` scale the dual and primal residuals.
    """

    P: object
    q: object
    A: object
    b: object
    G: object
    h: object
    scale: object
    delta: object
    norm_q: object
    norm_bh: object

    @classmethod
    def build(cls, xp, P, q, A, b, G, h) -> QPData:
        batch = q.shape[0]

        def per_element(M):
            return inf_norm(xp, xp.reshape(M, (batch if M.ndim == 3 else 1, -1)))

        largest = per_element(P)  # (B,) for a batched matrix, (1,) otherwise
        for M in (q, A, b, G, h):
            largest = xp.maximum(largest, per_element(M))
        scale = 1.0 + xp.broadcast_to(largest, (batch,))
        return cls(P, q, A, b, G, h, scale, _REGULARIZATION * scale,
                   1.0 + inf_norm(xp, q), 1.0 + xp.maximum(inf_norm(xp, b), inf_norm(xp, h)))

    def take(self, xp, keep) -> QPData:
        """The elements ``keep`` (shared matrices stay shared)."""
        def rows(v, shared_ndim):
            return v if v.ndim == shared_ndim else xp.take(v, keep, axis=0)
        return QPData(rows(self.P, 2), rows(self.q, 0), rows(self.A, 2), rows(self.b, 0),
                      rows(self.G, 2), rows(self.h, 0), rows(self.scale, 0),
                      rows(self.delta, 0), rows(self.norm_q, 0), rows(self.norm_bh, 0))

    def meets(self, xp, tol, dual_residual, primal_residual, gap, objective):
        """Which elements meet tolerance ``tol``: ‖r_d‖∞ ≤ tol·(1 + ‖q‖∞),
        max(‖r_e‖∞, ‖r_i‖∞) ≤ tol·(1 + max(‖b‖∞, ‖h‖∞)), gap ≤ tol·max(1, 0.01·|objective|)."""
        return ((dual_residual <= tol * self.norm_q) & (primal_residual <= tol * self.norm_bh)
                & (gap <= tol * xp.maximum(_GAP_RELATIVE * xp.abs(objective), 1.0)))

    def infeasible(self, xp, nu, lam, cert_tol: float = 1e-6):
        """Which (ν, λ ≥ 0), normalized, certify primal infeasibility (Farkas):
        Aᵀν + Gᵀλ ≈ 0 and bᵀν + hᵀλ < 0."""
        y_norm = xp.maximum(inf_norm(xp, nu), inf_norm(xp, lam))
        y_unit = xp.where(y_norm > 0, y_norm, 1.0)[:, None]
        nu_c, lam_c = nu / y_unit, lam / y_unit
        return ((inf_norm(xp, mv(mT(self.A), nu_c) + mv(mT(self.G), lam_c)) <= cert_tol)
                & (xp.sum(self.b * nu_c, axis=-1) + xp.sum(self.h * lam_c, axis=-1)
                   < -cert_tol))

    def unbounded(self, xp, x, cert_tol: float = 1e-6):
        """Which x, normalized to a direction d, certify unboundedness:
        Pd ≈ 0, Ad ≈ 0, Gd ≤ 0 and qᵀd < 0."""
        x_norm = inf_norm(xp, x)
        d = x / xp.where(x_norm > 0, x_norm, 1.0)[:, None]
        G_d_max = (xp.max(mv(self.G, d), axis=-1) if self.G.shape[-2]
                   else xp.zeros_like(x_norm))
        return ((inf_norm(xp, mv(self.P, d)) <= cert_tol)
                & (inf_norm(xp, mv(self.A, d)) <= cert_tol)
                & (G_d_max <= cert_tol) & (xp.sum(self.q * d, axis=-1) < -cert_tol))
