"""Closed-form declarative nodes: robust pooling and Euclidean projections, in three frameworks.

Solutions are checked against CVXPY solves (convex cases), closed forms, and brute-force grid
searches (the non-convex penalties); gradients against central finite differences in float64
(relative error of the whole Jacobian ≤ 1e-6); the frameworks against each other.
"""

import cvxpy as cp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
import torch

from cvxlayers.declarative import _jax_closed_form as J
from cvxlayers.declarative import _tensorflow_closed_form as F
from cvxlayers.declarative import _torch_closed_form as T
from cvxlayers.declarative import pooling

jax.config.update("jax_enable_x64", True)

PENALTIES = ("quadratic", "pseudo_huber", "huber", "welsch", "truncated_quadratic")
KINDS = ("simplex", "l1_ball", "l1_sphere", "l2_ball", "l2_sphere", "linf_ball", "linf_sphere")
ALPHA = 0.8


def _sets(seed, shape=(2, 7, 3), outliers=2):
    """Sets with a bulk near 0 and a few far outliers on the pooled axis (-2)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(scale=0.5, size=shape)
    x[..., :outliers, :] += rng.choice([-4.0, 4.0], size=x[..., :outliers, :].shape)
    return x


# ---- framework wrappers: numpy in, numpy out; and their autodiff Jacobians -----------------

def _pool_np(fw, penalty):
    if fw == "torch":
        return lambda x, a: T.robust_pool(torch.tensor(x), penalty, torch.tensor(a, dtype=torch.float64)).numpy()
    if fw == "jax":
        f = jax.jit(lambda x, a: J.robust_pool(x, penalty, a))
        return lambda x, a: np.asarray(f(x, a))
    f = tf.function(lambda x, a: F.robust_pool(x, penalty, a), reduce_retracing=True)
    return lambda x, a: f(tf.constant(x), tf.constant(a, dtype=tf.float64)).numpy()


def _pool_jac(fw, penalty, x, a):
    """(∂y/∂x, ∂y/∂α) flattened: (m, n) and (m,)."""
    if fw == "torch":
        jx, ja = torch.autograd.functional.jacobian(
            lambda x, a: T.robust_pool(x, penalty, a), (torch.tensor(x), torch.tensor(a, dtype=torch.float64)))
        return jx.numpy().reshape(-1, x.size), ja.numpy().reshape(-1)
    if fw == "jax":
        jx, ja = jax.jacrev(lambda x, a: J.robust_pool(x, penalty, a), argnums=(0, 1))(x, a)
        return np.asarray(jx).reshape(-1, x.size), np.asarray(ja).reshape(-1)
    xt, at = tf.constant(x), tf.constant(a, dtype=tf.float64)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([xt, at])
        y = F.robust_pool(xt, penalty, at)
    jx, ja = tape.jacobian(y, xt), tape.jacobian(y, at)
    return jx.numpy().reshape(-1, x.size), ja.numpy().reshape(-1)


def _fd(f, x, h=1e-6):
    x = np.asarray(x, dtype=np.float64)
    cols = []
    for i in range(x.size):
        e = np.zeros(x.size)
        e[i] = h
        e = e.reshape(x.shape)
        cols.append((np.asarray(f(x + e)) - np.asarray(f(x - e))).reshape(-1) / (2 * h))
    return np.stack(cols, axis=-1)


def _rel(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


# ---- robust pooling: solutions -------------------------------------------------------------

def _cvxpy_pool(values, penalty, a):
    u = cp.Variable()
    z = u - values
    if penalty == "quadratic":
        obj = 0.5 * cp.sum_squares(z)
    elif penalty == "huber":
        obj = 0.5 * cp.sum(cp.huber(z, a))          # cp.huber = 2 × the paper's Huber
    else:                                         # α²(√(1 + (z/α)²) − 1) = α‖(α, z)‖₂ − α²
        obj = a * cp.sum(cp.norm(cp.vstack([np.full(values.size, a), z]), 2, axis=0))
    cp.Problem(cp.Minimize(obj)).solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10,
                                       tol_feas=1e-10)
    return float(u.value)


@pytest.mark.parametrize("penalty", ["quadratic", "huber", "pseudo_huber"])
def test_convex_pooling_matches_cvxpy(penalty):
    x = _sets(1, shape=(3, 9, 2))
    y = T.robust_pool(torch.tensor(x), penalty, ALPHA).numpy()
    ref = np.array([[_cvxpy_pool(x[b, :, c], penalty, ALPHA) for c in range(2)] for b in range(3)])
    # Huber's minimizer can be an interval; these sets have points within α of it (unique).
    # Clarabel's pseudo-Huber (one second-order cone per point) is accurate to about 1e-5;
    # ours is stationary to machine precision.
    np.testing.assert_allclose(y, ref, atol=1e-6 if penalty != "pseudo_huber" else 3e-5)
    g = pooling.dphi(np, penalty, y[:, None, :] - x, ALPHA).sum(axis=1)
    np.testing.assert_allclose(g, 0.0, atol=1e-12)
    if penalty == "quadratic":
        np.testing.assert_allclose(y, x.mean(axis=-2), atol=1e-14)


def _grid_minimum(values, penalty, a):
    """Brute force: the objective on a fine grid over [min, max], then the best grid point
    refined on a finer grid around it."""
    f = lambda u: pooling.phi(np, penalty, u[:, None] - values[None, :], a).sum(axis=1)
    grid = np.linspace(values.min(), values.max(), 200001)
    best = grid[np.argmin(f(grid))]
    step = grid[1] - grid[0]
    fine = np.linspace(best - 2 * step, best + 2 * step, 20001)
    return fine[np.argmin(f(fine))]


CONFIGS = {  # name -> one set (N,): configurations where a poor start finds a local minimum
    "bulk+outliers": np.r_[np.random.default_rng(2).normal(0, 0.3, 7), 3.0, 3.2, -5.0],
    "two clusters, bigger right": np.r_[np.random.default_rng(3).normal(-2, 0.2, 4),
                                        np.random.default_rng(4).normal(2, 0.2, 6)],
    "two clusters, bigger left": np.r_[np.random.default_rng(5).normal(-2, 0.3, 6),
                                       np.random.default_rng(6).normal(1.5, 0.1, 5)],
    "three clusters, spread": np.r_[-4.1, -4.0, -3.9, 0.1, 0.0, 0.05, -0.08, 3.9, 4.0, 4.2, 4.1],
    "uniform": np.random.default_rng(7).uniform(-3, 3, 12),
}


@pytest.mark.parametrize("penalty", ["welsch", "truncated_quadratic"])
def test_nonconvex_pooling_finds_global_minimum(penalty):
    for name, values in CONFIGS.items():
        y = float(T.robust_pool(torch.tensor(values)[:, None], penalty, ALPHA))
        ref = _grid_minimum(values, penalty, ALPHA)
        fy = pooling.phi(np, penalty, y - values, ALPHA).sum()
        fref = pooling.phi(np, penalty, ref - values, ALPHA).sum()
        assert fy <= fref + 1e-9, (name, y, ref, fy, fref)   # never worse than brute force
        assert abs(y - ref) < 1e-3, (name, y, ref)
        # a local minimum: stationary to machine precision
        g = pooling.dphi(np, penalty, y - values, ALPHA).sum()
        assert abs(g) < 1e-9, (name, g)


def test_welsch_beats_its_mean_and_median_starts():
    """Two clusters, the larger one far from the mean and the median: the paper's two starts
    (mean, median) both reach the smaller cluster; the third start finds the global one."""
    values = np.r_[np.full(5, -3.0) + np.linspace(0, 0.1, 5), np.linspace(0.0, 0.3, 2),
                   np.linspace(2.9, 3.0, 4)]
    y = float(T.robust_pool(torch.tensor(values)[:, None], "welsch", 0.5))
    ref = _grid_minimum(values, "welsch", 0.5)
    assert abs(y - ref) < 1e-3


# ---- robust pooling: gradients and agreement --------------------------------------------------

@pytest.mark.parametrize("fw", ["torch", "jax", "tensorflow"])
@pytest.mark.parametrize("penalty", PENALTIES)
def test_pooling_gradients_match_finite_differences(fw, penalty):
    x = _sets(10, shape=(1, 6, 2))
    f = _pool_np(fw, penalty)
    jx, ja = _pool_jac(fw, penalty, x, ALPHA)
    assert _rel(jx, _fd(lambda z: f(z, ALPHA), x)) <= 1e-6
    fd_a = _fd(lambda a: f(x, float(a)), np.array(ALPHA))[:, 0]
    if penalty in ("quadratic", "truncated_quadratic"):
        np.testing.assert_allclose(ja, 0.0, atol=1e-12)
        np.testing.assert_allclose(fd_a, 0.0, atol=1e-8)
    else:
        assert _rel(ja, fd_a) <= 1e-6
    # the paper's closed form: dy/dx_i = φ''_i / Σ_j φ''_j, so each row sums to 1
    np.testing.assert_allclose(jx.sum(axis=1), 1.0, atol=1e-12)


@pytest.mark.parametrize("penalty", PENALTIES)
def test_pooling_frameworks_agree_and_batches_are_independent(penalty):
    x = _sets(20, shape=(4, 8, 3))
    ys = [_pool_np(fw, penalty)(x, ALPHA) for fw in ("torch", "jax", "tensorflow")]
    np.testing.assert_allclose(ys[1], ys[0], atol=1e-12)
    np.testing.assert_allclose(ys[2], ys[0], atol=1e-12)
    singles = np.stack([_pool_np("torch", penalty)(x[b:b + 1], ALPHA)[0] for b in range(4)])
    np.testing.assert_allclose(singles, ys[0], atol=1e-12)


def test_huber_zero_denominator_gradient_is_uniform():
    """Two points 4 apart with α = 1: no point within α of the pooled value, Σφ'' = 0."""
    x = torch.tensor([[-2.0], [2.0]], dtype=torch.float64, requires_grad=True)
    y = T.robust_pool(x, "huber", 1.0, dim=0)
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy().ravel(), [0.5, 0.5])


def test_pooling_dim_and_modules():
    x = _sets(30, shape=(2, 5, 3))
    ref = T.robust_pool(torch.tensor(x), "huber")
    alt = T.robust_pool(torch.tensor(np.moveaxis(x, 1, 0)), "huber", dim=0)
    np.testing.assert_allclose(alt.numpy(), ref.numpy(), atol=1e-14)
    np.testing.assert_allclose(T.RobustPool("huber")(torch.tensor(x)).numpy(), ref.numpy())
    np.testing.assert_allclose(F.RobustPool("huber")(tf.constant(x)).numpy(), ref.numpy(),
                               atol=1e-12)
    keras_fn = tf.function(lambda z: F.robust_pool(z, "welsch"))
    np.testing.assert_allclose(keras_fn(tf.constant(x)).numpy(),
                               T.robust_pool(torch.tensor(x), "welsch").numpy(), atol=1e-12)
    vm = jax.vmap(lambda s: J.robust_pool(s, "pseudo_huber"))(x)
    np.testing.assert_allclose(np.asarray(vm), T.robust_pool(torch.tensor(x), "pseudo_huber"),
                               atol=1e-12)


# ---- projections -----------------------------------------------------------------------------

def _cvxpy_project(v, kind, r):
    u = cp.Variable(v.size)
    cons = {"simplex": [u >= 0, cp.sum(u) == r], "l1_ball": [cp.norm1(u) <= r],
            "l2_ball": [cp.norm2(u) <= r], "linf_ball": [cp.norm_inf(u) <= r]}[kind]
    cp.Problem(cp.Minimize(cp.sum_squares(u - v)), cons).solve(
        solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    return u.value


def _proj_np(fw, kind):
    if fw == "torch":
        return lambda x, r=1.0: getattr(T, "project_" + kind)(torch.tensor(x), r).numpy()
    if fw == "jax":
        f = jax.jit(getattr(J, "project_" + kind), static_argnums=1)
        return lambda x, r=1.0: np.asarray(f(x, r))
    return lambda x, r=1.0: getattr(F, "project_" + kind)(tf.constant(x), r).numpy()


def _points(seed, n=5):
    """Rows inside and outside every ball of radius 1.3."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(6, n)) * np.array([0.1, 0.2, 0.5, 1.0, 1.5, 3.0])[:, None]


