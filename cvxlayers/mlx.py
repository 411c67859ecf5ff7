"""MLX adapter: a callable layer on ``mlx.core`` arrays, differentiable with ``mx.grad``.

Thin by design, like the other adapters: it converts arrays to float64 NumPy, calls the
framework-free core, and converts back to the inputs' floating dtype; the gradient is an
``mx.custom_function`` whose ``vjp`` calls the core's backward. No validation and no maths
live here: bad shapes, NaNs and failed solves raise the core's errors, naming the parameter.

MLX evaluates lazily and its transformations run the function on concrete arrays, so the
solve runs when the layer is called (eagerly, or inside ``mx.grad``/``mx.vjp``/
``mx.value_and_grad``). MLX gives a function no way to know whether a gradient will be
asked for, so every call keeps the backward's state in its own ``custom_function``
(:meth:`LayerCore.forward_keeping_state`), freed with it, and the solver's derivative work
is deferred to the first ``vjp``: a call without gradient costs its solve, one with a
gradient what the PyTorch layer's does. Nothing is kept between calls, and the layer
pickles. ``mx.compile`` and ``mx.vmap`` trace with
placeholder arrays that have no values, which a host solver cannot take; the layer says so.
Forward mode (``mx.jvp``) raises NotImplementedError rather than MLX's silent zero tangents.

Dtypes: MLX on the CPU has float32 (its default), float16, bfloat16 and float64; the
outputs and gradients take the inputs' promoted floating dtype, and the solve runs in
float64 whatever it is.

Example:
    >>> layer = CvxpyLayer(problem, parameters=[A, b], variables=[x])
    >>> x_star, = layer(A_batch, b_batch)                  # (B, m, n), (B, m) -> (B, n)
    >>> dA, db = mx.grad(lambda A, b: layer(A, b)[0].sum(), argnums=(0, 1))(A_batch, b_batch)
"""

from __future__ import annotations

from typing import Sequence

import mlx.core as mx
import numpy as np

from cvxlayers.core import LayerCore, with_warm_start

__all__ = ["CvxpyLayer"]

_TRANSFORM_MESSAGE = ("Attempting to eval an array during function transformations")


def _is_floating(value) -> bool:
    return isinstance(value, mx.array) and mx.issubdtype(value.dtype, mx.floating)


def _output_dtype(params: Sequence):
    """The promoted floating dtype of the MLX inputs; float32 (MLX's default) if none is
    floating."""
    floats = [p.dtype for p in params if _is_floating(p)]
    return mx.result_type(*floats) if floats else mx.float32


def _to_numpy(value):
    """A float64 NumPy array for an MLX array; other values go to the core's validation as
    they are (so that ``None`` or a string is refused naming the parameter). bfloat16 has
    no NumPy dtype: it is widened in MLX first."""
    if not isinstance(value, mx.array):
        return value
    if value.dtype == mx.bfloat16:
        value = value.astype(mx.float32)
    if mx.issubdtype(value.dtype, mx.complexfloating):  # the core rejects it by name
        return np.asarray(value)
    return np.asarray(value, dtype=np.float64)


def _to_mlx(array: np.ndarray, dtype) -> mx.array:
    # mx.array of a float64 NumPy array would make float32: the dtype is always given.
    return mx.array(np.asarray(array), dtype=dtype)


def _host_values(params: Sequence) -> list:
    try:
        return [_to_numpy(p) for p in params]
    except ValueError as exc:
        if _TRANSFORM_MESSAGE not in str(exc):
            raise
        raise ValueError(
            "cvxlayers.mlx.CvxpyLayer cannot run under mx.compile or mx.vmap: the solver runs "
            "on the host and needs the parameters' values, which those transformations do not "
            "have while they trace. Call the layer outside mx.compile (compile the rest of "
            "the model around it), and pass a batch (a leading batch dimension) instead of "
            "mx.vmap.") from None


