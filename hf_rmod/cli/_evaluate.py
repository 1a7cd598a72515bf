"""``hf-rmod evaluate`` and ``hf-rmod summarize``: the method comparison and its summaries."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from ..experiments.configs import (
    DEFAULT_EVALUATION_PROMPT_OFFSET,
    DEFAULT_EVALUATION_PROMPTS,
    EvaluationArguments,
    EvaluationConfig,
    PolicyArguments,
    SummarizeArguments,
)
from . import _common
from ._common import UsageError


def _evaluation_prompts(args: EvaluationArguments) -> list[str]:
    """``--prompts`` from ``--prompt-offset`` on, ``--num-prompts`` of them (0: all)."""
    from pathlib import Path

    from ..experiments.io import read_prompts

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
    from ..experiments.methods import baseline_methods, default_methods

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
    from ..configuration_value_head import describe_tokenizer, tokenizer_fingerprint

    model, own = _common._load_policy(dataclasses.replace(policy, policy=str(folder), gguf_file=None), device)
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
    """Generate with each method, score with the reward functions, write results.jsonl (resumable),
    summary.json/.md and plots. Rewards are z-normalised with the value head's reward_mean/reward_std. Run it
    under `accelerate launch` to shard the prompts across processes.
    """
    _common._check_local_paths(policy=policy.policy, value_head=args.value_head, value_tokenizer=args.value_tokenizer,
                       objective_policies=args.objective_policies, distilled_policy=args.distilled_policy)
    prompts = _evaluation_prompts(args)
    rewards = None
    if args.reward:
        from ..rewards import load_reward_functions

        rewards = load_reward_functions(args.reward)
    accelerator = _common._accelerator(policy)
    device = _common._setup_torch(policy)
    if accelerator is not None:
        device = accelerator.device
    head = _common._load_value_head(args.value_head, device)  # a text value model decodes with the policy's tokenizer
    methods = _evaluation_methods(args, head.objectives)
    if rewards is None:
        from ..rewards import default_reward_functions

        rewards = default_reward_functions(device)
    model, tokenizer = _common._load_policy(policy, device)
    objective_policies, policies = _load_baseline_policies(args, methods, policy, device, tokenizer)
    from ..experiments.evaluation import evaluate

    value_tokenizer = None
    if args.value_tokenizer is not None:
        from transformers import AutoTokenizer

        value_tokenizer = AutoTokenizer.from_pretrained(args.value_tokenizer)
    value_model = None
    if args.value_rewards:
        if value_tokenizer is not None:
            raise UsageError("--value-rewards scores decoded text: it does not take --value-tokenizer.")
        from ..reward_values import RewardValueModel

        if args.value_rewards == ["default"]:
            from ..rewards import default_reward_functions

            value_fns = default_reward_functions(device)
        else:
            from ..rewards import load_reward_functions

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


def _run_summarize(args: SummarizeArguments) -> int:
    """Recompute summary.json/.md and the plots of an `hf-rmod evaluate` folder from its results.jsonl, for the
    methods given (default: all of them) and the prompts with prompt_id < --num-prompts, into --summary-dir
    (default: the folder itself). The rewards are z-normalised with the value model's reward_mean/reward_std
    (its config.json; default: the value model run.json records).
    """
    from ..experiments.summary import summarize_folder

    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    target = args.summary_dir or args.output_dir
    summary = summarize_folder(args.output_dir, methods=methods, num_prompts=args.num_prompts or None,
                               value_head=args.value_head, summary_dir=target, reference_method=args.reference_method,
                               n_resamples=args.n_resamples, plots=args.plots)
    print(f"{len(summary['methods'])} methods on {summary['n_prompts']} prompts: {target}/summary.md")
    return 0
