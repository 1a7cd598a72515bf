"""Training data and CD-FUDGE training for :class:`~hf_rmod.MultiValueHead` (paper section 5.1, eq. 8).

Two steps, each also a CLI subcommand (``hf-rmod sample`` / ``hf-rmod train-value``):

1. :func:`sample_responses` draws ``N`` responses per prompt from the reference policy with plain
   ``model.generate`` and scores them with ``G`` reward functions, appending JSONL records
   ``{"prompt", "prompt_ids", "response", "response_ids", "rewards": {name: float}}`` (resumable).
2. :func:`train_value_head` fits the head by CD-FUDGE: for every response prefix ``y^t``
   (``t = 1..|y|``) the value ``V_g(x, y^t)`` regresses onto the final, normalised reward ``r_g(x, y)``:

   .. math::

       \\mathcal{L}(\\theta) = \\mathbb{E}_{x, y \\sim \\pi_{ref}} \\sum_{t=1}^{|y|} \\sum_g
       \\big(V_g(x, y^t; \\theta) - \\tilde r_g(x, y)\\big)^2,
       \\qquad \\tilde r_g = (r_g - \\mu_g) / \\sigma_g .

   All prefixes of a sequence come from one forward pass (the hidden state at each response token).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ._jsonl import read_jsonl, write_jsonl
from .modeling_value_head import MultiValueHead
from .rewards import score_rewards

__all__ = [
    "ValueTrainingResult",
    "add_cli_parsers",
    "cd_fudge_loss",
    "load_records",
    "policy_final_hidden_states",
    "sample_responses",
    "split_by_prompt",
    "train_value_head",
]

RewardFn = Callable[[list, list], Any]
PREFIX_BUCKETS = (0.25, 0.5, 0.75, 1.0)  # upper edges of the relative prefix-position buckets t / |y|


# ================================================================================================================
# 1. sampling
# ================================================================================================================


def _encode_prompt(tokenizer, prompt: str, chat_template: bool) -> list[int]:
    if chat_template:
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(
                "chat_template=True but the tokenizer has no chat template; pass chat_template=False to use the "
                "prompt text as is."
            )
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(prompt)["input_ids"]


def _eos_ids(model, tokenizer) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return {int(eos)} if isinstance(eos, int) else {int(e) for e in eos}


def _cut_response(ids: list[int], eos_ids: set[int]) -> list[int]:
    """Generated ids -> the response: up to and including the first EOS (drops padding after it)."""
    for index, token in enumerate(ids):
        if token in eos_ids:
            return ids[: index + 1]
    return ids


def _read_jsonl(path: Path, repair_rows_per_prompt: int | None = None) -> list[dict]:
    """Records of a JSONL file. With ``repair_rows_per_prompt``, an interrupted append (a partial last line) is
    removed together with the incomplete prompt it belonged to, so that prompt is sampled again."""
    records, truncated = read_jsonl(path, repair=repair_rows_per_prompt is not None)
    if truncated and repair_rows_per_prompt is not None and records:
        cut = records[-1]["prompt"]
        if sum(r["prompt"] == cut for r in records) < repair_rows_per_prompt:
            records = [r for r in records if r["prompt"] != cut]
            write_jsonl(path, records)
    return records


def sample_responses(
    model,
    tokenizer,
    prompts: Sequence[str],
    reward_fns: RewardFn | Sequence[RewardFn] | dict[str, RewardFn],
    num_responses: int = 4,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    output_path: str | os.PathLike | None = None,
    generation_kwargs: dict | None = None,
    chat_template: bool = True,
    objectives: Sequence[str] | None = None,
    show_progress: bool = True,
    seed: int | None = None,
) -> list[dict]:
    """Sample ``num_responses`` responses per prompt from the reference policy and score them.

    Responses come from plain ``model.generate(do_sample=True, num_return_sequences=num_responses)`` on
    left-padded batches of ``batch_size`` prompts (KV-cached by ``generate``). By default ``top_k=0`` (pure
    sampling from the policy; transformers 5 otherwise applies ``top_k=50``); ``generation_kwargs`` override
    anything (temperature, top_p, ...). Sample with the settings you will decode with.

    Args:
        model: a causal LM (the reference policy ``pi_ref``).
        tokenizer: its tokenizer.
        prompts: plain user prompts (duplicates are sampled once).
        reward_fns: callables ``(prompts, responses) -> (n,)`` or ``(n, G)``, a list of them, or a dict
            ``{name: callable}``. Column names come from ``objectives``, the dict keys, a callable's
            ``objectives`` attribute or its ``__name__``.
        num_responses: ``N`` responses per prompt.
        max_new_tokens: response length cap.
        batch_size: prompts per ``generate`` call (``batch_size * N`` rows).
        output_path: JSONL file to append records to. Prompts already in it are skipped (resume).
        generation_kwargs: extra ``generate`` arguments.
        chat_template: wrap each prompt in the tokenizer's chat template as a user turn.
        objectives: names of the ``G`` reward columns.
        show_progress: tqdm progress bar.
        seed: seeds torch before sampling.

    Returns:
        The records written by this call (not those already in ``output_path``).
    """
    if isinstance(prompts, str):
        raise TypeError("`prompts` must be a list of strings; wrap a single prompt as [prompt].")
    if num_responses < 1 or batch_size < 1 or max_new_tokens < 1:
        raise ValueError(
            f"num_responses, batch_size and max_new_tokens must be >= 1, got {num_responses}, {batch_size}, "
            f"{max_new_tokens}."
        )
    path = Path(output_path) if output_path is not None else None
    done = {r["prompt"] for r in _read_jsonl(path, num_responses)} if path is not None else set()
    todo = [p for p in dict.fromkeys(prompts) if p not in done]
    if seed is not None:
        torch.manual_seed(seed)
    kwargs = {"do_sample": True, "top_k": 0, **(generation_kwargs or {})}
    kwargs.update(num_return_sequences=num_responses, max_new_tokens=max_new_tokens)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("The tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token_id.")
    kwargs.setdefault("pad_token_id", pad_id)
    eos_ids = _eos_ids(model, tokenizer)
    device = next(model.parameters()).device
    written: list[dict] = []
    progress = _progress(total=len(todo), desc="sampling", disable=not show_progress)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        encoded = [_encode_prompt(tokenizer, p, chat_template) for p in batch]
        width = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # (b, P) left padded
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention_mask[row, width - len(ids) :] = 1
        with torch.no_grad():
            output = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), **kwargs
            )
        sequences = output.sequences if hasattr(output, "sequences") else output  # (b * N, P + new)
        new_ids = sequences[:, width:].tolist()
        rows = []
        for index, ids in enumerate(new_ids):
            prompt_index = index // num_responses
            response_ids = _cut_response(ids, eos_ids)
            rows.append(
                {
                    "prompt": batch[prompt_index],
                    "prompt_ids": encoded[prompt_index],
                    "response": tokenizer.decode(response_ids, skip_special_tokens=True),
                    "response_ids": response_ids,
                }
            )
        texts = [r["prompt"] for r in rows], [r["response"] for r in rows]
        rewards, names = score_rewards(reward_fns, *texts, objectives=objectives)
        for row, values in zip(rows, rewards.tolist()):
            row["rewards"] = dict(zip(names, values))
        if path is not None:
            with path.open("a", encoding="utf-8") as handle:  # one write per batch: a prompt is all-or-nothing
                handle.write("".join(json.dumps(row) + "\n" for row in rows))
        written += rows
        progress.update(len(batch))
    progress.close()
    return written


def _progress(total: int, desc: str, disable: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=disable)


# ================================================================================================================
# 2. training
# ================================================================================================================


def load_records(records_or_path: str | os.PathLike | Iterable[dict]) -> list[dict]:
    """Records from a JSONL file written by :func:`sample_responses`, or an iterable of such dicts."""
    if isinstance(records_or_path, (str, os.PathLike)):
        path = Path(records_or_path)
        if not path.exists():
            raise FileNotFoundError(f"Records file {str(path)!r} does not exist; create it with sample_responses().")
        records = _read_jsonl(path)
    else:
        records = list(records_or_path)
    required = ("prompt", "prompt_ids", "response_ids", "rewards")
    for index, record in enumerate(records):
        missing = [key for key in required if key not in record]
        if missing:
            raise ValueError(f"Record {index} lacks {missing}; records need {list(required)}.")
    if not records:
        raise ValueError("No training records: sample some with sample_responses() first.")
    return records


def split_by_prompt(records: Sequence[dict], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices ``(train, val)`` with every prompt's responses on one side only."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"`val_fraction` must be in [0, 1), got {val_fraction}.")
    prompts = sorted({r["prompt"] for r in records})
    random.Random(seed).shuffle(prompts)
    num_val = int(round(val_fraction * len(prompts)))
    if val_fraction > 0 and num_val == 0:
        num_val = 1
    if num_val >= len(prompts) and val_fraction > 0:
        raise ValueError(
            f"Only {len(prompts)} distinct prompt(s): cannot hold out {val_fraction:.0%} of them for validation "
            "and still train. Sample more prompts or pass val_fraction=0."
        )
    val_prompts = set(prompts[:num_val])
    train = [i for i, r in enumerate(records) if r["prompt"] not in val_prompts]
    val = [i for i, r in enumerate(records) if r["prompt"] in val_prompts]
    return train, val


def cd_fudge_loss(values: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error of eq. 8 over the response positions in ``loss_mask``.

    Args:
        values: ``(batch, T, G)`` predicted values ``V_g(x, y^t)``.
        targets: ``(batch, G)`` final normalised rewards (broadcast over positions) or ``(batch, T, G)``.
        loss_mask: ``(batch, T)``, 1 at response-token positions (prefixes ``y^1..y^|y|``), 0 at prompt and padding.

    Returns:
        Scalar: ``sum_{b,t,g} mask * (V - r)^2 / (sum mask * G)``. Masked positions never contribute.
    """
    if targets.ndim == 2:
        targets = targets[:, None, :]  # (batch, 1, G)
    mask = loss_mask.to(values.dtype)[..., None]  # (batch, T, 1)
    errors = torch.where(mask.bool(), values.float() - targets.float(), torch.zeros((), device=values.device))
    squared = errors.pow(2) * mask  # (batch, T, G)
    count = mask.sum() * values.shape[-1]
    return squared.sum() / count.clamp_min(1.0)


