"""PyTorch adapter: a ``torch.nn.Module`` whose forward solves the problem.

Thin by design: it converts tensors to float64 NumPy arrays, calls the framework-free
core, and converts back to the inputs' dtype and device; the gradient is registered
with a ``torch.autograd.Function`` that calls the core's backward. Under ``torch.compile``
and ``torch.func`` the calls go through the custom ops of :mod:`cvxlayers._torch_ops`
instead, which the tracer sees whole.

Example:
    >>> layer = CvxpyLayer(problem, parameters=[A, b], variables=[x])
    >>> x_star, = layer(A_batch, b_batch)      # (B, m, n), (B, m) -> (B, n)
    >>> x_star.sum().backward()
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from cvxlayers import _torch_ops as _ops
from cvxlayers.core import LayerCore, with_warm_start
from cvxlayers.errors import ParameterError

__all__ = ["CvxpyLayer", "qp"]


def _to_numpy(value):
    """A float64 CPU array for a tensor; other values go to the core's validation as they are."""
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if value.dtype == torch.float64 and value.device.type == "cpu":
            return value.numpy()
        if value.is_complex():  # passed on as is, so that the core rejects it by name
            return value.cpu().numpy()
        return value.to(device="cpu", dtype=torch.float64).numpy()
    return value


def _is_functorch_wrapped(value: torch.Tensor) -> bool:
    """Whether ``value`` is a ``torch.func`` transform's wrapper (vmap's BatchedTensor,
    grad's GradTrackingTensor): such tensors have no storage to hand to the solver."""
    check = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", None)
    return bool(check is not None and check(value))


def _check_convertible(core: LayerCore, params: Sequence) -> None:
    """Refuses, naming the parameter, the tensors whose values cannot reach the solver.

    The solver needs numbers on the host. A meta tensor has a shape but no data; without
    this check it fails deep in the conversion with torch's own error, which names neither
    the parameter nor the way out. (``torch.func``'s wrapped tensors, which have no storage
    either, never get here: they take the custom-op path.) Other problems with a value are
    the core's to report.
    """
    for spec, value in zip(core.parameter_specs, params):
        if not isinstance(value, torch.Tensor):
            continue
        if value.device.type == "meta":
            raise ParameterError(
                f"Parameter {spec.label} received a tensor on the 'meta' device (shape "
                f"{tuple(value.shape)}, dtype {value.dtype}); meta tensors have no data to "
                "solve with. Pass a tensor with values (e.g. materialize the module with "
                "to_empty() and initialize it first).")


def _to_tensor(array: np.ndarray, dtype, device) -> torch.Tensor:
    """A tensor of the given dtype and device; no copy for float64 on the CPU."""
    if dtype == torch.float64 and device.type == "cpu":
        # np.require, not np.ascontiguousarray: the latter turns a 0-d array into shape (1,).
        return torch.from_numpy(np.require(array, requirements="C"))
    return torch.as_tensor(array, dtype=dtype, device=device)


def _output_dtype_device(params: Sequence):
    """Outputs follow the inputs: the promoted floating dtype of the tensor inputs (the
    default dtype if none is floating) and their common device."""
    dtype, device = None, None
    for t in params:
        if not isinstance(t, torch.Tensor):
            continue
        if t.is_floating_point():
            dtype = t.dtype if dtype is None else torch.promote_types(dtype, t.dtype)
        if device is None:
            device = t.device
        elif t.device != device:
            raise ValueError(f"All parameter tensors must be on one device; received tensors "
                             f"on {device} and {t.device}.")
    return dtype or torch.get_default_dtype(), device or torch.device("cpu")


