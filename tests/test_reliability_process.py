"""Process-level reliability: a layer works in forked children after a batched call in the
parent, concurrent batched calls leave process-wide state (BLAS threads, warning filters)
as they found it, and inputs the solver cannot use get errors that name the parameter."""

import os
import subprocess
import sys
import textwrap
import threading
import warnings

import cvxpy as cp
import numpy as np
import pytest
import threadpoolctl
import torch

from cvxlayers import ParameterError, SolverError
from cvxlayers.backends import pool
from cvxlayers.torch import CvxpyLayer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A projection onto the nonnegative orthant: x*(y) = max(y, 0), so answers are exact.
RELU = """
import cvxpy as cp, numpy as np, torch
from cvxlayers.torch import CvxpyLayer
x, y = cp.Variable(5), cp.Parameter(5)
layer = CvxpyLayer(cp.Problem(cp.Minimize(cp.sum_squares(x - y)), [x >= 0]), [y], [x],
                   n_jobs=2, solver_args={"eps_abs": 1e-9, "eps_rel": 1e-9})
def check(inp):
    out, = layer(inp)
    assert torch.allclose(out, inp.clamp(min=0), atol=1e-5), (out, inp)
    return out
check(torch.randn(16, 5, dtype=torch.float64))  # batched in the parent: the pool exists
"""


def _run(script: str, timeout: float = 60):
    """Runs ``script`` in a fresh interpreter; a hang fails the test instead of blocking."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the subprocess hung (no exit within {timeout} s)")
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def relu_layer(n_jobs=2):
    x, y = cp.Variable(5, name="x"), cp.Parameter(5, name="y")
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - y)), [x >= 0])
    return CvxpyLayer(problem, [y], [x], n_jobs=n_jobs)


# --- fork -------------------------------------------------------------------------------

@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_children_after_batched_call_in_parent():
    """os.fork, then a DataLoader with fork workers, in one interpreter (imports are slow)."""
    out = _run(RELU + """
import os
pid = os.fork()
if pid == 0:
    try:
        check(torch.randn(4, 5, dtype=torch.float64))
        os._exit(0)
    except BaseException:
        import traceback; traceback.print_exc(); os._exit(1)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
check(torch.randn(4, 5, dtype=torch.float64))  # and the parent's pool still works
print("os.fork ok")

from torch.utils.data import DataLoader, Dataset
class Solved(Dataset):
    def __len__(self): return 8
    def __getitem__(self, i):
        inp = torch.linspace(-1, 1, 10, dtype=torch.float64)[None, i % 6:i % 6 + 5].repeat(3, 1)
        return check(inp)  # batched (3, 5): the pool, in the worker
loader = DataLoader(Solved(), batch_size=2, num_workers=2, multiprocessing_context="fork",
                    timeout=30)
batches = list(loader)
assert len(batches) == 4 and batches[0].shape == (2, 3, 5)
print("DataLoader ok")
""", timeout=60)
    assert "os.fork ok" in out and "DataLoader ok" in out


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_workers_after_threaded_small_qp_solves():
    """The compiled small-QP path splits large batches over threads it starts and joins
    within each call: DataLoader fork workers after such calls in the parent neither hang
    nor differ (in them PyTorch runs one thread, and so does the path)."""
    out = _run("""
import numpy as np, torch
from cvxlayers.backends import qp_small
from cvxlayers.torch import qp
assert qp_small.prepare(wait=True)
rng = np.random.default_rng(0)
n = m = 10
L = rng.standard_normal((n, n))
Q = torch.tensor(L @ L.T / n + 0.1 * np.eye(n))
G = torch.tensor(rng.standard_normal((256, m, n)))
h = (G @ torch.tensor(rng.standard_normal((256, n, 1))))[..., 0] + 0.5
q = torch.tensor(rng.standard_normal((256, n)))
assert len(qp_small._parts(256, 256 * 20 ** 3)) > 1 or torch.get_num_threads() == 1
x_parent = qp(Q, q, G, h)

from torch.utils.data import DataLoader, Dataset
class Solved(Dataset):
    def __len__(self): return 4
    def __getitem__(self, i):
        assert torch.get_num_threads() == 1
        return qp(Q, q, G, h)
loader = DataLoader(Solved(), batch_size=2, num_workers=2, multiprocessing_context="fork",
                    timeout=60)
for batch in loader:
    assert torch.equal(batch[0], x_parent) and torch.equal(batch[1], x_parent)
