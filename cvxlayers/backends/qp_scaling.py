"""Ruiz equilibration of a batch of QPs, the map back to the user's coordinates, and the
judgment of a solution on the user's data.

**Scaling.** For positive diagonal D (n), E_A (p), E_G (m) and a cost scale c > 0 the QP

    minimize ½x̃ᵀP̃x̃ + q̃ᵀx̃  s.t.  Ãx̃ = b̃,  G̃x̃ + s̃ = h̃,  s̃ ≥ 0,
    P̃ = c D P D,  q̃ = c D q,  Ã = E_A A D,  b̃ = E_A b,  G̃ = E_G G D,  h̃ = E_G h,

has the solution and multipliers

    x = D x̃,   ν = E_A ν̃ / c,   λ = E_G λ̃ / c,   s = E_G⁻¹ s̃

of the original one: its KKT map is F̃(z̃) = M_L F(M_R z̃) with z = (x, ν, λ),
M_L = diag(cD, E_A, cI), M_R = diag(D, E_A/c, E_G/c) (rows: cD(Px + q + Aᵀν + Gᵀλ),
E_A(Ax − b), cΛ(Gx − h)). (:func:`equilibrate` keeps c = 1; the maps keep it general.)

**Ruiz.** D, E_A, E_G equilibrate the matrix [[P, Aᵀ, Gᵀ], [A, 0, 0], [G, 0, 0]]: each pass
divides every row and column by the square root of its ∞-norm, so all of them tend to 1
(Ruiz, 2001; OSQP's choice). Every factor is rounded to a power of two, so scaling and unscaling are
exact in floating point: the scaled QP is the user's, not a rounded neighbour.

**Shared matrices.** A matrix shared by the batch (2-D) stays shared: D is shared whenever
one of P, A, G is (E_A when A is, E_G when G is, c when P is), computed from the largest
norms over the batch, so that the scaled matrix is still one matrix (a batch-wide
equilibration; exact per element when every matrix is batched).

**Adjoint.** J̃ = M_L J M_R, so w = J⁻ᵀg = M_L J̃⁻ᵀ(M_R g): with g̃ = (D g_x, E_A g_ν/c,
E_G g_λ/c) and w̃ = J̃⁻ᵀ g̃, w_x = cD w̃_x, w_ν = E_A w̃_ν and λ∘w_λ = E_G (λ̃∘w̃_λ).
"""

from __future__ import annotations

from dataclasses import dataclass

from array_api_compat import device

from cvxlayers.backends.qp_arrays import inf_norm, mT, mv
from cvxlayers.backends.qp_data import QPData

_PASSES = 10          # Ruiz passes at most (OSQP's default)
_SETTLED = 2.0        # stop once every row and column norm is within [1/2, 2]: powers of two
_WELL_SCALED = 16.0   # data whose row and column norms spread less than this is not scaled


