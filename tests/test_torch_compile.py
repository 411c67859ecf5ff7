"""torch.compile(fullgraph=True) and torch.func over the PyTorch layer and ``qp``.

Compiled and eager calls must agree to 1e-8 in float64, forward and backward, with no graph
break (``fullgraph=True`` raises on one). Compiling is slow on a small CPU, so most tests use
the ``aot_eager`` backend (Dynamo and AOTAutograd, which is where graph breaks and the
fake shapes matter) and one the default inductor backend.
"""

import gc
import warnings

import cvxpy as cp
import numpy as np
import pytest
import torch
from zoo import TIGHT

from cvxlayers import ParameterError, SolverError, _torch_ops
from cvxlayers.torch import CvxpyLayer, qp

TIGHT_QP = {"eps": 1e-10}


def projection_layer(solver="SCS"):
    """x*(y, w) = argmin ||x - y||² s.t. x ≥ 0, Σx ≤ w; outputs x* and Σx ≤ w's dual."""
    x, y, w = cp.Variable(3), cp.Parameter(3), cp.Parameter(nonneg=True)
    cons = [x >= 0, cp.sum(x) <= w]
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - y)), cons)
    args = TIGHT.get(solver, TIGHT_QP)
    return CvxpyLayer(problem, [y, w], [x, cons[1].dual_variables[0]], solver=solver,
                      solver_args=args)


class Net(torch.nn.Module):
    """A linear map into the layer's y, a learned (unbatched, broadcast) budget w."""

    def __init__(self, layer):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(2, 3).double()
        self.w = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64))
        self.layer = layer

    def forward(self, z):
        x, dual = self.layer(self.linear(z), self.w)
        return (x * torch.arange(1.0, 4.0, dtype=x.dtype)).sum(-1) + dual


def grads_of(model, z):
    model.zero_grad()
    out = model(z)
    out.square().sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("solver", ["SCS", "CLARABEL", "ECOS", "QP"])
def test_compiled_module_matches_eager(solver):
    model = Net(projection_layer(solver))
    z = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    want, want_grads = grads_of(model, z)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    got, got_grads = grads_of(compiled, z)
    torch.testing.assert_close(got, want, atol=1e-8, rtol=0)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, atol=1e-8, rtol=0)
    assert all(g.abs().sum() > 0 for g in want_grads)  # the budget w is active: all flow


