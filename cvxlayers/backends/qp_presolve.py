"""The QP backend's presolve: substitute out the variables that equalities define.

CVXPY canonicalizes ``sum_squares(F @ x + f)`` (and ``quad_over_lin``, ``norm2`` squared, a
variable fixed to a parameter by ``v == θ``, ...) with *auxiliary variables*: t = Fx + f
becomes a new variable and an equality row, and the objective ½tᵀt. The QP then has
n + k variables and k more equalities, P is singular (zero on x), and the interior point
factors a (n + 2k)-row matrix where the problem the user wrote has n. The presolve undoes
this, exactly, for every element of the batch.

**One round.** Write the variables z = (x, t) and the equality rows as
``E_x x + E_t t = b_e`` (the pivot rows, one per eliminated variable) and ``A_x x + A_t t = b_a``
(the kept ones), the inequalities ``G_x x + G_t t ≤ h``. The pivots are chosen on the
problem's structure, once, so that E_t = diag(e) is diagonal with constant entries (the
same for every parameter value); E_x may depend on the parameters. Then

    t = F x + g,   F = −diag(e)⁻¹ E_x,   g = diag(e)⁻¹ b_e,   i.e.  z = T x + c₀,
    T = [I; F],  c₀ = [0; g],

and the reduced QP in x has

    P_r = Tᵀ P T = P_xx + P_xt F + Fᵀ P_tx + Fᵀ P_tt F,    q_r = q_x + P_xt g + Fᵀ(q_t + P_tt g),
    A_r = A_x + A_t F,  b_r = b_a − A_t g,     G_r = G_x + G_t F,  h_r = h − G_t g.

**Recovery.** z = T x + c₀; the kept duals ν_a and λ (and the slacks) are the reduced
problem's; the eliminated rows' duals follow from the t-rows of stationarity
P z + q + Aᵀν + Gᵀλ = 0:

    ν_e = −diag(e)⁻¹ r_t,   r_t = (P z + q)_t + A_tᵀ ν_a + G_tᵀ λ.

(The x-rows hold because Tᵀ[E_x E_t]ᵀ = E_xᵀ + Fᵀ diag(e) = 0: the reduced problem's
stationarity is Tᵀ times the full one.)

**Adjoint.** The backward pass needs w = J⁻ᵀ g for the *full* KKT matrix J, at the full
solution (the data gradients are outer products of w and the solution). Jᵀw = g reads

    P w_z + Aᵀ w_ν + GᵀΛ w_λ = g_z,   A w_z = g_ν,   G w_z − S w_λ = g_λ.

Its pivot rows give w_t = F w_x + o with o = diag(e)⁻¹ g_νe; Tᵀ times the first block
drops w_νe (as above), so (w_x, w_νa, w_λ) solve the *reduced* problem's Jᵀ system with

    g_x' = Tᵀ(g_z − P c_o),  c_o = [0; o],    g_νa' = g_νa − A_t o,    g_λ' = g_λ − G_t o,

and the t-rows then give w_νe = diag(e)⁻¹ (g_t − (P w_z)_t − A_tᵀ w_νa − G_tᵀ(Λ w_λ)). So the
presolved solve's factorization serves the full problem's adjoint, exactly: nothing in the
parameter map changes, and the gradients are the full problem's to rounding.

**Rounds.** A pivot row must not hold another eliminated variable (E_t diagonal), so a
chain — ``v == θ`` and then t = z − v x — takes two rounds; each round is planned on the
structure the previous one leaves, and the rounds compose (forward in order, recovery and
the adjoint's push in reverse).

**Choice of pivots.** Any constant, nonzero coefficient of an equality row is a valid pivot;
the presolve takes the shortest rows first (a variable fixed by ``v == θ`` is substituted by
a constant, with no fill), then the variables that occur least in the other rows (auxiliary
variables occur in one), so that eliminating them fills the least and keeps the user's
variables. In cvxpylayers' ReLU-layers example (t = z − W̃x − b, W̃ == W, 20 × 20) taking t
first made P dense on z and W̃ (420 × 420 per element, 88 ms a call at B = 64) before W̃ went
in a second round; W̃ first leaves P = 2I on z.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from cvxlayers.backends.qp_arrays import diagonal, is_numpy_array, mT, mv, namespace

#: At most this many rounds (a chain of definitions deeper than this is left as it is).
_MAX_ROUNDS = 4
#: A pivot's coefficient must be at least this, relative to the largest constant entry.
_PIVOT_RELATIVE = 1e-8


@dataclass(frozen=True)
class _Structure:
    """The sparsity and constancy of a QP's matrices: patterns of A (equalities), G, P;
    which entries of A and G depend on the parameters; the constant values of A."""

    a_pattern: sp.csr_matrix
    a_variable: sp.csr_matrix
    a_values: sp.csr_matrix
    g_pattern: sp.csr_matrix
    g_variable: sp.csr_matrix
    p_pattern: sp.csr_matrix
    p_variable: bool

    @classmethod
    def from_layout(cls, layout) -> _Structure:
        rows, cols = layout.entries("A")
        n_eq, m, n = layout.cone_dict.get("z", 0), layout.m, layout.n
        constant = layout.a_constant
        if constant is None:  # unknown: treat every entry as parametrized
            constant = np.full(rows.size, np.nan)
        variable = np.isnan(constant)
        eq = rows < n_eq

        def matrix(values, mask, shape, row_offset):
            return sp.csr_matrix((values[mask], (rows[mask] - row_offset, cols[mask])),
                                 shape=shape)
        ones = np.ones(rows.size)
        p_rows, p_cols = layout.entries("P") if layout.p_indices is not None else (
            np.zeros(0, int), np.zeros(0, int))
        return cls(a_pattern=matrix(ones, eq, (n_eq, n), 0),
                   a_variable=matrix(ones, eq & variable, (n_eq, n), 0),
                   a_values=matrix(np.nan_to_num(constant), eq & ~variable, (n_eq, n), 0),
                   g_pattern=matrix(ones, ~eq, (m - n_eq, n), n_eq),
                   g_variable=matrix(ones, ~eq & variable, (m - n_eq, n), n_eq),
                   p_pattern=sp.csr_matrix((np.ones(p_rows.size), (p_rows, p_cols)),
                                           shape=(n, n)),
                   p_variable=bool(layout.p_parametrized))


def _binary(M) -> sp.csr_matrix:
    M = sp.csr_matrix(M)
    M.data = (M.data != 0).astype(float)
    M.eliminate_zeros()
    return M


def _choose_pivots(structure: _Structure):
    """Greedy pivots (row, column, coefficient) such that each pivot row holds no other
    pivot column and each pivot column no other pivot row (E_t diagonal), least-occurring
    columns first."""
    constant = structure.a_pattern - structure.a_variable
    constant = _binary(constant).multiply(structure.a_values).tocoo()
    if constant.nnz == 0:
        return [], [], []
    largest = np.max(np.abs(constant.data))
    ok = np.abs(constant.data) > _PIVOT_RELATIVE * largest
    r, c, v = constant.row[ok], constant.col[ok], constant.data[ok]
    occurrences = (np.asarray(structure.a_pattern.sum(axis=0)).ravel()
                   + np.asarray(structure.g_pattern.sum(axis=0)).ravel())
    p_off = np.asarray(structure.p_pattern.sum(axis=0)).ravel() - structure.p_pattern.diagonal()
    row_length = np.asarray(structure.a_pattern.sum(axis=1)).ravel()
    # Shortest rows first: a row of length ℓ makes F a row of ℓ − 1 entries, and Fᵀ P_tt F
    # a block of (ℓ − 1)²; a definition by constants alone (v == θ, ℓ = 1) fills nothing.
    # Then the least-occurring columns (auxiliary variables occur once).
    order = np.lexsort((r, p_off[c], occurrences[c], row_length[r]))
    a_csr, a_csc = structure.a_pattern.tocsr(), structure.a_pattern.tocsc()
    blocked_rows, blocked_cols = set(), set()   # rows holding a pivot column; columns of pivot rows
    rows, cols, values = [], [], []
    for k in order:
        row, col = int(r[k]), int(c[k])
        if row in blocked_rows or col in blocked_cols:
            continue
        rows.append(row)
        cols.append(col)
        values.append(float(v[k]))
        blocked_cols.update(a_csr.indices[a_csr.indptr[row]:a_csr.indptr[row + 1]].tolist())
        blocked_rows.update(a_csc.indices[a_csc.indptr[col]:a_csc.indptr[col + 1]].tolist())
    return rows, cols, values


def _has(M) -> bool:
    return M.nnz > 0


@dataclass(frozen=True)
class Round:
    """One round of substitution, planned on the structure: pivot rows (of the equalities),
    the variables they define, their constant coefficients e, the kept rows and columns,
    and which blocks are structurally nonzero or the same in every element."""

    pivot_rows: np.ndarray
    pivot_cols: np.ndarray
    pivot_values: np.ndarray
    kept_rows: np.ndarray
    kept_cols: np.ndarray
    f_shared: bool      # E_x constant: F is the same for every element
    a_t: bool           # A_t ≠ 0 (kept equalities hold eliminated variables)
    a_t_shared: bool
    g_t: bool           # G_t ≠ 0
    g_t_shared: bool
    p_xt: bool          # P_xt ≠ 0
    p_tt: bool          # P_tt ≠ 0
    p_tt_diagonal: bool

    @classmethod
    def plan(cls, structure: _Structure) -> tuple[Round, _Structure] | None:
        """The round's pivots and the structure it leaves, or None without pivots."""
        rows, cols, values = _choose_pivots(structure)
        if not rows:
            return None
        n_eq, n = structure.a_pattern.shape
        pr, pc = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
        ka = np.setdiff1d(np.arange(n_eq), pr)
        kc = np.setdiff1d(np.arange(n), pc)
        e = np.asarray(values)
        s = structure
        a_p, a_v, a_val = (M.tocsr() for M in (s.a_pattern, s.a_variable, s.a_values))
        g_p, g_v, p_p = s.g_pattern.tocsc(), s.g_variable.tocsc(), s.p_pattern.tocsr()
        f_pat, f_var = a_p[pr][:, kc], a_v[pr][:, kc]
        f_val = sp.diags(-1.0 / e) @ a_val[pr][:, kc]
        a_t_pat, a_t_var = a_p[ka][:, pc], a_v[ka][:, pc]
        g_t_pat, g_t_var = g_p[:, pc], g_v[:, pc]
        p_xt, p_tt = p_p[kc][:, pc], p_p[pc][:, pc]
        # The structure after substitution (patterns may overstate where values cancel).
        a_r_pat = _binary(a_p[ka][:, kc] + a_t_pat @ f_pat)
        a_r_var = _binary(a_v[ka][:, kc] + a_t_pat @ f_var + a_t_var @ f_pat)
        a_r_val = a_val[ka][:, kc] + a_val[ka][:, pc] @ f_val
        g_r_pat = _binary(g_p[:, kc] + g_t_pat @ f_pat)
        g_r_var = _binary(g_v[:, kc] + g_t_pat @ f_var + g_t_var @ f_pat)
        p_r_pat = _binary(p_p[kc][:, kc] + p_xt @ f_pat + (p_xt @ f_pat).T
                          + f_pat.T @ p_tt @ f_pat)
        p_tt_offdiag = p_tt - sp.diags(p_tt.diagonal())
        after = _Structure(a_pattern=a_r_pat, a_variable=a_r_var,
                           a_values=sp.csr_matrix(a_r_val), g_pattern=g_r_pat,
                           g_variable=g_r_var, p_pattern=p_r_pat,
                           p_variable=s.p_variable or _has(f_var))
        return cls(pivot_rows=pr, pivot_cols=pc, pivot_values=e, kept_rows=ka, kept_cols=kc,
                   f_shared=not _has(f_var), a_t=_has(a_t_pat), a_t_shared=not _has(a_t_var),
                   g_t=_has(g_t_pat), g_t_shared=not _has(g_t_var), p_xt=_has(p_xt),
                   p_tt=_has(p_tt), p_tt_diagonal=not _has(_binary(p_tt_offdiag))), after

    def reduce(self, P, q, A, b, G, h, g_reduced: bool = False):
        """The reduced QP's data and this call's context (for :meth:`recover`, :meth:`pull`,
        :meth:`push`). The arrays are the solve's (NumPy or PyTorch: on PyTorch the products
        run on its kernels, so that no NumPy BLAS threads wake between the interior point's
        and fight them for the cores); matrices are 2-D when shared by the batch.
        ``g_reduced``: G is on the kept columns already (it has none on the pivots')."""
        pr, pc, ka, kc = self.pivot_rows, self.pivot_cols, self.kept_rows, self.kept_cols
        e = _like(self.pivot_values, b)
        F = -_block(A, pr, kc, self.f_shared) / e[:, None]
        g = b[:, pr] / e
        A_t = _block(A, ka, pc, self.a_t_shared) if self.a_t else None
        G_t = _block(G, slice(None), pc, self.g_t_shared) if self.g_t else None
        P_xt = _block(P, kc, pc, P.ndim == 2) if self.p_xt else None
        P_tt = _block(P, pc, pc, P.ndim == 2) if self.p_tt else None
        context = _Context(self, e, F, g, A_t, G_t, P_xt, P_tt, q[:, pc])
        P_r = _block(P, kc, kc, P.ndim == 2)
        q_r = q[:, kc] + mv(mT(F), q[:, pc])
        if P_xt is not None:
            P_xt_F = P_xt @ F
            P_r = P_r + P_xt_F + mT(P_xt_F)
            q_r = q_r + mv(P_xt, g)
        if P_tt is not None:
            P_r = P_r + mT(F) @ context.times_p_tt(F, matrix=True)
            q_r = q_r + mv(mT(F), context.times_p_tt(g))
        P_r = 0.5 * (P_r + mT(P_r))   # rounding aside, it is symmetric
        A_r, b_r = _block(A, ka, kc, A.ndim == 2), b[:, ka]
        if A_t is not None:
            A_r, b_r = A_r + A_t @ F, b_r - mv(A_t, g)
        G_r, h_r = (G if g_reduced else _block(G, slice(None), kc, G.ndim == 2)), h
        if G_t is not None:
            G_r, h_r = G_r + G_t @ F, h_r - mv(G_t, g)
        return tuple(_contiguous(a) for a in (P_r, q_r, A_r, b_r, G_r, h_r)), context


