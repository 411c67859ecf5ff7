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
    ``scale`` is 1 + the largest entry of an element's data, ``matrix_scale`` 1 + the
    largest entry of its matrices P, A, G, ``delta`` the regularization δ = 1e-10·matrix_scale
    (δ perturbs P and the equality block, so it is measured against them: against q or h,
    which can be 1e4 times larger, it would swamp a small P), and ``norm_q``, ``norm_bh``
    scale the dual and primal residuals.
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
    matrix_scale: object = None
    #: (w_d, w_e, w_i, w_c) when this is equilibrated data (qp_scaling): the residuals of
    #: the user's QP are w_d∘r_d, w_e∘r_e, w_i∘r_i, its gap and objective w_c times these,
    #: so that the measures below, and the convergence test, are those of the user's data.
    weights: tuple | None = None

    @classmethod
    def build(cls, xp, P, q, A, b, G, h) -> QPData:
        batch = q.shape[0]

        def per_element(M):
            return inf_norm(xp, xp.reshape(M, (batch if M.ndim == 3 else 1, -1)))

        def largest(arrays):
            return 1.0 + xp.max(xp.stack([xp.broadcast_to(per_element(M), (batch,))
                                          for M in arrays]), axis=0)
        scale, matrix_scale = largest((P, q, A, b, G, h)), largest((P, A, G))
        return cls(P, q, A, b, G, h, scale, _REGULARIZATION * matrix_scale,
                   1.0 + inf_norm(xp, q), 1.0 + xp.maximum(inf_norm(xp, b), inf_norm(xp, h)),
                   matrix_scale)

    def take(self, xp, keep) -> QPData:
        """The elements ``keep`` (shared matrices stay shared)."""
        def rows(v, shared_ndim):
            return v if v.ndim == shared_ndim else xp.take(v, keep, axis=0)
        return QPData(rows(self.P, 2), rows(self.q, 0), rows(self.A, 2), rows(self.b, 0),
                      rows(self.G, 2), rows(self.h, 0), rows(self.scale, 0),
                      rows(self.delta, 0), rows(self.norm_q, 0), rows(self.norm_bh, 0),
                      rows(self.matrix_scale, 0), None if self.weights is None else
                      tuple(rows(w, ndim) for w, ndim in zip(self.weights, (1, 1, 1, 0))))

    def norm(self, xp, v, part: int):
        """‖v‖∞ of a residual (or term) of row block ``part`` (0: dual, 1: equality,
        2: inequality, 3: the cost, for (B,) gaps and objectives: w_c·v), in the user's
        coordinates."""
        if self.weights is None:
            return v if part == 3 else inf_norm(xp, v)
        w = self.weights[part]
        if part == 3:
            return w * v
        return inf_norm(xp, v * (w if w.ndim == 2 else w[None, :]))

    def meets(self, xp, tol, dual_residual, primal_residual, gap, objective,
              dual_terms=None, primal_terms=None):
        """Which elements meet tolerance ``tol``: ‖r_d‖∞ ≤ tol·(1 + max(‖q‖∞, t_d)),
        max(‖r_e‖∞, ‖r_i‖∞) ≤ tol·(1 + max(‖b‖∞, ‖h‖∞, t_p)), gap ≤ tol·max(1, 0.01·|objective|).

        t_d = max(‖Px‖∞, ‖Aᵀν‖∞, ‖Gᵀλ‖∞) and t_p = max(‖Ax‖∞, ‖Gx‖∞, ‖s‖∞) (0 when not
        given) are the sizes of the terms each residual sums: its rounding floor is eps times
        them, so a residual measured against ‖q‖ or ‖h‖ alone (h = 0, say) can be out of
        reach at any tolerance (OSQP's and Clarabel's criteria are relative to them too)."""
        norm_q, norm_bh = self.norm_q, self.norm_bh
        if dual_terms is not None:
            norm_q = xp.maximum(norm_q, 1.0 + dual_terms)
        if primal_terms is not None:
            norm_bh = xp.maximum(norm_bh, 1.0 + primal_terms)
        return ((dual_residual <= tol * norm_q) & (primal_residual <= tol * norm_bh)
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
