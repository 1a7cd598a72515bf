"""The records of :func:`~hf_rmod.experiments.sampling.sample_responses`: reading, checking and splitting them.

A records file is JSONL, one sampled response per line: ``{"prompt", "prompt_ids", "response",
"response_ids", "rewards": {objective: float}}``. Next to ``records.jsonl``, ``records.jsonl.settings.json``
records what the file was sampled with (:func:`settings_path` / :func:`read_settings`; written and checked by
``sample_responses``, shown in the model card of a head trained on the file).

- :func:`load_records`: records from a file or memory, checked (fields; every record has the same objectives
  unless ``allow_missing``); a :class:`RecordList` remembering its file.
- :func:`common_objectives`: the objectives every record has.
- :func:`split_by_prompt`: train/validation indices with each prompt on one side.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Iterable, Sequence

from . import io

__all__ = [
    "SETTINGS_SUFFIX",
    "RecordList",
    "common_objectives",
    "load_records",
    "read_settings",
    "settings_path",
    "split_by_prompt",
]

#: Suffix of the settings file written next to a records file: ``records.jsonl`` -> ``records.jsonl.settings.json``.
SETTINGS_SUFFIX = ".settings.json"
_REQUIRED = ("prompt", "prompt_ids", "response_ids", "rewards")


def settings_path(output_path: str | os.PathLike) -> Path:
    """The settings file of a records file: ``records.jsonl`` -> ``records.jsonl.settings.json``."""
    path = Path(output_path)
    return path.with_name(path.name + SETTINGS_SUFFIX)


def read_settings(output_path: str | os.PathLike) -> dict | None:
    """The settings a records file was sampled with (its settings file), or ``None`` when it has none."""
    path = settings_path(output_path)
    if not path.exists():
        return None
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); delete it to rewrite it from this run's settings.") from err
    if not isinstance(settings, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(settings).__name__}; delete it to rewrite it.")
    return settings



class RecordList(list):
    """The records of :func:`load_records`: a list that remembers where it came from.

    Attributes:
        source: the JSONL path the records were read from (``None``: built in memory).
        settings: the sampling settings recorded next to that file (``None``: not recorded).
    """

    source: str | None = None
    settings: dict | None = None


def load_records(
    records_or_path: str | os.PathLike | Iterable[dict],
    objectives: Sequence[str] | None = None,
    *,
    allow_missing: bool = False,
) -> RecordList:
    """Records from a JSONL file written by :func:`~hf_rmod.experiments.sampling.sample_responses`, or an
    iterable of such dicts, checked.

    Args:
        records_or_path: a JSONL path, or records.
        objectives: reward names every record must have (e.g. the head's objectives).
        allow_missing: by default every record must have the same objectives as the first one (a file mixing
            reward sets is an error naming the record and the objective). ``True`` accepts such a file; train
            on :func:`common_objectives` (the command line's ``--objectives common``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: no records, a record lacking a field, or the objectives checks above (naming the record index
            and the objective).
    """
    if isinstance(records_or_path, (str, os.PathLike)):
        path = Path(records_or_path)
        if not path.exists():
            raise FileNotFoundError(f"Records file {str(path)!r} does not exist; create it with `hf-rmod sample`.")
        rows, _ = io.read_jsonl(path)  # an interrupted last line is skipped
        records = RecordList(rows)
        records.source, records.settings = str(path), read_settings(path)
    else:
        records = RecordList(records_or_path)
        records.source = getattr(records_or_path, "source", None)
        records.settings = getattr(records_or_path, "settings", None)
    if not records:
        raise ValueError("No training records: sample some with `hf-rmod sample` / sample_responses() first.")
    for index, record in enumerate(records):
        missing = [key for key in _REQUIRED if not isinstance(record, dict) or key not in record]
        if missing:
            raise ValueError(f"Record {index} lacks {missing}; records need {list(_REQUIRED)}.")
    if not allow_missing:
        _check_same_objectives(records)
    if objectives is not None:
        _check_has_objectives(records, list(objectives))
    return records


def common_objectives(records: Sequence[dict]) -> list[str]:
    """The objectives every record has, in the first record's order."""
    names = [name for name in records[0]["rewards"] if all(name in r["rewards"] for r in records)]
    if not names:
        raise ValueError("The records share no objective: there is nothing to train on; sample with one reward set.")
    return names


def _check_same_objectives(records: Sequence[dict]) -> None:
    reference = list(records[0]["rewards"])
    for index, record in enumerate(records):
        names = list(record["rewards"])
        if set(names) == set(reference):
            continue
        missing = [o for o in reference if o not in names]
        extra = [o for o in names if o not in reference]
        what = f"lacks objective {missing[0]!r}" if missing else f"has objective {extra[0]!r}, which record 0 lacks"
        common = [o for o in reference if all(o in r["rewards"] for r in records)]
        raise ValueError(
            f"Record {index} {what}: it has {names} while record 0 has {reference}. The records were scored with "
            "different reward sets (e.g. several `hf-rmod sample` runs into one file). Sample into a new file with "
            "one reward set, or pass allow_missing=True (`hf-rmod train-value --objectives common`) to train on "
            f"the objectives every record has: {common}."
        )


def _check_has_objectives(records: Sequence[dict], objectives: list[str]) -> None:
    for index, record in enumerate(records):
        absent = [o for o in objectives if o not in record["rewards"]]
        if absent:
            raise ValueError(
                f"Record {index} has rewards for {sorted(record['rewards'])} but not {absent[0]!r} (wanted: "
                f"{objectives}); sample with reward functions for every objective, or train on the objectives the "
                "records have."
            )


def split_by_prompt(records: Sequence[dict], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices ``(train, val)`` with every prompt's responses on one side only."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"`val_fraction` must be in [0, 1), got {val_fraction}.")
    prompts = sorted({r["prompt"] for r in records})
    random.Random(seed).shuffle(prompts)
    num_val = int(round(val_fraction * len(prompts)))
    if val_fraction > 0 and num_val == 0:
        num_val = 1
    if num_val >= len(prompts) and val_fraction > 0:
        raise ValueError(
            f"Only {len(prompts)} distinct prompt(s): cannot hold out {val_fraction:.0%} of them for validation "
            "and still train. Sample more prompts or pass val_fraction=0."
        )
    val_prompts = set(prompts[:num_val])
    train = [i for i, r in enumerate(records) if r["prompt"] not in val_prompts]
    val = [i for i, r in enumerate(records) if r["prompt"] in val_prompts]
    return train, val
