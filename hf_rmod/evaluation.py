"""Old home of the evaluation pipeline; a thin re-export kept so that old imports keep working.

Where each name went:

==================================  =========================================================================
``evaluate``, ``EvaluationResult``  :mod:`hf_rmod.experiments.evaluation` (resumable, sharded runs)
``EvalMethod``, ``default_methods``  :mod:`hf_rmod.experiments.methods`
``load_results``                    :mod:`hf_rmod.experiments.results` (results files, merging, ``run.json``)
``summarize_results``,              :mod:`hf_rmod.experiments.summary`
``format_summary_markdown``
``write_plots``                     :mod:`hf_rmod.experiments.plots`
``DEFAULT_GENERATION_KWARGS``       :data:`hf_rmod.experiments.configs.DEFAULT_SAMPLING` (same values)
``DEFAULT_PROMPTS``,                :data:`hf_rmod.experiments.configs.DEFAULT_EVALUATION_PROMPTS`,
``DEFAULT_PROMPT_OFFSET``           :data:`~hf_rmod.experiments.configs.DEFAULT_EVALUATION_PROMPT_OFFSET`
settings (``max_new_tokens=``...)   :class:`hf_rmod.experiments.configs.EvaluationConfig` (the old keyword
                                    arguments of ``evaluate`` still work: they are fields of this dataclass)
``add_cli_parsers`` (removed)       ``hf-rmod evaluate`` is built by :func:`hf_rmod.cli.build_parser`
==================================  =========================================================================

Deprecated: new code should import from :mod:`hf_rmod.experiments`; this module only re-exports and will be
removed in a later release.
"""

from __future__ import annotations

from typing import Any

from .experiments.configs import DEFAULT_EVALUATION_PROMPT_OFFSET, DEFAULT_EVALUATION_PROMPTS, DEFAULT_SAMPLING
from .experiments.evaluation import EvaluationResult, evaluate
from .experiments.methods import EvalMethod, default_methods
from .experiments.plots import write_plots
from .experiments.results import load_results
from .experiments.summary import format_summary_markdown, summarize_results

__all__ = [
    "DEFAULT_GENERATION_KWARGS",
    "EvalMethod",
    "EvaluationResult",
    "default_methods",
    "evaluate",
    "format_summary_markdown",
    "load_results",
    "summarize_results",
    "write_plots",
]

#: Sampling settings of the evaluation: a copy of :data:`hf_rmod.experiments.configs.DEFAULT_SAMPLING`.
DEFAULT_GENERATION_KWARGS: dict[str, Any] = dict(DEFAULT_SAMPLING)
DEFAULT_PROMPTS = DEFAULT_EVALUATION_PROMPTS
DEFAULT_PROMPT_OFFSET = DEFAULT_EVALUATION_PROMPT_OFFSET
