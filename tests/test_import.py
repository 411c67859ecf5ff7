"""`import cvxlayers` must not import any deep-learning framework."""

import subprocess
import sys


def test_import_is_framework_free():
    code = ("import sys, cvxlayers; "
            "loaded = [m for m in ('torch', 'tensorflow', 'keras', 'jax') if m in sys.modules]; "
            "print(loaded); sys.exit(1 if loaded else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