@dataclass
class _Context:
    """One call's quantities of a :class:`Round` (module docstring's notation)."""

    round: Round
    e: np.ndarray       # the pivots' coefficients, in the call's array library
    F: np.ndarray
    g: np.ndarray
    A_t: np.ndarray | None
    G_t: np.ndarray | None
    P_xt: np.ndarray | None
    P_tt: np.ndarray | None
    q_t: np.ndarray

    def times_p_tt(self, v, matrix: bool = False):
        """P_tt v for a batch of vectors (B, k), or P_tt V for a (batch of) matrices V
        (…, k, c) with ``matrix``; elementwise when P_tt is diagonal."""
        if self.round.p_tt_diagonal:
            d = diagonal(self.P_tt)
            return d[..., :, None] * v if matrix else d * v
        return self.P_tt @ v if matrix else mv(self.P_tt, v)

    def _t_rows(self, x, t, nu_kept, lam_weighted):
        """(P z)_t + A_tᵀ ν_a + G_tᵀ(λ-like), the t-rows shared by recovery and push."""
        r = 0.0 * t
        if self.P_xt is not None:
            r = r + mv(mT(self.P_xt), x)
        if self.P_tt is not None:
            r = r + self.times_p_tt(t)
        if self.A_t is not None:
            r = r + mv(mT(self.A_t), nu_kept)
        if self.G_t is not None:
            r = r + mv(mT(self.G_t), lam_weighted)
        return r

    def recover(self, x, nu, lam):
        """The full problem's (z, ν) from the reduced solution (λ is unchanged)."""
        rnd = self.round
        t = mv(self.F, x) + self.g
        z = _scatter(x, rnd.kept_cols, t, rnd.pivot_cols)
        nu_e = -(self._t_rows(x, t, nu, lam) + self.q_t) / self.e
        return z, _scatter(nu, rnd.kept_rows, nu_e, rnd.pivot_rows)

    def pull(self, g_z, g_nu, g_lam):
        """The reduced adjoint system's right-hand side from the full one's."""
        rnd = self.round
        o = g_nu[:, rnd.pivot_rows] / self.e
        g_x = g_z[:, rnd.kept_cols] + mv(mT(self.F), g_z[:, rnd.pivot_cols])
        if self.P_xt is not None:
            g_x = g_x - mv(self.P_xt, o)
        if self.P_tt is not None:
            g_x = g_x - mv(mT(self.F), self.times_p_tt(o))
        g_nu_r = g_nu[:, rnd.kept_rows]
        if self.A_t is not None:
            g_nu_r = g_nu_r - mv(self.A_t, o)
        if self.G_t is not None:
            g_lam = g_lam - mv(self.G_t, o)
        return (g_x, g_nu_r, g_lam), (o, g_z[:, rnd.pivot_cols])

    def push(self, w, pulled):
        """The full system's w = (w_z, w_ν, λ∘w_λ) from the reduced one's."""
        (w_x, w_nu, lam_w), (o, g_t) = w, pulled
        rnd = self.round
        w_t = mv(self.F, w_x) + o
        w_z = _scatter(w_x, rnd.kept_cols, w_t, rnd.pivot_cols)
        w_nu_e = (g_t - self._t_rows(w_x, w_t, w_nu, lam_w)) / self.e
        return w_z, _scatter(w_nu, rnd.kept_rows, w_nu_e, rnd.pivot_rows), lam_w


