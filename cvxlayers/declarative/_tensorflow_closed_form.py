"""TensorFlow/Keras faces of the closed-form declarative nodes: robust pooling and projections.

The maths lives in ``pooling.py`` and ``projections.py``, written against an array-API
namespace; TensorFlow is not one, so ``_tf_namespace`` maps the few functions the maths uses
onto TensorFlow ops. Gradients are registered with ``tf.custom_gradient``; the iterative
solvers run in ``tf.while_loop``, so the functions work eagerly, in ``tf.function`` and in
``model.fit``.
"""

from __future__ import annotations

import types

import keras
import numpy as np
import tensorflow as tf

from . import pooling, projections

__all__ = ["RobustPool", "robust_pool", "project_simplex", "project_l1_ball", "project_l1_sphere",
           "project_l2_ball", "project_l2_sphere", "project_linf_ball", "project_linf_sphere"]


def _gather_last(x, idx):
    return tf.gather(x, idx, axis=-1, batch_dims=len(x.shape) - 1)


def _keep(reduce):
    def f(x, axis=None, keepdims=False):
        return reduce(x, axis=axis, keepdims=keepdims)
    return f


def _arg(fn):
    def f(x, axis=-1, keepdims=False):
        k = fn(x, axis=axis)
        return tf.expand_dims(k, axis) if keepdims else k
    return f


_tf_namespace = types.SimpleNamespace(
    sort=lambda x, axis=-1, descending=False, stable=True: tf.sort(
        x, axis=axis, direction="DESCENDING" if descending else "ASCENDING"),
    argsort=lambda x, axis=-1: tf.argsort(x, axis=axis, stable=True),
    take_along_axis=lambda x, idx, axis=-1: _gather_last(x, idx),
    concat=lambda ts, axis=0: tf.concat(ts, axis=axis),
    cumulative_sum=lambda x, axis=-1: tf.cumsum(x, axis=axis),
    where=tf.where, abs=tf.abs, sqrt=tf.sqrt, exp=tf.exp,
    sum=_keep(tf.reduce_sum), max=_keep(tf.reduce_max), min=_keep(tf.reduce_min),
    mean=_keep(tf.reduce_mean), all=_keep(tf.reduce_all),
    argmax=_arg(tf.argmax), argmin=_arg(tf.argmin),
    clip=lambda x, min=None, max=None: (tf.maximum(x, min) if max is None else
                                        tf.clip_by_value(x, min, max)),
    sign=tf.sign, vecdot=lambda a, b, axis=-1: tf.reduce_sum(a * b, axis=axis),
    minimum=tf.minimum, maximum=tf.maximum,
    ones_like=tf.ones_like, zeros_like=tf.zeros_like,
    full_like=lambda x, v: tf.fill(tf.shape(x), tf.constant(v, dtype=x.dtype)),
    astype=lambda x, dtype: tf.cast(x, dtype),
    count_nonzero=lambda x, axis=None, keepdims=False: tf.math.count_nonzero(
        x, axis=axis, keepdims=keepdims),
    arange=lambda a, b=None: tf.range(a, b, dtype=tf.int64) if b is not None else tf.range(
        a, dtype=tf.int64),
    finfo=lambda dtype: np.finfo(tf.as_dtype(dtype).as_numpy_dtype),
)
xp = _tf_namespace


def _loop(n, body, state):
    """loop(n, body, state) of the maths modules as a tf.while_loop stopping when state[-1]."""
    out = tf.while_loop(lambda i, s: tf.logical_and(i < n, tf.logical_not(s[-1])),
                        lambda i, s: (i + 1, tuple(body(s))), (tf.constant(0), tuple(state)))
    return out[1]


def _as_float(name, x, fn):
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        raise TypeError(f"{fn}: `{name}` must be a floating-point tensor; received dtype "
                        f"{x.dtype.name}. Convert it with tf.cast(..., tf.float32).")
    if x.shape.rank == 0 or x.shape[-1] == 0:
        raise ValueError(f"{fn}: `{name}` needs a non-empty last axis; received shape {x.shape}.")
    return x


