"""Solver backends, one class per solver, chosen by name."""

from __future__ import annotations

from cvxlayers.backends.base import Backend, BatchSolution
from cvxlayers.backends.diffcp_backend import ClarabelBackend, ECOSBackend, SCSBackend
from cvxlayers.backends.qp_backend import QPBackend

__all__ = ["Backend", "BatchSolution", "BACKENDS", "get_backend", "available_solvers"]

BACKENDS = {cls.name: cls for cls in (SCSBackend, ECOSBackend, ClarabelBackend, QPBackend)}


def available_solvers() -> list:
    """The solver names a layer accepts (CVXPY's names, e.g. ``cp.SCS``)."""
    return list(BACKENDS)


def get_backend(name) -> type:
    """The backend class for a solver name, case-insensitively.

    Raises:
        ValueError: for an unknown name, listing the available ones.
    """
    key = str(name).upper() if isinstance(name, str) else None
    if key not in BACKENDS:
        raise ValueError(
            f"Unknown solver {name!r}; available solvers: {', '.join(available_solvers())} "
            "(CVXPY's names such as cp.SCS are accepted, in any case; 'QP' is cvxlayers' "
            "batched interior-point QP solver).")
    return BACKENDS[key]
