"""What the three faces share besides the maths: argument checks and the OT problem.

Errors name the argument, say what was expected and echo what was received.
"""

from __future__ import annotations

__all__ = ["check_values", "check_inputs", "check_output", "check_eps", "ot_problem"]


def check_values(objective, solve, equality, inequality, init):
    """Checks a node's construction arguments."""
    for name, fn in (("objective", objective), ("solve", solve), ("equality", equality),
                     ("inequality", inequality), ("init", init)):
        if fn is not None and not callable(fn):
            raise TypeError(f"Argument `{name}` must be a callable; received {type(fn).__name__} "
                            f"{fn!r:.60}.")
    if objective is None:
        raise TypeError("Argument `objective` must be a callable f(*xs, y) -> (B,); received None.")
    if solve is None and init is None:
        raise ValueError("Argument `solve` is None, so the default Newton solver runs and needs "
                         "`init(*xs) -> y0`, its starting point; received init=None. Pass "
                         "`init=` or your own `solve=`.")
    if solve is None and (equality is not None or inequality is not None):
        raise ValueError("The default solver handles unconstrained nodes only; received "
                         "`equality` or `inequality` with solve=None. Pass your own `solve=`.")


def check_inputs(xs, is_tensor, kind):
    """Checks a node call's inputs: at least one, every one an array of the framework."""
    if not xs:
        raise TypeError("A declarative node needs at least one input `xs`; received none.")
    for i, x in enumerate(xs):
        if not is_tensor(x):
            raise TypeError(f"Input `xs[{i}]` must be a {kind}; received {type(x).__name__}.")


def check_output(y, is_tensor, kind, name="solve", batch=None, vector=False):
    """Checks what ``solve`` (or ``objective``) returned: a batched array."""
    if not is_tensor(y):
        raise TypeError(f"`{name}` must return a {kind}; received {type(y).__name__}.")
    shape = tuple(y.shape)
    if len(shape) < 1 or (vector and len(shape) != 1) or (batch is not None and shape[0] != batch):
        want = "(B,)" if vector else "(B, ...)"
        raise ValueError(f"`{name}` must return shape {want} with B = {batch if batch else 'the batch'}"
                         f"; received shape {shape}.")


def check_eps(eps):
    if not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"Argument `eps` must be a positive number; received {eps!r}.")


def ot_problem(eps, ops):
    """The entropic OT node's objective and equality constraints, in ``ops``.

    ``f(C, r, c, P) = ⟨C, P⟩ + ε Σ P (log P − 1)``; ``h = (P1 − r, (Pᵀ1 − c)[:-1])``: the
    last column constraint is implied by the others (both marginals have the same mass),
    and dropping it keeps ``A = D_P h`` full rank, as Proposition 4.5 asks.
    """
    def objective(C, r, c, P):
        return ops.sum(C * P + eps * P * (ops.log(P) - 1.0), (-2, -1))

    def equality(C, r, c, P):
        return ops.concat([ops.sum(P, -1) - r, (ops.sum(P, -2) - c)[:, :-1]], -1)

    return objective, equality
