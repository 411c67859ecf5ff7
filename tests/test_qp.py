"""The native batched interior-point QP backend (solver="QP") and torch.qp."""

import cvxpy as cp
import numpy as np
import pytest
import torch
from zoo import TIGHT, ZOO, reference_solution

from cvxlayers import ProblemError, SolverError
from cvxlayers.backends.qp_solver import solve_qp
from cvxlayers.torch import CvxpyLayer, qp

QP_CASES = ["lp", "qp", "duals", "broadcast", "psd_parameter"]


def _weights(case, rng, batch=2):
    return [torch.tensor(rng.standard_normal((batch,) + tuple(v.shape))) for v in case.variables]


def _objective(layer, case, weights, **kwargs):
    def f(*params):
        outs = layer(*params, **kwargs)
        return sum((w * o).sum() for w, o in zip(weights, outs))
    return f


def _batched_params(case, values):
    batched = case.broadcast or (True,) * len(values)
    return [torch.tensor(v[:2] if b else v, requires_grad=True) for v, b in zip(values, batched)]


@pytest.mark.parametrize("name", QP_CASES)
def test_solution_matches_cvxpy(name):
    case = ZOO[name]()
    values = case.sample(np.random.default_rng(1), 3)
    layer = CvxpyLayer(case.problem, case.parameters, case.variables, solver="QP")
    outputs = layer(*[torch.tensor(v) for v in values])
    for i in range(3):
        for out, ref in zip(outputs, reference_solution(case, values, i)):
            np.testing.assert_allclose(out[i].numpy(), ref, atol=1e-6)


@pytest.mark.parametrize("name", QP_CASES)
def test_gradcheck(name):
    case = ZOO[name]()
    rng = np.random.default_rng(2)
    params = _batched_params(case, case.sample(rng, 2))
    layer = CvxpyLayer(case.problem, case.parameters, case.variables, solver="QP")
    f = _objective(layer, case, _weights(case, rng))
    assert torch.autograd.gradcheck(f, params, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["qp", "duals", "broadcast", "psd_parameter"])
def test_gradient_agrees_with_diffcp_path(name):
    case = ZOO[name]()
    rng = np.random.default_rng(3)
    params = _batched_params(case, case.sample(rng, 2))
    weights = _weights(case, rng)
    grads = {}
    for solver, args in (("QP", None), ("SCS", TIGHT["SCS"])):
        layer = CvxpyLayer(case.problem, case.parameters, case.variables, solver=solver)
        value = _objective(layer, case, weights, solver_args=args)(*params)
        grads[solver] = torch.autograd.grad(value, params)
    for g_qp, g_scs in zip(grads["QP"], grads["SCS"]):
        scale = g_scs.abs().max().item() + 1e-12
        assert (g_qp - g_scs).abs().max().item() <= 1e-5 * max(scale, 1.0)


def test_solver_can_be_chosen_per_call():
    case = ZOO["qp"]()
    values = [torch.tensor(v) for v in case.sample(np.random.default_rng(4), 2)]
    layer = CvxpyLayer(case.problem, case.parameters, case.variables)
    scs, = layer(*values, solver_args=TIGHT["SCS"])
    native, = layer(*values, solver_args={"solver": "QP", "tol": 1e-10})
    np.testing.assert_allclose(native, scs, atol=1e-7)
    with pytest.raises(ValueError, match=r"\['eps_abs'\] are not options of the QP solver"):
        layer(*values, solver_args={"solver": "QP", "eps_abs": 1e-3})


@pytest.mark.parametrize("name,match", [
    ("socp", r"objective term `.*` is not quadratic or piecewise-linear"),
    ("sdp", r"Constraint 0 \(`.*`\) is a PSD constraint"),
    ("exponential", r"objective term `.*entr.*` is not quadratic"),
])
def test_non_qp_is_rejected_naming_the_culprit(name, match):
    case = ZOO[name]()
    with pytest.raises(ProblemError, match=match):
        CvxpyLayer(case.problem, case.parameters, case.variables, solver="QP")