def test_compiled_forward_is_cvxpys_solution():
    layer = projection_layer("SCS")
    y = torch.tensor([[0.9, 0.5, -0.3], [0.2, 0.1, 0.3]], dtype=torch.float64)
    w = torch.tensor(1.0, dtype=torch.float64)
    x, dual = torch.compile(lambda y, w: layer(y, w), fullgraph=True, backend="aot_eager")(y, w)
    # The projection onto {x ≥ 0, Σx ≤ 1}, by hand: [0.7, 0.3, 0] (dual 0.4), and y itself
    # clipped, [0.2, 0.1, 0.3], inside the budget (dual 0).
    torch.testing.assert_close(x, torch.tensor([[0.7, 0.3, 0.0], [0.2, 0.1, 0.3]],
                                               dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(dual, torch.tensor([0.4, 0.0], dtype=torch.float64),
                               atol=1e-6, rtol=0)


def test_no_graph_breaks_and_batch_size_changes():
    model = Net(projection_layer())
    explanation = torch._dynamo.explain(model)(torch.randn(3, 2, dtype=torch.float64))
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    for batch in (2, 3, 5):  # the second size recompiles with a dynamic batch; the third reuses it
        z = torch.randn(batch, 2, dtype=torch.float64)
        got, got_grads = grads_of(compiled, z)
        want, want_grads = grads_of(model, z)
        assert got.shape == (batch,)
        torch.testing.assert_close(got, want, atol=1e-8, rtol=0)
        torch.testing.assert_close(got_grads[0], want_grads[0], atol=1e-8, rtol=0)


def test_compiled_float32_keeps_dtype():
    layer = projection_layer()
    y = torch.randn(2, 3, requires_grad=True)
    w = torch.tensor(1.0, requires_grad=True)
    x, dual = torch.compile(lambda y, w: layer(y, w), fullgraph=True, backend="aot_eager")(y, w)
    assert x.dtype == dual.dtype == torch.float32
    (x.sum() + dual.sum()).backward()
    assert y.grad.dtype == w.grad.dtype == torch.float32
    want, _ = layer(y.detach(), w.detach())
    torch.testing.assert_close(x.detach(), want, atol=1e-6, rtol=0)


def test_compiled_training_step_follows_eager():
    """Five SGD steps of the compiled model and of the eager one stay together."""
    losses = {}
    for name in ("eager", "compiled"):
        model = Net(projection_layer())
        run = torch.compile(model, fullgraph=True, backend="aot_eager") if name == "compiled" \
            else model
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        z = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        target = torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=torch.float64)
        trace = []
        for _ in range(5):
            optimizer.zero_grad()
            loss = ((run(z) - target) ** 2).mean()
            loss.backward()
            optimizer.step()
            trace.append(loss.item())
        losses[name] = trace
    np.testing.assert_allclose(losses["compiled"], losses["eager"], atol=1e-8, rtol=0)
    assert losses["eager"][-1] < losses["eager"][0]


def qp_data(batch=3):
    rng = np.random.default_rng(3)
    n, m, p = 4, 5, 1
    L = rng.standard_normal((n, n))
    tensors = dict(Q=L @ L.T + np.eye(n), q=rng.standard_normal((batch, n)),
                   G=rng.standard_normal((m, n)), h=rng.uniform(0.1, 1.0, m),
                   A=rng.standard_normal((p, n)), b=rng.standard_normal((batch, p)))
    return {k: torch.tensor(v, requires_grad=True) for k, v in tensors.items()}


def test_compiled_qp_matches_eager():
    data = qp_data()

    def loss(Q, q, G, h, A, b):
        z = qp(Q, q, G, h, A, b)
        return (z * torch.arange(1.0, 5.0, dtype=z.dtype)).sum()

    results = []
    for fn in (loss, torch.compile(loss, fullgraph=True, backend="aot_eager")):
        value = fn(**data)
        grads = torch.autograd.grad(value, list(data.values()))
        results.append((value.detach(), grads))
    (want, want_grads), (got, got_grads) = results
    torch.testing.assert_close(got, want, atol=1e-8, rtol=0)
    for g, w in zip(got_grads, want_grads):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, atol=1e-8, rtol=0)


def test_dynamic_true_every_size_symbolic():
    """compile(dynamic=True) makes every size symbolic, the problem's own too: the fake
    implementations still give the outputs' shapes."""
    layer = projection_layer()
    data = qp_data()
    run_layer = torch.compile(lambda y, w: layer(y, w)[0], fullgraph=True, backend="aot_eager",
                              dynamic=True)
    run_qp = torch.compile(lambda **d: qp(**d), fullgraph=True, backend="aot_eager",
                           dynamic=True)
    y = torch.randn(2, 3, dtype=torch.float64)
    w = torch.tensor(1.0, dtype=torch.float64)
    torch.testing.assert_close(run_layer(y, w), layer(y, w)[0], atol=1e-8, rtol=0)
    got = run_qp(**data)
    torch.testing.assert_close(got, qp(**data), atol=1e-8, rtol=0)
    assert got.shape == (3, 4)


@pytest.mark.slow
def test_inductor_backend(monkeypatch):
    """The default backend, once: C++ codegen around the opaque solve."""
    monkeypatch.setattr(torch._inductor.config, "compile_threads", 1)  # no worker pool
    model = Net(projection_layer())
    z = torch.randn(3, 2, dtype=torch.float64)
    want, want_grads = grads_of(model, z)
    got, got_grads = grads_of(torch.compile(model, fullgraph=True), z)
    torch.testing.assert_close(got, want, atol=1e-8, rtol=0)
    torch.testing.assert_close(got_grads[1], want_grads[1], atol=1e-8, rtol=0)


