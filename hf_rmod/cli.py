"""The ``hf-rmod`` command line: ``demo``, ``sample``, ``train-value``, ``value-report``, ``evaluate``,
``summarize``, ``distill``, ``train-objective-policies``.

``python -m hf_rmod <command>`` is the same program.

Every subcommand is built from the settings dataclasses of :mod:`hf_rmod.experiments.configs` with
:class:`transformers.HfArgumentParser` (as TRL does), so each default is written once and ``--help`` shows it;
the parsed dataclasses are what the Python functions take (``sample_responses(..., config=SamplingConfig)``).

Startup: this module imports only the standard library and the torch-free configs at module level; torch,
transformers and the pipelines load inside the command that needs them, so ``--help`` answers in well under a
second. ``HfArgumentParser`` is loaded from its own file (``transformers/hf_argparser.py`` imports only the
standard library and ``yaml``) instead of through the ``transformers`` package ``__init__`` (~0.9 s); if that
file cannot be loaded on its own, the normal ``from transformers import HfArgumentParser`` is used.

Errors: a mistake of the user (see :data:`USER_ERRORS` and ``docs/troubleshooting.md``) is one line on stderr,
``hf-rmod <command>: error: ...``, exit code 2; ``--debug`` (or ``HF_RMOD_DEBUG=1``) shows the traceback
instead. Ctrl-C prints where the run stopped and whether rerunning resumes it, exit code 130.

Why one module of ~580 lines: every subcommand is a (dataclasses, runner) pair registered in :data:`COMMANDS`,
and the parser building, the flag-name mapping of errors and the error/Ctrl-C handling are shared by all of them;
each runner only loads what it needs (lazily) and calls one pipeline function.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from .experiments.configs import (
    DEFAULT_EVALUATION_PROMPT_OFFSET,
    DEFAULT_EVALUATION_PROMPTS,
    DemoConfig,
    DistillArguments,
    DistillConfig,
    EvaluationArguments,
    EvaluationConfig,
    ObjectivePolicyArguments,
    ObjectivePolicyConfig,
    PolicyArguments,
    SampleArguments,
    SamplingConfig,
    SummarizeArguments,
    TrainValueArguments,
    ValueReportArguments,
    ValueTrainingConfig,
)

__all__ = ["USER_ERRORS", "build_parser", "main"]

PROG = "hf-rmod"

#: Exceptions reported as one line (exit 2) instead of a traceback: bad values (``ValueError``, including
#: ``json.JSONDecodeError``; ``TypeError`` from argument validation), missing or unreadable files and model
#: folders (``OSError``: ``FileNotFoundError``, ``PermissionError``, the Hub's "not a valid model identifier"),
#: a missing optional dependency (``ImportError``, whose message has the install command) and
#: ``argparse.ArgumentTypeError``. Anything else is a bug: full traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, TypeError, OSError, ImportError, argparse.ArgumentTypeError,
)

_DEBUG_ENV = "HF_RMOD_DEBUG"


# ------------------------------------------------------------------------------------------------------------
# Parser construction
# ------------------------------------------------------------------------------------------------------------
def _hf_argument_parser() -> type:
    """``transformers.HfArgumentParser``, loaded without the ``transformers`` package ``__init__`` when possible."""
    if "transformers" in sys.modules:  # already paid for: the normal import is free
        from transformers import HfArgumentParser

        return HfArgumentParser
    name = "_hf_rmod_hf_argparser"
    module = sys.modules.get(name)
    if module is None:
        try:
            import importlib.util
            from pathlib import Path

            package = importlib.util.find_spec("transformers")  # locates the package without importing it
            location = Path(next(iter(package.submodule_search_locations))) / "hf_argparser.py"
            spec = importlib.util.spec_from_file_location(name, location)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            module.HfArgumentParser  # noqa: B018 - AttributeError -> fall back
        except Exception:  # any layout change of transformers: the documented import
            sys.modules.pop(name, None)
            from transformers import HfArgumentParser

            return HfArgumentParser
    return module.HfArgumentParser


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


class _OneLineErrors:
    """argparse errors as ONE line (``prog: error: message (see `prog --help`)``), exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see `{self.prog} --help`)\n")


