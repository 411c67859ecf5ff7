"""Bad input at construction and at call time gets a clear error that names the culprit;
failed solves say which batch elements failed and why."""

import warnings

import cvxpy as cp
import numpy as np
import pytest
import torch

import cvxlayers
from cvxlayers import (
    NotDCPError,
    NotDGPError,
    NotDPPError,
    ParameterError,
    ParameterTypeError,
    ProblemError,
    SolverError,
)
from cvxlayers.torch import CvxpyLayer


def simple():
    x = cp.Variable(3, name="x")
    A = cp.Parameter((2, 3), name="A")
    b = cp.Parameter(2, name="b")
    problem = cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b) + cp.sum_squares(x)), [x >= -1])
    return problem, A, b, x


# --- construction ---------------------------------------------------------------------

def test_not_dcp():
    x, p = cp.Variable(2), cp.Parameter(2)
    problem = cp.Problem(cp.Maximize(cp.sum_squares(x - p)), [x <= 1])
    with pytest.raises(NotDCPError, match="not DCP"):
        CvxpyLayer(problem, [p], [x])


def test_not_dpp_names_a_fix():
    x, a, b = cp.Variable(2), cp.Parameter(pos=True), cp.Parameter(pos=True)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(a * b * x - 1)))
    with pytest.raises(NotDPPError, match="not DPP.*new parameter"):
        CvxpyLayer(problem, [a, b], [x])


def test_dgp_problem_without_gp_flag_suggests_it():
    x, a = cp.Variable(pos=True), cp.Parameter(pos=True)
    problem = cp.Problem(cp.Minimize(x + a / x))
    with pytest.raises(NotDCPError, match="gp=True"):
        CvxpyLayer(problem, [a], [x])


def test_gp_flag_on_non_dgp_problem():
    problem, A, b, x = simple()
    with pytest.raises(NotDGPError, match="not DGP"):
        CvxpyLayer(problem, [A, b], [x], gp=True)


def test_parameters_must_be_exactly_the_problems():
    problem, A, b, x = simple()
    with pytest.raises(ProblemError, match="in the problem but not listed: `b`"):
        CvxpyLayer(problem, [A], [x])
    stranger = cp.Parameter(2, name="stranger")
    with pytest.raises(ProblemError, match="not in the problem: `stranger`"):
        CvxpyLayer(problem, [A, b, stranger], [x])


def test_variables_must_belong_to_the_problem():
    problem, A, b, x = simple()
    with pytest.raises(ProblemError, match="`y`.*does not belong"):
        CvxpyLayer(problem, [A, b], [cp.Variable(2, name="y")])


def test_unknown_solver_lists_available():
    problem, A, b, x = simple()
    with pytest.raises(ValueError, match="Unknown solver 'GUROBI'.*SCS, ECOS, CLARABEL"):
        CvxpyLayer(problem, [A, b], [x], solver="GUROBI")


def test_cvxpy_solver_names_accepted():
    problem, A, b, x = simple()
    for name in (cp.SCS, cp.ECOS, cp.CLARABEL, "clarabel"):
        CvxpyLayer(problem, [A, b], [x], solver=name)


def test_ecos_rejects_psd_cone_at_construction():
    X, C = cp.Variable((2, 2), symmetric=True), cp.Parameter((2, 2), symmetric=True)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(X - C)), [X >> 0])
    with pytest.raises(ProblemError, match="ECOS does not support the positive semidefinite"):
        CvxpyLayer(problem, [C], [X], solver="ECOS")


def test_bad_options():
    problem, A, b, x = simple()
    with pytest.raises(ValueError, match="n_jobs"):
        CvxpyLayer(problem, [A, b], [x], n_jobs=0)
    with pytest.raises(ValueError, match="mode"):
        CvxpyLayer(problem, [A, b], [x], mode="magic")
    with pytest.raises(ValueError, match="on_failure"):
        CvxpyLayer(problem, [A, b], [x], on_failure="ignore")
    with pytest.raises(TypeError, match="solver_args"):
        CvxpyLayer(problem, [A, b], [x], solver_args=["eps", 1e-8])


@pytest.mark.parametrize("solver, option", [("SCS", "epsx"), ("ECOS", "eps_abs"),
                                            ("CLARABEL", "tolerance")])
