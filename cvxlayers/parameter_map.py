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
        cone_dict: the cone K in SCS/diffcp form (keys ``z``, ``l``, ``q``, ``s``, ``ep``).
    """

    n: int
    m: int
    a_indices: np.ndarray
    a_indptr: np.ndarray
    cone_dict: dict

    @property
    def nnz(self) -> int:
        return int(self.a_indices.size)

    @property
    def size(self) -> int:
        return self.nnz + self.m + self.n

    def split(self, row: np.ndarray):
        """Splits one data row into (A values, b, c)."""
        nnz, m = self.nnz, self.m
        return row[:nnz], row[nnz:nnz + m], row[nnz + m:]

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
    """

    matrix: sp.csr_matrix
    matrix_t: sp.csr_matrix
    offset: np.ndarray
    raw_slices: tuple
    log_slices: tuple
    dense: np.ndarray | None = None

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
        if self.dense is not None:
            return phi @ self.dense.T + self.offset
        data = (self.matrix @ phi.T).T
        data += self.offset
        return np.ascontiguousarray(data)

    def adjoint(self, d_data: np.ndarray) -> np.ndarray:
        """dΦ = dD M; shape ``(B, n_features)``."""
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


def build_parameter_map(a_tensor, q_tensor, n: int, m: int, lowering: sp.spmatrix,
                        raw_slices, log_slices, cone_dict: dict):
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

    Returns:
        ``(ParameterMap, ConeDataLayout)``. SCS's form is ``A = -A_cvx``, ``b = b_cvx``.
    """
    a_tensor = sp.csr_matrix(a_tensor)
    a_tensor.eliminate_zeros()
    q_tensor = sp.csr_matrix(q_tensor)
    n_theta = a_tensor.shape[1] - 1
    # Structural nonzeros of A: any row of the tensor that is not identically zero. Rows are
    # ordered j*m + i, i.e. already in CSC order (column j, then row i).
    row_nnz = np.diff(a_tensor.indptr)
    a_rows = np.nonzero(row_nnz[:m * n])[0]
    cols = a_rows // m
    a_indices = (a_rows % m).astype(np.int32)
    a_indptr = np.concatenate([[0], np.cumsum(np.bincount(cols, minlength=n))]).astype(np.int32)
    stacked = sp.vstack([
        -a_tensor[a_rows],
        a_tensor[m * n:m * n + m],
        q_tensor[:n],
    ]).tocsr()
    matrix = (stacked[:, :n_theta] @ lowering).tocsr()
    matrix.eliminate_zeros()
    offset = np.asarray(stacked[:, n_theta].todense()).ravel()
    layout = ConeDataLayout(n=n, m=m, a_indices=a_indices, a_indptr=a_indptr, cone_dict=cone_dict)
    small = matrix.shape[0] * matrix.shape[1] <= _DENSE_ENTRIES
    pmap = ParameterMap(matrix=matrix, matrix_t=matrix.T.tocsr(), offset=offset,
                        raw_slices=tuple(raw_slices), log_slices=tuple(log_slices),
                        dense=matrix.toarray() if small else None)
    return pmap, layout