@pytest.mark.parametrize("kind", ["simplex", "l1_ball", "l2_ball", "linf_ball"])
def test_convex_projections_match_cvxpy(kind):
    x, r = _points(40), 1.3
    y = _proj_np("torch", kind)(x, r)
    ref = np.stack([_cvxpy_project(row, kind, r) for row in x])
    np.testing.assert_allclose(y, ref, atol=1e-6)


def test_sphere_projections_closed_forms():
    x, r = _points(41), 1.3
    l2 = _proj_np("torch", "l2_sphere")(x, r)
    np.testing.assert_allclose(l2, r * x / np.linalg.norm(x, axis=1, keepdims=True), atol=1e-14)
    rng = np.random.default_rng(0)
    for kind, norm in (("l1_sphere", 1), ("linf_sphere", np.inf)):
        y = _proj_np("torch", kind)(x, r)
        np.testing.assert_allclose(np.linalg.norm(y, norm, axis=1), r, atol=1e-12)
        # outside the ball the sphere's projection is the ball's
        ball = _proj_np("torch", kind.replace("sphere", "ball"))(x, r)
        outside = np.linalg.norm(x, norm, axis=1) >= r
        np.testing.assert_allclose(y[outside], ball[outside], atol=1e-14)
        # no point of the sphere is closer (random points on it, projected radially)
        cand = rng.normal(size=(20000, x.shape[1]))
        cand = r * cand / np.linalg.norm(cand, norm, axis=1, keepdims=True)
        for row, proj in zip(x, y):
            assert np.linalg.norm(proj - row) <= np.linalg.norm(cand - row, axis=1).min() + 1e-12


