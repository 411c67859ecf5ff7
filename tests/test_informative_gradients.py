"""gradient="lpgd" and gradient="smoothed": informative where the implicit gradient is zero,
equal to it in the limit (checked against finite differences), validated, in every adapter."""

import cvxpy as cp
import numpy as np
import pytest
import torch

from cvxlayers import LayerCore
from cvxlayers.torch import CvxpyLayer

N = 5
COST = np.array([0.3, -0.1, 0.5, 0.2, 0.05])
TARGET = np.array([0.0, 0.0, 1.0, 1.0, 0.0])  # the vertex that costs 3 and 4 would pick
TIGHT_SCS = {"eps_abs": 1e-10, "eps_rel": 1e-10, "max_iters": 100_000}


def selection_lp():
    """Choose 2 of 5 items at least cost: an LP whose solution is a vertex, so that
    ∂x*/∂c = 0 around COST."""
    c, x = cp.Parameter(N), cp.Variable(N)
    return cp.Problem(cp.Minimize(c @ x), [x >= 0, x <= 1, cp.sum(x) == 2]), c, x


def simplex_qp():
    """The projection-like QP min ½‖x‖² + qᵀx on the simplex: smooth at generic q."""
    q, x = cp.Parameter(N), cp.Variable(N)
    return cp.Problem(cp.Minimize(0.5 * cp.sum_squares(x) + q @ x),
                      [x >= 0, cp.sum(x) == 1]), q, x


def lp_gradient(solver, gradient, gradient_args=None, solver_args=None):
    problem, c, x = selection_lp()
    layer = CvxpyLayer(problem, [c], [x], solver=solver, gradient=gradient,
                       gradient_args=gradient_args)
    cost = torch.tensor(COST, requires_grad=True)
    out, = layer(cost, solver_args=solver_args)
    ((out - torch.tensor(TARGET)) ** 2).sum().backward()
    return out.detach().numpy(), cost.grad.numpy()


@pytest.mark.parametrize("solver", ["SCS", "QP"])
def test_lpgd_is_informative_where_implicit_is_zero(solver):
    x_implicit, g_implicit = lp_gradient(solver, "implicit")
    x_lpgd, g_lpgd = lp_gradient(solver, "lpgd")
    np.testing.assert_allclose(x_implicit, [0, 1, 0, 0, 1], atol=1e-5)
    np.testing.assert_allclose(x_lpgd, x_implicit, atol=1e-6)  # the forward is unchanged
    assert np.abs(g_implicit).max() < 1e-4
    # τ = 1 tilts c by −τ·∂L/∂x = −2(x − target): items 3, 4 become cheaper than 2, 5, and
    # the difference quotient of the two perturbed vertices is (x₊ − x₋)/2.
    np.testing.assert_allclose(g_lpgd, [0, -0.5, 0.5, 0.5, -0.5], atol=1e-3)
    # A descent step along −∇c moves the LP to the target vertex.
    problem, c, x = selection_lp()
    c.value = COST - 1.0 * g_lpgd
    problem.solve(solver=cp.CLARABEL)
    np.testing.assert_allclose(x.value, TARGET, atol=1e-6)


def test_cvxpylayers_lpgd_spelling_fills_in_defaults():
    """mode="lpgd" without derivative_kwargs used to fail with diffcp's TypeError."""
    _, g_mode = lp_gradient("SCS", "implicit", solver_args={"mode": "lpgd"})
    _, g_default = lp_gradient("SCS", "lpgd")
    np.testing.assert_allclose(g_mode, g_default, atol=1e-6)
    _, g_tau = lp_gradient("SCS", "implicit", solver_args={
        "mode": "lpgd", "derivative_kwargs": {"tau": 0.1, "rho": 0.0}})
    _, g_args = lp_gradient("SCS", "lpgd", {"tau": 0.1})
    np.testing.assert_allclose(g_tau, g_args, atol=1e-6)
    # A call's solver_args choose the gradient too, overriding the layer's.
    _, g_call = lp_gradient("QP", "implicit", solver_args={"gradient": "lpgd"})
    np.testing.assert_allclose(g_call, g_default, atol=1e-3)


def finite_difference(problem, q, x, q0, w, solve_kwargs, eps=1e-5):
    """(d/dt) wᵀx*(q0 + t v) by central differences for each unit vector v."""
    grad = np.zeros(N)
    for i in range(N):
        values = []
        for sign in (1, -1):
            q.value = q0 + sign * eps * np.eye(N)[i]
            problem.solve(**solve_kwargs)
            values.append(w @ x.value)
        grad[i] = (values[0] - values[1]) / (2 * eps)
    return grad


@pytest.fixture(scope="module")
def smooth_case():
    rng = np.random.default_rng(0)
    q0, w = rng.normal(size=N), rng.normal(size=N)
    problem, q, x = simplex_qp()
    fd = finite_difference(problem, q, x, q0, w, {"solver": cp.CLARABEL,
                                                  "tol_gap_abs": 1e-12, "tol_feas": 1e-12,
                                                  "tol_gap_rel": 1e-12})
    return q0, w, fd


