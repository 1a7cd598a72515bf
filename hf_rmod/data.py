"""Offline data: the development data folder, JSONL data files and prompts, and the sampling default.

- :func:`data_dir` / :func:`data_file` find the development data in ``../shared/data`` next to the project root
  (``HF_RMOD_DATA_DIR`` overrides), which is absent on user machines.
- :func:`read_prompts` reads prompts from a JSONL file or a data-folder file, :func:`load_jsonl_prompts` from a
  data-folder file; :func:`iter_jsonl` yields the values of a JSONL data file with their line numbers.
- :data:`DEFAULT_SAMPLING`: how the shipped value models' training data was sampled, and so the sampling of the
  demo, the evaluation and the benchmarks.

The lowest floor of the package: standard library only (no torch), imported by the defaults, the rewards and
the pipelines alike.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

__all__ = ["DATA_DIR_ENV", "DEFAULT_SAMPLING", "data_dir", "data_file", "iter_jsonl", "load_jsonl_prompts",
           "read_prompts"]

#: Environment variable overriding the data folder (default: ``<project root>/../shared/data``).
DATA_DIR_ENV = "HF_RMOD_DATA_DIR"
_PROJECT_ROOT = Path(__file__).resolve().parent.parent

#: The sampling distribution used everywhere by default (``generate`` arguments): the demo, the training data of the
#: value models (``hf-rmod sample``), the evaluation and the benchmarks. ``top_k=0`` because transformers 5 applies
#: ``top_k=50`` when it is unset. Sample the training data with the settings you will decode with.
DEFAULT_SAMPLING: Mapping[str, Any] = {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 0}


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

    The same reader as every pipeline's (:func:`read_prompts`).

    Args:
        name: file name, with or without ``.jsonl`` (e.g. ``"hh_harmless_dev_prompts"``).
        limit: keep the first ``limit`` rows.
        field: the JSON key holding the prompt.

    Raises:
        FileNotFoundError: no data folder or no such file (the message says where it looked).
        ValueError: a row without a string ``field`` (``file:line`` named).
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"`limit` must be a non-negative int or None, got {limit!r}.")
    return read_prompts(data_file(name), field=field, limit=limit)


def read_prompts(source: str | os.PathLike, field: str = "prompt", limit: int | None = None) -> list[str]:
    """Prompts from a JSONL file, or from a file of the data folder (:func:`data_dir`).

    Each non-empty line is a JSON string or an object whose ``field`` is a string.

    Args:
        source: a path to a ``.jsonl`` file, or the name of a file in the data folder, with or without
            ``.jsonl`` (e.g. ``"hh_harmless_dev_prompts"``).
        field: the key holding the prompt in object lines.
        limit: keep the first ``limit`` prompts.

    Raises:
        FileNotFoundError: neither a file nor a data-folder file of that name (the message says where it
            looked).
        ValueError: a line that is not a string or an object with a string ``field`` (``file:line`` named).
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"`limit` must be a non-negative int or None, got {limit!r}.")
    path = _prompt_file(source)
    prompts: list[str] = []
    if limit == 0:
        return prompts
    for number, value in iter_jsonl(path):  # lazily: nothing after the limit is read
        if isinstance(value, dict) and isinstance(value.get(field), str):
            value = value[field]
        if not isinstance(value, str):
            keys = sorted(value) if isinstance(value, dict) else type(value).__name__
            raise ValueError(
                f"{path}:{number}: expected a JSON string or an object with a string {field!r} field, got {keys}; "
                "pass the right field name (--prompt-field / field=)."
            )
        prompts.append(value)
        if limit is not None and len(prompts) >= limit:
            break
    return prompts


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` of every non-blank line of a JSONL data file, read lazily.

    A line that is not JSON raises ``ValueError("<path>:<line> is not valid JSON (...)")``: unlike the append logs
    of :func:`read_jsonl`, a data file has no interrupted last line to forgive.
    """
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number} is not valid JSON ({err}).") from err
            yield number, value


def _prompt_file(source: str | os.PathLike) -> Path:
    path = Path(source).expanduser()
    if path.is_file():
        return path
    name = os.fspath(source)
    if os.sep in name or name.startswith((".", "~")) or (os.altsep is not None and os.altsep in name):
        raise FileNotFoundError(f"No prompt file {name!r}: no such file.")
    try:
        return data_file(name)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"No prompt file {name!r}: it is not a file, and {err}") from None
