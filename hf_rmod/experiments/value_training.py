"""CD-FUDGE training of a :class:`~hf_rmod.MultiValueHead` on sampled records (paper section 5.1, eq. 8).

:func:`train_value_head` fits the head on the records of
:func:`~hf_rmod.experiments.sampling.sample_responses`: for every response prefix ``y^t`` (``t = 1..|y|``)
the value ``V_g(x, y^t)`` regresses onto the final, normalised reward ``r_g(x, y)``:

.. math::

    \\mathcal{L}(\\theta) = \\mathbb{E}_{x, y \\sim \\pi_{ref}} \\sum_{t=1}^{|y|} \\sum_g
    \\big(V_g(x, y^t; \\theta) - \\tilde r_g(x, y)\\big)^2,
    \\qquad \\tilde r_g = (r_g - \\mu_g) / \\sigma_g .

All prefixes of a sequence come from one forward pass (the hidden state at each response token).

Pieces: the records (:mod:`.records`: :func:`load_records` with the objectives check, :func:`split_by_prompt`;
re-exported here), :func:`cd_fudge_loss`, the batch collation, the validation metrics (:func:`_sequence_stats` / :func:`_summarize`) and the loop
(:func:`_setup` -> :func:`_fit` -> :func:`_finish`).

Why one module of ~600 lines: the CD-FUDGE loop and its validation metrics (per objective, per prefix bucket, within-prompt
ranking) must agree on the batch layout, so they stay together; the records format lives in :mod:`.records`.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from .._utils import module_device
from ..configuration_value_head import _config_vocab, sampling_settings_from_records, tokenizer_fingerprint
from ..modeling_value_head import MultiValueHead
from ..scoring import policy_final_hidden_states
from . import io
from .configs import ValueTrainingConfig, merge_config
from .records import RecordList, common_objectives, load_records, split_by_prompt

__all__ = [
    "PREFIX_BUCKETS",
    "RecordList",
    "ValueTrainingResult",
    "cd_fudge_loss",
    "common_objectives",
    "load_records",
    "split_by_prompt",
    "train_value_head",
]

PREFIX_BUCKETS = (0.25, 0.5, 0.75, 1.0)  # upper edges of the relative prefix-position buckets t / |y|


# ------------------------------------------------------------------------------------------------------------
# Loss and batches
# ------------------------------------------------------------------------------------------------------------
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


@dataclass
class _Example:
    input_ids: list[int]  # prompt + response
    prompt_len: int
    target: list[float]  # normalised rewards (G,)
    hidden: torch.Tensor | None = None  # (|y|, H) cached policy states at response positions (shared-trunk)
    index: int = -1  # the record's index (groups validation responses by prompt for the ranking metrics)


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
        "index": torch.tensor([e.index for e in examples], dtype=torch.long),
    }
    if examples[0].hidden is not None:
        hidden = torch.zeros((batch, width, examples[0].hidden.shape[-1]), dtype=examples[0].hidden.dtype)
        for row, e in enumerate(examples):
            hidden[row, e.prompt_len : len(e.input_ids)] = e.hidden
        out["hidden"] = hidden  # (batch, T, H), zeros at prompt/padding (masked out of the loss)
    return out


# ------------------------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------------------------
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
        val_ranking: best-epoch **within-prompt** ranking metrics on the validation split (which groups every
            prompt's responses): ``{"within_prompt_spearman_t16": {objective: value}, "pairwise_accuracy_t16": ...,
            ..._t32, "ranking_prompts": n}`` at ``t = B, 2B`` with ``B = ranking_block_size``
            (see :mod:`hf_rmod.experiments.value_report`; NaN when no prompt qualifies).
        best_epoch: epoch of the best validation MSE (1-based).
        best_checkpoint: directory of the best model (a ``save_pretrained`` folder), if ``output_dir`` was given.
        reward_mean / reward_std: the normalisation stored in the head's config.
        warnings: problems of the saved head, e.g. an objective it predicts worse than the constant predictor.
    """

    history: list[dict] = field(default_factory=list)
    val_mse: dict[str, float] = field(default_factory=dict)
    baseline_mse: dict[str, float] = field(default_factory=dict)
    val_mse_by_prefix: dict[str, float] = field(default_factory=dict)
    baseline_mse_by_prefix: dict[str, float] = field(default_factory=dict)
    val_ranking: dict[str, Any] = field(default_factory=dict)
    best_epoch: int | None = None
    best_checkpoint: str | None = None
    reward_mean: list[float] = field(default_factory=list)
    reward_std: list[float] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _bucket_names() -> list[str]:
    edges = (0.0, *PREFIX_BUCKETS)
    return [f"t/|y| in ({lo:.2f}, {hi:.2f}]" for lo, hi in zip(edges[:-1], edges[1:])]


