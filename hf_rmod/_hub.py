"""The Hub surface of `MultiValueHead`, kept out of the model file: where a name points (local folder or Hub
repo id), safe and strict loading checks, and the model card.

* :func:`looks_like_local_path` / :func:`check_local_path` — a name that is meant as a local folder and does not
  exist fails at once with `FileNotFoundError` instead of several Hub retries (the rule is documented below).
* :func:`check_load_kwargs`, :func:`require_safetensors`, :func:`describe_mismatch`,
  :func:`raise_on_loading_problems` — safetensors-only, strict loading.
* :func:`render_model_card` — the ``README.md`` written by ``save_pretrained`` / ``push_to_hub``.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping, Sequence


_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


# ------------------------------------------------------------------------------------------- local path or Hub id
def looks_like_repo_id(name: str | None) -> bool:
    """``name`` or ``owner/name`` made of Hub-legal characters, and not an existing local path."""
    return bool(name) and _REPO_ID.match(name) is not None and not os.path.exists(name)


def looks_like_local_path(name: str) -> bool:
    """Whether `name` is meant as a local folder rather than a Hub repo id.

    The rule: a name is local when it starts with ``.``, ``/`` or ``~``; is absolute; contains a backslash or
    (on Windows) starts with a drive letter; has more than one separator (a Hub id is ``name`` or ``owner/name``);
    or is ``first/rest`` where ``first`` exists here as a folder (``runs/nope`` when ``./runs`` exists). Anything
    else (``gpt2``, ``owner/name``) is left to the Hub.
    """
    if name.startswith((".", "/", "~")) or os.path.isabs(name) or "\\" in name or _WINDOWS_DRIVE.match(name):
        return True
    parts = name.replace(os.sep, "/").split("/")
    if len(parts) > 2:
        return True
    return len(parts) == 2 and os.path.isdir(parts[0])


def check_local_path(name: str, argument: str, subfolder: str = "") -> str:
    """`name` with ``~`` expanded when it is a local folder; raise `FileNotFoundError` at once when it looks like
    a local path (:func:`looks_like_local_path`) but no such folder exists. Hub ids are returned unchanged."""
    if not looks_like_local_path(name):
        return name
    path = os.path.expanduser(name)
    folder = os.path.join(path, subfolder) if subfolder else path
    if os.path.isdir(folder):
        return path
    what = "a file, not a folder" if os.path.exists(folder) else "no such folder"
    raise FileNotFoundError(
        f"{what}: {folder!r} (`{argument}` looks like a local path, so the Hub is not asked; relative paths start "
        f"at the current folder {os.getcwd()!r}). Fix the path to a folder saved with save_pretrained(), or pass a "
        "Hub repo id as 'owner/name'."
    )


# ---------------------------------------------------------------------------------------------- strict loading
def check_load_kwargs(kwargs: dict) -> None:
    """Refuse the `from_pretrained` options a value head does not support (pops the ones it overrides)."""
    if kwargs.pop("use_safetensors", True) is False:
        raise ValueError(
            "use_safetensors=False is not supported: value heads load safetensors weights only, because pickle "
            "checkpoints (pytorch_model.bin) can execute code. Convert the checkpoint to safetensors."
        )
    if kwargs.pop("ignore_mismatched_sizes", False):
        raise ValueError(
            "ignore_mismatched_sizes=True is not supported: a value head loads strictly. Build a fresh head "
            "(MultiValueHead.for_policy / from_backbone) if the objectives or sizes changed."
        )
    if kwargs.get("gguf_file") is not None:
        raise ValueError("Value heads are not loaded from GGUF files; save them with save_pretrained().")


def require_safetensors(directory: str) -> None:
    """Raise `OSError` when a local checkpoint folder holds only pickle weights."""
    names = set(os.listdir(directory))
    if any(name.endswith(".safetensors") or name.endswith(".safetensors.index.json") for name in names):
        return
    pickles = sorted(name for name in names if name.endswith(_PICKLE_SUFFIXES))
    if pickles:
        raise OSError(
            f"{directory!r} holds only pickle weights {pickles}; value heads load safetensors only, because pickle "
            "files can execute code when loaded. Convert them with safetensors.torch.save_file (after checking "
            "their origin) or re-save the head with save_pretrained()."
        )


def describe_mismatch(cls: type, directory: str) -> str:
    """': key ckpt (shape) vs model (shape), ...' for a local checkpoint, or '' if it cannot be worked out."""
    try:
        import torch
        from safetensors import safe_open

        config = cls.config_class.from_pretrained(directory)
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in cls(config).state_dict().items()}
        found = {}
        for name in os.listdir(directory):
            if name.endswith(".safetensors"):
                with safe_open(os.path.join(directory, name), framework="pt") as handle:
                    for key in handle.keys():
                        found[key] = tuple(handle.get_slice(key).get_shape())
    except Exception:  # the description is best effort; the caller raises anyway
        return ""
    bad = [f"{k} ckpt {found[k]} vs model {expected[k]}" for k in expected if k in found and found[k] != expected[k]]
    return (": " + "; ".join(bad)) if bad else ""


def raise_on_loading_problems(path: str, info: Mapping[str, Any], config: Any) -> None:
    """Strict loading: any missing, unexpected or mis-shaped weight in `info` (transformers' loading info) raises."""
    problems = {
        key: sorted(info.get(key) or [])
        for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")
        if info.get(key)
    }
    if problems:
        raise ValueError(
            f"Loading the value head from {path!r} is strict and found: {problems}. The checkpoint does not match "
            f"its config (objectives={config.objectives}, hidden_size={config.hidden_size}, "
            f"head_type={config.head_type!r})."
        )


# ------------------------------------------------------------------------------------------------- model card
def render_model_card(config: Any, head_kind: str, tags: Sequence[str]):
    """A `huggingface_hub.ModelCard` describing a value head's objectives, policy, kind, data and metrics.

    ``config``: the head's `MultiValueHeadConfig`; ``head_kind``: one line saying what the head reads.
    """
    from huggingface_hub import ModelCard, ModelCardData

    policy = config.policy_name_or_path
    card_data = ModelCardData(
        library_name="transformers", tags=list(tags), base_model=policy if looks_like_repo_id(policy) else None
    )
    info = dict(config.training_info or {})
    lines = [
        "# RMOD multi-objective value model",
        "",
        "Value functions `V_g(x, y^t)` for Robust Multi-Objective Decoding (RMOD), one per objective, trained "
        "with CD-FUDGE (every response prefix regresses onto the final reward). Made with the "
        "`hf_rmod` library.",
        "",
        "## Model",
        "",
        f"- **Objectives** ({len(config.objectives)}): " + ", ".join(f"`{o}`" for o in config.objectives),
        f"- **Reference policy**: `{policy}`" if policy else "- **Reference policy**: not recorded",
        f"- **Head**: {head_kind}",
        f"- **Tokenizer** (whose token ids the head reads): {_tokenizer_line(config.tokenizer_fingerprint)}",
        "- **Reward normalisation** (values are predicted in normalised units; `denormalize` maps back): "
        + ", ".join(
            f"`{o}`: mean {m:.4g}, std {s:.4g}" for o, m, s in zip(config.objectives, config.reward_mean, config.reward_std)
        ),
        "",
        "## Training data",
        "",
    ]
    data = info.pop("data", None)
    if isinstance(data, dict) and data:
        lines += [f"- **{key}**: {value}" for key, value in data.items()]
    else:
        lines.append(str(data) if data else "Not recorded.")
    lines += ["", "## Sampling distribution of the training data", ""]
    sampling = getattr(config, "sampling_settings", None)
    if sampling:
        lines += [f"- **{key}**: {json.dumps(value, default=str)}" for key, value in sampling.items()]
        lines += ["", "Decoding with other settings (`generate(..., rmod_config=...)`) warns once: the values estimate "
                  "rewards under this distribution."]
    else:
        lines.append("Not recorded.")
    lines += ["", "## Validation metrics", ""]
    metrics = info.pop("metrics", None)
    lines += _metrics_markdown(metrics, config.objectives) if metrics else ["Not recorded."]
    if info:
        lines += ["", "## Training details", ""]
        lines += [f"- **{key}**: {json.dumps(value, default=str)}" for key, value in info.items()]
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "from hf_rmod import MultiValueHead  # registers the value-head classes with AutoModel",
        "from transformers import AutoModel",
        "",
        'value_model = AutoModel.from_pretrained("<this repo>")  # a hf_rmod.MultiValueHead',
        "```",
        "",
    ]
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines))


