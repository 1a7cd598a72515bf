"""Tiny random causal LMs built from configs (no downloads), one per architecture family."""

from __future__ import annotations

import torch
import transformers as tf

VOCAB = 97
PAD, EOS, BOS = 0, 1, 2

_COMMON = dict(vocab_size=VOCAB, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=BOS)


def _llama_like(cls, **extra):
    return cls(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, **_COMMON, **extra,
    )


CONFIGS = {
    "llama": lambda: _llama_like(tf.LlamaConfig),
    "mistral": lambda: _llama_like(tf.MistralConfig, sliding_window=8),
    "qwen2": lambda: _llama_like(tf.Qwen2Config),
    "gemma2": lambda: _llama_like(
        tf.Gemma2Config, head_dim=8, sliding_window=8, final_logit_softcapping=5.0, attn_logit_softcapping=20.0
    ),
    "gpt2": lambda: tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=256, **_COMMON),
    "gpt_neox": lambda: tf.GPTNeoXConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=256, **_COMMON,
    ),
    "phi": lambda: tf.PhiConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=256, **_COMMON,
    ),
}


def tiny_causal_lm(arch: str = "llama", seed: int = 0):
    """A randomly initialised, eval-mode, fp32 causal LM of the given family."""
    torch.manual_seed(seed)
    config = CONFIGS[arch]()
    model = tf.AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = PAD
    model.generation_config.eos_token_id = EOS
    return model.eval()


def prompts(batch: int = 2, length: int = 6, seed: int = 0, ragged: bool = False):
    """Random prompt ids avoiding special tokens; with `ragged`, left padding of varying length."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    if ragged:
        for b in range(batch):
            pad = b % (length - 1)
            ids[b, :pad] = PAD
            mask[b, :pad] = 0
    return ids, mask


def spread_head(model, objectives=("harmless", "helpful", "honest"), seed=0):
    """A shared-trunk MultiValueHead for `model` with N(0, 1) weights (values spread out, so the weights matter)."""
    from hf_rmod import MultiValueHead

    torch.manual_seed(seed)
    head = MultiValueHead.for_policy(model, objectives=list(objectives))
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0.0, 1.0)
    return head.eval()


def seeded(fn, seed=1234):
    """``fn()`` after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    return fn()


class LogitsRecorder(tf.LogitsProcessor):
    """Records the (ids, scores) the loop samples from; with no warpers these are raw logits."""

    def __init__(self):
        self.seen = []

    def __call__(self, input_ids, scores):
        self.seen.append((input_ids.clone(), scores.clone()))
        return scores
