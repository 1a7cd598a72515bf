"""Compare text value models on held-out prompts of a records file (issue "Value models that rank candidates", §3).

Embeds every record's prompt and partial responses (t = 16, 32, ..., 96 tokens) with MiniLM once (cached next to
the records), splits by prompt (the same split `hf-rmod train-value` uses), and reports per objective and position
the within-prompt pairwise accuracy and Spearman of:

* ``reward``: the reward models on the partial text, no training (issue §3b; `RewardValueModel`);
* ``ridge a=.. b=..``: MiniLM value models fit by CD-FUDGE ridge towards the reward models (§3c/d), over a grid.

    python scripts/compare_text_value_models.py --records runs/value-data/pairs_n8_t96.jsonl --output runs/report/text_value.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", default="runs/value-data/pairs_n8_t96.jsonl")
    parser.add_argument("--output", default="runs/report/text_value.json")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--alphas", default="1e-4,1e-3,1e-2")
    parser.add_argument("--betas", default="1,0.3,0.1")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from hf_rmod.defaults import load_default_policy
    from hf_rmod.experiments.records import load_records, split_by_prompt
    from hf_rmod.experiments.text_value import embed_prefixes, fit_minilm_value_model, predict, reward_init_weights
    from hf_rmod.experiments.value_report import between_prompt_share, within_prompt_metrics
    from hf_rmod.rewards import MiniLMHarmlessReward, MiniLMRelevanceReward

    records = load_records(args.records)
    objectives = ["harmless", "helpful"]
    positions = list(range(args.block_size, args.max_new_tokens + 1, args.block_size))
    cache = Path(args.records).with_suffix(f".emb{len(records)}.pt")
    if cache.exists():
        data = torch.load(cache, weights_only=False)
    else:
        _, tokenizer = load_default_policy()
        t0 = time.perf_counter()
        data = embed_prefixes(records, tokenizer, positions, objectives)
        print(f"embedded {len(records)} records x {len(positions)} prefixes in {time.perf_counter() - t0:.0f} s")
        torch.save(data, cache)
    train, val = split_by_prompt(records, args.val_fraction, seed=0)
    tr, va = data.subset(train), data.subset(val)
    print(f"train {len(train)} responses / {int(tr.groups.unique().numel())} prompts; "
          f"val {len(val)} / {int(va.groups.unique().numel())}; between-prompt share (val) "
          f"{between_prompt_share(va.rewards, va.groups).tolist()}")
    helpful = MiniLMRelevanceReward()
    init = reward_init_weights([MiniLMHarmlessReward().head, helpful.linear_head()], "pair", 384)

    def evaluate(name, values):  # values (n, S, G) reward units
        m = within_prompt_metrics(values, va.rewards, va.groups)
        z = (values - tr.rewards.mean(0)) / tr.rewards.std(0)
        zt = ((va.rewards - tr.rewards.mean(0)) / tr.rewards.std(0))[:, None, :]
        mse = ((z - zt) ** 2).mean(0)  # (S, G)
        row = {"name": name, "pairwise": m["pairwise_accuracy"].tolist(), "spearman": m["spearman"].tolist(),
               "mse": mse.tolist()}
        acc = m["pairwise_accuracy"]
        print(f"{name:26s} pairwise t=16 {acc[0, 0]:.3f}/{acc[0, 1]:.3f}  t=32 {acc[1, 0]:.3f}/{acc[1, 1]:.3f}  "
              f"mean {acc.mean(0)[0]:.3f}/{acc.mean(0)[1]:.3f}  mse t=16 {mse[0, 0]:.3f}/{mse[0, 1]:.3f} "
              f"mean {mse.mean(0)[0]:.3f}/{mse.mean(0)[1]:.3f}", flush=True)
        return row

    rows = []
    from hf_rmod.rewards import MiniLMRewardConfig, MiniLMRewardModel

    reward_model = MiniLMRewardModel(MiniLMRewardConfig(feature_mode="pair", objectives=objectives))
    with torch.no_grad():
        reward_model.score.weight.copy_(init.float())
    rows.append(evaluate("reward (partial text)", predict(reward_model, va)))
    mean_cols = ((va.rewards * 0 + tr.rewards.mean(0))[:, None, :]).expand(-1, len(positions), -1)
    rows.append(evaluate("constant", mean_cols.contiguous()))
    for alpha in [float(a) for a in args.alphas.split(",")]:
        for beta in [float(b) for b in args.betas.split(",")]:
            model = fit_minilm_value_model(tr, init=init, alpha=alpha, beta=beta)
            rows.append(evaluate(f"ridge a={alpha:g} b={beta:g}", predict(model, va)))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"positions": positions, "objectives": objectives, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