class _TopParser(_OneLineErrors, argparse.ArgumentParser):
    pass


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown for every flag that has one; the ``--snake_case`` spellings (accepted) hidden."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.required:
            return action.help or ""
        return super()._get_help_string(action)

    def _format_action_invocation(self, action: argparse.Action) -> str:
        shown = [s for s in action.option_strings if "_" not in s or s.replace("_", "-") not in action.option_strings]
        if not shown or shown == action.option_strings:
            return super()._format_action_invocation(action)
        original, action.option_strings = action.option_strings, shown
        try:
            return super()._format_action_invocation(action)
        finally:
            action.option_strings = original


@dataclass(frozen=True)
class _Command:
    name: str
    dataclasses: tuple[type, ...]
    help: str
    description: str
    run: str  # name of the function in this module (looked up at call time)
    on_interrupt: str = "nothing to resume."  # formatted with the parsed fields


COMMANDS: dict[str, _Command] = {
    c.name: c
    for c in (
        _Command(
            "demo", (PolicyArguments, DemoConfig),
            help="Offline demo: reference sampling vs UNIFORM vs RMOD on the embedded SmolLM2 model.",
            description="Loads the embedded SmolLM2-135M-Instruct policy, the shipped value head and the offline "
            "reward models, then decodes a few built-in prompts with reference sampling, UNIFORM and RMOD.",
            run="_run_demo",
        ),
        _Command(
            "sample", (PolicyArguments, SampleArguments, SamplingConfig),
            help="Sample N responses per prompt from the reference policy and score them (JSONL, resumable).",
            description="Sample N responses per prompt with model.generate and score them with reward functions; "
            "records are appended to --output (rerunning skips the prompts already there).",
            run="_run_sample", on_interrupt="the responses of the finished batches are in {output}; rerun the same "
            "command to resume (prompts already in the file are skipped).",
        ),
        _Command(
            "train-value", (PolicyArguments, TrainValueArguments, ValueTrainingConfig),
            help="Train a multi-objective value head with CD-FUDGE on sampled records.",
            description="Train a MultiValueHead (CD-FUDGE, eq. 8) on the records of `hf-rmod sample` and save the "
            "best checkpoint as a save_pretrained folder (OUTPUT_DIR/best). --kind shared (default) needs --policy: "
            "the policy that sampled the records.",
            run="_run_train_value", on_interrupt="nothing was saved ({output_dir}/best is written when training "
            "ends) and training does not resume: rerun the command to start over.",
        ),
        _Command(
            "value-report", (PolicyArguments, ValueReportArguments),
            help="Within-prompt ranking metrics of a value model (Spearman, pairwise accuracy at t = B, 2B, ...) on "
            "held-out records.",
            description="How well a value model orders the responses of the same prompt by their final reward "
            "after t = B, 2B, ... response tokens (what RMOD's choice among K candidates depends on), beside the "
            "prefix MSE and the share of reward variance between prompts. A shared-trunk head needs the policy "
            "that sampled the records (--policy; default: the embedded SmolLM2).",
            run="_run_value_report",
        ),
        _Command(
            "evaluate", (PolicyArguments, EvaluationArguments, EvaluationConfig),
            help="Compare reference sampling, Best-of-K, CD-<objective>, UNIFORM, RMOD and the policy baselines "
            "(Rewarded Soups, MOD, DISTILL-RMOD) (rewards, worst-case win rate).",
            description="Generate with each method, score with the reward functions, write results.jsonl "
            "(resumable), summary.json/.md and plots. Rewards are z-normalised with the value head's "
            "reward_mean/reward_std. Run it under `accelerate launch` to shard the prompts across processes.",
            run="_run_evaluate", on_interrupt="the finished batches are in {output_dir}/results.jsonl; rerun the "
            "same command to resume (finished prompts are skipped).",
        ),
        _Command(
            "summarize", (SummarizeArguments,),
            help="Summarize an evaluation folder again for some of its methods / its first prompts (no generation).",
            description="Recompute summary.json/.md and the plots of an `hf-rmod evaluate` folder from its "
            "results.jsonl, for the methods given (default: all of them) and the prompts with prompt_id < "
            "--num-prompts, into --summary-dir (default: the folder itself). The rewards are z-normalised with the "
            "value model's reward_mean/reward_std (its config.json; default: the value model run.json records).",
            run="_run_summarize",
        ),
        _Command(
            "distill", (PolicyArguments, DistillArguments, DistillConfig),
            help="DISTILL-RMOD: fine-tune the policy (SFT) on its own RMOD responses and save it.",
            description="Decode each prompt once with RMOD (K, B, λ; records appended to --records, resumable), then "
            "fine-tune the policy on those responses with transformers.Trainer (loss on the response tokens only) "
            "and save it to OUTPUT_DIR (save_pretrained, tokenizer, model card README.md). Run it under "
            "`accelerate launch` to shard the decoding and the training across processes.",
            run="_run_distill", on_interrupt="the RMOD responses of the finished batches are in the records file "
            "(default {output_dir}/rmod_responses.jsonl); rerun the same command to resume (prompts already decoded "
            "are skipped; fine-tuning starts over).",
        ),
        _Command(
            "train-objective-policies", (PolicyArguments, ObjectivePolicyArguments, ObjectivePolicyConfig),
            help="Per-objective policies for Rewarded Soups and MOD: reward-ranked SFT on the best of N sampled "
            "responses (a stand-in for the paper's GRPO).",
            description="For each objective, keep each prompt's best response(s) by that reward in --records (`hf-rmod "
            "sample`: N scored responses per prompt) and fine-tune a fresh copy of the reference policy on them "
            "with transformers.Trainer (loss on the response tokens only); saves OUTPUT_DIR/<objective>/ "
            "(save_pretrained, tokenizer, model card README.md). This is reward-ranked fine-tuning (RAFT-style), "
            "not GRPO. Evaluate the results with `hf-rmod evaluate --objective-policies OUTPUT_DIR`.",
            run="_run_train_objective_policies", on_interrupt="the policies of the objectives already finished are "
            "in {output_dir}/<objective>/; training does not resume: rerun with --objectives naming the others.",
        ),
    )
}