class _SolveFunction(torch.autograd.Function):
    """The solution map as an autograd node; backward is the core's adjoint."""

    @staticmethod
    def forward(ctx, core: LayerCore, solver_args, dtype, device, *params):
        outputs, state = core.forward([_to_numpy(p) for p in params], solver_args, need_grad=True)
        ctx.core, ctx.state = core, state
        ctx.param_meta = [(p.dtype, p.device) if isinstance(p, torch.Tensor) else None
                          for p in params]
        return tuple(_to_tensor(out, dtype, device) for out in outputs)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grad_outputs):
        grads = [None if g is None else _to_numpy(g) for g in grad_outputs]
        param_grads = ctx.core.backward(ctx.state, grads)
        results = []
        for grad, meta, needed in zip(param_grads, ctx.param_meta, ctx.needs_input_grad[4:]):
            if meta is None or not needed:
                results.append(None)
            else:
                results.append(_to_tensor(grad, meta[0], meta[1]))
        return (None, None, None, None) + tuple(results)


class CvxpyLayer(torch.nn.Module):
    """A differentiable convex optimization layer for PyTorch.

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
        gradient: the derivative the backward computes: ``"implicit"`` (default),
            ``"lpgd"`` or ``"smoothed"`` (``solver="QP"``); see :mod:`cvxlayers.gradients`.
        gradient_args: its arguments (``tau``, ``rho`` for LPGD; ``mu`` for smoothed).
        warm_start: the calls' default for ``warm_start``.
        executor: where batched calls solve: ``None`` (this process's threads), a Dask
            ``distributed.Client``, ``"ray"`` or any ``concurrent.futures.Executor``; per
            call, ``solver_args={"executor": ...}`` (see the "Large batches" guide).
        chunk_size: batch elements per chunk on an executor (default: automatic).

    Call:
        ``layer(*params, solver_args=None, warm_start=None)``: one tensor per parameter, of
        its declared shape or with one extra leading batch dimension (unbatched ones
        broadcast). ``warm_start=True`` starts each batch element's solve from its solution
        of this layer's previous call (SCS and QP; a changed batch size starts cold; ECOS
        and Clarabel warn once and solve cold); ``None`` takes the layer's default.
        ``layer.core.last_stats`` holds the last solve's iterations and statuses.
        Returns a tuple with one tensor per requested variable, in the inputs' dtype and
        on their device, with a leading batch dimension when any parameter is batched.
    """

    def __init__(self, problem, parameters, variables, gp: bool = False, solver="SCS",
                 n_jobs: int | None = None, mode: str = "lsqr", on_failure: str = "raise",
                 solver_args: dict | None = None, gradient: str = "implicit",
                 gradient_args: dict | None = None, warm_start: bool = False, *,
                 executor=None, chunk_size: int | None = None):
        super().__init__()
        self.core = LayerCore(problem, parameters, variables, gp=gp, solver=solver,
                              n_jobs=n_jobs, mode=mode, on_failure=on_failure,
                              solver_args=solver_args, gradient=gradient,
                              gradient_args=gradient_args, warm_start=warm_start,
                              executor=executor, chunk_size=chunk_size)
        self._op_key = _ops.register(self.core)  # how the custom op finds the core

    def forward(self, *params, solver_args: dict | None = None, warm_start: bool | None = None):
        solver_args = with_warm_start(solver_args, warm_start)
        if torch.compiler.is_compiling() or any(
                isinstance(p, torch.Tensor) and _is_functorch_wrapped(p) for p in params):
            # Traced by torch.compile, or under torch.func: the custom op (see _torch_ops).
            return self._forward_op(params, {"solver_args": solver_args})
        _check_convertible(self.core, params)
        dtype, device = _output_dtype_device(params)
        need_grad = torch.is_grad_enabled() and any(
            isinstance(p, torch.Tensor) and p.requires_grad for p in params)
        if need_grad:
            return _SolveFunction.apply(self.core, solver_args, dtype, device, *params)
        outputs, _ = self.core.forward([_to_numpy(p) for p in params], solver_args,
                                       need_grad=False)
        return tuple(_to_tensor(out, dtype, device) for out in outputs)

    def _forward_op(self, params, call: dict):
        """The call as the ``cvxlayers::solve`` custom op; ``call`` holds the keyword
        options that go to the core: ``solver_args``, and any other key is passed to
        ``LayerCore.forward`` by name."""
        dtype, device = _output_dtype_device(params)
        tensors = [p if isinstance(p, torch.Tensor) else torch.as_tensor(p) for p in params]
        numbers = []
        options = _ops.encode_options(call, numbers)
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            return _ops.SolveFunction.apply(self._op_key, options, numbers, dtype, device,
                                            *tensors)
        return tuple(_ops.solve(tensors, self._op_key, options, numbers, dtype, device))

    def __setstate__(self, state):
        super().__setstate__(state)
        self._op_key = _ops.register(self.core)  # a copy's core is its own

    def extra_repr(self) -> str:
        return self.core.summary()


