"""The Sudoku and control examples run with --quick, write their figures, and print a
headline that shows they worked."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_example(name: str, out: Path) -> str:
    """Runs ``examples/NAME.py --quick --out OUT``; returns its headline (last stdout line)."""
    env = dict(os.environ, CVXLAYERS_NO_PROGRESS="1")
    # The examples import cvxlayers from this checkout even where it is not installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, str(ROOT / "examples" / f"{name}.py"), "--quick",
                             "--out", str(out)], capture_output=True, text=True, timeout=600,
                            env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("headline:"), last
    return last


def test_sudoku_qp_layer_learns_the_rules(tmp_path):
    line = run_example("sudoku", tmp_path)
    assert (tmp_path / "sudoku_error_curves.png").is_file()
    assert (tmp_path / "sudoku_learned_A.png").is_file()
    match = re.search(r"OptNet QP ([\d.]+), CNN ([\d.]+) \(blank cells right: ([\d.]+), "
                      r"([\d.]+)\)", line)
    assert match, line
    qp_solved, cnn_solved, qp_cells, cnn_cells = map(float, match.groups())
    assert 0.0 <= cnn_solved <= 1.0 and 0.0 <= cnn_cells <= 1.0
    # Chance is 1/4 per blank cell and ~0 per puzzle; the quick run (seed 0) reaches about
    # 0.8 of the cells and 0.3 of the puzzles.
    assert qp_cells > 0.7, line
    assert qp_solved > 0.15, line


def test_control_policy_tuning_reduces_the_cost(tmp_path):
    line = run_example("control", tmp_path)
    assert (tmp_path / "control_training.png").is_file()
    assert (tmp_path / "control_trajectories.png").is_file()
    match = re.search(r"closed-loop cost ([\d.]+) -> ([\d.]+) \(([-+\d.]+) %\)", line)
    assert match, line
    before, after, change = map(float, match.groups())
    assert after < before
    assert change < -5.0, line
