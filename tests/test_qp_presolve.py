"""The QP backend's presolve (issue 12, part 1): the auxiliary variables CVXPY adds for
``sum_squares`` and the variables that equalities fix are substituted out, and the layer
still returns the full problem's solution, duals and exact gradients.

Every layer here runs with default options; answers are checked against CVXPY's own solve
(Clarabel, tight) and gradients against finite differences in float64.
"""

import cvxpy as cp
import numpy as np
import pytest
import torch

from cvxlayers.backends.qp_presolve import Presolve
from cvxlayers.backends.qp_solver import adjoint_directions, solve_qp
from cvxlayers.torch import CvxpyLayer

TIGHT = dict(solver="CLARABEL", tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)


def _t(a, grad=True):
    return torch.tensor(np.asarray(a, dtype=float), dtype=torch.float64, requires_grad=grad)


def _reference(problem, params, values, outputs):
    for p, v in zip(params, values):
        p.value = np.asarray(v)
    problem.solve(**TIGHT)
    return [np.asarray(o.value) for o in outputs]


def _paper_qp(rng, n=6, m=5):
    """The cvxpylayers paper's dense QP, in the paper's form."""
    L = rng.standard_normal((n, n))
    x, q, G, h = cp.Variable(n), cp.Parameter(n), cp.Parameter((m, n)), cp.Parameter(m)
    constraint = G @ x <= h
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(L @ x) + q @ x), [constraint])
    values = [rng.standard_normal(n), rng.standard_normal((m, n)), rng.uniform(0.1, 1.0, m)]
    return problem, [q, G, h], [x, constraint.dual_variables[0]], values, L


def _plan(layer) -> Presolve:
    core = layer.core
    return core._backend("QP").presolve(core._formulation(True).layout)


def test_paper_form_is_reduced_to_the_users_variables_and_matches_quad_form():
    rng = np.random.default_rng(0)
    problem, params, outputs, values, L = _paper_qp(rng)
    layer = CvxpyLayer(problem, params, outputs, solver="QP")
    plan = _plan(layer)
    assert len(plan.rounds) == 1 and plan.eliminated == 6   # t = Lx, one per row of L
    x_ref, lam_ref = _reference(problem, params, values, outputs)
    x, lam = layer(*[_t(v, grad=False) for v in values])
    np.testing.assert_allclose(x.numpy(), x_ref, atol=1e-7)
    np.testing.assert_allclose(lam.numpy(), lam_ref, atol=1e-7)
    # The same QP written with quad_form (no auxiliary variables) gives the same gradients.
    xq = cp.Variable(6)
    quad = cp.Problem(cp.Minimize(0.5 * cp.quad_form(xq, cp.psd_wrap(L.T @ L)) + params[0] @ xq),
                      [params[1] @ xq <= params[2]])
    quad_layer = CvxpyLayer(quad, params, [xq], solver="QP")
    w = torch.arange(1.0, 7.0, dtype=torch.float64)
    grads = []
    for lay in (layer, quad_layer):
        tensors = [_t(v) for v in values]
        (lay(*tensors)[0] @ w).backward()
        grads.append([t.grad.numpy() for t in tensors])
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, atol=1e-7)


def test_paper_form_gradcheck():
    rng = np.random.default_rng(1)
    problem, params, outputs, values, _ = _paper_qp(rng, n=4, m=3)
    layer = CvxpyLayer(problem, params, outputs, solver="QP")
    batch = [_t(np.stack([v, v * 1.1 + 0.05])) for v in values]
    assert torch.autograd.gradcheck(lambda *p: layer(*p), batch, atol=1e-6, rtol=1e-4)


def test_least_squares_with_parameter_matrix():
    """sum_squares(A x − b) with a parameter A: E_x = A depends on the parameters, so the
    substitution matrix F is per element."""
    rng = np.random.default_rng(2)
    k, n = 7, 4
    x, A, b = cp.Variable(n), cp.Parameter((k, n)), cp.Parameter(k)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b) + 0.1 * cp.sum_squares(x)),
                         [x >= -0.3, cp.sum(x) <= 0.5])
    layer = CvxpyLayer(problem, [A, b], [x], solver="QP")
    assert _plan(layer).eliminated >= k
    values = [rng.standard_normal((k, n)), rng.standard_normal(k)]
    (x_ref,) = _reference(problem, [A, b], values, [x])
    np.testing.assert_allclose(layer(*[_t(v, False) for v in values])[0].numpy(), x_ref,
                               atol=1e-7)
    assert torch.autograd.gradcheck(lambda *p: layer(*p), [_t(v) for v in values],
                                    atol=1e-6, rtol=1e-4)


