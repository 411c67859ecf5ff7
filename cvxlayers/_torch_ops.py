"""The layers as ``torch.library`` custom ops, so that ``torch.compile`` traces them whole.

Dynamo cannot trace the NumPy/SciPy solve (it stops at ``ndarray.dtype``), and a graph break
there splits a model into pieces. A custom op is opaque to the tracer: it sees the op, a
*fake* implementation that gives the outputs' shapes and dtypes without solving, and the
autograd formula registered with it, and the compiled graph calls the real implementation.

Two pairs of ops:

- ``cvxlayers::solve`` / ``cvxlayers::solve_backward`` for :class:`cvxlayers.torch.CvxpyLayer`:
  ``(θ₁, …, θₖ) -> (out₁, …, outₗ)`` and ``(θ, ∂L/∂out) -> ∂L/∂θ = (∂out/∂θ)ᵀ ∂L/∂out``;
- ``cvxlayers::qp`` / ``cvxlayers::qp_backward`` for :func:`cvxlayers.torch.qp`.

An op's arguments may be tensors, numbers and strings only, so the layer travels as an int
key into a weak registry of :class:`~cvxlayers.core.LayerCore` objects (the module holds
its core; the registry never keeps one alive), and the call's options as a Python literal
plus a list of its numbers. The backward re-solves from the saved inputs
(``LayerCore.backward_from_residuals``, as the JAX and TensorFlow graph adapters do): an
op's outputs must be tensors, and keeping the solver's per-call state anywhere else would
be a global store that leaks whenever a forward's backward never runs. The solvers' cold
starts are deterministic, so the re-solve linearizes at the forward's own solution. Eager
calls keep the ``autograd.Function`` path, which saves that second solve.
"""

from __future__ import annotations

import ast
import itertools
import types
import weakref

import torch

_CORES: "weakref.WeakValueDictionary[int, object]" = weakref.WeakValueDictionary()
_KEYS = itertools.count()


def register(core) -> int:
    """A fresh key under which the ops find ``core`` (held weakly)."""
    key = next(_KEYS)
    _CORES[key] = core
    return key


def _core(key: int):
    core = _CORES.get(key)
    if core is None:  # only reachable by calling the op by hand with a stale key
        raise RuntimeError(f"cvxlayers: no live layer has key {key}; the layer that compiled "
                           "this graph was garbage-collected.")
    return core


_NUMBER = "__cvxlayers_number__"


def encode_options(options, numbers: list) -> str:
    """``options`` (a dict of numbers, strings, bools, None, lists and dicts) as a Python
    literal whose numbers are moved to ``numbers``, written with operations Dynamo traces.

    The literal becomes a constant of the graph (a changed string or flag recompiles); the
    numbers travel as the op's ``list[float]`` argument, because Dynamo turns a number that
    changes between calls into a symbolic value, which has no ``repr``. Each number is
    written ``{_NUMBER: [kind, index]}``, kind ``"i"`` for ints.
    """
    if isinstance(options, dict):
        return "{" + ", ".join(encode_options(k, numbers) + ": " + encode_options(v, numbers)
                               for k, v in options.items()) + "}"
    if isinstance(options, (list, tuple)):
        return "[" + ", ".join(encode_options(v, numbers) for v in options) + "]"
    if options is None or isinstance(options, (bool, str)):
        return repr(options)
    if isinstance(options, (int, float)):
        numbers.append(options)
        kind = "'i'" if isinstance(options, int) else "'f'"
        return "{'" + _NUMBER + "': [" + kind + ", " + str(len(numbers) - 1) + "]}"
    raise TypeError(f"Under torch.compile and torch.func, `solver_args` values must be "
                    f"numbers, strings, booleans, None, lists or dicts; received "
                    f"{type(options).__name__} {options!r}.")


def _decode(text: str, numbers) -> dict:
    def restore(value):
        if isinstance(value, dict):
            if set(value) == {_NUMBER}:
                kind, index = value[_NUMBER]
                return int(numbers[index]) if kind == "i" else float(numbers[index])
            return {k: restore(v) for k, v in value.items()}
        if isinstance(value, list):
            return [restore(v) for v in value]
        return value

    return restore(ast.literal_eval(text))


