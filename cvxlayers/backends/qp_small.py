"""A compiled per-element path for small dense QPs, where Python's per-operation cost decides.

For every batch element it solves the QP of :mod:`~cvxlayers.backends.qp_solver`,

    minimize  ½ xᵀPx + qᵀx   subject to  Ax = b,  Gx + s = h,  s ≥ 0,

with the same Mehrotra predictor-corrector method and the primal reduction

    ⎡ P + GᵀWG   Aᵀ ⎤ ⎡ dx ⎤   ⎡ −r_d − Gᵀt ⎤
    ⎣     A      0  ⎦ ⎣ dν ⎦ = ⎣    −r_e    ⎦,   t = W r_i + r_c ⊘ s,  W = Λ S⁻¹,
    dλ = W G dx + t,   ds = (r_c − S dλ) ⊘ λ,

(r_d = Px + q + Aᵀν + Gᵀλ, r_e = Ax − b, r_i = Gx + s − h; r_c = −s∘λ for the predictor,
σμ − s∘λ − ds_a∘dλ_a for the corrector, σ = (μ_aff/μ)³), then polishes the solution on its
active set d = [λ > s] as :mod:`~cvxlayers.backends.qp_polish` does, factoring

    K = [[P, Aᵀ, G_dᵀ], [A, 0, 0], [G_d, 0, −(I − D)]],

whose LU factors the backward pass reuses: K (w_x, w_ν, v) = (g_x, g_ν, d∘g_λ) gives the
exact active-set adjoint directions (w_x, w_ν, λ∘w_λ) = (w_x, w_ν, v).

**Why.** For n = m = 10 a call of the general solver is a few thousand NumPy calls (the
equilibration, the reductions' bookkeeping, batch shrinking, certificate tests, the polish):
1–3 ms, where compiled solvers take under 1 ms. Here each element is a loop compiled with
Numba (dense LU with partial pivoting, no BLAS calls): tens of microseconds.

**Threads.** The kernels release the GIL, so a large batch is split into contiguous parts
solved on threads of their own (:func:`_parts`): as many as PyTorch would use, and only
where each part has about 0.5 ms of work.

**A first attempt only.** It skips the equilibration and the infeasibility certificates, and
polishes with the interior point's active-set guess alone. An element *vouches* for itself
when it converged, its polished point is feasible and accurate on the user's data (the
criterion of :meth:`~cvxlayers.backends.qp_data.QPData.meets` at the judge's tolerance,
gap zero by construction) and every constraint's margin max(λᵢ, sᵢ) exceeds 10⁻⁷ of the
data's scale (a clear active set, so that the exact gradient is the right one). When any
element does not (an infeasible or unbounded element, bad scaling, a degenerate vertex, a
singular K), :func:`~cvxlayers.backends.qp_solver.solve_qp` solves the batch with the
general method, so statuses, certificates and the smooth derivative at degenerate points
are the general method's. Without Numba (an optional dependency, the ``fast`` extra) the
general method runs always.
"""

from __future__ import annotations

import os
import sys
import threading

import numpy as np

try:
    import numba
except ImportError:  # the general method serves everything
    numba = None

#: The largest KKT system (n + p + m rows) the compiled path is tried on.
MAX_ROWS = 64
#: The interior point's tolerance when none is given: the polish makes the solution exact,
#: it needs only the right active set.
DEFAULT_TOL = 1e-9
_DEGENERATE = 1e-7  # qp_polish's margin for a clear active set
_DIVERGED = 1e10


#: The compiled path's work bound, batch·N³ for N = n + p + m KKT rows (B = 512 at
#: N = 20): it loops over the batch on one core, where the general method's batched kernels
#: win for large batches of larger systems.
MAX_WORK = 512 * 20 ** 3
#: Set CVXLAYERS_NUMBA=0 to never use the compiled path.
ENABLED = os.environ.get("CVXLAYERS_NUMBA", "1") != "0"

_state = {"ready": False, "thread": None}
_lock = threading.Lock()


def available() -> bool:
    return numba is not None and ENABLED


def prepare(wait: bool = True) -> bool:
    """Compiles the kernels (or loads them from Numba's on-disk cache) by solving a tiny QP;
    with ``wait=False`` in a background thread, returning at once. Returns whether the
    compiled path is ready. :func:`applies` calls this with ``wait=False`` the first time,
    so that no solve waits for the compiler (tens of seconds on a busy machine, about a
    second from the cache): calls made before it finishes use the general method."""
    if not available():
        return False
    with _lock:
        if _state["ready"]:
            return True
        thread = _state["thread"]
        if thread is None:
            thread = _state["thread"] = threading.Thread(target=_warm_up, daemon=True,
                                                         name="cvxlayers-qp-small-compile")
            thread.start()
    if wait:
        thread.join()
    return _state["ready"]


