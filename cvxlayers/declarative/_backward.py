"""One backward pass of a declarative node, shared by the three faces.

The face supplies what only its autodiff can compute (``∇_y f``, the constraint values
and their Jacobian ``A = D_y c``, Hessian-vector products of the Lagrangian) and, at the
end, the gradient in ``x`` of ``−(wᵀ∇_y L + uᵀc)``; everything in between — the active
set, the multipliers, the choice and the solve of the linear system, the checks — is here.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from cvxlayers.declarative import _ift

__all__ = ["Options", "NonStationaryWarning", "IllConditionedWarning", "adjoint"]


class NonStationaryWarning(RuntimeWarning):
    """The forward's ``y`` is not a (KKT) stationary point, so the implicit gradient is
    that of a point the node did not reach; named batch elements are affected."""


class IllConditionedWarning(RuntimeWarning):
    """The linear system of the backward pass was singular or ill-conditioned at the
    named batch elements; its pseudo-inverse (or damped CG) was used."""


@dataclass(frozen=True)
class Options:
    """The backward pass's tolerances (see the docs page "Declarative nodes").

    Attributes:
        method: ``"auto"`` (dense when ``m + p ≤ 256``), ``"dense"`` or ``"cg"``.
        rcond: pseudo-inverse cut-off relative to the largest eigenvalue; ``None`` is
            ``10 (m + p) eps``.
        active_tol: an inequality ``g_i ≤ 0`` is active when ``g_i ≥ −active_tol``.
        stationarity_tol: warn when ``‖∇_y L‖_∞ > stationarity_tol · max(1, ‖∇_y f‖_∞)``
            or a constraint is violated by more than it; ``None`` is ``1e-6`` in float64,
            ``1e-3`` in float32.
        cg_tol, cg_maxiter: CG stops at ``‖r‖ ≤ cg_tol ‖b‖`` or after ``cg_maxiter`` steps
            (``None``: ``max(100, 2m)``).
        damping: CG solves ``H + δI``, ``δ = damping · |vᵀHv|/‖v‖²``.
    """

    method: str = "auto"
    rcond: float | None = None
    active_tol: float = 1e-6
    stationarity_tol: float | None = None
    cg_tol: float = 1e-10
    cg_maxiter: int | None = None
    damping: float = 0.0

    def __post_init__(self):
        _ift.choose_method(self.method, 0, 0)
        for name in ("active_tol", "cg_tol", "damping"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"Argument `{name}` must be a non-negative number; received {value!r}.")


def _eps(dtype_name: str) -> float:
    return float(np.finfo(np.float32 if "32" in dtype_name or "16" in dtype_name else np.float64).eps)


def adjoint(ops, options: Options, v, grad_f, cons, A, n_eq, hvp_of, dtype_name):
    """Solves the backward's linear system for one batch.

    Args:
        ops: the face's array operations.
        v: ``(B, m)`` cotangent of ``y``. grad_f: ``(B, m)``.
        cons: ``(B, p)`` constraint values ``(h, g)`` or ``None``; A: ``(B, p, m)`` or ``None``.
        n_eq: how many of the ``p`` are equalities.
        hvp_of: ``mu -> hvp``, where ``hvp`` maps ``(B, m, k)`` to ``(B, m, k)``
            (products with ``∇²_yy L`` at the multipliers ``mu``, ``None`` without constraints).
        dtype_name: ``str`` of the dtype, for the default tolerances.

    Returns:
        ``(w, u, mu)``; ``u`` and ``mu`` are ``None`` without constraints.
    """
    m = v.shape[-1]
    p = 0 if A is None else A.shape[1]
    eps = _eps(dtype_name)
    rcond = options.rcond if options.rcond is not None else _ift.rcond_default(eps, m + p)
    tol = options.stationarity_tol
    if tol is None:
        tol = 1e-6 if eps < 1e-10 else 1e-3
    if A is None:
        mask = mu = None
        residual = grad_f
    else:
        eq = ops.ones_like(cons[:, :n_eq])
        ineq = ops.cast(cons[:, n_eq:] >= -options.active_tol, cons)
        mask = ops.concat([eq, ineq], -1)
        mu, residual = _ift.multipliers(ops, A, mask, grad_f, rcond)
    hvp = hvp_of(mu)
    method = _ift.choose_method(options.method, m, p)
    if method == "dense":
        H = hvp(ops.broadcast_eye(m, v))
        w, u, dropped = _ift.adjoint_dense(ops, H, A, mask, v, rcond)
        trouble = dropped > 0
    else:
        maxiter = options.cg_maxiter if options.cg_maxiter is not None else max(100, 2 * m)
        w, u, converged = _ift.adjoint_cg(ops, hvp, A, mask, v, options.damping,
                                          options.cg_tol, maxiter, rcond)
        trouble = converged < 1
    _warn(ops, tol, grad_f, residual, cons, n_eq, mask, mu, trouble, method)
    return w, u, mu


def _elements(flags) -> list[int]:
    return [int(i) for i in np.flatnonzero(np.asarray(flags))]


def _warn(ops, tol, grad_f, residual, cons, n_eq, mask, mu, trouble, method):
    """The paper's checks, in eager execution only (under ``jit``/``tf.function`` the
    values are symbolic and the checks are skipped, as documented)."""
    values = ops.values((grad_f, residual, trouble) + (() if cons is None else (cons, mask, mu)))
    if values is None:
        return
    grad_f, residual, trouble = values[:3]
    scale = np.maximum(1.0, np.abs(grad_f).max(-1))
    bad = np.abs(residual).max(-1) > tol * scale
    if cons is not None:
        cons, mask, mu = values[3:]
        violation = np.concatenate([np.abs(cons[:, :n_eq]), np.maximum(cons[:, n_eq:], 0)], -1)
        bad |= violation.max(-1, initial=0.0) > tol * scale
        # An active inequality's multiplier must be non-negative (Proposition 4.6).
        bad |= (mu[:, n_eq:] < -tol * scale[:, None]).any(-1)
    if bad.any():
        warnings.warn(
            f"The declarative node's solution is not a stationary (KKT) point at batch "
            f"elements {_elements(bad)} (gradient of the Lagrangian, constraint violation or "
            f"a negative inequality multiplier above stationarity_tol={tol:g}); the implicit "
            "gradient there is that of a point the solver did not reach. Solve more "
            "accurately or raise `stationarity_tol`.", NonStationaryWarning, stacklevel=4)
    if np.asarray(trouble).any():
        what = ("singular or ill-conditioned (eigenvalues below rcond dropped: pseudo-inverse)"
                if method == "dense" else "not solved by CG to cg_tol within cg_maxiter")
        warnings.warn(
            f"The backward's linear system is {what} at batch elements "
            f"{_elements(trouble)}.", IllConditionedWarning, stacklevel=4)
