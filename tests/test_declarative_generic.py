"""The generic declarative node (``DeclarativeNode``) in its three faces.

What ``tests/test_declarative_nodes.py`` leaves out: the TensorFlow face, the inequality
path (Proposition 4.6, active constraints only), conjugate gradients against the dense
solve, the damping of a singular H, the non-stationary warning, non-convex objectives
from several starting points, batch independence, and the faces against each other.
Gradients are checked against central finite differences in float64 (relative error of
the vector-Jacobian product ≤ 1e-6) or against closed forms.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
import torch

from cvxlayers.declarative import NonStationaryWarning, IllConditionedWarning, pooling
from cvxlayers.declarative import jax as jface
from cvxlayers.declarative import tensorflow as tface
from cvxlayers.declarative import torch as pface

jax.config.update("jax_enable_x64", True)

FRAMEWORKS = ("torch", "jax", "tensorflow")


class Torch:
    node = pface
    sum = staticmethod(lambda a: a.sum(-1))
    sqrt, where, exp = torch.sqrt, torch.where, torch.exp
    maximum = torch.maximum

    @staticmethod
    def t(a):
        return torch.tensor(np.asarray(a, dtype=np.float64))

    @staticmethod
    def value(fn, xs):
        return fn(*[Torch.t(x) for x in xs]).numpy()

    @staticmethod
    def vjp(fn, xs, W):
        xs = [Torch.t(x).requires_grad_() for x in xs]
        y = fn(*xs)
        grads = torch.autograd.grad((y * Torch.t(W)).sum(), xs)
        return y.detach().numpy(), [g.numpy() for g in grads]


class Jax:
    node = jface
    sum = staticmethod(lambda a: a.sum(-1))
    sqrt, where, exp = jnp.sqrt, jnp.where, jnp.exp
    maximum = jnp.maximum

    @staticmethod
    def t(a):
        return jnp.asarray(np.asarray(a, dtype=np.float64))

    @staticmethod
    def value(fn, xs):
        return np.asarray(fn(*[Jax.t(x) for x in xs]))

    @staticmethod
    def vjp(fn, xs, W):
        xs = [Jax.t(x) for x in xs]
        y, pull = jax.vjp(fn, *xs)
        return np.asarray(y), [np.asarray(g) for g in pull(Jax.t(W))]


class Tensorflow:
    node = tface
    sum = staticmethod(lambda a: tf.reduce_sum(a, -1))
    sqrt, where, exp = tf.sqrt, tf.where, tf.exp
    maximum = tf.maximum

    @staticmethod
    def t(a):
        return tf.constant(np.asarray(a, dtype=np.float64))

    @staticmethod
    def value(fn, xs):
        return fn(*[Tensorflow.t(x) for x in xs]).numpy()

    @staticmethod
    def vjp(fn, xs, W):
        xs = [Tensorflow.t(x) for x in xs]
        with tf.GradientTape() as tape:
            tape.watch(xs)
            y = fn(*xs)
            loss = tf.reduce_sum(y * Tensorflow.t(W))
        return y.numpy(), [g.numpy() for g in tape.gradient(loss, xs)]


FW = {"torch": Torch, "jax": Jax, "tensorflow": Tensorflow}


def finite_differences(F, fn, xs, W, step=1e-6):
    """Central differences of ⟨W, fn(*xs)⟩ in every entry of every input."""
    def value(xs):
        return float(np.sum(F.value(fn, xs) * W))
    grads = []
    for k, x in enumerate(xs):
        g = np.zeros_like(x)
        for idx in np.ndindex(*x.shape):
            plus = [a.copy() for a in xs]
            minus = [a.copy() for a in xs]
            plus[k][idx] += step
            minus[k][idx] -= step
            g[idx] = (value(plus) - value(minus)) / (2 * step)
        grads.append(g)
    return grads


def assert_vjp_matches_fd(F, fn, xs, seed=0, rtol=1e-6):
    W = np.random.default_rng(seed).standard_normal(F.value(fn, xs).shape)
    _, grads = F.vjp(fn, xs, W)
    for g, fd in zip(grads, finite_differences(F, fn, xs, W)):
        err = np.linalg.norm(g - fd) / max(np.linalg.norm(fd), 1e-12)
        assert err <= rtol, f"relative error {err:.2e} of the gradient vs finite differences"
    return grads


# ---- the problems, written once against a framework table F ---------------------------------

def quartic(F):
    """Unconstrained, non-quadratic: f = Σ(y − x)² + Σ y⁴ (default Newton solver)."""
    return F.node.DeclarativeNode(lambda x, y: F.sum((y - x) ** 2) + F.sum(y ** 4),
                                  init=lambda x: 0.0 * x)


def ball_in_hyperplane(F, **options):
    """Projection of x onto {y : Σy = s, ‖y‖² ≤ r²}: one equality, one inequality.

    The set is the ball of radius ρ = √(r² − s²/n) about c = (s/n)1 inside the hyperplane:
    project onto the hyperplane, z = x − (Σx − s)/n, then pull z to the sphere when ‖z − c‖ > ρ.
    """
    def solve(x, s, r):
        n = x.shape[-1]
        z = x - ((F.sum(x) - s) / n)[:, None]
        c = (s / n)[:, None]
        rho = F.sqrt(r ** 2 - s ** 2 / n)
        dist = F.sqrt(F.sum((z - c) ** 2))
        scale = F.where(dist > rho, rho / dist, 1.0 + 0.0 * dist)
        return c + (z - c) * scale[:, None]

    return F.node.DeclarativeNode(
        lambda x, s, r, y: 0.5 * F.sum((y - x) ** 2), solve,
        equality=lambda x, s, r, y: (F.sum(y) - s)[:, None],
        inequality=lambda x, s, r, y: (F.sum(y ** 2) - r ** 2)[:, None], **options)


def ball_data():
    """Batch of 4: elements 0 and 2 outside the ball (constraint active), 1 and 3 inside."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 5)) * np.array([3.0, 0.2, 2.5, 0.3])[:, None]
    s = np.array([0.5, 0.1, -0.4, 0.2])
    r = np.array([1.0, 1.5, 1.2, 2.0])
    return [x, s, r]