def _warm_up():
    P, q = np.eye(2)[None], np.ones((1, 2))
    A, b = np.zeros((1, 0, 2)), np.zeros((1, 0))
    G, h = -np.eye(2)[None], np.zeros((1, 2))
    solution = solve(P, q, A, b, G, h)
    if solution is not None:
        solution[-1].adjoint_solve(P, A, G, q, b, h)
    _state["ready"] = True


def applies(P, q, A, G, start, polish_solution, kkt_form) -> bool:
    """Whether the compiled path is tried: Numba present and its kernels compiled (see
    :func:`prepare`), NumPy float64 arrays, no warm start, the polish on, the default
    reduction choice, inequalities, and a small system and batch."""
    if start is not None or not polish_solution or kkt_form != "auto" or not available():
        return False
    if not all(type(M) is np.ndarray and M.dtype == np.float64 for M in (P, q, A, G)):
        return False
    n, p, m = q.shape[-1], A.shape[-2], G.shape[-2]
    rows = n + p + m
    if not (m > 0 and rows <= MAX_ROWS and q.shape[0] * rows ** 3 <= MAX_WORK):
        return False
    return _state["ready"] or prepare(wait=False)


class SmallPolish:
    """The polish record :func:`~cvxlayers.backends.qp_solver.adjoint_directions` reads:
    every element exact, with its K and LU factors kept for the backward pass."""

    def __init__(self, active, K, LU, piv):
        batch = active.shape[0]
        self.active, self.K, self.LU, self.piv = active, K, LU, piv
        self.accepted = self.exact = np.ones(batch, dtype=bool)

    def adjoint_solve(self, P, A, G, g_x, g_nu, g_lam):
        """(w_x, w_ν, λ∘w_λ) from K (w_x, w_ν, v) = (g_x, g_ν, d∘g_λ) (module docstring)."""
        n, p = g_x.shape[-1], g_nu.shape[-1]
        rhs = np.concatenate([g_x, g_nu, np.where(self.active, g_lam, 0.0)], axis=-1)
        u = _adjoint(self.K, self.LU, self.piv, np.ascontiguousarray(rhs))
        return u[:, :n], u[:, n:n + p], u[:, n + p:]


def solve(P, q, A, b, G, h, tol=None, judge_tol=1e-9, max_iter=50):
    """Runs the compiled path on NumPy arrays shaped as ``solve_qp`` takes them (a matrix
    2-D when shared). Returns ``(x, ν, λ, s, steps, SmallPolish)`` when every element
    vouches for itself (module docstring), else None."""
    batch, n = q.shape
    p, m = A.shape[-2], G.shape[-2]

    def full(M, shape):
        if M.shape == shape and M.dtype == np.float64 and M.flags.c_contiguous:
            return M  # already what the kernels take: no broadcast view to copy
        return np.ascontiguousarray(np.broadcast_to(M, shape), dtype=np.float64)

    P, A, G = full(P, (batch, n, n)), full(A, (batch, p, n)), full(G, (batch, m, n))
    q, b, h = full(q, (batch, n)), full(b, (batch, p)), full(h, (batch, m))
    N = n + p + m
    x, nu = np.empty((batch, n)), np.empty((batch, p))
    lam, s = np.empty((batch, m)), np.empty((batch, m))
    steps = np.zeros(batch, dtype=np.int64)
    K, LU = np.empty((batch, N, N)), np.empty((batch, N, N))
    piv = np.empty((batch, N), dtype=np.int64)
    active = np.empty((batch, m), dtype=np.bool_)
    arrays = (P, q, A, b, G, h)
    outputs = (x, nu, lam, s, steps, K, LU, piv, active)
    settings = (DEFAULT_TOL if tol is None else tol, judge_tol, max_iter)

    def run(part):  # the kernels release the GIL: parts run on their own cores
        return _solve_batch(*(a[part] for a in arrays), *settings, *(o[part] for o in outputs))

    parts = _parts(batch, batch * N ** 3)
    if len(parts) == 1:
        ok = run(parts[0])
    else:
        results = [None] * len(parts)

        def work(i):
            results[i] = run(parts[i])

        threads = [threading.Thread(target=work, args=(i,), daemon=True)
                   for i in range(1, len(parts))]
        for thread in threads:
            thread.start()
        work(0)
        for thread in threads:
            thread.join()
        ok = all(results)
    if not ok:
        return None
    return x, nu, lam, s, steps, SmallPolish(active, K, LU, piv)