def _block(M, rows, cols, shared: bool):
    """M[rows, cols] of a batch of matrices (or a shared one); the first element's when the
    block is the same in every element (``shared``). An :class:`EntryBatch` makes the
    block from its entries."""
    if isinstance(M, EntryBatch):
        return M.block(rows, cols, shared)
    if shared and M.ndim == 3:
        M = M[0]
    return M[..., _as_slice(rows), :][..., _as_slice(cols)]


class EntryBatch:
    """A batch of sparse matrices as their structural entries — values ``(B, nnz)`` with
    fixed (rows, cols) — made dense block by block, for the first round's
    :meth:`Round.reduce`, which reads three blocks of A (the pivot rows on the kept
    columns, the kept rows on the pivot and on the kept columns). A layer with many
    defined variables would otherwise make A dense first: cvxpylayers' ReLU-layers example
    (20 × 20) has 860 entries in a 420 × 440 A, 94 MB dense at B = 64, 11 ms a call.

    ``prepare(positions, rows, cols, shape)`` plans one block from its entries (their
    positions among the matrix's, column-major in the block), once per layout: ``plans``
    is a dict kept per layout; ``build(plan, first)`` makes the call's dense batch (or one
    shared matrix) in the solve's array library, of the first element alone with
    ``first`` (a block the structure makes the same in every element)."""

    ndim = 3

    def __init__(self, rows, cols, shape, prepare, build, plans: dict):
        self.rows, self.cols, self.shape = rows, cols, shape
        self.prepare, self.build, self.plans = prepare, build, plans

    def block(self, row_index, col_index, shared: bool):
        key = (id(row_index), id(col_index))
        found = self.plans.get(key)  # the index arrays are kept: a recycled id cannot match
        if found is None or found[0] is not row_index or found[1] is not col_index:
            found = self.plans[key] = (row_index, col_index,
                                       self.prepare(*self._entries(row_index, col_index)))
        dense = self.build(found[2], shared)
        return dense[0] if shared and dense.ndim == 3 else dense

    def _entries(self, row_index, col_index):
        """The positions of the entries in the block and their (rows, cols) there, in the
        block's column-major order."""
        def position_in(index, size):   # the block's row (column) of each, or −1
            where = np.full(size, -1, dtype=np.int64)
            where[index] = np.arange(len(index))
            return where
        rows = position_in(row_index, self.shape[0])[self.rows]
        cols = position_in(col_index, self.shape[1])[self.cols]
        inside = np.flatnonzero((rows >= 0) & (cols >= 0))
        order = inside[np.lexsort((rows[inside], cols[inside]))]
        return order, rows[order], cols[order], (len(row_index), len(col_index))


