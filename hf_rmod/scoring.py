"""Value scorers: how the decoding loop obtains ``V(x, y^t; z)`` for each candidate block.

Three scorers implement the :class:`Scorer` protocol used by :class:`~hf_rmod.RobustMultiObjectiveGenerator`:

* :class:`PolicyHiddenStateScorer` — for a shared-trunk `MultiValueHead`: a forward pre-hook on
  the policy's output embedding (``lm_head``) records exactly what ``lm_head`` sees (the final,
  normalised hidden state at the last position), so scoring costs no extra forward pass.
* :class:`CachedBackboneScorer` — for a `MultiValueHead` with its own backbone that shares the
  policy's tokenizer: it keeps its own KV cache, prefills the prompt once and then processes only
  the B new tokens of each candidate block.
* :class:`RetokenizingScorer` — for a backbone value model with another tokenizer
  (``RMODConfig(value_tokenizer=..., tokenizer=...)``): re-encodes each candidate's text per block.

:func:`make_scorer` picks the scorer that fits a head; pass another factory with the same signature as
``RobustMultiObjectiveGenerator(scorer_factory=...)`` to score differently.

The same lm_head-input hook (:class:`LMHeadInputCapture`) gives :func:`policy_final_hidden_states`, the
hidden states a shared-trunk head is trained on, so training and decoding read the same tensor.
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import torch
from torch import nn

from .value_model import ValueModel

__all__ = [
    "CachedBackboneScorer",
    "LMHeadInputCapture",
    "PolicyHiddenStateScorer",
    "RetokenizingScorer",
    "Scorer",
    "ScorerFactory",
    "make_scorer",
    "policy_final_hidden_states",
]


@runtime_checkable
class Scorer(Protocol):
    """What the decoding loop needs from a value scorer.

    ``rows`` is the number of live candidate rows (``batch * K`` while candidates are sampled, ``batch``
    after selection); ``G_all`` is the number of outputs of the value model (all its objectives; the
    decoder picks the configured ones). The decoder calls, in this order:

    ``prefill(input_ids, attention_mask)``
        once, after the policy's prefill. ``input_ids``: (batch, prompt_len) policy token ids,
        left-padded; ``attention_mask``: (batch, prompt_len) 1 for real tokens, or ``None`` (all real).
    ``reorder(index)``
        whenever rows are expanded or selected: ``index`` (new_rows,) long, indices into the current
        rows (``arange(batch).repeat_interleave(K)`` to expand, the chosen rows to select).
    ``observe(real)``
        after every policy forward of one new token; ``real``: (rows,) bool, True when the fed token is a
        real token (not padding after EOS).
    ``block_values(block_ids, block_real) -> (rows, G_all)``
        at the end of every block: ``block_ids`` (rows, L) the block's token ids, ``block_real`` (rows, L)
        bool; returns each row's values (any float dtype; the decoder casts to float32).
    ``close()``
        once, at the end (also after an error): remove hooks, drop caches.
    """

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None: ...

    def observe(self, real: torch.Tensor) -> None: ...

    def block_values(self, block_ids: torch.Tensor, block_real: torch.Tensor) -> torch.Tensor: ...

    def reorder(self, index: torch.Tensor) -> None: ...

    def close(self) -> None: ...


#: ``factory(head, policy, cfg) -> Scorer``: the signature of :func:`make_scorer`.
ScorerFactory = Callable[..., Scorer]


class LMHeadInputCapture:
    """Records what a policy's LM head reads: a forward pre-hook on ``policy.get_output_embeddings()``.

    After each policy forward, ``hidden`` is the input of ``lm_head``, (rows, T, H): the final, normalised
    hidden state for any architecture (T == 1 when the model is called with ``logits_to_keep=1``).
    Use as a context manager, or call :meth:`close` to remove the hook.
    """

    def __init__(self, policy: nn.Module):
        get_out = getattr(policy, "get_output_embeddings", None)
        lm_head = get_out() if callable(get_out) else None
        if lm_head is None:
            raise ValueError(
                f"{type(policy).__name__} has no output embedding (`get_output_embeddings()` is None): a "
                "shared-trunk value head needs the hidden state that feeds the LM head, so pass a causal LM policy, "
                "or use a value head with its own backbone (`MultiValueHead.from_backbone`)."
            )
        self.hidden: torch.Tensor | None = None  # (rows, T, H) input of the latest lm_head call
        self._handle = lm_head.register_forward_pre_hook(self._capture)

    def _capture(self, module: nn.Module, args: tuple) -> None:
        self.hidden = args[0]

    def close(self) -> None:
        self._handle.remove()

    def __enter__(self) -> "LMHeadInputCapture":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def policy_final_hidden_states(
    policy: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """The policy's final hidden states at every position: exactly what its lm_head reads. ``(batch, T, H)``.

    Captured with :class:`LMHeadInputCapture` (a forward pre-hook on ``policy.get_output_embeddings()``), so it
    is the post-final-norm state for any architecture, the same tensor the shared-trunk head sees during
    decoding (:class:`PolicyHiddenStateScorer`).
    """
    with LMHeadInputCapture(policy) as capture:
        policy(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    hidden = capture.hidden
    if hidden is None or hidden.shape[:2] != input_ids.shape:
        shape = None if hidden is None else tuple(hidden.shape)
        raise RuntimeError(
            f"lm_head saw hidden states of shape {shape} for input {tuple(input_ids.shape)}; the policy "
            "did not compute logits at every position."
        )
    return hidden


class PolicyHiddenStateScorer:
    """Scores candidates with a shared-trunk head on the policy's own final hidden state.

    The hidden state stays where the policy's ``lm_head`` computed it (with a ``device_map`` that is the last
    shard); only the (rows, H) states of each block are copied to the head's device, and the head is never moved.

    Args:
        head (`MultiValueHead`): a head with ``uses_policy_hidden_states == True``.
        policy (`PreTrainedModel`): the policy whose ``get_output_embeddings()`` is hooked.
    """

    def __init__(self, head: nn.Module, policy: nn.Module):
        self.head = head
        self._capture = LMHeadInputCapture(policy)
        self._kept: torch.Tensor | None = None  # (rows, H) hidden state at each row's last real token

    def _take_last(self) -> torch.Tensor:
        hidden = self._capture.hidden  # (rows, T, H)
        if hidden is None:
            raise RuntimeError("the policy's LM head was not called: cannot read its hidden state")
        self._capture.hidden = None
        return hidden[:, -1].detach()  # (rows, H)

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        self._kept = self._take_last()

    def observe(self, real: torch.Tensor) -> None:
        last = self._take_last()
        self._kept = torch.where(real.to(last.device)[:, None], last, self._kept)  # (rows, H)

    def block_values(self, block_ids: torch.Tensor, block_real: torch.Tensor) -> torch.Tensor:
        return self.head.score_hidden_states(self._kept.to(self.head.device))  # (rows, G_all) float32

    def reorder(self, index: torch.Tensor) -> None:
        self._kept = self._kept.index_select(0, index.to(self._kept.device))
        self._capture.hidden = None

    def close(self) -> None:
        self._capture.close()


def _max_positions(config) -> int | None:
    """The longest sequence a model's position embeddings cover (``n_positions`` / ``max_position_embeddings``)."""
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class CachedBackboneScorer:
    """Scores candidates with a value model that has its own backbone and KV cache.

    The value model must read the policy's token ids (same tokenizer). Only the B new tokens
    of each block are processed; the prompt is encoded once.
    """

    def __init__(self, head: nn.Module):
        from transformers import DynamicCache

        self.head = head
        self.cache = DynamicCache(config=head.backbone.config)
        self.mask: torch.Tensor | None = None  # (rows, seen) 1 for real tokens
        self.next_pos: torch.Tensor | None = None  # (rows,) position id of the next token

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        device = self.head.device
        input_ids = input_ids.to(device)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device).long()
        position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # (rows, prompt_len)
        self.head(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, cache=self.cache, use_cache=True)
        self.mask = mask
        self.next_pos = position_ids[:, -1] + 1

    def check_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, max_new_tokens: int) -> None:
        """Refuse, before any compute, a call that would run past the backbone's position embeddings.

        The cached scorer cannot left-truncate (its KV cache holds absolute positions), so the longest real prompt
        plus ``max_new_tokens`` must fit ``n_positions`` / ``max_position_embeddings`` of the value model.
        """
        limit = _max_positions(self.head.backbone.config)
        if limit is None:
            return
        prompt = input_ids.shape[1] if attention_mask is None else int(attention_mask.sum(-1).max())
        if prompt + max_new_tokens > limit:
            name = type(self.head.backbone).__name__
            raise ValueError(
                f"The value model's backbone ({name}) has {limit} positions, but the longest prompt ({prompt} tokens) "
                f"plus max_new_tokens ({max_new_tokens}) needs {prompt + max_new_tokens}. Lower max_new_tokens to "
                f"{max(limit - prompt, 0)} or shorten the prompts, or let RMOD re-tokenise and left-truncate to the "
                "value model's window: RMODConfig(value_tokenizer=<its tokenizer>, tokenizer=<the policy's tokenizer>, "
                f"value_max_length={limit})."
            )

    def observe(self, real: torch.Tensor) -> None:
        pass

    @torch.no_grad()
    def block_values(self, block_ids: torch.Tensor, block_real: torch.Tensor) -> torch.Tensor:
        device = self.head.device
        block_ids = block_ids.to(device)
        rows, length = block_ids.shape
        self.mask = torch.cat([self.mask, self.mask.new_ones(rows, length)], dim=-1)  # (rows, seen + L)
        position_ids = self.next_pos[:, None] + torch.arange(length, device=device)  # (rows, L)
        out = self.head(
            input_ids=block_ids, attention_mask=self.mask, position_ids=position_ids, cache=self.cache, use_cache=True
        )
        self.next_pos = self.next_pos + length
        last = block_real.to(device).long().sum(-1).clamp(min=1) - 1  # (rows,) index of the last real token
        values = out.values[torch.arange(rows, device=device), last]  # (rows, G_all)
        return values

    def reorder(self, index: torch.Tensor) -> None:
        index = index.to(self.head.device)
        self.cache.reorder_cache(index)
        self.mask = self.mask.index_select(0, index)
        self.next_pos = self.next_pos.index_select(0, index)

    def close(self) -> None:
        self.cache = None


