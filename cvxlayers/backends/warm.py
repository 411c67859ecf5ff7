"""Warm starts: each batch element's previous solution, kept to start its next solve from.

A layer called in a training loop solves nearly the same problems again and again: the
parameters move a little each step, and so does each element's solution z*(θ). A
first-order solver (SCS) started at the previous step's primal-dual point (x, y, s)
instead of at zero needs far fewer iterations; the answer is the same to the solver's
tolerance, because the start only changes where the iteration begins, never what it
converges to (SCS stops on the same residual and gap tests, whatever the start).

Where the state lives, and why:

- **Per layer, per backend, per compiled layout.** A :class:`WarmStore` belongs to the
  backend object of one :class:`~cvxlayers.core.LayerCore` (each layer has its own), and an
  entry remembers the layout it was solved for, so a layer's two formulations (linear and
  quadratic objective) never start from each other's points.
- **Per batch element, on the host.** Row i of the stored arrays is element i's solution;
  a call whose batch size differs from the stored one starts cold (row i would be another
  problem's point, and there is no row at all for new elements). Failed elements (NaN rows)
  are stored as missing, so their next solve starts cold.
- **Thread-safe.** Entries are whole, immutable tuples swapped under a lock: a call reads
  one consistent snapshot, and concurrent calls of one layer each start from some earlier
  call's solution (the last to finish is the one kept).
- **Not carried by pickling or fork.** Pickling drops the entry (a saved or sent layer
  starts cold); a forked child (a ``DataLoader`` worker) replaces the lock, which a parent's
  thread may have held at the fork, and drops the parent's entry on first use.
"""

from __future__ import annotations

import os
import threading
import warnings

import numpy as np

__all__ = ["WarmStore", "warn_cannot_warm_start"]


class WarmStore:
    """The previous solution of a layer's backend, row i for batch element i."""

    def __init__(self):
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._entry = None  # (layout, batch size, arrays), replaced whole

    def _after_fork(self) -> None:
        if self._pid != os.getpid():  # a forked child: the parent's lock and point are not ours
            self._lock = threading.Lock()
            self._entry = None
            self._pid = os.getpid()

    def get(self, layout, batch: int):
        """The stored ``(arrays, valid)`` for ``layout`` at this batch size, else ``None``
        (a cold start): ``arrays`` is a tuple of ``(B, k)`` arrays, ``valid`` a ``(B,)``
        mask of the elements that have a finite previous point."""
        self._after_fork()
        with self._lock:
            entry = self._entry
        if entry is None or entry[0] is not layout or entry[1] != batch:
            return None
        return entry[2], _finite_rows(entry[2])

    def put(self, layout, arrays, copy: bool = True) -> None:
        """Keeps ``arrays`` (each ``(B, k)``) as the point of the next solve; rows with a
        non-finite entry read as missing. ``copy=False`` keeps them as they are, for a
        caller whose arrays are the solve's own, which nothing writes afterwards (each
        copy costs µs at B = 1, on every call, warm starts used or not)."""
        self._after_fork()
        if copy:
            arrays = tuple(np.array(a, dtype=np.float64, copy=True) for a in arrays)
        with self._lock:
            self._entry = (layout, arrays[0].shape[0], tuple(arrays))

    def clear(self) -> None:
        """Forgets the stored point: the next solve starts cold."""
        self._after_fork()
        with self._lock:
            self._entry = None

    def __getstate__(self):
        return {}  # a pickled layer starts cold, with its own lock

    def __setstate__(self, state):
        self.__init__()

    def __deepcopy__(self, memo):
        return WarmStore()  # a copied layer has its own state: no shared lock or point


def _finite_rows(arrays) -> np.ndarray:
    """The (B,) mask of the rows finite in every array (checked when a start is asked for,
    not on every call that stores one)."""
    valid = np.ones(arrays[0].shape[0], dtype=bool)
    for a in arrays:
        valid &= np.isfinite(a).all(axis=1)
    return valid


def warn_cannot_warm_start(solver: str, why: str) -> None:
    """The one-time warning of a backend that accepts ``warm_start=True`` but solves cold."""
    warnings.warn(f"warm_start=True has no effect with solver {solver}: {why} Every solve "
                  "starts cold (the answers are the same); use solver='SCS' to warm-start. "
                  "This warning is shown once per layer.", UserWarning, stacklevel=5)
