"""PyTorch face of the declarative nodes: an ``autograd.Function`` around the shared maths.

The forward runs the node's ``solve`` without a graph; the backward builds ``∇_y f``,
the constraint Jacobian and Hessian-vector products of the Lagrangian with
``torch.autograd.grad`` (double backward) and hands them to
:mod:`cvxlayers.declarative._backward`; the gradient of every input that requires one
comes from one last ``autograd.grad``. Plain ``loss.backward()`` works; no
``torch.func`` transform is needed.

Example:
    >>> node = DeclarativeNode(lambda x, y: ((y - x) ** 2).sum(-1) + (y ** 4).sum(-1),
    ...                        init=lambda x: torch.zeros_like(x))
    >>> y = node(x)                      # (B, n) -> (B, n)
    >>> y.sum().backward()               # x.grad by Proposition 4.4
"""

from __future__ import annotations

import math

import torch

from cvxlayers.declarative import _backward, _solvers
from cvxlayers.declarative._node import check_inputs, check_output, check_values

__all__ = ["DeclarativeNode", "argmin", "EntropicOT", "entropic_ot",
           "NonStationaryWarning", "IllConditionedWarning"]

NonStationaryWarning = _backward.NonStationaryWarning
IllConditionedWarning = _backward.IllConditionedWarning


class _Ops:
    """The array operations the shared maths uses, in torch."""

    einsum = staticmethod(torch.einsum)
    eigh = staticmethod(torch.linalg.eigh)
    abs = staticmethod(torch.abs)
    where = staticmethod(torch.where)
    exp = staticmethod(torch.exp)
    log = staticmethod(torch.log)
    maximum = staticmethod(torch.maximum)
    ones_like = staticmethod(torch.ones_like)
    zeros_like = staticmethod(torch.zeros_like)
    diag_embed = staticmethod(torch.diag_embed)

    @staticmethod
    def amax(x, axis=None, keepdims=False):
        return x.amax() if axis is None else x.amax(axis, keepdim=keepdims)

    @staticmethod
    def sum(x, axis):
        return x.sum(axis)

    @staticmethod
    def cast(x, like):
        return x.to(like.dtype)

    @staticmethod
    def concat(xs, axis):
        return torch.cat(xs, axis)

    @staticmethod
    def logsumexp(x, axis):
        return torch.logsumexp(x, axis)

    @staticmethod
    def logical_and(a, b):
        # Elementwise on tensors (CG's per-column masks); Python ``and`` for the loop
        # conditions, whose operands are Python bools (``any`` below, an int counter).
        if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
            return torch.logical_and(torch.as_tensor(a), torch.as_tensor(b))
        return bool(a) and bool(b)

    @staticmethod
    def any(x):
        return bool(x.any())

    @staticmethod
    def all(x, axis):
        return x.all(axis)

    @staticmethod
    def int_scalar(value):
        return value

    @staticmethod
    def while_loop(cond, body, state):
        while cond(state):
            state = body(state)
        return state

    @staticmethod
    def broadcast_eye(m, like):
        eye = torch.eye(m, dtype=like.dtype, device=like.device)
        return eye.expand(like.shape[0], m, m)

    @staticmethod
    def values(tensors):
        return tuple(t.detach().cpu().numpy() for t in tensors)


def _columns(grad_y, yf, V):
    """``(B, m, k)`` products of the Jacobian of ``grad_y`` (a function of ``yf``) with
    the columns of ``V``: one reverse pass per column."""
    cols = [torch.autograd.grad(grad_y, yf, V[..., j], retain_graph=True, allow_unused=True)[0]
            for j in range(V.shape[-1])]
    cols = [torch.zeros_like(yf) if c is None else c for c in cols]
    return torch.stack(cols, -1)