def test_quadratic_constraint_is_named():
    x, a = cp.Variable(2), cp.Parameter(2)
    problem = cp.Problem(cp.Minimize(a @ x), [cp.sum_squares(x) <= 1])
    with pytest.raises(ProblemError, match=r"Constraint 0 .* not affine or piecewise-linear"):
        CvxpyLayer(problem, [a], [x], solver="QP")


# --- the solver on raw data ---------------------------------------------------------

def random_qp(rng, batch=4, n=6, m=5, p=2):
    L = rng.standard_normal((batch, n, n))
    P = L @ L.transpose(0, 2, 1) / n + 0.1 * np.eye(n)
    return (P, rng.standard_normal((batch, n)), rng.standard_normal((batch, p, n)),
            rng.standard_normal((batch, p)), rng.standard_normal((batch, m, n)),
            rng.uniform(0.5, 1.5, (batch, m)))


def cvxpy_qp(P, q, A, b, G, h):
    x = cp.Variable(q.size)
    constraints = ([A @ x == b] if b.size else []) + ([G @ x <= h] if h.size else [])
    cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, cp.psd_wrap(P)) + q @ x), constraints).solve(
        solver=cp.CLARABEL, tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11)
    return x.value


@pytest.mark.parametrize("kkt_form", ["primal", "dual"])
@pytest.mark.parametrize("p,m", [(2, 0), (0, 5), (2, 5)])
def test_equality_only_inequality_only_and_both(p, m, kkt_form):
    P, q, A, b, G, h = random_qp(np.random.default_rng(5), p=p, m=m)
    solution = solve_qp(P, q, A, b, G, h, kkt_form=kkt_form)
    assert solution.kkt_form == kkt_form
    assert solution.statuses == ["optimal"] * 4
    for i in range(4):
        np.testing.assert_allclose(solution.x[i], cvxpy_qp(P[i], q[i], A[i], b[i], G[i], h[i]),
                                   atol=1e-7)


def test_lp_and_rank_deficient_equalities():
    rng = np.random.default_rng(6)
    P, q, A, b, G, h = random_qp(rng)
    A = np.concatenate([A, A[:, :1] * 2.0], axis=1)   # a repeated (scaled) equality row
    b = np.concatenate([b, b[:, :1] * 2.0], axis=1)
    box = np.concatenate([np.eye(6), -np.eye(6)])[None].repeat(4, 0)
    G, h = np.concatenate([G, box], axis=1), np.concatenate([h, np.ones((4, 12))], axis=1)
    for P_i, form in ((P, "dual"), (P, "primal"), (np.zeros_like(P), "auto")):  # QPs, an LP
        solution = solve_qp(P_i, q, A, b, G, h, kkt_form=form)
        assert solution.statuses == ["optimal"] * 4
        for i in range(4):
            np.testing.assert_allclose(
                solution.x[i], cvxpy_qp(P_i[i], q[i], A[i, :2], b[i, :2], G[i], h[i]), atol=1e-6)


def test_failures_are_per_element_and_certified():
    P, q, A, b, G, h = random_qp(np.random.default_rng(7), p=0)
    G[1, 1], h[1, 1] = -G[1, 0], -h[1, 0] - 1.0       # element 1: Gx <= h and Gx >= h + 1
    q_unb = q.copy()
    P_unb = P.copy()
    P_unb[2] = 0.0                                    # element 2: an LP with no bounds
    G_unb = G.copy()
    G_unb[2] = 0.0
    with np.errstate(all="ignore"):
        solution = solve_qp(P_unb, q_unb, A, b, G_unb, h)
    assert solution.statuses == ["optimal", "infeasible", "unbounded", "optimal"]
    for i in (0, 3):
        np.testing.assert_allclose(solution.x[i], cvxpy_qp(P[i], q[i], A[i], b[i], G[i], h[i]),
                                   atol=1e-7)


