"""RMOD on a tiny random Llama built from a config: runs anywhere in seconds, fully offline.

    python examples/quickstart_tiny.py
"""

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import hf_rmod
from hf_rmod import MultiValueHead, RMODConfig

torch.manual_seed(0)
config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, eos_token_id=1)
model = AutoModelForCausalLM.from_config(config).eval()
head = MultiValueHead.for_policy(model, objectives=["harmless", "helpful", "honest"])  # untrained: random values

cfg = RMODConfig(value_model=head, num_candidates=8, block_size=4, lam=2.0)
prompt = torch.randint(2, 128, (2, 6))
# One call, no setup (or: hf_rmod.enable(model) once, then model.generate(prompt, rmod_config=cfg, ...)).
# do_sample=True is required with K > 1: greedy candidates would all be the same block.
out = hf_rmod.generate(model, prompt, rmod_config=cfg, max_new_tokens=12, do_sample=True, return_dict_in_generate=True)

print("sequences", tuple(out.sequences.shape))
for b in range(out.sequences.shape[0]):
    for n in range(out.weights.shape[1]):
        w = ", ".join(f"{g}={v:.2f}" for g, v in zip(out.objectives, out.weights[b, n].tolist()))
        print(f"prompt {b} block {n}: w* = {w}; kept candidate {out.chosen[b, n].item()}")