class _QPFunction(torch.autograd.Function):
    """The batched interior-point QP as an autograd node (data stays on its device)."""

    @staticmethod
    def forward(ctx, tol, max_iter, kkt_form, on_failure, has_eq, Q, q, G, h, A, b):
        from cvxlayers import status as st
        from cvxlayers.backends.qp_solver import batch_shapes, solve_qp

        batch, n, m, p, batched = batch_shapes(Q, q, G, h, A, b)
        dtype, device = _output_dtype_device([Q, q, G, h] + ([A, b] if has_eq else []))
        work = torch.float64  # accurate whatever the inputs' precision; cast back at the end
        # Small CPU solves run on NumPy views of the tensors, as the layer's do (see
        # qp_backend.numpy_pays): PyTorch's per-operation dispatch (~10 µs) is most of a
        # small solve's time.
        ctx.on_numpy = on_numpy = device.type == "cpu" and _numpy_pays(batch, n, m, p)

        def full(value, shape, name):
            value = value.detach().to(device=device, dtype=work)
            if on_numpy:
                value = value.numpy()
                finite = bool(np.isfinite(value).all())
            else:
                finite = bool(torch.isfinite(value).all())
            if not finite:
                raise ValueError(f"`{name}` contains NaN or inf values.")
            if batched[name] or len(shape) == 2:  # a shared matrix stays 2-D: less traffic
                return value
            return (np.broadcast_to if on_numpy else torch.Tensor.expand)(value,
                                                                          (batch,) + shape)

        if not has_eq:
            A = torch.zeros((0, n), dtype=work, device=device)
            b = torch.zeros((batch, 0), dtype=work, device=device)
            if on_numpy:
                A, b = A.numpy(), b.numpy()
        data = [full(Q, (n, n), "Q"), full(q, (n,), "q"), full(G, (m, n), "G"),
                full(h, (m,), "h")]
        data += [full(A, (p, n), "A"), full(b, (p,), "b")] if has_eq else [A, b]
        with np.errstate(all="ignore"):  # failed elements may overflow; they are reported
            solution = solve_qp(data[0], data[1], data[4], data[5], data[2], data[3],
                                tol=tol, max_iter=max_iter, kkt_form=kkt_form)
        # A compiled backward's re-solve (ctx.resolve) does not repeat the forward's warning.
        usable = st.apply_policy(solution.statuses, {}, "QP", on_failure,
                                 warn=not getattr(ctx, "resolve", False))
        x = torch.from_numpy(solution.x.copy()) if ctx.on_numpy else solution.x.clone()
        if not usable.all():
            x[torch.as_tensor(~usable, device=device)] = float("nan")
        ctx.solution, ctx.matrices, ctx.batched = solution, (data[0], data[4], data[2]), batched
        ctx.usable = usable if on_numpy else torch.as_tensor(usable, device=device)
        ctx.meta = [(t.dtype, t.device) if t is not None else None for t in (Q, q, G, h, A, b)]
        return x.to(dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_x):
        from cvxlayers.backends.qp_solver import qp_adjoint

        solution, (Q, A, G) = ctx.solution, ctx.matrices
        if ctx.on_numpy:
            g_x = np.where(ctx.usable[:, None], _to_numpy(grad_x), 0.0)
        else:
            g_x = torch.where(ctx.usable[:, None], grad_x.to(torch.float64), 0.0)
        zeros = np.zeros_like if ctx.on_numpy else torch.zeros_like
        zeros_nu, zeros_lam = zeros(solution.nu), zeros(solution.lam)
        wanted = [name for name, need in zip("PqGhAb", ctx.needs_input_grad[5:]) if need]
        with np.errstate(all="ignore"):
            dQ, dq, dA, db, dG, dh = qp_adjoint(solution, Q, A, G, g_x, zeros_nu, zeros_lam,
                                                needed=wanted)
        grads = []
        for name, grad, meta, needed in zip(("Q", "q", "G", "h", "A", "b"),
                                            (dQ, dq, dG, dh, dA, db), ctx.meta,
                                            ctx.needs_input_grad[5:]):
            if meta is None or not needed or name not in ctx.batched:
                grads.append(None)
                continue
            if not ctx.batched[name]:
                grad = grad.sum(0)  # NumPy's axis or torch's dim
            if ctx.on_numpy:
                grad = torch.from_numpy(np.ascontiguousarray(grad))
            grads.append(grad.to(dtype=meta[0], device=meta[1]))
        return (None, None, None, None, None) + tuple(grads)


