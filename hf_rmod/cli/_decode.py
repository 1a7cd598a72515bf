"""``hf-rmod demo`` and ``hf-rmod sample``: decoding with the reference policy and RMOD."""

from __future__ import annotations

from ..experiments.configs import (
    DemoConfig,
    PolicyArguments,
    SampleArguments,
    SamplingConfig,
)
from . import _common


def _run_demo(policy: PolicyArguments, config: DemoConfig) -> int:
    """Loads the embedded SmolLM2-135M-Instruct policy, the shipped value head and the offline reward models,
    then decodes a few built-in prompts with reference sampling, UNIFORM and RMOD.
    """
    _common._check_local_paths(policy=policy.policy, value_head=config.value_head)
    import time

    start = time.perf_counter()
    print("Loading the policy, value head and reward models (offline) ...", flush=True)
    device = _common._setup_torch(policy)
    model, tokenizer = _common._load_policy(policy, device)
    head = _common._load_value_head(config.value_head, device, tokenizer)
    from ..experiments.demo import run_demo
    from ..generation import enable
    from ..rewards import default_reward_functions

    rewards = default_reward_functions(device)
    enable(model)
    print(f"  loaded in {time.perf_counter() - start:.1f}s on {device}: policy="
          f"{model.name_or_path or 'SmolLM2-135M-Instruct'}, objectives={head.objectives}", flush=True)
    run_demo(model, tokenizer, head, rewards, config)
    return 0


def _run_sample(policy: PolicyArguments, args: SampleArguments, config: SamplingConfig) -> int:
    """Sample N responses per prompt with model.generate and score them with reward functions; records are
    appended to --output (rerunning skips the prompts already there).
    """
    _common._check_local_paths(policy=policy.policy)
    from ..experiments.io import read_prompts
    from ..rewards import load_reward_functions

    prompts = read_prompts(args.prompts, args.prompt_field, args.limit)
    rewards = load_reward_functions(args.reward)
    device = _common._setup_torch(policy)
    model, tokenizer = _common._load_policy(policy, device)
    from ..experiments.sampling import sample_responses

    rows = sample_responses(model, tokenizer, prompts, rewards, config=config, output_path=args.output)
    print(f"wrote {len(rows)} responses to {args.output}")
    return 0