def test_dual_reduction_certifies_infeasible_elements():
    P, q, A, b, G, h = random_qp(np.random.default_rng(7), p=2)
    G[1, 1], h[1, 1] = -G[1, 0], -h[1, 0] - 1.0       # element 1: Gx <= h and Gx >= h + 1
    with np.errstate(all="ignore"):
        solution = solve_qp(P, q, A, b, G, h, kkt_form="dual")
    assert solution.statuses == ["optimal", "infeasible", "optimal", "optimal"]
    np.testing.assert_allclose(solution.x[2], cvxpy_qp(P[2], q[2], A[2], b[2], G[2], h[2]),
                               atol=1e-7)


def test_auto_picks_the_dual_reduction_only_for_safely_definite_symmetric_P(monkeypatch):
    # The choice between the general method's reductions: the compiled small-QP path
    # (numba, when installed) would take this small problem first.
    from cvxlayers.backends import qp_small
    monkeypatch.setattr(qp_small, "ENABLED", False)
    P, q, A, b, G, h = random_qp(np.random.default_rng(12))
    assert solve_qp(P, q, A, b, G, h).kkt_form == "dual"
    semidefinite = P.copy()
    semidefinite[:, :, 0] = semidefinite[:, 0, :] = 0.0
    assert solve_qp(semidefinite, q, A, b, G, h).kkt_form == "primal"
    skewed = P + np.triu(np.ones((6, 6)), 1) * 1e-3   # qp() accepts a nonsymmetric Q
    assert solve_qp(skewed, q, A, b, G, h).kkt_form == "primal"
    many = np.concatenate([G] * 8, axis=1), np.concatenate([h] * 8, axis=1)
    assert solve_qp(P, q, A, b, *many).kkt_form == "primal"  # m = 40 ≫ n = 6: Gram is cheaper
    with pytest.raises(ValueError, match="kkt_form='dual' needs a symmetric positive definite"):
        solve_qp(semidefinite, q, A, b, G, h, kkt_form="dual")
    with pytest.raises(ValueError, match="`kkt_form` must be one of"):
        solve_qp(P, q, A, b, G, h, kkt_form="schur")


@pytest.mark.parametrize("kkt_form,accuracy", [("dual", 1e-10), ("primal", 1e-5)])
def test_adjoint_matches_a_dense_solve_at_the_solution(kkt_form, accuracy):
    # J = [[P, Gᵀ], [ΛG, −S]] at the returned (x, λ, s), solved densely per element: the
    # reference for w = J⁻ᵀ g. The dual reduction factors at the solution; the primal one
    # refines from its last iterate's factorization (three refinements left 7e-4 at n = 128).
    from cvxlayers.backends.qp_solver import qp_adjoint

    Q, q, G, h = (t.numpy() for t in _dense_qp_batch(40, 40, 8, seed=4))
    P, no_A, no_b = Q, np.zeros((0, 40)), np.zeros((8, 0))
    solution = solve_qp(P, q, no_A, no_b, G, h, kkt_form=kkt_form)
    g = np.random.default_rng(5).standard_normal((8, 40))
    _, dq, _, _, _, dh = qp_adjoint(solution, P, no_A, G, g, no_b, np.zeros((8, 40)))
    for i in range(8):
        lam, s = solution.lam[i], solution.s[i]
        J = np.block([[P, G[i].T], [lam[:, None] * G[i], -np.diag(s)]])
        w = np.linalg.solve(J.T, np.concatenate([g[i], np.zeros(40)]))
        assert np.abs(-w[:40] - dq[i]).max() <= accuracy * np.abs(w[:40]).max(), i
        assert np.abs(lam * w[40:] - dh[i]).max() <= accuracy * np.abs(w[:40]).max(), i


def test_layer_reports_failed_elements():
    x, b = cp.Variable(2), cp.Parameter(name="b")
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x)), [cp.sum(x) <= b, x >= 0.5])
    layer = CvxpyLayer(problem, [b], [x], solver="QP")
    with pytest.raises(SolverError, match=r"element 1: infeasible") as info:
        layer(torch.tensor([2.0, -1.0, 3.0]))
    assert info.value.failed == [1]
    warn_layer = CvxpyLayer(problem, [b], [x], solver="QP", on_failure="warn")
    with pytest.warns(RuntimeWarning, match="element 1: infeasible"):
        x_star, = warn_layer(torch.tensor([2.0, -1.0, 3.0]))
    assert torch.isnan(x_star[1]).all()
    np.testing.assert_allclose(x_star[[0, 2]].numpy(), 0.5, atol=1e-7)


