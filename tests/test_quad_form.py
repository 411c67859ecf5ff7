"""cp.quad_form(x, P) with a parameter P in the objective (issue 10, part 3).

DPP under CVXPY's quad_form relaxation: the QP backend puts P in its KKT system, SCS and
Clarabel take P as a quadratic objective and are differentiated by cvxlayers.backends.cone_qp.
"""

import warnings

import cvxpy as cp
import numpy as np
import pytest
import torch
from zoo import TIGHT

from cvxlayers import NotDPPError, ProblemError
from cvxlayers.backends.cone_qp import ConeQPPlan
from cvxlayers.backends.embedding import EmbeddingPlan
from cvxlayers.compiler import compile_problem
from cvxlayers.torch import CvxpyLayer

SOLVERS = ["QP", "SCS", "CLARABEL"]
ARGS = {"QP": {"tol": 1e-11}, **TIGHT}
N = 4


def _psd(rng, n=N, shift=0.5):
    M = rng.standard_normal((n, n))
    return M @ M.T / n + shift * np.eye(n)


def _box_qp(make_P=lambda: cp.Parameter((N, N), PSD=True)):
    """½xᵀPx + qᵀx over a box and a hyperplane, the quadratic form's matrix a parameter."""
    x, q = cp.Variable(N), cp.Parameter(N)
    P = make_P()
    P_param = P if isinstance(P, cp.Parameter) else P.parameters()[0]
    problem = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, P) + q @ x),
                         [x >= -1, x <= 1, cp.sum(x) == 0.5])
    return problem, P_param, q, x


def _reference(problem, assignments, x):
    for param, value in assignments:
        param.value = value
    with warnings.catch_warnings():  # "may be inaccurate" on a sphere at these tolerances
        warnings.simplefilter("ignore", UserWarning)
        problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10,
                      tol_feas=1e-10)
    return x.value


def _values(rng, batch=2):
    return ([_psd(rng) for _ in range(batch)], [2 * rng.standard_normal(N) for _ in range(batch)])


# --- compiles, and only where it is DPP ------------------------------------------------

@pytest.mark.parametrize("form", ["PSD", "symmetric+assume_PSD", "plain+psd_wrap", "PSD+I"])
def test_parametric_quad_form_compiles_and_matches_cvxpy(form):
    makers = {
        "PSD": lambda: cp.Parameter((N, N), PSD=True),
        "symmetric+assume_PSD": lambda: cp.Parameter((N, N), symmetric=True),
        "plain+psd_wrap": lambda: cp.psd_wrap(cp.Parameter((N, N))),
        "PSD+I": lambda: cp.Parameter((N, N), PSD=True) + np.eye(N),
    }
    x, q = cp.Variable(N), cp.Parameter(N)
    P_expr = makers[form]()
    P = P_expr if isinstance(P_expr, cp.Parameter) else P_expr.parameters()[0]
    quad = (cp.quad_form(x, P_expr, assume_PSD=True) if form.startswith("symmetric")
            else cp.quad_form(x, P_expr))
    problem = cp.Problem(cp.Minimize(0.5 * quad + q @ x), [x >= -1, x <= 1])
    assert not problem.is_dcp(dpp=True)
    rng = np.random.default_rng(0)
    Ps, qs = _values(rng)
    refs = [_reference(problem, [(P, Pv), (q, qv)], x) for Pv, qv in zip(Ps, qs)]
    for solver in SOLVERS:
        layer = CvxpyLayer(problem, [P, q], [x], solver=solver)
        out, = layer(torch.tensor(np.stack(Ps)), torch.tensor(np.stack(qs)),
                     solver_args=ARGS[solver])
        np.testing.assert_allclose(out.numpy(), np.stack(refs), atol=1e-6, err_msg=solver)


def test_psd_wrap_of_a_plain_parameter_uses_its_symmetric_part():
    problem, P, q, x = _box_qp(lambda: cp.psd_wrap(cp.Parameter((N, N))))
    rng = np.random.default_rng(1)
    Pv, qv = _psd(rng), rng.standard_normal(N)
    skew = rng.standard_normal((N, N))
    skew = skew - skew.T
    ref = _reference(problem, [(P, Pv), (q, qv)], x)
    for solver in SOLVERS:
        layer = CvxpyLayer(problem, [P, q], [x], solver=solver)
        Pt = torch.tensor(Pv + skew, requires_grad=True)
        out, = layer(Pt, torch.tensor(qv), solver_args=ARGS[solver])
        np.testing.assert_allclose(out.detach().numpy(), ref, atol=1e-6, err_msg=solver)
        grad, = torch.autograd.grad(out @ torch.arange(1.0, N + 1, dtype=torch.float64), Pt)
        np.testing.assert_allclose(grad, grad.T, atol=1e-12, err_msg=solver)