def _as_slice(index):
    """A sorted, contiguous index array as a slice (a view, where fancy indexing gathers a
    copy: the kept columns of a batched G are often one range, the user's variables)."""
    if isinstance(index, slice) or index.size == 0 or index[-1] - index[0] + 1 != index.size:
        return index
    start = int(index[0])
    if not np.array_equal(index, np.arange(start, start + index.size)):
        return index
    return slice(start, start + index.size)


def _scatter(kept, kept_idx, new, new_idx):
    """The batch of vectors whose entries ``kept_idx`` are ``kept`` and ``new_idx`` are
    ``new`` (in the arrays' library)."""
    shape = (kept.shape[0], kept_idx.size + new_idx.size)
    if is_numpy_array(kept):
        out = np.empty(shape)
    else:
        out = namespace(kept).empty(shape, dtype=kept.dtype, device=kept.device)
    out[:, kept_idx] = kept
    out[:, new_idx] = new
    return out


def _like(values: np.ndarray, reference):
    """NumPy ``values`` in the array library, dtype and device of ``reference``."""
    if is_numpy_array(reference):
        return values
    return namespace(reference).asarray(values, dtype=reference.dtype,
                                        device=reference.device)


def _contiguous(a):
    return np.ascontiguousarray(a) if is_numpy_array(a) else a.contiguous()


