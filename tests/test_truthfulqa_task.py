"""scripts/truthfulqa_task.py, the parts that need no model: the split, the column-selecting reward wrapper, the
G-sweep plan and methods, and reading the G-sweep summaries."""

import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "truthfulqa_task.py"
OBJECTIVES = ["harmless", "helpful", "truthful", "non_offensive", "concise"]


@pytest.fixture(scope="module")
def task():
    spec = importlib.util.spec_from_file_location("truthfulqa_task", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_rows(sizes=None):
    """Rows sorted by category, like truthfulqa_prompts.jsonl."""
    sizes = sizes or {"Advertising": 13, "Health": 31, "Law": 20, "Misconceptions": 40, "Proverbs": 7, "Science": 3}
    rows, i = [], 0
    for category, n in sorted(sizes.items()):
        for _ in range(n):
            rows.append({"id": f"truthfulqa-{i}", "prompt": f"Question {i}?", "category": category,
                         "best_answer": f"Answer {i}", "source": "test"})
            i += 1
    return rows


def write_data(folder: Path, rows) -> Path:
    path = folder / "truthfulqa_prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------ the split
def test_split_is_disjoint_complete_and_stratified(task):
    rows = fake_rows()
    train, evaluation = task.stratified_split(rows, eval_size=40, seed=0)
    assert len(evaluation) == 40 and len(train) == len(rows) - 40
    assert {r["id"] for r in train}.isdisjoint({r["id"] for r in evaluation})
    assert {r["prompt"] for r in train}.isdisjoint({r["prompt"] for r in evaluation})
    assert sorted(r["id"] for r in train + evaluation) == sorted(r["id"] for r in rows)
    sizes, picked = Counter(r["category"] for r in rows), Counter(r["category"] for r in evaluation)
    for category, n in sizes.items():  # proportional to within one question
        assert abs(picked[category] - n * 40 / len(rows)) < 1
    assert all(r in rows for r in evaluation)  # every field kept


def test_split_is_deterministic_per_seed(task):
    rows = fake_rows()
    first = task.stratified_split(rows, 40, seed=0)
    assert task.stratified_split(rows, 40, seed=0) == first
    assert task.stratified_split(rows, 40, seed=1) != first


def test_eval_quota_sums_and_rejects_bad_sizes(task):
    counts = {"a": 100, "b": 55, "c": 5, "d": 1}
    quota = task.eval_quota(counts, 60)
    assert sum(quota.values()) == 60 and all(0 <= quota[c] <= n for c, n in counts.items())
    for bad in (0, 161, -3):
        with pytest.raises(ValueError, match="--eval-size"):
            task.eval_quota(counts, bad)


def test_check_disjoint_asserts(task):
    with pytest.raises(AssertionError, match="both the training and the evaluation"):
        task.check_disjoint([{"id": "1", "prompt": "Q?"}], [{"id": "2", "prompt": " Q? "}])


def test_run_split_writes_rechecks_and_refuses_another_split(task, tmp_path, capsys):
    rows = fake_rows()
    data = write_data(tmp_path, rows)
    paths = task.Paths(tmp_path / "root")
    record = task.run_split(paths, str(data), eval_size=40, seed=0)
    written_eval = [json.loads(line) for line in paths.eval.read_text().splitlines()]
    assert [r["id"] for r in written_eval] == record["eval_ids"] and set(written_eval[0]) == set(rows[0])
    saved = json.loads(paths.split.read_text())
    assert saved["counts"] == {"total": len(rows), "train": len(rows) - 40, "eval": 40} and saved["seed"] == 0
    assert sum(v["eval"] for v in saved["categories"].values()) == 40
    capsys.readouterr()
    task.run_split(paths, str(data), eval_size=40, seed=0)
    assert "already split" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="records another split"):
        task.run_split(paths, str(data), eval_size=40, seed=1)