def _tidy_actions(parser: argparse.ArgumentParser) -> None:
    """Dashed spellings first (usage line, errors), ``BOOL`` metavars, ``--no-x`` helps without a default."""
    for action in parser._actions:
        action.option_strings.sort(key=lambda s: "_" in s)  # stable: --num-responses, -n, --num_responses
        if getattr(action.type, "__name__", "") == "string_to_bool":
            action.metavar = "BOOL"
        if isinstance(action, argparse._StoreFalseAction):
            positive = "--" + action.dest.replace("_", "-")
            action.help = f"Turn off {positive}."
            action.default = argparse.SUPPRESS  # the positive flag sets the default


def build_parser() -> argparse.ArgumentParser:
    """The ``hf-rmod`` parser: one ``HfArgumentParser`` per subcommand (``COMMANDS``)."""
    from . import __version__

    hf_parser = _hf_argument_parser()
    sub_class = type("HfRmodArgumentParser", (_OneLineErrors, hf_parser), {})
    parser = _TopParser(
        prog=PROG,
        description="Robust Multi-Objective Decoding (RMOD) for Hugging Face causal language models.",
        epilog=f"Run `{PROG} COMMAND --help` for the flags of a command. --debug (or {_DEBUG_ENV}=1) shows "
        "tracebacks instead of one-line errors.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--debug", action="store_true", help="Show the full traceback of errors.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=sub_class)
    sub.required = True
    for command in COMMANDS.values():
        p = sub.add_parser(command.name, dataclass_types=command.dataclasses, help=command.help,
                           description=command.description, formatter_class=_HelpFormatter)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help=f"Show the full traceback of errors (also: {_DEBUG_ENV}=1).")
        _tidy_actions(p)
        p.set_defaults(_command=command.name, _parser=p)
    return parser


# ------------------------------------------------------------------------------------------------------------
# Parsed namespace -> dataclasses, with config errors naming the flags
# ------------------------------------------------------------------------------------------------------------
def _flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """dest -> the flag users type (``num_candidates`` -> ``--num-candidates``)."""
    flags = {}
    for action in parser._actions:
        longs = [s for s in action.option_strings if s.startswith("--") and "_" not in s and not s.startswith("--no-")]
        if longs:
            flags.setdefault(action.dest, longs[0])
    return flags


