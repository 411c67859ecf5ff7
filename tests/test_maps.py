"""Every forward map and its adjoint pass the dot-product test <J v, w> = <v, Jᵀ w>, and
the whole core agrees with re-solving at a perturbation."""

import numpy as np
import pytest
from zoo import TIGHT, ZOO

from cvxlayers import LayerCore


@pytest.mark.parametrize("name", ["qp", "sdp", "duals", "dgp", "psd_parameter"])
def test_parameter_map_dot_product(name):
    case = ZOO[name]()
    core = LayerCore(case.problem, case.parameters, case.variables, gp=case.gp)
    pmap = core.compiled.parameter_map
    rng = np.random.default_rng(0)
    v = rng.standard_normal((3, pmap.n_features))
    w = rng.standard_normal((3, core.compiled.layout.size))
    linear = pmap.forward(v) - pmap.offset  # M v
    assert np.isclose((linear * w).sum(), (v * pmap.adjoint(w)).sum())


def test_one_to_one_parameter_maps_are_gathers_equal_to_the_sparse_products():
    import cvxpy as cp

    n = m = 40   # large enough that the map is not stored densely
    x = cp.Variable(n)
    q, G, h = cp.Parameter(n), cp.Parameter((m, n)), cp.Parameter(m)
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(x) + q @ x), [G @ x <= h, x >= -1])
    pmap = LayerCore(problem, [q, G, h], [x]).compiled.parameter_map
    assert pmap.selection is not None and pmap.dense is None
    rng = np.random.default_rng(1)
    phi = rng.standard_normal((3, pmap.n_features))
    d_data = rng.standard_normal((3, pmap.offset.size))
    np.testing.assert_allclose(pmap.forward(phi), (pmap.matrix @ phi.T).T + pmap.offset,
                               atol=1e-14)
    np.testing.assert_allclose(pmap.adjoint(d_data), (pmap.matrix_t @ d_data.T).T, atol=1e-14)
    # A parameter entering twice is not one-to-one: the sparse products remain.
    shared = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(x) + q @ x), [G @ x <= h, G @ x >= -h])
    assert LayerCore(shared, [q, G, h], [x]).compiled.parameter_map.selection is None


@pytest.mark.parametrize("name", ["qp", "duals", "sdp", "dgp"])
def test_solution_map_dot_product(name):
    case = ZOO[name]()
    core = LayerCore(case.problem, case.parameters, case.variables, gp=case.gp)
    smap = core.compiled.solution_map
    # Both adjoints: a plain scatter, and a scatter-add where a symmetric X's entries
    # feed two output entries each.
    assert smap._distinct == (name != "sdp")
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((2, smap.n)), rng.standard_normal((2, smap.m))
    if case.gp:  # exp outputs: check the linearization at (x, y) instead
        outs = smap.forward(x, y)
        grads = [rng.standard_normal(o.shape) for o in outs]
        dx, dy = smap.adjoint(grads, outs)
        step, (ex, ey) = 1e-6, (rng.standard_normal(x.shape), rng.standard_normal(y.shape))
        plus, minus = smap.forward(x + step * ex, y + step * ey), smap.forward(x - step * ex, y - step * ey)
        directional = sum(((p - m) / (2 * step) * g).sum() for p, m, g in zip(plus, minus, grads))
        assert np.isclose(directional, (dx * ex).sum() + (dy * ey).sum(), rtol=1e-6)
        return
    outs = smap.forward(x, y)
    grads = [rng.standard_normal(o.shape) for o in outs]
    dx, dy = smap.adjoint(grads, outs)
    assert np.isclose(sum((o * g).sum() for o, g in zip(outs, grads)),
                      (x * dx).sum() + (y * dy).sum())


