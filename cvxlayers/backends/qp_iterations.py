"""The interior-point iterations of :func:`~cvxlayers.backends.qp_solver.solve_qp`, over a
batch that shrinks as its elements finish, and that can be resumed for some of them.

Each iteration measures every working element's residuals, stops those that converged (or
are certified infeasible or unbounded, or diverged), and takes Mehrotra's predictor-
corrector step for the rest. Once at most :data:`_SHRINK_FRACTION` of the working elements
still iterate, the finished ones are written back into batch-sized arrays and the rest go on
as a smaller batch, so that a batch costs about the sum of its elements' iterations rather
than the slowest element's count times the batch size (NumPy and PyTorch arrays; JAX arrays
cannot be updated in place, and their batch never shrinks).

:meth:`Iterations.resume` sends chosen elements back to iterating from where they stopped,
at another tolerance: the solver first stops at a loose one, where the polish already finds
the exact solution of almost every element, and resumes only the others.
"""

from __future__ import annotations

import numpy as np
from array_api_compat import device

from cvxlayers.backends.qp_arrays import max_pair_step

_STEP_FRACTION = 0.99     # fraction of the step to the boundary
_DIVERGED = 1e13          # iterates this large are certificates, not solutions
_CERTIFICATE_SIZE = 1e4   # below this (relative to the data) no iterate is checked as one
NEAR_FACTOR = 1e3        # at the iteration limit, within 1000·tol reads optimal_inaccurate
_SHRINK_FRACTION = 0.8    # continue as a smaller batch once this fraction or fewer iterate
_FLAGS = ("converged", "infeasible", "unbounded", "finite")


