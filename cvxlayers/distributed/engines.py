"""The engines a layer's chunks run on: any ``concurrent.futures.Executor``, a Dask
``distributed.Client``, or Ray.

Each engine does three things, and nothing of scheduling (the engine's own scheduler does
that):

- **ships the compiled problem once.** A layer's :class:`~cvxlayers.core.LayerCore` is
  pickled once per engine and kept on the workers: Dask scatters it to every worker
  (``client.scatter(..., broadcast=True)``), Ray puts it in the object store once
  (``ray.put``), and a plain executor's workers keep it in a per-process cache keyed by
  the layer's token (a task that finds the cache empty answers "missing" and is sent again
  with the pickled layer, so each process receives it once). Every later task carries the
  token only, plus its chunk's parameter values.
- **retries what the engine can retry.** A worker that dies mid-chunk is the engine's to
  recover: Dask resubmits with ``retries=``, Ray with ``max_retries=`` (system failures
  only: a solver's exception is not retried, it is an answer). A chunk that still fails
  is returned as an exception, which the caller reports with the batch indices it held.
- **says clearly when the engine is unreachable**: a closed Dask client, Ray not
  initialized, an executor shut down — :class:`~cvxlayers.errors.EngineError`.
"""

from __future__ import annotations

import pickle
import threading
from collections import OrderedDict
from concurrent.futures import Executor

from cvxlayers.errors import EngineError

#: How often a chunk whose worker died is resubmitted (Dask ``retries``, Ray
#: ``max_retries``).
RETRIES = 2

#: Layers kept per worker process (least recently used dropped first): a worker serving
#: many layers does not grow without bound.
_CACHE_SIZE = 32
_CACHE: OrderedDict = OrderedDict()
_CACHE_LOCK = threading.Lock()
_MISSING = "cvxlayers:missing-core"


def _cached_core(token: str, payload):
    """The layer with ``token`` in this worker process; unpickled from ``payload`` (bytes)
    the first time, or ``None`` when it is not cached and no payload came."""
    with _CACHE_LOCK:
        core = _CACHE.get(token)
        if core is not None:
            _CACHE.move_to_end(token)
            return core
    if payload is None:
        return None
    core = pickle.loads(payload) if isinstance(payload, bytes) else payload
    with _CACHE_LOCK:
        _CACHE[token] = core
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return core


def _run_futures_task(token, payload, fn, args):
    """A plain executor's task: ``fn(core, *args)``, or ``_MISSING`` to ask for the layer."""
    core = _cached_core(token, payload)
    if core is None:
        return _MISSING
    return fn(core, *args)


def _run_dask_task(token, core, fn, args):
    """A Dask task: ``core`` is the scattered layer, already deserialized on the worker."""
    return fn(_cached_core(token, core), *args)


def _run_ray_task(token, boxed_ref, fn, args):
    """A Ray task. The layer's ObjectRef arrives boxed in a list so that Ray does not fetch
    and unpickle it for every task; it is fetched once per worker process."""
    core = _cached_core(token, None)
    if core is None:
        import ray

        core = _cached_core(token, ray.get(boxed_ref[0]))
    return fn(core, *args)


class FuturesEngine:
    """Chunks on any ``concurrent.futures.Executor`` (e.g. a ``ProcessPoolExecutor``)."""

    name = "executor"
    #: whether a task can be sent to the worker holding a forward's state
    addressable = False

    def __init__(self, executor: Executor):
        self.executor = executor

    def workers(self) -> int:
        from cvxlayers.backends.pool import default_jobs

        return int(getattr(self.executor, "_max_workers", None) or default_jobs())

    def _submit(self, *args):
        try:
            return self.executor.submit(*args)
        except RuntimeError as exc:  # "cannot schedule new futures after shutdown"
            raise EngineError(f"The executor {self.executor!r} does not accept work: {exc}. "
                              "Pass a running executor as `executor`.") from exc

    def map(self, core, fn, tasks: list, where=None) -> list:
        del where  # an executor cannot address one of its workers
        token = core.token
        futures = [self._submit(_run_futures_task, token, None, fn, args) for args in tasks]
        results = _collect(futures, lambda f: f.result())
        payload = None
        for _ in range(2):  # a process that never saw the layer asks for it once
            missing = [i for i, r in enumerate(results) if _is_missing(r)]
            if not missing:
                break
            payload = payload or pickle.dumps(core)
            resent = [self._submit(_run_futures_task, token, payload, fn, tasks[i])
                      for i in missing]
            for i, result in zip(missing, _collect(resent, lambda f: f.result())):
                results[i] = result
        return results


