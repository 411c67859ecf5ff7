"""Custom solvers: a solver cvxlayers does not ship, plugged in with one solve and one
derivative on the cone program, so that it gains every adapter, batching, broadcasting,
status handling and the core's errors.

The layer hands the solver the cone program of each batch element in SCS form,

    minimize cᵀx  subject to  Ax + s = b,  s ∈ K,

with A an ``(m, n)`` CSC matrix whose sparsity is the same for every element (entries that
vanish for some parameter values are kept as explicit zeros), and K the cones in diffcp's
``cone_dict`` (keys ``z``, ``l``, ``q``, ``s``, ``ep``, ``p``, in that row order). The
solver returns the primal x, the dual y and a status; its derivative receives the
gradients (dx, dy) of a loss with respect to x and y and returns (dA, db, dc), the
gradients with respect to the data: the adjoint of the solution map (x, y) = S(A, b, c).

A solver is any object with either

* ``solve(A, b, c, cone_dict, need_derivative, **options) -> dict`` and
  ``derivative(state, dx, dy) -> (dA, db, dc)``: one element at a time (the layer maps
  them over the batch on ``n_jobs`` threads). The dict has ``x`` ``(n,)``, ``y`` ``(m,)``,
  ``status`` (a string: "optimal", "solved", "infeasible", ... as SCS, ECOS, Clarabel or
  CVXPY write them) and ``state`` (anything; handed back to ``derivative``). ``dA`` is a
  sparse matrix on A's pattern, a dense ``(m, n)`` array, or A's ``nnz`` values in CSC
  order; or
* ``solve_batch(batch, need_derivative, **options) -> dict`` and
  ``derivative_batch(state, dx, dy) -> (dA_values, db, dc)``: the whole batch at once, with
  ``batch`` a :class:`ConeBatch` (A's values ``(B, nnz)`` on one CSC pattern, ``b``
  ``(B, m)``, ``c`` ``(B, n)``); the dict has ``x`` ``(B, n)``, ``y`` ``(B, m)``,
  ``status`` (one string per element) and ``state``. ``derivative_batch`` returns
  ``(B, nnz)``, ``(B, m)``, ``(B, n)`` arrays; rows of failed elements come in as zeros.

Optional attributes: ``name`` (used in messages; default: the class name) and
``supported_cones`` (the cone keys it solves; default: all). cvxpylayers 1.2's
``SolverInterface`` objects are taken as they are (:mod:`.solver_interface`).

A solve that raises, or that returns non-finite values, is that element's failure
(status ``failed`` with the exception's text), never the batch's: the layer's
``on_failure`` policy decides. Options the solver does not accept reach it anyway:
``solver_args`` are passed through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from cvxlayers import status as st
from cvxlayers.backends.base import Backend, BatchSolution
from cvxlayers.backends.pool import map_batch

ALL_CONES = frozenset({"z", "l", "q", "s", "ep", "ed", "p"})


class ContractError(TypeError):
    """A solver object returned something outside the contract: the caller's bug, raised
    rather than reported as an element's failure."""


@dataclass
class ConeBatch:
    """A batch of cone programs on one sparsity pattern (what ``solve_batch`` receives).

    Attributes:
        a_values: ``(B, nnz)`` A's values in CSC order.
        a_indices, a_indptr: A's CSC pattern, shared by every element.
        shape: ``(m, n)``.
        b: ``(B, m)``.  c: ``(B, n)``.
        cone_dict: the cones in diffcp's form.
    """

    a_values: np.ndarray
    a_indices: np.ndarray
    a_indptr: np.ndarray
    shape: tuple
    b: np.ndarray
    c: np.ndarray
    cone_dict: dict

    def matrix(self, i: int) -> sp.csc_matrix:
        """Element i's A as a CSC matrix of its own."""
        return sp.csc_matrix((self.a_values[i].copy(), self.a_indices.copy(),
                              self.a_indptr.copy()), shape=self.shape)


def is_custom(solver) -> bool:
    """Whether ``solver`` is a solver object rather than a solver name."""
    return not isinstance(solver, str) and solver is not None


