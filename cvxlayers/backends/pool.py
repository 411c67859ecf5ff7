"""The thread pool that solves the elements of a batch concurrently.

SCS, ECOS and Clarabel release the GIL while they work, so threads give real
parallelism without copying the problem data into other processes. One pool per
worker count is kept for the life of the process: creating threads on every call
would cost more than solving a small problem.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

_POOLS: dict = {}
_LOCK = threading.Lock()


def default_jobs() -> int:
    """The default number of workers: one per CPU the process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def _pool(n_jobs: int) -> ThreadPoolExecutor:
    with _LOCK:
        pool = _POOLS.get(n_jobs)
        if pool is None:
            pool = _POOLS[n_jobs] = ThreadPoolExecutor(max_workers=n_jobs,
                                                       thread_name_prefix="cvxlayers")
        return pool


def map_batch(fn: Callable[[int], object], size: int, n_jobs: int) -> list:
    """``[fn(i) for i in range(size)]``, on ``min(n_jobs, size)`` threads.

    Each worker's BLAS is limited to one thread, so that the pool does not oversubscribe.
    """
    workers = min(n_jobs, size)
    if workers <= 1:
        return [fn(i) for i in range(size)]
    with _blas_controller().limit(limits=1):
        return list(_pool(workers).map(fn, range(size)))


def _blas_controller():
    """One threadpoolctl controller for the process: creating it inspects every loaded
    library (about a millisecond), limiting through it costs microseconds."""
    global _CONTROLLER
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER


_CONTROLLER = None

