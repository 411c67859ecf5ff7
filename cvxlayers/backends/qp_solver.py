"""A batched primal-dual interior-point method for quadratic programs, and its adjoint.

For every batch element it solves

    minimize  ½ xᵀPx + qᵀx   subject to  Ax = b,  Gx + s = h,  s ≥ 0,

with Mehrotra's predictor-corrector method, as one vectorized computation over the batch
(Amos & Kolter, *OptNet*, 2017). Written against the array API, so the same code runs on
NumPy arrays and on PyTorch tensors on the CPU or a GPU.

**Newton step.** With residuals r_d = Px + q + Aᵀν + Gᵀλ, r_e = Ax − b, r_i = Gx + s − h,
a complementarity target r_c, and W = Λ S⁻¹, eliminating ds and dλ leaves the reduced KKT
system, factored once per iteration and used for both the predictor and the corrector:

    ⎡ P + GᵀWG + δI   Aᵀ  ⎤ ⎡ dx ⎤   ⎡ −r_d − Gᵀ S⁻¹(r_c + Λ r_i) ⎤
    ⎣       A        −δI  ⎦ ⎣ dν ⎦ = ⎣           −r_e              ⎦,

    dλ = S⁻¹(r_c + Λ r_i + Λ G dx),   ds = −r_i − G dx.

δ (1e-10 relative) keeps the system nonsingular for rank-deficient A and for LPs.

**Adjoint.** Differentiating the KKT conditions Px + q + Aᵀν + Gᵀλ = 0, Ax = b,
Λ(Gx − h) = 0 gives J d(x, ν, λ) = −r(dθ) with J = [[P, Aᵀ, Gᵀ], [A, 0, 0], [ΛG, 0, −S]].
For gradients g = (g_x, g_ν, g_λ), w = J⁻ᵀ g reduces to the same matrix as above, so the
backward pass reuses the last factorization:

    ⎡ P + GᵀWG   Aᵀ ⎤ ⎡ w_x ⎤   ⎡ g_x + Gᵀ(W g_λ) ⎤
    ⎣     A      0  ⎦ ⎣ w_ν ⎦ = ⎣       g_ν        ⎦,     w_λ = S⁻¹(G w_x − g_λ),

    ∇q = −w_x,  ∇P = −½(w_x xᵀ + x w_xᵀ),  ∇A = −(ν w_xᵀ + w_ν xᵀ),  ∇b = w_ν,
    ∇G = −(λ w_xᵀ + (λ∘w_λ) xᵀ),  ∇h = λ∘w_λ.
"""

from __future__ import annotations

from dataclasses import dataclass

from array_api_compat import array_namespace, device, is_jax_array, is_torch_array

from cvxlayers import status as st
from cvxlayers.backends.batched_lu import lu_factor, lu_solve

_REGULARIZATION = 1e-10   # δ, relative to the data's scale
_STEP_FRACTION = 0.99     # fraction of the step to the boundary
_DIVERGED = 1e13          # iterates this large are certificates, not solutions
_CERTIFICATE_SIZE = 1e4   # below this (relative to the data) no iterate is checked as one
# The gap must be small in absolute terms: for strongly convex P, ‖x − x*‖² ≤ 2·gap/λ_min(P),
# so a gap merely relative to a large objective leaves x inaccurate. Only objectives above
# 1/_GAP_RELATIVE relax it, where float64 cannot resolve an absolute 1e-9 anyway.
_GAP_RELATIVE = 1e-2
_REFINE_SPREAD = 1e8      # refine Newton steps once max(W)/min(W) exceeds this
_NEAR_FACTOR = 1e3        # at the iteration limit, within 1000·tol reads optimal_inaccurate
_SHRINK_FRACTION = 0.8    # continue as a smaller batch once this fraction or fewer iterate


@dataclass
class QPSolution:
    """The batch's solutions and what the adjoint needs.

    Attributes:
        x, nu, lam, s: shapes ``(B, n)``, ``(B, p)``, ``(B, m)``, ``(B, m)``.
        statuses: one status string per element.
        iterations: interior-point iterations run.
        factors: the last reduced KKT matrix, factored (None unless kept).
    """

    x: object
    nu: object
    lam: object
    s: object
    statuses: list
    iterations: int
    factors: object = None


