"""Old home of the value-head training pipeline; a thin re-export kept so that old imports keep working.

Where each name went:

=================================  ==========================================================================
``sample_responses``               :mod:`hf_rmod.experiments.sampling`
``load_records``                   :mod:`hf_rmod.experiments.records` (also exported by ``value_training``)
``split_by_prompt``                :mod:`hf_rmod.experiments.records` (also exported by ``value_training``)
``cd_fudge_loss``                  :mod:`hf_rmod.experiments.value_training`
``train_value_head``               :mod:`hf_rmod.experiments.value_training`
``ValueTrainingResult``            :mod:`hf_rmod.experiments.value_training`
``policy_final_hidden_states``     :mod:`hf_rmod.scoring` (one lm_head-input hook for decoding and training)
settings (``num_responses=``...)   :class:`hf_rmod.experiments.configs.SamplingConfig` /
                                   :class:`~hf_rmod.experiments.configs.ValueTrainingConfig` (the old keyword
                                   arguments still work: they are fields of these dataclasses)
``add_cli_parsers`` (CLI)          :mod:`hf_rmod.cli` (``hf-rmod sample`` / ``train-value``; removed here)
=================================  ==========================================================================

Deprecated: new code should import from :mod:`hf_rmod.experiments` (or :mod:`hf_rmod`); this module only
re-exports and will be removed in a later release.
"""

from __future__ import annotations

from .experiments.records import load_records, split_by_prompt
from .experiments.sampling import sample_responses
from .experiments.value_training import ValueTrainingResult, cd_fudge_loss, train_value_head
from .scoring import policy_final_hidden_states

__all__ = [
    "ValueTrainingResult",
    "cd_fudge_loss",
    "load_records",
    "policy_final_hidden_states",
    "sample_responses",
    "split_by_prompt",
    "train_value_head",
]
