"""Custom solvers (cvxlayers.backends.custom): a solver written here (Clarabel called
directly, its derivative from the self-dual embedding with closed-form projections) plugged
in per element and batched, checked against the built-in Clarabel backend (values and
gradients) and finite differences; the contract's errors; failures as per-element status."""

import cvxpy as cp
import numpy as np
import pytest
import torch
from _custom_solvers import BatchedClarabelKKT, ClarabelKKT
from zoo import TIGHT, ZOO

import cvxlayers
from cvxlayers.torch import CvxpyLayer

CASES = ["lp", "socp", "qp", "duals", "broadcast"]


def _grads(layer, values, weights, solver_args=None):
    params = [torch.tensor(v, requires_grad=True) for v in values]
    outs = layer(*params, solver_args=solver_args)
    sum((torch.tensor(w) * o).sum() for w, o in zip(weights, outs)).backward()
    return [o.detach().numpy() for o in outs], [p.grad.numpy() for p in params]


@pytest.mark.parametrize("solver_class", [ClarabelKKT, BatchedClarabelKKT])
@pytest.mark.parametrize("name", CASES)
def test_matches_builtin_clarabel(name, solver_class):
    case = ZOO[name]()
    rng = np.random.default_rng(0)
    values = case.sample(rng, 3)
    weights = [rng.standard_normal((3,) + v.shape) for v in case.variables]
    solver = solver_class()
    custom = CvxpyLayer(case.problem, case.parameters, case.variables, solver=solver)
    builtin = CvxpyLayer(case.problem, case.parameters, case.variables, solver="CLARABEL")
    outs, grads = _grads(custom, values, weights)
    ref_outs, ref_grads = _grads(builtin, values, weights, TIGHT["CLARABEL"])
    for out, ref in zip(outs, ref_outs):
        np.testing.assert_allclose(out, ref, atol=1e-6, rtol=1e-6)
    for grad, ref in zip(grads, ref_grads):
        np.testing.assert_allclose(grad, ref, atol=1e-5, rtol=1e-4)
    assert custom.core.last_stats.solver == solver_class.name
    assert custom.core.last_stats.statuses == ["optimal"] * 3


def test_gradient_matches_finite_differences():
    """A directional central difference (step 1e-3: interior-point solutions stop slightly
    inside the cone, which makes tiny steps noisy, as in test_zoo_torch)."""
    case = ZOO["socp"]()
    rng = np.random.default_rng(1)
    layer = CvxpyLayer(case.problem, case.parameters, case.variables, solver=ClarabelKKT())
    values = case.sample(rng, 2)
    weights = torch.tensor(rng.standard_normal((2,) + case.variables[0].shape))
    params = [torch.tensor(v, requires_grad=True) for v in values]
    (weights * layer(*params)[0]).sum().backward()
    direction = [rng.standard_normal(v.shape) * (np.abs(v) + 0.1) for v in values]
    analytic = sum((p.grad.numpy() * d).sum() for p, d in zip(params, direction))
    step = 1e-3

    def f(sign):
        with torch.no_grad():
            x, = layer(*[torch.tensor(v + sign * step * d) for v, d in zip(values, direction)])
        return float((weights * x).sum())

    numeric = (f(1) - f(-1)) / (2 * step)
    assert abs(numeric - analytic) <= 2e-3 * max(1.0, abs(analytic))


def test_registered_by_name_and_per_call():
    case = ZOO["lp"]()
    cvxlayers.register_solver("my-clarabel", ClarabelKKT())
    values = [torch.tensor(v) for v in case.sample(np.random.default_rng(2), 2)]
    layer = CvxpyLayer(case.problem, case.parameters, case.variables, solver="my-clarabel")
    scs = CvxpyLayer(case.problem, case.parameters, case.variables)
    x, = layer(*values)
    x_call, = scs(*values, solver_args={"solver": "my-clarabel"})
    assert scs.core.last_stats.solver == "ClarabelKKT"
    np.testing.assert_allclose(x_call.numpy(), x.numpy(), atol=1e-9)
    with pytest.raises(ValueError, match="'SCS'"):
        cvxlayers.register_solver("SCS", ClarabelKKT())


class _NoDerivative:
    def solve(self, A, b, c, cone_dict, need_derivative):
        return {}


def test_contract_errors_name_what_is_missing():
    case = ZOO["lp"]()
    with pytest.raises(TypeError, match=r"lacks derivative \(and solve_batch and "
                                        r"derivative_batch\)"):
        CvxpyLayer(case.problem, case.parameters, case.variables, solver=_NoDerivative())
    with pytest.raises(TypeError, match="lacks solve and derivative"):
        CvxpyLayer(case.problem, case.parameters, case.variables, solver=object())

    class BadResult(ClarabelKKT):
        def solve(self, A, b, c, cone_dict, need_derivative, **options):
            return (np.zeros(c.size), np.zeros(b.size))

    layer = CvxpyLayer(case.problem, case.parameters, case.variables, solver=BadResult())
    with pytest.raises(TypeError, match="must return a dict with keys 'x', 'y' and 'status'"):
        layer(*[torch.tensor(v) for v in case.sample(np.random.default_rng(3), 2)])


def test_cones_the_solver_lacks_are_refused():
    case = ZOO["exponential"]()
    with pytest.raises(cvxlayers.ProblemError, match="ClarabelKKT does not support the "
                                                     "exponential"):
        CvxpyLayer(case.problem, case.parameters, case.variables, solver=ClarabelKKT())


class _RaisesOnHugeData(ClarabelKKT):
    """Raises for an element whose data has an entry beyond 1e6."""

    def solve(self, A, b, c, cone_dict, need_derivative, **options):
        if np.abs(b).max() > 1e6:
            raise RuntimeError("numerical trouble")
        return super().solve(A, b, c, cone_dict, need_derivative, **options)


@pytest.mark.parametrize("solver_class,failed", [(_RaisesOnHugeData, {1: "failed", 2: "infeasible"}),
                                                 (BatchedClarabelKKT, {1: "infeasible", 2: "infeasible"})])
def test_failures_are_per_element_status(solver_class, failed):
    x = cp.Variable(2)
    b = cp.Parameter(2)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - b)), [x <= 1, cp.sum(x) >= b[1]])
    # Element 1 makes _RaisesOnHugeData raise (Clarabel itself calls it infeasible at that
    # scale); element 2 is infeasible (sum(x) <= 2 < 5).
    values = torch.tensor([[0.3, -2.0], [2e7, -1.0], [0.0, 5.0], [0.5, -3.0]], dtype=torch.float64,
                          requires_grad=True)
    layer = CvxpyLayer(problem, [b], [x], solver=solver_class())
    with pytest.raises(cvxlayers.SolverError, match="element 2: infeasible") as info:
        layer(values)
    statuses = {i: s for i, s in enumerate(info.value.statuses) if s != "optimal"}
    assert statuses == failed
    layer = CvxpyLayer(problem, [b], [x], solver=solver_class(), on_failure="warn")
    with pytest.warns(RuntimeWarning, match="failed on"):
        out, = layer(values)
    good = [i for i in range(4) if i not in failed]
    assert torch.isnan(out[list(failed)]).all() and not torch.isnan(out[good]).any()
    np.testing.assert_allclose(out[[0, 3]].detach().numpy(), [[0.3, -2.0], [0.5, -3.0]],
                               atol=1e-5)
    out[good].sum().backward()
    assert (values.grad[list(failed)] == 0).all()
    np.testing.assert_allclose(values.grad[[0, 3]].numpy(), np.ones((2, 2)), atol=1e-5)