def test_relu_layer_with_fixed_variable_takes_two_rounds_and_returns_its_dual():
    """cvxpylayers' ReLU-layers example: a variable fixed to a parameter by an equality
    (Wt == W), used in the definition of the auxiliary t = z − Wt x − b."""
    rng = np.random.default_rng(3)
    n_in, n_out = 3, 4
    z, Wt = cp.Variable(n_out), cp.Variable((n_out, n_in))
    W, b, xin = cp.Parameter((n_out, n_in)), cp.Parameter(n_out), cp.Parameter(n_in)
    fix = Wt == W
    problem = cp.Problem(cp.Minimize(cp.sum_squares(z - Wt @ xin - b)), [z >= 0, fix])
    assert problem.is_dpp()
    params = [W, b, xin]
    layer = CvxpyLayer(problem, params, [z, fix.dual_variables[0]], solver="QP")
    plan = _plan(layer)
    assert len(plan.rounds) == 2 and plan.eliminated == n_out + n_out * n_in
    # Wt first (rows of length 1: a substitution by constants, no fill), then t = z − b −
    # W x on z alone: P never becomes dense on Wt (it did, 420 × 420 per element at
    # 20 × 20, when t went first).
    assert plan.rounds[0].pivot_cols.size == n_out * n_in and not plan.rounds[0].p_tt
    assert plan.rounds[1].pivot_cols.size == n_out and plan.rounds[1].f_shared
    values = [rng.standard_normal((n_out, n_in)), rng.standard_normal(n_out),
              rng.standard_normal(n_in)]
    z_ref, dual_ref = _reference(problem, params, values, [z, fix.dual_variables[0]])
    z_out, dual = layer(*[_t(v, False) for v in values])
    np.testing.assert_allclose(z_out.numpy(), np.maximum(values[0] @ values[2] + values[1], 0),
                               atol=1e-7)
    np.testing.assert_allclose(z_out.numpy(), z_ref, atol=1e-7)
    np.testing.assert_allclose(dual.numpy(), dual_ref, atol=1e-6)
    assert torch.autograd.gradcheck(lambda *p: layer(*p), [_t(v) for v in values],
                                    atol=1e-6, rtol=1e-4)


def test_box_projection_closed_form():
    n = 8
    x, y = cp.Variable(n), cp.Parameter(n)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - y)), [x >= 0, x <= 1])
    layer = CvxpyLayer(problem, [y], [x], solver="QP")
    assert _plan(layer).eliminated == n
    y_value = torch.linspace(-0.7, 1.6, n, dtype=torch.float64).repeat(3, 1).requires_grad_()
    (out,) = layer(y_value)
    np.testing.assert_allclose(out.detach().numpy(), y_value.detach().clamp(0, 1).numpy(),
                               atol=1e-8)
    out.sum().backward()
    inside = ((y_value > 0) & (y_value < 1)).double()
    np.testing.assert_allclose(y_value.grad.numpy(), inside.numpy(), atol=1e-6)


def test_dual_of_an_eliminated_user_equality():
    """A user's own definition t == Fx + f (t a variable) is eliminated; its dual comes
    back as CVXPY's."""
    rng = np.random.default_rng(4)
    n, k = 4, 3
    x, t = cp.Variable(n), cp.Variable(k)
    F, f, c = rng.standard_normal((k, n)), cp.Parameter(k), cp.Parameter(n)
    define = t == F @ x + f
    problem = cp.Problem(cp.Minimize(cp.sum_squares(t) + cp.sum_squares(x) + c @ x),
                         [define, x <= 0.2, cp.sum(x) == 0.1])
    params = [f, c]
    outputs = [x, t, define.dual_variables[0]]
    layer = CvxpyLayer(problem, params, outputs, solver="QP")
    assert _plan(layer).eliminated >= k
    values = [rng.standard_normal(k), rng.standard_normal(n)]
    refs = _reference(problem, params, values, outputs)
    for got, ref in zip(layer(*[_t(v, False) for v in values]), refs):
        np.testing.assert_allclose(got.numpy(), ref, atol=1e-6)
    assert torch.autograd.gradcheck(lambda *p: layer(*p), [_t(v) for v in values],
                                    atol=1e-6, rtol=1e-4)


