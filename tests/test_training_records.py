"""Issue 14 for sampling/training: no silently mixed records files, no silently dropped objectives, a warning for a
head worse than the constant predictor, the records file named in the card, progress lines (tiny models, offline)."""

import json
import warnings
from pathlib import Path

import pytest
import torch
from test_training import (
    MAX_NEW,
    OBJECTIVES,
    good_fraction,
    length_fraction,
    make_prompts,
    tiny_policy,
    tiny_tokenizer,
)

from hf_rmod.experiments.configs import DEFAULT_SAMPLING, SamplingConfig, ValueTrainingConfig
from hf_rmod.experiments.records import common_objectives, load_records, read_settings, settings_path
from hf_rmod.experiments.sampling import sample_responses
from hf_rmod.experiments.value_training import _worse_than_constant, ValueTrainingResult, train_value_head
from hf_rmod.modeling_value_head import MultiValueHead

SMALL = dict(num_responses=2, max_new_tokens=4, batch_size=4, chat_template=False, show_progress=False)


def brevity(prompts, responses):
    return torch.tensor([1.0 - len(r.split()) / MAX_NEW for r in responses])


def quality(prompts, responses):
    return torch.tensor([float(len(r)) for r in responses])


@pytest.fixture(scope="module")
def policy_and_tokenizer():
    return tiny_policy(), tiny_tokenizer()


# ------------------------------------------------------------------------------------------------------------
# sampling: one records file, one set of settings
# ------------------------------------------------------------------------------------------------------------
def test_sampling_uses_the_one_sampling_default(policy_and_tokenizer, monkeypatch):
    policy, tokenizer = policy_and_tokenizer
    seen = {}
    original = policy.generate

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(policy, "generate", spy)
    sample_responses(policy, tokenizer, make_prompts(1), [brevity], **SMALL)
    # DEFAULT_SAMPLING, with temperature and top-p moved into logits_processor (top-p from a partial sort)
    from transformers import TemperatureLogitsWarper

    from hf_rmod.logits_process import PartialSortTopPLogitsWarper

    assert seen["do_sample"] is True and seen["top_k"] == 0 and (seen["temperature"], seen["top_p"]) == (1.0, 1.0)
    temperature, top_p = seen["logits_processor"]
    assert isinstance(temperature, TemperatureLogitsWarper) and isinstance(top_p, PartialSortTopPLogitsWarper)
    assert (temperature.temperature, top_p.top_p) == (DEFAULT_SAMPLING["temperature"], DEFAULT_SAMPLING["top_p"])
    assert seen["num_return_sequences"] == 2 and seen["max_new_tokens"] == 4
    sample_responses(policy, tokenizer, make_prompts(1), [brevity], SamplingConfig(generation_kwargs='{"top_p": 1.0}'),
                     show_progress=False, chat_template=False)
    assert seen["top_p"] == 1.0 and seen["temperature"] == DEFAULT_SAMPLING["temperature"]
    with pytest.raises(TypeError, match="num_respones"):
        sample_responses(policy, tokenizer, make_prompts(1), [brevity], num_respones=3)


def test_sampling_records_its_settings(policy_and_tokenizer, tmp_path):
    policy, tokenizer = policy_and_tokenizer
    path = tmp_path / "records.jsonl"
    sample_responses(policy, tokenizer, make_prompts(2), [brevity, quality], output_path=path, **SMALL)
    settings = read_settings(path)
    assert settings_path(path) == tmp_path / "records.jsonl.settings.json"
    assert settings["num_responses"] == 2 and settings["max_new_tokens"] == 4 and settings["chat_template"] is False
    assert settings["sampling"] == dict(DEFAULT_SAMPLING)
    assert settings["objectives"] == ["brevity", "quality"]


@pytest.mark.parametrize(
    "change, expected",
    [
        (dict(num_responses=3), "num_responses: 2 -> 3"),
        (dict(max_new_tokens=6), "max_new_tokens: 4 -> 6"),
        (dict(generation_kwargs={"temperature": 1.0}), '"temperature": 0.7'),
        (dict(chat_template=True), "chat_template: false -> true"),
    ],
)
def test_sampling_refuses_to_append_with_other_settings(policy_and_tokenizer, tmp_path, change, expected):
    policy, tokenizer = policy_and_tokenizer
    path = tmp_path / "records.jsonl"
    prompts = make_prompts(4, seed=5)
    sample_responses(policy, tokenizer, prompts[:2], [brevity], output_path=path, **SMALL)
    before = path.read_text()
    with pytest.raises(ValueError, match="other settings") as err:
        sample_responses(policy, tokenizer, prompts, [brevity], output_path=path, **{**SMALL, **change})
    assert expected in str(err.value) and "--output" in str(err.value)
    assert path.read_text() == before  # nothing generated into the file
    # the same settings resume
    assert len(sample_responses(policy, tokenizer, prompts, [brevity], output_path=path, **SMALL)) == 4


