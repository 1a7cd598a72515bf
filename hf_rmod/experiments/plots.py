"""The evaluation plots (paper Figs. 2, 3b, 3c and 5) as PNG files: :func:`write_plots`.

matplotlib's object-oriented API is used (no pyplot, no global backend change); matplotlib is optional and only
imported here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .methods import format_number

__all__ = ["PLOT_NAMES", "require_matplotlib", "write_plots"]

#: The plots :func:`write_plots` may write, ``{name}.png`` each.
PLOT_NAMES = ("worst_case_reward", "rewards_scatter", "lambda_ablation", "block_size_ablation", "candidates_ablation",
              "weight_trace")


def require_matplotlib() -> None:
    """Raise an ``ImportError`` saying how to get matplotlib (or skip the plots) when it is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "The evaluation plots need matplotlib: `pip install matplotlib` (or pass plots=False / --no-plots)."
        ) from err


def _figure(width: float, height: float, ncols: int = 1, nrows: int = 1):
    from matplotlib.figure import Figure  # object-oriented API: no pyplot, no global backend change

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _err(value: float, interval: Sequence[float]) -> list[list[float]]:
    return [[max(value - interval[0], 0.0)], [max(interval[1] - value, 0.0)]]


_KIND_COLOURS = {"reference": "tab:purple", "best_of_k": "tab:gray", "fixed_weights": "tab:green",
                 "uniform": "tab:orange", "rmod": "tab:blue", "rewarded_soup": "tab:olive", "mod": "tab:cyan",
                 "policy": "tab:red"}


def write_plots(summary: Mapping, rows: Sequence[dict], output_dir: str | os.PathLike) -> dict[str, Path]:
    """Write the evaluation plots as PNG files; returns ``{name: path}`` of those written.

    - ``worst_case_reward``: per-method worst-case reward (z, bars) with its CI, and the worst objective of the
      mean reward (diamonds, labelled with the objective attaining it) with its CI (paper Fig. 2).
    - ``rewards_scatter``: mean z-reward of the first two objectives per method, with CIs; the reference is a
      star (Fig. 3b). Only when ``G >= 2``.
    - ``lambda_ablation``: worst-case reward and win rate against λ for the RMOD methods of each (K, B), with
      UNIFORM at the same (K, B) as a dashed line (Fig. 3c). Only when some (K, B) has two or more λ.
    - ``block_size_ablation`` / ``candidates_ablation``: worst-case reward and win rate against B (at each K and
      λ) / against K (at each B and λ) for RMOD (solid) and UNIFORM (dashed) (Figs. 3a, 4a). Only when some
      such line has two or more points.
    - ``weight_trace``: per-block weights ``w*`` and the chosen candidate's values (solid) and the candidates'
      mean values (dashed) of one prompt of the first RMOD method — the prompt with the most blocks (Fig. 5).
      Only when an RMOD method has traced rows.
    """
    require_matplotlib()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = {
        "worst_case_reward": _plot_worst_case(summary),
        "rewards_scatter": _plot_scatter(summary),
        "lambda_ablation": _plot_lambda(summary),
        "block_size_ablation": _plot_axis(summary, "block_size", "B (tokens per block)"),
        "candidates_ablation": _plot_axis(summary, "num_candidates", "K (candidates per block)"),
        "weight_trace": _plot_trace(summary, rows),
    }
    return {name: _save(fig, out / f"{name}.png") for name, fig in figures.items() if fig is not None}


def _colour(method: Mapping) -> str:
    return _KIND_COLOURS.get(method["kind"], "tab:gray")


def _plot_worst_case(summary: Mapping):
    """Fig. 2: one bar per method, worst-case z-reward with its CI; diamonds: worst objective of the mean; dashed
    line at the reference."""
    methods, names, ref = summary["methods"], list(summary["methods"]), summary.get("reference_method")
    fig, axes = _figure(max(4.0, 0.6 * len(names) + 1.5), 3.8)
    ax = axes[0, 0]
    values = [methods[n]["worst_case_reward"] for n in names]
    errors = np.array([_err(methods[n]["worst_case_reward"], methods[n]["worst_case_reward_ci"]) for n in names])
    x = np.arange(len(names)) - 0.12
    ax.bar(x, values, width=0.55, yerr=errors[:, :, 0].T, capsize=3, color=[_colour(methods[n]) for n in names],
           label="mean over prompts of min")
    if ref in methods:
        ax.axhline(methods[ref]["worst_case_reward"], color="k", lw=0.8, ls="--", label=f"{ref}")
    _mark_worst_objective_of_mean(ax, methods, names)
    ax.legend(loc="best", fontsize=7)
    ax.axhline(0.0, color="k", lw=0.5)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("worst-case reward (z)")
    ax.set_title(f"Worst-case reward, {summary['n_prompts']} prompts ({int(summary['confidence'] * 100)}% CI)")
    return fig