def test_missing_data_file_is_refused_clearly(task, tmp_path, monkeypatch):
    empty = tmp_path / "data"
    empty.mkdir()
    monkeypatch.setenv("HF_RMOD_DATA_DIR", str(empty))
    with pytest.raises(FileNotFoundError, match=r"truthfulqa_prompts\.jsonl.*HF_RMOD_DATA_DIR"):
        task.truthfulqa_path(None)
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        task.truthfulqa_path(tmp_path / "nowhere.jsonl")
    with pytest.raises(SystemExit, match="error: The TruthfulQA task needs truthfulqa_prompts.jsonl"):
        task.main(["split", "--root", str(tmp_path / "root")])
    assert not (tmp_path / "root").exists()


def test_read_rows_rejects_duplicates_and_bad_rows(task, tmp_path):
    rows = fake_rows({"A": 3})
    with pytest.raises(ValueError, match="'Question 0\\?' appears 2 times"):
        task.read_rows(write_data(tmp_path, rows + [{**rows[0], "id": "other"}]))
    with pytest.raises(ValueError, match="string 'id', 'prompt' and 'category'"):
        task.read_rows(write_data(tmp_path, [{"id": "1", "prompt": "Q?"}]))


# ------------------------------------------------------------------------------------------------ selecting columns
class FiveColumns:
    objectives = OBJECTIVES

    def __call__(self, prompts, responses):
        return torch.arange(len(prompts) * 5, dtype=torch.float32).view(len(prompts), 5)


def test_select_objectives_shapes_names_and_order(task):
    fn = task.SelectObjectives(FiveColumns(), ["truthful", "harmless"])
    assert fn.objectives == ["truthful", "harmless"]
    out = fn(["a", "b", "c"], ["x", "y", "z"])
    assert out.shape == (3, 2)
    full = FiveColumns()(["a", "b", "c"], ["x", "y", "z"])
    assert torch.equal(out, full[:, [2, 0]])


def test_select_objectives_refuses_unknown_names_and_bad_rewards(task):
    with pytest.raises(ValueError, match=r"\['honest'\] are not columns.*has \['harmless'"):
        task.SelectObjectives(FiveColumns(), ["helpful", "honest"])
    with pytest.raises(ValueError, match="distinct"):
        task.SelectObjectives(FiveColumns(), ["helpful", "helpful"])
    with pytest.raises(TypeError, match="declaring its columns"):
        task.SelectObjectives(lambda p, r: torch.zeros(len(p), 5), ["helpful"])

    class Wrong(FiveColumns):
        def __call__(self, prompts, responses):
            return torch.zeros(len(prompts), 3)

    with pytest.raises(ValueError, match=r"returned shape \(2, 3\)"):
        task.SelectObjectives(Wrong(), ["helpful"])(["a", "b"], ["x", "y"])


# ------------------------------------------------------------------------------------------------ the G-sweep
def test_gsweep_plan_orders_and_shared_full_set(task):
    plan = task.gsweep_plan(OBJECTIVES, [2, 3, 4, 5], ["forward", "reverse"])
    by_name = {e["name"]: e for e in plan}
    assert by_name["forward-G2"]["objectives"] == ["harmless", "helpful"]
    assert by_name["reverse-G3"]["objectives"] == ["concise", "non_offensive", "truthful"]
    assert by_name["reverse-G5"]["same_as"] == "forward-G5"
    assert [e["name"] for e in plan if e["same_as"]] == ["reverse-G5"]
    with pytest.raises(ValueError, match="--sizes"):
        task.gsweep_plan(OBJECTIVES, [2, 6], ["forward"])
    with pytest.raises(ValueError, match="--orders"):
        task.gsweep_plan(OBJECTIVES, [2], ["sideways"])


def test_subset_methods_select_value_model_outputs(task):
    uniform, rmod = task.subset_methods(OBJECTIVES, ["concise", "truthful"], 8, 16, 0.5)
    assert (uniform.name, rmod.name) == ("uniform_k8_b16", "rmod_k8_b16_lam0.5")
    assert uniform.kind == "uniform" and rmod.kind == "rmod"
    assert uniform.rmod["objectives"] == rmod.rmod["objectives"] == ["concise", "truthful"]
    with pytest.raises(ValueError, match=r"\['honest'\] are not outputs of the value model"):
        task.subset_methods(OBJECTIVES, ["helpful", "honest"], 8, 16, 0.5)


