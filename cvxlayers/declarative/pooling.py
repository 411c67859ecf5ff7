r"""Robust pooling: y = argmin_u Σ_i φ(u − x_i; α), solved exactly, differentiated in closed form.

Deep Declarative Networks (Gould, Hartley, Campbell 2019, §5.1) generalize mean pooling,
mean(x) = argmin_u Σ_i ½(u − x_i)², by swapping the quadratic for a robust penalty φ(z; α):

    quadratic            φ = ½z²                                      (the mean)
    pseudo-Huber         φ = α²(√(1 + (z/α)²) − 1)                     strictly convex
    Huber                φ = ½z² if |z| ≤ α else α(|z| − ½α)           convex
    Welsch               φ = α²(1 − exp(−z²/(2α²)))                    non-convex, smooth
    truncated quadratic  φ = ½z² if |z| ≤ α else ½α²                   non-convex, non-smooth

(the Welsch penalty is scaled by α² so that every penalty is ½z² near 0; the scale does not
change the minimizer). Each (set, channel) is one scalar problem over the N points on the
last axis; every function here broadcasts over the leading axes and is written once against
an array namespace ``xp`` (NumPy, PyTorch, JAX via array-api-compat; TensorFlow via a shim).

Gradient (Proposition 4.4 with f(x, u) = Σ_i φ(u − x_i)): at a minimizer, f_u = Σ_i φ'(y − x_i) = 0, so

    dy/dx_i = φ''(y − x_i) / Σ_j φ''(y − x_j),       dy/dα = −Σ_i ∂_α φ'(y − x_i) / Σ_j φ''(y − x_j).

Zero denominator: for Huber and the truncated quadratic, φ'' = [|z| ≤ α], so Σ_j φ'' = 0 when no
point lies within α of y (the minimizer is then not unique: the objective is flat or kinked
there). We return dy/dx_i = 1/N, the derivative of the translation y(x + c) = y(x) + c that any
consistent choice of minimizer satisfies (Σ_i dy/dx_i = 1), and dy/dα = 0.

Forward solvers (all vectorized over the leading axes; ``loop`` lets JAX use ``fori_loop``):

- quadratic: the mean.
- pseudo-Huber, Huber (convex): safeguarded Newton on g(u) = Σφ'(u − x_i), which is
  nondecreasing: the bracket [min x, max x] shrinks on the sign of g, a Newton step outside
  the bracket (or with Σφ'' = 0) is replaced by bisection. Starts at the median.
- truncated quadratic (non-convex): exhaustive. The inlier set {i : |u − x_i| ≤ α} is constant
  between consecutive breakpoints x_i ± α; on each of the 2N − 1 intervals the objective is a
  convex quadratic minimized at the inliers' mean. Sorting the breakpoints and taking cumulative
  sums of the entering/leaving points gives every interval's count, sum and sum of squares, so
  all candidates are evaluated in O(N log N) and the global minimum is picked; the winner is then
  recomputed directly as the mean of its inliers (no cancellation from the cumulative sums).
- Welsch (non-convex): multiple starts, as the paper does (it starts from the mean and the
  median); we add a third, the truncated-quadratic global minimizer, which lands in the basin of
  the densest cluster. From each start, mean-shift iterations u ← Σ w_i x_i / Σ w_i,
  w_i = exp(−(u − x_i)²/(2α²)) (they decrease the objective monotonically), then Newton steps
  where Σφ'' > 0 for full precision; the start with the lowest objective wins.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

from .projections import cumsum

__all__ = ["PENALTIES", "objective", "pool", "pool_vjp"]

PENALTIES = ("quadratic", "pseudo_huber", "huber", "welsch", "truncated_quadratic")
ALIASES = {"pseudo-huber": "pseudo_huber", "truncated-quadratic": "truncated_quadratic",
           "tq": "truncated_quadratic", "mean": "quadratic"}

NEWTON_STEPS = 60      # safeguarded Newton/bisection: bisection alone reaches 2^-60 of the range
MEANSHIFT_STEPS = 40   # Welsch: mean-shift to the start's basin ...
POLISH_STEPS = 8       # ... then Newton to full precision


def canonical_penalty(penalty: str) -> str:
    """The penalty's canonical name, or a ValueError naming the argument."""
    name = ALIASES.get(penalty, penalty) if isinstance(penalty, str) else penalty
    if name not in PENALTIES:
        raise ValueError(f"robust_pool: `penalty` must be one of {PENALTIES}; received {penalty!r}.")
    return name


