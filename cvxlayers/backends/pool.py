"""The thread pool that solves the elements of a batch concurrently.

SCS, ECOS and Clarabel release the GIL while they work, so threads give real
parallelism without copying the problem data into other processes, on elements large enough
for the solver's own work to dominate; tiny elements are mostly Python work under the GIL
and run faster on the calling thread (:class:`ElementCost` chooses, from measured times). One pool per
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
import time
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


#: Below this much CPU time per element (seconds), a batch runs on the calling thread:
#: such elements are mostly Python work (data slicing, the derivative's linearization),
#: which holds the GIL, so threads add their dispatch and contention and no parallelism.
#: Measured on 2 CPUs (``benchmarks/README.md``, "Warm starts"): the control example's
#: policy (0.3–0.5 ms per element) ran 1.1–1.2x faster serially, an SOCP with n = 30,
#: m = 40 (1–1.8 ms per element) 1.05–1.8x faster on two threads.
SERIAL_BELOW_S = 0.7e-3


class ElementCost:
    """The CPU time per element of a backend's last batch, measured in the workers
    (``time.thread_time``: time waiting for the GIL or a core does not count), and from it
    whether the next batch is worth a thread pool. One per backend and pass (forward,
    backward): a layer's elements cost about the same from call to call, and a change
    is followed after one call."""

    def __init__(self):
        self.seconds = None  # None: not measured yet (the first batch uses the threads)

    def workers(self, n_jobs: int, size: int) -> int:
        if self.seconds is not None and self.seconds < SERIAL_BELOW_S:
            return 1
        return min(n_jobs, size)

    def measured(self, fn: Callable[[int], object], size: int):
        """``fn`` timed per element; the mean is recorded when :meth:`record` is called."""
        spent = [0.0] * size

        def timed(i):
            start = time.thread_time()
            try:
                return fn(i)
            finally:
                spent[i] = time.thread_time() - start

        return timed, spent

    def record(self, spent) -> None:
        if spent:
            self.seconds = sum(spent) / len(spent)


def map_batch(fn: Callable[[int], object], size: int, n_jobs: int,
              cost: ElementCost | None = None) -> list:
    """``[fn(i) for i in range(size)]``, on up to ``min(n_jobs, size)`` threads: on one,
    the caller's, where ``cost`` says the last batch's elements were too cheap for a pool.

    While the threads run, BLAS is limited to one thread (see the module docstring), so
    that the pool does not oversubscribe.
    """
    workers = min(n_jobs, size) if cost is None else cost.workers(n_jobs, size)
    spent = None
    if cost is not None:
        fn, spent = cost.measured(fn, size)
    if workers <= 1:
        results = [fn(i) for i in range(size)]
    else:
        with blas_limited():
            results = list(_pool(workers).map(fn, range(size)))
    if cost is not None:
        cost.record(spent)
    return results


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
