"""The B and K ablation plots (Figs. 3a / 4a) of write_plots."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")

from hf_rmod.experiments import plots  # noqa: E402


def _method(kind, k, b, lam=None, worst=0.1):
    rmod = {"num_candidates": k, "block_size": b, "weights": "robust" if kind == "rmod" else "uniform"}
    if lam is not None:
        rmod["lam"] = lam
    return {"kind": kind, "rmod": rmod, "worst_case_reward": worst, "worst_case_reward_ci": [worst - 0.1, worst + 0.1],
            "worst_case_win_rate": 0.8, "worst_case_win_rate_ci": [0.7, 0.9]}


def _summary(methods):
    reference = {"kind": "reference", "rmod": None, "worst_case_reward": -0.7, "worst_case_reward_ci": [-0.8, -0.6],
                 "worst_case_win_rate": 0.5, "worst_case_win_rate_ci": [0.5, 0.5]}
    return {"methods": {"reference": reference, **methods}, "reference_method": "reference"}


def test_block_size_and_candidate_lines_are_drawn_per_fixed_setting():
    summary = _summary({f"rmod_k8_b{b}_lam0.5": _method("rmod", 8, b, 0.5) for b in (4, 16, 96)}
                       | {f"uniform_k8_b{b}": _method("uniform", 8, b) for b in (4, 16, 96)}
                       | {"rmod_k16_b16_lam0.5": _method("rmod", 16, 16, 0.5)})
    fig = plots._plot_axis(summary, "block_size", "B")
    lines = fig.axes[0].get_lines()
    labels = {t.get_text() for t in fig.axes[0].get_legend().get_texts()}
    assert labels == {"RMOD K=8 λ=0.5", "UNIFORM K=8"}  # K=16 has one B only: no line
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["4", "16", "96"] and len(fig.axes) == 2
    assert lines  # drawn
    fig_k = plots._plot_axis(summary, "num_candidates", "K")
    assert {t.get_text() for t in fig_k.axes[0].get_legend().get_texts()} == {"RMOD B=16 λ=0.5"}


def test_no_ablation_plot_without_two_values():
    summary = _summary({"rmod_k8_b16_lam0.5": _method("rmod", 8, 16, 0.5), "uniform_k8_b16": _method("uniform", 8, 16)})
    assert plots._plot_axis(summary, "block_size", "B") is None
    assert plots._plot_axis(summary, "num_candidates", "K") is None
