"""Reliability of the JAX layer: no state outlives its gradient, any number of calls before
one backward (lax.scan, eager loops), Jacobians (jacrev, vmap of grad), pickling and
deep copies before and after use, and narrow float dtypes (bfloat16, float16)."""

import copy
import gc
import pickle

import cvxpy as cp
import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
import torch  # noqa: E402

from cvxlayers.core import ForwardState  # noqa: E402
from cvxlayers.jax import CvxpyLayer  # noqa: E402
from cvxlayers.torch import CvxpyLayer as TorchLayer  # noqa: E402

SOLVERS = ["SCS", "QP"]


def problem():
    """A box-constrained least squares: a QP, so every backend takes it."""
    x = cp.Variable(3)
    A, b = cp.Parameter((4, 3), name="A"), cp.Parameter(4, name="b")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b) + 0.1 * cp.sum_squares(x)),
                      [x >= -0.3, x <= 0.3])
    return prob, [A, b], [x]


def make_layer(solver="SCS", cls=CvxpyLayer):
    prob, params, variables = problem()
    return cls(prob, params, variables, solver=solver)


def data(seed=0, batch=None):
    rng = np.random.default_rng(seed)
    lead = () if batch is None else (batch,)
    return rng.standard_normal((4, 3)), rng.standard_normal(lead + (4,))


def live_states() -> int:
    gc.collect()
    return sum(type(o) is ForwardState for o in gc.get_objects())


@pytest.mark.parametrize("solver", SOLVERS)
def test_nothing_retained_after_backward(solver, x64):
    layer = make_layer(solver)
    A, b = data()
    before = live_states()
    grad = jax.jit(jax.grad(lambda A, b: layer(A, b)[0].sum(), argnums=(0, 1)))
    for k in range(20):
        grad(A, b + 0.01 * k)
    jax.grad(lambda b: layer(A, b)[0].sum())(b)  # eager grad too
    assert live_states() == before
    # What the layer keeps does not grow with the number of calls: one traced function per
    # call signature (here: the jitted grad's and the eager grad's), no per-call entries.
    assert len(layer._solve_functions) <= 2
    assert not any(isinstance(v, (dict, list)) and v for k, v in vars(layer).items()
                   if k not in ("core", "_solve_functions"))


def test_eager_grad_loop_reuses_one_traced_function(x64):
    """Each call used to build a new callback, which JAX compiled anew: eager loops
    recompiled every step and grew by about 3 MiB per call (benchmarks/memory.py)."""
    layer = make_layer()
    A, b = data()
    grad = jax.grad(lambda b: layer(A, b)[0].sum())
    for k in range(5):
        grad(b + 0.01 * k)
    assert len(layer._solve_functions) == 1
    copied = pickle.loads(pickle.dumps(layer))   # the cache is not pickled, and rebuilds
    np.testing.assert_allclose(jax.grad(lambda b: copied(A, b)[0].sum())(b), grad(b),
                               atol=1e-6)


def test_state_lives_as_long_as_vjp_fn(x64):
    layer = make_layer()
    A, b = data()
    out, vjp_fn = jax.vjp(lambda b: layer(A, b)[0], b)
    first, = vjp_fn(jnp.ones(3))
    second, = vjp_fn(jnp.ones(3))  # callable twice
    np.testing.assert_array_equal(first, second)
    del vjp_fn
    assert live_states() == 0


@pytest.mark.parametrize("solver", SOLVERS)
def test_scan_200_steps_under_grad(solver, x64):
    layer = make_layer(solver)
    A, bs = data(1, batch=200)

    def loss(A, bs):
        def step(total, b):
            return total + jnp.sum(layer(A, b)[0] ** 2), None
        return jax.lax.scan(step, 0.0, bs)[0]

    dA, dbs = jax.jit(jax.grad(loss, argnums=(0, 1)))(A, bs)
    # The batched call is the same function of A and the rows of bs.
    ref_A, ref_bs = jax.grad(lambda A, bs: jnp.sum(layer(A, bs)[0] ** 2), argnums=(0, 1))(A, bs)
    np.testing.assert_allclose(dA, ref_A, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dbs, ref_bs, rtol=1e-6, atol=1e-8)
    assert np.abs(ref_A).max() > 1e-3