def check_contract(solver) -> None:
    """Raises TypeError naming what ``solver`` lacks to be a custom solver."""
    from cvxlayers.backends import solver_interface

    if solver_interface.is_solver_interface(solver):
        return
    per_element = [name for name in ("solve", "derivative") if not callable(
        getattr(solver, name, None))]
    batched = [name for name in ("solve_batch", "derivative_batch") if not callable(
        getattr(solver, name, None))]
    if per_element and batched:
        raise TypeError(
            f"`solver` must be a solver name (e.g. 'SCS') or a solver object with methods "
            f"solve() and derivative() (per element) or solve_batch() and "
            f"derivative_batch() (batched), or a cvxpylayers SolverInterface; received "
            f"{solver!r} ({type(solver).__name__}), which lacks "
            f"{' and '.join(per_element)} (and {' and '.join(batched)}). See the "
            "custom-solvers guide.")


def solver_name(solver) -> str:
    return str(getattr(solver, "name", None) or type(solver).__name__)


class CustomBackend(Backend):
    """A user's solver object as a backend. Capabilities come from the object.

    Args:
        solver: an object satisfying the contract in the module docstring.
    """

    gradients = ("implicit",)
    cold_reason = "a custom solver takes no starting point from cvxlayers."
    ignored_options = frozenset({"mode"})  # diffcp's derivative mode: not the solver's

    def __init__(self, solver):
        from cvxlayers.backends import solver_interface

        check_contract(solver)
        if solver_interface.is_solver_interface(solver):
            solver = solver_interface.SolverInterfaceAdapter(solver)
        self.solver = solver
        self.name = solver_name(solver)
        cones = getattr(solver, "supported_cones", None)
        self.supported_cones = ALL_CONES if cones is None else frozenset(cones)
        self.batched = callable(getattr(solver, "solve_batch", None)) and callable(
            getattr(solver, "derivative_batch", None))

    def gradient_options(self, gradient, options):
        if gradient.name not in self.gradients:
            raise ValueError(
                f"gradient={gradient.name!r} is not available with the custom solver "
                f"{self.name}, whose derivative() is the gradient; use gradient='implicit'.")
        return options

    def prepare(self, layout, parameter_values) -> None:
        """Hook before each solve: lets a SolverInterface see the layout and the raw
        parameter values (its ``setup`` and ``set_params``)."""
        hook = getattr(self.solver, "prepare", None)
        if hook is not None:
            hook(layout, parameter_values)

    def solve(self, layout, data, need_derivative, options, n_jobs, warm_start=False):
        self.warm_point(layout, data.shape[0], warm_start)  # warns once, solves cold
        a_values, b, c = layout.split(data)[:3]
        batch = ConeBatch(np.ascontiguousarray(a_values), layout.a_indices, layout.a_indptr,
                          (layout.m, layout.n), np.ascontiguousarray(b),
                          np.ascontiguousarray(c), layout.cone_dict)
        if self.batched:
            results = self._solve_batched(batch, need_derivative, options)
        else:
            results = map_batch(lambda i: self._solve_element(batch, i, need_derivative,
                                                              options), data.shape[0], n_jobs)
        return self._collect(layout, results, batched_state=self.batched)

    def _solve_element(self, batch, i, need_derivative, options):
        try:
            result = self.solver.solve(batch.matrix(i), batch.b[i].copy(), batch.c[i].copy(),
                                       batch.cone_dict, need_derivative, **options)
            return _checked(result, batch.shape, None, self.name)
        except ContractError:
            raise
        except Exception as exc:  # noqa: BLE001 - the element's failure, reported
            return None, st.FAILED, f"{self.name}: {type(exc).__name__}: {exc}", None

    def _solve_batched(self, batch, need_derivative, options):
        size = batch.b.shape[0]
        try:
            result = self.solver.solve_batch(batch, need_derivative, **options)
        except Exception as exc:  # noqa: BLE001 - reported per element
            message = f"{self.name}: {type(exc).__name__}: {exc}"
            return [(None, st.FAILED, message, None)] * size
        try:
            statuses = result["status"]
            statuses = [statuses] * size if isinstance(statuses, str) else list(statuses)
            x, y = np.asarray(result["x"], dtype=float), np.asarray(result["y"], dtype=float)
            if x.shape != (size,) + batch.shape[1:] or y.shape != (size, batch.shape[0]) \
                    or len(statuses) != size:
                raise ValueError(f"solve_batch returned x {x.shape}, y {y.shape} and "
                                 f"{len(statuses)} statuses for a batch of {size} programs "
                                 f"with (m, n) = {batch.shape}.")
        except (KeyError, TypeError, ValueError) as exc:
            raise ContractError(f"The custom solver {self.name}'s solve_batch must return a dict "
                            f"with 'x' (B, n), 'y' (B, m) and 'status' (B strings): "
                            f"{exc}") from None
        state = result.get("state")
        return [_checked({"x": x[i], "y": y[i], "status": statuses[i]}, batch.shape, state,
                         self.name) for i in range(size)]

    def _collect(self, layout, results, batched_state):
        size = len(results)
        x = np.full((size, layout.n), np.nan)
        y = np.full((size, layout.m), np.nan)
        statuses, messages, states = [], {}, []
        for i, (solved, status, message, state) in enumerate(results):
            statuses.append(status)
            states.append(state)
            if solved is None:
                messages[i] = message
                continue
            x[i], y[i] = solved
        context = states[0] if batched_state else states
        return BatchSolution(x, y, statuses, messages, context=context)

    def adjoint(self, layout, solution, dx, dy, usable, n_jobs):
        """The data rows [dA values (CSC order); db; dc] from the solver's derivative; rows
        of failed elements are zero."""
        d_data = np.zeros((dx.shape[0], layout.size))
        nnz, m = layout.nnz, layout.m
        if self.batched:
            keep = usable[:, None]
            dA, db, dc = self.solver.derivative_batch(solution.context, np.where(keep, dx, 0.0),
                                                      np.where(keep, dy, 0.0))
            d_data[:, :nnz] = np.asarray(dA).reshape(dx.shape[0], nnz)
            d_data[:, nnz:nnz + m] = np.asarray(db).reshape(dx.shape[0], m)
            d_data[:, nnz + m:nnz + m + layout.n] = np.asarray(dc).reshape(dx.shape[0], -1)
            d_data[~usable] = 0.0
            return d_data

        def adjoint_element(i):
            if usable[i]:
                dA, db, dc = self.solver.derivative(solution.context[i], dx[i], dy[i])
                d_data[i, :nnz] = _values_on_pattern(dA, layout)
                d_data[i, nnz:nnz + m] = np.asarray(db, dtype=float).ravel()
                d_data[i, nnz + m:nnz + m + layout.n] = np.asarray(dc, dtype=float).ravel()

        map_batch(adjoint_element, dx.shape[0], n_jobs)
        return d_data