def _mark_worst_objective_of_mean(ax, methods: Mapping, names: list[str]) -> None:
    """Diamonds with CIs at each method's worst objective of the mean reward, labelled with that objective (the
    paper's Fig. 2 names it above the bar); nothing for summaries written before the metric existed."""
    if not all(methods[n].get("worst_objective_of_mean") is not None for n in names):
        return
    values = [methods[n]["worst_objective_of_mean"] for n in names]
    errors = np.array([_err(methods[n]["worst_objective_of_mean"], methods[n]["worst_objective_of_mean_ci"])
                       for n in names])
    x = np.arange(len(names)) + 0.25  # beside the bar of the same method
    ax.errorbar(x, values, yerr=errors[:, :, 0].T, fmt="D", ms=4, capsize=2, color="k",
                label="min over objectives of mean")
    for i, n in enumerate(names):  # the objective attaining it, above its interval
        top = methods[n]["worst_objective_of_mean_ci"][1]
        ax.annotate(methods[n]["worst_objective"], (x[i], max(top, values[i])), textcoords="offset points",
                    xytext=(0, 3), ha="center", fontsize=7)


def _plot_scatter(summary: Mapping):
    """Fig. 3b: mean z-reward of the first two objectives per method (None when G < 2)."""
    methods, objectives, ref = summary["methods"], summary["objectives"], summary.get("reference_method")
    if len(objectives) < 2:
        return None
    gx, gy = objectives[:2]
    fig, axes = _figure(5.0, 4.2)
    ax = axes[0, 0]
    for name, m in methods.items():
        x, y = m["mean_rewards"][gx], m["mean_rewards"][gy]
        marker, size = ("*", 14) if name == ref else ("o", 6)
        ax.errorbar(x, y, xerr=_err(x, m["mean_rewards_ci"][gx]), yerr=_err(y, m["mean_rewards_ci"][gy]),
                    fmt=marker, ms=size, capsize=2, color=_colour(m))
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(f"mean {gx} (z)")
    ax.set_ylabel(f"mean {gy} (z)")
    ax.set_title("Mean reward per objective")
    return fig


def _kb(method: Mapping) -> tuple:
    return method["rmod"].get("num_candidates"), method["rmod"].get("block_size")


def _plot_lambda(summary: Mapping):
    """Fig. 3c: worst-case reward / win rate vs λ per (K, B) of the RMOD methods (None without ≥ 2 λ)."""
    methods = summary["methods"]
    groups: dict[tuple, list[tuple[float, str]]] = {}
    for name, m in methods.items():
        if m["kind"] == "rmod":
            groups.setdefault(_kb(m), []).append((float(m["rmod"].get("lam", 0.5)), name))
    groups = {kb: sorted(v) for kb, v in groups.items() if len({lam for lam, _ in v}) >= 2}
    if not groups:
        return None
    fig, axes, panels = _ablation_figure(summary, groups)
    all_lams = sorted({lam for members in groups.values() for lam, _ in members})
    for ax, (metric, label) in zip(axes, panels):
        for i, ((k, b), members) in enumerate(sorted(groups.items(), key=lambda kv: str(kv[0]))):
            errs = np.array([_err(methods[n][metric], methods[n][metric + "_ci"]) for _, n in members])
            ax.errorbar([lam for lam, _ in members], [methods[n][metric] for _, n in members], yerr=errs[:, :, 0].T,
                        marker="o", capsize=3, color=f"C{i}", label=f"RMOD K={k} B={b}")
            for m in methods.values():
                if m["kind"] == "uniform" and _kb(m) == (k, b):
                    ax.axhline(m[metric], color=f"C{i}", ls="--", lw=1, label=f"UNIFORM K={k} B={b}")
        _log_x_axis(ax, all_lams, "λ", label)
    return fig


def _ablation_figure(summary: Mapping, lines: Mapping[Any, Sequence[tuple[float, str]]]):
    """``(fig, axes, panels)`` of an ablation plot: a worst-case reward panel, plus a win-rate panel when the
    methods on the ``lines`` (``{line: [(x, method name), ...]}``) have win rates against a reference."""
    methods = summary["methods"]
    panels = [("worst_case_reward", "worst-case reward (z)")]
    if any(methods[n]["worst_case_win_rate"] is not None for v in lines.values() for _, n in v):
        panels.append(("worst_case_win_rate", f"worst-case win rate vs {summary.get('reference_method')}"))
    fig, axes = _figure(4.5 * len(panels) + 0.3, 3.6, ncols=len(panels))
    return fig, axes[0], panels


