"""Code written for cvxpylayers runs with only the import changed: the idioms of its own
test suites (v1.2 and v0.1.9) and example notebooks that our stricter core used to break."""

import cvxpy as cp
import diffcp
import pytest
import torch

import cvxlayers
from cvxlayers.torch import CvxpyLayer

SOLVERS = ["SCS", "ECOS", "CLARABEL", "QP"]


def _infeasible_for_negative_b():
    x, b = cp.Variable(2), cp.Parameter(name="b")
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x)), [cp.sum(x) <= b, x >= 0.5])
    return problem, b, x


@pytest.mark.parametrize("solver", SOLVERS)
def test_failed_solve_is_a_diffcp_solver_error(solver):
    problem, b, x = _infeasible_for_negative_b()
    layer = CvxpyLayer(problem, [b], [x], solver=solver)
    with pytest.raises(diffcp.SolverError) as info:   # what cvxpylayers' tests catch
        layer(torch.tensor([2.0, -1.0]))
    assert isinstance(info.value, cvxlayers.SolverError)
    assert isinstance(info.value, RuntimeError)
    assert info.value.failed == [1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scalar_variable_has_shape_of_the_variable(dtype):
    x, y = cp.Variable(), cp.Parameter()
    layer = CvxpyLayer(cp.Problem(cp.Minimize(cp.square(x - y)), [x >= 0]), [y], [x])
    out, = layer(torch.tensor(2.0, dtype=dtype))
    assert out.shape == () and out.dtype == dtype
    batched, = layer(torch.tensor([2.0, -1.0, 3.0], dtype=dtype))
    assert batched.shape == (3,)
    torch.testing.assert_close(batched, torch.tensor([2.0, 0.0, 3.0], dtype=dtype),
                               atol=1e-3, rtol=0)


def test_jax_none_value_names_the_parameter():
    pytest.importorskip("jax")
    from cvxlayers.jax import CvxpyLayer as JaxLayer

    x, y = cp.Variable(2), cp.Parameter(2, name="y")
    layer = JaxLayer(cp.Problem(cp.Minimize(cp.sum_squares(x - y))), [y], [x])
    with pytest.raises(cvxlayers.ParameterTypeError, match="`y` .position 0.*NoneType"):
        layer(None)


def _projection():
    x, y = cp.Variable(3), cp.Parameter(3)
    return cp.Problem(cp.Minimize(cp.sum_squares(x - y)), [x >= 0]), y, x


@pytest.mark.parametrize("solver", SOLVERS)
def test_cvxpylayers_solver_args_are_accepted_for_every_solver(solver):
    """The keys cvxpylayers' tests and notebooks pass (e.g. its VIX-portfolio example:
    n_jobs_forward with Clarabel), translated to each solver's own options."""
    problem, y, x = _projection()
    layer = CvxpyLayer(problem, [y], [x], solver=solver)
    value = torch.tensor([[1.0, -1.0, 0.5]] * 3, dtype=torch.float64, requires_grad=True)
    args = {"solve_method": solver, "n_jobs_forward": 1, "n_jobs_backward": 2,
            "eps": 1e-9, "max_iters": 10_000, "verbose": False}
    out, = layer(value, solver_args=args)
    out.sum().backward()
    # eps tightened the solve: well below the default accuracy (~1e-4 for SCS and Clarabel)
    assert (out.detach() - torch.tensor([1.0, 0.0, 0.5])).abs().max() < 1e-5
    torch.testing.assert_close(value.grad, torch.tensor([[1.0, 0.0, 1.0]] * 3,
                                                        dtype=torch.float64), atol=1e-5, rtol=0)


def test_solver_specific_option_still_wins_over_the_generic_key():
    problem, y, x = _projection()
    layer = CvxpyLayer(problem, [y], [x], solver="SCS")
    backend, options, _, _ = layer.core._options({"eps": 1e-9, "eps_abs": 1e-3})
    assert options["eps_abs"] == 1e-3 and options["eps_rel"] == 1e-9


def test_thread_counts_are_checked_by_name():
    problem, y, x = _projection()
    layer = CvxpyLayer(problem, [y], [x], solver="CLARABEL")
    with pytest.raises(ValueError, match=r"solver_args\['n_jobs_forward'\].*received 0"):
        layer(torch.ones(3), solver_args={"n_jobs_forward": 0})


def test_option_of_another_solver_is_still_an_error():
    problem, y, x = _projection()
    layer = CvxpyLayer(problem, [y], [x], solver="CLARABEL")
    with pytest.raises(ValueError, match="acceleration_lookback.*CLARABEL"):
        layer(torch.ones(3), solver_args={"acceleration_lookback": 0})
