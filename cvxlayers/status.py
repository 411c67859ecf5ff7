"""Per-element solve status: the vocabulary, the mapping from solver strings, the policy.

Status is data: the backends report one status per batch element, and the policy
here decides what a caller sees — an exception (the default), or a warning with the
failed elements' outputs set to NaN and their gradients to zero.
"""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

import numpy as np

from cvxlayers.errors import SolverError

OPTIMAL = "optimal"
OPTIMAL_INACCURATE = "optimal_inaccurate"
INFEASIBLE = "infeasible"
INFEASIBLE_INACCURATE = "infeasible_inaccurate"
UNBOUNDED = "unbounded"
UNBOUNDED_INACCURATE = "unbounded_inaccurate"
FAILED = "failed"

#: Statuses whose solution is used; every other status is a failure.
USABLE = frozenset({OPTIMAL, OPTIMAL_INACCURATE})

ON_FAILURE_POLICIES = ("raise", "warn")

_HINTS = {
    INFEASIBLE: "the constraints admit no point for these parameter values; check the "
                "parameters that enter the constraints",
    INFEASIBLE_INACCURATE: "the solver believes the constraints admit no point; check the "
                           "parameters, or tighten the solver's tolerances",
    UNBOUNDED: "the objective can decrease without limit for these parameter values; "
               "add bounds or regularization",
    UNBOUNDED_INACCURATE: "the solver believes the objective is unbounded; add bounds or "
                          "regularization, or tighten the solver's tolerances",
    FAILED: "the solver stopped without a solution; raise its iteration limit through "
            "solver_args (max_iters for SCS, max_iter for QP), rescale the data, or try "
            "another solver",
}


#: Parameter entries larger than this in magnitude get the scaling hint on a failure.
#: The solvers stop at tolerances near 1e-5 to 1e-9, relative in part and absolute in
#: part, in double precision; past about 1e10 the data swamps both, and SCS, ECOS and
#: Clarabel report a feasible, bounded problem as infeasible, unbounded or failed.
LARGE_ENTRY = 1e10


def scale_hint(labels: Sequence[str], values: Sequence[np.ndarray]) -> str | None:
    """The hint about the data's scale when a parameter's largest entry exceeds
    :data:`LARGE_ENTRY`, naming that parameter; ``None`` otherwise.

    Why a hint of its own: huge data makes every solver report a status ("infeasible",
    "unbounded", "failed") whose own hint sends the user to the constraints or the
    iteration limit, while the cause is the magnitude of the numbers.
    """
    largest, culprit = 0.0, None
    for label, value in zip(labels, values):
        value = np.asarray(value)
        top = float(np.max(np.abs(value))) if value.size else 0.0
        if top > largest:
            largest, culprit = top, label
    if largest <= LARGE_ENTRY:
        return None
    return (f"Hint for the data's scale: parameter {culprit} has entries as large as "
            f"{largest:.3g}; the solvers work in double precision to tolerances near 1e-5 to "
            "1e-9, and data this large can make a feasible, bounded problem look infeasible, "
            "unbounded or failed (or its solution inaccurate). Rescale the parameters to "
            f"magnitudes near 1 (entries above {LARGE_ENTRY:.0e} get this hint) and scale the "
            "outputs back.")


def normalize_status(raw: str) -> str:
    """Maps a status string from SCS, ECOS or Clarabel (as diffcp reports it) to ours."""
    text = str(raw).lower()
    if "inaccurate" in text or "almost" in text:
        if "infeas" in text:
            return INFEASIBLE_INACCURATE
        if "unbound" in text or "dual_infeas" in text:
            return UNBOUNDED_INACCURATE
        return OPTIMAL_INACCURATE
    if "infeas" in text:
        return INFEASIBLE
    if "unbound" in text:
        return UNBOUNDED
    if text in ("solved", "optimal"):
        return OPTIMAL
    return FAILED


def failed_indices(statuses: Sequence[str]) -> list[int]:
    """Indices of the batch elements whose status is not usable."""
    return [i for i, status in enumerate(statuses) if status not in USABLE]


def describe_failures(statuses: Sequence[str], messages: dict, solver: str,
                      extra_hint: str | None = None) -> str:
    """A message that lists the failed batch elements, their status and a hint per status,
    plus ``extra_hint`` (e.g. :func:`scale_hint`'s) when given."""
    failed = failed_indices(statuses)
    lines = [f"{solver} failed on {len(failed)} of {len(statuses)} batch element(s):"]
    shown = failed[:10]
    for i in shown:
        detail = f" ({messages[i]})" if messages.get(i) else ""
        lines.append(f"  element {i}: {statuses[i]}{detail}")
    if len(failed) > len(shown):
        lines.append(f"  ... and {len(failed) - len(shown)} more: {failed[len(shown):]}")
    for status in sorted({statuses[i] for i in failed}):
        lines.append(f"Hint for '{status}': {_HINTS.get(status, _HINTS[FAILED])}.")
    if extra_hint:
        lines.append(extra_hint)
    lines.append("To keep the other elements instead of raising, construct the layer with "
                 "on_failure='warn' (failed elements' outputs become NaN, their gradients zero).")
    return "\n".join(lines)


def apply_policy(statuses: Sequence[str], messages: dict, solver: str, on_failure: str,
                 hint: Callable[[], str | None] | None = None,
                 warn: bool = True) -> np.ndarray:
    """Enforces the failure policy for one call.

    ``hint``, called only when some element is not optimal (so that a successful call
    pays nothing for it), returns an extra line for the message or ``None``. With
    ``warn=False`` nothing is warned (a re-solve whose first solve already warned); a
    failure under ``on_failure="raise"`` still raises.

    Returns:
        A boolean mask of the usable batch elements.

    Raises:
        SolverError: when ``on_failure == "raise"`` and any element failed.
    """
    if all(status == OPTIMAL for status in statuses):
        return np.ones(len(statuses), dtype=bool)
    usable = np.array([status in USABLE for status in statuses], dtype=bool)
    n_inaccurate = sum(status == OPTIMAL_INACCURATE for status in statuses)
    extra = hint() if hint is not None else None
    if not usable.all():
        message = describe_failures(statuses, messages, solver, extra)
        if on_failure == "raise":
            raise SolverError(message, statuses, failed_indices(statuses), messages)
        if warn:
            warnings.warn(message, RuntimeWarning, stacklevel=4)
    if n_inaccurate and warn:
        warnings.warn(
            f"{solver} returned an inaccurate solution for {n_inaccurate} of {len(statuses)} "
            "batch element(s); their outputs and gradients are used but may be imprecise. "
            "Tighten tolerances or raise iteration limits through solver_args."
            + (f"\n{extra}" if extra else ""),
            RuntimeWarning, stacklevel=4)
    return usable
