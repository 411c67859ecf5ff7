"""Euclidean projections onto simplices, balls and spheres, with their closed-form gradients.

Deep Declarative Networks (Gould, Hartley, Campbell 2019, §5.2 and Table I) define the
projection node

    y(x) = argmin_u ½‖u − x‖²  subject to  ‖u‖_p = r   (sphere)   or  ‖u‖_p ≤ r   (ball),

and differentiate it by Proposition 4.5. Every case here has a closed-form solution and a
closed-form vector–Jacobian product, written once against an array namespace ``xp`` (NumPy,
PyTorch and JAX through array-api-compat, TensorFlow through a small shim in its face).
All functions act on the last axis and broadcast over leading (batch) axes.

Solutions (s = sign(x) with s = +1 where x = 0, n the length of the last axis):

- simplex Δ_r = {u ≥ 0, Σu = r}: y = max(x − τ, 0), τ from the sorted x (Duchi et al. 2008);
- L1 sphere: y = s ⊙ Π_Δr(|x|) (the signs of x are optimal, then it is a simplex projection,
  whether x is inside or outside the ball); L1 ball: x inside, else the sphere's;
- L2 sphere: y = r x / ‖x‖₂; L2 ball: y = x min(1, r / ‖x‖₂);
- L∞ ball: y = clip(x, −r, r); L∞ sphere: the ball's when ‖x‖∞ ≥ r, else the largest |x_k|
  (first index on ties) is moved to s_k r.

Vector–Jacobian products Jᵀv (J = ∂y/∂x, symmetric in every case):

- simplex: with the support a = [y > 0], Jᵀv = a ⊙ (v − Σ(a v) / Σa) (Table I; J = diag(a) − aaᵀ/Σa);
- L1 sphere/ball outside: w = s ⊙ v, Jᵀv = s ⊙ a ⊙ (w − Σ(a w)/Σa), a = [y ≠ 0]; L1 ball inside: v;
- L2 sphere/ball outside: Jᵀv = (r/‖x‖)(v − x (xᵀv)/‖x‖²); L2 ball inside: v;
- L∞: Jᵀv = v ⊙ [|x| < r] outside; inside the sphere, v with the moved component zeroed.

These are the exact Jacobians wherever y is differentiable (almost everywhere); on the
faces' boundaries (a coordinate of y exactly at 0 or ±r) they are one-sided, which is the
paper's "masked" choice (zero gradient along plateau directions). At x = 0 the L2 sphere
projection is undefined; the norm is floored at the dtype's tiny value, so it returns 0 there.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "PROJECTIONS",
    "project",
    "project_vjp",
]

PROJECTIONS = ("simplex", "l1_ball", "l1_sphere", "l2_ball", "l2_sphere", "linf_ball", "linf_sphere")


def cumsum(xp: Any, x):
    """Cumulative sum along the last axis (array API ``cumulative_sum``, or NumPy's ``cumsum``)."""
    if hasattr(xp, "cumulative_sum"):
        return xp.cumulative_sum(x, axis=-1)
    return xp.cumsum(x, axis=-1)


def _float(xp, mask, like):
    return xp.astype(mask, like.dtype)


def _sign(xp, x):
    """sign(x) with +1 at 0, so that a zero coordinate still picks a side."""
    return xp.where(x < 0, -xp.ones_like(x), xp.ones_like(x))


def _simplex(xp, x, r):
    """Π onto {u ≥ 0, Σu = r} along the last axis (sort-based, Duchi et al. 2008):
    u = x sorted descending, ρ = max{k : u_k − (Σ_{j≤k} u_j − r)/k > 0}, τ = (Σ_{j≤ρ} u_j − r)/ρ."""
    n = x.shape[-1]
    u = -xp.sort(-x, axis=-1)
    css = cumsum(xp, u) - r
    k = xp.astype(xp.arange(1, n + 1), x.dtype)
    support = _float(xp, u - css / k > 0, x)                # a prefix: 1 then 0
    # ρ = Σ support and Σ_{j≤ρ} u_j = Σ support·u, since the support is a prefix (no gather).
    rho = xp.sum(support, axis=-1, keepdims=True)
    tau = (xp.sum(support * u, axis=-1, keepdims=True) - r) / rho
    return xp.maximum(x - tau, xp.zeros_like(x))


def _support_vjp(xp, a, v):
    """a ⊙ (v − Σ(a v)/Σa): the simplex Jacobian diag(a) − aaᵀ/Σa applied to v."""
    count = xp.sum(a, axis=-1, keepdims=True)
    return a * (v - xp.sum(a * v, axis=-1, keepdims=True) / xp.maximum(count, xp.ones_like(count)))


def _l2norm(xp, x):
    sq = xp.sum(x * x, axis=-1, keepdims=True)
    tiny = xp.finfo(x.dtype).tiny if hasattr(xp, "finfo") else 1e-300
    return xp.sqrt(xp.maximum(sq, xp.full_like(sq, tiny)))


def _linf_argmax(xp, x):
    """One-hot (float) of the first largest |x_k| along the last axis."""
    k = xp.argmax(xp.abs(x), axis=-1, keepdims=True)
    idx = xp.arange(x.shape[-1])
    return _float(xp, idx == k, x)


def project(xp: Any, kind: str, x, radius):
    """The projection ``kind`` (one of ``PROJECTIONS``) of x onto radius ``radius``, last axis.

    Args:
        xp: the array namespace of ``x``.
        kind: which set (see the module docstring for each solution).
        x: array (..., n).
        radius: positive scalar r.

    Returns:
        y, same shape and dtype as x.
    """
    r = radius
    if kind == "simplex":
        return _simplex(xp, x, r)
    if kind in ("l1_ball", "l1_sphere"):
        s = _sign(xp, x)
        y = s * _simplex(xp, xp.abs(x), r)
        if kind == "l1_sphere":
            return y
        inside = xp.sum(xp.abs(x), axis=-1, keepdims=True) <= r
        return xp.where(inside, x, y)
    if kind in ("l2_ball", "l2_sphere"):
        norm = _l2norm(xp, x)
        scale = r / norm
        if kind == "l2_ball":
            scale = xp.minimum(scale, xp.ones_like(scale))
        return x * scale
    if kind in ("linf_ball", "linf_sphere"):
        y = xp.clip(x, -r, r)
        if kind == "linf_ball":
            return y
        inside = xp.max(xp.abs(x), axis=-1, keepdims=True) < r
        hot = _linf_argmax(xp, x)
        moved = x * (1 - hot) + hot * _sign(xp, x) * r
        return xp.where(inside, moved, y)
    raise ValueError(f"unknown projection {kind!r}; expected one of {PROJECTIONS}")


def project_vjp(xp: Any, kind: str, x, y, v, radius):
    """Jᵀv for the projection ``kind`` at input x with output y (module docstring formulas).

    Args:
        xp: the array namespace.
        kind: one of ``PROJECTIONS``.
        x, y, v: arrays (..., n): input, the forward's output, and the output cotangent.
        radius: the scalar r used in the forward.

    Returns:
        The input cotangent, shape (..., n).
    """
    r = radius
    if kind == "simplex":
        return _support_vjp(xp, _float(xp, y > 0, x), v)
    if kind in ("l1_ball", "l1_sphere"):
        s = _sign(xp, x)
        g = s * _support_vjp(xp, _float(xp, y != 0, x), s * v)
        if kind == "l1_sphere":
            return g
        inside = xp.sum(xp.abs(x), axis=-1, keepdims=True) <= r
        return xp.where(inside, v, g)
    if kind in ("l2_ball", "l2_sphere"):
        norm = _l2norm(xp, x)
        g = (r / norm) * (v - x * xp.sum(x * v, axis=-1, keepdims=True) / (norm * norm))
        if kind == "l2_sphere":
            return g
        return xp.where(norm <= r, v, g)
    if kind in ("linf_ball", "linf_sphere"):
        g = v * _float(xp, xp.abs(x) < r, x)
        if kind == "linf_ball":
            return g
        inside = xp.max(xp.abs(x), axis=-1, keepdims=True) < r
        return xp.where(inside, v * (1 - _linf_argmax(xp, x)), g)
    raise ValueError(f"unknown projection {kind!r}; expected one of {PROJECTIONS}")
