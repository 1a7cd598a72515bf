"""Text value models: G-output MiniLM heads, the CD-FUDGE ridge fit towards the reward models, loading and use in
RMOD decoding and the evaluation (a tiny stand-in encoder, offline)."""

from __future__ import annotations

import json

import pytest
import torch

from hf_rmod import RMODConfig
from hf_rmod.experiments.text_value import (
    PrefixEmbeddings,
    embed_prefixes,
    fit_minilm_value_model,
    predict,
    reward_init_weights,
)
from hf_rmod.reward_values import RewardValueModel
from hf_rmod.rewards import MiniLMReward, MiniLMRewardConfig, MiniLMRewardModel
from test_reward_values import PROMPTS, _generate, word_tokenizer
from tiny_models import tiny_causal_lm

D = 8


class WordEncoder:
    """A stand-in for MiniLMEncoder: unit-norm bag of ``w<id>`` words hashed into D dimensions (plus a constant)."""

    embedding_dim = D

    def __init__(self):
        self.calls = 0

    def encode(self, texts):
        self.calls += 1
        out = torch.zeros(len(texts), D)
        for i, text in enumerate(texts):
            out[i, 0] = 1.0
            for word in text.split():
                if word.startswith("w") and word[1:].isdigit():
                    out[i, 1 + int(word[1:]) % (D - 1)] += 1.0
        return torch.nn.functional.normalize(out, dim=-1)


def _unit(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, D, generator=g), dim=-1)


