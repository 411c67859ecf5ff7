"""Small batched-array operations the QP interior-point code is written with.

Every function takes NumPy arrays, PyTorch tensors (CPU or CUDA) or JAX arrays, with a
leading batch axis; a matrix may instead be 2-D, shared by the whole batch.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from array_api_compat import array_namespace, device, is_torch_array


def is_numpy_array(a) -> bool:
    """Whether ``a`` is a NumPy array (array_api_compat's test costs µs per call)."""
    return isinstance(a, np.ndarray)


def namespace(*arrays):
    """The arrays' array-API namespace; for NumPy arrays (NumPy ≥ 2.1, which has every
    function the QP code calls), NumPy itself with its reductions called directly.

    A small QP's solve is a few hundred operations on arrays of a few dozen entries, where
    the Python around each call costs more than the call: array_api_compat's NumPy namespace
    wraps every function (a few µs each), and ``numpy.sum``/``max``/``min``/``any``/``all``
    dispatch through ``_wrapreduction`` to the ufunc reductions that their methods call
    (``add.reduce``, ``maximum.reduce``, ...; the same kernels, 2–3× the time)."""
    if all(type(a) is np.ndarray for a in arrays if a is not None):
        fast = _fast_numpy()
        if fast is not None:
            return fast
    return array_namespace(*arrays)


class _FastNumPy:
    """NumPy's namespace with the reductions as their ufunc reductions (see namespace)."""

    def __init__(self, np):
        self._np = np
        for name, ufunc in (("sum", np.add), ("max", np.maximum), ("min", np.minimum),
                            ("any", np.logical_or), ("all", np.logical_and)):
            setattr(self, name, _reduction(ufunc.reduce))

    def __getattr__(self, name):  # everything else is NumPy's own, looked up once
        value = getattr(self._np, name)
        setattr(self, name, value)
        return value


def _reduction(reduce):
    def reduction(x, /, *, axis=None, keepdims=False):
        return reduce(x, axis=axis, keepdims=keepdims)
    return reduction


@lru_cache(maxsize=1)
def _fast_numpy():
    if np.lib.NumpyVersion(np.__version__) < "2.1.0":
        return None
    return _FastNumPy(np)


def mT(M):
    """The (batched) matrix transpose."""
    return M.mT if hasattr(M, "mT") else array_namespace(M).matrix_transpose(M)


def mv(M, v):
    """Batched matrix-vector product: (B, r, c) or shared (r, c), times (B, c) -> (B, r).
    A shared matrix makes this one matrix-matrix product, which is far cheaper than B
    matrix-vector products that each stream their own matrix from memory."""
    if M.ndim == 2:
        return v @ mT(M)
    return (M @ v[..., None])[..., 0]


def inf_norm(xp, v):
    """max |v| over the last axis (0 for an empty axis)."""
    if v.shape[-1] == 0:
        return xp.zeros(v.shape[:-1], dtype=v.dtype, device=device(v))
    return xp.max(xp.abs(v), axis=-1)


def max_inf_norm(xp, vectors):
    """max over several batched vectors of their ∞-norms, per element."""
    return xp.max(xp.stack([inf_norm(xp, v) for v in vectors]), axis=0)


def max_step(xp, v, dv):
    """Largest α ≤ 1 with v + α dv ≥ 0, per element, for v > 0 (the interior point's s and
    λ): α = min(1, min over dvᵢ < 0 of vᵢ/(−dvᵢ)) = 1 / max(1, maxᵢ(−dvᵢ/vᵢ)), one division
    and no masks."""
    if v.shape[-1] == 0:
        return xp.ones(v.shape[:-1], dtype=v.dtype, device=device(v))
    return 1.0 / xp.maximum(-xp.min(dv / v, axis=-1), 1.0)


def max_pair_step(xp, s, ds, lam, dlam):
    """``min(max_step(s, ds), max_step(lam, dlam))``, with one clamp and one division."""
    if s.shape[-1] == 0:
        return xp.ones(s.shape[:-1], dtype=s.dtype, device=device(s))
    steepest = xp.minimum(xp.min(ds / s, axis=-1), xp.min(dlam / lam, axis=-1))
    return 1.0 / xp.maximum(-steepest, 1.0)


def add_diagonal(M, d):
    """A new batch of matrices M + diag(d): M is (B, N, N) or shared (N, N), d is (B, N).

    On NumPy and PyTorch the diagonal is written in place into one copy of M, which is a
    single pass over memory; ``M + eye·d`` would be three."""
    xp = array_namespace(M, d)
    batch, size = d.shape
    if is_torch_array(M):
        out = M.expand(batch, size, size).clone()
    elif is_numpy_array(M):
        out = np.array(np.broadcast_to(M, (batch, size, size)), order="C")
    else:
        return M + xp.eye(size, dtype=d.dtype, device=device(d)) * d[:, None, :]
    diagonal(out)[...] += d
    return out


def diagonal(M):
    """The diagonals of a batch of matrices (B, N, N) -> (B, N) (or of one, (N, N) -> (N,)):
    a writable view on NumPy (C-contiguous batches) and PyTorch."""
    numpy = is_numpy_array(M)
    if not numpy and is_torch_array(M):
        return M.diagonal(dim1=-2, dim2=-1)
    if numpy and M.flags.c_contiguous:
        size = M.shape[-1]
        return M.reshape(M.shape[:-2] + (size * size,))[..., ::size + 1]
    return array_namespace(M).linalg.diagonal(M)


def writable_diagonal(M) -> bool:
    """Whether :func:`diagonal` of M is a view that can be written in place."""
    if is_numpy_array(M):
        return M.flags.c_contiguous and M.flags.writeable
    return is_torch_array(M)
