"""SCS workspaces kept between warm-started calls, for elements whose matrices did not move.

SCS solves  minimize ½xᵀPx + cᵀx  s.t.  Ax + s = b, s ∈ K  by ADMM on the homogeneous
embedding. Its setup (``scs.SCS(...)``) equilibrates A and P and factors the quasi-definite
matrix [[ρ_x I + P, Aᵀ], [A, −diag(1/ρ_y)]]; only b and c can change afterwards
(``SCS.update(b, c)``), and the next ``solve`` starts from a given (x, y, s).

In many loops the matrices do not move between calls while b and c do: in the control
example's rollouts the policy M = [I; L B] is fixed for the 30 time steps of a rollout and
only d = L A x_t (which lands in b) changes. There a kept workspace saves the setup and, more
importantly, keeps what SCS adapted during the previous solve (its scale ρ and Anderson
memory), which a fresh workspace rebuilds from its defaults: on the control rollouts the
warm solves take 88 instead of 112 iterations per solve, and SCS's time per element falls
from 0.45 ms to 0.30 ms (measured on a loaded machine, ``benchmarks/warm_start.py``).

The answer does not change beyond the solver's tolerance: the workspace solves the same
program (the same A, P and settings, the new b and c), and SCS stops on the same residual
and gap tests whatever state it starts in.

Bounds and lifetime (documented in the warm-start guide):

- at most one workspace per batch element of the **last** warm-started call of a layer's
  SCS backend: a call with another layout, batch size or solver settings replaces them all,
  and an element whose A or P values changed gets a fresh workspace in place of its old one;
- workspaces are used only for ``warm_start=True`` calls; ``clear()`` (with the layer's warm
  store) drops them, and pickling, ``copy.deepcopy`` and a fork drop them too;
- an element is checked out of the cache while it is solved, so two threads calling the same
  layer at once never share a workspace (the one that finds it taken builds a fresh one).
"""

from __future__ import annotations

import os
import threading

import numpy as np

__all__ = ["WorkspaceCache", "solve_scs"]

#: SCS statuses after which diffcp retries without Anderson acceleration (as diffcp does).
INACCURATE = frozenset({"Solved/Inaccurate", "solved (inaccurate - reached max_iters)",
                        "solved (inaccurate - reached time_limit_secs)"})


class WorkspaceCache:
    """One ``scs.SCS`` workspace per batch element, with the matrix values it was built for."""

    def __init__(self):
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._key = None    # (layout, batch size, settings) the slots belong to
        self._slots = {}    # element -> (matrix values, scs.SCS)

    def reset(self, layout, batch: int, settings: dict) -> None:
        """Makes the cache hold this call's elements: keeps the slots if the layout, batch
        size and settings are the previous call's, else drops them all."""
        key = (layout, batch, tuple(sorted((k, repr(v)) for k, v in settings.items())))
        with self._guard():
            if self._key is None or self._key[0] is not layout or self._key[1:] != key[1:]:
                self._slots = {}
                self._key = key

    def take(self, i: int, values: np.ndarray):
        """Element i's workspace if it was built for exactly these matrix values, else
        ``None``; the workspace leaves the cache until :meth:`give` returns it."""
        with self._guard():
            slot = self._slots.pop(i, None)
        if slot is None or slot[0].shape != values.shape or not np.array_equal(slot[0], values):
            return None
        return slot[1]

    def give(self, i: int, values: np.ndarray, solver) -> None:
        """Keeps ``solver``, built for ``values`` (copied), as element i's workspace."""
        with self._guard():
            if self._key is not None:
                self._slots[i] = (np.array(values, copy=True), solver)

    def clear(self) -> None:
        with self._guard():
            self._slots, self._key = {}, None

    def __len__(self) -> int:
        return len(self._slots)

    def _guard(self):
        if self._pid != os.getpid():  # a forked child: the parent's lock and solvers are not ours
            self._lock, self._slots, self._key, self._pid = threading.Lock(), {}, None, os.getpid()
        return self._lock

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.__init__()

    def __deepcopy__(self, memo):
        return WorkspaceCache()


def solve_scs(matrix, b, c, cone_dict, options: dict, point, P=None, cache=None, i=0,
              values=None) -> dict:
    """One SCS solve as diffcp's ``solve_internal`` does it (``eps`` for both tolerances,
    quiet, a retry without Anderson acceleration after an inaccurate status), from ``point``
    = (x, y, s) or cold, reusing element i's workspace from ``cache`` where its matrix
    ``values`` are unchanged (then only b and c are sent to SCS). ``matrix()`` returns the
    constraint matrix A; it is called only when a workspace is built (forming A costs about
    as much as a warm solve of a small problem).

    Returns SCS's result dictionary (``x``, ``y``, ``s``, ``info``).
    """
    import scs

    settings = dict(options)
    if "eps" in settings:
        settings["eps_abs"] = settings["eps_rel"] = settings.pop("eps")
    settings.setdefault("verbose", False)
    solver = cache.take(i, values) if cache is not None and point is not None else None
    A = None
    if solver is not None:
        solver.update(b=b, c=c)
    else:
        A = matrix()
        data = {"A": A, "b": b, "c": c} if P is None else {"P": P, "A": A, "b": b, "c": c}
        solver = scs.SCS(data, cone_dict, **settings)
    x, y, s = point if point is not None else (None, None, None)
    result = solver.solve(warm_start=point is not None, x=x, y=y, s=s)
    if result["info"]["status"] in INACCURATE and "acceleration_lookback" not in settings:
        # Anderson acceleration is sometimes unstable (diffcp retries the same way); the
        # retry's workspace has other settings, so it is not kept.
        A = matrix() if A is None else A
        data = {"A": A, "b": b, "c": c} if P is None else {"P": P, "A": A, "b": b, "c": c}
        retry = scs.SCS(data, cone_dict, **{**settings, "acceleration_lookback": 0})
        return retry.solve(warm_start=point is not None, x=x, y=y, s=s)
    if cache is not None:
        cache.give(i, values, solver)
    return result
