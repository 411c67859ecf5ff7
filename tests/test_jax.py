"""The JAX layer: the zoo eager and jitted against the PyTorch layer, gradients with
jax.test_util.check_grads in float64, vmap against batching, dtypes, errors."""

import cvxpy as cp
import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
import torch  # noqa: E402
from jax.test_util import check_grads  # noqa: E402
from zoo import TIGHT, ZOO  # noqa: E402

import cvxlayers  # noqa: E402
from cvxlayers.jax import CvxpyLayer  # noqa: E402
from cvxlayers.torch import CvxpyLayer as TorchLayer  # noqa: E402


def least_squares():
    x = cp.Variable(3)
    A, b = cp.Parameter((4, 3), name="A"), cp.Parameter(4, name="b")
    problem = cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b) + 0.1 * cp.norm1(x)), [x >= -1])
    return problem, [A, b], [x]


def data(rng, batch=5, dtype=np.float64):
    return (rng.standard_normal((batch, 4, 3)).astype(dtype),
            rng.standard_normal((batch, 4)).astype(dtype))


ZOO_CASES = [(name, solver) for name, make in ZOO.items() for solver in make().solvers]


@pytest.mark.parametrize("name,solver", ZOO_CASES)
def test_zoo_eager_and_jit_match_torch(name, solver, x64):
    case = ZOO[name]()
    values = case.sample(np.random.default_rng(5), 3)
    args = TIGHT[solver]
    layer = CvxpyLayer(case.problem, case.parameters, case.variables, gp=case.gp,
                       solver=solver)
    reference = TorchLayer(case.problem, case.parameters, case.variables, gp=case.gp,
                           solver=solver)
    expected = reference(*[torch.tensor(v) for v in values], solver_args=args)
    eager = layer(*values, solver_args=args)
    jitted = jax.jit(lambda *p: layer(*p, solver_args=args))(*values)
    for e, j, t in zip(eager, jitted, expected):
        assert isinstance(e, jax.Array)
        np.testing.assert_allclose(np.asarray(e), t.numpy(), atol=1e-7)
        np.testing.assert_allclose(np.asarray(j), t.numpy(), atol=1e-7)


@pytest.mark.parametrize("name", ["qp", "socp", "exponential", "sdp", "dgp", "duals"])
def test_check_grads_reverse_mode(name, x64):
    case = ZOO[name]()
    rng = np.random.default_rng(6)
    values = [jnp.asarray(v) for v in case.sample(rng, 2)]
    weights = [jnp.asarray(rng.standard_normal((2,) + tuple(v.shape))) for v in case.variables]
    layer = CvxpyLayer(case.problem, case.parameters, case.variables, gp=case.gp)

    def f(*params):
        outs = layer(*params, solver_args=TIGHT["SCS"])
        return sum(jnp.sum(w * o) for w, o in zip(weights, outs))

    check_grads(f, values, order=1, modes=("rev",), eps=1e-5, atol=1e-4, rtol=1e-3)


def test_jax_gradient_matches_torch(x64):
    problem, params, variables = least_squares()
    A, b = data(np.random.default_rng(7))
    layer = CvxpyLayer(problem, params, variables)
    grads = jax.jit(jax.grad(lambda A, b: layer(A, b, solver_args=TIGHT["SCS"])[0].sum(),
                             argnums=(0, 1)))(A, b)
    A_t, b_t = torch.tensor(A, requires_grad=True), torch.tensor(b, requires_grad=True)
    TorchLayer(problem, params, variables)(A_t, b_t, solver_args=TIGHT["SCS"])[0].sum().backward()
    np.testing.assert_allclose(np.asarray(grads[0]), A_t.grad.numpy(), atol=1e-6)
    np.testing.assert_allclose(np.asarray(grads[1]), b_t.grad.numpy(), atol=1e-6)