@dataclass
class Scaling:
    """The factors of the module docstring and the scaled data.

    ``D`` (n,) or (B, n), ``E_A`` (p,) or (B, p), ``E_G`` (m,) or (B, m), ``c`` () or (B,);
    a 1-D factor (a 0-D c) is shared by the batch. ``P, A, G``: the scaled matrices, which
    the adjoint's refinement multiplies with."""

    D: object
    E_A: object
    E_G: object
    c: object
    P: object
    A: object
    G: object
    lam: object = None   # the scaled solution's λ̃ and s̃, set by solve_qp for the adjoint
    s: object = None

    def attach(self, xp, data, original):
        """The scaled ``data`` (a QPData), measuring its residuals, gap and objective as the
        user's QP's: r_d = (cD)⁻¹r̃_d, r_e = E_A⁻¹r̃_e, r_i = E_G⁻¹r̃_i, gap and objective
        over c, against the user's ‖q‖∞, ‖b‖∞, ‖h‖∞."""
        _, q, _, b, _, h = original
        cD = self._cost() * self._col(self.D)
        data.weights = (1.0 / (cD if cD.shape[0] > 1 or self.D.ndim == 2 else cD[0]),
                        1.0 / self.E_A, 1.0 / self.E_G, 1.0 / self.c)
        data.norm_q = 1.0 + inf_norm(xp, q)
        data.norm_bh = 1.0 + xp.maximum(inf_norm(xp, b), inf_norm(xp, h))
        return data

    def _col(self, v):
        """A factor, broadcastable against batched vectors (B, k)."""
        return v if v.ndim == 2 else v[None, :]

    def _cost(self):
        return self.c[:, None] if self.c.ndim == 1 else self.c

    def unscale(self, x, nu, lam, s):
        """The user's (x, ν, λ, s) from the scaled solution."""
        c = self._cost()
        E_G = self._col(self.E_G)
        return (self._col(self.D) * x, self._col(self.E_A) * nu / c, E_G * lam / c, s / E_G)

    def scale_point(self, x, nu, lam, s):
        """The inverse of :meth:`unscale`."""
        c = self._cost()
        E_G = self._col(self.E_G)
        return (x / self._col(self.D), c * nu / self._col(self.E_A), c * lam / E_G, E_G * s)

    def adjoint_rhs(self, g_x, g_nu, g_lam):
        """g̃ = M_R g."""
        c = self._cost()
        return (self._col(self.D) * g_x, self._col(self.E_A) * g_nu / c,
                self._col(self.E_G) * g_lam / c)

    def adjoint_result(self, w_x, w_nu, lam_w):
        """(w_x, w_ν, λ∘w_λ) from the scaled (w̃_x, w̃_ν, λ̃∘w̃_λ): M_L w̃."""
        return (self._cost() * self._col(self.D) * w_x, self._col(self.E_A) * w_nu,
                self._col(self.E_G) * lam_w)


def _norms(xp, M, axis):
    """max |M| over ``axis`` (-1: each row's, -2: each column's); 0 for an empty axis. As
    an ∞-norm, which reads M once and writes no |M|."""
    if M.shape[axis] == 0:
        shape = list(M.shape)
        del shape[axis]
        return xp.zeros(tuple(shape), dtype=M.dtype, device=device(M))
    return xp.linalg.vector_norm(M, ord=xp.inf, axis=axis)


def _shared(xp, norm, shared):
    """A batched norm (B, k) reduced to the batch's largest (k,) where the factor is shared."""
    return xp.max(norm, axis=0) if shared and norm.ndim == 2 else norm


def _power_of_two(xp, v):
    return 2.0 ** xp.round(xp.log2(v))


def _inverse_sqrt(xp, norm):
    """1/√norm, with zero rows and columns (empty, or all zeros) left alone."""
    return xp.where(norm > 0, 1.0 / xp.sqrt(xp.where(norm > 0, norm, 1.0)), 1.0)


def _outer(left, M, right):
    """diag(left) M diag(right) for a shared (2-D) or batched M and matching factors."""
    lhs = left[..., :, None]
    rhs = right[..., None, :]
    return lhs * M * rhs