def test_an_option_the_solver_does_not_take_names_it(solver, option):
    problem, A, b, x = simple()
    layer = CvxpyLayer(problem, [A, b], [x], solver=solver)
    with pytest.raises(ValueError, match=rf"\['{option}'\].*{solver} does not take"):
        layer(torch.randn(2, 3), torch.randn(2), solver_args={option: 1e-6})


def test_positional_solver_name_in_gp_slot():
    # cvxpylayers 1.2 takes the solver fourth; ours takes gp there.
    problem, A, b, x = simple()
    with pytest.raises(TypeError, match=r"received 'ECOS'.*solver='ECOS'"):
        CvxpyLayer(problem, [A, b], [x], "ECOS")


def test_construction_solver_args_are_defaults_a_call_overrides():
    problem, A, b, x = simple()
    layer = CvxpyLayer(problem, [A, b], [x], solver_args={"solver": "ECOS", "max_iters": 1})
    assert layer.core.solver == "ECOS"   # the layer's solver, checked and shown as such
    A_value, b_value = torch.randn(2, 3), torch.randn(2)
    with pytest.raises(SolverError):  # one ECOS iteration cannot converge
        layer(A_value, b_value)
    solved, = layer(A_value, b_value, solver_args={"max_iters": 100})
    reference, = CvxpyLayer(problem, [A, b], [x], solver="ECOS")(A_value, b_value)
    torch.testing.assert_close(solved, reference)


# --- call -----------------------------------------------------------------------------

@pytest.fixture
def layer():
    problem, A, b, x = simple()
    return CvxpyLayer(problem, [A, b], [x])


def test_wrong_number_of_parameters(layer):
    with pytest.raises(ParameterError, match="expects 2 parameter value.*received 1"):
        layer(torch.zeros(2, 3))


def test_wrong_shape_echoes_received(layer):
    with pytest.raises(ParameterError, match=r"`A`.*expects shape \(2, 3\).*received \(3, 2\)"):
        layer(torch.zeros(3, 2), torch.zeros(2))


def test_too_many_dimensions(layer):
    with pytest.raises(ParameterError, match=r"`b`.*at most 2 dimensions; received 3"):
        layer(torch.zeros(2, 3), torch.zeros(4, 5, 2))


def test_mismatched_batch_sizes(layer):
    with pytest.raises(ParameterError, match=r"share one batch size.*`A`.*: 4.*`b`.*: 5"):
        layer(torch.zeros(4, 2, 3), torch.zeros(5, 2))


@pytest.mark.parametrize("bad,kind", [(float("nan"), "NaN"), (float("inf"), "inf")])
def test_non_finite_values_name_the_element(layer, bad, kind):
    b = torch.zeros(3, 2)
    b[1, 0] = bad
    with pytest.raises(ParameterError, match=rf"`b`.*contains {kind}.*batch element\(s\) \[1\]"):
        layer(torch.zeros(3, 2, 3), b)


def test_complex_values(layer):
    with pytest.raises(ParameterTypeError, match="`A`.*complex"):
        layer(torch.zeros(2, 3, dtype=torch.complex128), torch.zeros(2))


def test_non_numeric_values(layer):
    with pytest.raises(ParameterTypeError, match="`b`.*real numeric"):
        layer(torch.zeros(2, 3), np.array(["a", "b"]))


def test_declared_sign_is_enforced():
    x, lam = cp.Variable(2), cp.Parameter(nonneg=True, name="lam")
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - 1) + lam * cp.norm1(x)))
    layer = CvxpyLayer(problem, [lam], [x])
    with pytest.raises(ParameterError, match="`lam`.*nonnegative"):
        layer(torch.tensor(-1.0))


def test_asymmetric_value_of_symmetric_parameter_is_read_as_its_symmetric_part():
    x = cp.Variable(2)
    S = cp.Parameter((2, 2), PSD=True, name="S")
    problem = cp.Problem(cp.Minimize((S @ np.array([1.0, 2.0])) @ x + cp.sum_squares(x)))
    layer = CvxpyLayer(problem, [S], [x])
    asymmetric = torch.tensor([[1.0, 0.8], [0.0, 1.0]], dtype=torch.float64)
    with pytest.warns(cvxlayers.ParameterWarning, match="`S`.*symmetric part"):
        got, = layer(asymmetric)
    with warnings.catch_warnings():
        warnings.simplefilter("error", cvxlayers.ParameterWarning)  # symmetric: no warning
        want, = layer((asymmetric + asymmetric.T) / 2)
    torch.testing.assert_close(got, want)
    # the closed form: x = -S_sym [1, 2] / 2
    torch.testing.assert_close(got, -torch.tensor([1.8, 2.4], dtype=torch.float64) / 2,
                               atol=1e-3, rtol=0)