def test_presolve_on_and_off_agree():
    rng = np.random.default_rng(5)
    problem, params, outputs, values, _ = _paper_qp(rng)
    layer = CvxpyLayer(problem, params, outputs, solver="QP")
    results = []
    for presolve in (True, False):
        tensors = [_t(v) for v in values]
        x, lam = layer(*tensors, solver_args={"presolve": presolve})
        (x.sum() + lam.sum()).backward()
        results.append([x.detach().numpy(), lam.detach().numpy()]
                       + [t.grad.numpy() for t in tensors])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, atol=1e-6)


def _presolve_inputs(seed, elements):
    """(rng, the presolve plan, the unpacked full data) of a paper-form layer (n = 5, m = 4)
    for the batch whose elements are ``elements(v)`` of one random value v per parameter."""
    rng = np.random.default_rng(seed)
    problem, params, outputs, values, _ = _paper_qp(rng, n=5, m=4)
    core = CvxpyLayer(problem, params, outputs, solver="QP").core
    compiled, backend = core._formulation(True), core._backend("QP")
    batch = [np.stack(elements(v)) for v in values]
    pmap = compiled.parameter_map
    data = pmap.forward(pmap.features(batch, [True] * 3, batch[0].shape[0]))
    return rng, backend.presolve(compiled.layout), backend.unpack(compiled.layout, data)


def _full_adjoint_residual(P, A, G, lam, s, w_x, w_nu, v, g):
    """Jᵀw − g for the full KKT matrix J = [[P, Aᵀ, Gᵀ], [A, 0, 0], [ΛG, 0, −S]] (one
    element), in v = Λw_λ: (P w_x + Aᵀw_ν + Gᵀv, A w_x, Λ(G w_x) − S v) − (g_x, g_ν, Λg_λ)."""
    n, p = P.shape[0], A.shape[0]
    return np.concatenate([P @ w_x + A.T @ w_nu + G.T @ v - g[:n], A @ w_x - g[n:n + p],
                           lam * (G @ w_x) - s * v - lam * g[n + p:]])


@pytest.mark.parametrize("kkt_form", ["primal", "dual"])
@pytest.mark.parametrize("polish", [True, False])
def test_adjoint_solves_the_full_system(kkt_form, polish):
    """The presolved factorization gives w with Jᵀw = g for the FULL problem's J, to
    rounding: the substitution's adjoint is exact, not an approximation."""
    rng, plan, full = _presolve_inputs(6, lambda v: [v, v + 0.1])
    reduced, contexts = plan.reduce(*full)
    solution = solve_qp(*reduced, kkt_form=kkt_form, polish_solution=polish)
    assert (solution.polish is not None) == polish
    x, nu = plan.recover(contexts, np.asarray(solution.x), np.asarray(solution.nu),
                         np.asarray(solution.lam))
    P, q, A, b, G, h = full
    n, p = x.shape[1], nu.shape[1]
    g = rng.standard_normal((2, n + p + G.shape[-2]))
    w = plan.adjoint(contexts, lambda *r: adjoint_directions(solution, reduced[0], reduced[2],
                                                             reduced[4], *r),
                     g[:, :n], g[:, n:n + p], g[:, n + p:])
    for i in range(2):
        Pi, Ai, Gi = (M if M.ndim == 2 else M[i] for M in (P, A, G))
        # The point J is taken at: the polished one where the adjoint is the active set's.
        exact = polish and bool(solution.polish.exact[i])
        lam, s = ((solution.lam, solution.s) if exact or not polish
                  else (solution.polish.lam, solution.polish.s))
        residual = _full_adjoint_residual(Pi, Ai, Gi, lam[i], s[i], w[0][i], w[1][i], w[2][i],
                                          g[i])
        np.testing.assert_allclose(residual, 0, atol=1e-8 * np.abs(g[i]).max())
        # The recovered point satisfies the full KKT conditions.
        np.testing.assert_allclose(Pi @ x[i] + q[i] + Ai.T @ nu[i] + Gi.T @ solution.lam[i], 0,
                                   atol=1e-7)
        np.testing.assert_allclose(Ai @ x[i], b[i], atol=1e-8)
    if polish:
        assert bool(solution.polish.exact.all())   # a clear active set: exact adjoints