def equilibrate(xp, P, q, A, b, G, h, passes: int = _PASSES):
    """Ruiz-equilibrates the batch; returns the :class:`Scaling` and the scaled
    (P̃, q̃, Ã, b̃, G̃, h̃) (module docstring). Shapes as :func:`solve_qp`'s; never writes into
    the arguments.

    Data whose row and column norms already lie within a factor 16 of each other is left
    as it is (D = E = I, no copies): the interior point is invariant to a uniform scale, and
    the check costs one pass over the matrices where scaling would cost several. The cost
    scale is c = 1: OSQP's c = 1/max(mean column norm of P̃, ‖q̃‖∞) made a family with
    solutions ≈ 1e7 (q ≈ 1e4, λ_min(P) = 1e-5) fail, its duals shrunk far below its slacks."""
    n, dtype, dev = q.shape[-1], q.dtype, device(q)
    share_D = P.ndim == 2 or A.ndim == 2 or G.ndim == 2
    def ones(k, shared):
        return xp.ones((k,) if shared else (q.shape[0], k), dtype=dtype, device=dev)

    D = ones(n, share_D)
    E_A, E_G = ones(A.shape[-2], A.ndim == 2), ones(G.shape[-2], G.ndim == 2)
    c = xp.ones((), dtype=dtype, device=dev)
    for k in range(passes):
        if k == 0:  # D = E = I: the norms of the data itself
            sP, sA, sG = P, A, G
        else:
            sP, sA, sG = _outer(D, P, D), _outer(E_A, A, D), _outer(E_G, G, D)
        columns = [_shared(xp, _norms(xp, M, -2), share_D) for M in (sP, sA, sG)]
        col = columns[0]
        for other in columns[1:]:
            col = xp.maximum(col, other)
        row_A, row_G = _norms(xp, sA, -1), _norms(xp, sG, -1)
        norms = [v for v in (col, row_A, row_G) if v.shape[-1]]
        if k == 0 and _spread(xp, norms) <= _WELL_SCALED:
            return Scaling(D, E_A, E_G, c, P, A, G), (P, q, A, b, G, h)
        if all(bool(xp.all((v <= _SETTLED) & (v >= 1 / _SETTLED) | (v == 0))) for v in norms):
            break
        D = D * _power_of_two(xp, _inverse_sqrt(xp, col))
        E_A = E_A * _power_of_two(xp, _inverse_sqrt(xp, row_A))
        E_G = E_G * _power_of_two(xp, _inverse_sqrt(xp, row_G))
    P_s, A_s, G_s = _outer(D, P, D), _outer(E_A, A, D), _outer(E_G, G, D)
    scaled = (P_s, (D if D.ndim == 2 else D[None, :]) * q, A_s,
              (E_A if E_A.ndim == 2 else E_A[None, :]) * b, G_s,
              (E_G if E_G.ndim == 2 else E_G[None, :]) * h)
    return Scaling(D, E_A, E_G, c, P_s, A_s, G_s), scaled


def _spread(xp, norms) -> float:
    """The largest over the smallest nonzero row or column norm, over the whole batch."""
    largest = max(float(xp.max(v)) for v in norms)
    smallest = min(float(xp.min(xp.where(v > 0, v, xp.inf))) for v in norms)
    return largest / smallest if largest > 0 else 1.0


def judge(xp, original, x, nu, lam, s, tol, near):
    """Which elements' (x, ν, λ, s) meet ``tol`` and which ``near``·tol on the user's data
    ``original`` = (P, q, A, b, G, h), with the criterion of :meth:`QPData.meets`: the scaled
    solve's test, applied where the user reads the result."""
    P, q, A, b, G, h = original
    # Only the residual norms enter meets: no pass over the matrices for their scales.
    data = QPData(P, q, A, b, G, h, None, None, 1.0 + inf_norm(xp, q),
                  1.0 + xp.maximum(inf_norm(xp, b), inf_norm(xp, h)))
    Px = mv(data.P, x)
    terms_d = [Px, mv(mT(data.A), nu), mv(mT(data.G), lam)]
    Ax, Gx = mv(data.A, x), mv(data.G, x)
    r_d = terms_d[0] + data.q + terms_d[1] + terms_d[2]
    primal = xp.maximum(inf_norm(xp, Ax - data.b), inf_norm(xp, Gx + s - data.h))
    objective = 0.5 * xp.sum(x * Px, axis=-1) + xp.sum(data.q * x, axis=-1)
    measures = (inf_norm(xp, r_d), primal, xp.sum(s * lam, axis=-1), objective,
                _largest(xp, terms_d), _largest(xp, [Ax, Gx, s]))
    return data.meets(xp, tol, *measures), data.meets(xp, near * tol, *measures)


def _largest(xp, vectors):
    return xp.max(xp.stack([inf_norm(xp, v) for v in vectors]), axis=0)