def test_quad_form_with_a_parameter_in_a_constraint_stays_not_dpp():
    x, c = cp.Variable(N), cp.Parameter(N)
    P = cp.Parameter((N, N), PSD=True)
    problem = cp.Problem(cp.Minimize(c @ x), [cp.quad_form(x, P) <= 1])
    for solver in SOLVERS:
        with pytest.raises(NotDPPError, match="not in a constraint.*sum_squares"):
            CvxpyLayer(problem, [P, c], [x], solver=solver)


def test_a_product_of_parameters_times_a_quad_form_stays_not_dpp():
    x, q = cp.Variable(N), cp.Parameter(N)
    P, gamma = cp.Parameter((N, N), PSD=True), cp.Parameter(nonneg=True)
    problem = cp.Problem(cp.Minimize(gamma * cp.quad_form(x, P) + q @ x), [x >= -1])
    with pytest.raises(NotDPPError, match="not DPP"):
        CvxpyLayer(problem, [P, gamma, q], [x], solver="QP")


def test_ecos_names_the_solvers_that_take_P():
    problem, P, q, x = _box_qp()
    with pytest.raises(ProblemError, match=r"ECOS .*linear objectives only.*'SCS', "
                                           r"'CLARABEL' or 'QP'"):
        CvxpyLayer(problem, [P, q], [x], solver="ECOS")
    layer = CvxpyLayer(problem, [P, q], [x])  # SCS by default; ECOS per call still refuses
    with pytest.raises(ProblemError, match="ECOS"):
        layer(torch.tensor(_psd(np.random.default_rng(0))), torch.zeros(N),
              solver_args={"solver": "ECOS"})


def test_lpgd_mode_is_refused_for_a_quadratic_objective():
    problem, P, q, x = _box_qp()
    layer = CvxpyLayer(problem, [P, q], [x], solver="SCS")
    Pt = torch.tensor(_psd(np.random.default_rng(0)), requires_grad=True)
    with pytest.raises(ValueError, match="'lpgd' does not differentiate a quadratic"):
        layer(Pt, torch.zeros(N), solver_args={"mode": "lpgd"})


def test_concave_quad_form_with_an_nsd_parameter_in_a_maximization():
    x, q = cp.Variable(N), cp.Parameter(N)
    N_ = cp.Parameter((N, N), NSD=True)
    problem = cp.Problem(cp.Maximize(0.5 * cp.quad_form(x, N_) + q @ x), [x >= -1, x <= 1])
    rng = np.random.default_rng(2)
    Nv, qv = -_psd(rng), rng.standard_normal(N)
    ref = _reference(problem, [(N_, Nv), (q, qv)], x)
    for solver in SOLVERS:
        out, = CvxpyLayer(problem, [N_, q], [x], solver=solver)(
            torch.tensor(Nv), torch.tensor(qv), solver_args=ARGS[solver])
        np.testing.assert_allclose(out.numpy(), ref, atol=1e-6, err_msg=solver)


# --- gradients ---------------------------------------------------------------------------