def test_sampling_refuses_another_reward_set(policy_and_tokenizer, tmp_path):
    policy, tokenizer = policy_and_tokenizer
    path = tmp_path / "records.jsonl"
    prompts = make_prompts(4, seed=6)
    sample_responses(policy, tokenizer, prompts[:2], [brevity], output_path=path, **SMALL)
    before = path.read_text()
    with pytest.raises(ValueError, match=r'objectives: \["brevity"\] -> \["brevity", "quality"\]'):
        sample_responses(policy, tokenizer, prompts, [brevity, quality], output_path=path, **SMALL)
    calls = []

    def counting_quality(prompts, responses):
        calls.append(prompts)
        return quality(prompts, responses)

    with pytest.raises(ValueError, match="objectives"):  # known up front: refused before generating
        sample_responses(policy, tokenizer, prompts, [counting_quality], output_path=path, objectives=["quality"],
                         **SMALL)
    counting_quality.objectives = ["quality"]  # declared by the function itself (as --reward specs do)
    with pytest.raises(ValueError, match="objectives"):
        sample_responses(policy, tokenizer, prompts, [counting_quality], output_path=path, **SMALL)
    assert calls == [] and path.read_text() == before


def test_sampling_checks_a_file_without_settings(policy_and_tokenizer, tmp_path):
    policy, tokenizer = policy_and_tokenizer
    path = tmp_path / "records.jsonl"
    prompts = make_prompts(4, seed=7)
    sample_responses(policy, tokenizer, prompts[:2], [brevity], output_path=path, **SMALL)
    settings_path(path).unlink()  # a file written before settings files existed
    with pytest.warns(UserWarning, match="no settings file"), pytest.raises(ValueError, match="num_responses: 2 -> 3"):
        sample_responses(policy, tokenizer, prompts, [brevity], output_path=path, **{**SMALL, "num_responses": 3})
    with pytest.warns(UserWarning, match="no settings file"):
        sample_responses(policy, tokenizer, prompts, [brevity], output_path=path, **SMALL)
    assert read_settings(path)["objectives"] == ["brevity"]


def test_resumed_sampling_says_so(policy_and_tokenizer, tmp_path, capsys):
    policy, tokenizer = policy_and_tokenizer
    path = tmp_path / "records.jsonl"
    prompts = make_prompts(5, seed=8)
    sample_responses(policy, tokenizer, prompts[:3], [brevity], output_path=path, **SMALL)
    capsys.readouterr()
    sample_responses(policy, tokenizer, prompts, [brevity], output_path=path, **{**SMALL, "show_progress": True})
    err = capsys.readouterr().err
    assert f"Resuming {path}: 3 of 5 prompts already sampled" in err and "other 2" in err


# ------------------------------------------------------------------------------------------------------------
# training: objectives every record has, only on request
# ------------------------------------------------------------------------------------------------------------
def _mixed_records():
    record = {"prompt": "w3 w4", "prompt_ids": [3, 4], "response": "w12 w1", "response_ids": [12, 1]}
    return [
        {**record, "prompt": f"w{3 + i}", "rewards": {"brevity": 0.1 * i, **({"quality": 1.0} if i >= 3 else {})}}
        for i in range(6)
    ]


def test_mixed_records_are_an_error_unless_asked(tmp_path):
    records = _mixed_records()
    with pytest.raises(ValueError, match=r"Record 3 has objective 'quality'.*allow_missing=True.*\['brevity'\]"):
        load_records(records)
    flipped = records[::-1]
    with pytest.raises(ValueError, match=r"Record 3 lacks objective 'quality'"):
        load_records(flipped)
    assert common_objectives(load_records(records, allow_missing=True)) == ["brevity"]
    with pytest.raises(ValueError, match=r"Record 0 has rewards for \['brevity'\] but not 'quality'"):
        load_records(records, ["brevity", "quality"], allow_missing=True)