def test_presolve_on_torch_tensors_equals_numpy():
    """At large batches the QP backend runs the presolve on PyTorch tensors (no NumPy BLAS
    threads between PyTorch kernels); reduce, recover and the adjoint must agree with the
    NumPy path to rounding."""
    rng, plan, full = _presolve_inputs(7, lambda v: [v, 1.1 * v + 0.05, v - 0.1])
    reduced_np, ctx_np = plan.reduce(*full)
    reduced_t, ctx_t = plan.reduce(*(torch.from_numpy(np.ascontiguousarray(a)) for a in full))
    assert all(isinstance(r, torch.Tensor) for r in reduced_t)
    for a, b in zip(reduced_np, reduced_t):
        np.testing.assert_allclose(b.numpy(), a, rtol=1e-12, atol=1e-12)
    solution = solve_qp(*reduced_np)
    x_r, nu_r, lam = (np.asarray(v) for v in (solution.x, solution.nu, solution.lam))
    x_np, nu_np = plan.recover(ctx_np, x_r, nu_r, lam)
    x_t, nu_t = plan.recover(ctx_t, *(torch.from_numpy(v) for v in (x_r, nu_r, lam)))
    np.testing.assert_allclose(x_t.numpy(), x_np, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(nu_t.numpy(), nu_np, rtol=1e-12, atol=1e-12)
    n, p, m = x_np.shape[1], nu_np.shape[1], lam.shape[1]
    g = rng.standard_normal((3, n + p + m))

    def solve_reduced(*r):
        arrays = [np.asarray(v.numpy() if isinstance(v, torch.Tensor) else v) for v in r]
        w = adjoint_directions(solution, reduced_np[0], reduced_np[2], reduced_np[4], *arrays)
        return tuple(torch.from_numpy(np.asarray(v)) if isinstance(r[0], torch.Tensor)
                     else np.asarray(v) for v in w)

    w_np = plan.adjoint(ctx_np, solve_reduced, g[:, :n], g[:, n:n + p], g[:, n + p:])
    w_t = plan.adjoint(ctx_t, solve_reduced, *(torch.from_numpy(np.ascontiguousarray(v))
                                               for v in (g[:, :n], g[:, n:n + p], g[:, n + p:])))
    for a, b in zip(w_np, w_t):
        np.testing.assert_allclose(b.numpy(), a, rtol=1e-10, atol=1e-12)


def test_paper_form_at_a_batch_on_the_torch_engine_matches_cvxpy(monkeypatch):
    """B = 64 with 40 variables takes the PyTorch engine (presolve on tensors); the answers
    and gradients still match CVXPY's and the quad_form layer's."""
    from cvxlayers.backends import qp_backend

    engines = []
    choose = qp_backend._engine
    monkeypatch.setattr(qp_backend, "_engine",
                        lambda *a: engines.append(choose(*a)) or engines[-1])
    rng = np.random.default_rng(8)
    n, m, B = 40, 30, 64
    problem, params, outputs, values, L = _paper_qp(rng, n=n, m=m)
    batch = [np.stack([v + 0.05 * rng.standard_normal(v.shape) for _ in range(B)])
             for v in values]
    layer = CvxpyLayer(problem, params, outputs, solver="QP")
    xq = cp.Variable(n)
    quad = cp.Problem(cp.Minimize(0.5 * cp.quad_form(xq, cp.psd_wrap(L.T @ L)) + params[0] @ xq),
                      [params[1] @ xq <= params[2]])
    quad_layer = CvxpyLayer(quad, params, [xq], solver="QP")
    grads, xs = [], []
    for lay in (layer, quad_layer):
        tensors = [_t(v) for v in batch]
        x = lay(*tensors)[0]
        (x * torch.linspace(-1, 1, n, dtype=torch.float64)).sum().backward()
        xs.append(x.detach().numpy())
        grads.append([t.grad.numpy() for t in tensors])
    for i in (0, B // 2, B - 1):
        x_ref, _ = _reference(problem, params, [v[i] for v in batch], outputs)
        np.testing.assert_allclose(xs[0][i], x_ref, atol=1e-6)
    np.testing.assert_allclose(xs[0], xs[1], atol=1e-6)
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert engines and all(isinstance(e, qp_backend._TorchEngine) for e in engines)


def test_g_is_made_on_the_kept_variables_alone_and_reduces_the_same():
    """The paper form's G has no entry on the auxiliary t = Lx: made on the user's
    variables alone (one gather, Presolve.g_columns) it is the full G's kept columns, and
    the reduced problem is the same to the last bit."""
    rng = np.random.default_rng(11)
    problem, params, outputs, values, _ = _paper_qp(rng, n=5, m=4)
    core = CvxpyLayer(problem, params, outputs, solver="QP").core
    compiled, backend = core._formulation(True), core._backend("QP")
    layout, pmap = compiled.layout, compiled.parameter_map
    plan = backend.presolve(layout)
    assert plan.g_columns is not None and plan.g_columns.size == 5
    batch = [np.stack([v, v + 0.1 * rng.standard_normal(v.shape)]) for v in values]
    data = pmap.forward(pmap.features(batch, [True] * 3, 2))
    full = backend.unpack(layout, data)
    on_kept = backend.unpack(layout, data, plan.g_columns)
    G, G_kept = full[4], on_kept[4]
    assert G_kept.shape == (2, 4, 5) and G_kept.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(G_kept, G[:, :, plan.g_columns])
    others = np.setdiff1d(np.arange(layout.n), plan.g_columns)
    assert not G[:, :, others].any()
    reduced, _ = plan.reduce(*full)
    reduced_kept, _ = plan.reduce(*on_kept, g_reduced=True)
    for a, b in zip(reduced, reduced_kept):
        np.testing.assert_array_equal(a, b)


def test_lpgd_on_a_presolved_layer_perturbs_the_full_problem():
    """LPGD re-solves the full problem's perturbed data, G included (it is made in full
    for it); at a small tau its gradient is the implicit one."""
    rng = np.random.default_rng(12)
    problem, params, outputs, values, _ = _paper_qp(rng, n=5, m=4)
    w = torch.tensor(rng.standard_normal(5))
    grads = {}
    for gradient, args in (("implicit", None), ("lpgd", {"tau": 1e-6})):
        layer = CvxpyLayer(problem, params, outputs[:1], solver="QP", gradient=gradient,
                           gradient_args=args)
        tensors = [_t(v) for v in values]
        (x,) = layer(*tensors)
        grads[gradient] = torch.autograd.grad((x * w).sum(), tensors)
    for implicit, lpgd in zip(grads["implicit"], grads["lpgd"]):
        np.testing.assert_allclose(lpgd.numpy(), implicit.numpy(), atol=1e-4)


def _relu_layer(n_in=3, n_out=4):
    z, Wt = cp.Variable(n_out), cp.Variable((n_out, n_in))
    W, b, xin = cp.Parameter((n_out, n_in)), cp.Parameter(n_out), cp.Parameter(n_in)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(z - Wt @ xin - b)), [z >= 0, Wt == W])
    return CvxpyLayer(problem, [W, b, xin], [z], solver="QP"), (W, b, xin)


