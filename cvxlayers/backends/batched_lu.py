"""Batched LU factorization and solves for NumPy, PyTorch (CPU or CUDA) and JAX arrays.

The array API standard has ``linalg.solve`` but no factorization to reuse, and the QP
backend's backward pass reuses the last interior-point factorization. Each library has a
batched LU of its own (SciPy ≥ 1.15, ``torch.linalg.lu_factor``, ``jax.scipy.linalg``);
this module picks the one that matches the arrays, so data never leaves its device.
"""

from __future__ import annotations

from array_api_compat import is_jax_array, is_torch_array


def lu_factor(K):
    """Factors a batch of square matrices ``K`` of shape ``(B, N, N)``."""
    if is_torch_array(K):
        import torch

        return torch.linalg.lu_factor(K)
    if is_jax_array(K):
        import jax

        return jax.vmap(jax.scipy.linalg.lu_factor)(K)
    import scipy.linalg

    return scipy.linalg.lu_factor(K, check_finite=False)


def lu_solve(factors, rhs):
    """Solves ``K u = rhs`` for each batch element; ``rhs`` has shape ``(B, N)``."""
    if is_torch_array(rhs):
        import torch

        return torch.linalg.lu_solve(*factors, rhs[..., None])[..., 0]
    if is_jax_array(rhs):
        import jax

        return jax.vmap(jax.scipy.linalg.lu_solve)(factors, rhs)
    import scipy.linalg

    return scipy.linalg.lu_solve(factors, rhs[..., None], check_finite=False)[..., 0]