def qp(Q, q, G, h, A=None, b=None, *, tol: float | None = None, max_iter: int = 50,
       kkt_form: str = "auto",
       on_failure: str = "raise") -> torch.Tensor:
    """Solves a batch of QPs, differentiably: OptNet's and qpth's functional form.

    For each batch element::

        z* = argmin_z ½ zᵀQz + qᵀz   subject to  Gz ≤ h,  Az = b.

    Args:
        Q: (n, n) or (B, n, n), symmetric positive semidefinite.
        q: (n,) or (B, n).  G: (m, n) or (B, m, n).  h: (m,) or (B, m).
        A: (p, n) or (B, p, n), or ``None`` (or qpth's empty tensor) for no equalities.
        b: (p,) or (B, p), or ``None`` (or qpth's empty tensor) for no equalities.
        tol: the interior-point method's relative tolerance on residuals and gap; by
            default 1e-11 where Q is safely positive definite (the dual reduction), else
            1e-9 (the primal one).
        max_iter: its iteration limit.
        kkt_form: the Newton step's reduction: ``"auto"`` (default), ``"primal"``
            (factors Q + GᵀWG; any convex QP) or ``"dual"`` (factors G Q⁻¹ Gᵀ + diag, formed
            once; Q positive definite). See the QP guide.
        on_failure: ``"raise"`` (default) or ``"warn"``, as for the layers.

    Returns:
        z* of shape (B, n) (B = 1 when nothing is batched, as qpth does), in the inputs'
        floating dtype and on their device. Unbatched inputs broadcast over the batch and
        their gradients are summed over it. The solve runs in float64 on the inputs' device
        (CPU or CUDA) as one batched computation; the backward reuses its factorization.
    """
    if _is_empty(A) and _is_empty(b):
        A = b = None  # qpth's spelling of "no equalities": empty tensors
    has_eq = A is not None or b is not None  # batch_shapes rejects one without the other
    if torch.compiler.is_compiling() or any(
            isinstance(t, torch.Tensor) and _is_functorch_wrapped(t) for t in (Q, q, G, h, A, b)):
        # Traced by torch.compile, or under torch.func: the custom op (see _torch_ops).
        if has_eq and (A is None or b is None):
            raise ValueError("Pass both `A` and `b` for equality constraints, or neither.")
        inputs = (Q, q, G, h, A, b, tol, max_iter, kkt_form, on_failure)
        if torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad
                                           for t in inputs[:6]):
            return _ops.QPFunction.apply(*inputs)
        return _ops.qp(*inputs)
    return _QPFunction.apply(tol, max_iter, kkt_form, on_failure, has_eq, Q, q, G, h, A, b)


def _numpy_pays(batch: int, n: int, m: int, p: int) -> bool:
    """Whether a CPU solve of this size is faster on NumPy: the layer backend's rule, for
    the larger reduced KKT matrix (n + p or m + p rows)."""
    from cvxlayers.backends.qp_backend import numpy_pays

    return numpy_pays(batch, max(n, m) + p)


def _is_empty(value) -> bool:
    return isinstance(value, torch.Tensor) and value.numel() == 0
