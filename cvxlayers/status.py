"""Per-element solve status: the vocabulary, the mapping from solver strings, the policy.

Status is data: the backends report one status per batch element, and the policy
here decides what a caller sees — an exception (the default), or a warning with the
failed elements' outputs set to NaN and their gradients to zero.
"""

from __future__ import annotations

import warnings
from typing import Sequence

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


def describe_failures(statuses: Sequence[str], messages: dict, solver: str) -> str:
    """A message that lists the failed batch elements, their status and a hint per status."""
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
    lines.append("To keep the other elements instead of raising, construct the layer with "
                 "on_failure='warn' (failed elements' outputs become NaN, their gradients zero).")
    return "\n".join(lines)


def apply_policy(statuses: Sequence[str], messages: dict, solver: str, on_failure: str) -> np.ndarray:
    """Enforces the failure policy for one call.

    Returns:
        A boolean mask of the usable batch elements.

    Raises:
        SolverError: when ``on_failure == "raise"`` and any element failed.
    """
    if all(status == OPTIMAL for status in statuses):
        return np.ones(len(statuses), dtype=bool)
    usable = np.array([status in USABLE for status in statuses], dtype=bool)
    n_inaccurate = sum(status == OPTIMAL_INACCURATE for status in statuses)
    if not usable.all():
        message = describe_failures(statuses, messages, solver)
        if on_failure == "raise":
            raise SolverError(message, statuses, failed_indices(statuses), messages)
        warnings.warn(message, RuntimeWarning, stacklevel=4)
    if n_inaccurate:
        warnings.warn(
            f"{solver} returned an inaccurate solution for {n_inaccurate} of {len(statuses)} "
            "batch element(s); their outputs and gradients are used but may be imprecise. "
            "Tighten tolerances or raise iteration limits through solver_args.",
            RuntimeWarning, stacklevel=4)
    return usable
