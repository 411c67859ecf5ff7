"""A batch split into chunks that run the whole layer corridor on an engine's workers.

Forward, for a batch of ``B`` elements cut into chunks ``[s_k, s_k + c_k)``:

    worker k:  (out_k, statuses_k) = solve(θ[s_k : s_k + c_k])     (no derivative work)
    driver:    out = concat_k out_k;  the failure policy on the concatenated statuses,
               so a SolverError names global batch indices.

Backward, from output gradients ``ḡ``:

    worker k:  θ̄_k = re-solve θ[s_k : s_k + c_k], then the adjoint at that solution
    driver:    θ̄ = concat_k θ̄_k (batched parameters);  Σ_k θ̄_k (unbatched: summed,
               as over the batch)

The forward's derivative state (diffcp's closures, which cannot be pickled, or the QP
backend's factorizations) never travels. It is **kept on the worker that made it**, in a
per-process store addressed by a key the driver holds, and the chunk's backward is sent
to that worker (Dask: a soft placement, ``workers=[address], allow_other_workers=True``).
On engines that cannot address a worker process (a plain executor; Ray, whose tasks go
to any worker) nothing is kept, and when a Dask backward lands elsewhere (its worker died,
its state was evicted) it **recomputes**: it re-solves the
chunk, and a cold solve is deterministic, so it linearizes at the forward's own solution
(the JAX adapter's backward does the same). Either way the gradients are the same.

The store cannot leak: a backward takes its state out, and the store keeps at most
:data:`KEPT_PER_PROCESS` states (least recent dropped first), so forwards whose backward
never comes (a gradient that was not needed after all) are evicted by later calls. What
travels per chunk is its parameter values (and, backward, its output gradients).
"""

from __future__ import annotations

import math
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from cvxlayers import status as st
from cvxlayers.distributed.engines import ChunkFailure
from cvxlayers.errors import SolverError

#: Chunks per worker when the size is chosen automatically: several, so that a slow chunk
#: or a retried one does not leave the other workers idle at the end.
CHUNKS_PER_WORKER = 4
#: Forward states one worker process keeps for their backward; a backward whose state
#: was dropped recomputes it. Four chunks per worker by default: room for two calls.
KEPT_PER_PROCESS = 8
_KEPT: OrderedDict = OrderedDict()
_KEPT_LOCK = threading.Lock()
#: Options the worker's own call must not see (the driver consumed them).
_DRIVER_KEYS = ("executor", "chunk_size", "warm_start")


@dataclass
class DistributedState:
    """What a distributed backward needs: the call's values and options, nothing solved."""

    values: list
    batched: tuple
    size: int
    solver_args: dict
    chunks: list     # (start, stop) per chunk
    engine: object
    keys: list = None    # per chunk, the key of its state on its worker (or None)
    where: list = None   # per chunk, the worker that holds it, where the engine says


def chunk_bounds(size: int, chunk_size: int | None, workers: int) -> list:
    """``[(start, stop), ...]`` covering ``range(size)``; ``chunk_size`` elements each
    (the last may be shorter), or ``ceil(size / (4 · workers))`` when ``None``."""
    if chunk_size is None:
        chunk_size = max(1, math.ceil(size / (CHUNKS_PER_WORKER * max(1, workers))))
    return [(start, min(start + chunk_size, size)) for start in range(0, size, chunk_size)]


def checked_chunk_size(value, name: str = "chunk_size"):
    if value is None:
        return None
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer or None; received {value!r}.")
    return int(value)


def worker_args(solver_args: dict) -> dict:
    """The options a chunk runs with on its worker: the call's, less the driver's keys,
    one thread per chunk (the engine's workers are the parallelism)."""
    args = {k: v for k, v in solver_args.items() if k not in _DRIVER_KEYS}
    args.setdefault("n_jobs_forward", 1)
    args.setdefault("n_jobs_backward", 1)
    return args


def _slice(values, batched, start, stop):
    return [v[start:stop] if b else v for v, b in zip(values, batched)]