# ---- 1. every face against finite differences ------------------------------------------------

@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_unconstrained_default_newton_vs_finite_differences(fw):
    F = FW[fw]
    x = np.random.default_rng(1).standard_normal((3, 4))
    assert_vjp_matches_fd(F, quartic(F), [x])


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_inequality_and_equality_vs_finite_differences(fw):
    """Proposition 4.6: the active inequality enters like an equality, the inactive one not."""
    F = FW[fw]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a correct solve must not warn
        assert_vjp_matches_fd(F, ball_in_hyperplane(F), ball_data())


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_inactive_inequality_gives_the_unconstrained_gradient(fw):
    """Inside the ball the node is the hyperplane projection: Dy/Dx = I − 11ᵀ/n, Dy/Dr = 0."""
    F = FW[fw]
    x, s, r = [a[[1, 3]] for a in ball_data()]
    W = np.random.default_rng(0).standard_normal(x.shape)
    _, (gx, gs, gr) = F.vjp(ball_in_hyperplane(F), [x, s, r], W)
    n = x.shape[1]
    np.testing.assert_allclose(gx, W - W.mean(-1, keepdims=True), atol=1e-12)
    np.testing.assert_allclose(gs, W.sum(-1) / n, atol=1e-12)
    np.testing.assert_allclose(gr, 0.0, atol=1e-12)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_active_set_uses_the_documented_tolerance(fw):
    """y = min(x, b) as argmin ½‖y − x‖² s.t. y ≤ b. A constraint counts as active when
    g = y − b ≥ −active_tol (1e-6 by default): at 5e-7 below b the coordinate is treated
    as pinned (dy/dx = 0, dy/db = 1), at 1e-5 below it is free (dy/dx = 1, dy/db = 0)."""
    F = FW[fw]
    node = F.node.DeclarativeNode(lambda x, b, y: 0.5 * F.sum((y - x) ** 2),
                                  lambda x, b: F.where(x < b, x, b),
                                  inequality=lambda x, b, y: y - b,
                                  stationarity_tol=1e-4)  # the near-active x is 5e-7 off
    b = np.array([[1.0, 1.0, 1.0]])
    x = np.array([[1.0 - 5e-7, 1.0 - 1e-5, 3.0]])
    _, (gx, gb) = F.vjp(node, [x, b], np.ones((1, 3)))
    np.testing.assert_allclose(gx, [[0.0, 1.0, 0.0]], atol=1e-9)
    np.testing.assert_allclose(gb, [[1.0, 0.0, 1.0]], atol=1e-9)
    tight = F.node.DeclarativeNode(node.objective, node.solve, inequality=node.inequality,
                                   active_tol=1e-8, stationarity_tol=1e-4)
    _, (gx, gb) = F.vjp(tight, [x, b], np.ones((1, 3)))
    np.testing.assert_allclose(gx, [[1.0, 1.0, 0.0]], atol=1e-9)


