"""TensorFlow adapter: a ``keras.layers.Layer`` whose call solves the problem.

Thin by design: it converts tensors to float64 NumPy arrays, calls the framework-free
core, and converts back to the inputs' floating dtype; the gradient is registered with
``tf.custom_gradient``. Eagerly the core is called directly, so its exceptions reach the
caller unchanged; in a graph (``tf.function``, ``model.fit``) it runs as a
``tf.numpy_function`` op, and TensorFlow reports a core error as an ``InvalidArgumentError``
(or ``UnknownError``) whose message contains the core's message.

The backward pass needs what the forward solve computed (the cone solutions and the
derivative's factorization). The forward op therefore returns, besides the outputs, an
integer token under which the layer keeps that state until backward looks it up; the
layer keeps the states of its ``state_capacity`` most recently used calls (64 by default).

Example:
    >>> layer = CvxpyLayer(problem, parameters=[A, b], variables=[x])
    >>> with tf.GradientTape() as tape:
    ...     tape.watch(b_batch)
    ...     x_star, = layer(A_batch, b_batch)    # (B, m, n), (B, m) -> (B, n)
    ...     loss = tf.reduce_sum(x_star)
    >>> db = tape.gradient(loss, b_batch)          # (B, m)
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from cvxlayers.core import LayerCore
from cvxlayers.state_store import StateStore

try:  # private API, used only to skip derivative work when no tape can record
    from tensorflow.python.eager import record as _record
except ImportError:  # pragma: no cover - depends on the TensorFlow version
    _record = None

__all__ = ["CvxpyLayer"]


def _as_tensor(value):
    """A tensor for anything TensorFlow can convert (arrays, lists, variables); Keras's
    symbolic tensors and unconvertible values stay as they are (the core rejects the latter
    by name)."""
    if isinstance(value, keras.KerasTensor):
        return value
    try:
        return tf.convert_to_tensor(value)
    except (TypeError, ValueError):
        return value


def _is_tensor(value) -> bool:
    return tf.is_tensor(value) or isinstance(value, keras.KerasTensor)


def _static_shape(value):
    """The static shape as a tuple (None for unknown sizes), or None if the rank is unknown."""
    if _is_tensor(value):
        shape = tf.TensorShape(value.shape)
        return None if shape.rank is None else tuple(shape.as_list())
    try:
        return np.shape(value)
    except Exception:  # not array-like: the core says so when it runs
        return None


def _output_dtype(params: Sequence) -> str:
    """Outputs follow the inputs: the promoted floating dtype of the tensor inputs, or
    Keras's ``floatx`` if none is floating."""
    floats = [keras.backend.standardize_dtype(p.dtype) for p in params if _is_tensor(p)]
    floats = [d for d in floats if keras.backend.is_float_dtype(d)]
    return keras.backend.result_type(*floats) if floats else keras.config.floatx()


def _output_shapes(core: LayerCore, params: Sequence) -> list:
    """Static output shapes (None entries where unknown), from the core's batching rule."""
    shapes = core.output_shapes([_static_shape(p) for p in params])
    return [None] * len(core.outputs) if shapes is None else shapes


def _tape_may_record(tensors: Sequence) -> bool:
    """Whether an active ``GradientTape`` watches any of ``tensors`` (eager mode only)."""
    if _record is None:
        return True
    try:
        return bool(_record.could_possibly_record() and _record.should_record_backprop(tensors))
    except Exception:  # pragma: no cover - private API changed; assume a tape records
        return True


def _run(fn, tensors: Sequence, tout: list) -> list:
    """Calls a NumPy function on tensors: directly when executing eagerly, so that its
    exceptions propagate unchanged; as a ``tf.numpy_function`` op in a graph."""
    if tf.executing_eagerly():
        try:
            results = fn(*[t.numpy() for t in tensors])
        except Exception as exc:
            # Keras re-creates errors raised in a layer's call to add the call's arguments,
            # which drops attributes such as SolverError.statuses; this marks it as done.
            exc._keras_call_info_injected = True
            raise
        return [tf.convert_to_tensor(r) for r in results]
    return tf.numpy_function(fn, list(tensors), tout, stateful=True)


def _forward_fn(core: LayerCore, store: StateStore, params: list, positions: list,
                solver_args, need_grad: bool):
    """The NumPy forward: the tensor parameters' arrays in; float64 outputs and a token out."""

    def forward(*arrays):
        values = list(params)
        for i, array in zip(positions, arrays):
            values[i] = array
        outputs, state = core.forward(values, solver_args, need_grad=need_grad)
        token = store.put(state) if need_grad else -1
        return [np.asarray(out, dtype=np.float64) for out in outputs] + [np.int64(token)]

    return forward


def _backward_fn(core: LayerCore, store: StateStore, given: list, positions: list):
    """The NumPy backward: a token and the given output gradients in; float64 gradients of
    the tensor parameters out."""

    def backward(token, *arrays):
        supplied = iter(arrays)
        grads = [next(supplied) if g else None for g in given]
        param_grads = core.backward(store.get(int(token)), grads)
        return [np.asarray(param_grads[i], dtype=np.float64) for i in positions]

    return backward


