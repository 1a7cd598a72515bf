"""Tests for hf_rmod.metrics (paper Section 6.1): hand-checkable values, intervals, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_rmod.metrics import (
    MetricSummary,
    PairedComparison,
    bootstrap_ci,
    mean_rewards,
    paired_comparison,
    summarize,
    worst_case_reward,
    worst_case_win_rate,
    worst_objective_of_mean,
)


METHOD = [[1.0, 3.0], [2.0, 0.0], [5.0, 4.0], [1.0, 1.0]]  # minima 1, 0, 4, 1
REFERENCE = [[0.0, 2.0], [1.0, 1.0], [4.0, 6.0], [1.0, 2.0]]  # minima 0, 1, 4, 1


def test_hand_checked_values():
    np.testing.assert_allclose(mean_rewards(METHOD), [9 / 4, 8 / 4])
    assert worst_case_reward(METHOD) == pytest.approx((1 + 0 + 4 + 1) / 4)
    # win, loss, tie, tie -> (1 + 0 + 0.5 + 0.5) / 4
    assert worst_case_win_rate(METHOD, REFERENCE) == pytest.approx(0.5)
    assert worst_case_win_rate(REFERENCE, METHOD) == pytest.approx(0.5)
    assert worst_case_win_rate([[2.0, 2.0]], [[1.0, 5.0]]) == 1.0


def test_accepts_torch_numpy_lists_and_1d():
    t = torch.tensor(METHOD)
    assert worst_case_reward(t) == worst_case_reward(np.array(METHOD)) == worst_case_reward(METHOD)
    np.testing.assert_allclose(mean_rewards([1.0, 2.0, 3.0]), [2.0])  # (n,) is one objective


def test_identical_responses_tie_at_half():
    rng = np.random.default_rng(0)
    r = rng.normal(size=(50, 3))
    assert worst_case_win_rate(r, r) == 0.5


def test_win_rate_uses_min_not_mean():
    method = [[10.0, -1.0]]  # better mean, worse minimum
    reference = [[0.0, 0.0]]
    assert worst_case_win_rate(method, reference) == 0.0


def test_inputs_not_modified():
    m, r = np.array(METHOD), np.array(REFERENCE)
    m0, r0 = m.copy(), r.copy()
    summarize(m, r, ["a", "b"], n_resamples=50)
    np.testing.assert_array_equal(m, m0)
    np.testing.assert_array_equal(r, r0)


def test_validation_errors():
    with pytest.raises(ValueError, match="same shape"):
        worst_case_win_rate(METHOD, REFERENCE[:3])
    with pytest.raises(ValueError, match="NaN"):
        worst_case_reward([[1.0, float("nan")]])
    with pytest.raises(ValueError, match=r"shape \(n, G\)"):
        mean_rewards(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="empty"):
        worst_case_reward(np.zeros((0, 2)))
    with pytest.raises(ValueError, match="`objectives` has 1 names"):
        summarize(METHOD, REFERENCE, ["a"])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci(np.mean, np.arange(5.0), confidence=95)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_ci(np.mean, np.arange(5.0), n_resamples=0)
    with pytest.raises(ValueError, match="same number of rows"):
        bootstrap_ci(lambda a, b: 0.0, np.arange(5.0), np.arange(4.0))


def test_bootstrap_ci_contains_estimate_and_is_seeded():
    rng = np.random.default_rng(1)
    x = rng.normal(size=200)
    low, high = bootstrap_ci(np.mean, x, n_resamples=500)
    assert low < x.mean() < high
    assert (low, high) == bootstrap_ci(np.mean, x, n_resamples=500)
    assert bootstrap_ci(np.mean, x, n_resamples=500, seed=1) != (low, high)
    wide = bootstrap_ci(np.mean, x, n_resamples=500, confidence=0.99)
    assert wide[0] <= low and wide[1] >= high


def test_bootstrap_resampling_is_paired():
    # With paired resampling the difference of identical arrays is exactly 0 on every resample.
    x = np.random.default_rng(2).normal(size=(30, 2))
    assert bootstrap_ci(lambda a, b: (a - b).mean(), x, x.copy(), n_resamples=100) == (0.0, 0.0)


def test_bootstrap_coverage_on_known_distribution():
    # 95% intervals for the mean of N(1, 1) samples of size 100 should cover 1.0 about 95% of the time.
    rng = np.random.default_rng(3)
    trials = 150
    covered = 0
    for t in range(trials):
        x = rng.normal(loc=1.0, size=100)
        low, high = bootstrap_ci(np.mean, x, n_resamples=300, seed=t)
        covered += low <= 1.0 <= high
    assert 0.88 <= covered / trials <= 0.99


def test_summarize_fields_and_intervals():
    rng = np.random.default_rng(4)
    reference = rng.normal(size=(80, 2))
    method = reference + 0.5  # uniformly better: wins every prompt
    s = summarize(torch.tensor(method), reference, ["harmless", "helpful"], n_resamples=200)
    assert isinstance(s, MetricSummary) and s.n_prompts == 80 and s.objectives == ["harmless", "helpful"]
    assert s.worst_case_win_rate == 1.0 and s.worst_case_win_rate_ci == (1.0, 1.0)
    assert s.worst_case_reward == pytest.approx(worst_case_reward(method))
    assert s.reference_worst_case_reward == pytest.approx(worst_case_reward(reference))
    lo, hi = s.worst_case_reward_ci
    assert lo < s.worst_case_reward < hi
    for j, g in enumerate(s.objectives):
        assert s.mean_rewards[g] == pytest.approx(method[:, j].mean())
        assert s.mean_rewards_ci[g][0] < s.mean_rewards[g] < s.mean_rewards_ci[g][1]
    assert "worst-case win rate: 1.0000" in str(s)
    assert s.to_dict()["n_prompts"] == 80


def test_bootstrap_vectorized_matches_the_loop_and_the_documented_draws():
    """One (n_resamples, n) index matrix from default_rng(seed) — the same draws as n_resamples successive
    rng.integers(0, n, size=n) calls — whether the statistic is called per resample or on the whole batch."""
    rng = np.random.default_rng(5)
    m, r = rng.normal(size=(37, 3)), rng.normal(size=(37, 3))
    draws = np.random.default_rng(7)
    by_hand = [(m[idx].min(1) > r[idx].min(1)).mean() for idx in (draws.integers(0, 37, size=37) for _ in range(300))]
    expected = tuple(float(q) for q in np.quantile(by_hand, [0.025, 0.975]))
    loop = bootstrap_ci(lambda a, b: (a.min(1) > b.min(1)).mean(), m, r, n_resamples=300, seed=7)
    vectorized = bootstrap_ci(lambda a, b: (a.min(-1) > b.min(-1)).mean(-1), m, r, n_resamples=300, seed=7,
                              vectorized=True)
    assert loop == vectorized == expected
    with pytest.raises(ValueError, match="one value per resample"):
        bootstrap_ci(np.mean, m, n_resamples=10, vectorized=True)


def test_bootstrap_vectorized_in_chunks_is_the_same(monkeypatch):
    import hf_rmod.metrics as metrics

    x = np.random.default_rng(6).normal(size=(50, 2))
    whole = bootstrap_ci(lambda a: a.min(-1).mean(-1), x, n_resamples=200, vectorized=True)
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 300)  # 3 resamples per chunk
    assert bootstrap_ci(lambda a: a.min(-1).mean(-1), x, n_resamples=200, vectorized=True) == whole


# ----------------------------------------------------------------------------------------------------------------
# worst objective of the mean reward, paired comparisons
# ----------------------------------------------------------------------------------------------------------------


def test_worst_objective_of_mean_differs_from_mean_of_minima():
    # per-objective means (1, 1.5): the worst objective of the mean is objective 0 at 1.0; per-prompt minima (0, 0)
    rewards = [[0.0, 3.0], [2.0, 0.0]]
    assert worst_objective_of_mean(rewards) == (1.0, 0)
    assert worst_case_reward(rewards) == 0.0
    assert worst_objective_of_mean([[5.0, 1.0], [5.0, 2.0]]) == (1.5, 1)
    assert worst_objective_of_mean([[1.0, 1.0]]) == (1.0, 0)  # ties: the first objective
    rng = np.random.default_rng(8)
    for _ in range(20):  # a mean of minima never exceeds the minimum of means
        r = rng.normal(size=(30, 4))
        assert worst_case_reward(r) <= worst_objective_of_mean(r)[0] + 1e-12


def test_summarize_reports_the_worst_objective_of_mean():
    rng = np.random.default_rng(9)
    method = rng.normal(size=(60, 3)) + [0.5, -0.4, 0.3]  # objective 1 is the worst on average
    s = summarize(method, np.zeros((60, 3)), ["x", "y", "z"], n_resamples=200)
    assert s.worst_objective == "y"
    assert s.worst_objective_of_mean == pytest.approx(method[:, 1].mean())
    assert s.reference_worst_objective_of_mean == 0.0
    lo, hi = s.worst_objective_of_mean_ci
    assert lo < s.worst_objective_of_mean < hi
    assert s.worst_objective_of_mean > s.worst_case_reward
    assert "worst objective of the mean" in str(s) and "(y;" in str(s)


def test_paired_comparison_planted_and_hand_checked():
    rng = np.random.default_rng(10)
    baseline = rng.normal(size=(100, 2))
    method = baseline + rng.uniform(0.05, 0.5, size=(100, 1))  # better on every prompt, by a varying margin
    c = paired_comparison(method, baseline, n_resamples=300)
    assert isinstance(c, PairedComparison) and c.n_prompts == 100
    assert c.worst_case_difference == pytest.approx(worst_case_reward(method) - worst_case_reward(baseline))
    assert 0.0 < c.worst_case_difference_ci[0] < c.worst_case_difference < c.worst_case_difference_ci[1]
    assert c.worst_objective_of_mean_difference == pytest.approx(
        worst_objective_of_mean(method)[0] - worst_objective_of_mean(baseline)[0])
    assert c.worst_objective_of_mean_difference_ci[0] > 0.0
    assert c.win_rate == 1.0 and c.win_rate_ci == (1.0, 1.0)
    # pairing cancels the prompt-to-prompt noise both share: the per-prompt difference is the margin alone, so
    # the interval is much narrower than that of either method's worst-case reward
    lo, hi = c.worst_case_difference_ci
    base_lo, base_hi = bootstrap_ci(np.mean, baseline.min(1), n_resamples=300)
    assert hi - lo < 0.5 * (base_hi - base_lo)
    back = paired_comparison(baseline, method, n_resamples=300)
    assert back.worst_case_difference == pytest.approx(-c.worst_case_difference) and back.win_rate == 0.0
    assert back.worst_case_difference_ci == pytest.approx((-hi, -lo))
    assert c.to_dict()["win_rate"] == 1.0
    # against itself: zero difference on every resample, ties everywhere
    same = paired_comparison(baseline, baseline.copy(), n_resamples=50)
    assert same.worst_case_difference_ci == (0.0, 0.0) and same.win_rate == 0.5 and same.win_rate_ci == (0.5, 0.5)


def test_new_metrics_are_invariant_to_permuting_prompts():
    rng = np.random.default_rng(11)
    m, b = rng.normal(size=(40, 3)), rng.normal(size=(40, 3))
    perm = rng.permutation(40)
    assert worst_objective_of_mean(m[perm])[1] == worst_objective_of_mean(m)[1]
    assert worst_objective_of_mean(m[perm])[0] == pytest.approx(worst_objective_of_mean(m)[0])
    c, cp = paired_comparison(m, b, n_resamples=50), paired_comparison(m[perm], b[perm], n_resamples=50)
    for key in ("worst_case_difference", "worst_objective_of_mean_difference", "win_rate"):
        assert getattr(cp, key) == pytest.approx(getattr(c, key))


def test_new_metrics_bad_input_and_one_prompt():
    with pytest.raises(ValueError, match="NaN"):
        worst_objective_of_mean([[1.0, float("nan")]])
    with pytest.raises(ValueError, match="NaN"):
        paired_comparison([[1.0, 2.0]], [[float("inf"), 0.0]])
    with pytest.raises(ValueError, match="same shape"):
        paired_comparison(np.zeros((3, 2)), np.zeros((3, 1)))  # a missing objective
    with pytest.raises(ValueError, match="empty"):
        worst_objective_of_mean(np.zeros((0, 2)))
    # one prompt: every resample is that prompt, so every interval is the point estimate (documented, no error)
    c = paired_comparison([[1.0, 2.0]], [[0.0, 3.0]], n_resamples=20)
    assert c.worst_case_difference == 1.0 and c.worst_case_difference_ci == (1.0, 1.0)
    assert c.win_rate == 1.0 and c.win_rate_ci == (1.0, 1.0)
    s = summarize([[1.0, 2.0]], [[0.0, 3.0]], ["a", "b"], n_resamples=20)
    assert s.worst_objective_of_mean_ci == (1.0, 1.0) and s.worst_objective == "a"
