"""The summary of an evaluation: per-method Section 6.1 metrics on normalised rewards, and its Markdown table.

- :func:`reward_normalization`: the value head's ``reward_mean`` / ``reward_std`` of the scored objectives.
- :func:`summarize_results`: rows -> ``summary.json`` content (bootstrap intervals by :mod:`hf_rmod.metrics`):
  per-method metrics (both worst-case metrics), paired comparisons of each method against its baselines
  (:func:`comparison_baselines`) and the head-to-head worst-case win rates of every pair of methods.
- :func:`format_summary_markdown`: that dict -> ``summary.md``.

Why one module of ~520 lines: the summary dict and its Markdown rendering share every key and column; the
metrics themselves are in :mod:`hf_rmod.metrics`, the plots in :mod:`.plots`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .. import metrics as _metrics
from .._utils import check_unique_names
from ..config import RMODConfig
from .methods import POLICY_KINDS, method_kind
from .results import RUN_FILE, dedup, load_results

__all__ = ["comparison_baselines", "format_summary_markdown", "reward_normalization", "summarize_folder",
           "summarize_results"]


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
    if value_head.normalization is not None:  # the value-model protocol (hf_rmod.value_model.ValueModel)
        means, stds = value_head.normalization
    else:
        raise ValueError(
            f"The value model {type(value_head).__name__} has no reward statistics (reward_mean/reward_std) to "
            "normalise the rewards with; use a value head, or a RewardValueModel built with normalization=(mean, std)."
        )
    mean = {g: float(means[head_objectives.index(g)]) for g in objectives}
    std = {g: float(stds[head_objectives.index(g)]) for g in objectives}
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
    """``{method: {prompt_id: row}}`` for the wanted methods; every row must score every objective, finitely."""
    by_method: dict[str, dict[int, dict]] = {m: {} for m in methods}
    for row in rows:
        if row["method"] in by_method:
            where = f"Row (prompt_id {row['prompt_id']}, method {row['method']!r})"
            absent = [g for g in objectives if g not in row["rewards"]]
            if absent:
                raise ValueError(f"{where} has no reward for {absent}; it has {sorted(row['rewards'])}.")
            bad = {g: row["rewards"][g] for g in objectives if not _is_finite(row["rewards"][g])}
            if bad:
                raise ValueError(
                    f"{where} has non-finite rewards {bad}; rescore that response or drop the row before summarizing."
                )
            by_method[row["method"]][row["prompt_id"]] = row
    return by_method


def _is_finite(value: Any) -> bool:
    try:
        return bool(np.isfinite(float(value)))
    except (TypeError, ValueError):
        return False


def _method_stats(rows: dict[int, dict], common: list[int], objectives: list[str], raw: np.ndarray,
                  z: np.ndarray, reference_z: np.ndarray | None, ci: dict) -> dict:
    """The summary entry of one method: its ``(n, G)`` raw rewards and z-scores on the ``common`` prompts."""
    stats = _metrics.summarize(z, reference_z if reference_z is not None else z, objectives, **ci)
    first = rows[common[0]]
    has_reference = reference_z is not None
    return {
        "kind": method_kind(first.get("rmod"), first.get("policy")),
        "rmod": first.get("rmod"),
        "n_prompts": len(common),
        "mean_rewards": stats.mean_rewards,
        "mean_rewards_ci": {g: list(v) for g, v in stats.mean_rewards_ci.items()},
        "worst_case_reward": stats.worst_case_reward,
        "worst_case_reward_ci": list(stats.worst_case_reward_ci),
        "worst_objective_of_mean": stats.worst_objective_of_mean,
        "worst_objective_of_mean_ci": list(stats.worst_objective_of_mean_ci),
        "worst_objective": stats.worst_objective,
        "worst_case_win_rate": stats.worst_case_win_rate if has_reference else None,
        "worst_case_win_rate_ci": list(stats.worst_case_win_rate_ci) if has_reference else None,
        "raw_mean_rewards": {g: float(v) for g, v in zip(objectives, raw.mean(axis=0))},
        "raw_mean_rewards_ci": {
            g: list(_metrics.bootstrap_ci(lambda a: a.mean(axis=1), raw[:, j], vectorized=True, **ci))
            for j, g in enumerate(objectives)
        },
        "mean_new_tokens": float(np.mean([rows[p]["num_new_tokens"] for p in common])),
        "mean_seconds": float(np.mean([rows[p]["seconds"] for p in common])),
        "block_weights": _block_weights(rows, common),
    }


#: A block's weights count as concentrated on one objective when its largest weight exceeds this.
CONCENTRATED = 0.99


def _block_weights(rows: dict[int, dict], common: list[int]) -> dict | None:
    """How the per-block weights ``w*`` of a decoding method were spread (paper §6.3: λ controls their sparsity):
    the number of blocks, the mean weight per objective and the share of blocks whose largest weight exceeds
    :data:`CONCENTRATED`. None when the rows record no weights (plain sampling, policy methods)."""
    blocks = [(w, rows[p].get("value_objectives")) for p in common for w in (rows[p].get("weights") or [])]
    if not blocks:
        return None
    names = blocks[0][1] or [str(j) for j in range(len(blocks[0][0]))]
    w = np.asarray([b[0] for b in blocks], dtype=np.float64)  # (blocks, G)
    return {
        "blocks": int(w.shape[0]),
        "mean": dict(zip(names, w.mean(axis=0).tolist())),
        "concentrated_share": float((w.max(axis=1) > CONCENTRATED).mean()),
    }


def _setting(method: Mapping, key: str) -> Any:
    """A method's RMOD setting from its stored overrides, else the ``RMODConfig`` default."""
    rmod = method.get("rmod") or {}
    return rmod[key] if key in rmod else RMODConfig.__dataclass_fields__[key].default