def batch_shapes(Q, q, G, h, A, b):
    """Checks OptNet/qpth-style inputs and returns (B, n, m, p, batched flags).

    Each argument is unbatched — Q (n,n), q (n,), G (m,n), h (m,), A (p,n), b (p,) — or has
    one extra leading batch dimension; batched arguments share the batch size. A and b may
    be ``None`` (no equalities). Raises ValueError naming the argument on a mismatch.
    """
    n = q.shape[-1]
    m = G.shape[-2] if G.ndim >= 2 else -1
    p = A.shape[-2] if A is not None and A.ndim >= 2 else 0
    expected = {"Q": (n, n), "q": (n,), "G": (m, n), "h": (m,)}
    given = {"Q": Q, "q": q, "G": G, "h": h}
    if A is not None or b is not None:
        if A is None or b is None:
            raise ValueError("Pass both `A` and `b` for equality constraints, or neither.")
        expected.update({"A": (p, n), "b": (p,)})
        given.update({"A": A, "b": b})
    batched, sizes = {}, {}
    for name, value in given.items():
        shape, want = tuple(value.shape), expected[name]
        if shape == want:
            batched[name] = False
        elif len(shape) == len(want) + 1 and shape[1:] == want:
            batched[name] = True
            sizes[name] = shape[0]
        else:
            raise ValueError(f"`{name}` must have shape {want} or (batch, *{want}) for n={n} "
                             f"variables, m={m} inequalities, p={p} equalities; received "
                             f"{shape}.")
    if len(set(sizes.values())) > 1:
        raise ValueError(f"Batched arguments must share one batch size; received {sizes}.")
    return next(iter(sizes.values()), 1), n, m, p, batched


def split_constraints(A_scs, b_scs, n_eq: int):
    """SCS-form rows (equalities, then inequalities Ax ≤ b) as (A, b, G, h); A_scs may be
    shared by the batch (2-D)."""
    return (A_scs[..., :n_eq, :], b_scs[:, :n_eq], A_scs[..., n_eq:, :], b_scs[:, n_eq:])


def _mT(M):
    return M.mT if hasattr(M, "mT") else array_namespace(M).matrix_transpose(M)


def _mv(M, v):
    """Batched matrix-vector product: (B, r, c) or shared (r, c), times (B, c) -> (B, r).
    A shared matrix makes this one matrix-matrix product, which is far cheaper than B
    matrix-vector products that each stream their own matrix from memory."""
    if M.ndim == 2:
        return v @ _mT(M)
    return (M @ v[..., None])[..., 0]


def _inf_norm(xp, v):
    if v.shape[-1] == 0:
        return xp.zeros(v.shape[:-1], dtype=v.dtype, device=device(v))
    return xp.max(xp.abs(v), axis=-1)


def _max_step(xp, v, dv):
    """Largest α ≤ 1 with v + α dv ≥ 0, per element."""
    if v.shape[-1] == 0:
        return xp.ones(v.shape[:-1], dtype=v.dtype, device=device(v))
    ratio = xp.where(dv < 0, -v / xp.where(dv < 0, dv, -1.0), xp.inf)
    return xp.clip(xp.min(ratio, axis=-1), max=1.0)


def _add_gram(P_reg, G, W):
    """P_reg + Gᵀ diag(W) G; on PyTorch as one fused batched product."""
    if is_torch_array(G):
        import torch

        base = P_reg.expand(W.shape[0], -1, -1) if P_reg.ndim == 2 else P_reg
        Gt = G.mT if G.ndim == 3 else G.T.expand(W.shape[0], -1, -1)
        return torch.baddbmm(base, Gt, W[..., None] * G)
    return P_reg + _mT(G) @ (W[..., None] * G)


class _KKT:
    """The reduced KKT matrix of the module docstring, factored."""

    def __init__(self, xp, P_reg, A, G, W, delta, s=None, lam=None):
        n, p = P_reg.shape[-1], A.shape[-2]
        K = _add_gram(P_reg, G, W)   # P + δI + GᵀWG
        if p:
            if A.ndim == 2:
                A = xp.broadcast_to(A, (W.shape[0],) + tuple(A.shape))
            eye_p = xp.eye(p, dtype=K.dtype, device=device(K))
            K = xp.concat([xp.concat([K, _mT(A)], axis=-1),
                           xp.concat([A, -delta[:, None, None] * eye_p], axis=-1)], axis=-2)
        self.n = n
        self.factors = lu_factor(K)
        self.xp = xp
        self.s, self.lam = s, lam  # the point whose W = λ/s was factored

    def solve(self, r1, r2):
        u = lu_solve(self.factors, self.xp.concat([r1, r2], axis=-1))
        return u[..., :self.n], u[..., self.n:]

    def _arrays(self):
        return (*self.factors, self.s, self.lam)

    def copy(self) -> _KKT:
        """A copy that :meth:`put` may write into (NumPy and PyTorch arrays)."""
        new = object.__new__(_KKT)
        new.n, new.xp = self.n, self.xp
        *factors, new.s, new.lam = (self.xp.asarray(a, copy=True) for a in self._arrays())
        new.factors = tuple(factors)
        return new

    def put(self, idx, other: _KKT, pick) -> None:
        """Overwrites the elements ``idx`` with ``other``'s elements ``pick``."""
        for mine, theirs in zip(self._arrays(), other._arrays()):
            mine[idx] = theirs[pick]


