"""The ``hf-rmod`` parser: the :data:`COMMANDS` table, one ``HfArgumentParser`` per subcommand, and the mapping
of config errors to the flags users type. Standard library and the torch-free configs only (``--help`` is fast)."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable

from ..experiments.configs import (
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

PROG = "hf-rmod"
_DEBUG_ENV = "HF_RMOD_DEBUG"


from ._decode import _run_demo, _run_sample
from ._evaluate import _run_evaluate, _run_summarize
from ._policies import _run_distill, _run_train_objective_policies
from ._values import _run_train_value, _run_value_report


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
    """One subcommand: its settings dataclasses, its runner (which takes one instance of each, returns the exit
    code; its docstring is the ``--help`` description) and what Ctrl-C leaves behind (formatted with the fields)."""

    name: str
    dataclasses: tuple[type, ...]
    run: Callable[..., int]
    help: str
    on_interrupt: str = "nothing to resume."

    @property
    def description(self) -> str:
        return inspect.cleandoc(self.run.__doc__ or "")


COMMANDS: dict[str, _Command] = {c.name: c for c in (
    _Command("demo", (PolicyArguments, DemoConfig), _run_demo,
             help='Offline demo: reference sampling vs UNIFORM vs RMOD on the embedded SmolLM2 model.'),
    _Command("sample", (PolicyArguments, SampleArguments, SamplingConfig), _run_sample,
             help='Sample N responses per prompt from the reference policy and score them (JSONL, resumable).',
             on_interrupt='the responses of the finished batches are in {output}; rerun the same command to resume (prompts '
                          'already in the file are skipped).'),
    _Command("train-value", (PolicyArguments, TrainValueArguments, ValueTrainingConfig), _run_train_value,
             help='Train a multi-objective value head with CD-FUDGE on sampled records.',
             on_interrupt='nothing was saved ({output_dir}/best is written when training ends) and training does not '
                          'resume: rerun the command to start over.'),
    _Command("value-report", (PolicyArguments, ValueReportArguments), _run_value_report,
             help='Within-prompt ranking metrics of a value model (Spearman, pairwise accuracy at t = B, 2B, ...) '
                  'on held-out records.'),
    _Command("evaluate", (PolicyArguments, EvaluationArguments, EvaluationConfig), _run_evaluate,
             help='Compare reference sampling, Best-of-K, CD-<objective>, UNIFORM, RMOD and the policy baselines '
                  '(Rewarded Soups, MOD, DISTILL-RMOD) (rewards, worst-case win rate).',
             on_interrupt='the finished batches are in {output_dir}/results.jsonl; rerun the same command to resume '
                          '(finished prompts are skipped).'),
    _Command("summarize", (SummarizeArguments,), _run_summarize,
             help='Summarize an evaluation folder again for some of its methods / its first prompts (no '
                  'generation).'),
    _Command("distill", (PolicyArguments, DistillArguments, DistillConfig), _run_distill,
             help='DISTILL-RMOD: fine-tune the policy (SFT) on its own RMOD responses and save it.',
             on_interrupt='the RMOD responses of the finished batches are in the records file (default '
                          '{output_dir}/rmod_responses.jsonl); rerun the same command to resume (prompts already decoded '
                          'are skipped; fine-tuning starts over).'),
    _Command("train-objective-policies", (PolicyArguments, ObjectivePolicyArguments, ObjectivePolicyConfig),
             _run_train_objective_policies,
             help='Per-objective policies for Rewarded Soups and MOD: reward-ranked SFT on the best of N sampled '
                  "responses (a stand-in for the paper's GRPO).",
             on_interrupt='the policies of the objectives already finished are in {output_dir}/<objective>/; training does '
                          'not resume: rerun with --objectives naming the others.'),
)}


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
    from .. import __version__

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
