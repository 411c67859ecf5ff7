"""Declarative nodes (Gould, Hartley & Campbell, *Deep Declarative Networks*).

A node outputs ``y(x) ∈ argmin_y f(x, y) s.t. h(x, y) = 0, g(x, y) ≤ 0``, solved by any
method in the forward pass and differentiated by the implicit function theorem in the
backward pass (the paper's Propositions 4.4–4.6). This package holds the framework-neutral
maths; the faces are ``cvxlayers.declarative.torch``, ``.tensorflow`` and ``.jax``, each with
``DeclarativeNode``, ``argmin``, ``EntropicOT`` and ``entropic_ot``.

``import cvxlayers.declarative`` imports no deep-learning framework.
"""

from cvxlayers.declarative._backward import IllConditionedWarning, NonStationaryWarning, Options
from cvxlayers.declarative._ift import DENSE_MAX

__all__ = ["Options", "NonStationaryWarning", "IllConditionedWarning", "DENSE_MAX"]