# ---- 2. conjugate gradients against the dense solve ------------------------------------------

def spd(m, seed):
    rng = np.random.default_rng(seed)
    Q = rng.standard_normal((m, m)) / np.sqrt(m)
    return Q @ Q.T + 0.5 * np.eye(m)


def quadratic_node(F, Q, method, equality=False):
    """f = ½ yᵀQy − xᵀy, optionally with Σy = 0; solved in closed form with NumPy."""
    Qt = F.t(Q)
    Qinv = np.linalg.inv(Q)
    one = np.ones(Q.shape[0])

    def solve(x):
        xn = np.asarray(x)
        y = xn @ Qinv
        if equality:  # y = Q⁻¹(x − λ1), λ from 1ᵀy = 0
            lam = (y @ one) / (one @ Qinv @ one)
            y = y - lam[:, None] * (Qinv @ one)[None]
        return F.t(y)

    objective = (lambda x, y: 0.5 * F.sum((y @ Qt) * y) - F.sum(x * y)) if F is not Tensorflow \
        else (lambda x, y: 0.5 * F.sum(tf.matmul(y, Qt) * y) - F.sum(x * y))
    eq = (lambda x, y: F.sum(y)[:, None]) if equality else None
    return F.node.DeclarativeNode(objective, solve, equality=eq, method=method)


@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("equality", [False, True])
def test_cg_path_matches_dense_and_closed_form(fw, equality):
    """Large y (m = 300 > DENSE_MAX: ``method="auto"`` runs CG) against ``method="dense"``
    and the closed form vᵀQ⁻¹ (vᵀ(Q⁻¹ − Q⁻¹11ᵀQ⁻¹/1ᵀQ⁻¹1) with the equality)."""
    F = FW[fw]
    m = 300
    Q = spd(m, 5)
    x = np.random.default_rng(6).standard_normal((2, m))
    W = np.random.default_rng(7).standard_normal((2, m))
    _, (g_cg,) = F.vjp(quadratic_node(F, Q, "auto", equality), [x], W)
    _, (g_dense,) = F.vjp(quadratic_node(F, Q, "dense", equality), [x], W)
    Qi = np.linalg.inv(Q)
    if equality:
        q = Qi.sum(1)
        Qi = Qi - np.outer(q, q) / q.sum()
    exact = W @ Qi
    assert np.linalg.norm(g_cg - exact) / np.linalg.norm(exact) < 1e-8
    assert np.linalg.norm(g_dense - exact) / np.linalg.norm(exact) < 1e-10


def test_cg_small_problem_matches_dense_in_all_faces():
    """``method="cg"`` forced on a small constrained node equals the dense solve."""
    for fw in FRAMEWORKS:
        F = FW[fw]
        xs = ball_data()
        W = np.random.default_rng(2).standard_normal(xs[0].shape)
        _, dense = F.vjp(ball_in_hyperplane(F, method="dense"), xs, W)
        _, cg = F.vjp(ball_in_hyperplane(F, method="cg"), xs, W)
        for a, b in zip(dense, cg):
            np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)


# ---- 3. singular H: the pseudo-inverse and the documented damping ----------------------------

