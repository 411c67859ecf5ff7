"""JAX face of the declarative nodes: a ``jax.custom_vjp`` around the shared maths.

Everything is written in ``jax.numpy`` and ``lax`` loops, so a node works eagerly and
under ``jit``, ``vmap`` and ``grad``. The backward's derivatives come from ``jax.grad``,
``jax.jvp`` (Hessian-vector products of the Lagrangian) and ``jax.vjp`` (the constraint
Jacobian). The checks that warn (stationarity, conditioning) run in eager calls only:
under ``jit`` the values are symbolic.

Example:
    >>> node = DeclarativeNode(lambda x, y: ((y - x) ** 2).sum(-1) + (y ** 4).sum(-1),
    ...                        init=jnp.zeros_like)
    >>> dx = jax.jit(jax.grad(lambda x: node(x).sum()))(x)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from cvxlayers.declarative import _backward, _solvers
from cvxlayers.declarative._node import check_eps, check_inputs, check_output, check_values, ot_problem

__all__ = ["DeclarativeNode", "argmin", "EntropicOT", "entropic_ot",
           "NonStationaryWarning", "IllConditionedWarning"]

NonStationaryWarning = _backward.NonStationaryWarning
IllConditionedWarning = _backward.IllConditionedWarning


class _Ops:
    """The array operations the shared maths uses, in JAX."""

    einsum = staticmethod(jnp.einsum)
    eigh = staticmethod(jnp.linalg.eigh)
    abs = staticmethod(jnp.abs)
    where = staticmethod(jnp.where)
    exp = staticmethod(jnp.exp)
    log = staticmethod(jnp.log)
    maximum = staticmethod(jnp.maximum)
    ones_like = staticmethod(jnp.ones_like)
    zeros_like = staticmethod(jnp.zeros_like)
    logical_and = staticmethod(jnp.logical_and)
    any = staticmethod(jnp.any)

    @staticmethod
    def diag_embed(x):
        return x[..., :, None] * jnp.eye(x.shape[-1], dtype=x.dtype)

    @staticmethod
    def amax(x, axis=None, keepdims=False):
        return jnp.max(x, axis=axis, keepdims=keepdims)

    @staticmethod
    def sum(x, axis):
        return jnp.sum(x, axis=axis)

    @staticmethod
    def cast(x, like):
        return x.astype(like.dtype)

    @staticmethod
    def concat(xs, axis):
        return jnp.concatenate(xs, axis)

    @staticmethod
    def logsumexp(x, axis):
        return jax.nn.logsumexp(x, axis=axis)

    @staticmethod
    def all(x, axis):
        return jnp.all(x, axis=axis)

    @staticmethod
    def int_scalar(value):
        return jnp.asarray(value, dtype=jnp.int32)

    @staticmethod
    def while_loop(cond, body, state):
        return jax.lax.while_loop(cond, body, state)

    @staticmethod
    def broadcast_eye(m, like):
        return jnp.broadcast_to(jnp.eye(m, dtype=like.dtype), (like.shape[0], m, m))

    @staticmethod
    def values(arrays):
        if any(isinstance(a, jax.core.Tracer) for a in arrays):
            return None
        return tuple(np.asarray(a) for a in arrays)


def _columns(fn, yf, V):
    """``(B, m, k)``: the Jacobian of ``fn`` (``(B, m) -> (B, m)``) at ``yf`` times each
    column of ``V``, one ``jvp`` per column under ``vmap``."""
    return jax.vmap(lambda v: jax.jvp(fn, (yf,), (v,))[1], in_axes=-1, out_axes=-1)(V)


class DeclarativeNode:
    """A layer whose output is ``y(x) ∈ argmin_y f(x, y) s.t. h(x, y) = 0, g(x, y) ≤ 0``.

    The arguments are those of :class:`cvxlayers.declarative.torch.DeclarativeNode`, with
    the functions written in ``jax.numpy``. Call ``node(*xs)``; it is a ``custom_vjp``
    function of all of ``xs``.
    """

    def __init__(self, objective, solve=None, *, equality=None, inequality=None, init=None,
                 solver_tol=1e-12, solver_maxiter=100, **options):
        check_values(objective, solve, equality, inequality, init)
        self.objective, self.solve = objective, solve
        self.equality, self.inequality, self.init = equality, inequality, init
        self.solver_tol, self.solver_maxiter = solver_tol, solver_maxiter
        self.options = _backward.Options(**options)

        @jax.custom_vjp
        def call(*xs):
            return self._forward(xs)

        def fwd(*xs):
            y = self._forward(xs)
            return y, (xs, y)

        def bwd(res, gy):
            xs, y = res
            return tuple(self._backward(xs, y, gy))

        call.defvjp(fwd, bwd)
        self._call = call

    def __call__(self, *xs):
        check_inputs(xs, lambda x: isinstance(x, (jax.Array, np.ndarray)), "jax.Array")
        return self._call(*[jnp.asarray(x) for x in xs])

    def _forward(self, xs):
        if self.solve is not None:
            y = self.solve(*xs)
            check_output(y, lambda a: isinstance(a, jax.Array), "jax.Array")
            return jax.lax.stop_gradient(y)
        y0 = self.init(*xs)
        shape = y0.shape

        def fun(yf):
            return self.objective(*xs, yf.reshape(shape))

        grad = jax.grad(lambda yf: fun(yf).sum())

        def hess(yf):
            return _columns(grad, yf, _Ops.broadcast_eye(yf.shape[1], yf))

        yf = _solvers.newton(_Ops, fun, grad, hess, y0.reshape(shape[0], -1), self.solver_tol,
                             self.solver_maxiter, float(jnp.finfo(y0.dtype).eps))
        return jax.lax.stop_gradient(yf.reshape(shape))

    def _constraints(self, xs, yf, shape):
        parts, n_eq = [], 0
        y = yf.reshape(shape)
        if self.equality is not None:
            h = self.equality(*xs, y).reshape(shape[0], -1)
            parts.append(h)
            n_eq = h.shape[1]
        if self.inequality is not None:
            parts.append(self.inequality(*xs, y).reshape(shape[0], -1))
        return (jnp.concatenate(parts, 1) if parts else None), n_eq

    def _backward(self, xs, y, gy):
        shape, B = y.shape, y.shape[0]
        m = math.prod(shape[1:])
        yf = y.reshape(B, m)
        f = self.objective(*xs, y)
        check_output(f, lambda a: isinstance(a, jax.Array), "jax.Array", name="objective",
                     batch=B, vector=True)
        grad_f = jax.grad(lambda yf: self.objective(*xs, yf.reshape(shape)).sum())(yf)
        cons, n_eq = self._constraints(xs, yf, shape)
        A = None
        if cons is not None:
            p = cons.shape[1]
            _, pull = jax.vjp(lambda yf: self._constraints(xs, yf, shape)[0], yf)
            E = jnp.broadcast_to(jnp.eye(p, dtype=yf.dtype)[:, None, :], (p, B, p))
            A = jnp.swapaxes(jax.vmap(lambda e: pull(e)[0])(E), 0, 1)    # (B, p, m)

        def grad_L(xs, yf, mu):
            def L(yf):
                val = self.objective(*xs, yf.reshape(shape))
                if mu is not None:
                    val = val + (mu * self._constraints(xs, yf, shape)[0]).sum(-1)
                return val.sum()
            return jax.grad(L)(yf)

        def hvp_of(mu):
            return lambda V: _columns(lambda z: grad_L(xs, z, mu), yf, V)

        w, u, mu = _backward.adjoint(_Ops, self.options, gy.reshape(B, m), grad_f, cons, A,
                                     n_eq, hvp_of, str(y.dtype))

        def phi(xs):
            val = (w * grad_L(xs, yf, mu)).sum()
            if u is not None:
                val = val + (u * self._constraints(xs, yf, shape)[0]).sum()
            return val

        return [-g for g in jax.grad(phi)(tuple(xs))]


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
        tol = _solvers.sinkhorn_tol(self.tol, float(jnp.finfo(C.dtype).eps))
        return _solvers.sinkhorn(_Ops, C, r, c, self.eps, tol, self.maxiter)


def entropic_ot(C, r, c, eps=0.1, **options):
    """Functional form of :class:`EntropicOT`: the plan ``P (B, n, k)``."""
    return EntropicOT(eps, **options)(C, r, c)

# The paper's closed-form nodes (robust pooling, Euclidean projections), differentiated by
# their closed-form Jacobians rather than the generic machinery above.
from cvxlayers.declarative import _jax_closed_form as _closed_form  # noqa: E402
from cvxlayers.declarative._jax_closed_form import *  # noqa: E402,F401,F403

__all__ = [*__all__, *_closed_form.__all__]
