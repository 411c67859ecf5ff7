"""Solver backends, one class per solver, chosen by name."""

from __future__ import annotations

from cvxlayers.backends.base import Backend, BatchSolution
from cvxlayers.backends.diffcp_backend import ClarabelBackend, ECOSBackend, SCSBackend
from cvxlayers.backends.qp_backend import QPBackend

__all__ = ["Backend", "BatchSolution", "BACKENDS", "get_backend", "available_solvers",
           "register_solver"]

BACKENDS = {cls.name: cls for cls in (SCSBackend, ECOSBackend, ClarabelBackend, QPBackend)}
#: Custom solver objects registered by name (see :func:`register_solver`).
_REGISTERED = {}


def register_solver(name: str, solver) -> None:
    """Registers a custom solver object under ``name``, so that layers (and calls, through
    ``solver_args={"solver": name}``) may name it like a built-in solver.

    Args:
        name: the name; matched exactly, and not one of the built-in names.
        solver: an object with ``solve``/``derivative`` (per element) or
            ``solve_batch``/``derivative_batch`` (batched), or a cvxpylayers
            ``SolverInterface``: see :mod:`cvxlayers.backends.custom`.

    Raises:
        ValueError: for a built-in solver's name. TypeError: for an object that does not
            satisfy the contract (the message names what it lacks).
    """
    from cvxlayers.backends.custom import check_contract

    if not isinstance(name, str) or not name or name.upper() in BACKENDS:
        raise ValueError(f"`name` must be a new solver name (a non-empty string other than "
                         f"{', '.join(BACKENDS)}); received {name!r}.")
    check_contract(solver)
    _REGISTERED[name] = solver


def registered_solver(name):
    """The solver object registered under ``name``, or ``None``."""
    return _REGISTERED.get(name) if isinstance(name, str) else None


def available_solvers() -> list:
    """The built-in solver names a layer accepts (CVXPY's names, e.g. ``cp.SCS``); custom
    solvers registered with :func:`register_solver` come in addition."""
    return list(BACKENDS)


def get_backend(name) -> type:
    """The backend class for a solver name, case-insensitively.

    Raises:
        ValueError: for an unknown name, listing the available ones.
    """
    key = str(name).upper() if isinstance(name, str) else None
    if key not in BACKENDS:
        raise ValueError(
            f"Unknown solver {name!r}; available solvers: {', '.join(available_solvers())}"
            f"{''.join(', ' + n for n in _REGISTERED)} "
            "(CVXPY's names such as cp.SCS are accepted, in any case; 'QP' is cvxlayers' "
            "batched interior-point QP solver).")
    return BACKENDS[key]
