"""SCS takes a quadratic objective's P itself (as CVXPY passes it), not sum_squares' second-
order cone, whenever the call's derivative allows it; LPGD calls keep the linear objective.

Checked at the defaults a user gets, against closed forms and CVXPY's tight solve.
"""

import cvxpy as cp
import numpy as np
import pytest
import torch

from cvxlayers.backends.cone_qp import ConeQPPlan
from cvxlayers.torch import CvxpyLayer


def _box_projection(n=6):
    """argmin ‖x − y‖² over 0 ≤ x ≤ 1: x* = clip(y, 0, 1), ∂x*/∂y = [0 < y < 1]."""
    x, y = cp.Variable(n), cp.Parameter(n)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - y)), [x >= 0, x <= 1])
    return problem, x, y


def test_scs_gets_p_for_sum_squares_and_is_accurate_at_the_defaults():
    problem, x, y = _box_projection()
    layer = CvxpyLayer(problem, [y], [x])   # SCS, every default
    layout = layer.core.compiled.layout
    assert layout.p_nnz > 0 and not layout.cone_dict.get("q")   # P kept, no SOC for the square
    y_value = torch.tensor([-0.5, 0.2, 0.45, 0.8, 1.3, 0.6], dtype=torch.float64,
                           requires_grad=True)
    out, = layer(y_value)
    torch.testing.assert_close(out.detach(), y_value.detach().clamp(0, 1), atol=1e-6, rtol=0)
    out.sum().backward()
    inside = ((y_value > 0) & (y_value < 1)).double()
    torch.testing.assert_close(y_value.grad, inside, atol=1e-6, rtol=0)


def test_scs_least_squares_gradient_matches_finite_differences():
    """A constrained least-squares layer (parameter A and b) at SCS's defaults: x against
    CVXPY's tight Clarabel solve, the gradient against central differences of that solve."""
    rng = np.random.default_rng(0)
    m, n = 8, 4
    x, A, b = cp.Variable(n), cp.Parameter((m, n)), cp.Parameter(m)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b) + 0.1 * cp.sum_squares(x)),
                         [cp.sum(x) == 1, x >= -0.3])
    layer = CvxpyLayer(problem, [A, b], [x])
    assert layer.core.compiled.layout.p_nnz > 0
    A0, b0 = rng.standard_normal((m, n)), rng.standard_normal(m)
    w = rng.standard_normal(n)

    def reference(A_value, b_value):
        A.value, b.value = A_value, b_value
        problem.solve(solver="CLARABEL", tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
        return x.value

    At, bt = (torch.tensor(v, requires_grad=True) for v in (A0, b0))
    out, = layer(At, bt)
    np.testing.assert_allclose(out.detach().numpy(), reference(A0, b0), atol=1e-4)
    (out @ torch.tensor(w)).backward()
    h = 1e-6
    fd_b = np.array([(w @ reference(A0, b0 + h * e) - w @ reference(A0, b0 - h * e)) / (2 * h)
                     for e in np.eye(m)])
    np.testing.assert_allclose(bt.grad.numpy(), fd_b, atol=1e-3)
    dA = rng.standard_normal((m, n))
    fd_A = (w @ reference(A0 + h * dA, b0) - w @ reference(A0 - h * dA, b0)) / (2 * h)
    assert float((At.grad * torch.tensor(dA)).sum()) == pytest.approx(fd_A, abs=1e-3)


@pytest.mark.parametrize("how", ["layer gradient", "call mode"])
def test_lpgd_keeps_the_linear_objective(how):
    """diffcp's LPGD re-solves cannot take P: such calls get the second-order-cone form."""
    problem, x, y = _box_projection()
    if how == "layer gradient":
        layer = CvxpyLayer(problem, [y], [x], gradient="lpgd")
        args = {}
    else:
        layer = CvxpyLayer(problem, [y], [x])
        args = {"solver_args": {"mode": "lpgd"}}
    y_value = torch.tensor([-0.5, 0.2, 0.45, 0.8, 1.3, 0.6], dtype=torch.float64,
                           requires_grad=True)
    out, = layer(y_value, **args)
    torch.testing.assert_close(out.detach(), y_value.detach().clamp(0, 1), atol=1e-3, rtol=0)
    out.sum().backward()
    assert torch.isfinite(y_value.grad).all()
    linear = [f for quad, f in layer.core._formulations.items() if not quad]
    assert linear and linear[0].layout.cone_dict.get("q")   # the square's cone is there


def test_an_lp_keeps_the_linear_objective():
    x, c = cp.Variable(3), cp.Parameter(3)
    problem = cp.Problem(cp.Minimize(c @ x), [x >= 0, cp.sum(x) == 1])
    layer = CvxpyLayer(problem, [c], [x])
    assert layer.core.compiled.layout.p_indices is None


@pytest.mark.parametrize("dense_rows", [100, 0])   # a small J dense; any J sparse
def test_diagonal_projection_path_equals_diffcps_operator(dense_rows, monkeypatch):
    """For zero and nonnegative cones the adjoint solves with J as one matrix (D diagonal):
    dense least squares for a small J, LSQR on the sparse J for a large one; both must
    equal the general path through diffcp's projection operator."""
    from cvxlayers.backends import cone_qp

    monkeypatch.setattr(cone_qp, "_DENSE_ROWS", dense_rows)
    problem, x, y = _box_projection()
    layer = CvxpyLayer(problem, [y], [x])
    compiled = layer.core.compiled
    plan = ConeQPPlan(compiled.layout)
    assert plan.diagonal
    y_value = np.array([-0.5, 0.2, 0.45, 0.8, 1.3, 0.6])
    data = compiled.parameter_map.forward(compiled.parameter_map.features([y_value[None]],
                                                                          [True], 1))
    row = data[0]
    from diffcp import cone_program
    A, b, c, _ = plan.split(row)
    result = cone_program.solve_internal(A, b, c, compiled.layout.cone_dict, solve_method="SCS",
                                         P=plan.solver_P(row), eps_abs=1e-10, eps_rel=1e-10)
    rng = np.random.default_rng(3)
    gx, gy = rng.standard_normal(plan.n), rng.standard_normal(plan.m)
    for mode in ("lsqr", "lsmr"):
        lin = plan.linearize(row, result["x"], result["y"], result["s"], mode)
        assert isinstance(lin.J, np.ndarray) == bool(dense_rows)
        fast = plan.adjoint(lin, gx, gy, mode)
        plan.diagonal = False
        general = plan.adjoint(plan.linearize(row, result["x"], result["y"], result["s"], mode),
                               gx, gy, mode)
        plan.diagonal = True
        np.testing.assert_allclose(fast, general, atol=1e-8)


def test_the_forward_is_cvxpys_own_scs_solve():
    """With P passed as CVXPY passes it, at CVXPY's SCS defaults, the layer's answer is what
    problem.solve(solver="SCS") returns (the README's lasso-like layer)."""
    rng = np.random.default_rng(0)
    m, n = 20, 10
    x, A, b = cp.Variable(n), cp.Parameter((m, n)), cp.Parameter(m)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b) + cp.norm1(x)), [x >= 0])
    layer = CvxpyLayer(problem, [A, b], [x])
    A0, b0 = rng.standard_normal((m, n)), rng.standard_normal(m)
    out, = layer(torch.tensor(A0), torch.tensor(b0))
    A.value, b.value = A0, b0
    problem.solve(solver="SCS")
    np.testing.assert_allclose(out.numpy(), x.value, atol=1e-9)
    assert layer.core.last_stats.iterations[0] == problem.solver_stats.num_iters
