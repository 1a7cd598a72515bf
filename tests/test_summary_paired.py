"""summarize_results: both worst-case metrics, the paired comparisons against each baseline and the head-to-head
win rates, on planted result rows (no model)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hf_rmod.experiments.summary import comparison_baselines, format_summary_markdown, summarize_results
from hf_rmod.metrics import worst_case_reward, worst_objective_of_mean

OBJECTIVES = ["a", "b"]
MEAN, STD = [0.0, 0.0], [1.0, 1.0]  # rewards are their own z-scores
N = 40
FAST = dict(n_resamples=200)

SETTINGS = {
    "reference": None,
    "best_of_k4": {"num_candidates": 4, "block_size": None, "lam": 0.5, "weights": "robust"},
    "best_of_k2": {"num_candidates": 2, "block_size": None, "lam": 0.5, "weights": "robust"},
    "cd_a_k4_b8": {"num_candidates": 4, "block_size": 8, "weights": "a"},
    "cd_b_k4_b16": {"num_candidates": 4, "block_size": 16, "weights": "b"},
    "uniform_k4_b8": {"num_candidates": 4, "block_size": 8, "weights": "uniform"},
    "uniform_k2_b8": {"num_candidates": 2, "block_size": 8, "weights": "uniform"},
    "rmod_k4_b8_lam0.5": {"num_candidates": 4, "block_size": 8, "lam": 0.5, "weights": "robust"},
}


def _rewards() -> dict[str, np.ndarray]:
    """``{method: (N, 2)}``; RMOD is UNIFORM (same K, B) plus a positive margin on every prompt and objective."""
    rng = np.random.default_rng(0)
    out = {name: rng.normal(size=(N, 2)) for name in SETTINGS}
    out["rmod_k4_b8_lam0.5"] = out["uniform_k4_b8"] + rng.uniform(0.1, 0.6, size=(N, 1))
    out["cd_a_k4_b8"] = out["cd_a_k4_b8"] + [1.0, -1.0]  # objective b is its worst on average
    return out


def _rows(rewards: dict[str, np.ndarray], prompt_ids=None) -> list[dict]:
    ids = list(range(N)) if prompt_ids is None else list(prompt_ids)
    return [
        {"prompt_id": ids[i], "prompt": f"p{ids[i]}", "method": name, "rmod": SETTINGS[name],
         "rewards": dict(zip(OBJECTIVES, map(float, r[i]))), "num_new_tokens": 10, "seconds": 0.1}
        for name, r in rewards.items() for i in range(N)
    ]


@pytest.fixture(scope="module")
def planted():
    rewards = _rewards()
    return rewards, summarize_results(_rows(rewards), OBJECTIVES, MEAN, STD, **FAST)


def _comparison(summary, method, baseline):
    (c,) = [c for c in summary["comparisons"] if (c["method"], c["baseline"]) == (method, baseline)]
    return c


def test_baselines_of_each_method():
    methods = {name: {"kind": k, "rmod": SETTINGS[name]} for name, k in [
        ("reference", "reference"), ("best_of_k4", "best_of_k"), ("best_of_k2", "best_of_k"),
        ("cd_a_k4_b8", "fixed_weights"), ("cd_b_k4_b16", "fixed_weights"), ("uniform_k4_b8", "uniform"),
        ("uniform_k2_b8", "uniform"), ("rmod_k4_b8_lam0.5", "rmod")]}
    baselines = comparison_baselines(methods, "reference")
    assert baselines["rmod_k4_b8_lam0.5"] == ["reference", "best_of_k4", "cd_a_k4_b8", "uniform_k4_b8"]
    assert all(baselines[n] == ["reference"] for n in methods if n not in ("reference", "rmod_k4_b8_lam0.5"))
    assert "reference" not in baselines
    no_ref = comparison_baselines(methods, None)
    assert list(no_ref) == ["rmod_k4_b8_lam0.5"] and no_ref["rmod_k4_b8_lam0.5"][0] == "best_of_k4"
    # settings missing from the stored overrides take RMODConfig's defaults (K = 16, B = 16)
    defaults = {"r": {"kind": "rmod", "rmod": {"weights": "robust"}},
                "u": {"kind": "uniform", "rmod": {"num_candidates": 16, "block_size": 16, "weights": "uniform"}}}
    assert comparison_baselines(defaults, None) == {"r": ["u"]}


def test_policy_baselines_are_compared_with_uniform_and_distill_with_rs_mod_and_rmod():
    methods = {"reference": {"kind": "reference", "rmod": None},
               "uniform_k4_b8": {"kind": "uniform", "rmod": SETTINGS["uniform_k4_b8"]},
               "rmod_k4_b8_lam0.5": {"kind": "rmod", "rmod": SETTINGS["rmod_k4_b8_lam0.5"]},
               "rs_w0.5": {"kind": "rewarded_soup", "rmod": None}, "mod_w0.5": {"kind": "mod", "rmod": None},
               "distill_rmod": {"kind": "policy", "rmod": None}}
    baselines = comparison_baselines(methods, "reference")
    assert baselines["rmod_k4_b8_lam0.5"] == ["reference", "uniform_k4_b8", "distill_rmod"]
    assert baselines["rs_w0.5"] == baselines["mod_w0.5"] == ["reference", "uniform_k4_b8"]
    assert baselines["distill_rmod"] == ["reference", "uniform_k4_b8", "rs_w0.5", "mod_w0.5"]
    assert baselines["uniform_k4_b8"] == ["reference"]


def test_planted_comparisons_and_hand_values(planted):
    rewards, summary = planted
    assert json.loads(json.dumps(summary)) == summary  # JSON-ready
    better = _comparison(summary, "rmod_k4_b8_lam0.5", "uniform_k4_b8")
    assert better["baseline_kind"] == "uniform" and better["n_prompts"] == N
    assert better["worst_case_difference_ci"][0] > 0.0 and better["worst_objective_of_mean_difference_ci"][0] > 0.0
    assert better["win_rate"] == 1.0 and better["win_rate_ci"] == [1.0, 1.0]
    assert summary["head_to_head"]["uniform_k4_b8"]["rmod_k4_b8_lam0.5"]["win_rate"] == 0.0
    for c in summary["comparisons"]:
        m, b = rewards[c["method"]], rewards[c["baseline"]]
        assert c["worst_case_difference"] == pytest.approx(worst_case_reward(m) - worst_case_reward(b))
        assert c["worst_objective_of_mean_difference"] == pytest.approx(
            worst_objective_of_mean(m)[0] - worst_objective_of_mean(b)[0])
        wins = np.where(m.min(1) > b.min(1), 1.0, np.where(m.min(1) == b.min(1), 0.5, 0.0))
        assert c["win_rate"] == pytest.approx(wins.mean())
        lo, hi = c["worst_case_difference_ci"]
        assert lo - 1e-9 <= c["worst_case_difference"] <= hi + 1e-9
        h2h = summary["head_to_head"][c["method"]][c["baseline"]]
        assert h2h == {"win_rate": c["win_rate"], "win_rate_ci": c["win_rate_ci"]}
    assert len(summary["comparisons"]) == (len(SETTINGS) - 1) + 3  # vs reference, plus RMOD's 3 other baselines
    # the win rate against the reference is the per-method one, interval included
    for name, m in summary["methods"].items():
        if name != "reference":
            assert summary["head_to_head"][name]["reference"]["win_rate"] == m["worst_case_win_rate"]
            assert summary["head_to_head"][name]["reference"]["win_rate_ci"] == m["worst_case_win_rate_ci"]
    names = list(summary["methods"])
    assert set(summary["head_to_head"]) == set(names)
    assert all(set(summary["head_to_head"][a]) == set(names) - {a} for a in names)
    for a in names:  # ties count one half on both sides: A over B and B over A sum to 1
        for b in names:
            if a != b:
                total = summary["head_to_head"][a][b]["win_rate"] + summary["head_to_head"][b][a]["win_rate"]
                assert total == pytest.approx(1.0)


def test_both_worst_case_metrics_per_method(planted):
    rewards, summary = planted
    cd = summary["methods"]["cd_a_k4_b8"]
    assert cd["worst_objective"] == "b"
    assert cd["worst_objective_of_mean"] == pytest.approx(rewards["cd_a_k4_b8"][:, 1].mean())
    assert cd["worst_objective_of_mean"] > cd["worst_case_reward"]  # they differ on this planted example
    for m in summary["methods"].values():
        lo, hi = m["worst_objective_of_mean_ci"]
        assert lo <= m["worst_objective_of_mean"] + 1e-9 and m["worst_objective_of_mean"] <= hi + 1e-9
        assert m["worst_objective"] in OBJECTIVES


def test_permuting_prompts_leaves_point_estimates_unchanged(planted):
    rewards, summary = planted
    perm = np.random.default_rng(1).permutation(N)
    relabelled = _rows(rewards, prompt_ids=perm)  # the same responses under shuffled prompt ids
    shuffled = [relabelled[i] for i in np.random.default_rng(2).permutation(len(relabelled))]
    again = summarize_results(shuffled, OBJECTIVES, MEAN, STD, methods=list(SETTINGS), **FAST)
    for name, m in summary["methods"].items():
        for key in ("worst_case_reward", "worst_objective_of_mean", "worst_case_win_rate"):
            assert again["methods"][name][key] == pytest.approx(m[key])
        assert again["methods"][name]["worst_objective"] == m["worst_objective"]
    for c, d in zip(summary["comparisons"], again["comparisons"]):
        assert (c["method"], c["baseline"]) == (d["method"], d["baseline"])
        for key in ("worst_case_difference", "worst_objective_of_mean_difference", "win_rate"):
            assert d[key] == pytest.approx(c[key])


def test_comparisons_use_the_common_prompts(planted):
    rewards, _ = planted
    rows = [r for r in _rows(rewards) if not (r["method"] == "uniform_k4_b8" and r["prompt_id"] >= 30)]
    summary = summarize_results(rows, OBJECTIVES, MEAN, STD, **FAST)
    assert summary["n_prompts"] == 30 and all(c["n_prompts"] == 30 for c in summary["comparisons"])
    c = _comparison(summary, "rmod_k4_b8_lam0.5", "best_of_k4")
    m, b = rewards["rmod_k4_b8_lam0.5"][:30], rewards["best_of_k4"][:30]
    assert c["worst_case_difference"] == pytest.approx(worst_case_reward(m) - worst_case_reward(b))


def test_bad_rows_raise_and_one_prompt_is_degenerate(planted):
    rewards, _ = planted
    rows = _rows(rewards)
    rows[5] = {**rows[5], "rewards": {"a": float("nan"), "b": 0.0}}
    with pytest.raises(ValueError, match=r"prompt_id 5, method 'reference'.*non-finite rewards"):
        summarize_results(rows, OBJECTIVES, MEAN, STD, **FAST)
    rows[5] = {**rows[5], "rewards": {"a": None, "b": 0.0}}
    with pytest.raises(ValueError, match="non-finite"):
        summarize_results(rows, OBJECTIVES, MEAN, STD, **FAST)
    rows[5] = {**rows[5], "rewards": {"b": 0.0}}
    with pytest.raises(ValueError, match=r"has no reward for \['a'\]"):
        summarize_results(rows, OBJECTIVES, MEAN, STD, **FAST)
    one = [r for r in _rows(rewards) if r["prompt_id"] == 0]
    summary = summarize_results(one, OBJECTIVES, MEAN, STD, **FAST)
    assert summary["n_prompts"] == 1
    for c in summary["comparisons"]:  # one prompt: every interval collapses to its point estimate
        assert c["worst_case_difference_ci"] == pytest.approx([c["worst_case_difference"]] * 2)
        assert c["win_rate_ci"] == [c["win_rate"]] * 2


def test_markdown_tables(planted):
    _, summary = planted
    md = format_summary_markdown(summary)
    assert "worst objective of mean (z)" in md and "## Paired comparisons" in md
    c = _comparison(summary, "rmod_k4_b8_lam0.5", "uniform_k4_b8")
    lo, hi = c["worst_case_difference_ci"]
    assert f"| `rmod_k4_b8_lam0.5` | `uniform_k4_b8` | {c['worst_case_difference']:+.3f} [{lo:+.3f}, {hi:+.3f}] |" in md
    assert "## Head-to-head worst-case win rates" in md and "| row beats column |" in md
    cd = summary["methods"]["cd_a_k4_b8"]
    assert f"{cd['worst_objective_of_mean']:.3f} [" in md and "] b |" in md
    # an old summary without the new keys still renders; many methods: the matrix is left to summary.json
    old = {k: v for k, v in summary.items() if k not in ("comparisons", "head_to_head")}
    assert "Paired comparisons" not in format_summary_markdown(old)
    many = {**summary, "methods": {f"m{i}": summary["methods"]["reference"] for i in range(13)}, "comparisons": []}
    assert "13 methods: see `head_to_head` in summary.json." in format_summary_markdown(many)


def test_worst_case_plot_marks_the_worst_objective(planted, tmp_path):
    pytest.importorskip("matplotlib")
    from hf_rmod.experiments.plots import write_plots

    _, summary = planted
    paths = write_plots(summary, [], tmp_path)
    assert paths["worst_case_reward"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    old = {**summary, "methods": {n: {k: v for k, v in m.items() if not k.startswith("worst_objective")}
                                  for n, m in summary["methods"].items()}}
    assert "worst_case_reward" in write_plots(old, [], tmp_path / "old")  # summaries written before still plot


def test_block_weights_are_summarized_for_robust_methods():
    rows = []
    for p in range(4):
        for method, rmod, weights in [("reference", None, None),
                                      ("rmod_k2_b4_lam0.5", {"num_candidates": 2, "block_size": 4, "lam": 0.5},
                                       [[1.0, 0.0], [0.5, 0.5]])]:
            row = {"prompt_id": p, "method": method, "rmod": rmod, "policy": None, "num_new_tokens": 8,
                   "seconds": 1.0, "rewards": {"a": float(p), "b": 1.0}}
            if weights is not None:
                row.update(weights=weights, value_objectives=["a", "b"])
            rows.append(row)
    summary = summarize_results(rows, ["a", "b"], [0.0, 0.0], [1.0, 1.0], n_resamples=20)
    bw = summary["methods"]["rmod_k2_b4_lam0.5"]["block_weights"]
    assert bw == {"blocks": 8, "mean": {"a": 0.75, "b": 0.25}, "concentrated_share": 0.5}
    assert summary["methods"]["reference"]["block_weights"] is None
    text = format_summary_markdown(summary)
    assert "## Weights w* per block" in text and "| `rmod_k2_b4_lam0.5` | 8 | 0.750 | 0.250 | 0.500 |" in text
