"""Active-set polishing of interior-point solutions, and the exact adjoint it factors.

An interior point stops at a point of the central path with s∘λ ≈ μ > 0, not at the
solution: an inactive constraint with a small slack s still carries λ ≈ μ/s, and an active
one a slack ≈ μ/λ. Both perturb x (by about μ/s) and, more, the derivative: the KKT matrix
couples x to every constraint through W = λ/s, so gradients are off by ~μ/s² wherever a
constraint is *near* activity (1.9e-5 on the cvxpylayers paper's dense QP at tolerance
1e-9, where active-set solvers are exact). This module finishes the job the way OSQP's
polish does, and differentiates at the polished point.

**Polish.** Guess the active set from the interior point, d_i = [λ_i > s_i], and solve the
equality-constrained QP it defines, one symmetric saddle-point system per element,

    ⎡ P    Aᵀ   G_dᵀ     ⎤ ⎡ x ⎤   ⎡ −q    ⎤
    ⎢ A    0    0        ⎥ ⎢ ν ⎥ = ⎢  b    ⎥ ,    G_d = diag(d) G,
    ⎣ G_d  0   −(I − D)  ⎦ ⎣ λ ⎦   ⎣ d∘h   ⎦

(an inactive row reads −λ_i = 0). The result satisfies stationarity, the equalities and
complementarity exactly (s = 0 on the active rows, λ = 0 on the others); it is *the*
solution when it is also feasible, s = h − Gx ≥ 0 and λ ≥ 0, which is checked (to the
solve's tolerance); an element whose guess fails keeps its interior point.

**Exact derivatives only where the active set is clear.** At the polished point every
constraint has λ_i = 0 or s_i = 0; its *margin* is the other one, max(λ_i, s_i) (relative
to the data's scale). Where some margin is below 10⁻⁷ — a weakly active constraint, a
degenerate vertex, at the solver's resolution — the element keeps the polished solution
(its value is exact either way) but takes the interior point's derivative, a smooth
function of the data across the change of active set, where the active-set one jumps;
training relies on that smoothness. Elsewhere the active set holds in a neighbourhood of
the data, and its derivative is the exact one.

**Adjoint.** At the polished point J = [[P, Aᵀ, Gᵀ], [A, 0, 0], [ΛG, 0, −S]] has λ_i = 0 or
s_i = 0 in every row. Writing v = Λw_λ, Jᵀw = g becomes exactly the polish matrix above,

    K (w_x, w_ν, v) = (g_x, g_ν, d∘g_λ),

(active rows: G_i w_x = g_λi; inactive rows: v_i = 0), so the factorization of the polish
serves the backward pass, and the gradients are the exact active-set ones.
"""

from __future__ import annotations

from array_api_compat import device, is_jax_array

from cvxlayers.backends.batched_lu import lu_factor, lu_solve
from cvxlayers.backends.qp_arrays import inf_norm, mT, mv
from cvxlayers.backends.qp_polish_dual import DualActiveSystem

#: Below this margin max(λᵢ, sᵢ) (relative to the data) at the polished point, a constraint
#: is degenerate: its element takes the interior point's (smooth) derivative.
_DEGENERATE = 1e-7
#: Refinement steps of the polish solve against K (removing the regularization's bias).
_REFINEMENTS = 2
#: The regularization δ of the polish's factorization, relative to K's largest entry.
_REGULARIZATION = 1e-12
#: Active-set guesses tried: the interior point's, then up to two active-set corrections.
_ATTEMPTS = 3


