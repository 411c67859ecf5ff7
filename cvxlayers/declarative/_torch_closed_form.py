"""PyTorch faces of the closed-form declarative nodes: robust pooling and projections.

The maths (solutions and vector–Jacobian products) lives in ``pooling.py`` and
``projections.py``; this module converts, validates and registers the gradient with
``torch.autograd.Function``. Gradients are the closed forms, not autograd through the solver.
"""

from __future__ import annotations

import array_api_compat.torch as xp
import torch
from torch import nn

from . import pooling, projections

__all__ = ["RobustPool", "robust_pool", "project_simplex", "project_l1_ball", "project_l1_sphere",
           "project_l2_ball", "project_l2_sphere", "project_linf_ball", "project_linf_sphere"]


def _check_input(name, x, fn):
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = f"a {x.dtype} tensor" if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"{fn}: `{name}` must be a floating-point torch.Tensor; received {got}. "
                        "Convert it with torch.as_tensor(..., dtype=torch.float64).")
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError(f"{fn}: `{name}` needs a non-empty last axis; received shape "
                         f"{tuple(x.shape)}.")


def _check_positive(name, value, fn):
    v = value.detach() if isinstance(value, torch.Tensor) else value
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise ValueError(f"{fn}: `{name}` must be a scalar; received shape {tuple(v.shape)}.")
        v = float(v)
    if not isinstance(v, (int, float)) or not v > 0:
        raise ValueError(f"{fn}: `{name}` must be a positive number; received {value!r}.")


def _median(x):
    """The median over the last axis, equal to ``pooling._median``'s from a sort (the mean of
    the two middle values for even N), by one selection: ``torch.median`` gives the lower
    middle value l; the upper is l again when more than N/2 entries are ≤ l, else the least
    entry above l. About a third of a sort's cost on large sets."""
    lower = torch.median(x, dim=-1, keepdim=True).values
    n = x.shape[-1]
    if n % 2:
        return lower
    at_most = torch.count_nonzero(x <= lower, dim=-1).unsqueeze(-1)
    above = torch.where(x > lower, x, torch.inf).amin(dim=-1, keepdim=True)
    upper = torch.where(at_most > n // 2, lower, above)
    return 0.5 * (lower + upper)


class _Pool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alpha, penalty):
        with torch.no_grad():
            # α as a Python float: clamp and compare with a 0-d tensor bound run a slower,
            # broadcasting kernel (4x on large sets)
            y = pooling.pool(xp, penalty, x, float(alpha), median=_median)
        ctx.penalty = penalty
        ctx.save_for_backward(x, y, alpha)
        return y

    @staticmethod
    def backward(ctx, v):
        x, y, alpha = ctx.saved_tensors
        need_alpha = ctx.needs_input_grad[1]
        dx, da = pooling.pool_vjp(xp, ctx.penalty, x, y, v, alpha, need_alpha=need_alpha)
        return dx, (da.reshape(alpha.shape) if need_alpha else None), None


def robust_pool(x: torch.Tensor, penalty: str = "huber", alpha=1.0, dim: int = -2) -> torch.Tensor:
    """Robust pooling y = argmin_u Σ_i φ(u − x_i; α) over axis ``dim`` (see ``pooling``).

    Args:
        x: floating tensor, e.g. point features (B, N, C) pooled over the N points (dim=-2).
        penalty: "quadratic", "pseudo_huber", "huber", "welsch" or "truncated_quadratic".
        alpha: positive float or scalar tensor (differentiable when it requires grad).
        dim: the axis of the set being pooled.

    Returns:
        x with axis ``dim`` removed, e.g. (B, C). Backward: dy/dx_i = φ''_i / Σ_j φ''_j.
    """
    name = pooling.canonical_penalty(penalty)
    _check_input("x", x, "robust_pool")
    _check_positive("alpha", alpha, "robust_pool")
    if not -x.ndim <= dim < x.ndim:
        raise ValueError(f"robust_pool: `dim` must be in [{-x.ndim}, {x.ndim}) for an input of "
                         f"shape {tuple(x.shape)}; received {dim}.")
    a = alpha.to(x.dtype) if isinstance(alpha, torch.Tensor) else torch.tensor(alpha, dtype=x.dtype)
    if x.shape[dim] == 0:
        raise ValueError(f"robust_pool: the pooled axis `dim`={dim} is empty in shape "
                         f"{tuple(x.shape)}.")
    # contiguous: the solver's passes and selections over the last axis run several times
    # faster on it than on the strided view (one copy, which autograd routes back)
    moved = torch.movedim(x, dim, -1).contiguous()
    return _Pool.apply(moved, a.reshape(()), name).squeeze(-1)


class RobustPool(nn.Module):
    """``robust_pool`` as a module: (B, N, C) → (B, C) by default. No parameters."""

    def __init__(self, penalty: str = "huber", alpha: float = 1.0, dim: int = -2):
        super().__init__()
        self.penalty = pooling.canonical_penalty(penalty)
        _check_positive("alpha", alpha, "RobustPool")
        self.alpha, self.dim = alpha, dim

    def forward(self, x):
        return robust_pool(x, self.penalty, self.alpha, self.dim)

    def extra_repr(self):
        return f"penalty={self.penalty!r}, alpha={self.alpha}, dim={self.dim}"


class _Project(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kind, radius):
        y = projections.project(xp, kind, x, radius)
        ctx.kind, ctx.radius = kind, radius
        ctx.save_for_backward(x, y)
        return y

    @staticmethod
    def backward(ctx, v):
        x, y = ctx.saved_tensors
        return projections.project_vjp(xp, ctx.kind, x, y, v, ctx.radius), None, None


def _projection(kind):
    fn = f"project_{kind}"

    def project(x: torch.Tensor, radius: float = 1.0) -> torch.Tensor:
        _check_input("x", x, fn)
        _check_positive("radius", radius, fn)
        return _Project.apply(x, kind, float(radius))

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
