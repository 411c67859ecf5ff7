"""The backward pass of a declarative node: the implicit-function linear systems.

Framework-neutral: every function takes ``ops``, a small table of array operations
(:mod:`cvxlayers.declarative._ops` documents it) that each face fills with its own
framework's functions, so the same code runs eagerly, under ``jax.jit``/``vmap`` and
inside ``tf.function``. Shapes: batch ``B``, flattened output ``m``, constraints ``p``
(equalities first, then inequalities).

A node outputs ``y(x) ∈ argmin_u f(x, u)  s.t.  h(x, u) = 0,  g(x, u) ≤ 0``. With the
constraints that are active at ``y`` stacked as ``c = (h, g_active)``, the Lagrangian
``L = f + μᵀc`` is stationary, ``∇_y f + Aᵀμ = 0`` with ``A = D_y c``. Differentiating
the optimality conditions in ``x`` (Gould, Hartley & Campbell, Propositions 4.4–4.6)::

    [ H  Aᵀ ] [ Dy ]     [ B ]        H = ∇²_yy L,  B = ∇²_yx L,  C = D_x c
    [ A  0  ] [ Dμ ] = − [ C ]

so for an incoming cotangent ``v`` the vector-Jacobian product is

    vᵀ Dy = −(wᵀ B + uᵀ C)   where   [ H  Aᵀ ] [ w ]   [ v ]
                                     [ A  0  ] [ u ] = [ 0 ],

i.e. the gradient in ``x`` of ``−(wᵀ ∇_y L(x, y) + uᵀ c(x, y))`` with ``y, μ, w, u`` held
fixed, which the face computes with its autodiff. Without constraints this is
Proposition 4.4, ``vᵀDy = −vᵀH⁻¹B``; with equalities only, Proposition 4.5 (its
closed form ``(H⁻¹Aᵀ(AH⁻¹Aᵀ)⁻¹AH⁻¹ − H⁻¹)B − H⁻¹Aᵀ(AH⁻¹Aᵀ)⁻¹C`` is the elimination of
``u`` from this system); with active inequalities, Proposition 4.6.
"""

from __future__ import annotations

DENSE_MAX = 256
"""``method="auto"`` solves densely when ``m + p ≤ DENSE_MAX``, by conjugate gradients above."""


def rcond_default(eps: float, size: int) -> float:
    """The default cut-off of the pseudo-inverse, ``10 · size · eps`` (relative to the
    largest eigenvalue in magnitude): ``7e-13`` for a float64 system of size 34."""
    return 10.0 * size * eps


def pinv_solve(ops, K, rhs, rcond):
    """Solves the symmetric systems ``K z = rhs`` by eigen-decomposition.

    ``z = V diag(1/λ) Vᵀ rhs`` over the eigenvalues with ``|λ| > rcond · max|λ|``; the
    others are dropped (the pseudo-inverse), which is the damping of a singular or
    ill-conditioned ``K``: for a consistent singular system it gives the minimum-norm
    solution. ``K`` may be indefinite (the saddle-point matrix is).

    Args:
        K: ``(B, n, n)`` symmetric. rhs: ``(B, n)``. rcond: relative cut-off.

    Returns:
        ``z`` of shape ``(B, n)`` and the number of dropped eigenvalues per element, ``(B,)``.
    """
    K = 0.5 * (K + ops.einsum("bij->bji", K))
    lam, V = ops.eigh(K)
    cutoff = rcond * ops.amax(ops.abs(lam), -1, keepdims=True)
    keep = ops.abs(lam) > cutoff
    inv = ops.where(keep, 1.0 / ops.where(keep, lam, ops.ones_like(lam)), ops.zeros_like(lam))
    z = ops.einsum("bij,bj->bi", V, inv * ops.einsum("bji,bj->bi", V, rhs))
    dropped = ops.sum(1.0 - ops.cast(keep, lam), -1)
    return z, dropped


def saddle_matrix(ops, H, A, mask):
    """``[[H, Aᵀ], [A, diag(1 − mask)]]`` with the rows of inactive constraints zeroed in
    ``A``: an inactive constraint's block row reads ``u_i = 0``, so it drops out of the
    system without changing its size (which keeps shapes static under ``jit``)."""
    A = A * mask[..., None]
    D = ops.diag_embed(1.0 - mask)
    At = ops.einsum("bpm->bmp", A)
    return ops.concat([ops.concat([H, At], -1), ops.concat([A, D], -1)], -2)


def multipliers(ops, A, mask, grad_f, rcond):
    """The multipliers ``μ`` of the active constraints, from stationarity in least squares
    (the paper's Equation 32 with our sign, ``L = f + μᵀc``):
    ``μ = −(AAᵀ)⁻¹ A ∇_y f``, the inactive rows set to zero.

    Returns ``μ`` ``(B, p)`` and the stationarity residual ``∇_y f + Aᵀμ`` ``(B, m)``."""
    A = A * mask[..., None]
    AAt = ops.einsum("bpm,bqm->bpq", A, A) + ops.diag_embed(1.0 - mask)
    mu, _ = pinv_solve(ops, AAt, -ops.einsum("bpm,bm->bp", A, grad_f), rcond)
    mu = mu * mask
    return mu, grad_f + ops.einsum("bpm,bp->bm", A, mu)


