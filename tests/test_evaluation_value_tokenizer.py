"""Value models other than a head on the policy's tokens in `evaluate`:

- `value_tokenizer=` (issue 11, item 6): a value head on another vocabulary is evaluated through the re-tokenising
  scorer, its tokenizer is part of the resume check, and without it the mismatch is refused before generating;
- `value_model=`: reward models on the partial text score RMOD's candidates instead of the head.
"""

from __future__ import annotations

import json

import pytest
import torch

from hf_rmod import MultiValueHead
from hf_rmod.experiments.evaluation import evaluate
from hf_rmod.experiments.methods import EvalMethod
from test_evaluation import FAST, OBJECTIVES, PROMPTS, REWARD_MEAN, REWARD_STD, good, length, tiny_tokenizer
from tiny_models import VOCAB, tiny_causal_lm


def _assert_rmod_rows_traced(result):
    """One RMOD row per prompt, each with its per-block weight trace."""
    rows = [json.loads(line) for line in result.results_path.read_text().splitlines()]
    rmod_rows = [r for r in rows if r["method"] != "reference"]
    assert len(rmod_rows) == len(PROMPTS) and all(r["weights"] for r in rmod_rows)


def _other_tokenizer():
    """The same words as the policy's tokenizer under other ids (w_i -> 2*VOCAB - i), and a larger vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": 2 * VOCAB - i for i in range(VOCAB)}
    vocab["[pad]"] = 0
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[pad]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[pad]")


def _backbone_head():
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    backbone = GPT2Model(GPT2Config(vocab_size=2 * VOCAB + 1, n_embd=16, n_layer=1, n_head=2, n_positions=256))
    return MultiValueHead.from_backbone(backbone, objectives=list(OBJECTIVES), reward_mean=REWARD_MEAN,
                                        reward_std=REWARD_STD).eval()


def test_evaluate_with_a_value_tokenizer(tmp_path):
    model, tokenizer, head, value_tok = tiny_causal_lm("llama"), tiny_tokenizer(), _backbone_head(), _other_tokenizer()
    methods = [EvalMethod.reference(), EvalMethod.rmod(k=2, b=4, lam=0.5)]
    fast = {**FAST, "plots": False}
    with pytest.raises(ValueError, match="value_tokenizer"):  # the head cannot read the policy's ids
        evaluate(model, tokenizer, head, [good, length], PROMPTS, methods, output_dir=tmp_path / "no", **fast)
    assert not (tmp_path / "no" / "results.jsonl").exists()

    result = evaluate(model, tokenizer, head, [good, length], PROMPTS, methods, output_dir=tmp_path / "run",
                      value_tokenizer=value_tok, **fast)
    _assert_rmod_rows_traced(result)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert isinstance(run["value_head"]["value_tokenizer"], str) and len(run["value_head"]["value_tokenizer"]) == 64
    with pytest.raises(ValueError, match="value_head.value_tokenizer"):  # resuming without it would mix scorers
        evaluate(model, tokenizer, head, [good, length], PROMPTS, methods, output_dir=tmp_path / "run",
                 value_tokenizer=tiny_tokenizer(), **fast)


def test_eval_method_rmod_field_defaults_to_none():
    """`EvalMethod.rmod(...)` (a constructor) must not become the default of the `rmod` field."""
    assert EvalMethod("plain").rmod is None and EvalMethod("plain").kind == "reference"
    assert EvalMethod.rmod(k=8, b=16, lam=0.5).rmod == {"num_candidates": 8, "block_size": 16, "lam": 0.5,
                                                        "weights": "robust"}


def test_evaluate_with_reward_models_as_the_value(tmp_path):
    """`evaluate(value_model=RewardValueModel(...))`: RMOD scores candidates with the rewards on the partial text
    (normalised with the head's statistics); which value model scored is part of the resume check."""
    from hf_rmod.reward_values import RewardValueModel
    from test_evaluation import tiny_head

    model, tokenizer = tiny_causal_lm("llama"), tiny_tokenizer()
    head = tiny_head(model)
    value_model = RewardValueModel({"good": good, "length": length}, tokenizer=tokenizer, normalization=head)
    methods = [EvalMethod.reference(), EvalMethod.rmod(k=2, b=4, lam=0.5)]
    fast = {**FAST, "plots": False}
    result = evaluate(model, tokenizer, head, [good, length], PROMPTS, methods, output_dir=tmp_path / "run",
                      value_model=value_model, **fast)
    _assert_rmod_rows_traced(result)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    described = run["value_head"]["value_model"]
    assert described["class"].endswith("RewardValueModel") and described["objectives"] == ["good", "length"]
    assert [r["name"] for r in described["rewards"]] == ["good", "length"]
    with pytest.raises(ValueError, match="value_head.value_model"):  # the head itself would score now: refused
        evaluate(model, tokenizer, head, [good, length], PROMPTS, methods, output_dir=tmp_path / "run", **fast)
