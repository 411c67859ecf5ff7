"""Batched LU factorization and solves, and a definiteness test, for NumPy, PyTorch (CPU
or CUDA) and JAX arrays.

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
    import numpy as np

    try:
        np.linalg.cholesky(P - shift * np.eye(P.shape[-1]))
    except np.linalg.LinAlgError:
        return False
    return True
