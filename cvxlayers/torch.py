"""PyTorch adapter: a ``torch.nn.Module`` whose forward solves the problem.

Thin by design: it converts tensors to float64 NumPy arrays, calls the framework-free
core, and converts back to the inputs' dtype and device; the gradient is registered
with a ``torch.autograd.Function`` that calls the core's backward.

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

from cvxlayers.core import LayerCore

__all__ = ["CvxpyLayer"]


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


def _to_tensor(array: np.ndarray, dtype, device) -> torch.Tensor:
    """A tensor of the given dtype and device; no copy for float64 on the CPU."""
    if dtype == torch.float64 and device.type == "cpu":
        return torch.from_numpy(np.ascontiguousarray(array))
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
        solver: ``"SCS"`` (default), ``"ECOS"`` or ``"CLARABEL"``; CVXPY's names accepted.
        n_jobs: threads solving a batch (default: one per CPU).
        mode: diffcp derivative mode, ``"dense"`` (default) or ``"lsqr"`` for large problems.
        on_failure: ``"raise"`` (default) or ``"warn"`` (see :class:`cvxlayers.LayerCore`).

    Call:
        ``layer(*params, solver_args=None)``: one tensor per parameter, of its declared
        shape or with one extra leading batch dimension (unbatched ones broadcast).
        Returns a tuple with one tensor per requested variable, in the inputs' dtype and
        on their device, with a leading batch dimension when any parameter is batched.
    """

    def __init__(self, problem, parameters, variables, gp: bool = False, solver="SCS",
                 n_jobs: int | None = None, mode: str = "dense", on_failure: str = "raise"):
        super().__init__()
        self.core = LayerCore(problem, parameters, variables, gp=gp, solver=solver,
                              n_jobs=n_jobs, mode=mode, on_failure=on_failure)

    def forward(self, *params, solver_args: dict | None = None):
        dtype, device = _output_dtype_device(params)
        need_grad = torch.is_grad_enabled() and any(
            isinstance(p, torch.Tensor) and p.requires_grad for p in params)
        if need_grad:
            return _SolveFunction.apply(self.core, solver_args, dtype, device, *params)
        outputs, _ = self.core.forward([_to_numpy(p) for p in params], solver_args,
                                       need_grad=False)
        return tuple(_to_tensor(out, dtype, device) for out in outputs)

    def extra_repr(self) -> str:
        params = ", ".join(spec.label.split(" ")[0] for spec in self.core.parameter_specs)
        outs = ", ".join(out.label.split(" (")[0] for out in self.core.outputs)
        return f"parameters=[{params}], outputs=[{outs}], solver={self.core.solver}"