class Polish:
    """A batch's polish: each element's final active set, which elements it polished
    (``accepted``), which take the active-set derivative (``exact``: polished, with a clear
    active set), and the interior point's (λ, s), at which the others are differentiated."""

    def __init__(self, xp, active, accepted, exact, lam, s, systems):
        self.xp, self.active, self.accepted, self.exact = xp, active, accepted, exact
        self.lam, self.s = lam, s
        self.systems = systems   # per attempt: (its elements, its factored system)

    def merged(self, later: Polish, redo) -> Polish:
        """This polish with the elements of the mask ``redo`` taken from ``later``, a
        polish of them after more interior-point iterations. ``later``'s systems come
        last, so that :meth:`adjoint_solve` writes their rows over any earlier ones."""
        xp = self.xp
        pick = lambda mine, theirs: xp.where(  # noqa: E731
            redo[:, None] if mine.ndim == 2 else redo, theirs, mine)
        return Polish(xp, pick(self.active, later.active),
                      pick(self.accepted, later.accepted), pick(self.exact, later.exact),
                      later.lam, later.s, self.systems + later.systems)

    def adjoint_solve(self, P, A, G, g_x, g_nu, g_lam):
        """(w_x, w_ν, λ∘w_λ) of the :attr:`exact` elements, from K (w_x, w_ν, v) =
        (g_x, g_ν, d∘g_λ), with the factorization of the attempt that polished each (kept
        from the forward pass: K has n + p + k rows, like the interior point's kept
        matrices); the other elements' rows are zero and must be masked by the caller."""
        xp = self.xp
        w = (xp.zeros_like(g_x), xp.zeros_like(g_nu), xp.zeros_like(g_lam))
        for idx, system in self.systems:
            keep = xp.nonzero(xp.take(self.exact, idx, axis=0))[0]
            if keep.shape[0] == 0:
                continue
            rows = xp.take(idx, keep, axis=0)
            parts = system.solve(*(xp.take(g, idx, axis=0) for g in (g_x, g_nu, g_lam)))
            for full, part in zip(w, parts):
                full[rows] = xp.take(part, keep, axis=0)
        return w


def _rows(xp, M, idx):
    """The elements ``idx`` of a batched matrix (a shared 2-D one stays as it is)."""
    return M if M.ndim == 2 else xp.take(M, idx, axis=0)


class _ActiveSystem:
    """The polish matrix K of the module docstring for a batch of active sets, compressed:
    each element's active rows are gathered first and the batch is padded to the largest
    active count k (padding rows are inactive: v = 0), so K has n + p + k rows, not
    n + p + m."""

    def __init__(self, xp, P, A, G, active):
        self.xp = xp
        batch, m = active.shape
        n, p = P.shape[-1], A.shape[-2]
        order = xp.argsort(xp.astype(~active, xp.int32), axis=-1, stable=True)
        k = int(xp.max(xp.sum(xp.astype(active, xp.int32), axis=-1)))
        self.rows = order[:, :k]
        self.batch_index = xp.arange(batch, device=device(active))[:, None]
        self.d = active[self.batch_index, self.rows]
        G_k = G[self.rows] if G.ndim == 2 else G[self.batch_index, self.rows]
        weight = xp.astype(self.d, P.dtype)
        G_d = weight[:, :, None] * G_k
        N = n + p + k
        K = xp.zeros((batch, N, N), dtype=P.dtype, device=device(P))
        K[:, :n, :n] = P
        if p:
            K[:, :n, n:n + p] = mT(A)
            K[:, n:n + p, :n] = A
        K[:, :n, n + p:] = mT(G_d)
        K[:, n + p:, :n] = G_d
        diag = xp.arange(n + p, N, device=device(P))
        K[:, diag, diag] = weight - 1.0
        # Factored with a quasi-definite regularization, [[δI, 0], [0, −δI]] added, so that
        # no factorization is singular (an LP's vertex with a dependent active set, say);
        # the solves refine against K itself, which removes δ's bias wherever K is
        # nonsingular, and the polish's checks reject the rest.
        delta = _REGULARIZATION * (1.0 + xp.max(xp.abs(xp.reshape(K, (batch, -1))), axis=-1))
        signs = xp.concat([xp.ones(n, dtype=P.dtype, device=device(P)),
                           -xp.ones(N - n, dtype=P.dtype, device=device(P))])
        K_reg = xp.asarray(K, copy=True)
        every = xp.arange(N, device=device(P))
        K_reg[:, every, every] += delta[:, None] * signs
        self.K, self.factors = K, lu_factor(K_reg)
        self.n, self.p, self.m = n, p, m

    def gather(self, v):
        """The active-first rows of a (B, m) batch of vectors."""
        return v[self.batch_index, self.rows]

    def scatter(self, v_k):
        """A (B, m) batch with the compressed rows put back (zeros elsewhere)."""
        out = self.xp.zeros((v_k.shape[0], self.m), dtype=v_k.dtype, device=device(v_k))
        out[self.batch_index, self.rows] = self.xp.where(self.d, v_k, 0.0)
        return out

    def solve(self, r_x, r_nu, r_lam):
        """(x, ν, v) with K (x, ν, v_k) = (r_x, r_ν, d∘r_λ,k), v_k scattered to m rows;
        refined against K (rounding only)."""
        xp, n, p = self.xp, self.n, self.p
        rhs = xp.concat([r_x, r_nu, xp.where(self.d, self.gather(r_lam), 0.0)], axis=-1)
        u = lu_solve(self.factors, rhs)
        for _ in range(_REFINEMENTS):
            u = u + lu_solve(self.factors, rhs - (self.K @ u[..., None])[..., 0])
        return u[..., :n], u[..., n:n + p], self.scatter(u[..., n + p:])


