"""`HFRewardModel`: any Hugging Face sequence-classification reward model as a reward function."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import logging

from .._utils import module_device, resolve_device
from .base import _check_texts

logger = logging.get_logger(__name__)

__all__ = ["HFRewardModel"]


class HFRewardModel:
    """A Hugging Face sequence-classification reward model as a :class:`RewardFunction`.

    Each ``(prompt, response)`` pair is rendered either with the tokenizer's chat template
    (``[{"role": "user", ...}, {"role": "assistant", ...}]``) or as ``prompt + separator + response``,
    tokenized, run through the model in batches under ``torch.no_grad()``, and the chosen columns of
    ``output_field`` (``logits`` by default) are returned.

    Args:
        model: a local path or Hub id (loaded with ``AutoModelForSequenceClassification.from_pretrained``,
            safetensors only), or an already-loaded model.
        tokenizer: the matching tokenizer; loaded from ``model`` when it is a path/id. Required when
            ``model`` is a loaded model.
        objectives: names of the returned columns. With ``output_indices=None`` they select columns
            by ``config.id2label`` (for multi-output heads) or, when there are as many names as
            outputs, name all outputs.
        output_indices: which output columns to return, e.g. ``[0, 9]`` of ArmoRM's 19 heads.
            ``None`` returns every column (an ``(n,)`` tensor for a single-output head).
        batch_size: pairs per forward pass.
        use_chat_template: ``True``/``False`` to force; ``None`` uses the template when the tokenizer
            has one.
        separator: text between prompt and response when no chat template is used.
        max_length: truncate inputs to this many tokens (``None``: the tokenizer's ``model_max_length``
            when it is finite).
        truncation_side: ``"left"`` (default; keeps the end of the response) or ``"right"``.
        output_field: attribute of the model output holding the scores (``"logits"``; ArmoRM-style
            remote code may use ``"rewards"``).
        device: where to run the model (default: the model's device for a loaded model, else CPU).
        dtype: dtype for loading from a path (e.g. ``torch.bfloat16``); ignored for a loaded model.
        trust_remote_code: passed to ``from_pretrained`` only when set to ``True``.
        model_kwargs: extra keyword arguments for ``from_pretrained``.

    Example:
        >>> rm = HFRewardModel("path/to/reward-model", batch_size=16)  # doctest: +SKIP
        >>> rm(["How do I bake bread?"], ["Mix flour, water, yeast..."]).shape  # doctest: +SKIP
        torch.Size([1])
    """

    def __init__(
        self,
        model: str | os.PathLike | PreTrainedModel,
        tokenizer: Any | None = None,
        *,
        objectives: Sequence[str] | None = None,
        output_indices: Sequence[int] | None = None,
        batch_size: int = 8,
        use_chat_template: bool | None = None,
        separator: str = "\n",
        max_length: int | None = None,
        truncation_side: str = "left",
        output_field: str = "logits",
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        trust_remote_code: bool = False,
        model_kwargs: dict[str, Any] | None = None,
    ):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}.")
        if max_length is not None and (not isinstance(max_length, int) or max_length < 2):
            raise ValueError(f"`max_length` must be an int >= 2 or None, got {max_length!r}.")
        if truncation_side not in ("left", "right"):
            raise ValueError(f"`truncation_side` must be 'left' or 'right', got {truncation_side!r}.")

        if isinstance(model, (str, os.PathLike)):
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            load_kwargs: dict[str, Any] = {"use_safetensors": True, **(model_kwargs or {})}
            if trust_remote_code:
                load_kwargs["trust_remote_code"] = True
            if dtype is not None:
                load_kwargs["dtype"] = dtype
            loaded = AutoModelForSequenceClassification.from_pretrained(model, **load_kwargs)
            if tokenizer is None:
                tok_kwargs = {"trust_remote_code": True} if trust_remote_code else {}
                tokenizer = AutoTokenizer.from_pretrained(model, **tok_kwargs)
            model = loaded
        elif isinstance(model, nn.Module):
            if model_kwargs:
                raise ValueError("`model_kwargs` only applies when `model` is a path or Hub id; drop it.")
            if tokenizer is None:
                raise ValueError(
                    "`tokenizer` is required when `model` is an already-loaded model; pass the tokenizer "
                    "the reward model was trained with."
                )
        else:
            raise TypeError(
                f"`model` must be a path, a Hub id or a loaded PreTrainedModel, got {type(model).__name__}."
            )

        self.device = resolve_device(device) if device is not None else module_device(model)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        if getattr(tokenizer, "pad_token", None) is None:
            if getattr(tokenizer, "eos_token", None) is None:
                raise ValueError(
                    "The reward tokenizer has neither a pad nor an EOS token; set `tokenizer.pad_token` "
                    "before wrapping it."
                )
            logger.info("Reward tokenizer has no pad token; using its EOS token %r.", tokenizer.eos_token)
            tokenizer.pad_token = tokenizer.eos_token
        if getattr(self.model.config, "pad_token_id", None) is None:
            self.model.config.pad_token_id = tokenizer.pad_token_id

        has_template = bool(getattr(tokenizer, "chat_template", None))
        if use_chat_template and not has_template:
            raise ValueError(
                "`use_chat_template=True` but the reward tokenizer has no chat template; pass "
                "`use_chat_template=False` to score `prompt + separator + response`."
            )
        self.use_chat_template = has_template if use_chat_template is None else bool(use_chat_template)
        self.separator = separator
        self.batch_size = batch_size
        self.truncation_side = truncation_side
        if max_length is None:
            model_max = getattr(tokenizer, "model_max_length", None)
            max_length = model_max if isinstance(model_max, int) and model_max < 1_000_000 else None
        self.max_length = max_length
        self.output_field = output_field

        num_outputs = int(getattr(self.model.config, "num_labels", 1))
        self.output_indices, self.objectives = self._resolve_outputs(objectives, output_indices, num_outputs)

    def _resolve_outputs(
        self, objectives: Sequence[str] | None, output_indices: Sequence[int] | None, num_outputs: int
    ) -> tuple[list[int] | None, list[str]]:
        if output_indices is not None:
            output_indices = [int(i) for i in output_indices]
            if not output_indices:
                raise ValueError("`output_indices` is empty; pass None to keep every output.")
            bad = [i for i in output_indices if not -num_outputs <= i < num_outputs]
            if bad:
                raise ValueError(
                    f"`output_indices` {bad} out of range for a head with {num_outputs} outputs "
                    f"(config.num_labels)."
                )
        if objectives is None:
            if output_indices is None:
                names = ["reward"] if num_outputs == 1 else [f"reward_{j}" for j in range(num_outputs)]
            else:
                names = [f"reward_{j}" for j in output_indices]
            return output_indices, names
        objectives = list(objectives)
        if output_indices is None:
            if len(objectives) == num_outputs:
                return None, objectives
            label2id = {str(v): int(k) for k, v in (getattr(self.model.config, "id2label", None) or {}).items()}
            missing = [o for o in objectives if o not in label2id]
            if missing:
                raise ValueError(
                    f"`objectives` {objectives} does not match the head's {num_outputs} outputs and "
                    f"{missing} are not in config.id2label; pass `output_indices=[...]` to pick columns."
                )
            return [label2id[o] for o in objectives], objectives
        if len(objectives) != len(output_indices):
            raise ValueError(
                f"`objectives` ({len(objectives)} names) and `output_indices` ({len(output_indices)} indices) "
                "must have the same length."
            )
        return output_indices, objectives

    def _render(self, prompt: str, response: str) -> str:
        if self.use_chat_template:
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return prompt + self.separator + response

    def _tokenize(self, texts: list[str]) -> Any:
        # `truncation_side` is a tokenizer attribute (not a call argument): set it for this call only.
        previous = getattr(self.tokenizer, "truncation_side", "right")
        self.tokenizer.truncation_side = self.truncation_side
        try:
            return self.tokenizer(
                texts,
                padding=True,
                truncation=self.max_length is not None,
                max_length=self.max_length,
                padding_side="right",  # right padding keeps absolute positions (GPT-2) correct
                add_special_tokens=not self.use_chat_template,  # templates already add BOS etc.
                return_tensors="pt",
            )
        finally:
            self.tokenizer.truncation_side = previous

    @torch.no_grad()
    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """Score ``n`` pairs; returns ``(n,)`` for one selected output, else ``(n, G)`` (float32, CPU)."""
        prompts, responses = _check_texts(prompts, responses)
        texts = [self._render(p, r) for p, r in zip(prompts, responses)]
        scores = []
        for start in range(0, len(texts), self.batch_size):
            batch = self._tokenize(texts[start : start + self.batch_size]).to(self.device)
            out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            logits = getattr(out, self.output_field, None)
            if logits is None:
                raise ValueError(
                    f"The reward model output has no field {self.output_field!r}; set `output_field` to one of "
                    f"{list(out.keys()) if hasattr(out, 'keys') else type(out).__name__}."
                )
            scores.append(logits.float().cpu())  # (b, num_outputs)
        if not scores:
            return torch.zeros((0,) if len(self.objectives) == 1 else (0, len(self.objectives)))
        rewards = torch.cat(scores, dim=0)  # (n, num_outputs)
        if rewards.dim() == 1:
            rewards = rewards.unsqueeze(-1)
        if self.output_indices is not None:
            rewards = rewards[:, self.output_indices]  # (n, G)
        return rewards.squeeze(-1) if rewards.shape[-1] == 1 else rewards

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model={type(self.model).__name__}, objectives={self.objectives}, "
            f"batch_size={self.batch_size}, use_chat_template={self.use_chat_template}, device={self.device})"
        )