def qp_gradient(solver, gradient, gradient_args, q0, w, solver_args=None):
    problem, q, x = simplex_qp()
    layer = CvxpyLayer(problem, [q], [x], solver=solver, gradient=gradient,
                       gradient_args=gradient_args)
    qt = torch.tensor(q0, requires_grad=True)
    out, = layer(qt, solver_args=solver_args)
    (out * torch.tensor(w)).sum().backward()
    return qt.grad.numpy()


@pytest.mark.parametrize("solver,solver_args", [("SCS", TIGHT_SCS), ("QP", None)])
def test_lpgd_tends_to_the_implicit_gradient(smooth_case, solver, solver_args):
    q0, w, fd = smooth_case
    implicit = qp_gradient(solver, "implicit", None, q0, w, solver_args)
    np.testing.assert_allclose(implicit, fd, atol=1e-5)
    errors = [np.abs(qp_gradient(solver, "lpgd", {"tau": tau}, q0, w, solver_args) - fd).max()
              for tau in (1.0, 1e-5)]
    assert errors[0] > 1e-2     # a large tilt changes the active set: informative, not exact
    assert errors[1] < 1e-5


def test_lpgd_one_sided_tends_to_the_implicit_gradient(smooth_case):
    q0, w, fd = smooth_case
    for side in ("lpgd_right", "lpgd_left"):
        g = qp_gradient("QP", "implicit", None, q0, w,
                        {"mode": side, "derivative_kwargs": {"tau": 1e-6}})
        np.testing.assert_allclose(g, fd, atol=1e-4)


def test_smoothed_tends_to_the_implicit_gradient(smooth_case):
    q0, w, fd = smooth_case
    errors = [np.abs(qp_gradient("QP", "smoothed", {"mu": mu}, q0, w) - fd).max()
              for mu in (1e-2, 1e-4, 1e-6, 1e-8, 1e-10)]
    assert errors[0] > 1e-1
    # Linear in μ, with a large constant here: x₁* = 0.015 is inactive but close to its
    # bound, so its multiplier on the path, λ₁ ≈ μ/0.015, couples it for μ up to ~1e-4.
    assert all(a > 4 * b for a, b in zip(errors, errors[1:]))
    assert errors[-1] < 1e-6


def near_active_layer(gradient, gradient_args=None, framework="torch"):
    """x*(a, h) = min(a, h) for min ½(x − a)² s.t. x ≤ h: at a = 0.99, h = 1 the constraint
    is inactive (slack 0.01), so ∂x*/∂h = 0 exactly."""
    a, h, x = cp.Parameter(), cp.Parameter(), cp.Variable()
    problem = cp.Problem(cp.Minimize(0.5 * cp.square(x - a)), [x <= h])
    module = {"torch": "cvxlayers.torch", "tf": "cvxlayers.tensorflow",
              "jax": "cvxlayers.jax"}[framework]
    Layer = __import__(module, fromlist=["CvxpyLayer"]).CvxpyLayer
    return Layer(problem, [a, h], [x], solver="QP", gradient=gradient,
                 gradient_args=gradient_args)


def near_active_gradients(gradient, gradient_args=None):
    layer = near_active_layer(gradient, gradient_args)
    a = torch.tensor(0.99, dtype=torch.float64, requires_grad=True)
    h = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    x, = layer(a, h)
    x.backward()
    return float(x.detach()), float(a.grad), float(h.grad)


def test_smoothed_passes_gradient_through_a_constraint_near_activity():
    x, da, dh = near_active_gradients("implicit")
    assert x == pytest.approx(0.99, abs=1e-8) and da == pytest.approx(1.0, abs=1e-7)
    assert abs(dh) < 1e-8
    x, da_mu, dh_mu = near_active_gradients("smoothed", {"mu": 1e-3})
    assert x == pytest.approx(0.99, abs=1e-8)  # the forward is the exact solution
    # On the central path x = a − λ with λ(h − x) = μ: for μ = 1e-3, slack ≈ 0.0095 and
    # ∂x/∂h = λ/(λ + slack) ≈ 0.095 (closed form below), ∂x/∂a = 1 − ∂x/∂h.
    lam = (np.sqrt(0.01 ** 2 + 4e-3) - 0.01) / 2   # λ² + 0.01λ − μ = 0
    slack = 1e-3 / lam
    assert dh_mu == pytest.approx(lam / (lam + slack), rel=1e-6)
    assert da_mu + dh_mu == pytest.approx(1.0, abs=1e-8)


