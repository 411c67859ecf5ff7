"""The primal reduction of the interior-point Newton step: eliminate ds and dλ, factor
P + GᵀWG (n + p rows). It handles every convex QP, LPs included.

With residuals r_d = Px + q + Aᵀν + Gᵀλ, r_e = Ax − b, r_i = Gx + s − h, a complementarity
target r_c, and W = Λ S⁻¹, eliminating ds and dλ leaves the reduced KKT system

    ⎡ P + GᵀWG + δI   Aᵀ  ⎤ ⎡ dx ⎤   ⎡ −r_d − Gᵀ S⁻¹(r_c + Λ r_i) ⎤
    ⎣       A        −δI  ⎦ ⎣ dν ⎦ = ⎣           −r_e              ⎦,

    dλ = S⁻¹(r_c + Λ r_i + Λ G dx),   ds = −r_i − G dx.

δ (1e-10 relative) keeps the system nonsingular for rank-deficient A and for LPs. Each
iteration forms the Gram matrix GᵀWG (2mn² flops per element) and factors it.

A point is (x, ν, λ, s).
"""

from __future__ import annotations

from array_api_compat import device, is_torch_array

from cvxlayers.backends.batched_lu import lu_factor, lu_solve
from cvxlayers.backends.qp_arrays import max_inf_norm, mT, mv

_REFINE_SPREAD = 1e8      # refine the corrector once max(W)/min(W) exceeds this


def _add_gram(P_reg, G, W):
    """P_reg + Gᵀ diag(W) G; on PyTorch as one fused batched product."""
    if is_torch_array(G):
        import torch

        base = P_reg.expand(W.shape[0], -1, -1) if P_reg.ndim == 2 else P_reg
        Gt = G.mT if G.ndim == 3 else G.T.expand(W.shape[0], -1, -1)
        return torch.baddbmm(base, Gt, W[..., None] * G)
    return P_reg + mT(G) @ (W[..., None] * G)


class PrimalKKT:
    """The reduced KKT matrix of the module docstring, factored at the point (s, λ)."""

    def __init__(self, xp, P_reg, A, G, W, delta, s=None, lam=None):
        n, p = P_reg.shape[-1], A.shape[-2]
        K = _add_gram(P_reg, G, W)   # P + δI + GᵀWG
        if p:
            if A.ndim == 2:
                A = xp.broadcast_to(A, (W.shape[0],) + tuple(A.shape))
            eye_p = xp.eye(p, dtype=K.dtype, device=device(K))
            K = xp.concat([xp.concat([K, mT(A)], axis=-1),
                           xp.concat([A, -delta[:, None, None] * eye_p], axis=-1)], axis=-2)
        self.n = n
        self.factors = lu_factor(K)
        self.xp = xp
        self.s, self.lam = s, lam

    def solve(self, r1, r2):
        """(dx, dν) of the reduced system for right-hand side (r1, r2)."""
        u = lu_solve(self.factors, self.xp.concat([r1, r2], axis=-1))
        return u[..., :self.n], u[..., self.n:]

    def adjoint_solve(self, G, r_x, r_nu, r_lam):
        """(w_x, w_ν, w_λ) with Jᵀw = r, J = [[P, Aᵀ, Gᵀ], [A, 0, 0], [ΛG, 0, −S]], through
        the reduced matrix (δ aside): w_λ = S⁻¹(G w_x − r_λ)."""
        W = self.lam / self.s
        w_x, w_nu = self.solve(r_x + mv(mT(G), W * r_lam), r_nu)
        return w_x, w_nu, (mv(G, w_x) - r_lam) / self.s

    def _arrays(self):
        return (*self.factors, self.s, self.lam)

    def copy(self) -> PrimalKKT:
        """A copy that :meth:`put` may write into (NumPy and PyTorch arrays)."""
        new = object.__new__(type(self))
        new.n, new.xp = self.n, self.xp
        *factors, new.s, new.lam = (self.xp.asarray(a, copy=True) for a in self._arrays())
        new.factors = tuple(factors)
        return new

    def put(self, idx, other, pick) -> None:
        """Overwrites the elements ``idx`` with ``other``'s elements ``pick``."""
        for mine, theirs in zip(self._arrays(), other._arrays()):
            mine[idx] = theirs[pick]


