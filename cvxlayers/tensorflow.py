"""TensorFlow adapter: a ``keras.layers.Layer`` whose call solves the problem.

Thin by design: it converts tensors to float64 NumPy arrays, calls the framework-free
core, and converts back to the inputs' floating dtype; the gradient is registered with
``tf.custom_gradient``. Eagerly the core is called directly, so its exceptions reach the
caller unchanged; in a graph (``tf.function``, ``model.fit``) it runs as a
``tf.numpy_function`` op, and TensorFlow reports a core error as an ``InvalidArgumentError``
(or ``UnknownError``) whose message contains the core's message.

Floating inputs of any precision (bfloat16, float16, float32, float64) are cast to
float64 for the core; outputs and gradients are cast back to the inputs' dtypes.

The backward pass needs what the forward solve computed (the solutions and the derivative's
factorization), and that state must live exactly as long as a gradient can still ask for it:
- Eagerly, ``tf.custom_gradient``'s gradient closure holds the Python state itself; the tape
  holds the closure, so the state is freed with the tape, after any number of calls.
- In a graph, the forward and backward are separate ``tf.numpy_function`` ops, which can pass
  each other tensors only. The backward's residuals are therefore the parameter values
  themselves: TensorFlow keeps those exactly as long as the gradient graph (or an outer tape)
  needs them, and the backward op solves again with the derivative. A graph forward does no
  derivative work, so a graph-mode gradient costs one extra solve and inference costs nothing
  extra; the layer keeps no state of its own at all.

Example:
    >>> layer = CvxpyLayer(problem, parameters=[A, b], variables=[x])
    >>> with tf.GradientTape() as tape:
    ...     tape.watch(b_batch)
    ...     x_star, = layer(A_batch, b_batch)    # (B, m, n), (B, m) -> (B, n)
    ...     loss = tf.reduce_sum(x_star)
    >>> db = tape.gradient(loss, b_batch)          # (B, m)
"""

from __future__ import annotations

import warnings
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from cvxlayers._serialize import layer_config, layer_from_config
from cvxlayers.core import LayerCore, with_warm_start

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


def _eager(fn, *args):
    """Calls the core eagerly, so that its exceptions reach the caller unchanged."""
    try:
        return fn(*args)
    except Exception as exc:
        # Keras re-creates errors raised in a layer's call to add the call's arguments,
        # which drops attributes such as SolverError.statuses; this marks it as done.
        exc._keras_call_info_injected = True
        raise


def _float64(tensor):
    """Floating tensors as float64 before they become NumPy arrays: NumPy has no native
    bfloat16 (ml_dtypes' is kind 'V', which the core rightly refuses), and the core
    computes in float64 anyway. Integer tensors pass unchanged (the core takes them)."""
    return tf.cast(tensor, tf.float64) if tensor.dtype.is_floating else tensor


def _values(params: list, positions: list, arrays) -> list:
    """The call's parameter values: the tensors' arrays at their positions."""
    values = list(params)
    for i, array in zip(positions, arrays):
        values[i] = array
    return values


def _forward_fn(core: LayerCore, params: list, positions: list, solver_args):
    """The graph forward (no derivative work): the tensor parameters' arrays in, float64
    outputs out."""

    def forward(*arrays):
        outputs, _ = core.forward(_values(params, positions, arrays), solver_args,
                                  need_grad=False)
        return [np.asarray(out, dtype=np.float64) for out in outputs]

    return forward


def _backward_fn(core: LayerCore, params: list, positions: list, solver_args, given: list):
    """The graph backward: the tensor parameters' arrays and the given output gradients in;
    float64 gradients of the tensor parameters out.

    It solves again, with the derivative, from the parameter values: a graph op cannot hand
    a Python object to another, and the inputs are the only residuals TensorFlow keeps
    exactly as long as a gradient can be asked for (see the module docstring). The re-solve
    is deterministic (same data, same options, no warm start), so it reproduces the forward's
    solution; its status warnings were already given by the forward and are not repeated.
    """
    n = len(positions)

    def backward(*arrays):
        supplied = iter(arrays[n:])
        grads = [next(supplied) if g else None for g in given]
        param_grads, = core.backward_from_residuals(_values(params, positions, arrays[:n]),
                                                    (), [grads], solver_args)
        return [np.asarray(param_grads[i], dtype=np.float64) for i in positions]

    return backward


def _param_grads(results, inputs) -> list:
    """The parameters' gradients in their own dtypes and static shapes (None for integers)."""
    param_grads = []
    for g, t in zip(results, inputs):
        if not t.dtype.is_floating:
            param_grads.append(None)
            continue
        g = tf.convert_to_tensor(g)
        g.set_shape(t.shape)
        param_grads.append(tf.cast(g, t.dtype))
    return param_grads