def comparison_baselines(methods: Mapping[str, Mapping], reference_method: str | None) -> dict[str, list[str]]:
    """``{method: [baseline, ...]}``: what each summarized method is compared against, in summary order.

    - every method other than the reference: the reference method (when it has rows);
    - RMOD methods (kind ``rmod``) also: UNIFORM (kind ``uniform``) and every fixed-weight controlled decoding
      (kind ``fixed_weights``, e.g. CD-``g``) with the same K (``num_candidates``) and B (``block_size``), robust
      Best-of-K (kind ``best_of_k``) with the same K, and every policy method (kind ``policy``, e.g.
      DISTILL-RMOD);
    - the paper's policy baselines (kinds ``rewarded_soup``, ``mod``, ``policy``) also: every UNIFORM method
      (the paper finds RS and MOD below UNIFORM); a policy method (DISTILL-RMOD) also every Rewarded Soup and MOD
      method (the paper finds it the best of the methods that decode without a value model).

    Other pairs (e.g. RMOD at two λ, or UNIFORM against CD-``g``) appear in the head-to-head win rates only.

    Args:
        methods: ``{name: {"kind", "rmod"}}``, e.g. ``summary["methods"]``.
        reference_method: the reference method's name (``None``: no reference comparisons).
    """
    out: dict[str, list[str]] = {}
    for name, m in methods.items():
        wanted = [reference_method] if reference_method in methods and name != reference_method else []
        if m["kind"] == "rmod":
            k, b = _setting(m, "num_candidates"), _setting(m, "block_size")
            for other, o in methods.items():
                if o["kind"] == "best_of_k" and _setting(o, "num_candidates") == k:
                    wanted.append(other)
                elif o["kind"] in ("uniform", "fixed_weights") and (
                        _setting(o, "num_candidates"), _setting(o, "block_size")) == (k, b):
                    wanted.append(other)
            wanted += [other for other, o in methods.items() if o["kind"] == "policy"]
        if m["kind"] in POLICY_KINDS:
            wanted += [other for other, o in methods.items() if o["kind"] == "uniform"]
        if m["kind"] == "policy":
            wanted += [other for other, o in methods.items() if o["kind"] in ("rewarded_soup", "mod")]
        if wanted:
            out[name] = wanted
    return out