def test_ops_pass_torchs_custom_op_checks():
    """The fake implementations agree with the real ones (shapes, dtypes, strides), and the
    schemas hold (no aliasing, no mutation), batched and unbatched, float32 inputs too."""
    layer = projection_layer()
    numbers = []
    options = _torch_ops.encode_options({"solver_args": {"eps_abs": 1e-6, "max_iters": 5000,
                                                         "verbose": False}}, numbers)
    cpu = torch.device("cpu")
    checks = ("test_schema", "test_faketensor")
    for y, w in ((torch.randn(3, 5).t(), torch.tensor(1.0)),  # float32, batched, strided
                 (torch.randn(3, dtype=torch.float64), torch.tensor(0.5))):
        dtype = torch.promote_types(y.dtype, w.dtype)
        torch.library.opcheck(torch.ops.cvxlayers.solve.default,
                              ([y, w], layer._op_key, options, numbers, dtype, cpu),
                              test_utils=checks)
        outputs = torch.ops.cvxlayers.solve.default([y, w], layer._op_key, options, numbers,
                                                    dtype, cpu)
        torch.library.opcheck(torch.ops.cvxlayers.solve_backward.default,
                              ([y, w], [torch.ones_like(o) for o in outputs], layer._op_key,
                               options, numbers), test_utils=checks)
    data = {k: v.detach() for k, v in qp_data().items()}
    data["G"] = data["G"].t().contiguous().t()  # a column-major input
    config = (None, 50, "auto", "raise")
    torch.library.opcheck(torch.ops.cvxlayers.qp.default, (*data.values(), *config),
                          test_utils=checks)
    grad_x = torch.ones(3, 4, dtype=torch.float64)
    torch.library.opcheck(torch.ops.cvxlayers.qp_backward.default,
                          (*data.values(), grad_x, *config, [True] * 6), test_utils=checks)


def test_solver_args_changing_between_compiled_calls_take_effect():
    """Numbers in solver_args that change between calls (Dynamo makes them symbolic after
    the first change) reach the solver with their new values, and strings recompile."""
    x, y = cp.Variable(3), cp.Parameter(3)
    layer = CvxpyLayer(cp.Problem(cp.Minimize(cp.sum_squares(x - y)), [x >= 0]), [y], [x])
    run = torch.compile(lambda y, args: layer(y, solver_args=args)[0], fullgraph=True,
                        backend="aot_eager")
    y = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64, requires_grad=True)
    results = []
    for args in ({"eps_abs": 1e-3, "max_iters": 1}, {"eps_abs": 1e-9, "eps_rel": 1e-9,
                 "max_iters": 100_000}, {"eps_abs": 1e-9, "eps_rel": 1e-9, "max_iters": 90_000},
                 {"solver": "ECOS"}):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # max_iters=1 is inaccurate, by design
            got = run(y, args)
            want, = layer(y, solver_args=args)
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
        results.append(got.detach())
    exact = torch.tensor([0.5, 0.0, 2.0], dtype=torch.float64)
    assert (results[0] - exact).abs().max() > 1e-3  # one SCS iteration: far off
    for got in results[1:]:
        torch.testing.assert_close(got, exact, atol=1e-5, rtol=0)


# --- errors under compile ------------------------------------------------------------------

