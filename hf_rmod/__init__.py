"""hf_rmod: Robust Multi-Objective Decoding (RMOD) for Hugging Face causal language models.

Per decoding block, RMOD samples K candidate blocks from the unchanged reference model, scores each
with a multi-objective value model, solves a small convex problem for the worst-case objective
weights ``w*`` and keeps the candidate with the largest ``w* · V``.

Two ways to run it on any transformers causal LM:

* ``hf_rmod.generate(model, input_ids, rmod_config=cfg, max_new_tokens=64, do_sample=True)`` — one call, no setup;
* ``hf_rmod.enable(model)`` once, then ``model.generate(input_ids, rmod_config=cfg, ...)``. Without ``enable``,
  transformers rejects the argument with "The following `model_kwargs` are not used by the model:
  ['rmod_config']" (transformers offers no hook to add a hint to that message).

The public names load lazily (PEP 562): ``import hf_rmod`` costs a few milliseconds, torch and transformers
load on first use of a name (so ``hf-rmod --help`` starts at once). Importing :class:`MultiValueHead` (or
anything from ``hf_rmod.modeling_value_head``) registers the value-head classes with ``AutoConfig`` /
``AutoModel``: write ``from hf_rmod import MultiValueHead`` before ``AutoModel.from_pretrained(<value head>)``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> submodule that defines it
_EXPORTS = {
    "generate": "generation",
    "enable": "generation",
    "is_enabled": "generation",
    "RMODOutput": "generation",
    "RobustMultiObjectiveGenerator": "generation",
    "RMODConfig": "config",
    "Scorer": "scoring",
    "make_scorer": "scoring",
    "RewardValueModel": "reward_values",
    "ValueModel": "value_model",
    "load_value_model": "defaults",
    "MultiValueHead": "modeling_value_head",
    "MultiValueHeadConfig": "configuration_value_head",
    "MultiValueHeadOutput": "modeling_value_head",
    "SolverResult": "solver",
    "solve_weights": "solver",
    "HFRewardModel": "rewards",
    "RewardFunction": "rewards",
    "score_rewards": "rewards",
    "load_reward_functions": "rewards",
    "MetricSummary": "metrics",
    "bootstrap_ci": "metrics",
    "mean_rewards": "metrics",
    "summarize": "metrics",
    "worst_case_reward": "metrics",
    "worst_case_win_rate": "metrics",
    "worst_objective_of_mean": "metrics",
    "paired_comparison": "metrics",
    "PairedComparison": "metrics",
    "rewarded_soup": "baselines",
    "mod_generate": "baselines",
    "distill_rmod": "experiments.distill",
    "DistillConfig": "experiments.configs",
    "select_best_responses": "experiments.objective_policies",
    "train_objective_policies": "experiments.objective_policies",
    "ObjectivePolicyConfig": "experiments.configs",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hf_rmod' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # static analysers and IDEs see the eager imports
    from .config import RMODConfig
    from .configuration_value_head import MultiValueHeadConfig
    from .generation import RMODOutput, RobustMultiObjectiveGenerator, enable, generate, is_enabled
    from .metrics import (
        MetricSummary,
        PairedComparison,
        bootstrap_ci,
        mean_rewards,
        paired_comparison,
        summarize,
        worst_case_reward,
        worst_case_win_rate,
        worst_objective_of_mean,
    )
    from .modeling_value_head import MultiValueHead, MultiValueHeadOutput
    from .defaults import load_value_model
    from .reward_values import RewardValueModel
    from .rewards import HFRewardModel, RewardFunction, load_reward_functions, score_rewards
    from .scoring import Scorer, make_scorer
    from .solver import SolverResult, solve_weights
    from .value_model import ValueModel
    from .baselines import mod_generate, rewarded_soup
    from .experiments.configs import DistillConfig, ObjectivePolicyConfig
    from .experiments.distill import distill_rmod
    from .experiments.objective_policies import select_best_responses, train_objective_policies
