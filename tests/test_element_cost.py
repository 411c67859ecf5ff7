"""The thread pool's choice per batch (``pool.ElementCost``): elements measured cheaper than
``SERIAL_BELOW_S`` run on the caller's thread from the next batch on, expensive ones on the
pool; the layer's answers do not depend on the choice."""

import threading
import time

import cvxpy as cp
import numpy as np
import pytest

from cvxlayers.backends import pool


def _threads_used(cost, seconds_per_element, size=6):
    used = set()

    def work(i):
        used.add(threading.get_ident())
        end = time.thread_time() + seconds_per_element
        while time.thread_time() < end:  # CPU work: it counts in thread_time
            pass
        return i

    assert pool.map_batch(work, size, 2, cost) == list(range(size))
    return used


def test_cheap_elements_run_on_the_calling_thread_after_one_batch():
    cost = pool.ElementCost()
    assert cost.workers(2, 6) == 2  # not measured yet: the pool
    _threads_used(cost, 0.0)
    assert cost.seconds is not None and cost.seconds < pool.SERIAL_BELOW_S
    assert _threads_used(cost, 0.0) == {threading.get_ident()}


def test_expensive_elements_stay_on_the_pool():
    cost = pool.ElementCost()
    _threads_used(cost, 3 * pool.SERIAL_BELOW_S)
    assert cost.seconds >= pool.SERIAL_BELOW_S
    assert cost.workers(2, 6) == 2
    assert threading.get_ident() not in _threads_used(cost, 3 * pool.SERIAL_BELOW_S)


def test_without_a_cost_the_pool_is_used_as_asked():
    assert pool.map_batch(lambda i: i * i, 4, 2) == [0, 1, 4, 9]


@pytest.mark.parametrize("mode", ["lsqr", "dense"])
def test_layer_answers_and_gradients_do_not_depend_on_the_choice(monkeypatch, mode):
    torch = pytest.importorskip("torch")
    from cvxlayers.torch import CvxpyLayer

    u = cp.Variable(3)
    M, d = cp.Parameter((5, 3)), cp.Parameter(5)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(M @ u + d)), [cp.norm(u, "inf") <= 1])
    rng = np.random.default_rng(0)
    M_v = torch.tensor(rng.standard_normal((5, 3)), requires_grad=True)
    d_v = torch.tensor(rng.standard_normal((8, 5)), requires_grad=True)

    def run(threshold):
        monkeypatch.setattr(pool, "SERIAL_BELOW_S", threshold)
        layer = CvxpyLayer(problem, parameters=[M, d], variables=[u], mode=mode)
        for _ in range(2):  # the second call runs on the choice the first measured
            (sol,) = layer(M_v, d_v)
        grads = torch.autograd.grad((sol * torch.arange(3.0)).sum(), [M_v, d_v])
        return sol.detach().numpy(), [g.numpy() for g in grads]

    serial, threaded = run(float("inf")), run(0.0)
    np.testing.assert_allclose(serial[0], threaded[0], atol=1e-12)
    assert np.abs(serial[1][0]).max() > 1e-3
    for a, b in zip(serial[1], threaded[1]):
        np.testing.assert_allclose(a, b, atol=1e-12)
