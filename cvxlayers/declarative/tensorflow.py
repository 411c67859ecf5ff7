"""TensorFlow face of the declarative nodes: a ``tf.custom_gradient`` around the shared maths.

The backward's derivatives come from nested ``tf.GradientTape``s: an inner tape gives
``∇_y L``, a persistent outer one its products with vectors (Hessian-vector products)
and, at the end, the gradient in every input and in any ``tf.Variable`` the functions
read (a Keras layer's weights used inside ``objective`` get gradients). Works eagerly
and inside ``tf.function``; the warning checks run eagerly only.

Example:
    >>> node = DeclarativeNode(lambda x, y: tf.reduce_sum((y - x) ** 2 + y ** 4, -1),
    ...                        init=tf.zeros_like)
    >>> with tf.GradientTape() as tape:
    ...     tape.watch(x); loss = tf.reduce_sum(node(x))
    >>> dx = tape.gradient(loss, x)
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from cvxlayers.declarative import _backward, _solvers
from cvxlayers.declarative._node import check_eps, check_inputs, check_output, check_values, ot_problem

__all__ = ["DeclarativeNode", "argmin", "EntropicOT", "entropic_ot",
           "NonStationaryWarning", "IllConditionedWarning"]

NonStationaryWarning = _backward.NonStationaryWarning
IllConditionedWarning = _backward.IllConditionedWarning


class _Ops:
    """The array operations the shared maths uses, in TensorFlow."""

    einsum = staticmethod(tf.einsum)
    eigh = staticmethod(tf.linalg.eigh)
    abs = staticmethod(tf.abs)
    where = staticmethod(tf.where)
    exp = staticmethod(tf.exp)
    log = staticmethod(tf.math.log)
    maximum = staticmethod(tf.maximum)
    ones_like = staticmethod(tf.ones_like)
    zeros_like = staticmethod(tf.zeros_like)
    diag_embed = staticmethod(tf.linalg.diag)
    logical_and = staticmethod(tf.logical_and)

    @staticmethod
    def amax(x, axis=None, keepdims=False):
        return tf.reduce_max(x, axis=axis, keepdims=keepdims)

    @staticmethod
    def sum(x, axis):
        return tf.reduce_sum(x, axis=axis)

    @staticmethod
    def cast(x, like):
        return tf.cast(x, like.dtype)

    @staticmethod
    def concat(xs, axis):
        return tf.concat(xs, axis)

    @staticmethod
    def logsumexp(x, axis):
        return tf.reduce_logsumexp(x, axis=axis)

    @staticmethod
    def any(x):
        return tf.reduce_any(x)

    @staticmethod
    def all(x, axis):
        return tf.reduce_all(x, axis=axis)

    @staticmethod
    def int_scalar(value):
        return tf.constant(value, tf.int32)

    @staticmethod
    def while_loop(cond, body, state):
        return tf.while_loop(lambda *s: cond(s), lambda *s: body(s), state)

    @staticmethod
    def broadcast_eye(m, like):
        return tf.eye(m, batch_shape=[tf.shape(like)[0]], dtype=like.dtype)

    @staticmethod
    def values(tensors):
        if not tf.executing_eagerly():
            return None
        return tuple(t.numpy() for t in tensors)


def _columns(tape, grad_y, yf, V):
    """``(B, m, k)``: the Jacobian of ``grad_y`` (recorded on ``tape``) times the columns
    of ``V``, one reverse pass per column."""
    cols = [tape.gradient(grad_y, yf, output_gradients=V[..., j]) for j in range(V.shape[-1])]
    return tf.stack([tf.zeros_like(yf) if c is None else c for c in cols], -1)


class DeclarativeNode:
    """A layer whose output is ``y(x) ∈ argmin_y f(x, y) s.t. h(x, y) = 0, g(x, y) ≤ 0``.

    The arguments are those of :class:`cvxlayers.declarative.torch.DeclarativeNode`, with
    the functions written in TensorFlow ops. Call ``node(*xs)``.
    """

    def __init__(self, objective, solve=None, *, equality=None, inequality=None, init=None,
                 solver_tol=1e-12, solver_maxiter=100, **options):
        check_values(objective, solve, equality, inequality, init)
        self.objective, self.solve = objective, solve
        self.equality, self.inequality, self.init = equality, inequality, init
        self.solver_tol, self.solver_maxiter = solver_tol, solver_maxiter
        self.options = _backward.Options(**options)

    def __call__(self, *xs):
        check_inputs(xs, lambda x: isinstance(x, (tf.Tensor, tf.Variable)), "tf.Tensor")
        xs = [tf.convert_to_tensor(x) for x in xs]

        @tf.custom_gradient
        def call(*xs):
            y = self._forward(xs)

            def grad(gy, variables=None):
                return self._backward(xs, y, gy, list(variables or []))

            return y, grad

        return call(*xs)

    def _forward(self, xs):
        if self.solve is not None:
            y = self.solve(*xs)
            check_output(y, tf.is_tensor, "tf.Tensor")
            return tf.stop_gradient(y)
        y0 = tf.stop_gradient(self.init(*xs))
        shape = y0.shape

        def fun(yf):
            return self.objective(*xs, tf.reshape(yf, shape))

        def grad(yf):
            with tf.GradientTape() as tape:
                tape.watch(yf)
                f = tf.reduce_sum(fun(yf))
            return tape.gradient(f, yf)

        def hess(yf):
            with tf.GradientTape() as outer:
                outer.watch(yf)
                g = grad(yf)
            return outer.batch_jacobian(g, yf)

        yf = _solvers.newton(_Ops, fun, grad, hess, tf.reshape(y0, (shape[0], -1)),
                             self.solver_tol, self.solver_maxiter,
                             float(np.finfo(y0.dtype.as_numpy_dtype).eps))
        return tf.stop_gradient(tf.reshape(yf, shape))

    def _constraints(self, xs, y):
        parts, n_eq = [], 0
        B = y.shape[0]
        if self.equality is not None:
            h = tf.reshape(self.equality(*xs, y), (B, -1))
            parts.append(h)
            n_eq = h.shape[1]
        if self.inequality is not None:
            parts.append(tf.reshape(self.inequality(*xs, y), (B, -1)))
        return (tf.concat(parts, 1) if parts else None), n_eq

    def _backward(self, xs, y, gy, variables):
        shape, B = y.shape, y.shape[0]
        m = math.prod(shape[1:])
        yf = tf.reshape(tf.stop_gradient(y), (B, m))
        kept = {}
        # One persistent tape records everything, the backward's own solve included; the
        # solve's results enter phi through stop_gradient, so that phi's gradient in x is
        # exactly -(wᵀ B + uᵀ C) with w, u, mu held fixed.
        with tf.GradientTape(persistent=True) as outer:
            outer.watch(yf)
            outer.watch(xs)
            Y = tf.reshape(yf, shape)
            f = self.objective(*xs, Y)
            check_output(f, tf.is_tensor, "tf.Tensor", name="objective", batch=B, vector=True)
            cons, n_eq = self._constraints(xs, Y)
            with tf.GradientTape() as first:
                first.watch(yf)
                f1 = self.objective(*xs, tf.reshape(yf, shape))
                c1 = self._constraints(xs, tf.reshape(yf, shape))[0]
            grad_f = tf.stop_gradient(first.gradient(f1, yf))
            A = None if c1 is None else tf.stop_gradient(outer.batch_jacobian(cons, yf))

            def hvp_of(mu):
                with tf.GradientTape() as inner:
                    inner.watch(yf)
                    L = self.objective(*xs, tf.reshape(yf, shape))
                    if mu is not None:
                        c = self._constraints(xs, tf.reshape(yf, shape))[0]
                        L = L + tf.reduce_sum(tf.stop_gradient(mu) * c, -1)
                kept["grad_L"] = gl = inner.gradient(L, yf)
                return lambda V: tf.stop_gradient(_columns(outer, gl, yf, V))

            w, u, _ = _backward.adjoint(_Ops, self.options, tf.reshape(gy, (B, m)), grad_f,
                                        None if cons is None else tf.stop_gradient(cons), A,
                                        n_eq, hvp_of, y.dtype.name)
            phi = tf.reduce_sum(tf.stop_gradient(w) * kept["grad_L"])
            if u is not None:
                phi = phi + tf.reduce_sum(tf.stop_gradient(u) * cons)
        grads = outer.gradient(phi, list(xs) + variables)
        grads = [tf.zeros_like(x) if g is None else -g for x, g in zip(list(xs) + variables, grads)]
        del outer
        return grads[:len(xs)], grads[len(xs):]


def argmin(objective, *xs, solve=None, equality=None, inequality=None, **options):
    """Functional form: ``DeclarativeNode(objective, solve, ...)(*xs)``."""
    return DeclarativeNode(objective, solve, equality=equality, inequality=inequality,
                           **options)(*xs)


class EntropicOT(DeclarativeNode):
    """Entropic optimal transport ``(C, r, c) -> P`` by log-domain Sinkhorn, differentiated
    by the generic equality-constrained IFT; as :class:`cvxlayers.declarative.torch.EntropicOT`."""

    def __init__(self, eps=0.1, tol=None, maxiter=10_000, **options):
        check_eps(eps)
        objective, equality = ot_problem(eps, _Ops)
        self.eps, self.tol, self.maxiter = eps, tol, maxiter
        super().__init__(objective, self._sinkhorn, equality=equality, **options)

    def _sinkhorn(self, C, r, c):
        tol = _solvers.sinkhorn_tol(self.tol, float(np.finfo(C.dtype.as_numpy_dtype).eps))
        return _solvers.sinkhorn(_Ops, C, r, c, self.eps, tol, self.maxiter)


def entropic_ot(C, r, c, eps=0.1, **options):
    """Functional form of :class:`EntropicOT`: the plan ``P (B, n, k)``."""
    return EntropicOT(eps, **options)(C, r, c)

# The paper's closed-form nodes (robust pooling, Euclidean projections), differentiated by
# their closed-form Jacobians rather than the generic machinery above.
from cvxlayers.declarative import _tensorflow_closed_form as _closed_form  # noqa: E402
from cvxlayers.declarative._tensorflow_closed_form import *  # noqa: E402,F401,F403

__all__ = [*__all__, *_closed_form.__all__]