class CvxpyLayer(keras.layers.Layer):
    """A differentiable convex optimization layer for TensorFlow and Keras.

    Its outputs are the solution ``x*(θ) = argmin f(x; θ) s.t. g(x; θ) <= 0, h(x; θ) = 0``
    (and any requested dual variables) for the parameter values ``θ`` of the call; its
    gradient ``(∂x*/∂θ)ᵀ v`` comes from differentiating the optimality conditions
    (diffcp's derivative of the homogeneous self-dual embedding), not from unrolling.

    Args:
        problem: a DPP-compliant ``cvxpy.Problem`` (DGP and DPP with ``gp=True``).
        parameters: exactly the problem's parameters, in the order the layer takes them.
        variables: the outputs: variables of the problem and/or constraint dual variables
            (``constraint.dual_variables[0]``), in order.
        gp: compile as a disciplined geometric program (log-log convex).
        solver: ``"SCS"`` (default), ``"ECOS"`` or ``"CLARABEL"`` (CVXPY's names accepted),
            or ``"QP"`` for the native batched interior-point QP solver.
        n_jobs: threads solving a batch (default: one per CPU).
        mode: diffcp's derivative mode: ``"lsqr"`` (default; memory and time scale with
            the problem's nonzeros), ``"dense"`` (one dense LU, for small problems), ``"lsmr"``
            or an ``"lpgd"`` mode.
        on_failure: ``"raise"`` (default) raises :class:`cvxlayers.SolverError` naming the
            failed batch elements; ``"warn"`` warns, returns NaN for them (zero gradient)
            and keeps the rest.
        solver_args: default solver options for every call; a call's own ``solver_args``
            override them key by key.
        state_capacity: how many forward states the layer keeps for their backward pass
            (the most recently used; default 64).
        **kwargs: passed to ``keras.layers.Layer`` (e.g. ``name``); ``autocast`` is always
            off, so that float64 inputs stay float64.

    Call:
        ``layer(*params, solver_args=None)``: one tensor (or array) per parameter, of its
        declared shape or with one extra leading batch dimension (unbatched ones broadcast,
        and their gradients are summed over the batch). Returns a tuple with one tensor per
        requested variable, with a leading batch dimension when any parameter is batched,
        in the promoted floating dtype of the inputs (``keras.config.floatx()`` if none is
        floating). Works eagerly, inside ``tf.function`` and in ``model.fit``; eagerly,
        no derivative work is done unless a ``GradientTape`` watches a parameter.
    """

    def __init__(self, problem, parameters, variables, gp: bool = False, solver="SCS",
                 n_jobs: int | None = None, mode: str = "lsqr", on_failure: str = "raise",
                 solver_args: dict | None = None, *, state_capacity: int = 64, **kwargs):
        kwargs["autocast"] = False
        super().__init__(**kwargs)
        self.core = LayerCore(problem, parameters, variables, gp=gp, solver=solver,
                              n_jobs=n_jobs, mode=mode, on_failure=on_failure,
                              solver_args=solver_args)
        self._states = StateStore(state_capacity)
        self.supports_jit = False  # a NumPy callback cannot be compiled by XLA
        # __call__ converts the parameters itself and leaves solver_args as given.
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True
        self.built = True  # no weights

    def __call__(self, *params, solver_args: dict | None = None, **kwargs):
        params = [_as_tensor(p) for p in params]
        if not all(_is_tensor(p) for p in params):
            # A value TensorFlow cannot convert: Keras would reject it beside tensors
            # before the core could name the parameter, so let the core say what is wrong.
            return self.call(*params, solver_args=solver_args)
        return super().__call__(*params, solver_args=solver_args, **kwargs)

    def call(self, *params, solver_args: dict | None = None):
        params = list(params)
        positions = [i for i, p in enumerate(params) if tf.is_tensor(p)]
        tensors = [params[i] for i in positions]
        dtype = _output_dtype(tensors)
        shapes = _output_shapes(self.core, params)
        floats = [t for t in tensors if t.dtype.is_floating]
        need_grad = bool(floats) and (not tf.executing_eagerly() or _tape_may_record(floats))
        forward = _forward_fn(self.core, self._states, params, positions, solver_args,
                              need_grad)
        n_out = len(self.core.outputs)
        tout = [tf.float64] * n_out + [tf.int64]

        def finish(results):
            outputs = []
            for out, shape in zip(results[:n_out], shapes):
                if shape is not None:
                    out.set_shape(shape)
                outputs.append(tf.cast(out, dtype))
            return outputs, results[n_out]

        if not need_grad:
            return tuple(finish(_run(forward, tensors, tout))[0])

        @tf.custom_gradient
        def solve(*inputs):
            outputs, token = finish(_run(forward, inputs, tout))

            def grad(*grad_outputs):
                self.core.check_differentiable(solver_args)  # when traced, not in the op
                given = [g is not None for g in grad_outputs]
                supplied = [tf.cast(tf.convert_to_tensor(g), tf.float64)
                            for g in grad_outputs if g is not None]
                backward = _backward_fn(self.core, self._states, given, positions)
                results = _run(backward, [token, *supplied], [tf.float64] * len(inputs))
                param_grads = []
                for g, t in zip(results, inputs):
                    if not t.dtype.is_floating:
                        param_grads.append(None)
                        continue
                    g.set_shape(t.shape)
                    param_grads.append(tf.cast(g, t.dtype))
                return param_grads

            return outputs, grad

        return tuple(solve(*tensors))

    def compute_output_spec(self, *params, solver_args: dict | None = None):
        dtype = _output_dtype(params)
        return tuple(keras.KerasTensor(shape, dtype=dtype)
                     for shape in _output_shapes(self.core, params))

    @property
    def state_capacity(self) -> int:
        """How many forward states the layer keeps for their backward pass."""
        return self._states.capacity

    def __repr__(self) -> str:
        return f"<CvxpyLayer name={self.name}, {self.core.summary()}>"