def _value_head(objectives=("low", "even"), mean=(0.5, 0.5), std=(0.25, 0.5), seed=0):
    config = MiniLMRewardConfig(feature_mode="pair", embedding_dim=D, objectives=list(objectives),
                                reward_mean=list(mean), reward_std=list(std))
    model = MiniLMRewardModel(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.score.weight.copy_(torch.randn(model.score.weight.shape, generator=g))
        model.score.bias.copy_(torch.randn(model.score.bias.shape, generator=g))
    return model


# ---------------------------------------------------------------------------------------------- G-output heads
def test_multi_output_head_shapes_roundtrip_and_config_errors(tmp_path):
    from transformers import AutoModel

    model = _value_head()
    p, r = _unit(5, 1), _unit(5, 2)
    out = model(p, r)
    assert out.shape == (5, 2)
    expected = torch.cat([p, r, p * r], -1) @ model.score.weight.T + model.score.bias
    torch.testing.assert_close(out, expected)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = AutoModel.from_pretrained(tmp_path)
    assert loaded.config.objectives == ["low", "even"] and loaded.config.reward_std == [0.25, 0.5]
    torch.testing.assert_close(loaded(p, r), out)
    single = MiniLMRewardModel(MiniLMRewardConfig(feature_mode="response", embedding_dim=D))
    assert single(p, r).shape == (5,)  # one objective: (n,), as the reward heads always returned
    with pytest.raises(ValueError, match="unique names"):
        MiniLMRewardConfig(objectives=["a", "a"])
    with pytest.raises(TypeError, match=r"use \['a'\]"):
        MiniLMRewardConfig(objectives="a")
    with pytest.raises(ValueError, match="go together"):
        MiniLMRewardConfig(objectives=["a"], reward_mean=[0.0])
    with pytest.raises(ValueError, match="one value per objective"):
        MiniLMRewardConfig(objectives=["a", "b"], reward_mean=[0.0], reward_std=[1.0])
    with pytest.raises(ValueError, match="finite and > 0"):
        MiniLMRewardConfig(objectives=["a"], reward_mean=[0.0], reward_std=[0.0])


# ---------------------------------------------------------------------------------------------- the fit
def _synthetic(n_prompts=40, per_prompt=6, S=3, seed=0, w_true=None, noise=0.0):
    g = torch.Generator().manual_seed(seed)
    prompts = _unit(n_prompts, seed + 1)
    groups = torch.arange(n_prompts).repeat_interleave(per_prompt)
    n = groups.numel()
    prefix = torch.nn.functional.normalize(torch.randn(n, S, D, generator=g), dim=-1)
    data = PrefixEmbeddings(prompts[groups], prefix, torch.zeros(n, 2, dtype=torch.float64), groups, [4, 8, 12],
                            ["a", "b"])
    if w_true is not None:  # final reward = a linear function of the LAST prefix's pair features
        p, r = prompts[groups], prefix[:, -1]
        feats = torch.cat([p, r, p * r], -1).double()
        data.rewards = feats @ w_true.T + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return data


def test_fit_recovers_a_linear_value_and_stores_the_reward_statistics():
    g = torch.Generator().manual_seed(3)
    w_true = torch.randn(2, 3 * D, generator=g, dtype=torch.float64)
    data = _synthetic(w_true=w_true)
    data.positions, data.prefix_embeds = [12], data.prefix_embeds[:, -1:]  # the full response only: exactly linear
    model = fit_minilm_value_model(data, alpha=1e-9, beta=1.0)
    values = predict(model, data)[:, 0]  # (n, G)
    torch.testing.assert_close(values, data.rewards, atol=2e-3, rtol=0)
    assert model.config.reward_mean == pytest.approx(data.rewards.mean(0).tolist())
    assert model.config.reward_std == pytest.approx(data.rewards.std(0).tolist())
    assert model.config.fit_info["responses"] == data.rewards.shape[0] and model.config.fit_info["positions"] == [12]


def test_strong_ridge_returns_the_reward_model_and_beta_trades_levels_for_ranking():
    from hf_rmod.experiments.value_report import within_prompt_metrics

    g = torch.Generator().manual_seed(4)
    w_true = torch.randn(2, 3 * D, generator=g, dtype=torch.float64)
    data = _synthetic(w_true=w_true, noise=0.5, n_prompts=60)
    init = torch.randn(2, 3 * D, generator=g, dtype=torch.float64)
    pulled = fit_minilm_value_model(data, init=init, alpha=1e6)
    torch.testing.assert_close(pulled.score.weight.double(), init, atol=1e-4, rtol=0)
    # beta -> 0 fits only the within-prompt differences: rankings at least as good, prompt levels worse
    train, val = data.subset(torch.arange(0, 240)), data.subset(torch.arange(240, 360))
    mse_fit = fit_minilm_value_model(train, alpha=1e-6, beta=1.0)
    rank_fit = fit_minilm_value_model(train, alpha=1e-6, beta=1e-4)
    acc = {name: within_prompt_metrics(predict(m, val)[:, -1], val.rewards, val.groups)["pairwise_accuracy"].mean()
           for name, m in (("mse", mse_fit), ("rank", rank_fit))}
    assert acc["rank"] >= acc["mse"] - 0.02 and acc["mse"] > 0.6
    level = {name: ((predict(m, val)[:, -1] - val.rewards) ** 2).mean() for name, m in (("mse", mse_fit),
                                                                                       ("rank", rank_fit))}
    assert level["mse"] < level["rank"]


def test_fit_argument_errors():
    data = _synthetic()
    with pytest.raises(ValueError, match="`alpha` must be a finite number > 0"):
        fit_minilm_value_model(data, alpha=0)
    with pytest.raises(ValueError, match="`beta` must be a finite number > 0"):
        fit_minilm_value_model(data, beta=float("nan"))
    with pytest.raises(ValueError, match=r"`init` must be \(G, F\) = \(2, 24\)"):
        fit_minilm_value_model(data, init=torch.zeros(2, 5))


def test_reward_init_weights_write_a_reward_head_in_pair_features():
    head = MiniLMRewardModel(MiniLMRewardConfig(feature_mode="prompt_response_product", embedding_dim=D))
    with torch.no_grad():
        head.score.weight.normal_()
    init = reward_init_weights([head, None], "pair", D)  # (2, 3D)
    assert init.shape == (2, 3 * D) and init[1].abs().sum() == 0
    pair = MiniLMRewardModel(MiniLMRewardConfig(feature_mode="pair", embedding_dim=D, objectives=["h", "z"]))
    with torch.no_grad():
        pair.score.weight.copy_(init.float())
        pair.score.bias.zero_()
    p, r = _unit(4, 5), _unit(4, 6)
    torch.testing.assert_close(pair(p, r)[:, 0], head(p, r) - head.score.bias)
    with pytest.raises(ValueError, match="feature_mode='pair'"):
        reward_init_weights([_with_prompt_block()], "response", D)


def _with_prompt_block():
    head = MiniLMRewardModel(MiniLMRewardConfig(feature_mode="pair", embedding_dim=D))
    with torch.no_grad():
        head.score.weight.fill_(1.0)
    return head


def test_embed_prefixes_decodes_each_prefix_like_the_decoder():
    tok = word_tokenizer()
    records = [
        {"prompt": "w5 w6", "response_ids": [10, 11, 12, 13, 1], "rewards": {"a": 1.0, "b": 2.0}},
        {"prompt": "w5 w6", "response_ids": [20], "rewards": {"a": 0.0, "b": 1.0}},
        {"prompt": "w7", "response_ids": [30, 31], "rewards": {"a": 3.0, "b": 4.0}},
    ]
    encoder = WordEncoder()
    data = embed_prefixes(records, tok, [2, 4], ["b", "a"], encoder=encoder)
    assert data.prefix_embeds.shape == (3, 2, D) and data.groups.tolist() == [0, 0, 1]
    assert data.rewards.tolist() == [[2.0, 1.0], [1.0, 0.0], [4.0, 3.0]]
    torch.testing.assert_close(data.prefix_embeds[0, 0], encoder.encode(["w10 w11"])[0])
    torch.testing.assert_close(data.prefix_embeds[1, 1], encoder.encode(["w20"])[0])  # shorter: the whole response
    torch.testing.assert_close(data.prompt_embeds[2], encoder.encode(["w7"])[0])
    with pytest.raises(ValueError, match="prefix lengths >= 1"):
        embed_prefixes(records, tok, [0], ["a"], encoder=encoder)
    with pytest.raises(ValueError, match="empty"):
        embed_prefixes([], tok, [2], ["a"], encoder=encoder)


# ---------------------------------------------------------------------------------------------- use
def test_saved_value_model_decodes_and_normalises(tmp_path):
    head = _value_head()
    head.save_pretrained(tmp_path / "vm")
    tok = word_tokenizer()
    encoder = WordEncoder()
    value_model = RewardValueModel.from_pretrained(tmp_path / "vm", tok, encoder=encoder)
    assert value_model.objectives == ["low", "even"]
    assert value_model.normalization == ([0.5, 0.5], [0.25, 0.5])
    model = tiny_causal_lm("llama")
    out, enc = _generate(model, tok, RMODConfig(value_model=value_model, num_candidates=4, block_size=4))
    assert out.values.shape == (3, 3, 4, 2)
    # the values are the head's outputs on (plain prompt, decoded partial response), z-scored
    prompt_len = enc["input_ids"].shape[1]
    text = tok.decode(out.sequences[1, prompt_len : prompt_len + 4], skip_special_tokens=True)
    raw = head(encoder.encode([PROMPTS[1]]), encoder.encode([text]))[0]
    expected = (raw - torch.tensor([0.5, 0.5])) / torch.tensor([0.25, 0.5])
    torch.testing.assert_close(out.values[1, 0, out.chosen[1, 0]], expected, atol=1e-5, rtol=1e-5)
    # a reward head (no statistics) is not a value model
    MiniLMRewardModel(MiniLMRewardConfig(feature_mode="pair", embedding_dim=D)).save_pretrained(tmp_path / "rm")
    with pytest.raises(ValueError, match="without reward_mean/reward_std"):
        RewardValueModel.from_pretrained(tmp_path / "rm", tok, encoder=encoder)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        MiniLMReward(str(tmp_path / "missing"), encoder=encoder)


def test_load_value_model_dispatches_on_the_folder(tmp_path, monkeypatch):
    from hf_rmod import MultiValueHead, MultiValueHeadConfig
    from hf_rmod.defaults import load_value_model
    from hf_rmod.rewards import minilm

    monkeypatch.setattr(minilm, "get_minilm_encoder", lambda device="cpu", path=None: WordEncoder())
    _value_head().save_pretrained(tmp_path / "text")
    MultiValueHead(MultiValueHeadConfig(hidden_size=16, objectives=["a", "b"])).save_pretrained(tmp_path / "head")
    assert isinstance(load_value_model(tmp_path / "text", word_tokenizer()), RewardValueModel)
    assert isinstance(load_value_model(tmp_path / "head"), MultiValueHead)
    assert json.loads((tmp_path / "text" / "config.json").read_text())["model_type"] == "hf_rmod_minilm_reward"


def test_evaluation_accepts_a_normalised_value_model(tmp_path):
    from hf_rmod.experiments.evaluation import evaluate
    from hf_rmod.experiments.methods import EvalMethod

    tok = word_tokenizer()
    # no tokenizer of its own: evaluate() gives it the policy's (RMODConfig(tokenizer=...))
    value_model = RewardValueModel.from_pretrained(_saved(tmp_path), encoder=WordEncoder())
    model = tiny_causal_lm("llama")
    from test_reward_values import even_fraction, low_fraction

    result = evaluate(model, tok, value_model, {"low": low_fraction, "even": even_fraction}, PROMPTS[:2],
                      [EvalMethod("reference"), EvalMethod.rmod(4, 4, 0.5)], output_dir=tmp_path / "eval",
                      max_new_tokens=8, batch_size=2, plots=False, n_resamples=50, show_progress=False)
    rows = [json.loads(line) for line in result.results_path.read_text().splitlines()]
    assert len(rows) == 4 and {r["method"] for r in rows} == {"reference", "rmod_k4_b4_lam0.5"}
    assert rows[-1]["value_objectives"] == ["low", "even"]
    run = json.loads((tmp_path / "eval" / "run.json").read_text())
    assert run["value_head"]["objectives"] == ["low", "even"] and len(run["value_head"]["sha256"]) == 64
    plain = RewardValueModel([low_fraction, even_fraction], tok)  # no statistics: the summary cannot normalise
    with pytest.raises(ValueError, match="without normalization"):
        evaluate(model, tok, plain, {"low": low_fraction}, PROMPTS[:1], [EvalMethod("reference")],
                 output_dir=tmp_path / "eval2", plots=False)


def _saved(tmp_path):
    _value_head().save_pretrained(tmp_path / "vm")
    return tmp_path / "vm"
