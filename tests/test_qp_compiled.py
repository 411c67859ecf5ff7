"""The compiled (Numba) path for small dense QPs (cvxlayers.backends.qp_small): solutions
against Clarabel through CVXPY, against the general method, gradients against finite
differences in float64, and the hand-over to the general method wherever an element cannot
vouch for itself (infeasible, degenerate active set, badly scaled)."""

import cvxpy as cp
import numpy as np
import pytest
import torch

from cvxlayers import status as st
from cvxlayers.backends import qp_small
from cvxlayers.backends.qp_solver import solve_qp
from cvxlayers.torch import CvxpyLayer, qp

pytestmark = pytest.mark.skipif(not qp_small.available(), reason="numba not installed")


@pytest.fixture(scope="module", autouse=True)
def compiled():
    assert qp_small.prepare(wait=True)


def _problem(rng, n, m, p, batch):
    L = rng.standard_normal((n, n))
    P = L @ L.T / n + 0.1 * np.eye(n)
    x0 = rng.standard_normal((batch, n))
    G = rng.standard_normal((batch, m, n))
    h = np.einsum("bmn,bn->bm", G, x0) + rng.uniform(0.1, 1.0, (batch, m))
    A = rng.standard_normal((batch, p, n))
    b = np.einsum("bpn,bn->bp", A, x0)
    return P, rng.standard_normal((batch, n)), A, b, G, h


def _clarabel(P, q, A, b, G, h):
    xs = []
    for i in range(q.shape[0]):
        x = cp.Variable(q.shape[1])
        cons = [G[i] @ x <= h[i]] + ([A[i] @ x == b[i]] if A.shape[-2] else [])
        cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, cp.psd_wrap(P)) + q[i] @ x), cons).solve(
            solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
        xs.append(x.value)
    return np.array(xs)


@pytest.mark.parametrize("p", [0, 3])
def test_solutions_match_clarabel_and_the_general_method(p):
    rng = np.random.default_rng(p)
    P, q, A, b, G, h = _problem(rng, 8, 12, p, 6)
    solution = solve_qp(P, q, A, b, G, h)
    assert solution.kkt_form == "small"
    assert solution.statuses == [st.OPTIMAL] * 6
    np.testing.assert_allclose(solution.x, _clarabel(P, q, A, b, G, h), atol=1e-7)
    general = solve_qp(P, q, A, b, G, h, kkt_form="primal")  # an explicit form: general
    assert general.kkt_form == "primal"
    for mine, theirs in zip((solution.x, solution.nu, solution.lam, solution.s),
                            (general.x, general.nu, general.lam, general.s)):
        np.testing.assert_allclose(mine, theirs, atol=1e-9)
    # The solution is the polished one: complementary exactly.
    assert np.all(np.minimum(solution.lam, solution.s) == 0)
    assert np.all(solution.steps > 0) and solution.element_iterations == solution.steps.sum()


def test_gradients_match_finite_differences():
    rng = np.random.default_rng(3)
    P, q, A, b, G, h = _problem(rng, 5, 7, 2, 3)
    inputs = [torch.tensor(v, requires_grad=True) for v in (P[None].repeat(3, 0), q, G, h, A, b)]

    def f(Q, q, G, h, A, b):
        return qp(0.5 * (Q + Q.mT), q, G, h, A, b)

    calls = []
    original = qp_small.solve
    try:
        qp_small.solve = lambda *a, **k: calls.append(1) or original(*a, **k)
        assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)
    finally:
        qp_small.solve = original
    assert calls  # the compiled path served the solves


def test_gradients_equal_the_general_methods():
    rng = np.random.default_rng(4)
    P, q, A, b, G, h = _problem(rng, 10, 10, 0, 16)
    w = torch.tensor(rng.standard_normal((16, 10)))
    grads = []
    for enabled in (True, False):
        qp_small.ENABLED = enabled
        try:
            inputs = [torch.tensor(v, requires_grad=True) for v in (q, G, h)]
            (qp(torch.tensor(P), *inputs) * w).sum().backward()
            grads.append([t.grad for t in inputs])
        finally:
            qp_small.ENABLED = True
    for mine, general in zip(*grads):
        torch.testing.assert_close(mine, general, atol=1e-8, rtol=1e-7)


def test_an_infeasible_element_hands_the_batch_to_the_general_method():
    rng = np.random.default_rng(5)
    P, q, A, b, G, h = _problem(rng, 4, 6, 0, 3)
    G[1, :2] = [np.eye(4)[0], -np.eye(4)[0]]  # x₀ ≤ -1 and -x₀ ≤ -1: infeasible
    h[1, :2] = -1.0
    solution = solve_qp(P, q, A, b, G, h)
    assert solution.kkt_form != "small"
    assert solution.statuses == [st.OPTIMAL, st.INFEASIBLE, st.OPTIMAL]
    good = [0, 2]
    np.testing.assert_allclose(solution.x[good], _clarabel(P, q[good], A[good], b[good],
                                                           G[good], h[good]), atol=1e-7)