def test_tensorflow_and_jax_take_the_option():
    tf = pytest.importorskip("tensorflow")
    jax = pytest.importorskip("jax")
    _, da_torch, dh_torch = near_active_gradients("smoothed", {"mu": 1e-3})
    layer = near_active_layer("smoothed", {"mu": 1e-3}, "tf")
    a, h = tf.Variable(0.99, dtype=tf.float64), tf.Variable(1.0, dtype=tf.float64)
    with tf.GradientTape() as tape:
        x, = layer(a, h)
    da, dh = tape.gradient(x, [a, h])
    np.testing.assert_allclose([da.numpy(), dh.numpy()], [da_torch, dh_torch], rtol=1e-8)
    problem, c, x = selection_lp()
    saved = type(layer)(problem, [c], [x], gradient="lpgd", gradient_args={"tau": 0.5})
    clone = type(layer).from_config(saved.get_config())  # model.save keeps the choice
    assert clone.core.gradient == saved.core.gradient
    assert clone.core.gradient.args == {"tau": 0.5, "rho": 0.0}

    with jax.enable_x64(True):
        problem, c, x = selection_lp()
        from cvxlayers.jax import CvxpyLayer as JaxLayer

        layer = JaxLayer(problem, [c], [x], gradient="lpgd")

        def loss(cost):
            out, = layer(cost)
            return ((out - TARGET) ** 2).sum()

        g_jit = jax.jit(jax.grad(loss))(jax.numpy.asarray(COST))
    _, g_torch = lp_gradient("SCS", "lpgd")
    np.testing.assert_allclose(np.asarray(g_jit), g_torch, atol=1e-6)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"gradient": "lgpd"}, ValueError, r"`gradient` must be one of .*received 'lgpd'"),
    ({"gradient": "lpgd", "gradient_args": {"tau": -1}}, ValueError,
     r"gradient_args\['tau'\] must be a finite number > 0; received -1"),
    ({"gradient": "lpgd", "gradient_args": {"tau": "big"}}, ValueError, r"received 'big'"),
    ({"gradient": "lpgd", "gradient_args": {"rho": float("nan")}}, ValueError,
     r"gradient_args\['rho'\] must be a finite number ≥ 0; received nan"),
    ({"gradient": "smoothed", "gradient_args": {"mu": 0}, "solver": "QP"}, ValueError,
     r"gradient_args\['mu'\] must be a finite number > 0; received 0"),
    ({"gradient": "smoothed", "gradient_args": {"tau": 1.0}, "solver": "QP"}, ValueError,
     r"has \['tau'\], which gradient='smoothed' does not take; it takes \['mu'\]"),
    ({"gradient": "lpgd", "gradient_args": [1.0]}, TypeError,
     r"`gradient_args` must be a dict.*received list \[1.0\]"),
    ({"gradient": "smoothed"}, ValueError,
     r"gradient='smoothed' is not available with solver SCS.*solver='QP'"),
    ({"gradient": "lpgd", "gradient_args": {"rho": 0.5}, "solver": "ECOS"}, ValueError,
     r"gradient_args\['rho'\]=0.5 makes LPGD's perturbed problems quadratic, which ECOS"),
    ({"gradient": "smoothed", "mode": "lpgd", "solver": "QP"}, ValueError,
     r"mode='lpgd' asks for LPGD, but the gradient is 'smoothed'"),
])
def test_validation_errors(kwargs, error, match):
    problem, c, x = selection_lp()
    with pytest.raises(error, match=match):
        LayerCore(problem, [c], [x], **kwargs)


def test_call_validation_errors():
    problem, c, x = selection_lp()
    layer = CvxpyLayer(problem, [c], [x])
    with pytest.raises(ValueError, match=r"solver_args\['gradient'\]` must be one of .*'exact'"):
        layer(torch.tensor(COST), solver_args={"gradient": "exact"})
    with pytest.raises(ValueError, match=r"solver_args\['derivative_kwargs'\]\['tau'\] must "
                                         r"be a finite number > 0; received 0"):
        layer(torch.tensor(COST), solver_args={"mode": "lpgd",
                                               "derivative_kwargs": {"tau": 0}})


def test_lpgd_with_a_parametrized_quadratic_objective():
    """LPGD's ∇P on the QP backend tends to the implicit one; SCS refuses it clearly."""
    P, q, x = cp.Parameter((3, 3), PSD=True), cp.Parameter(3), cp.Variable(3)
    problem = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, P) + q @ x), [x >= -0.2])
    M = np.random.default_rng(1).normal(size=(3, 3))
    P_value, q_value = M @ M.T + np.eye(3), np.array([1.0, -1.0, 0.5])

    def gradients(solver, gradient, gradient_args=None):
        layer = CvxpyLayer(problem, [P, q], [x], solver=solver, gradient=gradient,
                           gradient_args=gradient_args)
        Pt, qt = torch.tensor(P_value, requires_grad=True), torch.tensor(q_value,
                                                                         requires_grad=True)
        out, = layer(Pt, qt)
        (out * torch.tensor([1.0, 2.0, -1.0])).sum().backward()
        return Pt.grad.numpy(), qt.grad.numpy()

    dP, dq = gradients("QP", "implicit")
    dP_lpgd, dq_lpgd = gradients("QP", "lpgd", {"tau": 1e-6})
    assert np.abs(dP).max() > 1e-2
    np.testing.assert_allclose(dP_lpgd, dP, atol=1e-5)
    np.testing.assert_allclose(dq_lpgd, dq, atol=1e-5)
    with pytest.raises(ValueError, match="gradient='lpgd' does not differentiate a quadratic "
                                         "objective with SCS.*solver='QP'"):
        gradients("SCS", "lpgd")
