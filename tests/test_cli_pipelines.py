"""hf-rmod sample -> train-value through ``hf_rmod.cli.main`` on a tiny offline policy: reward modules from the
current folder and from a file path, Ctrl-C and resume, records with different objectives (``--objectives common``).

``hf-rmod evaluate`` end to end: tests/test_evaluation.py::test_cli_end_to_end.
"""

import json
import textwrap
from pathlib import Path

import pytest
import torch

from hf_rmod.cli import main

VOCAB, PAD, EOS = 64, 0, 1
GOOD = frozenset(range(10, 26))
MAX_NEW = 6

REWARDS_PY = textwrap.dedent(
    f"""
    GOOD = set(range(10, 26))
    INTERRUPT_AFTER = None  # set by a test: raise KeyboardInterrupt after this many calls
    calls = 0


    def _ids(text):
        return [int(word[1:]) for word in text.split()]


    def good(prompts, responses):
        global calls
        calls += 1
        if INTERRUPT_AFTER is not None and calls > INTERRUPT_AFTER:
            raise KeyboardInterrupt
        return [sum(i in GOOD for i in _ids(r)) / {MAX_NEW} for r in responses]


    def length(prompts, responses):
        return [len(_ids(r)) / {MAX_NEW} for r in responses]
    """
)


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=2,
    )
    policy = LlamaForCausalLM(config).eval()
    policy.generation_config.pad_token_id = PAD
    policy.generation_config.eos_token_id = EOS
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="w0", eos_token="w1")
    path = tmp_path_factory.mktemp("policy")
    policy.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh current folder holding my_rewards.py (not on sys.path: found as a module of the current folder)."""
    import sys

    (tmp_path / "my_rewards.py").write_text(REWARDS_PY)
    (tmp_path / "prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": f"w{3 + i} w{20 + i} w{40 + i}"}) + "\n" for i in range(12))
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "my_rewards", raising=False)
    monkeypatch.delenv("HF_RMOD_DEBUG", raising=False)
    torch.set_num_threads(1)
    return tmp_path


def sample(policy_dir, output, *rewards, extra=()):
    return main([
        "sample", "--policy", str(policy_dir), "--device", "cpu", "--prompts", "prompts.jsonl", "-n", "3",
        "--max-new-tokens", str(MAX_NEW), "--batch-size", "4", "--no-chat-template", "--seed", "0", "-o", output,
        *[arg for spec in rewards for arg in ("--reward", spec)], *extra,
    ])


def lines(path):
    return Path(path).read_text().splitlines()


def test_sample_then_train_value_end_to_end(policy_dir, workdir, capsys):
    assert sample(policy_dir, "rec.jsonl", "good=my_rewards:good", "length=./my_rewards.py:length") == 0
    records = [json.loads(line) for line in lines("rec.jsonl")]
    assert len(records) == 36 and set(records[0]["rewards"]) == {"good", "length"}
    code = main(["train-value", "--records", "rec.jsonl", "--policy", str(policy_dir), "--device", "cpu", "-o", "run",
                 "--epochs", "1", "--batch-size", "8"])
    assert code == 0
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{\n"):])  # the summary printed last
    assert set(report["val_mse"]) >= {"good", "length"} and report["best_checkpoint"]
    from hf_rmod.modeling_value_head import MultiValueHead

    head = MultiValueHead.from_pretrained(workdir / "run" / "best")
    assert head.objectives == ["good", "length"]
    assert head.config.policy_name_or_path == str(policy_dir)


def test_ctrl_c_in_sample_keeps_finished_batches_and_rerun_resumes(policy_dir, workdir, capsys):
    import importlib
    import sys

    sys.path.insert(0, str(workdir))
    try:  # the module object the CLI's `--reward good=my_rewards:good` resolves to
        module = importlib.import_module("my_rewards")
    finally:
        sys.path.remove(str(workdir))
    module.INTERRUPT_AFTER = 1  # the second batch is interrupted inside the reward
    code = sample(policy_dir, "rec.jsonl", "good=my_rewards:good")
    err = capsys.readouterr().err
    assert code == 130
    assert "Traceback" not in err and "rec.jsonl" in err and "rerun the same command to resume" in err
    assert len(lines("rec.jsonl")) == 4 * 3  # the first batch: 4 prompts x 3 responses
    module.INTERRUPT_AFTER = None
    assert sample(policy_dir, "rec.jsonl", "good=my_rewards:good") == 0
    records = [json.loads(line) for line in lines("rec.jsonl")]
    assert len(records) == 36 and len({r["prompt"] for r in records}) == 12


def test_train_value_objectives_common(policy_dir, workdir, capsys):
    assert sample(policy_dir, "a.jsonl", "good=my_rewards:good", "length=my_rewards:length") == 0
    assert sample(policy_dir, "b.jsonl", "good=my_rewards:good") == 0
    Path("mixed.jsonl").write_text(Path("a.jsonl").read_text() + Path("b.jsonl").read_text())
    capsys.readouterr()
    train = ["train-value", "--records", "mixed.jsonl", "--policy", str(policy_dir), "--device", "cpu",
             "--epochs", "1", "--batch-size", "8"]
    code = main([*train, "-o", "run1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "'length'" in err and "--objectives common" in err
    assert not Path("run1").exists()
    assert main([*train, "-o", "run2", "--objectives", "common"]) == 0
    from hf_rmod.modeling_value_head import MultiValueHead

    assert MultiValueHead.from_pretrained("run2/best").objectives == ["good"]