def _log_x_axis(ax, xs: Sequence[float], xlabel: str, ylabel: str, base: float = 10) -> None:
    """A log-scale x axis ticked at exactly ``xs``, the labels and the legend."""
    from matplotlib.ticker import NullLocator

    ax.set_xscale("log", base=base)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(xs, [format_number(x) for x in xs])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)


def _plot_axis(summary: Mapping, axis: str, xlabel: str):
    """Figs. 3a / 4a: worst-case reward / win rate against ``axis`` (``"block_size"`` or ``"num_candidates"``), one
    line per RMOD (K or B, λ) and per UNIFORM (K or B); None when no line has two or more points."""
    methods = summary["methods"]
    other = "num_candidates" if axis == "block_size" else "block_size"
    lines: dict[tuple, list[tuple[float, str]]] = {}
    for name, m in methods.items():
        if m["kind"] in ("rmod", "uniform") and (m.get("rmod") or {}).get(axis) is not None:
            lam = m["rmod"].get("lam") if m["kind"] == "rmod" else None
            key = (m["kind"], m["rmod"].get(other), lam)
            lines.setdefault(key, []).append((float(m["rmod"][axis]), name))
    lines = {key: sorted(v) for key, v in lines.items() if len({x for x, _ in v}) >= 2}
    if not lines:
        return None
    fig, axes, panels = _ablation_figure(summary, lines)
    xs = sorted({x for members in lines.values() for x, _ in members})
    short = "K" if other == "num_candidates" else "B"
    for ax, (metric, label) in zip(axes, panels):
        for i, ((kind, fixed, lam), members) in enumerate(sorted(lines.items(), key=lambda kv: str(kv[0]))):
            errs = np.array([_err(methods[n][metric], methods[n][metric + "_ci"]) for _, n in members])
            name = f"RMOD {short}={fixed} λ={format_number(lam)}" if kind == "rmod" else f"UNIFORM {short}={fixed}"
            ax.errorbar([x for x, _ in members], [methods[n][metric] for _, n in members], yerr=errs[:, :, 0].T,
                        marker="o", capsize=3, color=_KIND_COLOURS[kind] if len(lines) <= 2 else f"C{i}",
                        ls="-" if kind == "rmod" else "--", label=name)
        _log_x_axis(ax, xs, xlabel, label, base=2)
    return fig


def _plot_trace(summary: Mapping, rows: Sequence[dict]):
    """Fig. 5: per-block weights and values of one prompt of the first RMOD (else Best-of-K) method."""
    methods = summary["methods"]
    method = next((n for n, m in methods.items() if m["kind"] == "rmod"), None)
    method = method or next((n for n, m in methods.items() if m["kind"] == "best_of_k"), None)
    traced = [r for r in rows if r["method"] == method and r.get("weights")]
    if not traced:
        return None
    row = min(traced, key=lambda r: (-len(r["weights"]), r["prompt_id"]))  # most blocks, then first prompt
    blocks = np.arange(1, len(row["weights"]) + 1)
    keys = ("weights", "chosen_values", "mean_values")
    weights, chosen, mean_v = (np.asarray(row[k], dtype=np.float64) for k in keys)  # each (n_blocks, G)
    fig, axes = _figure(6.4, 5.2, nrows=2)
    top, bottom = axes[0, 0], axes[1, 0]
    for j, g in enumerate(row["value_objectives"]):
        top.plot(blocks, weights[:, j], marker="o", color=f"C{j}", label=g)
        bottom.plot(blocks, chosen[:, j], marker="o", color=f"C{j}", label=f"{g} (chosen)")
        bottom.plot(blocks, mean_v[:, j], ls="--", color=f"C{j}", alpha=0.7, label=f"{g} (mean of K)")
    top.set_ylim(-0.05, 1.05)
    top.set_ylabel("weight w*")
    top.legend(fontsize=8)
    bottom.set_ylabel("value (normalised)")
    bottom.set_xlabel("block")
    bottom.legend(fontsize=7)
    for ax in (top, bottom):
        ax.set_xticks(blocks)
    prompt = row["prompt"] if len(row["prompt"]) <= 60 else row["prompt"][:57] + "..."
    top.set_title(f"{method}, prompt {row['prompt_id']}: {prompt}", fontsize=9)
    return fig


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=120)
    return path