def name_flags(message: str, flags: dict[str, str]) -> str:
    """```field``` in a config error -> the flag (```k``` values must be >= 1 -> ``--k values must be >= 1``)."""
    return re.sub(r"`([A-Za-z_][A-Za-z0-9_]*)`", lambda m: flags.get(m.group(1), m.group(0)), message)


def _to_dataclasses(namespace: argparse.Namespace) -> tuple[Any, ...]:
    """The command's dataclasses from the parsed flags (what ``parse_args_into_dataclasses`` does, minus the
    ``.args`` file lookup next to the script); a validation error becomes a usage error naming the flag."""
    parser = namespace._parser
    values = vars(namespace)
    outputs = []
    for cls in COMMANDS[namespace._command].dataclasses:
        kwargs = {f.name: values[f.name] for f in dataclasses.fields(cls) if f.init and f.name in values}
        try:
            outputs.append(cls(**kwargs))
        except (ValueError, TypeError) as err:
            parser.error(name_flags(str(err), _flag_names(parser)))
    return tuple(outputs)


# ------------------------------------------------------------------------------------------------------------
# Runners (torch and the pipelines are imported here, not at module level)
# ------------------------------------------------------------------------------------------------------------
class UsageError(ValueError):
    """A flag combination the command cannot run with (reported like an argparse error)."""


def _setup_torch(policy: PolicyArguments) -> Any:
    """``--threads`` applied; returns the device of the run: ``--device``, else cuda when available, else cpu."""
    import torch

    from .experiments.io import default_device

    if policy.threads is not None:
        torch.set_num_threads(policy.threads)
    return default_device(policy.device)


def _check_local_paths(**paths: str | None) -> None:
    """Before anything loads: a flag whose value looks like a local folder that does not exist fails at once
    (one line naming the flag, no Hub retries). ``paths``: flag name without dashes -> value."""
    from ._hub import check_local_path

    for name, value in paths.items():
        if value is not None:
            check_local_path(value, "--" + name.replace("_", "-"))


def _load_policy(policy: PolicyArguments, device: Any) -> tuple[Any, Any]:
    from .defaults import load_default_policy

    kwargs: dict[str, Any] = {"device": device, "gguf_file": policy.gguf_file,
                              "trust_remote_code": policy.trust_remote_code}
    if policy.dtype is not None:
        kwargs["torch_dtype"] = policy.dtype
    return load_default_policy(policy.policy, **kwargs)


