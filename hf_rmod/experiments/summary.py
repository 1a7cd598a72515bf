"""The summary of an evaluation: per-method Section 6.1 metrics on normalised rewards, and its Markdown table.

- :func:`reward_normalization`: the value head's ``reward_mean`` / ``reward_std`` of the scored objectives.
- :func:`summarize_results`: rows -> ``summary.json`` content (bootstrap intervals by :mod:`hf_rmod.metrics`).
- :func:`format_summary_markdown`: that dict -> ``summary.md``.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .. import metrics as _metrics
from .._utils import check_unique_names
from .methods import method_kind
from .results import dedup, load_results

__all__ = ["format_summary_markdown", "reward_normalization", "summarize_results"]


def reward_normalization(value_head: Any, objectives: Sequence[str]) -> tuple[dict, dict]:
    """``({objective: reward_mean}, {objective: reward_std})`` of the value head, for the reward ``objectives``.

    Raises:
        ValueError: a reward objective the value head lacks (it has no statistics to normalise with).
    """
    head_objectives = list(value_head.objectives)
    missing = [g for g in objectives if g not in head_objectives]
    if missing:
        example = ", ".join(f"{g!r}: fn" for g in head_objectives[:2])
        raise ValueError(
            f"The reward functions score objectives {list(objectives)} but the value head has {head_objectives}; "
            f"{missing} have no reward_mean/reward_std to normalise with. Name the reward columns like the head's "
            f"objectives (reward_fns={{{example}, ...}}) or use a head trained on these rewards."
        )
    mean = {g: float(value_head.config.reward_mean[head_objectives.index(g)]) for g in objectives}
    std = {g: float(value_head.config.reward_std[head_objectives.index(g)]) for g in objectives}
    return mean, std


def _per_objective(values: Mapping[str, float] | Sequence[float], objectives: list[str], name: str) -> np.ndarray:
    if isinstance(values, Mapping):
        missing = [g for g in objectives if g not in values]
        if missing:
            raise ValueError(f"`{name}` has no entry for objectives {missing}; give one value per objective.")
        out = [values[g] for g in objectives]
    else:
        out = list(values)
        if len(out) != len(objectives):
            raise ValueError(f"`{name}` has {len(out)} values for {len(objectives)} objectives {objectives}.")
    arr = np.asarray(out, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"`{name}` must be finite, got {out}.")
    return arr


def _group_rows(rows: list[dict], methods: list[str], objectives: list[str]) -> dict[str, dict[int, dict]]:
    """``{method: {prompt_id: row}}`` for the wanted methods; every row must score every objective."""
    by_method: dict[str, dict[int, dict]] = {m: {} for m in methods}
    for row in rows:
        if row["method"] in by_method:
            absent = [g for g in objectives if g not in row["rewards"]]
            if absent:
                raise ValueError(
                    f"Row (prompt_id {row['prompt_id']}, method {row['method']!r}) has no reward for {absent}; "
                    f"it has {sorted(row['rewards'])}."
                )
            by_method[row["method"]][row["prompt_id"]] = row
    return by_method


def _method_stats(rows: dict[int, dict], common: list[int], objectives: list[str], mean: np.ndarray,
                  std: np.ndarray, reference_z: np.ndarray | None, ci: dict) -> dict:
    """The summary entry of one method on the ``common`` prompts."""
    raw = np.array([[rows[p]["rewards"][g] for g in objectives] for p in common], dtype=np.float64)  # (n, G)
    z = (raw - mean) / std  # (n, G)
    stats = _metrics.summarize(z, reference_z if reference_z is not None else z, objectives, **ci)
    first = rows[common[0]]
    has_reference = reference_z is not None
    return {
        "kind": method_kind(first.get("rmod")),
        "rmod": first.get("rmod"),
        "n_prompts": len(common),
        "mean_rewards": stats.mean_rewards,
        "mean_rewards_ci": {g: list(v) for g, v in stats.mean_rewards_ci.items()},
        "worst_case_reward": stats.worst_case_reward,
        "worst_case_reward_ci": list(stats.worst_case_reward_ci),
        "worst_case_win_rate": stats.worst_case_win_rate if has_reference else None,
        "worst_case_win_rate_ci": list(stats.worst_case_win_rate_ci) if has_reference else None,
        "raw_mean_rewards": {g: float(v) for g, v in zip(objectives, raw.mean(axis=0))},
        "raw_mean_rewards_ci": {
            g: list(_metrics.bootstrap_ci(lambda a: a.mean(axis=1), raw[:, j], vectorized=True, **ci))
            for j, g in enumerate(objectives)
        },
        "mean_new_tokens": float(np.mean([rows[p]["num_new_tokens"] for p in common])),
        "mean_seconds": float(np.mean([rows[p]["seconds"] for p in common])),
    }


def summarize_results(
    results_path_or_rows: str | os.PathLike | Iterable[dict],
    objectives: Sequence[str],
    reward_mean: Mapping[str, float] | Sequence[float],
    reward_std: Mapping[str, float] | Sequence[float],
    reference_method: str = "reference",
    *,
    methods: Sequence[str] | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Section 6.1 metrics of every method from the result rows, on normalised rewards.

    Rewards are standardised per objective, ``z_g = (r_g - reward_mean_g) / reward_std_g`` (use the value
    head's ``config.reward_mean`` / ``reward_std``: the statistics of reference-policy responses), because
    ``min_g`` across objectives on raw rewards would just pick the objective with the smaller scale. Only the
    prompts that every summarized method has a row for are used, so all methods are compared on the same
    prompts (``rows_excluded`` counts the rest).

    Per method (:func:`hf_rmod.summarize` on the ``(n, G)`` z-scores against the reference method's responses
    to the same prompts): ``mean_rewards`` / ``mean_rewards_ci`` per objective, ``worst_case_reward`` (mean over
    prompts of ``min_g z_g``) / ``worst_case_reward_ci``, ``worst_case_win_rate`` / ``worst_case_win_rate_ci``
    (ties count one half, so the reference against itself scores 0.5; ``None`` without a reference method),
    ``raw_mean_rewards`` / ``raw_mean_rewards_ci`` (reward units), ``mean_new_tokens``, ``mean_seconds``,
    ``rmod`` (the method's settings, from the rows) and ``kind``.

    Args:
        results_path_or_rows: a ``results.jsonl`` path / evaluation folder, or the rows.
        objectives: the ``G`` reward names to use (keys of each row's ``rewards``).
        reward_mean, reward_std: ``{objective: float}`` or ``G`` floats (std > 0).
        reference_method: the method the win rates compare against.
        methods: which methods, in this order (default: all, in order of first appearance).
        n_resamples, confidence, seed: bootstrap settings (:func:`hf_rmod.bootstrap_ci`).

    Returns:
        ``{"objectives", "normalization": {"reward_mean", "reward_std"}, "reference_method", "n_prompts",
        "prompt_ids", "rows_excluded", "confidence", "n_resamples", "methods": {name: {...}}}`` (JSON-ready).
    """
    if isinstance(results_path_or_rows, (str, os.PathLike)):
        rows = load_results(results_path_or_rows)
    else:
        rows = dedup(results_path_or_rows)
    objectives = check_unique_names(objectives, "objectives")
    mean = _per_objective(reward_mean, objectives, "reward_mean")
    std = _per_objective(reward_std, objectives, "reward_std")
    if (std <= 0).any():
        raise ValueError(f"`reward_std` must be > 0 for every objective, got {std.tolist()}.")
    present = list(dict.fromkeys(r["method"] for r in rows))
    methods = present if methods is None else list(methods)
    missing = [m for m in methods if m not in present]
    if missing or not methods:
        raise ValueError(f"No result rows for methods {missing or methods}; the rows have methods {present}.")
    by_method = _group_rows(rows, methods, objectives)
    common = sorted(set.intersection(*(set(d) for d in by_method.values())))
    if not common:
        raise ValueError(f"No prompt has a result for every method {methods}; summarize fewer methods.")
    excluded = sum(len(d) for d in by_method.values()) - len(common) * len(methods)
    has_reference = reference_method in by_method
    reference_z = None
    if has_reference:
        raw_ref = [[by_method[reference_method][p]["rewards"][g] for g in objectives] for p in common]
        reference_z = (np.array(raw_ref, dtype=np.float64) - mean) / std  # (n, G)
    ci = dict(n_resamples=n_resamples, confidence=confidence, seed=seed)
    return {
        "objectives": objectives,
        "normalization": {
            "reward_mean": dict(zip(objectives, mean.tolist())),
            "reward_std": dict(zip(objectives, std.tolist())),
            "note": "rewards are z-scores (r - reward_mean) / reward_std per objective, with the value head's "
            "statistics of reference-policy responses; raw_mean_rewards are in reward units",
        },
        "reference_method": reference_method if has_reference else None,
        "n_prompts": len(common),
        "prompt_ids": common,
        "rows_excluded": int(excluded),
        "confidence": confidence,
        "n_resamples": n_resamples,
        "methods": {
            name: _method_stats(by_method[name], common, objectives, mean, std, reference_z, ci) for name in methods
        },
    }


