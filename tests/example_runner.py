"""Runs an example script the way the test suite checks it: ``--quick``, figures to a
temporary folder, no progress bars; returns the headline (the script's last line)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_example(name: str, out: Path) -> str:
    """Runs ``examples/NAME.py --quick --out OUT``; returns its headline line."""
    env = dict(os.environ, CVXLAYERS_NO_PROGRESS="1", TF_CPP_MIN_LOG_LEVEL="2")
    # The script's folder goes on sys.path by itself; the package needs the repository root
    # when cvxlayers is not installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, str(ROOT / "examples" / f"{name}.py"), "--quick",
                             "--out", str(out)], capture_output=True, text=True, timeout=600,
                            env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("headline:"), last
    return last
