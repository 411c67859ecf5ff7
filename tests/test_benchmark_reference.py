"""The QP benchmark's gradient reference (benchmarks/_qp_reference.py) against finite
differences of Clarabel's solutions: the benchmark's gradient errors rest on it."""

import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
from _qp_reference import active_set_gradient, clarabel_qp  # noqa: E402


def test_active_set_gradient_matches_finite_differences():
    rng = np.random.default_rng(3)
    n, m = 5, 8
    M = rng.standard_normal((n, n))
    Q = M @ M.T + 0.5 * np.eye(n)
    q = rng.standard_normal((1, n))
    G = rng.standard_normal((1, m, n))
    h = G[0] @ rng.standard_normal(n) + rng.uniform(-0.5, 1.0, m)  # some active rows
    h = h[None]
    w = rng.standard_normal((1, n))
    x, lam, _ = clarabel_qp(Q, q, G, h)
    dq, dG, dh, regular = active_set_gradient(Q, q, G, h, x, lam, w)
    assert regular[0]
    active = lam[0] > h[0] - G[0] @ x[0]
    assert 0 < active.sum() < m  # the check covers active and inactive rows

    def loss(q_, G_, h_):
        return float(w[0] @ clarabel_qp(Q, q_, G_, h_)[0][0])

    eps = 1e-5
    for name, value, grad in (("q", q, dq), ("G", G, dG), ("h", h, dh)):
        flat = value.reshape(-1)
        numeric = np.zeros_like(flat)
        for j in range(flat.size):
            args = {"q": q, "G": G, "h": h}
            plus, minus = flat.copy(), flat.copy()
            plus[j] += eps
            minus[j] -= eps
            args[name] = plus.reshape(value.shape)
            f_plus = loss(**{k + "_": v for k, v in args.items()})
            args[name] = minus.reshape(value.shape)
            f_minus = loss(**{k + "_": v for k, v in args.items()})
            numeric[j] = (f_plus - f_minus) / (2 * eps)
        np.testing.assert_allclose(grad.reshape(-1), numeric, atol=1e-5, err_msg=name)
