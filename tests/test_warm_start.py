"""Warm starts: same answers and gradients as cold starts, fewer iterations, cold when the
batch size changes, one warning for solvers that cannot, no state carried by pickling or
fork; in PyTorch, TensorFlow and JAX."""

import copy
import os
import pickle
import warnings

import cvxpy as cp
import numpy as np
import pytest

from cvxlayers import LayerCore

M, N, B = 12, 6, 8
SCS_ARGS = {"eps_abs": 1e-8, "eps_rel": 1e-8, "max_iters": 100_000}


def _lasso():
    """min ‖Ax − b‖² + 0.1‖x‖₁ s.t. −1 ≤ x ≤ 1 (a QP; SCS takes its P)."""
    x = cp.Variable(N)
    A, b = cp.Parameter((M, N)), cp.Parameter(M)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b) + 0.1 * cp.norm1(x)),
                         [x >= -1, x <= 1])
    return problem, [A, b], [x]


def _values(seed=0, batch=B):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, M, N)), rng.standard_normal((batch, M))


def _moved(values, scale=1e-3, seed=1):
    """The values moved a little, as one training step moves them."""
    rng = np.random.default_rng(seed)
    return [v + scale * rng.standard_normal(v.shape) for v in values]


def _reference(problem, params, variables, values):
    """CVXPY's own solve (Clarabel, tight), element by element."""
    out = []
    for i in range(values[0].shape[0]):
        for p, v in zip(params, values):
            p.value = v[i]
        problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10,
                      tol_feas=1e-10)
        out.append(variables[0].value)
    return np.stack(out)


# --- the core: answers, iterations, batch size, warnings --------------------------------

@pytest.mark.parametrize("solver_args, ratio, atol", [
    # SCS's defaults: the start saves most iterations (here 50 cold, 25 warm: SCS checks
    # convergence every 25 iterations, and the lasso's P form converges at the second check)
    ({}, 0.6, 2e-3),
    (SCS_ARGS, 1.0, 1e-5),  # eps 1e-8: the last digits cost the same from any start
])
def test_scs_warm_start_same_answer_fewer_iterations(solver_args, ratio, atol):
    problem, params, variables = _lasso()
    core = LayerCore(problem, params, variables, solver_args=solver_args)
    first, second = _values(), _moved(_values())
    core.forward(first, need_grad=False)
    cold, _ = core.forward(second, need_grad=False)
    cold_iters = core.last_stats.iterations.copy()
    assert not core.last_stats.warm.any()
    core.forward(first, need_grad=False)
    warm, _ = core.forward(second, {"warm_start": True}, need_grad=False)
    stats = core.last_stats
    assert stats.warm.all() and stats.solver == "SCS"
    assert (stats.iterations > 0).all() and (cold_iters > 0).all()
    # Started at the previous step's solution, SCS needs fewer iterations.
    assert stats.iterations.mean() < ratio * cold_iters.mean(), (stats.iterations, cold_iters)
    expected = _reference(problem, params, variables, second)
    np.testing.assert_allclose(warm[0], expected, atol=atol)
    np.testing.assert_allclose(cold[0], expected, atol=atol)


def test_constructor_default_and_call_override():
    problem, params, variables = _lasso()
    core = LayerCore(problem, params, variables, warm_start=True)
    values = _values()
    core.forward(values, need_grad=False)
    assert not core.last_stats.warm.any()  # nothing stored yet: cold
    core.forward(values, need_grad=False)
    assert core.last_stats.warm.all()
    core.forward(values, {"warm_start": False}, need_grad=False)
    assert not core.last_stats.warm.any()


def test_batch_size_change_starts_cold():
    problem, params, variables = _lasso()
    core = LayerCore(problem, params, variables, warm_start=True)
    core.forward(_values(batch=B), need_grad=False)
    core.forward(_values(batch=B - 1), need_grad=False)
    assert not core.last_stats.warm.any()
    core.forward(_values(batch=B - 1), need_grad=False)
    assert core.last_stats.warm.all()
    unbatched = [v[0] for v in _values()]  # batch of one, after a batch of B - 1
    core.forward(unbatched, need_grad=False)
    assert not core.last_stats.warm.any()


