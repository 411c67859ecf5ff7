"""Forward solvers written once for the three frameworks (through ``ops``).

- :func:`newton`: the default inner solver of an unconstrained smooth node.
- :func:`sinkhorn`: log-domain Sinkhorn for entropic optimal transport.
"""

from __future__ import annotations

STEPS = tuple(0.5 ** k for k in range(20))
"""The step sizes the backtracking line search tries, largest first."""


def newton(ops, fun, grad, hess, y0, tol, maxiter, eps=2.2e-16):
    """Batched saddle-free Newton with a backtracking (Armijo) line search.

    Each step is ``d = −|H|⁻¹ ∇f`` with ``|H| = V diag(max(|λ|, 1e-8 max|λ| + tiny)) Vᵀ``:
    the Newton step where ``H`` is positive definite, a descent direction everywhere
    (so a non-convex objective moves away from saddles and maxima). The step length is
    the largest ``t ∈ {1, 1/2, …, 2⁻¹⁹}`` with ``f(y + t d) ≤ f(y) + 10⁻⁴ t ∇fᵀd + 64 eps (1 + |f(y)|)``,
    per element (the last term forgives rounding near the minimum, where the decrease is
    below the precision of ``f`` and the full Newton step is right). An element stops moving once ``‖∇f‖_∞ ≤ tol``.

    Args:
        fun, grad, hess: ``y (B, m) -> (B,)``, ``(B, m)``, ``(B, m, m)``.
        y0: ``(B, m)`` starting point. tol: gradient tolerance. maxiter: iterations.

    Returns:
        ``y (B, m)``.
    """
    def cond(state):
        i, y, g = state
        return ops.logical_and(i < maxiter, ops.any(ops.amax(ops.abs(g), -1) > tol))

    def body(state):
        i, y, g = state
        H = hess(y)
        H = 0.5 * (H + ops.einsum("bij->bji", H))
        lam, V = ops.eigh(H)
        floor = 1e-8 * ops.amax(ops.abs(lam), -1, keepdims=True) + 1e-30
        inv = 1.0 / ops.maximum(ops.abs(lam), floor)
        d = -ops.einsum("bij,bj->bi", V, inv * ops.einsum("bji,bj->bi", V, g))
        moving = ops.cast(ops.amax(ops.abs(g), -1) > tol, g)
        slope = ops.sum(g * d, -1)
        f0 = fun(y)
        step = ops.zeros_like(f0)
        found = ops.zeros_like(f0)
        slack = 64 * eps * (1.0 + ops.abs(f0))
        for t in STEPS:
            ok = ops.cast(fun(y + t * d) <= f0 + 1e-4 * t * slope + slack, f0) * (1.0 - found)
            step = step + ok * t
            found = found + ok
        step = step + (1.0 - found) * STEPS[-1]
        y = y + (moving * step)[:, None] * d
        return i + 1, y, grad(y)

    _, y, _ = ops.while_loop(cond, body, (ops.int_scalar(0), y0, grad(y0)))
    return y


def sinkhorn_tol(tol, machine_eps: float) -> float:
    """Sinkhorn's marginal tolerance: ``tol`` where the user gave one, else the default for
    a dtype with this machine epsilon: ``1e-12`` in float64, ``1e-5`` in float32 (and below). Why it depends on the dtype: a
    row marginal is a sum of ``k`` rounded entries, so in float32 its error cannot go much
    below ``k · 1.2e-7``; a float64 target of ``1e-12`` would never be met and every call
    would run to ``maxiter``."""
    if tol is not None:
        return tol
    return 1e-12 if machine_eps < 1e-10 else 1e-5


def sinkhorn(ops, C, r, c, eps, tol, maxiter):
    """Log-domain batched Sinkhorn: the entropic optimal transport plan

        P = argmin_{P ≥ 0, P1 = r, Pᵀ1 = c}  ⟨C, P⟩ + ε Σ_ij P_ij (log P_ij − 1),
        P_ij = exp((f_i + g_j − C_ij)/ε),

    alternating ``f = ε log r − ε LSE_j((g_j − C_ij)/ε)`` and the same for ``g`` until the
    row marginals are within ``tol`` (the column marginals are exact after each sweep).

    Args:
        C: ``(B, n, k)`` costs. r: ``(B, n)``, c: ``(B, k)`` positive marginals of equal mass.

    Returns:
        ``P (B, n, k)``.
    """
    log_r, log_c = ops.log(r), ops.log(c)

    def plan(f, g):
        return ops.exp((f[:, :, None] + g[:, None, :] - C) / eps)

    def update(f, g):
        f = eps * log_r - eps * ops.logsumexp((g[:, None, :] - C) / eps, -1)
        g = eps * log_c - eps * ops.logsumexp((f[:, :, None] - C) / eps, -2)
        return f, g

    def error(f, g):
        return ops.amax(ops.abs(ops.sum(plan(f, g), -1) - r))

    def cond(state):
        i, f, g, err = state
        return ops.logical_and(i < maxiter, err > tol)

    def body(state):
        i, f, g, _ = state
        f, g = update(f, g)
        return i + 1, f, g, error(f, g)

    f0, g0 = update(ops.zeros_like(r), ops.zeros_like(c))
    _, f, g, _ = ops.while_loop(cond, body, (ops.int_scalar(1), f0, g0, error(f0, g0)))
    return plan(f, g)
