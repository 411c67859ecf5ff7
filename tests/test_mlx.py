"""The MLX layer: the zoo against the PyTorch layer (values and gradients), ``mx.grad`` and
``mx.value_and_grad`` against central differences in float64, dtypes, batching, errors.

MLX on the CPU computes in float64 (the GPU does not), so the finite-difference checks run
in float64 at the same tolerances as the PyTorch layer's gradcheck.

Zoo coverage: every member with every solver it supports against the PyTorch layer (values
and gradients), and every member's ``mx.grad`` against central differences with SCS (the
interior-point solvers' gradients are checked against the PyTorch layer's, which
tests/test_zoo_torch.py checks against differences). The whole file takes seconds.
"""

import cvxpy as cp
import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
import torch  # noqa: E402
from zoo import TIGHT, ZOO  # noqa: E402

import cvxlayers  # noqa: E402
from cvxlayers.mlx import CvxpyLayer  # noqa: E402
from cvxlayers.torch import CvxpyLayer as TorchLayer  # noqa: E402

SCS = TIGHT["SCS"]


def least_squares():
    x = cp.Variable(3)
    A, b = cp.Parameter((4, 3), name="A"), cp.Parameter(4, name="b")
    problem = cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b) + 0.1 * cp.norm1(x)), [x >= -1])
    return problem, [A, b], [x]


def least_squares_data(rng, batch=4):
    return rng.standard_normal((batch, 4, 3)), rng.standard_normal((batch, 4))


def f64(value):
    return mx.array(value, dtype=mx.float64)


def grad_tuple(grads):
    """``mx.grad`` with ``argnums`` of length one returns the array itself."""
    return grads if isinstance(grads, (tuple, list)) else (grads,)


def projected(layer, weights, solver_args):
    """A scalar of the parameters: a fixed random projection of every output."""
    def f(*params):
        outs = layer(*params, solver_args=solver_args)
        return sum((w * o).sum() for w, o in zip(weights, outs))
    return f


ZOO_CASES = [(name, solver) for name, make in ZOO.items() for solver in make().solvers]


