"""The exceptions cvxlayers raises, in one place.

Every error names the argument at fault, says what was expected, echoes what was
received and, where it can, suggests a fix. The classes also derive from the
built-in exception a user would reach for (``ValueError``, ``TypeError``,
``RuntimeError``) so that generic ``except`` clauses keep working.
"""

from __future__ import annotations

from typing import Sequence

from diffcp import SolverError as _DiffcpSolverError

__all__ = [
    "CvxLayersError",
    "ProblemError",
    "NotDCPError",
    "NotDPPError",
    "NotDGPError",
    "ParameterError",
    "ParameterTypeError",
    "SolverError",
    "ParameterWarning",
    "NotDifferentiableError",
]


class CvxLayersError(Exception):
    """Base class of every error raised by cvxlayers."""


class ProblemError(CvxLayersError, ValueError):
    """The CVXPY problem, or the parameters/variables given with it, cannot become a layer."""


class NotDCPError(ProblemError):
    """The problem is not disciplined convex (DCP)."""


class NotDGPError(ProblemError):
    """``gp=True`` was given but the problem is not disciplined geometric (DGP)."""


class NotDPPError(ProblemError):
    """The problem is DCP (or DGP) but not DPP, so it cannot be compiled once for all parameters."""


class ParameterError(CvxLayersError, ValueError):
    """A parameter value passed to a layer call has the wrong shape or invalid entries."""


class ParameterTypeError(CvxLayersError, TypeError):
    """A parameter value passed to a layer call is not a real numeric array."""


class SolverError(CvxLayersError, RuntimeError, _DiffcpSolverError):
    """One or more batch elements could not be solved.

    Also a ``diffcp.SolverError``, which is what cvxpylayers raises, so that code written
    for it (``except diffcp.SolverError``) keeps catching failed solves.

    Attributes:
        statuses: the status of every batch element (strings from
            :mod:`cvxlayers.status`), in batch order.
        failed: the indices of the failed batch elements.
        messages: the solver's own message for each failed element, keyed by index.
    """

    def __init__(self, message: str, statuses: Sequence[str] = (),
                 failed: Sequence[int] = (), messages: dict | None = None):
        super().__init__(message)
        self.statuses = list(statuses)
        self.failed = list(failed)
        self.messages = dict(messages or {})


class EngineError(CvxLayersError, RuntimeError):
    """The distributed engine of a layer's ``executor`` cannot be used: a closed Dask
    client, Ray not initialized, an executor that was shut down."""


class ParameterWarning(UserWarning):
    """A parameter value was accepted under a documented rule that may not be what was
    meant (e.g. an asymmetric value of a symmetric parameter, read as its symmetric part)."""


class NotDifferentiableError(CvxLayersError, RuntimeError):
    """A gradient was requested through a layer that can be solved but not differentiated
    (e.g. one with power cones, which diffcp does not differentiate)."""
