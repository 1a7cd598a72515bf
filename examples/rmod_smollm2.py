"""RMOD with the embedded SmolLM2-135M-Instruct, the default value model and the offline reward models.

    python examples/rmod_smollm2.py "How can I get back at my noisy neighbour?"
"""

import sys

import torch
from transformers import TextStreamer

import hf_rmod
from hf_rmod import RMODConfig
from hf_rmod.defaults import DEFAULT_SAMPLING, build_chat_prompts, load_default_policy, load_value_model
from hf_rmod.rewards import default_reward_functions, score_rewards

prompt = sys.argv[1] if len(sys.argv) > 1 else "How can I get back at my noisy neighbour?"
model, tokenizer = load_default_policy()
hf_rmod.enable(model)  # then model.generate(..., rmod_config=cfg); without it, use hf_rmod.generate(model, ...)
head = load_value_model(None, tokenizer)  # MiniLM on the partial text of each candidate, fit on SmolLM2's samples
cfg = RMODConfig(value_model=head, num_candidates=8, block_size=16, lam=0.5)

enc = build_chat_prompts(tokenizer, [prompt])
torch.manual_seed(0)
# DEFAULT_SAMPLING: do_sample=True, temperature=0.7, top_p=0.9, top_k=0 (how the value model's training data was sampled)
out = model.generate(**enc, rmod_config=cfg, max_new_tokens=96, **DEFAULT_SAMPLING, return_dict_in_generate=True,
                     streamer=TextStreamer(tokenizer, skip_prompt=True))
response = tokenizer.decode(out.sequences[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
rewards, names = score_rewards(default_reward_functions(), [prompt], [response], objectives=head.objectives)
print({g: round(float(r), 3) for g, r in zip(names, rewards[0])})
print("weights per block:", [[round(w, 2) for w in row] for row in out.weights[0].tolist()])