def test_failed_element_starts_cold_others_warm():
    x = cp.Variable(2)
    lo = cp.Parameter(2)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x)), [x >= lo, x <= 1])
    core = LayerCore(problem, [lo], [x], on_failure="warn", warm_start=True)
    values = np.array([[0.5, 0.2], [2.0, 0.0], [0.1, 0.3]])  # element 1: infeasible
    with pytest.warns(RuntimeWarning, match="failed on 1 of 3"):
        core.forward([values], need_grad=False)
    ok = np.array([[0.5, 0.2], [0.4, 0.0], [0.1, 0.3]])
    out, _ = core.forward([ok], need_grad=False)
    np.testing.assert_array_equal(core.last_stats.warm, [True, False, True])
    np.testing.assert_allclose(out[0], np.maximum(ok, 0), atol=1e-4)


@pytest.mark.parametrize("solver", ["ECOS", "CLARABEL"])
def test_solvers_that_cannot_warm_start_warn_once(solver):
    problem, params, variables = _lasso()
    core = LayerCore(problem, params, variables, solver=solver)
    values = _values()
    cold, _ = core.forward(values, need_grad=False)
    with pytest.warns(UserWarning, match=f"warm_start=True has no effect with solver {solver}"):
        warm, _ = core.forward(values, {"warm_start": True}, need_grad=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again, _ = core.forward(values, {"warm_start": True}, need_grad=False)
    np.testing.assert_array_equal(warm[0], cold[0])
    np.testing.assert_array_equal(again[0], cold[0])
    assert not core.last_stats.warm.any() and (core.last_stats.iterations > 0).all()


def test_qp_warm_start_same_answer_fewer_iterations():
    problem, params, variables = _lasso()
    core = LayerCore(problem, params, variables, solver="QP")
    first, second = _values(), _moved(_values(), scale=1e-3)
    core.forward(first, need_grad=False)
    cold, _ = core.forward(second, need_grad=False)
    cold_iters = core.last_stats.iterations.copy()
    core.forward(first, need_grad=False)
    warm, _ = core.forward(second, {"warm_start": True}, need_grad=False)
    assert core.last_stats.warm.all() and (cold_iters > 0).all()
    # Each element's Newton steps, from the shifted previous point: fewer.
    assert core.last_stats.iterations.mean() < 0.8 * cold_iters.mean(), (
        core.last_stats.iterations, cold_iters)
    expected = _reference(problem, params, variables, second)
    np.testing.assert_allclose(warm[0], expected, atol=1e-6)
    np.testing.assert_allclose(cold[0], expected, atol=1e-6)


def _store_far_point(core, solver, scale=1e6, quad_obj=None):
    """Replaces the layer's stored point with one far from any solution (white box), for
    the formulation the layer's defaults solve (or the one ``quad_obj`` names)."""
    backend = core._backend(solver)
    if quad_obj is None:
        quad_obj = core._quad_obj(type(backend))
    layout = core._formulation(quad_obj).layout
    arrays, _ = backend.warm_store.get(layout, B)
    signs = np.random.default_rng(0).standard_normal
    backend.warm_store.put(layout, tuple(scale * np.sign(signs(a.shape)) for a in arrays))


def test_qp_far_start_falls_back_to_cold():
    """An interior-point method started far from the central path can stall; the batch is
    then solved cold, with the cold answer."""
    problem, params, variables = _lasso()
    core = LayerCore(problem, params, variables, solver="QP")
    values = _values()
    cold, _ = core.forward(values, need_grad=False)
    _store_far_point(core, "QP")
    warm, _ = core.forward(values, {"warm_start": True}, need_grad=False)
    assert not core.last_stats.warm.any()
    assert all(status == "optimal" for status in core.last_stats.statuses)
    np.testing.assert_array_equal(warm[0], cold[0])


def test_scs_element_that_misses_its_limit_from_a_warm_start_is_solved_cold():
    # The cone form (LPGD keeps it), where this far start costs SCS iterations; on the P
    # form SCS's rescaling recovers from it within the cold count.
    problem, params, variables = _lasso()
    core = LayerCore(problem, params, variables,
                     solver_args={"max_iters": 100_000, "mode": "lpgd"})
    values = _values()
    cold, _ = core.forward(values, need_grad=False)
    # Every element converges cold within this limit (SCS checks convergence every 25
    # iterations; its count is that check's, and the limit must let that check run).
    limit = int(core.last_stats.iterations.max()) + 1
    _store_far_point(core, "SCS", quad_obj=False)
    core.forward(values, {"warm_start": True}, need_grad=False)
    from_far = core.last_stats.iterations.copy()
    assert (from_far > limit).any() and core.last_stats.warm.all()
    _store_far_point(core, "SCS", quad_obj=False)
    warm, _ = core.forward(values, {"warm_start": True, "max_iters": limit}, need_grad=False)
    stats = core.last_stats
    np.testing.assert_array_equal(stats.warm, from_far < limit)  # the others fell back
    assert all(status == "optimal" for status in stats.statuses)
    fell_back = ~stats.warm
    np.testing.assert_array_equal(warm[0][fell_back], cold[0][fell_back])
    np.testing.assert_allclose(warm[0], cold[0], atol=2e-3)


def test_bad_warm_start_value_is_named():
    problem, params, variables = _lasso()
    with pytest.raises(TypeError, match=r"`warm_start` must be True or False; received 'yes'"):
        LayerCore(problem, params, variables, warm_start="yes")
    core = LayerCore(problem, params, variables)
    with pytest.raises(TypeError, match=r"`warm_start` must be True or False; received 1"):
        core.forward(_values(), {"warm_start": 1}, need_grad=False)
    torch = pytest.importorskip("torch")
    from cvxlayers.torch import CvxpyLayer

    layer = CvxpyLayer(problem, params, variables)
    with pytest.raises(TypeError, match=r"`warm_start` must be True or False; received tensor"):
        layer(*(torch.tensor(v) for v in _values()), warm_start=torch.tensor(True))


def test_concurrent_warm_calls_of_one_layer_give_their_own_answers():
    """Threads share the layer's stored point (each call starts from some earlier call's
    solution, possibly another thread's problem): every answer is still its own."""
    from concurrent.futures import ThreadPoolExecutor

    problem, params, variables = _lasso()
    core = LayerCore(problem, params, variables, n_jobs=1, warm_start=True,
                     solver_args=SCS_ARGS)  # tight, so that any start gives the same digits
    tasks = [_values(seed=s, batch=B if s % 2 else B - 2) for s in range(4)]
    expected = [core.forward(v, {"warm_start": False}, need_grad=False)[0][0] for v in tasks]

    def work(k):
        return [core.forward(tasks[k], need_grad=False)[0][0] for _ in range(3)]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(work, range(4)))
    for got, want in zip(results, expected):
        for x in got:
            np.testing.assert_allclose(x, want, atol=1e-6)


