"""cvxlayers: differentiable convex optimization layers for PyTorch, TensorFlow/Keras and JAX.

``import cvxlayers`` imports no deep-learning framework; the adapters live in
``cvxlayers.torch``, ``cvxlayers.tensorflow`` and ``cvxlayers.jax``.
"""

from cvxlayers._version import __version__
from cvxlayers.backends import available_solvers
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
