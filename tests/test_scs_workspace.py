"""SCS workspaces kept between warm-started calls (cvxlayers.backends.scs_workspace): the
same answers and gradients as cold solves when only b and c move (as in a rollout), a fresh
workspace when A or P moves, at most one workspace per element of the last warm call, none
after a cold call, a batch-size change, a copy or a pickle."""

import copy
import pickle

import cvxpy as cp
import numpy as np
import pytest

from cvxlayers import LayerCore

N, M_ROWS, B = 3, 5, 6


def _policy():
    """The control example's policy: u = argmin ‖M u + d‖² s.t. ‖u‖∞ ≤ 1 (an SOCP for SCS)."""
    u = cp.Variable(N)
    M, d = cp.Parameter((M_ROWS, N)), cp.Parameter(M_ROWS)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(M @ u + d)), [cp.norm(u, "inf") <= 1])
    return problem, [M, d], [u]


def _rollout(steps=4, seed=0, batch=B):
    """A fixed M and, per step, a batch of d that moves (the states of a rollout)."""
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((M_ROWS, N))
    d = 3.0 * rng.standard_normal((batch, M_ROWS))
    return M, [d + 0.05 * t * rng.standard_normal(d.shape) for t in range(steps)]


def _reference(problem, params, variables, M, d):
    out = []
    for d_i in d:
        params[0].value, params[1].value = M, d_i
        problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
        out.append(variables[0].value)
    return np.stack(out)


def _cache(core):
    return core._backend("SCS").__dict__.get("_workspace_cache")


def _workspace_ids(core):
    """Element -> the id of its kept SCS workspace (the caller keeps the objects alive,
    so that an id is never reused by a new one)."""
    _ALIVE.extend(slot[1] for slot in _cache(core)._slots.values())
    return {i: id(slot[1]) for i, slot in _cache(core)._slots.items()}


_ALIVE = []


@pytest.fixture(autouse=True)
def _release_workspaces():
    yield
    _ALIVE.clear()


def test_kept_workspaces_same_answers_and_fewer_iterations_when_only_b_moves():
    problem, params, variables = _policy()
    core = LayerCore(problem, params, variables, warm_start=True)
    M, ds = _rollout()
    iterations, ids = [], []
    for d in ds:
        (u,), _ = core.forward([M, d], need_grad=False)
        np.testing.assert_allclose(u, _reference(problem, params, variables, M, d), atol=2e-3)
        iterations.append(core.last_stats.iterations.mean())
        ids.append(_workspace_ids(core))
    assert len(_cache(core)) == B  # one workspace per element, no more
    assert ids[1] == ids[2] == ids[3]  # the same SCS objects, updated with the new b
    cold = LayerCore(problem, params, variables)
    cold.forward([M, ds[-1]], need_grad=False)
    assert iterations[-1] < 0.7 * cold.last_stats.iterations.mean()


def test_kept_workspace_gradients_match_cold():
    torch = pytest.importorskip("torch")
    from cvxlayers.torch import CvxpyLayer

    tight = {"eps_abs": 1e-9, "eps_rel": 1e-9, "max_iters": 100_000}
    problem, params, variables = _policy()
    M, ds = _rollout()
    w = torch.tensor(np.random.default_rng(3).standard_normal((B, N)))
    grads = {}
    for warm in (False, True):
        layer = CvxpyLayer(problem, params, variables, solver_args=tight, mode="dense")
        for d in ds[:-1]:
            layer(torch.tensor(M), torch.tensor(d), warm_start=warm)
        Mt, dt = (torch.tensor(v, requires_grad=True) for v in (M, ds[-1]))
        u, = layer(Mt, dt, warm_start=warm)
        (u * w).sum().backward()
        grads[warm] = (u.detach().numpy(), Mt.grad.numpy(), dt.grad.numpy())
        assert layer.core.last_stats.warm.all() == warm
        assert len(_cache(layer.core) or ()) == (B if warm else 0)
    for cold, warm in zip(grads[False], grads[True]):
        np.testing.assert_allclose(warm, cold, atol=1e-6)