def test_a_degenerate_active_set_takes_the_general_methods_smooth_derivative():
    # minimize ½‖x‖² − x₀ s.t. x₀ ≤ 1: the constraint is active with λ = 0 (weakly active).
    P, q = np.eye(2), np.array([[-1.0, 0.0]])
    G, h = np.array([[[1.0, 0.0], [0.0, 1.0]]]), np.array([[1.0, 5.0]])
    A, b = np.zeros((1, 0, 2)), np.zeros((1, 0))
    assert qp_small.solve(P, q, A, b, G, h) is None  # it does not vouch for itself
    solution = solve_qp(P, q, A, b, G, h)
    assert solution.kkt_form != "small" and solution.statuses == [st.OPTIMAL]
    np.testing.assert_allclose(solution.x, [[1.0, 0.0]], atol=1e-8)


def test_badly_scaled_data_is_still_accurate():
    rng = np.random.default_rng(6)
    P, q, A, b, G, h = _problem(rng, 6, 8, 0, 4)
    q, G, h = 1e4 * q, 80 * G, 80 * 65 * h
    solution = solve_qp(P, q, A, b, G, h)
    assert solution.statuses == [st.OPTIMAL] * 4
    reference = _clarabel(P, q, A, b, G, h)
    np.testing.assert_allclose(solution.x, reference, atol=1e-6 * (1 + np.abs(reference).max()))


def test_where_the_compiled_path_does_not_apply():
    rng = np.random.default_rng(7)
    P, q, A, b, G, h = _problem(rng, 4, 5, 0, 2)
    assert qp_small.applies(P, q, A, G, None, True, "auto")
    assert not qp_small.applies(P, q, A, G, None, False, "auto")          # no polish
    assert not qp_small.applies(P, q, A, G, None, True, "dual")           # a chosen form
    assert not qp_small.applies(P, q, A, G, (q,), True, "auto")           # a warm start
    assert not qp_small.applies(P, q, A, G[:, :0], None, True, "auto")    # no inequalities
    assert not qp_small.applies(torch.tensor(P), q, A, G, None, True, "auto")
    big = np.zeros((2, 70))
    assert not qp_small.applies(P, big, A, G, None, True, "auto")         # N > MAX_ROWS
    assert not qp_small.applies(P, np.zeros((8192, 4)), A, G, None, True, "auto")  # work


@pytest.mark.parametrize("gradient", ["implicit", "smoothed", "lpgd"])
def test_the_layer_and_its_gradient_options(gradient):
    rng = np.random.default_rng(8)
    n, m, batch = 6, 6, 4
    P, _, _, _, G0, h0 = _problem(rng, n, m, 0, 1)
    x = cp.Variable(n)
    q, h = cp.Parameter(n), cp.Parameter(m)
    problem = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, cp.psd_wrap(P)) + q @ x),
                         [G0[0] @ x <= h])
    q_t = torch.tensor(rng.standard_normal((batch, n)), requires_grad=True)
    h_t = torch.tensor(np.repeat(h0, batch, 0), requires_grad=True)
    results = []
    for enabled in (True, False):
        qp_small.ENABLED = enabled
        try:
            layer = CvxpyLayer(problem, [q, h], [x], solver="QP", gradient=gradient)
            (sol,) = layer(q_t, h_t)
            g_q, g_h = torch.autograd.grad(sol.sum(), (q_t, h_t))
            results.append((sol, g_q, g_h))
        finally:
            qp_small.ENABLED = True
    for mine, general in zip(*results):
        torch.testing.assert_close(mine, general, atol=1e-7, rtol=1e-6)


def test_threads_split_the_batch_and_change_no_bit(monkeypatch):
    """A large batch is solved in parts on threads of their own (the kernels release the
    GIL); each element's arithmetic is its own, so the answer is bitwise the single
    thread's, and an element that cannot vouch in any part still hands the whole batch
    to the general method."""
    rng = np.random.default_rng(9)
    P, q, A, b, G, h = _problem(rng, 5, 6, 2, 40)
    monkeypatch.setattr(qp_small, "_thread_budget", lambda: 3)
    monkeypatch.setattr(qp_small, "_WORK_PER_THREAD", 1)
    assert len(qp_small._parts(40, 40 * 13 ** 3)) == 3
    threaded = qp_small.solve(P, q, A, b, G, h)
    monkeypatch.setattr(qp_small, "_WORK_PER_THREAD", 10 ** 12)
    assert len(qp_small._parts(40, 40 * 13 ** 3)) == 1
    single = qp_small.solve(P, q, A, b, G, h)
    for mine, theirs in zip(threaded[:5], single[:5]):
        np.testing.assert_array_equal(mine, theirs)
    g = rng.standard_normal((40, 5))
    np.testing.assert_array_equal(threaded[5].adjoint_solve(P, A, G, g, b, h)[0],
                                  single[5].adjoint_solve(P, A, G, g, b, h)[0])
    monkeypatch.setattr(qp_small, "_WORK_PER_THREAD", 1)
    G[37, :2] = [np.eye(5)[0], -np.eye(5)[0]]  # infeasible, in the last part
    h[37, :2] = -1.0
    assert qp_small.solve(P, q, A, b, G, h) is None


def test_thread_budget_follows_pytorch(monkeypatch):
    """Inside a DataLoader worker PyTorch runs one thread: so do the kernels. (Its count
    is patched, not set: with PyTorch 2.13's MKL build, calling torch.set_num_threads
    breaks large batched LU factorizations for the rest of the process; see the QP
    guide.)"""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert qp_small._thread_budget() == 1
    assert qp_small._parts(4096, 10 ** 12) == [slice(0, 4096)]
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert len(qp_small._parts(4096, 10 ** 12)) == 2