class DeclarativeNode:
    """A layer whose output is ``y(x) ∈ argmin_y f(x, y) s.t. h(x, y) = 0, g(x, y) ≤ 0``.

    Args:
        objective: ``f(*xs, y) -> (B,)``, batched, in torch ops; element ``b`` must depend
            only on ``y[b]`` (and on ``xs``' element ``b`` or on shared parameters).
        solve: ``solve(*xs) -> y`` of shape ``(B, ...)``, any method (closed form, SciPy,
            an inner optimizer); it runs without a graph. ``None``: the default
            saddle-free Newton of an unconstrained node, started at ``init(*xs)``.
        equality: ``h(*xs, y) -> (B, p_eq)`` (or ``(B, ...)``), optional.
        inequality: ``g(*xs, y) -> (B, p_in)``, optional; only active ones
            (``g_i ≥ −active_tol``) enter the gradient.
        init: the default solver's starting point, ``init(*xs) -> y``.
        solver_tol: the default solver's ``‖∇f‖_∞`` tolerance.
        solver_maxiter: the default solver's iteration count.
        **options: the backward's options (method, rcond, active_tol, stationarity_tol,
            cg_tol, cg_maxiter, damping), see :class:`cvxlayers.declarative.Options`.

    Call ``node(*xs)``: every input is a tensor; those requiring grad get gradients
    (pass a node's learnable parameters as inputs).
    """

    def __init__(self, objective, solve=None, *, equality=None, inequality=None, init=None,
                 solver_tol=1e-12, solver_maxiter=100, **options):
        check_values(objective, solve, equality, inequality, init)
        self.objective, self.solve = objective, solve
        self.equality, self.inequality, self.init = equality, inequality, init
        self.solver_tol, self.solver_maxiter = solver_tol, solver_maxiter
        self.options = _backward.Options(**options)

    def __call__(self, *xs):
        check_inputs(xs, torch.is_tensor, "torch.Tensor")
        return _Function.apply(self, *xs)

    # -- forward ---------------------------------------------------------------------
    def _forward(self, xs):
        if self.solve is not None:
            with torch.no_grad():
                y = self.solve(*xs)
            check_output(y, torch.is_tensor, "torch.Tensor")
            return y.detach()
        y0 = self.init(*xs).detach()
        shape = y0.shape

        def fun(yf):
            with torch.no_grad():
                return self.objective(*xs, yf.reshape(shape))

        def grad_and_graph(yf):
            yf = yf.detach().requires_grad_()
            with torch.enable_grad():
                g, = torch.autograd.grad(self.objective(*xs, yf.reshape(shape)).sum(), yf,
                                         create_graph=True)
            return yf, g

        def grad(yf):
            return grad_and_graph(yf)[1].detach()

        def hess(yf):
            yf, g = grad_and_graph(yf)
            eye = _Ops.broadcast_eye(yf.shape[1], yf)
            return _columns(g, yf, eye).detach()

        yf = _solvers.newton(_Ops, fun, grad, hess, y0.reshape(shape[0], -1),
                             self.solver_tol, self.solver_maxiter,
                             torch.finfo(y0.dtype).eps)
        return yf.reshape(shape)

    # -- backward --------------------------------------------------------------------
    def _constraints(self, xs, y):
        parts, n_eq = [], 0
        if self.equality is not None:
            h = self.equality(*xs, y).reshape(y.shape[0], -1)
            parts.append(h)
            n_eq = h.shape[1]
        if self.inequality is not None:
            parts.append(self.inequality(*xs, y).reshape(y.shape[0], -1))
        return (torch.cat(parts, 1) if parts else None), n_eq

    def _backward(self, xs, y, gy, needs):
        shape, B = y.shape, y.shape[0]
        m = math.prod(shape[1:])
        with torch.enable_grad():
            xs = [x.detach().requires_grad_(bool(n)) for x, n in zip(xs, needs)]
            yf = y.detach().reshape(B, m).requires_grad_()
            Y = yf.reshape(shape)
            f = self.objective(*xs, Y)
            check_output(f, torch.is_tensor, "torch.Tensor", name="objective", batch=B, vector=True)
            grad_f, = torch.autograd.grad(f.sum(), yf, retain_graph=True)
            cons, n_eq = self._constraints(xs, Y)
            A = None
            if cons is not None:
                A = torch.stack([torch.autograd.grad(cons[:, i].sum(), yf, retain_graph=True,
                                                     allow_unused=True)[0]
                                 if cons[:, i].requires_grad else torch.zeros_like(yf)
                                 for i in range(cons.shape[1])], 1)
            kept = {}

            def hvp_of(mu):
                L = f if mu is None else f + (mu.detach() * cons).sum(-1)
                gl, = torch.autograd.grad(L.sum(), yf, create_graph=True)
                kept["grad_L"] = gl
                return lambda V: _columns(gl, yf, V).detach()

            w, u, _ = _backward.adjoint(_Ops, self.options, gy.reshape(B, m).detach(),
                                        grad_f.detach(), None if cons is None else cons.detach(),
                                        A, n_eq, hvp_of, str(y.dtype))
            phi = (w * kept["grad_L"]).sum()
            if u is not None:
                phi = phi + (u * cons).sum()
            wanted = [x for x, n in zip(xs, needs) if n]
            grads = iter(torch.autograd.grad(phi, wanted, allow_unused=True) if wanted else ())
        out = []
        for x, n in zip(xs, needs):
            if not n:
                out.append(None)
                continue
            g = next(grads)
            out.append(torch.zeros_like(x) if g is None else -g)
        return out


