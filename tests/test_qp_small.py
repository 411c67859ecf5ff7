"""The small-problem paths of the native QP solver: NumPy's own namespace with direct
reductions, LAPACK and numpy.linalg.solve in place of SciPy's batched LU, and torch.qp on
NumPy for small CPU batches. Each must give what the general path gives."""

import numpy as np
import pytest
import torch

from cvxlayers.backends import batched_lu
from cvxlayers.backends.qp_arrays import max_pair_step, max_step, namespace
from cvxlayers.backends.qp_solver import solve_qp
from cvxlayers.torch import qp


def _dense_qp(rng, n, m, batch):
    L = rng.standard_normal((n, n))
    Q = L @ L.T / n + 0.1 * np.eye(n)
    G = rng.standard_normal((batch, m, n))
    h = np.einsum("bmn,bn->bm", G, rng.standard_normal((batch, n))) + rng.uniform(0.1, 1, (batch, m))
    return Q, rng.standard_normal((batch, n)), G, h


def test_namespace_reductions_match_numpy():
    rng = np.random.default_rng(0)
    v = rng.standard_normal((3, 4))
    xp = namespace(v)
    for name in ("sum", "max", "min"):
        np.testing.assert_array_equal(getattr(xp, name)(v, axis=-1), getattr(np, name)(v, axis=-1))
        assert getattr(xp, name)(v) == getattr(np, name)(v)
    assert bool(xp.any(v > 1)) == bool(np.any(v > 1)) and bool(xp.all(v > -9))
    assert xp.sum(v > 0) == np.sum(v > 0)  # booleans count, as numpy.sum does
    assert xp.linalg is np.linalg and xp.concat is np.concat  # the rest is NumPy's own


def test_step_to_the_boundary():
    v = np.array([[1.0, 2.0, 4.0], [1.0, 1.0, 1.0]])
    dv = np.array([[-4.0, 1.0, -2.0], [0.5, 0.0, 2.0]])
    # row 0: the first entry hits 0 at α = 1/4 (the third at 2); row 1 never does: α = 1
    np.testing.assert_allclose(max_step(np, v, dv), [0.25, 1.0])
    np.testing.assert_allclose(max_pair_step(np, v, dv, v[::-1], dv[::-1]), [0.25, 0.25])


@pytest.mark.parametrize("batch,size", [(1, 10), (3, 10), (1, 40), (3, 40)])
def test_lu_paths_solve(batch, size):
    """Kept matrices (≤ 32 rows; LAPACK's gesv for one, numpy.linalg.solve for a batch),
    getrf/getrs for one larger matrix, SciPy beyond: K u = r to rounding, K left intact."""
    rng = np.random.default_rng(batch * size)
    K = rng.standard_normal((batch, size, size)) + size * np.eye(size)
    r = rng.standard_normal((batch, size))
    before = K.copy()
    u = batched_lu.lu_solve(batched_lu.lu_factor(K), r)
    np.testing.assert_allclose(np.einsum("bij,bj->bi", K, u), r, atol=1e-12)
    np.testing.assert_array_equal(K, before)
    Kt = np.swapaxes(K, -1, -2)  # a transposed view, as the dual reduction passes
    u = batched_lu.lu_solve(batched_lu.lu_factor(Kt), r)
    np.testing.assert_allclose(np.einsum("bji,bj->bi", K, u), r, atol=1e-12)


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # SciPy says so, as before
@pytest.mark.parametrize("batch", [1, 2])
def test_singular_matrix_gives_nonfinite_not_an_error(batch):
    K = np.zeros((batch, 3, 3))
    u = batched_lu.lu_solve(batched_lu.lu_factor(K), np.ones((batch, 3)))
    assert not np.isfinite(u).all()


@pytest.mark.parametrize("kkt_form", ["dual", "primal"])
def test_numpy_solve_matches_torch_solve(kkt_form):
    """The same batch through NumPy (the fast namespace) and torch (array_api_compat)."""
    rng = np.random.default_rng(1)
    Q, q, G, _ = _dense_qp(rng, 6, 8, 5)
    x0 = rng.standard_normal((5, 6))  # feasible for Ax = b, Gx ≤ h
    A = rng.standard_normal((2, 6))
    b, h = x0 @ A.T, np.einsum("bmn,bn->bm", G, x0) + rng.uniform(0.1, 1, (5, 8))
    args = (Q, q, A, b, G, h)
    ours = solve_qp(*args, kkt_form=kkt_form)
    theirs = solve_qp(*(torch.from_numpy(np.ascontiguousarray(a)) for a in args),
                      kkt_form=kkt_form)
    assert ours.statuses == theirs.statuses and ours.iterations == theirs.iterations
    np.testing.assert_allclose(ours.x, theirs.x.numpy(), atol=1e-9)


def test_torch_qp_small_batch_gradients():
    """torch.qp's NumPy path (B = 2, CPU), against finite differences (gradcheck)."""
    rng = np.random.default_rng(2)
    Q, q, G, h = _dense_qp(rng, 4, 5, 2)
    Qt = torch.tensor(Q)
    inputs = tuple(torch.tensor(v, requires_grad=True) for v in (q, G, h))
    assert torch.autograd.gradcheck(lambda q, G, h: qp(Qt, q, G, h), inputs, eps=1e-6,
                                    atol=1e-5)


def test_engine_rule_keeps_small_matrices_on_numpy():
    from cvxlayers.backends.qp_backend import _engine, _NumpyEngine, numpy_pays

    assert numpy_pays(256, 10) and numpy_pays(2048, 10)   # ≤ 32 rows: any batch below 2^18
    assert not numpy_pays(4096, 10) and not numpy_pays(256, 33) and not numpy_pays(64, 40)
    assert numpy_pays(8, 100) and not numpy_pays(32, 100)  # small batches: the entry limit
    assert isinstance(_engine(256, 256 * 10 * 10), _NumpyEngine)
    assert not isinstance(_engine(256, 256 * 40 * 40), _NumpyEngine)
