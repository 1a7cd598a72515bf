"""Fit, compare and ship the default value model: MiniLM on the partial text (issue "Value models that rank", §3).

Reproduces ``hf_rmod/assets/value-minilm-smollm2`` from a records file of SmolLM2's own samples (made by
``scripts/sample_value_data.py``: the unique ``first_prompt``s of ``hh_harmless_preference_pairs``, none of them an
evaluation prompt):

1. embeds every record's prompt and its response decoded at t = 16, 32, ..., 96 tokens with MiniLM (cached next
   to the records);
2. splits by prompt (80/20, the split ``hf-rmod train-value`` uses); on the 80% picks the ridge strength ``alpha``
   and the between-prompt weight ``beta`` by grouped 5-fold cross-validation: among the fits whose mean
   within-prompt pairwise accuracy (over positions and objectives) is within ``--rank-tolerance`` of the best, the
   one with the lowest z-scored MSE;
3. reports on the held-out 20% prompts, per objective and t, the within-prompt pairwise accuracy, Spearman and
   z-scored MSE of: the reward models on the partial text (``RewardValueModel``, no training), the constant
   predictor, and the value model fit on the 80%;
4. refits on all records with the chosen ``alpha``/``beta`` and saves it with a model card (``--save``).

    python scripts/train_default_value_model.py --records runs/value-data/pairs_n8_t96.jsonl \\
        --report runs/report/text_value.json --save hf_rmod/assets/value-minilm-smollm2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

OBJECTIVES = ["harmless", "helpful"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", default="runs/value-data/pairs_n8_t96.jsonl")
    parser.add_argument("--report", default="runs/report/text_value.json")
    parser.add_argument("--save", default=None, help="folder to save the model fit on all records (+ model card)")
    add_fit_arguments(parser)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from hf_rmod.rewards import MiniLMHarmlessReward, MiniLMRelevanceReward

    fit_text_value_model(
        args.records, OBJECTIVES, [MiniLMHarmlessReward().head, MiniLMRelevanceReward().linear_head()],
        report_path=args.report, save=args.save, **fit_options(args),
    )


def add_fit_arguments(parser: argparse.ArgumentParser) -> None:
    """The fit's options (shared with ``scripts/truthfulqa_task.py fit``)."""
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--alphas", default="1e-3,3e-3,1e-2,3e-2,1e-1,3e-1")
    parser.add_argument("--betas", default="1,0.3,0.1")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--rank-tolerance", type=float, default=0.005,
                        help="fits whose CV pairwise accuracy is within this of the best compete on CV z-MSE")


def fit_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of :func:`fit_text_value_model` from :func:`add_fit_arguments`' options."""
    return {"val_fraction": args.val_fraction, "block_size": args.block_size, "max_new_tokens": args.max_new_tokens,
            "alphas": [float(a) for a in args.alphas.split(",")], "betas": [float(b) for b in args.betas.split(",")],
            "folds": args.folds, "rank_tolerance": args.rank_tolerance}


#: What the default model's card and fit_info say about it (``fit_text_value_model(card=...)`` replaces them).
DEFAULT_CARD = {
    "title": "RMOD default value model: MiniLM on the partial text (SmolLM2-135M-Instruct, harmless + helpful)",
    "load": "Load it with `hf_rmod.defaults.load_default_value_model(tokenizer)` or "
            "`RewardValueModel.from_pretrained(folder, tokenizer)`",
    "prompts_source": "unique first_prompt of hh_harmless_preference_pairs.jsonl (no dev prompt)",
    "data": "(unique `first_prompt`s of `hh_harmless_preference_pairs.jsonl`, Anthropic HH-RLHF harmless-base test; "
            "**no** evaluation (dev) prompt), sampled from the policy with the settings below, scored by the offline "
            "harmless (MiniLM Bradley–Terry) and helpful (MiniLM relevance) rewards.",
    "extra": [],  # more bullet lines after the sampling settings
    "init_row": "reward models on the partial text (no training)",  # the report row of the initial weights
    "made_with": "Made with `scripts/train_default_value_model.py`.",
}


