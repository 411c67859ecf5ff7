"""Clarabel called directly on a cone program in SCS form, for cones diffcp's call drops.

diffcp's ``solve_internal`` hands SCS the cone dict whole, so SCS solves power cones
through it; for Clarabel it builds the cone list from the keys ``z``, ``l``, ``q``, ``s``
and ``ep`` only, and a power cone's rows would be left without a cone. This module is that
call with the power cones added (forward only: nothing here is differentiated). For

    minimize cᵀx  s.t.  Ax + s = b,  s ∈ K = {0}ᶻ × ℝ₊ˡ × Q⋯ × S⋯ × K_exp⋯ × K_pow(α)⋯

the rows come in that order (CVXPY's SCS layout), and Clarabel's cones take the same
conventions: K_exp = cl{(x, y, z) : y e^{x/y} ≤ z, y > 0} and
K_pow(α) = {(x, y, z) : x^α y^{1−α} ≥ |z|, x, y ≥ 0}. Only the PSD cones differ (Clarabel
vectorizes the upper triangle), and diffcp's own row permutation is reused for them.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

#: Clarabel's statuses as diffcp reports them (so that one status map serves both paths).
_STATUS = {
    "Solved": "Solved",
    "PrimalInfeasible": "Infeasible",
    "DualInfeasible": "Unbounded",
    "AlmostSolved": "Optimal Inaccurate",
    "AlmostPrimalInfeasible": "Infeasible Inaccurate",
    "AlmostDualInfeasible": "Unbounded Inaccurate",
}


def _cones(cone_dict: dict, A, b):
    """Clarabel's cone list for ``cone_dict``, with A's and b's PSD rows permuted."""
    import clarabel
    from diffcp.cone_program import permute_psd_rows

    cones, row = [], 0
    for key in ("z", "f"):
        if cone_dict.get(key, 0) > 0:
            cones.append(clarabel.ZeroConeT(cone_dict[key]))
            row += cone_dict[key]
    if cone_dict.get("l", 0) > 0:
        cones.append(clarabel.NonnegativeConeT(cone_dict["l"]))
        row += cone_dict["l"]
    for size in cone_dict.get("q", []):
        cones.append(clarabel.SecondOrderConeT(size))
        row += size
    psd_rows = []
    for size in cone_dict.get("s", []):
        cones.append(clarabel.PSDTriangleConeT(size))
        A, b = permute_psd_rows(A, b, size, row)
        psd_rows.append((size, row))
        row += size * (size + 1) // 2
    cones += [clarabel.ExponentialConeT()] * cone_dict.get("ep", 0)
    cones += [clarabel.PowerConeT(float(alpha)) for alpha in cone_dict.get("p", [])]
    return cones, A, b, psd_rows


def solve(A: sp.csc_matrix, b: np.ndarray, c: np.ndarray, cone_dict: dict,
          **settings) -> dict:
    """Solves the program with Clarabel; returns diffcp's result dict (``x``, ``y``, ``s``
    and ``info`` with an SCS-style ``status``).

    Args:
        A: ``(m, n)`` sparse constraint matrix; b: ``(m,)``; c: ``(n,)``.
        cone_dict: the cone K in SCS form; ``p`` lists the power cones' α.
        settings: Clarabel settings by name (e.g. ``tol_gap_abs``, ``max_iter``).

    Raises:
        ValueError: for a cone Clarabel does not take here (``ed``: dual exponential).
        AttributeError: for a setting Clarabel does not have.
    """
    import clarabel
    from diffcp.cone_program import inverse_permute_psd_solution

    if cone_dict.get("ed", 0):
        raise ValueError("Clarabel is not given dual exponential cones; use SCS.")
    A = sp.csc_matrix(A)
    cones, A, b, psd_rows = _cones(cone_dict, A, np.asarray(b, dtype=float))
    options = clarabel.DefaultSettings()
    options.verbose = False
    for key, value in settings.items():
        setattr(options, key, value)
    P = sp.csc_matrix((c.size, c.size))
    solution = clarabel.DefaultSolver(P, np.asarray(c, dtype=float), A, b, cones,
                                      options).solve()
    y, s = np.array(solution.z), np.array(solution.s)
    for size, row in psd_rows:
        y, s = inverse_permute_psd_solution(y, s, size, row)
    status = str(solution.status)
    return {"x": np.array(solution.x), "y": y, "s": s,
            "info": {"status": _STATUS.get(status, status), "solveTime": solution.solve_time,
                     "iter": solution.iterations, "pobj": solution.obj_val}}
