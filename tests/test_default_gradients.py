"""Gradients at the settings a user gets — no tolerances, no mode — for every solver.

Checked against closed forms (projections, whose Jacobians are known exactly) and against
central finite differences of a tight reference solve. Tests at tight tolerances cannot
see this class of bug: the dense LU of the embedding's (singular) derivative system was
accurate at eps = 1e-9 and off by O(1) at SCS's default 1e-4.
"""

import cvxpy as cp
import numpy as np
import pytest
import torch

from cvxlayers.torch import CvxpyLayer

SOLVERS = ["SCS", "CLARABEL", "ECOS", "QP"]
CONE_SOLVERS = ["SCS", "CLARABEL", "ECOS"]
KINK_MARGIN = 1e-2   # points this close to a kink of the projection are left out
TOLERANCE = 1e-3     # max entrywise Jacobian error at default settings


def _jacobian_rows(layer, Y):
    """The per-element Jacobians d x*(y_b) / d y_b, shape (B, n, n), by reverse mode."""
    y = torch.tensor(Y, requires_grad=True)
    x, = layer(y)
    rows = [torch.autograd.grad(x[:, i].sum(), y, retain_graph=True)[0] for i in range(Y.shape[1])]
    return torch.stack(rows, dim=1).numpy()


def _projection(n, upper):
    x, y = cp.Variable(n), cp.Parameter(n)
    constraints = [x >= 0] + ([x <= 1] if upper else [])
    return cp.Problem(cp.Minimize(cp.sum_squares(x - y)), constraints), y, x


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("upper", [False, True], ids=["x>=0", "0<=x<=1"])
def test_projection_jacobian_at_defaults(solver, upper):
    """x*(y) = clip(y): dx/dy = diag(0 < y (< 1)), for 512 random y of size 5."""
    problem, y, x = _projection(5, upper)
    layer = CvxpyLayer(problem, parameters=[y], variables=[x], solver=solver)
    Y = np.random.default_rng(0).standard_normal((512, 5))
    inside = (Y > 0) & ((Y < 1) if upper else True)
    far = (np.abs(Y) > KINK_MARGIN) & ((np.abs(Y - 1) > KINK_MARGIN) if upper else True)
    keep = far.all(axis=1)
    exact = np.stack([np.diag(d) for d in inside.astype(float)])
    error = np.abs(_jacobian_rows(layer, Y) - exact)[keep]
    assert keep.sum() > 400
    assert error.max() <= TOLERANCE, (solver, error.max(), int((error > 1e-2).sum()))


@pytest.mark.parametrize("mode", ["dense", "lsmr"])
def test_projection_jacobian_at_default_tolerances_in_every_mode(mode):
    """The explicit modes are right at SCS's default accuracy too (dense was off by ~1)."""
    problem, y, x = _projection(5, upper=False)
    layer = CvxpyLayer(problem, parameters=[y], variables=[x], mode=mode)
    Y = np.random.default_rng(1).standard_normal((128, 5))
    keep = (np.abs(Y) > KINK_MARGIN).all(axis=1)
    exact = np.stack([np.diag(d) for d in (Y > 0).astype(float)])
    assert np.abs(_jacobian_rows(layer, Y) - exact)[keep].max() <= TOLERANCE


@pytest.mark.parametrize("solver", CONE_SOLVERS)
def test_active_second_order_cone_jacobian_at_defaults(solver):
    """Projection onto the unit ball: for |y| > 1, x = y/|y| and dx/dy = (I - x xᵀ)/|y|."""
    n = 4
    x, y = cp.Variable(n), cp.Parameter(n)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - y)), [cp.norm(x, 2) <= 1])
    layer = CvxpyLayer(problem, parameters=[y], variables=[x], solver=solver)
    Y = 1.5 * np.random.default_rng(2).standard_normal((96, n))
    norms = np.linalg.norm(Y, axis=1)
    exact = np.stack([np.eye(n) if r <= 1 else (np.eye(n) - np.outer(v, v) / r**2) / r
                      for v, r in zip(Y, norms)])
    keep = np.abs(norms - 1) > KINK_MARGIN
    assert (norms[keep] > 1).sum() > 60  # mostly on the cone's boundary
    error = np.abs(_jacobian_rows(layer, Y) - exact)[keep]
    assert error.max() <= TOLERANCE, (solver, error.max())


def _lasso_like():
    """A layer with an LP part, a QP part and an SOC part, and a generic parameter."""
    n, m = 4, 6
    x = cp.Variable(n)
    A, b = cp.Parameter((m, n)), cp.Parameter(m)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b) + 0.1 * cp.norm1(x)),
                         [x >= -0.5, cp.sum(x) <= 1])
    rng = np.random.default_rng(3)
    return problem, [A, b], x, [rng.standard_normal((m, n)), rng.standard_normal(m)]


def _tight_solution(problem, params, values, x):
    for p, v in zip(params, values):
        p.value = v
    problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    return x.value


@pytest.mark.parametrize("solver", SOLVERS)
def test_gradient_at_defaults_matches_tight_finite_differences(solver):
    """d(wᵀx*)/d(A, b) at default settings vs central differences of tight CVXPY solves."""
    problem, params, x, values = _lasso_like()
    layer = CvxpyLayer(problem, parameters=params, variables=[x], solver=solver)
    w = np.array([1.0, -2.0, 0.5, 1.5])
    tensors = [torch.tensor(v, requires_grad=True) for v in values]
    out, = layer(*tensors)
    (out @ torch.tensor(w)).backward()
    h = 1e-5
    for tensor, value, k in zip(tensors, values, range(len(values))):
        fd = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            shifted = [v.copy() for v in values]
            shifted[k][idx] += h
            plus = w @ _tight_solution(problem, params, shifted, x)
            shifted[k][idx] -= 2 * h
            minus = w @ _tight_solution(problem, params, shifted, x)
            fd[idx] = (plus - minus) / (2 * h)
        got = tensor.grad.numpy()
        assert np.abs(got - fd).max() <= 1e-2 * (1 + np.abs(fd).max()), (solver, got, fd)


@pytest.mark.parametrize("framework", ["jax", "tensorflow"])
def test_projection_jacobian_at_defaults_in_other_adapters(framework):
    """The JAX and Keras layers get the same default-accuracy gradients (float64 inputs)."""
    problem, y, x = _projection(5, upper=False)
    Y = np.random.default_rng(4).standard_normal((64, 5))
    keep = (np.abs(Y) > KINK_MARGIN).all(axis=1)
    if framework == "jax":
        jax = pytest.importorskip("jax")
        from cvxlayers.jax import CvxpyLayer as JaxLayer

        layer = JaxLayer(problem, parameters=[y], variables=[x])
        with jax.enable_x64(True):
            grad = np.asarray(jax.grad(lambda v: layer(v)[0].sum())(jax.numpy.asarray(Y)))
    else:
        tf = pytest.importorskip("tensorflow")
        from cvxlayers.tensorflow import CvxpyLayer as KerasLayer

        layer = KerasLayer(problem, parameters=[y], variables=[x])
        value = tf.Variable(Y)
        with tf.GradientTape() as tape:
            total = tf.reduce_sum(layer(value)[0])
        grad = tape.gradient(total, value).numpy()
    # separable: the gradient of the sum is the Jacobian's diagonal, diag(y > 0)
    assert np.abs(grad - (Y > 0))[keep].max() <= TOLERANCE
