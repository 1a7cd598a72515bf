"""The core's small contracts: shared helpers, the Scorer protocol and injectable factory, the config left
untouched by decoding, greedy refused, missing local folders failing at once, one hook for decoding and
training, and reward-function loading from command-line specs."""

from __future__ import annotations

import os
import sys
import textwrap

import pytest
import torch

import hf_rmod
from hf_rmod import MultiValueHead, RMODConfig
from hf_rmod._hub import check_local_path, looks_like_local_path
from hf_rmod._utils import check_unique_names, module_device, resolve_device
from hf_rmod.rewards import load_reward_functions, score_rewards
from hf_rmod.scoring import (
    CachedBackboneScorer,
    PolicyHiddenStateScorer,
    RetokenizingScorer,
    Scorer,
    make_scorer,
    policy_final_hidden_states,
)
from tiny_models import prompts, tiny_causal_lm

GREEDY = dict(do_sample=True, top_k=1)
PROMPTS = ["how do i bake bread", "tell me a joke"]
RESPONSES = ["mix flour and water", "why did the chicken"]


def _head_for(model, objectives=("a", "b")):
    torch.manual_seed(0)
    head = MultiValueHead.for_policy(model, objectives=list(objectives))
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0.0, 1.0)
    return head.eval()


# ------------------------------------------------------------------------------------------------ _utils
def test_module_device_and_resolve_device():
    assert module_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert module_device(torch.nn.ReLU()) == torch.device("cpu")  # no parameters
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize(
    "names, exc, match",
    [
        ("a", TypeError, r"objectives=\['a'\]"),
        (5, TypeError, "list of names"),
        ([], ValueError, "is empty"),
        (["a", 3], TypeError, "strings"),
        (["a", ""], ValueError, "non-empty"),
        (["a", "b", "a"], ValueError, r"Duplicate objective names \['a'\].*unique"),
    ],
)
def test_check_unique_names(names, exc, match):
    with pytest.raises(exc, match=match):
        check_unique_names(names, "objectives")
    assert check_unique_names(("x", "y"), "objectives") == ["x", "y"]


# ------------------------------------------------------------------------------------------------ scorers
def test_scorers_satisfy_the_protocol():
    model = tiny_causal_lm("llama")
    head = _head_for(model)
    scorer = make_scorer(head, model)
    try:
        assert isinstance(scorer, Scorer) and isinstance(scorer, PolicyHiddenStateScorer)
    finally:
        scorer.close()
    for cls in (CachedBackboneScorer, RetokenizingScorer):
        assert all(callable(getattr(cls, name)) for name in ("prefill", "observe", "block_values", "reorder", "close"))


def test_scorer_factory_is_injectable_and_receives_head_policy_config():
    model = hf_rmod.enable(tiny_causal_lm("llama"))
    ids, _ = prompts(batch=2, length=4)
    cfg = RMODConfig(value_model=_head_for(model), num_candidates=3, block_size=2)
    seen = []

    def factory(head, policy, config):
        seen.append((head, policy, config))
        return make_scorer(head, policy, config)

    generator = hf_rmod.RobustMultiObjectiveGenerator(scorer_factory=factory)
    torch.manual_seed(0)
    custom = model.generate(ids, rmod_config=cfg, custom_generate=generator, max_new_tokens=4, do_sample=True)
    torch.manual_seed(0)
    default = model.generate(ids, rmod_config=cfg, max_new_tokens=4, do_sample=True)
    assert len(seen) == 1 and seen[0][0] is cfg.value_model and seen[0][1] is model and seen[0][2] is cfg
    assert torch.equal(custom, default)
    with pytest.raises(TypeError, match="scorer_factory"):
        hf_rmod.RobustMultiObjectiveGenerator(scorer_factory="make_scorer")
    with pytest.raises(ValueError, match="custom_generate"):
        hf_rmod.generate(model, ids, rmod_config=cfg, custom_generate=lambda *a, **k: None, max_new_tokens=2)


def test_policy_final_hidden_states_is_what_the_decoding_hook_sees():
    """Training and decoding read the same lm_head input: the scorer's prefill state is the last column."""
    model = tiny_causal_lm("gpt2")
    ids, mask = prompts(batch=2, length=5)
    hidden = policy_final_hidden_states(model, ids, mask)  # (2, 5, H)
    scorer = PolicyHiddenStateScorer(_head_for(model), model)
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, logits_to_keep=1)
        scorer.prefill(ids, mask)
        torch.testing.assert_close(scorer._kept, hidden[:, -1])
    finally:
        scorer.close()
    assert not model.get_output_embeddings()._forward_pre_hooks  # both hooks removed


def test_generate_is_exported_and_runs_without_enable():
    model = tiny_causal_lm("llama")
    ids, _ = prompts(batch=1, length=4)
    cfg = RMODConfig(value_model=_head_for(model), num_candidates=2, block_size=2)
    out = hf_rmod.generate(model, ids, rmod_config=cfg, max_new_tokens=4, do_sample=True)
    assert out.shape == (1, 8) and not hf_rmod.is_enabled(model)
    assert "generate" in hf_rmod.__all__