def _comparisons(stats: Mapping[str, Mapping], z: Mapping[str, np.ndarray], reference_method: str | None,
                 ci: dict) -> list[dict]:
    """Paired comparisons (:func:`hf_rmod.metrics.paired_comparison`) of each method against its baselines."""
    out = []
    for name, baselines in comparison_baselines(stats, reference_method).items():
        for base in baselines:
            c = _metrics.paired_comparison(z[name], z[base], **ci)
            out.append({
                "method": name, "baseline": base, "baseline_kind": stats[base]["kind"], "n_prompts": c.n_prompts,
                "worst_case_difference": c.worst_case_difference,
                "worst_case_difference_ci": list(c.worst_case_difference_ci),
                "worst_objective_of_mean_difference": c.worst_objective_of_mean_difference,
                "worst_objective_of_mean_difference_ci": list(c.worst_objective_of_mean_difference_ci),
                "win_rate": c.win_rate, "win_rate_ci": list(c.win_rate_ci),
            })
    return out


def _head_to_head(z: Mapping[str, np.ndarray], ci: dict) -> dict[str, dict[str, dict]]:
    """``{A: {B: {"win_rate", "win_rate_ci"}}}`` for every ordered pair A != B: A's ``min_g z_g`` beats B's."""
    minima = {m: zm.min(axis=1, keepdims=True) for m, zm in z.items()}  # each (n, 1): the win rate only needs these
    table: dict[str, dict[str, dict]] = {}
    for a, ma in minima.items():
        table[a] = {}
        for b, mb in minima.items():
            if a != b:
                low_high = _metrics.bootstrap_ci(_metrics._win_rate_resamples, ma, mb, vectorized=True, **ci)
                table[a][b] = {"win_rate": _metrics.worst_case_win_rate(ma, mb), "win_rate_ci": list(low_high)}
    return table


def _select(rows: list[dict], methods: Sequence[str] | None, objectives: list[str]) -> tuple[list, dict, list]:
    """``(methods, {method: {prompt_id: row}}, common prompt ids)``; raises on unknown methods or no overlap."""
    present = list(dict.fromkeys(r["method"] for r in rows))
    methods = present if methods is None else list(methods)
    missing = [m for m in methods if m not in present]
    if missing or not methods:
        raise ValueError(f"No result rows for methods {missing or methods}; the rows have methods {present}.")
    by_method = _group_rows(rows, methods, objectives)
    common = sorted(set.intersection(*(set(d) for d in by_method.values())))
    if not common:
        raise ValueError(f"No prompt has a result for every method {methods}; summarize fewer methods.")
    return methods, by_method, common


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
    """Section 6.1 metrics of every method from the result rows, on normalised rewards, and paired comparisons.

    Rewards are standardised per objective, ``z_g = (r_g - reward_mean_g) / reward_std_g`` (use the value
    head's ``config.reward_mean`` / ``reward_std``: the statistics of reference-policy responses), because
    ``min_g`` across objectives on raw rewards would just pick the objective with the smaller scale. Only the
    prompts that every summarized method has a row for are used, so all methods (and every comparison) are on
    the same prompts (``rows_excluded`` counts the rest).

    ``methods[name]`` (:func:`hf_rmod.summarize` on the ``(n, G)`` z-scores against the reference method's
    responses): ``mean_rewards`` / ``_ci`` per objective, ``worst_case_reward`` / ``_ci`` (mean over prompts of
    ``min_g z_g``), ``worst_objective_of_mean`` / ``_ci`` (``min_g`` of the mean z-reward, the paper's figure
    metric) and ``worst_objective`` (the objective attaining it), ``worst_case_win_rate`` / ``_ci`` (ties count
    one half; ``None`` without a reference method), ``raw_mean_rewards`` / ``_ci`` (reward units),
    ``mean_new_tokens``, ``mean_seconds``, ``rmod`` (the method's settings, from the rows) and ``kind``.

    ``comparisons``: one entry per (method, baseline) of :func:`comparison_baselines`, with
    ``worst_case_difference`` / ``_ci``, ``worst_objective_of_mean_difference`` / ``_ci`` (method minus baseline)
    and the head-to-head ``win_rate`` / ``_ci``, all paired bootstraps (:func:`hf_rmod.metrics.paired_comparison`).
    ``head_to_head[A][B]``: ``{"win_rate", "win_rate_ci"}``, the share of prompts where A's ``min_g z_g`` beats
    B's (ties ½), for every ordered pair of methods. All intervals share ``seed``, so they use the same resamples.

    Args:
        results_path_or_rows: a ``results.jsonl`` path / evaluation folder, or the rows.
        objectives: the ``G`` reward names to use (keys of each row's ``rewards``; all finite).
        reward_mean, reward_std: ``{objective: float}`` or ``G`` floats (std > 0).
        reference_method: the method the win rates compare against.
        methods: which methods, in this order (default: all, in order of first appearance).
        n_resamples, confidence, seed: bootstrap settings (:func:`hf_rmod.bootstrap_ci`).

    Returns:
        ``{"objectives", "normalization": {"reward_mean", "reward_std"}, "reference_method", "n_prompts",
        "prompt_ids", "rows_excluded", "confidence", "n_resamples", "methods": {name: {...}}, "comparisons":
        [...], "head_to_head": {...}}`` (JSON-ready).
    """
    rows = load_results(results_path_or_rows) if isinstance(results_path_or_rows, (str, os.PathLike)) \
        else dedup(results_path_or_rows)
    objectives = check_unique_names(objectives, "objectives")
    mean = _per_objective(reward_mean, objectives, "reward_mean")
    std = _per_objective(reward_std, objectives, "reward_std")
    if (std <= 0).any():
        raise ValueError(f"`reward_std` must be > 0 for every objective, got {std.tolist()}.")
    methods, by_method, common = _select(rows, methods, objectives)
    excluded = sum(len(d) for d in by_method.values()) - len(common) * len(methods)
    raw = {m: np.array([[by_method[m][p]["rewards"][g] for g in objectives] for p in common], dtype=np.float64)
           for m in methods}  # each (n, G)
    z = {m: (raw[m] - mean) / std for m in methods}  # each (n, G)
    reference = reference_method if reference_method in by_method else None
    ci = dict(n_resamples=n_resamples, confidence=confidence, seed=seed)
    stats = {m: _method_stats(by_method[m], common, objectives, raw[m], z[m], z.get(reference), ci) for m in methods}
    return {
        "objectives": objectives,
        "normalization": {
            "reward_mean": dict(zip(objectives, mean.tolist())),
            "reward_std": dict(zip(objectives, std.tolist())),
            "note": "rewards are z-scores (r - reward_mean) / reward_std per objective, with the value head's "
            "statistics of reference-policy responses; raw_mean_rewards are in reward units",
        },
        "reference_method": reference,
        "n_prompts": len(common),
        "prompt_ids": common,
        "rows_excluded": int(excluded),
        "confidence": confidence,
        "n_resamples": n_resamples,
        "methods": stats,
        "comparisons": _comparisons(stats, z, reference, ci),
        "head_to_head": _head_to_head(z, ci),
    }