def policy_final_hidden_states(
    policy: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """The policy's final hidden states at every position: exactly what its lm_head reads. ``(batch, T, H)``.

    Captured with a forward pre-hook on ``policy.get_output_embeddings()``, so it is the post-final-norm state
    for any architecture, the same tensor the shared-trunk head sees during decoding.
    """
    lm_head = policy.get_output_embeddings()
    if lm_head is None:
        raise ValueError(f"{type(policy).__name__} has no output embeddings (lm_head); pass a causal LM policy.")
    captured = []

    def hook(module, args):
        captured.append(args[0])

    handle = lm_head.register_forward_pre_hook(hook)
    try:
        policy(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        handle.remove()
    hidden = captured[-1]
    if hidden.shape[:2] != input_ids.shape:
        raise RuntimeError(
            f"lm_head saw hidden states of shape {tuple(hidden.shape)} for input {tuple(input_ids.shape)}; the policy "
            "did not compute logits at every position."
        )
    return hidden


@dataclass
class _Example:
    input_ids: list[int]  # prompt + response
    prompt_len: int
    target: list[float]  # normalised rewards (G,)
    hidden: torch.Tensor | None = None  # (|y|, H) cached policy states at response positions (shared-trunk)


class _ExampleDataset(Dataset):
    def __init__(self, examples: list[_Example]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> _Example:
        return self.examples[index]


def _collate(examples: list[_Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: ``input_ids``/``attention_mask``/``loss_mask`` (batch, T), ``targets`` (batch, G),
    ``rel_pos`` (batch, T) = t / |y| at response positions, optional ``hidden`` (batch, T, H)."""
    width = max(len(e.input_ids) for e in examples)
    batch = len(examples)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, width), dtype=torch.long)
    loss_mask = torch.zeros((batch, width), dtype=torch.bool)
    rel_pos = torch.zeros((batch, width), dtype=torch.float32)
    for row, e in enumerate(examples):
        length, response_len = len(e.input_ids), len(e.input_ids) - e.prompt_len
        input_ids[row, :length] = torch.tensor(e.input_ids)
        attention_mask[row, :length] = 1
        loss_mask[row, e.prompt_len : length] = True
        rel_pos[row, e.prompt_len : length] = torch.arange(1, response_len + 1, dtype=torch.float32) / response_len
    out = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "loss_mask": loss_mask,
        "rel_pos": rel_pos,
        "targets": torch.tensor([e.target for e in examples], dtype=torch.float32),
    }
    if examples[0].hidden is not None:
        hidden = torch.zeros((batch, width, examples[0].hidden.shape[-1]), dtype=examples[0].hidden.dtype)
        for row, e in enumerate(examples):
            hidden[row, e.prompt_len : len(e.input_ids)] = e.hidden
        out["hidden"] = hidden  # (batch, T, H), zeros at prompt/padding (masked out of the loss)
    return out


@dataclass
class ValueTrainingResult:
    """What :func:`train_value_head` measured.

    Attributes:
        history: one dict per epoch: ``epoch``, ``train_loss``, ``val_mse`` (mean over objectives) and
            ``val_mse_per_objective``.
        val_mse: best-epoch validation MSE per objective (normalised reward units, over all response prefixes).
        baseline_mse: the same for the constant predictor (the train-split mean reward).
        val_mse_by_prefix: best-epoch validation MSE (mean over objectives) per prefix bucket ``t/|y|``,
            with the constant predictor's as ``baseline_mse_by_prefix``.
        best_epoch: epoch of the best validation MSE (1-based).
        best_checkpoint: directory of the best model (a ``save_pretrained`` folder), if ``output_dir`` was given.
        reward_mean / reward_std: the normalisation stored in the head's config.
    """

    history: list[dict] = field(default_factory=list)
    val_mse: dict[str, float] = field(default_factory=dict)
    baseline_mse: dict[str, float] = field(default_factory=dict)
    val_mse_by_prefix: dict[str, float] = field(default_factory=dict)
    baseline_mse_by_prefix: dict[str, float] = field(default_factory=dict)
    best_epoch: int | None = None
    best_checkpoint: str | None = None
    reward_mean: list[float] = field(default_factory=list)
    reward_std: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _bucket_names() -> list[str]:
    edges = (0.0, *PREFIX_BUCKETS)
    return [f"t/|y| in ({lo:.2f}, {hi:.2f}]" for lo, hi in zip(edges[:-1], edges[1:])]


def _sequence_stats(values: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-sequence error sums for metrics: ``(batch, 2 + 2 * num_buckets, G)``.

    Rows: squared error sum, constant-predictor squared error sum, then per bucket the same two, and a count
    row per bucket stored in the last G-broadcast slots. Returned flat for `gather_for_metrics`.
    """
    mask = batch["loss_mask"].float()  # (batch, T)
    targets = batch["targets"][:, None, :]  # (batch, 1, G)
    err = (values.float() - targets).pow(2) * mask[..., None]  # (batch, T, G)
    base = targets.expand_as(values).pow(2) * mask[..., None]  # constant predictor: normalised mean 0
    rows = [err.sum(1), base.sum(1), mask.sum(1, keepdim=True).expand(-1, values.shape[-1])]
    lower = 0.0
    for upper in PREFIX_BUCKETS:
        in_bucket = ((batch["rel_pos"] > lower) & (batch["rel_pos"] <= upper)).float() * mask  # (batch, T)
        rows += [
            (err * in_bucket[..., None]).sum(1),
            (base * in_bucket[..., None]).sum(1),
            in_bucket.sum(1, keepdim=True).expand(-1, values.shape[-1]),
        ]
        lower = upper
    return torch.stack(rows, dim=1)  # (batch, 3 + 3 * buckets, G)


def _summarise(stats: torch.Tensor, objectives: list[str]) -> dict[str, Any]:
    total = stats.sum(0)  # (rows, G)
    count = total[2].clamp_min(1.0)
    out = {
        "val_mse": dict(zip(objectives, (total[0] / count).tolist())),
        "baseline_mse": dict(zip(objectives, (total[1] / count).tolist())),
        "val_mse_by_prefix": {},
        "baseline_mse_by_prefix": {},
    }
    for index, name in enumerate(_bucket_names()):
        err, base, n = total[3 + 3 * index], total[4 + 3 * index], total[5 + 3 * index]
        denom = n.sum().clamp_min(1.0)
        out["val_mse_by_prefix"][name] = float(err.sum() / denom)
        out["baseline_mse_by_prefix"][name] = float(base.sum() / denom)
    out["val_mse_mean"] = float(sum(out["val_mse"].values()) / len(objectives))
    return out


def train_value_head(
    head: MultiValueHead,
    records_or_path: str | os.PathLike | Iterable[dict],
    policy: nn.Module | None = None,
    *,
    objectives: Sequence[str] | None = None,
    epochs: int = 3,
    lr: float = 1e-3,
    batch_size: int = 16,
    val_fraction: float = 0.2,
    seed: int = 0,
    patience: int | None = 2,
    output_dir: str | os.PathLike | None = None,
    cache_hidden_states: bool = True,
    freeze_backbone: bool = False,
    weight_decay: float = 0.0,
    max_grad_norm: float | None = 1.0,
    accelerator=None,
    show_progress: bool = True,
) -> ValueTrainingResult:
    """Fit ``head`` by CD-FUDGE (eq. 8) on sampled, scored responses.

    Every response prefix ``y^t`` (the hidden state at each response token) regresses onto the final reward
    of its response, normalised per objective with the train split's mean/std (stored in
    ``head.config.reward_mean`` / ``reward_std``). Prompt and padding positions are masked out; all prefixes of a
    batch come from one forward pass. The split into train/validation is by prompt. After each epoch the
    validation MSE (per objective, per prefix bucket, and for the constant predictor) is computed; the best
    epoch's weights are kept (early stopping after ``patience`` epochs without improvement) and, with
    ``output_dir``, saved as ``output_dir/best`` (an ordinary ``save_pretrained`` folder whose model card shows
    the metrics).

    Args:
        head: the value head to train (modified in place; ends with the best epoch's weights).
        records_or_path: JSONL path or records from :func:`sample_responses`.
        policy: the reference policy; required for a shared-trunk head (frozen; its final hidden states are
            the head's input). Ignored by a backbone head (which reads token ids; they must share the tokenizer).
        objectives: reward names to train on, in the head's order; defaults to ``head.objectives``.
        epochs, lr, batch_size, weight_decay, max_grad_norm: AdamW training settings.
        val_fraction: fraction of *prompts* held out (0 disables validation and early stopping).
        seed: split, shuffling and initialisation seed.
        patience: epochs without validation improvement before stopping (``None`` never stops early).
        output_dir: where to save the best checkpoint (``output_dir/best``) and ``metrics.json``.
        cache_hidden_states: shared-trunk only: run the frozen policy once and cache the hidden states
            (memory: response tokens x hidden size in the policy's dtype); else recompute them every batch.
        freeze_backbone: backbone heads only: train just the head.
        accelerator: an ``accelerate.Accelerator``; one is created if ``None`` (works under
            ``accelerate launch``).
        show_progress: tqdm progress bars (main process only).
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if not isinstance(head, MultiValueHead):
        raise TypeError(f"`head` must be a MultiValueHead, got {type(head).__name__}.")
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"epochs and batch_size must be >= 1 and lr > 0, got {epochs}, {batch_size}, {lr}.")
    objectives = list(objectives) if objectives is not None else head.objectives
    if objectives != head.objectives:
        raise ValueError(
            f"`objectives`={objectives} must equal the head's objectives {head.objectives} (same names, same "
            "order); build the head with the objectives you train on."
        )
    shared_trunk = head.uses_policy_hidden_states
    if shared_trunk:
        if policy is None:
            raise ValueError(
                "A shared-trunk head reads the policy's hidden states: pass `policy=` (the reference model the "
                "records were sampled from)."
            )
        head.check_compatible(policy)
    accelerator = accelerator if accelerator is not None else Accelerator()
    set_seed(seed)
    records = load_records(records_or_path)
    for index, record in enumerate(records):
        absent = [o for o in objectives if o not in record["rewards"]]
        if absent:
            raise ValueError(
                f"Record {index} has rewards for {sorted(record['rewards'])} but not {absent}; sample with reward "
                f"functions for every objective in {objectives}."
            )
        if not record["response_ids"]:
            raise ValueError(f"Record {index} has an empty response; there is no prefix to train on.")
    train_idx, val_idx = split_by_prompt(records, val_fraction, seed)
    rewards = torch.tensor([[r["rewards"][o] for o in objectives] for r in records], dtype=torch.float64)
    mean = rewards[train_idx].mean(0)
    std = rewards[train_idx].std(0, unbiased=False) if len(train_idx) > 1 else torch.ones_like(mean)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))  # a constant objective: keep unit scale
    head.config.reward_mean, head.config.reward_std = mean.tolist(), std.tolist()
    targets = ((rewards - mean) / std).float()

    examples = [
        _Example(
            input_ids=list(r["prompt_ids"]) + list(r["response_ids"]),
            prompt_len=len(r["prompt_ids"]),
            target=targets[i].tolist(),
        )
        for i, r in enumerate(records)
    ]
    pad_id = 0
    if shared_trunk and cache_hidden_states:
        _cache_policy_states(policy, examples, batch_size, pad_id, accelerator, show_progress)

    def collate(batch):
        return _collate(batch, pad_id)

    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(
        _ExampleDataset([examples[i] for i in train_idx]),
        batch_size=batch_size,
        shuffle=True,
        collate_fn=collate,
        generator=generator,
    )
    val_loader = (
        DataLoader(_ExampleDataset([examples[i] for i in val_idx]), batch_size=batch_size, collate_fn=collate)
        if val_idx
        else None
    )
    if head.backbone is not None:
        head.backbone.requires_grad_(not freeze_backbone)
    params = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if val_loader is not None:
        model, optimizer, train_loader, val_loader = accelerator.prepare(head, optimizer, train_loader, val_loader)
    else:
        model, optimizer, train_loader = accelerator.prepare(head, optimizer, train_loader)
    frozen_policy = policy if (shared_trunk and not cache_hidden_states) else None
    if frozen_policy is not None:
        frozen_policy.requires_grad_(False)

    def values_for(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if not shared_trunk:
            return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).values
        if "hidden" in batch:
            hidden = batch["hidden"]
        else:
            with torch.no_grad():
                hidden = policy_final_hidden_states(
                    frozen_policy, batch["input_ids"].to(_device(frozen_policy)),
                    batch["attention_mask"].to(_device(frozen_policy)),
                ).to(batch["input_ids"].device)
        return model(hidden_states=hidden).values  # (batch, T, G)

    def evaluate() -> dict[str, Any]:
        model.eval()
        stats = []
        with torch.no_grad():
            for batch in val_loader:
                stats.append(accelerator.gather_for_metrics(_sequence_stats(values_for(batch), batch)).cpu())
        model.train()
        return _summarise(torch.cat(stats), objectives)

    result = ValueTrainingResult(reward_mean=head.config.reward_mean, reward_std=head.config.reward_std)
    best_state, best_summary, stale = None, None, 0
    info_base = {
        "data": {
            "records": str(records_or_path) if isinstance(records_or_path, (str, os.PathLike)) else "in-memory",
            "responses": len(records),
            "prompts": len({r["prompt"] for r in records}),
            "train_prompts": len({records[i]["prompt"] for i in train_idx}),
            "val_prompts": len({records[i]["prompt"] for i in val_idx}),
            "response_tokens": sum(len(r["response_ids"]) for r in records),
        },
        "method": "CD-FUDGE (eq. 8): MSE of V_g(x, y^t) vs normalised r_g(x, y) at every response prefix",
        "hyperparameters": {
            "epochs": epochs, "lr": lr, "batch_size": batch_size, "val_fraction": val_fraction, "seed": seed,
            "patience": patience, "freeze_backbone": freeze_backbone, "weight_decay": weight_decay,
        },
    }
    model.train()
    for epoch in range(1, epochs + 1):
        started, total_loss, steps = time.perf_counter(), 0.0, 0
        progress = _progress(len(train_loader), f"epoch {epoch}", not (show_progress and accelerator.is_main_process))
        for batch in train_loader:
            loss = cd_fudge_loss(values_for(batch), batch["targets"], batch["loss_mask"])
            optimizer.zero_grad()
            accelerator.backward(loss)
            if max_grad_norm is not None:
                accelerator.clip_grad_norm_(params, max_grad_norm)
            optimizer.step()
            total_loss += float(accelerator.reduce(loss.detach(), reduction="mean"))
            steps += 1
            progress.update(1)
        progress.close()
        entry = {"epoch": epoch, "train_loss": total_loss / max(steps, 1), "seconds": time.perf_counter() - started}
        improved = True
        if val_loader is not None:
            summary = evaluate()
            entry["val_mse"] = summary["val_mse_mean"]
            entry["val_mse_per_objective"] = summary["val_mse"]
            improved = best_summary is None or summary["val_mse_mean"] < best_summary["val_mse_mean"]
            if improved:
                best_summary = summary
        result.history.append(entry)
        if improved:
            stale = 0
            result.best_epoch = epoch
            best_state = {k: v.detach().clone() for k, v in accelerator.unwrap_model(model).state_dict().items()}
        else:
            stale += 1
            if patience is not None and stale >= patience:
                break

    unwrapped = accelerator.unwrap_model(model)
    unwrapped.load_state_dict(best_state)
    if best_summary is not None:
        result.val_mse, result.baseline_mse = best_summary["val_mse"], best_summary["baseline_mse"]
        result.val_mse_by_prefix = best_summary["val_mse_by_prefix"]
        result.baseline_mse_by_prefix = best_summary["baseline_mse_by_prefix"]
    metrics = {
        "val_mse": result.val_mse,
        "baseline_mse": result.baseline_mse,
        "val_mse_by_prefix": result.val_mse_by_prefix,
        "baseline_mse_by_prefix": result.baseline_mse_by_prefix,
        "best_epoch": result.best_epoch,
        "units": "normalised reward (per-objective z-score of the train split)",
    }
    unwrapped.config.training_info = {**info_base, "metrics": metrics, "history": result.history}
    if head is not unwrapped:
        head.config.training_info = unwrapped.config.training_info
    if output_dir is not None:
        best_dir = Path(output_dir) / "best"
        accelerator.wait_for_everyone()
        unwrapped.save_pretrained(best_dir, is_main_process=accelerator.is_main_process)
        if accelerator.is_main_process:
            (Path(output_dir) / "metrics.json").write_text(json.dumps(result.to_dict(), indent=2))
        accelerator.wait_for_everyone()
        result.best_checkpoint = str(best_dir)
    return result


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _cache_policy_states(policy, examples, batch_size, pad_id, accelerator, show_progress) -> None:
    """Run the frozen policy once; keep each example's response-position hidden states (|y|, H) on CPU."""
    was_training = policy.training
    policy.eval()
    device = _device(policy)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))  # less padding per batch
    progress = _progress(len(examples), "policy hidden states", not (show_progress and accelerator.is_main_process))
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = [examples[i] for i in order[start : start + batch_size]]
            batch = _collate(chunk, pad_id)
            hidden = policy_final_hidden_states(
                policy, batch["input_ids"].to(device), batch["attention_mask"].to(device)
            )  # (b, T, H)
            for row, example in enumerate(chunk):
                example.hidden = hidden[row, example.prompt_len : len(example.input_ids)].cpu().clone()
            progress.update(len(chunk))
    progress.close()
    policy.train(was_training)


# ================================================================================================================
# 3. CLI: `hf-rmod sample` and `hf-rmod train-value`
# ================================================================================================================


def _load_callable(spec: str) -> tuple[str, Callable]:
    """``name=module:attr`` (or ``module:attr``) -> (name, callable). A class or factory is called with no args
    when it does not take ``(prompts, responses)`` itself (``module:Class`` builds an instance)."""
    name, _, target = spec.rpartition("=") if "=" in spec else ("", "", spec)
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise argparse.ArgumentTypeError(
            f"--reward {spec!r}: expected NAME=MODULE:CALLABLE, e.g. helpful=my_rewards:helpfulness"
        )
    try:
        obj = importlib.import_module(module_name)
    except ImportError as err:
        raise argparse.ArgumentTypeError(f"--reward {spec!r}: cannot import {module_name!r} ({err}).") from err
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise argparse.ArgumentTypeError(f"--reward {spec!r}: {module_name!r} has no attribute {attr!r}.")
        obj = getattr(obj, part)
    if isinstance(obj, type):
        obj = obj()
    if not callable(obj):
        raise argparse.ArgumentTypeError(f"--reward {spec!r}: {attr!r} is not callable.")
    return name or getattr(obj, "__name__", attr), obj


def _read_prompts(path: str, field_name: str) -> list[str]:
    prompts = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            value = json.loads(line)
            if isinstance(value, str):
                prompts.append(value)
            elif isinstance(value, dict) and isinstance(value.get(field_name), str):
                prompts.append(value[field_name])
            else:
                raise ValueError(f"{path}:{number}: expected a JSON string or an object with a {field_name!r} field.")
    return prompts


def _load_policy(args):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {}
    if args.gguf_file:
        kwargs["gguf_file"] = args.gguf_file
    if args.trust_remote_code:
        kwargs["trust_remote_code"] = True
    dtype = getattr(args, "dtype", None)
    model = AutoModelForCausalLM.from_pretrained(args.policy, dtype=dtype or "auto", **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(args.policy, **kwargs)
    return model.to(args.device).eval(), tokenizer


def _add_policy_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", required=True, help="Reference policy: local directory or model id.")
    parser.add_argument("--gguf-file", default=None, help="GGUF file inside --policy to load (needs `gguf`).")
    parser.add_argument("--trust-remote-code", action="store_true", help="Allow the policy's own code to run.")
    parser.add_argument("--device", default="cpu", help="Device for the policy (default: cpu).")


def _run_sample(args) -> int:
    rewards = dict(_load_callable(spec) for spec in args.reward)
    model, tokenizer = _load_policy(args)
    prompts = _read_prompts(args.prompts, args.prompt_field)
    if args.limit is not None:
        prompts = prompts[: args.limit]
    generation_kwargs = json.loads(args.generation_kwargs) if args.generation_kwargs else None
    rows = sample_responses(
        model,
        tokenizer,
        prompts,
        rewards,
        num_responses=args.num_responses,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        output_path=args.output,
        generation_kwargs=generation_kwargs,
        chat_template=not args.no_chat_template,
        seed=args.seed,
    )
    print(f"wrote {len(rows)} responses to {args.output}")
    return 0


def _run_train_value(args) -> int:
    records = load_records(args.records)
    objectives = args.objectives.split(",") if args.objectives else list(records[0]["rewards"])
    policy = None
    if args.kind == "shared":
        policy, _ = _load_policy(args)
        head = MultiValueHead.for_policy(
            policy, objectives, head_type=args.head_type, policy_name_or_path=args.policy
        )
    else:
        if not args.backbone:
            raise SystemExit("--kind backbone needs --backbone (a model directory/id sharing the policy's tokenizer).")
        head = MultiValueHead.from_backbone(
            args.backbone, objectives, head_type=args.head_type, policy_name_or_path=args.policy,
            **({"trust_remote_code": True} if args.trust_remote_code else {}),
        )
        if args.policy:
            policy, _ = _load_policy(args)
            head.check_compatible(policy)
            head.config.policy_vocab_size = policy.get_output_embeddings().out_features
            policy = None  # a backbone head does not need the policy during training
    result = train_value_head(
        head,
        records,
        policy,
        objectives=objectives,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        val_fraction=args.val_fraction,
        seed=args.seed,
        patience=args.patience,
        output_dir=args.output_dir,
        cache_hidden_states=not args.no_cache_hidden_states,
        freeze_backbone=args.freeze_backbone,
    )
    print(json.dumps({"val_mse": result.val_mse, "baseline_mse": result.baseline_mse,
                      "best_checkpoint": result.best_checkpoint}, indent=2))
    return 0


def add_cli_parsers(subparsers) -> None:
    """Add the ``sample`` and ``train-value`` subcommands to an ``argparse`` subparsers object.

    Each sets ``func`` (``args.func(args) -> int``) on its namespace.
    """
    sample = subparsers.add_parser(
        "sample",
        help="Sample N responses per prompt from the reference policy and score them (JSONL, resumable).",
        description="Sample N responses per prompt with model.generate and score them with reward functions.",
    )
    _add_policy_args(sample)
    sample.add_argument("--prompts", required=True, help="JSONL of prompts: strings or objects with --prompt-field.")
    sample.add_argument("--prompt-field", default="prompt", help="Field holding the prompt (default: prompt).")
    sample.add_argument(
        "--reward", action="append", required=True, metavar="NAME=MODULE:CALLABLE",
        help="A reward function (prompts, responses) -> scores; repeat for each objective. A class is instantiated.",
    )
    sample.add_argument("--num-responses", "-n", type=int, default=4, help="Responses per prompt (default: 4).")
    sample.add_argument("--max-new-tokens", type=int, default=128)
    sample.add_argument("--batch-size", type=int, default=8, help="Prompts per generate call.")
    sample.add_argument("--output", "-o", required=True, help="JSONL file to append to (prompts in it are skipped).")
    sample.add_argument("--generation-kwargs", default=None, help='JSON, e.g. \'{"temperature": 0.7}\'.')
    sample.add_argument("--no-chat-template", action="store_true", help="Use prompts as raw text.")
    sample.add_argument("--limit", type=int, default=None, help="Only the first LIMIT prompts.")
    sample.add_argument("--seed", type=int, default=None)
    sample.set_defaults(func=_run_sample)

    train = subparsers.add_parser(
        "train-value",
        help="Train a multi-objective value head with CD-FUDGE on sampled records.",
        description="Train a MultiValueHead (CD-FUDGE, eq. 8) and save the best checkpoint as a save_pretrained folder.",
    )
    train.add_argument("--records", required=True, help="JSONL written by `hf-rmod sample`.")
    train.add_argument("--policy", default=None, help="Reference policy (required for --kind shared).")
    train.add_argument("--gguf-file", default=None)
    train.add_argument("--trust-remote-code", action="store_true")
    train.add_argument("--device", default="cpu")
    train.add_argument("--objectives", default=None, help="Comma-separated objective names (default: all in records).")
    train.add_argument("--kind", choices=("shared", "backbone"), default="shared",
                       help="shared: head on the policy's hidden state; backbone: head on --backbone.")
    train.add_argument("--backbone", default=None, help="Backbone model for --kind backbone (same tokenizer).")
    train.add_argument("--freeze-backbone", action="store_true")
    train.add_argument("--head-type", choices=("linear", "mlp"), default="linear")
    train.add_argument("--output-dir", "-o", required=True, help="Checkpoints go to OUTPUT_DIR/best.")
    train.add_argument("--epochs", type=int, default=3)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--val-fraction", type=float, default=0.2)
    train.add_argument("--patience", type=int, default=2)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--no-cache-hidden-states", action="store_true",
                       help="Recompute the policy's hidden states each batch instead of caching them.")
    train.set_defaults(func=_run_train_value)
