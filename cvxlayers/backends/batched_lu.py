"""Batched LU factorization and solves, and a definiteness test, for NumPy, PyTorch (CPU
or CUDA) and JAX arrays.

The array API standard has ``linalg.solve`` but no factorization to reuse, and the QP
backend's backward pass reuses the last interior-point factorization. Each library has a
batched LU of its own (SciPy ≥ 1.15, ``torch.linalg.lu_factor``, ``jax.scipy.linalg``);
this module picks the one that matches the arrays, so data never leaves its device.
"""

from __future__ import annotations

import numpy as np
from array_api_compat import is_jax_array, is_torch_array

#: NumPy matrices up to this size are not factored ahead: their "factors" are a copy of the
#: matrix, and each solve is ``numpy.linalg.solve`` (LAPACK's getrf + getrs, the same
#: factorization, in one C loop over the batch). SciPy's batched ``lu_factor``/``lu_solve``
#: loop over the batch in Python, about 40 µs per call plus 5–10 µs per element, where a
#: 32 × 32 factorization costs about 5 µs; from 64 rows the saved refactorizations win.
_SMALL = 32


def lu_factor(K, out=None):
    """Factors a batch of square matrices ``K`` of shape ``(B, N, N)``; PyTorch writes into
    ``out`` = (LU, pivots) when given (see :func:`lu_buffers`)."""
    if not isinstance(K, np.ndarray):  # checked first: the type tests cost µs each
        if is_torch_array(K):
            import torch

            return torch.linalg.lu_factor(K, out=out)
        if is_jax_array(K):
            import jax

            return jax.vmap(jax.scipy.linalg.lu_factor)(K)
    if K.shape[-1] <= _SMALL:
        return (np.array(K, copy=True),)  # a copy: callers may restore K in place after
    if _one_float64(K):  # LAPACK itself: SciPy's batched wrapper costs ~40 µs a call
        from scipy.linalg.lapack import dgetrf

        lu, piv, _ = dgetrf(K[0])  # a singular K gives inf/NaN solves, as lu_factor's do
        return lu[None], piv[None]  # SciPy's batched format: (1, N, N), (1, N)
    return lu_factor_scipy(K)


def _one_float64(a) -> bool:
    return a.ndim >= 2 and a.shape[0] == 1 and a.dtype.char == "d"


def lu_factor_scipy(K):
    """SciPy's batched LU factors (B, N, N) and pivots (B, N) of a NumPy batch."""
    import scipy.linalg

    return scipy.linalg.lu_factor(K, check_finite=False)


def lu_buffers(K):
    """Reusable (LU, pivots) storage for factoring batches shaped like ``K`` (PyTorch only,
    else None). Factoring into memory already in cache is measurably faster than into a
    fresh 16 MB allocation each time (about 1 ms of 8 at B = N = 128). ``prefix(buffers, k)``
    gives the storage for the first k matrices."""
    if not is_torch_array(K):
        return None
    import torch

    batch, size = K.shape[0], K.shape[-1]
    storage = torch.empty((batch, size, size), dtype=K.dtype, device=K.device)
    return storage, torch.empty((batch, size), dtype=torch.int32, device=K.device)


def prefix(buffers, k: int):
    """The first k matrices' (LU, pivots) of :func:`lu_buffers`, as ``lu_factor``'s out."""
    if buffers is None:
        return None
    storage, pivots = buffers
    return storage[:k].mT, pivots[:k]


def lu_solve(factors, rhs):
    """Solves ``K u = rhs`` for each batch element; ``rhs`` has shape ``(B, N)``."""
    if not isinstance(rhs, np.ndarray):
        if is_torch_array(rhs):
            import torch

            return torch.linalg.lu_solve(*factors, rhs[..., None])[..., 0]
        if is_jax_array(rhs):
            import jax

            return jax.vmap(jax.scipy.linalg.lu_solve)(factors, rhs)
    one = _one_float64(factors[0]) and _one_float64(rhs)
    if len(factors) == 1:  # small matrices kept as they are (see _SMALL)
        if one:
            from scipy.linalg.lapack import dgesv

            *_, u, info = dgesv(factors[0][0], rhs[0])
            if info == 0:
                return u[None]
        else:
            try:
                return np.linalg.solve(factors[0], rhs[..., None])[..., 0]
            except np.linalg.LinAlgError:
                pass
        factors = lu_factor_scipy(factors[0])  # an exactly singular one: inf/NaN, as below
    elif one:
        from scipy.linalg.lapack import dgetrs

        return dgetrs(factors[0][0], factors[1][0], rhs[0])[0][None]
    import scipy.linalg

    return scipy.linalg.lu_solve(factors, rhs[..., None], check_finite=False)[..., 0]


def is_positive_definite(P, shift: float) -> bool:
    """Whether every matrix of ``P`` ((N, N) or (B, N, N), symmetric) exceeds ``shift``·I,
    i.e. λ_min > shift: the Cholesky factorization of P − shift·I succeeds."""
    if is_torch_array(P):
        import torch

        shifted = P - shift * torch.eye(P.shape[-1], dtype=P.dtype, device=P.device)
        return bool((torch.linalg.cholesky_ex(shifted).info == 0).all())
    if is_jax_array(P):
        import jax.numpy as jnp

        shifted = P - shift * jnp.eye(P.shape[-1], dtype=P.dtype)
        return bool(jnp.all(jnp.isfinite(jnp.linalg.cholesky(shifted))))
    try:
        np.linalg.cholesky(P - shift * np.eye(P.shape[-1]))
    except np.linalg.LinAlgError:
        return False
    return True