def summarize_folder(
    output_dir: str | os.PathLike,
    *,
    methods: Sequence[str] | None = None,
    num_prompts: int | None = None,
    value_head: Any = None,
    summary_dir: str | os.PathLike | None = None,
    reference_method: str = "reference",
    n_resamples: int = 1000,
    plots: bool = True,
) -> dict:
    """Summarize an evaluation folder again, for some of its methods and / or its first prompts, generating nothing.

    ``evaluate`` writes ``summary.json`` / ``summary.md`` for the methods and prompts of its own call; a folder that
    several calls filled (a baseline grid on 300 prompts, an ablation on the first 100) holds more. This recomputes
    :func:`summarize_results` from ``results.jsonl`` (and unmerged rank files, read only) and writes
    ``summary.json``, ``summary.md`` and the plots into ``summary_dir``.

    Args:
        output_dir: the evaluation folder (``results.jsonl``, ``run.json``).
        methods: the methods, in this order (default: every method of the folder, in order of first appearance).
        num_prompts: only the prompts with ``prompt_id < num_prompts`` (default / 0: all).
        value_head: where the reward statistics come from: a value-model folder (its ``config.json``
            ``objectives`` / ``reward_mean`` / ``reward_std``) or a loaded value model (default: the folder
            recorded in run.json's ``value_head.name_or_path``).
        summary_dir: folder for the summary files and plots (default: ``output_dir``, replacing its summary).
        reference_method: the method win rates compare against (``None`` in the summary when not summarized).
        n_resamples: bootstrap resamples.
        plots: write the plots (needs matplotlib).

    Returns:
        The summary (as :func:`summarize_results`, plus ``"run"``: run.json with ``num_prompts``).

    Raises:
        FileNotFoundError: no results in ``output_dir``; no value model to take the statistics from.
        ValueError: a method the folder does not hold (the ones it holds are listed); no rows left.
    """
    out = Path(output_dir)
    rows = load_results(out)
    present = list(dict.fromkeys(r["method"] for r in rows))
    methods = present if methods is None else list(methods)
    unknown = [m for m in methods if m not in present]
    if unknown:
        raise ValueError(f"`methods` {unknown} have no rows in {out}; it holds {present}.")
    rows = [r for r in rows if r["method"] in methods and (not num_prompts or r["prompt_id"] < num_prompts)]
    if not rows:
        raise ValueError(f"No rows of {methods} in {out} with prompt_id < {num_prompts}.")
    run_path = out / RUN_FILE
    run = json.loads(run_path.read_text(encoding="utf-8")) if run_path.exists() else {}
    objectives = list(rows[0]["rewards"])
    mean, std = _folder_statistics(value_head, run, objectives, run_path)
    summary = summarize_results(rows, objectives, mean, std, reference_method=reference_method, methods=methods,
                                n_resamples=n_resamples)
    summary["run"] = {**run, "num_prompts": summary["n_prompts"]}
    target = Path(summary_dir) if summary_dir is not None else out
    target.mkdir(parents=True, exist_ok=True)
    (target / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (target / "summary.md").write_text(format_summary_markdown(summary), encoding="utf-8")
    if plots:
        from .plots import write_plots

        write_plots(summary, rows, target)
    return summary


def _folder_statistics(value_head: Any, run: Mapping, objectives: list[str], run_path: Path) -> tuple[dict, dict]:
    """``reward_normalization`` of a loaded value model, or of the ``config.json`` of a value-model folder (the
    given one, else run.json's)."""
    if value_head is not None and not isinstance(value_head, (str, os.PathLike)):
        return reward_normalization(value_head, objectives)
    folder = value_head if value_head is not None else (run.get("value_head") or {}).get("name_or_path")
    config_path = Path(folder) / "config.json" if folder else None
    if config_path is None or not config_path.is_file():
        where = f"{folder!r} has no config.json" if folder else f"{run_path} records no value head"
        raise FileNotFoundError(
            f"The reward statistics come from the value model, and {where}; pass `value_head=` (--value-head) "
            "naming the value-model folder the evaluation used."
        )
    from types import SimpleNamespace

    config = json.loads(config_path.read_text(encoding="utf-8"))
    mean, std = config.get("reward_mean"), config.get("reward_std")
    head = SimpleNamespace(objectives=config.get("objectives") or [],
                           normalization=None if mean is None or std is None else (mean, std))
    return reward_normalization(head, objectives)


def _ci_cell(value: float | None, interval: Sequence[float] | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(value)} [{f.format(interval[0])}, {f.format(interval[1])}]"


#: Methods up to which ``summary.md`` shows the head-to-head win-rate matrix (``summary.json`` always has it).
MAX_HEAD_TO_HEAD_COLUMNS = 12


def format_summary_markdown(summary: Mapping) -> str:
    """A Markdown report of a :func:`summarize_results` dict: one table row per method, then the paired
    comparisons and the head-to-head worst-case win rates (when the summary has them)."""
    objectives = summary["objectives"]
    pct = int(round(summary["confidence"] * 100))
    ref = summary.get("reference_method")
    norm = summary["normalization"]
    header = (
        ["method", "worst-case reward (z)", "worst objective of mean (z)", f"worst-case win rate vs {ref or '—'}"]
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
        "worst objective of mean = min over objectives of the mean over prompts (the paper's figure metric), "
        "with the objective attaining it; win-rate ties count 1/2. Raw columns are mean rewards in reward units.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for name, m in summary["methods"].items():
        worst_mean = "–"
        if m.get("worst_objective_of_mean") is not None:
            worst_mean = _ci_cell(m["worst_objective_of_mean"], m["worst_objective_of_mean_ci"])
            worst_mean += f" {m['worst_objective']}"
        cells = [f"`{name}`", _ci_cell(m["worst_case_reward"], m["worst_case_reward_ci"]), worst_mean,
                 _ci_cell(m["worst_case_win_rate"], m["worst_case_win_rate_ci"])]
        cells += [_ci_cell(m["mean_rewards"][g], m["mean_rewards_ci"][g]) for g in objectives]
        cells += [f"{m['raw_mean_rewards'][g]:.4g}" for g in objectives]
        cells += [f"{m['mean_new_tokens']:.1f}", f"{m['mean_seconds']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if summary.get("rows_excluded"):
        lines += ["", f"{summary['rows_excluded']} rows were left out: their prompts lack a result for some method."]
    lines += _weight_lines(summary["methods"])
    lines += _comparison_lines(summary.get("comparisons") or [], summary["n_prompts"], pct)
    lines += _head_to_head_lines(summary.get("head_to_head") or {}, list(summary["methods"]))
    return "\n".join(lines) + "\n"


def _weight_lines(methods: Mapping[str, Mapping]) -> list[str]:
    """The per-block weights table of ``summary.md``: robust methods (RMOD, robust Best-of-K) only."""
    rows = [(name, m["block_weights"]) for name, m in methods.items()
            if m.get("block_weights") and m["kind"] in ("rmod", "best_of_k")]
    if not rows:
        return []
    names = list(rows[0][1]["mean"])
    lines = ["", "## Weights w* per block", "",
             f"Mean weight per objective over all blocks, and the share of blocks whose largest weight exceeds "
             f"{CONCENTRATED} (weights concentrated on one objective).", "",
             "| method | blocks | " + " | ".join(f"mean w {g}" for g in names) + f" | share max w > {CONCENTRATED} |",
             "|" + "|".join("---" for _ in range(len(names) + 3)) + "|"]
    for name, bw in rows:
        cells = [f"`{name}`", str(bw["blocks"])] + [f"{bw['mean'].get(g, float('nan')):.3f}" for g in names]
        lines.append("| " + " | ".join(cells + [f"{bw['concentrated_share']:.3f}"]) + " |")
    return lines


def _comparison_lines(comparisons: Sequence[Mapping], n_prompts: int, pct: int) -> list[str]:
    """The paired-comparison table of ``summary.md`` (nothing when there are no comparisons)."""
    if not comparisons:
        return []
    lines = [
        "", "## Paired comparisons", "",
        f"Method minus baseline on the same {n_prompts} prompts, {pct}% paired bootstrap CI (prompts resampled "
        "jointly); win rate = share of prompts where the method's min over objectives beats the baseline's "
        "(ties 1/2).", "",
        "| method | baseline | Δ worst-case reward (z) | Δ worst objective of mean (z) | worst-case win rate |",
        "|---|---|---|---|---|",
    ]
    for c in comparisons:
        cells = [f"`{c['method']}`", f"`{c['baseline']}`"]
        cells += [_ci_cell(c[k], c[k + "_ci"], signed=True)
                  for k in ("worst_case_difference", "worst_objective_of_mean_difference")]
        cells.append(_ci_cell(c["win_rate"], c["win_rate_ci"]))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _head_to_head_lines(table: Mapping[str, Mapping], names: list[str]) -> list[str]:
    """The head-to-head win-rate matrix of ``summary.md`` (row beats column), up to
    :data:`MAX_HEAD_TO_HEAD_COLUMNS` methods."""
    if not table or len(names) < 2:
        return []
    lines = ["", "## Head-to-head worst-case win rates", ""]
    if len(names) > MAX_HEAD_TO_HEAD_COLUMNS:
        return lines + [f"{len(names)} methods: see `head_to_head` in summary.json."]
    lines += [
        "Share of prompts where the row method's min over objectives beats the column method's (ties 1/2), "
        "with its CI.", "",
        "| row beats column | " + " | ".join(f"`{n}`" for n in names) + " |",
        "|---|" + "|".join("---" for _ in names) + "|",
    ]
    for a in names:
        cells = ["–" if a == b else _ci_cell(table[a][b]["win_rate"], table[a][b]["win_rate_ci"]) for b in names]
        lines.append(f"| `{a}` | " + " | ".join(cells) + " |")
    return lines
