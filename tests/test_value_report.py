"""The within-prompt ranking report (hf_rmod.experiments.value_report) on synthetic records with known rankings."""

from __future__ import annotations

import json
import math

import pytest
import torch
from scipy.stats import spearmanr
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

from hf_rmod import MultiValueHead
from hf_rmod.experiments.value_report import (
    between_prompt_share,
    ranking_report,
    report_positions,
    within_prompt_metrics,
)
from hf_rmod.reward_values import RewardValueModel
from hf_rmod.scoring import policy_final_hidden_states

VOCAB = 64


# ------------------------------------------------------------------------------------------------ the metrics
def _reference(values, rewards, groups):
    """Loop reference: per-prompt scipy Spearman and pairwise accuracy, averaged over prompts."""
    rhos, accs = [], []
    for g in sorted(set(groups)):
        idx = [i for i, x in enumerate(groups) if x == g]
        if len(idx) < 2:
            continue
        v, r = [values[i] for i in idx], [rewards[i] for i in idx]
        if len(set(v)) > 1 and len(set(r)) > 1:
            rhos.append(spearmanr(v, r).statistic)
        ok = n = 0
        for a in range(len(idx)):
            for b in range(a + 1, len(idx)):
                if r[a] == r[b]:
                    continue
                n += 1
                ok += 0.5 if v[a] == v[b] else float((v[a] > v[b]) == (r[a] > r[b]))
        if n:
            accs.append(ok / n)
    mean = lambda xs: sum(xs) / len(xs) if xs else math.nan  # noqa: E731
    return mean(rhos), mean(accs), len(rhos), len(accs)


def test_metrics_match_a_loop_reference_with_ties_and_single_prompts():
    g = torch.Generator().manual_seed(0)
    groups = torch.tensor([0] * 5 + [1] * 4 + [2] + [3] * 6 + [4] * 3)  # prompt 2 has one response
    n = groups.numel()
    rewards = torch.randint(0, 4, (n, 2), generator=g).double()  # many reward ties
    values = torch.randint(0, 5, (n, 3, 2), generator=g).double()  # many value ties, 3 positions
    rewards[groups == 4, 0] = 1.0  # prompt 4: all rewards equal on objective 0 -> no Spearman, no pairs
    out = within_prompt_metrics(values, rewards, groups)
    assert out["prompts"] == 4 and out["prompts_single_response"] == 1
    for s in range(3):
        for obj in range(2):
            rho, acc, n_rho, n_acc = _reference(values[:, s, obj].tolist(), rewards[:, obj].tolist(), groups.tolist())
            assert float(out["spearman"][s, obj]) == pytest.approx(rho, abs=1e-9)
            assert float(out["pairwise_accuracy"][s, obj]) == pytest.approx(acc, abs=1e-9)
            assert int(out["prompts_spearman"][s, obj]) == n_rho and int(out["prompts_pairwise"][s, obj]) == n_acc
    assert int(out["prompts_pairwise"][0, 0]) <= 3  # prompt 4 contributes no pair on objective 0


def test_known_orders():
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    rewards = torch.tensor([[1.0], [2.0], [3.0], [5.0], [1.0], [4.0], [2.0]])
    perfect = within_prompt_metrics(rewards * 10 + 3, rewards, groups)
    assert perfect["spearman"].item() == pytest.approx(1.0) and perfect["pairwise_accuracy"].item() == 1.0
    reverse = within_prompt_metrics(-rewards, rewards, groups)
    assert reverse["spearman"].item() == pytest.approx(-1.0) and reverse["pairwise_accuracy"].item() == 0.0
    # a value that only separates the prompts ranks nothing: all values of a prompt tie
    between = within_prompt_metrics(groups[:, None].double(), rewards, groups)
    assert math.isnan(between["spearman"].item()) and between["prompts_spearman"].item() == 0
    assert between["pairwise_accuracy"].item() == 0.5 and between["pairs"].item() == 3 + 6
    share = between_prompt_share(torch.tensor([[0.0], [0.0], [10.0], [10.0]]), torch.tensor([0, 0, 1, 1]))
    assert share.item() == pytest.approx(1.0)
    assert report_positions(16, 40) == [16, 32, 48] and report_positions(16, 40, max_blocks=2) == [16, 32]


def test_nan_rewards_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        within_prompt_metrics(torch.zeros(2, 1), torch.tensor([[1.0], [float("nan")]]), torch.tensor([0, 0]))


# ------------------------------------------------------------------------------------------------ the report
def _token_value_head(f):
    """A backbone head whose value at a position is f(token at that position): a 0-layer Llama with one-hot
    embeddings (RMSNorm scales every row by sqrt(64) = 8) and a linear head reading f(k) / 8."""
    backbone = LlamaModel(LlamaConfig(vocab_size=VOCAB, hidden_size=VOCAB, intermediate_size=8, num_hidden_layers=0,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256))
    head = MultiValueHead.from_backbone(backbone, ["last_token"])
    with torch.no_grad():
        head.backbone.embed_tokens.weight.copy_(torch.eye(VOCAB))
        head.head.layers[0].weight.copy_(torch.tensor([[f(k) / 8.0 for k in range(VOCAB)]]))
        head.head.layers[0].bias.zero_()
    return head.eval()


