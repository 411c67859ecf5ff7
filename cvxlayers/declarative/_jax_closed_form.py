"""JAX faces of the closed-form declarative nodes: robust pooling and projections.

The maths lives in ``pooling.py`` and ``projections.py`` (jax.numpy is an array-API
namespace); this module validates and registers the closed-form gradients with
``jax.custom_vjp``. The iterative solvers run in ``lax.while_loop``, so every function works
under ``jit``, ``vmap`` and ``grad``.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from . import pooling, projections

__all__ = ["robust_pool", "project_simplex", "project_l1_ball", "project_l1_sphere",
           "project_l2_ball", "project_l2_sphere", "project_linf_ball", "project_linf_sphere"]


def _loop(n, body, state):
    """loop(n, body, state) of the maths modules as a while_loop that stops when state[-1]."""
    def cond(carry):
        i, state = carry
        return (i < n) & jnp.logical_not(state[-1])

    def step(carry):
        i, state = carry
        return i + 1, tuple(body(state))

    return jax.lax.while_loop(cond, step, (0, tuple(state)))[1]


def _as_float(name, x, fn):
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{fn}: `{name}` must be a floating-point array; received dtype {x.dtype}. "
                        "Convert it with jnp.asarray(..., dtype=jnp.float32).")
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError(f"{fn}: `{name}` needs a non-empty last axis; received shape {x.shape}.")
    return x


def _check_positive(name, value, fn):
    if isinstance(value, jax.core.Tracer):
        return  # traced: the value is not known here
    v = np.asarray(value)
    if v.size != 1 or not float(v.reshape(())) > 0:
        raise ValueError(f"{fn}: `{name}` must be a positive scalar; received {value!r}.")


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _pool(x, alpha, penalty):
    return pooling.pool(jnp, penalty, x, alpha, _loop)


def _pool_fwd(x, alpha, penalty):
    y = _pool(x, alpha, penalty)
    return y, (x, y, alpha)


def _pool_bwd(penalty, res, v):
    x, y, alpha = res
    dx, da = pooling.pool_vjp(jnp, penalty, x, y, v, alpha)
    return dx, da.reshape(alpha.shape)


_pool.defvjp(_pool_fwd, _pool_bwd)


def robust_pool(x, penalty: str = "huber", alpha=1.0, dim: int = -2):
    """Robust pooling y = argmin_u Σ_i φ(u − x_i; α) over axis ``dim`` (see ``pooling``).

    Args:
        x: floating array, e.g. point features (B, N, C) pooled over N (dim=-2).
        penalty: "quadratic", "pseudo_huber", "huber", "welsch" or "truncated_quadratic".
        alpha: positive scalar; differentiable (``jax.grad`` with respect to it works).
        dim: the axis of the set being pooled.

    Returns:
        x with axis ``dim`` removed. Backward: dy/dx_i = φ''_i / Σ_j φ''_j.
    """
    name = pooling.canonical_penalty(penalty)
    x = jnp.asarray(x)
    if x.ndim == 0 or not -x.ndim <= dim < x.ndim:
        raise ValueError(f"robust_pool: `dim` must be in [{-x.ndim}, {x.ndim}) for an input of "
                         f"shape {x.shape}; received {dim}.")
    moved = jnp.moveaxis(x, dim, -1)
    moved = _as_float("x", moved, "robust_pool")
    _check_positive("alpha", alpha, "robust_pool")
    a = jnp.asarray(alpha, dtype=moved.dtype).reshape(())
    return _pool(moved, a, name)[..., 0]


@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _project(x, kind, radius):
    return projections.project(jnp, kind, x, radius)


def _project_fwd(x, kind, radius):
    y = _project(x, kind, radius)
    return y, (x, y)


def _project_bwd(kind, radius, res, v):
    x, y = res
    return (projections.project_vjp(jnp, kind, x, y, v, radius),)


_project.defvjp(_project_fwd, _project_bwd)


def _projection(kind):
    fn = f"project_{kind}"

    def project(x, radius: float = 1.0):
        x = _as_float("x", x, fn)
        _check_positive("radius", radius, fn)
        return _project(x, kind, float(radius))

    project.__name__ = fn
    project.__doc__ = (f"Euclidean projection of x (..., n) onto the {kind.replace('_', ' ')} of "
                       "radius r along the last axis, with the closed-form gradient of "
                       "``cvxlayers.declarative.projections``.")
    return project


project_simplex = _projection("simplex")
project_l1_ball = _projection("l1_ball")
project_l1_sphere = _projection("l1_sphere")
project_l2_ball = _projection("l2_ball")
project_l2_sphere = _projection("l2_sphere")
project_linf_ball = _projection("linf_ball")
project_linf_sphere = _projection("linf_sphere")
