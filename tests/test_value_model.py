"""The value-model protocol (hf_rmod.value_model.ValueModel): both families implement it, decoding / scoring / the
summary call only it, and a user's own value model that implements it decodes like the shipped ones."""

import pytest
import torch

import hf_rmod
from hf_rmod import MultiValueHead, RewardValueModel, RMODConfig
from hf_rmod.experiments.summary import reward_normalization
from hf_rmod.scoring import make_scorer
from hf_rmod.value_model import ValueModel
from tiny_models import VOCAB, prompts, spread_head, tiny_causal_lm


def _even_fraction(prompts_, responses):
    return torch.tensor([float(len(r) % 2 == 0) for r in responses])


class _ParityScorer:
    """Values a block by the share of even / odd token ids in it: (rows, 2)."""

    def prefill(self, input_ids, attention_mask):
        self.seen = 0

    def observe(self, real):
        self.seen += 1

    def reorder(self, index):
        pass

    def block_values(self, block_ids, block_real):
        real = block_real.float()
        even = ((block_ids % 2 == 0).float() * real).sum(-1) / real.sum(-1).clamp_min(1.0)
        return torch.stack([even, 1.0 - even], dim=-1)  # (rows, 2)

    def close(self):
        self.closed = True


class ParityValueModel:
    """A value model of the user's own: two objectives, even and odd token ids."""

    objectives = ["even", "odd"]
    normalization = ([0.5, 0.5], [0.25, 0.25])
    sampling_settings = None

    def __init__(self):
        self.prepared, self.scorers = [], []

    def check_policy(self, policy, tokenizer=None):
        if policy.config.vocab_size != VOCAB:
            raise ValueError("another vocabulary")

    def prepare(self, policy, cfg=None, *, owned=False):
        self.check_policy(policy)
        self.prepared.append(owned)

    def build_scorer(self, policy, cfg=None):
        self.scorers.append(_ParityScorer())
        return self.scorers[-1]

    def warn_if_sampling_differs(self, generation_config, max_new_tokens=None, policy=None):
        return []


def test_both_families_implement_the_protocol():
    model = tiny_causal_lm("llama")
    head = spread_head(model, objectives=("harmless", "helpful"))
    rewards = RewardValueModel({"even": _even_fraction}, normalization=([0.5], [0.5]))
    for value_model in (head, rewards, ParityValueModel()):
        assert isinstance(value_model, ValueModel), type(value_model).__name__
    assert isinstance(hf_rmod.ValueModel, type) and hf_rmod.load_value_model is hf_rmod.defaults.load_value_model
    head.config.reward_mean, head.config.reward_std = [1.0, -2.0], [3.0, 4.0]
    assert head.normalization == ([1.0, -2.0], [3.0, 4.0])
    assert rewards.normalization == ([0.5], [0.5])
    assert head.sampling_settings is None and rewards.sampling_settings is None


def test_an_object_without_the_protocol_is_refused_naming_the_argument():
    class Half:  # objectives and a scorer, but no normalization / prepare / ...
        objectives = ["a"]

        def build_scorer(self, policy, cfg=None):
            return None

    with pytest.raises(TypeError, match="`value_model` must be"):
        RMODConfig(value_model=Half())


def test_a_custom_value_model_decodes_through_the_protocol():
    model = hf_rmod.enable(tiny_causal_lm("llama"))
    value_model = ParityValueModel()
    ids, mask = prompts(batch=2, length=5, seed=3)
    torch.manual_seed(0)
    out = model.generate(ids, attention_mask=mask, rmod_config=RMODConfig(value_model=value_model, num_candidates=4,
                         block_size=3), max_new_tokens=6, do_sample=True, eos_token_id=None,
                         return_dict_in_generate=True)
    assert out.objectives == ("even", "odd")
    assert value_model.prepared == [False]  # a caller's object: prepared, never owned
    assert len(value_model.scorers) == 1 and value_model.scorers[0].closed
    assert out.values.shape == (2, 2, 4, 2) and torch.isfinite(out.values).all()
    # the kept block is the argmax of w*·V over the candidates (the values the scorer returned)
    best = torch.einsum("bnkg,bng->bnk", out.values, out.weights).argmax(-1)
    assert torch.equal(best, out.chosen)


def test_make_scorer_and_the_summary_ask_the_protocol():
    model = tiny_causal_lm("llama")
    value_model = ParityValueModel()
    assert isinstance(make_scorer(value_model, model), _ParityScorer)
    mean, std = reward_normalization(value_model, ["odd"])
    assert mean == {"odd": 0.5} and std == {"odd": 0.25}
    value_model.normalization = None
    with pytest.raises(ValueError, match="no reward statistics"):
        reward_normalization(value_model, ["odd"])


def test_a_reward_value_model_normalised_by_any_value_model():
    head = spread_head(tiny_causal_lm("llama"), objectives=("even", "odd"))
    head.config.reward_mean, head.config.reward_std = [0.1, 0.2], [1.5, 2.5]
    for source, expected in ((head, ([0.2], [2.5])), (ParityValueModel(), ([0.5], [0.25]))):
        rewards = RewardValueModel({"odd": _even_fraction}, normalization=source)  # the "odd" column of `source`
        mean, std = rewards.normalization
        assert (mean, std) == (pytest.approx(expected[0]), pytest.approx(expected[1]))
    no_stats = MultiValueHead.for_policy(tiny_causal_lm("llama"), objectives=["odd"])
    no_stats.config.reward_mean = no_stats.config.reward_std = None
    with pytest.raises(ValueError, match="without reward statistics"):
        RewardValueModel({"odd": _even_fraction}, normalization=no_stats)