def _records(num_prompts=6, per_prompt=4, seed=0, reward=lambda ids: float(sum(ids)), lengths=(20, 40)):
    g = torch.Generator().manual_seed(seed)
    out = []
    for p in range(num_prompts):
        prompt_ids = torch.randint(3, VOCAB, (5,), generator=g).tolist()
        for _ in range(per_prompt):
            length = int(torch.randint(lengths[0], lengths[1] + 1, (1,), generator=g))
            response = torch.randint(3, VOCAB, (length,), generator=g).tolist()
            out.append({"prompt": f"prompt {p}", "prompt_ids": prompt_ids, "response": "",
                        "response_ids": response, "rewards": {"last_token": reward(response)}})
    return out


def test_report_on_a_head_with_known_values(tmp_path):
    f = lambda k: float((k * 7) % 13)  # noqa: E731 - the value of a position: a function of its token
    records = _records(reward=lambda ids: f(ids[-1]))  # the final reward: f of the last response token
    head = _token_value_head(f)
    report = ranking_report(head, records, block_size=16)
    longest = max(len(r["response_ids"]) for r in records)
    assert report.positions == report_positions(16, longest)
    # at t >= every length, the value is f(last token) = the reward: perfect ranking
    last = report.positions[-1]
    assert report.metric("spearman", "last_token", last) == pytest.approx(1.0)
    assert report.metric("pairwise_accuracy", "last_token", last) == pytest.approx(1.0)
    assert report.metric("prefix_mse", "last_token", last) == pytest.approx(0.0, abs=1e-5)
    assert report.finished_share[-1] == 1.0
    # at t = 16 the value is f(token 16): compare with the loop reference on the same numbers
    values = [f(r["response_ids"][15]) for r in records]
    rewards = [r["rewards"]["last_token"] for r in records]
    groups = [int(r["prompt"].split()[1]) for r in records]
    rho, acc, _, _ = _reference(values, rewards, groups)
    assert report.metric("spearman", "last_token", 16) == pytest.approx(rho, abs=1e-6)
    assert report.metric("pairwise_accuracy", "last_token", 16) == pytest.approx(acc, abs=1e-6)
    assert report.counts == {"responses": 24, "prompts": 6, "prompts_ranked": 6, "prompts_single_response": 0,
                             "responses_per_prompt": 4.0}
    text = report.to_markdown()
    assert "| 16 | last_token |" in text and "average ranks" in text
    saved = json.loads(report.save(tmp_path / "r.json").read_text())
    assert saved["positions"] == report.positions and saved["rows"][0]["t"] == 16


def test_report_edge_cases():
    f = lambda k: float(k)  # noqa: E731
    head = _token_value_head(f)
    records = _records(num_prompts=3, per_prompt=3, lengths=(4, 12))
    records.append({"prompt": "alone", "prompt_ids": [5, 6], "response": "", "response_ids": [7, 8, 9],
                    "rewards": {"last_token": 1.0}})
    report = ranking_report(head, records, block_size=4, max_blocks=2)
    assert report.positions == [4, 8]
    assert report.counts["prompts_single_response"] == 1 and report.counts["prompts_ranked"] == 3
    bad = [dict(r) for r in records]
    bad[2] = {**bad[2], "rewards": {"last_token": float("nan")}}
    with pytest.raises(ValueError, match="Record 2 has a NaN"):
        ranking_report(head, bad, block_size=4)
    with pytest.raises(ValueError, match="block_size"):
        ranking_report(head, records, block_size=0)
    with pytest.raises(ValueError, match="beyond the value head's backbone vocabulary"):
        ranking_report(head, [{**records[0], "response_ids": [VOCAB + 3]}], block_size=4)


def test_shared_trunk_head_values_are_read_at_the_right_positions():
    torch.manual_seed(0)
    policy = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)).eval()
    head = MultiValueHead.for_policy(policy, ["last_token"]).eval()
    records = _records(num_prompts=2, per_prompt=3, lengths=(5, 20))
    with pytest.raises(ValueError, match="policy="):
        ranking_report(head, records)
    from hf_rmod.experiments import value_report

    values = value_report._head_values(head, records, policy, [4, 8, 16], batch_size=4, tokenizer=None)
    for i, r in enumerate(records):
        ids = torch.tensor([r["prompt_ids"] + r["response_ids"]])
        with torch.no_grad():
            full = head.score_hidden_states(policy_final_hidden_states(policy, ids, torch.ones_like(ids)))[0]
        for s, t in enumerate([4, 8, 16]):
            expected = full[len(r["prompt_ids"]) + min(t, len(r["response_ids"])) - 1]
            torch.testing.assert_close(values[i, s], expected, atol=1e-5, rtol=1e-5)
    report = ranking_report(head, records, policy, block_size=8)
    assert report.counts["prompts_ranked"] == 2


