"""The activation and Lp-projection examples run with --quick, write their figures, and
print headlines whose figures show the layers match their closed forms and learn."""

import re

import pytest
from example_runner import run_example


def number_after(label: str, text: str) -> float:
    match = re.search(re.escape(label) + r"\s*([0-9.eE+-]+)", text)
    assert match, f"{label!r} not in {text!r}"
    return float(match.group(1))


@pytest.mark.slow
def test_activations_example(tmp_path):
    headline = run_example("activations", tmp_path)
    for figure in ("activations_curves.png", "activations_training.png"):
        assert (tmp_path / figure).stat().st_size > 10_000
    # Five activations against their closed forms, values and gradients, in float64.
    assert number_after("max |layer - closed form| =", headline) < 1e-4
    # Three rings: chance is 1/3; the quick run reaches about 0.87 for every variant.
    with_softmax = number_after("test accuracy", headline)
    with_sparsemax = number_after(",", headline.split("ReLU+softmax layers")[1])
    builtin = number_after("built-in ReLU+softmax", headline)
    assert min(with_softmax, with_sparsemax, builtin) > 0.75
    # Same initialization and minibatches: the layer network ends close to the built-in one.
    assert abs(with_softmax - builtin) < 0.05


@pytest.mark.slow
def test_lp_projections_example(tmp_path):
    headline = run_example("lp_projections", tmp_path)
    for figure in ("lp_projections_2d.png", "lp_projections_training.png"):
        assert (tmp_path / figure).stat().st_size > 10_000
    # Full Jacobians of the L1, L2 and L∞ ball layers against DDN Table I.
    assert number_after("max |layer Jacobian - DDN closed form| =", headline) < 1e-4
    # Six classes: chance is 1/6; the quick run reaches about 0.9 for every variant.
    for variant in ("none", "L2 normalize", "L1 ball layer", "L2 ball layer",
                    "Linf ball layer"):
        assert number_after(variant, headline.split("held-out accuracy:")[1]) > 0.6
