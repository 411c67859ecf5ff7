"""A batch split into chunks that run the whole layer corridor on an engine's workers.

Forward, for a batch of ``B`` elements cut into chunks ``[s_k, s_k + c_k)``:

    worker k:  (out_k, statuses_k) = solve(θ[s_k : s_k + c_k])     (no derivative work)
    driver:    out = concat_k out_k;  the failure policy on the concatenated statuses,
               so a SolverError names global batch indices.

Backward, from output gradients ``ḡ``:

    worker k:  θ̄_k = re-solve θ[s_k : s_k + c_k], then the adjoint at that solution
    driver:    θ̄ = concat_k θ̄_k (batched parameters);  Σ_k θ̄_k (unbatched: summed,
               as over the batch)

The backward *recomputes* rather than keeping the forward's derivative state on the
worker: diffcp's derivative closures cannot be pickled, a worker-held state would tie
each backward to the worker (and process) that ran the forward and live there until
collected, and a worker that died between forward and backward would lose it. A cold
solve is deterministic, so the re-solve linearizes at the forward's own solution (the
JAX adapter's backward does the same). What travels per chunk is its parameter values
(and, backward, its output gradients); the driver keeps no solver state at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cvxlayers import status as st
from cvxlayers.distributed.engines import ChunkFailure
from cvxlayers.errors import SolverError

#: Chunks per worker when the size is chosen automatically: several, so that a slow chunk
#: or a retried one does not leave the other workers idle at the end.
CHUNKS_PER_WORKER = 4
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


def forward_chunk(core, values, solver_args):
    """On a worker: one chunk's outputs, statuses, solver messages and iterations."""
    outputs, stats, messages = core.solve_chunk(values, solver_args)
    return outputs, list(stats.statuses), messages, stats.iterations


def backward_chunk(core, values, solver_args, grads):
    """On a worker: one chunk's parameter gradients (re-solve, then the adjoint)."""
    return core.backward_from_residuals(values, (), [grads], solver_args)[0]


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


def forward(core, engine, batch, solver_args, chunk_size, warn=True):
    """The distributed forward: outputs ``(B, *shape)``, the :class:`SolveStats` fields
    and the state for :func:`backward`."""
    chunks = chunk_bounds(batch.size, chunk_size, engine.workers())
    args = worker_args(solver_args)
    tasks = [(_slice(batch.values, batch.batched, a, b), args) for a, b in chunks]
    results = engine.map(core, forward_chunk, tasks)
    _raise_failed_chunks(results, chunks, engine, batch.size, "forward")
    outputs = [np.concatenate(parts) for parts in zip(*(r[0] for r in results))]
    statuses, messages, iterations = [], {}, []
    for (start, _), (_, chunk_statuses, chunk_messages, its) in zip(chunks, results):
        statuses.extend(chunk_statuses)
        messages.update({start + i: m for i, m in chunk_messages.items()})
        iterations.append(np.zeros(len(chunk_statuses)) if its is None else np.asarray(its))
    state = DistributedState(list(batch.values), batch.batched, batch.size, solver_args,
                             chunks, engine)
    return outputs, statuses, messages, np.concatenate(iterations), state


def make_state(engine, batch, solver_args, chunk_size) -> DistributedState:
    """A backward's state without a forward (for adapters whose backward re-solves)."""
    return DistributedState(list(batch.values), batch.batched, batch.size, solver_args,
                            chunk_bounds(batch.size, chunk_size, engine.workers()), engine)


def backward(core, state: DistributedState, grads) -> list:
    """The distributed backward: each chunk's gradients, concatenated for batched
    parameters and summed for unbatched ones."""
    args = worker_args(state.solver_args)
    tasks = []
    for start, stop in state.chunks:
        chunk_grads = [None if g is None else np.asarray(g)[start:stop] for g in grads]
        tasks.append((_slice(state.values, state.batched, start, stop), args, chunk_grads))
    results = state.engine.map(core, backward_chunk, tasks)
    _raise_failed_chunks(results, state.chunks, state.engine, state.size, "backward")
    return [np.concatenate(parts) if b else np.sum(parts, axis=0)
            for b, parts in zip(state.batched, zip(*results))]
