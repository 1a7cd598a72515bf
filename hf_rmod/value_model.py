"""The value-model protocol: what RMOD needs from a multi-objective value model, whatever computes the values.

Two families implement it: :class:`~hf_rmod.MultiValueHead` (a ``G``-output head on the policy's hidden states or
on its own backbone, read from token ids) and :class:`~hf_rmod.RewardValueModel` (reward functions or the MiniLM
text value model, read from the decoded partial text). Decoding (:mod:`hf_rmod.generation`), scoring
(:func:`hf_rmod.scoring.make_scorer`), the evaluation and its summary each call the protocol, never a family;
:func:`hf_rmod.defaults.load_value_model` loads either family from a folder.

Example:

>>> from hf_rmod.value_model import ValueModel
>>> class Constant:  # a value model that values every block the same (for illustration)
...     objectives = ["harmless", "helpful"]
...     normalization = None
...     sampling_settings = None
...     def check_policy(self, policy, tokenizer=None): pass
...     def prepare(self, policy, cfg=None, *, owned=False): pass
...     def build_scorer(self, policy, cfg=None): raise NotImplementedError
...     def warn_if_sampling_differs(self, generation_config, max_new_tokens=None, policy=None): return []
>>> isinstance(Constant(), ValueModel)
True
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Protocol, Sequence, runtime_checkable

__all__ = ["ValueModel", "warn_if_sampling_differs"]


@runtime_checkable
class ValueModel(Protocol):
    """A multi-objective value model ``V(x, y^t)`` with ``G`` outputs, as RMOD uses it.

    Attributes:
        objectives (`list[str]`): the ``G`` objective names, in value-column order.
        normalization (`tuple[list[float], list[float]]` or `None`): per objective, the ``(mean, std)`` of the
            final rewards the values are z-scored with (values are in normalised units); ``None`` when the values
            are in reward units. The evaluation z-scores the rewards with it.
        sampling_settings (`dict` or `None`): the sampling distribution the value model was fit under (``policy``,
            ``temperature``, ``top_p``, ``max_new_tokens``, ...), when known.
    """

    objectives: Sequence[str]
    normalization: tuple[list[float], list[float]] | None
    sampling_settings: dict | None

    def check_policy(self, policy: Any, tokenizer: Any = None) -> None:
        """Raise ``ValueError`` (naming both sides and the fix) if this value model cannot score ``policy``'s
        generations (``tokenizer``: the policy's, when known)."""

    def prepare(self, policy: Any, cfg: Any = None, *, owned: bool = False) -> None:
        """Ready the value model for decoding ``policy`` with the `RMODConfig` ``cfg``: check it (unless ``cfg``
        gives it its own tokenizer) and place it where it scores. ``owned``: RMOD loaded it from a path, so it may
        move it; a caller's object is never moved."""

    def build_scorer(self, policy: Any, cfg: Any = None) -> Any:
        """The :class:`~hf_rmod.scoring.Scorer` that values the candidate blocks of one ``generate`` call: its
        ``block_values(block_ids, block_real)`` returns ``(rows, G)`` values at the end of every block (``rows``
        = batch * K while candidates are compared)."""

    def warn_if_sampling_differs(self, generation_config: Any, max_new_tokens: int | None = None,
                                 policy: Any = None) -> list[str]:
        """Warn once when decoding samples from another distribution than :attr:`sampling_settings`; returns the
        differences (``"name: recorded -> now"``)."""


def warn_if_sampling_differs(owner: Any, what: str, recorded: dict | None, generation_config: Any,
                             max_new_tokens: int | None = None, policy: Any = None) -> list[str]:
    """The differences between the ``recorded`` sampling settings a value model was trained under and this call;
    warns once per ``owner`` and set of differences. Shared by value heads and text value models."""
    if not recorded:
        return []
    differences = _sampling_differences(recorded, generation_config, max_new_tokens, policy)
    if differences:
        message = (
            f"{what} was trained on responses sampled with other settings than this call ({'; '.join(differences)}; "
            "recorded -> now). Its values estimate rewards under the recorded distribution; decode with the recorded "
            "settings or train a value model on records sampled like this call."
        )
        key = (id(owner), message)
        if key not in _SAMPLING_WARNED:
            _SAMPLING_WARNED.add(key)
            warnings.warn(message, UserWarning, stacklevel=4)
    return differences


_SAMPLING_WARNED: set = set()
# generate()'s effective value of an unset argument: differences are judged on effective values.
_NEUTRAL = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "typical_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.0}


def _sampling_differences(recorded: dict, generation_config: Any, max_new_tokens: int | None, policy: Any) -> list[str]:
    """``"name: recorded -> now"`` for each recorded sampling setting the call does differently."""
    out = []
    for key, old in recorded.items():
        if key in ("chat_template", "num_responses", "policy", "max_new_tokens", "objectives", "format"):
            continue
        if not hasattr(generation_config, key) or isinstance(old, (dict, list)):
            continue
        new = getattr(generation_config, key)
        old_eff, new_eff = _NEUTRAL.get(key, old) if old is None else old, _NEUTRAL.get(key, new) if new is None else new
        if isinstance(old_eff, (int, float)) and isinstance(new_eff, (int, float)) and not isinstance(old_eff, bool):
            same = abs(float(old_eff) - float(new_eff)) <= 1e-6 * max(1.0, abs(float(old_eff)))
        else:
            same = old_eff == new_eff
        if not same:
            out.append(f"{key}: {old!r} -> {new!r}")
    if max_new_tokens is not None and recorded.get("max_new_tokens") is not None:
        if int(recorded["max_new_tokens"]) != int(max_new_tokens):
            out.append(f"max_new_tokens: {recorded['max_new_tokens']!r} -> {int(max_new_tokens)!r}")
    old_policy = recorded.get("policy")
    new_policy = None if policy is None else _policy_id(policy)
    if old_policy and new_policy and _normalise_id(old_policy) != _normalise_id(new_policy):
        out.append(f"policy: {old_policy!r} -> {new_policy!r}")
    return out


def _policy_id(policy: Any) -> str | None:
    name = getattr(policy, "name_or_path", None) or getattr(getattr(policy, "config", None), "_name_or_path", None)
    return str(name) if name else None


def _normalise_id(name: str) -> str:
    path = os.path.expanduser(str(name))
    return os.path.realpath(path) if os.path.exists(path) else str(name)
