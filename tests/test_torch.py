"""The PyTorch layer as a module: dtype/device round-trip, no-grad path, module protocols."""

import copy
import pickle

import cvxpy as cp
import numpy as np
import pytest
import torch
from zoo import TIGHT, ZOO

from cvxlayers.torch import CvxpyLayer


@pytest.fixture
def case():
    return ZOO["qp"]()


def make(case, **kwargs):
    return CvxpyLayer(case.problem, case.parameters, case.variables, **kwargs)


def test_float32_in_float32_out(case):
    layer = make(case)
    values = [torch.tensor(v, dtype=torch.float32, requires_grad=True)
              for v in case.sample(np.random.default_rng(0), 2)]
    x, = layer(*values)
    assert x.dtype == torch.float32
    x.sum().backward()
    assert all(v.grad.dtype == torch.float32 for v in values)


def test_mixed_dtypes_promote(case):
    layer = make(case)
    values = case.sample(np.random.default_rng(0), 2)
    tensors = [torch.tensor(v, dtype=torch.float32) for v in values]
    tensors[0] = tensors[0].double()
    assert layer(*tensors)[0].dtype == torch.float64


def test_no_grad_path_does_no_derivative_work(case, need_grad_calls):
    seen = need_grad_calls
    layer = make(case)
    values = [torch.tensor(v, requires_grad=True) for v in case.sample(np.random.default_rng(0), 2)]
    with torch.no_grad():
        layer(*values, solver_args={"mode": "lsqr", "derivative_kwargs": {}})
    layer(*[v.detach() for v in values])
    layer(*values)
    assert seen == [False, False, True]


def test_solver_override_per_call(case):
    layer = make(case)
    values = [torch.tensor(v) for v in case.sample(np.random.default_rng(0), 2)]
    scs, = layer(*values, solver_args=TIGHT["SCS"])
    ecos, = layer(*values, solver_args={"solver": "ECOS", **TIGHT["ECOS"]})
    clarabel, = layer(*values, solver_args={"solve_method": cp.CLARABEL, **TIGHT["CLARABEL"]})
    np.testing.assert_allclose(scs, ecos, atol=1e-5)
    np.testing.assert_allclose(scs, clarabel, atol=1e-5)


def test_numpy_inputs_are_accepted(case):
    layer = make(case)
    values = case.sample(np.random.default_rng(0), 2)
    x, = layer(*values)
    assert isinstance(x, torch.Tensor) and x.shape == (2, 5)


def test_module_protocols(case):
    layer = make(case)
    values = [torch.tensor(v) for v in case.sample(np.random.default_rng(0), 2)]
    expected, = layer(*values, solver_args=TIGHT["SCS"])
    assert layer.to("cpu") is layer
    assert layer.state_dict() == {}
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        got, = clone(*values, solver_args=TIGHT["SCS"])
        np.testing.assert_allclose(got, expected, atol=1e-8)
    net = torch.nn.Sequential()
    net.add_module("opt", layer)
    assert "opt" in dict(net.named_children())


def test_training_step_reduces_loss():
    """A parameter learned through the layer moves the solution toward a target."""
    x = cp.Variable(3)
    y = cp.Parameter(3)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - y)), [x >= 0, cp.sum(x) <= 1])
    layer = CvxpyLayer(problem, [y], [x])
    target = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    logits = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.SGD([logits], lr=0.5)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        x_star, = layer(logits, solver_args=TIGHT["SCS"])
        loss = ((x_star - target) ** 2).sum()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]


def test_scalar_outputs_keep_their_shape_in_float64():
    x = cp.Variable()
    p = cp.Parameter()
    problem = cp.Problem(cp.Minimize(cp.square(x - p)), [x >= 0])
    layer = CvxpyLayer(problem, [p], [x, problem.constraints[0].dual_variables[0]])
    for value in (torch.tensor(2.0, dtype=torch.float64), torch.tensor(2.0),
                  torch.tensor(2.0, dtype=torch.float64, requires_grad=True)):
        outputs = layer(value)
        assert [o.shape for o in outputs] == [torch.Size([]), torch.Size([])]
