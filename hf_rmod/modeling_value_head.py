"""Multi-objective value model ``V(x, y^t) -> R^G`` used by RMOD.

Two kinds share one class, :class:`MultiValueHead`:

* **shared-trunk** (``backbone_config=None``): a small head on the *policy's own* final hidden state
  (exactly what ``lm_head`` reads, after the final norm). Scoring a candidate costs no extra transformer
  forward; the decoding loop passes the hidden states in through ``hidden_states=``.
* **backbone**: the head sits on its own transformer base model (``AutoModel``, e.g. ``GPT2Model`` or
  ``LlamaModel``) that keeps its own KV cache. It reads the policy's token ids, so it must share the
  policy's tokenizer.

The head always computes in float32. Values are predicted in *normalised* reward units (the per-objective
``reward_mean`` / ``reward_std`` of the training data, stored in the config); :meth:`MultiValueHead.denormalize`
maps them back to reward units.

The configuration lives in `configuration_value_head` and the Hub surface helpers (strict / safetensors-only
loading checks, local-path checks, the model card) in `_hub`; both names are re-exported here.

Why one module of ~690 lines: one `PreTrainedModel` with its two constructors (shared trunk, own backbone), its forward with
and without a cache, the strict loading overrides of the Hub surface and the compatibility checks against a
policy and its tokenizer, and the value-model protocol it implements; the configuration and the Hub helpers
are already split out.
"""

from __future__ import annotations

import copy
import os
import tempfile
import weakref
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.utils import ModelOutput

from . import _hub
from ._utils import module_device
from .value_model import warn_if_sampling_differs
from .configuration_value_head import (
    MultiValueHeadConfig,
    _config_vocab,
    _config_width,
    describe_tokenizer,
    tokenizer_fingerprint,
)

__all__ = ["MultiValueHead", "MultiValueHeadConfig", "MultiValueHeadOutput"]

@dataclass
class MultiValueHeadOutput(ModelOutput):
    """Output of [`MultiValueHead.forward`].

    Args:
        values (`torch.FloatTensor` of shape `(batch_size, sequence_length, num_objectives)`):
            Float32 values ``V_g(x, y^t)`` at every position, in normalised reward units.
        cache (`Cache`, *optional*):
            The backbone's KV cache after this call (backbone heads with ``use_cache=True`` only).
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`, *optional*):
            The hidden states the head read.
    """

    values: torch.FloatTensor | None = None
    cache: Cache | None = None
    last_hidden_state: torch.FloatTensor | None = None


