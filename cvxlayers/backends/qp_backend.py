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

import numpy as np

from cvxlayers import status as st
from cvxlayers.backends.base import Backend, BatchSolution

#: solver_args this backend accepts, with their defaults.
#: tol None: the reduction's own (1e-11 dual, 1e-9 primal; see qp_solver.solve_qp).
#: kkt_form: "auto", "primal" or "dual" (the Newton step's reduction; see qp_solver).
QP_OPTIONS = {"tol": None, "max_iter": 50, "kkt_form": "auto"}


class QPBackend(Backend):
    """Mehrotra predictor-corrector interior point, batched (OptNet's method)."""

    name = "QP"
    supported_cones = frozenset({"z", "l"})
    quad_obj = True
    accepts_quad_obj = True
    runs_on_device = True
    option_aliases = {"eps": ("tol",), "max_iters": ("max_iter",)}
    # cvxpylayers' keys that mean nothing here: nothing is printed; no warm start yet.
    ignored_options = frozenset({"verbose", "warm_start"})

    def _options(self, options: dict) -> dict:
        options = {k: v for k, v in options.items() if k not in ("mode", "derivative_kwargs")}
        unknown = sorted(set(options) - set(QP_OPTIONS))
        if unknown:
            raise ValueError(f"solver_args {unknown} are not options of the QP solver; it "
                             f"accepts {sorted(QP_OPTIONS)}.")
        return {**QP_OPTIONS, **options}

    @staticmethod
    def unpack(layout, data: np.ndarray):
        """Dense batched (P, q, A, b, G, h) from data rows."""
        from cvxlayers.backends.qp_solver import split_constraints

        a_values, b_scs, c, p_values = layout.split(data)
        A_scs = _dense(a_values, layout.entries("A"), (layout.m, layout.n))
        P = _dense(p_values, layout.entries("P"), (layout.n, layout.n))
        A, b, G, h = split_constraints(A_scs, b_scs, layout.cone_dict.get("z", 0))
        return P, np.ascontiguousarray(c), A, b, G, h

    def solve(self, layout, data, need_derivative, options, n_jobs):
        from cvxlayers.backends.qp_solver import solve_qp

        options = self._options(options)
        # The larger of the two reductions' matrices: n + p (primal) or m + p (dual) rows.
        n_eq = layout.cone_dict.get("z", 0)
        n_kkt = max(layout.n, layout.m - n_eq) + n_eq
        engine = _engine(data.shape[0], data.shape[0] * n_kkt * n_kkt)
        P, q, A, b, G, h = (engine.asarray(a) for a in self.unpack(layout, data))
        # Failed elements may overflow; they are reported.
        with np.errstate(all="ignore"):
            solution = solve_qp(P, q, A, b, G, h, keep_factorization=need_derivative,
                                **options)
        x = engine.to_numpy(solution.x).copy()
        y = np.concatenate([engine.to_numpy(solution.nu), engine.to_numpy(solution.lam)],
                           axis=1)
        messages = {}
        for i, status in enumerate(solution.statuses):
            if status not in st.USABLE:
                x[i], y[i] = np.nan, np.nan
                messages[i] = f"interior point: {status} after {solution.iterations} iterations"
        context = (solution, P, A, G, engine) if need_derivative else None
        return BatchSolution(x, y, solution.statuses, messages, context=context)

    def adjoint(self, layout, solution, dx, dy, usable, n_jobs):
        """Data-row gradients from the adjoint directions w = J⁻ᵀ g: in SCS form, with
        y = [ν; λ] and w_y = [w_ν; λ∘w_λ], ∇A_scs = −(y w_xᵀ + w_y xᵀ), ∇b_scs = w_y,
        ∇c = −w_x, ∇P = −½(w_x xᵀ + x w_xᵀ), each formed at the structural entries only
        (never as dense batched matrices)."""
        from cvxlayers.backends.qp_solver import adjoint_directions

        qp_solution, P, A, G, engine = solution.context
        p = A.shape[-2]  # A may be shared by the batch (2-D)
        keep = usable[:, None]
        g_x = engine.asarray(np.where(keep, dx, 0.0))
        g_y = engine.asarray(np.where(keep, dy, 0.0))
        with np.errstate(all="ignore"):
            w_x, w_nu, lam_w = (engine.to_numpy(v) for v in adjoint_directions(
                qp_solution, P, A, G, g_x, g_y[:, :p], g_y[:, p:]))
        x = engine.to_numpy(qp_solution.x)
        y = np.concatenate([engine.to_numpy(qp_solution.nu), engine.to_numpy(qp_solution.lam)],
                           axis=1)
        w_y = np.concatenate([w_nu, lam_w], axis=1)
        # One row per element, written block by block: [∇A_scs, ∇b_scs, ∇c, ∇P] (layout order).
        d_data = np.zeros((x.shape[0], layout.size))
        n_a, n_b = layout.nnz, layout.m
        d_data[:, n_a:n_a + n_b] = w_y
        np.negative(w_x, out=d_data[:, n_a + n_b:n_a + n_b + layout.n])
        # Constant A or P: the parameter map ignores their gradient, which stays 0.
        if layout.a_parametrized:
            _outer_entries([(y, w_x), (w_y, x)], layout.entries("A"), -1.0,
                           d_data[:, :n_a])
        if layout.p_parametrized:
            _outer_entries([(w_x, x), (x, w_x)], layout.entries("P"), -0.5,
                           d_data[:, n_a + n_b + layout.n:])
        d_data[~usable] = 0.0
        return d_data


def _outer_entries(pairs, entries, scale: float, out) -> None:
    """Writes scale · Σ u vᵀ over ``pairs`` of batched vectors (u: rows, v: columns), at
    the structural ``entries`` (rows, cols) in their data (column-major) order, into ``out``
    of shape (B, nnz).

    A mostly full matrix is formed densely in column-major order, where a full one's data
    order is its memory order: it is then written straight into ``out``, no gather; a sparse
    one gathers only its entries."""
    rows, cols = entries
    (u, v), batch = pairs[0], pairs[0][0].shape[0]
    n_rows, n_cols = u.shape[1], v.shape[1]
    if 2 * rows.size < n_rows * n_cols:
        out[...] = sum(np.take(u, rows, axis=1) * np.take(v, cols, axis=1) for u, v in pairs)
    elif rows.size == n_rows * n_cols:  # every entry, sorted by column then row
        dense = out.view()
        dense.shape = (batch, n_cols, n_rows)  # raises rather than copy: rows of out are contiguous
        (u1, v1), *rest = pairs
        np.multiply(v1[:, :, None], u1[:, None, :], out=dense)
        for u_k, v_k in rest:
            dense += v_k[:, :, None] * u_k[:, None, :]
    else:
        dense = sum(v[:, :, None] * u[:, None, :] for u, v in pairs).reshape(batch, -1)
        out[...] = np.take(dense, cols * n_rows + rows, axis=1)
    out *= scale


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
        dense[:, rows, cols] = values
    return dense[0] if shared else dense


class _NumpyEngine:
    asarray = staticmethod(np.asarray)
    to_numpy = staticmethod(np.asarray)


class _TorchEngine:
    """PyTorch's CPU kernels for the same array-API code: its batched LU and products are
    several times faster than NumPy's and SciPy's (which loops over the batch in Python)."""

    def __init__(self, torch):
        self.torch = torch

    def asarray(self, array):
        return self.torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64))

    @staticmethod
    def to_numpy(tensor):
        return tensor.numpy()


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
