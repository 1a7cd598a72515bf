"""Top-p from a partial sort: the tokens transformers' TopPLogitsWarper keeps, on peaked and flat rows."""

from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from hf_rmod.logits_process import PartialSortTopPLogitsWarper, partial_sort_top_p_kwargs, swap_top_p
from tiny_models import tiny_causal_lm


@pytest.mark.parametrize("scale", [0.3, 1.0, 3.0, 10.0])
@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.99])
@pytest.mark.parametrize("k", [4, 64])
def test_keeps_the_tokens_top_p_keeps(scale, top_p, k):
    g = torch.Generator().manual_seed(int(scale * 100) + k)
    scores = torch.randn(64, 1000, generator=g) * scale  # small scale: flat rows, nucleus wider than k -> fallback
    original = scores.clone()
    ours = PartialSortTopPLogitsWarper(top_p, k=k)(None, scores)
    theirs = TopPLogitsWarper(top_p)(None, scores)
    assert torch.equal(scores, original)  # out of place
    kept_ours, kept_theirs = ours.isfinite(), theirs.isfinite()
    # identical up to float rounding at the boundary token: at most one token per row differs, and rarely
    diff = (kept_ours != kept_theirs).sum(-1)
    assert int(diff.max()) <= 1 and int((diff > 0).sum()) <= 1
    torch.testing.assert_close(ours[kept_ours & kept_theirs], scores[kept_ours & kept_theirs])
    assert bool((ours[kept_ours] == scores[kept_ours]).all())


def test_min_tokens_to_keep_top_p_one_and_argument_errors():
    scores = torch.tensor([[10.0, 0.0, -1.0, -2.0]])
    assert PartialSortTopPLogitsWarper(0.5, k=2)(None, scores).isfinite().tolist() == [[True, False, False, False]]
    kept = PartialSortTopPLogitsWarper(0.5, k=2, min_tokens_to_keep=3)(None, scores).isfinite()
    assert kept.tolist() == [[True, True, True, False]]
    assert torch.equal(PartialSortTopPLogitsWarper(1.0)(None, scores), scores)
    with pytest.raises(ValueError, match=r"`top_p` has to be a float in \(0, 1\]"):
        PartialSortTopPLogitsWarper(0.0)
    with pytest.raises(ValueError, match="`k`"):
        PartialSortTopPLogitsWarper(0.9, k=0)


def test_swap_top_p_keeps_order_and_settings():
    procs = LogitsProcessorList([TemperatureLogitsWarper(0.7), TopKLogitsWarper(5), TopPLogitsWarper(0.8)])
    swapped = swap_top_p(procs)
    assert [type(p) for p in swapped] == [TemperatureLogitsWarper, TopKLogitsWarper, PartialSortTopPLogitsWarper]
    assert swapped[2].top_p == pytest.approx(0.8) and type(procs[2]) is TopPLogitsWarper  # the input list unchanged


def test_sampler_kwargs_sample_what_plain_generate_samples():
    """The sampler moves temperature and top-p into logits_processor: token for token what generate samples."""
    from hf_rmod.experiments.configs import SamplingConfig
    from hf_rmod.experiments.sampling import _generate_kwargs

    model = tiny_causal_lm("llama")

    class Tok:
        pad_token_id = 0

    config = SamplingConfig(num_responses=4, max_new_tokens=12, generation_kwargs={"temperature": 0.5})
    kwargs = _generate_kwargs(Tok(), config)
    assert "logits_processor" in kwargs and kwargs["top_p"] == 1.0 and kwargs["temperature"] == 1.0
    ids = torch.randint(3, 90, (2, 5), generator=torch.Generator().manual_seed(0))
    plain = {**config.sampling, "num_return_sequences": 4, "max_new_tokens": 12, "pad_token_id": 0}
    torch.manual_seed(1)
    expected = model.generate(ids, attention_mask=torch.ones_like(ids), eos_token_id=None, **plain)
    torch.manual_seed(1)
    got = model.generate(ids, attention_mask=torch.ones_like(ids), eos_token_id=None, **kwargs)
    assert torch.equal(got, expected)
    other = _generate_kwargs(Tok(), SamplingConfig(generation_kwargs={"min_p": 0.1}))
    assert "logits_processor" not in other  # another warper: generate's own processors
    # a non-warper processor (repetition penalty) runs before the warpers either way: still token for token
    penalised = _generate_kwargs(Tok(), SamplingConfig(num_responses=4, max_new_tokens=12,
                                                       generation_kwargs={"repetition_penalty": 1.3}))
    assert "logits_processor" in penalised
    torch.manual_seed(2)
    expected = model.generate(ids, attention_mask=torch.ones_like(ids), eos_token_id=None,
                              **{**plain, "temperature": 0.7, "repetition_penalty": 1.3})
    torch.manual_seed(2)
    got = model.generate(ids, attention_mask=torch.ones_like(ids), eos_token_id=None, **penalised)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("kwargs", [
    {"do_sample": False, "top_p": 0.9, "top_k": 0},  # greedy: no warper
    {"do_sample": True, "top_p": 1.0, "top_k": 0},  # no nucleus
    {"do_sample": True, "top_p": 0.9},  # top_k absent: transformers' top_k=50 runs first
    {"do_sample": True, "top_p": 0.9, "top_k": 20},
    {"do_sample": True, "top_p": 0.9, "top_k": 0, "min_p": 0.1},  # another warper
])
def test_partial_sort_kwargs_leave_other_settings_to_generate(kwargs):
    assert partial_sort_top_p_kwargs(kwargs) is kwargs


def test_partial_sort_kwargs_move_temperature_and_top_p_into_processors_without_mutating():
    kwargs = {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 0, "max_new_tokens": 3}
    before = dict(kwargs)
    out = partial_sort_top_p_kwargs(kwargs)
    assert kwargs == before and out["temperature"] == 1.0 and out["top_p"] == 1.0 and out["max_new_tokens"] == 3
    temp, top_p = out["logits_processor"]
    assert temp.temperature == 0.7 and isinstance(top_p, PartialSortTopPLogitsWarper) and top_p.top_p == 0.9
