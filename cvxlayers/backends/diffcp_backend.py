"""SCS, ECOS and Clarabel, solved and differentiated through diffcp.

diffcp solves the cone program and differentiates its solution map through the
homogeneous self-dual embedding (Agrawal et al., *Differentiating through a cone
program*, 2019; the formulas are in :mod:`cvxlayers.backends.embedding`).

What this module adds on top of ``diffcp.solve_and_derivative_batch``:
- a status per element instead of one exception for the whole batch, including for
  Clarabel, whose infeasible and unbounded results diffcp returns without a word;
- gradients for entries of A that are zero for the current parameters (kept as
  explicit zeros, so the sparsity of A is the same for every call);
- no derivative work at all when no gradient is needed, nor for power cones, which
  diffcp cannot differentiate (such layers solve forward only: SCS through diffcp,
  Clarabel through :mod:`.clarabel_direct`, as diffcp's Clarabel call drops them);
- the derivative's per-call scaffolding done once per layer (:mod:`.embedding`), which
  makes a small layer's call cheaper than diffcp's own ``solve_and_derivative``;
- quadratic objectives ½xᵀPx (a ``cp.quad_form`` with a parameter matrix) for SCS and
  Clarabel: P goes to the solver, and the exact derivative is :mod:`.cone_qp`'s, which
  diffcp 1.1.9 lacks (it differentiates P only in its LPGD modes).
"""

from __future__ import annotations

from functools import partial

import numpy as np

from cvxlayers import status as st
from cvxlayers.backends import cone_qp, embedding
from cvxlayers.backends.base import Backend, BatchSolution
from cvxlayers.backends.diffcp_warnings import diffcp_inaccurate_ignored
from cvxlayers.backends.pool import ElementCost, map_batch
from cvxlayers.backends.scs_workspace import WorkspaceCache, solve_scs
from cvxlayers.errors import ProblemError

#: diffcp's derivative modes (``solver_args["mode"]``).
DERIVATIVE_MODES = ("dense", "lsqr", "lsmr", "lpgd", "lpgd_right", "lpgd_left")