def polish(xp, P, q, A, b, G, h, x, nu, lam, s, converged, tol, dual=None):
    """Polishes the converged elements (module docstring).

    ``dual``: the interior point's dual reduction (a DualForm of the same data) where it
    ran; its H = C P⁻¹ Cᵀ then gives the active-set systems at k + p rows instead of
    n + p + k (:mod:`~cvxlayers.backends.qp_polish_dual`).

    Returns ``(x, ν, λ, s, Polish or None)``: the polished elements' values replaced, the
    others' kept. NumPy and PyTorch arrays (JAX arrays are returned as they are).
    """
    m = G.shape[-2]
    if m == 0 or is_jax_array(x) or not bool(xp.any(converged)):
        return x, nu, lam, s, None
    scale_primal = 1.0 + xp.maximum(inf_norm(xp, b), inf_norm(xp, h))
    scale_dual = 1.0 + inf_norm(xp, q)
    active = lam > s
    x_p, nu_p, lam_p, s_p = (xp.asarray(v, copy=True) for v in (x, nu, lam, s))
    polished = xp.zeros_like(converged)
    pending = converged
    systems = []
    for attempt in range(_ATTEMPTS):
        idx = xp.nonzero(pending)[0]
        sub = [_rows(xp, M, idx) for M in (P, A, G)]
        q_i, b_i, h_i, active_i = (xp.take(v, idx, axis=0) for v in (q, b, h, active))
        # The dual system has k + p rows; with no active row and no equality it is empty,
        # and the KKT system (then just P) is the one to solve.
        empty = A.shape[-2] == 0 and not bool(xp.any(active_i))
        system = (_ActiveSystem(xp, *sub, active_i) if dual is None or empty
                  else DualActiveSystem(xp, dual, idx, active_i))
        x_t, nu_t, lam_t = system.solve(-q_i, b_i, h_i)
        P_i, A_i, G_i = sub
        s_t = xp.where(active_i, 0.0, h_i - mv(G_i, x_t))
        feasible = ((xp.min(s_t, axis=-1) >= -tol * xp.take(scale_primal, idx, axis=0))
                    & (xp.min(lam_t, axis=-1) >= -tol * xp.take(scale_dual, idx, axis=0)))
        # By construction stationarity and the equalities hold, unless K is singular (a
        # dependent active set): checked.
        r_d = mv(P_i, x_t) + q_i + mv(mT(A_i), nu_t) + mv(mT(G_i), lam_t)
        accurate = ((inf_norm(xp, r_d) <= tol * xp.take(scale_dual, idx, axis=0))
                    & (inf_norm(xp, mv(A_i, x_t) - b_i)
                       <= tol * xp.take(scale_primal, idx, axis=0))
                    & xp.all(xp.isfinite(x_t), axis=-1) & xp.all(xp.isfinite(lam_t), axis=-1))
        ok = feasible & accurate
        done = xp.take(idx, xp.nonzero(ok)[0], axis=0)
        pick = xp.nonzero(ok)[0]
        x_p[done], nu_p[done] = xp.take(x_t, pick, axis=0), xp.take(nu_t, pick, axis=0)
        lam_p[done] = xp.clip(xp.take(lam_t, pick, axis=0), min=0.0)
        s_p[done] = xp.clip(xp.take(s_t, pick, axis=0), min=0.0)
        polished[done] = True
        if done.shape[0]:
            systems.append((idx, system))
        # A primal-dual active-set step for the rest: drop rows whose multiplier came out
        # negative, add rows whose slack did.
        step = (active_i & (lam_t >= 0)) | (~active_i & (s_t < 0))
        active[idx] = xp.where(ok[:, None], active_i, step)
        pending = converged & ~polished
        if not bool(xp.any(pending)):
            break
    margin = xp.min(xp.maximum(lam_p / scale_dual[:, None], s_p / scale_primal[:, None]),
                    axis=-1)
    clear = margin > _DEGENERATE
    return x_p, nu_p, lam_p, s_p, Polish(xp, active, polished, polished & clear, lam, s,
                                         systems)
