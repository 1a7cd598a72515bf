"""The hf-rmod command line."""

import subprocess
import sys
from pathlib import Path

import pytest

from hf_rmod.cli import _build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "sample", "train-value", "evaluate"):
        assert command in out


def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "hf_rmod", "demo", "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--num-candidates" in proc.stdout


def test_demo_rejects_bad_arguments():
    parser = _build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["demo", "--num-candidates", "many"])
