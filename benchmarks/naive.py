"""BASELINES ONLY — deliberately naive implementations that the benchmarks compare hf_rmod against.

Nothing here is used by hf_rmod itself.

* :func:`naive_rmod_generate` — RMOD written the way the authors' research code does it: every
  block calls ``model.generate(prompt + response so far, do_sample=True, num_return_sequences=K,
  max_new_tokens=B)`` from scratch (the whole prefix is re-encoded K times per block, no cache
  survives between blocks), then every candidate's full sequence is re-encoded by the value model
  (for a shared-trunk head: one full forward of the policy over each candidate to get the final
  hidden state at its last position), the worst-case weights are solved with the same
  `hf_rmod.solve_weights`, and the best candidate is appended.
  One simplification in the baseline's favour: the research code decodes to text and
  re-tokenises every block; here the token ids are kept (no tokenizer round trip, which would
  only add cost and could change lengths).
* :class:`ReencodingBackboneScorer` — a value scorer for an own-backbone `MultiValueHead` that
  re-encodes every candidate's full sequence (prompt + response) each block, without a KV cache.
  :func:`reencoding_scorer_factory` passed as ``RobustMultiObjectiveGenerator(scorer_factory=...)`` swaps it
  in for hf_rmod's cached scorer inside the unchanged RMOD loop, so the two runs differ only in how values
  are computed.
"""

from __future__ import annotations

import torch

from hf_rmod import MultiValueHead, solve_weights
from hf_rmod.scoring import make_scorer

__all__ = ["naive_rmod_generate", "ReencodingBackboneScorer", "reencoding_scorer_factory"]


@torch.no_grad()
def naive_rmod_generate(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    head: MultiValueHead,
    *,
    num_candidates: int,
    block_size: int,
    lam: float = 0.5,
    **generate_kwargs,
) -> torch.Tensor:
    """The naive (authors'-code style) RMOD baseline; returns (batch, P + max_new_tokens) ids.

    Args:
        model: the policy (a transformers causal LM; its plain ``generate`` is used).
        input_ids, attention_mask: (batch, P) left-padded prompts.
        head: the multi-objective value model (shared-trunk or own backbone).
        num_candidates, block_size: K, B.
        lam: λ of the worst-case weight problem.
        generate_kwargs: ``max_new_tokens`` (T, required) and the sampling arguments for ``generate``
            (``do_sample``, ``temperature``, ...), as for ``model.generate``. Every block must have
            exactly B tokens: pass ``eos_token_id=None`` (and ``min_new_tokens``).
    """
    generate_kwargs = dict(generate_kwargs)
    if "max_new_tokens" not in generate_kwargs:
        raise ValueError("`max_new_tokens` is required, e.g. max_new_tokens=128.")
    max_new_tokens = int(generate_kwargs.pop("max_new_tokens"))
    K, batch = num_candidates, input_ids.shape[0]
    ids = input_ids
    mask = torch.ones_like(ids) if attention_mask is None else attention_mask
    generate = type(model).generate  # the class's plain generate, not hf_rmod's wrapper
    generated = 0
    while generated < max_new_tokens:
        length = min(block_size, max_new_tokens - generated)
        kw = dict(generate_kwargs)
        if kw.get("min_new_tokens") is not None:
            kw["min_new_tokens"] = length
        # 1. K candidates per prompt, from scratch: the whole prefix is re-encoded (K times).
        cand = generate(model, ids, attention_mask=mask, num_return_sequences=K, max_new_tokens=length, **kw)
        if cand.shape[1] != ids.shape[1] + length:
            raise RuntimeError(f"generate returned {cand.shape[1] - ids.shape[1]} tokens, expected {length}")
        cand_mask = torch.cat([mask.repeat_interleave(K, dim=0), mask.new_ones(batch * K, length)], dim=-1)
        # 2. re-encode every candidate's full sequence with the value model.
        values = _full_sequence_values(model, head, cand, cand_mask)  # (batch * K, G)
        values = values.view(batch, K, -1)  # (batch, K, G)
        # 3. worst-case weights, 4. keep the best candidate.
        weights = solve_weights(values, lam).weights.to(values.dtype)  # (batch, G)
        choice = torch.einsum("nkg,ng->nk", values, weights).argmax(dim=-1)  # (batch,)
        rows = torch.arange(batch) * K + choice
        ids, mask = cand.index_select(0, rows), cand_mask.index_select(0, rows)
        generated += length
    return ids


def _full_sequence_values(model, head: MultiValueHead, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(rows, S) ids -> (rows, G) values at the last position, from a forward over the whole sequence."""
    position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # (rows, S)
    if head.uses_policy_hidden_states:
        base = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
        hidden = base(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False)
        last = hidden.last_hidden_state[:, -1]  # (rows, H): what lm_head sees at the last token
        return head.score_hidden_states(last)
    out = head(input_ids=ids.to(head.device), attention_mask=mask.to(head.device),
               position_ids=position_ids.to(head.device), use_cache=False)
    return out.values[:, -1]  # (rows, G)


class ReencodingBackboneScorer:
    """Value scorer (hf_rmod's scorer interface) that re-encodes each candidate's full sequence.

    Same inputs and outputs as `hf_rmod.scoring.CachedBackboneScorer` — the same attention mask
    and position ids — but without a KV cache: every block, the value model runs over
    prompt + everything generated so far for every one of the n·K rows.
    """

    def __init__(self, head: MultiValueHead):
        self.head = head
        self.ids: torch.Tensor | None = None  # (rows, seen)
        self.mask: torch.Tensor | None = None  # (rows, seen)

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        device = self.head.device
        self.ids = input_ids.to(device)
        self.mask = torch.ones_like(self.ids) if attention_mask is None else attention_mask.to(device).long()

    def observe(self, real: torch.Tensor) -> None:
        pass

    @torch.no_grad()
    def block_values(self, block_ids: torch.Tensor, block_real: torch.Tensor) -> torch.Tensor:
        device = self.head.device
        block_ids = block_ids.to(device)
        rows, length = block_ids.shape
        self.ids = torch.cat([self.ids, block_ids], dim=-1)  # (rows, seen + L)
        self.mask = torch.cat([self.mask, self.mask.new_ones(rows, length)], dim=-1)
        position_ids = (self.mask.cumsum(-1) - 1).masked_fill(self.mask == 0, 0)
        out = self.head(input_ids=self.ids, attention_mask=self.mask, position_ids=position_ids, use_cache=False)
        last = block_real.to(device).long().sum(-1).clamp(min=1) - 1 + (self.ids.shape[1] - length)  # (rows,)
        return out.values[torch.arange(rows, device=device), last]  # (rows, G_all)

    def reorder(self, index: torch.Tensor) -> None:
        index = index.to(self.head.device)
        self.ids = self.ids.index_select(0, index)
        self.mask = self.mask.index_select(0, index)

    def close(self) -> None:
        self.ids = self.mask = None


def reencoding_scorer_factory(head, policy, cfg=None):
    """A ``scorer_factory`` for `hf_rmod.RobustMultiObjectiveGenerator`: own-backbone value models are scored with
    `ReencodingBackboneScorer`, anything else with hf_rmod's own `make_scorer`."""
    if head.uses_policy_hidden_states:
        return make_scorer(head, policy, cfg)
    return ReencodingBackboneScorer(head)