class _Function(torch.autograd.Function):
    @staticmethod
    def forward(ctx, node, *xs):
        y = node._forward(xs)
        ctx.node = node
        ctx.save_for_backward(*xs, y)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        *xs, y = ctx.saved_tensors
        return (None, *ctx.node._backward(xs, y, gy, ctx.needs_input_grad[1:]))


def argmin(objective, *xs, solve=None, equality=None, inequality=None, **options):
    """Functional form: ``DeclarativeNode(objective, solve, ...)(*xs)``."""
    return DeclarativeNode(objective, solve, equality=equality, inequality=inequality,
                           **options)(*xs)


class EntropicOT(DeclarativeNode):
    """Entropic optimal transport, ``(C, r, c) -> P``, solved by log-domain Sinkhorn and
    differentiated by the generic equality-constrained IFT (Proposition 4.5), not by
    unrolling. See :func:`cvxlayers.declarative._solvers.sinkhorn` for the problem.

    Args:
        eps: the entropic regularization ``ε > 0``.
        tol: Sinkhorn's marginal tolerance; ``None``: ``1e-12`` in float64, ``1e-5`` in
            float32 (see :func:`cvxlayers.declarative._solvers.sinkhorn_tol`).
        maxiter: Sinkhorn's iteration cap.
        **options: the backward's options.
    """

    def __init__(self, eps=0.1, tol=None, maxiter=10_000, **options):
        from cvxlayers.declarative._node import ot_problem, check_eps
        check_eps(eps)
        objective, equality = ot_problem(eps, _Ops)
        super().__init__(objective, self._sinkhorn, equality=equality, **options)
        self.eps, self.tol, self.maxiter = eps, tol, maxiter

    def _sinkhorn(self, C, r, c):
        tol = _solvers.sinkhorn_tol(self.tol, torch.finfo(C.dtype).eps)
        return _solvers.sinkhorn(_Ops, C, r, c, self.eps, tol, self.maxiter)


def entropic_ot(C, r, c, eps=0.1, **options):
    """Functional form of :class:`EntropicOT`: the plan ``P (B, n, k)``."""
    return EntropicOT(eps, **options)(C, r, c)

# The paper's closed-form nodes (robust pooling, Euclidean projections), differentiated by
# their closed-form Jacobians rather than the generic machinery above.
from cvxlayers.declarative import _torch_closed_form as _closed_form  # noqa: E402
from cvxlayers.declarative._torch_closed_form import *  # noqa: E402,F401,F403

__all__ = [*__all__, *_closed_form.__all__]
