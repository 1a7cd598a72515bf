"""`MultiValueHeadConfig`: the configuration of a multi-objective value head (see `modeling_value_head`)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import field
from typing import Any, ClassVar, Literal

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from ._utils import check_unique_names

__all__ = ["MultiValueHeadConfig", "tokenizer_fingerprint"]

_HEAD_TYPES = ("linear", "mlp")


def _config_width(config: PreTrainedConfig) -> int | None:
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("hidden_size", "n_embd", "d_model"):
        value = getattr(text_config, name, None)
        if isinstance(value, int):
            return value
    return None


def _config_vocab(config: PreTrainedConfig) -> int | None:
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(text_config, "vocab_size", None)
    return value if isinstance(value, int) else None


def tokenizer_fingerprint(tokenizer: Any) -> dict[str, Any]:
    """What identifies a tokenizer's token ids: ``{"sha256", "vocab_size", "name_or_path"}``.

    ``sha256`` hashes the sorted ``(token, id)`` items of ``tokenizer.get_vocab()`` (added tokens included) and the
    sorted ids of its special tokens (BOS, EOS, UNK and the additional ones; not the pad token, which is routinely
    re-pointed: ``tokenizer.pad_token = tokenizer.eos_token`` does not change the fingerprint); ``vocab_size`` is
    ``len(tokenizer)``; ``name_or_path`` is only shown in messages. Two tokenizers with the same ``sha256`` map every
    token id to the same token.
    """
    get_vocab = getattr(tokenizer, "get_vocab", None)
    if not callable(get_vocab):
        raise TypeError(f"Expected a transformers tokenizer (with get_vocab()), got {type(tokenizer).__name__}.")
    vocab = sorted((str(token), int(index)) for token, index in get_vocab().items())
    special = {int(i) for i in (getattr(tokenizer, "all_special_ids", None) or []) if i is not None}
    special.discard(getattr(tokenizer, "pad_token_id", None))  # pad is routinely re-pointed (pad = eos)
    special |= {int(i) for name in ("bos_token_id", "eos_token_id", "unk_token_id")
                if (i := getattr(tokenizer, name, None)) is not None}
    special = sorted(special)
    digest = hashlib.sha256(json.dumps([vocab, special], ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    try:
        size = len(tokenizer)
    except TypeError:
        size = len(vocab)
    name = getattr(tokenizer, "name_or_path", None) or None
    return {"sha256": digest.hexdigest(), "vocab_size": int(size), "name_or_path": None if name is None else str(name)}


def describe_tokenizer(fingerprint: dict[str, Any] | None) -> str:
    """``'gpt2' (50257 tokens, sha256 1a2b3c4d5e6f)`` for messages."""
    if not fingerprint:
        return "an unrecorded tokenizer"
    name = fingerprint.get("name_or_path") or "unnamed tokenizer"
    return f"{name!r} ({fingerprint.get('vocab_size')} tokens, sha256 {str(fingerprint.get('sha256'))[:12]})"


#: Keys of ``sampling_settings`` that describe the sampling distribution (compared at decoding time).
SAMPLING_KEYS = ("policy", "do_sample", "temperature", "top_k", "top_p", "max_new_tokens", "chat_template")


def sampling_settings_from_records(settings: dict[str, Any] | None) -> dict[str, Any] | None:
    """The records' settings file (:func:`hf_rmod.experiments.records.read_settings`) -> the flat
    ``sampling_settings`` of a head: ``policy``, ``max_new_tokens``, ``chat_template`` and every generate() sampling
    argument (``do_sample``, ``temperature``, ``top_k``, ``top_p``, ...). ``None`` when nothing was recorded."""
    if not settings:
        return None
    out: dict[str, Any] = {}
    for key in ("policy", "max_new_tokens", "chat_template", "num_responses"):
        if settings.get(key) is not None:
            out[key] = settings[key]
    sampling = settings.get("sampling")
    if isinstance(sampling, dict):
        out.update({k: v for k, v in sampling.items() if k not in out})
    return out or None


class MultiValueHeadConfig(PreTrainedConfig):
    r"""Configuration of a [`MultiValueHead`]: ``G`` value functions ``V_g(x, y^t)``, one per objective.

    Args:
        objectives (`list[str]`):
            Names of the ``G`` objectives, in output order. Non-empty, unique, non-empty strings.
        hidden_size (`int`, *optional*):
            Input width of the head. Required for a shared-trunk head (the policy's ``lm_head`` input width);
            for a backbone head it defaults to the backbone's hidden size and must equal it.
        head_type (`str`, *optional*, defaults to `"linear"`):
            ``"linear"`` (one ``Linear(hidden_size, G)``) or ``"mlp"`` (``Linear -> GELU -> Linear``).
        head_hidden_size (`int`, *optional*):
            Width of the MLP's hidden layer; defaults to ``hidden_size``. Only used with ``head_type="mlp"``.
        backbone_config (`PreTrainedConfig` or `dict`, *optional*):
            Config of the head's own transformer base model. ``None`` gives a shared-trunk head that reads the
            policy's final hidden state. A ``dict`` must carry ``"model_type"``.
        policy_name_or_path (`str`, *optional*):
            The reference policy the head was built for / trained with (for the model card and checks).
        policy_vocab_size (`int`, *optional*):
            Vocabulary size of that policy; [`MultiValueHead.check_compatible`] compares it with a policy.
        policy_hidden_size (`int`, *optional*):
            Width of that policy's final hidden state.
        reward_mean (`list[float]`, *optional*):
            Per-objective reward mean used to normalise training targets. Defaults to zeros.
        reward_std (`list[float]`, *optional*):
            Per-objective reward standard deviation (> 0) used to normalise training targets. Defaults to ones.
        tokenizer_fingerprint (`dict`, *optional*):
            The tokenizer whose token ids the head reads (shared-trunk: the policy's; backbone: the backbone's), as
            [`tokenizer_fingerprint`] gives it: ``{"sha256", "vocab_size", "name_or_path"}``. Recorded by
            ``for_policy`` / ``from_backbone`` / ``train_value_head`` when they get a ``tokenizer``;
            [`MultiValueHead.check_compatible`] refuses a backbone head whose fingerprint differs from the policy
            tokenizer's. ``None`` (older heads): only sizes are checked.
        sampling_settings (`dict`, *optional*):
            The sampling distribution of the training data (``policy``, ``do_sample``, ``temperature``, ``top_k``,
            ``top_p``, ``max_new_tokens``, ``chat_template``, ...), copied from the records' settings file by
            ``train_value_head``. Decoding with other settings warns once.
        training_info (`dict`, *optional*):
            Free-form metadata shown in the model card (training data, validation metrics, ...).
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialiser of the head's weights.

    Example:

    ```python
    >>> from hf_rmod import MultiValueHeadConfig
    >>> config = MultiValueHeadConfig(objectives=["helpful", "harmless"], hidden_size=576)
    >>> config.num_objectives
    2
    ```
    """

    model_type = "rmod_value_head"
    # Declared so transformers treats the nested backbone config as a sub-config (attention implementation
    # and dtype are dispatched to it); the dict -> config conversion is done in `__post_init__`.
    sub_configs_defaults: ClassVar[dict] = {
        "backbone_config": SubConfigSpec(AutoConfig, model_type="gpt2", optional=True),
    }

    objectives: list[str] | None = None
    hidden_size: int | None = None
    head_type: Literal["linear", "mlp"] = "linear"
    head_hidden_size: int | None = None
    backbone_config: dict | PreTrainedConfig | None = None
    policy_name_or_path: str | None = None
    policy_vocab_size: int | None = None
    policy_hidden_size: int | None = None
    reward_mean: list[float] | None = None
    reward_std: list[float] | None = None
    tokenizer_fingerprint: dict | None = None
    sampling_settings: dict | None = None
    training_info: dict = field(default_factory=dict)
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        weights_name = kwargs.get("transformers_weights")
        if weights_name is not None and not str(weights_name).endswith((".safetensors", ".safetensors.index.json")):
            raise ValueError(
                f"config.json names the weights file {weights_name!r}; value heads load safetensors weights only "
                "(pickle files can execute code). Remove `transformers_weights` from config.json."
            )
        self._validate_objectives()
        self._resolve_backbone_config()
        self._validate_sizes()
        self._validate_normalisation()
        self._validate_records()
        if self.training_info is None:
            self.training_info = {}
        if not isinstance(self.training_info, dict):
            raise TypeError(
                f"`training_info` must be a dict of JSON-serialisable metadata, got {type(self.training_info).__name__}."
            )
        super().__post_init__(**kwargs)

    # -- validation helpers -------------------------------------------------------------------------------------
    def _validate_objectives(self) -> None:
        if self.objectives is None:
            raise ValueError(
                "`objectives` is required: pass the names of the G objectives, e.g. objectives=['helpful', 'harmless']."
            )
        self.objectives = check_unique_names(self.objectives, "objectives")

    def _resolve_backbone_config(self) -> None:
        backbone = self.backbone_config
        if backbone is None or isinstance(backbone, PreTrainedConfig):
            return
        if not isinstance(backbone, dict):
            raise TypeError(
                f"`backbone_config` must be a PreTrainedConfig, a dict with 'model_type', or None; got "
                f"{type(backbone).__name__}."
            )
        backbone = dict(backbone)
        model_type = backbone.pop("model_type", None)
        if not model_type:
            raise ValueError(
                "`backbone_config` is a dict without 'model_type': add it (e.g. {'model_type': 'gpt2', ...}) "
                "or pass a PreTrainedConfig."
            )
        if model_type == self.model_type:
            raise ValueError("`backbone_config` cannot itself be a 'rmod_value_head' config.")
        backbone.pop("transformers_version", None)
        self.backbone_config = AutoConfig.for_model(model_type, **backbone)

    def _validate_sizes(self) -> None:
        if self.head_type not in _HEAD_TYPES:
            raise ValueError(f"`head_type` must be one of {_HEAD_TYPES}, got {self.head_type!r}.")
        if self.backbone_config is not None:
            width = _config_width(self.backbone_config)
            if width is None:
                raise ValueError(
                    f"Cannot read a hidden size from `backbone_config` ({type(self.backbone_config).__name__}); "
                    "pass a text model config with `hidden_size`."
                )
            if self.hidden_size is None:
                self.hidden_size = width
            elif self.hidden_size != width:
                raise ValueError(
                    f"`hidden_size`={self.hidden_size} does not match the backbone's hidden size {width}; "
                    "leave `hidden_size` unset for a backbone head."
                )
        if self.hidden_size is None:
            raise ValueError(
                "`hidden_size` is required for a shared-trunk head (no `backbone_config`): pass the policy's "
                "lm_head input width, or build the head with MultiValueHead.for_policy(model, objectives)."
            )
        for name in ("hidden_size", "head_hidden_size", "policy_vocab_size", "policy_hidden_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
        if self.head_type == "mlp" and self.head_hidden_size is None:
            self.head_hidden_size = self.hidden_size

    def _validate_normalisation(self) -> None:
        num = len(self.objectives)
        for name, default in (("reward_mean", 0.0), ("reward_std", 1.0)):
            value = getattr(self, name)
            if value is None:
                value = [default] * num
            if isinstance(value, (int, float)):
                raise ValueError(f"`{name}` must be a list with one float per objective ({num}), got {value!r}.")
            value = [float(v) for v in value]
            if len(value) != num:
                raise ValueError(
                    f"`{name}` has {len(value)} entries but there are {num} objectives {self.objectives!r}; "
                    "pass one value per objective."
                )
            if any(v != v or v in (float("inf"), float("-inf")) for v in value):
                raise ValueError(f"`{name}` must be finite, got {value!r}.")
            setattr(self, name, value)
        bad = [(o, s) for o, s in zip(self.objectives, self.reward_std) if s <= 0]
        if bad:
            raise ValueError(f"`reward_std` must be > 0 for every objective, got {bad!r}.")

    def _validate_records(self) -> None:
        fingerprint = self.tokenizer_fingerprint
        if fingerprint is not None:
            if not isinstance(fingerprint, dict) or not isinstance(fingerprint.get("sha256"), str):
                raise ValueError(
                    f"`tokenizer_fingerprint` must be a dict with 'sha256' and 'vocab_size' (from "
                    f"hf_rmod.configuration_value_head.tokenizer_fingerprint(tokenizer)), got {fingerprint!r}."
                )
            size = fingerprint.get("vocab_size")
            if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
                raise ValueError(f"`tokenizer_fingerprint['vocab_size']` must be a positive int, got {size!r}.")
        if self.sampling_settings is not None and not isinstance(self.sampling_settings, dict):
            raise TypeError(
                f"`sampling_settings` must be a dict (e.g. {{'temperature': 0.7, 'top_p': 0.9}}), got "
                f"{type(self.sampling_settings).__name__}."
            )

    @property
    def num_objectives(self) -> int:
        return len(self.objectives)