def _sequence_stats(values: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-sequence error sums for metrics: ``(batch, 3 + 3 * num_buckets, G)``.

    Rows: squared error sum, constant-predictor squared error sum, position count (broadcast over G), then the
    same three per prefix bucket. Per sequence, so that `gather_for_metrics` can drop duplicated samples.
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


def _summarize(stats: torch.Tensor, objectives: list[str]) -> dict[str, Any]:
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


def _values_at_positions(values: torch.Tensor, loss_mask: torch.Tensor, positions: Sequence[int]) -> torch.Tensor:
    """``(batch, S, G)``: each sequence's value after ``min(t, |y|)`` response tokens, for ``t`` in ``positions``.

    ``loss_mask`` (batch, T) marks the response positions (right-padded batches: they are contiguous)."""
    mask = loss_mask.bool()
    length = mask.sum(1)  # (batch,) |y|
    start = mask.float().argmax(1)  # (batch,) index of the first response token (the prompt length)
    t = torch.tensor(list(positions), device=values.device)  # (S,)
    where = start[:, None] + torch.minimum(t[None, :], length[:, None]).clamp_min(1) - 1  # (batch, S)
    return values.float()[torch.arange(values.shape[0], device=values.device)[:, None], where]


def _ranking_summary(values: torch.Tensor, targets: torch.Tensor, index: torch.Tensor, prompt_of: Sequence[str],
                     positions: Sequence[int], objectives: list[str]) -> dict[str, Any]:
    """Within-prompt Spearman and pairwise accuracy at each position (see :mod:`.value_report`), as
    ``{"within_prompt_spearman_t16": {objective: value}, "pairwise_accuracy_t16": {...}, ..., "ranking_prompts": n}``."""
    from .value_report import within_prompt_metrics

    keep = index >= 0
    values, targets, index = values[keep], targets[keep], index[keep]
    if index.numel() == 0:
        return {}
    index, first = torch.unique(index, return_inverse=True)  # drop duplicates that gather_for_metrics may leave
    order = torch.zeros(index.numel(), dtype=torch.long).scatter_(0, first, torch.arange(first.numel()))
    values, targets = values[order], targets[order]
    prompt_ids = {p: i for i, p in enumerate(dict.fromkeys(prompt_of[i] for i in index.tolist()))}
    groups = torch.tensor([prompt_ids[prompt_of[i]] for i in index.tolist()])
    metrics = within_prompt_metrics(values, targets, groups)
    out: dict[str, Any] = {}
    for s, t in enumerate(positions):
        out[f"within_prompt_spearman_t{t}"] = {o: float(metrics["spearman"][s, g]) for g, o in enumerate(objectives)}
        out[f"pairwise_accuracy_t{t}"] = {o: float(metrics["pairwise_accuracy"][s, g]) for g, o in enumerate(objectives)}
    out["ranking_prompts"] = metrics["prompts"]
    return out


def _worse_than_constant(result: ValueTrainingResult) -> list[str]:
    """A message per objective whose best validation MSE exceeds the constant predictor's."""
    return [
        f"The saved head (epoch {result.best_epoch}) predicts `{name}` worse than the constant predictor: validation "
        f"MSE {mse:.4g} > baseline {result.baseline_mse[name]:.4g}. Its values for `{name}` steer decoding by noise; "
        "sample more prompts, lower the learning rate or drop this objective."
        for name, mse in result.val_mse.items()
        if name in result.baseline_mse and mse > result.baseline_mse[name]
    ]


# ------------------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------------------
def train_value_head(
    head: MultiValueHead,
    records_or_path: str | os.PathLike | Iterable[dict],
    policy: nn.Module | None = None,
    config: ValueTrainingConfig | None = None,
    *,
    objectives: Sequence[str] | None = None,
    output_dir: str | os.PathLike | None = None,
    accelerator: Any = None,
    show_progress: bool = True,
    allow_missing: bool = False,
    tokenizer: Any = None,
    **overrides: Any,
) -> ValueTrainingResult:
    """Fit ``head`` by CD-FUDGE (eq. 8) on sampled, scored responses.

    Every response prefix ``y^t`` (the hidden state at each response token) regresses onto the final reward
    of its response, normalised per objective with the train split's mean/std (stored in
    ``head.config.reward_mean`` / ``reward_std``). Prompt and padding positions are masked out; all prefixes of a
    batch come from one forward pass. The split into train/validation is by prompt. After each epoch the
    validation MSE (per objective, per prefix bucket, and for the constant predictor) is computed and printed;
    the best epoch's weights are kept (early stopping after ``patience`` epochs without improvement) and, with
    ``output_dir``, saved as ``output_dir/best`` (an ordinary ``save_pretrained`` folder whose model card shows
    the metrics). A best head worse than the constant predictor on an objective warns (``warnings.warn``,
    ``result.warnings``, metrics.json and the model card).

    Args:
        head: the value head to train (modified in place; ends with the best epoch's weights).
        records_or_path: JSONL path or records (e.g. from :func:`load_records`, whose file is then named in the
            model card).
        policy: the reference policy; required for a shared-trunk head (frozen; its final hidden states are
            the head's input). Ignored by a backbone head (which reads token ids; they must share the tokenizer).
        config: a :class:`~hf_rmod.experiments.configs.ValueTrainingConfig` (default: ``ValueTrainingConfig()``).
        objectives: reward names to train on, in the head's order; defaults to ``head.objectives``.
        output_dir: where to save the best checkpoint (``output_dir/best``) and ``metrics.json``.
        accelerator: an ``accelerate.Accelerator``; one is created if ``None`` (works under ``accelerate launch``).
        show_progress: progress bars and per-epoch lines on stderr (main process only).
        allow_missing: accept records with different objectives (see :func:`load_records`); every record must
            still have the head's objectives.
        tokenizer: the tokenizer of the records' token ids (the policy's). A backbone head reads those ids: when it
            records a ``tokenizer_fingerprint`` that differs, training is refused (naming both tokenizers). A head
            without a fingerprint gets this tokenizer's.
        **overrides: :class:`ValueTrainingConfig` fields, e.g. ``epochs=5`` (applied over ``config``).
    """
    config = merge_config(ValueTrainingConfig, config, overrides, "train_value_head")
    objectives = _check_head(head, policy, objectives, tokenizer)
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    accelerator = accelerator if accelerator is not None else Accelerator()
    set_seed(config.seed)
    records = load_records(records_or_path, objectives, allow_missing=allow_missing)
    for index, record in enumerate(records):
        if not record["response_ids"]:
            raise ValueError(f"Record {index} has an empty response; there is no prefix to train on.")
    _check_token_ids(head, records)
    if tokenizer is not None and head.config.tokenizer_fingerprint is None:
        head.config.tokenizer_fingerprint = tokenizer_fingerprint(tokenizer)
    sampling = sampling_settings_from_records(records.settings)
    if sampling is not None:
        head.config.sampling_settings = sampling
    run = _setup(head, records, policy, objectives, config, accelerator, show_progress)
    result = _fit(run, config, show_progress)
    _finish(run, result, records, config, output_dir)
    return result


def _check_token_ids(head: MultiValueHead, records: RecordList) -> None:
    """A backbone head reads the records' token ids: they must exist in its vocabulary."""
    if head.uses_policy_hidden_states:
        return
    vocab = _config_vocab(head.config.backbone_config)
    if vocab is None:
        return
    for index, record in enumerate(records):
        top = max(list(record["prompt_ids"]) + list(record["response_ids"]), default=0)
        if top >= vocab:
            raise ValueError(
                f"Record {index} holds token id {top}, beyond the value head's backbone vocabulary ({vocab}): the "
                "records were tokenized with another tokenizer than the backbone reads. Train a backbone that shares "
                "the policy's tokenizer."
            )


def _check_head(head: Any, policy: nn.Module | None, objectives: Sequence[str] | None, tokenizer: Any = None) -> list[str]:
    if not isinstance(head, MultiValueHead):
        raise TypeError(f"`head` must be a MultiValueHead, got {type(head).__name__}.")
    objectives = list(objectives) if objectives is not None else head.objectives
    if objectives != head.objectives:
        raise ValueError(
            f"`objectives`={objectives} must equal the head's objectives {head.objectives} (same names, same "
            "order); build the head with the objectives you train on."
        )
    if head.uses_policy_hidden_states:
        if policy is None:
            raise ValueError(
                "A shared-trunk head reads the policy's hidden states: pass `policy=` (the reference model the "
                "records were sampled from)."
            )
        head.check_compatible(policy, tokenizer=tokenizer)
    elif policy is not None:  # a backbone head reads the records' (policy's) token ids
        head.check_compatible(policy, tokenizer=tokenizer)
    elif tokenizer is not None:
        head.check_tokenizer(tokenizer, what="the records' tokenizer (`tokenizer=`)")
    return objectives


@dataclass
class _Run:
    """Everything one training run holds: the prepared model, optimiser and loaders."""

    head: MultiValueHead
    model: nn.Module  # `head` as prepared by the accelerator
    optimizer: torch.optim.Optimizer
    params: list[nn.Parameter]
    train_loader: DataLoader
    val_loader: DataLoader | None
    accelerator: Any
    objectives: list[str]
    shared_trunk: bool
    frozen_policy: nn.Module | None  # shared trunk without cached hidden states
    train_idx: list[int]
    val_idx: list[int]
    ranking_positions: list[int] = field(default_factory=lambda: [16, 32])  # t = B, 2B of the ranking metrics
    prompt_of: list[str] = field(default_factory=list)  # record index -> prompt

    def values_for(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Predicted values ``(batch, T, G)``."""
        if not self.shared_trunk:
            return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).values
        hidden = batch.get("hidden")
        if hidden is None:
            device = module_device(self.frozen_policy)
            with torch.no_grad():
                hidden = policy_final_hidden_states(
                    self.frozen_policy, batch["input_ids"].to(device), batch["attention_mask"].to(device)
                ).to(batch["input_ids"].device)  # (batch, T, H)
        return self.model(hidden_states=hidden).values  # (batch, T, G)

    def train_epoch(self, epoch: int, max_grad_norm: float | None, show: bool) -> float:
        """One pass over the train loader; the mean training loss."""
        total, steps = 0.0, 0
        bar = io.progress(len(self.train_loader), f"epoch {epoch}", unit="batch", disable=not show)
        for batch in self.train_loader:
            loss = cd_fudge_loss(self.values_for(batch), batch["targets"], batch["loss_mask"])
            self.optimizer.zero_grad()
            self.accelerator.backward(loss)
            if max_grad_norm is not None:
                self.accelerator.clip_grad_norm_(self.params, max_grad_norm)
            self.optimizer.step()
            total += float(self.accelerator.reduce(loss.detach(), reduction="mean"))
            steps += 1
            bar.update(1)
        bar.close()
        return total / max(steps, 1)

    def validate(self) -> dict[str, Any]:
        """Validation metrics (:func:`_summarize`, :func:`_ranking_summary`) gathered over every process."""
        self.model.eval()
        stats, at_blocks, targets, index = [], [], [], []
        with torch.no_grad():
            for batch in self.val_loader:
                values = self.values_for(batch)
                stats.append(self.accelerator.gather_for_metrics(_sequence_stats(values, batch)).cpu())
                picked = _values_at_positions(values, batch["loss_mask"], self.ranking_positions)  # (b, S, G)
                gathered = self.accelerator.gather_for_metrics((picked, batch["targets"], batch["index"]))
                for store, tensor in zip((at_blocks, targets, index), gathered):
                    store.append(tensor.cpu())
        self.model.train()
        summary = _summarize(torch.cat(stats), self.objectives)
        summary["ranking"] = _ranking_summary(
            torch.cat(at_blocks), torch.cat(targets), torch.cat(index), self.prompt_of, self.ranking_positions,
            self.objectives,
        )
        return summary


def _normalized_targets(head: MultiValueHead, records, objectives, train_idx) -> torch.Tensor:
    """Rewards z-scored with the train split's mean/std (stored in the head's config): ``(n, G)``."""
    rewards = torch.tensor([[r["rewards"][o] for o in objectives] for r in records], dtype=torch.float64)
    mean = rewards[train_idx].mean(0)
    std = rewards[train_idx].std(0, unbiased=False) if len(train_idx) > 1 else torch.ones_like(mean)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))  # a constant objective: keep unit scale
    head.config.reward_mean, head.config.reward_std = mean.tolist(), std.tolist()
    return ((rewards - mean) / std).float()


def _setup(head, records, policy, objectives, config: ValueTrainingConfig, accelerator, show_progress) -> _Run:
    train_idx, val_idx = split_by_prompt(records, config.val_fraction, config.seed)
    targets = _normalized_targets(head, records, objectives, train_idx)
    examples = [
        _Example(input_ids=list(r["prompt_ids"]) + list(r["response_ids"]), prompt_len=len(r["prompt_ids"]),
                 target=targets[i].tolist(), index=i)
        for i, r in enumerate(records)
    ]
    pad_id = 0  # right padding, masked out everywhere
    shared_trunk = head.uses_policy_hidden_states
    if shared_trunk and config.cache_hidden_states:
        show = show_progress and accelerator.is_main_process
        _cache_policy_states(policy, examples, config.batch_size, pad_id, show)

    def collate(batch):
        return _collate(batch, pad_id)

    generator = torch.Generator().manual_seed(config.seed)
    train_loader = DataLoader([examples[i] for i in train_idx], batch_size=config.batch_size, shuffle=True,
                              collate_fn=collate, generator=generator)
    val_loader = (
        DataLoader([examples[i] for i in val_idx], batch_size=config.batch_size, collate_fn=collate) if val_idx else None
    )
    if head.backbone is not None:
        head.backbone.requires_grad_(not config.freeze_backbone)
    params = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    if val_loader is not None:
        model, optimizer, train_loader, val_loader = accelerator.prepare(head, optimizer, train_loader, val_loader)
    else:
        model, optimizer, train_loader = accelerator.prepare(head, optimizer, train_loader)
    frozen_policy = policy if (shared_trunk and not config.cache_hidden_states) else None
    if frozen_policy is not None:
        frozen_policy.requires_grad_(False)
    block = config.ranking_block_size
    return _Run(head, model, optimizer, params, train_loader, val_loader, accelerator, list(objectives),
                shared_trunk, frozen_policy, train_idx, val_idx, [block, 2 * block], [r["prompt"] for r in records])


def _fit(run: _Run, config: ValueTrainingConfig, show_progress: bool) -> ValueTrainingResult:
    """The epochs with early stopping; ``run.model`` ends with the best epoch's weights."""
    show = show_progress and run.accelerator.is_main_process
    result = ValueTrainingResult(reward_mean=run.head.config.reward_mean, reward_std=run.head.config.reward_std)
    best_state, best_summary, stale = None, None, 0
    run.model.train()
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        entry = {"epoch": epoch, "train_loss": run.train_epoch(epoch, config.max_grad_norm, show)}
        entry["seconds"] = time.perf_counter() - started
        summary = run.validate() if run.val_loader is not None else None
        improved = summary is None or best_summary is None or summary["val_mse_mean"] < best_summary["val_mse_mean"]
        if summary is not None:
            entry["val_mse"], entry["val_mse_per_objective"] = summary["val_mse_mean"], summary["val_mse"]
            best_summary = summary if improved else best_summary
        result.history.append(entry)
        if run.accelerator.is_main_process:
            io.notice(_epoch_line(entry, summary, config.epochs, improved), show=show_progress)
        if improved:
            stale, result.best_epoch = 0, epoch
            best_state = {k: v.detach().clone() for k, v in run.accelerator.unwrap_model(run.model).state_dict().items()}
        else:
            stale += 1
            if config.patience is not None and stale >= config.patience:
                break
    run.accelerator.unwrap_model(run.model).load_state_dict(best_state)
    if best_summary is not None:
        result.val_mse, result.baseline_mse = best_summary["val_mse"], best_summary["baseline_mse"]
        result.val_mse_by_prefix = best_summary["val_mse_by_prefix"]
        result.baseline_mse_by_prefix = best_summary["baseline_mse_by_prefix"]
        result.val_ranking = best_summary.get("ranking", {})
    result.warnings = _worse_than_constant(result)
    if run.accelerator.is_main_process:
        for message in result.warnings:
            warnings.warn(message, stacklevel=3)
    return result


def _epoch_line(entry: dict, summary: dict | None, epochs: int, improved: bool) -> str:
    """``epoch 2/8: train loss 0.91 | val MSE a 0.81 (constant 0.99), b 0.52 (constant 1.01) | mean 0.66 *``."""
    line = f"epoch {entry['epoch']}/{epochs}: train loss {entry['train_loss']:.4g}"
    if summary is None:
        return line + " (no validation split)"
    per_objective = ", ".join(
        f"{name} {mse:.4g} (constant {summary['baseline_mse'][name]:.4g})" for name, mse in summary["val_mse"].items()
    )
    ranking = summary.get("ranking") or {}
    accuracy = next((k for k in ranking if k.startswith("pairwise_accuracy_t")), None)
    ranked = "" if accuracy is None else " | within-prompt pair acc. t=" + accuracy.rsplit("_t", 1)[1] + " " + ", ".join(
        f"{name} {value:.3g}" for name, value in ranking[accuracy].items()
    )
    return (f"{line} | val MSE {per_objective} | mean {summary['val_mse_mean']:.4g}{ranked}"
            + (" (best so far)" if improved else ""))


def _finish(run: _Run, result: ValueTrainingResult, records: RecordList, config, output_dir) -> None:
    """Record the training info in the head's config (and so its model card); save ``output_dir/best``."""
    accelerator = run.accelerator
    unwrapped = accelerator.unwrap_model(run.model)
    metrics = {
        "val_mse": result.val_mse,
        "baseline_mse": result.baseline_mse,
        "val_mse_by_prefix": result.val_mse_by_prefix,
        "baseline_mse_by_prefix": result.baseline_mse_by_prefix,
        **result.val_ranking,  # within-prompt Spearman / pairwise accuracy at t = B, 2B: rows of the card's table
        "best_epoch": result.best_epoch,
        "units": "normalised reward (per-objective z-score of the train split)",
    }
    if result.warnings:
        metrics["warnings"] = result.warnings
    info = {
        **dict(run.head.config.training_info or {}),  # keeps what the caller recorded (e.g. the reward models)
        "data": _data_info(records, run),
        "method": "CD-FUDGE (eq. 8): MSE of V_g(x, y^t) vs normalised r_g(x, y) at every response prefix",
        "hyperparameters": asdict(config),
        "metrics": metrics,
        "history": result.history,
    }
    unwrapped.config.training_info = info
    run.head.config.training_info = info
    if output_dir is None:
        return
    best_dir = Path(output_dir) / "best"
    accelerator.wait_for_everyone()
    unwrapped.save_pretrained(best_dir, is_main_process=accelerator.is_main_process)
    result.best_checkpoint = str(best_dir)
    if accelerator.is_main_process:
        (Path(output_dir) / "metrics.json").write_text(json.dumps(result.to_dict(), indent=2))
    accelerator.wait_for_everyone()


def _data_info(records: RecordList, run: _Run) -> dict[str, Any]:
    info = {
        "records": records.source or "in-memory",
        "responses": len(records),
        "prompts": len({r["prompt"] for r in records}),
        "train_prompts": len({records[i]["prompt"] for i in run.train_idx}),
        "val_prompts": len({records[i]["prompt"] for i in run.val_idx}),
        "response_tokens": sum(len(r["response_ids"]) for r in records),
    }
    if records.settings:
        info["sampling_settings"] = {k: v for k, v in records.settings.items() if k != "format"}
    return info


def _cache_policy_states(policy, examples: list[_Example], batch_size: int, pad_id: int, show: bool) -> None:
    """Run the frozen policy once; keep each example's response-position hidden states (|y|, H) on CPU."""
    was_training = policy.training
    policy.eval()
    device = module_device(policy)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))  # less padding per batch
    bar = io.progress(len(examples), "policy hidden states", unit="response", disable=not show)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = [examples[i] for i in order[start : start + batch_size]]
            batch = _collate(chunk, pad_id)
            hidden = policy_final_hidden_states(
                policy, batch["input_ids"].to(device), batch["attention_mask"].to(device)
            )  # (b, T, H)
            for row, example in enumerate(chunk):
                example.hidden = hidden[row, example.prompt_len : len(example.input_ids)].cpu().clone()
            bar.update(len(chunk))
    bar.close()
    policy.train(was_training)