def fit_text_value_model(
    records_path: str | Path,
    objectives: list[str],
    init_heads: list,
    *,
    report_path: str | Path,
    save: str | Path | None = None,
    val_fraction: float = 0.2,
    block_size: int = 16,
    max_new_tokens: int = 96,
    alphas: list[float] = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1),
    betas: list[float] = (1.0, 0.3, 0.1),
    folds: int = 5,
    rank_tolerance: float = 0.005,
    card: dict | None = None,
    fit_info: dict | None = None,
) -> dict:
    """Embed, choose alpha/beta by grouped CV, report on held-out prompts, refit on all and save (see the module
    docstring). Returns the report (also written to ``report_path``).

    Args:
        records_path: records of ``hf-rmod sample`` / ``sample_responses`` scored with every objective.
        objectives: the ``G`` reward columns to fit, in output order.
        init_heads: one per objective: a one-output linear MiniLM reward head to shrink towards
            (``reward_init_weights``), or ``None`` for zero weights.
        report_path: JSON report (CV grid, held-out metrics).
        save: folder for the model fit on all records and its model card (``None``: do not save).
        card: replaces keys of :data:`DEFAULT_CARD` (title, data description, ... of the card and ``fit_info``).
        fit_info: more entries for the saved model's ``fit_info``.
    """
    from hf_rmod.configuration_value_head import sampling_settings_from_records
    from hf_rmod.defaults import DEFAULT_POLICY
    from hf_rmod.experiments.records import load_records, read_settings, split_by_prompt
    from hf_rmod.experiments.text_value import fit_minilm_value_model, predict, reward_init_weights
    from hf_rmod.experiments.value_report import between_prompt_share

    objectives = list(objectives)
    if len(init_heads) != len(objectives):
        raise ValueError(f"`init_heads` needs one head (or None) per objective {objectives}, got {len(init_heads)}.")
    card = {**DEFAULT_CARD, **(card or {})}
    records = load_records(records_path, objectives)
    positions = list(range(block_size, max_new_tokens + 1, block_size))
    data = _embeddings(records, positions, Path(records_path), objectives)
    train, val = split_by_prompt(records, val_fraction, seed=0)
    tr, va = data.subset(train), data.subset(val)
    train_prompts = int(tr.groups.unique().numel())
    if folds > train_prompts:
        raise ValueError(f"--folds {folds} needs at least {folds} training prompts; the split has {train_prompts} "
                         f"(of {len(set(r['prompt'] for r in records))} prompts): pass --folds {max(train_prompts, 2)} "
                         "or sample more prompts.")
    init = reward_init_weights(init_heads, "pair", 384)

    grid = [(float(a), float(b)) for a in alphas for b in betas]
    t0 = time.perf_counter()
    cv = {(a, b): _cv_score(tr, init, a, b, folds) for a, b in grid}  # (pairwise accuracy, z-MSE)
    best_rank = max(acc for acc, _ in cv.values())
    # ranking first (RMOD's choice among the K candidates); among fits that rank within `rank_tolerance` of the
    # best, the best calibrated one (the values' level across objectives sets the weights w*)
    near = [key for key, (acc, _) in cv.items() if acc >= best_rank - rank_tolerance]
    alpha, beta = min(near, key=lambda key: cv[key][1])
    print(f"grouped {folds}-fold CV on {len(train)} training responses ({time.perf_counter() - t0:.0f} s): "
          + ", ".join(f"a={a:g} b={b:g}: {acc:.4f}/{mse:.3f}" for (a, b), (acc, mse) in cv.items())
          + f" -> alpha={alpha:g}, beta={beta:g}")

    reward_model = _linear_model(init, objectives)
    fitted = fit_minilm_value_model(tr, init=init, alpha=alpha, beta=beta)
    rows = {
        card["init_row"]: _metrics(predict(reward_model, va), tr, va),
        "constant (train mean)": _metrics(tr.rewards.mean(0).expand(va.rewards.shape[0], len(positions), -1), tr, va),
        f"MiniLM value model (alpha={alpha:g}, beta={beta:g})": _metrics(predict(fitted, va), tr, va),
    }
    for name, m in rows.items():
        print(_line(name, m, objectives))
    report = {
        "records": str(records_path), "positions": positions, "objectives": objectives,
        "train": {"responses": len(train), "prompts": train_prompts},
        "val": {"responses": len(val), "prompts": int(va.groups.unique().numel()),
                "between_prompt_share": between_prompt_share(va.rewards, va.groups).tolist()},
        "cv": {f"alpha={a:g},beta={b:g}": s for (a, b), s in cv.items()}, "alpha": alpha, "beta": beta,
        "rows": rows,
    }
    Path(report_path).parent.mkdir(parents=True, exist_ok=True)
    Path(report_path).write_text(json.dumps(report, indent=1))
    print(f"report: {report_path}")
    if save:
        settings = read_settings(records_path) or {}
        model = fit_minilm_value_model(
            data, init=init, alpha=alpha, beta=beta,
            fit_info={"records": Path(records_path).name,
                      "prompts_source": card["prompts_source"],
                      # the policy's install path differs per machine: named in "policy", not compared at decoding
                      "sampling_settings": {k: v for k, v in (sampling_settings_from_records(settings) or {}).items()
                                            if k != "policy"},
                      "policy": DEFAULT_POLICY,
                      "held_out_report": {"split": f"split_by_prompt(val_fraction={val_fraction}, seed=0)",
                                          **{k: report[k] for k in ("train", "val", "positions")},
                                          "value_model": rows[list(rows)[-1]],
                                          "reward_on_partial_text": rows[list(rows)[0]]},
                      **(fit_info or {})},
        )
        model.save_pretrained(save)
        Path(save, "README.md").write_text(_card(model, report, folds, rank_tolerance, card), encoding="utf-8")
        size = sum(f.stat().st_size for f in Path(save).iterdir())
        print(f"saved {save} ({size / 1024:.0f} KiB)")
    return report