class DiffcpBackend(Backend):
    """A cone solver driven through diffcp.

    The solve is diffcp's ``solve_internal`` (its calls of SCS, ECOS and Clarabel and its
    status strings). In the dense and LSQR modes the derivative is then assembled by
    :class:`~cvxlayers.backends.embedding.EmbeddingPlan` from diffcp's kernels with the
    layer's structure precomputed; other modes use ``solve_and_derivative_internal`` whole.
    """

    solve_method = ""
    #: solver options a quadratic-objective solve starts from (the user's win).
    quad_obj_defaults: dict = {}

    def __init__(self):
        self._planned = (None, None)  # (layout, its plan), built on first use

    def _plan(self, layout):
        """The layout's EmbeddingPlan, or its ConeQPPlan for a quadratic objective."""
        planned_layout, plan = self._planned
        if planned_layout is not layout:
            quadratic = layout.p_indices is not None
            plan = (cone_qp.ConeQPPlan if quadratic else embedding.EmbeddingPlan)(layout)
            self._planned = (layout, plan)
        return plan

    def solve(self, layout, data, need_derivative, options, n_jobs, warm_start=False):
        from diffcp import cone_program

        start = _Start(self.warm_point(layout, data.shape[0], warm_start))
        if layout.p_indices is not None:
            return self._solve_quadratic(layout, data, need_derivative, options, n_jobs, start,
                                         warm_start)
        options = dict(options)
        # Power cones solve but do not differentiate; the core refuses their backward.
        need_derivative = need_derivative and self.differentiates(layout.cone_dict)
        # Derivative-only options leave the solver's options here, so that they cannot
        # reach the solver when no gradient is needed.
        mode = options.pop("mode", "lsqr")
        derivative_kwargs = options.pop("derivative_kwargs", None)
        planned = (need_derivative and mode in embedding.MODES and derivative_kwargs is None
                   and embedding.available())
        whole = need_derivative and not planned
        if whole and derivative_kwargs is not None:
            options["derivative_kwargs"] = derivative_kwargs
        plan = self._plan(layout) if planned else None
        cone_dict = layout.cone_dict
        cache = None if whole else self._workspaces(layout, data.shape[0], options, warm_start)

        def solve_element(i, point):
            row = data[i]
            a_values, b, c = layout.split(row)

            def matrix():
                A = layout.matrix(a_values.copy())
                A.eliminate_zeros()  # as diffcp does before it solves
                return A

            try:
                if whole:
                    result = cone_program.solve_and_derivative_internal(
                        layout.matrix(a_values.copy()), b.copy(), c.copy(), cone_dict,
                        solve_method=self.solve_method, mode=mode, raise_on_error=False,
                        warm_start=point, **options)
                elif cache is None:
                    result = self._solve_only(matrix(), b.copy(), c.copy(), cone_dict, options,
                                              point)
                else:  # a kept workspace needs no A: it is built only for a new workspace
                    result = solve_scs(matrix, b.copy(), c.copy(), cone_dict, options, point,
                                       cache=cache, i=i, values=a_values)
            except cone_program.SolverError as exc:  # ECOS raises on every non-optimal status
                return None, st.normalize_status(str(exc).rsplit(" ", 1)[-1]), str(exc)
            except (TypeError, AttributeError) as exc:
                if _is_unknown_option(exc):  # a misspelt or foreign option: the call's fault
                    raise ValueError(f"solver_args {sorted(options)} include an option that "
                                     f"{self.name} does not take ({exc}); options go to the "
                                     f"solver under its own names.") from None
                return None, st.FAILED, f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # noqa: BLE001 - reported per element, never swallowed
                return None, st.FAILED, f"{type(exc).__name__}: {exc}"
            if whole:
                status = st.normalize_status(result["info"]["status"])
                if status not in st.USABLE:
                    return None, status, f"{self.name} status '{result['info']['status']}'"
                return (result["x"], result["y"], result["s"], _iterations(result),
                        partial(_diffcp_adjoint, result["DT"], layout)), status, ""
            return self._finish(result, row, plan, mode, planned)

        return self._collect(layout, self._map(start.guard(solve_element), data, n_jobs),
                             start)

    def adjoint(self, layout, solution, dx, dy, usable, n_jobs):
        """Applies each usable element's adjoint; rows of failed elements are zero.

        Returns:
            ``(B, data size)``: for each element, [dA values (CSC order); db; dc[; dP
            values]].
        """
        d_data = np.zeros((dx.shape[0], layout.size))

        def adjoint_element(i):
            if usable[i]:
                d_data[i] = solution.adjoint_fns[i](dx[i], dy[i])

        map_batch(adjoint_element, dx.shape[0], n_jobs, self._element_cost("backward"))
        return d_data

    def _solve_quadratic(self, layout, data, need_derivative, options, n_jobs, start,
                         warm_start=False):
        """A quadratic objective ½xᵀPx (a parametric ``cp.quad_form``): P goes to the solver,
        and the derivative is :mod:`.cone_qp`'s (diffcp's exact modes do not take P)."""
        from diffcp import cone_program

        if layout.cone_dict.get("p"):
            raise ProblemError(
                "A cp.quad_form objective with a parameter matrix and explicit power cones in "
                "one problem is not supported; write the quadratic term as "
                "cp.sum_squares(L @ x) with a parameter L.")
        options = dict(options)
        mode = options.pop("mode", "lsqr")
        derivative_kwargs = options.pop("derivative_kwargs", None)
        given = sorted(options)   # the call's, for the error message below
        options = {**self.quad_obj_defaults, **options}
        if need_derivative and mode in ("lpgd", "lpgd_right", "lpgd_left"):
            raise ValueError(
                f"gradient='lpgd' does not differentiate a quadratic objective with {self.name} "
                f"(this problem's cp.quad_form with a parameter matrix; mode={mode!r}); use "
                "solver='QP', whose LPGD re-solves take P, or gradient='implicit'.")
        if need_derivative and (mode not in cone_qp.MODES or derivative_kwargs is not None):
            raise ValueError(
                f"mode={mode!r}{' with derivative_kwargs' if derivative_kwargs else ''} does "
                "not differentiate a quadratic objective (this problem's cp.quad_form with a "
                f"parameter matrix); use mode 'dense', 'lsqr' or 'lsmr' with {self.name}.")
        plan = self._plan(layout)
        cone_dict = layout.cone_dict
        cache = self._workspaces(layout, data.shape[0], options, warm_start)

        def solve_element(i, point):
            row = data[i]
            A, b, c, _ = plan.split(row)
            A.eliminate_zeros()
            try:
                if cache is None:
                    result = cone_program.solve_internal(
                        A, b, c, cone_dict, solve_method=self.solve_method,
                        raise_on_error=False, P=plan.solver_P(row), warm_start=point,
                        **options)
                else:
                    a_values, _, _, p_values = layout.split(row)
                    result = solve_scs(lambda: A, b, c, cone_dict, options, point,
                                       P=plan.solver_P(row), cache=cache, i=i,
                                       values=np.concatenate([a_values, p_values]))
            except cone_program.SolverError as exc:
                return None, st.normalize_status(str(exc).rsplit(" ", 1)[-1]), str(exc)
            except (TypeError, AttributeError) as exc:
                if _is_unknown_option(exc):
                    raise ValueError(f"solver_args {given} include an option that "
                                     f"{self.name} does not take ({exc}); options go to the "
                                     f"solver under its own names.") from None
                return None, st.FAILED, f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # noqa: BLE001 - reported per element
                return None, st.FAILED, f"{type(exc).__name__}: {exc}"
            return self._finish(result, row, plan, mode, need_derivative)

        return self._collect(layout, self._map(start.guard(solve_element), data, n_jobs),
                             start)

    def _workspaces(self, layout, batch, options, warm_start):
        """The SCS workspaces kept for this call's elements (:mod:`.scs_workspace`), or
        ``None``: only SCS keeps them, and only for ``warm_start=True`` calls."""
        cache = self.__dict__.get("_workspace_cache")
        if not (warm_start and self.warm_starts and self.solve_method == "SCS"):
            if cache is not None:
                cache.clear()  # a cold call: the workspaces' memory goes back
            return None
        if cache is None:
            cache = self.__dict__.setdefault("_workspace_cache", WorkspaceCache())
        cache.reset(layout, batch, options)
        return cache

    def _finish(self, result, row, plan, mode, planned):
        """(x, y, adjoint) of a solved element and its status, the adjoint from ``plan``."""
        status = st.normalize_status(result["info"]["status"])
        if status not in st.USABLE:
            return None, status, f"{self.name} status '{result['info']['status']}'"
        x, y, s = result["x"], result["y"], result["s"]
        iterations = _iterations(result)
        adjoint = None
        if planned:
            if not (np.isfinite(x).all() and np.isfinite(y).all() and np.isfinite(s).all()):
                return None, st.FAILED, "derivative: the solver returned a non-finite solution"
            adjoint = DeferredAdjoint(plan, row, x, y, s, mode)
        return (x, y, s, iterations, adjoint), status, ""

    def _map(self, solve_element, data, n_jobs):
        # diffcp warns "Solved/Inaccurate." per element; the status policy warns once per call.
        with diffcp_inaccurate_ignored():
            return map_batch(solve_element, data.shape[0], n_jobs, self._element_cost("forward"))

    def _element_cost(self, phase: str) -> ElementCost:
        """The measured cost per element of this backend's forward or backward pass, which
        decides whether the next batch goes to the thread pool (:class:`.pool.ElementCost`)."""
        costs = self.__dict__.setdefault("_element_costs", {})
        return costs.setdefault(phase, ElementCost())

    def _collect(self, layout, results, start) -> BatchSolution:
        """The batch's solution from the elements'; a warm-starting backend keeps its
        (x, y, s) as the next call's starting point (failed elements: NaN, so cold)."""
        batch = len(results)
        x = np.full((batch, layout.n), np.nan)
        y = np.full((batch, layout.m), np.nan)
        s = np.full((batch, layout.m), np.nan)
        iterations = np.full(batch, -1, dtype=np.int64)
        statuses, messages, adjoints = [], {}, []
        for i, (solved, status, message) in enumerate(results):
            statuses.append(status)
            if solved is None:
                messages[i] = message
                adjoints.append(None)
                continue
            x[i], y[i], s[i], iterations[i], adjoint = solved
            adjoints.append(adjoint)
        if self.warm_starts:
            self.warm_store.put(layout, (x, y, s))
        return BatchSolution(x, y, statuses, messages, adjoints, iterations=iterations,
                             warm=start.mask(batch))

    def _solve_only(self, A, b, c, cone_dict, options, warm_start=None) -> dict:
        """One element's solve, without derivative: diffcp's call of the solver."""
        from diffcp import cone_program

        return cone_program.solve_internal(A, b, c, cone_dict, solve_method=self.solve_method,
                                           raise_on_error=False, warm_start=warm_start,
                                           **options)