def _f(xp, mask, like):
    return xp.astype(mask, like.dtype)


def phi(xp, penalty, z, a):
    """φ(z; α) elementwise."""
    if penalty == "quadratic":
        return 0.5 * z * z
    if penalty == "pseudo_huber":
        return a * a * (xp.sqrt(1 + (z / a) ** 2) - 1)
    if penalty == "huber":
        az = xp.abs(z)
        return xp.where(az <= a, 0.5 * z * z, a * (az - 0.5 * a))
    if penalty == "welsch":
        return a * a * (1 - xp.exp(-0.5 * (z / a) ** 2))
    az = xp.abs(z)
    return xp.where(az <= a, 0.5 * z * z, 0.5 * a * a + 0 * z)


def dphi(xp, penalty, z, a):
    """φ'(z; α) = ∂φ/∂z."""
    if penalty == "quadratic":
        return z
    if penalty == "pseudo_huber":
        return z / xp.sqrt(1 + (z / a) ** 2)
    if penalty == "huber":
        return xp.clip(z, -a, a)
    if penalty == "welsch":
        return z * xp.exp(-0.5 * (z / a) ** 2)
    return z * _f(xp, xp.abs(z) <= a, z)


def d2phi(xp, penalty, z, a):
    """φ''(z; α) = ∂²φ/∂z² (one-sided at the kinks |z| = α)."""
    if penalty == "quadratic":
        return xp.ones_like(z)
    if penalty == "pseudo_huber":
        return (1 + (z / a) ** 2) ** -1.5
    if penalty in ("huber", "truncated_quadratic"):
        return _f(xp, xp.abs(z) <= a, z)
    return (1 - (z / a) ** 2) * xp.exp(-0.5 * (z / a) ** 2)


def dphi_dalpha(xp, penalty, z, a):
    """∂φ'(z; α)/∂α, for dy/dα."""
    if penalty in ("quadratic", "truncated_quadratic"):
        return xp.zeros_like(z)   # TQ: φ' = z[|z| ≤ α] does not move with α away from the kink
    if penalty == "pseudo_huber":
        return z ** 3 / a ** 3 * (1 + (z / a) ** 2) ** -1.5
    if penalty == "huber":
        return xp.where(z > a, xp.ones_like(z), xp.where(z < -a, -xp.ones_like(z), xp.zeros_like(z)))
    return z ** 3 / a ** 3 * xp.exp(-0.5 * (z / a) ** 2)


def objective(xp, penalty, x, u, alpha):
    """f(x, u) = Σ_i φ(u − x_i; α) over the last axis; u has shape (..., 1). Returns (..., 1)."""
    return xp.sum(phi(xp, penalty, u - x, alpha), axis=-1, keepdims=True)


def python_loop(early_exit: bool) -> Callable:
    """A loop(n, body, state) running body n times; with early_exit, stops when body's state
    reports convergence (state[-1] all true; eager frameworks only)."""
    def loop(n, body, state):
        for _ in range(n):
            state = body(state)
            if early_exit and bool(state[-1]):
                break
        return state
    return loop


