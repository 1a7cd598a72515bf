"""Per-objective policies (reward-ranked SFT on best-of-N, hf_rmod.experiments.objective_policies) and the policy
baselines of the evaluation: Rewarded Soups (rs_w*), MOD (mod_w*) and DISTILL-RMOD (distill_rmod); tiny models,
offline."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

import hf_rmod
from hf_rmod import MultiValueHead
from hf_rmod.baselines import rewarded_soup
from hf_rmod.cli import UsageError, _to_dataclasses, build_parser, main
from hf_rmod.cli._evaluate import _evaluation_methods
from hf_rmod.experiments import evaluation
from hf_rmod.experiments import objective_policies as op
from hf_rmod.experiments.configs import ObjectivePolicyArguments, ObjectivePolicyConfig, PolicyArguments
from hf_rmod.experiments.distill import DistillResult
from hf_rmod.experiments.evaluation import evaluate
from hf_rmod.experiments.methods import EvalMethod, baseline_methods, paper_weightings
from hf_rmod.experiments.objective_policies import METHOD_LABEL, select_best_responses, train_objective_policies
from hf_rmod.experiments.results import load_results, weights_sha256
from test_reward_values import even_fraction, low_fraction, word_tokenizer
from tiny_models import EOS, tiny_causal_lm

OBJECTIVES = ["low_fraction", "even_fraction"]
PROMPTS = ["w5 w6", "w7 w8 w9", "w10"]
FAST = dict(max_new_tokens=6, batch_size=1, seed=0, show_progress=False, n_resamples=20, plots=False)
SFT = dict(epochs=2, lr=1e-2, batch_size=2, show_progress=False)


pytestmark = pytest.mark.usefixtures("one_thread")


def _record(prompt_ids, response_ids, low, even, prompt):
    return {"prompt": prompt, "prompt_ids": prompt_ids, "response": " ".join(f"w{i}" for i in response_ids),
            "response_ids": response_ids, "rewards": {"low_fraction": low, "even_fraction": even}}


def _records():
    """3 prompts x N=3 responses; per prompt the best `low_fraction` and the best `even_fraction` differ."""
    rows = []
    for p, prompt in enumerate(["a", "b", "c"]):
        ids = [94, 5 + p, 95, 96]
        rows += [_record(ids, [10 + p, 11, EOS], 0.9 - 0.1 * p, 0.1, prompt),
                 _record(ids, [40 + p, 42, EOS], 0.2, 0.8, prompt),
                 _record(ids, [60 + p, 61], 0.5, 0.5, prompt)]
    return rows


# ------------------------------------------------------------------------------------------------------------
# selection
# ------------------------------------------------------------------------------------------------------------
def test_select_best_responses_takes_the_argmax_per_prompt_and_the_top_m():
    rows = _records()
    best = select_best_responses(rows, "low_fraction")
    assert [r["prompt"] for r in best] == ["a", "b", "c"]
    assert [r["response_ids"][0] for r in best] == [10, 11, 12]  # the first response of each prompt
    assert [r["response_ids"][0] for r in select_best_responses(rows, "even_fraction")] == [40, 41, 42]
    top2 = select_best_responses(rows, "even_fraction", top_m=2)
    assert [(r["prompt"], r["response_ids"][0]) for r in top2] == [("a", 40), ("a", 60), ("b", 41), ("b", 61),
                                                                   ("c", 42), ("c", 62)]
    assert len(select_best_responses(rows, "low_fraction", top_m=5)) == 9  # N < m: every response
    tie = [_record([94], [20], 0.5, 0.0, "t"), _record([94], [21], 0.7, 0.0, "t"), _record([94], [22], 0.7, 0.0, "t")]
    assert [r["response_ids"][0] for r in select_best_responses(tie, "low_fraction", top_m=2)] == [21, 22]


@pytest.mark.parametrize("change, error, match", [
    ({"top_m": 0}, ValueError, "`top_m` must be an integer >= 1, got 0"),
    ({"objective": "honest"}, ValueError, "Record 0 .*'honest'"),
    ({"nan": True}, ValueError, "Record 4 has reward low_fraction=nan"),
    ({"records": []}, ValueError, "No training records"),
])
def test_select_best_responses_errors(change, error, match):
    rows = _records()
    if change.pop("nan", False):
        rows[4]["rewards"]["low_fraction"] = math.nan
    kwargs = {"records": rows, "objective": "low_fraction", **change}
    with pytest.raises(error, match=match):
        select_best_responses(**kwargs)


# ------------------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------------------
def test_two_objective_policies_each_start_from_the_reference_and_are_saved_with_cards(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    reference, tok = tiny_causal_lm("llama"), word_tokenizer()
    reference.config._name_or_path = "tiny-org/tiny-llama"
    before = weights_sha256(reference)
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _records()))
    started, original = [], op.fine_tune

    def spy(model, tokenizer, records, config, **kwargs):  # what each fine-tune starts from and trains on
        started.append((model, weights_sha256(model), [r["response_ids"][0] for r in records]))
        return original(model, tokenizer, records, config, **kwargs)

    monkeypatch.setattr(op, "fine_tune", spy)
    results = train_objective_policies(reference, tok, path, OBJECTIVES, output_dir=tmp_path / "pol", **SFT)

    assert [m is reference for m, _, _ in started] == [False, False] and started[0][0] is not started[1][0]
    assert [sha for _, sha, _ in started] == [before, before]  # the second one too: not the first one's result
    assert [ids for _, _, ids in started] == [[10, 11, 12], [40, 41, 42]]  # each on its own best-of-N
    assert weights_sha256(reference) == before  # the reference is never trained
    assert list(results) == OBJECTIVES
    shas = set()
    for g, result in results.items():
        folder = tmp_path / "pol" / g
        assert result.output_dir == folder and result.num_examples == 3 and result.initial_sha256 == before
        assert result.mean_reward_selected > result.mean_reward_all
        loaded = AutoModelForCausalLM.from_pretrained(folder)
        shas.add(weights_sha256(loaded))
        card = (folder / "README.md").read_text()
        for expected in (METHOD_LABEL, "not GRPO", f"# Per-objective policy: `{g}`", "tiny-org/tiny-llama", before,
                         str(path), "**Responses per prompt (N)**: 3 (counted)", "3 / 9 / 3", "**Epochs**: 2",
                         "base_model: tiny-org/tiny-llama"):
            assert expected in card, (g, expected)
    assert len(shas) == 2 and before not in shas  # trained, and on different data


def _fake_fine_tune(model, tokenizer, records, config, **kwargs):
    return DistillResult(kwargs["output_dir"], None, len(records), len(records), 0.0, 0.0, model=model), 0, False


def test_loaders_must_return_new_identical_copies(tmp_path, monkeypatch):
    monkeypatch.setattr(op, "fine_tune", _fake_fine_tune)
    reference, tok = tiny_causal_lm("llama"), word_tokenizer()
    with pytest.raises(ValueError, match="returned a model object it had returned before"):
        train_objective_policies(lambda: reference, tok, _records(), OBJECTIVES, output_dir=tmp_path)
    seeds = iter(range(10))
    with pytest.raises(ValueError, match="objective 'even_fraction' has other weights"):
        train_objective_policies(lambda: tiny_causal_lm("llama", seed=next(seeds)), tok, _records(), OBJECTIVES,
                                 output_dir=tmp_path)
    results = train_objective_policies(lambda: tiny_causal_lm("llama"), tok, _records(), None, output_dir=tmp_path)
    assert list(results) == OBJECTIVES  # default: the records' objectives
    with pytest.raises(TypeError, match="`model_loader_or_model` must be a causal LM or a callable"):
        train_objective_policies("not a model", tok, _records(), OBJECTIVES, output_dir=tmp_path)
    with pytest.raises(ValueError, match="`top_m` must be a number >= 1"):
        train_objective_policies(reference, tok, _records(), OBJECTIVES, output_dir=tmp_path, top_m=0)
    with pytest.raises(TypeError, match="`objectives` must be a list of names, got the string 'low_fraction'"):
        train_objective_policies(reference, tok, _records(), "low_fraction", output_dir=tmp_path)
    with pytest.raises(ValueError, match="Record 0 has rewards for .* but not 'honest'"):
        train_objective_policies(reference, tok, _records(), ["low_fraction", "honest"], output_dir=tmp_path)


# ------------------------------------------------------------------------------------------------------------
# evaluation methods
# ------------------------------------------------------------------------------------------------------------
def test_method_constructors_names_and_weightings():
    names = [m.name for m in baseline_methods(OBJECTIVES)]
    assert names == [f"rs_w{w}" for w in ("1.0", "0.8", "0.6", "0.4", "0.2", "0.0")] + \
        [f"mod_w{w}" for w in ("1.0", "0.8", "0.6", "0.4", "0.2", "0.0")] + ["distill_rmod"]
    rs = EvalMethod.rewarded_soup({"a": 0.8, "b": 0.2})
    assert (rs.name, rs.kind, rs.rmod, rs.policy) == ("rs_w0.8", "rewarded_soup", None,
                                                      {"kind": "rewarded_soup", "weights": {"a": 0.8, "b": 0.2}})
    assert EvalMethod.mod({"a": 1.0, "b": 0.0}).name == "mod_w1.0" and EvalMethod.mod({"a": 1, "b": 0}).kind == "mod"
    assert EvalMethod.distill_rmod().policy == {"kind": "policy", "key": "distill_rmod"}
    assert EvalMethod.policy("grpo").name == "grpo" and EvalMethod("x").policy is None
    assert paper_weightings(["a", "b"])[1] == {"a": 0.8, "b": 0.2}
    assert paper_weightings(["a", "b", "c"])[1] == {"a": 0.8, "b": 0.1, "c": 0.1}
    assert paper_weightings(["a"]) == [{"a": 1.0}]
    with pytest.raises(ValueError, match="must be non-negative and sum to 1"):
        EvalMethod.rewarded_soup({"a": 0.8, "b": 0.3})
    with pytest.raises(TypeError, match="must be a non-empty dict"):
        EvalMethod.rewarded_soup([0.8, 0.2])
    with pytest.raises(ValueError, match="positive sum"):
        EvalMethod.mod({"a": 0.0, "b": 0.0})
    with pytest.raises(ValueError, match="`rmod` and `policy` exclude each other"):
        EvalMethod("x", {"num_candidates": 2}, {"kind": "policy", "key": "k"})


@pytest.fixture(scope="module")
def models():
    """The reference, two per-objective policies, a distilled policy, the tokenizer and a value head."""
    reference = tiny_causal_lm("llama", seed=0)
    head = MultiValueHead.for_policy(reference, objectives=OBJECTIVES, reward_mean=[0.3, 0.5], reward_std=[0.2, 0.3])
    return {"reference": reference, "low": tiny_causal_lm("llama", seed=1), "even": tiny_causal_lm("llama", seed=2),
            "distilled": tiny_causal_lm("llama", seed=3), "tok": word_tokenizer(), "head": head.eval()}


def _evaluate(models, policy, methods, out, **kwargs):
    return evaluate(policy, models["tok"], models["head"], [low_fraction, even_fraction], PROMPTS, methods,
                    output_dir=out, **FAST, **kwargs)


def _responses(out):
    return {(r["method"], r["prompt_id"]): r["response"] for r in load_results(out)}


@pytest.fixture(scope="module")
def baseline_run(models, tmp_path_factory):
    """reference, rs_w1.0, rs_w0.6, mod_w1.0, mod_w0.6 and distill_rmod on 3 prompts (one per batch)."""
    out = tmp_path_factory.mktemp("eval")
    built = []
    original = evaluation._soups.rewarded_soup

    def counting(policies, weights):
        built.append(list(weights))
        return original(policies, weights)

    evaluation._soups.rewarded_soup = counting
    try:
        w = {1.0: {"low_fraction": 1.0, "even_fraction": 0.0}, 0.6: {"low_fraction": 0.6, "even_fraction": 0.4}}
        methods = [EvalMethod.reference(), EvalMethod.rewarded_soup(w[1.0]), EvalMethod.rewarded_soup(w[0.6]),
                   EvalMethod.mod(w[1.0]), EvalMethod.mod(w[0.6]), EvalMethod.distill_rmod()]
        result = _evaluate(models, models["reference"], methods, out,
                           objective_policies={"low_fraction": models["low"], "even_fraction": models["even"]},
                           policies={"distill_rmod": models["distilled"]})
    finally:
        evaluation._soups.rewarded_soup = original
    return out, result, built, methods


def test_rs_and_mod_at_weight_one_are_the_first_policy_and_distill_the_distilled(models, baseline_run, tmp_path):
    out, result, built, methods = baseline_run
    assert result.num_generated == 6 * 3
    got = _responses(out)
    # the same method names (hence the same seeds) decoded plainly with the first policy / the distilled policy
    _evaluate(models, models["low"], [EvalMethod.reference("rs_w1.0"), EvalMethod.reference("mod_w1.0")],
              tmp_path / "low")
    _evaluate(models, models["distilled"], [EvalMethod.reference("distill_rmod")], tmp_path / "distilled")
    soup = rewarded_soup([models["low"], models["even"]], [0.6, 0.4])
    _evaluate(models, soup, [EvalMethod.reference("rs_w0.6")], tmp_path / "soup")
    expected = {**_responses(tmp_path / "low"), **_responses(tmp_path / "distilled"), **_responses(tmp_path / "soup")}
    assert all(got[key] == text for key, text in expected.items()) and len(expected) == 4 * 3
    reference = {p: got[("reference", p)] for p in range(3)}
    assert any(got[("rs_w1.0", p)] != reference[p] for p in range(3))  # another policy than the reference
    assert any(got[("mod_w0.6", p)] != got[("mod_w1.0", p)] for p in range(3))
    assert built == [[0.6, 0.4]]  # one soup for rs_w0.6 (3 batches), none for rs_w1.0 (the policy itself)


def test_rows_and_run_json_record_the_policies(models, baseline_run):
    out, _, _, methods = baseline_run
    rows = load_results(out)
    for row in rows:
        method = next(m for m in methods if m.name == row["method"])
        assert row["rmod"] is None and row["policy"] == method.policy and "weights" not in row
    settings = json.loads((out / "run.json").read_text())
    assert settings["objective_policies"] == {
        "low_fraction": {"name_or_path": "<in-memory LlamaForCausalLM>", "sha256": weights_sha256(models["low"])},
        "even_fraction": {"name_or_path": "<in-memory LlamaForCausalLM>", "sha256": weights_sha256(models["even"])}}
    assert settings["policies"]["distill_rmod"]["sha256"] == weights_sha256(models["distilled"])
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == {m.name for m in methods}


def _perturbed(model):
    import copy

    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).add_(0.01)
    return other


def test_resume_is_refused_when_a_policy_changes(models, baseline_run, tmp_path):
    out, _, _, methods = baseline_run
    folder = tmp_path / "resumed"
    shutil.copytree(out, folder)
    given = {"objective_policies": {"low_fraction": models["low"], "even_fraction": models["even"]},
             "policies": {"distill_rmod": models["distilled"]}}
    again = _evaluate(models, models["reference"], methods, folder, **given)
    assert again.num_generated == 0
    before = (folder / "results.jsonl").read_text()
    changed = {**given, "objective_policies": {**given["objective_policies"], "even_fraction": _perturbed(models["even"])}}
    with pytest.raises(ValueError, match=r"objective_policies\['even_fraction'\]: .*sha256.* -> ") as err:
        _evaluate(models, models["reference"], methods + [EvalMethod.reference("more")], folder, **changed)
    assert "low_fraction" not in str(err.value) and (folder / "results.jsonl").read_text() == before
    # a run without the distilled policy keeps its record; a later run with another distilled policy is refused
    _evaluate(models, models["reference"], [EvalMethod.reference()], folder)
    assert "distill_rmod" in json.loads((folder / "run.json").read_text())["policies"]
    with pytest.raises(ValueError, match=r"policies\['distill_rmod'\]"):
        _evaluate(models, models["reference"], [EvalMethod.distill_rmod()], folder,
                  policies={"distill_rmod": _perturbed(models["distilled"])})
    renamed = [EvalMethod.mod({"low_fraction": 1.0, "even_fraction": 0.0}, name="rs_w1.0")]
    with pytest.raises(ValueError, match="Rename the method"):
        _evaluate(models, models["reference"], renamed, folder, **given)


def test_a_missing_policy_is_an_error_naming_the_argument_and_the_flag(models, tmp_path):
    pair = {"low_fraction": models["low"], "even_fraction": models["even"]}
    rs = EvalMethod.rewarded_soup({"low_fraction": 0.8, "even_fraction": 0.2})
    cases = [
        ([rs], {}, ValueError, r"`objective_policies\['low_fraction'\]`.*none was given.*--objective-policies DIR"),
        ([EvalMethod.mod({"low_fraction": 0.5, "even_fraction": 0.5})], {"objective_policies": {"low_fraction":
         models["low"]}}, ValueError, r"'mod_w0.5' \(MOD\).*`objective_policies\['even_fraction'\]`.*it has "
         r"\['low_fraction'\]"),
        ([EvalMethod.distill_rmod()], {"objective_policies": pair}, ValueError,
         r"`policies\['distill_rmod'\]`.*--distilled-policy DIR"),
        ([rs], {"objective_policies": [models["low"], models["even"]]}, TypeError, "`objective_policies` must be a dict"),
        ([rs], {"objective_policies": {"low_fraction": models["low"], "even_fraction": "folder"}}, TypeError,
         r"`objective_policies\['even_fraction'\]` must be a transformers causal LM"),
        ([rs], {"objective_policies": {"low_fraction": models["low"], "even_fraction": tiny_causal_lm("gpt2")}},
         ValueError, "'rs_w0.8': `objective_policies\\['even_fraction'\\]` cannot be averaged"),
    ]
    for methods, kwargs, error, match in cases:
        with pytest.raises(error, match=match):
            _evaluate(models, models["reference"], methods, tmp_path / "o", **kwargs)
        assert not (tmp_path / "o" / "results.jsonl").exists()  # refused before generating
    # a zero weight needs no policy: RS at (1, 0) runs with the first policy alone
    only = evaluation._used_policies([EvalMethod.rewarded_soup({"low_fraction": 1.0, "even_fraction": 0.0})],
                                     {"low_fraction": models["low"]}, None, models["reference"])
    assert only == ({"low_fraction": models["low"]}, {})


# ------------------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------------------
def _parse(argv):
    return _to_dataclasses(build_parser().parse_args(argv))


def test_cli_parses_the_new_command_and_flags():
    policy, args, config = _parse(["train-objective-policies", "--records", "r.jsonl", "--objectives",
                                   "harmless,helpful", "-o", "runs/objective-policies", "--policy", "pol",
                                   "--top-m", "2", "--epochs", "1", "--lr", "0.001"])
    assert policy == PolicyArguments(policy="pol")
    assert args == ObjectivePolicyArguments(records="r.jsonl", output_dir="runs/objective-policies",
                                            objectives="harmless,helpful")
    assert config == ObjectivePolicyConfig(top_m=2, epochs=1, lr=0.001)
    _, args, _ = _parse(["evaluate", "-o", "o", "--objective-policies", "pols", "--distilled-policy", "dist",
                         "--methods", "reference,rs_w0.8,mod_w0.8,distill_rmod"])
    assert (args.objective_policies, args.distilled_policy) == ("pols", "dist")
    names = [m.name for m in _evaluation_methods(args, ["harmless", "helpful"])]
    assert names == ["reference", "rs_w0.8", "mod_w0.8", "distill_rmod"]
    _, plain, _ = _parse(["evaluate", "-o", "o", "--k", "2", "--b", "4"])
    grid = [m.name for m in _evaluation_methods(plain, ["harmless", "helpful"])]
    assert "rs_w0.8" not in grid and "distill_rmod" not in grid and "rmod_k2_b4_lam0.5" in grid  # 'all', no flags
    _, both, _ = _parse(["evaluate", "-o", "o", "--objective-policies", "p", "--distilled-policy", "d"])
    assert len(_evaluation_methods(both, ["harmless", "helpful"])) == len(grid) + 13
    for spec, flag in (("rs_w0.8", "--objective-policies"), ("mod_w1.0", "--objective-policies"),
                       ("distill_rmod", "--distilled-policy")):
        _, args, _ = _parse(["evaluate", "-o", "o", "--methods", spec])
        with pytest.raises(UsageError, match=f"--methods {spec} needs {flag} DIR"):
            _evaluation_methods(args, ["harmless", "helpful"])


def test_exports():
    assert hf_rmod.train_objective_policies is train_objective_policies
    assert hf_rmod.select_best_responses is select_best_responses
    assert hf_rmod.ObjectivePolicyConfig is ObjectivePolicyConfig


def test_cli_trains_objective_policies_then_evaluates_them(models, tmp_path, monkeypatch, capsys):
    """hf-rmod train-objective-policies on a saved tiny policy, then hf-rmod evaluate --objective-policies."""
    monkeypatch.delenv("HF_RMOD_DEBUG", raising=False)
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    models["reference"].save_pretrained(tmp_path / "policy")
    models["tok"].save_pretrained(tmp_path / "policy")
    models["head"].save_pretrained(tmp_path / "head")
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records()))
    common = ["--policy", str(tmp_path / "policy"), "--device", "cpu", "--threads", "1"]
    assert main(["train-objective-policies", "--records", str(tmp_path / "r.jsonl"), "-o", str(tmp_path / "pols"),
                 "--epochs", "1", "--batch-size", "3", *common]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.rindex("{\n  \"low_fraction\""):])
    assert list(summary) == OBJECTIVES and summary["even_fraction"]["num_examples"] == 3
    assert sorted(p.name for p in (tmp_path / "pols").iterdir()) == sorted(OBJECTIVES)
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROMPTS[:2]))
    argv = ["evaluate", *common, "--value-head", str(tmp_path / "head"), "--prompts", str(tmp_path / "p.jsonl"),
            "--reward", "low_fraction=test_reward_values:low_fraction",
            "--reward", "even_fraction=test_reward_values:even_fraction", "--methods", "reference,rs_w0.6,mod_w1.0",
            "--max-new-tokens", "4", "--no-plots", "--no-progress", "--n-resamples", "10", "-o", str(tmp_path / "ev")]
    assert main([*argv, "--objective-policies", str(tmp_path / "pols")]) == 0
    rows = load_results(tmp_path / "ev")
    assert sorted({r["method"] for r in rows}) == ["mod_w1.0", "reference", "rs_w0.6"] and len(rows) == 6
    run = json.loads((tmp_path / "ev" / "run.json").read_text())
    assert run["objective_policies"]["even_fraction"]["name_or_path"] == str(tmp_path / "pols" / "even_fraction")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:  # no --objective-policies: a usage error naming the flag
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2
    last = err.strip().splitlines()[-1]  # after the value head's loading bar
    assert last.startswith("hf-rmod evaluate: error: --methods rs_w0.6 needs --objective-policies DIR")