@pytest.mark.parametrize("kkt_form", ["primal", "dual"])
def test_numpy_and_torch_give_the_same_solution(kkt_form):
    data = random_qp(np.random.default_rng(8))
    numpy_solution = solve_qp(*data, kkt_form=kkt_form)
    torch_solution = solve_qp(*[torch.tensor(d) for d in data], kkt_form=kkt_form)
    np.testing.assert_allclose(torch_solution.x.numpy(), numpy_solution.x, atol=1e-12)


# --- torch.qp (qpth/OptNet form) ----------------------------------------------------

def qp_inputs(batch_all=False, dtype=torch.float64):
    rng = np.random.default_rng(9)
    P, q, A, b, G, h = random_qp(rng, batch=3)
    tensors = dict(Q=P[0], q=q, G=G[0], h=h, A=A[0], b=b[0] * 0.1)
    if batch_all:
        tensors.update(Q=P, G=G, A=A, b=b * 0.1)
    return {k: torch.tensor(v, dtype=dtype, requires_grad=True) for k, v in tensors.items()}


def test_functional_qp_matches_cvxpy_and_passes_gradcheck():
    t = qp_inputs()
    z = qp(t["Q"], t["q"], t["G"], t["h"], t["A"], t["b"])
    assert z.shape == (3, 6)
    for i in range(3):
        expected = cvxpy_qp(*(t[k].detach().numpy() if t[k].dim() in (1, 2) and k not in ("q", "h")
                              else t[k].detach().numpy()[i] for k in ("Q", "q", "A", "b", "G", "h")))
        np.testing.assert_allclose(z[i].detach().numpy(), expected, atol=1e-7)

    def f(Q, q, G, h, A, b):
        return qp((Q + Q.mT) / 2, q, G, h, A, b)

    assert torch.autograd.gradcheck(f, tuple(t.values()), eps=1e-6, atol=1e-5, rtol=1e-4,
                                    fast_mode=True)


def test_functional_qp_broadcast_gradient_is_sum():
    shared, batched = qp_inputs(), qp_inputs(batch_all=True)
    z = qp(*[shared[k] for k in ("Q", "q", "G", "h", "A", "b")])
    z.sum().backward()
    total = torch.zeros_like(shared["G"])
    Q, G, A, b = (shared[k].detach() for k in ("Q", "G", "A", "b"))
    for i in range(3):
        G_i = G.clone().requires_grad_()
        qp(Q, shared["q"].detach()[i], G_i, shared["h"].detach()[i], A, b).sum().backward()
        total += G_i.grad
    np.testing.assert_allclose(shared["G"].grad.numpy(), total.numpy(), atol=1e-8)
    assert batched["G"].shape[0] == 3


def test_functional_qp_float32_is_accurate():
    t64 = qp_inputs()
    t32 = {k: v.detach().float() for k, v in t64.items()}
    z32 = qp(t32["Q"], t32["q"], t32["G"], t32["h"], t32["A"], t32["b"])
    z64 = qp(*[t64[k].detach() for k in ("Q", "q", "G", "h", "A", "b")])
    assert z32.dtype == torch.float32
    np.testing.assert_allclose(z32.numpy(), z64.numpy(), atol=1e-5)   # float32's own rounding


def test_functional_qp_takes_qpths_empty_tensors_for_no_equalities():
    t = {k: v.detach() for k, v in qp_inputs().items()}
    empty = torch.Tensor()
    z_qpth_style = qp(t["Q"], t["q"], t["G"], t["h"], empty, empty)
    z = qp(t["Q"], t["q"], t["G"], t["h"])
    torch.testing.assert_close(z_qpth_style, z)