def _word_tok():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="w0")


def test_reward_value_model_in_the_report():
    def total(prompts, responses):
        return torch.tensor([float(sum(int(w[1:]) for w in r.split())) for r in responses])

    records = _records(num_prompts=4, per_prompt=4, lengths=(10, 30))  # reward: the sum of the ids
    report = ranking_report(RewardValueModel([total], tokenizer=_word_tok(), objectives=["last_token"]), records,
                            block_size=8)
    last = report.positions[-1]
    assert report.metric("spearman", "last_token", last) == pytest.approx(1.0)  # the finished text: the reward
    assert report.metric("prefix_mse", "last_token", last) == pytest.approx(0.0)
    assert "reward units" in report.units
    assert 0.0 <= report.metric("pairwise_accuracy", "last_token", 8) <= 1.0


# ------------------------------------------------------------------------------------------------ training + CLI
def test_train_value_head_reports_within_prompt_ranking(tmp_path):
    from test_training import MAX_NEW, OBJECTIVES, good_fraction, length_fraction, make_prompts, tiny_policy, tiny_tokenizer

    from hf_rmod.experiments.records import load_records
    from hf_rmod.training import sample_responses, split_by_prompt, train_value_head

    policy, tok = tiny_policy(), tiny_tokenizer()
    path = tmp_path / "records.jsonl"
    sample_responses(policy, tok, make_prompts(20), [good_fraction, length_fraction], num_responses=4,
                     max_new_tokens=MAX_NEW, batch_size=20, chat_template=False, show_progress=False, seed=0,
                     output_path=path)
    torch.manual_seed(0)
    head = MultiValueHead.for_policy(policy, OBJECTIVES, tokenizer=tok)
    result = train_value_head(head, path, policy, epochs=2, lr=1e-2, batch_size=16, seed=0, val_fraction=0.3,
                              ranking_block_size=2, output_dir=tmp_path / "run", show_progress=False, tokenizer=tok)
    assert set(result.val_ranking) == {"within_prompt_spearman_t2", "pairwise_accuracy_t2",
                                       "within_prompt_spearman_t4", "pairwise_accuracy_t4", "ranking_prompts"}
    records = load_records(path)
    _, val_idx = split_by_prompt(records, 0.3, 0)
    report = ranking_report(head, [records[i] for i in val_idx], policy, block_size=2, max_blocks=2)
    assert result.val_ranking["ranking_prompts"] == report.counts["prompts_ranked"] == 6
    for t in (2, 4):
        for name in OBJECTIVES:
            for metric, key in (("spearman", "within_prompt_spearman"), ("pairwise_accuracy", "pairwise_accuracy")):
                expected = report.metric(metric, name, t)
                got = result.val_ranking[f"{key}_t{t}"][name]
                assert (expected is None and math.isnan(got)) or got == pytest.approx(expected, abs=1e-6)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["val_ranking"]["pairwise_accuracy_t2"] == result.val_ranking["pairwise_accuracy_t2"]
    card = (tmp_path / "run" / "best" / "README.md").read_text()
    assert "| pairwise_accuracy_t2 |" in card and "| within_prompt_spearman_t4 |" in card
    assert "## Sampling distribution of the training data" in card and "**temperature**: 0.7" in card
    loaded = MultiValueHead.from_pretrained(tmp_path / "run" / "best")
    assert loaded.config.sampling_settings["top_k"] == 0 and loaded.config.sampling_settings["max_new_tokens"] == MAX_NEW
    assert loaded.config.sampling_settings["chat_template"] is False
    assert loaded.config.tokenizer_fingerprint == head.config.tokenizer_fingerprint is not None


def test_cli_value_report(tmp_path, capsys):
    from hf_rmod.cli import main
    from hf_rmod.experiments.io import write_jsonl

    head = _token_value_head(lambda k: float(k % 5))
    head.save_pretrained(tmp_path / "head")
    write_jsonl(tmp_path / "records.jsonl", _records(num_prompts=3, per_prompt=3, lengths=(5, 12)))
    code = main(["value-report", "--records", str(tmp_path / "records.jsonl"), "--value-head", str(tmp_path / "head"),
                 "--block-size", "4", "-o", str(tmp_path / "report.json")])
    assert code == 0
    out = capsys.readouterr().out
    assert "| 4 | last_token |" in out and "within prompt" in out
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["positions"] == [4, 8, 12] and saved["counts"]["prompts_ranked"] == 3
    code = main(["value-report", "--records", str(tmp_path / "missing.jsonl"), "--value-head", str(tmp_path / "head")])
    assert code == 2 and "does not exist" in capsys.readouterr().err
