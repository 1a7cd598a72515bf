"""Small private helpers shared by the core and the pipelines (one copy of each job).

* :func:`module_device` — the device of a module's first parameter (CPU when it has none).
* :func:`resolve_device` — a device spec (``"cpu"``, ``"cuda:0"``, a `torch.device`, ``None``) as a `torch.device`.
* :func:`check_unique_names` — the "names must be a non-empty list of unique, non-empty strings" check.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["check_unique_names", "module_device", "resolve_device"]


def module_device(module: nn.Module) -> torch.device:
    """The device of `module`'s first parameter, or CPU when it has no parameters."""
    for param in module.parameters():
        return param.device
    return torch.device("cpu")


def resolve_device(spec: str | torch.device | None) -> torch.device:
    """``None`` -> CPU; a string or `torch.device` -> that device."""
    return torch.device(spec) if spec is not None else torch.device("cpu")


def check_unique_names(
    names: Any,
    argument: str,
    *,
    kind: str = "objective names",
    if_empty: str = "pass at least one name",
    if_duplicate: str = "rename or drop the repeated ones",
) -> list[str]:
    """`names` as a list after checking it is a non-empty sequence of unique, non-empty strings.

    Args:
        names: the value to check (any iterable of strings; a bare string is a `TypeError`).
        argument: the argument's name as the user typed it, e.g. ``"objectives"``; used in every message.
        kind: what the names are, for the duplicates message (``"Duplicate objective names [...]"``).
        if_empty: the fix shown when `names` is empty.
        if_duplicate: the fix shown when `names` has duplicates.

    Raises:
        TypeError: `names` is a string or not iterable, or holds something other than strings.
        ValueError: `names` is empty, holds an empty string, or has duplicates (all are listed).
    """
    if isinstance(names, str):
        raise TypeError(
            f"`{argument}` must be a list of names, got the string {names!r}; "
            f"use {argument}=[{names!r}] for a single name."
        )
    try:
        names = list(names)
    except TypeError:
        raise TypeError(
            f"`{argument}` must be a list of names, got {type(names).__name__}; e.g. {argument}=['helpful', 'harmless']."
        ) from None
    if not names:
        raise ValueError(f"`{argument}` is empty: {if_empty}.")
    not_str = [name for name in names if not isinstance(name, str)]
    if not_str:
        raise TypeError(
            f"`{argument}` must hold strings, got {not_str!r} in {names!r}; e.g. {argument}=['helpful', 'harmless']."
        )
    if any(not name for name in names):
        raise ValueError(f"`{argument}` must hold non-empty strings, got {names!r}.")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(
            f"Duplicate {kind} {duplicates} in `{argument}` {names}: `{argument}` must be unique; {if_duplicate}."
        )
    return names
