"""Checking the per-policy weights of the baselines (one copy of the job for soups and MOD)."""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["as_weight_list", "check_policies"]


def check_policies(policies: Any, argument: str = "policies") -> list:
    """`policies` as a non-empty list of `torch.nn.Module` (a bare model is a `TypeError` naming the fix)."""
    if isinstance(policies, torch.nn.Module):
        raise TypeError(
            f"`{argument}` must be a list of models, got a single {type(policies).__name__}; "
            f"pass {argument}=[policy_a, policy_b]."
        )
    try:
        policies = list(policies)
    except TypeError:
        raise TypeError(
            f"`{argument}` must be a list of models, got {type(policies).__name__}; pass {argument}=[policy_a, policy_b]."
        ) from None
    if not policies:
        raise ValueError(f"`{argument}` is empty: pass at least one model, e.g. {argument}=[policy_a, policy_b].")
    for i, policy in enumerate(policies):
        if not isinstance(policy, torch.nn.Module):
            raise TypeError(f"`{argument}[{i}]` must be a torch/transformers model, got {type(policy).__name__}.")
    return policies


def as_weight_list(weights: Any, n: int, argument: str = "weights") -> list[float]:
    """`weights` as a list of `n` finite floats (a list, tuple or 1-D tensor); errors name the value and the fix."""
    if isinstance(weights, torch.Tensor):
        if weights.dim() != 1:
            raise ValueError(f"`{argument}` must be 1-D (one weight per policy), got a tensor of shape {tuple(weights.shape)}.")
        weights = weights.tolist()
    if isinstance(weights, (str, bytes)) or not hasattr(weights, "__iter__"):
        raise TypeError(f"`{argument}` must be a list of numbers (one per policy), got {weights!r}; e.g. {argument}=[0.8, 0.2].")
    try:
        values = [float(w) for w in weights]
    except (TypeError, ValueError):
        raise TypeError(f"`{argument}` must hold numbers, got {list(weights)!r}; e.g. {argument}=[0.8, 0.2].") from None
    if len(values) != n:
        raise ValueError(
            f"`{argument}` has {len(values)} entries {values} but there are {n} policies: pass one weight per policy, "
            f"in the same order."
        )
    bad = [w for w in values if not math.isfinite(w)]
    if bad:
        raise ValueError(f"`{argument}` must be finite, got {values} (non-finite: {bad}).")
    return values