# --- state not carried -------------------------------------------------------------------

def test_pickled_and_copied_layers_start_cold():
    problem, params, variables = _lasso()
    core = LayerCore(problem, params, variables, warm_start=True)
    values = _values()
    core.forward(values, need_grad=False)
    for clone in (pickle.loads(pickle.dumps(core)), copy.deepcopy(core)):
        assert clone.last_stats is None
        clone.forward(values, need_grad=False)
        assert not clone.last_stats.warm.any()
    core.forward(values, need_grad=False)  # the original keeps its own point
    assert core.last_stats.warm.all()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_starts_cold():
    problem, params, variables = _lasso()
    core = LayerCore(problem, params, variables, warm_start=True, n_jobs=2)
    values = _values()
    core.forward(values, need_grad=False)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        try:
            core.forward(values, need_grad=False)
            first = bool(core.last_stats.warm.any())
            core.forward(values, need_grad=False)
            os._exit(0 if (not first and core.last_stats.warm.all()) else 3)
        except BaseException:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    core.forward(values, need_grad=False)
    assert core.last_stats.warm.all()


# --- adapters: answers and gradients, warm against cold ---------------------------------

def _loss_weights():
    return np.random.default_rng(7).standard_normal((B, N))


def test_torch_warm_matches_cold_values_and_gradients():
    torch = pytest.importorskip("torch")
    from cvxlayers.torch import CvxpyLayer

    layer = CvxpyLayer(*_lasso(), solver_args=SCS_ARGS)
    first, second = _values(), _moved(_values())
    w = torch.tensor(_loss_weights())
    results = {}
    for warm in (False, True):
        layer(*(torch.tensor(v) for v in first))  # the previous step
        A, b = (torch.tensor(v, requires_grad=True) for v in second)
        x, = layer(A, b, warm_start=warm)
        (x * w).sum().backward()
        assert layer.core.last_stats.warm.all() == warm
        results[warm] = (x.detach().numpy(), A.grad.numpy(), b.grad.numpy())
    for cold, warm in zip(results[False], results[True]):
        np.testing.assert_allclose(warm, cold, atol=1e-5)
    # Finite differences of warm-started solves (each from the previous one's solution).
    tight = {"eps_abs": 1e-11, "eps_rel": 1e-11, "max_iters": 200_000}
    A, b = (torch.tensor(v, requires_grad=True) for v in (second[0][0], second[1][0]))
    assert torch.autograd.gradcheck(
        lambda A, b: layer(A, b, warm_start=True, solver_args=tight)[0], (A, b), eps=1e-5,
        atol=1e-5, rtol=1e-3)
    assert layer.core.last_stats.warm.all()