def test_compiled_errors_are_the_cores():
    layer = projection_layer()
    run = torch.compile(lambda y, w: layer(y, w), fullgraph=True, backend="aot_eager")
    # Shapes are checked while tracing; torch wraps the error, whose message is ours.
    with pytest.raises(Exception, match=r"parameter `param\d+` \(position 0\) expects shape "
                                        r"\(3,\) or \(batch, \*\(3,\)\); received \(4,\)"):
        run(torch.randn(4, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    # Values are checked when the graph runs: the core's own exceptions.
    with pytest.raises(ParameterError, match=r"position 0\) contains NaN"):
        run(torch.tensor([float("nan"), 0.0, 0.0], dtype=torch.float64),
            torch.tensor(1.0, dtype=torch.float64))
    x, y = cp.Variable(2), cp.Parameter(2)
    infeasible = CvxpyLayer(cp.Problem(cp.Minimize(cp.sum(x)), [x >= 1, cp.sum(x) <= y[0]]),
                            [y], [x])
    with pytest.raises(SolverError, match="infeasible"):
        torch.compile(lambda y: infeasible(y), fullgraph=True, backend="aot_eager")(
            torch.tensor([0.0, 0.0], dtype=torch.float64))


def test_compiled_qp_warns_once_and_zeroes_failed_elements():
    """on_failure="warn" under compile: the failed element is NaN with a zero gradient, and
    the backward's re-solve does not repeat the forward's warning."""
    Q = torch.eye(2, dtype=torch.float64)
    G = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    h = torch.tensor([[1.0, -2.0], [1.0, 1.0]], dtype=torch.float64)  # z₁ ≤ 1, z₁ ≥ 2: none
    q = torch.tensor([[0.0, 0.0], [0.5, -0.25]], dtype=torch.float64, requires_grad=True)
    run = torch.compile(lambda q: qp(Q, q, G, h, on_failure="warn"), fullgraph=True,
                        backend="aot_eager")
    with pytest.warns(RuntimeWarning, match="QP") as record:
        z = run(q)
        z.nan_to_num().sum().backward()
    assert len(record) == 1
    assert torch.isnan(z[0]).all()
    torch.testing.assert_close(z[1].detach(), -q[1].detach(), atol=1e-8, rtol=0)  # z = -q
    torch.testing.assert_close(q.grad, torch.tensor([[0.0, 0.0], [-1.0, -1.0]],
                                                    dtype=torch.float64), atol=1e-8, rtol=0)


# --- torch.func ----------------------------------------------------------------------------

def test_torch_func_grad_vmap_jacrev_match_autograd():
    layer = projection_layer()
    w = torch.tensor(1.0, dtype=torch.float64)
    y = torch.tensor([0.9, 0.5, -0.3], dtype=torch.float64)
    weights = torch.arange(1.0, 4.0, dtype=torch.float64)

    def f(y, w):
        return (layer(y, w)[0] * weights).sum()

    y_leaf, w_leaf = y.clone().requires_grad_(), w.clone().requires_grad_()
    f(y_leaf, w_leaf).backward()
    got_y, got_w = torch.func.grad(f, argnums=(0, 1))(y, w)
    torch.testing.assert_close(got_y, y_leaf.grad, atol=1e-8, rtol=0)
    torch.testing.assert_close(got_w, w_leaf.grad, atol=1e-8, rtol=0)

    jac = torch.func.jacrev(lambda y: layer(y, w)[0])(y)
    want = torch.autograd.functional.jacobian(lambda y: layer(y, w)[0], y)
    torch.testing.assert_close(jac, want, atol=1e-8, rtol=0)

    batch = torch.tensor([[0.9, 0.5, -0.3], [0.2, 0.1, 0.3]], dtype=torch.float64)
    torch.testing.assert_close(torch.func.vmap(lambda y: layer(y, w)[0])(batch),
                               layer(batch, w)[0], atol=1e-8, rtol=0)
    # Per-sample gradients, the shared w included (each element's own, not their sum).
    per_y, per_w = torch.func.vmap(torch.func.grad(f, argnums=(0, 1)), in_dims=(0, None))(
        batch, w)
    for i in range(2):
        g_y, g_w = torch.func.grad(f, argnums=(0, 1))(batch[i], w)
        torch.testing.assert_close(per_y[i], g_y, atol=1e-8, rtol=0)
        torch.testing.assert_close(per_w[i], g_w, atol=1e-8, rtol=0)


def test_torch_func_vmap_of_a_batched_call_is_refused_clearly():
    layer = projection_layer()
    with pytest.raises(ParameterError, match=r"inside torch\.func\.vmap.*declared shape \(3,\)"):
        torch.func.vmap(lambda y: layer(y, torch.tensor(1.0))[0])(torch.randn(2, 4, 3))


def test_torch_func_over_qp():
    data = {k: v.detach() for k, v in qp_data(batch=1).items()}
    q = data.pop("q")

    def f(q):
        return qp(q=q, **data).sum()

    leaf = q.clone().requires_grad_()
    f(leaf).backward()
    torch.testing.assert_close(torch.func.grad(f)(q), leaf.grad, atol=1e-8, rtol=0)
    with pytest.raises(NotImplementedError, match="qp does not run under torch.func.vmap"):
        torch.func.vmap(lambda q: qp(q=q, **data))(q)


def test_the_op_registry_keeps_no_layer_alive():
    layer = projection_layer()
    key = layer._op_key
    w = torch.tensor(1.0, dtype=torch.float64)
    torch.func.grad(lambda y, layer=layer: layer(y, w)[0].sum())(torch.ones(3, dtype=torch.float64))
    assert _torch_ops._CORES[key] is layer.core
    del layer
    gc.collect()
    assert key not in _torch_ops._CORES