def _core_call(key: int, options: str, numbers) -> tuple:
    """The core, and the call's keyword options: ``solver_args`` and any others the adapter
    put in (they go to ``LayerCore.forward`` by name)."""
    call = _decode(options, numbers)
    return _core(key), call.pop("solver_args"), call


def _fresh(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous copy: an op's outputs must not alias its inputs (NumPy may hand back a
    view of one), and their strides must be the fake implementation's (contiguous)."""
    return tensor.clone(memory_format=torch.contiguous_format)


# --- CvxpyLayer ------------------------------------------------------------------------

@torch.library.custom_op("cvxlayers::solve", mutates_args=())
def solve(params: list[torch.Tensor], key: int, options: str, numbers: list[float],
          dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
    """The layer's outputs for ``params``, in ``dtype`` on ``device``."""
    from cvxlayers.torch import _to_numpy, _to_tensor

    core, solver_args, call = _core_call(key, options, numbers)
    outputs, _ = core.forward([_to_numpy(p) for p in params], solver_args, need_grad=False,
                              **call)
    return [_fresh(_to_tensor(out, dtype, device)) for out in outputs]


def _static(shape) -> tuple:
    """``shape`` with symbolic sizes (a batch size Dynamo made dynamic) as ``None``: the
    core's shape rule takes those as unknown."""
    return tuple(None if isinstance(d, torch.SymInt) else d for d in shape)


def _batch_size(tensors, ndims):
    """The leading size of the first tensor that carries a batch dimension (maybe
    symbolic), or None."""
    return next((t.shape[0] for t, ndim in zip(tensors, ndims)
                 if t is not None and t.ndim == ndim + 1), None)


@solve.register_fake
def _solve_fake(params, key, options, numbers, dtype, device):
    core = _core(key)
    shapes = core.output_shapes([_static(p.shape) for p in params])
    batch = _batch_size(params, [len(spec.shape) for spec in core.parameter_specs])
    return [torch.empty(tuple(batch if d is None else d for d in shape), dtype=dtype,
                        device=device) for shape in shapes]


@torch.library.custom_op("cvxlayers::solve_backward", mutates_args=())
def solve_backward(params: list[torch.Tensor], grads: list[torch.Tensor], key: int,
                   options: str, numbers: list[float]) -> list[torch.Tensor]:
    """``∂L/∂θ`` for each parameter, shaped and typed like it, from ``∂L/∂out``."""
    from cvxlayers.torch import _to_numpy, _to_tensor

    core, solver_args, call = _core_call(key, options, numbers)
    grads_np, = core.backward_from_residuals(
        [_to_numpy(p) for p in params], (), [[_to_numpy(g) for g in grads]], solver_args,
        **call)
    return [_fresh(_to_tensor(g, p.dtype, p.device)) for g, p in zip(grads_np, params)]


@solve_backward.register_fake
def _solve_backward_fake(params, grads, key, options, numbers):
    return [torch.empty(p.shape, dtype=p.dtype, device=p.device) for p in params]


class SolveFunction(torch.autograd.Function):
    """``cvxlayers::solve`` with its adjoint ``cvxlayers::solve_backward``.

    An ``autograd.Function`` with ``setup_context`` rather than ``register_autograd``: the
    Function that ``register_autograd`` generates does not run under ``torch.func``
    transforms, and this one does (``grad``, ``vjp``, ``jacrev``; ``vmap`` through the ops'
    batching rules below). Dynamo traces it whole, the ops inside staying opaque.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(key, options, numbers, dtype, device, *params):
        return tuple(solve(list(params), key, options, numbers, dtype, device))

    @staticmethod
    def setup_context(ctx, inputs, output):
        key, options, numbers, _, _, *params = inputs
        ctx.save_for_backward(*params)
        ctx.key, ctx.options, ctx.numbers = key, options, numbers
        ctx.output_meta = [(o.shape, o.dtype, o.device) for o in output]

    @staticmethod
    def backward(ctx, *grads):
        params = ctx.saved_tensors
        grads = [torch.zeros(shape, dtype=dtype, device=device) if g is None else g
                 for g, (shape, dtype, device) in zip(grads, ctx.output_meta)]
        with torch.no_grad():  # once differentiable: no graph of the adjoint itself
            param_grads = solve_backward(list(params), grads, ctx.key, ctx.options,
                                         ctx.numbers)
        return (None,) * 5 + tuple(g if need else None
                                   for g, need in zip(param_grads, ctx.needs_input_grad[5:]))


def _vmapped(info, in_dims, params, key, expand):
    """``params`` with vmap's dimension moved to the front, each parameter then batched
    once (or, with ``expand``, the unmapped ones broadcast to vmap's size): the layer
    batches natively, so a vmapped call is one batched call."""
    from cvxlayers.errors import ParameterError

    specs = _core(key).parameter_specs
    moved = []
    for spec, value, dim in zip(specs, params, in_dims):
        ndim = len(spec.shape)
        if dim is None:
            if value.ndim != ndim:
                raise ParameterError(
                    f"Parameter {spec.label} has a batch dimension of its own (shape "
                    f"{tuple(value.shape)}) inside torch.func.vmap, which maps another "
                    "argument; a layer call takes one batch dimension. Map this parameter "
                    "too, or call the layer on the batch directly.")
            moved.append(value.expand((info.batch_size,) + tuple(value.shape)) if expand
                         else value)
            continue
        value = value.movedim(dim, 0)
        if value.ndim != ndim + 1:
            raise ParameterError(
                f"Parameter {spec.label} has shape {tuple(value.shape[1:])} inside "
                f"torch.func.vmap; a layer call under vmap takes each parameter with its "
                f"declared shape {tuple(spec.shape)} (vmap supplies the batch dimension). "
                "Call the layer on the batch directly instead of nesting batches.")
        moved.append(value)
    return moved


@solve.register_vmap
def _solve_vmap(info, in_dims, params, key, options, numbers, dtype, device):
    if all(d is None for d in in_dims[0]):
        outputs = solve(params, key, options, numbers, dtype, device)
        return outputs, [None] * len(outputs)
    outputs = solve(_vmapped(info, in_dims[0], params, key, False), key, options, numbers,
                    dtype, device)
    return outputs, [0] * len(outputs)


@solve_backward.register_vmap
def _solve_backward_vmap(info, in_dims, params, grads, key, options, numbers):
    if all(d is None for d in in_dims[0] + in_dims[1]):
        out = solve_backward(params, grads, key, options, numbers)
        return out, [None] * len(out)
    # Every element gets its own gradient, shared parameters too: broadcast them all.
    params = _vmapped(info, in_dims[0], params, key, True)
    grads = [g.movedim(d, 0) if d is not None else g.expand((info.batch_size,) + g.shape)
             for g, d in zip(grads, in_dims[1])]
    out = solve_backward(params, grads, key, options, numbers)
    return out, [0] * len(out)


# --- qp ----------------------------------------------------------------------------------

_QP_NAMES = ("Q", "q", "G", "h", "A", "b")


def _qp_call(inputs, tol, max_iter, kkt_form, on_failure, needs=None):
    """Runs the eager ``_QPFunction``'s forward (and backward, for ``needs``) on plain
    tensors, with a stand-in for autograd's ctx: one implementation of the maths."""
    from cvxlayers.torch import _QPFunction

    has_eq = inputs[4] is not None
    ctx = types.SimpleNamespace(
        needs_input_grad=(False,) * 5 + tuple(needs or (False,) * 6), resolve=needs is not None)
    x = _QPFunction.forward(ctx, tol, max_iter, kkt_form, on_failure, has_eq, *inputs)
    return ctx, x


@torch.library.custom_op("cvxlayers::qp", mutates_args=())
def qp(Q: torch.Tensor, q: torch.Tensor, G: torch.Tensor, h: torch.Tensor,
       A: torch.Tensor | None, b: torch.Tensor | None, tol: float | None, max_iter: int,
       kkt_form: str, on_failure: str) -> torch.Tensor:
    """z* of the batched QP (see :func:`cvxlayers.torch.qp`)."""
    return _fresh(_qp_call((Q, q, G, h, A, b), tol, max_iter, kkt_form, on_failure)[1])


@qp.register_fake
def _qp_fake(Q, q, G, h, A, b, tol, max_iter, kkt_form, on_failure):
    from cvxlayers.backends.qp_solver import batch_shapes
    from cvxlayers.torch import _output_dtype_device

    tensors = (Q, q, G, h, A, b)
    shaped = [None if t is None else types.SimpleNamespace(shape=_static(t.shape), ndim=t.ndim)
              for t in tensors]
    batch = batch_shapes(*shaped)[0]  # the eager path's checks and messages
    if batch is None:  # a symbolic batch size
        batch = _batch_size(tensors, (2, 1, 2, 1, 2, 1))
    n = q.shape[-1]  # symbolic too under dynamic=True
    dtype, device = _output_dtype_device([t for t in tensors if t is not None])
    return torch.empty((batch, n), dtype=dtype, device=device)


@torch.library.custom_op("cvxlayers::qp_backward", mutates_args=())
def qp_backward(Q: torch.Tensor, q: torch.Tensor, G: torch.Tensor, h: torch.Tensor,
                A: torch.Tensor | None, b: torch.Tensor | None, grad_x: torch.Tensor,
                tol: float | None, max_iter: int, kkt_form: str, on_failure: str,
                needs: list[bool]) -> list[torch.Tensor]:
    """Gradients of Q, q, G, h, A, b (an empty tensor where none is needed or given)."""
    from cvxlayers.torch import _QPFunction

    inputs = (Q, q, G, h, A, b)
    ctx, _ = _qp_call(inputs, tol, max_iter, kkt_form, on_failure, needs)
    grads = _QPFunction.backward(ctx, grad_x)
    return [torch.empty(0, dtype=grad_x.dtype, device=grad_x.device) if g is None
            else _fresh(g) for g in grads[5:]]


@qp_backward.register_fake
def _qp_backward_fake(Q, q, G, h, A, b, grad_x, tol, max_iter, kkt_form, on_failure, needs):
    out = []
    for t, need in zip((Q, q, G, h, A, b), needs):
        out.append(torch.empty(t.shape, dtype=t.dtype, device=t.device) if need and t is not None
                   else torch.empty(0, dtype=grad_x.dtype, device=grad_x.device))
    return out


class QPFunction(torch.autograd.Function):
    """``cvxlayers::qp`` with its adjoint ``cvxlayers::qp_backward`` (as SolveFunction)."""

    generate_vmap_rule = True  # so that vmap reaches the op's rule, which says why not

    @staticmethod
    def forward(Q, q, G, h, A, b, tol, max_iter, kkt_form, on_failure):
        return qp(Q, q, G, h, A, b, tol, max_iter, kkt_form, on_failure)

    @staticmethod
    def setup_context(ctx, inputs, output):
        tensors, config = inputs[:6], inputs[6:]
        ctx.save_for_backward(*(torch.empty(0) if t is None else t for t in tensors))
        ctx.given = [t is not None for t in tensors]
        ctx.config = config

    @staticmethod
    def backward(ctx, grad_x):
        saved = [t if given else None for t, given in zip(ctx.saved_tensors, ctx.given)]
        needs = [bool(n) and given for n, given in zip(ctx.needs_input_grad[:6], ctx.given)]
        with torch.no_grad():  # once differentiable: no graph of the adjoint itself
            grads = qp_backward(*saved, grad_x, *ctx.config, needs)
        return tuple(g if need else None for g, need in zip(grads, needs)) + (None,) * 4


def _qp_no_vmap(info, in_dims, *args):
    raise NotImplementedError(
        "cvxlayers.torch.qp does not run under torch.func.vmap; it batches natively: "
        "pass the batch as a leading dimension of Q, q, G, h, A, b.")


qp.register_vmap(_qp_no_vmap)
qp_backward.register_vmap(_qp_no_vmap)
