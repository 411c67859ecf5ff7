"""Equilibration of the native QP solver (qp_scaling) on badly scaled QPs.

Two families of 16 well-conditioned QPs whose variables and constraint rows are rescaled
by 10^U(−span, span) (n = 20, m = 30, p = 5). Before equilibration, in the primal
reduction (the dual one refused them: λ_min(P) fell below 1e-6 times a scale that counted
‖q‖∞ and ‖h‖∞):

* ``fails`` (span 1.5, q ≈ 1e4, G ≈ 1e-2): all 16 elements failed (none met the
  tolerance within 50 iterations);
* ``inaccurate`` (span 2, q ≈ 1e4, G ≈ 80): 10 failed, and 6 were reported optimal up to 2.4e-6
  (relative) away from Clarabel (most likely: a test met in ∞-norms dominated by the large
  rows, while the small ones were still off) (`python benchmarks/qp_scaling.py
  --families` on the commit before equilibration reproduces these).
"""

import pathlib
import sys

import cvxpy as cp
import numpy as np
import pytest
import torch

from cvxlayers.backends.qp_scaling import equilibrate, judge
from cvxlayers.backends.qp_solver import qp_adjoint, solve_qp
from cvxlayers.torch import CvxpyLayer

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
from _qp_families import FAMILIES, skewed_qps  # noqa: E402

def clarabel(P, q, A, b, G, h):
    """Each element solved by Clarabel through CVXPY at tolerance 1e-12."""
    out = []
    for i in range(q.shape[0]):
        P_i = P if P.ndim == 2 else P[i]
        x = cp.Variable(q.shape[1])
        problem = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, cp.psd_wrap(P_i)) + q[i] @ x),
                             [A[i] @ x == b[i], G[i] @ x <= h[i]])
        problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12,
                      tol_feas=1e-12, max_iter=500)
        assert problem.status == "optimal"
        out.append(x.value)
    return np.array(out)


@pytest.fixture(scope="module")
def families():
    out = {}
    for name, spec in FAMILIES.items():
        data = skewed_qps(0 if name == "fails" else 7, **spec)
        out[name] = data, clarabel(*data)
    return out


def relative_errors(x, reference):
    return np.abs(np.asarray(x) - reference).max(axis=1) / np.abs(reference).max(axis=1)


@pytest.mark.parametrize("kkt_form", ["primal", "dual"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_badly_scaled_families_solve_accurately(families, family, kkt_form):
    data, reference = families[family]
    solution = solve_qp(*data, kkt_form=kkt_form)
    assert solution.statuses == ["optimal"] * 16
    assert relative_errors(solution.x, reference).max() <= 1e-6


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_badly_scaled_family_through_the_layer_with_default_options(family):
    """P shared by the batch (a constant of the problem), the rest parameters."""
    spec = FAMILIES[family]
    P, q, A, b, G, h = skewed_qps(3, **spec, shared_P=True)
    reference = clarabel(P, q, A, b, G, h)
    n, m, p = q.shape[1], G.shape[1], A.shape[1]
    x = cp.Variable(n)
    params = [cp.Parameter(n), cp.Parameter((p, n)), cp.Parameter(p), cp.Parameter((m, n)),
              cp.Parameter(m)]
    q_, A_, b_, G_, h_ = params
    problem = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, cp.psd_wrap(P)) + q_ @ x),
                         [A_ @ x == b_, G_ @ x <= h_])
    layer = CvxpyLayer(problem, parameters=params, variables=[x], solver="QP")
    x_star, = layer(*[torch.tensor(v) for v in (q, A, b, G, h)])
    assert relative_errors(x_star.numpy(), reference).max() <= 1e-6


def _central_differences(f, value, entries, step):
    grads = []
    for idx in entries:
        plus, minus = value.copy(), value.copy()
        eps = step * max(abs(value[idx]), 1.0)
        plus[idx] += eps
        minus[idx] -= eps
        grads.append((f(plus) - f(minus)) / (2 * eps))
    return np.array(grads)


@pytest.mark.parametrize("kkt_form", ["primal", "dual"])
def test_gradients_match_central_differences_on_a_badly_scaled_qp(kkt_form):
    data = skewed_qps(11, **FAMILIES["fails"], batch=1, n=5, m=6, p=2)
    weights = np.random.default_rng(12).standard_normal((1, 5))
    solution = solve_qp(*data, kkt_form=kkt_form)
    assert solution.statuses == ["optimal"]
    grads = dict(zip("PqAbGh", qp_adjoint(solution, data[0], data[2], data[4], weights,
                                          np.zeros((1, 2)), np.zeros((1, 6)))))
    for k, name in enumerate("PqAbGh"):
        value = data[k]

        def loss(v, k=k):
            varied = list(data)
            varied[k] = v
            return float(np.sum(weights * solve_qp(*varied, kkt_form=kkt_form).x))

        entries = [idx for idx in np.ndindex(value.shape)][:6]
        if name == "P":  # the adjoint's ∇P is the symmetric one: vary P symmetrically
            continue
        numeric = _central_differences(loss, value, entries, 1e-6)
        analytic = np.array([grads[name][idx] for idx in entries])
        scale = np.abs(analytic).max()
        np.testing.assert_allclose(analytic, numeric, atol=1e-5 * scale, rtol=1e-4,
                                   err_msg=name)