def _tokenizer_line(fingerprint: Any) -> str:
    if not fingerprint:
        return "not recorded"
    name = fingerprint.get("name_or_path") or "unnamed"
    return f"`{name}`, {fingerprint.get('vocab_size')} tokens, sha256 `{str(fingerprint.get('sha256'))[:16]}`"


def _metrics_markdown(metrics: Any, objectives: Sequence[str]) -> list[str]:
    """Render ``{"metric": {objective: value}}`` as a table, other values as a list; ``warnings`` (a list of
    messages, see :func:`hf_rmod.experiments.value_training.train_value_head`) as warning lines first."""
    if not isinstance(metrics, dict):
        return [str(metrics)]
    warnings = metrics.get("warnings") or []  # e.g. an objective predicted worse than the constant predictor
    metrics = {k: v for k, v in metrics.items() if k != "warnings"}
    table = {k: v for k, v in metrics.items() if isinstance(v, dict) and set(v) <= set(objectives)}
    lines = [f"> **Warning:** {message}" for message in ([warnings] if isinstance(warnings, str) else warnings)]
    lines += [""] if lines else []
    if any(str(k).startswith(("within_prompt_spearman", "pairwise_accuracy")) for k in table):
        lines += ["Ranking rows (`within_prompt_spearman_tN`, `pairwise_accuracy_tN`): agreement between the value after "
                  "N response tokens and the final reward among the responses of the same prompt, averaged over the "
                  "validation prompts: what RMOD's choice among K candidates depends on. MSE rows are in normalised "
                  "reward units.", ""]
    if table:
        lines.append("| metric | " + " | ".join(objectives) + " |")
        lines.append("|---|" + "---|" * len(objectives))
        for name, row in table.items():
            cells = [f"{row[o]:.4g}" if isinstance(row.get(o), (int, float)) else "" for o in objectives]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    for name, value in metrics.items():
        if name not in table:
            lines.append(f"- **{name}**: {json.dumps(value, default=str)}")
    return lines
