"""A batched primal-dual interior-point method for quadratic programs, and its adjoint.

For every batch element it solves

    minimize  ½ xᵀPx + qᵀx   subject to  Ax = b,  Gx + s = h,  s ≥ 0,

with Mehrotra's predictor-corrector method, as one vectorized computation over the batch
(Amos & Kolter, *OptNet*, 2017). Written against the array API, so the same code runs on
NumPy arrays and on PyTorch tensors on the CPU or a GPU.

**Newton step.** Each iteration factors one reduced KKT matrix and uses it for both the
predictor and the corrector. Two reductions are implemented, each in its own module:

* :mod:`~cvxlayers.backends.qp_primal` eliminates ds and dλ and factors P + GᵀWG
  (n + p rows); it handles every convex QP, LPs included;
* :mod:`~cvxlayers.backends.qp_dual` eliminates x as well, for positive definite P, and
  factors C P⁻¹ Cᵀ + diag(S Λ⁻¹, δ) (m + p rows, C = [G; A]), whose dense part is formed
  once per solve instead of once per iteration.

``kkt_form="auto"`` picks the dual reduction where P is safely definite and it costs fewer
flops per iteration (e.g. n = m = 128: one 128² LU against a 2mn² Gram product and an LU).

**Adjoint.** Differentiating the KKT conditions Px + q + Aᵀν + Gᵀλ = 0, Ax = b,
Λ(Gx − h) = 0 gives J d(x, ν, λ) = −r(dθ) with J = [[P, Aᵀ, Gᵀ], [A, 0, 0], [ΛG, 0, −S]].
For gradients g = (g_x, g_ν, g_λ), w = J⁻ᵀ g reduces to the primal reduction's matrix
(the dual reduction solves the same system in v = Λw_λ with its own matrix; see
:meth:`~cvxlayers.backends.qp_dual.DualKKT.adjoint_solve`):

    ⎡ P + GᵀWG   Aᵀ ⎤ ⎡ w_x ⎤   ⎡ g_x + Gᵀ(W g_λ) ⎤
    ⎣     A      0  ⎦ ⎣ w_ν ⎦ = ⎣       g_ν        ⎦,     w_λ = S⁻¹(G w_x − g_λ),

    ∇q = −w_x,  ∇P = −½(w_x xᵀ + x w_xᵀ),  ∇A = −(ν w_xᵀ + w_ν xᵀ),  ∇b = w_ν,
    ∇G = −(λ w_xᵀ + (λ∘w_λ) xᵀ),  ∇h = λ∘w_λ.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from array_api_compat import is_jax_array

from cvxlayers import status as st
from cvxlayers.backends import qp_small
from cvxlayers.backends.qp_arrays import max_inf_norm, mT, mv, namespace
from cvxlayers.backends.qp_data import QPData
from cvxlayers.backends.qp_dual import DualForm, definite_enough, prefers_dual
from cvxlayers.backends.qp_iterations import NEAR_FACTOR, Iterations, host_list
from cvxlayers.backends.qp_polish import polish
from cvxlayers.backends.qp_primal import PrimalForm
from cvxlayers.backends.qp_scaling import equilibrate, judge

_ADJOINT_RESIDUAL = 1e-12  # the adjoint stops refining once ‖Jᵀw − g‖∞ ≤ this·‖g‖∞
KKT_FORMS = ("auto", "primal", "dual")


@dataclass
class QPSolution:
    """The batch's solutions and what the adjoint needs.

    Attributes:
        x, nu, lam, s: shapes ``(B, n)``, ``(B, p)``, ``(B, m)``, ``(B, m)``.
        statuses: one status string per element.
        iterations: interior-point iterations run.
        element_iterations: iterations summed over the elements that ran them (the batch
            shrinks as elements finish): the factorizations actually done, start and
            adjoint aside.
        steps: ``(B,)`` NumPy array: the Newton steps each element took before it stopped
            (converged, certified or failed), which a warm start cuts.
        factors: each element's last reduced KKT matrix, factored (None unless kept), in
            the equilibrated coordinates of ``scaling``.
        kkt_form: the reduction used, ``"primal"`` or ``"dual"``, or ``"small"`` for the
            unreduced system of :mod:`~cvxlayers.backends.qp_small`.
        scaling: the :class:`~cvxlayers.backends.qp_scaling.Scaling` the iterations ran in
            (x, nu, lam, s are the user's, unscaled).
        polish: the active-set polish of the converged elements, in the equilibrated
            coordinates (:mod:`~cvxlayers.backends.qp_polish`), whose active sets the
            adjoint uses for those with a clear one; None when no element converged.
    """

    x: object
    nu: object
    lam: object
    s: object
    statuses: list
    iterations: int
    factors: object = None
    kkt_form: str = "primal"
    element_iterations: int = 0
    steps: object = None
    scaling: object = None
    polish: object = None


def batch_shapes(Q, q, G, h, A, b):
    """Checks OptNet/qpth-style inputs and returns (B, n, m, p, batched flags).

    Each argument is unbatched — Q (n,n), q (n,), G (m,n), h (m,), A (p,n), b (p,) — or has
    one extra leading batch dimension; batched arguments share the batch size. A and b may
    be ``None`` (no equalities). Raises ValueError naming the argument on a mismatch.
    """
    n = q.shape[-1]
    m = G.shape[-2] if G.ndim >= 2 else -1
    p = A.shape[-2] if A is not None and A.ndim >= 2 else 0
    expected = {"Q": (n, n), "q": (n,), "G": (m, n), "h": (m,)}
    given = {"Q": Q, "q": q, "G": G, "h": h}
    if A is not None or b is not None:
        if A is None or b is None:
            raise ValueError("Pass both `A` and `b` for equality constraints, or neither.")
        expected.update({"A": (p, n), "b": (p,)})
        given.update({"A": A, "b": b})
    batched, sizes = {}, {}
    for name, value in given.items():
        shape, want = tuple(value.shape), expected[name]
        if shape == want:
            batched[name] = False
        elif len(shape) == len(want) + 1 and shape[1:] == want:
            batched[name] = True
            sizes[name] = shape[0]
        else:
            raise ValueError(f"`{name}` must have shape {want} or (batch, *{want}) for n={n} "
                             f"variables, m={m} inequalities, p={p} equalities; received "
                             f"{shape}.")
    if len(set(sizes.values())) > 1:
        raise ValueError(f"Batched arguments must share one batch size; received {sizes}.")
    return next(iter(sizes.values()), 1), n, m, p, batched


def solve_qp(P, q, A, b, G, h, tol: float | None = None, max_iter: int = 50,
             keep_factorization: bool = True, kkt_form: str = "auto",
             polish_solution: bool = True, start=None) -> QPSolution:
    """Solves a batch of QPs: P (B,n,n), q (B,n), A (B,p,n), b (B,p), G (B,m,n), h (B,m);
    p or m may be 0, and the matrices P, A, G may be shared by the batch (2-D), which saves
    memory traffic. Works in the arrays' dtype: pass float64.

    ``kkt_form`` picks the Newton step's reduction: ``"primal"``, ``"dual"`` (P must be
    positive definite) or ``"auto"`` (see the module docstring). ``tol`` bounds the scaled
    residuals and gap (:meth:`QPData.meets`); by default it is what the reduction reaches
    reliably in float64: 1e-11 for the dual one, 1e-9 for the primal one, whose Gram matrix
    GᵀWG loses more digits as W spreads.

    The iterations run on Ruiz-equilibrated data (:mod:`~cvxlayers.backends.qp_scaling`;
    skipped for data already within a factor 16), with residuals, gap and objective measured
    in the user's coordinates; the returned solution is the user's, and "optimal" is granted
    only if it also meets the tolerance (1e-9 by default) on the user's data itself, else
    it reads optimal_inaccurate (within 1000·tol) or failed.

    Elements stop iterating when they converge (or are certified infeasible or unbounded);
    once enough have stopped, the rest continue as a smaller batch, so that the batch costs
    about the sum of its elements' iterations rather than the slowest element's count times
    the batch size (NumPy and PyTorch arrays; JAX arrays cannot be updated in place).

    With ``polish_solution`` the converged elements are finished by an active-set solve
    (:mod:`~cvxlayers.backends.qp_polish`) where it is feasible: their solutions are then
    exact to rounding, and, where the active set is clear, their gradients the exact
    active-set ones. With the polish and the default ``tol``, the iterations first stop at
    :data:`POLISH_TOL` (1e-7), where the active set is already the solution's; an element
    the polish does not make exact (guess rejected, inaccurate on the user's data, or a
    degenerate active set, which takes the interior point's derivative) resumes from its
    iterate to the reduction's own tolerance and is polished again, ending exactly where
    a solve at that tolerance ends (:meth:`~cvxlayers.backends.qp_iterations.Iterations.
    resume`).

    With ``keep_factorization`` the adjoint's factorization is kept for :func:`qp_adjoint`.
    The dual reduction factors at the solution: H + diag(S Λ⁻¹) stays well conditioned as
    s or λ → 0 (inactive rows decouple, the active block is H's), and its adjoint solves are
    exact to rounding. The primal reduction's P + GᵀWG is not (W spans ~1e25 there), so each
    element keeps its last iterate's factorization, and the adjoint refines against the
    exact system to absorb the last step.

    ``start``, a warm start, is ``(x, ν, λ, s, valid)``: previous solutions (``(B, ·)``
    arrays) and a ``(B,)`` mask of the elements to start from them; the others start cold.
    λ and s are pushed into the interior, to max(·, 0) + :data:`WARM_MARGIN`: an
    interior-point method cannot start on the boundary (a zero λᵢ or sᵢ stalls its steps),
    and a start near the central path of the new problem is what saves iterations."""
    xp = namespace(P, q, A, b, G, h)
    if kkt_form not in KKT_FORMS:
        raise ValueError(f"`kkt_form` must be one of {KKT_FORMS}; received {kkt_form!r}.")
    if qp_small.applies(P, q, A, G, start, polish_solution, kkt_form):
        # Small NumPy problems: the lean loop first; the general method if it cannot vouch
        # for every element (qp_small).
        solution = _solve_small(xp, P, q, A, b, G, h, tol, max_iter)
        if solution is not None:
            return solution
    m = G.shape[-2]
    # --- equilibration (qp_scaling): iterate on Ruiz-scaled data, judge on the user's ---
    original = (P, q, A, b, G, h)
    scaling, (P, q, A, b, G, h) = equilibrate(xp, P, q, A, b, G, h)
    data = scaling.attach(xp, QPData.build(xp, P, q, A, b, G, h), original)
    # ---
    if kkt_form == "dual" and not definite_enough(xp, data):
        raise ValueError("kkt_form='dual' needs a symmetric positive definite P (λ_min(P) above "
                         "1e-6 times its matrices' scale, after equilibration) in every element; use 'primal' or "
                         "'auto'.")
    dual = kkt_form == "dual" or (kkt_form == "auto" and prefers_dual(xp, data))
    whole = DualForm(xp, data) if dual else PrimalForm(xp, data)
    # The user's data is judged at the tolerance given, or by default at the primal one's
    # 1e-9: the dual reduction's 1e-11 bounds its ρ, computed through P⁻¹, whose rounding
    # leaves the user's Ax − b near 1e-10 (qp_scaling.judge).
    judge_tol = PrimalForm.default_tol if tol is None else tol
    # With the polish at the defaults the iterations first stop at a loose tolerance, where
    # the polish already finds almost every element's exact solution; only the others
    # (polish rejected, judged inaccurate, or a degenerate active set, which takes the
    # interior point's derivative) resume to the reduction's own tolerance.
    loose = polish_solution and tol is None and m > 0 and not is_jax_array(q)
    tol = whole.default_tol if tol is None else tol
    point = whole.start()
    if start is not None:  # the previous solution is the user's: equilibrated like the data
        *previous, valid = start
        point = _warm_point(xp, whole, point, (*scaling.scale_point(*previous), valid))
    run = Iterations(xp, whole, point, keep_factorization, can_shrink=not is_jax_array(q))
    run.run(max(POLISH_TOL, tol) if loose else tol, max_iter)
    polished = None
    unpacked = whole.unpack(run.full_point)   # (x, ν, λ, s), equilibrated
    if polish_solution:
        polished = _polish(xp, data, whole, unpacked, original, scaling, judge_tol,
                           run.flags["converged"] & run.flags["finite"])
    if loose:
        redo = run.flags["converged"] & run.flags["finite"]
        if polished is not None:
            redo = redo & ~polished[-1].exact
        if bool(xp.any(redo)) and run.iterations < max_iter:
            run.resume(redo)
            run.run(tol, max_iter - run.iterations)
            unpacked = whole.unpack(run.full_point)
            again = _polish(xp, data, whole, unpacked, original, scaling, judge_tol,
                            redo & run.flags["converged"] & run.flags["finite"])
            polished = _merge_polish(xp, polished, again, redo)
    flags = run.flags
    kkt = run.factored if run.factored is not None else run.kkt
    if not keep_factorization:
        kkt = None
    elif whole.factor_at_solution:
        # The dual reduction is accurate at the solution itself; factored on the first
        # adjoint solve, which a batch the polish made exact never makes.
        kkt = _FactorAtSolution(whole, run.full_point)
    elif kkt is None or (run.rows is not None and run.factored is None):
        # The primal one when no iteration ran, or the batch shrank before any.
        kkt = whole.factor(run.full_point, scratch=False)
    x, nu, lam, s = unpacked
    # --- equilibration: back to the user's coordinates ---
    scaling.lam, scaling.s = lam, s
    x, nu, lam, s = scaling.unscale(x, nu, lam, s)
    # --- "optimal" must hold on the user's data ---
    accurate, close = judge(xp, original, x, nu, lam, s, judge_tol, NEAR_FACTOR)
    record = None
    if polished is not None:
        (x_p, nu_p, lam_p, s_p), take, record = polished
        x, nu, lam, s = (xp.where(take[:, None], a, b)
                         for a, b in ((x_p, x), (nu_p, nu), (lam_p, lam), (s_p, s)))
        accurate, close = accurate | take, close | take
    flags["near"] = (flags["near"] | flags["converged"]) & close & ~accurate
    flags["converged"] = flags["converged"] & accurate
    # ---
    ok, inf, unb, close, fin = (host_list(flags[k]) for k in
                                ("converged", "infeasible", "unbounded", "near", "finite"))
    statuses = [st.OPTIMAL if o and f else st.INFEASIBLE if i else st.UNBOUNDED if u
                else st.OPTIMAL_INACCURATE if c and f else st.FAILED
                for o, i, u, c, f in zip(ok, inf, unb, close, fin)]
    return QPSolution(x, nu, lam, s, statuses, run.iterations, kkt, whole.name,
                      run.element_iterations, run.steps, scaling, record)


#: The interior point's first tolerance when the polish runs at the defaults (see
#: solve_qp). On the cvxpylayers paper's dense QP (n = m = 128, B = 128) it stops 1-2
#: iterations sooner per element than the dual reduction's 1e-11, and the polish still
#: finds every element's solution.
POLISH_TOL = 1e-7


def _polish(xp, data, whole, unpacked, original, scaling, judge_tol, converged):
    """The polish of the elements ``converged`` (qp_polish) from the interior point's
    ``unpacked`` (x, ν, λ, s), in the equilibrated coordinates where K is well scaled:
    ``((x, ν, λ, s) in the user's coordinates, take, Polish)``, or None when nothing was
    polished. An element is taken (``take``) when its polished point is accurate on the
    user's data; only taken ones keep the active-set derivative."""
    x, nu, lam, s = unpacked
    point = polish(xp, data.P, data.q, data.A, data.b, data.G, data.h, x, nu, lam, s,
                   converged, judge_tol, dual=whole if whole.name == "dual" else None)
    record = point[4]
    if record is None:
        return None
    x_p, nu_p, lam_p, s_p = scaling.unscale(*point[:4])
    better, _ = judge(xp, original, x_p, nu_p, lam_p, s_p, judge_tol, NEAR_FACTOR)
    take = better & record.accepted
    record.exact = record.exact & take
    return (x_p, nu_p, lam_p, s_p), take, record


def _merge_polish(xp, first, later, redo):
    """The first polish, with the elements ``redo`` taken from the ``later`` one (a polish
    of them after more iterations; None if it polished none of them)."""
    if first is None:
        return later
    values, take, record = first
    take = take & ~redo
    record.exact = record.exact & ~redo
    if later is None:
        return values, take, record
    later_values, later_take, later_record = later
    values = tuple(xp.where(redo[:, None], b, a) for a, b in zip(values, later_values))
    return values, xp.where(redo, later_take, take), record.merged(later_record, redo)


class _FactorAtSolution:
    """The dual reduction's factorization at the solution (see solve_qp), made when the
    adjoint first needs it: elements the polish made exact take the active-set adjoint,
    and a batch of only those never does (one batched factorization saved)."""

    def __init__(self, form, point):
        self.form, self.point, self.kkt = form, point, None
        self._lock = threading.Lock()  # factoring writes H's diagonal in place (qp_dual)

    def adjoint_solve(self, *args):
        with self._lock:
            if self.kkt is None:
                self.kkt = self.form.factor(self.point, scratch=False)
        return self.kkt.adjoint_solve(*args)


def _solve_small(xp, P, q, A, b, G, h, tol, max_iter):
    """:mod:`~cvxlayers.backends.qp_small`'s compiled path: the QPSolution when every
    element vouches for itself (converged, polished with a clear active set, accurate on the
    user's data), else None."""
    judge_tol = PrimalForm.default_tol if tol is None else tol
    result = qp_small.solve(P, q, A, b, G, h, tol=tol, judge_tol=judge_tol, max_iter=max_iter)
    if result is None:
        return None
    x, nu, lam, s, steps, polished = result
    return QPSolution(x, nu, lam, s, [st.OPTIMAL] * q.shape[0], int(steps.max(initial=0)),
                      None, "small", int(steps.sum()), steps, None, polished)


#: How far into the interior a warm start pushes the previous λ and s. Measured (B = 64
#: random QPs, n = 30, m = 60, q moved by 1e-3 to 1e-1 of its scale): 1e-1 to 1e-4 all
#: save iterations, 1e-3 about as many as any; see benchmarks/README.md for the figures.
WARM_MARGIN = 1e-3


def _warm_point(xp, form, cold, start):
    """The iterate to start from: the previous (x, ν, λ, s), λ and s shifted inward, for the
    elements marked valid; the cold start for the others."""
    x, nu, lam, s, valid = start
    warm = form.point_from(x, nu, xp.clip(lam, min=0.0) + WARM_MARGIN,
                           xp.clip(s, min=0.0) + WARM_MARGIN)
    keep = valid[:, None] > 0  # a bool or 0/1 mask, NumPy's or PyTorch's
    return tuple(xp.where(keep, w, c) for w, c in zip(warm, cold))


def adjoint_directions(solution: QPSolution, P, A, G, g_x, g_nu, g_lam,
                       refinements: int = 10):
    """w = J⁻ᵀ g for gradients g = (g_x, g_ν, g_λ) of (x, ν, λ): returns (w_x, w_ν, λ∘w_λ),
    from which every data gradient is an outer product (module docstring).

    w is solved with the kept factorization (``adjoint_solve`` of either reduction), then
    refined against the full system Jᵀw = g until the residual is at rounding level, at
    most ``refinements`` times. The dual reduction's factorization is at the solution and
    needs none. The primal reduction's is at the last iterate, and its solves divide
    cancelling differences by s; each refinement step removes a fixed share of the error
    (about 60 % on the n = m = 128 benchmark, where three steps left 7e-4 relative error in
    ∇q and ten leave 1e-6), at the cost of one more solve with the same factors.
    """
    xp = namespace(g_x)
    polished = solution.polish
    lam, s = solution.lam, solution.s
    kkt = solution.factors
    scaling = solution.scaling
    if scaling is not None:  # the factors are in scaled coordinates: solve J̃ᵀw̃ = M_R g there
        P, A, G, lam, s = scaling.P, scaling.A, scaling.G, scaling.lam, scaling.s
        g_x, g_nu, g_lam = scaling.adjoint_rhs(g_x, g_nu, g_lam)
    # Polished elements with a clear active set take the exact active-set adjoint (their
    # polish ran in the same coordinates, qp_polish); the rest the interior point's, at its
    # own (λ, s), which the scaling keeps.
    pending = None if polished is None else ~polished.exact
    exact = None if polished is None else polished.adjoint_solve(P, A, G, g_x, g_nu, g_lam)
    if pending is not None and not bool(xp.any(pending)):
        return exact if scaling is None else scaling.adjoint_result(*exact)
    g = (g_x, g_nu, g_lam)
    g_size = max_inf_norm(xp, g)

    def apply_transpose(w_x, w_nu, w_lam):  # Jᵀ w with J = [[P, Aᵀ, Gᵀ], [A, 0, 0], [ΛG, 0, −S]]
        return (mv(P, w_x) + mv(mT(A), w_nu) + mv(mT(G), lam * w_lam),
                mv(A, w_x), mv(G, w_x) - s * w_lam)

    w = kkt.adjoint_solve(G, *g)
    for _ in range(refinements):
        residual = [gi - ri for gi, ri in zip(g, apply_transpose(*w))]
        size = max_inf_norm(xp, residual)
        unrefined = size > _ADJOINT_RESIDUAL * g_size
        if pending is not None:
            unrefined = unrefined & pending
        if not bool(xp.any(unrefined)):
            break
        w = tuple(wi + ci for wi, ci in zip(w, kkt.adjoint_solve(G, *residual)))
    w_x, w_nu, w_lam = w
    w = (w_x, w_nu, lam * w_lam)
    if exact is not None:
        w = tuple(xp.where(pending[:, None], wi, ei) for wi, ei in zip(w, exact))
    if scaling is not None:  # w = M_L w̃ (qp_scaling)
        w = scaling.adjoint_result(*w)
    return w


def qp_adjoint(solution: QPSolution, P, A, G, g_x, g_nu, g_lam, needed=None):
    """Gradients of (P, q, A, b, G, h) from gradients of (x, ν, λ), as dense arrays; see
    :func:`adjoint_directions` and the module docstring.

    ``needed`` names the gradients to form (a subset of "P", "q", "A", "b", "G", "h"; None
    for all); the others are returned as None, which saves their outer products.

    Returns:
        ``(dP, dq, dA, db, dG, dh)`` shaped like the data.
    """
    w_x, w_nu, lam_w = adjoint_directions(solution, P, A, G, g_x, g_nu, g_lam)
    x, nu, lam = solution.x, solution.nu, solution.lam
    needed = set("PqAbGh") if needed is None else set(needed)
    outer = lambda u, v: u[..., :, None] * v[..., None, :]  # noqa: E731
    return (-0.5 * (outer(w_x, x) + outer(x, w_x)) if "P" in needed else None,  # symmetric
            -w_x,
            -(outer(nu, w_x) + outer(w_nu, x)) if "A" in needed else None,
            w_nu,
            -(outer(lam, w_x) + outer(lam_w, x)) if "G" in needed else None,
            lam_w)
