"""``hf-rmod train-value`` and ``hf-rmod value-report``: fitting and checking value models."""

from __future__ import annotations

from ..experiments.configs import (
    PolicyArguments,
    TrainValueArguments,
    ValueReportArguments,
    ValueTrainingConfig,
)
from . import _common
from ._common import UsageError


def _check_train_value(policy: PolicyArguments, args: TrainValueArguments) -> None:
    if args.kind == "shared" and not policy.policy:
        raise UsageError("--kind shared (the default) needs --policy: the policy that sampled the records (its "
                         "hidden states are the head's features); or use --kind backbone --backbone MODEL.")
    if args.kind == "backbone" and not args.backbone:
        raise UsageError("--kind backbone needs --backbone (a model folder or Hub id sharing the policy's "
                         "tokenizer).")


def _run_train_value(policy: PolicyArguments, args: TrainValueArguments, config: ValueTrainingConfig) -> int:
    """Train a MultiValueHead (CD-FUDGE, eq. 8) on the records of `hf-rmod sample` and save the best checkpoint
    as a save_pretrained folder (OUTPUT_DIR/best). --kind shared (default) needs --policy: the policy that
    sampled the records.
    """
    import json

    _check_train_value(policy, args)
    _common._check_local_paths(policy=policy.policy, backbone=args.backbone)
    records, objectives = _common._records_and_objectives(args)
    device = _common._setup_torch(policy)
    from ..experiments.value_training import train_value_head
    from ..modeling_value_head import MultiValueHead

    model = tokenizer = None
    if policy.policy:
        model, tokenizer = _common._load_policy(policy, device)
    if args.kind == "shared":
        head = MultiValueHead.for_policy(model, objectives, head_type=args.head_type, policy_name_or_path=policy.policy,
                                         tokenizer=tokenizer)
    else:
        head = MultiValueHead.from_backbone(
            args.backbone, objectives, head_type=args.head_type, policy_name_or_path=policy.policy,
            tokenizer=_common._backbone_tokenizer(args.backbone, policy.trust_remote_code),
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


def _run_value_report(policy: PolicyArguments, args: ValueReportArguments) -> int:
    """How well a value model orders the responses of the same prompt by their final reward after t = B, 2B, ...
    response tokens (what RMOD's choice among K candidates depends on), beside the prefix MSE and the share of
    reward variance between prompts. A shared-trunk head needs the policy that sampled the records (--policy;
    default: the embedded SmolLM2).
    """
    from ..experiments.records import load_records

    records = load_records(args.records)  # a missing or malformed file fails before any model loads
    device = _common._setup_torch(policy)
    model = tokenizer = None
    if args.reward:
        model, tokenizer = _common._load_policy(policy, device)
        from ..reward_values import RewardValueModel

        if args.reward == ["default"]:
            from ..rewards import default_reward_functions

            fns = default_reward_functions(device)
        else:
            from ..rewards import load_reward_functions

            fns = load_reward_functions(args.reward)
        value_model = RewardValueModel(fns, tokenizer=tokenizer)
    else:
        from ..modeling_value_head import MultiValueHead

        value_model = _common._load_value_head(args.value_head, device)
        reads_text = not isinstance(value_model, MultiValueHead)  # decodes the records' token ids: needs a tokenizer
        if reads_text or value_model.uses_policy_hidden_states or policy.policy:
            model, tokenizer = _common._load_policy(policy, device)
    from ..experiments.value_report import ranking_report

    report = ranking_report(value_model, records, model, block_size=args.block_size, max_blocks=args.max_blocks,
                            batch_size=args.batch_size, tokenizer=tokenizer)
    print(report.to_markdown())
    if args.output:
        print(f"report: {report.save(args.output)}")
    return 0
