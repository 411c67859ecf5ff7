"""Explicit power cones: solved forward with SCS and Clarabel, never differentiated.

diffcp's derivative knows the zero, nonnegative, second-order, PSD and exponential cones
only, so a layer whose problem needs power cones (cp.PowCone3D, cp.PowConeND, atoms with
approx=False) returns values and refuses a gradient by name; power atoms with their
default approx=True still compile to second-order cones and differentiate.
"""

import warnings

import cvxpy as cp
import numpy as np
import pytest
import torch

from cvxlayers import NotDifferentiableError, ProblemError
from cvxlayers.torch import CvxpyLayer

TIGHT = {"SCS": dict(eps_abs=1e-10, eps_rel=1e-10),
         "CLARABEL": dict(tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)}
SOLVERS = list(TIGHT)


def pow3d():
    """max z − c x  s.t.  x^0.3 y^0.7 ≥ |z|,  x ≤ a₀,  y ≤ a₁."""
    v = cp.Variable(3, name="v")
    a = cp.Parameter(3, nonneg=True, value=np.array([1.0, 2.0, 0.7]), name="a")
    constraints = [cp.PowCone3D(v[0], v[1], v[2], 0.3), v[0] <= a[0], v[1] <= a[1]]
    problem = cp.Problem(cp.Maximize(v[2] - a[2] * v[0]), constraints)
    return problem, a, v, constraints


def pownd():
    """max Σz − 0.1 ΣW  s.t.  Π_i W_ij^α_ij ≥ |z_j| (column-wise),  W ≤ B."""
    W, z = cp.Variable((3, 2), name="W"), cp.Variable(2, name="z")
    B = cp.Parameter((3, 2), nonneg=True, value=np.array([[1.0, 2.0], [3.0, 1.0], [2.0, 2.0]]),
                     name="B")
    alpha = np.array([[0.2, 0.5], [0.3, 0.3], [0.5, 0.2]])
    constraints = [cp.PowConeND(W, z, alpha, axis=0), W <= B]
    problem = cp.Problem(cp.Maximize(cp.sum(z) - 0.1 * cp.sum(W)), constraints)
    return problem, B, [W, z], constraints


def solve_cvxpy(problem, solver):
    problem.solve(solver=solver, **TIGHT[solver])
    assert problem.status == cp.OPTIMAL


@pytest.mark.parametrize("solver", SOLVERS)
def test_pow3d_forward_matches_cvxpy(solver):
    problem, a, v, constraints = pow3d()
    solve_cvxpy(problem, solver)
    # The power cone's dual is three variables, one per argument of PowCone3D.
    duals = constraints[0].dual_variables + [c.dual_variables[0] for c in constraints[1:]]
    expected = [v.value] + [d.value for d in duals]
    layer = CvxpyLayer(problem, [a], [v] + duals, solver=solver)
    outputs = layer(torch.tensor(a.value), solver_args=TIGHT[solver])
    for out, want in zip(outputs, expected):
        np.testing.assert_allclose(out.numpy(), want, atol=1e-7)
    assert layer.core.compiled.layout.cone_dict["p"] == [0.3]


@pytest.mark.parametrize("solver", SOLVERS)
def test_pownd_forward_matches_cvxpy(solver):
    problem, B, variables, constraints = pownd()
    # CVXPY hands Clarabel the N-D cone itself (and reports it inaccurate at these
    # tolerances), so the reference is SCS's solve of the 3-D rewriting.
    solve_cvxpy(problem, "SCS")
    expected = [x.value for x in variables] + [constraints[1].dual_value]
    layer = CvxpyLayer(problem, [B], variables + [constraints[1].dual_variables[0]],
                       solver=solver)
    outputs = layer(torch.tensor(B.value), solver_args=TIGHT[solver])
    for out, want in zip(outputs, expected):
        np.testing.assert_allclose(out.numpy(), want, atol=1e-6)


def test_batched_forward_matches_cvxpy_per_element():
    problem, a, v, _ = pow3d()
    values = np.array([[1.0, 2.0, 0.7], [2.0, 1.0, 0.2], [0.5, 0.5, 0.1]])
    layer = CvxpyLayer(problem, [a], [v], solver="CLARABEL")
    out, = layer(torch.tensor(values), solver_args=TIGHT["CLARABEL"])
    for row, got in zip(values, out.numpy()):
        a.value = row
        solve_cvxpy(problem, "CLARABEL")
        np.testing.assert_allclose(got, v.value, atol=1e-7)


