"""The affine map from a batch of parameters to a batch of cone-program data, and its adjoint.

For one batch element with parameters θ, CVXPY's DPP canonicalization gives cone-program
data that is affine in a *feature vector* φ(θ):

    φ(θ) = [ vec(θ_1); …; vec(θ_k); log vec(θ_j) for each θ_j that DGP uses in log form ]
    d    = M φ + d₀,   d = [ nonzeros of A (CSC order); b; c ]

for the cone program  minimize cᵀx  subject to  Ax + s = b,  s ∈ K  (SCS's convention).
``vec`` is column-major (CVXPY's convention). The lowering CVXPY applies to structured
parameters (the upper triangle of a symmetric one, the diagonal of a diagonal one) is
folded into M at compile time, so each call is one sparse product for the whole batch:

    D = Φ Mᵀ + 1 d₀ᵀ,   Φ ∈ R^{B × p},  D ∈ R^{B × (nnz(A) + m + n)}.

The adjoint is dΦ = dD M, and dθ = dφ_raw + dφ_log / θ for the log features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.sparse as sp

# Up to this many entries, M is also kept dense: 64k doubles (512 KiB) multiply faster
# densely than through SciPy's sparse machinery, whose per-call overhead dominates there.
_DENSE_ENTRIES = 65_536


@dataclass(frozen=True)
class ConeDataLayout:
    """Where A, b and c sit in a data row ``d``, and the fixed sparsity of A.

    Attributes:
        n: number of cone-program variables (columns of A).
        m: number of cone-program constraint rows (rows of A).
        a_indices, a_indptr: the CSC structure of A, the same for every parameter value
            (entries that vanish for some values are kept as explicit zeros so that
            gradients with respect to them are not lost).
        cone_dict: the cone K in SCS/diffcp form (keys ``z``, ``l``, ``q``, ``s``, ``ep``,
            and ``p``, the power cones' α, only when there are power cones).
        p_indices, p_indptr: the CSC structure of P for a quadratic objective ½xᵀPx (the
            full symmetric matrix, as CVXPY stores it), or ``None`` for a linear one.
        a_parametrized, p_parametrized: whether A's (P's) values depend on the parameters;
            when not, the same in every batch element and their gradients are not needed.
        a_constant: per structural entry of A (data order), its value where it is the
            same for every parameter value, NaN where it depends on the parameters (the QP
            presolve pivots only on constant entries); ``None`` when not computed.
    """

    n: int
    m: int
    a_indices: np.ndarray
    a_indptr: np.ndarray
    cone_dict: dict
    p_indices: np.ndarray | None = None
    p_indptr: np.ndarray | None = None
    a_parametrized: bool = True
    p_parametrized: bool = True
    a_constant: np.ndarray | None = None

    @property
    def nnz(self) -> int:
        return int(self.a_indices.size)

    @property
    def p_nnz(self) -> int:
        return 0 if self.p_indices is None else int(self.p_indices.size)

    @property
    def size(self) -> int:
        return self.nnz + self.m + self.n + self.p_nnz

    def entries(self, which: str):
        """(rows, cols) of A's or P's structural entries, in their data order. Computed once
        per layout (the QP backend asks on every call, where tens of µs count at B = 1);
        the arrays are shared, read-only."""
        cache = self.__dict__.get("_entries")
        if cache is None:
            cache = {}
            object.__setattr__(self, "_entries", cache)  # frozen: a private memo only
        found = cache.get(which)
        if found is None:
            indices, indptr = ((self.a_indices, self.a_indptr) if which == "A"
                               else (self.p_indices, self.p_indptr))
            found = (indices.astype(np.int64), np.repeat(np.arange(self.n), np.diff(indptr)))
            for array in found:
                array.setflags(write=False)
            cache[which] = found
        return found

    def split(self, row: np.ndarray):
        """Splits one data row (or a batch of rows) into (A values, b, c[, P values])."""
        nnz, m, n = self.nnz, self.m, self.n
        parts = (row[..., :nnz], row[..., nnz:nnz + m], row[..., nnz + m:nnz + m + n])
        if self.p_indices is None:
            return parts
        return parts + (row[..., nnz + m + n:],)

    def matrix(self, values: np.ndarray) -> sp.csc_matrix:
        """A as a fresh CSC matrix (its own index arrays: solvers may prune them in place)."""
        return sp.csc_matrix((values, self.a_indices.copy(), self.a_indptr.copy()),
                             shape=(self.m, self.n))


@dataclass(frozen=True)
class ParameterMap:
    """The map θ ↦ D of the module docstring, and its adjoint.

    Attributes:
        matrix: M as CSR, shape ``(data size, n_features)``.
        matrix_t: Mᵀ as CSR, for the adjoint.
        offset: d₀, shape ``(data size,)``.
        raw_slices: for each parameter, its columns of φ (its ``vec``).
        log_slices: for each parameter, its log-feature columns of φ, or ``None``.
        dense: M as a dense array when it is small (a dense product beats a sparse one
            there), else ``None``.
        selection: when every data entry depends on at most one feature and every feature
            enters at most one entry — parameters used as they are, the common case —
            (feature of each entry, its coefficient, entry of each feature, its
            coefficient, features that enter no entry), with index 0 and coefficient 0
            where there is none; both products are then gathers. Else ``None``.
    """

    matrix: sp.csr_matrix
    matrix_t: sp.csr_matrix
    offset: np.ndarray
    raw_slices: tuple
    log_slices: tuple
    dense: np.ndarray | None = None
    selection: tuple | None = None

    @property
    def n_features(self) -> int:
        return self.matrix.shape[1]

    def features(self, values: Sequence[np.ndarray], batched: Sequence[bool], size: int) -> np.ndarray:
        """Stacks validated parameter values into Φ, broadcasting unbatched ones.

        Args:
            values: per parameter, shape ``(B, *shape)`` if batched else ``shape``.
            batched: which values carry the batch dimension.
            size: the batch size B.

        Returns:
            Φ of shape ``(B, n_features)``.
        """
        phi = np.empty((size, self.n_features))
        for value, is_batched, raw, log in zip(values, batched, self.raw_slices, self.log_slices):
            flat = _vec(value, is_batched)
            phi[:, raw] = flat
            if log is not None:
                phi[:, log] = np.log(flat)
        return phi

    def forward(self, phi: np.ndarray) -> np.ndarray:
        """D = Φ Mᵀ + d₀ (one sparse product for the whole batch); shape ``(B, data size)``."""
        if self.selection is not None:  # first: a gather beats even a small BLAS product
            feature, coefficient, _, _, _ = self.selection
            data = np.take(phi, feature, axis=1)   # constant entries: coefficient 0
            data *= coefficient
            data += self.offset
            return data
        if self.dense is not None:
            return phi @ self.dense.T + self.offset
        data = (self.matrix @ phi.T).T
        data += self.offset
        return np.ascontiguousarray(data)

    def adjoint(self, d_data: np.ndarray) -> np.ndarray:
        """dΦ = dD M; shape ``(B, n_features)``."""
        if self.selection is not None:
            _, _, entry, coefficient, unused = self.selection
            d_phi = np.take(d_data, entry, axis=1)
            d_phi *= coefficient
            d_phi[:, unused] = 0.0   # not 0·(whatever entry 0 holds)
            return d_phi
        if self.dense is not None:
            return d_data @ self.dense
        return np.asarray((self.matrix_t @ d_data.T).T)

    def feature_adjoint(self, d_phi: np.ndarray, values: Sequence[np.ndarray],
                        batched: Sequence[bool]) -> list:
        """Adjoint of :meth:`features`: per-parameter gradients, shaped like the values.

        Gradients of unbatched parameters are summed over the batch.
        """
        grads = []
        for value, is_batched, raw, log in zip(values, batched, self.raw_slices, self.log_slices):
            flat = d_phi[:, raw]
            if log is not None:
                flat = flat + d_phi[:, log] / _vec(value, is_batched)
            if not is_batched:
                flat = flat.sum(axis=0, keepdims=True)
            grads.append(_unvec(flat, value.shape, is_batched))
        return grads


def _vec(value: np.ndarray, batched: bool) -> np.ndarray:
    """Column-major vectorization of each batch element: ``(B, size)`` or ``(1, size)``."""
    if not batched:
        return value.reshape(1, -1, order="F")
    batch = value.shape[0]
    order = (0,) + tuple(range(value.ndim - 1, 0, -1))
    return np.transpose(value, order).reshape(batch, -1)


def _unvec(flat: np.ndarray, shape: tuple, batched: bool) -> np.ndarray:
    """Inverse of :func:`_vec`."""
    if not batched:
        return flat.reshape(shape, order="F")
    element_shape = shape[1:]
    reversed_shape = (shape[0],) + tuple(reversed(element_shape))
    order = (0,) + tuple(range(len(element_shape), 0, -1))
    return np.transpose(flat.reshape(reversed_shape), order)


def _selection(matrix: sp.csr_matrix):
    """If every row and every column of ``matrix`` holds at most one nonzero: (feature of
    each row, its coefficient, row of each feature, its coefficient, the features in no
    row), with index 0 and coefficient 0 where there is none (parameter values are finite,
    so 0·φ is 0). Else None."""
    per_row = np.diff(matrix.indptr)
    if per_row.max(initial=0) > 1 or np.bincount(matrix.indices,
                                                 minlength=matrix.shape[1]).max(initial=0) > 1:
        return None
    feature = np.zeros(matrix.shape[0], dtype=np.int64)
    coefficient = np.zeros(matrix.shape[0])
    rows = np.nonzero(per_row)[0]
    feature[rows] = matrix.indices[matrix.indptr[rows]]
    coefficient[rows] = matrix.data[matrix.indptr[rows]]
    entry = np.zeros(matrix.shape[1], dtype=np.int64)
    entry_coefficient = np.zeros(matrix.shape[1])
    entry[feature[rows]] = rows
    entry_coefficient[feature[rows]] = coefficient[rows]
    unused = np.setdiff1d(np.arange(matrix.shape[1]), feature[rows])
    return feature, coefficient, entry, entry_coefficient, unused


def _structure(tensor: sp.csr_matrix, n_rows: int, n_cols: int):
    """The structural nonzeros of a matrix given as a parametrized tensor whose row
    ``j*n_rows + i`` holds entry (i, j): the tensor's rows in CSC order, indices, indptr."""
    rows = np.nonzero(np.diff(tensor.indptr)[:n_rows * n_cols])[0]
    indices = (rows % n_rows).astype(np.int32)
    indptr = np.concatenate(
        [[0], np.cumsum(np.bincount(rows // n_rows, minlength=n_cols))]).astype(np.int32)
    return rows, indices, indptr


def _symmetrized(p_tensor: sp.csr_matrix, n: int) -> sp.csr_matrix:
    """The tensor of ½(P + Pᵀ) from that of P (row ``j*n + i`` holds P_ij).

    ½xᵀPx depends only on P's symmetric part, and every backend reads P as symmetric (the
    QP solver's Px, SCS's and Clarabel's upper triangle). CVXPY's P is symmetric already,
    except where a ``cp.psd_wrap`` (or ``assume_PSD=True``) takes a parameter that is not
    declared symmetric: the layer then uses ½(θ + θᵀ), and its gradient is symmetric.
    Exact for a symmetric P: ½(a + a) = a in floating point."""
    col, row = np.divmod(np.arange(n * n), n)   # tensor row k holds entry (k % n, k // n)
    transpose = sp.csr_matrix((np.ones(n * n), (np.arange(n * n), row * n + col)),
                              shape=(n * n, n * n))
    p_tensor = p_tensor[:n * n]
    return ((p_tensor + transpose @ p_tensor) * 0.5).tocsr()


def build_parameter_map(a_tensor, q_tensor, n: int, m: int, lowering: sp.spmatrix,
                        raw_slices, log_slices, cone_dict: dict, p_tensor=None):
    """Assembles M and d₀ from CVXPY's parametrized cone program.

    Args:
        a_tensor: CVXPY's ``ParamConeProg.A``: row ``j*m + i`` holds entry (i, j) of
            ``[A_cvx | b_cvx]`` as a linear function of ``[θ_cvx; 1]``, where CVXPY's
            constraint is ``A_cvx x + b_cvx ∈ K``.
        q_tensor: ``ParamConeProg.q``: rows ``0..n-1`` hold c, row ``n`` the objective offset.
        n, m: cone-program dimensions.
        lowering: the linear map L from φ to CVXPY's own parameter vector θ_cvx.
        raw_slices, log_slices: the layout of φ.
        cone_dict: the cone in diffcp form.
        p_tensor: ``ParamConeProg.P`` for a quadratic objective (row ``j*n + i`` holds
            P_ij), or ``None``; it is symmetrized (:func:`_symmetrized`).

    Returns:
        ``(ParameterMap, ConeDataLayout)``. SCS's form is ``A = -A_cvx``, ``b = b_cvx``.
    """
    a_tensor = sp.csr_matrix(a_tensor)
    a_tensor.eliminate_zeros()
    q_tensor = sp.csr_matrix(q_tensor)
    n_theta = a_tensor.shape[1] - 1
    # Structural nonzeros of A: any row of the tensor that is not identically zero. Rows are
    # ordered j*m + i, i.e. already in CSC order (column j, then row i).
    a_rows, a_indices, a_indptr = _structure(a_tensor, m, n)
    blocks = [-a_tensor[a_rows], a_tensor[m * n:m * n + m], q_tensor[:n]]
    p_indices = p_indptr = None
    if p_tensor is not None:
        p_tensor = _symmetrized(sp.csr_matrix(p_tensor), n)
        p_tensor.eliminate_zeros()
        p_rows, p_indices, p_indptr = _structure(p_tensor, n, n)
        blocks.append(p_tensor[p_rows])
    stacked = sp.vstack(blocks).tocsr()
    matrix = (stacked[:, :n_theta] @ lowering).tocsr()
    matrix.eliminate_zeros()
    offset = np.asarray(stacked[:, n_theta].todense()).ravel()
    per_row = np.diff(matrix.indptr)
    n_a = a_indices.size
    p_start = n_a + m + n
    layout = ConeDataLayout(n=n, m=m, a_indices=a_indices, a_indptr=a_indptr, cone_dict=cone_dict,
                            p_indices=p_indices, p_indptr=p_indptr,
                            a_parametrized=bool(per_row[:n_a].any()),
                            p_parametrized=bool(per_row[p_start:].any()),
                            a_constant=np.where(per_row[:n_a] == 0, offset[:n_a], np.nan))
    small = matrix.shape[0] * matrix.shape[1] <= _DENSE_ENTRIES
    pmap = ParameterMap(matrix=matrix, matrix_t=matrix.T.tocsr(), offset=offset,
                        # Gathers whenever they apply, whatever the size: a small dense
                        # product still costs 10-100x more (B = 64: 0.1 ms unloaded, 11 ms
                        # when BLAS's threads contend on a busy machine).
                        selection=_selection(matrix),
                        raw_slices=tuple(raw_slices), log_slices=tuple(log_slices),
                        dense=matrix.toarray() if small else None)
    return pmap, layout
