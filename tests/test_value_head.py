"""Tests for hf_rmod.modeling_value_head (tiny in-process models, no Hub access)."""

import pytest
import torch
from transformers import AutoModel, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from hf_rmod.modeling_value_head import MultiValueHead, MultiValueHeadConfig, MultiValueHeadOutput

VOCAB = 64


def tiny_llama(vocab_size=VOCAB, hidden_size=32, seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(vocab_size=VOCAB, hidden_size=32, seed=0):
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab_size, n_embd=hidden_size, n_layer=2, n_head=4, n_positions=128, bos_token_id=1, eos_token_id=2
    )
    return GPT2LMHeadModel(config).eval()


POLICIES = {"llama": tiny_llama, "gpt2": tiny_gpt2}


def left_padded_batch(seed=0, batch=3, length=12):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    mask[1, :1] = 0
    ids = ids.masked_fill(mask == 0, 0)
    position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    return ids, mask, position_ids


# ----------------------------------------------------------------------------------------------------------------
# config
# ----------------------------------------------------------------------------------------------------------------


def test_config_defaults_and_properties():
    config = MultiValueHeadConfig(objectives=["a", "b"], hidden_size=8)
    assert config.num_objectives == 2
    assert config.reward_mean == [0.0, 0.0]
    assert config.reward_std == [1.0, 1.0]
    assert config.head_type == "linear"
    mlp = MultiValueHeadConfig(objectives=["a"], hidden_size=8, head_type="mlp")
    assert mlp.head_hidden_size == 8


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(hidden_size=8), "objectives"),
        (dict(objectives=[], hidden_size=8), "empty"),
        (dict(objectives=["a", "a"], hidden_size=8), "unique"),
        (dict(objectives=["a", ""], hidden_size=8), "non-empty"),
        (dict(objectives=["a"]), "hidden_size"),
        (dict(objectives=["a"], hidden_size=0), "hidden_size"),
        (dict(objectives=["a"], hidden_size=8, head_type="conv"), "head_type"),
        (dict(objectives=["a", "b"], hidden_size=8, reward_std=[1.0, 0.0]), "reward_std"),
        (dict(objectives=["a", "b"], hidden_size=8, reward_mean=[1.0]), "reward_mean"),
        (dict(objectives=["a"], backbone_config={"n_embd": 8}), "model_type"),
        (dict(objectives=["a"], hidden_size=16, backbone_config={"model_type": "gpt2", "n_embd": 8}), "hidden_size"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultiValueHeadConfig(**kwargs)


def test_config_string_objectives_is_type_error():
    with pytest.raises(TypeError, match="objectives"):
        MultiValueHeadConfig(objectives="helpful", hidden_size=8)


def test_backbone_config_dict_becomes_config():
    config = MultiValueHeadConfig(objectives=["a"], backbone_config={"model_type": "gpt2", "n_embd": 16, "n_head": 2})
    assert type(config.backbone_config).__name__ == "GPT2Config"
    assert config.hidden_size == 16


# ----------------------------------------------------------------------------------------------------------------
# model
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(POLICIES))
def test_for_policy_shared_trunk(kind):
    policy = POLICIES[kind]()
    head = MultiValueHead.for_policy(policy, ["x", "y", "z"], head_type="mlp", head_hidden_size=16)
    assert head.uses_policy_hidden_states
    assert head.objectives == ["x", "y", "z"] and head.num_objectives == 3
    assert head.config.hidden_size == 32
    assert head.config.policy_vocab_size == VOCAB
    hidden = torch.randn(2, 5, 32, dtype=torch.bfloat16)
    out = head(hidden_states=hidden)
    assert isinstance(out, MultiValueHeadOutput)
    assert out.values.shape == (2, 5, 3)
    assert out.values.dtype == torch.float32
    assert torch.equal(out.values, head.score_hidden_states(hidden))
    with pytest.raises(ValueError, match="hidden_states"):
        head(input_ids=torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="width"):
        head.score_hidden_states(torch.randn(2, 31))


