"""scripts/update_results_doc.py: the generated tables of docs/results.md come from the summaries."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "update_results_doc", Path(__file__).resolve().parents[1] / "scripts" / "update_results_doc.py")
update_results_doc = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(update_results_doc)

DOC = """# Results

intro kept

<!-- results:begin (runs/a/summary.md) -->
old table
<!-- results:end -->

text between kept

<!-- results:begin (runs/b/summary.md) -->
<!-- results:end -->
"""


def _write(tmp_path: Path, name: str, text: str) -> None:
    (tmp_path / "runs" / name).mkdir(parents=True, exist_ok=True)
    (tmp_path / "runs" / name / "summary.md").write_text(text, encoding="utf-8")


def test_blocks_are_refilled_from_their_summaries_and_the_rest_is_kept(tmp_path):
    doc = tmp_path / "results.md"
    doc.write_text(DOC, encoding="utf-8")
    _write(tmp_path, "a", "# Evaluation summary (3 prompts)\n\n| m | x |\n\n## Paired comparisons\n\nrow a\n")
    _write(tmp_path, "b", "| b |\n")
    assert update_results_doc.main(["--doc", str(doc), "--root", str(tmp_path), "--check"]) == 1
    assert update_results_doc.main(["--doc", str(doc), "--root", str(tmp_path)]) == 0
    text = doc.read_text(encoding="utf-8")
    assert "old table" not in text and "intro kept" in text and "text between kept" in text
    assert "<!-- results:begin (runs/a/summary.md) -->\n| m | x |\n\n### Paired comparisons\n\nrow a\n<!-- results:end -->" \
        in text
    assert "# Evaluation summary" not in text and "| b |\n<!-- results:end -->" in text
    assert update_results_doc.main(["--doc", str(doc), "--root", str(tmp_path), "--check"]) == 0


def test_a_missing_summary_is_named_and_the_doc_is_left_alone(tmp_path):
    doc = tmp_path / "results.md"
    doc.write_text(DOC, encoding="utf-8")
    _write(tmp_path, "a", "| m |\n")
    with pytest.raises(FileNotFoundError, match="runs/b/summary.md"):
        update_results_doc.main(["--doc", str(doc), "--root", str(tmp_path)])
    assert doc.read_text(encoding="utf-8") == DOC