@pytest.mark.filterwarnings("ignore:The saved head")  # one epoch on six records: no better than the constant
def test_training_on_mixed_records_needs_the_opt_in():
    policy = tiny_policy()
    head = MultiValueHead.for_policy(policy, ["brevity"])
    with pytest.raises(ValueError, match="Record 3 has objective 'quality'"):
        train_value_head(head, _mixed_records(), policy, epochs=1, show_progress=False)
    result = train_value_head(head, _mixed_records(), policy, epochs=1, show_progress=False, allow_missing=True)
    assert set(result.val_mse) == {"brevity"}


# ------------------------------------------------------------------------------------------------------------
# training: reports
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def records_file(policy_and_tokenizer, tmp_path_factory):
    policy, tokenizer = policy_and_tokenizer
    path = tmp_path_factory.mktemp("records") / "records.jsonl"
    sample_responses(policy, tokenizer, make_prompts(12, seed=9), [good_fraction, length_fraction], output_path=path,
                     **{**SMALL, "num_responses": 4, "max_new_tokens": MAX_NEW, "batch_size": 12}, seed=0)
    return path


def test_card_names_the_records_file_and_its_settings(policy_and_tokenizer, records_file, tmp_path, capsys):
    policy, _ = policy_and_tokenizer
    head = MultiValueHead.for_policy(policy, OBJECTIVES)
    head.config.training_info = {"rewards": "two synthetic rewards"}
    records = load_records(records_file)  # the command line loads the records first, then trains
    result = train_value_head(head, records, policy, ValueTrainingConfig(epochs=2, patience=None), output_dir=tmp_path,
                              show_progress=True)
    info = head.config.training_info
    assert info["data"]["records"] == str(records_file)
    assert info["data"]["sampling_settings"]["num_responses"] == 4
    assert info["rewards"] == "two synthetic rewards"  # what the caller recorded is kept
    card = (Path(result.best_checkpoint) / "README.md").read_text()
    assert str(records_file) in card and "in-memory" not in card
    err = capsys.readouterr().err
    for epoch in (1, 2):  # the validation MSE per epoch, per objective, with the constant baseline
        line = next(line for line in err.splitlines() if line.startswith(f"epoch {epoch}/2:"))
        assert "val MSE good_fraction" in line and "length_fraction" in line and "(constant" in line
    assert f"{result.history[0]['val_mse_per_objective']['good_fraction']:.4g}" in err


def test_head_worse_than_constant_warns(policy_and_tokenizer, records_file, tmp_path):
    policy, _ = policy_and_tokenizer
    torch.manual_seed(0)
    head = MultiValueHead.for_policy(policy, OBJECTIVES)
    with pytest.warns(UserWarning, match="worse than the constant predictor"):
        result = train_value_head(head, records_file, policy, epochs=1, lr=5.0, max_grad_norm=None,
                                  output_dir=tmp_path, show_progress=False)
    bad = [name for name in OBJECTIVES if result.val_mse[name] > result.baseline_mse[name]]
    assert bad and len(result.warnings) == len(bad)
    assert all(f"`{name}`" in message for name, message in zip(bad, result.warnings))
    assert json.loads((tmp_path / "metrics.json").read_text())["warnings"] == result.warnings
    assert head.config.training_info["metrics"]["warnings"] == result.warnings
    card = (tmp_path / "best" / "README.md").read_text()
    assert "> **Warning:** The saved head" in card


def test_no_warning_for_a_head_better_than_constant():
    result = ValueTrainingResult(val_mse={"a": 0.5, "b": 0.9}, baseline_mse={"a": 1.0, "b": 0.8}, best_epoch=2)
    messages = _worse_than_constant(result)
    assert len(messages) == 1 and "`b`" in messages[0] and "0.9 > baseline 0.8" in messages[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _worse_than_constant(ValueTrainingResult(val_mse={"a": 0.5}, baseline_mse={"a": 1.0})) == []


def test_sampling_generation_kwargs_may_not_override_what_sampling_sets():
    """One reserved-arguments check for sampling and evaluation: `max_new_tokens` in generation_kwargs used to be
    silently overridden by sample_responses (evaluate already refused it)."""
    import pytest

    from hf_rmod.experiments.configs import SamplingConfig

    with pytest.raises(ValueError, match=r"must not set \['max_new_tokens', 'num_return_sequences'\]"):
        SamplingConfig(generation_kwargs='{"max_new_tokens": 3, "num_return_sequences": 2, "temperature": 1.0}')
    assert SamplingConfig(generation_kwargs='{"temperature": 1.0}').sampling["temperature"] == 1.0
