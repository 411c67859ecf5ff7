"""cvxlayers.keras.CvxpyLayer on every Keras backend, one process per backend.

Keras chooses its backend once, at import (``KERAS_BACKEND``), so the checks in
tests/keras_backend_checks.py run in a fresh ``python -m pytest`` per backend. The backends
run in order, each loading the ``.keras`` models the earlier ones saved (TensorFlow's file on
JAX, both on PyTorch), so a model saved on one backend is shown to load on another.
"""

import importlib.util
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODULES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("keras_models")


@pytest.mark.slow  # three fresh interpreters importing their frameworks
@pytest.mark.parametrize("backend", list(MODULES))
def test_keras_layer_on_backend(backend, models_dir):
    if importlib.util.find_spec(MODULES[backend]) is None:
        pytest.skip(f"{MODULES[backend]} is not installed")
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2",
               CVXLAYERS_KERAS_LOAD_DIR=str(models_dir),
               CVXLAYERS_KERAS_SAVE_DIR=str(models_dir))
    # This checkout's cvxlayers, whatever is installed.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
         os.path.join(HERE, "keras_backend_checks.py")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (f"KERAS_BACKEND={backend}:\n{result.stdout[-6000:]}\n"
                                    f"{result.stderr[-3000:]}")