def test_psd_is_enforced_on_the_symmetric_part():
    x = cp.Variable(2)
    S = cp.Parameter((2, 2), PSD=True, name="S")
    problem = cp.Problem(cp.Minimize((S @ np.ones(2)) @ x + cp.sum_squares(x)))
    layer = CvxpyLayer(problem, [S], [x])
    with pytest.raises(ParameterError, match="`S`.*positive semidefinite.*eigenvalue -1"):
        layer(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))


def test_positive_parameter_accepts_zero_in_dcp_but_not_in_dgp():
    x, lam = cp.Variable(2), cp.Parameter(pos=True, name="lam")
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - 1) + lam * cp.norm1(x)))
    layer = CvxpyLayer(problem, [lam], [x])
    x_zero, = layer(torch.tensor(0.0, dtype=torch.float64))   # a sweep from 0: the limit
    torch.testing.assert_close(x_zero, torch.ones(2, dtype=torch.float64), atol=1e-3, rtol=0)
    with pytest.raises(ParameterError, match="`lam`.*positive or zero.*-1.0"):
        layer(torch.tensor(-1.0))
    u, a = cp.Variable(pos=True), cp.Parameter(pos=True, name="a")
    gp_layer = CvxpyLayer(cp.Problem(cp.Minimize(u + a / u)), [a], [u], gp=True)
    with pytest.raises(ParameterError, match=r"`a`.*positive \(> 0\)"):
        gp_layer(torch.tensor(0.0))


def test_solver_args_must_be_a_dict(layer):
    with pytest.raises(TypeError, match="solver_args"):
        layer(torch.zeros(2, 3), torch.zeros(2), solver_args=[("eps", 1)])


# --- failed solves ----------------------------------------------------------------------

def infeasible_for_negative_b():
    x, b = cp.Variable(2), cp.Parameter(name="b")
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x)), [cp.sum(x) <= b, x >= 0.5])
    return problem, b, x


@pytest.mark.parametrize("solver", ["SCS", "ECOS", "CLARABEL"])
def test_infeasible_element_is_reported_by_index(solver):
    problem, b, x = infeasible_for_negative_b()
    layer = CvxpyLayer(problem, [b], [x], solver=solver)
    with pytest.raises(SolverError, match=r"element 2: infeasible") as info:
        layer(torch.tensor([2.0, 3.0, -1.0]))
    assert info.value.failed == [2]
    assert info.value.statuses[:2] == ["optimal", "optimal"]


def test_unbounded_element_is_reported():
    x, c = cp.Variable(), cp.Parameter(name="c")
    problem = cp.Problem(cp.Minimize(c * x), [x >= 0])
    layer = CvxpyLayer(problem, [c], [x], solver="CLARABEL")
    with pytest.raises(SolverError, match=r"element 1: unbounded"):
        layer(torch.tensor([1.0, -1.0]))


def test_warn_policy_keeps_the_other_elements():
    problem, b, x = infeasible_for_negative_b()
    layer = CvxpyLayer(problem, [b], [x], solver="CLARABEL", on_failure="warn")
    b_values = torch.tensor([2.0, -1.0, 3.0], dtype=torch.float64, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="element 1: infeasible"):
        x_star, = layer(b_values)
    assert torch.isnan(x_star[1]).all()
    np.testing.assert_allclose(x_star[[0, 2]].detach().numpy(), 0.5, atol=1e-6)
    x_star[[0, 2]].sum().backward()
    assert torch.isfinite(b_values.grad).all() and b_values.grad[1] == 0


def test_inaccurate_solves_warn_once_with_count():
    problem, A, b, x = simple()
    layer = CvxpyLayer(problem, [A, b], [x])
    rng = np.random.default_rng(0)
    with pytest.warns(RuntimeWarning, match=r"inaccurate solution for 3 of 3") as record:
        layer(torch.tensor(rng.standard_normal((3, 2, 3))), torch.tensor(rng.standard_normal((3, 2))),
              solver_args={"max_iters": 2, "eps_abs": 1e-12, "eps_rel": 1e-12})
    assert sum("inaccurate" in str(w.message) for w in record) == 1


def test_solver_error_is_exported():
    assert cvxlayers.SolverError is SolverError
