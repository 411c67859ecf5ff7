"""JAX adapter: a callable layer that works eagerly and under ``jit``, ``grad`` and ``vmap``.

The solve runs on the host as a ``jax.pure_callback``, so it can sit inside a compiled
training step; the gradient is a ``jax.custom_vjp`` whose backward is a second callback
into the core. No derivative work runs outside ``grad``/``vjp``. The custom_vjp's
residuals are the parameter values themselves (plus whatever arrays
``LayerCore.forward_residuals`` returns): the layer keeps no state between calls, so a
forward's state lives exactly as long as JAX keeps a gradient able to ask for it, any
number of calls may precede one backward (``lax.scan``, long eager loops), and the
layer pickles. The backward re-solves to linearize (one extra solve per backward).

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

import warnings
from collections import OrderedDict
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cvxlayers.core import LayerCore, with_warm_start
from cvxlayers.parameters import as_real_array

__all__ = ["CvxpyLayer"]


def _output_dtype(params: Sequence) -> np.dtype:
    """The promoted floating dtype of the inputs; JAX's default float if none is floating
    (float32, or float64 with ``jax_enable_x64``)."""
    floats = [p.dtype for p in params if jnp.issubdtype(p.dtype, jnp.floating)]
    return np.dtype(jnp.result_type(*floats) if floats else jnp.zeros(()).dtype)


def _is_floating(value) -> bool:
    """Whether ``value`` has a JAX floating dtype, ml_dtypes' bfloat16 included (NumPy
    itself sees that one as an opaque kind 'V')."""
    dtype = getattr(value, "dtype", None)
    try:
        return dtype is not None and jnp.issubdtype(dtype, jnp.floating)
    except TypeError:
        return False


def _as_jax_arrays(params: Sequence, specs) -> tuple:
    """JAX arrays for the call's values. A value that is not already one is checked first,
    so that ``None`` or a string gets the core's error naming the parameter rather than
    ``jnp.asarray``'s; floating values of any width (bfloat16 too) pass."""
    if len(params) == len(specs):
        for value, spec in zip(params, specs):
            if not isinstance(value, jax.Array) and not _is_floating(value):
                as_real_array(value, spec)
    return tuple(jnp.asarray(p) for p in params)


def _host(array) -> np.ndarray:
    """A NumPy array for the core: floats narrower than float32 (bfloat16, float16) are
    widened, since the core's check knows only NumPy's own kinds and solves in float64."""
    if _is_floating(array) and jnp.dtype(array.dtype).itemsize < 4:
        array = jnp.asarray(array).astype(jnp.float32)
    return np.asarray(array)


def _constant_over_lead(array: np.ndarray, n_lead: int) -> bool:
    """Whether every slice of ``array`` along its first ``n_lead`` axes is the same: what
    ``broadcast_all`` makes of a residual that a Jacobian's cotangent rows share."""
    flat = np.reshape(array, (-1,) + array.shape[n_lead:])
    return bool(np.all(flat == flat[:1]))


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


def _options_key(solver_args) -> str:
    """A hashable stand-in for a call's ``solver_args`` (values may be unhashable)."""
    if not solver_args:
        return ""
    return repr(sorted(solver_args.items(), key=lambda item: str(item[0])))