def test_functional_qp_errors_name_the_argument():
    t = {k: v.detach() for k, v in qp_inputs().items()}
    with pytest.raises(ValueError, match=r"`G` must have shape \(5, 6\)"):
        qp(t["Q"], t["q"], t["G"][:, :4], t["h"])
    with pytest.raises(ValueError, match="both `A` and `b`"):
        qp(t["Q"], t["q"], t["G"], t["h"], t["A"])
    bad = t["h"].clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="`h` contains NaN"):
        qp(t["Q"], t["q"], t["G"], bad)


@pytest.mark.parametrize("kkt_form", ["primal", "dual"])
def test_iteration_limit_gives_inaccurate_not_failed(kkt_form):
    data = random_qp(np.random.default_rng(10))
    full = solve_qp(*data, kkt_form=kkt_form)
    for max_iter in range(1, full.iterations):
        short = solve_qp(*data, max_iter=max_iter, kkt_form=kkt_form)
        if "optimal_inaccurate" in short.statuses:
            break
    else:
        pytest.fail("no iteration limit produced an optimal_inaccurate element")
    inaccurate = [i for i, s in enumerate(short.statuses) if s == "optimal_inaccurate"]
    np.testing.assert_allclose(short.x[inaccurate], full.x[inaccurate], atol=1e-4)
    assert solve_qp(*data, max_iter=1, kkt_form=kkt_form).statuses == ["failed"] * 4


@pytest.mark.parametrize("kkt_form", ["primal", "dual"])
def test_jax_arrays_give_the_same_solution(kkt_form):
    jax = pytest.importorskip("jax")
    data = random_qp(np.random.default_rng(11))
    with jax.enable_x64(True):
        jax_solution = solve_qp(*[jax.numpy.asarray(d) for d in data], kkt_form=kkt_form)
        assert isinstance(jax_solution.x, jax.Array)
        np.testing.assert_allclose(np.asarray(jax_solution.x),
                                   solve_qp(*data, kkt_form=kkt_form).x, atol=1e-12)


def _dense_qp_batch(n, m, batch, seed):
    """Random feasible dense QPs (the benchmark's family): Q shared, q, G, h per element."""
    rng = np.random.default_rng(seed)
    L = rng.standard_normal((n, n))
    Q = L @ L.T / n + 0.1 * np.eye(n)
    G = rng.standard_normal((batch, m, n))
    h = np.einsum("bmn,bn->bm", G, rng.standard_normal((batch, n))) + rng.uniform(0.1, 1, (batch, m))
    return [torch.tensor(a) for a in (Q, rng.standard_normal((batch, n)), G, h)]


