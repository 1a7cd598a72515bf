"""Rewarded Soups (Ramé et al., 2023): one policy whose parameters are a weighted average of G policies.

.. math::

    \\theta_{\\text{soup}} = \\sum_{g=1}^{G} w_g \\, \\theta_g, \\qquad w_g \\ge 0, \\quad \\sum_g w_g = 1,

where each :math:`\\theta_g` is fine-tuned from the same initialisation for one objective. The soup decodes at
the cost of a single policy. The RMOD paper (§6, App. C) compares with RS at the (harmless, helpful) weightings
(1, 0), (0.8, 0.2), …, (0, 1).

```python
>>> soup = rewarded_soup([harmless_policy, helpful_policy], weights=[0.8, 0.2])  # doctest: +SKIP
>>> soup.generate(ids, do_sample=True, max_new_tokens=64)  # doctest: +SKIP
```
"""

from __future__ import annotations

import copy
import math
from typing import Any, Sequence

import torch
from torch import nn

from ._weights import as_weight_list, check_policies

__all__ = ["rewarded_soup"]

# Config entries that say how a model was saved or is run, not what its weights compute: allowed to differ.
_RUNTIME_CONFIG_KEYS = frozenset({
    "_name_or_path", "name_or_path", "transformers_version", "architectures", "dtype", "torch_dtype", "use_cache",
    "_commit_hash", "_attn_implementation", "_attn_implementation_internal", "attn_implementation",
    "_experts_implementation", "output_attentions", "output_hidden_states", "return_dict",
})
_SUM_TOLERANCE = 1e-6


def rewarded_soup(policies: Sequence[nn.Module], weights: Sequence[float]) -> nn.Module:
    """A new model whose floating-point parameters (and buffers) are ``Σ_g weights[g] · policies[g]``.

    The result is a deep copy of ``policies[0]`` (its class, config, generation config, device, dtype and
    train/eval mode) with every floating-point parameter and floating-point buffer replaced by the weighted
    average, computed in at least float32 and cast back to the parameter's dtype. Tied parameters (e.g.
    ``lm_head.weight`` tied to the input embeddings) are one parameter and are averaged once, so the soup stays
    tied. Integer / bool buffers are the first policy's; integer (e.g. quantized) parameters must be equal across
    policies. The inputs are never modified.

    Args:
        policies: G ≥ 1 models of the same class and config, with the same parameter names and shapes
            (typically fine-tuned from one reference policy, one per objective).
        weights: G non-negative numbers summing to 1, in the order of `policies`.

    Returns:
        The soup model (a new object; no parameter is shared with any input).

    Raises:
        TypeError / ValueError: `policies` or `weights` are malformed, or the policies differ in class, config,
            parameter names, shapes or dtypes (the message names the first difference).
    """
    policies = check_policies(policies)
    w = _simplex_weights(weights, len(policies))
    for g in range(1, len(policies)):
        _check_same_architecture(policies[0], policies[g], g)
    soup = copy.deepcopy(policies[0])
    sources = [_named_tensors(p) for p in policies]  # per policy: {name: tensor}
    with torch.no_grad():
        for name, target in _named_tensors(soup).items():
            _average_into(target, [src[name] for src in sources], w, name)
    return soup


# ---------------------------------------------------------------------------------------------------- helpers
def _simplex_weights(weights: Any, n: int) -> list[float]:
    """`weights` as `n` non-negative floats summing to 1 (within 1e-6), or a ValueError naming the fix."""
    values = as_weight_list(weights, n)
    negative = [v for v in values if v < 0]
    if negative:
        raise ValueError(
            f"`weights` must be non-negative (a soup interpolates, it does not extrapolate), got {values}; "
            f"e.g. weights=[0.8, 0.2]."
        )
    total = math.fsum(values)
    if abs(total - 1.0) > _SUM_TOLERANCE:
        hint = f"; normalised they would be {[v / total for v in values]}" if total > 0 else ""
        raise ValueError(f"`weights` must sum to 1, got {values} (sum {total}){hint}.")
    return values