def _worker_address():
    """The Dask worker running this task, or ``None`` elsewhere."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return None


def forward_chunk(core, values, solver_args, key=None):
    """On a worker: one chunk's outputs, statuses, solver messages, iterations, and the
    address it kept the chunk's state at (when ``key``: a gradient will be asked for)."""
    outputs, stats, messages, state = core.solve_chunk(values, solver_args,
                                                       need_grad=key is not None)
    where = None
    if state is not None:
        with _KEPT_LOCK:
            _KEPT[key] = state
            while len(_KEPT) > KEPT_PER_PROCESS:
                _KEPT.popitem(last=False)
        where = _worker_address()
    return outputs, list(stats.statuses), messages, stats.iterations, where


def backward_chunk(core, values, solver_args, grads, key=None):
    """On a worker: one chunk's parameter gradients, from the state its forward kept
    here, or by re-solving the chunk when it is not here."""
    with _KEPT_LOCK:
        state = _KEPT.pop(key, None) if key is not None else None
    if state is not None:
        return core.backward(state, grads)
    return core.backward_from_residuals(values, (), [grads], solver_args)[0]


def kept_states() -> int:
    """How many forward states this process keeps (for tests and memory checks)."""
    return len(_KEPT)


def _raise_failed_chunks(results, chunks, engine, size, what):
    failed = [(bounds, r.exc) for bounds, r in zip(chunks, results)
              if isinstance(r, ChunkFailure)]
    if not failed:
        return
    indices = [i for (start, stop), _ in failed for i in range(start, stop)]
    lines = [f"{len(failed)} of {len(chunks)} chunk(s) of the {what} failed on the "
             f"{engine.name} engine:"]
    for (start, stop), exc in failed[:5]:
        lines.append(f"  batch elements {start}..{stop - 1}: {type(exc).__name__}: {exc}")
    statuses = [st.FAILED if i in set(indices) else st.OPTIMAL for i in range(size)]
    raise SolverError("\n".join(lines), statuses, indices,
                      {i: "chunk failed" for i in indices}) from failed[0][1]


def forward(core, engine, batch, solver_args, chunk_size, need_grad=True):
    """The distributed forward: outputs ``(B, *shape)``, the :class:`SolveStats` fields
    and the state for :func:`backward`."""
    chunks = chunk_bounds(batch.size, chunk_size, engine.workers())
    args = worker_args(solver_args)
    call = uuid.uuid4().hex
    keep = need_grad and engine.addressable  # elsewhere the backward would rarely find it
    keys = [f"{call}:{k}" if keep else None for k in range(len(chunks))]
    tasks = [(_slice(batch.values, batch.batched, a, b), args, key)
             for (a, b), key in zip(chunks, keys)]
    results = engine.map(core, forward_chunk, tasks)
    _raise_failed_chunks(results, chunks, engine, batch.size, "forward")
    outputs = [np.concatenate(parts) for parts in zip(*(r[0] for r in results))]
    statuses, messages, iterations = [], {}, []
    for (start, _), (_, chunk_statuses, chunk_messages, its, _) in zip(chunks, results):
        statuses.extend(chunk_statuses)
        messages.update({start + i: m for i, m in chunk_messages.items()})
        iterations.append(np.zeros(len(chunk_statuses)) if its is None else np.asarray(its))
    state = DistributedState(list(batch.values), batch.batched, batch.size, solver_args,
                             chunks, engine, keys, [r[4] for r in results])
    return outputs, statuses, messages, np.concatenate(iterations), state


def make_state(engine, batch, solver_args, chunk_size) -> DistributedState:
    """A backward's state without a forward (for adapters whose backward re-solves)."""
    return DistributedState(list(batch.values), batch.batched, batch.size, solver_args,
                            chunk_bounds(batch.size, chunk_size, engine.workers()), engine)


def backward(core, state: DistributedState, grads) -> list:
    """The distributed backward: each chunk's gradients, concatenated for batched
    parameters and summed for unbatched ones."""
    args = worker_args(state.solver_args)
    keys = state.keys or [None] * len(state.chunks)
    tasks = []
    for (start, stop), key in zip(state.chunks, keys):
        chunk_grads = [None if g is None else np.asarray(g)[start:stop] for g in grads]
        tasks.append((_slice(state.values, state.batched, start, stop), args, chunk_grads,
                      key))
    state.keys = None  # a second backward of the same forward recomputes
    results = state.engine.map(core, backward_chunk, tasks, where=state.where)
    _raise_failed_chunks(results, state.chunks, state.engine, state.size, "backward")
    return [np.concatenate(parts) if b else np.sum(parts, axis=0)
            for b, parts in zip(state.batched, zip(*results))]