def _checked(result, shape, batch_state, name):
    """``((x, y), status, message, state)`` from a solver's result for one element."""
    m, n = shape
    if not isinstance(result, dict) or not {"x", "y", "status"} <= set(result):
        raise ContractError(f"The custom solver {name}'s solve must return a dict with keys 'x', "
                        f"'y' and 'status' (and optionally 'state'); received "
                        f"{type(result).__name__}"
                        f"{' with keys ' + str(sorted(result)) if isinstance(result, dict) else ''}.")
    status = st.normalize_status(result["status"])
    state = result.get("state", batch_state)
    if status not in st.USABLE:
        return None, status, f"{name} status '{result['status']}'", state
    x = np.asarray(result["x"], dtype=float).ravel()
    y = np.asarray(result["y"], dtype=float).ravel()
    if x.shape != (n,) or y.shape != (m,):
        raise ContractError(f"The custom solver {name} returned x of shape {x.shape} and y of "
                        f"shape {y.shape} for a program with n = {n} variables and m = {m} "
                        "constraint rows; expected (n,) and (m,).")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return None, st.FAILED, f"{name} returned non-finite values", state
    return (x, y), status, "", state


def _values_on_pattern(dA, layout) -> np.ndarray:
    """dA (sparse, dense or A's values) as A's values in the layout's CSC order."""
    rows, cols = layout.entries("A")
    if sp.issparse(dA):
        return np.asarray(sp.csc_matrix(dA)[rows, cols]).ravel()
    dA = np.asarray(dA, dtype=float)
    if dA.shape == (layout.nnz,):
        return dA
    if dA.shape == (layout.m, layout.n):
        return dA[rows, cols]
    raise ContractError(f"derivative() returned dA of shape {dA.shape}; expected a sparse or dense "
                    f"({layout.m}, {layout.n}) matrix or A's {layout.nnz} values in CSC order.")
