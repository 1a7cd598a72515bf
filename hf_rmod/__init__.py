"""hf_rmod: Robust Multi-Objective Decoding (RMOD) for Hugging Face causal language models.

Per decoding block, RMOD samples K candidate blocks from the unchanged reference model, scores each
with a multi-objective value model, solves a small convex problem for the worst-case objective
weights ``w*`` and keeps the candidate with the largest ``w* · V``.
"""

__version__ = "0.1.0"

from .modeling_value_head import MultiValueHead, MultiValueHeadConfig, MultiValueHeadOutput
from .solver import SolverResult, solve_weights

__all__ = [
    "MultiValueHead",
    "MultiValueHeadConfig",
    "MultiValueHeadOutput",
    "SolverResult",
    "solve_weights",
]
