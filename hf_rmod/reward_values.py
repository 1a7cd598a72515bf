"""Reward models as value functions, no training: :class:`RewardValueModel` (issue 10 §3b).

``V_g(x, y^t) := r_g(x, y^t)``: at every block boundary each candidate's *partial* response is decoded to text
and scored by the reward functions themselves, as if it were finished. The paper initialises its value
functions from the reward models (section 5.1); used directly, they rank the K candidates of one prefix far
better than a small head trained on few responses, and need nothing but the reward functions:

```python
from hf_rmod import RMODConfig, generate
from hf_rmod.reward_values import RewardValueModel
from hf_rmod.rewards import default_reward_functions

value_model = RewardValueModel(default_reward_functions(), tokenizer=policy_tokenizer)  # objectives from the fns
cfg = RMODConfig(value_model=value_model, num_candidates=8, block_size=16)
out = generate(policy, ids, attention_mask=mask, rmod_config=cfg, max_new_tokens=96, do_sample=True, top_k=0)
```

What the reward functions receive (one call per reward function per block, all ``batch * K`` rows at once):

* ``responses``: the candidate's response so far, ``tokenizer.decode(response_ids, skip_special_tokens=True)``
  (the whole response, re-decoded every block, so multi-byte characters split across blocks come out right);
* ``prompts``: the **plain user prompt**. The decoder only sees token ids, so the prompt text is recovered from
  the prompt ids once per call (``prompt_format``):

  - ``"auto"`` (default): when the tokenizer has a chat template, the template is rendered around a sentinel
    user message (``apply_chat_template([{"role": "user", "content": SENTINEL}], add_generation_prompt=True)``),
    which gives the text before and after the user message; a decoded prompt (special tokens kept) that starts
    and ends with those is cut down to the user message. A prompt that does not match (a system message, several
    turns, plain text) falls back to ``"raw"``, with one warning when the tokenizer has a template;
  - ``"chat"``: as ``"auto"`` but a prompt that does not match the template raises ``ValueError``;
  - ``"raw"``: ``tokenizer.decode(prompt_ids, skip_special_tokens=True)``, stripped;
  - a callable ``fn(text) -> str`` gets the decoded prompt with its special tokens and returns the prompt text.

Values are float32 of shape ``(rows, G)`` in reward units, or ``(r - mean) / std`` with ``normalization=(mean,
std)`` (e.g. the training normalisation of a value head: ``normalization=head``), which puts them on the scale
λ was tuned for. Reward functions return CPU tensors; NaN or infinite scores raise (see
:func:`hf_rmod.rewards.score_rewards`).

Cost: one call of every reward function per block on ``batch * K`` texts (prompt + partial response), instead of
a head on a hidden state. With small CPU reward models this is a few times the cost of one decoding step per
block (numbers in ``docs/value_models.md``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import torch

from .rewards.base import RewardFunction, score_rewards
from .value_model import ValueModel, warn_if_sampling_differs

__all__ = ["PROMPT_SENTINEL", "RewardValueModel", "chat_template_affixes"]

#: The user message rendered through the chat template to find the text around a user prompt.
PROMPT_SENTINEL = "HF_RMOD_PROMPT_SENTINEL_7c1e"
_PROMPT_FORMATS = ("auto", "chat", "raw")


def chat_template_affixes(tokenizer: Any) -> tuple[str, str] | None:
    """``(before, after)``: the text the tokenizer's chat template puts around a single user message (generation
    prompt included), or ``None`` when the tokenizer has no chat template or renders the message unrecognisably."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": PROMPT_SENTINEL}], tokenize=False, add_generation_prompt=True
        )
    except Exception:  # a template that needs other roles or arguments: no affixes, "raw" fallback
        return None
    if not isinstance(text, str) or text.count(PROMPT_SENTINEL) != 1:
        return None
    before, _, after = text.partition(PROMPT_SENTINEL)
    return before, after


