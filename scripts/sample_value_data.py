"""Sample the training data of the next default value head (issue "Value models that rank candidates", §2).

Prompts that never touch an evaluation: the unique ``first_prompt``s of
``../shared/data/hh_harmless_preference_pairs.jsonl`` (1,678 prompts, disjoint from the 300 dev prompts that
``hf-rmod evaluate`` uses), N responses each from the embedded SmolLM2-135M-Instruct with the one sampling
default (``DEFAULT_SAMPLING``), scored with the offline harmless/helpful rewards. Resumable: rerun the same
command after an interruption; the settings file next to the output refuses a rerun with other settings.

    python scripts/sample_value_data.py --output runs/value-data/pairs_n8_t96.jsonl --threads 1

Prints the throughput (responses/s) after each chunk of prompts. Note: the harmless reward model was fit on
these pairs' preference labels; the value head trains on the reward model's scores of *new* responses, and
no evaluation prompt is among them.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from hf_rmod.defaults import load_default_policy
from hf_rmod.experiments.configs import SamplingConfig
from hf_rmod.experiments.io import read_jsonl, read_prompts
from hf_rmod.experiments.sampling import sample_responses
from hf_rmod.rewards import default_reward_functions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/value-data/pairs_n8_t96.jsonl")
    parser.add_argument("--num-responses", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per generate call")
    parser.add_argument("--chunk", type=int, default=64, help="prompts between throughput lines")
    parser.add_argument("--limit", type=int, default=None, help="only the first LIMIT unique prompts")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    prompts = list(dict.fromkeys(read_prompts("hh_harmless_preference_pairs", field="first_prompt")))
    dev = set(read_prompts("hh_harmless_dev_prompts"))
    overlap = [p for p in prompts if p in dev]
    if overlap:
        raise SystemExit(f"{len(overlap)} pair prompts are evaluation prompts; refusing to sample them.")
    prompts = prompts[: args.limit] if args.limit else prompts
    model, tokenizer = load_default_policy()
    rewards = default_reward_functions()
    config = SamplingConfig(
        num_responses=args.num_responses, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=0
    )
    print(f"{len(prompts)} unique pair prompts (none of the {len(dev)} dev prompts), {args.num_responses} each", flush=True)
    for start in range(0, len(prompts), args.chunk):
        chunk = prompts[start : start + args.chunk]
        t0 = time.perf_counter()
        rows = sample_responses(  # seeded per chunk (sample_responses seeds once per call): no reused stream
            model, tokenizer, chunk, rewards, dataclasses.replace(config, seed=start), output_path=args.output,
            objectives=["harmless", "helpful"], show_progress=False,
        )
        seconds = time.perf_counter() - t0
        if rows:
            tokens = sum(len(r["response_ids"]) for r in rows)
            print(f"prompts {start}-{start + len(chunk)}: {len(rows)} responses in {seconds:.0f} s = "
                  f"{len(rows) / seconds:.2f} responses/s, {tokens / seconds:.0f} tokens/s", flush=True)
    total = len(read_jsonl(args.output)[0])
    print(f"done: {total} responses in {args.output}")


if __name__ == "__main__":
    main()
