"""The peers of the QP benchmarks, each built as ``solve(q, G, h) -> x`` on torch tensors.

Every builder returns ``None`` (and prints a note) when its package is not importable here,
so one script runs in any environment; ``benchmarks/run_qp.sh`` makes the venv that has
them all. None of this is part of the package.
"""

from __future__ import annotations

import numpy as np
import torch


def _note(name, exc):
    print(f"note: {name} unavailable here ({type(exc).__name__}: {exc}); skipped")


def proxsuite(Qt, m):
    """proxsuite's ``QPFunction`` (ProxQP), eps 1e-9, single-threaded (omp_parallel off)."""
    try:
        from proxsuite.torch.qplayer import QPFunction
    except Exception as exc:  # noqa: BLE001 - not installed, or built against another NumPy
        return _note("proxsuite", exc)
    empty = torch.empty(0)
    low = torch.full((m,), -1e20)
    return lambda q, G, h: QPFunction(eps=1e-9, omp_parallel=False)(
        Qt, q, empty, empty, G, low, h)[0]


def qpth(Qt):
    """qpth's ``QPFunction`` (OptNet's batched interior point), its defaults."""
    try:
        from qpth.qp import QPFunction
    except Exception as exc:  # noqa: BLE001
        return _note("qpth", exc)
    empty = torch.empty(0)
    return lambda q, G, h: QPFunction(verbose=-1)(Qt, q, G, h, empty, empty)


def moreau_native(Q, m, batch, method):
    """Moreau's batched torch ``Solver`` on ½xᵀQx + qᵀx s.t. Gx + s = h, s ≥ 0.

    P (= Q, dense, both triangles) and A (= G, dense per element) are passed as CSR values;
    ``method`` is ``"active_set"`` (CPU) or ``"ipm"``; settings otherwise Moreau's defaults.
    """
    try:
        import moreau
        from moreau.torch import Solver
    except Exception as exc:  # noqa: BLE001
        return _note("moreau", exc)
    n = Q.shape[0]
    dense_csr = lambda rows: (torch.arange(0, rows * n + 1, n),  # noqa: E731
                              torch.arange(n).repeat(rows))
    settings = moreau.Settings(device="cpu", batch_size=batch, solver=method)
    solver = Solver(n, m, *dense_csr(n), *dense_csr(m),
                    cones=moreau.Cones(num_nonneg_cones=m), settings=settings)
    P_values = torch.tensor(np.broadcast_to(Q.reshape(-1), (batch, n * n)).copy())
    return lambda q, G, h: solver.solve(P_values, G.reshape(batch, m * n), q, h).x


def cvxpylayers(problem, parameters, variables, solver=None, solver_args=None):
    """cvxpylayers' torch ``CvxpyLayer`` (1.2), with ``solver`` (None: its default, SCS)."""
    try:
        from cvxpylayers.torch import CvxpyLayer
        kwargs = {} if solver is None else {"solver": solver}
        layer = CvxpyLayer(problem, parameters, variables, **kwargs)
    except Exception as exc:  # noqa: BLE001 - not installed, or a CVXPY it cannot use
        return _note(f"cvxpylayers (solver={solver})", exc)
    if solver_args:
        return lambda *params: layer(*params, solver_args=solver_args)[0]
    return lambda *params: layer(*params)[0]


def version(module: str) -> str:
    try:
        from importlib.metadata import version as _version
        return _version(module)
    except Exception:  # noqa: BLE001
        return "-"
