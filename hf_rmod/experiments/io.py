"""Small jobs every pipeline shares, written once: JSONL files, prompts, encoding, EOS cutting, progress, devices.

- :func:`read_jsonl` / :func:`write_jsonl` / :func:`append_jsonl`: append-only JSONL files of resumable runs
  (an interrupted last line is dropped, and cut from the file with ``repair=True``).
- :func:`iter_jsonl` / :func:`read_prompts`: re-exported from :mod:`hf_rmod.data` (JSONL data files, prompts).
- :func:`encode_prompts`: user prompts -> a left-padded batch (chat template or plain text).
- :func:`eos_token_ids` / :func:`cut_at_eos`: where a sampled response ends.
- :func:`progress`: a tqdm bar. :func:`notice`: a one-line status message (stderr, or the log when quiet).
  :func:`default_device`: the device rule of every subcommand.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..data import iter_jsonl, read_prompts  # noqa: F401 - re-exported (moved to hf_rmod.data)

__all__ = [
    "append_jsonl",
    "cut_at_eos",
    "default_device",
    "encode_prompts",
    "eos_token_ids",
    "notice",
    "progress",
    "read_jsonl",
    "read_prompts",
    "write_jsonl",
]


# ------------------------------------------------------------------------------------------------------------
# JSONL
# ------------------------------------------------------------------------------------------------------------
def read_jsonl(path: str | os.PathLike, *, repair: bool = False) -> tuple[list[dict], bool]:
    """Rows of a JSONL file that is written by appends.

    A partial last line (an interrupted append) is dropped; with ``repair`` it is also cut from the
    file so that appending can continue. Any other invalid line raises ``ValueError`` naming it.

    Returns:
        ``(rows, truncated)``: the parsed rows and whether a partial last line was found. A missing file
        gives ``([], False)``.
    """
    path = Path(path)
    if not path.exists():
        return [], False
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")  # a file ending in "\n" gives a last, empty element
    rows: list[dict] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):  # last line without a newline: an interrupted write
                if repair:
                    path.write_text(text[: len(text) - len(line)], encoding="utf-8")
                return rows, True
            raise ValueError(
                f"{path}:{number} is not valid JSON ({err}); delete that line (the row is then recomputed)."
            ) from err
    return rows, False


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Replace the file's content with ``rows``, one JSON object per line."""
    Path(path).write_text("".join(f"{json.dumps(r)}\n" for r in rows), encoding="utf-8")


def append_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Append ``rows`` in ONE write (a batch is all-or-nothing on disk), creating folders as needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write("".join(f"{json.dumps(r)}\n" for r in rows))


# ------------------------------------------------------------------------------------------------------------
# Prompts
# ------------------------------------------------------------------------------------------------------------
def encode_prompts(tokenizer: Any, prompts: Sequence[str], chat_template: bool = True) -> Any:
    """User prompts -> a left-padded ``BatchEncoding``: ``input_ids`` / ``attention_mask`` of shape ``(n, T)``.

    With ``chat_template`` each prompt becomes a user turn of the tokenizer's chat template (generation prompt
    appended, no extra special tokens); else the text is tokenized as is (with the tokenizer's special tokens).
    """
    if chat_template:
        from ..defaults import build_chat_prompts

        return build_chat_prompts(tokenizer, list(prompts))
    if tokenizer.pad_token is None:
        raise ValueError("The tokenizer has no pad token; set `tokenizer.pad_token = tokenizer.eos_token` first.")
    return tokenizer(list(prompts), padding=True, padding_side="left", return_tensors="pt")


# ------------------------------------------------------------------------------------------------------------
# Responses
# ------------------------------------------------------------------------------------------------------------
def eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """Every id that ends a response: the model's generation-config EOS ids and the tokenizer's EOS id."""
    ids: set[int] = set()
    config = getattr(model, "generation_config", None)
    for eos in (getattr(config, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if eos is not None:
            ids.update([int(eos)] if isinstance(eos, int) else (int(e) for e in eos))
    return ids


def cut_at_eos(ids: Sequence[int], eos_ids: set[int]) -> list[int]:
    """Generated ids -> the response: up to and including the first EOS (the padding after it dropped)."""
    for index, token in enumerate(ids):
        if token in eos_ids:
            return list(ids[: index + 1])
    return list(ids)


# ------------------------------------------------------------------------------------------------------------
# Progress and devices
# ------------------------------------------------------------------------------------------------------------
def progress(total: int, desc: str, *, unit: str = "it", disable: bool = False):
    """A tqdm progress bar (``disable=True``: silent)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=disable)


def notice(message: str, *, show: bool = True) -> None:
    """A one-line status message of a pipeline ("resuming ...", "epoch 2: ...").

    Printed to stderr when ``show`` (the pipelines pass their ``show_progress``), else logged at INFO level
    on the ``hf_rmod`` logger, so a quiet run stays quiet unless logging is configured.
    """
    if show:
        print(message, file=sys.stderr, flush=True)
    else:
        logging.getLogger("hf_rmod").info(message)


def default_device(device: Any = None) -> Any:
    """The device rule of every subcommand: ``device`` when given, else ``cuda`` when available, else ``cpu``."""
    import torch

    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
