"""RMOD decoding at the edges (issue 11): static cache and compile, batch-indexed processors, value-model
position limits, bf16 policies, device placement and host syncs. Tiny random models, CPU unless marked `gpu`."""

from __future__ import annotations

import collections

import pytest
import torch
from transformers import CompileConfig, LogitsProcessorList, StaticCache

import hf_rmod
import hf_rmod.generation as generation
from hf_rmod import MultiValueHead, RMODConfig
from tiny_models import LogitsRecorder, PAD, VOCAB, prompts, seeded, spread_head, tiny_causal_lm




def _same_run(a, b):
    assert torch.equal(a.sequences, b.sequences)
    assert torch.equal(a.chosen, b.chosen) and torch.equal(a.block_mask, b.block_mask)
    torch.testing.assert_close(a.values, b.values, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.weights, b.weights, atol=1e-5, rtol=1e-5)


class _RowCounter:
    """Rows of every policy forward (read at the input embedding)."""

    def __init__(self, model):
        self.rows = []
        self._h = model.get_input_embeddings().register_forward_hook(lambda m, a, o: self.rows.append(a[0].shape[0]))

    def close(self):
        self._h.remove()


# ----------------------------------------------------------------------------------------------- 1. static cache
@pytest.mark.parametrize("arch", ["llama", "gpt2", "mistral"])
def test_static_cache_gives_the_dynamic_cache_run(arch):
    model = hf_rmod.enable(tiny_causal_lm(arch))
    ids, mask = prompts(batch=2, length=6, seed=21, ragged=True)
    cfg = RMODConfig(value_model=spread_head(model), num_candidates=3, block_size=4, lam=1.0)
    kw = dict(attention_mask=mask, rmod_config=cfg, max_new_tokens=10, do_sample=True, top_k=0, eos_token_id=None,
              pad_token_id=PAD, return_dict_in_generate=True)  # 10 = 2.5 blocks: the last token is fed too
    dynamic = seeded(lambda: model.generate(ids, **kw))
    static = seeded(lambda: model.generate(ids, cache_implementation="static", **kw))
    _same_run(dynamic, static)


def test_static_cache_keeps_finished_prompts_rows_and_the_same_random_draws():
    model = hf_rmod.enable(tiny_causal_lm("llama"))
    ids, mask = prompts(batch=3, length=5, seed=22, ragged=True)
    cfg = RMODConfig(value_model=spread_head(model), num_candidates=2, block_size=3, lam=1.0)
    # ten EOS ids: prompts end in different blocks (checked below)
    kw = dict(attention_mask=mask, rmod_config=cfg, max_new_tokens=18, do_sample=True, top_k=0,
              eos_token_id=list(range(40, 50)), pad_token_id=PAD, return_dict_in_generate=True)
    dynamic = seeded(lambda: model.generate(ids, **kw))
    counter = _RowCounter(model)
    try:
        static = seeded(lambda: model.generate(ids, cache_implementation="static", **kw))
    finally:
        counter.close()
    n_blocks = dynamic.block_mask.sum(-1)
    assert len(set(n_blocks.tolist())) > 1  # some prompt finished while another went on
    _same_run(dynamic, static)
    assert counter.rows[0] == 3 and set(counter.rows[1:]) == {3 * 2}  # fixed rows: one shape for every step


def test_static_cache_k1_equals_plain_generate_with_a_static_cache():
    model = hf_rmod.enable(tiny_causal_lm("qwen2"))
    ids, mask = prompts(batch=2, length=5, seed=23, ragged=True)
    cfg = RMODConfig(value_model=spread_head(model), num_candidates=1, block_size=4)
    kw = dict(attention_mask=mask, max_new_tokens=11, do_sample=True, temperature=0.9, top_k=20,
              cache_implementation="static", eos_token_id=None, pad_token_id=PAD)
    plain = seeded(lambda: model.generate(ids, **kw))
    rmod = seeded(lambda: model.generate(ids, rmod_config=cfg, **kw))
    assert torch.equal(plain, rmod)