@pytest.mark.parametrize("kkt_form", ["primal", "dual"])
def test_an_elements_solution_and_gradient_do_not_depend_on_its_batch(kkt_form):
    # Elements converge at different iterations and leave the batch. With the primal
    # reduction each keeps its own last factorization for the backward pass (factoring early
    # finishers again at their final point, where W = λ/s spans ~1e26, gave gradients off by
    # up to 600x relative at n = 128); the dual reduction factors each at its solution.
    n, batch = 40, 64
    Q, q, G, h = _dense_qp_batch(n, n, batch, seed=3)
    w = torch.randn(batch, n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def solve(weights, *args):
        args = [a.clone().requires_grad_() for a in args]
        z = qp(*args, kkt_form=kkt_form)
        (weights * z).sum().backward()
        return z.detach(), [a.grad for a in args[1:]]   # gradients of q, G, h

    z_batch, grads_batch = solve(w, Q, q, G, h)
    for i in range(0, batch, 4):
        z_alone, grads_alone = solve(w[i:i + 1], Q, q[i:i + 1], G[i:i + 1], h[i:i + 1])
        torch.testing.assert_close(z_batch[i], z_alone[0], atol=1e-8, rtol=0)
        for g_batch, g_alone in zip(grads_batch, grads_alone):
            scale = 1 + g_alone[0].abs().max()
            assert (g_batch[i] - g_alone[0]).abs().max() / scale < 1e-6, i


def test_qp_solves_never_change_torchs_thread_count(monkeypatch):
    # In PyTorch 2.13 (MKL), after torch.set_num_threads(k > 1) — even k equal to the
    # default — batched float64 LU factorizations of 200 x 200 and larger return invalid
    # pivots. The solver used to run small solves on one thread and then restore the count,
    # which broke every later large solve in the process. It must not call it at all.
    def refuse(n):
        raise AssertionError(f"torch.set_num_threads({n}) called")

    monkeypatch.setattr(torch, "set_num_threads", refuse)
    Q, q, G, h = _dense_qp_batch(8, 8, 64, seed=6)      # small KKT rows, a large batch
    q = q.clone().requires_grad_()
    qp(Q, q, G, h).sum().backward()
    x, y = cp.Variable(8), cp.Parameter(8)
    layer = CvxpyLayer(cp.Problem(cp.Minimize(cp.sum_squares(x - y)), [x >= 0]), [y], [x],
                       solver="QP")
    away_from_the_kink = torch.randn(64, 8, dtype=torch.float64,
                                     generator=torch.Generator().manual_seed(0))
    y_value = (away_from_the_kink + 0.1 * away_from_the_kink.sign()).requires_grad_()
    layer(y_value)[0].sum().backward()
    torch.testing.assert_close(y_value.grad, (y_value.detach() > 0).double(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("columns, drop_row", [
    (range(3, 7), None),   # every row of columns 3..6: the strided-block path
    (range(3, 7), 2),      # one row missing in one column: the scatter
    ((1, 4, 5), None),     # full columns, but not one range: the scatter
])
def test_dense_unpacking_matches_a_scatter(columns, drop_row):
    from cvxlayers.backends.qp_backend import _dense, _full_column_block

    n_rows, n_cols, batch = 5, 9, 3
    rows = np.concatenate([np.arange(n_rows)] * len(columns))
    cols = np.repeat(np.asarray(columns), n_rows)
    if drop_row is not None:
        keep = ~((cols == columns[0]) & (rows == drop_row))
        rows, cols = rows[keep], cols[keep]
    values = np.random.default_rng(0).standard_normal((batch, rows.size))
    expected = np.zeros((batch, n_rows, n_cols))
    expected[:, rows, cols] = values
    assert (_full_column_block(rows, cols, n_rows) is not None) == (
        drop_row is None and list(columns) == list(range(columns[0], columns[-1] + 1)))
    np.testing.assert_array_equal(_dense(values, (rows, cols), (n_rows, n_cols)), expected)


@pytest.mark.parametrize("case", ["full", "offset block", "block minus one", "sparse",
                                  "mostly full"])
def test_outer_entries_match_the_dense_outer_products(case):
    """The adjoint's Σ u vᵀ at the structural entries, through each of its paths (a block
    written in place, a gather of few entries, a dense product gathered), equals the
    dense outer products read at those entries."""
    from cvxlayers.backends.qp_backend import _block, _outer_entries

    n_rows, n_cols, batch = 6, 7, 3
    grid_cols, grid_rows = np.meshgrid(np.arange(n_cols), np.arange(n_rows), indexing="ij")
    cols, rows = grid_cols.ravel(), grid_rows.ravel()   # column-major order
    keep = {"full": np.ones(rows.size, bool),
            "offset block": (rows >= 2) & (rows < 5) & (cols >= 1) & (cols < 4),
            "block minus one": ((rows >= 2) & (cols >= 1) & (cols < 4)
                                & ~((rows == 3) & (cols == 2))),
            "sparse": (rows + cols) % 5 == 0,
            "mostly full": (rows + cols) % 7 != 3}[case]
    rows, cols = rows[keep], cols[keep]
    assert (_block(rows, cols) is not None) == (case in ("full", "offset block"))
    rng = np.random.default_rng(1)
    pairs = [(rng.standard_normal((batch, n_rows)), rng.standard_normal((batch, n_cols)))
             for _ in range(2)]
    out = np.full((batch, rows.size), np.nan)
    _outer_entries(pairs, (rows, cols), -0.5, out)
    dense = -0.5 * sum(u[:, :, None] * v[:, None, :] for u, v in pairs)
    np.testing.assert_allclose(out, dense[:, rows, cols], rtol=1e-14, atol=1e-14)