def _newton(xp, kkt, P, A, G, s, lam, r_d, r_e, r_i, r_c, refine=True):
    """The Newton step for targets (−r_d, −r_e, −r_i, r_c), refined once against the full
    system: when some s → 0, W = λ/s spans many orders of magnitude and the reduced solve
    alone loses the accuracy that the dual residual needs to keep decreasing. (The
    predictor only sets the centering, so it goes unrefined.)"""
    rhs = (-r_d, -r_e, -r_i, r_c)
    step = _eliminated_solve(kkt, G, s, lam, *rhs)
    if not refine:
        return step
    dx, dnu, dlam, ds = step
    # Rows 3 and 4 hold exactly by construction of ds and dλ; rows 1 and 2 carry the error.
    e_d = rhs[0] - (_mv(P, dx) + _mv(_mT(A), dnu) + _mv(_mT(G), dlam))
    e_e = rhs[1] - _mv(A, dx)
    zeros = xp.zeros_like(s)
    correction = _eliminated_solve(kkt, G, s, lam, e_d, e_e, zeros, zeros)
    return tuple(a + c for a, c in zip(step, correction))


def _eliminated_solve(kkt, G, s, lam, b_d, b_e, b_i, b_c):
    """Solves P dx + Aᵀdν + Gᵀdλ = b_d, A dx = b_e, G dx + ds = b_i, Λ ds + S dλ = b_c
    through the reduced matrix (δ aside)."""
    t = (b_c - lam * b_i) / s
    dx, dnu = kkt.solve(b_d - _mv(_mT(G), t), b_e)
    Gdx = _mv(G, dx)
    return dx, dnu, t + (lam / s) * Gdx, b_i - Gdx


@dataclass
class _Data:
    """The QP data of the elements still iterating, with their per-element scales.

    Matrices may be shared by the batch (2-D); everything else has a leading batch axis.
    Once some elements finish, :meth:`take` keeps the others, so that each iteration
    factors only the matrices still needed.
    """

    P: object
    q: object
    A: object
    b: object
    G: object
    h: object
    P_reg: object      # P + δI, always batched (δ is per element)
    delta: object
    scale: object
    norm_q: object
    norm_bh: object

    def take(self, xp, keep):
        def rows(v, shared_ndim):
            return v if v.ndim == shared_ndim else xp.take(v, keep, axis=0)
        return _Data(rows(self.P, 2), rows(self.q, 0), rows(self.A, 2), rows(self.b, 0),
                     rows(self.G, 2), rows(self.h, 0), rows(self.P_reg, 0),
                     rows(self.delta, 0), rows(self.scale, 0), rows(self.norm_q, 0),
                     rows(self.norm_bh, 0))

    def residuals(self, xp, x, nu, lam, s, tol):
        """r_d, r_e, r_i, the gap, and which elements meet ``tol`` scaled by ``factor``."""
        Px = _mv(self.P, x)
        r_d = Px + self.q + _mv(_mT(self.A), nu) + _mv(_mT(self.G), lam)
        r_e = _mv(self.A, x) - self.b
        r_i = _mv(self.G, x) + s - self.h
        gap = xp.sum(s * lam, axis=-1)
        objective = 0.5 * xp.sum(x * Px, axis=-1) + xp.sum(self.q * x, axis=-1)

        def within(factor):
            t = factor * tol
            return ((_inf_norm(xp, r_d) <= t * self.norm_q)
                    & (xp.maximum(_inf_norm(xp, r_e), _inf_norm(xp, r_i)) <= t * self.norm_bh)
                    & (gap <= t * xp.clip(_GAP_RELATIVE * xp.abs(objective), min=1.0)))
        return r_d, r_e, r_i, gap, within


