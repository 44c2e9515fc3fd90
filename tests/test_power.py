"""Power analysis on simulated tables: known intervals, the null's false positive rate,
the paper preset's power."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ketamine_nb.exceptions import InputError
from ketamine_nb.power import binomial_interval, interaction_pvalues, power_analysis


def test_binomial_intervals_equal_their_formulas():
    # Wilson 95 % for 5 of 100 (Newcombe 1998, table I: 0.0215-0.1118)
    lo, hi = binomial_interval(5, 100)
    assert lo == pytest.approx(0.0215, abs=1e-4) and hi == pytest.approx(0.1118, abs=1e-4)
    # Clopper-Pearson for 0 of 20: upper bound 1 - 0.025 ** (1 / 20)
    lo, hi = binomial_interval(0, 20, method="clopper-pearson")
    assert lo == 0 and hi == pytest.approx(1 - 0.025 ** (1 / 20), rel=1e-9)
    with pytest.raises(InputError, match="wilson"):
        binomial_interval(1, 2, method="wald")


def test_binomial_interval_contains_its_estimate_at_the_edges():
    # 0 of 3: statsmodels' Wilson lower bound is 5.6e-17 there (alpha = 1 - 0.95
    # is not exactly 0.05), which put a power table's rate 0 outside its interval
    assert binomial_interval(0, 3)[0] == 0.0 and binomial_interval(3, 3)[1] == 1.0
    lo, hi = binomial_interval(np.array([0, 3, 1]), np.array([3, 3, 3]))
    assert ((lo <= np.array([0, 1, 1 / 3])) & (np.array([0, 1, 1 / 3]) <= hi)).all()


def test_fast_interaction_test_equals_region_stats():
    from ketamine_nb.simulate import SimulationParams, simulate_tables
    from ketamine_nb.stats import StatsConfig, region_stats, stats_input

    d = simulate_tables(SimulationParams.idealised(n_subjects=40), seed=3)
    rows, _ = stats_input(d["ground_truth"], d["scores"])
    rows = rows[rows["region"].isin(["BA10_L", "vACC"])]
    ref = region_stats(rows, config=StatsConfig(n_permutations=0, n_bootstrap=0)).set_index(
        ["region", "outcome"])
    for statistic, col in (("t", "p_interaction"), ("aspin_welch", "p_welch_interaction")):
        fast = interaction_pvalues(rows, statistic=statistic).set_index(["region", "outcome"])
        np.testing.assert_allclose(fast["p_interaction"], ref.loc[fast.index, col], rtol=1e-6)
        for c in ("beta_interaction", "r_ketamine", "r_saline"):
            np.testing.assert_allclose(fast[c], ref.loc[fast.index, c], rtol=1e-6)
    with pytest.raises(InputError, match="statistic"):
        interaction_pvalues(rows, statistic="z")


def test_power_table_is_tidy_and_reproducible():
    a = power_analysis("teaching", n_cohorts=3, random_state=1, outcomes=("madrs",))
    b = power_analysis("teaching", n_cohorts=3, random_state=1, outcomes=("madrs",))
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == 7 and set(a["outcome"]) == {"madrs"}
    assert (a["n_cohorts"] == 3).all()
    assert ((a["ci_low"] <= a["rate"]) & (a["rate"] <= a["ci_high"])).all()
    kinds = a.set_index("region")["quantity"]
    assert kinds["BA10_L"] == "power" and kinds["vACC"] == "false_positive_rate"
    # Planted alike in both arms: the model's null is not exactly true (regression dilution).
    assert kinds["BA10_R"] == "rejection_rate"
    with pytest.raises(InputError, match="n_cohorts"):
        power_analysis(n_cohorts=0)


@pytest.mark.slow
def test_null_preset_false_positive_rate_is_five_percent():
    """No planted relation: p < 0.05 in 5 % of the tests, within the Monte-Carlo interval."""
    t = power_analysis("null", n_cohorts=40, random_state=11, outcomes=("madrs",))
    assert (t["quantity"] == "false_positive_rate").all()
    k, n = int(t["n_significant"].sum()), int(t["n_cohorts"].sum())
    lo, hi = binomial_interval(k, n, confidence=0.99)
    assert lo <= 0.05 <= hi, (k, n)
    assert (t["rate"] <= 0.2).all()


@pytest.mark.slow
def test_paper_preset_power_in_left_ba10_is_what_the_paper_implies():
    """At n = 98 the paper's p values imply 25-60 % power for the left BA10 interaction."""
    t = power_analysis("paper", n_cohorts=40, random_state=5, outcomes=("madrs",))
    row = t.set_index("region").loc["BA10_L"]
    assert row["quantity"] == "power"
    assert 0.25 <= row["rate"] <= 0.60, row["rate"]
    assert 0.25 <= row["median_r_ketamine"] <= 0.42
    assert abs(row["median_r_saline"]) < 0.1