class Iterations:
    """One batch's iterations: the batch's iterates and flags, the working elements' form
    and point, and the counts.

    Attributes:
        full_point: the batch's iterates (the working ones' as of their last record).
        flags: batch-sized boolean arrays "converged", "infeasible", "unbounded",
            "finite" and "near" (within 1000·tol at the iteration limit).
        kkt: the last factorization (the working elements'); with ``keep_factorization``
            and a reduction that is not factored at the solution, ``factored`` holds each
            element's last one once the batch has shrunk.
        iterations, element_iterations, steps: as in
            :class:`~cvxlayers.backends.qp_solver.QPSolution`.
    """

    def __init__(self, xp, whole, point, keep_factorization: bool, can_shrink: bool):
        batch = point[0].shape[0]
        self.xp, self.whole = xp, whole
        self.keep_factorization, self.can_shrink = keep_factorization, can_shrink
        self.m = whole.pair(point)[0].shape[-1]
        self.form, self.point = whole, point   # the working elements'
        self.full_point = point                # the batch's, once the batch shrinks
        self.rows = None                       # the working elements' indices (None: all)
        no = xp.zeros(batch, dtype=xp.bool, device=device(point[0]))
        self.flags = {"converged": no, "infeasible": no, "unbounded": no, "finite": ~no,
                      "near": no}
        self.kkt = self.factored = None
        self.iterations = self.element_iterations = 0
        self.steps = np.zeros(batch, dtype=np.int64)  # per element, on the host

    def run(self, tol: float, max_iter: int) -> None:
        """Iterates the working elements until each has stopped, or ``max_iter`` times."""
        xp, m = self.xp, self.m
        no = xp.zeros(self.point[0].shape[0], dtype=xp.bool, device=device(self.point[0]))
        converged = infeasible = unbounded = no
        active = finite = ~no
        ran = 0
        for _ in range(max_iter):
            ran += 1
            self.iterations += 1
            form, point = self.form, self.point
            residuals, *measures = form.residuals(point)
            converged = form.data.meets(xp, tol, *measures)
            size = form.size(point)
            finite = size < _DIVERGED  # False for inf and NaN too
            if bool(xp.any(size > _CERTIFICATE_SIZE * form.data.scale)):  # only large ones
                infeasible, unbounded = form.certificates(point)
                active = ~converged & ~infeasible & ~unbounded & finite
            else:
                infeasible = unbounded = xp.zeros_like(converged)
                active = ~converged & finite
            n_active = int(xp.sum(xp.astype(active, xp.int64)))
            if n_active == 0:
                break
            stepping = np.asarray(host_list(active), dtype=bool)  # they take this step
            self.steps[stepping if self.rows is None
                       else np.asarray(self.rows.tolist(), dtype=np.int64)[stepping]] += 1
            if self.can_shrink and n_active <= _SHRINK_FRACTION * active.shape[0]:
                self._record(~active, {"converged": converged, "infeasible": infeasible,
                                       "unbounded": unbounded, "finite": finite})
                keep = xp.nonzero(active)[0]
                residuals, measures = ([xp.take(v, keep, axis=0) for v in group]
                                       for group in (residuals, measures))
                self._narrow(keep)
                form, point = self.form, self.point
                active = finite = xp.ones(n_active, dtype=xp.bool, device=device(active))
                converged = infeasible = unbounded = ~active
            kkt = self.kkt = form.factor(point)
            self.element_iterations += point[0].shape[0]
            direction, alpha = predictor_corrector(xp, form, kkt, point, residuals,
                                                   gap=measures[2], m=m)
            if n_active < active.shape[0]:  # finished elements that still iterate stay put
                alpha = xp.where(active, alpha, 0.0)
            alpha = alpha[:, None]
            step = tuple(v + alpha * dv for v, dv in zip(point, direction))
            # An element whose step overflows keeps its last iterate (then reads as failed).
            ok = xp.isfinite(sum(xp.sum(v, axis=-1) for v in step))
            if bool(xp.all(ok)):
                self.point = step
            else:
                self.point = tuple(xp.where(ok[:, None], new, old)
                                   for new, old in zip(step, point))
        final = {"converged": converged, "infeasible": infeasible, "unbounded": unbounded,
                 "finite": finite}
        if ran and bool(xp.any(active)):  # the iteration limit was hit: judge the end
            _, *measures = self.form.residuals(self.point)
            final["converged"] = converged | (self.form.data.meets(xp, tol, *measures)
                                              & active)
            final["near"] = (self.form.data.meets(xp, NEAR_FACTOR * tol, *measures)
                             & ~final["converged"])
        self._record(None, final)

    def resume(self, elements) -> None:
        """Makes the elements of the boolean batch mask ``elements`` the working ones again,
        from their last iterates, unconverged (call :meth:`run` next)."""
        xp = self.xp
        self._own()
        keep = xp.nonzero(elements)[0]
        self.rows, self.form = keep, self.whole.take(keep)
        self.point = tuple(xp.take(v, keep, axis=0) for v in self.full_point)
        for name in ("converged", "near"):
            self.flags[name][keep] = False
        self.kkt = None  # an earlier subset's; the elements' own are in `factored`

    def _own(self) -> None:
        """Batch-sized arrays of our own to write the finished elements into, made once."""
        if self.rows is not None:
            return
        xp = self.xp
        self.full_point = tuple(xp.asarray(v, copy=True) for v in self.point)
        self.flags = {k: xp.asarray(v, copy=True) for k, v in self.flags.items()}
        self.rows = xp.arange(self.point[0].shape[0], device=device(self.point[0]))
        if (self.keep_factorization and self.kkt is not None
                and not self.whole.factor_at_solution):
            self.factored = self.kkt.copy()

    def _narrow(self, keep) -> None:
        """Continues with the working elements ``keep`` (indices into the working ones)."""
        xp = self.xp
        self.rows, self.form = xp.take(self.rows, keep, axis=0), self.form.take(keep)
        self.point = tuple(xp.take(v, keep, axis=0) for v in self.point)

    def _record(self, done, values) -> None:
        """Writes the iterates and flags of the working elements selected by the mask
        ``done`` (all of them for None) into the batch-sized arrays."""
        if self.rows is None:
            if done is None:  # never shrank: the working arrays are the batch's
                self.full_point = self.point
                self.flags.update(values)
                return
            self._own()
        idx, pick = (self.rows, slice(None)) if done is None else (self.rows[done], done)
        for batch_array, working in zip(self.full_point, self.point):
            batch_array[idx] = working[pick]
        for name, value in values.items():
            self.flags[name][idx] = value[pick]
        if self.factored is not None and self.kkt is not None:
            self.factored.put(idx, self.kkt, pick)  # each keeps its last factorization


def predictor_corrector(xp, form, kkt, point, residuals, gap, m):
    """Mehrotra's step: the affine-scaling predictor, then the corrector with centering
    σ = (μ_aff/μ)³ and the second-order term ds∘dλ; returns the direction and the step
    length, 0.99 of the way to the boundary."""
    s, lam = form.pair(point)
    minus_sl = -s * lam
    direction = form.newton(kkt, point, residuals, minus_sl, corrector=False)
    ds, dlam = form.pair(direction)
    alpha = max_pair_step(xp, s, ds, lam, dlam)
    if not m:
        return direction, alpha
    mu = gap / m
    a = alpha[:, None]
    mu_aff = xp.sum((s + a * ds) * (lam + a * dlam), axis=-1) / m
    sigma = (mu_aff / xp.where(mu > 0, mu, 1.0)) ** 3
    r_c = minus_sl - ds * dlam + (sigma * mu)[:, None]
    direction = form.newton(kkt, point, residuals, r_c, corrector=True)
    ds, dlam = form.pair(direction)
    alpha = xp.minimum(1.0, _STEP_FRACTION * max_pair_step(xp, s, ds, lam, dlam))
    return direction, alpha


def host_list(flags) -> list:
    """A boolean array as a Python list (one transfer from the device)."""
    if hasattr(flags, "tolist"):
        return [bool(f) for f in flags.tolist()]
    return [bool(f) for f in flags]