@pytest.mark.parametrize("name,solver", ZOO_CASES)
def test_zoo_matches_torch_layer(name, solver):
    """Outputs and ``mx.grad`` gradients equal the float64 PyTorch layer's on the zoo."""
    case = ZOO[name]()
    rng = np.random.default_rng(1)
    values = case.sample(rng, 3)
    weights = [rng.standard_normal((3,) + tuple(v.shape)) for v in case.variables]
    args = TIGHT[solver]
    layer = CvxpyLayer(case.problem, case.parameters, case.variables, gp=case.gp,
                       solver=solver)
    reference = TorchLayer(case.problem, case.parameters, case.variables, gp=case.gp,
                           solver=solver)

    outputs = layer(*[f64(v) for v in values], solver_args=args)
    params_t = [torch.tensor(v, requires_grad=True) for v in values]
    expected = reference(*params_t, solver_args=args)
    assert len(outputs) == len(expected)
    for out, exp in zip(outputs, expected):
        assert isinstance(out, mx.array) and out.dtype == mx.float64
        np.testing.assert_allclose(np.array(out), exp.detach().numpy(), atol=1e-7)

    sum((torch.tensor(w) * e).sum() for w, e in zip(weights, expected)).backward()
    f = projected(layer, [f64(w) for w in weights], args)
    grads = grad_tuple(mx.grad(f, argnums=tuple(range(len(values))))(
        *[f64(v) for v in values]))
    assert len(grads) == len(values)
    for g, p in zip(grads, params_t):
        assert g.dtype == mx.float64 and g.shape == tuple(p.shape)
        np.testing.assert_allclose(np.array(g), p.grad.numpy(), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", list(ZOO))
def test_grad_matches_central_differences(name):
    """``mx.grad`` equals central differences of the layer itself (float64, step 1e-5, or
    1e-4 for the DGP case whose parameters are ~1e2, as in tests/test_zoo_torch.py), along
    a random direction per parameter (symmetric for symmetric parameters)."""
    case = ZOO[name]()
    rng = np.random.default_rng(2)
    values = case.sample(rng, 2)
    weights = [f64(rng.standard_normal((2,) + tuple(v.shape))) for v in case.variables]
    layer = CvxpyLayer(case.problem, case.parameters, case.variables, gp=case.gp)
    f = projected(layer, weights, SCS)
    grads = grad_tuple(mx.grad(f, argnums=tuple(range(len(values))))(
        *[f64(v) for v in values]))
    step = 1e-4 if case.gp else 1e-5
    for i, (parameter, value) in enumerate(zip(case.parameters, values)):
        direction = rng.standard_normal(value.shape) * (np.abs(value) + 0.1)
        if parameter.attributes.get("symmetric"):
            direction = (direction + np.swapaxes(direction, -1, -2)) / 2

        def at(t):
            shifted = [f64(v + t * direction) if j == i else f64(v)
                       for j, v in enumerate(values)]
            return f(*shifted).item()

        numeric = (at(step) - at(-step)) / (2 * step)
        analytic = float((np.array(grads[i]) * direction).sum())
        assert abs(numeric - analytic) <= 1e-4 + 1e-3 * abs(analytic), (parameter, i)


def test_value_and_grad_and_vjp():
    """``mx.value_and_grad`` returns the call's value and the gradient ``mx.grad`` gives;
    ``mx.vjp`` with a one-hot cotangent gives a Jacobian row that matches differences."""
    problem, params, variables = least_squares()
    A, b = least_squares_data(np.random.default_rng(3))
    layer = CvxpyLayer(problem, params, variables)

    def loss(A, b):
        return (layer(A, b, solver_args=SCS)[0] ** 2).sum()

    value, (dA, db) = mx.value_and_grad(loss, argnums=(0, 1))(f64(A), f64(b))
    assert value.item() == pytest.approx(loss(f64(A), f64(b)).item(), rel=1e-10)
    dA2, db2 = mx.grad(loss, argnums=(0, 1))(f64(A), f64(b))
    np.testing.assert_allclose(np.array(dA), np.array(dA2), atol=1e-10)
    np.testing.assert_allclose(np.array(db), np.array(db2), atol=1e-10)

    cotangent = np.zeros((4, 3))
    cotangent[1, 2] = 1.0
    (x,), (row_A, row_b) = mx.vjp(lambda A, b: layer(A, b, solver_args=SCS),
                                  [f64(A), f64(b)], [f64(cotangent)])
    step = 1e-5
    for k in range(4):
        b_plus, b_minus = b.copy(), b.copy()
        b_plus[1, k] += step
        b_minus[1, k] -= step
        numeric = (np.array(layer(f64(A), f64(b_plus), solver_args=SCS)[0])[1, 2]
                   - np.array(layer(f64(A), f64(b_minus), solver_args=SCS)[0])[1, 2]) / (2 * step)
        assert np.array(row_b)[1, k] == pytest.approx(numeric, abs=1e-5)
    # Only element 1 of the batch is touched by the cotangent.
    assert np.abs(np.array(row_A)[[0, 2, 3]]).max() == 0


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64"])
def test_outputs_and_gradients_follow_input_dtype(dtype):
    problem, params, variables = least_squares()
    A, b = least_squares_data(np.random.default_rng(4))
    layer = CvxpyLayer(problem, params, variables)
    mdtype = getattr(mx, dtype)
    A_m, b_m = mx.array(A).astype(mdtype), mx.array(b).astype(mdtype)
    x, = layer(A_m, b_m)
    assert x.dtype == mdtype
    dA, db = mx.grad(lambda A, b: layer(A, b)[0].sum(), argnums=(0, 1))(A_m, b_m)
    assert dA.dtype == mdtype and db.dtype == mdtype
    # The solve runs in float64 whatever the dtype: outputs are the float64 outputs rounded
    # (from the rounded inputs).
    exact, = layer(A_m.astype(mx.float64), b_m.astype(mx.float64))
    tolerance = {"float64": 1e-12, "float32": 1e-6, "float16": 2e-3, "bfloat16": 1e-2}[dtype]
    np.testing.assert_allclose(np.array(x.astype(mx.float64)), np.array(exact), atol=tolerance,
                               rtol=tolerance)


def test_mixed_dtypes_promote_and_integers_get_zero_gradients():
    x = cp.Variable(2)
    c, k = cp.Parameter(2, name="c"), cp.Parameter(2, name="k")
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - c) + k @ x))
    layer = CvxpyLayer(problem, [c, k], [x])
    c_val = mx.array([1.0, 2.0], dtype=mx.float16)
    out, = layer(c_val, mx.array([1.0, 0.0], dtype=mx.float32))
    assert out.dtype == mx.float32                       # float16 with float32: float32
    np.testing.assert_allclose(np.array(out), [0.5, 2.0], atol=1e-4)   # x = c - k/2
    k_int = mx.array([2, 0])
    out, = layer(c_val, k_int)
    assert out.dtype == mx.float16                       # integers do not promote
    dc, dk = mx.grad(lambda c, k: layer(c, k)[0].sum(), argnums=(0, 1))(c_val, k_int)
    assert dc.dtype == mx.float16
    np.testing.assert_allclose(np.array(dc.astype(mx.float32)), [1.0, 1.0], atol=1e-3)
    # Integers have no tangent space: zeros, not the derivative (-1/2 each) in float16.
    assert dk.dtype == k_int.dtype and np.array(dk).tolist() == [0, 0]


