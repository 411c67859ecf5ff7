"""JAX adapter: a callable layer that works eagerly and under ``jit``, ``grad`` and ``vmap``.

The solve runs on the host as a ``jax.pure_callback``, so it can sit inside a compiled
training step; the gradient is a ``jax.custom_vjp`` whose backward is a second callback
into the core. The primal function (no gradient requested) asks the core for no
derivative work; the forward used by ``grad`` keeps the solver's state in a bounded
store under a token that the backward receives as a residual.

Under ``vmap`` the callbacks receive every argument with the mapped axes in front
(``vmap_method="broadcast_all"``); they fold those axes and the call's own batch axis into
one batch, solve it in one core call (one thread pool, one sparse product), and unfold
the results — so ``vmap`` over a parameter equals the batched call with it batched.

Example:
    >>> layer = CvxpyLayer(problem, parameters=[A, b], variables=[x])
    >>> x_star, = jax.jit(layer)(A_batch, b_batch)          # (B, m, n), (B, m) -> (B, n)
    >>> grads = jax.grad(lambda A, b: layer(A, b)[0].sum(), argnums=(0, 1))(A_batch, b_batch)
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cvxlayers.core import LayerCore
from cvxlayers.parameters import as_real_array
from cvxlayers.state_store import StateStore

__all__ = ["CvxpyLayer"]


def _output_dtype(params: Sequence) -> np.dtype:
    """The promoted floating dtype of the inputs; JAX's default float if none is floating
    (float32, or float64 with ``jax_enable_x64``)."""
    floats = [p.dtype for p in params if jnp.issubdtype(p.dtype, jnp.floating)]
    return np.dtype(jnp.result_type(*floats) if floats else jnp.zeros(()).dtype)


def _as_jax_arrays(params: Sequence, specs) -> tuple:
    """JAX arrays for the call's values. A value that is not already one is checked first,
    so that ``None`` or a string gets the core's error naming the parameter rather than
    ``jnp.asarray``'s."""
    if len(params) == len(specs):
        for value, spec in zip(params, specs):
            if not isinstance(value, jax.Array):
                as_real_array(value, spec)
    return tuple(jnp.asarray(p) for p in params)


class _Folding:
    """Folds the mapped (vmap) axes V and the call's batch axis into one batch, and back.

    Every callback argument arrives as ``V + traced shape``. A parameter traced batched is
    ``V + (B,) + shape``; one traced unbatched is broadcast over B when the call is batched.
    """

    def __init__(self, specs, traced_shapes, arrays):
        self.batched = [len(t) == len(s.shape) + 1 for s, t in zip(specs, traced_shapes)]
        self.specs = specs
        first = arrays[0]
        self.lead = tuple(first.shape[:first.ndim - len(traced_shapes[0])])  # V
        sizes = [t[0] for t, b in zip(traced_shapes, self.batched) if b]
        self.batch = (sizes[0],) if sizes else ()                             # (B,) or ()

    def params(self, arrays) -> list:
        if not self.lead:
            return list(arrays)
        folded = []
        for array, spec, batched in zip(arrays, self.specs, self.batched):
            if self.batch and not batched:
                array = np.broadcast_to(np.expand_dims(array, len(self.lead)),
                                        self.lead + self.batch + spec.shape)
            folded.append(np.reshape(array, (-1,) + spec.shape))
        return folded

    def outputs(self, arrays) -> list:
        if not self.lead:
            return list(arrays)
        return [np.reshape(a, self.lead + self.batch + a.shape[1:]) for a in arrays]

    def output_grads(self, grads) -> list:
        if not self.lead:
            return list(grads)
        return [np.reshape(g, (-1,) + g.shape[len(self.lead) + len(self.batch):]) for g in grads]

    def param_grads(self, grads) -> list:
        if not self.lead:
            return list(grads)
        unfolded = []
        for grad, spec, batched in zip(grads, self.specs, self.batched):
            grad = np.reshape(grad, self.lead + self.batch + spec.shape)
            if self.batch and not batched:  # broadcast over B inside each mapped call
                grad = grad.sum(axis=len(self.lead))
            unfolded.append(grad)
        return unfolded