def test_tensorflow_warm_matches_cold_eager_and_graph():
    tf = pytest.importorskip("tensorflow")
    from cvxlayers.tensorflow import CvxpyLayer

    layer = CvxpyLayer(*_lasso(), solver_args=SCS_ARGS)
    first, second = _values(), _moved(_values())
    w = tf.constant(_loss_weights())

    def value_and_grads(warm, graph):
        def step(A, b):
            with tf.GradientTape() as tape:
                tape.watch([A, b])
                x, = layer(A, b, warm_start=warm)
                loss = tf.reduce_sum(x * w)
            return (x, *tape.gradient(loss, [A, b]))
        fn = tf.function(step) if graph else step
        layer(*(tf.constant(v) for v in first))
        return [t.numpy() for t in fn(*(tf.constant(v) for v in second))]

    cold = value_and_grads(False, False)
    for graph in (False, True):
        warm = value_and_grads(True, graph)
        for c, h in zip(cold, warm):
            np.testing.assert_allclose(h, c, atol=1e-5)
    config = layer.get_config()
    assert config["warm_start"] is False
    assert CvxpyLayer.from_config({**config, "warm_start": True}).core.warm_start is True


def test_jax_warm_matches_cold_eager_and_jit(x64):
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp
    from cvxlayers.jax import CvxpyLayer

    layer = CvxpyLayer(*_lasso(), solver_args=SCS_ARGS)
    first, second = _values(), _moved(_values())
    w = jnp.asarray(_loss_weights())

    def loss(A, b, warm):
        return jnp.sum(layer(A, b, warm_start=warm)[0] * w)

    cold_x, = layer(*second)
    cold_g = jax.grad(loss, argnums=(0, 1))(*second, False)
    layer(*first)
    warm_x, = layer(*second, warm_start=True)
    assert layer.core.last_stats.warm.all()
    np.testing.assert_allclose(warm_x, cold_x, atol=1e-5)
    jitted = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)
    for _ in range(2):  # the second call starts from the first's solution
        layer(*first)
        warm_g = jitted(*(jnp.asarray(v) for v in second), True)
        assert layer.core.last_stats.warm.all()
        for c, h in zip(cold_g, warm_g):
            np.testing.assert_allclose(h, c, atol=1e-5)