@pytest.mark.parametrize("which", ["paper", "relu"])
def test_a_made_block_by_block_reduces_the_same(which):
    """With A given as its entries (EntryBatch), the first round makes dense only the
    blocks it reads; the reduced problem is the one of the dense A: to the last bit on
    NumPy, to rounding on PyTorch (its kernels)."""
    from cvxlayers.backends.qp_presolve import EntryBatch

    rng = np.random.default_rng(13)
    if which == "paper":
        problem, params, outputs, _, _ = _paper_qp(rng, n=5, m=4)
        layer = CvxpyLayer(problem, params, outputs, solver="QP")
    else:
        layer, params = _relu_layer()
    core = layer.core
    compiled, backend = core._formulation(True), core._backend("QP")
    layout, pmap = compiled.layout, compiled.parameter_map
    plan = backend.presolve(layout)
    batch = [rng.standard_normal((3,) + p.shape) for p in params]
    data = pmap.forward(pmap.features(batch, [True] * len(params), 3))
    dense = backend.unpack(layout, data)
    reduced, _ = plan.reduce(*dense)
    for asarray in (np.asarray, torch.from_numpy):
        lazy = backend.unpack(layout, data, plan.g_columns, asarray)
        assert isinstance(lazy[2], EntryBatch)
        rest = [a if isinstance(a, EntryBatch) else asarray(np.ascontiguousarray(a))
                for a in lazy]
        again, _ = plan.reduce(*rest, g_reduced=plan.g_columns is not None)
        for a, b in zip(reduced, again):
            if asarray is np.asarray:
                np.testing.assert_array_equal(a, b)
            else:
                np.testing.assert_allclose(np.asarray(b), a, rtol=1e-13, atol=1e-13)