def rank_one_node(F, **options):
    """f = ½(aᵀy − x)², y ∈ R²: H = aaᵀ is singular; the solve returns the minimum-norm
    minimizer y = a x/‖a‖², whose derivative is a/‖a‖²."""
    a = np.array([3.0, 4.0])
    at = F.t(a)
    return F.node.DeclarativeNode(lambda x, y: 0.5 * (F.sum(y * at) - x[:, 0]) ** 2,
                                  lambda x: x * at / 25.0, **options), a


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_singular_hessian_pseudo_inverse_gives_minimum_norm_derivative(fw):
    F = FW[fw]
    node, a = rank_one_node(F)
    v = np.array([[1.0, -2.0], [0.5, 0.25]])
    with pytest.warns(IllConditionedWarning, match=r"\[0, 1\]"):
        _, (gx,) = F.vjp(node, [np.array([[1.0], [-2.0]])], v)
    np.testing.assert_allclose(gx[:, 0], v @ a / 25.0, atol=1e-12)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_cg_damping_solves_the_documented_shifted_system(fw):
    """With ``method="cg", damping=d``: w = (H + δI)⁻¹v, δ = d |vᵀHv|/‖v‖², and the
    gradient is −wᵀ∇²_yx f = wᵀa."""
    F = FW[fw]
    d = 0.1
    node, a = rank_one_node(F, method="cg", damping=d)
    v = np.array([[1.0, -2.0], [0.5, 0.25]])
    _, (gx,) = F.vjp(node, [np.array([[1.0], [-2.0]])], v)
    H = np.outer(a, a)
    for b in range(2):
        delta = d * abs(v[b] @ H @ v[b]) / (v[b] @ v[b])
        w = np.linalg.solve(H + delta * np.eye(2), v[b])
        assert gx[b, 0] == pytest.approx(w @ a, rel=1e-8)


# ---- 4. the non-stationary warning -----------------------------------------------------------

