"""LPGD for the QP backend: the adjoint as a central difference of two perturbed solves.

With the incoming gradients g = (g_x, g_y) of x and of y = [ν; λ] (SCS form: Ax + s = b
with A = [A_eq; G], b = [b_eq; h]), LPGD (Paulus et al., 2024; :mod:`cvxlayers.gradients`)
solves, for the whole batch at once with :func:`~cvxlayers.backends.qp_solver.solve_qp`,

    (x_±, y_±) = argmin ½xᵀ(P + ρI)x + (q ± τ g_x − ρ x*)ᵀx  s.t.  A_eq x = b_eq ∓ τ g_ν,
                                                              Gx ≤ h ∓ τ g_λ,

and differences the gradient of the Lagrangian ℒ = ½xᵀPx + qᵀx + yᵀ(Ax − b) in the data,

    ∇q = (x_+ − x_−)/(2τ),  ∇b = −(y_+ − y_−)/(2τ),  ∇A = (y_+ x_+ᵀ − y_− x_−ᵀ)/(2τ),
    ∇P = ½(x_+ x_+ᵀ − x_− x_−ᵀ)/(2τ),

formed at the structural entries only. One side (``lpgd_right``/``lpgd_left``) replaces the
other perturbed solve by the solution itself and 2τ by τ. As τ → 0 this is the KKT
adjoint; for finite τ it is informative where that is zero (an LP's vertex).
"""

from __future__ import annotations

import warnings

import numpy as np


def perturbed(data, x, y, g_x, g_y, sign: float, tau: float, rho: float, options, engine):
    """The batch re-solved with the perturbation of the module docstring on side ``sign``
    (+1 right, −1 left): (x, y, statuses)."""
    from cvxlayers.backends.qp_solver import solve_qp

    P, q, A, b, G, h = data
    p = A.shape[-2]
    t = sign * tau
    xp_x, g_x, g_y = (engine.asarray(v) for v in (x, g_x, g_y))
    if rho:
        n = q.shape[-1]
        eye = engine.asarray(np.eye(n))
        P = P + rho * eye
    q_t = q + t * g_x - rho * xp_x
    with np.errstate(all="ignore"):
        solution = solve_qp(P, q_t, A, b - t * g_y[:, :p], G, h - t * g_y[:, p:],
                            keep_factorization=False, **options)
    x_t = engine.to_numpy(solution.x)
    y_t = np.concatenate([engine.to_numpy(solution.nu), engine.to_numpy(solution.lam)],
                         axis=1)
    return x_t, y_t, solution.statuses


def adjoint(layout, data, x, y, dx, dy, usable, gradient, options, engine) -> np.ndarray:
    """Data-row gradients [∇A_scs, ∇b_scs, ∇c, ∇P] (layout order) by LPGD."""
    from cvxlayers import status as st
    from cvxlayers.backends.qp_backend import _outer_entries

    tau, rho = gradient.args["tau"], gradient.args["rho"]
    keep = usable[:, None]
    x, y = np.where(keep, x, 0.0), np.where(keep, y, 0.0)
    g_x, g_y = np.where(keep, dx, 0.0), np.where(keep, dy, 0.0)
    sides = {"lpgd": (1.0, -1.0), "lpgd_right": (1.0,), "lpgd_left": (-1.0,)}[gradient.side]
    ends, ok = {}, usable.copy()
    for sign in sides:
        x_t, y_t, statuses = perturbed(data, x, y, g_x, g_y, sign, tau, rho, options, engine)
        ends[sign] = (x_t, y_t)
        ok &= np.array([status in st.USABLE for status in statuses])
    x_r, y_r = ends.get(1.0, (x, y))
    x_l, y_l = ends.get(-1.0, (x, y))
    width = tau * len(sides)
    failed = np.flatnonzero(usable & ~ok)
    if failed.size:
        warnings.warn(f"LPGD's perturbed QP failed to solve for batch elements "
                      f"{failed.tolist()}; their gradients are zero. Try a smaller "
                      f"gradient_args['tau'] (received {tau!r}) or gradient side "
                      "'lpgd_left'/'lpgd_right'.", RuntimeWarning, stacklevel=6)
    x_r, y_r, x_l, y_l = (np.where(ok[:, None], v, 0.0) for v in (x_r, y_r, x_l, y_l))
    d_data = np.zeros((x.shape[0], layout.size))
    n_a, n_b = layout.nnz, layout.m
    d_data[:, n_a:n_a + n_b] = -(y_r - y_l) / width
    d_data[:, n_a + n_b:n_a + n_b + layout.n] = (x_r - x_l) / width
    if layout.a_parametrized:
        _outer_entries([(y_r, x_r), (-y_l, x_l)], layout.entries("A"), 1.0 / width,
                       d_data[:, :n_a])
    if layout.p_parametrized:
        _outer_entries([(x_r, x_r), (-x_l, x_l)], layout.entries("P"), 0.5 / width,
                       d_data[:, n_a + n_b + layout.n:])
    d_data[~ok] = 0.0
    return d_data
