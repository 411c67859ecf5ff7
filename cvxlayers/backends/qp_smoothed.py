"""The QP backend's smoothed derivative: the KKT adjoint at a point of the central path.

For every batch element the QP is minimize ½xᵀPx + qᵀx s.t. Ax = b, Gx + s = h, s ≥ 0.
Its central path, for a barrier parameter μ > 0, is the solution z_μ = (x_μ, ν_μ, λ_μ, s_μ) of

    F_μ(z) = ( Px + q + Aᵀν + Gᵀλ,  Ax − b,  Gx + s − h,  s∘λ − μ1 ) = 0,   s, λ > 0,

the optimality conditions of the barrier problem min ½xᵀPx + qᵀx − μ Σᵢ log(h − Gx)ᵢ
s.t. Ax = b. z_μ is a smooth (analytic) function of the data for every μ > 0, and z_μ → z*
as μ → 0. Differentiating F_μ(z_μ(θ); θ) = 0 gives the same KKT matrix as at the solution,

    J_μ = [[P, Aᵀ, Gᵀ], [A, 0, 0], [Λ_μ G, 0, −S_μ]],

only evaluated at z_μ, where no (s_i, λ_i) pair is zero: a constraint inactive at x* but
with slack of order μ/λ_i still couples to x, and an LP's x_μ moves with its cost (the
implicit gradient at a vertex is zero). The adjoint w = J_μ⁻ᵀ g and the data gradients
are :func:`~cvxlayers.backends.qp_solver.adjoint_directions`' and the backend's, with z_μ
in place of z*:

    ∇q = −w_x,  ∇P = −½(w_x x_μᵀ + x_μ w_xᵀ),  ∇A = −(ν_μ w_xᵀ + w_ν x_μᵀ),  ∇b = w_ν,
    ∇G = −(λ_μ w_xᵀ + (λ_μ∘w_λ) x_μᵀ),  ∇h = λ_μ∘w_λ.

**Computing z_μ.** From the solution z*, each complementary pair is first moved onto
s∘λ = μ, keeping the larger member (s ← max(s, μ/max(λ, √μ)), then λ ← max(λ, μ/s)), which
leaves z within O(√μ) of z_μ; then damped Newton steps on F_μ = 0 (the interior-point
method's own step, with the centering target r_c = μ1 − s∘λ, 0.99 of the way to the
boundary) until ‖F_μ‖∞ is at rounding level (quadratic convergence: a handful of steps).
The forward pass is untouched: the layer still returns x*.
"""

from __future__ import annotations

from array_api_compat import array_namespace

from cvxlayers.backends.qp_arrays import max_step
from cvxlayers.backends.qp_data import QPData
from cvxlayers.backends.qp_primal import PrimalForm

_NEWTON_STEPS = 30       # at most; each element usually stops after a few
_RESIDUAL = 1e-12        # ‖F_μ‖∞ relative to the data's scale (and to μ for s∘λ)
_STEP_FRACTION = 0.99


def central_point(P, q, A, b, G, h, x, nu, lam, s, mu: float):
    """(x_μ, ν_μ, λ_μ, s_μ) and the primal reduction's factorization there (module
    docstring). Arrays as :func:`~cvxlayers.backends.qp_solver.solve_qp` takes them; rows
    of failed elements should hold finite placeholders."""
    xp = array_namespace(q, x)
    form = PrimalForm(xp, QPData.build(xp, P, q, A, b, G, h))
    if lam.shape[-1]:
        root = mu ** 0.5
        s = xp.maximum(s, mu / xp.maximum(lam, root))
        lam = xp.maximum(lam, mu / s)
    point = (x, nu, lam, s)
    scale = form.data.scale
    for _ in range(_NEWTON_STEPS):
        residuals, dual_res, primal_res, *_ = form.residuals(point)
        if lam.shape[-1]:
            center = xp.max(xp.abs(point[3] * point[2] - mu), axis=-1)
        else:
            center = xp.zeros_like(dual_res)
        done = ((dual_res <= _RESIDUAL * scale) & (primal_res <= _RESIDUAL * scale)
                & (center <= _RESIDUAL * mu))
        if bool(xp.all(done)):
            break
        kkt = form.factor(point)
        _, _, lam, s = point
        direction = form.newton(kkt, point, residuals, mu - s * lam, corrector=True)
        _, _, dlam, ds = direction
        alpha = xp.minimum(1.0, _STEP_FRACTION * xp.minimum(max_step(xp, s, ds),
                                                            max_step(xp, lam, dlam)))
        alpha = xp.where(done, 0.0, alpha)[:, None]
        point = tuple(v + alpha * dv for v, dv in zip(point, direction))
    return point, form.factor(point)