def test_user_static_cache_too_small_is_refused_naming_the_sizes():
    model = hf_rmod.enable(tiny_causal_lm("llama"))
    ids, _ = prompts(batch=1, length=5, seed=24)
    cfg = RMODConfig(value_model=spread_head(model), num_candidates=2, block_size=4)
    small = StaticCache(config=model.config, max_cache_len=5 + 8 - 1)  # what `generate` itself would need
    with pytest.raises(ValueError, match=r"holds 12 positions.*= 13"):
        model.generate(ids, rmod_config=cfg, cache=small, max_new_tokens=8, do_sample=True)
    ok = StaticCache(config=model.config, max_cache_len=13)
    out = model.generate(ids, rmod_config=cfg, cache=ok, max_new_tokens=8, do_sample=True, eos_token_id=None)
    assert out.shape == (1, 13)


def _counting_backend():
    compiled = []

    def backend(gm, example_inputs):
        compiled.append(len(example_inputs))
        return gm.forward

    return backend, compiled


def test_compiled_forward_with_static_cache_gives_the_eager_run():
    model = hf_rmod.enable(tiny_causal_lm("llama"))
    ids, mask = prompts(batch=2, length=5, seed=25, ragged=True)
    cfg = RMODConfig(value_model=spread_head(model), num_candidates=3, block_size=4, lam=1.0)
    kw = dict(attention_mask=mask, rmod_config=cfg, max_new_tokens=10, do_sample=True, top_k=0,
              eos_token_id=list(range(40, 45)), pad_token_id=PAD, return_dict_in_generate=True)
    eager = seeded(lambda: model.generate(ids, **kw))
    backend, compiled = _counting_backend()
    cc = CompileConfig(backend=backend, mode=None)
    cc._compile_all_devices = True  # transformers compiles on accelerators only unless asked
    first = seeded(lambda: model.generate(ids, cache_implementation="static", compile_config=cc, **kw))
    n_graphs = len(compiled)
    second = seeded(lambda: model.generate(ids, cache_implementation="static", compile_config=cc, **kw))
    assert n_graphs >= 1  # the decode steps ran through torch.compile
    assert len(compiled) == n_graphs  # a second call reuses the graphs: fixed rows, in-place cache reorders
    _same_run(eager, first)
    _same_run(eager, second)


def test_compiled_rmod_after_compiled_plain_generate_still_reads_the_hidden_state():
    """Plain `generate` compiles first (no lm_head hook in its graph); RMOD must not reuse that graph."""
    model = hf_rmod.enable(tiny_causal_lm("llama"))
    ids, mask = prompts(batch=2, length=5, seed=40, ragged=True)
    cfg = RMODConfig(value_model=spread_head(model), num_candidates=3, block_size=4)
    cc = CompileConfig(backend="eager", mode=None)
    cc._compile_all_devices = True
    kw = dict(attention_mask=mask, max_new_tokens=10, do_sample=True, eos_token_id=None, pad_token_id=PAD)
    static = dict(cache_implementation="static", compile_config=cc, max_cache_len=32)  # one cache shape for both
    seeded(lambda: model.generate(ids, num_return_sequences=3, **static, **kw))
    eager = seeded(lambda: model.generate(ids, rmod_config=cfg, return_dict_in_generate=True, **kw))
    compiled = seeded(lambda: model.generate(ids, rmod_config=cfg, return_dict_in_generate=True, **static, **kw))
    _same_run(eager, compiled)


