"""Keras 3 adapter: one ``keras.layers.Layer`` for every Keras backend.

Keras 3 runs on TensorFlow, JAX or PyTorch (``KERAS_BACKEND``), and a layer's ``call``
receives that backend's tensors. This face is therefore only a dispatch: it converts the
call's values to the backend's tensors and hands them to the adapter of that framework, which
registers the gradient the backend's trainer uses:

- ``tensorflow``: the call of :class:`cvxlayers.tensorflow.CvxpyLayer` (``tf.custom_gradient``
  over ``tf.numpy_function``; ``model.fit``'s ``tf.function`` included);
- ``jax``: :class:`cvxlayers.jax.CvxpyLayer` (a ``jax.custom_vjp`` over ``jax.pure_callback``,
  so the layer works inside the ``jax.jit`` that ``model.fit`` compiles);
- ``torch``: :class:`cvxlayers.torch.CvxpyLayer` (a ``torch.autograd.Function``; Keras's torch
  trainer calls ``loss.backward()``).

All three wrap the same framework-free :class:`cvxlayers.core.LayerCore`, so the outputs
``x*(θ)`` and gradients ``(∂x*/∂θ)ᵀ v`` are the same on every backend; there is no maths here.

Example:
    >>> layer = CvxpyLayer(problem, parameters=[A, b], variables=[x])
    >>> inputs = keras.Input((m,))
    >>> x_star, = layer(A_value, keras.layers.Dense(m)(inputs))
    >>> model = keras.Model(inputs, x_star)          # fit, save and load on any backend
"""

from __future__ import annotations

import keras
import numpy as np

from cvxlayers._serialize import layer_config, layer_from_config
from cvxlayers.core import with_warm_start

__all__ = ["CvxpyLayer"]

#: The backends this layer dispatches to.
BACKENDS = ("tensorflow", "jax", "torch")


def _backend() -> str:
    name = keras.backend.backend()
    if name not in BACKENDS:
        raise ValueError(f"cvxlayers.keras.CvxpyLayer supports the Keras backends {BACKENDS}; "
                         f"the active backend (KERAS_BACKEND) is {name!r}.")
    return name


def _as_tensor(value):
    """The backend's tensor for anything it can convert; symbolic tensors and unconvertible
    values stay as they are (the core rejects the latter, naming the parameter)."""
    if isinstance(value, keras.KerasTensor):
        return value
    try:
        return keras.ops.convert_to_tensor(value)
    except Exception:  # noqa: BLE001 - whatever the backend raises, the core explains
        return value


def _is_tensor(value) -> bool:
    return keras.ops.is_tensor(value) or isinstance(value, keras.KerasTensor)


def _static_shape(value):
    """The static shape as a tuple (None for unknown sizes), or None if the rank is unknown."""
    try:
        shape = value.shape if _is_tensor(value) else np.shape(value)
        return None if shape is None else tuple(shape)
    except Exception:  # noqa: BLE001 - unknown rank, or not array-like: the core says so
        return None


def _output_dtype(params) -> str:
    """Outputs follow the inputs: the promoted floating dtype of the tensor inputs, or
    ``keras.config.floatx()`` if none is floating (as each adapter does for its framework)."""
    floats = [keras.backend.standardize_dtype(p.dtype) for p in params if _is_tensor(p)]
    floats = [d for d in floats if keras.backend.is_float_dtype(d)]
    return keras.backend.result_type(*floats) if floats else keras.config.floatx()


