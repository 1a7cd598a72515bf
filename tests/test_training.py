"""Tests for hf_rmod.training (now hf_rmod.experiments.sampling / value_training): sampling, CD-FUDGE training,
metrics, the sample/train-value CLI (tiny in-process models, offline)."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from hf_rmod.experiments.value_training import _collate, _Example
from hf_rmod.modeling_value_head import MultiValueHead
from hf_rmod.training import (  # the old import path: a thin re-export of hf_rmod.experiments
    cd_fudge_loss,
    policy_final_hidden_states,
    sample_responses,
    split_by_prompt,
    train_value_head,
)

VOCAB, PAD, EOS = 64, 0, 1
GOOD = frozenset(range(10, 26))  # the "good" tokens of the synthetic objective
MAX_NEW = 8
OBJECTIVES = ["good_fraction", "length_fraction"]


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="w0", eos_token="w1")


def tiny_policy(seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=2,
    )
    policy = LlamaForCausalLM(config).eval()
    policy.generation_config.pad_token_id = PAD
    policy.generation_config.eos_token_id = EOS
    return policy


def _ids(text):
    return [int(word[1:]) for word in text.split()]


def good_fraction(prompts, responses):
    """Share of good tokens among MAX_NEW slots: learnable from the prefix (the count so far)."""
    return torch.tensor([sum(i in GOOD for i in _ids(r)) / MAX_NEW for r in responses])


def length_fraction(prompts, responses):
    return torch.tensor([len(_ids(r)) / MAX_NEW for r in responses])


def make_prompts(count, seed=1):
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        length = int(torch.randint(3, 8, (1,), generator=generator))
        out.append(" ".join(f"w{i}" for i in torch.randint(3, VOCAB, (length,), generator=generator).tolist()))
    return out


@pytest.fixture(scope="module")
def setup():
    policy, tokenizer = tiny_policy(), tiny_tokenizer()
    records = sample_responses(
        policy, tokenizer, make_prompts(60), [good_fraction, length_fraction], num_responses=8,
        max_new_tokens=MAX_NEW, batch_size=30, chat_template=False, show_progress=False, seed=0,
    )
    return policy, tokenizer, records


# ----------------------------------------------------------------------------------------------------------------
# sampling
# ----------------------------------------------------------------------------------------------------------------


def test_sample_records_are_well_formed(setup):
    policy, tokenizer, records = setup
    assert len(records) == 60 * 8
    row = records[0]
    assert set(row) == {"prompt", "prompt_ids", "response", "response_ids", "rewards"}
    assert set(row["rewards"]) == set(OBJECTIVES)
    for row in records[:40]:
        assert row["prompt_ids"] == tokenizer(row["prompt"])["input_ids"]
        assert 1 <= len(row["response_ids"]) <= MAX_NEW
        assert EOS not in row["response_ids"][:-1]  # cut after the first EOS, no padding kept
        assert row["rewards"]["good_fraction"] == pytest.approx(
            sum(i in GOOD for i in _ids(row["response"])) / MAX_NEW
        )


def test_sample_responses_resumes(tmp_path):
    policy, tokenizer = tiny_policy(), tiny_tokenizer()
    path = tmp_path / "records.jsonl"
    calls = []

    def counting_reward(prompts, responses):
        calls.append(list(prompts))
        return length_fraction(prompts, responses)

    prompts = make_prompts(5, seed=3)
    kwargs = dict(num_responses=3, max_new_tokens=4, batch_size=2, output_path=path, chat_template=False,
                  show_progress=False)
    first = sample_responses(policy, tokenizer, prompts[:3], [counting_reward], **kwargs)
    assert len(first) == 9
    second = sample_responses(policy, tokenizer, prompts, [counting_reward], **kwargs)
    assert {r["prompt"] for r in second} == set(prompts[3:])
    assert all(p in prompts[3:] for batch in calls[-1:] for p in batch)
    lines = [json.loads(l) for l in path.read_text().splitlines()]
    assert len(lines) == 15 and {r["prompt"] for r in lines} == set(prompts)
    assert sample_responses(policy, tokenizer, prompts, [counting_reward], **kwargs) == []
    # an interrupted write (partial last line) is dropped and that prompt sampled again
    text = path.read_text()
    path.write_text(text[: len(text) - 20])
    again = sample_responses(policy, tokenizer, prompts, [counting_reward], **kwargs)
    assert {r["prompt"] for r in again} == {lines[-1]["prompt"]}


# ----------------------------------------------------------------------------------------------------------------
# pieces of the training step
# ----------------------------------------------------------------------------------------------------------------


def test_split_is_by_prompt(setup):
    _, _, records = setup
    train, val = split_by_prompt(records, 0.2, seed=0)
    assert sorted(train + val) == list(range(len(records)))
    train_prompts = {records[i]["prompt"] for i in train}
    val_prompts = {records[i]["prompt"] for i in val}
    assert not train_prompts & val_prompts
    assert len(val_prompts) == 12
    with pytest.raises(ValueError, match="val_fraction"):
        split_by_prompt(records, 1.0, seed=0)


def test_loss_masks_prompt_and_padding():
    examples = [
        _Example(input_ids=[5, 6, 7, 8, 9], prompt_len=2, target=[1.0, -1.0]),
        _Example(input_ids=[5, 6, 7], prompt_len=2, target=[0.5, 0.0]),
    ]
    batch = _collate(examples, pad_id=0)
    assert batch["loss_mask"].tolist() == [[False, False, True, True, True], [False, False, True, False, False]]
    torch.manual_seed(0)
    values = torch.randn(2, 5, 2)
    loss = cd_fudge_loss(values, batch["targets"], batch["loss_mask"])
    expected = (
        (values[0, 2:] - torch.tensor([1.0, -1.0])).pow(2).sum() + (values[1, 2] - torch.tensor([0.5, 0.0])).pow(2).sum()
    ) / (4 * 2)
    torch.testing.assert_close(loss, expected)
    # anything at prompt/padding positions (values or per-position targets, even NaN) leaves the loss unchanged
    masked = ~batch["loss_mask"]
    changed = values.clone()
    changed[masked] = float("nan")
    torch.testing.assert_close(cd_fudge_loss(changed, batch["targets"], batch["loss_mask"]), loss)
    per_position = batch["targets"][:, None, :].expand(2, 5, 2).clone()
    per_position[masked] = 100.0
    torch.testing.assert_close(cd_fudge_loss(values, per_position, batch["loss_mask"]), loss)
    # a response-position change does change it
    changed = values.clone()
    changed[0, 3] += 1.0
    assert not torch.allclose(cd_fudge_loss(changed, batch["targets"], batch["loss_mask"]), loss)


def test_backbone_loss_ignores_padding_tokens():
    head = MultiValueHead.from_backbone(tiny_policy(), OBJECTIVES)
    examples = [_Example(input_ids=[5, 6, 7, 8, 9], prompt_len=2, target=[1.0, -1.0]),
                _Example(input_ids=[5, 6, 7], prompt_len=2, target=[0.5, 0.0])]
    losses = []
    for pad_id in (0, 33):
        batch = _collate(examples, pad_id=pad_id)
        values = head(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).values
        losses.append(cd_fudge_loss(values, batch["targets"], batch["loss_mask"]))
    torch.testing.assert_close(losses[0], losses[1], atol=1e-6, rtol=0)


def test_policy_hidden_states_are_lm_head_input():
    policy = tiny_policy()
    ids = torch.randint(3, VOCAB, (2, 6))
    mask = torch.ones_like(ids)
    hidden = policy_final_hidden_states(policy, ids, mask)
    torch.testing.assert_close(policy.lm_head(hidden), policy(input_ids=ids, attention_mask=mask).logits)
    torch.testing.assert_close(hidden, policy.model(input_ids=ids, attention_mask=mask).last_hidden_state)


# ----------------------------------------------------------------------------------------------------------------
# training end to end
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(setup, tmp_path_factory):
    policy, _, records = setup
    torch.manual_seed(0)
    head = MultiValueHead.for_policy(policy, OBJECTIVES, head_type="mlp", head_hidden_size=64)
    output_dir = tmp_path_factory.mktemp("value-run")
    result = train_value_head(head, records, policy, epochs=8, lr=1e-2, batch_size=16, seed=0, patience=3,
                              output_dir=output_dir, show_progress=False)
    return head, result


def test_training_beats_constant_predictor(trained):
    head, result = trained
    print("val", result.val_mse, "baseline", result.baseline_mse)
    assert result.val_mse["good_fraction"] < 0.92 * result.baseline_mse["good_fraction"]
    assert result.val_mse["length_fraction"] < 0.9 * result.baseline_mse["length_fraction"]
    # with the whole response known (last bucket) the value is far better than the constant
    last = list(result.val_mse_by_prefix)[-1]
    assert result.val_mse_by_prefix[last] < 0.8 * result.baseline_mse_by_prefix[last]
    assert result.history[0]["val_mse"] > min(h["val_mse"] for h in result.history)
    assert head.config.reward_std[0] > 0 and head.config.reward_mean[0] == pytest.approx(0.22, abs=0.05)


def test_best_checkpoint_and_card(trained):
    head, result = trained
    best = Path(result.best_checkpoint)
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in best.iterdir()}
    loaded = MultiValueHead.from_pretrained(best)
    for key, value in head.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    card = (best / "README.md").read_text()
    assert f"{result.val_mse['good_fraction']:.4g}" in card
    assert loaded.config.training_info["metrics"]["baseline_mse"] == pytest.approx(result.baseline_mse)
    assert json.loads((best.parent / "metrics.json").read_text())["best_epoch"] == result.best_epoch


def _prefix_value(head, policy, prompt_ids, prefix):
    ids = torch.tensor([prompt_ids + prefix])
    hidden = policy_final_hidden_states(policy, ids, torch.ones_like(ids))
    return head.denormalize(head(hidden_states=hidden).values[0, -1])[0].item()


def _completion_mean(policy, prompt_ids, prefix, samples=64):
    ids = torch.tensor([prompt_ids + prefix])
    torch.manual_seed(0)
    out = policy.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0,
                          max_new_tokens=MAX_NEW - len(prefix), num_return_sequences=samples)
    total = 0.0
    for row in out[:, ids.shape[1]:].tolist():
        completion = row[: row.index(EOS) + 1] if EOS in row else row
        total += sum(i in GOOD for i in prefix + completion) / MAX_NEW
    return total / samples


def test_value_at_prefix_moves_toward_mean_completion_reward(setup, trained):
    policy, tokenizer, _ = setup
    head, _ = trained
    prompt_ids = tokenizer("w40 w41 w42 w43")["input_ids"]
    constant = head.config.reward_mean[0]
    values = {}
    for prefix in ([12, 13, 14, 15], [30, 31, 40, 41]):  # all good so far / none good so far
        target = _completion_mean(policy, prompt_ids, prefix)
        value = _prefix_value(head, policy, prompt_ids, prefix)
        values[prefix[0]] = value
        assert abs(value - target) < abs(constant - target), (prefix, value, target, constant)
    assert values[12] > constant > values[30]


def test_training_validates_inputs(setup):
    policy, _, records = setup
    head = MultiValueHead.for_policy(policy, OBJECTIVES)
    with pytest.raises(ValueError, match="policy"):
        train_value_head(head, records, None, epochs=1)
    with pytest.raises(ValueError, match="objectives"):
        train_value_head(head, records, policy, objectives=OBJECTIVES[::-1], epochs=1)
    other = MultiValueHead.for_policy(policy, ["good_fraction", "missing"])
    with pytest.raises(ValueError, match="missing"):
        train_value_head(other, records, policy, epochs=1)


# ----------------------------------------------------------------------------------------------------------------
# multi-process (accelerate launch) and CLI
# ----------------------------------------------------------------------------------------------------------------

_DDP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from accelerate import Accelerator
    sys.path.insert(0, {tests_dir!r})
    from test_training import OBJECTIVES, tiny_policy
    from hf_rmod.modeling_value_head import MultiValueHead
    from hf_rmod.training import load_records, train_value_head

    accelerator = Accelerator(cpu=True)
    policy = tiny_policy()
    torch.manual_seed(0)
    head = MultiValueHead.for_policy(policy, OBJECTIVES)
    result = train_value_head(head, load_records({records!r}), policy, epochs=2, lr=1e-2, batch_size=8, seed=0,
                              output_dir={output_dir!r}, accelerator=accelerator, show_progress=False)
    if accelerator.is_main_process:
        json.dump({{"processes": accelerator.num_processes, "val_mse": result.val_mse,
                    "baseline": result.baseline_mse}}, open({report!r}, "w"))
    """
)


