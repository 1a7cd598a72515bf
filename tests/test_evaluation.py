"""Tests of the evaluation pipeline (hf_rmod.experiments; hf_rmod.evaluation re-exports it): methods, evaluate
(rows, resume, reproducibility), summary, plots, accelerate, CLI.

Tiny random llama policy (vocab 97), a WordLevel tokenizer built offline, a fresh value head and synthetic
rewards; everything runs offline on CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_rmod import MultiValueHead
from hf_rmod.experiments.evaluation import evaluate
from hf_rmod.experiments.methods import EvalMethod, default_methods
from hf_rmod.experiments.plots import write_plots
from hf_rmod.experiments.results import load_results
from hf_rmod.experiments.summary import summarize_results
from tiny_models import VOCAB, tiny_causal_lm

OBJECTIVES = ["good", "length"]
GOOD = frozenset(range(10, 50))
MAX_NEW = 8
REWARD_MEAN, REWARD_STD = [0.4, 0.9], [0.2, 0.25]
PROMPTS = ["w5 w17 w33", "w8 w9", "w40 w41 w42 w43", "w60 w3 w70"]
CHAT_TEMPLATE = (
    "{% for m in messages %}w3 {{ m['content'] }} w4 {% endfor %}{% if add_generation_prompt %}w5{% endif %}"
)
FAST = dict(max_new_tokens=MAX_NEW, batch_size=2, seed=0, show_progress=False, n_resamples=50)


def _ids(text):
    return [int(word[1:]) for word in text.split()]


def good(prompts, responses):
    """Share of 'good' tokens in the response."""
    return torch.tensor([sum(i in GOOD for i in _ids(r)) / max(len(_ids(r)), 1) for r in responses])


def length(prompts, responses):
    return torch.tensor([len(_ids(r)) / MAX_NEW for r in responses])


def tiny_tokenizer(chat_template=True):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="w0", eos_token="w1")
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_head(model, objectives=OBJECTIVES):
    torch.manual_seed(0)
    head = MultiValueHead.for_policy(model, objectives=list(objectives), reward_mean=REWARD_MEAN, reward_std=REWARD_STD)
    with torch.no_grad():  # spread the values so that the weights matter
        for p in head.parameters():
            p.normal_(0.0, 1.0)
    return head.eval()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def parts():
    model = tiny_causal_lm("llama")
    return model, tiny_tokenizer(), tiny_head(model)


@pytest.fixture(scope="module")
def run(parts, tmp_path_factory):
    model, tokenizer, head = parts
    out = tmp_path_factory.mktemp("eval")
    methods = default_methods(OBJECTIVES, ks=(2,), bs=(4,), lams=(0.5, 4.0))
    result = evaluate(model, tokenizer, head, [good, length], PROMPTS, methods, output_dir=out, **FAST)
    return result, methods, load_results(out)


# ----------------------------------------------------------------------------------------------------------------
# methods
# ----------------------------------------------------------------------------------------------------------------


def test_default_methods_grid_names_and_kinds():
    methods = default_methods(["harmless", "helpful"], ks=(4, 8), bs=(16,), lams=(0.5, 1))
    names = [m.name for m in methods]
    assert names == [
        "reference", "best_of_k4", "best_of_k8",
        "cd_harmless_k4_b16", "cd_helpful_k4_b16", "uniform_k4_b16",
        "cd_harmless_k8_b16", "cd_helpful_k8_b16", "uniform_k8_b16",
        "rmod_k4_b16_lam0.5", "rmod_k4_b16_lam1", "rmod_k8_b16_lam0.5", "rmod_k8_b16_lam1",
    ]
    kinds = {m.name: m.kind for m in methods}
    assert kinds["reference"] == "reference" and kinds["best_of_k4"] == "best_of_k"
    assert kinds["cd_helpful_k4_b16"] == "fixed_weights" and kinds["uniform_k8_b16"] == "uniform"
    assert kinds["rmod_k8_b16_lam1"] == "rmod"
    bok = EvalMethod.best_of_k(4)
    assert bok.rmod["block_size"] is None and bok.resolved_rmod(96)["block_size"] == 96
    assert EvalMethod.reference().resolved_rmod(96) is None
    assert len(set(methods) | set(default_methods(["harmless", "helpful"], ks=(4, 8), lams=(0.5, 1)))) == len(methods)


def test_method_validation_errors():
    with pytest.raises(ValueError, match="num_candidates"):
        EvalMethod.rmod(k=0, b=16)
    with pytest.raises(ValueError, match="lam"):
        EvalMethod.rmod(k=4, b=16, lam=-1.0)
    with pytest.raises(TypeError, match="block_size"):
        EvalMethod.uniform(k=4, b=2.5)
    with pytest.raises(ValueError, match="value model is passed to evaluate"):
        EvalMethod("x", {"value_model": "head"})
    with pytest.raises(ValueError, match="unknown `rmod` keys"):
        EvalMethod("x", {"temperature": 0.3})
    with pytest.raises(ValueError, match="duplicates"):
        default_methods(["a"], ks=(8, 8))
    with pytest.raises(ValueError, match="lams"):
        default_methods(["a"], lams=())


# ----------------------------------------------------------------------------------------------------------------
# evaluate: rows, traces, summary, plots
# ----------------------------------------------------------------------------------------------------------------


def test_every_method_writes_one_row_per_prompt(run):
    result, methods, rows = run
    assert result.num_generated == len(methods) * len(PROMPTS) == len(rows)
    assert {(r["prompt_id"], r["method"]) for r in rows} == {(p, m.name) for p in range(4) for m in methods}
    tokenizer = tiny_tokenizer()
    for row in rows:
        assert row["prompt"] == PROMPTS[row["prompt_id"]]
        assert set(row["rewards"]) == set(OBJECTIVES)
        assert 1 <= row["num_new_tokens"] <= MAX_NEW and row["seconds"] > 0
        ids = _ids(row["response"])
        assert row["rewards"]["length"] == pytest.approx(len(ids) / MAX_NEW)
        assert len(ids) in (row["num_new_tokens"], row["num_new_tokens"] - 1)  # EOS is skipped when decoding
        assert tokenizer.pad_token not in row["response"].split()
        if row["method"] == "reference":
            assert row["rmod"] is None and "weights" not in row
            continue
        n_blocks = len(row["weights"])
        assert row["value_objectives"] == OBJECTIVES
        assert len(row["chosen_values"]) == len(row["mean_values"]) == n_blocks
        assert all(sum(w) == pytest.approx(1.0, abs=1e-5) and min(w) >= -1e-6 for w in row["weights"])
        if row["method"] == "best_of_k2":
            assert n_blocks == 1
        elif row["num_new_tokens"] == MAX_NEW:
            assert n_blocks == MAX_NEW // 4
        if row["method"] == "cd_good_k2_b4":
            assert all(w == pytest.approx([1.0, 0.0]) for w in row["weights"])
        if row["method"] == "uniform_k2_b4":
            assert all(w == pytest.approx([0.5, 0.5]) for w in row["weights"])


def test_summary_matches_hand_computation(run):
    result, methods, rows = run
    summary = result.summary
    assert summary == json.loads(result.summary_path.read_text())
    assert summary["n_prompts"] == 4 and summary["rows_excluded"] == 0
    assert list(summary["methods"]) == [m.name for m in methods]

    def z(method):
        picked = sorted((r for r in rows if r["method"] == method), key=lambda r: r["prompt_id"])
        raw = np.array([[r["rewards"][g] for g in OBJECTIVES] for r in picked])
        return raw, (raw - REWARD_MEAN) / REWARD_STD

    _, ref = z("reference")
    for name in ["reference", "best_of_k2", "rmod_k2_b4_lam0.5"]:
        raw, zs = z(name)
        m = summary["methods"][name]
        assert m["raw_mean_rewards"] == pytest.approx(dict(zip(OBJECTIVES, raw.mean(0))))
        assert m["mean_rewards"] == pytest.approx(dict(zip(OBJECTIVES, zs.mean(0))))
        assert m["worst_case_reward"] == pytest.approx(zs.min(1).mean())
        wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(zs.min(1), ref.min(1))]
        assert m["worst_case_win_rate"] == pytest.approx(np.mean(wins))
        lo, hi = m["worst_case_reward_ci"]
        assert lo <= m["worst_case_reward"] + 1e-9 and m["worst_case_reward"] - 1e-9 <= hi
        assert m["mean_new_tokens"] == pytest.approx(np.mean([r["num_new_tokens"] for r in rows if r["method"] == name]))
    ref_stats = summary["methods"]["reference"]
    assert ref_stats["worst_case_win_rate"] == 0.5 and ref_stats["worst_case_win_rate_ci"] == [0.5, 0.5]
    # standalone, from the JSONL, with dict statistics: the same numbers
    again = summarize_results(result.results_path, OBJECTIVES, dict(zip(OBJECTIVES, REWARD_MEAN)),
                              dict(zip(OBJECTIVES, REWARD_STD)), n_resamples=50)
    assert again["methods"] == summary["methods"]
    md = result.summary_md_path.read_text()
    assert "| `rmod_k2_b4_lam4` |" in md and "z-scores" in md


def test_summary_uses_common_prompts_and_no_reference(run):
    _, _, rows = run
    partial = [r for r in rows if not (r["method"] == "uniform_k2_b4" and r["prompt_id"] == 3)]
    summary = summarize_results(partial, OBJECTIVES, REWARD_MEAN, REWARD_STD, n_resamples=20)
    assert summary["n_prompts"] == 3 and summary["prompt_ids"] == [0, 1, 2]
    assert summary["rows_excluded"] == len({r["method"] for r in rows}) - 1
    solo = summarize_results(rows, OBJECTIVES, REWARD_MEAN, REWARD_STD, methods=["rmod_k2_b4_lam4"], n_resamples=20)
    assert solo["reference_method"] is None and solo["methods"]["rmod_k2_b4_lam4"]["worst_case_win_rate"] is None
    with pytest.raises(ValueError, match="reward_std"):
        summarize_results(rows, OBJECTIVES, REWARD_MEAN, [0.2, 0.0])
    with pytest.raises(ValueError, match="No result rows for methods"):
        summarize_results(rows, OBJECTIVES, REWARD_MEAN, REWARD_STD, methods=["nope"])


def test_summary_has_paired_comparisons_and_both_worst_case_metrics(run):
    result, methods, rows = run
    summary = result.summary
    pairs = [(c["method"], c["baseline"]) for c in summary["comparisons"]]
    for lam in ("0.5", "4"):  # RMOD against the reference, Best-of-K (same K), CD-g and UNIFORM (same K, B)
        rmod = f"rmod_k2_b4_lam{lam}"
        assert [b for m, b in pairs if m == rmod] == [
            "reference", "best_of_k2", "cd_good_k2_b4", "cd_length_k2_b4", "uniform_k2_b4"]
    assert [b for m, b in pairs if m == "uniform_k2_b4"] == ["reference"]
    assert set(summary["head_to_head"]) == {m.name for m in methods}

    def z(method):
        picked = sorted((r for r in rows if r["method"] == method), key=lambda r: r["prompt_id"])
        return (np.array([[r["rewards"][g] for g in OBJECTIVES] for r in picked]) - REWARD_MEAN) / REWARD_STD

    wanted = ("rmod_k2_b4_lam0.5", "uniform_k2_b4")
    (c,) = [c for c in summary["comparisons"] if (c["method"], c["baseline"]) == wanted]
    expected = z("rmod_k2_b4_lam0.5").min(1).mean() - z("uniform_k2_b4").min(1).mean()
    assert c["worst_case_difference"] == pytest.approx(expected)
    m = summary["methods"]["best_of_k2"]
    assert m["worst_objective_of_mean"] == pytest.approx(z("best_of_k2").mean(0).min())
    assert m["worst_objective"] == OBJECTIVES[int(np.argmin(z("best_of_k2").mean(0)))]
    md = result.summary_md_path.read_text()
    assert "## Paired comparisons" in md and "| `rmod_k2_b4_lam4` | `uniform_k2_b4` |" in md
    assert "## Head-to-head worst-case win rates" in md


def test_rerun_with_every_row_present_only_resummarizes(parts, run, tmp_path):
    """`evaluate` (and so `hf-rmod evaluate`) on a finished folder generates nothing and rewrites the summary."""
    model, tokenizer, head = parts
    result, methods, _ = run
    out = tmp_path / "done"
    shutil.copytree(result.output_dir, out)
    for name in ("summary.json", "summary.md"):
        (out / name).unlink()
    again = evaluate(model, tokenizer, head, [good, length], PROMPTS, methods, output_dir=out, plots=False, **FAST)
    assert again.num_generated == 0
    assert json.loads((out / "summary.json").read_text())["comparisons"] == result.summary["comparisons"]
    assert (out / "summary.md").read_text() == result.summary_md_path.read_text()


def test_plots_are_written(run, tmp_path):
    result, _, rows = run
    assert set(result.plots) == {"worst_case_reward", "rewards_scatter", "lambda_ablation", "weight_trace"}
    for path in result.plots.values():
        data = Path(path).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    # a single λ: no ablation plot
    summary = summarize_results(rows, OBJECTIVES, REWARD_MEAN, REWARD_STD, n_resamples=20,
                                methods=["reference", "uniform_k2_b4", "rmod_k2_b4_lam0.5"])
    assert set(write_plots(summary, rows, tmp_path)) == {"worst_case_reward", "rewards_scatter", "weight_trace"}


# ----------------------------------------------------------------------------------------------------------------
# resume and reproducibility
# ----------------------------------------------------------------------------------------------------------------


def _strip_time(row):
    return {k: v for k, v in row.items() if k != "seconds"}


def test_resume_skips_done_rows_and_repairs_a_truncated_line(parts, run, tmp_path):
    model, tokenizer, head = parts
    result, methods, rows = run
    out = tmp_path / "resumed"
    shutil.copytree(result.output_dir, out)
    again = evaluate(model, tokenizer, head, [good, length], PROMPTS, methods, output_dir=out, plots=False, **FAST)
    assert again.num_generated == 0 and len(load_results(out)) == len(rows)

    # kill mid-write: the last batch (2 rows, one write) is cut inside its first line
    path = out / "results.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-2]) + lines[-2][: len(lines[-2]) // 2])
    lost = [json.loads(line) for line in lines[-2:]]
    again = evaluate(model, tokenizer, head, [good, length], PROMPTS, methods, output_dir=out, plots=False, **FAST)
    assert again.num_generated == 2
    resumed = load_results(out)
    assert len(resumed) == len(rows) and all(json.loads(line) for line in path.read_text().splitlines())
    # the regenerated batch has the same seed and composition: the same responses
    assert [_strip_time(r) for r in resumed[-2:]] == [_strip_time(r) for r in lost]


def test_seeded_run_is_reproducible(parts, run, tmp_path):
    model, tokenizer, head = parts
    _, methods, rows = run
    picked = [m for m in methods if m.name in ("reference", "rmod_k2_b4_lam0.5")]
    # prompts 0 and 1 form the same first batch as in the full run
    res = evaluate(model, tokenizer, head, [good, length], PROMPTS[:2], picked, output_dir=tmp_path, plots=False, **FAST)
    new = {(r["prompt_id"], r["method"]): _strip_time(r) for r in load_results(res.results_path)}
    old = {(r["prompt_id"], r["method"]): _strip_time(r) for r in rows if r["prompt_id"] < 2 and r["method"] in
           ("reference", "rmod_k2_b4_lam0.5")}
    assert new == old


def test_resume_refuses_other_settings_or_prompts(parts, run, tmp_path):
    model, tokenizer, head = parts
    result, methods, _ = run
    out = tmp_path / "other"
    shutil.copytree(result.output_dir, out)
    kwargs = {**FAST, "max_new_tokens": 4}
    with pytest.raises(ValueError, match="max_new_tokens: 8 -> 4"):
        evaluate(model, tokenizer, head, [good, length], PROMPTS, methods, output_dir=out, plots=False, **kwargs)
    with pytest.raises(ValueError, match="another prompt list"):
        evaluate(model, tokenizer, head, [good, length], PROMPTS[::-1], methods, output_dir=out, plots=False, **FAST)
    changed = [EvalMethod("rmod_k2_b4_lam0.5", {"num_candidates": 3, "block_size": 4, "lam": 0.5})]
    with pytest.raises(ValueError, match="Rename the method"):
        evaluate(model, tokenizer, head, [good, length], PROMPTS, changed, output_dir=out, plots=False, **FAST)


def _snapshot(out):
    return {p.name: p.read_bytes() for p in sorted(Path(out).iterdir()) if p.suffix in (".jsonl", ".json")}


def length_v2(prompts, responses):
    """Another reward function under the name `length`."""
    return torch.tensor([1.0 - len(_ids(r)) / MAX_NEW for r in responses])


def test_resume_refuses_another_head_rewards_or_policy_before_generating(parts, run, tmp_path):
    """Issue 14 item 2: a rerun into a folder made with another value head, rewards or policy fails at once, says
    which settings differ (old -> new) and how to start over; nothing is generated or appended."""
    model, tokenizer, head = parts
    result, methods, _ = run
    out = tmp_path / "resumed"
    shutil.copytree(result.output_dir, out)
    more = PROMPTS + ["w20 w21"]  # a new prompt: the old code generated and appended its rows before failing
    before = _snapshot(out)

    def rerun(**changes):
        kwargs = dict(value_head=head, reward_fns=[good, length], policy_id=None)
        kwargs.update(changes)
        with pytest.raises(ValueError) as info:
            evaluate(model, tokenizer, kwargs["value_head"], kwargs["reward_fns"], more, methods, output_dir=out,
                     plots=False, policy_id=kwargs["policy_id"], **FAST)
        assert _snapshot(out) == before  # refused before generating anything
        message = str(info.value)
        assert "--output-dir" in message and "harmless" not in message
        return message

    other_weights = tiny_head(model)
    with torch.no_grad():
        next(other_weights.parameters()).add_(0.5)
    message = rerun(value_head=other_weights)
    assert "value_head.sha256: " in message and "value_head.objectives" not in message
    message = rerun(value_head=tiny_head(model, objectives=["length", "good"]))
    assert "value_head.objectives: ['good', 'length'] -> ['length', 'good']" in message
    message = rerun(reward_fns={"good": good, "length": length_v2})
    assert "rewards: " in message and "length=test_evaluation:length_v2" in message
    message = rerun(policy_id="my-org/other-policy")
    assert "policy: '<in-memory LlamaForCausalLM>' -> 'my-org/other-policy'" in message
    # every difference is named at once
    message = rerun(value_head=other_weights, policy_id="my-org/other-policy")
    assert "value_head.sha256" in message and "policy: " in message

    # the same head, loaded from disk, has the same fingerprint: resuming works
    head.save_pretrained(tmp_path / "head")
    again = evaluate(model, tokenizer, MultiValueHead.from_pretrained(tmp_path / "head"), [good, length], PROMPTS,
                     methods, output_dir=out, plots=False, **FAST)
    assert again.num_generated == 0


def test_resume_of_an_older_run_file_records_the_new_settings(parts, run, tmp_path):
    """A run.json written before the policy / value head / rewards were recorded is resumed (those settings cannot
    be compared) and then records them, so later reruns are checked."""
    model, tokenizer, head = parts
    result, methods, _ = run
    out = tmp_path / "old"
    shutil.copytree(result.output_dir, out)
    settings = json.loads((out / "run.json").read_text())
    assert {"policy", "value_head", "rewards"} <= set(settings)
    assert settings["rewards"] == [
        {"name": None, "function": "test_evaluation:good", "objectives": None},
        {"name": None, "function": "test_evaluation:length", "objectives": None},
    ]
    old = {k: v for k, v in settings.items() if k not in ("policy", "value_head", "rewards")}
    (out / "run.json").write_text(json.dumps(old))
    again = evaluate(model, tokenizer, head, [good, length], PROMPTS, methods, output_dir=out, plots=False, **FAST)
    assert again.num_generated == 0
    assert json.loads((out / "run.json").read_text()) == settings
    with pytest.raises(ValueError, match="policy: "):
        evaluate(model, tokenizer, head, [good, length], PROMPTS, methods, output_dir=out, plots=False,
                 policy_id="other", **FAST)


def test_evaluation_config_and_keyword_overrides(parts, tmp_path):
    from hf_rmod.experiments.configs import EvaluationConfig

    model, tokenizer, head = parts
    config = EvaluationConfig(max_new_tokens=MAX_NEW, batch_size=2, n_resamples=20, plots=False)
    ref = [EvalMethod.reference()]
    res = evaluate(model, tokenizer, head, [good, length], PROMPTS[:2], ref, config, output_dir=tmp_path / "a",
                   show_progress=False)
    res2 = evaluate(model, tokenizer, head, [good, length], PROMPTS[:2], ref, output_dir=tmp_path / "b",
                    show_progress=False, max_new_tokens=MAX_NEW, batch_size=2, n_resamples=20, plots=False)
    strip = lambda rows: [_strip_time(r) for r in rows]  # noqa: E731
    assert strip(load_results(res.results_path)) == strip(load_results(res2.results_path))
    assert res.summary["run"]["generation_kwargs"]["top_p"] == 0.9  # DEFAULT_SAMPLING
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['max_tokens'\\]"):
        evaluate(model, tokenizer, head, [good, length], PROMPTS, ref, output_dir=tmp_path, max_new_tokens=2,
                 max_tokens=3)


def test_old_import_paths_still_work():
    import hf_rmod.evaluation as old
    from hf_rmod.experiments import configs, evaluation, methods, plots, results, summary

    assert old.evaluate is evaluation.evaluate and old.EvaluationResult is evaluation.EvaluationResult
    assert old.EvalMethod is methods.EvalMethod and old.default_methods is methods.default_methods
    assert old.load_results is results.load_results and old.write_plots is plots.write_plots
    assert old.summarize_results is summary.summarize_results
    assert old.format_summary_markdown is summary.format_summary_markdown
    assert old.DEFAULT_GENERATION_KWARGS == dict(configs.DEFAULT_SAMPLING)
    assert (old.DEFAULT_PROMPTS, old.DEFAULT_PROMPT_OFFSET) == ("hh_harmless_dev_prompts", 0)


# ----------------------------------------------------------------------------------------------------------------
# bad inputs
# ----------------------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_before_generating(parts, tmp_path):
    model, tokenizer, head = parts
    ref = [EvalMethod.reference()]
    args = dict(output_dir=tmp_path, plots=False, **FAST)
    with pytest.raises(ValueError, match="`prompts` is empty"):
        evaluate(model, tokenizer, head, [good, length], [], ref, **args)
    with pytest.raises(TypeError, match="list of strings"):
        evaluate(model, tokenizer, head, [good, length], "w5 w6", ref, **args)
    with pytest.raises(ValueError, match="`methods` is empty"):
        evaluate(model, tokenizer, head, [good, length], PROMPTS, [], **args)
    with pytest.raises(ValueError, match="unique"):
        evaluate(model, tokenizer, head, [good, length], PROMPTS, ref + ref, **args)
    with pytest.raises(ValueError, match="'helpful' is neither"):
        evaluate(model, tokenizer, head, [good, length], PROMPTS, [EvalMethod.single_objective("helpful", 2, 4)], **args)
    with pytest.raises(ValueError, match="must not set"):
        evaluate(model, tokenizer, head, [good, length], PROMPTS, ref, generation_kwargs={"max_new_tokens": 3},
                 output_dir=tmp_path, plots=False, show_progress=False)
    with pytest.raises(ValueError, match="chat_template=False"):
        evaluate(model, tiny_tokenizer(chat_template=False), head, [good, length], PROMPTS, ref, **args)
    with pytest.raises(TypeError, match="MultiValueHead"):
        evaluate(model, tokenizer, None, [good, length], PROMPTS, ref, **args)
    with pytest.raises(ValueError, match=r"\['harmless'\] have no reward_mean"):
        evaluate(model, tokenizer, head, {"good": good, "harmless": length}, PROMPTS, ref, **args)
    assert not (tmp_path / "results.jsonl").exists() or not (tmp_path / "results.jsonl").read_text()


def test_a_declared_reward_the_value_head_lacks_fails_before_anything_is_generated(parts, tmp_path):
    model, tokenizer, head = parts
    calls = []

    def truthful(prompts, responses):
        calls.append(len(responses))
        return torch.zeros(len(responses))

    truthful.objectives = ["truthful"]
    with pytest.raises(ValueError, match=r"\['truthful'\] have no reward_mean"):
        evaluate(model, tokenizer, head, [good, truthful], PROMPTS, [EvalMethod.reference()], output_dir=tmp_path,
                 plots=False, **FAST)
    assert calls == []  # was checked only after the first batch had been generated and scored


# ----------------------------------------------------------------------------------------------------------------
# accelerate (two CPU processes) and CLI
# ----------------------------------------------------------------------------------------------------------------

_DDP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from accelerate import Accelerator
    sys.path.insert(0, {tests_dir!r})
    from test_evaluation import PROMPTS, good, length, tiny_head, tiny_tokenizer
    from tiny_models import tiny_causal_lm
    from hf_rmod.experiments.evaluation import evaluate
    from hf_rmod.experiments.methods import EvalMethod

    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    model = tiny_causal_lm("llama")
    prompts = PROMPTS + ["w11 w12", "w13"]  # 6 prompts: 3 per process
    methods = [EvalMethod.reference(), EvalMethod.rmod(k=2, b=2)]
    result = evaluate(model, tiny_tokenizer(), tiny_head(model), [good, length], prompts, methods,
                      output_dir={output_dir!r}, max_new_tokens=4, batch_size=2, accelerator=accelerator,
                      show_progress=False, plots=False, n_resamples=20)
    json.dump({{"processes": accelerator.num_processes, "generated": result.num_generated,
               "n_prompts": result.summary["n_prompts"]}}, open({report!r} + str(accelerator.process_index), "w"))
    """
)