#: The work (batch·N³) worth a thread of its own: about 0.5 ms of the kernels' time (an
#: n = m = 10 element, N = 20, takes about 20 µs), against 0.1–0.2 ms to start and join
#: one. Measured on 2 cores: B = 256 of them 4.8 → 2.7 ms, B = 64 1.2 → 0.7 ms.
_WORK_PER_THREAD = 200_000


def _parts(batch: int, work: int) -> list:
    """The batch split into contiguous slices, one per thread: as many threads as PyTorch
    would use (its thread count where it is imported, which DataLoader workers set to
    one; else the usable cores), and no more than the work pays for. The threads are
    started and joined within each call, so that none is left running at a fork; not
    :func:`.pool.map_batch`'s shared pool, which a call made from one of its own workers
    (a custom solver's element) would wait on forever."""
    threads = min(_thread_budget(), work // _WORK_PER_THREAD, batch)
    if threads <= 1:
        return [slice(0, batch)]
    bounds = np.linspace(0, batch, threads + 1).astype(int)
    return [slice(int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:])]


def _thread_budget() -> int:
    from cvxlayers.backends.pool import default_jobs

    torch = sys.modules.get("torch")  # never imported here: only read where it is
    if torch is not None and hasattr(torch, "get_num_threads"):
        return int(torch.get_num_threads())
    return default_jobs()


# --- the compiled kernels (plain Python when Numba is absent: never called then) ---------

def _jit(f):
    return numba.njit(cache=True, nogil=True, error_model="numpy")(f) if numba is not None else f


@_jit
def _lu(M, piv):
    """LU with partial pivoting of M in place (L unit lower, U upper, rows swapped as
    recorded in piv); False when a pivot is zero."""
    N = M.shape[0]
    for k in range(N):
        r, big = k, abs(M[k, k])
        for i in range(k + 1, N):
            if abs(M[i, k]) > big:
                r, big = i, abs(M[i, k])
        piv[k] = r
        if big == 0.0:
            return False
        if r != k:
            for j in range(N):
                M[k, j], M[r, j] = M[r, j], M[k, j]
        inv = 1.0 / M[k, k]
        for i in range(k + 1, N):
            f = M[i, k] * inv
            M[i, k] = f
            if f != 0.0:
                for j in range(k + 1, N):
                    M[i, j] -= f * M[k, j]
    return True


@_jit
def _lu_solve(M, piv, r):
    """Solves with :func:`_lu`'s factors, in place on r."""
    N = M.shape[0]
    for k in range(N):
        j = piv[k]
        if j != k:
            r[k], r[j] = r[j], r[k]
    for i in range(N):
        acc = r[i]
        for j in range(i):
            acc -= M[i, j] * r[j]
        r[i] = acc
    for i in range(N - 1, -1, -1):
        acc = r[i]
        for j in range(i + 1, N):
            acc -= M[i, j] * r[j]
        r[i] = acc / M[i, i]


@_jit
def _refined_solve(K, LU, piv, rhs, u, work):
    """u = K⁻¹ rhs with the factors of K, and one refinement step against K itself."""
    N = K.shape[0]
    u[:] = rhs
    _lu_solve(LU, piv, u)
    for i in range(N):
        acc = rhs[i]
        for j in range(N):
            acc -= K[i, j] * u[j]
        work[i] = acc
    _lu_solve(LU, piv, work)
    for i in range(N):
        u[i] += work[i]


@_jit
def _adjoint(K, LU, piv, rhs):
    batch, N = rhs.shape
    out = np.empty_like(rhs)
    work = np.empty(N)
    for e in range(batch):
        _refined_solve(K[e], LU[e], piv[e], rhs[e], out[e], work)
    return out


@_jit
def _max_step(v, dv):
    alpha = 1.0
    for i in range(v.shape[0]):
        if dv[i] < 0.0:
            a = -v[i] / dv[i]
            if a < alpha:
                alpha = a
    return alpha


@_jit
def _newton(P, A, G, R, piv, r_d, r_e, r_i, w, s, lam, r_c, dx, dnu, dlam, ds, t, rhs):
    """One Newton direction with the factored reduced matrix R (module docstring)."""
    n, p, m = P.shape[0], A.shape[0], G.shape[0]
    for i in range(m):
        t[i] = w[i] * r_i[i] + r_c[i] / s[i]
    for j in range(n):
        acc = -r_d[j]
        for i in range(m):
            acc -= G[i, j] * t[i]
        rhs[j] = acc
    for i in range(p):
        rhs[n + i] = -r_e[i]
    _lu_solve(R, piv, rhs)
    for j in range(n):
        dx[j] = rhs[j]
    for i in range(p):
        dnu[i] = rhs[n + i]
    for i in range(m):
        acc = 0.0
        for j in range(n):
            acc += G[i, j] * dx[j]
        dlam[i] = w[i] * acc + t[i]
        ds[i] = (r_c[i] - s[i] * dlam[i]) / lam[i]


