"""hf_rmod: Robust Multi-Objective Decoding (RMOD) for Hugging Face causal language models.

Per decoding block, RMOD samples K candidate blocks from the unchanged reference model, scores each
with a multi-objective value model, solves a small convex problem for the worst-case objective
weights ``w*`` and keeps the candidate with the largest ``w* · V``.
"""

__version__ = "0.1.0"

from .config import RMODConfig
from .generation import RMODOutput, RobustMultiObjectiveGenerator, enable, is_enabled
from .modeling_value_head import MultiValueHead, MultiValueHeadConfig, MultiValueHeadOutput
from .solver import SolverResult, solve_weights
from .metrics import MetricSummary, bootstrap_ci, mean_rewards, summarize, worst_case_reward, worst_case_win_rate
from .rewards import HFRewardModel, RewardFunction, score_rewards

__all__ = [
    "RMODConfig",
    "RMODOutput",
    "RobustMultiObjectiveGenerator",
    "enable",
    "is_enabled",
    "MultiValueHead",
    "MultiValueHeadConfig",
    "MultiValueHeadOutput",
    "SolverResult",
    "solve_weights",
    "HFRewardModel",
    "RewardFunction",
    "score_rewards",
    "MetricSummary",
    "bootstrap_ci",
    "mean_rewards",
    "summarize",
    "worst_case_reward",
    "worst_case_win_rate",
]
