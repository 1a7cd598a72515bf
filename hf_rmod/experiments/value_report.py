"""How well a value model ranks the candidates of one prompt: the ranking report (issue 10 §1).

RMOD's choice at a block boundary compares the K candidates of *one* prefix. What matters is therefore not the
MSE (which, on held-out records, mostly measures how well the value separates prompts) but whether the value
after ``t`` response tokens orders the responses **of the same prompt** like their final rewards do. For
held-out records with several responses per prompt, :func:`ranking_report` measures, per objective and at
``t = B, 2B, ...`` (response positions; a response shorter than ``t`` contributes its final value):

* **within-prompt Spearman** between ``V_g(x, y^t)`` and ``r_g(x, y)``: computed over the responses of each
  prompt, then averaged over prompts;
* **within-prompt pairwise accuracy**: the share of pairs of responses of the same prompt that the value orders
  like the reward, per prompt, then averaged over prompts;
* the **prefix MSE** at ``t`` (normalised units) beside the constant predictor's, and the **share of reward
  variance between prompts** (what an MSE can be good at without ranking anything).

Ties: ranks are average ranks (fractional ranking), so Spearman is the Pearson correlation of average ranks; a
prompt whose values or rewards are all equal has no defined correlation and is left out of that average
(counted). In the pairwise accuracy a pair with equal rewards is not counted (no right order), a pair with equal
values and different rewards counts ½ (a coin flip). A prompt with a single response is left out of both and
counted (``prompts_single_response``). NaN rewards are refused.

Everything is vectorised over prompts, responses, positions and objectives (``(P, N, N, S, G)`` comparisons,
``N`` = the most responses of one prompt); there is no Python loop over pairs.

The value model is a :class:`~hf_rmod.MultiValueHead` (shared-trunk: needs ``policy``; backbone: reads the records'
token ids) or a :class:`~hf_rmod.reward_values.RewardValueModel` (reward functions on the decoded partial response;
needs a tokenizer). Command line: ``hf-rmod value-report --records R --value-head H [--policy P]``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn

__all__ = ["TIES", "ValueRankingReport", "ranking_report", "report_positions", "within_prompt_metrics"]

TIES = (
    "average ranks for Spearman (prompts with all-equal values or rewards left out, counted); pairs with equal "
    "rewards not counted, pairs with equal values count 1/2; prompts with one response left out, counted"
)


# ------------------------------------------------------------------------------------------------------------
# The metrics, vectorised
# ------------------------------------------------------------------------------------------------------------
def _group_layout(groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index, mask)`` of shape ``(P, N)``: the rows of each group (``index[p, :counts[p]]``), padded."""
    _, inverse, counts = torch.unique(groups, return_inverse=True, return_counts=True)
    order = torch.argsort(inverse, stable=True)
    member = inverse[order]
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(groups.numel()) - starts[member]
    index = torch.zeros((counts.numel(), int(counts.max())), dtype=torch.long)
    mask = torch.zeros_like(index, dtype=torch.bool)
    index[member, slot] = order
    mask[member, slot] = True
    return index, mask