def test_batching_and_broadcast_gradients():
    """A batched call equals per-element calls; an unbatched parameter broadcasts and its
    gradient is the sum of the per-element gradients."""
    problem, params, variables = least_squares()
    A, b = least_squares_data(np.random.default_rng(5), batch=3)
    layer = CvxpyLayer(problem, params, variables)
    x, = layer(f64(A[0]), f64(b), solver_args=SCS)
    assert x.shape == (3, 3)
    single, = layer(f64(A[0]), f64(b[1]), solver_args=SCS)
    assert single.shape == (3,)
    np.testing.assert_allclose(np.array(x)[1], np.array(single), atol=1e-9)

    def total(A, b):
        return layer(A, b, solver_args=SCS)[0].sum()

    dA_shared, db = mx.grad(total, argnums=(0, 1))(f64(A[0]), f64(b))
    assert dA_shared.shape == (4, 3) and db.shape == (3, 4)
    per_element = [mx.grad(total, argnums=(0, 1))(f64(A[0]), f64(b[i])) for i in range(3)]
    np.testing.assert_allclose(np.array(dA_shared),
                               sum(np.array(g[0]) for g in per_element), atol=1e-8)
    np.testing.assert_allclose(np.array(db)[2], np.array(per_element[2][1]), atol=1e-8)


def test_numpy_inputs_give_mlx_outputs():
    problem, params, variables = least_squares()
    A, b = least_squares_data(np.random.default_rng(6))
    layer = CvxpyLayer(problem, params, variables)
    x_np, = layer(A, b, solver_args=SCS)
    x_mx, = layer(f64(A), f64(b), solver_args=SCS)
    assert isinstance(x_np, mx.array) and x_np.dtype == mx.float32   # MLX's default
    np.testing.assert_allclose(np.array(x_np), np.array(x_mx), atol=1e-6)


def test_errors_come_from_the_core():
    problem, params, variables = least_squares()
    A, b = least_squares_data(np.random.default_rng(7))
    layer = CvxpyLayer(problem, params, variables)
    with pytest.raises(cvxlayers.ParameterError, match=r"`A` \(position 0\) expects shape"):
        layer(f64(A[:, :2]), f64(b))
    with pytest.raises(ValueError, match=r"`A` \(position 0\) expects shape"):
        mx.grad(lambda A: layer(A, f64(b))[0].sum())(f64(A[:, :2]))
    b[1, 0] = np.nan
    with pytest.raises(cvxlayers.ParameterError, match=r"`b`.*NaN.*\[1\]"):
        layer(f64(A), f64(b))
    with pytest.raises(cvxlayers.ParameterError, match="expects 2 parameter value"):
        layer(f64(A))
    with pytest.raises(cvxlayers.ParameterTypeError, match="`b`.*received dtype object"):
        layer(f64(A), None)


