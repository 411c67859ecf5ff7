"""Active-set polishing of the QP backend's solutions (issue 12: "optimal" means accurate,
and gradients exact where the active set is not degenerate)."""

import numpy as np
import pytest
import torch

from cvxlayers.backends.qp_solver import qp_adjoint, solve_qp
from cvxlayers.torch import qp


def _box(y):
    """Projection of each row of y onto [0, 1]ⁿ: ½‖x‖² − yᵀx s.t. −x ≤ 0, x ≤ 1."""
    B, n = y.shape
    G = np.vstack([-np.eye(n), np.eye(n)])
    h = np.concatenate([np.zeros((B, n)), np.ones((B, n))], axis=1)
    return np.eye(n), -y, np.zeros((0, n)), np.zeros((B, 0)), G, h


def test_near_bound_coordinates_are_exact_in_both_reductions():
    """Coordinates within 1e-6 of a bound are where an interior point at tolerance 1e-9 is
    off by ~√μ (3e-5 before polishing); the polish makes them exact."""
    rng = np.random.default_rng(0)
    y = rng.uniform(-0.5, 1.5, (8, 60))
    y[:, :20] = 1.0 + rng.uniform(-1e-6, 1e-6, (8, 20))
    y[:, 20:40] = rng.uniform(-1e-6, 1e-6, (8, 20))
    for form in ("primal", "dual"):
        solution = solve_qp(*_box(y), kkt_form=form)
        assert set(solution.statuses) == {"optimal"}
        np.testing.assert_allclose(solution.x, np.clip(y, 0, 1), atol=1e-12)
        unpolished = solve_qp(*_box(y), kkt_form=form, polish_solution=False)
        assert np.abs(unpolished.x - np.clip(y, 0, 1)).max() > 1e-9   # the polish matters


def _active_set_gradient(Q, q, G, h, x, lam, w):
    """∂(wᵀx)/∂q from the active set of a tight solution: the equality-constrained QP's
    KKT system [[Q, G_aᵀ], [G_a, 0]]."""
    active = lam > 1e-8
    Ga = G[active]
    n, k = Q.shape[0], Ga.shape[0]
    K = np.block([[Q, Ga.T], [Ga, np.zeros((k, k))]])
    return -np.linalg.solve(K, np.concatenate([w, np.zeros(k)]))[:n]


def test_gradients_are_the_exact_active_set_ones():
    """The paper's dense QP shape: ∇q against the active-set closed form, ≤ 1e-9 (the
    unpolished interior point is off by ~1e-5 there)."""
    rng = np.random.default_rng(1)
    n, m, B = 20, 30, 8
    L = rng.standard_normal((n, n))
    Q = L @ L.T / n + 0.1 * np.eye(n)
    q = rng.standard_normal((B, n))
    G = rng.standard_normal((B, m, n))
    h = np.einsum("bmn,bn->bm", G, rng.standard_normal((B, n))) + rng.uniform(0.1, 1, (B, m))
    w = rng.standard_normal(n)
    args = [torch.tensor(a) for a in (Q, q, G, h)]
    args[1].requires_grad_()
    x = qp(*args)
    (x @ torch.tensor(w)).sum().backward()
    for i in range(B):
        lam = solve_qp(Q, q[i:i + 1], np.zeros((0, n)), np.zeros((1, 0)), G[i],
                       h[i:i + 1]).lam[0]
        exact = _active_set_gradient(Q, q[i], G[i], h[i], x[i].detach().numpy(), lam, w)
        np.testing.assert_allclose(args[1].grad[i].numpy(), exact, atol=1e-9)


def test_degenerate_element_keeps_the_smooth_interior_point_gradient():
    """y exactly on a bound: the constraint is weakly active, the polish still returns the
    exact projection, and the derivative there is the interior point's, strictly between
    the one-sided derivatives 0 and 1 (a smoothed kink), not a jump to either."""
    y = np.array([[1.0, 0.5, -0.3], [0.2, 0.5, 0.7]])
    data = _box(y)
    solution = solve_qp(*data)
    np.testing.assert_allclose(solution.x, np.clip(y, 0, 1), atol=1e-12)
    assert solution.polish is not None
    assert not bool(solution.polish.exact[0]) and bool(solution.polish.exact[1])
    P, q, A, b, G, h = data
    g = np.zeros_like(y)
    g[:, 0] = 1.0
    _, dq, *_ = qp_adjoint(solution, P, A, G, g, np.zeros((2, 0)), np.zeros((2, 6)))
    derivative = -dq[0, 0]          # ∂x₀/∂y₀ (q = −y)
    assert 0.05 < derivative < 0.95
    np.testing.assert_allclose(-dq[1], [1.0, 0.0, 0.0], atol=1e-12)


def test_polish_with_no_active_row_and_no_equality():
    """Every inequality inactive, no equality: the dual polish system would be empty; the
    answer is the unconstrained minimizer x = −P⁻¹q."""
    import torch

    from cvxlayers.torch import qp

    P = torch.eye(3, dtype=torch.float64) * 2.0
    q = torch.tensor([[0.2, -0.4, 0.6]], dtype=torch.float64, requires_grad=True)
    G = torch.eye(3, dtype=torch.float64)[None]
    h = torch.full((1, 3), 10.0, dtype=torch.float64)
    x = qp(P, q, G, h)
    torch.testing.assert_close(x, -q.detach() / 2.0, atol=1e-9, rtol=0)
    (g,) = torch.autograd.grad(x.sum(), [q])
    torch.testing.assert_close(g, torch.full_like(g, -0.5), atol=1e-9, rtol=0)


@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_defaults_stop_early_and_resume_only_what_the_polish_cannot_vouch_for(library):
    """At the defaults the interior point first stops at POLISH_TOL and the polish finishes
    each element; one the polish cannot make exact (here y on a bound: a degenerate active
    set, whose derivative is the interior point's) resumes to the reduction's own tolerance.
    It then ends where an explicitly tight solve ends (same steps, same derivative), while
    the others stop sooner with the same exact solutions and gradients."""
    from cvxlayers.backends.qp_solver import POLISH_TOL

    rng = np.random.default_rng(3)
    y = rng.uniform(-0.5, 1.5, (6, 40))
    y[0, 0] = 1.0
    data = _box(y)
    g_x = rng.standard_normal(y.shape)
    if library == "torch":
        data, g_x = tuple(torch.tensor(a) for a in data), torch.tensor(g_x)
    P, q, A, b, G, h = data
    zeros = np.zeros if library == "numpy" else lambda shape: torch.zeros(shape, dtype=torch.float64)
    for form, own_tol in (("primal", 1e-9), ("dual", 1e-11)):
        assert POLISH_TOL > own_tol
        default = solve_qp(*data, kkt_form=form)
        tight = solve_qp(*data, kkt_form=form, tol=own_tol)
        assert set(default.statuses) == {"optimal"}
        exact = np.asarray(default.polish.exact)
        assert exact.tolist() == np.asarray(tight.polish.exact).tolist() == [False] + [True] * 5
        np.testing.assert_allclose(default.x, np.clip(y, 0, 1), atol=1e-12)
        np.testing.assert_allclose(default.lam, tight.lam, atol=1e-12)
        assert default.steps[0] == tight.steps[0]          # resumed as far as before
        assert (default.steps[1:] < tight.steps[1:]).all()  # the others stopped sooner
        grads = [np.asarray(qp_adjoint(s, P, A, G, g_x, zeros((6, 0)), zeros((6, 80)))[1])
                 for s in (default, tight)]
        np.testing.assert_allclose(grads[0], grads[1], atol=1e-10)