def test_a_that_moved_gets_a_fresh_workspace_with_the_right_answer():
    problem, params, variables = _policy()
    core = LayerCore(problem, params, variables, warm_start=True)
    M, ds = _rollout()
    core.forward([M, ds[0]], need_grad=False)
    before = _workspace_ids(core)
    M2 = M + 0.01 * np.random.default_rng(5).standard_normal(M.shape)
    (u,), _ = core.forward([M2, ds[1]], need_grad=False)
    assert core.last_stats.warm.all()
    after = _workspace_ids(core)
    assert len(after) == B and not set(before.values()) & set(after.values())
    np.testing.assert_allclose(u, _reference(problem, params, variables, M2, ds[1]), atol=2e-3)


def test_bounded_batch_size_change_and_cold_calls_drop_workspaces():
    problem, params, variables = _policy()
    core = LayerCore(problem, params, variables, warm_start=True)
    M, ds = _rollout()
    core.forward([M, ds[0]], need_grad=False)
    core.forward([M, ds[1]], need_grad=False)
    assert len(_cache(core)) == B
    small = ds[2][:2]
    (u,), _ = core.forward([M, small], need_grad=False)  # another batch size: cold
    assert not core.last_stats.warm.any() and len(_cache(core)) == 2
    np.testing.assert_allclose(u, _reference(problem, params, variables, M, small), atol=2e-3)
    core.forward([M, ds[2]], {"warm_start": False}, need_grad=False)  # a cold call
    assert len(_cache(core)) == 0
    # Other settings: the old workspaces were built with other tolerances.
    core.forward([M, ds[0]], need_grad=False)
    ids = _workspace_ids(core)
    core.forward([M, ds[1]], {"eps_abs": 1e-6, "eps_rel": 1e-6}, need_grad=False)
    assert not set(ids.values()) & set(_workspace_ids(core).values())


def test_copied_and_pickled_layers_keep_no_workspaces():
    problem, params, variables = _policy()
    core = LayerCore(problem, params, variables, warm_start=True)
    M, ds = _rollout()
    core.forward([M, ds[0]], need_grad=False)
    for clone in (copy.deepcopy(core), pickle.loads(pickle.dumps(core))):
        assert not _cache(clone)
        (u,), _ = clone.forward([M, ds[1]], need_grad=False)
        assert not clone.last_stats.warm.any()
        np.testing.assert_allclose(u, _reference(problem, params, variables, M, ds[1]),
                                   atol=2e-3)
    assert len(_cache(core)) == B


def test_quadratic_objective_reuses_workspace_while_p_is_unchanged():
    """A cp.quad_form with a parameter matrix: P goes to SCS, and is part of what must not
    move for a workspace to be kept."""
    x = cp.Variable(N)
    P, q = cp.Parameter((N, N), PSD=True), cp.Parameter(N)
    problem = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, P) + q @ x), [x >= -1, x <= 1])
    core = LayerCore(problem, [P, q], [x], warm_start=True)
    rng = np.random.default_rng(2)
    G = rng.standard_normal((N, N))
    P0 = G @ G.T + np.eye(N)
    q0 = 3 * rng.standard_normal((B, N))
    core.forward([P0, q0], need_grad=False)
    ids = _workspace_ids(core)
    assert len(ids) == B
    (x1,), _ = core.forward([P0, q0 + 0.1], need_grad=False)
    assert _workspace_ids(core) == ids and core.last_stats.warm.all()
    (x2,), _ = core.forward([P0 + 0.1 * np.eye(N), q0], need_grad=False)
    assert not set(ids.values()) & set(_workspace_ids(core).values())
    for P_, q_, got in ((P0, q0 + 0.1, x1), (P0 + 0.1 * np.eye(N), q0, x2)):
        for i in range(B):
            P.value, q.value = P_, q_[i]
            problem.solve(solver=cp.CLARABEL)
            np.testing.assert_allclose(got[i], x.value, atol=2e-3)