def solve_qp(P, q, A, b, G, h, tol: float = 1e-9, max_iter: int = 50,
             keep_factorization: bool = True) -> QPSolution:
    """Solves a batch of QPs: P (B,n,n), q (B,n), A (B,p,n), b (B,p), G (B,m,n), h (B,m);
    p or m may be 0, and the matrices P, A, G may be shared by the batch (2-D), which saves
    memory traffic. Works in the arrays' dtype: pass float64.

    Elements stop iterating when they converge (or are certified infeasible or unbounded);
    once enough have stopped, the rest continue as a smaller batch, so that the batch costs
    about the sum of its elements' iterations rather than the slowest element's count times
    the batch size (NumPy and PyTorch arrays; JAX arrays cannot be updated in place).

    With ``keep_factorization`` each element's last factorization is kept for
    :func:`qp_adjoint` (its point differs from the solution by the last, tiny step; the
    adjoint's refinement against the exact system absorbs the difference)."""
    xp = array_namespace(P, q, A, b, G, h)
    batch, n = q.shape
    m = G.shape[-2]

    def per_element(M):
        return _inf_norm(xp, xp.reshape(M, (batch if M.ndim == 3 else 1, -1)))

    scale = 1.0 + xp.max(xp.stack([xp.broadcast_to(per_element(M), (batch,))
                                   for M in (P, q, A, b, G, h)]), axis=0)
    delta = _REGULARIZATION * scale
    ones = xp.ones((batch, m), dtype=q.dtype, device=device(q))
    P_reg = P + delta[:, None, None] * xp.eye(n, dtype=q.dtype, device=device(q))

    # Start (CVXOPT's): the equality-constrained least-squares point with W = I, then shift
    # s = h − Gx and λ = Gx − h into the interior.
    kkt = _KKT(xp, P_reg, A, G, ones, delta)
    x, nu = kkt.solve(-q + _mv(_mT(G), h), b)
    slack = h - _mv(G, x)
    s = slack + xp.where(xp.min(slack, axis=-1, keepdims=True) < 0,
                         1.0 - xp.min(slack, axis=-1, keepdims=True), 0.0) if m else slack
    lam = -slack + xp.where(xp.min(-slack, axis=-1, keepdims=True) < 0,
                            1.0 - xp.min(-slack, axis=-1, keepdims=True), 0.0) if m else slack
    if m:
        s, lam = xp.clip(s, min=1e-8), xp.clip(lam, min=1e-8)

    data = _Data(P, q, A, b, G, h, P_reg, delta, scale, 1.0 + _inf_norm(xp, q),
                 1.0 + xp.maximum(_inf_norm(xp, b), _inf_norm(xp, h)))
    point = (x, nu, lam, s)                 # data and point: the iterating elements
    rows = None                             # their indices in the batch (None: all of them)
    can_shrink = not is_jax_array(q)
    no = xp.zeros(batch, dtype=xp.bool, device=device(q))
    flags = {"converged": no, "infeasible": no, "unbounded": no, "finite": ~no, "near": no}
    converged = infeasible = unbounded = no
    active = finite = ~no
    factored = None  # once the batch shrinks: each element's last factorization
    iterations = 0

    def record(done, values):
        """Writes the iterates and flags of the working elements selected by the mask
        ``done`` (all of them for None) back into the batch-sized arrays."""
        nonlocal x, nu, lam, s
        if rows is None:  # never shrank: the working arrays are the batch's
            x, nu, lam, s = point
            flags.update(values)
            return
        idx, pick = (rows, slice(None)) if done is None else (rows[done], done)
        for batch_array, working in zip((x, nu, lam, s), point):
            batch_array[idx] = working[pick]
        for name, value in values.items():
            flags[name][idx] = value[pick]
        if factored is not None:  # each element keeps its last factorization, for the adjoint
            factored.put(idx, kkt, pick)

    for _ in range(max_iter):
        iterations += 1
        r_d, r_e, r_i, gap, within = data.residuals(xp, *point, tol)
        converged = within(1.0)
        size = xp.max(xp.stack([_inf_norm(xp, v) for v in point[:3]]), axis=0)
        finite = xp.isfinite(size) & (size < _DIVERGED)
        infeasible = unbounded = xp.zeros_like(converged)
        if bool(xp.any(size > _CERTIFICATE_SIZE * data.scale)):  # only a large iterate certifies
            infeasible, unbounded = _certificates(xp, data, *point[:3])
        active = ~converged & ~infeasible & ~unbounded & finite
        n_active = int(xp.sum(xp.astype(active, xp.int64)))
        if n_active == 0:
            break
        if can_shrink and n_active <= _SHRINK_FRACTION * active.shape[0]:
            if rows is None:  # batch-sized arrays we own, to write the finished ones into
                x, nu, lam, s = (xp.asarray(v, copy=True) for v in point)
                flags = {k: xp.asarray(v, copy=True) for k, v in flags.items()}
                rows = xp.arange(batch, device=device(q))
                if keep_factorization and kkt.s is not None:
                    factored = kkt.copy()
            record(~active, {"converged": converged, "infeasible": infeasible,
                             "unbounded": unbounded, "finite": finite})
            keep = xp.nonzero(active)[0]
            rows, data = xp.take(rows, keep, axis=0), data.take(xp, keep)
            point = tuple(xp.take(v, keep, axis=0) for v in point)
            r_d, r_e, r_i, gap = (xp.take(v, keep, axis=0) for v in (r_d, r_e, r_i, gap))
            active = finite = xp.ones(n_active, dtype=xp.bool, device=device(q))
            converged = infeasible = unbounded = ~active
        xk, nuk, lamk, sk = point
        W = lamk / sk
        kkt = _KKT(xp, data.P_reg, data.A, data.G, W, data.delta, sk, lamk)
        mu = gap / max(m, 1)
        # Predictor (affine scaling), then Mehrotra's corrector with centering σ = (μ_aff/μ)³.
        dx, dnu, dlam, ds = _newton(xp, kkt, data.P, data.A, data.G, sk, lamk, r_d, r_e, r_i,
                                    -sk * lamk, refine=False)
        alpha = xp.minimum(_max_step(xp, sk, ds), _max_step(xp, lamk, dlam))
        if m:
            mu_aff = xp.sum((sk + alpha[:, None] * ds) * (lamk + alpha[:, None] * dlam),
                            axis=-1) / m
            sigma = (mu_aff / xp.where(mu > 0, mu, 1.0)) ** 3
            r_c = -sk * lamk - ds * dlam + (sigma * mu)[:, None]
            # Refinement pays only once W = λ/s spans many orders of magnitude.
            spread = xp.max(W, axis=-1) / xp.min(W, axis=-1)
            refine = bool(xp.any(spread > _REFINE_SPREAD))
            dx, dnu, dlam, ds = _newton(xp, kkt, data.P, data.A, data.G, sk, lamk, r_d, r_e,
                                        r_i, r_c, refine)
            alpha = xp.minimum(1.0, _STEP_FRACTION * xp.minimum(_max_step(xp, sk, ds),
                                                                 _max_step(xp, lamk, dlam)))
        alpha = xp.where(active, alpha, 0.0)[:, None]
        step = (xk + alpha * dx, nuk + alpha * dnu, lamk + alpha * dlam, sk + alpha * ds)
        # An element whose step overflows keeps its last iterate (and then reads as failed).
        ok = xp.isfinite(xp.sum(step[0], axis=-1) + xp.sum(step[2], axis=-1)
                         + xp.sum(step[1], axis=-1))[:, None]
        point = tuple(xp.where(ok, new, old) for new, old in zip(step, point))
    final = {"converged": converged, "infeasible": infeasible, "unbounded": unbounded,
             "finite": finite}
    if iterations and bool(xp.any(active)):  # the iteration limit was hit: judge the end
        _, _, _, _, within = data.residuals(xp, *point, tol)
        final["converged"] = converged | (within(1.0) & active)
        final["near"] = within(_NEAR_FACTOR) & ~final["converged"]
    record(None, final)
    if factored is not None:
        kkt = factored
    if not keep_factorization:
        kkt = None
    elif kkt.s is None or (rows is not None and factored is None):
        # No iteration ran, or the batch shrank before any: factor at the final points.
        kkt = _KKT(xp, P_reg, A, G, lam / s, delta, s, lam)
    ok, inf, unb, close, fin = (_host(flags[k]) for k in
                                ("converged", "infeasible", "unbounded", "near", "finite"))
    statuses = [st.OPTIMAL if o and f else st.INFEASIBLE if i else st.UNBOUNDED if u
                else st.OPTIMAL_INACCURATE if c and f else st.FAILED
                for o, i, u, c, f in zip(ok, inf, unb, close, fin)]
    return QPSolution(x, nu, lam, s, statuses, iterations, kkt)