@pytest.mark.parametrize("kind", sorted(POLICIES))
def test_backbone_cached_incremental_matches_full(kind):
    policy = POLICIES[kind]()
    head = MultiValueHead.from_backbone(policy, ["a", "b"], head_type="mlp").eval()
    assert not head.uses_policy_hidden_states
    assert type(head.backbone).__name__ in ("LlamaModel", "GPT2Model")
    ids, mask, pos = left_padded_batch()
    split = 7
    with torch.no_grad():
        full = head(input_ids=ids, attention_mask=mask, position_ids=pos).values  # (batch, T, G)
        prefill = head(input_ids=ids[:, :split], attention_mask=mask[:, :split], position_ids=pos[:, :split], use_cache=True)
        assert prefill.cache is not None
        step = head(
            input_ids=ids[:, split:], attention_mask=mask, position_ids=pos[:, split:], cache=prefill.cache, use_cache=True
        )
    real = mask.bool()
    assert full.shape == (3, 12, 2)
    torch.testing.assert_close(prefill.values[real[:, :split]], full[:, :split][real[:, :split]], atol=1e-6, rtol=0)
    torch.testing.assert_close(step.values[real[:, split:]], full[:, split:][real[:, split:]], atol=1e-6, rtol=0)


def test_backbone_weights_copied_and_independent():
    policy = tiny_llama()
    head = MultiValueHead.from_backbone(policy, ["a"])
    assert torch.equal(head.backbone.embed_tokens.weight, policy.model.embed_tokens.weight)
    with torch.no_grad():
        head.backbone.embed_tokens.weight.add_(1.0)
    assert not torch.equal(head.backbone.embed_tokens.weight, policy.model.embed_tokens.weight)


def test_denormalize_normalize_inverse():
    head = MultiValueHead(MultiValueHeadConfig(objectives=["a", "b"], hidden_size=4, reward_mean=[1.0, -2.0], reward_std=[2.0, 0.5]))
    v = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    torch.testing.assert_close(head.denormalize(v), torch.tensor([[1.0, -2.0], [3.0, -1.0]]))
    torch.testing.assert_close(head.normalize(head.denormalize(v)), v)


def test_head_stays_float32_when_loaded_in_bf16(tmp_path):
    head = MultiValueHead.from_backbone(tiny_gpt2(), ["a", "b"])
    head.save_pretrained(tmp_path)
    loaded = MultiValueHead.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert loaded.backbone.wte.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in loaded.head.parameters())
    ids, mask, pos = left_padded_batch()
    assert loaded(input_ids=ids, attention_mask=mask, position_ids=pos).values.dtype == torch.float32


@pytest.mark.parametrize("kind", ["shared", "backbone"])
def test_save_load_round_trip_class_and_automodel(tmp_path, kind):
    policy = tiny_llama()
    if kind == "shared":
        head = MultiValueHead.for_policy(policy, ["a", "b"], reward_mean=[0.5, 1.0], reward_std=[2.0, 3.0])
    else:
        head = MultiValueHead.from_backbone(policy, ["a", "b"], head_type="mlp")
    head.save_pretrained(tmp_path)
    for loaded in (MultiValueHead.from_pretrained(tmp_path), AutoModel.from_pretrained(tmp_path)):
        assert type(loaded) is MultiValueHead
        assert loaded.objectives == ["a", "b"]
        assert loaded.config.reward_mean == head.config.reward_mean
        assert loaded.config.reward_std == head.config.reward_std
        original, restored = head.state_dict(), loaded.state_dict()
        assert original.keys() == restored.keys()
        for key in original:
            assert torch.equal(original[key], restored[key]), key


# ----------------------------------------------------------------------------------------------------------------
# Hub surface and safety
# ----------------------------------------------------------------------------------------------------------------


def _trained_looking_head():
    head = MultiValueHead.for_policy(tiny_llama(), ["helpful", "harmless"], reward_mean=[0.25, 3.0], reward_std=[0.5, 2.0])
    head.config.policy_name_or_path = "my-org/tiny-policy"
    head.config.training_info = {
        "data": {"records": "responses.jsonl", "prompts": 40},
        "metrics": {"val_mse": {"helpful": 0.123, "harmless": 0.456}, "baseline_mse": {"helpful": 1.0, "harmless": 0.9}},
    }
    return head