def _summary(folder: Path, uniform: float, rmod: float, n: int = 3) -> None:
    folder.mkdir(parents=True)
    methods = {"uniform_k8_b16": {"kind": "uniform", "worst_case_reward": uniform,
                                  "worst_case_reward_ci": [uniform - 0.1, uniform + 0.1]},
               "rmod_k8_b16_lam0.5": {"kind": "rmod", "worst_case_reward": rmod,
                                      "worst_case_reward_ci": [rmod - 0.1, rmod + 0.1]}}
    comparisons = [{"method": "rmod_k8_b16_lam0.5", "baseline": "uniform_k8_b16",
                    "worst_case_difference": rmod - uniform, "worst_case_difference_ci": [0.0, 0.2], "win_rate": 0.6}]
    (folder / "summary.json").write_text(json.dumps({"n_prompts": n, "methods": methods, "comparisons": comparisons}))


def test_gsweep_points_read_summaries_and_reuse_the_full_set(task, tmp_path):
    paths = task.Paths(tmp_path)
    plan = task.gsweep_plan(OBJECTIVES, [2, 5], ["forward", "reverse"])
    _summary(paths.gsweep / "forward-G2", 0.1, 0.3)
    _summary(paths.gsweep / "forward-G5", -0.4, -0.2)
    points = task.gsweep_points(paths, plan)  # reverse-G2 has not run: left out
    assert [(p["order"], p["g"], Path(p["run"]).name) for p in points] == [
        ("forward", 2, "forward-G2"), ("forward", 5, "forward-G5"), ("reverse", 5, "forward-G5")]
    assert points[0]["rmod"] == 0.3 and points[0]["uniform_ci"] == [0.0, 0.2]
    assert points[0]["difference"] == pytest.approx(0.2) and points[0]["win_rate"] == 0.6


def test_full_set_from_the_evaluate_step(task, tmp_path):
    plan = task.gsweep_plan(OBJECTIVES, [2, 5], ["forward", "reverse"], full_from_eval=True)
    assert [e["name"] for e in plan if e["same_as"] == "eval"] == ["forward-G5", "reverse-G5"]
    paths = task.Paths(tmp_path)
    _summary(paths.eval_dir, -0.5, -0.1, n=4)
    points = task.gsweep_points(paths, plan)
    assert [(p["order"], p["g"], p["rmod"], p["n_prompts"]) for p in points] == [
        ("forward", 5, -0.1, 4), ("reverse", 5, -0.1, 4)]


def test_full_set_from_the_evaluate_step_on_the_gsweep_prompts(task, tmp_path, monkeypatch):
    """The evaluation ran on more prompts than the G-sweep: its G = 5 point is summarized again on the first ones."""
    import hf_rmod.experiments.summary as summary_module

    plan = task.gsweep_plan(OBJECTIVES, [2, 5], ["forward"], full_from_eval=True)
    paths = task.Paths(tmp_path)
    _summary(paths.eval_dir, -0.5, -0.1, n=8)
    _summary(paths.gsweep / "forward-G2", 0.1, 0.3, n=3)
    calls = []

    def fake_summarize(folder, *, methods, num_prompts, summary_dir, plots, **kwargs):
        calls.append((Path(folder), methods, num_prompts, Path(summary_dir)))
        _summary(Path(summary_dir), -0.6, -0.3, n=num_prompts)

    monkeypatch.setattr(summary_module, "summarize_folder", fake_summarize)
    points = task.gsweep_points(paths, plan)
    assert calls == [(paths.eval_dir, ["uniform_k8_b16", "rmod_k8_b16_lam0.5"], 3, paths.gsweep / "eval-first3")]
    assert [(p["g"], p["rmod"], p["n_prompts"]) for p in points] == [(2, 0.3, 3), (5, -0.3, 3)]

    _summary(paths.gsweep / "forward-G3", 0.0, 0.1, n=4)  # runs of different sizes: refused
    with pytest.raises(ValueError, match=r"different numbers of prompts \[3, 4\]"):
        task.gsweep_points(paths, task.gsweep_plan(OBJECTIVES, [2, 3, 5], ["forward"], full_from_eval=True))
    _summary(paths.gsweep / "forward-G4", 0.0, 0.1, n=9)  # more prompts than the evaluation: refused
    with pytest.raises(ValueError, match="covers 8 prompts, the G-sweep 9"):
        task.gsweep_points(paths, task.gsweep_plan(OBJECTIVES, [4, 5], ["forward"], full_from_eval=True))