def test_failed_solve_raises_solver_error_with_statuses():
    x, c = cp.Variable(2), cp.Parameter(name="c")
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x)), [cp.sum(x) <= c, x >= 0.5])
    layer = CvxpyLayer(problem, [c], [x], solver="CLARABEL")
    with pytest.raises(cvxlayers.SolverError) as info:
        layer(f64(np.array([2.0, -1.0])))
    assert info.value.failed == [1] and info.value.statuses[1] == "infeasible"
    with pytest.raises(cvxlayers.SolverError, match="infeasible"):
        mx.grad(lambda c: layer(c)[0].sum())(f64(np.array([2.0, -1.0])))


def test_compile_and_vmap_are_refused_clearly():
    problem, params, variables = least_squares()
    A, b = least_squares_data(np.random.default_rng(8))
    layer = CvxpyLayer(problem, params, variables)
    with pytest.raises(ValueError, match="cannot run under mx.compile or mx.vmap"):
        mx.compile(lambda A, b: layer(A, b)[0])(f64(A), f64(b))
    with pytest.raises(ValueError, match="cannot run under mx.compile or mx.vmap"):
        mx.vmap(lambda A, b: layer(A, b)[0])(f64(A), f64(b))


def test_forward_mode_is_refused_not_zero():
    """Without a jvp of its own, MLX would push tangents through the host solve and return
    zeros (x = max(c, 0) has tangent [1, 0] at c = [1, -2])."""
    x, c = cp.Variable(2), cp.Parameter(2)
    layer = CvxpyLayer(cp.Problem(cp.Minimize(cp.sum_squares(x - c)), [x >= 0]), [c], [x])
    with pytest.raises(NotImplementedError, match="reverse-mode gradients only"):
        mx.jvp(lambda c: layer(c)[0], [f64(np.array([1.0, -2.0]))],
               [f64(np.array([1.0, 1.0]))])


def test_layer_pickles_before_and_after_use():
    import pickle

    problem, params, variables = least_squares()
    A, b = least_squares_data(np.random.default_rng(9))
    layer = CvxpyLayer(problem, params, variables)
    fresh = pickle.loads(pickle.dumps(layer))
    x, = layer(f64(A), f64(b), solver_args=SCS)
    used = pickle.loads(pickle.dumps(layer))
    for copy in (fresh, used):
        np.testing.assert_allclose(np.array(copy(f64(A), f64(b), solver_args=SCS)[0]),
                                   np.array(x), atol=1e-9)


def test_derivative_work_is_deferred_to_the_first_backward():
    """MLX cannot tell the forward whether a gradient follows: the state is kept on every
    call, but the embedding is linearized only when a backward asks for it, once per element
    (a second set of cotangents reuses it), and the gradient equals the eager path's."""
    from cvxlayers.backends.diffcp_backend import DeferredAdjoint

    problem, params, variables = least_squares()
    A, b = least_squares_data(np.random.default_rng(5), batch=3)
    layer = CvxpyLayer(problem, params, variables)
    outputs, state = layer.core.forward_keeping_state([A, b], SCS)
    adjoints = state.solution.adjoint_fns
    assert all(isinstance(a, DeferredAdjoint) and a.linearization is None for a in adjoints)
    gx = np.random.default_rng(6).standard_normal(outputs[0].shape)
    grads = layer.core.backward(state, [gx])
    assert all(a.linearization is not None for a in adjoints)
    kept = [a.linearization for a in adjoints]
    again = layer.core.backward(state, [2 * gx])
    assert all(a.linearization is k for a, k in zip(adjoints, kept))
    for g, g2 in zip(grads, again):
        np.testing.assert_allclose(g2, 2 * g, rtol=1e-10, atol=1e-12)
    _, eager_state = layer.core.forward([A, b], SCS, need_grad=True)
    for g, eager in zip(grads, layer.core.backward(eager_state, [gx])):
        np.testing.assert_allclose(g, eager, rtol=1e-9, atol=1e-12)
    # Through MLX: the same gradient as the core's.
    dA, db = mx.grad(lambda A_, b_: (f64(gx) * layer(A_, b_, solver_args=SCS)[0]).sum(),
                     argnums=(0, 1))(f64(A), f64(b))
    np.testing.assert_allclose(np.array(dA), grads[0], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(np.array(db), grads[1], rtol=1e-8, atol=1e-10)