class DeferredAdjoint:
    """One element's adjoint ``(dx, dy) -> data row``, linearized at its first use.

    Why deferred: the forward asks for a derivative whenever one may follow, and in MLX (whose
    functions cannot tell whether a gradient will be taken) that is every call. Building M
    and DΠ(v) (:meth:`EmbeddingPlan.linearize`) when the first gradient arrives costs a
    call that gets one exactly what it cost before, and a call that gets none nothing; the
    linearization is then kept for the element's later adjoints (a Jacobian's rows). Each
    element is linearized by the one thread that applies its adjoint.
    """

    __slots__ = ("plan", "row", "point", "mode", "linearization")

    def __init__(self, plan, row, x, y, s, mode):
        self.plan, self.row, self.point, self.mode = plan, row, (x, y, s), mode
        self.linearization = None

    def __call__(self, dx, dy):
        if self.linearization is None:
            self.linearization = self.plan.linearize(self.row, *self.point, self.mode)
        return self.plan.adjoint(self.linearization, dx, dy, mode=self.mode)


class _Start:
    """Element i's starting point for SCS: its stored (x, y, s), or ``None`` (cold)."""

    def __init__(self, point):
        self.arrays, self.valid = point if point is not None else (None, None)
        if self.valid is not None:
            self.valid = self.valid.copy()  # cleared where a warm solve fell back to cold

    def __call__(self, i):
        if self.arrays is None or not self.valid[i]:
            return None
        return tuple(a[i].copy() for a in self.arrays)  # SCS gets arrays of its own

    def guard(self, solve_element):
        """``solve_element(i, point)`` from element i's point, re-solved cold if the warm
        solve ends anything but optimal: a start never costs an element its solution
        (ADMM converges from any point, but a far one can exhaust ``max_iters``)."""
        def solve(i):
            point = self(i)
            result = solve_element(i, point)
            if point is None or result[1] == st.OPTIMAL:
                return result
            self.valid[i] = False  # each thread writes its own element only
            return solve_element(i, None)
        return solve

    def mask(self, batch: int) -> np.ndarray:
        return np.zeros(batch, dtype=bool) if self.valid is None else self.valid.copy()