class DaskEngine:
    """Chunks on a Dask cluster through the user's ``distributed.Client``."""

    name = "dask"
    #: whether a task can be sent to the worker holding a forward's state
    addressable = True

    def __init__(self, client):
        self.client = client

    def _check(self):
        status = getattr(self.client, "status", "running")
        if status != "running":
            raise EngineError(f"The Dask client {self.client!r} is {status!r}, not running: "
                              "pass a connected distributed.Client (Client(address)) as "
                              "`executor`.")

    def workers(self) -> int:
        self._check()
        try:
            info = self.client.scheduler_info()
        except Exception as exc:  # noqa: BLE001 - any transport error means unreachable
            raise EngineError(f"The Dask scheduler behind {self.client!r} is unreachable: "
                              f"{exc}") from exc
        return max(1, sum(w.get("nthreads", 1) for w in info.get("workers", {}).values()))

    def _scattered(self, core):
        """The layer's scattered copy on this client: scattered on first use, again if the
        cluster lost every replica (all workers holding it died)."""
        key = ("dask", id(self.client))
        future = core.remote_handles.get(key)
        if future is None or future.status != "finished":
            future = self.client.scatter(core, broadcast=True, hash=False)
            core.remote_handles[key] = future
        return future

    def map(self, core, fn, tasks: list, where=None) -> list:
        """``fn(core, *args)`` per task; ``where``: per task, a worker address to prefer
        (the one holding the task's forward state), or ``None``. A preference only
        (``allow_other_workers``): a task whose worker is gone runs elsewhere."""
        self._check()
        where = where or [None] * len(tasks)
        try:
            scattered = self._scattered(core)
            futures = [self.client.submit(_run_dask_task, core.token, scattered, fn, args,
                                          retries=RETRIES, pure=False,
                                          workers=None if addr is None else [addr],
                                          allow_other_workers=addr is not None)
                       for args, addr in zip(tasks, where)]
        except EngineError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise EngineError(f"Could not submit to the Dask cluster behind {self.client!r}: "
                              f"{exc}") from exc
        return _collect(futures, lambda f: f.result())


class RayEngine:
    """Chunks as Ray tasks, on the cluster the user connected to with ``ray.init``."""

    name = "ray"
    #: whether a task can be sent to the worker holding a forward's state
    addressable = False
    _remote = None  # the ray.remote task, made once per process

    def __init__(self):
        import ray

        if not ray.is_initialized():
            raise EngineError("executor='ray' needs Ray initialized: call ray.init() (this "
                              "machine) or ray.init(address=...) (a cluster) first.")
        self.ray = ray

    def workers(self) -> int:
        return max(1, int(self.ray.cluster_resources().get("CPU", 1)))

    def map(self, core, fn, tasks: list, where=None) -> list:
        del where  # a Ray task cannot address a worker process (an actor would)
        ray = self.ray
        if not ray.is_initialized():
            raise EngineError("Ray was shut down: call ray.init() again before the layer's "
                              "next call with executor='ray'.")
        if RayEngine._remote is None:
            RayEngine._remote = ray.remote(_run_ray_task)
        key = ("ray", ray.get_runtime_context().get_job_id())
        ref = core.remote_handles.get(key)
        if ref is None:
            ref = core.remote_handles[key] = ray.put(core)
        task = RayEngine._remote.options(max_retries=RETRIES)
        refs = [task.remote(core.token, [ref], fn, args) for args in tasks]
        return _collect(refs, ray.get)


def _is_missing(result) -> bool:
    return isinstance(result, str) and result == _MISSING


class ChunkFailure:
    """A chunk that raised (after the engine's retries): its exception, kept to report."""

    def __init__(self, exc: BaseException):
        self.exc = exc


def _collect(handles, get) -> list:
    """Each handle's result, in order; a :class:`ChunkFailure` for one that raised, so
    that every chunk is accounted for and none silently missing."""
    results = []
    for handle in handles:
        try:
            results.append(get(handle))
        except Exception as exc:  # noqa: BLE001 - reported with the chunk's indices
            results.append(ChunkFailure(exc))
    return results


def resolve(executor):
    """The engine for a layer's or a call's ``executor``: ``None`` (the in-process thread
    pool), ``"ray"`` or :class:`RayEngine`, a Dask ``distributed.Client``, or any
    ``concurrent.futures.Executor``. Raises TypeError naming what was received otherwise."""
    if executor is None or isinstance(executor, (FuturesEngine, DaskEngine, RayEngine)):
        return executor
    if isinstance(executor, str):
        if executor == "ray":
            try:
                return RayEngine()
            except ImportError as exc:
                raise EngineError("executor='ray' needs Ray: pip install 'cvxlayers[ray]'."
                                  ) from exc
        raise ValueError(f"`executor` as a string must be 'ray'; received {executor!r}.")
    if type(executor).__module__.startswith("distributed") and hasattr(executor, "scatter"):
        return DaskEngine(executor)
    if isinstance(executor, Executor):
        return FuturesEngine(executor)
    raise TypeError("`executor` must be None, 'ray', a dask distributed.Client or a "
                    f"concurrent.futures.Executor; received {type(executor).__name__}.")
