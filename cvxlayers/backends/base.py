"""The contract between the core and a solver backend.

A backend receives a batch of cone programs in SCS form (a :class:`ConeDataLayout` and
one data row per element), solves them, and reports per element a solution, a status
and — when asked for — the adjoint of the solution map, which it applies in
:meth:`BatchSolution.adjoint`. Backends never raise for a failed element: status is data,
and the core's policy decides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from cvxlayers.backends.warm import WarmStore, warn_cannot_warm_start
from cvxlayers.errors import NotDifferentiableError, ProblemError

CONE_NAMES = {"z": "zero (equality)", "l": "nonnegative", "q": "second-order",
              "s": "positive semidefinite", "ep": "exponential", "ed": "dual exponential",
              "p": "power"}


def used_cones(cone_dict: dict) -> set:
    """The keys of the cones a problem actually uses (nonzero sizes, nonempty lists)."""
    return {key for key, value in cone_dict.items() if value not in (0, [], None)}


@dataclass
class BatchSolution:
    """What a backend returns for a batch.

    Attributes:
        x: ``(B, n)`` primal solutions (NaN rows for failed elements).
        y: ``(B, m)`` dual solutions (NaN rows for failed elements).
        statuses: one status string per element (see :mod:`cvxlayers.status`).
        messages: the solver's message for failed elements, keyed by index.
        adjoint_fns: per element, a callable ``(dx, dy) -> data row`` applying the adjoint
            of the solution map, or ``None`` (failed, or no gradient requested).
        context: what a batched backend keeps for its batched adjoint.
        iterations: ``(B,)`` the solver's iteration count per element (``None`` if unknown).
        warm: ``(B,)`` whether each element's solve started from its previous solution.
    """

    x: np.ndarray
    y: np.ndarray
    statuses: list
    messages: dict
    adjoint_fns: list = field(default_factory=list)
    context: object = None
    iterations: np.ndarray | None = None
    warm: np.ndarray | None = None


class Backend:
    """Base class of the solver backends. Capabilities are class data.

    Attributes:
        name: the solver's name as users write it.
        supported_cones: the diffcp cone keys it handles.
        warm_starts: whether it can warm-start (see :mod:`cvxlayers.backends.warm`).
        cold_reason: for a backend that cannot, why (the one-time warning says it).
        runs_on_device: whether it keeps data on an accelerator.
        quad_obj: whether it takes a quadratic objective ½xᵀPx (the problem is then
            compiled with P kept) rather than a linear one.
        option_aliases: cvxpylayers' solver-independent ``solver_args`` keys (``eps``,
            ``max_iters``, ...) -> the options of this solver they set. cvxpylayers passes
            them to every solver; here each solver translates them to its own names.
        ignored_options: keys accepted for cvxpylayers' sake that change nothing for this
            solver (e.g. ``verbose`` for the QP backend, which prints nothing anyway).
        accepts_quad_obj: whether it can take ½xᵀPx when the problem needs it (a
            ``cp.quad_form(x, P)`` with a parameter P, which has no linear-objective cone
            form that is affine in P); a backend with ``quad_obj`` always does.
        prefers_quad_obj: whether it gets ½xᵀPx for every quadratic objective (a
            ``sum_squares``, a constant ``quad_form``) whose derivative the call can take
            with P kept (:func:`cvxlayers.backends.cone_qp.differentiates`), as CVXPY
            passes P to it, instead of the second-order-cone rewriting.
        differentiable_cones: the cone keys its derivative handles; ``None`` for all of
            ``supported_cones``.
    """

    name: ClassVar[str] = ""
    supported_cones: ClassVar[frozenset] = frozenset()
    warm_starts: ClassVar[bool] = False
    cold_reason: ClassVar[str] = "it has no warm-start interface."
    runs_on_device: ClassVar[bool] = False
    quad_obj: ClassVar[bool] = False
    option_aliases: ClassVar[dict] = {}
    ignored_options: ClassVar[frozenset] = frozenset()

    def translate_options(self, options: dict) -> dict:
        """``options`` with the generic keys replaced by this solver's own; an option given
        under the solver's own name wins over the generic key."""
        options = dict(options)
        for key in self.ignored_options:
            options.pop(key, None)
        for key, targets in self.option_aliases.items():
            if key in options:
                value = options.pop(key)
                for target in targets:
                    options.setdefault(target, value)
        return options
    accepts_quad_obj: ClassVar[bool] = False
    prefers_quad_obj: ClassVar[bool] = False
    differentiable_cones: ClassVar[frozenset | None] = None
    #: the derivatives it computes (see :mod:`cvxlayers.gradients`).
    gradients: ClassVar[tuple] = ("implicit", "lpgd")

    def gradient_options(self, gradient, options: dict) -> dict:
        """``options`` set up for ``gradient`` (a :class:`cvxlayers.gradients.Gradient`).
        Here diffcp's spelling: LPGD is its ``mode`` with ``derivative_kwargs`` tau and rho."""
        if gradient.name not in self.gradients:
            raise ValueError(
                f"gradient={gradient.name!r} is not available with solver {self.name}, which "
                f"computes {list(self.gradients)}; the smoothed (central-path) gradient needs "
                "an interior-point method: use solver='QP' for QPs and LPs, or gradient='lpgd'.")
        if gradient.name == "lpgd":
            if gradient.args["rho"] > 0 and not self.accepts_quad_obj:
                raise ValueError(
                    f"gradient_args['rho']={gradient.args['rho']!r} makes LPGD's perturbed "
                    f"problems quadratic, which {self.name} cannot solve; use rho=0 or a "
                    "solver that takes a quadratic objective (SCS, CLARABEL, QP).")
            options = {**options, "mode": gradient.side,
                       "derivative_kwargs": {"tau": gradient.args["tau"],
                                             "rho": gradient.args["rho"]}}
        return options

    def check_cones(self, cone_dict: dict) -> None:
        """Raises :class:`ProblemError` if the problem needs a cone this solver lacks."""
        missing = sorted(used_cones(cone_dict) - self.supported_cones)
        if missing:
            names = ", ".join(CONE_NAMES.get(key, key) for key in missing)
            raise ProblemError(
                f"Solver {self.name} does not support the {names} cone(s) this problem uses. "
                "Choose a solver that does: SCS and Clarabel support every cone cvxlayers "
                "compiles to.")

    def differentiates(self, cone_dict: dict) -> bool:
        """Whether the derivative handles every cone the problem uses."""
        return (self.differentiable_cones is None
                or used_cones(cone_dict) <= self.differentiable_cones)

    def check_differentiable(self, cone_dict: dict) -> None:
        """Raises :class:`NotDifferentiableError` if the problem uses a cone the
        derivative does not handle (the power cone, for diffcp)."""
        if self.differentiates(cone_dict):
            return
        missing = sorted(used_cones(cone_dict) - self.differentiable_cones)
        names = ", ".join(CONE_NAMES.get(key, key) for key in missing)
        raise NotDifferentiableError(
            f"A gradient was requested through a layer whose problem uses {names} cone(s), "
            f"which diffcp (cvxlayers' derivative for {self.name}) cannot differentiate; "
            "they come from explicit cp.PowCone3D / cp.PowConeND constraints or from atoms "
            "with approx=False. The layer's values are fine: call it without gradients "
            "(torch.no_grad(), inputs without requires_grad, no jax.grad or tf.GradientTape "
            "around it). To differentiate, write the constraint with cp.power, cp.geo_mean "
            "or cp.pnorm (default approx=True), which compile to second-order cones.")

    @property
    def warm_store(self) -> WarmStore:
        """This backend's previous solution per batch element (one per layer: each layer
        has its own backend objects, and pickling a layer drops them)."""
        store = self.__dict__.get("_warm_store")
        if store is None:
            store = self.__dict__.setdefault("_warm_store", WarmStore())
        return store

    def warm_point(self, layout, batch: int, warm_start: bool):
        """The stored ``(arrays, valid)`` to start a ``warm_start=True`` solve from, or
        ``None`` for a cold start (not requested, batch size changed, nothing stored yet).
        A backend that cannot warm-start warns once per layer and returns ``None``."""
        if not warm_start:
            return None
        if not self.warm_starts:
            if not self.__dict__.get("_warned_cold"):
                self._warned_cold = True
                warn_cannot_warm_start(self.name, self.cold_reason)
            return None
        return self.warm_store.get(layout, batch)

    def solve(self, layout, data: np.ndarray, need_derivative: bool, options: dict,
              n_jobs: int, warm_start: bool = False) -> BatchSolution:  # pragma: no cover
        """Solves the batch; with ``warm_start``, backends that can start each element from
        its previous solution (:meth:`warm_point`)."""
        raise NotImplementedError

    def adjoint(self, layout, solution: BatchSolution, dx: np.ndarray, dy: np.ndarray,
                usable: np.ndarray, n_jobs: int) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