def _iterations(result) -> int:
    """The solver's iteration count from diffcp's info (SCS, ECOS and Clarabel all report
    it as ``iter``); -1 where absent."""
    return int(result.get("info", {}).get("iter", -1))

def _diffcp_adjoint(DT, layout, dx, dy) -> np.ndarray:
    """diffcp's own adjoint, as a data row [dA values (CSC order); db; dc]."""
    dA, db, dc = DT(dx, dy, np.zeros(layout.m))
    return np.concatenate([_aligned_values(dA, layout), db, dc])


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
    supported_cones = frozenset({"z", "l", "q", "s", "ep", "ed", "p"})
    differentiable_cones = frozenset({"z", "l", "q", "s", "ep", "ed"})
    warm_starts = True
    option_aliases = {"eps": ("eps_abs", "eps_rel"), "max_iter": ("max_iters",)}
    accepts_quad_obj = True
    # SCS 3 is an operator-splitting method on the quadratic objective itself: with P its
    # ADMM converges in 25 iterations on the cvxpylayers paper's sparse QP, not 175-275
    # through sum_squares' second-order cone, to 1e-7 instead of 1e-3 at the defaults.
    prefers_quad_obj = True
    # With P, CVXPY's own defaults for SCS (its SCS interface sets 1e-5): the layer's
    # forward is then what problem.solve(solver="SCS") returns. SCS's 1e-4 is relative to
    # ‖c‖, which grows with the data in the P form (c = −2y for ‖x − y‖²; the cone form's
    # is the epigraph's unit vector): on x ≥ 0 projections of y ~ 3·N(0, 1) it left 1e-3.
    quad_obj_defaults = {"eps_abs": 1e-5, "eps_rel": 1e-5}


class ECOSBackend(DiffcpBackend):
    name = "ECOS"
    solve_method = "ECOS"
    supported_cones = frozenset({"z", "l", "q", "ep"})
    cold_reason = ("ECOS, an interior-point method, takes no starting point (diffcp refuses "
                   "one).")
    option_aliases = {"eps": ("abstol", "reltol", "feastol"), "max_iter": ("max_iters",)}


class ClarabelBackend(DiffcpBackend):
    name = "CLARABEL"
    solve_method = "Clarabel"
    supported_cones = frozenset({"z", "l", "q", "s", "ep", "p"})
    differentiable_cones = frozenset({"z", "l", "q", "s", "ep"})
    cold_reason = ("Clarabel, an interior-point method, takes no starting point through "
                   "diffcp 1.1.9.")
    option_aliases = {"eps": ("tol_gap_abs", "tol_gap_rel", "tol_feas"),
                      "max_iters": ("max_iter",)}
    accepts_quad_obj = True

    def _solve_only(self, A, b, c, cone_dict, options, warm_start=None) -> dict:
        if cone_dict.get("p"):  # diffcp's Clarabel call would drop the power cones
            from cvxlayers.backends import clarabel_direct

            return clarabel_direct.solve(A, b, c, cone_dict, **options)
        return super()._solve_only(A, b, c, cone_dict, options, warm_start)


def _is_unknown_option(exc: Exception) -> bool:
    """Whether a solver rejected an option name: SCS and ECOS raise a TypeError about a
    keyword argument, Clarabel an AttributeError about its settings object."""
    text = str(exc)
    return ("keyword argument" in text if isinstance(exc, TypeError)
            else "Settings" in text and "attribute" in text)