class CvxpyLayer:
    """A differentiable convex optimization layer for MLX.

    The arguments ``problem``, ``parameters``, ``variables``, ``gp``, ``solver``, ``n_jobs``,
    ``mode``, ``on_failure``, ``solver_args``, ``gradient``, ``gradient_args`` and
    ``warm_start`` are those of :class:`cvxlayers.torch.CvxpyLayer` (``solver`` may also be
    a custom solver object: see the custom-solvers guide).

    Call:
        ``layer(*params, solver_args=None, warm_start=None)``: one ``mx.array`` (or
        array-like) per parameter, of its declared shape or with one extra leading batch
        dimension (unbatched ones broadcast, and their gradients are summed over the batch).
        Returns a tuple of ``mx.array``, one per requested variable, in the inputs' promoted
        floating dtype (float32 if none is floating). Differentiable with ``mx.grad``,
        ``mx.value_and_grad`` and ``mx.vjp`` with respect to floating parameters; integer
        parameters get zero gradients of their own dtype.
    """

    def __init__(self, problem, parameters, variables, gp: bool = False, solver="SCS",
                 n_jobs: int | None = None, mode: str = "lsqr", on_failure: str = "raise",
                 solver_args: dict | None = None, gradient: str = "implicit",
                 gradient_args: dict | None = None, warm_start: bool = False):
        self.core = LayerCore(problem, parameters, variables, gp=gp, solver=solver,
                              n_jobs=n_jobs, mode=mode, on_failure=on_failure,
                              solver_args=solver_args, gradient=gradient,
                              gradient_args=gradient_args, warm_start=warm_start)

    def __call__(self, *params, solver_args: dict | None = None,
                 warm_start: bool | None = None):
        solver_args = with_warm_start(solver_args, warm_start)
        dtype = _output_dtype(params)
        arrays = [p for p in params if isinstance(p, mx.array)]
        if len(arrays) != len(params) or not params:
            # Non-MLX values have no gradient: a plain call, the core validates them.
            outputs, _ = self.core.forward(_host_values(params), solver_args, need_grad=False)
            return tuple(_to_mlx(o, dtype) for o in outputs)
        return tuple(self._solve_function(solver_args, dtype)(*params))

    def _solve_function(self, solver_args, dtype):
        """The solution map as an ``mx.custom_function`` for one call's options. Made per
        call: MLX keeps nothing compiled per function object, so this costs microseconds."""
        core = self.core
        # The forward's host copies of the parameters, for this call's vjp: converting an
        # array inside an MLX transformation synchronizes with MLX's stream (tens of µs).
        host = {}

        @mx.custom_function
        def solve(*params):
            host["values"] = _host_values(params)
            outputs, host["state"] = core.forward_keeping_state(host["values"], solver_args)
            return tuple(_to_mlx(o, dtype) for o in outputs)

        @solve.vjp
        def solve_vjp(primals, cotangents, outputs):
            if isinstance(primals, mx.array):  # MLX passes a single primal unwrapped
                primals = (primals,)
            if isinstance(cotangents, mx.array):
                cotangents = (cotangents,)
            grads = [_to_numpy(g) for g in cotangents]
            if host.get("state") is not None:
                param_grads = core.backward(host["state"], grads)
            else:  # a distributed engine's call (no state kept), or a vjp without forward
                values = host.get("values") or _host_values(primals)
                param_grads, = core.backward_from_residuals(values, (), [grads], solver_args)
            # Integers have no tangent space: zeros, in the primal's dtype as MLX's own
            # gradients are (MLX would otherwise round the real derivative to an integer).
            return tuple(_to_mlx(g, p.dtype) if _is_floating(p)
                         else mx.zeros(p.shape, p.dtype) for g, p in zip(param_grads, primals))

        @solve.jvp
        def solve_jvp(primals, tangents):
            # Without this MLX would push tangents through the host solve and return zeros.
            raise NotImplementedError(
                "cvxlayers.mlx.CvxpyLayer provides reverse-mode gradients only (mx.grad, "
                "mx.value_and_grad, mx.vjp); forward mode (mx.jvp) is not defined.")

        return solve

    def __repr__(self) -> str:
        return f"CvxpyLayer({self.core.summary()})"