@pytest.mark.skipif(shutil.which("accelerate") is None and not Path(sys.executable).with_name("accelerate").exists(),
                    reason="the `accelerate` CLI is not installed")
def test_two_processes_shard_prompts_and_merge(tmp_path):
    script, report, out = tmp_path / "ddp_eval.py", tmp_path / "report", tmp_path / "out"
    script.write_text(_DDP_SCRIPT.format(tests_dir=str(Path(__file__).parent), output_dir=str(out), report=str(report)))
    launcher = shutil.which("accelerate") or str(Path(sys.executable).with_name("accelerate"))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1",
           "ACCELERATE_CONFIG_FILE": str(tmp_path / "none.yaml"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        # accelerate 1.15: `--cpu --num_processes 2` runs ONE process; `--multi_gpu` goes through torchrun and,
        # with Accelerator(cpu=True), gives 2 gloo processes on CPU (same pattern as test_training.py).
        [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "--main_process_port", "0", str(script)],
        capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads((tmp_path / f"report{i}").read_text()) for i in range(2)]
    assert [r["processes"] for r in reports] == [2, 2]
    assert [r["generated"] for r in reports] == [6, 6] and [r["n_prompts"] for r in reports] == [6, 6]
    rank_ids = [{r["prompt_id"] for r in load_results(out / f"results.rank{i}.jsonl")} for i in range(2)]
    assert rank_ids == [{0, 2, 4}, {1, 3, 5}]
    merged = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    pairs = [(r["prompt_id"], r["method"]) for r in merged]
    assert sorted(pairs) == sorted({(p, m) for p in range(6) for m in ("reference", "rmod_k2_b2_lam0.5")})
    assert json.loads((out / "summary.json").read_text())["n_prompts"] == 6


