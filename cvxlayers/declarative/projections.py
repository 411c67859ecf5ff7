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
- L1 sphere/ball outside: w = s ⊙ v, Jᵀv = s ⊙ a ⊙ (w − Σ(a w)/Σa), a = [y ≠ 0]; L1 ball inside: v
  (both computed from σ = sign(y), which equals s ⊙ a: Jᵀv = σ ⊙ (σ ⊙ v − Σ(σ v)/Σσ²));
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
    y = max(x − τ, 0) with, for u = x sorted descending and t_k = (Σ_{j≤k} u_j − r)/k,

        τ = max_k t_k   (= t_ρ, ρ = max{k : u_k > t_k}, Duchi's threshold).

    Why the maximum: t_k − t_{k−1} = (u_k − t_{k−1})/k, and u_k > t_k ⇔ u_k > t_{k−1}, so
    t increases exactly on the support prefix k ≤ ρ and never afterwards. Taking the max
    needs no support mask, which saves four full-size temporaries (speed, issue 14)."""
    n = x.shape[-1]
    u = xp.sort(x, axis=-1, descending=True, stable=False)
    k = xp.astype(xp.arange(1, n + 1), x.dtype)
    tau = xp.max((cumsum(xp, u) - r) / k, axis=-1, keepdims=True)
    return xp.clip(x - tau, min=0.0)


def _support_vjp(xp, sgn, v):
    """The simplex-type Jacobian applied to v, from σ = sign(y) (∈ {−1, 0, 1}):
    |σ| ⊙ v − σ Σ(σ v)/Σ|σ|, i.e. diag(a) − ssᵀ/Σa on the support a = [y ≠ 0] with the
    signs s. Written as σ ⊙ (σ ⊙ v − c) (σ² = |σ|) and with ``vecdot`` for the sums:
    three full-size temporaries."""
    count = xp.vecdot(sgn, sgn)[..., None]
    c = xp.vecdot(sgn, v)[..., None] / xp.clip(count, min=1.0)
    return sgn * (sgn * v - c)


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
        a = xp.abs(x)
        p = _simplex(xp, a, r)
        y = xp.where(x < 0, -p, p)          # s ⊙ p with s = +1 at x = 0
        if kind == "l1_sphere":
            return y
        inside = xp.sum(a, axis=-1, keepdims=True) <= r
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
        x: the input (..., n).
        y: the forward's output (..., n).
        v: the output cotangent (..., n).
        radius: the scalar r used in the forward.

    Returns:
        The input cotangent, shape (..., n).
    """
    r = radius
    if kind == "simplex":
        return _support_vjp(xp, xp.sign(y), v)       # y ≥ 0: sign(y) is the support
    if kind in ("l1_ball", "l1_sphere"):
        # On the support sign(y) = s, so sign(y) carries both the support and the signs.
        g = _support_vjp(xp, xp.sign(y), v)
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
