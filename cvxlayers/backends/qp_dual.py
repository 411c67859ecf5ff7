"""The dual reduction of the interior-point Newton step, for strictly convex QPs: eliminate
x, factor C P⁻¹ Cᵀ + diag(S Λ⁻¹, δ) (m + p rows), whose dense part never changes.

When P is positive definite, x = −P⁻¹(q + Cᵀy) for the multipliers y = [λ; ν] of the
constraints C x ⋚ [h; b], C = [G; A]. With

    M = P⁻¹Cᵀ,   H = C M = C P⁻¹ Cᵀ,   x₀ = −P⁻¹q,   d = [h; b] − C x₀,

the primal residuals become ρ = H y + d − [s; 0] = −[r_i; r_e], the dual residual
r_d = Px + q + Cᵀy vanishes identically, and the objective is ½yᵀHy − ½qᵀP⁻¹q. The
Newton step for the complementarity target r_c (Λ ds + S dλ = r_c) is

    (H + diag(S Λ⁻¹, δ)) dy = −ρ + [Λ⁻¹ r_c; 0],      ds = Λ⁻¹(r_c − S dλ).

H is formed once per solve; each iteration only adds a diagonal and factors. The primal
reduction instead forms GᵀWG, 2mn² flops per element and iteration, before factoring; so
this one pays when (m + p)³ is not much above mn² (see :func:`prefers_dual`). Its accuracy
rests on P⁻¹, so it is used only where λ_min(P) ≥ 1e-6 times the data's scale.

A point is (y, s) with y = [λ; ν].
"""

from __future__ import annotations

from array_api_compat import device

from cvxlayers.backends.batched_lu import (
    is_positive_definite,
    lu_buffers,
    lu_factor,
    lu_solve,
    prefix,
)
from cvxlayers.backends.qp_arrays import add_diagonal, diagonal, inf_norm, mT, mv, writable_diagonal
from cvxlayers.backends.qp_primal import interior

#: λ_min(P) must exceed this times the data's scale for the dual reduction.
_DEFINITENESS = 1e-6


def prefers_dual(xp, data) -> bool:
    """Whether the dual reduction is the cheaper of the two and P is safely definite."""
    n, m, p = data.q.shape[-1], data.G.shape[-2], data.A.shape[-2]
    if m + p == 0:
        return False
    flops_dual = (2 / 3) * (m + p) ** 3
    flops_primal = 2 * m * n * n + (2 / 3) * (n + p) ** 3
    return flops_dual <= flops_primal and definite_enough(xp, data)


def definite_enough(xp, data) -> bool:
    """Whether every element's P is symmetric with λ_min(P) ≥ 1e-6 times its matrices'
    scale (P, A, G: how large q or h are does not make P⁻¹ less accurate)."""
    scale = float(xp.max(data.matrix_scale))
    if float(xp.max(xp.abs(data.P - mT(data.P)))) > 1e-12 * scale:
        return False  # qp() accepts any Q; this reduction needs the symmetric one
    return is_positive_definite(data.P, _DEFINITENESS * scale)


class DualKKT:
    """H + diag(S Λ⁻¹, δ), factored at the point (s, λ)."""

    def __init__(self, form, factors, s, lam):
        self.form = form
        self.factors = factors
        self.s, self.lam = s, lam

    def solve_dual(self, rhs):
        return lu_solve(self.factors, rhs)

    def adjoint_solve(self, G, r_x, r_nu, r_lam):
        """(w_x, w_ν, w_λ) with Jᵀw = r, J = [[P, Aᵀ, Gᵀ], [A, 0, 0], [ΛG, 0, −S]] (δ aside).

        In v = Λw_λ the rows read P w_x + Cᵀ[v; w_ν] = r_x, A w_x = r_ν, G w_x − S Λ⁻¹v = r_λ,
        so (H + diag(S Λ⁻¹, δ)) [v; w_ν] = C P⁻¹ r_x − [r_λ; r_ν] and w_x = P⁻¹r_x − M[v; w_ν].
        No entry of size W = λ/s enters, unlike the primal reduction's right-hand side
        r_x + Gᵀ(W r_λ). w_λ is v/λ where λ ≥ s and (G w_x − r_λ)/s elsewhere, each where
        its division is the stable one."""
        f = self.form
        xp, m = f.xp, f.m
        u = mv(f.P_inv, r_x)
        z = lu_solve(self.factors, mv(f.C, u) - xp.concat([r_lam, r_nu], axis=-1))
        w_x = u - mv(f.M, z)
        v = z[:, :m]
        by_slack = (mv(G, w_x) - r_lam) / self.s
        w_lam = xp.where(self.lam >= self.s, v / self.lam, by_slack)
        return w_x, z[:, m:], w_lam