class PrimalForm:
    """The interior-point method's linear algebra in the primal reduction."""

    name = "primal"
    default_tol = 1e-9  # see solve_qp
    factor_at_solution = False  # see solve_qp

    def __init__(self, xp, data, P_reg=None):
        self.xp, self.data = xp, data
        if P_reg is None:  # P + δI, always batched (δ is per element)
            n = data.q.shape[-1]
            P_reg = data.P + data.delta[:, None, None] * xp.eye(n, dtype=data.q.dtype,
                                                                 device=device(data.q))
        self.P_reg = P_reg

    def take(self, keep) -> PrimalForm:
        return PrimalForm(self.xp, self.data.take(self.xp, keep),
                          self.xp.take(self.P_reg, keep, axis=0))

    def start(self):
        """CVXOPT's start: the equality-constrained least-squares point with W = I, then
        s = h − Gx and λ = Gx − h shifted into the interior."""
        xp, d = self.xp, self.data
        batch, m = d.q.shape[0], d.G.shape[-2]
        ones = xp.ones((batch, m), dtype=d.q.dtype, device=device(d.q))
        kkt = PrimalKKT(xp, self.P_reg, d.A, d.G, ones, d.delta)
        x, nu = kkt.solve(-d.q + mv(mT(d.G), d.h), d.b)
        slack = d.h - mv(d.G, x)
        return (x, nu, *interior(xp, -slack, slack))

    @staticmethod
    def point_from(x, nu, lam, s):
        """The iterate for a given (x, ν, λ, s): a warm start's."""
        return (x, nu, lam, s)

    def residuals(self, point):
        """(r_d, r_e, r_i), ‖r_d‖∞, max(‖r_e‖∞, ‖r_i‖∞), the gap sᵀλ, the objective, and
        the sizes of the residuals' terms (see :meth:`QPData.meets`)."""
        xp, d = self.xp, self.data
        x, nu, lam, s = point
        Px, Atnu, Gtlam, Ax, Gx = (mv(d.P, x), mv(mT(d.A), nu), mv(mT(d.G), lam),
                                   mv(d.A, x), mv(d.G, x))
        r_d = Px + d.q + Atnu + Gtlam
        r_e = Ax - d.b
        r_i = Gx + s - d.h
        objective = 0.5 * xp.sum(x * Px, axis=-1) + xp.sum(d.q * x, axis=-1)
        norm = d.norm  # in the user's coordinates where d is equilibrated
        return ((r_d, r_e, r_i), norm(xp, r_d, 0),
                xp.maximum(norm(xp, r_e, 1), norm(xp, r_i, 2)),
                norm(xp, xp.sum(s * lam, axis=-1), 3), norm(xp, objective, 3),
                xp.maximum(xp.maximum(norm(xp, Px, 0), norm(xp, Atnu, 0)), norm(xp, Gtlam, 0)),
                xp.maximum(xp.maximum(norm(xp, Ax, 1), norm(xp, Gx, 2)), norm(xp, s, 2)))

    def size(self, point):
        return max_inf_norm(self.xp, point[:3])

    def certificates(self, point):
        x, nu, lam, _ = point
        return self.data.infeasible(self.xp, nu, lam), self.data.unbounded(self.xp, x)

    @staticmethod
    def pair(point):
        """(s, λ) of a point, or (ds, dλ) of a direction."""
        return point[3], point[2]

    def factor(self, point, scratch: bool = True) -> PrimalKKT:
        """The reduced matrix factored at ``point`` (``scratch``: see DualForm; unused, as
        the primal reduction keeps each element's factorization)."""
        _, _, lam, s = point
        d = self.data
        return PrimalKKT(self.xp, self.P_reg, d.A, d.G, lam / s, d.delta, s, lam)

    def newton(self, kkt, point, residuals, r_c, corrector):
        """The Newton step for targets (−r_d, −r_e, −r_i, r_c). The corrector's is refined
        once against the full system when W = λ/s spans more than 1e8: the reduced solve
        alone then loses the accuracy the dual residual needs to keep decreasing. (The
        predictor only sets the centering.)"""
        xp, d = self.xp, self.data
        _, _, lam, s = point
        r_d, r_e, r_i = residuals
        rhs = (-r_d, -r_e, -r_i, r_c)
        step = _eliminated_solve(kkt, d.G, s, lam, *rhs)
        W = lam / s
        if not corrector or not bool(xp.any(xp.max(W, axis=-1) / xp.min(W, axis=-1)
                                             > _REFINE_SPREAD)):
            return step
        dx, dnu, dlam, ds = step
        # Rows 3 and 4 hold exactly by construction of ds and dλ; rows 1 and 2 carry the error.
        e_d = rhs[0] - (mv(d.P, dx) + mv(mT(d.A), dnu) + mv(mT(d.G), dlam))
        e_e = rhs[1] - mv(d.A, dx)
        zeros = xp.zeros_like(s)
        correction = _eliminated_solve(kkt, d.G, s, lam, e_d, e_e, zeros, zeros)
        return tuple(a + c for a, c in zip(step, correction))

    @staticmethod
    def unpack(point):
        return point


def _eliminated_solve(kkt, G, s, lam, b_d, b_e, b_i, b_c):
    """Solves P dx + Aᵀdν + Gᵀdλ = b_d, A dx = b_e, G dx + ds = b_i, Λ ds + S dλ = b_c
    through the reduced matrix (δ aside)."""
    t = (b_c - lam * b_i) / s
    dx, dnu = kkt.solve(b_d - mv(mT(G), t), b_e)
    Gdx = mv(G, dx)
    return dx, dnu, t + (lam / s) * Gdx, b_i - Gdx


def interior(xp, lam, s):
    """(λ, s) shifted into the interior: each by 1 − its minimum where that is negative,
    then kept at least 1e-8."""
    if s.shape[-1] == 0:
        return lam, s

    def shift(v):
        low = xp.min(v, axis=-1, keepdims=True)
        return xp.clip(v + xp.where(low < 0, 1.0 - low, 0.0), min=1e-8)
    return shift(lam), shift(s)
