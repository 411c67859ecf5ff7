"""The native batched QP backend: the whole batch in one interior-point computation.

The layer compiles the problem with its quadratic objective kept (``quad_obj``), so each
data row holds, in SCS form, A (equalities first, then inequalities), b, c and P. This
backend scatters the rows into dense batched matrices,

    P (B,n,n), q = c, [A; G] = A_scs, [b; h] = b_scs,

solves all elements at once with :func:`~cvxlayers.backends.qp_solver.solve_qp` (on
PyTorch's CPU kernels for large batches when PyTorch is installed, else NumPy's), and
returns x and y = [ν; λ] (the cone program's dual, in the same convention as SCS's). The
backward pass applies :func:`~cvxlayers.backends.qp_solver.adjoint_directions` with the
factorization the solve kept, and forms the data rows' gradients at the structural entries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cvxlayers import status as st
from cvxlayers.backends.base import Backend, BatchSolution

#: solver_args this backend accepts, with their defaults.
#: tol None: the reduction's own (1e-11 dual, 1e-9 primal; see qp_solver.solve_qp).
#: kkt_form: "auto", "primal" or "dual" (the Newton step's reduction; see qp_solver).
#: presolve: substitute out the variables that equalities define (qp_presolve).
#: polish: finish converged elements with a clear active set by an active-set solve (qp_polish).
#: factorization: "dense" (the batched interior point), "sparse" (per element: Clarabel's
#: sparse interior point, a sparse LDLᵀ for the polish and the backward), or "auto".
QP_OPTIONS = {"tol": None, "max_iter": 50, "kkt_form": "auto", "presolve": True,
              "polish": True, "factorization": "auto"}
FACTORIZATIONS = ("auto", "dense", "sparse")


class QPBackend(Backend):
    """Mehrotra predictor-corrector interior point, batched (OptNet's method)."""

    name = "QP"
    supported_cones = frozenset({"z", "l"})
    quad_obj = True
    accepts_quad_obj = True
    runs_on_device = True
    warm_starts = True  # a shifted previous point (qp_solver.WARM_MARGIN)
    option_aliases = {"eps": ("tol",), "max_iters": ("max_iter",)}
    # cvxpylayers' key that means nothing here: nothing is printed.
    ignored_options = frozenset({"verbose"})
    gradients = ("implicit", "lpgd", "smoothed")  # the latter two: see qp_gradients

    def gradient_options(self, gradient, options: dict) -> dict:
        """The gradient travels as an option (``solve`` takes it out)."""
        return {**options, "gradient": gradient}

    def _options(self, options: dict) -> dict:
        options = {k: v for k, v in options.items()
                   if k not in ("mode", "derivative_kwargs", "gradient")}
        unknown = sorted(set(options) - set(QP_OPTIONS))
        if unknown:
            raise ValueError(f"solver_args {unknown} are not options of the QP solver; it "
                             f"accepts {sorted(QP_OPTIONS)}.")
        return {**QP_OPTIONS, **options}

    def unpack(self, layout, data: np.ndarray, g_columns=None, a_blocks=None):
        """Dense batched (P, q, A, b, G, h) from data rows. The equality and inequality
        rows are made separately, so that either is one shared matrix when it is the same
        in every element (the equalities that define a presolve's auxiliary variables
        usually are, while the inequalities carry parameters).

        ``g_columns``: the sorted variables G is made on, when it has no entry elsewhere
        (the presolve's :attr:`~cvxlayers.backends.qp_presolve.Presolve.g_columns`). The
        paper's dense QP has G on its 128 user variables of 256: made on those alone it is
        full, and one gather makes it (:class:`_MatrixPlan`), not a zero-filled array twice
        its size (page faults included) and a copy of the columns kept.

        ``a_blocks``: an array converter (the engine's ``asarray``); A is then an
        :class:`~cvxlayers.backends.qp_presolve.EntryBatch`, made dense only in the blocks
        the presolve's first round reads, in the converter's library."""
        from cvxlayers.backends.qp_presolve import EntryBatch

        a_values, b_scs, c, p_values = layout.split(data)
        key = "_unpack" if g_columns is None else "_unpack_g"
        plan_a, plan_g, plan_p = self._per_layout(
            key, layout, lambda layout: _unpack_plans(layout, g_columns))
        n_eq = layout.cone_dict.get("z", 0)
        if a_blocks is None:
            A = plan_a.build(a_values)
        else:
            A = EntryBatch(plan_a.rows, plan_a.cols, plan_a.shape,
                           lambda at, rows, cols, shape: _MatrixPlan.of(
                               plan_a.positions[at], rows, cols, shape),
                           lambda plan, first: a_blocks(plan.build(
                               a_values[:1] if first else a_values)),
                           self._per_layout("_a_blocks", layout, lambda _: {}))
        return (plan_p.build(p_values), np.ascontiguousarray(c), A,
                np.ascontiguousarray(b_scs[:, :n_eq]), plan_g.build(a_values),
                np.ascontiguousarray(b_scs[:, n_eq:]))

    def _per_layout(self, name: str, layout, build):
        """``build(layout)``, computed once per layout and kept on the backend (each layer
        has its own backends); keyed by identity, with the layout kept beside its value
        so that a recycled id cannot return another layout's."""
        cache = self.__dict__.setdefault(name, {})
        entry = cache.get(id(layout))
        if entry is None or entry[0] is not layout:
            entry = cache[id(layout)] = (layout, build(layout))
        return entry[1]

    def presolve(self, layout):
        """The substitution planned for ``layout`` (:mod:`~cvxlayers.backends.qp_presolve`)."""
        from cvxlayers.backends.qp_presolve import Presolve

        return self._per_layout("_presolves", layout, Presolve.plan)

    def prefers_sparse(self, layout) -> bool:
        """Whether the per-element sparse path is the cheaper one for ``layout``: the dense
        batched method costs about (2/3)N³ + 2·m·n² flops per element and iteration (N the
        reduced KKT matrix's rows, after the presolve), a sparse factorization about the
        KKT matrix's nonzeros times its fill, which for the structured problems layers
        have (bounds, differences, banded or block constraints) stays a small multiple of
        the nonzeros. The dense method is kept below 150 rows, where its batched kernels
        beat the per-element loop's fixed cost (box projections, B = 32: dense 0.8x the
        sparse path's time at 100 rows, 3x at 200), and whenever the KKT matrix is over 5 %
        full (then the dense kernels' speed wins)."""
        return self._per_layout("_sparse_choice", layout, self._sparse_cheaper)

    def _sparse_cheaper(self, layout) -> bool:
        n, m, n_eq = layout.n, layout.m, layout.cone_dict.get("z", 0)
        eliminated = self.presolve(layout).eliminated
        n_kkt = max(n - eliminated, m - n_eq) + n_eq - eliminated
        rows = n + m
        density = (2 * layout.nnz + layout.p_nnz + rows) / rows ** 2
        return n_kkt >= _SPARSE_MIN_ROWS and density <= _SPARSE_MAX_DENSITY

    def _sparse_backend(self):
        """The per-element sparse path (:mod:`~cvxlayers.backends.qp_sparse`)."""
        from cvxlayers.backends.qp_sparse import SparseQPPath

        backend = self.__dict__.get("_sparse")
        if backend is None:
            backend = self.__dict__["_sparse"] = SparseQPPath()
        return backend

    def _solve_sparse(self, layout, data, need_derivative, options, n_jobs, warm_start):
        # Clarabel cannot warm-start: warm_point warns once (as for solver="CLARABEL").
        self._sparse_backend().warm_point(layout, data.shape[0], warm_start)
        tol = options["tol"] if options["tol"] is not None else _SPARSE_TOL
        clarabel = {"tol_gap_abs": tol, "tol_gap_rel": tol, "tol_feas": tol,
                    "max_iter": max(options["max_iter"], 100)}
        solution = self._sparse_backend().solve(layout, data, need_derivative, clarabel, n_jobs)
        solution.context = "sparse"
        return solution

    def solve(self, layout, data, need_derivative, options, n_jobs, warm_start=False):
        from cvxlayers.backends.qp_presolve import EntryBatch
        from cvxlayers.backends.qp_solver import solve_qp

        gradient = options.get("gradient")
        options = self._options(options)
        factorization = options.pop("factorization")
        if factorization not in FACTORIZATIONS:
            raise ValueError(f"solver_args['factorization'] must be one of {FACTORIZATIONS}; "
                             f"received {factorization!r}.")
        implicit = gradient is None or gradient.name == "implicit"
        if factorization == "sparse" and not implicit:
            raise ValueError(f"gradient={gradient.name!r} needs the dense interior point; "
                             "solver_args['factorization'] must be 'dense' or 'auto' with it; "
                             "received 'sparse'.")
        if factorization == "sparse" or (factorization == "auto" and implicit
                                         and self.prefers_sparse(layout)):
            return self._solve_sparse(layout, data, need_derivative, options, n_jobs,
                                      warm_start)
        presolve = self.presolve(layout) if options.pop("presolve") else None
        options["polish_solution"] = options.pop("polish")
        # The larger of the two reductions' matrices: n + p (primal) or m + p (dual) rows,
        # after the presolve, which removes one variable and one equality per pivot.
        eliminated = presolve.eliminated if presolve is not None else 0
        n_vars, n_eq = layout.n - eliminated, layout.cone_dict.get("z", 0) - eliminated
        n_kkt = max(n_vars, layout.m - layout.cone_dict.get("z", 0)) + n_eq
        engine = _engine(data.shape[0], data.shape[0] * n_kkt * n_kkt)
        # The presolve runs on the solve's arrays: NumPy's BLAS threads, woken between
        # PyTorch's kernels, would spin against PyTorch's threads for the cores (on 2 cores
        # the paper's dense QP took 1.3x its quad_form twin's time, 1.07x without them).
        # With a presolve, G is made on the kept variables alone (where it has none on the
        # others) and A only in the blocks the presolve reads; LPGD perturbs the full
        # problem's data, so it gets both in full.
        g_columns = a_blocks = None
        if presolve is not None and presolve.rounds and (gradient is None
                                                         or gradient.name != "lpgd"):
            g_columns, a_blocks = presolve.g_columns, engine.asarray
        full = tuple(a if isinstance(a, EntryBatch) else engine.asarray(a)
                     for a in self.unpack(layout, data, g_columns, a_blocks))
        contexts = []
        reduced = full
        if presolve is not None and presolve.rounds:
            reduced, contexts = presolve.reduce(*full, g_reduced=g_columns is not None)
        P, q, A, b, G, h = reduced
        # A warm start is the previous solution of the problem the interior point solves
        # (after the presolve); one of other dimensions (presolve toggled) starts cold.
        previous = self.warm_point(layout, data.shape[0], warm_start)
        if previous is not None and previous[0][0].shape[1] != n_vars:
            previous = None
        start = None
        if previous is not None:
            arrays, valid = previous
            start = (*(engine.asarray(a) for a in arrays), engine.asarray(valid))
        # Failed elements may overflow; they are reported.
        with np.errstate(all="ignore"):
            solution = solve_qp(P, q, A, b, G, h, keep_factorization=need_derivative,
                                start=start, **options)
            if start is not None and not all(status == st.OPTIMAL for status, warm in
                                             zip(solution.statuses, previous[1]) if warm):
                # An interior-point method started far from the new problem's central path
                # (a new rollout, a large step) can stall; the batch is then solved cold,
                # so that a start never costs an element its solution.
                previous = None
                solution = solve_qp(P, q, A, b, G, h, keep_factorization=need_derivative,
                                    **options)
            x, nu = solution.x, solution.nu
            if contexts:
                x, nu = presolve.recover(contexts, x, nu, solution.lam)
            x_r, nu_r, lam, s_r, x, nu = (engine.to_numpy(v) for v in (
                solution.x, solution.nu, solution.lam, solution.s, x, nu))
        x = np.array(x)
        y = np.concatenate([nu, lam], axis=1)
        messages = {}
        for i, status in enumerate(solution.statuses):
            if status not in st.USABLE:
                x[i], y[i] = np.nan, np.nan
                messages[i] = f"interior point: {status} after {solution.iterations} iterations"
        # The next call's start; failed elements' NaN rows make them start cold.
        usable = np.array([status in st.USABLE for status in solution.statuses])
        # The solve's own arrays, which nothing writes into afterwards: kept uncopied.
        point = (x_r, nu_r, lam, s_r)
        self.warm_store.put(layout, point if usable.all() else tuple(
            np.where(usable[:, None], a, np.nan) for a in point), copy=False)
        context = None
        if need_derivative:
            context = _Solved(solution, P, A, G, engine, contexts, full_x=x, full_y=y,
                              presolve=presolve)
        if need_derivative and gradient is not None and gradient.name != "implicit":
            from cvxlayers.backends.qp_gradients import GradientContext  # smoothed, LPGD

            context = GradientContext(context, (P, q, A, b, G, h), gradient, options, full)
        return BatchSolution(x, y, solution.statuses, messages, context=context,
                             iterations=solution.steps,  # per element: its Newton steps
                             warm=np.zeros(x.shape[0], dtype=bool) if previous is None
                             else previous[1].copy())

    def adjoint(self, layout, solution, dx, dy, usable, n_jobs):
        """Data-row gradients from the adjoint directions w = J⁻ᵀ g: in SCS form, with
        y = [ν; λ] and w_y = [w_ν; λ∘w_λ], ∇A_scs = −(y w_xᵀ + w_y xᵀ), ∇b_scs = w_y,
        ∇c = −w_x, ∇P = −½(w_x xᵀ + x w_xᵀ), each formed at the structural entries only
        (never as dense batched matrices)."""
        from cvxlayers.backends.qp_gradients import GradientContext
        from cvxlayers.backends.qp_solver import adjoint_directions

        if solution.context == "sparse":
            return self._sparse_backend().adjoint(layout, solution, dx, dy, usable, n_jobs)
        if isinstance(solution.context, GradientContext):  # smoothed or LPGD gradient
            return solution.context.adjoint(self, layout, solution, dx, dy, usable, n_jobs)
        solved = solution.context
        qp_solution, engine = solved.solution, solved.engine
        p = solved.A.shape[-2]  # A may be shared by the batch (2-D)
        keep = usable[:, None]
        g_x = np.where(keep, dx, 0.0)
        g_y = np.where(keep, dy, 0.0)
        n_eq = layout.cone_dict.get("z", 0)

        def solve_reduced(r_x, r_nu, r_lam):
            return adjoint_directions(qp_solution, solved.P, solved.A, solved.G, r_x, r_nu,
                                      r_lam)

        g_x, g_y = engine.asarray(g_x), engine.asarray(g_y)
        with np.errstate(all="ignore"):
            if solved.contexts:  # pulled and pushed on the solve's arrays, as in its reduce
                w = solved.presolve.adjoint(
                    solved.contexts, solve_reduced, g_x, g_y[:, :n_eq], g_y[:, n_eq:])
            else:
                w = solve_reduced(g_x, g_y[:, :p], g_y[:, p:])
        w_x, w_nu, lam_w = (engine.to_numpy(v) for v in w)
        # Failed elements are NaN in the solution; their rows are zeroed below.
        x, y = _zero_nan(solved.full_x), _zero_nan(solved.full_y)
        w_y = np.concatenate([w_nu, lam_w], axis=1)
        # One row per element, written block by block: [∇A_scs, ∇b_scs, ∇c, ∇P] (layout order).
        d_data = np.zeros((x.shape[0], layout.size))
        n_a, n_b = layout.nnz, layout.m
        d_data[:, n_a:n_a + n_b] = w_y
        np.negative(w_x, out=d_data[:, n_a + n_b:n_a + n_b + layout.n])
        # Constant A or P: the parameter map ignores their gradient, which stays 0.
        if layout.a_parametrized:
            varying, entries, block = self._per_layout("_a_entries", layout, _a_gradient_entries)
            if varying is None:
                _outer_entries([(y, w_x), (w_y, x)], entries, -1.0, d_data[:, :n_a], block)
            else:  # only the entries that depend on the parameters (the map ignores the rest)
                part = np.zeros((x.shape[0], varying.size))
                _outer_entries([(y, w_x), (w_y, x)], entries, -1.0, part, block)
                d_data[:, varying] = part
        if layout.p_parametrized:
            entries = layout.entries("P")
            _outer_entries([(w_x, x), (x, w_x)], entries, -0.5,
                           d_data[:, n_a + n_b + layout.n:],
                           self._per_layout("_p_block", layout, lambda _: _block(*entries)))
        d_data[~usable] = 0.0
        return d_data


@dataclass
class _Solved:
    """What the adjoint needs from a solve: the reduced problem's solution and matrices,
    the presolve's per-call contexts, and the full problem's solution."""

    solution: object
    P: object
    A: object
    G: object
    engine: object
    contexts: list
    full_x: np.ndarray
    full_y: np.ndarray
    presolve: object = None


def _a_gradient_entries(layout):
    """(the varying entries' indices or None, their (rows, cols), their block or None): what
    the adjoint's ∇A needs, per layout (at B = 1 recomputing it cost ~5 % of a call)."""
    rows, cols = layout.entries("A")
    varying = _varying_entries(layout)
    if varying is not None:
        rows, cols = rows[varying], cols[varying]
    return varying, (rows, cols), _block(rows, cols)


def _varying_entries(layout):
    """Indices of A's structural entries that depend on the parameters, or None when all
    do (or it is unknown). A presolved problem's A holds many constant entries (the
    coefficients of the substitutions t = Lx), whose gradients nobody reads."""
    if layout.a_constant is None:
        return None
    varying = np.flatnonzero(np.isnan(layout.a_constant))
    return None if varying.size == layout.nnz else varying


def _outer_entries(pairs, entries, scale: float, out, block=False) -> None:
    """Writes scale · Σ u vᵀ over ``pairs`` of batched vectors (u: rows, v: columns), at
    the structural ``entries`` (rows, cols) in their data (column-major) order, into ``out``
    of shape (B, nnz).

    Entries that are every position of one block [r₀, r₁) × [c₀, c₁) (a full matrix, or
    e.g. G's entries on the user's variables when the presolve's constant rows are left
    out) have the block's column-major order as their data order: the block is formed
    densely straight into ``out``, no gather (the paper's dense QP: 3 ms instead of 10). A
    sparse set gathers only its entries; a mostly full one is formed densely and gathered.
    ``block``: the entries' :func:`_block` when known (None: not a block), else found here."""
    rows, cols = entries
    (u, v), batch = pairs[0], pairs[0][0].shape[0]
    n_rows, n_cols = u.shape[1], v.shape[1]
    if block is False:
        block = _block(rows, cols)
    if block is not None:
        row_range, col_range = block
        dense = out.view()
        dense.shape = (batch, col_range.stop - col_range.start, row_range.stop - row_range.start)
        (u1, v1), *rest = pairs   # reshaping `out` raises rather than copy: its rows are contiguous
        np.multiply(v1[:, col_range, None], u1[:, None, row_range], out=dense)
        for u_k, v_k in rest:
            dense += v_k[:, col_range, None] * u_k[:, None, row_range]
    elif 2 * rows.size < n_rows * n_cols:
        out[...] = sum(np.take(u, rows, axis=1) * np.take(v, cols, axis=1) for u, v in pairs)
    else:
        dense = sum(v[:, :, None] * u[:, None, :] for u, v in pairs).reshape(batch, -1)
        out[...] = np.take(dense, cols * n_rows + rows, axis=1)
    out *= scale


def _zero_nan(a: np.ndarray) -> np.ndarray:
    """``a`` with NaN (failed elements' rows) set to 0; ``a`` itself when all finite (the
    usual case, a fraction of ``np.nan_to_num``'s fixed cost at small sizes)."""
    return a if np.isfinite(a).all() else np.nan_to_num(a)


def _unpack_plans(layout, g_columns):
    """The :class:`_MatrixPlan` of A's equality rows, of G (on ``g_columns`` when given)
    and of P, for :meth:`QPBackend.unpack`."""
    n_eq, n = layout.cone_dict.get("z", 0), layout.n
    rows, cols = layout.entries("A")
    eq = rows < n_eq
    g_cols, n_g = cols[~eq], n
    if g_columns is not None:
        g_cols, n_g = np.searchsorted(g_columns, g_cols), g_columns.size
    p_rows, p_cols = layout.entries("P") if layout.p_indices is not None else (rows[:0],) * 2
    return (_MatrixPlan.of(np.flatnonzero(eq), rows[eq], cols[eq], (n_eq, n)),
            _MatrixPlan.of(np.flatnonzero(~eq), rows[~eq] - n_eq, g_cols,
                           (layout.m - n_eq, n_g)),
            _MatrixPlan.of(np.arange(p_rows.size), p_rows, p_cols, (n, n)))


@dataclass(frozen=True)
class _MatrixPlan:
    """Where one batched dense matrix's structural entries sit among a data block's
    values: their positions, (rows, cols) and the matrix's shape; and, when the entries
    are every position of the matrix, ``grid``, the (rows, cols) array of their positions,
    with which one gather ``values[:, grid]`` makes the whole batch (C-contiguous, no
    zero fill, no transposing copy)."""

    positions: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    shape: tuple
    grid: np.ndarray | None

    @classmethod
    def of(cls, positions, rows, cols, shape) -> _MatrixPlan:
        grid = None
        if rows.size and rows.size == shape[0] * shape[1]:
            grid = np.empty(rows.size, dtype=np.int64)
            grid[rows * shape[1] + cols] = positions
            grid = grid.reshape(shape)
        return cls(positions, rows, cols, shape, grid)

    def build(self, values: np.ndarray) -> np.ndarray:
        """The batch of matrices from a (B, ·) block of values; one shared 2-D matrix when
        every element's is the same."""
        if self.grid is not None and not (values.shape[0] > 1 and np.array_equal(
                values[0, self.positions], values[1, self.positions])):
            return np.take(values, self.grid, axis=1)  # C-contiguous, unlike values[:, grid]
        return _dense(values[:, self.positions], (self.rows, self.cols), self.shape)


def _dense(values: np.ndarray, entries, shape) -> np.ndarray:
    """Batched dense matrices from structural values; one shared 2-D matrix when every
    element has the same (a fixed P, or constraints whose parameters only enter b)."""
    rows, cols = entries
    if values.shape[0] > 1 and np.array_equal(values[0], values[1]) and np.array_equal(
            values, np.broadcast_to(values[:1], values.shape)):
        values = values[:1]
        shared = True
    else:
        shared = False
    if rows.size == shape[0] * shape[1]:  # every entry, in column-major order: a reshape
        dense = np.ascontiguousarray(
            values.reshape((values.shape[0], shape[1], shape[0])).transpose(0, 2, 1))
    else:
        dense = np.zeros((values.shape[0],) + shape)
        block = _full_column_block(rows, cols, shape[0])
        if block is not None:  # e.g. G on the user's variables, none on auxiliary ones
            dense[:, :, block] = values.reshape(
                (values.shape[0], block.stop - block.start, shape[0])).transpose(0, 2, 1)
        else:
            dense[:, rows, cols] = values
    return dense[0] if shared else dense


def _full_column_block(rows, cols, n_rows: int):
    """The column range [c₀, c₁) as a slice when the entries (in column-major order) are
    every row of exactly those columns, else None: the values then are a (c₁ − c₀) × rows
    block written by one strided copy instead of a scatter (4-5x faster at 2M entries)."""
    block = _block(rows, cols)
    if block is None or block[0] != slice(0, n_rows):
        return None
    return block[1]


def _block(rows, cols):
    """(rows [r₀, r₁), columns [c₀, c₁)) as two slices when the entries, in column-major
    order, are every position of that block and nothing else, else None."""
    if rows.size == 0:
        return None
    r0, c0, c1 = int(rows[0]), int(cols[0]), int(cols[-1]) + 1
    if c1 <= c0:
        return None
    height = rows.size // (c1 - c0)
    if height * (c1 - c0) != rows.size or int(rows[height - 1]) != r0 + height - 1:
        return None
    shape = (c1 - c0, height)
    if not (np.array_equal(rows.reshape(shape),
                           np.broadcast_to(np.arange(r0, r0 + height), shape))
            and np.array_equal(cols.reshape(shape),
                               np.broadcast_to(np.arange(c0, c1)[:, None], shape))):
        return None
    return slice(r0, r0 + height), slice(c0, c1)


class _NumpyEngine:
    asarray = staticmethod(np.asarray)
    to_numpy = staticmethod(np.asarray)


class _TorchEngine:
    """PyTorch's CPU kernels for the same array-API code: its batched LU and products are
    several times faster than NumPy's and SciPy's (which loops over the batch in Python)."""

    def __init__(self, torch):
        self.torch = torch

    def asarray(self, array):
        if isinstance(array, self.torch.Tensor):
            return array.contiguous()
        return self.torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64))

    @staticmethod
    def to_numpy(tensor):
        return tensor.numpy()