def _accelerator(policy: PolicyArguments) -> Any:
    """An ``accelerate.Accelerator`` under ``accelerate launch`` / torchrun (``WORLD_SIZE`` > 1), else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import Accelerator

    return Accelerator(cpu=policy.device == "cpu")  # else accelerate picks (one GPU per process)


def _load_value_head(path: str | None, device: Any, tokenizer: Any = None) -> Any:
    """``--value-head``: a MultiValueHead or a MiniLM text value model folder; default the default value model."""
    from .defaults import load_value_model

    return load_value_model(path, tokenizer, device=device)


def _run_demo(policy: PolicyArguments, config: DemoConfig) -> int:
    _check_local_paths(policy=policy.policy, value_head=config.value_head)
    import time

    start = time.perf_counter()
    print("Loading the policy, value head and reward models (offline) ...", flush=True)
    device = _setup_torch(policy)
    model, tokenizer = _load_policy(policy, device)
    head = _load_value_head(config.value_head, device, tokenizer)
    from .experiments.demo import run_demo
    from .generation import enable
    from .rewards import default_reward_functions

    rewards = default_reward_functions(device)
    enable(model)
    print(f"  loaded in {time.perf_counter() - start:.1f}s on {device}: policy="
          f"{model.name_or_path or 'SmolLM2-135M-Instruct'}, objectives={head.objectives}", flush=True)
    run_demo(model, tokenizer, head, rewards, config)
    return 0


def _run_sample(policy: PolicyArguments, args: SampleArguments, config: SamplingConfig) -> int:
    _check_local_paths(policy=policy.policy)
    from .experiments.io import read_prompts
    from .rewards import load_reward_functions

    prompts = read_prompts(args.prompts, args.prompt_field, args.limit)
    rewards = load_reward_functions(args.reward)
    device = _setup_torch(policy)
    model, tokenizer = _load_policy(policy, device)
    from .experiments.sampling import sample_responses

    rows = sample_responses(model, tokenizer, prompts, rewards, config=config, output_path=args.output)
    print(f"wrote {len(rows)} responses to {args.output}")
    return 0


def _check_train_value(policy: PolicyArguments, args: TrainValueArguments) -> None:
    if args.kind == "shared" and not policy.policy:
        raise UsageError("--kind shared (the default) needs --policy: the policy that sampled the records (its "
                         "hidden states are the head's features); or use --kind backbone --backbone MODEL.")
    if args.kind == "backbone" and not args.backbone:
        raise UsageError("--kind backbone needs --backbone (a model folder or Hub id sharing the policy's "
                         "tokenizer).")


def _backbone_tokenizer(backbone: str, trust_remote_code: bool) -> Any:
    """The backbone folder's tokenizer (recorded as the head's fingerprint), or None when it has none."""
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(backbone, **({"trust_remote_code": True} if trust_remote_code else {}))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _records_and_objectives(args: TrainValueArguments | ObjectivePolicyArguments) -> tuple[list[dict], list[str]]:
    """``--objectives``: names (every record must have them), ``common`` (those every record has) or none (the
    first record's; every record must have the same objectives)."""
    from .experiments.records import common_objectives, load_records

    spec = (args.objectives or "").strip()
    if spec == "common":
        records = load_records(args.records, allow_missing=True)
        return records, common_objectives(records)
    wanted = [g.strip() for g in spec.split(",") if g.strip()] or None
    records = load_records(args.records, wanted)
    return records, wanted or list(records[0]["rewards"])


def _run_train_value(policy: PolicyArguments, args: TrainValueArguments, config: ValueTrainingConfig) -> int:
    import json

    _check_train_value(policy, args)
    _check_local_paths(policy=policy.policy, backbone=args.backbone)
    records, objectives = _records_and_objectives(args)
    device = _setup_torch(policy)
    from .experiments.value_training import train_value_head
    from .modeling_value_head import MultiValueHead

    model = tokenizer = None
    if policy.policy:
        model, tokenizer = _load_policy(policy, device)
    if args.kind == "shared":
        head = MultiValueHead.for_policy(model, objectives, head_type=args.head_type, policy_name_or_path=policy.policy,
                                         tokenizer=tokenizer)
    else:
        head = MultiValueHead.from_backbone(
            args.backbone, objectives, head_type=args.head_type, policy_name_or_path=policy.policy,
            tokenizer=_backbone_tokenizer(args.backbone, policy.trust_remote_code),
            **({"trust_remote_code": True} if policy.trust_remote_code else {}),
        )
        if model is not None:
            head.check_compatible(model, tokenizer=tokenizer)  # refuses a backbone with another tokenizer
            head.config.policy_vocab_size = model.get_output_embeddings().out_features
            model = None  # a backbone head does not need the policy during training
    result = train_value_head(head, records, model, config, objectives=objectives, output_dir=args.output_dir,
                              allow_missing=(args.objectives or "").strip() == "common", tokenizer=tokenizer)
    print(json.dumps({"val_mse": result.val_mse, "baseline_mse": result.baseline_mse,
                      "best_checkpoint": result.best_checkpoint}, indent=2))
    return 0


def _run_summarize(args: SummarizeArguments) -> int:
    from .experiments.summary import summarize_folder

    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    target = args.summary_dir or args.output_dir
    summary = summarize_folder(args.output_dir, methods=methods, num_prompts=args.num_prompts or None,
                               value_head=args.value_head, summary_dir=target, reference_method=args.reference_method,
                               n_resamples=args.n_resamples, plots=args.plots)
    print(f"{len(summary['methods'])} methods on {summary['n_prompts']} prompts: {target}/summary.md")
    return 0


def _run_value_report(policy: PolicyArguments, args: ValueReportArguments) -> int:
    from .experiments.records import load_records

    records = load_records(args.records)  # a missing or malformed file fails before any model loads
    device = _setup_torch(policy)
    model = tokenizer = None
    if args.reward:
        model, tokenizer = _load_policy(policy, device)
        from .reward_values import RewardValueModel

        if args.reward == ["default"]:
            from .rewards import default_reward_functions

            fns = default_reward_functions(device)
        else:
            from .rewards import load_reward_functions

            fns = load_reward_functions(args.reward)
        value_model = RewardValueModel(fns, tokenizer=tokenizer)
    else:
        from .modeling_value_head import MultiValueHead

        value_model = _load_value_head(args.value_head, device)
        reads_text = not isinstance(value_model, MultiValueHead)  # decodes the records' token ids: needs a tokenizer
        if reads_text or value_model.uses_policy_hidden_states or policy.policy:
            model, tokenizer = _load_policy(policy, device)
    from .experiments.value_report import ranking_report

    report = ranking_report(value_model, records, model, block_size=args.block_size, max_blocks=args.max_blocks,
                            batch_size=args.batch_size, tokenizer=tokenizer)
    print(report.to_markdown())
    if args.output:
        print(f"report: {report.save(args.output)}")
    return 0


def _evaluation_prompts(args: EvaluationArguments) -> list[str]:
    """``--prompts`` from ``--prompt-offset`` on, ``--num-prompts`` of them (0: all)."""
    from pathlib import Path

    from .experiments.io import read_prompts

    prompts = read_prompts(args.prompts, args.prompt_field)
    offset = args.prompt_offset
    if offset is None:
        shipped = not Path(args.prompts).is_file() and args.prompts.removesuffix(".jsonl") == DEFAULT_EVALUATION_PROMPTS
        offset = DEFAULT_EVALUATION_PROMPT_OFFSET if shipped else 0
    if offset >= len(prompts):
        raise UsageError(f"--prompt-offset {offset} skips all {len(prompts)} prompts of {args.prompts}; "
                         f"give a value below {len(prompts)}.")
    end = len(prompts) if args.num_prompts == 0 else offset + args.num_prompts
    return prompts[offset:end]


#: The flag that provides the policies of each kind of policy method of ``hf-rmod evaluate``.
_POLICY_METHOD_FLAGS = {"rewarded_soup": "--objective-policies", "mod": "--objective-policies",
                        "policy": "--distilled-policy"}


def _evaluation_methods(args: EvaluationArguments, objectives: Sequence[str]) -> list[Any]:
    """``--methods`` over the RMOD grid (``--k/--b/--lam``) and the policy baselines (``rs_w*``, ``mod_w*``,
    ``distill_rmod``); ``all`` takes the baselines whose policies were given; a selected baseline whose flag is
    missing is a usage error naming the flag."""
    from .experiments.methods import baseline_methods, default_methods

    grid = default_methods(objectives, args.k, args.b, args.lam)
    baselines = baseline_methods(objectives)
    given = {"--objective-policies": args.objective_policies, "--distilled-policy": args.distilled_policy}
    if args.methods.strip() == "all":
        return grid + [m for m in baselines if given[_POLICY_METHOD_FLAGS[m.kind]]]
    methods = select_methods(args.methods, grid + baselines)
    for method in methods:
        flag = _POLICY_METHOD_FLAGS.get(method.kind)
        if flag is not None and not given[flag]:
            what = ("a folder with one policy subfolder per objective (`hf-rmod train-objective-policies`)"
                    if flag == "--objective-policies" else "the distilled policy folder (`hf-rmod distill`)")
            raise UsageError(f"--methods {method.name} needs {flag} DIR: {what}.")
    return methods


def _load_baseline_policies(args: EvaluationArguments, methods: Sequence[Any], policy: PolicyArguments, device: Any,
                            tokenizer: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(objective_policies, policies)`` for ``evaluate``: the ``--objective-policies`` subfolders that the RS /
    MOD methods weight, and ``--distilled-policy`` when ``distill_rmod`` runs; each must share the policy's
    tokenizer."""
    from pathlib import Path

    objectives = list(dict.fromkeys(g for m in methods if m.kind in ("rewarded_soup", "mod")
                                    for g, w in m.policy["weights"].items() if w != 0.0))
    objective_policies = {}
    for objective in objectives:
        folder = Path(args.objective_policies) / objective
        if not folder.is_dir():
            present = sorted(p.name for p in Path(args.objective_policies).iterdir() if p.is_dir())
            raise UsageError(f"--objective-policies {args.objective_policies} has no subfolder {objective!r} (it has "
                             f"{present}); train it with `hf-rmod train-objective-policies --objectives {objective}`.")
        objective_policies[objective] = _load_other_policy(policy, folder, device, tokenizer, "--objective-policies")
    policies = {}
    if any(m.kind == "policy" for m in methods):
        policies["distill_rmod"] = _load_other_policy(policy, Path(args.distilled_policy), device, tokenizer,
                                                      "--distilled-policy")
    return objective_policies, policies


def _load_other_policy(policy: PolicyArguments, folder: Any, device: Any, tokenizer: Any, flag: str) -> Any:
    """A fine-tuned policy folder, loaded like --policy (dtype, device); its tokenizer must be the policy's."""
    from .configuration_value_head import describe_tokenizer, tokenizer_fingerprint

    model, own = _load_policy(dataclasses.replace(policy, policy=str(folder), gguf_file=None), device)
    mine, theirs = tokenizer_fingerprint(tokenizer), tokenizer_fingerprint(own)
    if mine["sha256"] != theirs["sha256"]:
        raise UsageError(f"{flag} {folder}: its tokenizer ({describe_tokenizer(theirs)}) is not the --policy "
                         f"tokenizer ({describe_tokenizer(mine)}); pass policies fine-tuned from --policy.")
    return model


def select_methods(spec: str, available: Sequence[Any]) -> list[Any]:
    """``--methods``: ``all`` or comma-separated names of ``available`` (in the order given)."""
    if spec.strip() == "all":
        return list(available)
    by_name = {m.name: m for m in available}
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [w for w in wanted if w not in by_name]
    if unknown or not wanted:
        raise UsageError(f"--methods: unknown method names {unknown or spec!r}; available with this --k/--b/--lam "
                         f"grid: {list(by_name)} (or 'all').")
    return [by_name[w] for w in wanted]


def _run_evaluate(policy: PolicyArguments, args: EvaluationArguments, config: EvaluationConfig) -> int:
    _check_local_paths(policy=policy.policy, value_head=args.value_head, value_tokenizer=args.value_tokenizer,
                       objective_policies=args.objective_policies, distilled_policy=args.distilled_policy)
    prompts = _evaluation_prompts(args)
    rewards = None
    if args.reward:
        from .rewards import load_reward_functions

        rewards = load_reward_functions(args.reward)
    accelerator = _accelerator(policy)
    device = _setup_torch(policy)
    if accelerator is not None:
        device = accelerator.device
    head = _load_value_head(args.value_head, device)  # a text value model decodes with the policy's tokenizer
    methods = _evaluation_methods(args, head.objectives)
    if rewards is None:
        from .rewards import default_reward_functions

        rewards = default_reward_functions(device)
    model, tokenizer = _load_policy(policy, device)
    objective_policies, policies = _load_baseline_policies(args, methods, policy, device, tokenizer)
    from .experiments.evaluation import evaluate

    value_tokenizer = None
    if args.value_tokenizer is not None:
        from transformers import AutoTokenizer

        value_tokenizer = AutoTokenizer.from_pretrained(args.value_tokenizer)
    value_model = None
    if args.value_rewards:
        if value_tokenizer is not None:
            raise UsageError("--value-rewards scores decoded text: it does not take --value-tokenizer.")
        from .reward_values import RewardValueModel

        if args.value_rewards == ["default"]:
            from .rewards import default_reward_functions

            value_fns = default_reward_functions(device)
        else:
            from .rewards import load_reward_functions

            value_fns = load_reward_functions(args.value_rewards)
        value_model = RewardValueModel(value_fns, tokenizer=tokenizer, normalization=head)
    result = evaluate(model, tokenizer, head, rewards, prompts, methods, config, output_dir=args.output_dir,
                      accelerator=accelerator, show_progress=args.progress, policy_id=policy.policy,
                      value_tokenizer=value_tokenizer, value_model=value_model,
                      objective_policies=objective_policies, policies=policies)
    if accelerator is None or accelerator.is_main_process:
        print(result.summary_md_path.read_text(encoding="utf-8"))
        print(f"results: {result.results_path}\nsummary: {result.summary_path}")
    return 0


def _run_distill(policy: PolicyArguments, args: DistillArguments, config: DistillConfig) -> int:
    import json

    _check_local_paths(policy=policy.policy, value_head=args.value_head)
    from .experiments.io import read_prompts

    prompts = read_prompts(args.prompts, args.prompt_field, args.limit)
    if not prompts:
        raise UsageError(f"--prompts {args.prompts} holds no prompts; give a JSONL file with at least one prompt.")
    accelerator = _accelerator(policy)
    device = _setup_torch(policy)
    if accelerator is not None:
        device = accelerator.device
    model, tokenizer = _load_policy(policy, device)
    value_model = _load_value_head(args.value_head, device, tokenizer)
    from .experiments.distill import distill_rmod

    result = distill_rmod(model, tokenizer, value_model, prompts, config, output_dir=args.output_dir,
                          records_path=args.records, accelerator=accelerator, policy_id=policy.policy)
    if accelerator is None or accelerator.is_main_process:
        print(json.dumps({"output_dir": str(result.output_dir), "records": str(result.records_path),
                          "num_prompts": result.num_prompts, "num_examples": result.num_examples,
                          "num_generated": result.num_generated, "final_train_loss": result.final_train_loss},
                         indent=2))
    return 0


def _run_train_objective_policies(policy: PolicyArguments, args: ObjectivePolicyArguments,
                                  config: ObjectivePolicyConfig) -> int:
    import json

    _check_local_paths(policy=policy.policy)
    records, objectives = _records_and_objectives(args)  # a bad file or objective fails before any model loads
    device = _setup_torch(policy)
    model, tokenizer = _load_policy(policy, device)  # cached by the loader: each objective trains a deep copy
    from .experiments.objective_policies import train_objective_policies

    results = train_objective_policies(model, tokenizer, records, objectives, config, output_dir=args.output_dir,
                                       policy_id=policy.policy)
    print(json.dumps({g: {"output_dir": str(r.output_dir), "num_examples": r.num_examples,
                          "mean_reward_selected": r.mean_reward_selected, "mean_reward_all": r.mean_reward_all,
                          "final_train_loss": r.final_train_loss} for g, r in results.items()}, indent=2))
    return 0


# ------------------------------------------------------------------------------------------------------------
# Entry point
# ------------------------------------------------------------------------------------------------------------
def _message(err: BaseException) -> str:
    text = _one_line(str(err)) or type(err).__name__
    if isinstance(err, (ImportError, OSError)) and not isinstance(err, FileNotFoundError):
        return f"{type(err).__name__}: {text}"
    return text


@contextlib.contextmanager
def _warnings_as_lines(prog: str, debug: bool) -> Iterator[None]:
    """Our ``UserWarning`` s (e.g. a head worse than the constant predictor) as ``prog: warning: ...`` lines."""
    if debug:
        yield
        return
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if category is not UserWarning:  # DeprecationWarning & co. from libraries: unchanged
            return previous(message, category, filename, lineno, file, line)
        print(f"{prog}: warning: {_one_line(str(message))}", file=sys.stderr if file is None else file)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hf-rmod`` console script; returns the exit code.

    ``--help`` / ``--version`` / usage errors raise ``SystemExit`` (0 / 0 / 2) as argparse does.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    namespace = parser.parse_args(argv)
    debug = bool(namespace.debug) or os.environ.get(_DEBUG_ENV, "") not in ("", "0")
    command = COMMANDS[namespace._command]
    sub_parser = namespace._parser
    configs = _to_dataclasses(namespace)
    try:
        with _warnings_as_lines(sub_parser.prog, debug):
            return int(globals()[command.run](*configs) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        where = command.on_interrupt.format(**{k: v for c in configs for k, v in vars(c).items()})
        print(f"\n{sub_parser.prog}: interrupted (Ctrl-C); {where}", file=sys.stderr)
        return 130
    except UsageError as err:
        if debug:
            raise
        sub_parser.error(str(err))
    except USER_ERRORS as err:
        if debug:
            raise
        print(f"{sub_parser.prog}: error: {_message(err)}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # torch.OutOfMemoryError is a RuntimeError: the one RuntimeError users cause
        if type(err).__name__ != "OutOfMemoryError" or debug:
            raise
        print(f"{sub_parser.prog}: error: out of device memory ({_one_line(str(err))[:200]}); lower --batch-size "
              "(or --num-responses / --k), or run with --device cpu.", file=sys.stderr)
        return 2
    return 2  # pragma: no cover - sub_parser.error exits


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
