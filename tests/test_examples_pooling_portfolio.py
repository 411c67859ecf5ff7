"""The robust-pooling and Keras-portfolio examples run with --quick and print what they claim."""

import math
import re

from example_runner import run_example

NUMBER = r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|nan|inf)"


POOLS = ("max", "mean", "pseudo_huber", "huber", "welsch", "truncated_quadratic")


def test_robust_pooling_quick(tmp_path):
    last = run_example("robust_pooling", tmp_path)
    for figure in ("robust_pooling_accuracy.png", "robust_pooling_clouds.png"):
        assert (tmp_path / figure).stat().st_size > 0
    # headline: accuracy at 30% outliers: max a, mean b, ...; at 60%: ...
    at30, at60 = last.split("; at 60%:")
    pattern = r"(max|mean|pseudo_huber|huber|welsch|truncated_quadratic) " + NUMBER
    acc30 = {k: float(v) for k, v in re.findall(pattern, at30)}
    acc60 = {k: float(v) for k, v in re.findall(pattern, at60)}
    assert set(acc30) == set(acc60) == set(POOLS), last
    assert all(0.0 <= a <= 1.0 for a in [*acc30.values(), *acc60.values()]), last
    robust = ("pseudo_huber", "huber", "welsch", "truncated_quadratic")
    # Six classes (chance 1/6): with 30 % outliers every robust pooling still classifies
    # well above chance (a broken node or training would sit at chance) ...
    assert all(acc30[k] > 0.35 for k in robust), last
    # ... and better than max pooling, which collapses (seed 0 measured: 0.51-0.53 vs 0.29).
    assert min(acc30[k] for k in robust) > acc30["max"] + 0.1, last


def test_keras_portfolio_quick(tmp_path):
    last = run_example("keras_portfolio", tmp_path)
    for figure in ("keras_portfolio_utility.png", "keras_portfolio_cumulative.png"):
        assert (tmp_path / figure).stat().st_size > 0
    values = dict(re.findall(r"(task-based|two-stage|oracle|equal-weight) " + NUMBER, last))
    utility = {k: float(v) for k, v in values.items()}
    assert set(utility) == {"task-based", "two-stage", "oracle", "equal-weight"}, last
    assert all(math.isfinite(u) for u in utility.values()), last
    # The trained allocator beats the uninformed equal-weight portfolio and cannot beat the
    # oracle by more than noise; training through the layer must not lose to the two-stage
    # baseline by a wide margin (it wins in every run we measured).
    assert utility["task-based"] > utility["equal-weight"] + 0.03, last
    assert utility["task-based"] < utility["oracle"] + 0.02, last
    assert utility["task-based"] > utility["two-stage"] - 0.02, last