def test_gsweep_markdown_lists_every_point(task, tmp_path):
    paths = task.Paths(tmp_path)
    plan = task.gsweep_plan(OBJECTIVES, [2, 5], ["forward"])
    _summary(paths.gsweep / "forward-G2", 0.1, 0.3)
    _summary(paths.gsweep / "forward-G5", -0.4, -0.25)
    text = task.gsweep_markdown(task.gsweep_points(paths, plan))
    rows = [line for line in text.splitlines() if line.startswith("| forward")]
    assert rows == [
        "| forward | 2 | harmless, helpful | 3 | – | +0.100 [+0.000, +0.200] | +0.300 [+0.200, +0.400] "
        "| +0.200 [+0.000, +0.200] | 0.60 |",
        "| forward | 5 | harmless, helpful, truthful, non_offensive, concise | 3 | – | -0.400 [-0.500, -0.300] "
        "| -0.250 [-0.350, -0.150] | +0.150 [+0.000, +0.200] | 0.60 |"]
    assert text.startswith("# G-sweep")


def test_reference_worst_case_per_subset_from_the_evaluation_rows(task, tmp_path):
    paths = task.Paths(tmp_path)
    assert task.reference_worst_case(paths, [["harmless"]], 2) == [None]  # no evaluation yet
    paths.eval_dir.mkdir(parents=True)
    normalization = {"reward_mean": {g: 0.0 for g in OBJECTIVES}, "reward_std": {g: 2.0 for g in OBJECTIVES}}
    (paths.eval_dir / "summary.json").write_text(json.dumps({"reference_method": "reference",
                                                             "normalization": normalization}))
    rewards = [dict(zip(OBJECTIVES, [1.0, -1.0, 0.0, 2.0, 4.0])), dict(zip(OBJECTIVES, [-3.0, 1.0, 1.0, 1.0, 1.0])),
               dict(zip(OBJECTIVES, [-9.0] * 5))]
    rows = [{"prompt_id": i, "method": "reference", "rewards": r} for i, r in enumerate(rewards)]
    rows.append({"prompt_id": 0, "method": "rmod_k8_b16_lam0.5", "rewards": dict(zip(OBJECTIVES, [-9.0] * 5))})
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"prompt_id": 3, "meth'  # a partial last line
    (paths.eval_dir / "results.jsonl").write_text(text)
    # first 2 prompts: min z over {harmless, helpful} = -0.5, -1.5; over {truthful, non_offensive, concise} = 0, 0.5
    assert task.reference_worst_case(paths, [["harmless", "helpful"], ["truthful", "non_offensive", "concise"]],
                                     2) == [pytest.approx(-1.0), pytest.approx(0.25)]
    assert task.reference_worst_case(paths, [["concise"]], None) == [pytest.approx((2.0 + 0.5 - 4.5) / 3)]


def test_plot_gsweep_writes_a_png(task, tmp_path):
    pytest.importorskip("matplotlib")
    paths = task.Paths(tmp_path)
    plan = task.gsweep_plan(OBJECTIVES, [2, 3], ["forward", "reverse"])
    for name, (u, r) in {"forward-G2": (0.1, 0.3), "forward-G3": (0.0, 0.1), "reverse-G2": (0.2, 0.25),
                         "reverse-G3": (-0.1, 0.05)}.items():
        _summary(paths.gsweep / name, u, r)
    out = task.plot_gsweep(task.gsweep_points(paths, plan), tmp_path / "img" / "gsweep.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
