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
        implicit: the implicit adjoint's context ``(solution, P, A, G, engine)``.
        data: ``(P, q, A, b, G, h)`` in the engine's arrays.
        gradient: the :class:`cvxlayers.gradients.Gradient`.
        options: the solve's options (for LPGD's re-solves).
    """

    implicit: tuple
    data: tuple
    gradient: object
    options: dict

    def adjoint(self, backend, layout, solution, dx, dy, usable, n_jobs) -> np.ndarray:
        qp_solution, _, _, _, engine = self.implicit
        x = engine.to_numpy(qp_solution.x)
        y = np.concatenate([engine.to_numpy(qp_solution.nu),
                            engine.to_numpy(qp_solution.lam)], axis=1)
        if self.gradient.name == "lpgd":
            from cvxlayers.backends import qp_lpgd

            return qp_lpgd.adjoint(layout, self.data, x, y, dx, dy, usable, self.gradient,
                                   self.options, engine)
        return self._smoothed(backend, layout, solution, dx, dy, usable, n_jobs)

    def _smoothed(self, backend, layout, solution, dx, dy, usable, n_jobs):
        """The implicit adjoint, with the solution and its factorization replaced by the
        central-path point's (:mod:`.qp_smoothed`)."""
        from dataclasses import replace

        from cvxlayers.backends.qp_smoothed import central_point

        qp_solution, P, A, G, engine = self.implicit
        # Failed elements (NaN rows) start from a harmless interior point; their rows of the
        # gradient are zeroed by the adjoint.
        x, nu, lam, s = (engine.asarray(np.where(usable[:, None], engine.to_numpy(v), fill))
                         for v, fill in ((qp_solution.x, 0.0), (qp_solution.nu, 0.0),
                                         (qp_solution.lam, 1.0), (qp_solution.s, 1.0)))
        with np.errstate(all="ignore"):
            point, factors = central_point(*self.data, x, nu, lam, s,
                                           self.gradient.args["mu"])
        x_mu, nu_mu, lam_mu, s_mu = point
        central = replace(qp_solution, x=x_mu, nu=nu_mu, lam=lam_mu, s=s_mu, factors=factors)
        from cvxlayers.backends.base import BatchSolution

        twin = BatchSolution(solution.x, solution.y, solution.statuses, solution.messages,
                             context=(central, P, A, G, engine))
        return backend.adjoint(layout, twin, dx, dy, usable, n_jobs)
