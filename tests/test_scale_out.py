"""Scale-out on real engines: a Dask LocalCluster (2 worker processes), Ray
(``ray.init(num_cpus=2)``) and a ProcessPoolExecutor give the thread pool's results and
gradients (to rounding), keep per-element statuses, report failed chunks with their batch
indices, survive a killed worker, and ship the compiled problem once.

The engines are optional extras: their tests skip without them. The clusters are module
fixtures (starting one takes seconds).
"""

import os
import pickle
import tempfile
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import cvxpy as cp
import numpy as np
import pytest

import cvxlayers
from cvxlayers.distributed import engines

torch = pytest.importorskip("torch")
from cvxlayers.torch import CvxpyLayer  # noqa: E402

B = 9  # chunks of 2 below: four full chunks and a short one


def _socp():
    x = cp.Variable(3)
    A, b = cp.Parameter((5, 3)), cp.Parameter(5)
    problem = cp.Problem(cp.Minimize(cp.norm(A @ x - b) + 0.1 * cp.norm(x, 1)), [x >= -1])
    return problem, [A, b], [x]


def _qp():
    x = cp.Variable(3)
    A, b = cp.Parameter((5, 3)), cp.Parameter(5)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b)), [x >= -0.2, cp.sum(x) == 0.5])
    return problem, [A, b], [x]


PROBLEMS = {"SCS": _socp, "QP": _qp}


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return (torch.tensor(rng.standard_normal((B, 5, 3)), requires_grad=True),
            torch.tensor(rng.standard_normal(5), requires_grad=True))  # b unbatched: summed


def _run(layer, params, **kwargs):
    (sol,) = layer(*params, **kwargs)
    weights = torch.linspace(-1.0, 2.0, sol.numel(), dtype=sol.dtype).reshape(sol.shape)
    (sol * weights).sum().backward()
    grads = [p.grad.detach().clone() for p in params]
    for p in params:
        p.grad = None
    return sol.detach().numpy(), [g.numpy() for g in grads]


def _assert_same(got, ref):
    np.testing.assert_allclose(got[0], ref[0], rtol=0, atol=1e-9)
    for g, r in zip(got[1], ref[1]):
        np.testing.assert_allclose(g, r, rtol=0, atol=1e-8)


@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                       dashboard_address=None)
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def process_pool():
    with ProcessPoolExecutor(2) as pool:
        yield pool


@pytest.fixture(params=["processes", "dask", "ray"])
def executor(request):
    if request.param == "processes":
        return request.getfixturevalue("process_pool")
    if request.param == "dask":
        return request.getfixturevalue("dask_client")
    request.getfixturevalue("ray_session")
    return "ray"


@pytest.mark.parametrize("solver", ["SCS", "QP"])
def test_engine_matches_thread_pool(executor, solver):
    problem, params, variables = PROBLEMS[solver]()
    values = _params()
    ref = _run(CvxpyLayer(problem, params, variables, solver=solver), values)
    layer = CvxpyLayer(problem, params, variables, solver=solver, executor=executor,
                       chunk_size=2)
    _assert_same(_run(layer, values), ref)
    assert layer.core.last_stats.statuses == ["optimal"] * B
    # Per call, on a layer without an executor, with the automatic chunk size.
    plain = CvxpyLayer(problem, params, variables, solver=solver)
    _assert_same(_run(plain, values, solver_args={"executor": executor}), ref)


def _box():
    """x ∈ [lo, hi]: infeasible for an element with lo > hi."""
    x = cp.Variable(2)
    c, lo, hi = cp.Parameter(2), cp.Parameter(2), cp.Parameter(2)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - c)), [x >= lo, x <= hi])
    return problem, [c, lo, hi], [x]


def _box_values(bad):
    c = np.linspace(-2, 2, 2 * B).reshape(B, 2)
    lo, hi = -np.ones((B, 2)), np.ones((B, 2))
    lo[bad] = 2.0
    return [torch.tensor(c), torch.tensor(lo), torch.tensor(hi)]


