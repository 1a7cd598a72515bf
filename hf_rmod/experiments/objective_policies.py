"""Per-objective policies, the inputs of Rewarded Soups and MOD: reward-ranked SFT on best-of-N samples.

The RMOD paper (§6, App. C) fine-tunes one policy per objective with GRPO and combines them with Rewarded Soups
(parameter average) or MOD (logit average). GRPO is out of reach of this CPU-only project, so this module trains
a **stand-in**: for objective ``g``, keep for every prompt of a records file (``hf-rmod sample``: N scored
responses per prompt) the response with the highest reward ``g`` (or the top ``m``) and fine-tune the reference
policy on those with supervised learning (reward-ranked fine-tuning, "RAFT"-style: Dong et al., 2023, one
iteration). It moves the policy towards its own best samples for ``g``; it is **not** GRPO (no on-policy
sampling during training, no advantage, no KL term) and its policies are weaker specialists than the paper's.

- :func:`select_best_responses`: the per-prompt argmax (top-m) of one objective's reward.
- :func:`train_objective_policies`: one fine-tune per objective, each from a fresh copy of the reference policy,
  saved to ``output_dir/<objective>/`` (``save_pretrained``, tokenizer, model card ``README.md``).

The SFT itself is DISTILL-RMOD's (:func:`~hf_rmod.experiments.distill.fine_tune`: ``transformers.Trainer``, loss
on the response tokens only); ``hf-rmod train-objective-policies`` is the command line.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from .._hub import looks_like_repo_id
from .._utils import check_unique_names
from .configs import ObjectivePolicyConfig, merge_config
from .distill import fine_tune, training_card_lines
from .records import RecordList, load_records
from .results import describe_policy, weights_sha256

__all__ = ["METHOD_LABEL", "ObjectivePolicyResult", "select_best_responses", "train_objective_policies"]

#: How the model cards and the docs name the training method (a stand-in for the paper's GRPO).
METHOD_LABEL = "reward-ranked SFT on best-of-N samples (RAFT-style; a stand-in for GRPO, not GRPO)"


@dataclass
class ObjectivePolicyResult:
    """What :func:`train_objective_policies` did for one objective.

    Attributes:
        objective: the objective the policy was fine-tuned for.
        output_dir: its ``save_pretrained`` folder (``output_dir/<objective>``).
        num_prompts: prompts of the records file (each contributes ``top_m`` responses, or all it has).
        num_examples: training examples (selected responses).
        mean_reward_selected: mean reward ``objective`` of the selected responses.
        mean_reward_all: mean reward ``objective`` of every response of the records (the reference's average).
        initial_sha256: sha256 of the weights the fine-tune started from (the reference policy's).
        train_loss: mean SFT loss over the run.
        final_train_loss: mean SFT loss of the last logged period (the last epoch).
    """

    objective: str
    output_dir: Path
    num_prompts: int
    num_examples: int
    mean_reward_selected: float
    mean_reward_all: float
    initial_sha256: str
    train_loss: float | None
    final_train_loss: float | None


# ------------------------------------------------------------------------------------------------------------
# selection
# ------------------------------------------------------------------------------------------------------------
def select_best_responses(records: Sequence[Mapping[str, Any]], objective: str, top_m: int = 1) -> RecordList:
    """For every prompt, the ``top_m`` records with the highest reward ``objective`` (best-of-N when ``top_m=1``).

    Prompts keep the order of their first record; within a prompt the records come best first, and ties keep the
    file order. A prompt with fewer than ``top_m`` records contributes all of them.

    Args:
        records: records of ``hf-rmod sample`` (a :class:`~hf_rmod.experiments.records.RecordList` or dicts with
            ``prompt`` and ``rewards``); a JSONL path is read with
            :func:`~hf_rmod.experiments.records.load_records`.
        objective: the reward to rank by (a key of every record's ``rewards``).
        top_m: responses kept per prompt (>= 1).

    Returns:
        The selected records (the same dicts), as a ``RecordList`` with the input's ``source`` and ``settings``.

    Raises:
        ValueError: ``top_m`` < 1, no records, a record without ``objective`` or with a non-finite reward (naming the
            record index).
    """
    if isinstance(top_m, bool) or not isinstance(top_m, int) or top_m < 1:
        raise ValueError(f"`top_m` must be an integer >= 1, got {top_m!r}; top_m=1 keeps the best response per prompt.")
    records = load_records(records, [objective], allow_missing=True)  # fields and the objective, per record
    by_prompt: dict[str, list[tuple[float, int]]] = {}
    for index, record in enumerate(records):
        by_prompt.setdefault(record["prompt"], []).append((_reward(record, objective, index), index))
    chosen: list[int] = []
    for ranked in by_prompt.values():
        ranked.sort(key=lambda item: -item[0])  # stable: ties keep the file order
        chosen += [index for _, index in ranked[:top_m]]
    selected = RecordList(records[i] for i in chosen)
    selected.source, selected.settings = records.source, records.settings
    return selected


def _reward(record: Mapping[str, Any], objective: str, index: int) -> float:
    value = record["rewards"][objective]
    try:
        value = float(value)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"Record {index} has reward {objective}={record['rewards'][objective]!r}: best-of-N needs a "
                         "finite reward for every response; rescore the records or drop that record.")
    return value


# ------------------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------------------
def train_objective_policies(
    model_loader_or_model: Any,
    tokenizer: Any,
    records: str | os.PathLike | Sequence[Mapping[str, Any]],
    objectives: Sequence[str] | None = None,
    config: ObjectivePolicyConfig | None = None,
    *,
    output_dir: str | os.PathLike,
    policy_id: str | None = None,
    show_progress: bool = True,
    **overrides: Any,
) -> dict[str, ObjectivePolicyResult]:
    """Fine-tune one policy per objective on its best-of-N responses and save each to ``output_dir/<objective>/``.

    For each objective ``g`` (in order): :func:`select_best_responses` of ``records`` for ``g``; a fresh copy of the
    reference policy (``copy.deepcopy`` of the model, or a new call of the loader); a check that this copy has the
    reference's weights (sha256); SFT with :func:`~hf_rmod.experiments.distill.fine_tune` (``transformers.Trainer``,
    loss on the response tokens only; the records' ``prompt_ids`` are the prompts as the policy saw them); then the
    folder gets a model card ``README.md`` stating the method (:data:`METHOD_LABEL`), the base policy and its
    weights hash, the records file and its sampling settings, N, the counts, the rewards of the selected responses
    and the training settings. The reference model passed in is never modified, and no fine-tune starts from
    another one's result. Every selection is made (and every record checked) before the first fine-tune.

    Args:
        model_loader_or_model: the reference policy (a causal LM: each objective trains a deep copy of it) or a
            callable returning a new, identical copy on each call (e.g. ``lambda:
            AutoModelForCausalLM.from_pretrained(path)``; holds one copy in memory at a time).
        tokenizer: the policy's tokenizer (saved with each policy).
        records: a records JSONL file of ``hf-rmod sample`` (N responses per prompt, scored) or its records.
        objectives: the objectives to train a policy for (default: every objective of the first record).
        config: an :class:`~hf_rmod.experiments.configs.ObjectivePolicyConfig` (``top_m`` and the SFT settings).
        output_dir: parent folder; objective ``g`` goes to ``output_dir/g``.
        policy_id: how the model cards name the reference policy (default: its ``name_or_path``).
        show_progress: the Trainer's progress bars and log lines.
        **overrides: :class:`ObjectivePolicyConfig` fields, e.g. ``epochs=1``.

    Returns:
        ``{objective: ObjectivePolicyResult}`` in the order of ``objectives``.

    Raises:
        ValueError / TypeError: bad records or objectives (naming the record), a loader returning the same object
            twice or other weights than its first copy, bad SFT settings.
    """
    config = merge_config(ObjectivePolicyConfig, config, overrides, "train_objective_policies")
    if objectives is not None:
        objectives = check_unique_names(objectives, "objectives", if_empty="e.g. objectives=['harmless', 'helpful']")
    records = load_records(records, objectives, allow_missing=objectives is not None)  # given ones: every record
    objectives = objectives or list(records[0]["rewards"])
    selections = {g: select_best_responses(records, g, config.top_m) for g in objectives}
    fresh = _fresh_copies(model_loader_or_model)
    base, reference_sha = None, None
    results: dict[str, ObjectivePolicyResult] = {}
    for g in objectives:
        model = next(fresh)
        base = base or describe_policy(model, policy_id)
        reference_sha = _check_start(model, reference_sha, g)
        results[g] = _train_one(model, tokenizer, records, selections[g], g, config, Path(output_dir) / g,
                                base, reference_sha, show_progress)
        del model  # the next objective starts from a new copy of the reference
    return results


def _fresh_copies(source: Any) -> Iterator[Any]:
    """Endless fresh copies of the reference: deep copies of a model, or new results of a loader (an object it
    returned before is refused: that fine-tune would start from the previous one's result)."""
    if hasattr(source, "state_dict"):
        return (copy.deepcopy(source) for _ in itertools.repeat(None))
    if not callable(source):
        raise TypeError(f"`model_loader_or_model` must be a causal LM or a callable returning one, got "
                        f"{type(source).__name__}; e.g. lambda: AutoModelForCausalLM.from_pretrained(path).")
    return _loaded_copies(source)


def _loaded_copies(loader: Callable[[], Any]) -> Iterator[Any]:
    returned: list[weakref.ref] = []  # weak: a dropped copy may be freed, and its id reused
    while True:
        model = loader()
        if any(ref() is model for ref in returned):
            raise ValueError(
                "`model_loader_or_model` returned a model object it had returned before (a cached model?): the next "
                "objective would be fine-tuned from the previous one's result. Return a new model on each call "
                "(e.g. AutoModelForCausalLM.from_pretrained(path)), or pass the model itself (it is deep-copied)."
            )
        returned.append(weakref.ref(model))
        yield model


def _check_start(model: Any, reference_sha: str | None, objective: str) -> str:
    """The sha256 of ``model``'s weights, which must equal the first copy's (every fine-tune starts from the
    reference)."""
    sha = weights_sha256(model)
    if reference_sha is not None and sha != reference_sha:
        raise ValueError(
            f"The copy of the reference policy for objective {objective!r} has other weights (sha256 {sha[:12]}) than "
            f"the first copy ({reference_sha[:12]}): every per-objective policy must start from the same reference "
            "(a soup averages their parameters). Make `model_loader_or_model` deterministic (load from a folder)."
        )
    return sha


def _train_one(model: Any, tokenizer: Any, records: RecordList, selected: RecordList, objective: str,
               config: ObjectivePolicyConfig, out: Path, base: str, reference_sha: str,
               show_progress: bool) -> ObjectivePolicyResult:
    """Fine-tune ``model`` on ``selected`` and save it with its model card to ``out``."""
    fit, steps, is_main = fine_tune(model, tokenizer, selected, config, output_dir=out, source=records.source,
                                    show_progress=show_progress)
    result = ObjectivePolicyResult(
        objective=objective, output_dir=out, num_prompts=len({r["prompt"] for r in records}),
        num_examples=fit.num_examples, mean_reward_selected=_mean(selected, objective),
        mean_reward_all=_mean(records, objective), initial_sha256=reference_sha, train_loss=fit.train_loss,
        final_train_loss=fit.final_train_loss,
    )
    if is_main:
        card = _model_card(base, records, result, config, fit, steps)
        (out / "README.md").write_text(card, encoding="utf-8")
    return result


def _mean(records: Sequence[Mapping[str, Any]], objective: str) -> float:
    return float(sum(float(r["rewards"][objective]) for r in records) / len(records))


def _num_responses(records: RecordList) -> str:
    """N: the sampled responses per prompt (from the settings file, else counted)."""
    recorded = (records.settings or {}).get("num_responses")
    counts = {}
    for record in records:
        counts[record["prompt"]] = counts.get(record["prompt"], 0) + 1
    low, high = min(counts.values()), max(counts.values())
    counted = str(low) if low == high else f"{low}-{high}"
    return f"{recorded} (settings file; {counted} in the file)" if recorded is not None else f"{counted} (counted)"


def _model_card(base: str, records: RecordList, result: ObjectivePolicyResult, config: ObjectivePolicyConfig,
                fit: Any, steps: int) -> str:
    """The ``README.md`` of one per-objective policy: the method, where the data comes from, how it was trained."""
    from huggingface_hub import ModelCardData

    card_data = ModelCardData(library_name="transformers", tags=["hf_rmod", "objective-policy", "raft"],
                              base_model=base if looks_like_repo_id(base) else None)
    settings = records.settings or {}
    sampling = json.dumps(settings.get("sampling")) if settings.get("sampling") is not None else "not recorded"
    g = result.objective
    lines = [
        f"# Per-objective policy: `{g}`",
        "",
        f"`{base}` fine-tuned for the objective `{g}` by **{METHOD_LABEL}**: for every prompt of the records file, "
        f"the {'response' if config.top_m == 1 else f'{config.top_m} responses'} with the highest `{g}` reward among "
        "the N sampled ones, learned by supervised fine-tuning (loss on the response tokens only). The RMOD paper "
        "trains these policies with GRPO; this is a cheaper substitute (no on-policy sampling, advantage or KL term "
        "during training). Made with the `hf_rmod` library (`train_objective_policies`, "
        "`hf-rmod train-objective-policies`) as an input of Rewarded Soups and MOD.",
        "",
        "## Provenance",
        "",
        f"- **Method**: {METHOD_LABEL}",
        f"- **Objective**: `{g}`, **top m** per prompt: {config.top_m}",
        f"- **Base policy**: `{base}` (weights sha256 `{result.initial_sha256}`; every objective's policy starts "
        "from these weights)",
        f"- **Records file**: `{records.source}`",
        f"- **Responses per prompt (N)**: {_num_responses(records)}",
        f"- **Sampling of the records**: {sampling}, max_new_tokens = {settings.get('max_new_tokens', 'not recorded')}",
        f"- **Prompts / responses in the file / training examples**: {result.num_prompts} / {len(records)} / "
        f"{result.num_examples}",
        f"- **Mean `{g}` reward**: selected responses {result.mean_reward_selected:.4f}, all responses "
        f"{result.mean_reward_all:.4f}",
        "",
        *training_card_lines(config, fit, steps, "from the records file"),
    ]
    return f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines)
