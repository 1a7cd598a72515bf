"""summarize_folder / `hf-rmod summarize`: the summary of an evaluation folder for some methods / first prompts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hf_rmod.cli import main
from hf_rmod.experiments.summary import summarize_folder, summarize_results

OBJ = ["harmless", "helpful"]
SHIFT = {"reference": 0.0, "uniform_k2_b4": 0.5, "rmod_k2_b4_lam0.5": 0.8}


def _folder(tmp_path, n=12):
    rng = np.random.default_rng(0)
    head = tmp_path / "head"
    head.mkdir()
    (head / "config.json").write_text(json.dumps({"objectives": OBJ, "reward_mean": [0.0, 1.0],
                                                  "reward_std": [1.0, 2.0]}))
    out = tmp_path / "eval"
    out.mkdir()
    rows = []
    for method, shift in SHIFT.items():
        rmod = None if method == "reference" else {"num_candidates": 2, "block_size": 4,
                                                   "weights": "uniform" if "uniform" in method else "robust"}
        for p in range(n):
            r = rng.normal(size=2) + shift
            rows.append({"prompt_id": p, "method": method, "rmod": rmod, "policy": None, "response": "x",
                         "rewards": dict(zip(OBJ, r.tolist())), "num_new_tokens": 4, "seconds": 0.1})
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "run.json").write_text(json.dumps({"seed": 0, "value_head": {"name_or_path": str(head)}}))
    return out, head, rows


def test_a_subset_of_methods_and_prompts_equals_summarize_results_on_those_rows(tmp_path):
    out, head, rows = _folder(tmp_path)
    summary = summarize_folder(out, methods=["reference", "rmod_k2_b4_lam0.5"], num_prompts=8,
                               summary_dir=tmp_path / "s", plots=False, n_resamples=50)
    kept = [r for r in rows if r["method"] != "uniform_k2_b4" and r["prompt_id"] < 8]
    expected = summarize_results(kept, OBJ, [0.0, 1.0], [1.0, 2.0], n_resamples=50)
    assert summary["n_prompts"] == 8 and list(summary["methods"]) == ["reference", "rmod_k2_b4_lam0.5"]
    assert summary["methods"] == expected["methods"] and summary["comparisons"] == expected["comparisons"]
    assert summary["normalization"]["reward_std"] == {"harmless": 1.0, "helpful": 2.0}  # run.json's value head
    assert json.loads((tmp_path / "s" / "summary.json").read_text())["n_prompts"] == 8
    assert "(8 prompts" in (tmp_path / "s" / "summary.md").read_text()
    assert not (out / "summary.json").exists()  # the folder's own summary is untouched


def test_errors_name_the_problem(tmp_path):
    out, head, _ = _folder(tmp_path)
    with pytest.raises(ValueError, match=r"\['nope'\] have no rows.*holds \['reference'"):
        summarize_folder(out, methods=["nope"], plots=False)
    (out / "run.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="records no value head.*--value-head"):
        summarize_folder(out, plots=False)
    with pytest.raises(FileNotFoundError, match="No results"):
        summarize_folder(tmp_path / "empty", plots=False)
    assert summarize_folder(out, value_head=head, plots=False, n_resamples=20)["n_prompts"] == 12


def test_cli_writes_the_summary_into_the_folder(tmp_path, capsys):
    out, head, _ = _folder(tmp_path)
    assert main(["summarize", "-o", str(out), "--no-plots", "--n-resamples", "20"]) == 0
    assert "3 methods on 12 prompts" in capsys.readouterr().out
    assert set(json.loads((out / "summary.json").read_text())["methods"]) == set(SHIFT)
    assert main(["summarize", "-o", str(out), "--methods", "reference,nope", "--no-plots"]) == 2
    assert "`methods` ['nope']" in capsys.readouterr().err