def _named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """{name: tensor} of the parameters and buffers, each tied/shared tensor once (under its first name)."""
    out = dict(model.named_parameters())
    out.update(model.named_buffers())
    return out


def _check_same_architecture(first: nn.Module, other: nn.Module, index: int) -> None:
    """Raise naming the first difference between ``policies[0]`` and ``policies[index]``."""
    if type(other) is not type(first):
        raise ValueError(
            f"`policies[{index}]` is a {type(other).__name__} but `policies[0]` is a {type(first).__name__}: a soup "
            "averages parameters, so every policy must have the same architecture (fine-tune each from one model)."
        )
    _check_same_config(first, other, index)
    a, b = _named_tensors(first), _named_tensors(other)
    if list(a) != list(b):
        only_a, only_b = [n for n in a if n not in b], [n for n in b if n not in a]
        if only_a or only_b:
            where = (f"`{only_a[0]}` is in policies[0] only" if only_a else f"`{only_b[0]}` is in policies[{index}] only")
        else:
            where = "the same names come in another order"
        raise ValueError(
            f"`policies[{index}]` and `policies[0]` have different parameter names: {where} "
            f"(tied weights must be tied in every policy)."
        )
    for name, ta in a.items():
        tb = b[name]
        if ta.shape != tb.shape:
            raise ValueError(
                f"Parameter `{name}` has shape {tuple(tb.shape)} in `policies[{index}]` but {tuple(ta.shape)} in "
                "`policies[0]`: a soup needs identical shapes (was one model's vocabulary resized?)."
            )
        if ta.dtype.is_floating_point != tb.dtype.is_floating_point:
            raise ValueError(
                f"Parameter `{name}` is {tb.dtype} in `policies[{index}]` but {ta.dtype} in `policies[0]`: load every "
                "policy unquantized, in a floating-point dtype, before making a soup."
            )


def _check_same_config(first: nn.Module, other: nn.Module, index: int) -> None:
    """Same config up to runtime-only entries (name, dtype, attention implementation, ...)."""
    ca, cb = getattr(first, "config", None), getattr(other, "config", None)
    if ca is None or cb is None or not hasattr(ca, "to_dict"):
        return
    da, db = ca.to_dict(), cb.to_dict()
    for key in sorted(set(da) | set(db)):
        if key in _RUNTIME_CONFIG_KEYS:
            continue
        if da.get(key) != db.get(key):
            raise ValueError(
                f"`policies[{index}].config.{key}` is {db.get(key)!r} but `policies[0].config.{key}` is "
                f"{da.get(key)!r}: a soup needs policies of one architecture and config (fine-tune each from the "
                "same reference policy)."
            )


def _average_into(target: torch.Tensor, sources: list[torch.Tensor], weights: list[float], name: str) -> None:
    """``target[...] = Σ_g weights[g] · sources[g]`` (floating point); other dtypes must already agree."""
    if not target.dtype.is_floating_point:
        if not all(torch.equal(s.to(target.device), sources[0].to(target.device)) for s in sources[1:]):
            if isinstance(target, nn.Parameter):
                raise ValueError(
                    f"Parameter `{name}` is {target.dtype} (quantized?) and differs between policies: it cannot be "
                    "averaged. Load the policies unquantized before making a soup."
                )
        return  # integer / bool buffers: the first policy's (already in the deep copy)
    acc_dtype = torch.promote_types(target.dtype, torch.float32)
    acc = torch.zeros(target.shape, dtype=acc_dtype, device=target.device)  # same shape as the parameter
    for w, src in zip(weights, sources):
        if w != 0.0:  # a zero weight contributes nothing (and never turns an inf into nan)
            acc.add_(src.to(device=target.device, dtype=acc_dtype), alpha=w)
    target.copy_(acc)
