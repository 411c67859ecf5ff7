"""The QP backend's non-implicit gradients (:mod:`cvxlayers.gradients`): what the solve
keeps for them, and the adjoint they dispatch to — :mod:`.qp_smoothed` (the KKT adjoint at
a central-path point) or :mod:`.qp_lpgd` (perturbed re-solves)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class GradientContext:
    """A QP solve's context for a smoothed or LPGD backward.

    Attributes:
        implicit: the implicit adjoint's context (``qp_backend._Solved``).
        data: ``(P, q, A, b, G, h)`` the interior point solved (after the presolve), in
            the engine's arrays.
        gradient: the :class:`cvxlayers.gradients.Gradient`.
        options: the solve's options (for LPGD's re-solves).
        full_data: the problem's own ``(P, q, A, b, G, h)`` (before the presolve), for
            LPGD, whose perturbations are of the full problem's data.
    """

    implicit: object
    data: tuple
    gradient: object
    options: dict
    full_data: tuple = None

    def adjoint(self, backend, layout, solution, dx, dy, usable, n_jobs) -> np.ndarray:
        solved = self.implicit
        if self.gradient.name == "lpgd":
            from cvxlayers.backends import qp_lpgd

            return qp_lpgd.adjoint(layout, self.full_data, np.nan_to_num(solved.full_x),
                                   np.nan_to_num(solved.full_y), dx, dy, usable,
                                   self.gradient, self.options, solved.engine)
        return self._smoothed(backend, layout, solution, dx, dy, usable, n_jobs)

    def _smoothed(self, backend, layout, solution, dx, dy, usable, n_jobs):
        """The implicit adjoint, with the solution and its factorization replaced by the
        central-path point's (:mod:`.qp_smoothed`)."""
        from dataclasses import replace

        from cvxlayers.backends.qp_smoothed import central_point

        solved = self.implicit
        qp_solution, engine = solved.solution, solved.engine
        # Failed elements (NaN rows) start from a harmless interior point; their rows of the
        # gradient are zeroed by the adjoint.
        x, nu, lam, s = (engine.asarray(np.where(usable[:, None], engine.to_numpy(v), fill))
                         for v, fill in ((qp_solution.x, 0.0), (qp_solution.nu, 0.0),
                                         (qp_solution.lam, 1.0), (qp_solution.s, 1.0)))
        with np.errstate(all="ignore"):
            point, factors = central_point(*self.data, x, nu, lam, s,
                                           self.gradient.args["mu"])
        x_mu, nu_mu, lam_mu, s_mu = point
        # The central point's own factorization, in the solve's coordinates: no polish, no
        # equilibration.
        central = replace(qp_solution, x=x_mu, nu=nu_mu, lam=lam_mu, s=s_mu, factors=factors,
                          polish=None, scaling=None)
        full_x, full_nu = x_mu, nu_mu
        if solved.contexts:  # the contexts hold the solve's arrays
            full_x, full_nu = solved.presolve.recover(solved.contexts, x_mu, nu_mu, lam_mu)
        full_x, full_nu, lam_host = (engine.to_numpy(v) for v in (full_x, full_nu, lam_mu))
        from cvxlayers.backends.base import BatchSolution

        twin = BatchSolution(solution.x, solution.y, solution.statuses, solution.messages,
                             context=replace(solved, solution=central, full_x=full_x,
                                             full_y=np.concatenate([full_nu, lam_host], axis=1)))
        return backend.adjoint(layout, twin, dx, dy, usable, n_jobs)