def _certificates(xp, data, x, nu, lam, cert_tol: float = 1e-6):
    """Which elements' iterates certify infeasibility or unboundedness (normalized).

    Primal infeasibility: (ν, λ ≥ 0) with Aᵀν + Gᵀλ ≈ 0 and bᵀν + hᵀλ < 0 (Farkas).
    Unboundedness: a direction d with Pd ≈ 0, Ad ≈ 0, Gd ≤ 0 and qᵀd < 0.
    """
    P, q, A, b, G, h = data.P, data.q, data.A, data.b, data.G, data.h
    y_norm = xp.maximum(_inf_norm(xp, nu), _inf_norm(xp, lam))
    y_unit = xp.where(y_norm > 0, y_norm, 1.0)[:, None]
    nu_c, lam_c = nu / y_unit, lam / y_unit
    infeasible = ((_inf_norm(xp, _mv(_mT(A), nu_c) + _mv(_mT(G), lam_c)) <= cert_tol)
                  & (xp.sum(b * nu_c, axis=-1) + xp.sum(h * lam_c, axis=-1) < -cert_tol))
    x_norm = _inf_norm(xp, x)
    d = x / xp.where(x_norm > 0, x_norm, 1.0)[:, None]
    G_d_max = (xp.max(_mv(G, d), axis=-1) if G.shape[-2]
               else xp.zeros_like(x_norm))
    unbounded = ((_inf_norm(xp, _mv(P, d)) <= cert_tol) & (_inf_norm(xp, _mv(A, d)) <= cert_tol)
                 & (G_d_max <= cert_tol) & (xp.sum(q * d, axis=-1) < -cert_tol))
    return infeasible, unbounded


