"""The thread pool that solves the elements of a batch concurrently.

SCS, ECOS and Clarabel release the GIL while they work, so threads give real
parallelism without copying the problem data into other processes. One pool per
worker count is kept for the life of the process: creating threads on every call
would cost more than solving a small problem.

Two pieces of process-wide state live here, and both are kept honest:

- **The executors survive ``fork`` only as husks.** A forked child (a PyTorch
  ``DataLoader`` worker, a ``multiprocessing`` fork pool, ``os.fork``) inherits the
  ``ThreadPoolExecutor`` objects but none of their threads, so work submitted to them
  never runs and the child hangs. A handler registered with ``os.register_at_fork``
  drops the inherited pools and locks in the child; they are recreated on first use.
- **The BLAS thread limit is reference-counted.** Batched elements run their dense
  linear algebra (the ``dense`` derivative's LU, NumPy/SciPy kernels) concurrently; if
  each also used a multi-threaded OpenBLAS/MKL, the pool would oversubscribe the CPUs.
  Measured on 2 CPUs (B=16 least squares with an l1 term, forward + backward): dense mode
  at m=300, n=150 takes 6.2 s per call with the limit and 13.4 s without; at m=100, n=50
  and in LSQR mode the difference is within noise. So the limit stays. But OpenBLAS and
  MKL keep one thread count for the whole process (threadpoolctl cannot limit one
  thread only), and threadpoolctl's ``limit()`` context manager, entered by two threads
  whose calls overlap, lets the second save the first's limited value as the "original"
  and restore the process to one thread. Here the first call to enter applies the limit
  and the last to leave restores what it saved, under a lock, so concurrent batched
  calls leave the process's BLAS settings as they found them. While a batched call
  runs, other threads of the process see BLAS limited to one thread; that is the price
  of not oversubscribing, and it ends with the call.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable

_POOLS: dict = {}
_LOCK = threading.Lock()

_LIMIT_LOCK = threading.Lock()
_limit_users = 0      # batched calls inside the BLAS limit right now
_limiter = None       # threadpoolctl's limiter while _limit_users > 0: it holds the originals
_CONTROLLER = None


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

    While the threads run, BLAS is limited to one thread (see the module docstring), so
    that the pool does not oversubscribe.
    """
    workers = min(n_jobs, size)
    if workers <= 1:
        return [fn(i) for i in range(size)]
    with blas_limited():
        return list(_pool(workers).map(fn, range(size)))


@contextmanager
def blas_limited():
    """BLAS limited to one thread for the duration, reference-counted across threads:
    the first to enter sets the limit, the last to leave restores the original."""
    global _limit_users, _limiter
    with _LIMIT_LOCK:
        if _limit_users == 0:
            _limiter = _blas_controller().limit(limits=1)  # applies the limit now
        _limit_users += 1
    try:
        yield
    finally:
        with _LIMIT_LOCK:
            _limit_users -= 1
            if _limit_users == 0:
                limiter, _limiter = _limiter, None
                limiter.restore_original_limits()


def _blas_controller():
    """One threadpoolctl controller for the process: creating it inspects every loaded
    library (about a millisecond), limiting through it costs microseconds."""
    global _CONTROLLER
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER


def _after_fork_in_child() -> None:
    """Runs in a forked child before it returns from ``fork``: the parent's executors have
    no threads here, and its locks may have been held by a thread that does not exist in
    the child, so both are replaced. If the parent was inside a batched call, the child
    inherited BLAS limited to one thread with no call left to restore it; it is restored."""
    global _POOLS, _LOCK, _LIMIT_LOCK, _limit_users, _limiter
    _POOLS = {}  # the husks are dropped, not shut down: shutting down would wait on threads
    _LOCK = threading.Lock()
    _LIMIT_LOCK = threading.Lock()
    limiter, _limiter, _limit_users = _limiter, None, 0
    if limiter is not None:
        try:
            limiter.restore_original_limits()
        except Exception:  # noqa: BLE001 - a child must not die for a thread count
            pass


if hasattr(os, "register_at_fork"):  # POSIX; Windows has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)