#: The sparse path's thresholds (QPBackend.prefers_sparse) and its default tolerance.
_SPARSE_MIN_ROWS = 150
_SPARSE_MAX_DENSITY = 0.05
_SPARSE_TOL = 1e-10

#: From this batch size, or this many KKT-matrix entries in the batch, PyTorch's batched
#: kernels pay (SciPy factors a batch one element at a time, in a Python loop); below both,
#: NumPy's small single-threaded operations are faster and steadier (PyTorch synchronizes
#: its threads on every small operation, which stalls on a busy machine). The solver never
#: changes PyTorch's thread count: in PyTorch 2.13 with MKL, once ``torch.set_num_threads``
#: has been called with more than one thread, batched float64 LU factorizations of 200 × 200
#: and larger come back with invalid pivots (found in this repository; see the QP guide).
_TORCH_BATCH = 64
_TORCH_ENTRIES = 1 << 18   # e.g. batch 32 of 90-row KKT matrices


def numpy_pays(batch: int, kkt_rows: int) -> bool:
    """Whether NumPy solves this batch of ``kkt_rows``-row KKT systems faster than PyTorch's
    CPU kernels: below ``_TORCH_BATCH`` elements, or at any batch for matrices of up to
    ``batched_lu._SMALL`` rows, which NumPy solves in one C loop over the batch (no SciPy);
    e.g. n = m = 10 at B = 256: 9 ms against PyTorch's 84 ms on a busy 2-core machine, whose
    thread synchronization per small operation stalls (benchmarks/README.md, small batches);
    in both cases below ``_TORCH_ENTRIES`` KKT entries in all."""
    from cvxlayers.backends.batched_lu import _SMALL

    return ((batch < _TORCH_BATCH or kkt_rows <= _SMALL)
            and batch * kkt_rows * kkt_rows < _TORCH_ENTRIES)


def _engine(batch: int, kkt_entries: int):
    """The array library the layer's QP solves run on: PyTorch for large batches when it is
    installed (imported here, at such a solve, never by ``import cvxlayers``), else NumPy."""
    if numpy_pays(batch, math.isqrt(kkt_entries // max(batch, 1))):
        return _NumpyEngine()
    try:
        import torch
    except ImportError:
        return _NumpyEngine()
    return _TorchEngine(torch)