def test_exact_power_atom_uses_power_cones_and_solves():
    x = cp.Variable(3, pos=True)
    b = cp.Parameter(nonneg=True, value=2.0)
    problem = cp.Problem(cp.Minimize(cp.sum(cp.power(x, 1.5, approx=False))), [cp.sum(x) >= b])
    layer = CvxpyLayer(problem, [b], [x], solver="CLARABEL")
    assert len(layer.core.compiled.layout.cone_dict["p"]) == 3
    out, = layer(torch.tensor(2.0, dtype=torch.float64), solver_args=TIGHT["CLARABEL"])
    solve_cvxpy(problem, "CLARABEL")
    np.testing.assert_allclose(out.numpy(), x.value, atol=1e-8)
    np.testing.assert_allclose(out.numpy(), np.full(3, 2.0 / 3.0), atol=1e-4)


@pytest.mark.parametrize("solver", SOLVERS)
def test_torch_gradient_request_raises_at_backward(solver):
    problem, a, v, _ = pow3d()
    layer = CvxpyLayer(problem, [a], [v], solver=solver)
    values = torch.tensor(a.value, requires_grad=True)
    out, = layer(values)  # a forward with inputs that require grad still gives values
    assert torch.isfinite(out).all() and out.requires_grad
    with pytest.raises(NotDifferentiableError,
                       match=r"(?s)diffcp.*cannot differentiate.*cp\.geo_mean"):
        out.sum().backward()
    with torch.no_grad():
        again, = layer(values)
    torch.testing.assert_close(again, out.detach())


def test_jax_gradient_request_raises():
    jax = pytest.importorskip("jax")
    from cvxlayers.jax import CvxpyLayer as JaxLayer

    problem, a, v, _ = pow3d()
    layer = JaxLayer(problem, [a], [v])
    x = jax.numpy.asarray(a.value)
    assert np.isfinite(np.asarray(jax.jit(lambda p: layer(p)[0])(x))).all()
    with pytest.raises(NotDifferentiableError, match="power cone"):
        jax.grad(lambda p: layer(p)[0].sum())(x)


def test_ecos_is_refused_naming_scs_and_clarabel():
    problem, a, v, _ = pow3d()
    with pytest.raises(ProblemError, match=r"ECOS does not support the power cone.*SCS and "
                                           r"Clarabel"):
        CvxpyLayer(problem, [a], [v], solver="ECOS")
    layer = CvxpyLayer(problem, [a], [v])
    with pytest.raises(ProblemError, match="ECOS does not support the power cone"):
        layer(torch.tensor(a.value), solver_args={"solver": "ECOS"})


def test_qp_is_refused():
    problem, a, v, _ = pow3d()
    with pytest.raises(ProblemError, match="PowCone3D"):
        CvxpyLayer(problem, [a], [v], solver="QP")


@pytest.mark.parametrize("atom", ["geo_mean", "power", "pnorm"])
def test_power_atoms_still_compile_to_soc_and_differentiate(atom):
    n = 3
    x = cp.Variable(n, pos=True)
    c = cp.Parameter(n, value=np.array([1.0, 0.8, 2.0]))
    b = cp.Parameter(nonneg=True, value=2.0)
    if atom == "geo_mean":
        objective = cp.Maximize(cp.geo_mean(x) - c @ x / 10)
        constraints = [cp.sum(x) <= b]
    elif atom == "power":
        objective = cp.Minimize(cp.sum(cp.power(x, 1.5)) + c @ x)
        constraints = [cp.sum(x) >= b]
    else:
        objective = cp.Minimize(cp.pnorm(x - c, 3))
        constraints = [cp.sum(x) == b]
    problem = cp.Problem(objective, constraints)
    layer = CvxpyLayer(problem, [c, b], [x, constraints[0].dual_variables[0]])
    cones = layer.core.compiled.layout.cone_dict
    assert "p" not in cones and cones["q"]
    inputs = [torch.tensor(np.asarray(p.value, dtype=np.float64), requires_grad=True)
              for p in (c, b)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert torch.autograd.gradcheck(
            lambda *v: layer(*v, solver_args=TIGHT["SCS"]), inputs,
            eps=1e-5, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("solver", SOLVERS)
def test_statuses_are_per_element(solver):
    v = cp.Variable(3)
    a = cp.Parameter(2, nonneg=True)
    # |z| ≤ x^0.5 y^0.5 ≤ a₀ with z = a₁: infeasible when a₁ > a₀.
    problem = cp.Problem(cp.Minimize(v[0] + v[1]),
                         [cp.PowCone3D(v[0], v[1], v[2], 0.5), v[:2] <= a[0], v[2] == a[1]])
    layer = CvxpyLayer(problem, [a], [v], solver=solver, on_failure="warn")
    with pytest.warns(RuntimeWarning, match="infeasible"):
        out, = layer(torch.tensor([[2.0, 1.0], [1.0, 3.0]]))
    np.testing.assert_allclose(out[0].numpy(), [1.0, 1.0, 1.0], atol=1e-3)
    assert torch.isnan(out[1]).all()