class RetokenizingScorer:
    """Scores candidates with a backbone value model that uses a different tokenizer.

    Every block, each row's text (prompt + response so far, decoded with the policy's tokenizer
    without special tokens) is re-encoded with the value model's tokenizer and run through the
    value model in full. Correct for any pair of tokenizers; costs a full forward per block.
    """

    def __init__(self, head: nn.Module, tokenizer, value_tokenizer, max_length: int | None = None):
        self.head = head
        self.tokenizer = tokenizer
        self.value_tokenizer = value_tokenizer
        limit = getattr(value_tokenizer, "model_max_length", None)
        self.max_length = max_length or (limit if isinstance(limit, int) and limit < 1_000_000 else None)
        self.ids: torch.Tensor | None = None  # (rows, seen) policy token ids, prompt + response
        self.real: torch.Tensor | None = None  # (rows, seen) True for real (non-padding) tokens

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        self.ids = input_ids
        self.real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()

    def observe(self, real: torch.Tensor) -> None:
        pass

    def texts(self) -> list[str]:
        rows = [ids[real].tolist() for ids, real in zip(self.ids.cpu(), self.real.cpu())]
        return self.tokenizer.batch_decode(rows, skip_special_tokens=True)

    @torch.no_grad()
    def block_values(self, block_ids: torch.Tensor, block_real: torch.Tensor) -> torch.Tensor:
        self.ids = torch.cat([self.ids, block_ids.to(self.ids.device)], dim=-1)
        self.real = torch.cat([self.real, block_real.to(self.real.device)], dim=-1)
        tok = self.value_tokenizer
        side, tside = tok.padding_side, getattr(tok, "truncation_side", "right")
        tok.padding_side, tok.truncation_side = "right", "left"  # keep the most recent tokens
        try:
            enc = tok(self.texts(), return_tensors="pt", padding=True, truncation=self.max_length is not None,
                      max_length=self.max_length)
        finally:
            tok.padding_side, tok.truncation_side = side, tside
        device = self.head.device
        mask = enc["attention_mask"].to(device)  # (rows, T)
        out = self.head(input_ids=enc["input_ids"].to(device), attention_mask=mask)
        last = mask.sum(-1).clamp(min=1) - 1  # (rows,) last real value-model token
        return out.values[torch.arange(mask.shape[0], device=device), last]  # (rows, G_all)

    def reorder(self, index: torch.Tensor) -> None:
        self.ids = self.ids.index_select(0, index.to(self.ids.device))
        self.real = self.real.index_select(0, index.to(self.real.device))

    def close(self) -> None:
        pass


def make_scorer(head: "ValueModel", policy: nn.Module, cfg=None) -> Scorer:
    """The value model's own scorer for `policy`: ``head.build_scorer(policy, cfg)`` (see
    :class:`~hf_rmod.value_model.ValueModel`; a `MultiValueHead` picks a hidden-state hook for a shared trunk, a
    cached backbone otherwise, re-tokenising when the config gives it its own tokenizer).

    The default ``scorer_factory`` of :class:`~hf_rmod.RobustMultiObjectiveGenerator`; `cfg` is the
    `RMODConfig` of the call (``value_tokenizer``, ``tokenizer``, ``value_max_length`` are read).
    """
    return head.build_scorer(policy, cfg)