def test_save_writes_card_with_objectives_policy_data_metrics(tmp_path):
    head = _trained_looking_head()
    head.save_pretrained(tmp_path)
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in tmp_path.iterdir()}
    card = (tmp_path / "README.md").read_text()
    for text in ("helpful", "harmless", "my-org/tiny-policy", "shared-trunk", "responses.jsonl", "0.123", "0.456"):
        assert text in card, text
    from huggingface_hub import ModelCard

    data = ModelCard.load(tmp_path / "README.md").data
    assert {"hf_rmod", "rmod", "value-model"} <= set(data.tags)
    assert data.base_model == "my-org/tiny-policy"


def test_push_to_hub_uploads_weights_config_and_card(monkeypatch):
    import huggingface_hub

    uploaded = {}

    class RepoUrl:
        repo_id = "me/value-head"

    def fake_create_repo(self, repo_id, **kwargs):
        uploaded["created"] = repo_id
        return RepoUrl()

    def fake_upload_folder(self, *, repo_id, folder_path, **kwargs):
        uploaded["repo_id"] = repo_id
        uploaded["files"] = {p.name: p.read_bytes() for p in __import__("pathlib").Path(folder_path).iterdir()}
        return "commit-info"

    def no_network(*args, **kwargs):
        raise AssertionError("network call during push_to_hub test")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", fake_create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", fake_upload_folder)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", no_network)
    head = _trained_looking_head()
    assert head.push_to_hub("me/value-head", tags=["extra-tag"]) == "commit-info"
    assert uploaded["created"] == "me/value-head" and uploaded["repo_id"] == "me/value-head"
    assert {"config.json", "model.safetensors", "README.md"} <= set(uploaded["files"])
    card = uploaded["files"]["README.md"].decode()
    assert "helpful" in card and "extra-tag" in card and "value-model" in card


def test_pickle_only_checkpoint_is_refused(tmp_path):
    head = MultiValueHead(MultiValueHeadConfig(objectives=["a"], hidden_size=8))
    head.config.save_pretrained(tmp_path)
    torch.save(head.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(OSError, match="pickle"):
        MultiValueHead.from_pretrained(tmp_path)
    with pytest.raises(OSError, match="pickle"):
        AutoModel.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="use_safetensors"):
        MultiValueHead.from_pretrained(tmp_path, use_safetensors=False)


def test_config_naming_pickle_weights_is_refused(tmp_path):
    import json

    head = MultiValueHead(MultiValueHeadConfig(objectives=["a"], hidden_size=8))
    head.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["transformers_weights"] = "adapter_model.bin"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="safetensors"):
        MultiValueHead.from_pretrained(tmp_path)


def _edit_config(path, **changes):
    import json

    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def _edit_weights(path, edit):
    from safetensors.torch import load_file, save_file

    state = load_file(path / "model.safetensors")
    edit(state)
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda p: _edit_config(p, objectives=["a", "b", "c"], reward_mean=None, reward_std=None), r"\(2, 8\) vs model \(3, 8\)"),
        (lambda p: _edit_config(p, hidden_size=16), r"\(2, 8\) vs model \(2, 16\)"),
        (lambda p: _edit_weights(p, lambda s: s.pop("head.layers.0.bias")), "missing_keys"),
        (lambda p: _edit_weights(p, lambda s: s.update({"head.extra": torch.zeros(2)})), "unexpected_keys"),
    ],
)
def test_mismatched_checkpoint_raises(tmp_path, corrupt, match):
    MultiValueHead(MultiValueHeadConfig(objectives=["a", "b"], hidden_size=8)).save_pretrained(tmp_path)
    corrupt(tmp_path)
    with pytest.raises(ValueError, match=match):
        MultiValueHead.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=match):
        AutoModel.from_pretrained(tmp_path)


def test_check_compatible_errors_name_both_sides():
    policy = tiny_llama()
    wide = tiny_llama(hidden_size=48)
    head = MultiValueHead.for_policy(policy, ["a", "b"])
    head.check_compatible(policy)
    with pytest.raises(ValueError, match=r"width 32.*width 48"):
        head.check_compatible(wide)
    with pytest.raises(ValueError, match=r"\['a', 'b'\].*\['a', 'b', 'c'\]"):
        head.check_compatible(policy, objectives=["a", "b", "c"])
    bigger_vocab = tiny_llama(vocab_size=96)
    with pytest.raises(ValueError, match=r"64.*96"):
        head.check_compatible(bigger_vocab)
    backbone_head = MultiValueHead.from_backbone(tiny_gpt2(), ["a"])
    backbone_head.check_compatible(policy)
    with pytest.raises(ValueError, match=r"backbone vocabulary of 64.*96"):
        backbone_head.check_compatible(bigger_vocab)


