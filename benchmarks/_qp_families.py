"""The badly scaled QP families of issue 12, shared by tests/test_qp_scaling.py and
benchmarks/qp_scaling.py (NumPy only, so that the benchmark also runs on a checkout from
before equilibration with this file copied in)."""

import numpy as np

FAMILIES = {"fails": dict(span=1.5, q_size=1e4, G_size=1e-2),
            "inaccurate": dict(span=2.0, q_size=1e4, G_size=80.0)}


def skewed_qps(seed, span, q_size, G_size, batch=16, n=20, m=30, p=5, shared_P=False):
    """P = q_size·D P₀ D, q = q_size·D q₀, G = G_size·E_G G₀ D, h = G_size·E_G h₀, A and b
    likewise, with D, E_A, E_G diagonal with entries 10^U(−span, span); P₀ = LLᵀ/n + 0.1I
    and h₀ = G₀x₀ + U(0.01, 1) keep each QP strictly convex and strictly feasible.
    ``shared_P``: one P (and D) for the whole batch."""
    rng = np.random.default_rng(seed)
    shape = (1,) if shared_P else (batch,)
    L = rng.standard_normal(shape + (n, n))
    P0 = L @ L.transpose(0, 2, 1) / n + 0.1 * np.eye(n)
    q0 = rng.standard_normal((batch, n))
    G0, A0 = rng.standard_normal((batch, m, n)), rng.standard_normal((batch, p, n))
    x0 = rng.standard_normal((batch, n))
    h0 = np.einsum("bmn,bn->bm", G0, x0) + rng.uniform(0.01, 1.0, (batch, m))
    b0 = np.einsum("bmn,bn->bm", A0, x0)
    d = 10 ** rng.uniform(-span, span, shape + (n,))
    e_G, e_A = 10 ** rng.uniform(-span, span, (batch, m)), 10 ** rng.uniform(-span, span, (batch, p))
    P = q_size * d[:, :, None] * P0 * d[:, None, :]
    G, A = (G_size * e[:, :, None] * M * d[:, None, :] for e, M in ((e_G, G0), (e_A, A0)))
    return (P[0] if shared_P else P, q_size * d * q0, A, G_size * e_A * b0, G, G_size * e_G * h0)