def test_failed_elements_keep_global_indices(dask_client):
    problem, params, variables = _box()
    layer = CvxpyLayer(problem, params, variables, executor=dask_client, chunk_size=2)
    with pytest.raises(cvxlayers.SolverError) as info:
        layer(*_box_values(bad=5))
    assert info.value.failed == [5]
    assert info.value.statuses[5] == "infeasible" and info.value.statuses.count("optimal") == 8
    warn = CvxpyLayer(problem, params, variables, executor=dask_client, chunk_size=2,
                      on_failure="warn")
    with pytest.warns(RuntimeWarning, match="element 5"):
        (sol,) = warn(*_box_values(bad=5))
    assert np.isnan(sol[5].numpy()).all() and not np.isnan(sol[[0, 4, 6]].numpy()).any()
    np.testing.assert_allclose(sol[0].numpy(), np.clip(_box_values(5)[0][0].numpy(), -1, 1),
                               atol=1e-4)


def _kill_once(marker):
    """A chunk function that kills its worker process the first time it runs anywhere
    (the marker is created atomically: two workers starting at once must not both die)."""
    def chunk(core, value):
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return value * 2
        os._exit(1)
    return chunk


def test_dask_killed_worker_is_retried(dask_client):
    problem, params, variables = _socp()
    layer = CvxpyLayer(problem, params, variables, executor=dask_client, chunk_size=2)
    with tempfile.TemporaryDirectory() as tmp:
        results = engines.DaskEngine(dask_client).map(
            layer.core, _kill_once(os.path.join(tmp, "killed")), [(1,), (2,), (3,)])
    assert results == [2, 4, 6]
    values = _params(1)  # and the layer still solves after losing a worker
    _assert_same(_run(layer, values), _run(CvxpyLayer(problem, params, variables), values))


def test_ray_killed_worker_is_retried(ray_session):
    problem, params, variables = _socp()
    layer = CvxpyLayer(problem, params, variables)
    with tempfile.TemporaryDirectory() as tmp:
        results = engines.RayEngine().map(
            layer.core, _kill_once(os.path.join(tmp, "killed")), [(1,), (2,)])
    assert results == [2, 4]


def _die(core, value):  # a module-level function: a ProcessPoolExecutor pickles by name
    os._exit(1)


def test_dead_process_is_reported():
    problem, params, variables = _socp()
    layer = CvxpyLayer(problem, params, variables, chunk_size=4)
    with ProcessPoolExecutor(1) as pool:
        results = engines.resolve(pool).map(layer.core, _die, [(0,), (1,)])
        assert all(isinstance(r, engines.ChunkFailure) for r in results)
        # The pool is broken now: the next call says so rather than hanging.
        with pytest.raises(cvxlayers.EngineError, match="does not accept work"):
            layer(*_params(), solver_args={"executor": pool})


def test_failed_chunk_is_a_solver_error_naming_its_elements(monkeypatch):
    problem, params, variables = _socp()
    real = cvxlayers.LayerCore.solve_chunk

    def flaky(core, values, solver_args, **kwargs):
        if np.asarray(values[0]).shape[0] == 1:  # the short last chunk: elements 8..8
            raise RuntimeError("worker lost its disk")
        return real(core, values, solver_args, **kwargs)

    monkeypatch.setattr(cvxlayers.LayerCore, "solve_chunk", flaky)
    layer = CvxpyLayer(problem, params, variables, executor=ThreadPoolExecutor(2),
                       chunk_size=4)
    with pytest.raises(cvxlayers.SolverError, match=r"batch elements 8\.\.8: RuntimeError: "
                       "worker lost its disk") as info:
        layer(*_params())
    assert info.value.failed == [8]


def test_problem_ships_once(process_pool, monkeypatch):
    problem, params, variables = _socp()
    layer = CvxpyLayer(problem, params, variables, executor=process_pool, chunk_size=1)
    dumps = []
    real = pickle.dumps
    monkeypatch.setattr(engines.pickle, "dumps", lambda obj: dumps.append(1) or real(obj))
    values = _params()
    for _ in range(3):
        _run(layer, values)
    assert len(dumps) <= 1  # pickled for the processes that asked, once, then cached there