def _embeddings(records, positions, path: Path, objectives: list[str]):
    from hf_rmod.defaults import load_default_policy
    from hf_rmod.experiments.text_value import embed_prefixes

    cache = path.with_name(f"{path.stem}.emb{len(records)}.pt")
    if cache.exists():
        data = torch.load(cache, weights_only=False)
        if data.positions == positions and data.rewards.shape[0] == len(records) and data.objectives == objectives:
            return data
    _, tokenizer = load_default_policy()
    t0 = time.perf_counter()
    data = embed_prefixes(records, tokenizer, positions, objectives)
    print(f"embedded {len(records)} records x {len(positions)} prefixes in {time.perf_counter() - t0:.0f} s", flush=True)
    torch.save(data, cache)
    return data


def _linear_model(weights, objectives: list[str]):
    from hf_rmod.rewards import MiniLMRewardConfig, MiniLMRewardModel

    model = MiniLMRewardModel(MiniLMRewardConfig(feature_mode="pair", objectives=objectives))
    with torch.no_grad():
        model.score.weight.copy_(weights.float())
    return model.eval()


def _cv_score(data, init, alpha, beta, folds) -> float:
    from hf_rmod.experiments.text_value import fit_minilm_value_model, predict
    from hf_rmod.experiments.value_report import within_prompt_metrics

    prompts = data.groups.unique()
    order = prompts[torch.randperm(prompts.numel(), generator=torch.Generator().manual_seed(0))]
    scores, errors = [], []
    for k in range(folds):
        held = torch.isin(data.groups, order[k::folds])
        fit = fit_minilm_value_model(data.subset(torch.nonzero(~held)[:, 0]), init=init, alpha=alpha, beta=beta)
        part = data.subset(torch.nonzero(held)[:, 0])
        values = predict(fit, part)  # (n, S, G)
        accuracy = within_prompt_metrics(values, part.rewards, part.groups)["pairwise_accuracy"]  # (S, G)
        # NaN where no pair of a fold differs in reward (tiny data, e.g. equal lengths for `concise`)
        scores.append(accuracy.nanmean() if bool(accuracy.isnan().any()) else accuracy.mean())
        std = data.rewards.std(0)
        errors.append((((values - part.rewards[:, None, :]) / std) ** 2).mean())
    return float(torch.stack(scores).mean()), float(torch.stack(errors).mean())