@pytest.mark.skipif(shutil.which("accelerate") is None and not Path(sys.executable).with_name("accelerate").exists(),
                    reason="the `accelerate` CLI is not installed")
def test_train_under_accelerate_launch_two_processes(setup, tmp_path):
    _, _, records = setup
    records_path = tmp_path / "records.jsonl"
    records_path.write_text("".join(json.dumps(r) + "\n" for r in records[:160]))
    script = tmp_path / "ddp_train.py"
    report = tmp_path / "report.json"
    script.write_text(_DDP_SCRIPT.format(tests_dir=str(Path(__file__).parent), records=str(records_path),
                                         output_dir=str(tmp_path / "run"), report=str(report)))
    launcher = shutil.which("accelerate") or str(Path(sys.executable).with_name("accelerate"))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1",
           "ACCELERATE_CONFIG_FILE": str(tmp_path / "none.yaml")}
    proc = subprocess.run(
        # accelerate 1.15: `--cpu --num_processes 2` runs ONE process (simple launcher, multi-CPU needs MPI);
        # `--multi_gpu` goes through torchrun and, with Accelerator(cpu=True), gives 2 gloo processes on CPU.
        [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "--main_process_port", "0", str(script)],
        capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(report.read_text())
    assert out["processes"] == 2
    assert set(out["val_mse"]) == set(OBJECTIVES)
    assert all(v == v and v > 0 for v in out["val_mse"].values())
    assert (tmp_path / "run" / "best" / "model.safetensors").exists()


def test_cli_parsers_and_spec_errors(tmp_path, monkeypatch):
    # moved from the old hf_rmod.training.add_cli_parsers / _load_callable to hf_rmod.cli / hf_rmod.rewards
    import hf_rmod.cli as cli
    from hf_rmod.rewards import load_reward_functions

    parser = cli.build_parser()
    args = parser.parse_args(["sample", "--policy", "p", "--prompts", "x.jsonl", "--reward",
                              "good=test_training:good_fraction", "-n", "3", "-o", "out.jsonl"])
    assert args.command == "sample" and args.num_responses == 3 and callable(cli.COMMANDS[args.command].run)
    args = parser.parse_args(["train-value", "--records", "r.jsonl", "--policy", "p", "-o", "run", "--epochs", "2",
                              "--head-type", "mlp"])
    assert args.epochs == 2 and args.head_type == "mlp" and args.kind == "shared"
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    (fn,) = load_reward_functions(["good=test_training:good_fraction"])
    assert fn.objectives == ["good"] and fn.fn is good_fraction
    with pytest.raises(ValueError, match="NAME=MODULE:CALLABLE"):
        load_reward_functions(["good=nomodule"])
    with pytest.raises(ValueError, match="no attribute"):
        load_reward_functions(["good=test_training:nothing_here"])


def test_cli_sample_then_train_end_to_end(tmp_path, monkeypatch):
    from hf_rmod.cli import main

    policy, tokenizer = tiny_policy(), tiny_tokenizer()
    policy.save_pretrained(tmp_path / "policy")
    tokenizer.save_pretrained(tmp_path / "policy")
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in make_prompts(10)))
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    assert main([
        "sample", "--policy", str(tmp_path / "policy"), "--prompts", str(tmp_path / "prompts.jsonl"),
        "--reward", "good_fraction=test_training:good_fraction", "--reward", "length_fraction=test_training:length_fraction",
        "-n", "4", "--max-new-tokens", str(MAX_NEW), "--no-chat-template", "-o", str(tmp_path / "rec.jsonl"), "--seed", "0",
        "--device", "cpu",
    ]) == 0
    assert len((tmp_path / "rec.jsonl").read_text().splitlines()) == 40
    assert main(["train-value", "--records", str(tmp_path / "rec.jsonl"), "--policy", str(tmp_path / "policy"),
                 "-o", str(tmp_path / "run"), "--epochs", "1", "--device", "cpu"]) == 0
    loaded = MultiValueHead.from_pretrained(tmp_path / "run" / "best")
    assert loaded.objectives == OBJECTIVES
    assert loaded.config.policy_name_or_path == str(tmp_path / "policy")
    assert loaded.config.training_info["data"]["records"] == str(tmp_path / "rec.jsonl")  # not "in-memory"