def _parse(argv):
    """``hf-rmod`` argv -> (PolicyArguments, EvaluationArguments, EvaluationConfig), as ``hf_rmod.cli.main`` does."""
    from hf_rmod.cli import _to_dataclasses, build_parser

    namespace = build_parser().parse_args(argv)
    assert namespace._command == "evaluate"
    return _to_dataclasses(namespace)


def test_cli_parser_defaults_and_method_selection():
    from hf_rmod.cli import UsageError, select_methods

    policy, args, config = _parse(["evaluate", "-o", "out"])
    assert (args.prompts, args.prompt_offset, args.num_prompts) == ("hh_harmless_dev_prompts", None, 100)
    assert (args.k, args.b, args.lam, args.methods, config.max_new_tokens) == ([8], [16], [0.5], "all", 96)
    assert policy.device is None  # auto: cuda when available; under accelerate one device per process
    _, args, _ = _parse(["evaluate", "-o", "o", "--k", "4", "8", "--lam", "0.5", "2", "--methods",
                         "reference,rmod_k8_b16_lam2"])
    available = default_methods(OBJECTIVES, args.k, args.b, args.lam)
    assert [m.name for m in select_methods(args.methods, available)] == ["reference", "rmod_k8_b16_lam2"]
    assert len(select_methods("all", available)) == len(available)
    with pytest.raises(UsageError, match="unknown method names \\['rmod_k9'\\]"):
        select_methods("reference,rmod_k9", available)


