"""Append-only JSONL files shared by the sampling and evaluation pipelines (resumable runs)."""

from __future__ import annotations

import json
from pathlib import Path


def read_jsonl(path: Path, *, repair: bool = False) -> tuple[list[dict], bool]:
    """Rows of a JSONL file that is written by appends.

    A partial last line (an interrupted append) is dropped; with ``repair`` it is also cut from the
    file so that appending can continue. Any other invalid line raises ``ValueError`` naming it.

    Returns:
        ``(rows, truncated)``: the parsed rows and whether a partial last line was found.
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


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """Replace the file's content with ``rows``, one JSON object per line."""
    Path(path).write_text("".join(f"{json.dumps(r)}\n" for r in rows), encoding="utf-8")
