"""RewardValueModel: reward functions on the decoded partial text as RMOD's value model (tiny models, offline)."""

from __future__ import annotations

import pytest
import torch

import hf_rmod
from hf_rmod import MultiValueHead, RMODConfig
from hf_rmod.defaults import build_chat_prompts
from hf_rmod.reward_values import RewardValueModel, chat_template_affixes
from tiny_models import VOCAB, tiny_causal_lm

TEMPLATE = "{% for m in messages %}<u> {{ m['content'] }} </u>{% endfor %}{% if add_generation_prompt %} <a>{% endif %}"
PROMPTS = ["w5 w6", "w7 w8 w9 w33", "w44"]  # no word starting with a special token (w0, w1, w2)


def word_tokenizer(chat_template: bool = True):
    """Word-level tokenizer over the tiny models' 97 ids: w0 pad, w1 EOS, w2 BOS, <u> </u> <a> the template's."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(VOCAB - 3)}
    vocab.update({"<u>": VOCAB - 3, "</u>": VOCAB - 2, "<a>": VOCAB - 1})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    out = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="w0", eos_token="w1", bos_token="w2",
                                  additional_special_tokens=["<u>", "</u>", "<a>"])
    if chat_template:
        out.chat_template = TEMPLATE
    return out


def _ids(text):
    return [int(w[1:]) for w in text.split() if w.startswith("w")]


def low_fraction(prompts, responses):
    """Toy objective: the share of response tokens with an id below 30 (0 for an empty response)."""
    return torch.tensor([sum(i < 30 for i in _ids(r)) / max(len(_ids(r)), 1) for r in responses])


def even_fraction(prompts, responses):
    return torch.tensor([sum(i % 2 == 0 for i in _ids(r)) / max(len(_ids(r)), 1) for r in responses])


class Recorder:
    """A reward function that remembers what it was called with."""

    objectives = ["low"]

    def __init__(self):
        self.calls = []

    def __call__(self, prompts, responses):
        self.calls.append((list(prompts), list(responses)))
        return low_fraction(prompts, responses)


def _generate(model, tok, cfg, seed=0, max_new_tokens=12, **kw):
    enc = build_chat_prompts(tok, PROMPTS)
    torch.manual_seed(seed)
    return hf_rmod.generate(model, enc["input_ids"], attention_mask=enc["attention_mask"], rmod_config=cfg,
                            max_new_tokens=max_new_tokens, do_sample=True, top_k=0, eos_token_id=None,
                            return_dict_in_generate=True, **kw), enc


def test_rmod_picks_the_candidate_the_reward_prefers():
    model, tok = tiny_causal_lm("llama"), word_tokenizer()
    cfg = RMODConfig(value_model=RewardValueModel([low_fraction], tokenizer=tok), num_candidates=8, block_size=4)
    out, enc = _generate(model, tok, cfg)
    prompt_len = enc["input_ids"].shape[1]
    assert out.objectives == ("low_fraction",) and out.values.shape == (3, 3, 8, 1)
    # every block keeps the candidate with the largest value ...
    assert torch.equal(out.chosen, out.values[..., 0].argmax(-1))
    # ... and that value is the reward of the decoded partial response (prompt text is irrelevant here)
    for b in range(3):
        for n in range(3):
            text = tok.decode(out.sequences[b, prompt_len : prompt_len + 4 * (n + 1)], skip_special_tokens=True)
            expected = low_fraction([""], [text])[0]
            assert out.values[b, n, out.chosen[b, n], 0] == pytest.approx(float(expected))
    # planted: best-of-8 per block beats plain sampling (K = 1) by far on the toy reward
    plain, _ = _generate(model, tok, RMODConfig(value_model=RewardValueModel([low_fraction], tokenizer=tok),
                                                num_candidates=1, block_size=4))

    def final(o):
        return low_fraction([""] * 3, tok.batch_decode(o.sequences[:, prompt_len:], skip_special_tokens=True)).mean()

    assert final(out) > final(plain) + 0.3


def test_reward_functions_get_the_plain_user_prompt_and_all_rows_at_once():
    model, tok = tiny_causal_lm("llama"), word_tokenizer()
    recorder = Recorder()
    cfg = RMODConfig(value_model=RewardValueModel(recorder, tokenizer=tok), num_candidates=4, block_size=3)
    _generate(model, tok, cfg, max_new_tokens=6)
    assert len(recorder.calls) == 2  # one call per block
    for prompts, responses in recorder.calls:
        assert prompts == [p for p in PROMPTS for _ in range(4)]  # batch * K rows, template stripped
        assert len(responses) == 12 and all("<" not in r for r in responses)
    first, second = recorder.calls[0][1], recorder.calls[1][1]
    for row, text in enumerate(second):  # the whole response so far: a first-block candidate of its prompt + more
        prompt = row // 4
        assert any(text.startswith(f) for f in first[4 * prompt : 4 * prompt + 4])


def test_prompt_formats():
    tok = word_tokenizer()
    vm = RewardValueModel([low_fraction], tokenizer=tok)
    assert chat_template_affixes(tok) == ("<u> ", " </u> <a>")
    chat = [tok(t, add_special_tokens=False)["input_ids"] for t in ["<u> w5 w6 </u> <a>", "w2 <u> w7 </u> <a>"]]
    assert vm.prompt_texts(tok, chat) == ["w5 w6", "w7"]  # an extra BOS is tolerated
    with pytest.warns(UserWarning, match="not a single chat-template user turn"):
        assert vm.prompt_texts(tok, [[5, 6]]) == ["w5 w6"]  # plain text: the raw fallback
    with pytest.raises(ValueError, match="chat template's form"):
        RewardValueModel([low_fraction], tokenizer=tok, prompt_format="chat").prompt_texts(tok, [[5, 6]])
    assert RewardValueModel([low_fraction], prompt_format="raw").prompt_texts(tok, chat) == ["w5 w6", "w7"]
    custom = RewardValueModel([low_fraction], prompt_format=lambda text: text.upper())
    assert custom.prompt_texts(tok, [[5]]) == ["W5"]
    no_template = word_tokenizer(chat_template=False)
    assert RewardValueModel([low_fraction]).prompt_texts(no_template, chat) == ["w5 w6", "w7"]


def test_objectives_normalization_and_several_objectives():
    vm = RewardValueModel([low_fraction, even_fraction], normalization=([0.5, 0.25], [0.5, 0.25]))
    assert vm.objectives == ["low_fraction", "even_fraction"]
    values = vm.score_texts(["p", "p"], ["w4 w6", "w31 w33"])
    torch.testing.assert_close(values, torch.tensor([[1.0, 3.0], [-1.0, -1.0]]))
    assert values.dtype == torch.float32
    head = MultiValueHead(hf_rmod.MultiValueHeadConfig(objectives=["even_fraction", "low_fraction"], hidden_size=4,
                                                       reward_mean=[0.0, 0.5], reward_std=[1.0, 0.5]))
    from_head = RewardValueModel([low_fraction, even_fraction], normalization=head)
    torch.testing.assert_close(from_head.score_texts(["p"], ["w4"]), torch.tensor([[1.0, 1.0]]))
    named = RewardValueModel({"a": low_fraction, "b": even_fraction})
    assert named.objectives == ["a", "b"]
    with pytest.raises(ValueError, match="objectives=\\[...\\]"):
        RewardValueModel([lambda p, r: torch.zeros(len(r))])
    with pytest.raises(ValueError, match="one mean and one std"):
        RewardValueModel([low_fraction], normalization=([0.0, 1.0], [1.0, 1.0]))
    with pytest.raises(ValueError, match="stds > 0"):
        RewardValueModel([low_fraction], normalization=(0.0, 0.0))


def test_nan_rewards_and_wrong_inputs_are_refused():
    model, tok = tiny_causal_lm("llama"), word_tokenizer()

    def nan_reward(prompts, responses):
        return torch.full((len(responses),), float("nan"))

    cfg = RMODConfig(value_model=RewardValueModel([nan_reward], tokenizer=tok), num_candidates=2, block_size=2)
    with pytest.raises(ValueError, match="NaN"):
        _generate(model, tok, cfg, max_new_tokens=2)
    with pytest.raises(ValueError, match="tokenizer"):  # no tokenizer anywhere
        _generate(model, tok, RMODConfig(value_model=RewardValueModel([low_fraction]), num_candidates=2), max_new_tokens=2)
    # the config's tokenizer is used when the value model has none
    out, _ = _generate(model, tok, RMODConfig(value_model=RewardValueModel([low_fraction]), tokenizer=tok,
                                              num_candidates=2, block_size=2), max_new_tokens=2)
    assert out.values.shape == (3, 1, 2, 1)
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    big = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({f"t{i}": i for i in range(200)},
                                                                              unk_token="t0")), pad_token="t0")
    with pytest.raises(ValueError, match="200 tokens, more than policy"):
        _generate(model, tok, RMODConfig(value_model=RewardValueModel([low_fraction], tokenizer=big),
                                         num_candidates=2), max_new_tokens=2)
    with pytest.raises(TypeError, match="RewardValueModel"):
        RMODConfig(value_model=object())