@pytest.mark.slow
def test_inductor_compiled_rmod_matches_eager():
    """Real inductor codegen on the CPU: ~50 s of compilation for a tiny model, hence slow."""
    model = hf_rmod.enable(tiny_causal_lm("llama"))
    ids, mask = prompts(batch=2, length=5, seed=26, ragged=True)
    cfg = RMODConfig(value_model=spread_head(model), num_candidates=3, block_size=4)
    kw = dict(attention_mask=mask, rmod_config=cfg, max_new_tokens=10, do_sample=True, top_k=0, eos_token_id=None,
              pad_token_id=PAD, return_dict_in_generate=True)
    eager = seeded(lambda: model.generate(ids, **kw))
    cc = CompileConfig(mode="default")
    cc._compile_all_devices = True
    compiled = seeded(lambda: model.generate(ids, cache_implementation="static", compile_config=cc, **kw))
    assert torch.equal(eager.sequences, compiled.sequences)
    torch.testing.assert_close(eager.values, compiled.values, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------------------------- 4. processors
def _finishing_kwargs():
    return dict(max_new_tokens=12, do_sample=True, top_k=0, eos_token_id=list(range(40, 50)), pad_token_id=PAD)


def test_prefix_allowed_tokens_fn_gets_the_prompt_index_not_the_row():
    model = hf_rmod.enable(tiny_causal_lm("llama"))
    ids, mask = prompts(batch=3, length=5, seed=27, ragged=True)
    allowed = {b: [10 + b, 20 + b, 30 + b, 40 + b] for b in range(3)}  # 40 + b: prompt b's EOS
    seen = collections.Counter()

    def fn(batch_id, sent):
        assert 0 <= batch_id < 3
        assert torch.equal(sent[:5], ids[batch_id])  # the row really belongs to that prompt
        seen[batch_id] += 1
        return allowed[batch_id]

    cfg = RMODConfig(value_model=spread_head(model), num_candidates=2, block_size=3)
    kw = dict(_finishing_kwargs(), eos_token_id=[40, 41, 42])
    out = seeded(lambda: model.generate(ids, attention_mask=mask, rmod_config=cfg, prefix_allowed_tokens_fn=fn,
                                         return_dict_in_generate=True, **kw))
    assert set(seen) == {0, 1, 2}
    for b in range(3):
        new = out.sequences[b, 5:]
        assert set(new.tolist()) <= set(allowed[b]) | {PAD}
    assert not out.block_mask.all()  # prompts were dropped along the way (rows != prompts)


def test_prefix_allowed_tokens_fn_with_num_return_sequences():
    model = hf_rmod.enable(tiny_causal_lm("llama"))
    ids, _ = prompts(batch=2, length=4, seed=28)
    got = set()

    def fn(batch_id, sent):
        assert torch.equal(sent[:4], ids[batch_id])
        got.add(batch_id)
        return [11 + batch_id, 12 + batch_id]

    cfg = RMODConfig(value_model=spread_head(model), num_candidates=2, block_size=2)
    out = seeded(lambda: model.generate(ids, rmod_config=cfg, prefix_allowed_tokens_fn=fn, num_return_sequences=2,
                                         max_new_tokens=4, do_sample=True, eos_token_id=None))
    assert got == {0, 1} and out.shape == (4, 8)
    for row in range(4):
        assert set(out[row, 4:].tolist()) <= {11 + row // 2, 12 + row // 2}


def test_encoder_repetition_penalty_uses_each_rows_own_prompt():
    model = hf_rmod.enable(tiny_causal_lm("llama"))
    ids, _ = prompts(batch=3, length=5, seed=29)
    rec = LogitsRecorder()
    cfg = RMODConfig(value_model=spread_head(model), num_candidates=2, block_size=3)
    out = seeded(lambda: model.generate(ids, rmod_config=cfg, encoder_repetition_penalty=4.0,
                                         logits_processor=LogitsProcessorList([rec]), return_dict_in_generate=True,
                                         **_finishing_kwargs()))
    assert not out.block_mask.all()
    with torch.no_grad():
        for step_ids, scores in rec.seen[::2]:
            raw = model(step_ids).logits[:, -1]
            for row in range(step_ids.shape[0]):
                prompt = [b for b in range(3) if torch.equal(step_ids[row, :5], ids[b])]
                assert len(prompt) == 1
                changed = ((scores[row] - raw[row]).abs() > 1e-3).nonzero().flatten().tolist()
                assert set(changed) == set(ids[prompt[0]].tolist())


def test_guidance_scale_is_refused_naming_the_processor():
    model = hf_rmod.enable(tiny_causal_lm("llama"))
    ids, _ = prompts(batch=1, length=4, seed=30)
    cfg = RMODConfig(value_model=spread_head(model), num_candidates=2, block_size=2)
    with pytest.raises(ValueError, match="UnbatchedClassifierFreeGuidanceLogitsProcessor.*guidance_scale"):
        model.generate(ids, rmod_config=cfg, guidance_scale=1.5, max_new_tokens=4, do_sample=True)


def test_sequence_bias_and_bad_words_are_fine_with_candidate_rows():
    model = hf_rmod.enable(tiny_causal_lm("llama"))
    ids, mask = prompts(batch=2, length=5, seed=31, ragged=True)
    cfg = RMODConfig(value_model=spread_head(model), num_candidates=3, block_size=3)
    out = seeded(lambda: model.generate(ids, attention_mask=mask, rmod_config=cfg, bad_words_ids=[[7], [8]],
                                         sequence_bias={(9,): 50.0}, max_new_tokens=9, do_sample=True,
                                         eos_token_id=None))
    new = out[:, 5:]
    assert not ((new == 7) | (new == 8)).any()
    assert (new == 9).float().mean() > 0.9  # a +50 bias dominates every row


# ----------------------------------------------------------------------------------------------- 5. long inputs
def _gpt2_value_head(n_positions):
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    backbone = GPT2Model(GPT2Config(vocab_size=VOCAB, n_embd=24, n_layer=2, n_head=2, n_positions=n_positions))
    return MultiValueHead.from_backbone(backbone, objectives=["a", "b"]).eval()


def test_backbone_value_model_position_limit_is_an_error_before_decoding():
    model = hf_rmod.enable(tiny_causal_lm("llama"))
    ids, mask = prompts(batch=2, length=7, seed=32, ragged=True)  # longest real prompt: 7 tokens
    cfg = RMODConfig(value_model=_gpt2_value_head(16), num_candidates=2, block_size=4)
    counter = _RowCounter(model)
    try:
        with pytest.raises(ValueError, match=r"16 positions.*7 tokens.*max_new_tokens \(12\).*19.*value_max_length"):
            model.generate(ids, attention_mask=mask, rmod_config=cfg, max_new_tokens=12, do_sample=True)
    finally:
        counter.close()
    assert counter.rows == []  # refused before the policy ran
    out = model.generate(ids, attention_mask=mask, rmod_config=cfg, max_new_tokens=9, do_sample=True,
                         eos_token_id=None)  # 7 + 9 = 16 fits exactly
    assert out.shape == (2, 16)


# ----------------------------------------------------------------------------------------------- 7. bf16
class _Bf16Scorer:
    """Wraps the default scorer and hands back bfloat16 values (the Scorer protocol allows any float dtype)."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def block_values(self, block_ids, block_real):
        return self.inner.block_values(block_ids, block_real).to(torch.bfloat16)


def test_bf16_policy_values_solver_and_selection_run_in_float32():
    model = hf_rmod.enable(tiny_causal_lm("llama").to(torch.bfloat16))
    ids, mask = prompts(batch=2, length=5, seed=33, ragged=True)
    head = spread_head(model)
    assert all(p.dtype == torch.float32 for p in head.parameters())
    cfg = RMODConfig(value_model=head, num_candidates=4, block_size=3, lam=1.0)
    out = seeded(lambda: model.generate(ids, attention_mask=mask, rmod_config=cfg, max_new_tokens=9, do_sample=True,
                                         eos_token_id=None, return_dict_in_generate=True))
    assert out.values.dtype == out.weights.dtype == torch.float32
    assert torch.isfinite(out.values).all() and (out.solver_gap <= 1e-5).all()
    score = torch.einsum("bnkg,bng->bnk", out.values, out.weights)
    assert torch.equal(score.argmax(-1), out.chosen)
    for n in range(out.weights.shape[1]):  # the float32 solve of the same values
        sol = hf_rmod.solve_weights(out.values[:, n], lam=1.0)
        torch.testing.assert_close(out.weights[:, n], sol.weights.float(), atol=1e-5, rtol=1e-5)


def test_scorer_values_in_bf16_are_cast_to_float32():
    model = hf_rmod.enable(tiny_causal_lm("llama"))
    ids, _ = prompts(batch=2, length=5, seed=34)
    cfg = RMODConfig(value_model=spread_head(model), num_candidates=3, block_size=3, lam=1.0)
    gen = hf_rmod.RobustMultiObjectiveGenerator(
        scorer_factory=lambda head, policy, c: _Bf16Scorer(hf_rmod.scoring.make_scorer(head, policy, c)))
    out = seeded(lambda: hf_rmod.generate(model, ids, rmod_config=cfg, custom_generate=gen, max_new_tokens=6,
                                           do_sample=True, eos_token_id=None, return_dict_in_generate=True))
    assert out.values.dtype == torch.float32
    score = torch.einsum("bnkg,bng->bnk", out.values, out.weights)
    assert torch.equal(score.argmax(-1), out.chosen)


# ----------------------------------------------------------------------------------------------- 3. placement
def _report_device(model, device):
    """Make `model.device` report `device` (a fake layout: the weights stay where they are)."""
    cls = type(model)
    model.__class__ = type(cls.__name__, (cls,), {"device": property(lambda self: torch.device(device))})
    return model


def test_a_value_head_the_user_placed_is_not_moved():
    model = hf_rmod.enable(tiny_causal_lm("llama"))
    head = spread_head(model)
    _report_device(model, "meta")  # policy.device says "meta"; lm_head (and the hidden states) are on the CPU
    ids, _ = prompts(batch=1, length=4, seed=35)
    cfg = RMODConfig(value_model=head, num_candidates=2, block_size=2)
    out = model.generate(ids, rmod_config=cfg, max_new_tokens=4, do_sample=True, eos_token_id=None,
                         return_dict_in_generate=True)
    assert all(p.device.type == "cpu" for p in head.parameters())
    assert torch.isfinite(out.values).all()


def test_a_loaded_value_head_goes_to_the_lm_head_device_not_policy_device(tmp_path):
    model = hf_rmod.enable(tiny_causal_lm("llama"))
    spread_head(model).save_pretrained(tmp_path / "head")
    _report_device(model, "meta")
    ids, _ = prompts(batch=1, length=4, seed=36)
    cfg = RMODConfig(value_model=str(tmp_path / "head"), num_candidates=2, block_size=2)
    out = model.generate(ids, rmod_config=cfg, max_new_tokens=4, do_sample=True, eos_token_id=None,
                         return_dict_in_generate=True)
    head = generation._plumbing._cached_value_model(str(tmp_path / "head"))  # the head decoding loaded and cached
    assert head.device.type == "cpu"
    assert torch.isfinite(out.values).all()


def test_shared_trunk_scorer_moves_the_hidden_states_not_the_head():
    """The scorer copies each block's (rows, H) states to the head's device and keeps them on lm_head's device."""
    from hf_rmod.scoring import PolicyHiddenStateScorer

    model = tiny_causal_lm("llama")
    head = spread_head(model)
    scorer = PolicyHiddenStateScorer(head, model)
    moves = []

    class Tracked(torch.Tensor):
        def to(self, *args, **kwargs):
            moves.append(args[0] if args else kwargs.get("device"))
            return super().to(*args, **kwargs)

    try:
        with torch.no_grad():
            model(prompts(batch=2, length=4)[0])
        scorer.prefill(None, None)
        scorer._kept = scorer._kept.as_subclass(Tracked)
        scorer.block_values(None, None)
    finally:
        scorer.close()
    assert moves and all(torch.device(m) == head.device for m in moves)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_mapped_policy_with_heads_on_either_side():
    from accelerate import dispatch_model

    model = tiny_causal_lm("llama")
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                  "model.layers.1": 0, "model.norm": 0, "lm_head": 0}
    # main_device="cpu": the cpu-mapped modules run on the CPU (accelerate otherwise offloads them to the GPU)
    model = hf_rmod.enable(dispatch_model(model, device_map=device_map, main_device="cpu"))
    assert model.device.type == "cpu" and model.lm_head.weight.device.type == "cuda"
    ids, mask = prompts(batch=2, length=5, seed=37, ragged=True)
    kw = dict(attention_mask=mask, max_new_tokens=8, do_sample=True, top_k=1, eos_token_id=None, pad_token_id=PAD)
    for where in ("cuda:0", "cpu"):
        head = spread_head(model).to(where)
        cfg = RMODConfig(value_model=head, num_candidates=3, block_size=4)
        out = seeded(lambda: model.generate(ids, rmod_config=cfg, return_dict_in_generate=True, **kw))
        assert all(p.device == torch.device(where) for p in head.parameters())  # never moved
        score = torch.einsum("bnkg,bng->bnk", out.values, out.weights)
        assert torch.equal(score.argmax(-1), out.chosen) and torch.isfinite(out.values).all()
    k1 = RMODConfig(value_model=spread_head(model).to("cuda:0"), num_candidates=1, block_size=3)
    plain = seeded(lambda: model.generate(ids, **kw))
    assert torch.equal(plain, seeded(lambda: model.generate(ids, rmod_config=k1, **kw)))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_static_cache_and_compile_on_cuda_match_eager():
    model = hf_rmod.enable(tiny_causal_lm("llama").to("cuda"))
    ids, mask = (t.to("cuda") for t in prompts(batch=2, length=5, seed=38, ragged=True))
    cfg = RMODConfig(value_model=spread_head(model), num_candidates=4, block_size=4)
    kw = dict(attention_mask=mask, rmod_config=cfg, max_new_tokens=12, do_sample=True, top_k=1, eos_token_id=None,
              pad_token_id=PAD, return_dict_in_generate=True)
    eager = seeded(lambda: model.generate(ids, **kw))
    compiled = seeded(lambda: model.generate(ids, cache_implementation="static", **kw))  # compiles on CUDA
    assert torch.equal(eager.sequences, compiled.sequences)


# ----------------------------------------------------------------------------------------------- host syncs
def _syncs_per_block(model, ids, cfg, B, monkeypatch):
    """Host reads issued by hf_rmod's own code per block, with the accelerator policy forced on the CPU."""
    from torch.profiler import ProfilerActivity, profile

    monkeypatch.setattr(generation._plumbing, "_host_syncs_are_cheap", lambda device: False)
    python_reads = collections.Counter()
    for name in ("tolist", "cpu", "numpy", "item"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, _name=name, **k):
            python_reads[_name] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)

    def run(n_blocks):
        python_reads.clear()
        with profile(activities=[ProfilerActivity.CPU], with_stack=True) as prof:
            seeded(lambda: model.generate(ids, rmod_config=cfg, max_new_tokens=B * n_blocks, do_sample=True,
                                           eos_token_id=[VOCAB + 5], pad_token_id=PAD))
        ours = 0
        for event in prof.events():
            if event.name not in ("aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select"):
                continue
            parent = event.cpu_parent
            while parent is not None and parent.name.startswith("aten::"):
                parent = parent.cpu_parent
            if parent is not None and ("hf_rmod/generation.py" in parent.name or "hf_rmod/scoring.py" in parent.name):
                ours += 1
        return ours, sum(python_reads.values())

    (a, pa), (b, pb) = run(2), run(4)
    return (b - a) / 2, (pb - pa) / 2


def test_host_syncs_per_block_on_an_accelerator(monkeypatch):
    model = hf_rmod.enable(tiny_causal_lm("llama"))
    ids, _ = prompts(batch=2, length=5, seed=39)
    B = 8
    cfg = RMODConfig(value_model=spread_head(model), num_candidates=4, block_size=B, weights="uniform")
    aten, python = _syncs_per_block(model, ids, cfg, B, monkeypatch)
    # one read per block: which prompts' chosen candidates finished (`unfinished[chosen].tolist()`); no per-step
    # check; before issue 11 it was B/4 + 3 (every 4th step, `bool(still.any())`, two boolean-mask indexings)
    assert aten == 0
    assert python == 1
