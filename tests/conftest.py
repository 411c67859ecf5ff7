import os
import sys

# The zoo module sits beside the tests.
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


@pytest.fixture
def need_grad_calls(monkeypatch):
    """Records the `need_grad` flag of every LayerCore.forward call, in order."""
    from cvxlayers import LayerCore

    seen = []
    original = LayerCore.forward

    def spy(self, values, solver_args=None, need_grad=True, **kwargs):
        seen.append(need_grad)
        return original(self, values, solver_args, need_grad, **kwargs)

    monkeypatch.setattr(LayerCore, "forward", spy)
    return seen


@pytest.fixture
def x64():
    """JAX in float64 for the test (JAX computes in float32 by default)."""
    import jax

    with jax.enable_x64(True):
        yield