def adjoint_dense(ops, H, A, mask, v, rcond):
    """``(w, u)`` solving the saddle-point system above densely; ``A`` may be ``None``
    (no constraints: ``H w = v``). Returns ``w (B, m)``, ``u (B, p)`` or ``None``, and the
    per-element count of eigenvalues the pseudo-inverse dropped."""
    if A is None:
        w, dropped = pinv_solve(ops, H, v, rcond)
        return w, None, dropped
    m = v.shape[-1]
    K = saddle_matrix(ops, H, A, mask)
    rhs = ops.concat([v, ops.zeros_like(A[:, :, 0])], -1)
    z, dropped = pinv_solve(ops, K, rhs, rcond)
    return z[:, :m], z[:, m:], dropped


def conjugate_gradient(ops, matvec, rhs, tol, maxiter):
    """Batched conjugate gradients for ``M X = rhs`` with ``M`` symmetric positive definite,
    column by column: ``rhs`` and ``X`` are ``(B, m, k)``; ``matvec`` maps ``(B, m, k)``
    to ``(B, m, k)``. A column stops moving once ``‖r‖ ≤ tol ‖rhs‖``.

    Returns ``X`` and a ``(B,)`` flag, 1.0 where every column of the element converged."""
    bnorm2 = ops.sum(rhs * rhs, 1)
    goal = (tol * tol) * bnorm2

    def cond(state):
        i, _, _, _, rs = state
        return ops.logical_and(i < maxiter, ops.any(rs > goal))

    def body(state):
        i, X, R, P, rs = state
        AP = matvec(P)
        pAp = ops.sum(P * AP, 1)
        active = ops.logical_and(rs > goal, pAp > 0)
        alpha = ops.where(active, rs / ops.where(active, pAp, ops.ones_like(pAp)),
                          ops.zeros_like(pAp))
        X = X + alpha[:, None, :] * P
        R = R - alpha[:, None, :] * AP
        rs_new = ops.sum(R * R, 1)
        beta = ops.where(active, rs_new / ops.where(active, rs, ops.ones_like(rs)),
                         ops.zeros_like(rs))
        P = R + beta[:, None, :] * P
        return i + 1, X, R, P, ops.where(active, rs_new, rs)

    state = (ops.int_scalar(0), ops.zeros_like(rhs), rhs, rhs, bnorm2)
    _, X, _, _, rs = ops.while_loop(cond, body, state)
    converged = ops.cast(ops.all(rs <= goal, -1), rhs)
    return X, converged


def adjoint_cg(ops, hvp, A, mask, v, damping, tol, maxiter, rcond):
    """``(w, u)`` for large ``m`` without forming ``H``: conjugate gradients on
    ``H + δI`` (``hvp`` maps ``(B, m, k)`` to ``(B, m, k)``), then the small Schur
    complement ``S = A(H+δI)⁻¹Aᵀ`` (``p × p``) densely::

        S u = A H⁻¹ v,    w = H⁻¹ (v − Aᵀ u).

    ``δ = damping · |vᵀHv| / ‖v‖²`` per element (a Rayleigh-quotient scale of ``H``);
    ``damping=0`` by default. CG needs ``H + δI`` positive definite (``H`` of the
    Lagrangian is PD at a strict local minimum without constraints; with constraints it
    need only be PD on their tangent space, and then ``method="dense"`` is the safe choice).

    Returns ``w``, ``u`` (or ``None``), and a ``(B,)`` flag of CG convergence."""
    Hv = hvp(v[..., None])[..., 0]
    vv = ops.sum(v * v, -1)
    scale = ops.abs(ops.sum(v * Hv, -1)) / ops.where(vv > 0, vv, ops.ones_like(vv))
    delta = (damping * scale)[:, None, None]

    def matvec(X):
        return hvp(X) + delta * X

    if A is None:
        W, converged = conjugate_gradient(ops, matvec, v[..., None], tol, maxiter)
        return W[..., 0], None, converged
    A = A * mask[..., None]
    cols = ops.concat([v[..., None], ops.einsum("bpm->bmp", A)], -1)     # (B, m, 1 + p)
    Z, converged = conjugate_gradient(ops, matvec, cols, tol, maxiter)
    Hinv_v, Hinv_At = Z[..., 0], Z[..., 1:]
    S = ops.einsum("bpm,bmq->bpq", A, Hinv_At) + ops.diag_embed(1.0 - mask)
    u, _ = pinv_solve(ops, S, ops.einsum("bpm,bm->bp", A, Hinv_v), rcond)
    u = u * mask
    w = Hinv_v - ops.einsum("bmp,bp->bm", Hinv_At, u)
    return w, u, converged


def choose_method(method: str, m: int, p: int) -> str:
    """``"dense"`` or ``"cg"``; ``"auto"`` picks dense when ``m + p ≤ DENSE_MAX``."""
    if method not in ("auto", "dense", "cg"):
        raise ValueError(f"Argument `method` must be 'auto', 'dense' or 'cg'; received {method!r}.")
    if method == "auto":
        return "dense" if m + p <= DENSE_MAX else "cg"
    return method