class _Float32Linear(nn.Linear):
    """`nn.Linear` that always computes in float32, whatever the dtype of its input or parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.float()
        return nn.functional.linear(x.float(), self.weight.float(), bias)


class MultiValueHeadModule(nn.Module):
    """The value head proper: ``(..., hidden_size) -> (..., G)``, float32."""

    def __init__(self, config: MultiValueHeadConfig):
        super().__init__()
        if config.head_type == "linear":
            self.layers = nn.ModuleList([_Float32Linear(config.hidden_size, config.num_objectives)])
        else:
            self.layers = nn.ModuleList(
                [
                    _Float32Linear(config.hidden_size, config.head_hidden_size),
                    _Float32Linear(config.head_hidden_size, config.num_objectives),
                ]
            )
        self.activation = nn.GELU()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x = hidden_states.float()  # (..., H)
        for index, layer in enumerate(self.layers):
            if index > 0:
                x = self.activation(x)
            x = layer(x)
        return x  # (..., G)


class MultiValueHead(PreTrainedModel):
    r"""``G`` value functions ``V_g(x, y^t)`` for RMOD, as one Hugging Face model.

    See the module docstring for the two kinds (shared-trunk / backbone). Save and load it like any
    transformers model (`save_pretrained`, `from_pretrained`, `AutoModel.from_pretrained` after
    ``import hf_rmod``, `push_to_hub`); loading accepts safetensors only and is strict.
    """

    config_class = MultiValueHeadConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False
    _keep_in_fp32_modules_strict = ["head"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(self, config: MultiValueHeadConfig, *, _backbone: PreTrainedModel | None = None):
        super().__init__(config)
        if config.backbone_config is None:
            if _backbone is not None:
                raise ValueError("A shared-trunk config (backbone_config=None) cannot take a backbone module.")
            self.backbone = None
        elif _backbone is not None:
            self.backbone = _backbone
        else:
            self.backbone = AutoModel.from_config(config.backbone_config)
        self.head = MultiValueHeadModule(config)
        self.head.float()
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, MultiValueHeadModule):
            for layer in module.layers:
                nn.init.normal_(layer.weight, mean=0.0, std=self.config.initializer_range)
                nn.init.zeros_(layer.bias)
        elif self.backbone is None or not any(module is m for m in self.backbone.modules()):
            super()._init_weights(module)

    # -- properties ---------------------------------------------------------------------------------------------
    @property
    def objectives(self) -> list[str]:
        return list(self.config.objectives)

    @property
    def num_objectives(self) -> int:
        return len(self.config.objectives)

    @property
    def normalization(self) -> tuple[list[float], list[float]] | None:
        """``(reward_mean, reward_std)`` per objective (the values are z-scored with them), or ``None``."""
        mean, std = self.config.reward_mean, self.config.reward_std
        return None if mean is None or std is None else (list(mean), list(std))

    @property
    def sampling_settings(self) -> dict | None:
        """The sampling distribution of the head's training data (``config.sampling_settings``), when recorded."""
        return getattr(self.config, "sampling_settings", None)

    @property
    def uses_policy_hidden_states(self) -> bool:
        """True for a shared-trunk head: it reads the policy's final hidden state instead of token ids."""
        return self.backbone is None

    def get_input_embeddings(self):
        return None if self.backbone is None else self.backbone.get_input_embeddings()

    # -- compute ------------------------------------------------------------------------------------------------
    def score_hidden_states(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Apply the head: ``(..., hidden_size) -> (..., G)`` float32, normalised reward units."""
        if hidden_states.shape[-1] != self.config.hidden_size:
            raise ValueError(
                f"`hidden_states` has width {hidden_states.shape[-1]} but this value head expects "
                f"hidden_size={self.config.hidden_size}; was it built for another policy "
                f"({self.config.policy_name_or_path!r})?"
            )
        return self.head(hidden_states)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        hidden_states: torch.Tensor | None = None,
        return_dict: bool | None = True,
        **kwargs: Any,
    ) -> MultiValueHeadOutput | tuple:
        r"""Values at every position.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch, T)`): token ids (backbone heads).
            attention_mask (`torch.Tensor` of shape `(batch, past + T)`): backbone heads; covers cached tokens too.
            position_ids (`torch.LongTensor` of shape `(batch, T)`): backbone heads (needed with left padding).
            cache (`Cache`): the backbone's KV cache from a previous call (backbone heads).
            use_cache (`bool`): return the backbone's cache (backbone heads).
            hidden_states (`torch.Tensor` of shape `(batch, T, H)`): the policy's final hidden states
                (shared-trunk heads).

        Returns:
            [`MultiValueHeadOutput`] with ``values`` of shape `(batch, T, G)`, float32.
        """
        if "past_key_values" in kwargs:
            if cache is not None:
                raise ValueError("Pass the backbone cache as `cache=` only (not also `past_key_values=`).")
            cache = kwargs.pop("past_key_values")
        if self.backbone is None:
            if hidden_states is None:
                raise ValueError(
                    "This is a shared-trunk value head (no backbone): pass `hidden_states=` (the policy's final "
                    "hidden states, what its lm_head reads), not token ids."
                )
            if input_ids is not None or cache is not None:
                raise ValueError(
                    "A shared-trunk value head takes only `hidden_states=`; `input_ids`/`cache` belong to the policy."
                )
            last_hidden_state = hidden_states
            new_cache = None
        else:
            if hidden_states is not None:
                raise ValueError(
                    "This value head has its own backbone: pass `input_ids=` (the policy's token ids), not "
                    "`hidden_states=`."
                )
            if input_ids is None and kwargs.get("inputs_embeds") is None:
                raise ValueError("A backbone value head needs `input_ids=`.")
            out = self.backbone(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=cache,
                use_cache=use_cache,
                return_dict=True,
                **kwargs,
            )
            last_hidden_state = out.last_hidden_state
            new_cache = getattr(out, "cache", None)
            if new_cache is None:
                new_cache = getattr(out, "past_key_values", None)
        values = self.score_hidden_states(last_hidden_state)  # (batch, T, G)
        output = MultiValueHeadOutput(values=values, cache=new_cache, last_hidden_state=last_hidden_state)
        return output if return_dict is not False else output.to_tuple()

    def denormalize(self, values: torch.Tensor) -> torch.Tensor:
        """Normalised values -> reward units: ``v * reward_std + reward_mean`` over the last dim (G)."""
        if values.shape[-1] != self.num_objectives:
            raise ValueError(
                f"`values` has {values.shape[-1]} entries in its last dim but the head has "
                f"{self.num_objectives} objectives {self.objectives!r}."
            )
        mean = torch.tensor(self.config.reward_mean, dtype=torch.float32, device=values.device)
        std = torch.tensor(self.config.reward_std, dtype=torch.float32, device=values.device)
        return values.float() * std + mean  # (..., G)

    def normalize(self, rewards: torch.Tensor) -> torch.Tensor:
        """Reward units -> normalised units: ``(r - reward_mean) / reward_std`` over the last dim (G)."""
        mean = torch.tensor(self.config.reward_mean, dtype=torch.float32, device=rewards.device)
        std = torch.tensor(self.config.reward_std, dtype=torch.float32, device=rewards.device)
        return (rewards.float() - mean) / std

    # -- constructors -------------------------------------------------------------------------------------------
    @classmethod
    def for_policy(
        cls,
        model: PreTrainedModel,
        objectives: Sequence[str],
        head_type: str = "linear",
        head_hidden_size: int | None = None,
        *,
        tokenizer: Any = None,
        **kwargs: Any,
    ) -> "MultiValueHead":
        """A fresh shared-trunk head sized for ``model``'s final hidden state, on the model's device.

        ``tokenizer`` (the policy's) is recorded as the head's ``tokenizer_fingerprint``. Extra ``kwargs`` go to
        [`MultiValueHeadConfig`] (e.g. ``reward_mean``, ``training_info``).
        """
        hidden_size, vocab_size = _policy_sizes(model)
        if hidden_size is None:
            raise ValueError(
                f"Cannot tell the final hidden size of {type(model).__name__}: it has no output embeddings and "
                "its config has no `hidden_size`. Build MultiValueHeadConfig(hidden_size=...) yourself."
            )
        config = MultiValueHeadConfig(
            objectives=list(objectives),
            hidden_size=hidden_size,
            head_type=head_type,
            head_hidden_size=head_hidden_size,
            policy_name_or_path=kwargs.pop("policy_name_or_path", None) or getattr(model, "name_or_path", None) or None,
            policy_vocab_size=kwargs.pop("policy_vocab_size", vocab_size),
            policy_hidden_size=kwargs.pop("policy_hidden_size", hidden_size),
            tokenizer_fingerprint=kwargs.pop("tokenizer_fingerprint", None)
            or (None if tokenizer is None else tokenizer_fingerprint(tokenizer)),
            **kwargs,
        )
        head = cls(config)
        return head.to(module_device(model))

    @classmethod
    def from_backbone(
        cls,
        backbone: str | os.PathLike | PreTrainedModel,
        objectives: Sequence[str],
        head_type: str = "linear",
        *,
        tokenizer: Any = None,
        **kwargs: Any,
    ) -> "MultiValueHead":
        """A fresh head on its own transformer backbone (weights copied from ``backbone``).

        Args:
            backbone: a local directory / model id (loaded with ``AutoModel.from_pretrained``, safetensors only;
                ``trust_remote_code`` is forwarded only if you pass it) or a built ``PreTrainedModel``
                (its base model is used when it has an LM head).
            objectives: the ``G`` objective names.
            head_type: ``"linear"`` or ``"mlp"``.
            tokenizer: the backbone's tokenizer (the one whose ids it reads); recorded as the head's
                ``tokenizer_fingerprint`` so that decoding and training refuse a policy with another tokenizer.
            kwargs: ``trust_remote_code``, ``revision``, ``token``, ``local_files_only``, ``dtype`` go to
                ``from_pretrained``; everything else to [`MultiValueHeadConfig`].
        """
        load_keys = ("trust_remote_code", "revision", "token", "local_files_only", "cache_dir", "dtype", "subfolder")
        load_kwargs = {key: kwargs.pop(key) for key in load_keys if key in kwargs}
        if isinstance(backbone, (str, os.PathLike)):
            load_kwargs.setdefault("use_safetensors", True)
            source = _hub.check_local_path(os.fspath(backbone), "backbone", load_kwargs.get("subfolder") or "")
            module = AutoModel.from_pretrained(source, **load_kwargs)
        elif isinstance(backbone, PreTrainedModel):
            if load_kwargs:
                raise ValueError(
                    f"{sorted(load_kwargs)} only apply when `backbone` is a path or model id, not a built model."
                )
            module = backbone
        else:
            raise TypeError(
                f"`backbone` must be a path/model id or a PreTrainedModel, got {type(backbone).__name__}."
            )
        module = _base_model_of(module)
        if isinstance(module, MultiValueHead):
            raise TypeError("`backbone` is already a MultiValueHead; load it with MultiValueHead.from_pretrained.")
        module = copy.deepcopy(module)
        policy_name = kwargs.pop("policy_name_or_path", None)
        config = MultiValueHeadConfig(
            objectives=list(objectives),
            head_type=head_type,
            backbone_config=copy.deepcopy(module.config),
            policy_name_or_path=policy_name,
            tokenizer_fingerprint=kwargs.pop("tokenizer_fingerprint", None)
            or (None if tokenizer is None else tokenizer_fingerprint(tokenizer)),
            **kwargs,
        )
        head = cls(config, _backbone=module)
        return head.to(module_device(module))


    # -- Hub surface ---------------------------------------------------------------------------------------------
    model_card_tags: ClassVar[tuple[str, ...]] = ("hf_rmod", "rmod", "value-model")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """Load a value head strictly and from safetensors only.

        Same arguments as `PreTrainedModel.from_pretrained`. Differences: ``use_safetensors`` is always
        ``True`` (a checkpoint with only pickle weights raises), a missing, unexpected or mis-shaped weight
        raises `ValueError` instead of being re-initialised with a warning, and a name that looks like a local
        path (``./x``, ``~/x``, ``a/b/c``, ``runs/x`` when ``./runs`` exists; see `hf_rmod._hub.looks_like_local_path`)
        but does not exist raises `FileNotFoundError` at once instead of asking the Hub.
        """
        _hub.check_load_kwargs(kwargs)
        want_info = kwargs.pop("output_loading_info", False)
        subfolder = kwargs.get("subfolder", "") or ""
        path = _hub.check_local_path(os.fspath(pretrained_model_name_or_path), "pretrained_model_name_or_path", subfolder)
        local_dir = os.path.join(path, subfolder)
        if os.path.isdir(local_dir):
            _hub.require_safetensors(local_dir)
        try:
            model, info = super().from_pretrained(
                path, *model_args, use_safetensors=True, output_loading_info=True, **kwargs
            )
        except RuntimeError as err:
            if "ignore_mismatched_sizes" not in str(err):
                raise
            detail = _hub.describe_mismatch(cls, local_dir) if os.path.isdir(local_dir) else ""
            raise ValueError(
                f"The weights in {path!r} do not have the shapes its config.json implies{detail}. "
                "The checkpoint is corrupt or its config (objectives, hidden_size, head_type) was edited."
            ) from err
        _hub.raise_on_loading_problems(path, info, model.config)
        return (model, info) if want_info else model

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, plus a model card ``README.md`` (see :meth:`model_card`).

        With ``push_to_hub=True`` the folder is saved first and then pushed with :meth:`push_to_hub`, so the
        card is uploaded too.
        """
        push = kwargs.pop("push_to_hub", False)
        push_keys = ("repo_id", "commit_message", "commit_description", "private", "create_pr", "revision")
        push_kwargs = {key: kwargs.pop(key) for key in push_keys if key in kwargs}
        result = super().save_pretrained(save_directory, *args, **kwargs)
        is_main_process = kwargs.get("is_main_process", args[0] if args else True)
        if is_main_process and os.path.isdir(save_directory):
            self.model_card().save(os.path.join(save_directory, "README.md"))
        if push and is_main_process:
            repo_id = push_kwargs.pop("repo_id", os.path.basename(os.path.normpath(str(save_directory))))
            self.push_to_hub(repo_id, token=kwargs.get("token"), **push_kwargs)
        return result

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token: bool | str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        max_shard_size: int | str | None = "50GB",
        tags: list[str] | None = None,
    ):
        """Upload ``config.json``, ``model.safetensors`` and the generated model card to the Hub.

        Unlike `PreTrainedModel.push_to_hub`, the card written by :meth:`save_pretrained` is uploaded instead of
        the Hub's generic template. Returns the `CommitInfo` of the upload.
        """
        from huggingface_hub import HfApi

        extra_tags = [tags] if isinstance(tags, str) else list(tags or [])
        api = HfApi(library_name="hf_rmod")
        repo_id = api.create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as tmp_dir:
            super().save_pretrained(tmp_dir, max_shard_size=max_shard_size)
            self.model_card(extra_tags=extra_tags).save(os.path.join(tmp_dir, "README.md"))
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=tmp_dir,
                commit_message=commit_message or "Upload RMOD value head",
                commit_description=commit_description,
                token=token,
                revision=revision,
                create_pr=create_pr,
            )

    def model_card(self, extra_tags: Sequence[str] = ()):
        """A `huggingface_hub.ModelCard` describing the objectives, policy, head kind, data and metrics."""
        tags = list(dict.fromkeys([*self.model_card_tags, *(self.model_tags or []), *extra_tags]))
        return _hub.render_model_card(self.config, self._kind_line(), tags)

    def _kind_line(self) -> str:
        """What the head reads, for the model card."""
        config = self.config
        if self.uses_policy_hidden_states:
            return f"shared-trunk `{config.head_type}` head on the policy's final hidden state (width {config.hidden_size})"
        backbone = type(config.backbone_config).__name__.removesuffix("Config")
        return f"`{config.head_type}` head on its own `{backbone}` backbone (hidden size {config.hidden_size})"

    # -- the value-model protocol (hf_rmod.value_model.ValueModel) ----------------------------------------------
    def check_policy(self, policy: PreTrainedModel, tokenizer: Any = None) -> None:
        """:meth:`check_compatible` without an objectives check (the value-model protocol)."""
        self.check_compatible(policy, tokenizer=tokenizer)

    def prepare(self, policy: PreTrainedModel, cfg: Any = None, *, owned: bool = False) -> None:
        """Check the head against ``policy`` (unless ``cfg.value_tokenizer`` re-tokenises) and place it.

        A head RMOD loaded itself (``owned``) moves to where its inputs are: a shared-trunk head to the device of
        the policy's ``lm_head`` (with ``device_map`` that is the last shard, not ``policy.device``), a backbone
        head to the policy's input device. A head the caller built is never moved (the scorers copy the small
        per-block tensors to it and the values back); it warns when it sits on the CPU beside an accelerator.
        """
        if cfg is None or getattr(cfg, "value_tokenizer", None) is None:  # re-tokenising heads never see the ids
            self.check_compatible(policy, tokenizer=getattr(cfg, "tokenizer", None))
        target = self._scoring_device(policy)
        if owned:
            if self.device != target:
                self.to(target)
        elif self.device != target and self.device.type == "cpu" and target.type != "cpu":
            import warnings

            warnings.warn(
                f"The value model is on the CPU while the policy's "
                f"{'lm_head' if self.uses_policy_hidden_states else 'inputs'} are on {target}: RMOD scores on the "
                f"value model's device and copies each block's inputs there. Move it once with "
                f"`head.to({str(target)!r})` for speed.",
                stacklevel=5,
            )
        self.eval()

    def _scoring_device(self, policy: PreTrainedModel) -> torch.device:
        """Where the head's inputs live: the lm_head's device (shared trunk) or the policy's input device."""
        if self.uses_policy_hidden_states:
            get_out = getattr(policy, "get_output_embeddings", None)
            lm_head = get_out() if callable(get_out) else None
            weight = getattr(lm_head, "weight", None)
            if isinstance(weight, torch.Tensor):
                return weight.device
        return policy.device

    def build_scorer(self, policy: PreTrainedModel, cfg: Any = None) -> Any:
        """The scorer that fits the head: a hidden-state hook for a shared trunk, a cached backbone otherwise,
        re-tokenising when ``cfg`` (the call's `RMODConfig`) gives the head its own ``value_tokenizer``."""
        from .scoring import CachedBackboneScorer, PolicyHiddenStateScorer, RetokenizingScorer

        value_tokenizer = getattr(cfg, "value_tokenizer", None)
        if self.uses_policy_hidden_states:
            if value_tokenizer is not None:
                raise ValueError(
                    "`value_tokenizer` is only for value models with their own backbone; this value head reads the "
                    "policy's hidden states. Remove `value_tokenizer`."
                )
            return PolicyHiddenStateScorer(self, policy)
        if value_tokenizer is not None:
            return RetokenizingScorer(self, cfg.tokenizer, value_tokenizer, cfg.value_max_length)
        return CachedBackboneScorer(self)

    # -- checks -------------------------------------------------------------------------------------------------
    def check_compatible(
        self, policy: PreTrainedModel, objectives: Sequence[str] | None = None, *, tokenizer: Any = None
    ) -> None:
        """Raise `ValueError` (naming both sides and the fix) if this head cannot score ``policy``'s generations.

        Checks: the shared-trunk head's ``hidden_size`` against the policy's lm_head input width; for a backbone
        head, which reads the policy's token ids, that the ids mean the same tokens to it (see
        :meth:`check_tokenizer`: the recorded ``tokenizer_fingerprint`` against ``tokenizer``, the policy's tokenizer,
        when both are known; else the backbone's vocabulary size must equal the policy's); the recorded
        ``policy_vocab_size`` / ``policy_hidden_size``; and, if given, the expected objective names.
        """
        policy_name = getattr(policy, "name_or_path", None) or type(policy).__name__
        head_name = self._display_name()
        hidden_size, vocab_size = _policy_sizes(policy)
        if objectives is not None and list(objectives) != self.objectives:
            raise ValueError(
                f"Value head {head_name!r} predicts objectives {self.objectives} ({self.num_objectives}), but "
                f"{list(objectives)} ({len(list(objectives))}) were requested; pass a head trained for those objectives."
            )
        if self.uses_policy_hidden_states:
            if hidden_size is not None and hidden_size != self.config.hidden_size:
                raise ValueError(
                    f"Shared-trunk value head {head_name!r} reads hidden states of width {self.config.hidden_size} "
                    f"(built for policy {self.config.policy_name_or_path!r}), but policy {policy_name!r} has lm_head "
                    f"input width {hidden_size}. Train a head for this policy (MultiValueHead.for_policy)."
                )
        else:
            backbone_vocab = _config_vocab(self.config.backbone_config)
            if vocab_size is not None and backbone_vocab is not None and backbone_vocab < vocab_size:
                raise ValueError(
                    f"Value head {head_name!r} has a backbone vocabulary of {backbone_vocab} tokens, smaller than "
                    f"policy {policy_name!r}'s {vocab_size}: the policy's token ids cannot be fed to it. Use a "
                    "backbone that shares the policy's tokenizer, or re-tokenise text with "
                    "RMODConfig(value_tokenizer=<the value model's tokenizer>, tokenizer=<the policy's tokenizer>)."
                )
            self._check_ids_mean_the_same(policy_name, vocab_size, backbone_vocab, tokenizer)
        if (
            self.config.policy_vocab_size is not None
            and vocab_size is not None
            and self.config.policy_vocab_size != vocab_size
        ):
            raise ValueError(
                f"Value head {head_name!r} was trained for policy {self.config.policy_name_or_path!r} with a "
                f"vocabulary of {self.config.policy_vocab_size} tokens, but policy {policy_name!r} has {vocab_size}. "
                "The head expects that policy's tokenizer; train a head for this policy."
            )
        if (
            self.uses_policy_hidden_states
            and self.config.policy_hidden_size is not None
            and hidden_size is not None
            and self.config.policy_hidden_size != hidden_size
        ):
            raise ValueError(
                f"Value head {head_name!r} records policy hidden size {self.config.policy_hidden_size} "
                f"({self.config.policy_name_or_path!r}) but policy {policy_name!r} has {hidden_size}."
            )

    def check_tokenizer(self, tokenizer: Any, what: str = "the policy's tokenizer") -> bool:
        """Compare ``tokenizer`` with the head's recorded ``tokenizer_fingerprint``.

        Returns ``True`` when they match, ``False`` when the head records no fingerprint (nothing to compare);
        raises `ValueError` naming both tokenizers and the fix when they differ.
        """
        recorded = self.config.tokenizer_fingerprint
        if recorded is None or tokenizer is None:
            return False
        current = _cached_fingerprint(tokenizer)
        if current["sha256"] == recorded["sha256"]:
            return True
        raise ValueError(
            f"Value head {self._display_name()!r} reads the token ids of tokenizer {describe_tokenizer(recorded)}, "
            f"but {what} is {describe_tokenizer(current)}: the same ids mean other tokens, so the head would score "
            "garbage. Re-tokenise the text for it: RMODConfig(value_tokenizer=<the value model's tokenizer>, "
            "tokenizer=<the policy's tokenizer>); or use a value head built on the policy's tokenizer."
        )

    def _check_ids_mean_the_same(self, policy_name: str, policy_vocab: int | None, backbone_vocab: int | None,
                                 tokenizer: Any) -> None:
        """A backbone head fed the policy's ids: the fingerprint decides when both tokenizers are known, else sizes."""
        if self.check_tokenizer(tokenizer, what=f"policy {policy_name!r}'s tokenizer"):
            return  # proven: the same tokenizer (embedding sizes may still differ by padding)
        recorded = self.config.tokenizer_fingerprint
        fix = (
            "If they do share a tokenizer, record the head's tokenizer (MultiValueHead.from_backbone(..., "
            "tokenizer=...), or head.config.tokenizer_fingerprint = hf_rmod.configuration_value_head."
            "tokenizer_fingerprint(tok)) and pass RMODConfig(tokenizer=<the policy's tokenizer>) so that the "
            "fingerprints are compared; otherwise re-tokenise the text with RMODConfig(value_tokenizer=<the value "
            "model's tokenizer>, tokenizer=<the policy's tokenizer>)."
        )
        if recorded is not None and policy_vocab is not None and recorded["vocab_size"] > policy_vocab:
            raise ValueError(
                f"Value head {self._display_name()!r} reads tokenizer {describe_tokenizer(recorded)}, which has more "
                f"tokens than policy {policy_name!r}'s vocabulary ({policy_vocab}): the policy does not use that "
                f"tokenizer, and its token ids would mean other tokens to the head. {fix}"
            )
        if policy_vocab is not None and backbone_vocab is not None and backbone_vocab != policy_vocab:
            raise ValueError(
                f"Value head {self._display_name()!r} has a backbone vocabulary of {backbone_vocab} tokens but policy "
                f"{policy_name!r} has {policy_vocab}: they almost surely use different tokenizers, and the policy's "
                f"token ids would mean other tokens to the backbone. {fix}"
            )

    def _display_name(self) -> str:
        return self.config.name_or_path or f"MultiValueHead(objectives={self.objectives})"

    def warn_if_sampling_differs(self, generation_config: Any, max_new_tokens: int | None = None,
                                 policy: Any = None) -> list[str]:
        """Warn (once per head and set of differences) when decoding samples from another distribution than the one
        the head was trained on (``config.sampling_settings``).

        Compared: ``do_sample``, ``temperature``, ``top_k``, ``top_p`` and any other recorded generate() argument
        that ``generation_config`` has, ``max_new_tokens`` (when given) and the policy's ``name_or_path`` (when both
        are known). ``chat_template`` cannot be seen in token ids and is not compared. Returns the differences.
        """
        return warn_if_sampling_differs(self, f"Value head {self._display_name()!r}", self.config.sampling_settings,
                                        generation_config, max_new_tokens, policy)


_FINGERPRINTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _cached_fingerprint(tokenizer: Any) -> dict:
    """`tokenizer_fingerprint`, remembered per tokenizer object and size (hashing a 50k vocabulary takes ~0.15 s)."""
    try:
        size, cached = len(tokenizer), _FINGERPRINTS.get(tokenizer)
    except TypeError:  # not weak-referenceable or no len(): compute every time
        return tokenizer_fingerprint(tokenizer)
    if cached is not None and cached[0] == size:
        return cached[1]
    fingerprint = tokenizer_fingerprint(tokenizer)
    _FINGERPRINTS[tokenizer] = (size, fingerprint)
    return fingerprint


def _policy_sizes(model: nn.Module) -> tuple[int | None, int | None]:
    """(final hidden width, vocab size) of a causal LM: what its lm_head reads / writes."""
    hidden_size = vocab_size = None
    get_out = getattr(model, "get_output_embeddings", None)
    lm_head = get_out() if callable(get_out) else None
    if lm_head is not None:
        hidden_size = getattr(lm_head, "in_features", None)
        vocab_size = getattr(lm_head, "out_features", None)
        if hidden_size is None and getattr(lm_head, "weight", None) is not None:
            vocab_size, hidden_size = lm_head.weight.shape[0], lm_head.weight.shape[-1]
    config = getattr(model, "config", None)
    if config is not None:
        hidden_size = hidden_size if hidden_size is not None else _config_width(config)
        vocab_size = vocab_size if vocab_size is not None else _config_vocab(config)
    return hidden_size, vocab_size


def _base_model_of(model: PreTrainedModel) -> PreTrainedModel:
    """The transformer trunk of ``model`` (drops an LM head)."""
    get_out = getattr(model, "get_output_embeddings", None)
    if callable(get_out) and get_out() is not None:
        base = getattr(model, "base_model", model)
        if base is model and hasattr(model, "get_decoder"):
            base = model.get_decoder()
        if base is model:
            raise ValueError(
                f"Cannot find the base model of {type(model).__name__}; pass its trunk (e.g. model.model) instead."
            )
        return base
    return model


def _register() -> None:
    AutoConfig.register(MultiValueHeadConfig.model_type, MultiValueHeadConfig, exist_ok=True)
    AutoModel.register(MultiValueHeadConfig, MultiValueHead, exist_ok=True)


_register()