def test_eager_loop_200_calls_under_grad(x64):
    layer = make_layer()
    A, bs = data(2, batch=200)

    def loss(A):
        return sum(jnp.sum(layer(A, bs[i])[0]) for i in range(200))

    dA = jax.grad(loss)(A)
    ref = jax.grad(lambda A: jnp.sum(layer(A, bs)[0]))(A)
    np.testing.assert_allclose(dA, ref, rtol=1e-6, atol=1e-8)


def torch_jacobian(A, b, wrt):
    layer = make_layer(cls=TorchLayer)
    A_t, b_t = torch.tensor(A), torch.tensor(b)
    if wrt == "b":
        return torch.autograd.functional.jacobian(lambda b: layer(A_t, b)[0], b_t).numpy()
    return torch.autograd.functional.jacobian(lambda A: layer(A, b_t)[0], A_t).numpy()


@pytest.mark.parametrize("jit", [False, True])
def test_jacrev_matches_torch(jit, x64):
    layer = make_layer()
    A, b = data(3)
    wrap = jax.jit if jit else (lambda f: f)
    J_b = wrap(jax.jacrev(lambda b: layer(A, b)[0]))(b)
    J_A = wrap(jax.jacrev(lambda A: layer(A, b)[0]))(A)
    assert J_b.shape == (3, 4) and J_A.shape == (3, 4, 3)
    np.testing.assert_allclose(J_b, torch_jacobian(A, b, "b"), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(J_A, torch_jacobian(A, b, "A"), rtol=1e-6, atol=1e-8)
    assert np.abs(J_b).max() > 1e-2


def test_jacrev_of_batched_call_and_vmap_of_grad(x64):
    layer = make_layer()
    A, bs = data(4, batch=3)
    J = jax.jacrev(lambda bs: layer(A, bs)[0])(bs)          # (3, 3, 3, 4)
    for i in range(3):
        np.testing.assert_allclose(J[i, :, i], torch_jacobian(A, bs[i], "b"),
                                   rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(J[i, :, (i + 1) % 3], 0.0, atol=1e-12)
    per_row = jax.vmap(jax.grad(lambda b: jnp.sum(layer(A, b)[0] ** 2)))(bs)
    batched = jax.grad(lambda bs: jnp.sum(layer(A, bs)[0] ** 2))(bs)
    np.testing.assert_allclose(per_row, batched, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("solver", SOLVERS)
def test_pickle_and_deepcopy_before_and_after_use(solver):
    layer = make_layer(solver)
    A, b = (a.astype(np.float32) for a in data(5))
    fresh = [pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer)]
    grad = jax.grad(lambda A, b: layer(A, b)[0].sum(), argnums=(0, 1))
    g = grad(A, b)
    jax.jit(grad)(A, b)
    used = [pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer)]
    expected = layer(A, b)[0]
    for clone in fresh + used:
        np.testing.assert_allclose(clone(A, b)[0], expected, rtol=1e-6)
        clone_g = jax.grad(lambda A, b: clone(A, b)[0].sum(), argnums=(0, 1))(A, b)
        for got, want in zip(clone_g, g):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_narrow_floats_in_and_out(dtype):
    layer = make_layer()
    A, b = (jnp.asarray(a, dtype) for a in data(6))
    reference = layer(np.asarray(A, np.float32), np.asarray(b, np.float32))[0]
    eager, = layer(A, b)
    jitted, = jax.jit(layer)(A, b)
    numpy_in, = layer(np.asarray(A), np.asarray(b))  # NumPy arrays of ml_dtypes' bfloat16
    for out in (eager, jitted, numpy_in):
        assert out.dtype == dtype
        np.testing.assert_allclose(np.asarray(out, np.float32), reference, atol=2e-2)
    dA, db = jax.grad(lambda A, b: layer(A, b)[0].astype(jnp.float32).sum(),
                      argnums=(0, 1))(A, b)
    assert dA.dtype == dtype and db.dtype == dtype


def test_state_capacity_is_deprecated_and_ignored():
    prob, params, variables = problem()
    with pytest.warns(DeprecationWarning, match="state_capacity"):
        CvxpyLayer(prob, params, variables, state_capacity=8)


def test_backward_resolve_does_not_repeat_the_forwards_warning(x64):
    """The backward's re-solve warns nothing: the forward already reported the statuses."""
    layer = make_layer()
    A, b = data()
    with pytest.warns(RuntimeWarning, match="inaccurate") as record:
        jax.grad(lambda b: layer(A, b, solver_args={"max_iters": 5})[0].sum())(b)
    assert sum("inaccurate solution" in str(w.message) for w in record) == 1