@keras.saving.register_keras_serializable(package="cvxlayers")
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
        executor: where batched calls solve, as for the PyTorch layer (see the "Large
            batches" guide); eager calls and ``tf.function`` alike.
        chunk_size: batch elements per chunk on an executor (default: automatic).
        mode: diffcp's derivative mode: ``"lsqr"`` (default; memory and time scale with
            the problem's nonzeros), ``"dense"`` (one dense LU, for small problems), ``"lsmr"``
            or an ``"lpgd"`` mode.
        on_failure: ``"raise"`` (default) raises :class:`cvxlayers.SolverError` naming the
            failed batch elements; ``"warn"`` warns, returns NaN for them (zero gradient)
            and keeps the rest.
        solver_args: default solver options for every call; a call's own ``solver_args``
            override them key by key.
        gradient: the derivative the backward computes: ``"implicit"`` (default),
            ``"lpgd"`` or ``"smoothed"`` (``solver="QP"``); see :mod:`cvxlayers.gradients`.
        gradient_args: its arguments (``tau``, ``rho`` for LPGD; ``mu`` for smoothed).
        warm_start: the calls' default for ``warm_start``, as for the PyTorch layer (eagerly
            and in graphs alike: a start never changes the answer beyond the tolerance).
        state_capacity: deprecated and ignored (the layer keeps no forward states).
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

    Saving:
        ``get_config`` carries the problem, so ``model.save`` and ``keras.models.load_model``
        (safe mode included), ``copy.deepcopy`` and ``pickle`` round-trip the layer; see
        :meth:`get_config` for how the problem is encoded safely.
    """

    def __init__(self, problem, parameters, variables, gp: bool = False, solver="SCS",
                 n_jobs: int | None = None, mode: str = "lsqr", on_failure: str = "raise",
                 solver_args: dict | None = None, gradient: str = "implicit",
                 gradient_args: dict | None = None, warm_start: bool = False, *,
                 state_capacity=None, executor=None, chunk_size: int | None = None,
                 **kwargs):
        if state_capacity is not None:
            warnings.warn("`state_capacity` has no effect any more: the layer keeps no forward "
                          "states (see the class docstring), so none can be evicted.",
                          DeprecationWarning, stacklevel=2)
        kwargs["autocast"] = False
        super().__init__(**kwargs)
        self.core = LayerCore(problem, parameters, variables, gp=gp, solver=solver,
                              n_jobs=n_jobs, mode=mode, on_failure=on_failure,
                              solver_args=solver_args, gradient=gradient,
                              gradient_args=gradient_args, warm_start=warm_start,
                              executor=executor, chunk_size=chunk_size)
        # The arguments as given, for get_config (the core resolves some, e.g. n_jobs=None
        # to this machine's CPU count, which a model loaded elsewhere should not inherit).
        self._init_options = {"gp": bool(gp), "solver": solver, "n_jobs": n_jobs,
                              "mode": mode, "on_failure": on_failure,
                              "solver_args": None if solver_args is None else dict(solver_args),
                              "gradient": gradient,
                              "gradient_args": None if gradient_args is None
                              else dict(gradient_args),
                              "warm_start": self.core.warm_start}
        self.supports_jit = False  # a NumPy callback cannot be compiled by XLA
        # __call__ converts the parameters itself and leaves solver_args as given.
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True
        self.built = True  # no weights

    def __call__(self, *params, solver_args: dict | None = None,
                 warm_start: bool | None = None, **kwargs):
        solver_args = with_warm_start(solver_args, warm_start)
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
        eager = tf.executing_eagerly()
        need_grad = bool(floats) and (not eager or _tape_may_record(floats))
        core = self.core
        n_out = len(core.outputs)

        def finish(results):
            outputs = []
            for out, shape in zip(results, shapes):
                out = tf.convert_to_tensor(out)
                if shape is not None:
                    out.set_shape(shape)
                outputs.append(tf.cast(out, dtype))
            return outputs

        def solve_graph(inputs):
            forward = _forward_fn(core, params, positions, solver_args)
            return finish(tf.numpy_function(forward, [_float64(t) for t in inputs],
                                            [tf.float64] * n_out, stateful=True))

        if not need_grad:
            if not eager:
                return tuple(solve_graph(tensors))
            arrays = [_float64(t).numpy() for t in tensors]
            outputs, _ = _eager(core.forward, _values(params, positions, arrays), solver_args,
                                False)
            return tuple(finish(outputs))

        @tf.custom_gradient
        def solve(*inputs):
            if eager:
                # The state lives in this closure, which the tape holds: it is freed with the
                # tape (after a non-persistent tape's gradient), never sooner, never later.
                arrays = [_float64(t).numpy() for t in inputs]
                outputs, state = _eager(core.forward, _values(params, positions, arrays),
                                        solver_args, True)

                def grad(*grad_outputs):
                    grads = [None if g is None else tf.cast(g, tf.float64).numpy()
                             for g in grad_outputs]
                    param_grads = core.backward(state, grads)
                    return _param_grads([param_grads[i] for i in positions], inputs)

                return finish(outputs), grad

            def grad(*grad_outputs):
                core.check_differentiable(solver_args)  # when traced, not in the op
                given = [g is not None for g in grad_outputs]
                supplied = [tf.cast(tf.convert_to_tensor(g), tf.float64)
                            for g in grad_outputs if g is not None]
                backward = _backward_fn(core, params, positions, solver_args, given)
                results = tf.numpy_function(
                    backward, [*(_float64(t) for t in inputs), *supplied],
                    [tf.float64] * len(inputs), stateful=True)
                return _param_grads(results, inputs)

            return solve_graph(inputs), grad

        return tuple(solve(*tensors))

    def compute_output_spec(self, *params, solver_args: dict | None = None):
        dtype = _output_dtype(params)
        return tuple(keras.KerasTensor(shape, dtype=dtype)
                     for shape in _output_shapes(self.core, params))

    def get_config(self) -> dict:
        """The layer's constructor arguments, for ``model.save``, ``keras.models.load_model``,
        ``copy.deepcopy`` and ``pickle`` (Keras pickles layers through their config).

        The CVXPY problem travels as a base64 pickle of ``(problem, parameters, variables)``
        under ``"problem"``, decoded by an unpickler that resolves only CVXPY's, NumPy's and
        SciPy's building blocks (see :mod:`cvxlayers._serialize`), so loading runs no foreign
        code and works under Keras's ``safe_mode``.
        """
        return layer_config(self, super().get_config())

    @classmethod
    def from_config(cls, config: dict):
        return layer_from_config(cls, config)

    def __repr__(self) -> str:
        return f"<CvxpyLayer name={self.name}, {self.core.summary()}>"
