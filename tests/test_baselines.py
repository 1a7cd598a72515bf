"""The paper's baselines as library features: Rewarded Soups and MOD, on tiny random models (no downloads)."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers as tf

from hf_rmod.baselines import mod_generate, rewarded_soup
from tiny_models import CONFIGS, EOS, PAD, prompts, tiny_causal_lm


def _seeded(fn, seed=1234):
    torch.manual_seed(seed)
    return fn()


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _logits(model, ids, mask=None):
    with torch.no_grad():
        return model(ids, attention_mask=mask).logits


SAMPLING = dict(do_sample=True, temperature=0.9, top_k=20, top_p=0.95, repetition_penalty=1.2)


# ============================================================================================ Rewarded Soups
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_soup_of_two_copies_is_the_model(arch):
    model = tiny_causal_lm(arch)
    ids, mask = prompts(batch=2, length=6, ragged=True)
    soup = rewarded_soup([model, copy.deepcopy(model)], [0.3, 0.7])
    assert type(soup) is type(model) and soup is not model
    torch.testing.assert_close(_logits(soup, ids, mask), _logits(model, ids, mask), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_soup_weights_one_zero_give_the_first_policy_exactly(arch):
    a, b = tiny_causal_lm(arch, seed=0), tiny_causal_lm(arch, seed=1)
    before_a, before_b = _state(a), _state(b)
    soup = rewarded_soup([a, b], (1, 0))
    for name, value in soup.state_dict().items():
        assert torch.equal(value, before_a[name]), name
    ids, mask = prompts(batch=2, length=6, ragged=True)
    assert torch.equal(_logits(soup, ids, mask), _logits(a, ids, mask))
    # the inputs are untouched, and the soup shares no storage with them
    for model, before in ((a, before_a), (b, before_b)):
        for name, value in model.state_dict().items():
            assert torch.equal(value, before[name]), name
    with torch.no_grad():
        next(soup.parameters()).add_(1.0)
    assert torch.equal(next(a.parameters()), before_a[next(iter(dict(a.named_parameters())))])


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_soup_half_half_is_the_manual_average(arch):
    a, b = tiny_causal_lm(arch, seed=0), tiny_causal_lm(arch, seed=1)
    soup = rewarded_soup([a, b], torch.tensor([0.5, 0.5]))
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    for name, value in soup.named_parameters():
        torch.testing.assert_close(value, 0.5 * pa[name] + 0.5 * pb[name], rtol=0, atol=1e-7)
    assert not torch.equal(_logits(soup, *prompts()), _logits(a, *prompts()))


def test_soup_keeps_tied_weights_tied():
    a, b = tiny_causal_lm("gpt2", seed=0), tiny_causal_lm("gpt2", seed=1)
    assert a.lm_head.weight is a.transformer.wte.weight
    soup = rewarded_soup([a, b], [0.8, 0.2])
    assert soup.lm_head.weight is soup.transformer.wte.weight
    torch.testing.assert_close(soup.lm_head.weight, 0.8 * a.lm_head.weight + 0.2 * b.lm_head.weight)


def test_soup_of_three_bf16_policies_keeps_dtype_and_device():
    models = [tiny_causal_lm("llama", seed=s).to(torch.bfloat16) for s in range(3)]
    soup = rewarded_soup(models, [0.2, 0.3, 0.5])
    name, value = next(iter(soup.named_parameters()))
    assert value.dtype == torch.bfloat16
    ref = sum(w * dict(m.named_parameters())[name].float() for w, m in zip([0.2, 0.3, 0.5], models))
    torch.testing.assert_close(value, ref.to(torch.bfloat16))


def test_soup_refuses_other_architectures():
    with pytest.raises(ValueError, match=r"policies\[1\]` is a GPT2LMHeadModel but `policies\[0\]` is a LlamaForCausalLM"):
        rewarded_soup([tiny_causal_lm("llama"), tiny_causal_lm("gpt2")], [0.5, 0.5])


def test_soup_refuses_another_config():
    config = CONFIGS["llama"]()
    config.rms_norm_eps = 1e-3
    other = tf.AutoModelForCausalLM.from_config(config)
    with pytest.raises(ValueError, match=r"policies\[1\]\.config\.rms_norm_eps` is 0\.001"):
        rewarded_soup([tiny_causal_lm("llama"), other], [0.5, 0.5])


def test_soup_refuses_another_shape_naming_the_parameter():
    other = tiny_causal_lm("llama", seed=1)
    other.model.norm.weight = torch.nn.Parameter(torch.ones(16))
    with pytest.raises(ValueError, match=r"Parameter `model\.norm\.weight` has shape \(16,\) in `policies\[1\]`"):
        rewarded_soup([tiny_causal_lm("llama"), other], [0.5, 0.5])


def test_soup_refuses_untied_against_tied():
    config = CONFIGS["gpt2"]()
    config.tie_word_embeddings = False
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        rewarded_soup([tiny_causal_lm("gpt2"), tf.AutoModelForCausalLM.from_config(config)], [0.5, 0.5])


@pytest.mark.parametrize(
    "weights, error, pattern",
    [
        ([1.0], ValueError, r"`weights` has 1 entries \[1\.0\] but there are 2 policies"),
        ([0.5, 0.3, 0.2], ValueError, "3 entries"),
        ([0.7, 0.7], ValueError, r"must sum to 1, got \[0\.7, 0\.7\] \(sum 1\.4\).*normalised they would be \[0\.5, 0\.5\]"),
        ([1.5, -0.5], ValueError, "must be non-negative"),
        ([float("nan"), 1.0], ValueError, "must be finite"),
        ("ab", TypeError, "list of numbers"),
        (["a", "b"], TypeError, "must hold numbers"),
    ],
)
def test_soup_weight_errors(weights, error, pattern):
    a, b = tiny_causal_lm("llama"), tiny_causal_lm("llama", seed=1)
    with pytest.raises(error, match=pattern):
        rewarded_soup([a, b], weights)


def test_soup_policy_errors():
    model = tiny_causal_lm("llama")
    with pytest.raises(TypeError, match=r"got a single LlamaForCausalLM; pass policies=\[policy_a, policy_b\]"):
        rewarded_soup(model, [1.0])
    with pytest.raises(ValueError, match="`policies` is empty"):
        rewarded_soup([], [])
    with pytest.raises(TypeError, match=r"`policies\[1\]` must be a torch/transformers model, got str"):
        rewarded_soup([model, "gpt2"], [0.5, 0.5])


# ============================================================================================ MOD
class _TokenCounter:
    """(rows, seq_len) of every forward of each model, from a hook on its input embeddings."""

    def __init__(self, *models):
        self.calls = [[] for _ in models]
        self._hooks = [
            m.get_input_embeddings().register_forward_hook(lambda mod, args, out, i=i: self.calls[i].append(tuple(args[0].shape)))
            for i, m in enumerate(models)
        ]

    def close(self):
        for h in self._hooks:
            h.remove()


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2"])
def test_mod_weights_one_zero_sample_the_first_policy_token_for_token(arch):
    a, b = tiny_causal_lm(arch, seed=0), tiny_causal_lm(arch, seed=1)
    ids, mask = prompts(batch=3, length=6, seed=2, ragged=True)
    kw = dict(attention_mask=mask, max_new_tokens=15, eos_token_id=None, pad_token_id=PAD, **SAMPLING)
    plain = _seeded(lambda: a.generate(ids, **kw))
    mod = _seeded(lambda: mod_generate([a, b], [1.0, 0.0], ids, **kw))
    assert torch.equal(plain, mod)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_mod_weights_zero_one_sample_the_second_policy_with_its_own_cache(arch):
    # the second policy runs on MOD's own DynamicCache, mask and position ids (left padding, absolute positions)
    a, b = tiny_causal_lm(arch, seed=0), tiny_causal_lm(arch, seed=1)
    ids, mask = prompts(batch=3, length=6, seed=4, ragged=True)
    kw = dict(attention_mask=mask, max_new_tokens=15, eos_token_id=None, pad_token_id=PAD, **SAMPLING)
    plain = _seeded(lambda: b.generate(ids, **kw))
    mod = _seeded(lambda: mod_generate([a, b], [0.0, 1.0], ids, **kw))
    assert torch.equal(plain, mod)


@pytest.mark.parametrize("combine", ["logits", "log_probs"])
def test_mod_greedy_one_zero_equals_plain_greedy(combine):
    a, b = tiny_causal_lm("qwen2", seed=0), tiny_causal_lm("qwen2", seed=1)
    ids, mask = prompts(batch=2, length=5, seed=3, ragged=True)
    kw = dict(attention_mask=mask, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=PAD)
    assert torch.equal(a.generate(ids, **kw), mod_generate([a, b], [1, 0], ids, combine=combine, **kw))


def _greedy_from_scratch(policies, weights, ids, mask, steps, log_probs=False):
    """Reference: re-encode the whole sequence with every policy each step, argmax of the weighted sum."""
    for _ in range(steps):
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        total = 0
        for p, w in zip(policies, weights):
            with torch.no_grad():
                logits = p(ids, attention_mask=mask, position_ids=pos).logits[:, -1].float()
            total = total + w * (torch.log_softmax(logits, -1) if log_probs else logits)
        nxt = total.argmax(-1, keepdim=True)
        ids, mask = torch.cat([ids, nxt], -1), torch.cat([mask, torch.ones_like(nxt)], -1)
    return ids


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("combine", ["logits", "log_probs"])
def test_mod_greedy_matches_the_weighted_combination_computed_from_scratch(arch, combine):
    policies = [tiny_causal_lm(arch, seed=s) for s in range(3)]
    weights = [0.5, 0.3, 0.2]
    ids, mask = prompts(batch=3, length=6, seed=5, ragged=True)
    out = mod_generate(policies, weights, ids, attention_mask=mask, max_new_tokens=10, do_sample=False,
                       eos_token_id=None, pad_token_id=PAD, combine=combine)
    ref = _greedy_from_scratch(policies, weights, ids, mask, 10, log_probs=combine == "log_probs")
    assert torch.equal(out, ref)
    plain = policies[0].generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False, eos_token_id=None)
    assert not torch.equal(out, plain)  # the other policies do change the decoding


def test_mod_left_padded_batch_equals_each_prompt_alone():
    a, b = tiny_causal_lm("gpt2", seed=0), tiny_causal_lm("gpt2", seed=1)
    ids, mask = prompts(batch=3, length=7, seed=6, ragged=True)
    kw = dict(max_new_tokens=9, do_sample=False, eos_token_id=None, pad_token_id=PAD)
    batched = mod_generate([a, b], [0.6, 0.4], ids, attention_mask=mask, **kw)
    for row in range(3):
        real = mask[row].bool()
        alone = mod_generate([a, b], [0.6, 0.4], ids[row : row + 1, real], **kw)
        assert torch.equal(batched[row, 7:], alone[0, int(real.sum()):]), row


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_mod_prefills_once_and_feeds_one_token_per_row_per_step(arch):
    policies = [tiny_causal_lm(arch, seed=s) for s in range(3)]
    batch, plen, T = 2, 7, 8
    ids, mask = prompts(batch=batch, length=plen, seed=1, ragged=True)
    counter = _TokenCounter(*policies)
    try:
        _seeded(lambda: mod_generate(policies, [0.5, 0.25, 0.25], ids, attention_mask=mask, max_new_tokens=T,
                                     do_sample=True, eos_token_id=None, pad_token_id=PAD))
    finally:
        counter.close()
    for calls in counter.calls:  # every policy: the prompt once, then one token per row per step (never a re-encode)
        assert calls[0] == (batch, plen)
        assert calls[1:] == [(batch, 1)] * (T - 1)  # the last sampled token is never fed (as in `generate`)


def test_mod_never_runs_a_zero_weight_policy():
    a, b = tiny_causal_lm("llama", seed=0), tiny_causal_lm("llama", seed=1)
    counter = _TokenCounter(a, b)
    try:
        mod_generate([a, b], [1.0, 0.0], prompts()[0], max_new_tokens=4, do_sample=False)
    finally:
        counter.close()
    assert len(counter.calls[0]) == 4 and counter.calls[1] == []


def test_mod_eos_pads_finished_rows_and_max_new_tokens_is_respected():
    a, b = tiny_causal_lm("llama", seed=0), tiny_causal_lm("llama", seed=1)
    ids, mask = prompts(batch=2, length=5, seed=8)
    kw = dict(attention_mask=mask, do_sample=False, pad_token_id=PAD)
    free = mod_generate([a, b], [0.7, 0.3], ids, max_new_tokens=12, eos_token_id=None, **kw)
    assert free.shape == (2, 5 + 12)
    first, second = free[0, 5:].tolist(), free[1, 5:].tolist()
    stop = next(p for p in range(1, 8) if first[p] not in first[:p] and first[p] not in second)  # ends row 0 only
    eos = first[stop]
    out = mod_generate([a, b], [0.7, 0.3], ids, max_new_tokens=12, eos_token_id=eos, **kw)
    assert out.shape == (2, 5 + 12)  # row 1 keeps going to max_new_tokens
    assert out[0, 5 + stop].item() == eos and (out[0, 5 + stop + 1 :] == PAD).all()
    assert torch.equal(out[1], free[1])
    both = mod_generate([a, b], [0.7, 0.3], ids[:1], attention_mask=mask[:1], max_new_tokens=12, eos_token_id=eos,
                        do_sample=False, pad_token_id=PAD)
    assert both.shape == (1, 5 + stop + 1)  # everything finished: the loop stops at once


def test_mod_plain_generate_with_eos_parity():
    a, b = tiny_causal_lm("llama", seed=0), tiny_causal_lm("llama", seed=1)
    ids, mask = prompts(batch=2, length=5, seed=9, ragged=True)
    kw = dict(attention_mask=mask, max_new_tokens=20, do_sample=True, top_k=0, eos_token_id=[EOS, 7, 11],
              pad_token_id=PAD)
    plain = _seeded(lambda: a.generate(ids, **kw))
    assert torch.equal(plain, _seeded(lambda: mod_generate([a, b], [1, 0], ids, **kw)))


def test_mod_return_dict_scores_and_num_return_sequences():
    a, b = tiny_causal_lm("llama", seed=0), tiny_causal_lm("llama", seed=1)
    ids, mask = prompts(batch=2, length=5, seed=10, ragged=True)
    out = _seeded(lambda: mod_generate([a, b], [0.5, 0.5], ids, attention_mask=mask, max_new_tokens=6, do_sample=True,
                                       num_return_sequences=3, eos_token_id=None, return_dict_in_generate=True,
                                       output_scores=True, output_logits=True))
    assert isinstance(out, tf.generation.utils.GenerateDecoderOnlyOutput)
    assert out.sequences.shape == (6, 11)
    assert len(out.scores) == len(out.logits) == 6 and out.scores[0].shape == (6, a.config.vocab_size)
    assert torch.equal(out.sequences[:, :5], ids.repeat_interleave(3, 0))


def test_mod_streamer_receives_prompt_then_tokens():
    class Collect:
        def __init__(self):
            self.chunks, self.ended = [], False

        def put(self, value):
            self.chunks.append(value)

        def end(self):
            self.ended = True

    a, b = tiny_causal_lm("llama", seed=0), tiny_causal_lm("llama", seed=1)
    ids = prompts(batch=1, length=4)[0]
    streamer = Collect()
    out = mod_generate([a, b], [0.5, 0.5], ids, max_new_tokens=5, do_sample=False, eos_token_id=None, streamer=streamer)
    assert streamer.ended and torch.equal(torch.cat([c.reshape(1, -1) for c in streamer.chunks], -1), out)


def _other_vocab_llama():
    config = CONFIGS["llama"]()
    config.vocab_size = 98
    return tf.AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize(
    "make, weights, kwargs, error, pattern",
    [
        (lambda: [tiny_causal_lm(), _other_vocab_llama()], [0.5, 0.5], {}, ValueError,
         r"`policies\[1\]` has a vocabulary of 98 tokens but `policies\[0\]` has 97"),
        (lambda: [tiny_causal_lm(), tiny_causal_lm(seed=1)], [1.0], {}, ValueError,
         r"`weights` has 1 entries \[1\.0\] but there are 2 policies"),
        (lambda: [tiny_causal_lm(), tiny_causal_lm(seed=1)], [float("inf"), 0.0], {}, ValueError, "must be finite"),
        (lambda: [tiny_causal_lm(), tiny_causal_lm(seed=1)], [0.5, -0.5], {}, ValueError, "positive sum"),
        (lambda: [tiny_causal_lm(), tiny_causal_lm(seed=1)], [0.5, 0.5], {"combine": "probs"}, ValueError,
         r"`combine` must be one of \['logits', 'log_probs'\], got 'probs'"),
        (lambda: [tiny_causal_lm(), tiny_causal_lm(seed=1)], [0.5, 0.5], {"num_beams": 2}, ValueError, "num_beams"),
        (lambda: [tiny_causal_lm(), tiny_causal_lm(seed=1)], [0.5, 0.5], {"custom_generate": print}, ValueError,
         "MOD is itself the decoding loop"),
        (lambda: [tiny_causal_lm(), torch.nn.Linear(2, 2)], [0.5, 0.5], {}, TypeError,
         r"`policies\[1\]` must be a transformers causal LM"),
        (lambda: tiny_causal_lm(), [1.0], {}, TypeError, "got a single LlamaForCausalLM"),
    ],
)
def test_mod_errors(make, weights, kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        mod_generate(make(), weights, prompts()[0], max_new_tokens=3, **kwargs)


def test_mod_checks_tokenizer_fingerprints_when_given():
    class Tok:
        def __init__(self, vocab, name):
            self.vocab, self.name_or_path = vocab, name
            self.all_special_ids, self.eos_token_id = [1], 1

        def get_vocab(self):
            return dict(self.vocab)

        def __len__(self):
            return len(self.vocab)

    same = {f"t{i}": i for i in range(97)}
    other = dict(same, t5=6, t6=5)  # two tokens swapped: same size, other ids
    policies = [tiny_causal_lm(), tiny_causal_lm(seed=1)]
    out = mod_generate(policies, [0.5, 0.5], prompts()[0], max_new_tokens=2, do_sample=False,
                       tokenizers=[Tok(same, "a"), Tok(same, "b")])
    assert out.shape[1] == 8
    with pytest.raises(ValueError, match=r"`tokenizers\[1\]` \(b, 97 tokens\) maps token ids differently"):
        mod_generate(policies, [0.5, 0.5], prompts()[0], max_new_tokens=2, tokenizers=[Tok(same, "a"), Tok(other, "b")])
