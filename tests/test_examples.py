"""The examples run (briefly) and print what they claim."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quickstart_learns_the_constraint():
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py"),
                             "--steps", "60"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("learned h =")
    assert float(last.rsplit("max error", 1)[1]) < 0.15