@pytest.mark.parametrize("solver", SOLVERS)
def test_gradcheck_with_respect_to_P_and_q(solver):
    problem, P, q, x = _box_qp()
    rng = np.random.default_rng(3)
    Ps, qs = _values(rng)
    params = (torch.tensor(np.stack(Ps), requires_grad=True),
              torch.tensor(np.stack(qs), requires_grad=True))
    weights = torch.tensor(rng.standard_normal((2, N)))
    layer = CvxpyLayer(problem, [P, q], [x], solver=solver)

    def f(P_, q_):
        return (layer(P_, q_, solver_args=ARGS[solver])[0] * weights).sum()

    assert torch.autograd.gradcheck(f, params, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.filterwarnings("ignore:CLARABEL returned an inaccurate")
def test_second_order_cone_gradcheck_and_iterative_modes():
    """SCS in LSQR mode passes gradcheck; Clarabel in LSMR mode and SCS in dense mode give
    the same gradient. (Clarabel's solutions on the sphere are too inexact at 1e-10 for
    finite differences of step 1e-6, so it is checked against SCS instead.)"""
    x, q = cp.Variable(N), cp.Parameter(N)
    P = cp.Parameter((N, N), PSD=True)
    problem = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, P) + q @ x),
                         [cp.norm(x, 2) <= 1, cp.sum(x) == 0.3])
    rng = np.random.default_rng(4)
    Pv, qv = _psd(rng), 3 * rng.standard_normal(N)
    ref = _reference(problem, [(P, Pv), (q, qv)], x)
    weights = torch.tensor(rng.standard_normal(N))
    scs = CvxpyLayer(problem, [P, q], [x], solver="SCS")
    params = (torch.tensor(Pv, requires_grad=True), torch.tensor(qv, requires_grad=True))
    lsqr = {**ARGS["SCS"], "mode": "lsqr"}
    out, = scs(*params, solver_args=lsqr)
    np.testing.assert_allclose(out.detach().numpy(), ref, atol=1e-6)
    assert torch.autograd.gradcheck(lambda *p: scs(*p, solver_args=lsqr)[0] @ weights,
                                    params, eps=1e-6, atol=1e-5, rtol=1e-4)
    clarabel = CvxpyLayer(problem, [P, q], [x], solver="CLARABEL")
    grads = [torch.autograd.grad(layer(*params, solver_args=args)[0] @ weights, params)
             for layer, args in ((scs, ARGS["SCS"]),
                                 (clarabel, {**ARGS["CLARABEL"], "mode": "lsmr"}))]
    for g_scs, g_clarabel in zip(*grads):
        np.testing.assert_allclose(g_clarabel, g_scs, atol=1e-6)


def test_gradient_with_respect_to_P_is_symmetric_and_agrees_across_solvers():
    """Symmetric parameters are read as (θ + θᵀ)/2, so ∇θ is symmetric; and the KKT adjoint
    (QP) and the residual-map adjoint (SCS, Clarabel) give the same gradient, which matches
    a central difference along a symmetric direction."""
    problem, P, q, x = _box_qp()
    rng = np.random.default_rng(5)
    Pv, qv = _psd(rng), 2 * rng.standard_normal(N)
    weights = torch.tensor(rng.standard_normal(N))
    grads = {}
    for solver in SOLVERS:
        layer = CvxpyLayer(problem, [P, q], [x], solver=solver)
        Pt = torch.tensor(Pv, requires_grad=True)
        value = layer(Pt, torch.tensor(qv), solver_args=ARGS[solver])[0] @ weights
        grads[solver], = torch.autograd.grad(value, Pt)
        np.testing.assert_allclose(grads[solver], grads[solver].T, atol=1e-12)
    for solver in ("SCS", "CLARABEL"):
        np.testing.assert_allclose(grads[solver], grads["QP"], atol=1e-6, err_msg=solver)
    direction = rng.standard_normal((N, N))
    direction = direction + direction.T
    h = 1e-5
    objective = [(weights.numpy() @ _reference(problem, [(P, Pv + s * h * direction),
                                                         (q, qv)], x)) for s in (1, -1)]
    numeric = (objective[0] - objective[1]) / (2 * h)
    assert float((grads["QP"] * torch.tensor(direction)).sum()) == pytest.approx(
        numeric, abs=1e-5)


# --- the cone-QP derivative on its own ---------------------------------------------------

