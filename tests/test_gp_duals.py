"""Dual variables of geometric programs (gp=True) as layer outputs.

CVXPY's Dgp2Dcp reduction leaves duals alone: the dual it reports for a DGP constraint is
the dual of the log-transformed (DCP) constraint, e.g. of log(a x y) <= log b. The layer
returns the same value, differentiated like any other output.
"""

import warnings

import cvxpy as cp
import numpy as np
import pytest
import torch

from cvxlayers.torch import CvxpyLayer

#: Clarabel at these tolerances gives cvxpy's and the layer's solves the same iterates.
CLARABEL_TIGHT = dict(tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)


def readme_gp():
    """cvxpylayers' README geometric program, with one extra (inactive) constraint."""
    x, y, z = (cp.Variable(pos=True, name=n) for n in "xyz")
    a = cp.Parameter(pos=True, value=2.0, name="a")
    b = cp.Parameter(pos=True, value=1.0, name="b")
    c = cp.Parameter(value=0.5, name="c")
    constraints = [a * (x * y + x * z + y * z) <= b, x >= y ** c, z <= 3 * x]
    problem = cp.Problem(cp.Minimize(1 / (x * y * z)), constraints)
    return problem, [a, b, c], [x, y, z], constraints


def vector_gp():
    """Elementwise monomial bounds, a monomial equality and a posynomial inequality."""
    w = cp.Variable(3, pos=True, name="w")
    h = cp.Variable(pos=True, name="h")
    a = cp.Parameter(3, pos=True, value=np.array([1.0, 2.0, 0.5]), name="a")
    d = cp.Parameter(pos=True, value=2.0, name="d")
    constraints = [cp.multiply(a, w) <= 2.0, cp.prod(w) * h == d, cp.sum(w) + h <= 6]
    problem = cp.Problem(cp.Minimize(cp.sum(1 / w) + h), constraints)
    return problem, [a, d], [w, h], constraints


def tensors(params, requires_grad=False):
    return [torch.tensor(np.asarray(p.value, dtype=np.float64), requires_grad=requires_grad)
            for p in params]


def cvxpy_values(problem, variables, constraints):
    problem.solve(gp=True, solver=cp.CLARABEL, **CLARABEL_TIGHT)
    assert problem.status == cp.OPTIMAL
    return ([np.asarray(v.value) for v in variables]
            + [np.asarray(c.dual_value) for c in constraints])


@pytest.mark.parametrize("make", [readme_gp, vector_gp])
def test_gp_primal_and_dual_outputs_match_cvxpy(make):
    problem, params, variables, constraints = make()
    expected = cvxpy_values(problem, variables, constraints)
    duals = [c.dual_variables[0] for c in constraints]
    layer = CvxpyLayer(problem, parameters=params, variables=variables + duals, gp=True,
                       solver="CLARABEL")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "inaccurate" at 1e-12
        outputs = layer(*tensors(params), solver_args=CLARABEL_TIGHT)
    assert len(outputs) == len(expected)
    for out, want in zip(outputs, expected):
        assert out.shape == want.shape
        np.testing.assert_allclose(out.numpy(), want, rtol=1e-9, atol=1e-10)


def test_gp_dual_is_the_log_constraint_dual():
    """For max/min of a monomial objective, the dual of the log constraint is the
    sensitivity of log(objective) to log(rhs): d log f*/d log b = -λ."""
    problem, params, variables, constraints = readme_gp()
    layer = CvxpyLayer(problem, parameters=params,
                       variables=[constraints[0].dual_variables[0]], gp=True, solver="CLARABEL")
    lam, = layer(*tensors(params), solver_args=CLARABEL_TIGHT)
    values = []
    for scale in (1 + 1e-5, 1 - 1e-5):
        params[1].value = scale
        problem.solve(gp=True, solver=cp.CLARABEL, **CLARABEL_TIGHT)
        values.append(np.log(problem.value))
    params[1].value = 1.0
    slope = (values[0] - values[1]) / (np.log(1 + 1e-5) - np.log(1 - 1e-5))
    np.testing.assert_allclose(-lam.item(), slope, rtol=1e-5)


def test_gp_dual_gradients_match_finite_differences():
    problem, params, variables, constraints = vector_gp()
    duals = [c.dual_variables[0] for c in constraints]
    layer = CvxpyLayer(problem, parameters=params, variables=variables + duals, gp=True,
                       solver="CLARABEL")
    inputs = tensors(params, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        # The solutions are accurate to about 1e-10, so with steps of 1e-5 the
        # central differences are good to about 1e-5.
        assert torch.autograd.gradcheck(
            lambda *v: tuple(layer(*v, solver_args=CLARABEL_TIGHT)), inputs,
            eps=1e-5, atol=5e-5, rtol=1e-3)


def test_gp_dual_gradient_of_inactive_constraint_is_zero():
    problem, params, variables, constraints = readme_gp()
    layer = CvxpyLayer(problem, parameters=params,
                       variables=[constraints[2].dual_variables[0]], gp=True, solver="CLARABEL")
    inputs = tensors(params, requires_grad=True)
    mu, = layer(*inputs, solver_args=CLARABEL_TIGHT)
    mu.backward()
    assert abs(mu.item()) < 1e-8
    for t in inputs:
        assert abs(t.grad.item()) < 1e-6
