"""Which derivative a layer's backward pass computes: ``gradient=`` and ``gradient_args=``.

A layer's output is x*(θ) = argmin f(x; θ) over the feasible set. Three derivatives of it
can be chosen, each returning, for an incoming gradient g = ∂L/∂x*, a vector ∇_θ:

``"implicit"`` (default)
    the exact vector-Jacobian product ∇_θ = (∂x*/∂θ)ᵀ g, from differentiating the optimality
    conditions at the solution (diffcp's self-dual embedding; the KKT system for ``"QP"``).
    For a linear program x* sits at a vertex and is piecewise constant in the cost, so this
    gradient is zero almost everywhere.

``"lpgd"`` — Lagrangian proximal gradient descent (Paulus et al., 2024), arguments ``tau``
    and ``rho``. Two perturbed problems are solved, with the cost tilted along the
    incoming gradient, θ_± : c ± τ g_x, b ∓ τ g_y, and a proximal term ρ/2‖x − x*‖²,

        (x_±, y_±) = argmin ½xᵀ(P + ρI)x + (c ± τ g_x − ρ x*)ᵀx  s.t.  Ax + s = b ∓ τ g_y, s ∈ K,

    and the gradient is the central difference of the Lagrangian's parameter gradient
    ∇_θ ℒ(x, y; θ) (∇_c = x, ∇_b = −y, ∇_A = y xᵀ, ∇_P = ½ x xᵀ):

        ∇_θ = [∇_θ ℒ(x_+, y_+) − ∇_θ ℒ(x_−, y_−)] / (2τ).

    As τ → 0 this is the implicit gradient wherever that exists; for finite τ it is the
    gradient of an envelope of the loss linearized at x*, nonzero as soon as a step of
    size τ‖g‖ along −g changes the solution (another vertex of an LP). Defaults
    ``tau=1.0``: the tilt τ g is then as large as the incoming gradient itself, which for
    costs and losses of unit scale moves the solution to a neighbouring vertex; a small τ
    gives back the zero implicit gradient, which defeats the purpose (τ has the units of
    cost per unit of gradient: rescale it with your problem's cost and loss). ``rho=0.0``:
    the perturbed problems stay LPs, which every solver (ECOS included, which takes no
    quadratic term) accepts; ρ > 0 makes them strongly convex, and the gradient continuous
    in g. Two extra solves per element and backward pass. Every solver.

``"smoothed"`` — the derivative at a point of the central path, argument ``mu``, for the
    ``"QP"`` backend. The interior-point method follows (x_μ, ν_μ, λ_μ, s_μ) solving

        Px + q + Aᵀν + Gᵀλ = 0,  Ax = b,  Gx + s = h,  s ∘ λ = μ 1,  s, λ > 0,

    the optimality conditions of the log-barrier problem min ½xᵀPx + qᵀx − μ Σ log(h − Gx)
    s.t. Ax = b, whose solution is a smooth function of the data; μ → 0 gives x*. The
    forward pass still returns x*; the backward differentiates x_μ instead, with the KKT
    matrix J = [[P, Aᵀ, Gᵀ], [A, 0, 0], [Λ_μ G, 0, −S_μ]]: an inactive constraint whose
    slack is of order μ/λ then still passes gradient, and an LP's gradient is nonzero.
    μ (default ``1e-2``) has the units of the objective (s λ does); the smoothed
    gradient differs from the implicit one by O(μ) where the latter is smooth. The default
    is 1 % of a unit-scale objective: small enough to leave a smooth QP's gradient nearly
    exact, large enough that an LP with unit-scale costs passes a usable signal (in
    ``examples/decision_focused.py``, μ = 1e-3 learns several times slower).

``gradient`` and ``gradient_args`` are constructor arguments of every adapter's layer and
``solver_args`` keys of a call (the call's win). cvxpylayers 1.2's spelling,
``solver_args={"mode": "lpgd", "derivative_kwargs": {"tau": ..., "rho": ...}}``, also selects
LPGD, with the defaults above filling in what it omits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

GRADIENTS = ("implicit", "lpgd", "smoothed")
#: Each gradient's arguments and their defaults (the module docstring says why).
DEFAULT_ARGS = {"implicit": {}, "lpgd": {"tau": 1.0, "rho": 0.0}, "smoothed": {"mu": 1e-2}}
#: diffcp's LPGD modes: both sides (central difference) or one.
LPGD_MODES = ("lpgd", "lpgd_right", "lpgd_left")


@dataclass(frozen=True)
class Gradient:
    """A validated choice of derivative: its name and its arguments (defaults filled in).

    Attributes:
        name: ``"implicit"``, ``"lpgd"`` or ``"smoothed"``.
        args: ``{}``; ``{"tau", "rho"}``; or ``{"mu"}``.
        side: for LPGD, diffcp's mode: ``"lpgd"`` (central), ``"lpgd_right"``, ``"lpgd_left"``.
    """

    name: str = "implicit"
    args: dict = field(default_factory=dict)
    side: str = "lpgd"

    def __hash__(self):  # a dict field: hash by value, for option caches
        return hash((self.name, tuple(sorted(self.args.items())), self.side))


IMPLICIT = Gradient()


def _positive(value, name: str, where: str, allow_zero: bool = False) -> float:
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value) and (value >= 0 if allow_zero else value > 0))
    if not ok:
        bound = "≥ 0" if allow_zero else "> 0"
        raise ValueError(f"{where}['{name}'] must be a finite number {bound}; received "
                         f"{value!r}.")
    return float(value)


def check_gradient(gradient, gradient_args=None, *, where: str = "gradient",
                   args_where: str = "gradient_args") -> Gradient:
    """Validates ``gradient`` and ``gradient_args`` and fills in the defaults.

    Raises:
        ValueError: an unknown gradient, an argument the gradient does not take, or a value
            out of range, naming the argument and echoing the value received.
        TypeError: ``gradient_args`` that is not a dict.
    """
    if isinstance(gradient, Gradient):
        return gradient
    if gradient not in GRADIENTS:
        raise ValueError(f"`{where}` must be one of {GRADIENTS}; received {gradient!r}.")
    if gradient_args is None:
        gradient_args = {}
    if not isinstance(gradient_args, dict):
        raise TypeError(f"`{args_where}` must be a dict of the gradient's arguments; "
                        f"received {type(gradient_args).__name__} {gradient_args!r}.")
    defaults = DEFAULT_ARGS[gradient]
    unknown = sorted(set(gradient_args) - set(defaults), key=str)
    if unknown:
        takes = (f"takes {sorted(defaults)}" if defaults else "takes no arguments")
        raise ValueError(f"`{args_where}` has {unknown}, which gradient={gradient!r} does not "
                         f"take; it {takes}.")
    args = {**defaults, **gradient_args}
    if gradient == "lpgd":
        args["tau"] = _positive(args["tau"], "tau", args_where)
        args["rho"] = _positive(args["rho"], "rho", args_where, allow_zero=True)
    elif gradient == "smoothed":
        args["mu"] = _positive(args["mu"], "mu", args_where)
    return Gradient(gradient, args)


def resolve(options: dict, default: Gradient) -> Gradient:
    """The call's gradient from its options, which it removes from ``options``:
    ``gradient``/``gradient_args`` keys, else cvxpylayers' ``mode="lpgd*"`` with
    ``derivative_kwargs``, else the layer's ``default``."""
    mode = options.get("mode")
    if "gradient" in options or "gradient_args" in options:
        name = options.pop("gradient", default.name)
        args = options.pop("gradient_args", None)
        if args is None and name == default.name:
            args = default.args
        gradient = check_gradient(name, args, where="solver_args['gradient']",
                                  args_where="solver_args['gradient_args']")
    elif mode in LPGD_MODES and default.name == "smoothed":
        gradient = default  # a conflict, refused below
    elif mode in LPGD_MODES:
        kwargs = options.get("derivative_kwargs") or {}
        gradient = check_gradient("lpgd", {k: v for k, v in kwargs.items() if v is not None},
                                  args_where="solver_args['derivative_kwargs']")
    else:
        gradient = default
    if gradient.name == "lpgd":
        side = mode if mode in LPGD_MODES else default.side
        gradient = Gradient("lpgd", gradient.args, side)
    elif mode in LPGD_MODES:
        raise ValueError(f"mode={mode!r} asks for LPGD, but the gradient is "
                         f"{gradient.name!r}; pass one of them.")
    if gradient.name == "lpgd":
        options.pop("derivative_kwargs", None)  # rebuilt from the validated arguments
    return gradient