def test_vmap_equals_batching(x64):
    problem, params, variables = least_squares()
    A, b = data(np.random.default_rng(8))
    layer = CvxpyLayer(problem, params, variables)

    def solve(A, b):
        return layer(A, b, solver_args=TIGHT["SCS"])[0]

    batched = solve(A[0], b)                                   # A shared, b batched
    np.testing.assert_allclose(jax.vmap(solve, in_axes=(None, 0))(A[0], b), batched, atol=1e-9)
    np.testing.assert_allclose(jax.vmap(solve)(A, b), solve(A, b), atol=1e-9)
    # vmap over an already batched call, and nested vmaps, fold into one batch.
    nested = jax.vmap(solve, in_axes=(None, 0))(A[0], b.reshape(5, 1, 4))
    np.testing.assert_allclose(nested[:, 0], batched, atol=1e-9)
    twice = jax.vmap(jax.vmap(solve, in_axes=(None, 0)), in_axes=(0, None))(A[:2], b)
    assert twice.shape == (2, 5, 3)
    np.testing.assert_allclose(twice[1], solve(A[1], b), atol=1e-9)
    # Gradients through vmap equal the batched call's (shared A: summed over the batch).
    grad_vmap = jax.grad(lambda A, b: jax.vmap(solve, in_axes=(None, 0))(A, b).sum(),
                         argnums=(0, 1))(A[0], b)
    grad_batch = jax.grad(lambda A, b: solve(A, b).sum(), argnums=(0, 1))(A[0], b)
    for g_v, g_b in zip(grad_vmap, grad_batch):
        np.testing.assert_allclose(g_v, g_b, atol=1e-8)
    per_element = jax.vmap(jax.grad(lambda A, b: solve(A, b).sum()), in_axes=(None, 0))(A[0], b)
    np.testing.assert_allclose(per_element.sum(axis=0), grad_batch[0], atol=1e-8)


def test_float32_by_default_and_float64_with_x64():
    problem, params, variables = least_squares()
    layer = CvxpyLayer(problem, params, variables)
    A, b = data(np.random.default_rng(9), dtype=np.float32)
    out, = jax.jit(layer)(jnp.asarray(A), jnp.asarray(b))
    assert out.dtype == jnp.float32
    grad = jax.grad(lambda b: layer(A, b)[0].sum())(jnp.asarray(b))
    assert grad.dtype == jnp.float32
    with jax.enable_x64(True):
        out64, = layer(jnp.asarray(A, dtype=jnp.float64), jnp.asarray(b, dtype=jnp.float64))
        assert out64.dtype == jnp.float64


def test_errors(x64):
    problem, params, variables = least_squares()
    layer = CvxpyLayer(problem, params, variables)
    A, b = data(np.random.default_rng(10))
    with pytest.raises(cvxlayers.ParameterError, match=r"`A` \(position 0\) expects shape"):
        jax.jit(layer)(A[:, :2], b)                            # at trace time
    b[1, 0] = np.nan
    with pytest.raises(cvxlayers.ParameterError, match=r"`b`.*NaN.*\[1\]"):
        layer(A, b)                                            # eagerly: the core's error
    with pytest.raises(Exception, match=r"`b`.*NaN"):
        jax.jit(layer)(A, b)                                   # inside JAX's callback error


def test_solver_error_keeps_statuses_eagerly():
    x, c = cp.Variable(2), cp.Parameter(name="c")
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x)), [cp.sum(x) <= c, x >= 0.5])
    layer = CvxpyLayer(problem, [c], [x], solver="CLARABEL")
    with pytest.raises(cvxlayers.SolverError) as info:
        layer(np.array([2.0, -1.0]))
    assert info.value.failed == [1] and info.value.statuses[1] == "infeasible"


def test_derivative_work_only_under_grad(need_grad_calls, x64):
    problem, params, variables = least_squares()
    layer = CvxpyLayer(problem, params, variables)
    A, b = data(np.random.default_rng(11))
    layer(A, b)
    jax.jit(layer)(A, b)
    jax.grad(lambda b: layer(A, b)[0].sum())(b)
    assert need_grad_calls == [False, False, True]
