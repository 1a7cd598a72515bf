"""The ``hf-rmod`` command line: ``demo``, ``sample``, ``train-value``, ``evaluate``.

``python -m hf_rmod <command>`` is the same program.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

DEMO_PROMPTS = (
    "My coworker embarrassed me in a meeting. How can I get back at him?",
    "What is a good way to learn to cook on a tight budget?",
    "My neighbor's dog barks all night. What should I do about it?",
)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-rmod",
        description="Robust Multi-Objective Decoding (RMOD) for Hugging Face causal language models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    demo = sub.add_parser(
        "demo",
        help="Offline demo: reference sampling vs UNIFORM vs RMOD on the embedded SmolLM2 model.",
        description="Loads the embedded SmolLM2-135M-Instruct policy, the shipped value head and the offline "
        "reward models, then decodes a few built-in prompts with reference sampling, UNIFORM and RMOD.",
    )
    demo.add_argument("--prompt", action="append", default=None,
                      help="A prompt to use instead of the built-in ones (repeatable).")
    demo.add_argument("--policy", default=None, help="Hub id or local path of another policy (default: embedded).")
    demo.add_argument("--value-head", default=None, help="Path of a value head (default: the shipped one).")
    demo.add_argument("--num-candidates", "-k", type=int, default=8, help="K candidates per block (default 8).")
    demo.add_argument("--block-size", "-b", type=int, default=16, help="B tokens per block (default 16).")
    demo.add_argument("--lam", type=float, default=0.5, help="λ of RMOD (default 0.5).")
    demo.add_argument("--max-new-tokens", type=int, default=64)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice).")
    demo.set_defaults(func=_run_demo)

    from .training import add_cli_parsers as add_training

    add_training(sub)
    try:
        from .evaluation import add_cli_parsers as add_evaluation
    except ImportError as err:  # pragma: no cover - only while the module is absent
        print(f"(evaluate unavailable: {err})", file=sys.stderr)
    else:
        add_evaluation(sub)
    return parser


def _run_demo(args: argparse.Namespace) -> int:
    import torch

    from . import RMODConfig, enable
    from .defaults import DEFAULT_SAMPLING, build_chat_prompts, load_default_policy, load_default_value_head
    from .modeling_value_head import MultiValueHead
    from .rewards import default_reward_functions, score_rewards

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    prompts = list(args.prompt or DEMO_PROMPTS)
    t0 = time.perf_counter()
    print("Loading the policy, value head and reward models (offline) ...", flush=True)
    model, tokenizer = load_default_policy(args.policy)
    head = MultiValueHead.from_pretrained(args.value_head) if args.value_head else load_default_value_head()
    rewards = default_reward_functions()
    enable(model)
    print(f"  loaded in {time.perf_counter() - t0:.1f}s: policy={model.name_or_path or 'SmolLM2-135M-Instruct'}, "
          f"objectives={head.objectives}", flush=True)

    enc = build_chat_prompts(tokenizer, prompts)
    prompt_len = enc["input_ids"].shape[1]
    common = dict(max_new_tokens=args.max_new_tokens, **DEFAULT_SAMPLING)
    rmod_kwargs = dict(value_model=head, num_candidates=args.num_candidates, block_size=args.block_size, lam=args.lam)
    methods = {
        "reference": None,
        "uniform": RMODConfig(weights="uniform", **rmod_kwargs),
        f"rmod (λ={args.lam})": RMODConfig(**rmod_kwargs),
    }
    mean = torch.tensor(head.config.reward_mean)
    std = torch.tensor(head.config.reward_std)
    results = {}
    for name, cfg in methods.items():
        torch.manual_seed(args.seed)
        t = time.perf_counter()
        print(f"\nDecoding with {name} ...", flush=True)
        if cfg is None:
            out = model.generate(**enc, **common)
            sequences, trace = out, None
        else:
            out = model.generate(**enc, rmod_config=cfg, return_dict_in_generate=True, **common)
            sequences, trace = out.sequences, out
        responses = tokenizer.batch_decode(sequences[:, prompt_len:], skip_special_tokens=True)
        raw, names = score_rewards(rewards, prompts, responses, objectives=head.objectives)
        z = (raw - mean) / std  # (n, G) in units of the reference policy's reward spread
        results[name] = (responses, raw, z, trace, time.perf_counter() - t)

    for i, prompt in enumerate(prompts):
        print("\n" + "=" * 100 + f"\nPROMPT {i + 1}: {prompt}")
        for name, (responses, raw, z, trace, _) in results.items():
            scores = ", ".join(f"{g}={raw[i, j]:+.3f} (z={z[i, j]:+.2f})" for j, g in enumerate(head.objectives))
            print(f"\n[{name}] {scores}, worst-case z={z[i].min():+.2f}\n  {responses[i].strip()!r}")
            if trace is not None and name.startswith("rmod"):
                blocks = int(trace.block_mask[i].sum())
                rows = [" ".join(f"{w:.2f}" for w in trace.weights[i, n].tolist()) for n in range(blocks)]
                print(f"  weight trace per block ({'/'.join(trace.objectives)}): " + " | ".join(rows))

    print("\n" + "=" * 100 + "\nSummary over the prompts (z = reward standardised with the value head's "
          "training statistics of the reference policy):")
    header = f"{'method':<18}" + "".join(f"{g + ' z':>14}" for g in head.objectives) + f"{'worst-case z':>15}{'seconds':>10}"
    print(header)
    for name, (_, _, z, _, secs) in results.items():
        cols = "".join(f"{v:>14.3f}" for v in z.mean(0).tolist())
        print(f"{name:<18}{cols}{z.min(-1).values.mean().item():>15.3f}{secs:>10.1f}")
    print(f"\nTotal time {time.perf_counter() - t0:.1f}s. RMOD maximises the worst objective per block; "
          "with only a few prompts the numbers are noisy — see `hf-rmod evaluate` for the full comparison.")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hf-rmod`` console script."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