@_jit
def _factor(P, A, G, w, R, piv):
    """R = [[P + Gᵀ diag(w) G, Aᵀ], [A, 0]], factored in place; False if singular."""
    n, p, m = P.shape[0], A.shape[0], G.shape[0]
    R[:, :] = 0.0
    for j in range(n):
        for k in range(n):
            acc = P[j, k]
            for i in range(m):
                acc += G[i, j] * w[i] * G[i, k]
            R[j, k] = acc
    for i in range(p):
        for j in range(n):
            R[n + i, j] = A[i, j]
            R[j, n + i] = A[i, j]
    return _lu(R, piv)


@_jit
def _inf(v):
    out = 0.0
    for i in range(v.shape[0]):
        a = abs(v[i])
        if not a <= out:  # NaN propagates
            out = a
    return out


@_jit
def _residuals(P, q, A, b, G, h, x, nu, lam, s, r_d, r_e, r_i, Px):
    n, p, m = P.shape[0], A.shape[0], G.shape[0]
    for j in range(n):
        acc = 0.0
        for k in range(n):
            acc += P[j, k] * x[k]
        Px[j] = acc
        acc += q[j]
        for i in range(p):
            acc += A[i, j] * nu[i]
        for i in range(m):
            acc += G[i, j] * lam[i]
        r_d[j] = acc
    for i in range(p):
        acc = -b[i]
        for j in range(n):
            acc += A[i, j] * x[j]
        r_e[i] = acc
    for i in range(m):
        acc = s[i] - h[i]
        for j in range(n):
            acc += G[i, j] * x[j]
        r_i[i] = acc


@_jit
def _ipm(P, q, A, b, G, h, tol, max_iter, x, nu, lam, s):
    """The interior point for one element; returns (converged, Newton steps)."""
    n, p, m = P.shape[0], A.shape[0], G.shape[0]
    norm_q = 1.0 + _inf(q)
    norm_bh = 1.0 + max(_inf(b), _inf(h))
    limit = _DIVERGED * max(norm_q, norm_bh)
    R, piv = np.empty((n + p, n + p)), np.empty(n + p, dtype=np.int64)
    r_d, r_e, r_i, Px = np.empty(n), np.empty(p), np.empty(m), np.empty(n)
    w, t, r_c = np.ones(m), np.empty(m), np.zeros(m)
    dx, dnu, dlam, ds = np.empty(n), np.empty(p), np.empty(m), np.empty(m)
    rhs = np.empty(n + p)
    # Start (CVXOPT's): the Newton step from 0 with W = I, s = λ = 1 and r_c = 0 solves
    # [[P, Aᵀ, Gᵀ], [A, 0, 0], [G, 0, −I]] (x, ν, λ) = (−q, b, h); s = h − Gx; then the
    # slacks and multipliers are shifted into the interior.
    s[:] = 1.0
    lam[:] = 1.0
    if not _factor(P, A, G, w, R, piv):
        return False, 0
    for i in range(m):
        r_i[i] = -h[i]
    for i in range(p):
        r_e[i] = -b[i]
    _newton(P, A, G, R, piv, q, r_e, r_i, w, s, lam, r_c, x, nu, lam, ds, t, rhs)
    for i in range(m):
        acc = h[i]
        for j in range(n):
            acc -= G[i, j] * x[j]
        s[i] = acc
    for v in (s, lam):
        shift = -v.min()
        if shift >= 0.0:
            v += 1.0 + shift
    for it in range(max_iter + 1):
        _residuals(P, q, A, b, G, h, x, nu, lam, s, r_d, r_e, r_i, Px)
        gap = 0.0
        objective = 0.0
        for i in range(m):
            gap += s[i] * lam[i]
        for j in range(n):
            objective += x[j] * (0.5 * Px[j] + q[j])
        if (_inf(r_d) <= tol * norm_q and max(_inf(r_e), _inf(r_i)) <= tol * norm_bh
                and gap <= tol * max(1.0, 0.01 * abs(objective))):
            return True, it
        if it == max_iter:
            break
        for i in range(m):
            w[i] = lam[i] / s[i]
        if not _factor(P, A, G, w, R, piv):
            return False, it
        for i in range(m):
            r_c[i] = -s[i] * lam[i]
        _newton(P, A, G, R, piv, r_d, r_e, r_i, w, s, lam, r_c, dx, dnu, dlam, ds, t, rhs)
        alpha = min(_max_step(s, ds), _max_step(lam, dlam))
        mu = gap / m
        mu_aff = 0.0
        for i in range(m):
            mu_aff += (s[i] + alpha * ds[i]) * (lam[i] + alpha * dlam[i])
        mu_aff /= m
        sigma = (mu_aff / mu) ** 3 if mu > 0.0 else 0.0
        for i in range(m):
            r_c[i] = sigma * mu - s[i] * lam[i] - ds[i] * dlam[i]
        _newton(P, A, G, R, piv, r_d, r_e, r_i, w, s, lam, r_c, dx, dnu, dlam, ds, t, rhs)
        alpha = min(1.0, 0.99 * min(_max_step(s, ds), _max_step(lam, dlam)))
        x += alpha * dx
        nu += alpha * dnu
        lam += alpha * dlam
        s += alpha * ds
        if not (_inf(x) < limit and _inf(lam) < limit and _inf(nu) < limit):
            return False, it + 1
    return False, max_iter