@pytest.mark.parametrize("fw", ["torch", "jax", "tensorflow"])
@pytest.mark.parametrize("kind", KINDS)
def test_projection_gradients_match_finite_differences(fw, kind):
    x, r = _points(42)[::2], 1.3
    f = _proj_np(fw, kind)
    if fw == "torch":
        jac = torch.autograd.functional.jacobian(
            lambda z: getattr(T, "project_" + kind)(z, r), torch.tensor(x)).numpy()
    elif fw == "jax":
        jac = np.asarray(jax.jacrev(lambda z: getattr(J, "project_" + kind)(z, r))(x))
    else:
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = getattr(F, "project_" + kind)(xt, r)
        jac = tape.jacobian(y, xt).numpy()
    assert _rel(jac.reshape(x.size, x.size), _fd(lambda z: f(z, r), x)) <= 1e-6


@pytest.mark.parametrize("kind", KINDS)
def test_projection_frameworks_agree_and_batches_are_independent(kind):
    x = _points(43).reshape(2, 3, 5)
    ys = [_proj_np(fw, kind)(x, 1.3) for fw in ("torch", "jax", "tensorflow")]
    np.testing.assert_allclose(ys[1], ys[0], atol=1e-14)
    np.testing.assert_allclose(ys[2], ys[0], atol=1e-14)
    singles = np.stack([_proj_np("torch", kind)(row, 1.3) for row in x.reshape(6, 5)])
    np.testing.assert_allclose(singles.reshape(2, 3, 5), ys[0], atol=1e-14)


# ---- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("mod,make", [(T, torch.tensor), (J, jnp.asarray), (F, tf.constant)])
def test_errors_name_the_argument_and_echo_the_value(mod, make):
    x = make(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match=r"`penalty`.*'hubr'"):
        mod.robust_pool(x, "hubr")
    with pytest.raises(ValueError, match=r"`alpha`.*-1"):
        mod.robust_pool(x, "huber", -1.0)
    with pytest.raises(ValueError, match=r"`dim`.*received 5"):
        mod.robust_pool(x, "huber", dim=5)
    with pytest.raises(TypeError, match=r"`x`.*int"):
        mod.robust_pool(make(np.zeros((2, 3), dtype=np.int64)), "huber")
    with pytest.raises(ValueError, match=r"`radius`.*0"):
        mod.project_simplex(x, 0.0)