class RewardValueModel:
    """Reward functions used as RMOD's value model: ``V_g(x, y^t) = r_g(x, y^t)`` on the decoded partial text.

    Pass it as ``RMODConfig(value_model=RewardValueModel(...))``. See the module docstring for what the reward
    functions receive.

    Args:
        reward_fns: one reward function, a sequence of them, or a mapping ``{name: fn}`` (as
            :func:`hf_rmod.rewards.score_rewards` takes them): ``fn(prompts, responses) -> (n,)`` or ``(n, G)``.
        tokenizer: the **policy's** tokenizer (decodes the policy's token ids); defaults to
            ``RMODConfig(tokenizer=...)`` of the call.
        objectives: names of the ``G`` value columns. Default: what the reward functions declare (an
            ``objectives`` attribute, the keys of a mapping, or the function's ``__name__`` for a plain function).
        normalization: ``None`` (values in reward units), ``(mean, std)`` (floats or one per objective), or an
            object with ``config.reward_mean`` / ``config.reward_std`` (a `MultiValueHead`): values become
            ``(r - mean) / std``.
        prompt_format: ``"auto"`` (default), ``"chat"``, ``"raw"`` or a callable ``fn(decoded_prompt) -> str``;
            see the module docstring.
        empty_response: text scored for a candidate whose response is still empty after decoding (e.g. only an
            EOS token so far). Default ``""``.
    """

    def __init__(
        self,
        reward_fns: Sequence[RewardFunction] | Mapping[str, RewardFunction] | RewardFunction,
        tokenizer: Any = None,
        *,
        objectives: Sequence[str] | None = None,
        normalization: Any = None,
        prompt_format: str | Callable[[str], str] = "auto",
        empty_response: str = "",
    ):
        if isinstance(reward_fns, Mapping):
            if not reward_fns:
                raise ValueError("`reward_fns` is empty; pass at least one reward function.")
        elif callable(reward_fns) and not isinstance(reward_fns, Sequence):
            reward_fns = [reward_fns]
        else:
            reward_fns = list(reward_fns)
            if not reward_fns:
                raise ValueError("`reward_fns` is empty; pass at least one reward function.")
            bad = [fn for fn in reward_fns if not callable(fn)]
            if bad:
                raise TypeError(f"Reward function {bad[0]!r} is not callable; pass fn(prompts, responses) -> Tensor.")
        self.reward_fns = reward_fns
        if tokenizer is not None and not (callable(tokenizer) and hasattr(tokenizer, "batch_decode")):
            raise TypeError(f"`tokenizer` must be the policy's transformers tokenizer, got {type(tokenizer).__name__}.")
        self.tokenizer = tokenizer
        if not (callable(prompt_format) or prompt_format in _PROMPT_FORMATS):
            raise ValueError(f"`prompt_format` must be one of {_PROMPT_FORMATS} or a callable, got {prompt_format!r}.")
        self.prompt_format = prompt_format
        self.empty_response = str(empty_response)
        self._objectives = self._declared_objectives(objectives)
        self._mean, self._std = self._normalization(normalization)
        self._affixes_cache: dict[int, tuple[str, str] | None] = {}
        self._warned = False
        #: The sampling distribution the value model was fit under (``policy``, ``temperature``, ``top_p``, ...), when
        #: known (set by :meth:`from_pretrained` from a fitted head); ``generate`` warns once when a call differs.
        self.sampling_settings: dict | None = None

    # ------------------------------------------------------------------------------------------ value-model surface
    @property
    def objectives(self) -> list[str]:
        """The ``G`` objective names, in value-column order."""
        return list(self._objectives)

    @property
    def num_objectives(self) -> int:
        return len(self._objectives)

    @property
    def normalization(self) -> tuple[list[float], list[float]] | None:
        """``(mean, std)`` per objective that the values are z-scored with, or ``None`` (reward units)."""
        if self._mean is None:
            return None
        return self._mean.tolist(), self._std.tolist()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(objectives={self._objectives}, prompt_format={self.prompt_format!r})"

    @classmethod
    def from_pretrained(
        cls,
        path: str | Any,
        tokenizer: Any = None,
        *,
        device: str | Any = "cpu",
        encoder: Any = None,
        prompt_format: str | Callable[[str], str] = "auto",
    ) -> "RewardValueModel":
        """A saved text value model: a ``G``-output :class:`~hf_rmod.rewards.MiniLMRewardModel` fit on partial
        responses (:func:`hf_rmod.experiments.text_value.fit_minilm_value_model`; the shipped default is
        ``hf_rmod.defaults.DEFAULT_VALUE_MODEL_DIR``), normalised with the final-reward statistics it stores.

        Args:
            path: the folder (``config.json`` + ``model.safetensors``; safetensors only) or a loaded model.
            tokenizer: the policy's tokenizer (or pass ``RMODConfig(tokenizer=...)`` when decoding).
            device: where the MiniLM encoder and the head run.
            encoder: a :class:`~hf_rmod.rewards.MiniLMEncoder` to share with the reward functions.
            prompt_format: see the class docstring.
        """
        from .rewards.minilm import MiniLMReward

        fn = MiniLMReward(path, encoder=encoder, device=device)
        if fn.config.reward_mean is None:
            raise ValueError(
                f"{path!s} is a reward head without reward_mean/reward_std, not a value model fit on partial responses; "
                "use RewardValueModel([MiniLMReward(path)], tokenizer, normalization=(mean, std)) or fit one with "
                "hf_rmod.experiments.text_value.fit_minilm_value_model."
            )
        model = cls([fn], tokenizer, normalization=fn, prompt_format=prompt_format)
        model.sampling_settings = fn.config.fit_info.get("sampling_settings")
        return model

    def warn_if_sampling_differs(self, generation_config: Any, max_new_tokens: int | None = None,
                                 policy: Any = None) -> list[str]:
        """Warn once when decoding samples from another distribution than :attr:`sampling_settings` (the one the
        value model was fit on); returns the differences. Reward functions used as they are record nothing."""
        return warn_if_sampling_differs(self, f"Value model {self!r}", self.sampling_settings, generation_config,
                                        max_new_tokens, policy)

    def check_policy(self, policy: Any, tokenizer: Any = None) -> None:
        """Nothing to check: the reward functions read the decoded text, not the policy's ids or hidden states (the
        tokenizer that decodes them is checked when the scorer is built)."""

    def prepare(self, policy: Any, cfg: Any = None, *, owned: bool = False) -> None:
        """Nothing to place: the reward functions run where they were built (the value-model protocol)."""

    def build_scorer(self, policy: Any, cfg: Any = None) -> "RewardValueScorer":
        """The scorer of one ``generate`` call (the hook `hf_rmod.scoring.make_scorer` dispatches to)."""
        if cfg is not None and getattr(cfg, "value_tokenizer", None) is not None:
            raise ValueError(
                "`value_tokenizer` is for value models with their own backbone; a RewardValueModel scores decoded "
                "text with its reward functions. Remove `value_tokenizer`."
            )
        tokenizer = self.tokenizer if self.tokenizer is not None else getattr(cfg, "tokenizer", None)
        if tokenizer is None:
            raise ValueError(
                "A RewardValueModel decodes the policy's token ids to text: pass the policy's tokenizer, "
                "RewardValueModel(reward_fns, tokenizer=tokenizer) or RMODConfig(tokenizer=tokenizer)."
            )
        self._check_tokenizer(policy, tokenizer)
        return RewardValueScorer(self, tokenizer)

    # ---------------------------------------------------------------------------------------------------- scoring
    def score_texts(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """Values ``(n, G)`` float32 (normalised when `normalization` is set) of ``n`` (prompt, partial response)."""
        responses = [r if r else self.empty_response for r in responses]
        rewards, _ = score_rewards(self.reward_fns, list(prompts), responses, objectives=self._objectives)
        if rewards.shape[1] != len(self._objectives):  # pragma: no cover - score_rewards checks the names
            raise ValueError(f"reward functions returned {rewards.shape[1]} columns for {self._objectives}.")
        if self._mean is not None:
            rewards = (rewards - self._mean) / self._std
        return rewards.float()

    def prompt_texts(self, tokenizer: Any, prompt_ids: Sequence[Sequence[int]]) -> list[str]:
        """The user prompts of token-id prompts (without padding), per `prompt_format`."""
        fmt = self.prompt_format
        if fmt == "raw":
            return [t.strip() for t in tokenizer.batch_decode(list(prompt_ids), skip_special_tokens=True)]
        decoded = tokenizer.batch_decode(list(prompt_ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if callable(fmt):
            out = [fmt(text) for text in decoded]
            bad = [o for o in out if not isinstance(o, str)]
            if bad:
                raise TypeError(f"`prompt_format` returned {type(bad[0]).__name__}, expected str.")
            return out
        affixes = self._affixes(tokenizer)
        out, unmatched = [], 0
        for index, text in enumerate(decoded):
            prompt = _strip_affixes(text, affixes, getattr(tokenizer, "bos_token", None))
            if prompt is None:
                if fmt == "chat":
                    raise ValueError(
                        f"prompt {index} does not have the chat template's form (decoded: {text[:120]!r}); "
                        "RewardValueModel(prompt_format='chat') needs prompts encoded as one user turn with "
                        "add_generation_prompt=True. Use prompt_format='raw' or a callable for other prompts."
                    )
                unmatched += 1
                prompt = tokenizer.decode(list(prompt_ids[index]), skip_special_tokens=True).strip()
            out.append(prompt)
        if unmatched and affixes is not None and not self._warned:
            self._warned = True
            warnings.warn(
                f"RewardValueModel: {unmatched} of {len(decoded)} prompts are not a single chat-template user turn; "
                "their reward prompts are the decoded prompt text without special tokens (template words such as "
                "role names included). Pass prompt_format='raw' to silence this, or a callable that extracts the "
                "user text.",
                UserWarning,
                stacklevel=2,
            )
        return out

    # ---------------------------------------------------------------------------------------------------- helpers
    def _affixes(self, tokenizer: Any) -> tuple[str, str] | None:
        key = id(tokenizer)
        if key not in self._affixes_cache:
            self._affixes_cache = {key: chat_template_affixes(tokenizer)}  # one tokenizer at a time
        return self._affixes_cache[key]

    def _declared_objectives(self, objectives: Sequence[str] | None) -> list[str]:
        from ._utils import check_unique_names

        if objectives is not None:
            return check_unique_names(objectives, "objectives")
        fns = self.reward_fns
        if isinstance(fns, Mapping):
            names = []
            for key, fn in fns.items():
                own = getattr(fn, "objectives", None)
                names.extend([str(key)] if own is None or len(list(own)) == 1 else [str(o) for o in own])
            return check_unique_names(names, "objectives")
        names = []
        for fn in fns:
            own = getattr(fn, "objectives", None)
            if own is not None and not isinstance(own, str):
                names.extend(str(o) for o in own)
            elif isinstance(getattr(fn, "__name__", None), str) and fn.__name__ != "<lambda>":
                names.append(fn.__name__)
            else:
                raise ValueError(
                    f"Cannot tell the objective names of reward function {fn!r} before calling it: pass "
                    "RewardValueModel(..., objectives=[...]) (one name per returned column)."
                )
        return check_unique_names(names, "objectives", if_duplicate="pass `objectives=[...]` with unique names")

    def _normalization(self, spec: Any) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if spec is None:
            return None, None
        config = getattr(spec, "config", None)
        if isinstance(spec, ValueModel):
            if spec.normalization is None:
                raise ValueError(f"`normalization` is a {type(spec).__name__} without reward statistics; pass "
                                 "(mean, std).")
            mean, std = self._select(list(spec.objectives), *spec.normalization, "a value model")
        elif config is not None and hasattr(config, "reward_mean"):  # a reward function with a config (MiniLMReward)
            if config.reward_mean is None or getattr(config, "reward_std", None) is None:
                raise ValueError(
                    f"`normalization` {type(spec).__name__} has no reward_mean/reward_std (a reward model, not a value "
                    "model); pass normalization=(mean, std) or None."
                )
            names = list(getattr(config, "objectives", None) or []) or self._objectives
            mean, std = self._select(names, list(config.reward_mean), list(config.reward_std), "a head")
        elif isinstance(spec, (tuple, list)) and len(spec) == 2:
            mean, std = spec
        else:
            raise TypeError(
                "`normalization` must be None, (mean, std) or a value head (its reward_mean / reward_std), got "
                f"{type(spec).__name__}."
            )
        g = len(self._objectives)

        def per_objective(value: Any) -> torch.Tensor:
            tensor = torch.as_tensor(value, dtype=torch.float32).flatten()
            return tensor.expand(g).clone() if tensor.numel() == 1 else tensor

        mean, std = per_objective(mean), per_objective(std)
        if mean.numel() != g or std.numel() != g:
            raise ValueError(
                f"`normalization` needs one mean and one std per objective ({g}: {self._objectives}), got "
                f"{mean.numel()} and {std.numel()}."
            )
        if not bool(torch.isfinite(mean).all()) or not bool((std > 0).all()) or not bool(torch.isfinite(std).all()):
            raise ValueError(
                f"`normalization` must have finite means and finite stds > 0, got {mean.tolist()}, {std.tolist()}."
            )
        return mean, std

    def _select(self, names: list[str], mean: list, std: list, source: str) -> tuple[list, list]:
        """The statistics of this model's objectives from those of ``names`` (a superset)."""
        if list(names) == self._objectives:
            return mean, std
        if not set(self._objectives) <= set(names):
            raise ValueError(
                f"`normalization` comes from {source} with objectives {list(names)}, but this value model has "
                f"{self._objectives}."
            )
        return [mean[names.index(o)] for o in self._objectives], [std[names.index(o)] for o in self._objectives]

    @staticmethod
    def _check_tokenizer(policy: Any, tokenizer: Any) -> None:
        from .modeling_value_head import _policy_sizes

        _, vocab = _policy_sizes(policy)
        size = len(tokenizer)
        if vocab is not None and size > vocab:
            name = getattr(policy, "name_or_path", None) or type(policy).__name__
            raise ValueError(
                f"The RewardValueModel's tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has {size} tokens, more "
                f"than policy {name!r}'s vocabulary ({vocab}): it is not the policy's tokenizer, and the policy's "
                "token ids would decode to other text. Pass the policy's tokenizer."
            )


def _strip_affixes(text: str, affixes: tuple[str, str] | None, bos: str | None) -> str | None:
    """The user message of a decoded one-turn chat prompt, or ``None`` when `text` does not have that form."""
    if affixes is None:
        return None
    before, after = affixes
    candidates = [text]
    if bos and text.startswith(bos) and not before.startswith(bos):  # the prompt was encoded with an extra BOS
        candidates += [text[len(bos):], text[len(bos):].lstrip()]
    if bos and not text.startswith(bos) and before.startswith(bos):  # the template's BOS was not encoded
        candidates.append(bos + text)
    for candidate in candidates:
        if candidate.startswith(before) and candidate.endswith(after) and len(candidate) >= len(before) + len(after):
            return candidate[len(before) : len(candidate) - len(after)]
    return None


class RewardValueScorer:
    """The :class:`~hf_rmod.scoring.Scorer` of a :class:`RewardValueModel`: keeps each row's prompt text and
    response ids; at a block boundary decodes every row's response so far and scores all rows in one call of each
    reward function."""

    def __init__(self, model: RewardValueModel, tokenizer: Any):
        self.model = model
        self.tokenizer = tokenizer
        self.prompts: list[str] = []  # per row
        self.ids: torch.Tensor | None = None  # (rows, seen) response token ids
        self.real: torch.Tensor | None = None  # (rows, seen) True for real (non-padding) tokens

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        ids = input_ids.cpu()
        mask = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.cpu().bool()
        self.prompts = self.model.prompt_texts(self.tokenizer, [row[keep].tolist() for row, keep in zip(ids, mask)])
        self.ids = ids.new_zeros((ids.shape[0], 0))
        self.real = mask.new_zeros((ids.shape[0], 0))

    def observe(self, real: torch.Tensor) -> None:
        pass

    def block_values(self, block_ids: torch.Tensor, block_real: torch.Tensor) -> torch.Tensor:
        self.ids = torch.cat([self.ids, block_ids.cpu()], dim=-1)
        self.real = torch.cat([self.real, block_real.cpu().bool()], dim=-1)
        rows = [ids[real].tolist() for ids, real in zip(self.ids, self.real)]
        responses = self.tokenizer.batch_decode(rows, skip_special_tokens=True)
        return self.model.score_texts(self.prompts, responses)  # (rows, G) float32, CPU

    def reorder(self, index: torch.Tensor) -> None:
        order = index.cpu()
        self.prompts = [self.prompts[i] for i in order.tolist()]
        self.ids = self.ids.index_select(0, order)
        self.real = self.real.index_select(0, order)

    def close(self) -> None:
        self.prompts = []