def _median(xp, x):
    s = xp.sort(x, axis=-1)
    n = x.shape[-1]
    return 0.5 * (s[..., (n - 1) // 2:(n - 1) // 2 + 1] + s[..., n // 2:n // 2 + 1])


def _eps(xp, x):
    return 8 * float(xp.finfo(x.dtype).eps) if hasattr(xp, "finfo") else 1e-15


def _slope_and_curvature(xp, penalty, z, a):
    """(Σφ'(z_i), Σφ''(z_i)) over the last axis, keepdims. For Huber φ' = clip(z, −α, α) and
    φ'' = [|z| ≤ α] = [clip(z) = z] (exactly): a count of equal entries instead of the abs,
    compare and cast of d2phi, the full-size passes that dominate large sets."""
    if penalty == "huber":
        clipped = xp.clip(z, -a, a)
        count = xp.count_nonzero(clipped == z, axis=-1, keepdims=True)
        return xp.sum(clipped, axis=-1, keepdims=True), xp.astype(count, z.dtype)
    return (xp.sum(dphi(xp, penalty, z, a), axis=-1, keepdims=True),
            xp.sum(d2phi(xp, penalty, z, a), axis=-1, keepdims=True))


def _newton_convex(xp, penalty, x, a, loop, start):
    """Safeguarded Newton on the nondecreasing g(u) = Σφ'(u − x_i) (module docstring), from
    ``start`` (..., 1), the median: where the minimizer is not unique (Huber with no point
    within α of a flat stretch) the start decides which one is returned, so every framework
    starts from the same exact median."""
    lo = xp.min(x, axis=-1, keepdims=True)
    hi = xp.max(x, axis=-1, keepdims=True)
    # max |x| from the per-set extremes: one full-size pass fewer
    tol = _eps(xp, x) * (1 + xp.maximum(xp.max(xp.abs(lo)), xp.max(xp.abs(hi))))

    def body(state):
        y, lo, hi, _ = state
        z = y - x
        g, h = _slope_and_curvature(xp, penalty, z, a)
        lo = xp.where(g < 0, y, lo)
        hi = xp.where(g > 0, y, hi)
        safe_h = xp.where(h > 0, h, xp.ones_like(h))
        step = xp.where(h > 0, y - g / safe_h, 0.5 * (lo + hi))
        ok = (h > 0) & (step >= lo) & (step <= hi)
        new = xp.where(g == 0, y, xp.where(ok, step, 0.5 * (lo + hi)))
        done = xp.all(xp.abs(new - y) <= tol) | xp.all(hi - lo <= tol)
        return new, lo, hi, done

    y, *_ = loop(NEWTON_STEPS, body, (start, lo, hi, xp.all(hi < lo)))
    return y


def _truncated_quadratic(xp, x, a):
    """Global minimizer of Σ min(½(u − x_i)², ½α²) by the breakpoint sweep (module docstring)."""
    n = x.shape[-1]
    ones = xp.ones_like(x)
    e = xp.concat([x - a, x + a], axis=-1)                 # where points enter / leave
    w = xp.concat([ones, -ones], axis=-1)
    v = xp.concat([x, x], axis=-1)
    order = xp.argsort(e, axis=-1)
    e, w, v = (xp.take_along_axis(t, order, axis=-1) for t in (e, w, v))
    count = cumsum(xp, w)                                   # inliers on [e_k, e_{k+1}]
    s1 = cumsum(xp, w * v)
    s2 = cumsum(xp, w * v * v)
    safe = xp.where(count > 0.5, count, xp.ones_like(count))
    mean = s1 / safe
    lo, hi = e[..., :-1], e[..., 1:]
    u = xp.minimum(xp.maximum(mean[..., :-1], lo), hi)
    c, s1, s2 = count[..., :-1], s1[..., :-1], s2[..., :-1]
    cost = 0.5 * (c * u * u - 2 * u * s1 + s2) + 0.5 * a * a * (n - c)
    cost = xp.where(c > 0.5, cost, xp.full_like(cost, float("inf")))
    k = xp.argmin(cost, axis=-1, keepdims=True)
    y0 = xp.take_along_axis(u, k, axis=-1)
    inl = _f(xp, xp.abs(x - y0) <= a, x)
    return xp.sum(inl * x, axis=-1, keepdims=True) / xp.maximum(
        xp.sum(inl, axis=-1, keepdims=True), xp.ones_like(y0))


def _welsch(xp, x, a, loop, median):
    """Multi-start mean-shift + Newton polish; the lowest objective wins (module docstring)."""
    tol = _eps(xp, x) * (1 + xp.max(xp.abs(x)))
    starts = [_truncated_quadratic(xp, x, a), median, xp.mean(x, axis=-1, keepdims=True)]
    best, best_cost = None, None
    for y in starts:
        def shift(state):
            y, _ = state
            wts = xp.exp(-0.5 * ((y - x) / a) ** 2)
            new = xp.sum(wts * x, axis=-1, keepdims=True) / xp.sum(wts, axis=-1, keepdims=True)
            return new, xp.all(xp.abs(new - y) <= tol)

        def polish(state):
            y, _ = state
            z = y - x
            g = xp.sum(dphi(xp, "welsch", z, a), axis=-1, keepdims=True)
            h = xp.sum(d2phi(xp, "welsch", z, a), axis=-1, keepdims=True)
            step = g / xp.where(h > 0, h, xp.ones_like(h))
            new = xp.where((h > 0) & (xp.abs(step) < a), y - step, y)
            return new, xp.all(xp.abs(new - y) <= tol)

        y, _ = loop(MEANSHIFT_STEPS, shift, (y, xp.all(y != y)))
        y, _ = loop(POLISH_STEPS, polish, (y, xp.all(y != y)))
        cost = objective(xp, "welsch", x, y, a)
        if best is None:
            best, best_cost = y, cost
        else:
            better = cost < best_cost
            best, best_cost = xp.where(better, y, best), xp.where(better, cost, best_cost)
    return best


def pool(xp: Any, penalty: str, x, alpha, loop: Callable | None = None,
         median: Callable | None = None):
    """The pooled value y = argmin_u Σ_i φ(u − x_i; α) over the last axis of x.

    Args:
        xp: the array namespace of x.
        penalty: a canonical name from ``PENALTIES``.
        x: array (..., N) with N ≥ 1.
        alpha: positive scalar (Python float or 0-d array of x's dtype).
        loop: ``loop(n, body, state)``; defaults to a Python loop with early exit.
        median: optional ``x -> (..., 1)``, the exact median over the last axis (the mean of
            the two middle values for even N) by selection, e.g. two ``torch.median`` calls,
            a fraction of the cost of the sort used without it. It must equal the sorted
            median: it is the Newton and Welsch start, which picks the answer among
            non-unique minimizers, and the frameworks must agree.

    Returns:
        y of shape (..., 1).
    """
    loop = loop or python_loop(early_exit=True)
    if penalty == "quadratic":
        return xp.mean(x, axis=-1, keepdims=True)
    if penalty in ("huber", "pseudo_huber"):
        return _newton_convex(xp, penalty, x, alpha, loop, (median or partial(_median, xp))(x))
    if penalty == "truncated_quadratic":
        return _truncated_quadratic(xp, x, alpha)
    return _welsch(xp, x, alpha, loop, (median or partial(_median, xp))(x))


def pool_vjp(xp: Any, penalty: str, x, y, v, alpha, need_alpha: bool = True):
    """Cotangents of x and α for the output cotangent v (shape of y, (..., 1)).

    dx_i = v φ''_i / Σ_j φ''_j and dα = −Σ v Σ_i ∂_αφ'_i / Σ_j φ''_j (summed over all leading
    axes, α being a scalar), with the zero-denominator convention of the module docstring.
    dx is formed as φ''_i·c + o with per-set c = v/Σφ'' and o = 0 (o = v/N, c = 0 where
    Σφ'' = 0, φ'' being zero there): two full-size passes after φ''. dα is None unless
    ``need_alpha`` (its ∂_αφ' is several more full-size passes).
    """
    z = y - x
    h = d2phi(xp, penalty, z, alpha)
    den = xp.sum(h, axis=-1, keepdims=True)
    flat = den <= 0
    safe = xp.where(flat, xp.ones_like(den), den)
    n = x.shape[-1]
    zero = xp.zeros_like(den)
    dx = h * xp.where(flat, zero, v / safe) + xp.where(flat, v / n, zero)
    if not need_alpha:
        return dx, None
    da_each = -xp.sum(dphi_dalpha(xp, penalty, z, alpha), axis=-1, keepdims=True) / safe
    da = xp.sum(v * xp.where(flat, xp.zeros_like(da_each), da_each))
    return dx, da