# ----------------------------------------------------------------------------------------------------------------
# tokenizer fingerprint and sampling distribution (issue 10 §4)
# ----------------------------------------------------------------------------------------------------------------
def _word_tokenizer(size, prefix="w"):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"{prefix}{i}": i for i in range(size)}, unk_token=f"{prefix}0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=f"{prefix}0", eos_token=f"{prefix}2")


def test_tokenizer_fingerprint_identifies_the_ids():
    from hf_rmod.configuration_value_head import tokenizer_fingerprint

    a, same, other = _word_tokenizer(VOCAB), _word_tokenizer(VOCAB), _word_tokenizer(VOCAB, prefix="t")
    fp = tokenizer_fingerprint(a)
    assert fp == tokenizer_fingerprint(same) and fp["vocab_size"] == VOCAB
    assert fp["sha256"] != tokenizer_fingerprint(other)["sha256"]
    same.pad_token = same.eos_token  # pointing pad at an existing token changes no id
    assert tokenizer_fingerprint(same)["sha256"] == fp["sha256"]
    with pytest.raises(ValueError, match="tokenizer_fingerprint"):
        MultiValueHeadConfig(objectives=["a"], hidden_size=4, tokenizer_fingerprint={"vocab_size": 3})


def test_gpt2_backbone_on_a_policy_with_another_vocabulary_is_refused():
    """The SmolLM2 (49,152) / GPT-2 (50,257) case in miniature: a bigger backbone vocabulary used to pass."""
    import hf_rmod
    from hf_rmod import RMODConfig
    from hf_rmod.training import train_value_head

    policy = tiny_llama(vocab_size=VOCAB)
    head = MultiValueHead.from_backbone(tiny_gpt2(vocab_size=VOCAB + 16), ["a"])  # no fingerprint recorded
    with pytest.raises(ValueError, match=r"backbone vocabulary of 80 tokens but policy .* has 64.*value_tokenizer="):
        head.check_compatible(policy)
    ids = torch.randint(3, VOCAB, (1, 4))
    with pytest.raises(ValueError, match="backbone vocabulary of 80"):
        hf_rmod.generate(policy, ids, rmod_config=RMODConfig(value_model=head, num_candidates=2, block_size=2),
                         max_new_tokens=2, do_sample=True)
    records = [{"prompt": "p", "prompt_ids": [3, 4], "response_ids": [5, 6], "rewards": {"a": 1.0}}] * 4
    with pytest.raises(ValueError, match="backbone vocabulary of 80"):
        train_value_head(head, records, policy, epochs=1, val_fraction=0.0, show_progress=False)
    # re-tokenising is the fix: no ids cross over, so nothing to refuse
    policy_tok, value_tok = _word_tokenizer(VOCAB), _word_tokenizer(VOCAB + 16, prefix="t")
    cfg = RMODConfig(value_model=head, num_candidates=2, block_size=2, tokenizer=policy_tok, value_tokenizer=value_tok)
    out = hf_rmod.generate(policy, ids, rmod_config=cfg, max_new_tokens=2, do_sample=True, top_k=0,
                           return_dict_in_generate=True)
    assert out.values.shape == (1, 1, 2, 1)