def _plan_and_solution(problem, parameters, values, variables):
    """The quadratic layout of a problem, one element's data row, and its Clarabel solution."""
    from diffcp import cone_program

    compiled = compile_problem(problem, parameters, variables, quad_obj=True)
    layout, pmap = compiled.layout, compiled.parameter_map
    row = pmap.forward(pmap.features(values, [False] * len(values), 1))[0]
    plan = ConeQPPlan(layout)

    def solve(data_row):
        A, b, c, _ = plan.split(data_row)
        result = cone_program.solve_internal(
            A, b, c, layout.cone_dict, solve_method="Clarabel", P=plan.solver_P(data_row),
            tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
        return result["x"], result["y"], result["s"]

    return plan, row, solve


def test_cone_qp_derivative_matches_resolving_and_its_adjoint_passes_the_dot_product_test():
    problem, P, q, x = _box_qp()
    rng = np.random.default_rng(6)
    plan, row, solve = _plan_and_solution(problem, [P, q], [_psd(rng), rng.standard_normal(N)],
                                          [x])
    lin = plan.linearize(row, *solve(row), mode="dense")
    d_row = rng.standard_normal(row.size)
    # A symmetric perturbation of P: the derivative is of the symmetric program.
    a_end = plan.nnz + plan.m + plan.n
    d_P = np.zeros((plan.n, plan.n))
    d_P[plan.p_rows, plan.p_cols] = plan.layout.split(d_row)[3]
    d_row[a_end:] = (d_P + d_P.T)[plan.p_rows, plan.p_cols] / 2
    dx, dy = plan.derivative(lin, d_row)
    h = 1e-6
    (x_p, y_p, _), (x_m, y_m, _) = solve(row + h * d_row), solve(row - h * d_row)
    np.testing.assert_allclose(dx, (x_p - x_m) / (2 * h), atol=1e-5)
    np.testing.assert_allclose(dy, (y_p - y_m) / (2 * h), atol=1e-5)
    gx, gy = rng.standard_normal(plan.n), rng.standard_normal(plan.m)
    for mode in ("dense", "lsqr", "lsmr"):
        lin_mode = plan.linearize(row, *solve(row), mode=mode)
        adjoint = plan.adjoint(lin_mode, gx, gy, mode)
        assert adjoint @ d_row == pytest.approx(gx @ dx + gy @ dy, rel=1e-6), mode


def test_cone_qp_adjoint_equals_the_self_dual_embeddings_for_an_lp():
    """With P = 0 the residual-map derivative and diffcp's embedding derivative are the
    same solution map's, so their adjoints agree."""
    x, c, b = cp.Variable(3), cp.Parameter(3), cp.Parameter(2)
    A = np.array([[1.0, 2.0, 0.5], [0.0, 1.0, 1.0]])
    problem = cp.Problem(cp.Minimize(c @ x), [A @ x <= b, x >= 0, cp.sum(x) <= 3])
    rng = np.random.default_rng(7)
    values = [-np.array([1.0, 2.0, 1.5]), np.array([2.0, 1.5])]
    plan, row, solve = _plan_and_solution(problem, [c, b], values, [x])
    x_, y_, s_ = solve(row)
    linear = compile_problem(problem, [c, b], [x], quad_obj=False)
    emb = EmbeddingPlan(linear.layout)
    lin_row = row[:plan.nnz + plan.m + plan.n]
    assert linear.layout.nnz == plan.nnz and linear.layout.m == plan.m
    gx, gy = rng.standard_normal(plan.n), rng.standard_normal(plan.m)
    ours = plan.adjoint(plan.linearize(row, x_, y_, s_, "dense"), gx, gy, "dense")
    theirs = emb.adjoint(emb.linearize(lin_row, x_, y_, s_, "dense"), gx, gy, "dense")
    np.testing.assert_allclose(ours[:lin_row.size], theirs, atol=1e-7)


# --- OptNet: learn Q ---------------------------------------------------------------------

def test_optnet_style_learning_of_Q_recovers_the_targets():
    """Learn Q = LLᵀ + εI of a QP layer from solutions produced by a hidden Q."""
    torch.manual_seed(0)
    rng = np.random.default_rng(8)
    n, batch = 3, 16
    x, q = cp.Variable(n), cp.Parameter(n)
    Q = cp.Parameter((n, n), PSD=True)
    problem = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, Q) + q @ x), [x >= -1, x <= 1])
    layer = CvxpyLayer(problem, [Q, q], [x], solver="QP")
    hidden = torch.tensor(_psd(rng, n, shift=0.3))
    qs = torch.tensor(rng.standard_normal((batch, n)))
    with torch.no_grad():
        targets, = layer(hidden, qs)
    L = torch.eye(n, dtype=torch.float64).requires_grad_()
    optimizer = torch.optim.Adam([L], lr=0.05)

    def loss_now():
        Q_value = L @ L.T + 1e-3 * torch.eye(n, dtype=torch.float64)
        return ((layer(Q_value, qs)[0] - targets) ** 2).mean()

    initial = loss_now().item()
    for _ in range(150):
        optimizer.zero_grad()
        loss = loss_now()
        loss.backward()
        optimizer.step()
    final = loss_now().item()
    assert final < 1e-2 * initial
    assert final < 1e-4
