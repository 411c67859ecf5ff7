"""SCS, ECOS and Clarabel, solved and differentiated through diffcp.

diffcp solves the cone program and differentiates its solution map through the
homogeneous self-dual embedding (Agrawal et al., *Differentiating through a cone
program*, 2019): with z = (u, v, w) the embedding's solution and Q the skew-symmetric
embedding matrix, the derivative solves M dz = dQ π(z) with M = ((Q − I) Dπ(z) + I)/w,
and the adjoint solves Mᵀ r = dz to give dA, db, dc as outer products of r and π(z).

What this module adds on top of ``diffcp.solve_and_derivative_batch``:
- a status per element instead of one exception for the whole batch, including for
  Clarabel, whose infeasible and unbounded results diffcp returns without a word;
- gradients for entries of A that are zero for the current parameters (kept as
  explicit zeros, so the sparsity of A is the same for every call);
- no derivative work at all when no gradient is needed.
"""

from __future__ import annotations

import warnings

import numpy as np

from cvxlayers import status as st
from cvxlayers.backends.base import Backend, BatchSolution
from cvxlayers.backends.pool import map_batch

#: solver_args keys that only matter to the derivative; dropped when no gradient is needed.
DERIVATIVE_OPTIONS = frozenset({"mode", "derivative_kwargs"})
DERIVATIVE_MODES = ("dense", "lsqr", "lsmr", "lpgd", "lpgd_right", "lpgd_left")


class DiffcpBackend(Backend):
    """A cone solver driven through diffcp."""

    solve_method = ""

    def solve(self, layout, data, need_derivative, options, n_jobs):
        from diffcp import cone_program

        options = dict(options)
        mode = options.pop("mode", "dense")
        if not need_derivative:
            for key in DERIVATIVE_OPTIONS:
                options.pop(key, None)
        cone_dict = layout.cone_dict

        def solve_element(i):
            a_values, b, c = layout.split(data[i])
            A = layout.matrix(a_values.copy())
            try:
                if need_derivative:
                    result = cone_program.solve_and_derivative_internal(
                        A, b.copy(), c.copy(), cone_dict, solve_method=self.solve_method,
                        mode=mode, raise_on_error=False, **options)
                else:
                    result = cone_program.solve_internal(
                        A, b.copy(), c.copy(), cone_dict, solve_method=self.solve_method,
                        raise_on_error=False, **options)
            except cone_program.SolverError as exc:  # ECOS raises on every non-optimal status
                return None, st.normalize_status(str(exc).rsplit(" ", 1)[-1]), str(exc)
            except Exception as exc:  # noqa: BLE001 - reported per element, never swallowed
                return None, st.FAILED, f"{type(exc).__name__}: {exc}"
            status = st.normalize_status(result["info"]["status"])
            message = "" if status in st.USABLE else f"{self.name} status '{result['info']['status']}'"
            return result, status, message

        with warnings.catch_warnings():
            # diffcp warns "Solved/Inaccurate." per element; the status policy warns once per call.
            warnings.filterwarnings("ignore", message="Solved/Inaccurate")
            results = map_batch(solve_element, data.shape[0], n_jobs)

        batch = data.shape[0]
        x = np.full((batch, layout.n), np.nan)
        y = np.full((batch, layout.m), np.nan)
        statuses, messages, adjoints = [], {}, []
        for i, (result, status, message) in enumerate(results):
            statuses.append(status)
            if status not in st.USABLE:
                messages[i] = message
                adjoints.append(None)
                continue
            x[i], y[i] = result["x"], result["y"]
            adjoints.append(result.get("DT"))
        return BatchSolution(x, y, statuses, messages, adjoints)

    def adjoint(self, layout, solution, dx, dy, usable, n_jobs):
        """Applies each usable element's adjoint; rows of failed elements are zero.

        Returns:
            ``(B, data size)``: for each element, [dA values (CSC order); db; dc].
        """
        batch = dx.shape[0]
        d_data = np.zeros((batch, layout.size))
        zeros_s = np.zeros(layout.m)

        def adjoint_element(i):
            if not usable[i]:
                return None
            dA, db, dc = solution.adjoint_fns[i](dx[i], dy[i], zeros_s)
            return _aligned_values(dA, layout), db, dc

        for i, result in enumerate(map_batch(adjoint_element, batch, n_jobs)):
            if result is not None:
                d_data[i] = np.concatenate(result)
        return d_data


def _aligned_values(dA, layout) -> np.ndarray:
    """dA's values in our CSC order. diffcp builds dA on A's full pattern, explicit
    zeros included, in canonical CSC order, so its data lines up with ours; the
    fallback covers a future diffcp that prunes."""
    dA = dA.tocsc()
    if dA.nnz == layout.nnz and np.array_equal(dA.indptr, layout.a_indptr):
        return dA.data
    cols = np.repeat(np.arange(layout.n), np.diff(layout.a_indptr))
    return np.asarray(dA[layout.a_indices, cols]).ravel()


class SCSBackend(DiffcpBackend):
    name = "SCS"
    solve_method = "SCS"
    supported_cones = frozenset({"z", "l", "q", "s", "ep", "ed"})
    warm_starts = True


class ECOSBackend(DiffcpBackend):
    name = "ECOS"
    solve_method = "ECOS"
    supported_cones = frozenset({"z", "l", "q", "ep"})


class ClarabelBackend(DiffcpBackend):
    name = "CLARABEL"
    solve_method = "Clarabel"
    supported_cones = frozenset({"z", "l", "q", "s", "ep"})