# ------------------------------------------------------------------------------------------------ config kept
def test_decoding_never_mutates_the_config(tmp_path):
    model = hf_rmod.enable(tiny_causal_lm("llama"))
    _head_for(model).save_pretrained(tmp_path / "head")
    ids, _ = prompts(batch=1, length=4)
    for value_model in (str(tmp_path / "head"), _head_for(model)):
        cfg = RMODConfig(value_model=value_model, num_candidates=2, block_size=2, objectives=["b", "a"])
        before = dict(vars(cfg))
        model.generate(ids, rmod_config=cfg, max_new_tokens=4, do_sample=True)
        assert vars(cfg) == before
        assert all(vars(cfg)[key] is value for key, value in before.items())


def test_greedy_with_several_candidates_is_refused():
    model = hf_rmod.enable(tiny_causal_lm("llama"))
    ids, _ = prompts(batch=1, length=4)
    head = _head_for(model)
    with pytest.raises(ValueError, match=r"`do_sample` is False with `num_candidates`=4.*do_sample=True"):
        model.generate(ids, rmod_config=RMODConfig(value_model=head, num_candidates=4), max_new_tokens=2,
                       do_sample=False)
    out = model.generate(ids, rmod_config=RMODConfig(value_model=head, num_candidates=1), max_new_tokens=3,
                         do_sample=False)
    plain = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert torch.equal(out, plain)  # K = 1 greedy is plain greedy


# ------------------------------------------------------------------------------------------------ local paths
@pytest.fixture
def no_hub(monkeypatch):
    """Any Hub download raises: a missing local folder must fail before the Hub is asked."""
    import huggingface_hub
    import transformers.utils.hub as transformers_hub

    def forbidden(*args, **kwargs):
        raise AssertionError(f"the Hub was asked for {args} {kwargs}")

    for module in (huggingface_hub, huggingface_hub.file_download, transformers_hub):
        for name in ("hf_hub_download", "snapshot_download"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, forbidden)


@pytest.mark.parametrize("name", ["./nope", "runs/nope", "runs/a/b", "~/definitely-missing-hf-rmod-dir", "/no/such/dir"])
def test_missing_local_folder_fails_at_once(name, tmp_path, monkeypatch, no_hub):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()  # makes "runs/nope" a local path (its first component exists here)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        MultiValueHead.from_pretrained(name)
    with pytest.raises(FileNotFoundError, match=r"no such folder.*value_model"):
        RMODConfig(value_model=name)