def _host(flags) -> list:
    """A boolean array as a Python list (one transfer from the device)."""
    if hasattr(flags, "tolist"):
        return [bool(f) for f in flags.tolist()]
    return [bool(f) for f in flags]


def qp_adjoint(solution: QPSolution, P, A, G, g_x, g_nu, g_lam, refinements: int = 3):
    """Gradients of (P, q, A, b, G, h) from gradients of (x, ν, λ); see the module docstring.

    w = J⁻ᵀ g is solved with the last reduced factorization, then refined against the full
    system Jᵀw = g: on active constraints s → 0 and the reduced solve's w_λ = S⁻¹(G w_x − g_λ)
    divides a cancelling difference by it, and δ biases the step slightly; each refinement
    step removes most of both, and costs one more solve with the same factors.

    Returns:
        ``(dP, dq, dA, db, dG, dh)`` shaped like the data.
    """
    x, nu, lam, s = solution.x, solution.nu, solution.lam, solution.s
    kkt = solution.factors
    s_f, W_f = kkt.s, kkt.lam / kkt.s  # the factored point, for the approximate solves

    def solve(r_x, r_nu, r_lam):
        w_x, w_nu = kkt.solve(r_x + _mv(_mT(G), W_f * r_lam), r_nu)
        return w_x, w_nu, (_mv(G, w_x) - r_lam) / s_f

    def apply_transpose(w_x, w_nu, w_lam):  # Jᵀ w with J = [[P, Aᵀ, Gᵀ], [A, 0, 0], [ΛG, 0, −S]]
        return (_mv(P, w_x) + _mv(_mT(A), w_nu) + _mv(_mT(G), lam * w_lam),
                _mv(A, w_x), _mv(G, w_x) - s * w_lam)

    w = solve(g_x, g_nu, g_lam)
    for _ in range(refinements):
        residual = [g - r for g, r in zip((g_x, g_nu, g_lam), apply_transpose(*w))]
        w = tuple(wi + ci for wi, ci in zip(w, solve(*residual)))
    w_x, w_nu, w_lam = w
    outer = lambda u, v: u[..., :, None] * v[..., None, :]  # noqa: E731
    dP = -0.5 * (outer(w_x, x) + outer(x, w_x))  # P is symmetric: the symmetric part
    dq = -w_x
    dA = -(outer(nu, w_x) + outer(w_nu, x))
    db = w_nu
    lam_w = lam * w_lam
    dG = -(outer(lam, w_x) + outer(lam_w, x))
    dh = lam_w
    return dP, dq, dA, db, dG, dh