def test_dask_state_does_not_accumulate(dask_client):
    problem, params, variables = _socp()
    layer = CvxpyLayer(problem, params, variables, executor=dask_client, chunk_size=3)
    values = _params()
    for _ in range(3):
        _run(layer, values)
    assert len(layer.core.remote_handles) == 1  # one scattered copy, reused
    cached = dask_client.run(lambda: sum(1 for _ in engines._CACHE))
    assert all(n <= engines._CACHE_SIZE for n in cached.values())
    tokens = dask_client.run(lambda: list(engines._CACHE))
    assert sum(tokens_w.count(layer.core.token) for tokens_w in tokens.values()) <= 2


def test_dask_backward_uses_the_kept_state_and_frees_it(dask_client):
    from cvxlayers.distributed import chunks

    problem, params, variables = _socp()
    layer = CvxpyLayer(problem, params, variables, executor=dask_client, chunk_size=3)
    values = _params()
    ref = _run(CvxpyLayer(problem, params, variables), values)
    (sol,) = layer(*values)
    kept = dask_client.run(chunks.kept_states)
    assert sum(kept.values()) == 3  # one state per chunk, on the workers
    (sol * torch.linspace(-1.0, 2.0, sol.numel(), dtype=sol.dtype).reshape(sol.shape)
     ).sum().backward()
    np.testing.assert_allclose(values[0].grad.numpy(), ref[1][0], atol=1e-8)
    assert sum(dask_client.run(chunks.kept_states).values()) == 0  # taken by the backward
    for _ in range(3):  # forwards whose backward never comes: bounded per process
        layer(*_params())
    assert all(n <= chunks.KEPT_PER_PROCESS for n in dask_client.run(chunks.kept_states).values())
    with torch.no_grad():
        layer(*values)


def test_jax_gradients_on_dask(dask_client):
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    from cvxlayers.jax import CvxpyLayer as JaxLayer

    problem, params, variables = _socp()
    A, b = (np.asarray(v.detach().numpy()) for v in _params())

    def loss(layer):
        return lambda A, b: (layer(A, b)[0] ** 2).sum()

    ref = jax.grad(loss(JaxLayer(problem, params, variables)), argnums=(0, 1))(A, b)
    got = jax.grad(loss(JaxLayer(problem, params, variables, executor=dask_client,
                                 chunk_size=4)), argnums=(0, 1))(A, b)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=1e-8)


def test_tensorflow_gradients_on_ray(ray_session):
    tf = pytest.importorskip("tensorflow")
    from cvxlayers.tensorflow import CvxpyLayer as TfLayer

    problem, params, variables = _socp()
    A, b = (tf.constant(v.detach().numpy()) for v in _params())

    def grads(layer):
        with tf.GradientTape() as tape:
            tape.watch([A, b])
            loss = tf.reduce_sum(layer(A, b)[0] ** 2)
        return [g.numpy() for g in tape.gradient(loss, [A, b])]

    ref = grads(TfLayer(problem, params, variables))
    got = grads(TfLayer(problem, params, variables, executor="ray", chunk_size=4))
    for g, r in zip(got, ref):
        assert np.abs(r).max() > 1e-3  # a gradient that carries something
        np.testing.assert_allclose(g, r, atol=1e-8)


def test_unusable_engines_are_clear_errors():
    problem, params, variables = _socp()
    pool = ThreadPoolExecutor(1)
    pool.shutdown()
    layer = CvxpyLayer(problem, params, variables, executor=pool)
    with pytest.raises(cvxlayers.EngineError, match="does not accept work"):
        layer(*_params())
    with pytest.raises(TypeError, match="received list"):
        CvxpyLayer(problem, params, variables, executor=[1])
    with pytest.raises(ValueError, match="'dask'"):
        CvxpyLayer(problem, params, variables, executor="dask")
    with pytest.raises(ValueError, match="chunk_size.*received 0"):
        CvxpyLayer(problem, params, variables, chunk_size=0)
    with pytest.raises(ValueError, match="warm_start"):
        CvxpyLayer(problem, params, variables, executor=ThreadPoolExecutor(1))(
            *_params(), warm_start=True)


def test_closed_dask_client_is_a_clear_error():
    distributed = pytest.importorskip("distributed")
    client = distributed.Client(processes=False, n_workers=1, threads_per_worker=1,
                                dashboard_address=":0")
    client.close()
    problem, params, variables = _socp()
    layer = CvxpyLayer(problem, params, variables, executor=client)
    with pytest.raises(cvxlayers.EngineError, match="not running"):
        layer(*_params())
