"""Compile a CVXPY problem, once, into the maps a layer applies on every call.

The result is a :class:`CompiledProblem`:

- the parameter specifications (for validating each call's values);
- the :class:`~cvxlayers.parameter_map.ParameterMap` θ ↦ cone data (one sparse product);
- the :class:`~cvxlayers.parameter_map.ConeDataLayout` of the cone program;
- the :class:`~cvxlayers.solution_map.SolutionMap` cone solution ↦ requested outputs.

CVXPY canonicalizes the problem for an SCS-like target that lists only the cones diffcp
differentiates (zero, nonnegative, second-order, PSD, exponential), so power atoms such
as ``cp.power`` and ``cp.geo_mean`` compile to second-order cones. With ``quad_obj`` the
quadratic objective is kept as ½xᵀPx, and a ``cp.quad_form(x, P)`` with a parameter P in
the objective is then DPP (:func:`needs_quad_obj`). Only a problem that
this target cannot take — one with explicit power-cone constraints (``cp.PowCone3D``,
``cp.PowConeND``, or atoms with ``approx=False``) — is compiled for a second target that
adds the 3-D power cone (cone key ``p``, one α per cone); such a layer solves, and the
backends refuse to differentiate it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from cvxlayers.errors import NotDCPError, NotDGPError, NotDPPError, ProblemError
from cvxlayers.parameter_map import ConeDataLayout, ParameterMap, build_parameter_map
from cvxlayers.parameters import ParameterSpec
from cvxlayers.solution_map import OutputSpec, SolutionMap

_SYMMETRIC_ATTRIBUTES = ("symmetric", "PSD", "NSD")


@dataclass(frozen=True)
class CompiledProblem:
    """Everything a layer needs from its CVXPY problem, computed once."""

    parameter_specs: tuple
    parameter_map: ParameterMap
    layout: ConeDataLayout
    solution_map: SolutionMap
    gp: bool


#: The cone keys a compiled problem may use (diffcp's, and SCS's power cone ``p``).
_CONE_KEYS = ("z", "l", "q", "s", "ep", "ed", "p")


def _problem_data(problem, gp: bool, quad_obj: bool):
    """CVXPY's ``get_problem_data`` for the differentiable cones, or, when the problem
    needs them, for those and the power cone."""
    import cvxpy as cp

    from cvxlayers._target import DiffcpConeTarget, PowerConeTarget

    options = dict(gp=gp, enforce_dpp=True, solver_opts={"use_quad_obj": quad_obj})
    try:
        return problem.get_problem_data(solver=DiffcpConeTarget(), **options)
    except cp.error.SolverError:
        pass
    try:
        return problem.get_problem_data(solver=PowerConeTarget(), **options)
    except cp.error.SolverError as exc:
        kinds = sorted({type(c).__name__ for c in problem.constraints})
        raise ProblemError(
            f"The problem cannot be compiled to the cones cvxlayers solves (zero, "
            f"nonnegative, second-order, PSD, exponential, power): {exc} Its constraints "
            f"are of types {kinds}.") from exc


def _label(obj, kind: str, position: int) -> str:
    return f"{kind} `{obj.name()}` (position {position})"


def _is_quad_form_dpp(problem) -> bool:
    """Whether the problem is DPP once CVXPY relaxes its rule for ``cp.quad_form(x, P)`` in
    the objective: with a parameter-affine PSD matrix P (and a parameter-free x), ½xᵀPx is
    affine in the parameters *as the matrix of a quadratic objective*, so it is DPP for a
    solver that takes P itself (CVXPY ≥ 1.9's ``quad_form_dpp="qp"``). A ``quad_form`` with a
    parameter matrix in a constraint stays non-DPP."""
    try:
        return bool(problem.is_dpp("dcp", quad_form_dpp="qp"))
    except TypeError:  # CVXPY < 1.9 has no such relaxation
        return False


def needs_quad_obj(problem, gp: bool) -> bool:
    """Whether the problem compiles only with its quadratic objective kept as ½xᵀPx: it is
    DPP with a parametric ``cp.quad_form`` in the objective, and not DPP without one (a
    cone program's linear objective would need a factor of P, which is not affine in P)."""
    return (not gp and problem.is_dcp() and not problem.is_dcp(dpp=True)
            and _is_quad_form_dpp(problem))


def check_problem(problem, gp: bool, quad_obj: bool = False) -> None:
    """Raises the error that says which discipline the problem breaks, and what to do.

    With ``quad_obj`` (the objective kept as ½xᵀPx), ``cp.quad_form(x, P)`` with a parameter
    P in the objective is DPP (see :func:`needs_quad_obj`)."""
    import cvxpy as cp

    if not isinstance(problem, cp.Problem):
        raise ProblemError(f"`problem` must be a cvxpy.Problem; received {type(problem).__name__}.")
    if gp:
        if not problem.is_dgp():
            raise NotDGPError(
                "`gp=True` was given, but the problem is not DGP (log-log convex). Declare "
                "variables and parameters positive (pos=True) and use monomials and "
                "posynomials; or pass gp=False if the problem is DCP.")
        if not problem.is_dgp(dpp=True):
            raise NotDPPError(
                "The problem is DGP but not DPP, so it cannot be compiled once for every "
                "parameter value. Make every expression log-log affine in the parameters "
                "(see CVXPY's 'Disciplined Parametrized Programming' guide).")
        return
    if not problem.is_dcp():
        hint = (" It is DGP, though: pass gp=True." if problem.is_dgp() else
                " Rewrite it with DCP atoms (cp.sum_squares, cp.norm, ...); "
                "problem.is_dcp() is False.")
        raise NotDCPError("The problem is not DCP (disciplined convex)." + hint)
    if problem.is_dcp(dpp=True) or (quad_obj and _is_quad_form_dpp(problem)):
        return
    raise NotDPPError(
        "The problem is DCP but not DPP, so it cannot be compiled once for every parameter "
        "value. Typical fixes: a product of two parameters becomes a new parameter; "
        "cp.quad_form(x, P) with a parameter P is DPP in the objective (with solver='QP', "
        "'SCS' or 'CLARABEL', P declared PSD=True or wrapped in cp.psd_wrap), but not in a "
        "constraint, where it becomes cp.sum_squares(L @ x) with a parameter L (P = LᵀL); "
        "a parameter inside a nonlinear atom becomes its own parameter (see CVXPY's "
        "'Disciplined Parametrized Programming' guide).")


def _check_parameters(problem, parameters) -> None:
    import cvxpy as cp

    parameters = list(parameters)
    for k, p in enumerate(parameters):
        if not isinstance(p, cp.Parameter):
            raise ProblemError(
                f"`parameters[{k}]` must be a cvxpy.Parameter; received {type(p).__name__}.")
        if p.is_complex():
            raise ProblemError(f"{_label(p, 'Parameter', k)} is complex; cvxlayers supports "
                               "real parameters only. Split it into real and imaginary parts.")
    ids = [p.id for p in parameters]
    if len(set(ids)) != len(ids):
        raise ProblemError("`parameters` lists the same parameter more than once.")
    problem_ids = {p.id: p for p in problem.parameters()}
    foreign = [f"`{p.name()}`" for p in parameters if p.id not in problem_ids]
    missing = [f"`{p.name()}`" for pid, p in problem_ids.items() if pid not in set(ids)]
    if foreign or missing:
        parts = []
        if foreign:
            parts.append(f"not in the problem: {', '.join(foreign)}")
        if missing:
            parts.append(f"in the problem but not listed: {', '.join(missing)}")
        raise ProblemError("`parameters` must exactly match problem.parameters(); "
                           + "; ".join(parts) + ".")


def _resolve_outputs(problem, variables, gp: bool) -> list:
    """Each requested output as ("primal", var) or ("dual", constraint, index)."""
    import cvxpy as cp

    primal_ids = {v.id for v in problem.variables()}
    dual_owner = {}
    for constraint in problem.constraints:
        for index, dual in enumerate(constraint.dual_variables):
            dual_owner[dual.id] = (constraint, index)
    if len(variables) == 0:
        raise ProblemError("`variables` is empty; list at least one variable to return.")
    resolved = []
    for k, v in enumerate(variables):
        if not isinstance(v, cp.Variable):
            raise ProblemError(f"`variables[{k}]` must be a cvxpy.Variable (or a constraint's "
                               f"dual variable); received {type(v).__name__}.")
        if v.id in primal_ids:
            if v.attributes.get("boolean") or v.attributes.get("integer"):
                raise ProblemError(f"{_label(v, 'Variable', k)} is integer or boolean; "
                                   "mixed-integer problems are not differentiable.")
            resolved.append(("primal", v))
        elif v.id in dual_owner:
            resolved.append(("dual",) + dual_owner[v.id])
        else:
            raise ProblemError(
                f"`variables` must be a subset of problem.variables() and constraint duals: "
                f"{_label(v, 'Variable', k)} does not belong to the problem: it is neither one "
                "of its variables nor the dual variable of one of its constraints "
                "(constraint.dual_variables[0]).")
    return resolved


def _lowering_matrix(param) -> sp.csr_matrix:
    """CVXPY's reduction of a structured parameter (size s) to its reduced vector (size r),
    as an r × s matrix acting on the column-major vec. A symmetric parameter's entry (i, j)
    of the upper triangle is taken as (θ_ij + θ_ji)/2, so the layer is a function of all
    entries and its gradient with respect to θ is symmetric."""
    from cvxpy.reductions.cvx_attr2constr import lower_value

    size = int(np.prod(param.shape, dtype=int))
    if any(param.attributes.get(a) for a in _SYMMETRIC_ATTRIBUTES):
        n = param.shape[0]
        rows_i, cols_j = np.triu_indices(n)
        k = np.arange(rows_i.size)
        flat_ij, flat_ji = rows_i + cols_j * n, cols_j + rows_i * n
        # Half of each of θ_ij and θ_ji; on the diagonal the two halves add up to θ_ii.
        weights = np.full(k.size, 0.5)
        return sp.csr_matrix((np.concatenate([weights, weights]),
                              (np.concatenate([k, k]), np.concatenate([flat_ij, flat_ji]))),
                             shape=(rows_i.size, size))
    labels = np.arange(1, size + 1, dtype=float).reshape(param.shape, order="F")
    picked = np.asarray(lower_value(param, labels)).ravel(order="F").astype(int) - 1
    return sp.csr_matrix((np.ones(picked.size), (np.arange(picked.size), picked)),
                         shape=(picked.size, size))


def _parameter_sources(chain) -> dict:
    """CVXPY parameter id -> (the parameter it was made from, "lower" or "log")."""
    from cvxpy.reductions.cvx_attr2constr import CvxAttr2Constr
    from cvxpy.reductions.dgp2dcp.dgp2dcp import Dgp2Dcp

    sources = {}
    for reduction in chain.reductions:
        if isinstance(reduction, CvxAttr2Constr):
            # CVXPY < 1.8 keeps structured parameters whole (no reduced parameters).
            for old, new in getattr(reduction, "_parameters", {}).items():
                sources[new.id] = (old, "lower")
        elif isinstance(reduction, Dgp2Dcp) and reduction.canon_methods is not None:
            for old, new in reduction.canon_methods._parameters.items():
                sources[new.id] = (old, "log")
    return sources


def _lowering(param_prob, chain, parameters):
    """The matrix L with θ_cvx = L φ, and the layout of φ (raw and log columns)."""
    sources = _parameter_sources(chain)
    position = {p.id: k for k, p in enumerate(parameters)}
    sizes = [int(np.prod(p.shape, dtype=int)) for p in parameters]
    raw_offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    raw_slices = [slice(raw_offsets[k], raw_offsets[k + 1]) for k in range(len(parameters))]
    log_slices = [None] * len(parameters)
    n_features = int(raw_offsets[-1])
    blocks = []  # (row offset, column offset, matrix)
    for param in param_prob.parameters:
        lower = sp.identity(int(np.prod(param.shape, dtype=int)), format="csr")
        current, is_log = param, False
        while current.id not in position:
            if current.id not in sources:
                raise ProblemError(f"Internal: cannot trace CVXPY parameter `{current.name()}` "
                                   "back to a layer parameter.")
            old, kind = sources[current.id]
            if kind == "lower":
                lower = lower @ _lowering_matrix(old)
            else:
                is_log = True
            current = old
        k = position[current.id]
        if is_log:
            if log_slices[k] is None:
                log_slices[k] = slice(n_features, n_features + sizes[k])
                n_features += sizes[k]
            column = log_slices[k].start
        else:
            column = raw_slices[k].start
        blocks.append((param_prob.param_id_to_col[param.id], column, sp.coo_matrix(lower)))
    n_theta = param_prob.A.shape[1] - 1
    rows, cols, vals = [np.zeros(0, int)], [np.zeros(0, int)], [np.zeros(0)]
    for row0, col0, block in blocks:
        rows.append(block.row + row0)
        cols.append(block.col + col0)
        vals.append(block.data)
    matrix = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                           shape=(n_theta, n_features))
    return matrix, raw_slices, log_slices


def _primal_selection(var, param_prob, chain, inverse_data, gp: bool):
    """(indices into x, scales) of a primal variable's column-major entries."""
    from cvxpy.reductions.cvx_attr2constr import CvxAttr2Constr
    from cvxpy.reductions.dgp2dcp.dgp2dcp import Dgp2Dcp

    size = int(np.prod(var.shape, dtype=int))
    local = np.arange(size)
    scales = np.ones(size)
    current = var
    for reduction, inverse in zip(chain.reductions, inverse_data):
        if gp and isinstance(reduction, Dgp2Dcp):
            current = reduction.canon_methods._variables.get(current, current)
        elif isinstance(reduction, CvxAttr2Constr) and inverse:
            id2new_var = inverse[0]
            new = id2new_var.get(current.id)
            if new is None or new is current:
                continue
            if any(current.attributes.get(a) for a in _SYMMETRIC_ATTRIBUTES):
                n = current.shape[0]
                i, j = np.unravel_index(local, (n, n), order="F")
                lo, hi = np.minimum(i, j), np.maximum(i, j)
                # Position of (lo, hi) in np.triu_indices(n) order (row-major upper triangle).
                local = lo * n - lo * (lo - 1) // 2 + (hi - lo)
            elif current.attributes.get("diag"):
                n = current.shape[0]
                i, j = np.unravel_index(local, (n, n), order="F")
                scales = np.where(i == j, scales, 0.0)
                local = np.where(i == j, i, 0)
            elif new.size != current.size:
                raise ProblemError(f"Variable `{var.name()}` has an attribute cvxlayers cannot "
                                   "return yet (sparsity); drop the attribute.")
            current = new
    if current.id not in param_prob.var_id_to_col:
        raise ProblemError(f"Variable `{var.name()}` does not appear in the compiled problem.")
    return param_prob.var_id_to_col[current.id] + local, scales


def _invert_duals(chain, inverse_data, x, y):
    """CVXPY's own recovery of the original problem's duals from a cone solution."""
    raw = {"x": x, "y": y, "s": np.zeros_like(y),
           "info": {"status_val": 1, "solve_time": 0.0, "setup_time": 0.0, "iter": 0,
                    "pobj": 0.0}}
    solution = raw
    for reduction, inverse in reversed(list(zip(chain.reductions, inverse_data))):
        solution = reduction.invert(solution, inverse)
    return solution.dual_vars


def _dual_value(constraint, index, dual_vars) -> np.ndarray:
    """The value CVXPY would give ``constraint.dual_variables[index]``, without keeping it."""
    saved = [d.value for d in constraint.dual_variables]
    try:
        constraint.save_dual_value(dual_vars[constraint.id])
        return np.asarray(constraint.dual_variables[index].value, dtype=float)
    finally:
        for d, old in zip(constraint.dual_variables, saved):
            d.save_value(old)


def _dual_selection(constraint, index, label, n, m, chain, inverse_data):
    """(indices into z = [x; y], scales) of a dual output, found by probing CVXPY's recovery
    with labelled duals: the recovery is linear, and each entry is one scaled entry of y."""
    rng = np.random.default_rng(0)
    probes = [np.ones(m), np.arange(1.0, m + 1.0), rng.standard_normal(m)]
    values = [_dual_value(constraint, index, _invert_duals(chain, inverse_data, np.zeros(n), y))
              .ravel(order="F") for y in probes]
    ones, labels, random = values
    scales = ones
    nonzero = ones != 0
    picked = np.zeros(ones.size, dtype=int)
    picked[nonzero] = np.rint(labels[nonzero] / ones[nonzero]).astype(int) - 1
    valid = (picked >= 0) & (picked < m)
    predicted = np.where(nonzero & valid, scales * probes[2][np.clip(picked, 0, m - 1)], 0.0)
    if not valid[nonzero].all() or not np.allclose(predicted, random, rtol=1e-10, atol=1e-12):
        raise ProblemError(f"{label}: the dual of a {type(constraint).__name__} constraint is "
                           "not a selection of the cone program's dual, so cvxlayers cannot "
                           "return it.")
    return n + picked, scales


def check_qp(problem, gp: bool) -> None:
    """Raises a ProblemError naming the constraint or objective term that keeps the problem
    from compiling to a QP (a quadratic or piecewise-linear objective, affine or
    piecewise-linear constraints)."""
    from cvxpy.atoms.affine.add_expr import AddExpression
    from cvxpy.constraints import Equality, Inequality, NonNeg, NonPos, Zero

    if gp:
        raise ProblemError("Geometric programs (gp=True) are not QPs; use SCS, ECOS or Clarabel.")
    expr = problem.objective.expr
    if type(problem.objective).__name__ == "Maximize":
        expr = -expr
    terms = expr.args if isinstance(expr, AddExpression) else [expr]
    for term in terms:
        if not term.is_qpwa():
            raise ProblemError(
                f"The objective term `{term}` is not quadratic or piecewise-linear, so the "
                "problem is not a QP; use solver='SCS', 'ECOS' or 'CLARABEL'.")
    for k, constraint in enumerate(problem.constraints):
        kinds = (Equality, Inequality, Zero, NonNeg, NonPos)
        if not isinstance(constraint, kinds) or not all(a.is_pwl() for a in constraint.args):
            raise ProblemError(
                f"Constraint {k} (`{constraint}`) is a {type(constraint).__name__} constraint "
                "that is not affine or piecewise-linear, so the problem is not a QP; use "
                "solver='SCS', 'ECOS' or 'CLARABEL'.")


def compile_problem(problem, parameters: Sequence, variables: Sequence, gp: bool = False,
                    quad_obj: bool = False) -> CompiledProblem:
    """Checks and canonicalizes ``problem`` and builds the per-call maps.

    Args:
        problem: a DPP-compliant ``cvxpy.Problem`` (DGP and DPP if ``gp``).
        parameters: exactly the problem's parameters, in the order the layer takes them.
        variables: the outputs: a subset of the problem's variables and/or constraint dual
            variables (``constraint.dual_variables[0]``).
        gp: whether the problem is a disciplined geometric program.
        quad_obj: keep a quadratic objective ½xᵀPx as P (for the QP backend, and for SCS
            and Clarabel when :func:`needs_quad_obj`) instead of rewriting it with
            second-order cones. ``cp.quad_form(x, P)`` with a parameter P in the objective
            is then DPP, and P's data are a linear function of the parameters. Whether the
            problem is a QP is :func:`check_qp`'s question, asked by the layer for the QP
            backend.

    Raises:
        ProblemError (NotDCPError, NotDPPError, NotDGPError): when it cannot become a layer.
    """
    import cvxpy as cp
    from cvxpy.reductions.solvers.conic_solvers.scs_conif import dims_to_solver_dict

    check_problem(problem, gp, quad_obj)
    parameters, variables = list(parameters), list(variables)
    _check_parameters(problem, parameters)
    resolved = _resolve_outputs(problem, variables, gp)
    data, chain, inverse_data = _problem_data(problem, gp, quad_obj)
    param_prob = data[cp.settings.PARAM_PROB]
    n, m = param_prob.x.size, data["A"].shape[0]
    # Every key diffcp knows stays, even when empty (its ECOS path reads the zero cone's
    # size unconditionally); the power cones' α list only when there are power cones
    # (the N-D power cones CVXPY has already rewritten as 3-D ones, so "pnd" is empty).
    cone_dict = {k: v for k, v in dims_to_solver_dict(data["dims"]).items()
                 if k in _CONE_KEYS and (k != "p" or len(v) > 0)}
    lowering, raw_slices, log_slices = _lowering(param_prob, chain, parameters)
    p_tensor = param_prob.P if quad_obj else None
    if quad_obj and p_tensor is None:  # an LP: P is structurally empty
        p_tensor = sp.csr_matrix((n * n, param_prob.A.shape[1]))
    pmap, layout = build_parameter_map(param_prob.A, param_prob.q, n, m, lowering,
                                       raw_slices, log_slices, cone_dict, p_tensor)
    outputs, indices, scales, row = [], [], [], 0
    for k, (item, v) in enumerate(zip(resolved, variables)):
        kind = "Variable" if item[0] == "primal" else "Dual variable"
        label = _label(v, kind, k)
        if item[0] == "primal":
            idx, scale = _primal_selection(v, param_prob, chain, inverse_data, gp)
        else:
            idx, scale = _dual_selection(item[1], item[2], label, n, m, chain, inverse_data)
        outputs.append(OutputSpec(label, tuple(v.shape), slice(row, row + idx.size),
                                  exp=gp and item[0] == "primal", name=f"{kind} `{v.name()}`"))
        indices.append(idx)
        scales.append(scale)
        row += idx.size
    solution_map = SolutionMap.build(outputs, np.concatenate(indices).astype(int),
                                     np.concatenate(scales), n, m)
    specs = tuple(ParameterSpec.from_parameter(p, k, gp) for k, p in enumerate(parameters))
    return CompiledProblem(specs, pmap, layout, solution_map, gp)
