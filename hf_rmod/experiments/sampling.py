"""Training data for value heads: ``N`` responses per prompt from the reference policy, scored (``hf-rmod sample``).

:func:`sample_responses` draws responses with plain ``model.generate`` and scores them with ``G`` reward
functions, appending JSONL records ``{"prompt", "prompt_ids", "response", "response_ids", "rewards": {name:
float}}`` to a resumable file.

The settings file
-----------------
One records file holds one sampling distribution. Next to ``records.jsonl`` a sidecar
``records.jsonl.settings.json`` records what the file was sampled with (:data:`COMPARED_SETTINGS`: the policy,
``num_responses``, ``max_new_tokens``, the sampling arguments, ``chat_template`` and the objective names). It is
written before the first append; a later call that would append with other settings raises ``ValueError``
naming each difference (``old -> new``) instead of silently mixing two distributions in one training set.
The records format itself is unchanged (the file stays a plain list of records).

A file written before the settings file existed is checked on what its records show (the objectives and the
responses per prompt), with a warning, and the settings file is then written.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from .._utils import check_unique_names, module_device
from ..logits_process import partial_sort_top_p_kwargs
from . import io
from .configs import SamplingConfig, merge_config
from .records import read_settings, settings_path

__all__ = ["COMPARED_SETTINGS", "sample_responses"]

RewardFn = Callable[[list, list], Any]

#: The settings that must match for a run to append to an existing records file.
COMPARED_SETTINGS = ("policy", "num_responses", "max_new_tokens", "sampling", "chat_template", "objectives")
_FORMAT = "hf_rmod.sample_responses/1"


def sample_responses(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    reward_fns: RewardFn | Sequence[RewardFn] | Mapping[str, RewardFn],
    config: SamplingConfig | None = None,
    *,
    output_path: str | os.PathLike | None = None,
    objectives: Sequence[str] | None = None,
    show_progress: bool = True,
    **overrides: Any,
) -> list[dict]:
    """Sample ``config.num_responses`` responses per prompt from the reference policy and score them.

    Responses come from plain ``model.generate(num_return_sequences=N, **config.sampling)`` on left-padded
    batches of ``config.batch_size`` prompts. ``config.sampling`` is
    :data:`~hf_rmod.experiments.configs.DEFAULT_SAMPLING` (``temperature=0.7, top_p=0.9, top_k=0``, the
    settings of the demo, the evaluation and the shipped value head) with ``config.generation_kwargs`` over
    it: sample with the settings you will decode with.

    Args:
        model: a causal LM (the reference policy ``pi_ref``).
        tokenizer: its tokenizer (needs a pad token).
        prompts: plain user prompts (duplicates are sampled once).
        reward_fns: callables ``(prompts, responses) -> (n,)`` or ``(n, G)``, a list of them, or a dict
            ``{name: callable}`` (see :func:`hf_rmod.rewards.score_rewards` for the column names).
        config: a :class:`~hf_rmod.experiments.configs.SamplingConfig` (default: ``SamplingConfig()``).
        output_path: JSONL file to append records to. Prompts already in it are skipped (resume); its
            settings file (see the module docstring) must match this call's settings, else ``ValueError``.
        objectives: names of the ``G`` reward columns.
        show_progress: progress bar and status lines on stderr.
        **overrides: :class:`SamplingConfig` fields, e.g. ``num_responses=8`` (applied over ``config``).

    Returns:
        The records written by this call (not those already in ``output_path``).
    """
    config = merge_config(SamplingConfig, config, overrides, "sample_responses")
    if isinstance(prompts, str):
        raise TypeError("`prompts` must be a list of strings; wrap a single prompt as [prompt].")
    if objectives is not None:
        objectives = check_unique_names(objectives, "objectives")
    settings = _run_settings(model, config, objectives or _declared_objectives(reward_fns))
    store = _RecordsFile(output_path, settings, config.num_responses) if output_path is not None else None
    unique = list(dict.fromkeys(prompts))
    todo = [p for p in unique if store is None or p not in store.done]
    if store is not None and store.done:
        io.notice(
            f"Resuming {store.path}: {len(unique) - len(todo)} of {len(unique)} prompts already sampled "
            f"({len(store.done)} prompts in the file); sampling the other {len(todo)}.",
            show=show_progress,
        )
    if config.seed is not None:
        torch.manual_seed(config.seed)
    generate_kwargs = _generate_kwargs(tokenizer, config)
    eos_ids = io.eos_token_ids(model, tokenizer)
    written: list[dict] = []
    bar = io.progress(len(todo), "sampling", unit="prompt", disable=not show_progress)
    for start in range(0, len(todo), config.batch_size):
        batch = todo[start : start + config.batch_size]
        rows = _sample_batch(model, tokenizer, batch, config, generate_kwargs, eos_ids)
        names = _score(rows, reward_fns, objectives)
        if store is not None:
            store.append(rows, names)  # one write per batch: a prompt is all-or-nothing on disk
        written += rows
        bar.update(len(batch))
    bar.close()
    return written


def _generate_kwargs(tokenizer: Any, config: SamplingConfig) -> dict[str, Any]:
    kwargs = {**config.sampling, "num_return_sequences": config.num_responses, "max_new_tokens": config.max_new_tokens}
    if tokenizer.pad_token_id is not None:
        kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
    return partial_sort_top_p_kwargs(kwargs)


def _sample_batch(model, tokenizer, batch: list[str], config: SamplingConfig, kwargs: dict, eos_ids: set[int]):
    """Records (without rewards) of ``len(batch) * N`` sampled responses, grouped by prompt."""
    encoded = io.encode_prompts(tokenizer, batch, config.chat_template)  # (b, P) left padded
    device = module_device(model)
    with torch.no_grad():
        output = model.generate(
            input_ids=encoded["input_ids"].to(device), attention_mask=encoded["attention_mask"].to(device), **kwargs
        )
    sequences = output.sequences if hasattr(output, "sequences") else output  # (b * N, P + new)
    width = encoded["input_ids"].shape[1]
    prompt_ids = [ids[mask.bool()].tolist() for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"])]
    rows = []
    for index, ids in enumerate(sequences[:, width:].tolist()):
        prompt_index = index // config.num_responses
        response_ids = io.cut_at_eos(ids, eos_ids)
        rows.append(
            {
                "prompt": batch[prompt_index],
                "prompt_ids": prompt_ids[prompt_index],
                "response": tokenizer.decode(response_ids, skip_special_tokens=True),
                "response_ids": response_ids,
            }
        )
    return rows


def _declared_objectives(reward_fns: Any) -> list[str] | None:
    """The column names when every reward function declares them (an ``objectives`` attribute, as the command
    line's ``--reward`` specs do), so the records file can be checked before anything is generated; else
    ``None`` (known after scoring the first batch)."""
    if isinstance(reward_fns, Mapping):
        return None  # a key names a single-column output only
    fns = [reward_fns] if callable(reward_fns) and not isinstance(reward_fns, Sequence) else list(reward_fns)
    declared = [getattr(fn, "objectives", None) for fn in fns]
    if not fns or any(d is None or isinstance(d, str) for d in declared):
        return None
    return [str(name) for names in declared for name in names]


def _score(rows: list[dict], reward_fns, objectives: list[str] | None) -> list[str]:
    """Adds ``row["rewards"] = {name: value}`` to every row; returns the ``G`` names."""
    from ..rewards import score_rewards

    prompts, responses = [r["prompt"] for r in rows], [r["response"] for r in rows]
    rewards, names = score_rewards(reward_fns, prompts, responses, objectives=objectives)  # (n, G)
    for row, values in zip(rows, rewards.tolist()):
        row["rewards"] = dict(zip(names, values))
    return list(names)


# ------------------------------------------------------------------------------------------------------------
# The records file and its settings
# ------------------------------------------------------------------------------------------------------------
def _policy_name(model: Any) -> str | None:
    name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    if not name:
        return None  # an in-memory model: nothing to compare
    path = Path(str(name)).expanduser()
    return str(path.resolve()) if path.exists() else str(name)


def _run_settings(model: Any, config: SamplingConfig, objectives: list[str] | None) -> dict[str, Any]:
    settings = {
        "format": _FORMAT,
        "policy": _policy_name(model),
        "num_responses": config.num_responses,
        "max_new_tokens": config.max_new_tokens,
        "sampling": config.sampling,
        "chat_template": config.chat_template,
        "objectives": objectives,
    }
    return json.loads(json.dumps(settings, default=repr))  # the form it takes on disk (tuples -> lists, ...)


def _differences(recorded: Mapping[str, Any], current: Mapping[str, Any],
                 compared: Sequence[str] = COMPARED_SETTINGS) -> list[str]:
    """``"name: old -> new"`` for each compared setting known on both sides that differs."""
    return [
        f"{key}: {json.dumps(recorded[key])} -> {json.dumps(current[key])}"
        for key in compared
        if recorded.get(key) is not None and current.get(key) is not None and recorded[key] != current[key]
    ]


class _RecordsFile:
    """An append-only records file (resumable) guarded by its settings file.

    ``compared``: the settings that must match to append (default :data:`COMPARED_SETTINGS`; the DISTILL-RMOD
    data of :mod:`.distill` compares its RMOD settings too)."""

    def __init__(self, path: str | os.PathLike, settings: dict[str, Any], num_responses: int,
                 compared: Sequence[str] = COMPARED_SETTINGS):
        self.path = Path(path)
        self.settings = settings
        self.compared = tuple(compared)
        records = _read_resumable(self.path, num_responses)
        self.done = {r["prompt"] for r in records}
        self.recorded = self._recorded_settings(records) if records else None  # None: nothing to mix with
        if self.recorded is not None:
            self._check(settings)
        self._settings_written = False

    def _recorded_settings(self, records: list[dict]) -> dict[str, Any]:
        recorded = read_settings(self.path)
        if recorded is not None:
            return recorded
        warnings.warn(
            f"{self.path} has no settings file ({settings_path(self.path).name}): only "
            "its objectives and responses per prompt can be checked against this run. The settings of this run "
            "are recorded for the next ones.",
            stacklevel=4,
        )
        return {
            "objectives": list(records[0].get("rewards", {})),
            "num_responses": max(Counter(r["prompt"] for r in records).values()),
        }

    def _check(self, current: Mapping[str, Any]) -> None:
        differences = _differences(self.recorded, current, self.compared)
        if differences:
            raise ValueError(
                f"{self.path} was sampled with other settings ({'; '.join(differences)}). Appending would mix "
                "records of different sampling settings or reward sets in one training file. Write to a new "
                f"file (another --output / output_path=), or rerun with the recorded settings "
                f"({settings_path(self.path)})."
            )

    def append(self, rows: list[dict], names: list[str]) -> None:
        if not self._settings_written:  # checked and recorded before the first append
            current = {**self.settings, "objectives": names}
            if self.recorded is not None:
                self._check(current)
            self._write_settings(current)
        io.append_jsonl(self.path, rows)

    def _write_settings(self, settings: dict[str, Any]) -> None:
        path = settings_path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        self._settings_written = True


def _read_resumable(path: Path, num_responses: int) -> list[dict]:
    """Records of ``path``; an interrupted append (a partial last line) is removed together with the incomplete
    prompt it belonged to, so that prompt is sampled again."""
    records, truncated = io.read_jsonl(path, repair=True)
    if truncated and records:
        cut = records[-1]["prompt"]
        if sum(r["prompt"] == cut for r in records) < num_responses:
            records = [r for r in records if r["prompt"] != cut]
            io.write_jsonl(path, records)
    return records
