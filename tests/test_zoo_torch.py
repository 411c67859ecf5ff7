"""The problem zoo through the PyTorch layer, for every solver that supports each case:
solutions against CVXPY's own solve, gradients against finite differences (gradcheck)."""

import numpy as np
import pytest
import torch
from zoo import TIGHT, ZOO, reference_solution

from cvxlayers.torch import CvxpyLayer

CASES = [(name, solver) for name, make in ZOO.items() for solver in make().solvers]


@pytest.mark.parametrize("name,solver", CASES)
def test_solution_matches_cvxpy(name, solver):
    case = ZOO[name]()
    rng = np.random.default_rng(1)
    layer = CvxpyLayer(case.problem, case.parameters, case.variables, gp=case.gp, solver=solver)
    values = case.sample(rng, 3)
    outputs = layer(*[torch.tensor(v) for v in values], solver_args=TIGHT[solver])
    assert len(outputs) == len(case.variables)
    for i in range(3):
        reference = reference_solution(case, values, i)
        for out, ref in zip(outputs, reference):
            assert out.shape[1:] == ref.shape
            np.testing.assert_allclose(out[i].numpy(), ref, atol=1e-4, rtol=1e-4)


def _projected(layer, case, solver, rng, batch=2):
    """A scalar function of the parameters: a fixed random projection of every output,
    so that a check compares one number per perturbation rather than a full Jacobian."""
    weights = [torch.tensor(rng.standard_normal((batch,) + tuple(v.shape)))
               for v in case.variables]

    def f(*params):
        outs = layer(*params, solver_args=TIGHT[solver])
        return sum((w * o).sum(dim=tuple(range(1, o.dim()))) for w, o in zip(weights, outs))

    return f


SCS_CASES = [name for name, solver in CASES if solver == "SCS"]
INTERIOR_POINT_CASES = [(name, solver) for name, solver in CASES if solver != "SCS"]


@pytest.mark.parametrize("name", SCS_CASES)
def test_gradcheck_scs(name):
    """torch.autograd.gradcheck, float64, every zoo case (SCS solves to 1e-10, so central
    differences with step 1e-5 are accurate to about 1e-5)."""
    case = ZOO[name]()
    rng = np.random.default_rng(2)
    layer = CvxpyLayer(case.problem, case.parameters, case.variables, gp=case.gp)
    values = [torch.tensor(v, requires_grad=True) for v in case.sample(rng, 2)]
    f = _projected(layer, case, "SCS", rng)
    # The DGP case's parameters are ~1e2 and its solution map is smooth: a step of 1e-5 lets
    # the solver's 1e-10 residuals reach 1e-4 in the differences (measured on one CPU
    # model), a step of 1e-4 keeps them ten times smaller.
    eps = 1e-4 if case.gp else 1e-5
    assert torch.autograd.gradcheck(f, values, eps=eps, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("name,solver", INTERIOR_POINT_CASES)
def test_interior_point_gradients(name, solver):
    """ECOS and Clarabel: the gradient equals SCS's, and a directional central difference.

    Interior-point solutions stop slightly inside the cone, which makes entrywise finite
    differences with tiny steps noisy (solutions agree to about 1e-6); a directional
    difference with step 1e-3 is not."""
    case = ZOO[name]()
    rng = np.random.default_rng(2)
    values = case.sample(rng, 2)
    weights_rng_state = rng.bit_generator.state
    grads = {}
    for which in ("SCS", solver):
        rng.bit_generator.state = weights_rng_state
        layer = CvxpyLayer(case.problem, case.parameters, case.variables, gp=case.gp,
                           solver=which)
        params = [torch.tensor(v, requires_grad=True) for v in values]
        f = _projected(layer, case, which, rng)
        f(*params).sum().backward()
        grads[which] = [p.grad.clone() for p in params]
    for g_ref, g in zip(grads["SCS"], grads[solver]):
        np.testing.assert_allclose(g.numpy(), g_ref.numpy(), rtol=1e-3, atol=1e-4)
    direction = [_direction(rng, p, v) for p, v in zip(case.parameters, values)]
    analytic = sum((g.numpy() * d).sum() for g, d in zip(grads[solver], direction))
    step = 1e-3
    with torch.no_grad():
        plus = f(*[torch.tensor(v + step * d) for v, d in zip(values, direction)]).sum()
        minus = f(*[torch.tensor(v - step * d) for v, d in zip(values, direction)]).sum()
    numeric = float(plus - minus) / (2 * step)
    assert abs(numeric - analytic) <= 5e-3 * max(1.0, abs(analytic))


def _direction(rng, parameter, value):
    """A random perturbation that keeps the value valid for the parameter's attributes."""
    direction = rng.standard_normal(value.shape) * (np.abs(value) + 0.1)
    if any(parameter.attributes.get(a) for a in ("symmetric", "PSD", "NSD")):
        direction = (direction + np.swapaxes(direction, -1, -2)) / 2
    return direction


def test_unbatched_call_has_no_batch_dimension():
    case = ZOO["socp"]()
    layer = CvxpyLayer(case.problem, case.parameters, case.variables)
    values = case.sample(np.random.default_rng(3), None)
    x, = layer(*[torch.tensor(v) for v in values], solver_args=TIGHT["SCS"])
    assert x.shape == case.variables[0].shape
    np.testing.assert_allclose(x.numpy(), reference_solution(case, values)[0], atol=1e-5)


def test_broadcast_gradient_is_sum_over_batch():
    case = ZOO["broadcast"]()
    layer = CvxpyLayer(case.problem, case.parameters, case.variables)
    rng = np.random.default_rng(4)
    A, b = case.sample(rng, 3)
    A_shared = torch.tensor(A, requires_grad=True)
    x, = layer(A_shared, torch.tensor(b), solver_args=TIGHT["SCS"])
    x.sum().backward()
    total = torch.zeros_like(A_shared)
    for i in range(3):
        A_i = torch.tensor(A, requires_grad=True)
        xi, = layer(A_i, torch.tensor(b[i]), solver_args=TIGHT["SCS"])
        xi.sum().backward()
        total += A_i.grad
    np.testing.assert_allclose(A_shared.grad.numpy(), total.numpy(), atol=1e-6)