class CvxpyLayer:
    """A differentiable convex optimization layer for JAX.

    The arguments ``problem``, ``parameters``, ``variables``, ``gp``, ``solver``, ``n_jobs``,
    ``mode``, ``on_failure`` and ``solver_args`` are those of
    :class:`cvxlayers.torch.CvxpyLayer`.

    Args:
        state_capacity: how many forward states wait for their backward at most.

    Call:
        ``layer(*params, solver_args=None)`` returns a tuple of ``jax.Array``, one per
        requested variable, in the inputs' floating dtype. Shapes are checked when traced;
        values (NaN, signs) when the solve runs: a plain eager call raises the core's own
        errors, while under a transformation they surface inside JAX's callback error.
    """

    def __init__(self, problem, parameters, variables, gp: bool = False, solver="SCS",
                 n_jobs: int | None = None, mode: str = "lsqr", on_failure: str = "raise",
                 solver_args: dict | None = None, *, state_capacity: int = 64):
        self.core = LayerCore(problem, parameters, variables, gp=gp, solver=solver,
                              n_jobs=n_jobs, mode=mode, on_failure=on_failure,
                              solver_args=solver_args)
        self._states = StateStore(state_capacity)

    def __call__(self, *params, solver_args: dict | None = None):
        params = _as_jax_arrays(params, self.core.parameter_specs)
        traced_shapes = [tuple(p.shape) for p in params]
        out_shapes = self.core.output_shapes(traced_shapes)  # shape errors at trace time
        dtype = _output_dtype(params)
        if not any(isinstance(p, jax.core.Tracer) for p in params):
            # A plain eager call: no transformation can ask for a gradient, and calling the
            # core directly lets its errors (SolverError with its statuses) reach the caller.
            outputs, _ = self.core.forward([np.asarray(p) for p in params], solver_args,
                                           need_grad=False)
            return tuple(jnp.asarray(o, dtype=dtype) for o in outputs)
        return self._solve_function(solver_args, dtype, traced_shapes, out_shapes)(*params)

    def _solve_function(self, solver_args, dtype, traced_shapes, out_shapes):
        core, store, specs = self.core, self._states, self.core.parameter_specs
        out_structs = tuple(jax.ShapeDtypeStruct(s, dtype) for s in out_shapes)
        token_struct = jax.ShapeDtypeStruct((), np.int32)

        def forward_host(need_grad):
            def run(*arrays):
                arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
                folding = _Folding(specs, traced_shapes, arrays)
                outputs, state = core.forward(folding.params(arrays), solver_args, need_grad)
                outputs = [np.asarray(o, dtype=dtype) for o in folding.outputs(outputs)]
                if not need_grad:
                    return tuple(outputs)
                token = np.full(folding.lead, store.put((state, folding)), dtype=np.int32)
                return tuple(outputs), token
            return run

        def backward_host(param_dtypes):
            def run(token, *grads):
                state, folding = store.get(int(np.ravel(token)[0]))
                grads = folding.output_grads([np.asarray(g, dtype=np.float64) for g in grads])
                param_grads = folding.param_grads(core.backward(state, grads))
                return tuple(np.asarray(g, dtype=d) for g, d in zip(param_grads, param_dtypes))
            return run

        @jax.custom_vjp
        def solve(*params):
            return jax.pure_callback(forward_host(False), out_structs, *params,
                                     vmap_method="broadcast_all")

        def solve_fwd(*params):
            core.check_differentiable(solver_args)  # at trace time, not in the callback
            outputs, token = jax.pure_callback(forward_host(True), (out_structs, token_struct),
                                               *params, vmap_method="broadcast_all")
            return outputs, (token, params)

        def solve_bwd(residuals, grads):
            token, params = residuals
            floating = [jnp.issubdtype(p.dtype, jnp.floating) for p in params]
            structs = tuple(jax.ShapeDtypeStruct(p.shape, p.dtype if f else dtype)
                            for p, f in zip(params, floating))
            param_grads = jax.pure_callback(backward_host([s.dtype for s in structs]), structs,
                                            token, *grads, vmap_method="broadcast_all")
            # Integer parameters have no tangent space: their cotangent is float0.
            return tuple(g if f else np.zeros(p.shape, dtype=jax.dtypes.float0)
                         for g, p, f in zip(param_grads, params, floating))

        solve.defvjp(solve_fwd, solve_bwd)
        return solve

    def __repr__(self) -> str:
        return f"CvxpyLayer({self.core.summary()})"
