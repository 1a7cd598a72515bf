"""Refresh the generated tables of docs/results.md from the evaluation folders' summary.md files.

Every block of the form

    <!-- results:begin (runs/eval-300/summary.md) -->
    ...
    <!-- results:end -->

is replaced by the named file's content (the title line ``# ...`` dropped, headings demoted to ``###``), so every
number in those tables comes from ``summarize_results`` (``hf-rmod evaluate`` / ``hf-rmod summarize`` write
summary.md). A named file that does not exist is an error naming it and the command that writes it; the doc is
only written when every block could be filled.

    python scripts/update_results_doc.py                 # docs/results.md in place
    python scripts/update_results_doc.py --check         # exit 1 when the doc differs from the summaries
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

BLOCK = re.compile(r"(<!-- results:begin \((?P<path>[^)]+)\) -->\n)(?P<body>.*?)(<!-- results:end -->)", re.S)


def _generated(path: Path) -> str:
    lines = path.read_text(encoding="utf-8").splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    out = ["#" + line if line.startswith("## ") else line for line in lines]
    return "\n".join(out).strip("\n") + "\n"


def update(doc: Path, root: Path) -> str:
    """The doc's text with every results block refilled (raises FileNotFoundError naming a missing summary)."""
    text = doc.read_text(encoding="utf-8")

    def fill(match: re.Match) -> str:
        source = root / match.group("path")
        if not source.is_file():
            raise FileNotFoundError(
                f"{doc}: the results block names {match.group('path')!r}, which does not exist under {root}; run "
                "the `hf-rmod evaluate` command above that block (or `hf-rmod summarize`) first."
            )
        return match.group(1) + _generated(source) + match.group(4)

    return BLOCK.sub(fill, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--doc", default="docs/results.md")
    parser.add_argument("--root", default=".", help="folder the block paths are relative to (the repo root)")
    parser.add_argument("--check", action="store_true", help="only report whether the doc is up to date")
    args = parser.parse_args(argv)
    doc = Path(args.doc)
    new = update(doc, Path(args.root))
    blocks = len(BLOCK.findall(new))
    if args.check:
        same = new == doc.read_text(encoding="utf-8")
        print(f"{doc}: {blocks} results blocks, {'up to date' if same else 'OUT OF DATE'}")
        return 0 if same else 1
    doc.write_text(new, encoding="utf-8")
    print(f"{doc}: {blocks} results blocks refreshed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