class CvxpyLayer:
    """A differentiable convex optimization layer for JAX.

    The arguments ``problem``, ``parameters``, ``variables``, ``gp``, ``solver``, ``n_jobs``,
    ``mode``, ``on_failure``, ``solver_args``, ``gradient``, ``gradient_args``, ``executor`` and
    ``chunk_size`` are those of :class:`cvxlayers.torch.CvxpyLayer`; ``state_capacity`` is deprecated and ignored (the
    layer keeps no forward states).

    ``warm_start`` (constructor default, or per call) is that of the PyTorch layer: eagerly
    and under ``jit``/``grad``/``vmap`` alike (a Python bool, static), since a start
    changes where the host's solve begins, never its answer beyond the solver's tolerance.

    Call:
        ``layer(*params, solver_args=None, warm_start=None)`` returns a tuple of
        ``jax.Array``, one per requested variable, in the inputs' floating dtype (bfloat16
        and float16 included; the solve runs in float64). Shapes are checked when traced;
        values (NaN, signs) when the solve runs: a plain eager call raises the core's own errors, while under a
        transformation they surface inside JAX's callback error.

    The layer holds no per-call state; it pickles and deep-copies before and after use.
    """

    def __init__(self, problem, parameters, variables, gp: bool = False, solver="SCS",
                 n_jobs: int | None = None, mode: str = "lsqr", on_failure: str = "raise",
                 solver_args: dict | None = None, gradient: str = "implicit",
                 gradient_args: dict | None = None, warm_start: bool = False, *,
                 state_capacity=None, executor=None, chunk_size: int | None = None):
        if state_capacity is not None:
            warnings.warn("`state_capacity` has no effect any more: the layer keeps no forward "
                          "states.", DeprecationWarning, stacklevel=2)
        self.core = LayerCore(problem, parameters, variables, gp=gp, solver=solver,
                              n_jobs=n_jobs, mode=mode, on_failure=on_failure,
                              solver_args=solver_args, gradient=gradient,
                              gradient_args=gradient_args, warm_start=warm_start,
                              executor=executor, chunk_size=chunk_size)
        self._solve_functions = OrderedDict()

    #: How many traced signatures keep their custom_vjp function (least recently used go).
    _FUNCTION_CACHE_SIZE = 32

    def __getstate__(self):
        # The cached functions are closures (not picklable) and are rebuilt on demand.
        state = dict(self.__dict__)
        state["_solve_functions"] = OrderedDict()
        return state

    def _cached_solve_function(self, params, solver_args, dtype, traced_shapes, out_shapes):
        """One custom_vjp function per call signature. A fresh function per call would be a
        new callback to JAX every time, and JAX compiles and caches per callback: eager
        ``jax.grad`` loops recompiled on every call and grew by about 3 MiB per call."""
        key = (_options_key(solver_args), np.dtype(dtype).str, tuple(traced_shapes),
               tuple(str(p.dtype) for p in params))
        functions = self._solve_functions
        solve = functions.get(key)
        if solve is None:
            solve = self._solve_function(solver_args, dtype, traced_shapes, out_shapes)
            functions[key] = solve
            if len(functions) > self._FUNCTION_CACHE_SIZE:
                functions.popitem(last=False)
        else:
            functions.move_to_end(key)
        return solve

    def __call__(self, *params, solver_args: dict | None = None,
                 warm_start: bool | None = None):
        solver_args = with_warm_start(solver_args, warm_start)
        params = _as_jax_arrays(params, self.core.parameter_specs)
        traced_shapes = [tuple(p.shape) for p in params]
        out_shapes = self.core.output_shapes(traced_shapes)  # shape errors at trace time
        dtype = _output_dtype(params)
        if not any(isinstance(p, jax.core.Tracer) for p in params):
            # A plain eager call: no transformation can ask for a gradient, and calling the
            # core directly lets its errors (SolverError with its statuses) reach the caller.
            outputs, _ = self.core.forward([_host(p) for p in params], solver_args,
                                           need_grad=False)
            return tuple(jnp.asarray(o, dtype=dtype) for o in outputs)
        return self._cached_solve_function(params, solver_args, dtype, traced_shapes,
                                           out_shapes)(*params)

    def _solve_function(self, solver_args, dtype, traced_shapes, out_shapes):
        core, specs = self.core, self.core.parameter_specs
        out_structs = tuple(jax.ShapeDtypeStruct(s, dtype) for s in out_shapes)
        n_params = len(specs)

        def forward_host(need_grad):
            def run(*arrays):
                arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
                folding = _Folding(specs, traced_shapes, arrays)
                if need_grad:  # the residuals are the values: no state is kept
                    outputs, _ = core.forward_residuals(folding.params(arrays), solver_args)
                else:
                    outputs, _ = core.forward(folding.params(arrays), solver_args, False)
                return tuple(np.asarray(o, dtype=dtype) for o in folding.outputs(outputs))
            return run

        def backward_host(param_dtypes):
            def run(*arrays):
                params = [np.asarray(a, dtype=np.float64) for a in arrays[:n_params]]
                grads = [np.asarray(g, dtype=np.float64) for g in arrays[n_params:]]
                folding = _Folding(specs, traced_shapes, params)
                n_lead = len(folding.lead)
                if n_lead and all(_constant_over_lead(p, n_lead) for p in params):
                    # Rows of a Jacobian (jacrev, vmap of grad): the cotangents carry mapped
                    # axes that the values were only broadcast over. One solve serves all.
                    base = [p[(0,) * n_lead] for p in params]
                    rows = [np.reshape(g, (-1,) + g.shape[n_lead:]) for g in grads]
                    sets = core.backward_from_residuals(
                        base, (), [[g[i] for g in rows] for i in range(rows[0].shape[0])],
                        solver_args)
                    param_grads = [np.reshape(np.stack(gs), folding.lead + p.shape)
                                   for gs, p in zip(zip(*sets), base)]
                else:
                    param_grads, = core.backward_from_residuals(
                        folding.params(params), (), [folding.output_grads(grads)], solver_args)
                    param_grads = folding.param_grads(param_grads)
                return tuple(np.asarray(g, dtype=d) for g, d in zip(param_grads, param_dtypes))
            return run

        # The host callables are made once per function: JAX compiles per callback object.
        solve_host, solve_fwd_host, backward_hosts = forward_host(False), forward_host(True), {}

        @jax.custom_vjp
        def solve(*params):
            return jax.pure_callback(solve_host, out_structs, *params,
                                     vmap_method="broadcast_all")

        def solve_fwd(*params):
            core.check_differentiable(solver_args)  # at trace time, not in the callback
            outputs = jax.pure_callback(solve_fwd_host, out_structs, *params,
                                        vmap_method="broadcast_all")
            return outputs, params

        def solve_bwd(params, grads):
            floating = [jnp.issubdtype(p.dtype, jnp.floating) for p in params]
            structs = tuple(jax.ShapeDtypeStruct(p.shape, p.dtype if f else dtype)
                            for p, f in zip(params, floating))
            dtypes = tuple(s.dtype for s in structs)
            if dtypes not in backward_hosts:
                backward_hosts[dtypes] = backward_host(list(dtypes))
            param_grads = jax.pure_callback(backward_hosts[dtypes], structs,
                                            *params, *grads, vmap_method="broadcast_all")
            # Integer parameters have no tangent space: their cotangent is float0.
            return tuple(g if f else np.zeros(p.shape, dtype=jax.dtypes.float0)
                         for g, p, f in zip(param_grads, params, floating))

        solve.defvjp(solve_fwd, solve_bwd)
        return solve

    def __repr__(self) -> str:
        return f"CvxpyLayer({self.core.summary()})"