def test_local_path_rule(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not looks_like_local_path("gpt2") and not looks_like_local_path("owner/name")
    assert not looks_like_local_path("runs/nope")  # ./runs does not exist: could be a Hub id
    (tmp_path / "runs").mkdir()
    assert looks_like_local_path("runs/nope")
    for name in ("./x", "../x", "/x", "~/x", "a/b/c", "a\\b"):
        assert looks_like_local_path(name), name
    (tmp_path / "runs" / "file.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        check_local_path("runs/file.txt", "value_model")
    assert check_local_path("owner/name", "value_model") == "owner/name"
    assert check_local_path("./runs", "value_model") == "./runs"


def test_existing_local_folder_still_loads(tmp_path, monkeypatch, no_hub):
    model = tiny_causal_lm("llama")
    _head_for(model).save_pretrained(tmp_path / "runs" / "head")
    monkeypatch.chdir(tmp_path)
    head = MultiValueHead.from_pretrained("runs/head")
    assert head.objectives == ["a", "b"]
    assert RMODConfig(value_model="runs/head").value_model == "runs/head"


# ------------------------------------------------------------------------------------------------ rewards
def _two_columns(prompts, responses):
    return torch.stack([torch.ones(len(responses)), torch.zeros(len(responses))], dim=-1)


class _NamedTwo:
    objectives = ["x", "y"]

    def __call__(self, prompts, responses):
        return _two_columns(prompts, responses)


def test_one_name_for_several_columns_raises():
    with pytest.raises(ValueError, match=r"Reward 'r'.*returned 2 columns.*give 2 names"):
        score_rewards({"r": _two_columns}, PROMPTS, RESPONSES)
    rewards, names = score_rewards({"r": _NamedTwo()}, PROMPTS, RESPONSES)  # its own names: allowed
    assert names == ["x", "y"] and rewards.shape == (2, 2)
    rewards, names = score_rewards({"r": _two_columns}, PROMPTS, RESPONSES, objectives=["a", "b"])  # the fix it names
    assert names == ["a", "b"] and rewards.shape == (2, 2)


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    """A module `my_rewards_h1` in a fresh current folder (not on sys.path), as a user's own reward file."""
    (tmp_path / "my_rewards_h1.py").write_text(textwrap.dedent("""
        import torch

        def brevity(prompts, responses):
            return torch.tensor([-float(len(r)) for r in responses])

        def three(prompts, responses):
            return torch.zeros(len(responses), 3)

        class Quality:
            objectives = ["quality"]

            def __call__(self, prompts, responses):
                return torch.ones(len(responses))

        class Pair:
            objectives = ["p", "q"]

            def __call__(self, prompts, responses):
                return torch.zeros(len(responses), 2)

        class NeedsArgs:
            def __init__(self, path):
                self.path = path

        NOT_CALLABLE = 3
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "my_rewards_h1", raising=False)
    yield tmp_path
    sys.modules.pop("my_rewards_h1", None)


def test_load_reward_functions_every_form(reward_module):
    fns = load_reward_functions([
        "short=my_rewards_h1:brevity",  # module in the current folder
        "a,b,c=./my_rewards_h1.py:three",  # relative file path, multi-column
        f"{reward_module / 'my_rewards_h1.py'}:Quality",  # absolute file path, names from the class
        "my_rewards_h1:Pair",  # two names from the attribute
    ])
    assert [fn.objectives for fn in fns] == [["short"], ["a", "b", "c"], ["quality"], ["p", "q"]]
    rewards, names = score_rewards(fns, PROMPTS, RESPONSES)
    assert names == ["short", "a", "b", "c", "quality", "p", "q"] and rewards.shape == (2, 7)
    assert str(reward_module) not in sys.path  # the current folder was only added for the import
    (bare,) = load_reward_functions(["my_rewards_h1:brevity"])
    assert bare.objectives == ["brevity"]
    (renamed,) = load_reward_functions(["q2=my_rewards_h1:Quality"])
    assert renamed.objectives == ["q2"]
    assert load_reward_functions("x=my_rewards_h1:brevity")[0].objectives == ["x"]  # one string is one spec


@pytest.mark.parametrize(
    "spec, match",
    [
        ("brevity", "expected NAME=MODULE:CALLABLE"),
        ("x=my_rewards_h1:", "expected NAME=MODULE:CALLABLE"),
        ("x=no_such_module_h1:fn", r"no module named 'no_such_module_h1'.*current folder"),
        ("x=my_rewards_h1:missing", "has no attribute 'missing'"),
        ("x=./missing_file.py:fn", "no such file"),
        ("x=./my_rewards_h1.py:missing", "has no attribute 'missing'"),
        ("x=my_rewards_h1:NOT_CALLABLE", "not callable"),
        ("x=my_rewards_h1:NeedsArgs", "cannot be built with no arguments"),
        ("a,,b=my_rewards_h1:three", "non-empty"),
        ("a,a=my_rewards_h1:Pair", "Duplicate names"),
        ("one=my_rewards_h1:Pair", r"gives 1 name\(s\) \['one'\] but 'Pair' names 2 objectives"),
    ],
)
def test_load_reward_functions_errors_name_the_spec(reward_module, spec, match):
    with pytest.raises(ValueError, match=match) as info:
        load_reward_functions([spec])
    assert spec in str(info.value)


def test_loaded_reward_with_too_few_names_raises_when_called(reward_module):
    (fn,) = load_reward_functions(["r=my_rewards_h1:three"])
    with pytest.raises(ValueError, match=r"--reward 'r=my_rewards_h1:three' returned 3 columns.*give 3 names"):
        score_rewards(fn, PROMPTS, RESPONSES)


def test_duplicate_names_across_specs_raise(reward_module):
    with pytest.raises(ValueError, match=r"\['x'\] more than once"):
        load_reward_functions(["x=my_rewards_h1:brevity", "x=my_rewards_h1:Quality"])


def test_module_in_current_folder_needs_no_sys_path_entry(reward_module):
    assert os.getcwd() == str(reward_module)
    (fn,) = load_reward_functions(["b=my_rewards_h1:brevity"])
    assert fn(PROMPTS, RESPONSES).tolist() == [-float(len(r)) for r in RESPONSES]


def test_missing_local_policy_and_backbone_fail_at_once(tmp_path, monkeypatch):
    """issue 14 item 5: a local-looking path that does not exist never reaches the Hub."""
    import huggingface_hub

    from hf_rmod.defaults import load_default_policy

    def no_hub(*args, **kwargs):
        raise AssertionError("the Hub was asked")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    with pytest.raises(FileNotFoundError, match="no such folder.*nopolicy"):
        load_default_policy(str(tmp_path / "nopolicy"))
    with pytest.raises(FileNotFoundError, match="no such folder.*nobackbone"):
        MultiValueHead.from_backbone("./nobackbone", ["a"])


def test_import_is_lazy_and_exports_resolve():
    """`import hf_rmod` loads neither torch nor transformers; every public name resolves on first use."""
    import subprocess
    import sys

    code = (
        "import sys, hf_rmod; heavy = [m for m in ('torch', 'transformers', 'numpy') if m in sys.modules]; "
        "assert not heavy, heavy; import hf_rmod.metrics as m; assert set(m.__all__) <= set(hf_rmod.__all__); "
        "[getattr(hf_rmod, n) for n in hf_rmod.__all__]; assert 'torch' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        hf_rmod.nope  # noqa: B018