print("threaded small QP ok")
""", timeout=120)
    assert "threaded small QP ok" in out


# --- process-wide state under concurrent calls ------------------------------------------

def _blas_threads():
    return [(lib["filepath"], lib["num_threads"]) for lib in threadpoolctl.threadpool_info()]


def test_concurrent_batched_calls_leave_blas_and_warning_filters_alone():
    # An inaccurate SCS solve makes diffcp warn "Solved/Inaccurate." in the workers.
    x, A, b = cp.Variable(8), cp.Parameter((12, 8)), cp.Parameter(12)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b) + cp.norm1(x)), [x >= -1])
    layer = CvxpyLayer(problem, [A, b], [x], n_jobs=2, on_failure="warn",
                       solver_args={"max_iters": 5})
    rng = np.random.default_rng(0)
    A_value = torch.tensor(rng.standard_normal((6, 12, 8)))
    b_value = torch.tensor(rng.standard_normal((6, 12)))
    errors = []
    start = threading.Barrier(4)

    def work():
        try:
            start.wait()
            for _ in range(6):
                layer(A_value, b_value)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    # The test's own filter, set and reset in this thread only (catch_warnings is not
    # thread-safe, which is the point): the policy's once-per-call warning is expected.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        blas_before = _blas_threads()
        filters_before = list(warnings.filters)
        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors
        assert _blas_threads() == blas_before
        assert warnings.filters == filters_before
    assert not any("Solved/Inaccurate" in str(f[1]) for f in warnings.filters if f[1])


def test_blas_limit_is_reference_counted():
    if not any(lib["user_api"] == "blas" for lib in threadpoolctl.threadpool_info()):
        pytest.skip("no BLAS that threadpoolctl controls")
    before = _blas_threads()
    outer = pool.blas_limited()
    inner = pool.blas_limited()
    outer.__enter__()
    inner.__enter__()
    assert all(n == 1 for _, n in _blas_threads())
    outer.__exit__(None, None, None)  # the first to enter leaves first: still limited
    assert all(n == 1 for _, n in _blas_threads())
    inner.__exit__(None, None, None)
    assert _blas_threads() == before


def test_inaccurate_warning_hidden_during_a_call_only():
    from cvxlayers.backends.diffcp_warnings import diffcp_inaccurate_ignored

    before = list(warnings.filters)
    with diffcp_inaccurate_ignored():
        warnings.filterwarnings("ignore", message="user's own")  # added meanwhile: kept
        with warnings.catch_warnings(record=True) as caught:
            warnings.warn_explicit("Solved/Inaccurate.", UserWarning, "cone_program.py", 1,
                                   module="diffcp.cone_program")
            warnings.warn_explicit("Solved/Inaccurate.", UserWarning, "mine.py", 1,
                                   module="mine")
        assert [w.filename for w in caught] == ["mine.py"]
    assert warnings.filters[1:] == before and "user's own" in str(warnings.filters[0][1])
    warnings.filters.pop(0)


# --- inputs the solver cannot use --------------------------------------------------------

def test_huge_data_failure_hints_at_scaling():
    x, A, b = cp.Variable(3), cp.Parameter((2, 3), name="A"), cp.Parameter(2, name="b")
    problem = cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b) + cp.sum_squares(x)), [x >= -1])
    for solver in ("ECOS", "CLARABEL"):
        layer = CvxpyLayer(problem, [A, b], [x], solver=solver)
        with pytest.raises(SolverError, match=r"(?s)scale.*`A` \(position 0\).*1e\+30"):
            layer(1e30 * torch.ones(2, 3, dtype=torch.float64), torch.ones(2))
    # SCS takes P = 2AᵀA + 2I itself and equilibrates it: the exact answer,
    # x = (AᵀA + I)⁻¹Aᵀb = 1/(3e30 + 1e-30) per entry.
    x_scs, = CvxpyLayer(problem, [A, b], [x])(1e30 * torch.ones(2, 3, dtype=torch.float64),
                                              torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(x_scs, torch.full((3,), 1 / 3e30, dtype=torch.float64),
                               rtol=1e-6, atol=0)


def test_ordinary_failure_has_no_scaling_hint():
    x, a = cp.Variable(2), cp.Parameter(2, name="a")
    layer = CvxpyLayer(cp.Problem(cp.Minimize(cp.sum(x)), [x >= a, x <= a - 1]), [a], [x])
    with pytest.raises(SolverError) as info:
        layer(torch.ones(2))
    assert "scale" not in str(info.value)


def test_meta_tensor_names_the_parameter():
    layer = relu_layer()
    with pytest.raises(ParameterError, match=r"`y` \(position 0\).*meta.*no data"):
        layer(torch.ones(5, device="meta"))


def test_torch_func_runs_the_layer():
    """grad and vmap go through the custom op (tests/test_torch_compile.py checks values)."""
    layer = relu_layer()
    y = torch.tensor([1.0, -2.0, 3.0, -4.0, 5.0], dtype=torch.float64)
    grad = torch.func.grad(lambda y: layer(y)[0].sum())(y)
    torch.testing.assert_close(grad, (y > 0).double(), atol=1e-5, rtol=0)
    batch = torch.stack([y, -y])
    torch.testing.assert_close(torch.func.vmap(lambda y: layer(y)[0])(batch),
                               batch.clamp(min=0), atol=1e-4, rtol=0)  # SCS defaults