@dataclass(frozen=True)
class Presolve:
    """The rounds planned for one layout (possibly none: then every method is the
    identity)."""

    rounds: tuple
    #: The variables the rounds keep (indices among the problem's), when no round's
    #: eliminated variables appear in G; then G can be built on them alone
    #: (``reduce(..., g_reduced=True)``). None otherwise, and without rounds.
    g_columns: np.ndarray | None = None

    @classmethod
    def plan(cls, layout) -> Presolve:
        structure, rounds = _Structure.from_layout(layout), []
        for _ in range(_MAX_ROUNDS):
            planned = Round.plan(structure)
            if planned is None:
                break
            step, structure = planned
            rounds.append(step)
        columns = None
        if rounds and not any(step.g_t for step in rounds):
            columns = np.arange(layout.n)
            for step in rounds:
                columns = columns[step.kept_cols]
        return cls(tuple(rounds), columns)

    @property
    def eliminated(self) -> int:
        return sum(r.pivot_cols.size for r in self.rounds)

    def reduce(self, P, q, A, b, G, h, g_reduced: bool = False):
        """The reduced QP's (P, q, A, b, G, h) and the call's contexts. With ``g_reduced``,
        G is given on the :attr:`g_columns` already (and passed through)."""
        if g_reduced and self.g_columns is None:
            raise ValueError("G can be given reduced only when the presolve has g_columns.")
        contexts = []
        data = (P, q, A, b, G, h)
        for step in self.rounds:
            data, context = step.reduce(*data, g_reduced=g_reduced)
            contexts.append(context)
        return data, contexts

    @staticmethod
    def recover(contexts, x, nu, lam):
        """The full problem's (x, ν) from the reduced solution; λ is unchanged."""
        for context in reversed(contexts):
            x, nu = context.recover(x, nu, lam)
        return x, nu

    @staticmethod
    def adjoint(contexts, solve_reduced, g_x, g_nu, g_lam):
        """The full system's (w_x, w_ν, λ∘w_λ), given ``solve_reduced(g_x, g_ν, g_λ)`` that
        returns the reduced problem's (see the module docstring)."""
        pulled = []
        g = (g_x, g_nu, g_lam)
        for context in contexts:
            g, kept = context.pull(*g)
            pulled.append(kept)
        w = solve_reduced(*g)
        for context, kept in zip(reversed(contexts), reversed(pulled)):
            w = context.push(w, kept)
        return w