@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_non_stationary_solve_warns_naming_the_elements(fw):
    F = FW[fw]

    def sloppy(x):  # the minimizer of ½‖y − x‖² is x; element 1 is off by 0.1
        return x + F.t([[0.0, 0.0], [0.1, 0.0], [0.0, 0.0]])

    node = F.node.DeclarativeNode(lambda x, y: 0.5 * F.sum((y - x) ** 2), sloppy)
    with pytest.warns(NonStationaryWarning, match=r"elements \[1\]"):
        F.vjp(node, [np.zeros((3, 2))], np.ones((3, 2)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        F.vjp(F.node.DeclarativeNode(node.objective, lambda x: x), [np.zeros((3, 2))],
              np.ones((3, 2)))


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_negative_inequality_multiplier_warns(fw):
    """A solve that stops on the constraint y ≤ b although the minimizer x lies inside
    (a KKT point needs μ ≥ 0; here μ < 0) is reported as non-stationary."""
    F = FW[fw]
    node = F.node.DeclarativeNode(lambda x, b, y: 0.5 * F.sum((y - x) ** 2),
                                  lambda x, b: b + 0.0 * x, inequality=lambda x, b, y: y - b)
    with pytest.warns(NonStationaryWarning, match=r"elements \[0\]"):
        F.vjp(node, [np.array([[0.0]]), np.array([[1.0]])], np.ones((1, 1)))


# ---- 5. non-convex objectives from several starting points -----------------------------------

CLUSTERS = np.array([[-0.1, 0.0, 0.2, 0.1, -0.2, 0.05, 5.0, 5.2, 4.9, 5.1]])
ALPHA = 1.0


def welsch_objective(F):
    return lambda x, y: F.sum(ALPHA ** 2 * (1 - F.exp(-(y - x) ** 2 / (2 * ALPHA ** 2))))


def truncated_quadratic_objective(F):
    return lambda x, y: F.sum(F.where(abs(y - x) <= ALPHA, 0.5 * (y - x) ** 2,
                                      0.5 * ALPHA ** 2 + 0.0 * y))


def tq_local_solve(F, start):
    """Local minimizer of the truncated quadratic: the inliers' mean, iterated from ``start``
    (each step cannot increase the objective; it stops in finitely many steps)."""
    def solve(x):
        xn = np.asarray(x)
        u = np.full((xn.shape[0], 1), start)
        for _ in range(50):
            inl = np.abs(xn - u) <= ALPHA
            u = (np.where(inl, xn, 0).sum(-1) / np.maximum(inl.sum(-1), 1))[:, None]
        return F.t(u)
    return solve


@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("penalty", ["welsch", "truncated_quadratic"])
def test_nonconvex_pooling_from_several_starts(fw, penalty):
    """Two clusters, so two local minima; from each start the node lands in that start's
    basin, its gradient matches finite differences and the paper's closed form
    dy/dx_i = φ''_i/Σφ''_j at the minimum it reached, and the start in the larger cluster
    reproduces ``robust_pool``'s global minimizer."""
    F = FW[fw]
    found = []
    for start in (0.5, 4.5, -1.0, 6.0):
        if penalty == "welsch":
            node = F.node.DeclarativeNode(welsch_objective(F),
                                          init=lambda x, s=start: 0.0 * x[:, :1] + s)
        else:
            node = F.node.DeclarativeNode(truncated_quadratic_objective(F), tq_local_solve(F, start))
        with warnings.catch_warnings():
            warnings.simplefilter("error", NonStationaryWarning)
            y, (gx,) = F.vjp(node, [CLUSTERS], np.ones((1, 1)))
        if penalty == "welsch":
            assert_vjp_matches_fd(F, node, [CLUSTERS])
        else:  # piecewise quadratic: exact FD away from the breakpoints
            assert_vjp_matches_fd(F, node, [CLUSTERS], rtol=1e-8)
        closed, _ = pooling.pool_vjp(np, penalty, CLUSTERS, y, np.ones((1, 1)), ALPHA)
        np.testing.assert_allclose(gx, closed.reshape(gx.shape), atol=1e-10)
        found.append(float(y[0, 0]))
    assert abs(found[0] - found[2]) < 1e-8 and abs(found[1] - found[3]) < 1e-8
    assert found[0] < 1.0 < 4.0 < found[1]  # two different local minima were reached
    best = pooling.pool(np, penalty, CLUSTERS, ALPHA)
    assert found[0] == pytest.approx(float(np.ravel(best)[0]), abs=1e-9)


# ---- 6. batch independence -------------------------------------------------------------------

@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_batch_elements_are_independent(fw):
    """The batched node equals the node run on each element alone (values and gradients)."""
    F = FW[fw]
    xs = ball_data()
    W = np.random.default_rng(4).standard_normal(xs[0].shape)
    y, grads = F.vjp(ball_in_hyperplane(F), xs, W)
    for b in range(xs[0].shape[0]):
        yb, gb = F.vjp(ball_in_hyperplane(F), [a[b:b + 1] for a in xs], W[b:b + 1])
        np.testing.assert_allclose(y[b:b + 1], yb, atol=1e-13)
        for g, g1 in zip(grads, gb):
            np.testing.assert_allclose(g[b:b + 1], g1, atol=1e-12)
    x = np.random.default_rng(5).standard_normal((3, 4))
    Wq = np.zeros((3, 4))
    Wq[1] = 1.0  # a cotangent on element 1 only moves element 1's input
    _, (gq,) = F.vjp(quartic(F), [x], Wq)
    assert np.all(gq[[0, 2]] == 0) and np.all(np.abs(gq[1]) > 0)


# ---- 7. the three faces against each other ---------------------------------------------------

def test_faces_agree_on_values_and_gradients():
    rng = np.random.default_rng(8)
    cases = {
        "quartic": (quartic, [rng.standard_normal((3, 4))]),
        "ball_in_hyperplane": (ball_in_hyperplane, ball_data()),
        "entropic_ot": (lambda F: F.node.EntropicOT(0.5),
                        [rng.random((2, 3, 4)), np.full((2, 3), 1 / 3), np.full((2, 4), 1 / 4)]),
    }
    for name, (make, xs) in cases.items():
        results = {fw: FW[fw].vjp(make(FW[fw]), xs,
                                  np.random.default_rng(9).standard_normal(
                                      FW[fw].value(make(FW[fw]), xs).shape))
                   for fw in FRAMEWORKS}
        y0, g0 = results["torch"]
        for fw in ("jax", "tensorflow"):
            y, g = results[fw]
            np.testing.assert_allclose(y, y0, rtol=1e-10, atol=1e-12, err_msg=f"{name} {fw}")
            for a, b in zip(g, g0):
                np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10, err_msg=f"{name} {fw}")


def test_tensorflow_face_inside_tf_function():
    """The TF face under ``tf.function`` gives the eager gradients."""
    F = Tensorflow
    node = ball_in_hyperplane(F)
    xs = [tf.constant(a) for a in ball_data()]

    @tf.function
    def grads(x, s, r):
        with tf.GradientTape() as tape:
            tape.watch([x, s, r])
            loss = tf.reduce_sum(node(x, s, r) ** 2)
        return tape.gradient(loss, [x, s, r])

    with tf.GradientTape() as tape:
        tape.watch(xs)
        loss = tf.reduce_sum(node(*xs) ** 2)
    eager = tape.gradient(loss, xs)
    for a, b in zip(grads(*xs), eager):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-12)