class DualForm:
    """The interior-point method's linear algebra in the dual reduction."""

    name = "dual"
    default_tol = 1e-11  # see solve_qp
    factor_at_solution = True  # see solve_qp

    def __init__(self, xp, data, parts=None, buffers=None):
        self.xp, self.data = xp, data
        self.m = data.G.shape[-2]
        if parts is None:
            parts = self._precompute(xp, data)
        self.P_inv, self.C, self.M, self.H, self.H_diag, self.x0, self.d, self.kappa = parts
        # Storage the iterations factor into: the batch's, shared by its working subsets.
        self.buffers = lu_buffers(self.H) if buffers is None and self.H.ndim == 3 else buffers

    @staticmethod
    def _precompute(xp, data):
        P, q, A, b, G, h = data.P, data.q, data.A, data.b, data.G, data.h
        if G.ndim != A.ndim:  # one shared, the other batched
            batch = q.shape[0]
            G, A = (xp.broadcast_to(M, (batch,) + tuple(M.shape[-2:])) for M in (G, A))
        C = xp.concat([G, A], axis=-2) if A.shape[-2] else G
        P_inv = xp.linalg.inv(P)
        P_inv = 0.5 * (P_inv + mT(P_inv))
        if P_inv.ndim == 2 and C.ndim == 3:  # one large product, not B small ones
            batch, rows, n = C.shape
            M = mT(xp.reshape(xp.reshape(C, (batch * rows, n)) @ P_inv, (batch, rows, n)))
        else:
            M = P_inv @ mT(C)
        H = C @ M
        H = 0.5 * (H + mT(H))  # exactly symmetric: K and Kᵀ are then the same matrix
        x0 = -mv(P_inv, q)
        d = xp.concat([h, b], axis=-1) - mv(C, x0)
        kappa = -xp.sum(q * x0, axis=-1)  # qᵀP⁻¹q
        H_diag = xp.asarray(diagonal(H), copy=True)
        return P_inv, C, M, H, H_diag, x0, d, kappa

    def take(self, keep) -> DualForm:
        xp = self.xp

        def rows(v):
            return xp.take(v, keep, axis=0)

        def matrix(M):
            return M if M.ndim == 2 else rows(M)
        H_diag = rows(self.H_diag) if self.H.ndim == 3 else self.H_diag  # shared H: (N,)
        parts = (matrix(self.P_inv), matrix(self.C), matrix(self.M), matrix(self.H), H_diag,
                 rows(self.x0), rows(self.d), rows(self.kappa))
        return DualForm(xp, self.data.take(xp, keep), parts, self.buffers)

    def _full_diagonal(self, D):
        """[D; δ] for the m inequality and p equality rows."""
        p = self.d.shape[-1] - self.m
        if not p:  # no equalities: skip the concatenation (small solves count operations)
            return D
        xp = self.xp
        eq = xp.broadcast_to(self.data.delta[:, None], (D.shape[0], p))
        return xp.concat([D, xp.astype(eq, D.dtype)], axis=-1)

    def start(self):
        """The minimizer of ½yᵀ(H + diag(1, δ))y + dᵀy — the dual of CVXOPT's start, the
        least-squares point with W = I — whose slack is s = −λ; both shifted inward."""
        xp = self.xp
        batch = self.d.shape[0]
        ones = xp.ones((batch, self.m), dtype=self.d.dtype, device=device(self.d))
        y = lu_solve(self._factor(self._full_diagonal(ones)), -self.d)
        lam, s = interior(xp, y[:, :self.m], -y[:, :self.m])
        return (xp.concat([lam, y[:, self.m:]], axis=-1), s)

    def point_from(self, x, nu, lam, s):
        """The iterate for a given (x, ν, λ, s): a warm start's (x follows from y)."""
        return (self.xp.concat([lam, nu], axis=-1), s)

    def residuals(self, point):
        """(ρ,), ‖r_d‖∞ (zero by construction), max(‖r_e‖∞, ‖r_i‖∞) = ‖ρ‖∞, the gap sᵀλ,
        the objective ½yᵀHy − ½qᵀP⁻¹q, and the sizes of ρ's terms (Hy, d, s; see
        :meth:`QPData.meets`)."""
        xp = self.xp
        y, s = point
        Hy = mv(self.H, y)
        rho = Hy + self.d - (s if y.shape[-1] == self.m else
                             xp.concat([s, xp.zeros_like(y[:, self.m:])], axis=-1))
        objective = 0.5 * xp.sum(y * Hy, axis=-1) - 0.5 * self.kappa
        zero = xp.zeros_like(objective)
        norm = self._norm  # in the user's coordinates where the data is equilibrated
        return ((rho,), zero, norm(rho), self.data.norm(xp, xp.sum(s * y[:, :self.m], axis=-1), 3),
                self.data.norm(xp, objective, 3), zero,
                xp.maximum(xp.maximum(norm(Hy), norm(self.d)), self.data.norm(xp, s, 2)))

    def _norm(self, v):
        """‖·‖∞ of a vector in the constraint rows [inequalities; equalities]."""
        d, xp = self.data, self.xp
        return xp.maximum(d.norm(xp, v[:, :self.m], 2), d.norm(xp, v[:, self.m:], 1))

    def size(self, point):
        return inf_norm(self.xp, point[0])

    def certificates(self, point):
        """Infeasibility from diverging multipliers; with P ≻ 0 nothing is unbounded."""
        y = point[0]
        infeasible = self.data.infeasible(self.xp, y[:, self.m:], y[:, :self.m])
        return infeasible, self.xp.zeros_like(infeasible)

    def pair(self, point):
        """(s, λ) of a point, or (ds, dλ) of a direction."""
        return point[1], point[0][:, :self.m]

    def factor(self, point, scratch: bool = True) -> DualKKT:
        """K factored at ``point``; into the shared storage unless ``scratch`` is False
        (a factorization that must outlive the next one: the adjoint's)."""
        y, s = point
        lam = y[:, :self.m]
        return DualKKT(self, self._factor(self._full_diagonal(s / lam), scratch), s, lam)

    def _factor(self, D, scratch: bool = True):
        """The LU factors of K = H + diag(D).

        The factorization copies its input anyway, so where H is a batch we own that can be
        written in place (NumPy, PyTorch), its diagonal is set to diag(H) + D for the
        factorization and restored exactly after, which spares a copy of H per iteration.
        K is symmetric, so Kᵀ is factored: its row-major storage is K's column-major one,
        which LAPACK copies without transposing."""
        if self.H.ndim == 2 or not writable_diagonal(self.H):
            return lu_factor(mT(add_diagonal(self.H, D)))
        out = prefix(self.buffers, D.shape[0]) if scratch else None
        diag = diagonal(self.H)
        diag[...] = self.H_diag + D
        try:
            return lu_factor(mT(self.H), out=out)
        finally:
            diag[...] = self.H_diag

    def newton(self, kkt, point, residuals, r_c, corrector):
        """The Newton step of the module docstring, for the predictor and the corrector
        alike. Unlike the primal reduction's it needs no refinement: ρ is recomputed from
        H at every iterate, and in H + diag(S Λ⁻¹) the rows of huge S Λ⁻¹ decouple instead
        of swamping P (refining changed neither the iteration counts nor the accuracy on
        the n = m = 128 benchmark or the test zoo)."""
        xp = self.xp
        y, s = point
        (rho,) = residuals
        lam = y[:, :self.m]
        target = r_c / lam
        if y.shape[-1] > self.m:
            target = xp.concat([target, xp.zeros_like(y[:, self.m:])], axis=-1)
        dy = kkt.solve_dual(target - rho)
        return dy, (r_c - s * dy[:, :self.m]) / lam

    def unpack(self, point):
        """(x, ν, λ, s) with x = x₀ − M y."""
        y, s = point
        return self.x0 - mv(self.M, y), y[:, self.m:], y[:, :self.m], s