def _check_positive(name, value, fn):
    if isinstance(value, tf.Tensor) and not tf.executing_eagerly():
        return  # symbolic: the value is not known here
    v = np.asarray(value)
    if v.size != 1 or not float(v.reshape(())) > 0:
        raise ValueError(f"{fn}: `{name}` must be a positive scalar; received {value!r}.")


def robust_pool(x, penalty: str = "huber", alpha=1.0, dim: int = -2):
    """Robust pooling y = argmin_u Σ_i φ(u − x_i; α) over axis ``dim`` (see ``pooling``).

    Args:
        x: floating tensor, e.g. point features (B, N, C) pooled over N (dim=-2).
        penalty: "quadratic", "pseudo_huber", "huber", "welsch" or "truncated_quadratic".
        alpha: positive scalar (a float or a tensor/variable, which receives a gradient).
        dim: the axis of the set being pooled.

    Returns:
        x with axis ``dim`` removed. Backward: dy/dx_i = φ''_i / Σ_j φ''_j.
    """
    name = pooling.canonical_penalty(penalty)
    x = tf.convert_to_tensor(x)
    rank = x.shape.rank or 0
    if rank == 0 or not -rank <= dim < rank:
        raise ValueError(f"robust_pool: `dim` must be in [{-rank}, {rank}) for an input of shape "
                         f"{x.shape}; received {dim}.")
    _check_positive("alpha", alpha, "robust_pool")
    axis = dim % rank
    perm = [i for i in range(rank) if i != axis] + [axis]
    moved = _as_float("x", tf.transpose(x, perm), "robust_pool")
    # a Python float straight to the input's dtype (tf.cast would round it through float32)
    a = (tf.cast(alpha, moved.dtype) if isinstance(alpha, (tf.Tensor, tf.Variable))
         else tf.constant(float(alpha), dtype=moved.dtype))
    a = tf.reshape(a, ())

    @tf.custom_gradient
    def pool(x, a):
        y = pooling.pool(xp, name, x, a, _loop)

        def grad(v):
            return pooling.pool_vjp(xp, name, x, y, v, a)

        return y, grad

    return pool(moved, a)[..., 0]


class RobustPool(keras.layers.Layer):
    """``robust_pool`` as a Keras layer: (B, N, C) → (B, C) by default. No weights."""

    def __init__(self, penalty: str = "huber", alpha: float = 1.0, dim: int = -2, **kwargs):
        super().__init__(**kwargs)
        self.penalty = pooling.canonical_penalty(penalty)
        _check_positive("alpha", alpha, "RobustPool")
        self.alpha, self.dim = float(alpha), dim

    def call(self, x):
        return robust_pool(x, self.penalty, self.alpha, self.dim)

    def get_config(self):
        return {**super().get_config(), "penalty": self.penalty, "alpha": self.alpha,
                "dim": self.dim}


def _projection(kind):
    fn = f"project_{kind}"

    def project(x, radius: float = 1.0):
        x = _as_float("x", x, fn)
        _check_positive("radius", radius, fn)
        r = float(radius)

        @tf.custom_gradient
        def op(x):
            y = projections.project(xp, kind, x, r)
            return y, lambda v: projections.project_vjp(xp, kind, x, y, v, r)

        return op(x)

    project.__name__ = fn
    project.__doc__ = (f"Euclidean projection of x (..., n) onto the {kind.replace('_', ' ')} of "
                       "radius r along the last axis, with the closed-form gradient of "
                       "``cvxlayers.declarative.projections``.")
    return project


project_simplex = _projection("simplex")
project_l1_ball = _projection("l1_ball")
project_l1_sphere = _projection("l1_sphere")
project_l2_ball = _projection("l2_ball")
project_l2_sphere = _projection("l2_sphere")
project_linf_ball = _projection("linf_ball")
project_linf_sphere = _projection("linf_sphere")