def _mark_reported(fn, *args, **kwargs):
    """Calls ``fn``; an exception keeps its type and attributes (e.g. SolverError.statuses):
    Keras otherwise re-creates errors raised in a layer's call to add the call's arguments."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        exc._keras_call_info_injected = True
        raise


@keras.saving.register_keras_serializable(package="cvxlayers.keras")
class CvxpyLayer(keras.layers.Layer):
    """A differentiable convex optimization layer for Keras 3, on the TensorFlow, JAX and
    PyTorch backends.

    Its outputs are the solution ``x*(θ) = argmin f(x; θ) s.t. g(x; θ) <= 0, h(x; θ) = 0``
    (and any requested dual variables) for the call's parameter values ``θ``; its gradient
    comes from differentiating the optimality conditions, as for the other adapters.

    The arguments are those of :class:`cvxlayers.torch.CvxpyLayer`, which documents them in
    full.

    Args:
        problem: a DPP-compliant ``cvxpy.Problem`` (DGP and DPP with ``gp=True``).
        parameters: exactly the problem's parameters, in the order the layer takes them.
        variables: the outputs: variables and/or constraint dual variables, in order.
        gp: compile as a disciplined geometric program.
        solver: ``"SCS"`` (default), ``"ECOS"``, ``"CLARABEL"`` or ``"QP"``.
        n_jobs: threads solving a batch (default: one per CPU).
        mode: diffcp's derivative mode (default ``"lsqr"``).
        on_failure: ``"raise"`` (default) or ``"warn"``.
        solver_args: default solver options for every call.
        gradient: ``"implicit"`` (default), ``"lpgd"`` or ``"smoothed"``.
        gradient_args: the gradient's arguments.
        warm_start: the calls' default for ``warm_start``.
        **kwargs: passed to ``keras.layers.Layer`` (e.g. ``name``); ``autocast`` is always
            off, so that float64 inputs stay float64.

    The backend is the one active when the layer is built (``keras.backend.backend()``).

    Call:
        ``layer(*params, solver_args=None, warm_start=None)``: one tensor (or array) per
        parameter, of its declared shape or with one extra leading batch dimension. Returns a
        tuple with one backend tensor per requested variable, in the promoted floating dtype
        of the inputs (``keras.config.floatx()`` if none is floating). Works eagerly, in
        functional models and in ``model.fit`` (graph-compiled on TensorFlow, ``jax.jit`` on
        JAX, eager autograd on PyTorch). Eager calls raise the core's errors unchanged;
        inside a compiled step they surface in the backend's callback error.

    Saving:
        ``get_config`` carries the problem (see :mod:`cvxlayers._serialize`), so
        ``model.save`` / ``keras.models.load_model`` (``.keras`` files, safe mode included)
        round-trip the layer; a model saved on one backend loads on another.
    """

    def __init__(self, problem, parameters, variables, gp: bool = False, solver="SCS",
                 n_jobs: int | None = None, mode: str = "lsqr", on_failure: str = "raise",
                 solver_args: dict | None = None, gradient: str = "implicit",
                 gradient_args: dict | None = None, warm_start: bool = False, **kwargs):
        kwargs["autocast"] = False
        super().__init__(**kwargs)
        self._backend_name = _backend()
        options = dict(gp=gp, solver=solver, n_jobs=n_jobs, mode=mode, on_failure=on_failure,
                       solver_args=solver_args, gradient=gradient,
                       gradient_args=gradient_args, warm_start=warm_start)
        self._solve = self._adapter_call(problem, parameters, variables, options)
        # The arguments as given, for get_config (the core resolves n_jobs=None to this
        # machine's CPU count, which a model loaded elsewhere should not inherit).
        self._init_options = {**options, "gp": bool(gp),
                              "solver_args": None if solver_args is None else dict(solver_args),
                              "gradient_args": None if gradient_args is None
                              else dict(gradient_args),
                              "warm_start": self.core.warm_start}
        # XLA cannot compile TensorFlow's NumPy callback; JAX's pure_callback runs under jit.
        self.supports_jit = self._backend_name == "jax"
        # __call__ converts the parameters itself and leaves solver_args as given.
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True
        self.built = True  # no weights

    def _adapter_call(self, problem, parameters, variables, options):
        """The backend's adapter, as a ``call(params, solver_args)`` function; sets
        ``self.core`` to its core. Only that framework's adapter is imported."""
        if self._backend_name == "tensorflow":
            from cvxlayers import tensorflow as adapter
            layer = adapter.CvxpyLayer(problem, parameters, variables, **options)
            self.core = layer.core
            # The TF adapter's call needs only ``self.core``: reuse it on this layer, rather
            # than nesting a second Keras layer that models would track and save.
            return lambda params, solver_args: adapter.CvxpyLayer.call(
                self, *params, solver_args=solver_args)
        if self._backend_name == "jax":
            from cvxlayers import jax as adapter
        else:
            from cvxlayers import torch as adapter
        layer = adapter.CvxpyLayer(problem, parameters, variables, **options)
        self.core = layer.core
        # A bound method, not the layer itself: on the torch backend Keras would wrap a
        # torch.nn.Module attribute as a sublayer (TorchModuleWrapper) and try to save it.
        forward = layer.__call__
        return lambda params, solver_args: tuple(forward(*params, solver_args=solver_args))

    def __call__(self, *params, solver_args: dict | None = None,
                 warm_start: bool | None = None, **kwargs):
        solver_args = with_warm_start(solver_args, warm_start)
        params = [_as_tensor(p) for p in params]
        if not all(_is_tensor(p) for p in params):
            # A value the backend cannot convert: Keras would reject it beside tensors
            # before the core could name the parameter, so let the core say what is wrong.
            return self.call(*params, solver_args=solver_args)
        return super().__call__(*params, solver_args=solver_args, **kwargs)

    def call(self, *params, solver_args: dict | None = None):
        return _mark_reported(self._solve, list(params), solver_args)

    def compute_output_spec(self, *params, solver_args: dict | None = None):
        dtype = _output_dtype(params)
        shapes = self.core.output_shapes([_static_shape(p) for p in params])
        if shapes is None:
            shapes = [None] * len(self.core.outputs)
        return tuple(keras.KerasTensor(shape, dtype=dtype) for shape in shapes)

    def get_config(self) -> dict:
        """The constructor's arguments, the problem encoded as in
        :meth:`cvxlayers.tensorflow.CvxpyLayer.get_config` (loading runs no foreign code)."""
        return layer_config(self, super().get_config())

    @classmethod
    def from_config(cls, config: dict):
        return layer_from_config(cls, config)

    def __repr__(self) -> str:
        return f"<CvxpyLayer backend={self._backend_name} name={self.name}, " \
               f"{self.core.summary()}>"
