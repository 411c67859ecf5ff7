"""The QP backend's sparse path (issue 12, part 3): large sparse QPs go to a per-element
sparse interior point (Clarabel), polished, with a sparse-LU derivative."""

import cvxpy as cp
import numpy as np
import pytest
import torch

from cvxlayers import SolverError
from cvxlayers.torch import CvxpyLayer

TIGHT = dict(solver="CLARABEL", tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)


def _box(n):
    x, y = cp.Variable(n), cp.Parameter(n)
    return cp.Problem(cp.Minimize(cp.sum_squares(x - y)), [x >= 0, x <= 1]), x, y


def test_box_projection_takes_the_sparse_path_and_is_exact():
    problem, x, y = _box(80)
    layer = CvxpyLayer(problem, [y], [x], solver="QP")
    backend = layer.core._backend("QP")
    assert backend.prefers_sparse(layer.core._formulation(True).layout)
    rng = np.random.default_rng(0)
    y_value = rng.uniform(-0.5, 1.5, (4, 80))
    y_value[:, :5] = 1.0 + rng.uniform(-1e-7, 1e-7, (4, 5))   # near a bound
    y_t = torch.tensor(y_value, requires_grad=True)
    (out,) = layer(y_t)
    np.testing.assert_allclose(out.detach().numpy(), np.clip(y_value, 0, 1), atol=1e-12)
    out.sum().backward()
    inside = ((y_value > 0) & (y_value < 1)).astype(float)
    np.testing.assert_allclose(y_t.grad.numpy(), inside, atol=1e-9)


def _sparse_qp(rng, n=100):
    """A banded least-squares QP with a sum constraint and bounds: sparse, with equalities,
    duals and every kind of data parametrized."""
    x, q, lo, r = cp.Variable(n), cp.Parameter(n), cp.Parameter(n), cp.Parameter()
    D = np.diff(np.eye(n), axis=0)
    total = cp.sum(x) == r
    bound = x >= lo
    problem = cp.Problem(cp.Minimize(cp.sum_squares(D @ x) + 0.1 * cp.sum_squares(x) + q @ x),
                         [total, bound, x <= 2])
    values = [rng.standard_normal(n), -rng.uniform(0.1, 1.0, n), np.array(1.5)]
    return problem, [q, lo, r], [x, total.dual_variables[0], bound.dual_variables[0]], values


def test_sparse_and_dense_factorizations_agree_with_cvxpy_and_each_other():
    rng = np.random.default_rng(1)
    problem, params, outputs, values = _sparse_qp(rng)
    layer = CvxpyLayer(problem, params, outputs, solver="QP")
    assert layer.core._backend("QP").prefers_sparse(layer.core._formulation(True).layout)
    for p, v in zip(params, values):
        p.value = v
    problem.solve(**TIGHT)
    refs = [np.asarray(o.value) for o in outputs]
    results = {}
    for factorization in ("sparse", "dense"):
        tensors = [torch.tensor(v, requires_grad=True) for v in values]
        outs = layer(*tensors, solver_args={"factorization": factorization})
        for got, ref in zip(outs, refs):
            np.testing.assert_allclose(got.detach().numpy(), ref, atol=1e-7)
        (outs[0] @ torch.arange(100.0, dtype=torch.float64)).backward()
        results[factorization] = [t.grad.numpy() for t in tensors]
    for a, b in zip(results["sparse"], results["dense"]):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_sparse_path_gradcheck():
    rng = np.random.default_rng(2)
    problem, params, outputs, values = _sparse_qp(rng, n=8)
    layer = CvxpyLayer(problem, params, outputs[:1], solver="QP")
    tensors = [torch.tensor(v, requires_grad=True) for v in values]
    assert torch.autograd.gradcheck(
        lambda *p: layer(*p, solver_args={"factorization": "sparse"}), tensors, atol=1e-6,
        rtol=1e-4)


def test_sparse_path_reports_an_infeasible_element_by_index():
    problem, x, y = _box(80)
    lo = cp.Parameter(80)
    problem = cp.Problem(problem.objective, [x >= lo, x <= 1])
    layer = CvxpyLayer(problem, [y, lo], [x], solver="QP")
    y_value = torch.zeros(3, 80, dtype=torch.float64)
    lo_value = torch.zeros(3, 80, dtype=torch.float64)
    lo_value[1, 3] = 2.0     # x₃ ≥ 2 and x₃ ≤ 1
    with pytest.raises(SolverError, match=r"\b1\b.*infeasible|infeasible.*\b1\b"):
        layer(y_value, lo_value)


def test_factorization_option_is_validated():
    problem, x, y = _box(5)
    layer = CvxpyLayer(problem, [y], [x], solver="QP")
    with pytest.raises(ValueError, match="factorization.*'banded'"):
        layer(torch.zeros(5, dtype=torch.float64), solver_args={"factorization": "banded"})