def test_symmetric_P_gradient_matches_central_differences():
    data = skewed_qps(13, **FAMILIES["inaccurate"], batch=1, n=4, m=5, p=1)
    weights = np.random.default_rng(14).standard_normal((1, 4))
    solution = solve_qp(*data)
    dP = qp_adjoint(solution, data[0], data[2], data[4], weights, np.zeros((1, 1)),
                    np.zeros((1, 5)))[0]
    for i, j in [(0, 0), (0, 1), (2, 3)]:
        E = np.zeros((1, 4, 4))
        E[0, i, j] = E[0, j, i] = 1.0
        eps = 1e-6 * abs(data[0][0, i, j])

        def loss(sign, eps=eps, E=E):
            return float(np.sum(weights * solve_qp(data[0] + sign * eps * E, *data[1:]).x))
        numeric = (loss(1) - loss(-1)) / (2 * eps)
        analytic = float(np.sum(dP * E))
        assert abs(analytic - numeric) <= 1e-4 * abs(numeric) + 1e-8 * np.abs(dP).max()


def test_rescaling_rows_and_columns_by_1e3_rescales_the_solution():
    rng = np.random.default_rng(20)
    batch, n, m, p = 4, 8, 10, 2
    L = rng.standard_normal((batch, n, n))
    P = L @ L.transpose(0, 2, 1) / n + 0.1 * np.eye(n)
    q, G = rng.standard_normal((batch, n)), rng.standard_normal((batch, m, n))
    A, b = rng.standard_normal((batch, p, n)), rng.standard_normal((batch, p))
    h = rng.uniform(0.5, 1.5, (batch, m))
    d = np.where(np.arange(n) % 2, 1e3, 1.0)        # every other variable measured in 1e-3
    e_G = np.where(np.arange(m) % 3, 1.0, 1e-3)     # every third inequality divided by 1e3
    e_A = np.array([1e3, 1.0])
    scaled = (d[:, None] * P * d, d * q, e_A[:, None] * A * d, e_A * b, e_G[:, None] * G * d,
              e_G * h)
    for form in ("primal", "dual"):
        plain, rescaled = solve_qp(P, q, A, b, G, h, kkt_form=form), solve_qp(*scaled,
                                                                             kkt_form=form)
        assert plain.statuses == rescaled.statuses == ["optimal"] * batch
        np.testing.assert_allclose(d * rescaled.x, plain.x, rtol=0, atol=1e-7)
        np.testing.assert_allclose(rescaled.lam * e_G, plain.lam, rtol=0, atol=1e-6)


def test_equilibration_balances_norms_and_keeps_shared_matrices_shared():
    P, q, A, b, G, h = skewed_qps(5, **FAMILIES["inaccurate"], batch=3, shared_P=True)
    scaling, (P_s, q_s, A_s, b_s, G_s, h_s) = equilibrate(np, P, q, A, b, G, h)
    assert P_s.ndim == 2 and scaling.D.shape == (20,)   # one D for the batch, so P stays one
    K_cols = np.maximum(np.abs(P_s).max(axis=0),
                        np.maximum(np.abs(A_s).max(axis=1), np.abs(G_s).max(axis=1)).max(axis=0))
    assert 0.25 <= K_cols.max() <= 4.0
    assert np.all(np.abs(G_s).max(axis=2) >= 0.25) and np.all(np.abs(G_s).max(axis=2) <= 4.0)
    assert np.all(np.log2(scaling.E_G) == np.round(np.log2(scaling.E_G)))  # exact scaling
    point = tuple(np.random.default_rng(6).standard_normal(v.shape) for v in (q, b, h, h))
    for back, original in zip(scaling.unscale(*scaling.scale_point(*point)), point):
        np.testing.assert_array_equal(back, original)


def test_a_point_off_by_1e_5_on_the_users_data_is_not_judged_optimal(families):
    data, reference = families["inaccurate"]
    solution = solve_qp(*data)
    accurate, _ = judge(np, data, solution.x, solution.nu, solution.lam, solution.s, 1e-9, 1e3)
    assert accurate.all()
    x = solution.x * (1 + 1e-5)
    accurate, _ = judge(np, data, x, solution.nu, solution.lam, solution.s, 1e-9, 1e3)
    assert not accurate.any()