def _average_ranks(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average ranks (1-based, ties share the mean rank) over dim 1 of ``x`` ``(P, N, ...)`` among ``mask`` rows."""
    extra = (1,) * (x.dim() - 2)
    other = mask.view(mask.shape[0], 1, mask.shape[1], *extra)  # (P, 1, N, ...): j is a real member
    xi, xj = x.unsqueeze(2), x.unsqueeze(1)  # (P, N, 1, ...), (P, 1, N, ...)
    below = ((xj < xi) & other).sum(2)
    equal = ((xj == xi) & other).sum(2)
    return below + 0.5 * (equal - 1) + 1.0  # (P, N, ...)


def within_prompt_metrics(values: torch.Tensor, rewards: torch.Tensor, groups: torch.Tensor) -> dict[str, Any]:
    """Within-prompt rank agreement between values and final rewards.

    Args:
        values: ``(n, S, G)`` values of ``n`` responses at ``S`` positions for ``G`` objectives (or ``(n, G)``).
        rewards: ``(n, G)`` final rewards (any affine scale: only orders matter).
        groups: ``(n,)`` integer prompt ids: responses with the same id are compared with each other.

    Returns:
        ``spearman``, ``pairwise_accuracy`` (``(S, G)`` float64, averaged over prompts; NaN when no prompt qualifies),
        ``prompts_spearman`` / ``prompts_pairwise`` (``(S, G)``: how many prompts each average is over), ``pairs``
        (``(S, G)`` pairs counted), ``prompts`` (with >= 2 responses), ``prompts_single_response`` (left out).
        Ties: see :data:`TIES`.
    """
    squeeze = values.dim() == 2
    if squeeze:
        values = values[:, None, :]
    if values.shape[0] != rewards.shape[0] or values.shape[-1] != rewards.shape[-1] or groups.numel() != values.shape[0]:
        raise ValueError(
            f"values {tuple(values.shape)}, rewards {tuple(rewards.shape)} and groups {tuple(groups.shape)} do not "
            "describe the same responses and objectives."
        )
    if not bool(torch.isfinite(rewards).all()):
        raise ValueError("rewards contain NaN or infinite values; the ranking report refuses them.")
    values, rewards = values.double(), rewards.double()
    index, mask = _group_layout(groups.long().cpu())
    sizes = mask.sum(1)
    keep = sizes >= 2
    single = int((sizes == 1).sum())
    index, mask = index[keep], mask[keep]
    S, G = values.shape[1], values.shape[2]
    empty = torch.full((S, G), math.nan, dtype=torch.float64)
    out: dict[str, Any] = {"prompts": int(keep.sum()), "prompts_single_response": single}
    if index.shape[0] == 0:
        zeros = torch.zeros((S, G), dtype=torch.long)
        out.update(spearman=empty, pairwise_accuracy=empty.clone(), prompts_spearman=zeros, prompts_pairwise=zeros,
                   pairs=zeros)
        return out
    V = values[index]  # (P, N, S, G)
    R = rewards[index][:, :, None, :].expand_as(V)  # (P, N, S, G)
    m = mask[:, :, None, None].double()  # (P, N, 1, 1)

    # Spearman: Pearson correlation of average ranks among the members of each prompt
    rv, rr = _average_ranks(V, mask), _average_ranks(R, mask)
    n = mask.sum(1).double()[:, None, None]  # (P, 1, 1)
    cv = (rv - (rv * m).sum(1).div(n)[:, None]) * m
    cr = (rr - (rr * m).sum(1).div(n)[:, None]) * m
    cov, var_v, var_r = (cv * cr).sum(1), (cv * cv).sum(1), (cr * cr).sum(1)  # (P, S, G)
    defined = (var_v > 1e-12) & (var_r > 1e-12)
    rho = torch.where(defined, cov / (var_v * var_r).clamp_min(1e-300).sqrt(), torch.zeros_like(cov))
    count_rho = defined.sum(0)
    out["spearman"] = torch.where(count_rho > 0, rho.sum(0) / count_rho.clamp_min(1), empty)
    out["prompts_spearman"] = count_rho

    # pairwise accuracy over pairs i < j of one prompt with different rewards
    N = mask.shape[1]
    upper = torch.triu(torch.ones(N, N, dtype=torch.bool), diagonal=1)
    both = (mask[:, :, None] & mask[:, None, :] & upper)[..., None, None]  # (P, N, N, 1, 1)
    dv = V[:, :, None] - V[:, None, :]  # (P, N, N, S, G)
    dr = R[:, :, None] - R[:, None, :]
    valid = both & (dr != 0)
    score = torch.where(dv == 0, 0.5, (torch.sign(dv) == torch.sign(dr)).double())
    pairs = valid.sum((1, 2))  # (P, S, G)
    correct = (score * valid).sum((1, 2))
    has_pairs = pairs > 0
    accuracy = torch.where(has_pairs, correct / pairs.clamp_min(1), torch.zeros_like(correct))
    count_acc = has_pairs.sum(0)
    out["pairwise_accuracy"] = torch.where(count_acc > 0, accuracy.sum(0) / count_acc.clamp_min(1), empty)
    out["prompts_pairwise"] = count_acc
    out["pairs"] = pairs.sum(0)
    if squeeze:
        out = {k: (v[0] if isinstance(v, torch.Tensor) else v) for k, v in out.items()}
    return out


def between_prompt_share(rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """``(G,)``: the share of the reward variance that lies between prompts (sum of squares between prompt means /
    total sum of squares); NaN for an objective without variance."""
    rewards = rewards.double()
    _, inverse, counts = torch.unique(groups.long().cpu(), return_inverse=True, return_counts=True)
    sums = torch.zeros((counts.numel(), rewards.shape[1]), dtype=torch.float64).index_add_(0, inverse, rewards)
    means = sums / counts[:, None]
    grand = rewards.mean(0)
    between = (counts[:, None] * (means - grand) ** 2).sum(0)
    total = ((rewards - grand) ** 2).sum(0)
    return torch.where(total > 1e-12, between / total.clamp_min(1e-300), torch.full_like(total, math.nan))


def report_positions(block_size: int, longest: int, max_blocks: int | None = None) -> list[int]:
    """``[B, 2B, ...]`` up to the first multiple of B covering the longest response (or ``max_blocks`` of them)."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"`block_size` must be an int >= 1, got {block_size!r}.")
    blocks = max(1, -(-int(longest) // block_size))
    if max_blocks is not None:
        if isinstance(max_blocks, bool) or not isinstance(max_blocks, int) or max_blocks < 1:
            raise ValueError(f"`max_blocks` must be an int >= 1, got {max_blocks!r}.")
        blocks = min(blocks, max_blocks)
    return [block_size * (k + 1) for k in range(blocks)]


# ------------------------------------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------------------------------------
@dataclass
class ValueRankingReport:
    """What :func:`ranking_report` measured.

    Attributes:
        objectives: the ``G`` objectives.
        block_size: ``B``; ``positions`` are ``t = B, 2B, ...`` (response tokens).
        rows: one dict per ``(t, objective)``: ``t``, ``objective``, ``spearman``, ``pairwise_accuracy`` (both
            within-prompt, averaged over prompts), ``prefix_mse``, ``baseline_mse`` (constant predictor),
            ``prompts_spearman`` / ``prompts_pairwise`` (prompts averaged over), ``pairs``.
        between_prompt_variance_share: per objective, the share of reward variance between prompts.
        finished_share: per position, the share of responses no longer than ``t`` (they contribute their final value).
        counts: ``responses``, ``prompts``, ``prompts_ranked`` (>= 2 responses), ``prompts_single_response``
            (left out of the ranking metrics), ``responses_per_prompt`` (mean over ranked prompts).
        value_model / records / units / ties: what was measured, on what, in which units, how ties count.
    """

    objectives: list[str]
    block_size: int
    positions: list[int]
    rows: list[dict] = field(default_factory=list)
    between_prompt_variance_share: dict[str, float] = field(default_factory=dict)
    finished_share: list[float] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)
    value_model: str = ""
    records: str | None = None
    units: str = ""
    ties: str = TIES

    def metric(self, name: str, objective: str, t: int) -> float:
        """One number, e.g. ``report.metric("pairwise_accuracy", "harmless", 16)``."""
        for row in self.rows:
            if row["objective"] == objective and row["t"] == t:
                return row[name]
        raise KeyError(f"no row for objective {objective!r} at t={t}; positions: {self.positions}.")

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, default=_json_default) + "\n", encoding="utf-8")
        return path

    def to_markdown(self) -> str:
        c = self.counts
        lines = [
            f"Value ranking report: {self.value_model} on {self.records or 'in-memory records'}",
            "",
            f"{c.get('responses')} responses of {c.get('prompts')} prompts; ranked within {c.get('prompts_ranked')} "
            f"prompts ({c.get('responses_per_prompt', 0):.3g} responses each on average); "
            f"{c.get('prompts_single_response')} prompts with one response left out. Units: {self.units}.",
            "Share of reward variance between prompts: "
            + ", ".join(f"{o} {_fmt(v)}" for o, v in self.between_prompt_variance_share.items()) + ".",
            "",
            "| t | objective | Spearman (within prompt) | pairwise acc. (within prompt) | prefix MSE | constant MSE "
            "| finished |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in self.rows:
            finished = self.finished_share[self.positions.index(row["t"])]
            lines.append(
                f"| {row['t']} | {row['objective']} | {_fmt(row['spearman'])} | {_fmt(row['pairwise_accuracy'])} | "
                f"{_fmt(row['prefix_mse'])} | {_fmt(row['baseline_mse'])} | {finished:.0%} |"
            )
        lines += ["", f"Ties: {self.ties}."]
        return "\n".join(lines)


def _fmt(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return str(value)


def _nan_to_none(value: float) -> float | None:
    return None if math.isnan(value) else value


def ranking_report(
    head: Any,
    records: str | os.PathLike | Iterable[dict],
    policy: nn.Module | None = None,
    *,
    block_size: int = 16,
    max_blocks: int | None = None,
    batch_size: int = 16,
    tokenizer: Any = None,
    objectives: Sequence[str] | None = None,
) -> ValueRankingReport:
    """Within-prompt ranking metrics of a value model on held-out records (see the module docstring).

    Args:
        head: a :class:`~hf_rmod.MultiValueHead` or a :class:`~hf_rmod.reward_values.RewardValueModel`.
        records: a records JSONL path (``hf-rmod sample``) or records; several responses per prompt. Use prompts
            the head was not trained on.
        policy: the policy that sampled the records; required for a shared-trunk head (its hidden states are the
            head's input) and checked against any head (:meth:`~hf_rmod.MultiValueHead.check_compatible`).
        block_size: ``B``: values are read after ``t = B, 2B, ...`` response tokens.
        max_blocks: at most this many positions (default: up to the longest response).
        batch_size: responses per forward pass (or per reward-function call, times 8).
        tokenizer: the policy's tokenizer: checked against a backbone head's recorded fingerprint; decodes the
            responses for a RewardValueModel without a tokenizer of its own.
        objectives: the objectives to report (default: all of the value model's).

    Returns:
        A :class:`ValueRankingReport` (``to_markdown()``, ``save(path)``, ``metric(name, objective, t)``).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an int >= 1, got {batch_size!r}.")
    model_objectives = list(head.objectives)
    names = list(objectives) if objectives is not None else model_objectives
    missing = [o for o in names if o not in model_objectives]
    if missing:
        raise ValueError(f"`objectives` {missing} are not outputs of the value model ({model_objectives}).")
    records = _finite_records(records, names)
    lengths = torch.tensor([len(r["response_ids"]) for r in records])
    positions = report_positions(block_size, int(lengths.max()), max_blocks)
    columns = torch.tensor([model_objectives.index(o) for o in names])
    rewards = torch.tensor([[float(r["rewards"][o]) for o in names] for r in records], dtype=torch.float64)  # (n, G)
    prompt_ids = {p: i for i, p in enumerate(dict.fromkeys(r["prompt"] for r in records))}
    groups = torch.tensor([prompt_ids[r["prompt"]] for r in records])
    values, targets, normalised, units, described = _values_and_targets(
        head, records, policy, positions, batch_size, tokenizer, columns, rewards
    )  # values: (n, S, G), targets: (n, G)
    ranking = within_prompt_metrics(values, targets, groups)
    sizes = torch.bincount(groups)
    counts = {
        "responses": len(records),
        "prompts": len(prompt_ids),
        "prompts_ranked": ranking["prompts"],
        "prompts_single_response": ranking["prompts_single_response"],
        "responses_per_prompt": float(sizes[sizes >= 2].double().mean()) if ranking["prompts"] else 0.0,
    }
    share = between_prompt_share(rewards, groups)
    return ValueRankingReport(
        objectives=names,
        block_size=block_size,
        positions=positions,
        rows=_report_rows(values, targets, normalised, ranking, positions, names),
        between_prompt_variance_share={o: _nan_to_none(float(v)) for o, v in zip(names, share)},
        finished_share=[float((lengths <= t).double().mean()) for t in positions],
        counts=counts,
        value_model=described,
        records=getattr(records, "source", None),
        units=units,
    )


def _finite_records(records: Any, names: list[str]) -> list[dict]:
    """The records (every one with every objective in `names`); a NaN or infinite reward is refused."""
    from .records import load_records

    records = load_records(records, names)
    for index, record in enumerate(records):
        bad = [o for o in names if not _finite(record["rewards"][o])]
        if bad:
            raise ValueError(
                f"Record {index} has a NaN or infinite reward for {bad[0]!r} ({record['rewards'][bad[0]]!r}); the "
                "ranking report refuses such records: drop or re-score them."
            )
    return records


def _values_and_targets(head, records, policy, positions, batch_size, tokenizer, columns, rewards):
    """-> values (n, S, G) float64, targets (n, G) in the values' units, whether they are normalised, the units'
    description and the value model's description. The normalisation is the value-model protocol's
    (``head.normalization``); the values come from the head's own path (hidden states / backbone ids) or, for a
    text value model (``score_texts``), from its reward functions on the decoded partial text."""
    if callable(getattr(head, "score_texts", None)):  # RewardValueModel: rewards of the partial text
        values = _reward_model_values(head, records, positions, batch_size, tokenizer)
        described = repr(head)
    else:
        values = _head_values(head, records, policy, positions, batch_size, tokenizer)
        described = head.config.name_or_path or f"MultiValueHead(objectives={list(head.objectives)})"
    if head.normalization is None:
        return values[..., columns].double(), rewards, False, "reward units (the value model has no normalization)", \
            described
    mean, std = (torch.tensor(x, dtype=torch.float64)[columns] for x in head.normalization)
    units = "the value model's normalisation (r - mean) / std"
    return values[..., columns].double(), (rewards - mean) / std, True, units, described


def _report_rows(values, targets, normalised: bool, ranking: dict, positions: list[int], names: list[str]) -> list:
    """One row per (t, objective): ranking metrics beside the prefix MSE and the constant predictor's MSE."""
    mse = ((values - targets[:, None, :]) ** 2).mean(0)  # (S, G)
    if normalised:
        baseline = (targets ** 2).mean(0)  # the constant predictor: the normalisation mean (0 in these units)
    else:
        baseline = ((targets - targets.mean(0)) ** 2).mean(0)  # reward units: the records' mean
    rows = []
    for s, t in enumerate(positions):
        for g, name in enumerate(names):
            rows.append({
                "t": t,
                "objective": name,
                "spearman": _nan_to_none(float(ranking["spearman"][s, g])),
                "pairwise_accuracy": _nan_to_none(float(ranking["pairwise_accuracy"][s, g])),
                "prefix_mse": float(mse[s, g]),
                "baseline_mse": float(baseline[g]),
                "prompts_spearman": int(ranking["prompts_spearman"][s, g]),
                "prompts_pairwise": int(ranking["prompts_pairwise"][s, g]),
                "pairs": int(ranking["pairs"][s, g]),
            })
    return rows


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _value_indices(prompt_len: int, response_len: int, positions: Sequence[int]) -> list[int]:
    """Sequence positions of the value after ``min(t, |y|)`` response tokens (the last prompt token for 0)."""
    return [prompt_len + min(t, response_len) - 1 for t in positions]


def _head_values(head, records, policy, positions, batch_size, tokenizer) -> torch.Tensor:
    """``(n, S, G_all)`` normalised values of a MultiValueHead after ``min(t, |y|)`` response tokens."""
    from .._utils import module_device
    from ..modeling_value_head import MultiValueHead
    from ..scoring import policy_final_hidden_states

    if not isinstance(head, MultiValueHead):
        raise TypeError(f"`head` must be a MultiValueHead or a RewardValueModel, got {type(head).__name__}.")
    if policy is not None:
        head.check_compatible(policy, tokenizer=tokenizer)
    elif head.uses_policy_hidden_states:
        raise ValueError(
            "A shared-trunk head reads the policy's hidden states: pass `policy=` (the model that sampled the records)."
        )
    elif tokenizer is not None:
        head.check_tokenizer(tokenizer, what="the records' tokenizer")
    if not head.uses_policy_hidden_states:
        from ..configuration_value_head import _config_vocab

        vocab = _config_vocab(head.config.backbone_config)
        top = max(max(r["prompt_ids"] + r["response_ids"], default=0) for r in records)
        if vocab is not None and top >= vocab:
            raise ValueError(
                f"The records hold token id {top}, beyond the value head's backbone vocabulary ({vocab}): they were "
                "tokenized with another tokenizer than the head reads."
            )
    was_training = head.training
    head.eval()
    order = sorted(range(len(records)), key=lambda i: len(records[i]["prompt_ids"]) + len(records[i]["response_ids"]))
    out = torch.zeros((len(records), len(positions), head.num_objectives), dtype=torch.float32)
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                seqs = [list(records[i]["prompt_ids"]) + list(records[i]["response_ids"]) for i in chunk]
                width = max(len(s) for s in seqs)
                ids = torch.zeros((len(chunk), width), dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, seq in enumerate(seqs):
                    ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                    mask[row, : len(seq)] = 1
                where = torch.tensor([
                    _value_indices(len(records[i]["prompt_ids"]), len(records[i]["response_ids"]), positions)
                    for i in chunk
                ]).clamp_min(0)  # (b, S)
                if head.uses_policy_hidden_states:
                    device = module_device(policy)
                    hidden = policy_final_hidden_states(policy, ids.to(device), mask.to(device))  # (b, T, H)
                    picked = hidden[torch.arange(len(chunk), device=device)[:, None], where.to(device)]  # (b, S, H)
                    values = head.score_hidden_states(picked.to(head.device))
                else:
                    device = head.device
                    all_values = head(input_ids=ids.to(device), attention_mask=mask.to(device)).values  # (b, T, G)
                    values = all_values[torch.arange(len(chunk), device=device)[:, None], where.to(device)]
                out[torch.tensor(chunk)] = values.float().cpu()
    finally:
        head.train(was_training)
    return out


def _reward_model_values(model, records, positions, batch_size, tokenizer) -> torch.Tensor:
    """``(n, S, G)`` values of a RewardValueModel: its reward functions on (prompt, first min(t, |y|) tokens)."""
    tok = getattr(model, "tokenizer", None) or tokenizer
    if tok is None:
        raise ValueError(
            "A RewardValueModel decodes the responses' token ids: give it the policy's tokenizer "
            "(RewardValueModel(..., tokenizer=...)) or pass tokenizer= to ranking_report."
        )
    prompts = [r["prompt"] for r in records]  # the records hold the plain user prompt
    out = torch.zeros((len(records), len(positions), model.num_objectives), dtype=torch.float32)
    chunk = max(1, batch_size * 8)
    for s, t in enumerate(positions):
        texts = tok.batch_decode([list(r["response_ids"][:t]) for r in records], skip_special_tokens=True)
        for start in range(0, len(records), chunk):
            end = start + chunk
            out[start:end, s] = model.score_texts(prompts[start:end], texts[start:end])
    return out
