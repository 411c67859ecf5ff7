"""The Sudoku and control examples run with --quick, write their figures, and print a
headline that shows they worked."""

import re

from example_runner import run_example


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