def test_fingerprint_decides_when_both_tokenizers_are_known():
    import hf_rmod
    from hf_rmod import RMODConfig
    from hf_rmod.training import train_value_head

    policy_tok, other_tok = _word_tokenizer(VOCAB), _word_tokenizer(VOCAB, prefix="t")
    policy = tiny_llama()
    head = MultiValueHead.from_backbone(tiny_gpt2(), ["a"], tokenizer=other_tok)  # same sizes, other tokens
    assert head.config.tokenizer_fingerprint["vocab_size"] == VOCAB
    head.check_compatible(policy)  # sizes agree and no policy tokenizer given: cannot tell
    with pytest.raises(ValueError, match=r"tokenizer .*sha256 .*policy .*tokenizer is .*sha256.*value_tokenizer="):
        head.check_compatible(policy, tokenizer=policy_tok)
    ids = torch.randint(3, VOCAB, (1, 4))
    with pytest.raises(ValueError, match="the same ids mean other tokens"):
        hf_rmod.generate(policy, ids, rmod_config=RMODConfig(value_model=head, num_candidates=2, tokenizer=policy_tok),
                         max_new_tokens=2, do_sample=True)
    records = [{"prompt": "p", "prompt_ids": [3, 4], "response_ids": [5, 6], "rewards": {"a": 1.0}}] * 4
    with pytest.raises(ValueError, match="the same ids mean other tokens"):
        train_value_head(head, records, epochs=1, val_fraction=0.0, show_progress=False, tokenizer=policy_tok)
    # the same tokenizer passes even when the embedding sizes differ (padded embeddings, e.g. Qwen 0.5B vs 7B)
    padded = MultiValueHead.from_backbone(tiny_gpt2(vocab_size=VOCAB + 8), ["a"], tokenizer=policy_tok)
    padded.check_compatible(policy, tokenizer=policy_tok)
    with pytest.raises(ValueError, match="backbone vocabulary of 72"):
        padded.check_compatible(policy)  # without the policy's tokenizer only the sizes can be compared
    # a recorded tokenizer larger than the policy's vocabulary cannot be the policy's
    big = MultiValueHead.from_backbone(tiny_gpt2(), ["a"], tokenizer=_word_tokenizer(VOCAB + 8))
    with pytest.raises(ValueError, match="more tokens than policy"):
        big.check_compatible(policy)


def test_new_fields_round_trip_and_old_heads_load(tmp_path):
    import json

    from hf_rmod.defaults import DEFAULT_VALUE_HEAD_DIR

    head = MultiValueHead.for_policy(tiny_llama(), ["a"], tokenizer=_word_tokenizer(VOCAB),
                                     sampling_settings={"temperature": 0.7, "top_k": 0})
    head.save_pretrained(tmp_path / "new")
    loaded = MultiValueHead.from_pretrained(tmp_path / "new")
    assert loaded.config.tokenizer_fingerprint == head.config.tokenizer_fingerprint
    assert loaded.config.sampling_settings == {"temperature": 0.7, "top_k": 0}
    card = (tmp_path / "new" / "README.md").read_text()
    assert "**Tokenizer**" in card and "64 tokens" in card and "**temperature**: 0.7" in card
    raw = json.loads((tmp_path / "new" / "config.json").read_text())
    for key in ("tokenizer_fingerprint", "sampling_settings"):
        raw.pop(key, None)
    (tmp_path / "new" / "config.json").write_text(json.dumps(raw))
    old = MultiValueHead.from_pretrained(tmp_path / "new")
    assert old.config.tokenizer_fingerprint is None and old.config.sampling_settings is None
    shipped = MultiValueHead.from_pretrained(DEFAULT_VALUE_HEAD_DIR)
    assert shipped.config.tokenizer_fingerprint is None


def test_decoding_with_other_sampling_settings_warns_once():
    import warnings

    import hf_rmod
    from hf_rmod import RMODConfig

    policy = tiny_llama()
    head = MultiValueHead.for_policy(policy, ["a"], sampling_settings={
        "do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 0, "max_new_tokens": 4, "chat_template": True})
    cfg = RMODConfig(value_model=head, num_candidates=2, block_size=2)
    ids = torch.randint(3, VOCAB, (1, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the recorded settings: no warning
        hf_rmod.generate(policy, ids, rmod_config=cfg, max_new_tokens=4, do_sample=True, temperature=0.7, top_p=0.9,
                         top_k=0)
    with pytest.warns(UserWarning, match=r"top_k: 0 -> 50; max_new_tokens: 4 -> 2") as caught:
        hf_rmod.generate(policy, ids, rmod_config=cfg, max_new_tokens=2, do_sample=True, temperature=0.7, top_p=0.9)
    assert sum("other settings" in str(w.message) for w in caught) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same differences again: already warned
        hf_rmod.generate(policy, ids, rmod_config=cfg, max_new_tokens=2, do_sample=True, temperature=0.7, top_p=0.9)
    with pytest.warns(UserWarning, match=r"temperature: 0.7 -> 1.0"):
        hf_rmod.generate(policy, ids, rmod_config=cfg, max_new_tokens=4, do_sample=True, top_p=0.9, top_k=0)