def test_cli_end_to_end(parts, tmp_path, monkeypatch):
    model, tokenizer, head = parts
    model.save_pretrained(tmp_path / "policy")
    tokenizer.save_pretrained(tmp_path / "policy")
    head.save_pretrained(tmp_path / "head")
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    from hf_rmod.cli import main

    code = main([
        "evaluate", "--policy", str(tmp_path / "policy"), "--value-head", str(tmp_path / "head"),
        "--prompts", str(tmp_path / "prompts.jsonl"), "--prompt-offset", "1", "--num-prompts", "2",
        "--reward", "good=test_evaluation:good", "--reward", "length=test_evaluation:length",
        "--methods", "reference,rmod_k2_b4_lam0.5", "--k", "2", "--b", "4", "--max-new-tokens", "4",
        "--no-plots", "--no-progress", "--n-resamples", "20", "--threads", "1",
        "-o", str(tmp_path / "out"),
    ])
    assert code == 0  # --threads 1: the module fixture's setting, restored after the module
    rows = load_results(tmp_path / "out")
    assert sorted((r["prompt_id"], r["method"]) for r in rows) == [
        (0, "reference"), (0, "rmod_k2_b4_lam0.5"), (1, "reference"), (1, "rmod_k2_b4_lam0.5")]
    assert {r["prompt"] for r in rows} == set(PROMPTS[1:3])