def _metrics(values, tr, va) -> dict:
    from hf_rmod.experiments.value_report import within_prompt_metrics

    m = within_prompt_metrics(values, va.rewards, va.groups)
    mean, std = tr.rewards.mean(0), tr.rewards.std(0)
    z, zt = (values - mean) / std, ((va.rewards - mean) / std)[:, None, :]
    return {"pairwise_accuracy": m["pairwise_accuracy"].tolist(), "spearman": m["spearman"].tolist(),
            "mse_z": ((z - zt) ** 2).mean(0).tolist()}


def _line(name, m, objectives: list[str]) -> str:
    acc, mse = torch.tensor(m["pairwise_accuracy"]), torch.tensor(m["mse_z"])  # (S, G)

    def cells(row):
        return "/".join(f"{v:.3f}" for v in row.tolist())

    return (f"{name}: pairwise ({'/'.join(objectives)}) t=16 {cells(acc[0])}, t=32 {cells(acc[1])}, mean "
            f"{cells(acc.mean(0))}; z-MSE t=16 {cells(mse[0])}, mean {cells(mse.mean(0))}")


def _card(model, report, folds: int, rank_tolerance: float, card: dict) -> str:
    positions = report["positions"]
    lines = [
        "---", "library_name: transformers", "tags:", "- hf_rmod", "- rmod", "- value-model", "---", "",
        f"# {card['title']}", "",
        "`V_g(x, y^t) = w_g · [e(x), e(y^t), e(x) * e(y^t)] + b_g`, `e` = all-MiniLM-L6-v2 sentence embedding of the "
        "plain user prompt and of the decoded partial response; one linear output per objective, fit by CD-FUDGE "
        f"(eq. 8: every prefix t = {', '.join(map(str, positions))} regresses onto the final reward) as closed-form ridge regression "
        "towards the reward models themselves (the paper initialises its value functions from the reward models). "
        f"{card['load']}; values are z-scored with `reward_mean`/`reward_std`.",
        "",
        f"- **Objectives**: {', '.join(model.config.objectives)}",
        f"- **Reward statistics** (z-scoring): mean {model.config.reward_mean}, std {model.config.reward_std}",
        f"- **Fit**: alpha = {report['alpha']:g} (ridge towards the reward models, per row), beta = {report['beta']:g} "
        f"(weight of the between-prompt error), chosen by grouped {folds}-fold CV on the training prompts (best z-MSE among the fits ranking within {rank_tolerance:g} of the best pairwise accuracy)",
        f"- **Data**: {model.config.fit_info['responses']} responses of {model.config.fit_info['prompts']} prompts "
        f"{card['data']}",
        f"- **Sampling** (generate warns once when a call differs): `{json.dumps(model.config.fit_info.get('sampling_settings'))}`",
        *card["extra"], "",
        f"## Held-out ranking (prompt-level split: {report['train']['prompts']} training prompts / "
        f"{report['val']['prompts']} held-out prompts, {report['val']['responses']} responses)", "",
        "Within-prompt pairwise accuracy (share of same-prompt response pairs the value orders like the final "
        "reward) — what RMOD's choice among the K candidates of one prefix depends on — and z-scored MSE "
        "(what sets the weights w*). The shipped model is refit on all prompts with the same alpha and beta.", "",
        "| value model | objective | " + " | ".join(f"t={t}" for t in positions) + " | z-MSE mean |",
        "|---|---|" + "---|" * len(positions) + "---|",
    ]
    for name, m in report["rows"].items():
        for g, objective in enumerate(report["objectives"]):
            accs = " | ".join(f"{m['pairwise_accuracy'][s][g]:.3f}" for s in range(len(positions)))
            mse = sum(m["mse_z"][s][g] for s in range(len(positions))) / len(positions)
            lines.append(f"| {name} | {objective} | {accs} | {mse:.3f} |")
    shares = ", ".join(f"{g} {v:.3f}" for g, v in zip(report["objectives"], report["val"]["between_prompt_share"]))
    lines += ["", f"Between-prompt share of the held-out reward variance: {shares}.",
              "", card["made_with"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