# ---- 8. Sinkhorn's default tolerance depends on the dtype ------------------------------------

def _ot_inputs(dtype):
    rng = np.random.default_rng(10)
    return (rng.random((2, 5, 6)).astype(dtype), np.full((2, 5), 1 / 5, dtype),
            np.full((2, 6), 1 / 6, dtype))


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_sinkhorn_default_tolerance_per_dtype(fw):
    """Default ``tol``: 1e-12 in float64, 1e-5 in float32; each is met, and the float32
    plan agrees with the float64 one to float32 accuracy."""
    conv = {"torch": torch.tensor, "jax": jnp.asarray, "tensorflow": tf.constant}[fw]
    plans = {}
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        C, r, c = (conv(a) for a in _ot_inputs(dtype))
        P = np.asarray(FW[fw].node.EntropicOT(0.5)(C, r, c))
        assert P.dtype == dtype
        assert np.abs(P.sum(-1) - np.asarray(r)).max() <= tol
        assert np.abs(P.sum(-2) - np.asarray(c)).max() <= 10 * tol
        plans[dtype] = P
    np.testing.assert_allclose(plans[np.float32], plans[np.float64], atol=1e-5)


def test_sinkhorn_float32_stops_early_where_a_float64_tolerance_would_not(monkeypatch):
    """Why the default depends on the dtype: in float32 the 1e-12 target is unreachable
    and Sinkhorn would run all ``maxiter`` sweeps; the float32 default stops early."""
    counts = []
    original = pface._Ops.while_loop

    def counting(cond, body, state):
        n = [0]

        def counted(s):
            n[0] += 1
            return body(s)
        out = original(cond, counted, state)
        counts.append(n[0])
        return out

    monkeypatch.setattr(pface._Ops, "while_loop", staticmethod(counting))
    C, r, c = (torch.tensor(a) for a in _ot_inputs(np.float32))
    pface.EntropicOT(0.5, maxiter=2000)(C, r, c)
    pface.EntropicOT(0.5, tol=1e-12, maxiter=2000)(C, r, c)
    assert counts[0] < 200 and counts[1] == 2000 - 1


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_entropic_ot_vs_finite_differences(fw):
    """The equality-constrained node (Proposition 4.5) in every face, in C, r and c
    (balanced marginals perturbed together keep equal mass only to first order, so r and
    c enter through a softmax, as users would)."""
    F = FW[fw]
    ot = F.node.EntropicOT(0.5)
    soft = {"torch": lambda a: torch.softmax(a, -1), "jax": jax.nn.softmax,
            "tensorflow": tf.nn.softmax}[fw]
    rng = np.random.default_rng(11)
    xs = [rng.random((2, 3, 4)), rng.standard_normal((2, 3)), rng.standard_normal((2, 4))]
    assert_vjp_matches_fd(F, lambda C, a, b: ot(C, soft(a), soft(b)), xs)