def format_summary_markdown(summary: Mapping) -> str:
    """A Markdown report of a :func:`summarize_results` dict: one table row per method."""
    objectives = summary["objectives"]
    pct = int(round(summary["confidence"] * 100))
    ref = summary.get("reference_method")
    norm = summary["normalization"]

    def ci(value, interval):
        return "–" if value is None else f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"

    header = (
        ["method", "worst-case reward (z)", f"worst-case win rate vs {ref or '—'}"]
        + [f"{g} (z)" for g in objectives]
        + [f"{g} (raw)" for g in objectives]
        + ["new tokens", "s / response"]
    )
    statistics = ", ".join(
        f"{g}: mean {norm['reward_mean'][g]:.4g}, std {norm['reward_std'][g]:.4g}" for g in objectives
    )
    lines = [
        f"# Evaluation summary ({summary['n_prompts']} prompts, {pct}% bootstrap CI)",
        "",
        "Rewards are z-scores per objective, `(r - reward_mean) / reward_std` with the value head's statistics "
        f"of reference-policy responses ({statistics}); worst-case = mean over prompts of min over objectives; "
        "win-rate ties count 1/2. Raw columns are mean rewards in reward units.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for name, m in summary["methods"].items():
        cells = [f"`{name}`", ci(m["worst_case_reward"], m["worst_case_reward_ci"]),
                 ci(m["worst_case_win_rate"], m["worst_case_win_rate_ci"])]
        cells += [ci(m["mean_rewards"][g], m["mean_rewards_ci"][g]) for g in objectives]
        cells += [f"{m['raw_mean_rewards'][g]:.4g}" for g in objectives]
        cells += [f"{m['mean_new_tokens']:.1f}", f"{m['mean_seconds']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if summary.get("rows_excluded"):
        lines += ["", f"{summary['rows_excluded']} rows were left out: their prompts lack a result for some method."]
    return "\n".join(lines) + "\n"