@_jit
def _polish(P, q, A, b, G, h, tol, x, nu, lam, s, K, LU, piv, active):
    """The active-set polish of one converged element (module docstring), in place; True
    when the polished point vouches for itself."""
    n, p, m = P.shape[0], A.shape[0], G.shape[0]
    N = n + p + m
    norm_q = 1.0 + _inf(q)
    norm_bh = 1.0 + max(_inf(b), _inf(h))
    K[:, :] = 0.0
    K[:n, :n] = P
    for i in range(p):
        for j in range(n):
            K[n + i, j] = A[i, j]
            K[j, n + i] = A[i, j]
    rhs = np.zeros(N)
    for j in range(n):
        rhs[j] = -q[j]
    for i in range(p):
        rhs[n + i] = b[i]
    for i in range(m):
        active[i] = lam[i] > s[i]
        if active[i]:
            for j in range(n):
                K[n + p + i, j] = G[i, j]
                K[j, n + p + i] = G[i, j]
            rhs[n + p + i] = h[i]
        else:
            K[n + p + i, n + p + i] = -1.0
    LU[:, :] = K
    if not _lu(LU, piv):
        return False
    u, work = np.empty(N), np.empty(N)
    _refined_solve(K, LU, piv, rhs, u, work)
    x[:] = u[:n]
    nu[:] = u[n:n + p]
    margin = np.inf
    for i in range(m):
        if active[i]:
            lam[i], s[i] = u[n + p + i], 0.0
            if lam[i] < -tol * norm_q:
                return False
            lam[i] = max(lam[i], 0.0)
        else:
            acc = h[i]
            for j in range(n):
                acc -= G[i, j] * x[j]
            lam[i], s[i] = 0.0, acc
            if s[i] < -tol * norm_bh:
                return False
            s[i] = max(s[i], 0.0)
        margin = min(margin, max(lam[i] / norm_q, s[i] / norm_bh))
    if not margin > _DEGENERATE:
        return False
    # Accurate on the user's data (QPData.meets, gap 0 by construction).
    r_d, r_e, r_i, Px = np.empty(n), np.empty(p), np.empty(m), np.empty(n)
    _residuals(P, q, A, b, G, h, x, nu, lam, s, r_d, r_e, r_i, Px)
    terms_d = max(_inf(Px), _inf(r_d - Px - q))  # ‖Px‖ and ‖Aᵀν + Gᵀλ‖
    terms_p = max(_inf(r_e + b), _inf(r_i + h - s), _inf(s))
    return (_inf(r_d) <= tol * max(norm_q, 1.0 + terms_d)
            and max(_inf(r_e), _inf(r_i)) <= tol * max(norm_bh, 1.0 + terms_p))


@_jit
def _solve_batch(P, q, A, b, G, h, tol, judge_tol, max_iter, x, nu, lam, s, steps, K, LU,
                 piv, active):
    for e in range(q.shape[0]):
        converged, taken = _ipm(P[e], q[e], A[e], b[e], G[e], h[e], tol, max_iter, x[e],
                                nu[e], lam[e], s[e])
        steps[e] = taken
        if not converged:
            return False
        if not _polish(P[e], q[e], A[e], b[e], G[e], h[e], judge_tol, x[e], nu[e], lam[e],
                       s[e], K[e], LU[e], piv[e], active[e]):
            return False
    return True