def test_feature_adjoint_matches_finite_differences_with_logs():
    case = ZOO["dgp"]()
    core = LayerCore(case.problem, case.parameters, case.variables, gp=True)
    pmap = core.compiled.parameter_map
    rng = np.random.default_rng(2)
    values = case.sample(rng, 2)
    batched = (True,) * len(values)
    d_phi = rng.standard_normal((2, pmap.n_features))
    grads = pmap.feature_adjoint(d_phi, values, batched)
    step = 1e-6
    for k in range(len(values)):
        direction = rng.standard_normal(values[k].shape)
        plus = [v + step * direction if j == k else v for j, v in enumerate(values)]
        minus = [v - step * direction if j == k else v for j, v in enumerate(values)]
        diff = (pmap.features(plus, batched, 2) - pmap.features(minus, batched, 2)) / (2 * step)
        assert np.isclose((diff * d_phi).sum(), (grads[k] * direction).sum(), rtol=1e-5)


@pytest.mark.parametrize("name", ["lp", "socp", "exponential", "duals"])
def test_core_gradient_matches_resolving(name):
    case = ZOO[name]()
    core = LayerCore(case.problem, case.parameters, case.variables, gp=case.gp)
    rng = np.random.default_rng(3)
    values = case.sample(rng, 2)
    outs, state = core.forward(values, TIGHT["SCS"])
    weights = [rng.standard_normal(o.shape) for o in outs]
    grads = core.backward(state, weights)
    direction = [rng.standard_normal(v.shape) * 0.1 for v in values]
    step = 1e-5

    def objective(vals):
        result, _ = core.forward(vals, TIGHT["SCS"], need_grad=False)
        return sum((w * o).sum() for w, o in zip(weights, result))

    numeric = (objective([v + step * d for v, d in zip(values, direction)])
               - objective([v - step * d for v, d in zip(values, direction)])) / (2 * step)
    analytic = sum((g * d).sum() for g, d in zip(grads, direction))
    assert np.isclose(numeric, analytic, rtol=1e-4, atol=1e-6)


def test_core_never_mutates_inputs():
    case = ZOO["qp"]()
    core = LayerCore(case.problem, case.parameters, case.variables)
    values = case.sample(np.random.default_rng(4), 2)
    copies = [v.copy() for v in values]
    _, state = core.forward(values)
    core.backward(state, [np.ones((2, 5))])
    for v, c in zip(values, copies):
        np.testing.assert_array_equal(v, c)


@pytest.mark.parametrize("name", ["qp", "sdp", "exponential", "duals"])
@pytest.mark.parametrize("mode", ["dense", "lsqr"])
def test_precomputed_embedding_equals_diffcp(name, mode, monkeypatch):
    """The backend's own assembly of the embedding derivative gives diffcp's result: its
    LSQR solution, the minimum-norm one (the dense mode gets it from the deflated system;
    diffcp's own dense LU of the singular M does not, see embedding's docstring)."""
    from cvxlayers.backends import embedding

    case = ZOO[name]()
    values = case.sample(np.random.default_rng(5), 3)
    results = []
    for use_plan in (True, False):
        monkeypatch.setattr(embedding, "available", lambda use_plan=use_plan: use_plan)
        core = LayerCore(case.problem, case.parameters, case.variables, gp=case.gp,
                         mode=mode if use_plan else "lsqr")
        outs, state = core.forward(values, TIGHT["SCS"])
        weights = [np.random.default_rng(7).standard_normal(o.shape) for o in outs]
        results.append((outs, core.backward(state, weights)))
    (outs_plan, grads_plan), (outs_diffcp, grads_diffcp) = results
    for a, b in zip(outs_plan, outs_diffcp):
        np.testing.assert_array_equal(a, b)
    tol = 1e-6  # LSQR stops at its own tolerance
    for a, b in zip(grads_plan, grads_diffcp):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("mode", ["lsqr", "lsmr"])
def test_iterative_modes_match_dense(mode):
    case = ZOO["qp"]()
    values = case.sample(np.random.default_rng(8), 2)
    grads = {}
    for which in ("dense", mode):
        core = LayerCore(case.problem, case.parameters, case.variables, mode=which)
        outs, state = core.forward(values, TIGHT["SCS"])
        grads[which] = core.backward(state, [np.ones_like(o) for o in outs])
    for a, b in zip(grads["dense"], grads[mode]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
