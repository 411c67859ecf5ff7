"""cvxpylayers 1.2's ``SolverInterface`` objects as cvxlayers custom solvers, as they are.

cvxpylayers' documented contract (``cvxpylayers.interfaces.base.SolverInterface``): the
object implements one solve and one derivative among its ``solve_{numpy,torch,jax,mlx}``
(``_batch``) methods, and its base class routes every other entry point to the one
implemented. cvxlayers calls the NumPy batched pair,

    solve_numpy_batch(P, q, A, dims, solver_args, needs_grad) -> (primal, dual, state)
    derivative_numpy_batch(dprimal, ddual, state) -> (dP, dq, dA)

on cvxpylayers' data format, which is CVXPY's parametrized cone program: the constraints
are A_cvx x + b ∈ K, and A is the vector of the nonzeros of the ``(m, n + 1)`` CSC matrix
[A_cvx | b] (b the last column), whose pattern the object reads in its ``setup(ctx)`` from
``ctx.reduced_A.problem_data_index = (indices, indptr, (m, n + 1))``; q = [c; d] holds the
objective's n coefficients and its constant d; ``dims`` is CVXPY's ``ConeDims``. In SCS
form (what cvxlayers compiles to) A_scs = −A_cvx, so the data and the gradients convert as

    A = [−A_scs values; b],   q = [c; 0],   dA_scs = −dA[:nnz],   db = dA[nnz:],   dc = dq[:n].

Here the pattern of [A_cvx | b] is A_scs's own pattern followed by a dense b column. The
constant d does not change the solution and is passed as 0.

The ``ctx`` handed to ``setup`` carries ``reduced_A.problem_data_index``, ``cone_dims``
and ``reduced_P`` (``None`` pattern: quadratic objectives are not passed to custom solvers);
``set_params(values)`` receives the raw parameter values (batched ones with their leading
batch dimension) before every solve, as in cvxpylayers. Parameter-space solvers
(``is_parametric = True``, CVXPYgen's ``from_codegen``) solve the CVXPY problem rather than
a cone program, and are refused with a message saying so.

A ``solve_numpy_batch`` that raises is retried element by element (``solve_numpy``), so
that one bad element fails alone, with status ``failed``; non-finite results fail too.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from cvxlayers import status as st
from cvxlayers.errors import ProblemError


def is_solver_interface(solver) -> bool:
    """Whether ``solver`` is a cvxpylayers ``SolverInterface`` (checked by its class's
    MRO, so that cvxpylayers is never imported here)."""
    return any(cls.__name__ == "SolverInterface" and cls.__module__.startswith("cvxpylayers")
               for cls in type(solver).__mro__)


def cone_dims(cone_dict: dict):
    """CVXPY's ``ConeDims`` for a diffcp ``cone_dict`` (what ``SolverInterface`` objects
    get as ``dims``)."""
    from cvxpy.reductions.dcp2cone.cone_matrix_stuffing import ConeDims

    if cone_dict.get("ed"):
        raise ProblemError("A cvxpylayers SolverInterface cannot be given this problem's dual "
                           "exponential cones (CVXPY's ConeDims has none); use SCS.")
    dims = ConeDims.__new__(ConeDims)  # filled from the dict, not from constraints
    dims.zero = int(cone_dict.get("z", 0))
    dims.nonneg = int(cone_dict.get("l", 0))
    dims.exp = int(cone_dict.get("ep", 0))
    dims.soc = [int(k) for k in cone_dict.get("q", [])]
    dims.psd = [int(k) for k in cone_dict.get("s", [])]
    dims.p3d = [float(a) for a in cone_dict.get("p", [])]
    dims.pnd = []
    return dims


class SolverInterfaceAdapter:
    """A ``SolverInterface`` seen through cvxlayers' batched custom-solver contract
    (:mod:`.custom`): ``solve_batch`` / ``derivative_batch`` on SCS-form data."""

    def __init__(self, interface):
        if getattr(interface, "is_parametric", False):
            raise TypeError(
                f"`solver` received a parameter-space SolverInterface ({type(interface).__name__}"
                ", is_parametric=True, e.g. from SolverInterface.from_codegen): it solves the "
                "CVXPY problem itself instead of a cone program, which cvxlayers does not "
                "support yet. Pass a canonical SolverInterface (solve_numpy/derivative_numpy "
                "on (P, q, A, dims)), or one of cvxlayers' solvers.")
        self.interface = interface
        self.name = type(interface).__name__
        self._layout = None

    def prepare(self, layout, parameter_values) -> None:
        if layout is not self._layout:
            self._layout = layout
            self._dims = cone_dims(layout.cone_dict)
            nnz, m, n = layout.nnz, layout.m, layout.n
            indices = np.concatenate([layout.a_indices, np.arange(m)]).astype(np.int64)
            indptr = np.concatenate([layout.a_indptr, [nnz + m]]).astype(np.int64)
            ctx = SimpleNamespace(
                reduced_A=SimpleNamespace(problem_data_index=(indices, indptr, (m, n + 1))),
                reduced_P=SimpleNamespace(problem_data_index=None, reduced_mat=None),
                cone_dims=self._dims, solver=self.interface)
            self.interface.setup(ctx)
        self.interface.set_params([np.asarray(v) for v in parameter_values])

    def solve_batch(self, batch, need_derivative, **options):
        size = batch.b.shape[0]
        A = np.concatenate([-batch.a_values, batch.b], axis=1)
        q = np.concatenate([batch.c, np.zeros((size, 1))], axis=1)
        try:
            primal, dual, state = self.interface.solve_numpy_batch(
                None, q, A, self._dims, dict(options), need_derivative)
            kind = "batch"
        except Exception:  # noqa: BLE001 - find the elements that fail, one by one
            primal, dual, state, kind = self._solve_elements(q, A, options, need_derivative)
        primal = np.asarray(primal, dtype=float).reshape(size, -1)
        dual = np.asarray(dual, dtype=float).reshape(size, -1)
        finite = np.isfinite(primal).all(axis=1) & np.isfinite(dual).all(axis=1)
        statuses = [st.OPTIMAL if ok else st.FAILED for ok in finite]
        return {"x": primal, "y": dual, "status": statuses, "state": (kind, state)}

    def _solve_elements(self, q, A, options, need_derivative):
        (m, n), size = self._layout_shape(), q.shape[0]
        primal, dual, states = np.full((size, n), np.nan), np.full((size, m), np.nan), []
        for i in range(size):
            try:
                p_i, d_i, s_i = self.interface.solve_numpy(None, q[i], A[i], self._dims,
                                                           dict(options), need_derivative)
                primal[i], dual[i] = np.ravel(p_i), np.ravel(d_i)
            except Exception:  # noqa: BLE001 - this element's failure (NaN rows)
                s_i = None
            states.append(s_i)
        return primal, dual, states, "elements"

    def _layout_shape(self):
        return self._layout.m, self._layout.n

    def derivative_batch(self, state, dx, dy):
        kind, state = state
        nnz, n = self._layout.nnz, self._layout.n
        if kind == "batch":
            _, dq, dA = self.interface.derivative_numpy_batch(dx, dy, state)
            dq, dA = np.asarray(dq, dtype=float), np.asarray(dA, dtype=float)
        else:
            dq = np.zeros((dx.shape[0], n + 1))
            dA = np.zeros((dx.shape[0], nnz + self._layout.m))
            for i, s_i in enumerate(state):
                if s_i is not None:
                    _, dq[i], dA[i] = self.interface.derivative_numpy(dx[i], dy[i], s_i)
        return -dA[:, :nnz], dA[:, nnz:], dq[:, :n]
