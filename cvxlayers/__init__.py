"""cvxlayers: differentiable convex optimization layers for PyTorch, TensorFlow/Keras, JAX
and MLX.

``import cvxlayers`` imports no deep-learning framework; the adapters live in
``cvxlayers.torch``, ``cvxlayers.tensorflow``, ``cvxlayers.jax`` and ``cvxlayers.mlx``.
Solvers that cvxlayers does not ship plug in with :func:`register_solver` or as
``solver=`` objects (see :mod:`cvxlayers.backends.custom`).
"""

from cvxlayers._version import __version__
from cvxlayers.backends import available_solvers, register_solver
from cvxlayers.backends.custom import ConeBatch
from cvxlayers.core import LayerCore
from cvxlayers.errors import (
                              CvxLayersError,
                              NotDCPError,
                              NotDGPError,
                              NotDifferentiableError,
                              NotDPPError,
                              EngineError,
                              ParameterError,
                              ParameterTypeError,
                              ParameterWarning,
                              ProblemError,
                              SolverError,
)

__all__ = [
    "__version__",
    "available_solvers",
    "register_solver",
    "ConeBatch",
    "LayerCore",
    "CvxLayersError",
    "NotDCPError",
    "NotDGPError",
    "NotDifferentiableError",
    "NotDPPError",
    "EngineError",
    "ParameterError",
    "ParameterTypeError",
    "ParameterWarning",
    "ProblemError",
    "SolverError",
]
