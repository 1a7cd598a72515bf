"""``hf-rmod distill`` and ``hf-rmod train-objective-policies``: the policy baselines (DISTILL-RMOD, per-objective policies)."""

from __future__ import annotations

from ..experiments.configs import (
    DistillArguments,
    DistillConfig,
    ObjectivePolicyArguments,
    ObjectivePolicyConfig,
    PolicyArguments,
)
from . import _common
from ._common import UsageError


def _run_distill(policy: PolicyArguments, args: DistillArguments, config: DistillConfig) -> int:
    """Decode each prompt once with RMOD (K, B, λ; records appended to --records, resumable), then fine-tune the
    policy on those responses with transformers.Trainer (loss on the response tokens only) and save it to
    OUTPUT_DIR (save_pretrained, tokenizer, model card README.md). Run it under `accelerate launch` to shard the
    decoding and the training across processes.
    """
    import json

    _common._check_local_paths(policy=policy.policy, value_head=args.value_head)
    from ..experiments.io import read_prompts

    prompts = read_prompts(args.prompts, args.prompt_field, args.limit)
    if not prompts:
        raise UsageError(f"--prompts {args.prompts} holds no prompts; give a JSONL file with at least one prompt.")
    accelerator = _common._accelerator(policy)
    device = _common._setup_torch(policy)
    if accelerator is not None:
        device = accelerator.device
    model, tokenizer = _common._load_policy(policy, device)
    value_model = _common._load_value_head(args.value_head, device, tokenizer)
    from ..experiments.distill import distill_rmod

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
    """For each objective, keep each prompt's best response(s) by that reward in --records (`hf-rmod sample`: N
    scored responses per prompt) and fine-tune a fresh copy of the reference policy on them with
    transformers.Trainer (loss on the response tokens only); saves OUTPUT_DIR/<objective>/ (save_pretrained,
    tokenizer, model card README.md). This is reward-ranked fine-tuning (RAFT-style), not GRPO. Evaluate the
    results with `hf-rmod evaluate --objective-policies OUTPUT_DIR`.
    """
    import json

    _common._check_local_paths(policy=policy.policy)
    records, objectives = _common._records_and_objectives(args)  # a bad file or objective fails before any model loads
    device = _common._setup_torch(policy)
    model, tokenizer = _common._load_policy(policy, device)  # cached by the loader: each objective trains a deep copy
    from ..experiments.objective_policies import train_objective_policies

    results = train_objective_policies(model, tokenizer, records, objectives, config, output_dir=args.output_dir,
                                       policy_id=policy.policy)
    print(json.dumps({g: {"output_dir": str(r.output_dir), "num_examples": r.num_examples,
                          "mean_reward_selected": r.mean_reward_selected, "mean_reward_all": r.mean_reward_all,
                          "final_train_loss": r.final_train_loss} for g, r in results.items()}, indent=2))
    return 0
