"""hf-rmod's answers to a new user's mistakes: one line on stderr, exit code 2, the flag the user typed;
--debug / HF_RMOD_DEBUG=1 for the traceback; Ctrl-C says where the run stopped (exit 130); fast --help."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

import hf_rmod.cli as cli
from hf_rmod.cli import main, name_flags

ROOT = Path(__file__).resolve().parents[1]


def run_main(argv, capsys):
    """main(argv) -> (exit code, stdout, stderr); argparse's SystemExit counted as a return."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, command):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"hf-rmod {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------------------------------------------------------
# Flag names in errors (issue 14, item 9)
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, flag, field", [
    (["evaluate", "-o", "out", "--k", "0"], "--k", "num_candidates"),
    (["evaluate", "-o", "out", "--lam", "0"], "--lam", "`lam`"),
    (["evaluate", "-o", "out", "--b", "4", "0"], "--b", "block_size"),
    (["demo", "--num-candidates", "0"], "--num-candidates", "`num_candidates`"),
    (["demo", "-b", "0"], "--block-size", "`block_size`"),
    (["sample", "--prompts", "p", "--reward", "a=m:f", "-o", "o", "-n", "0"], "--num-responses", "`num_responses`"),
    (["sample", "--prompts", "p", "--reward", "a=m:f", "-o", "o", "--generation-kwargs", "{oops"],
     "--generation-kwargs", "`generation_kwargs`"),
    (["sample", "--prompts", "p", "--reward", "a=m:f", "-o", "o", "--generation-kwargs", "[1]"],
     "--generation-kwargs", "`generation_kwargs`"),
    (["train-value", "--records", "r", "-o", "o", "--val-fraction", "1.5"], "--val-fraction", "`val_fraction`"),
    (["train-value", "--records", "r", "-o", "o", "--lr", "0"], "--lr", "`lr`"),
    (["evaluate", "-o", "out", "--threads", "0"], "--threads", "`threads`"),
])
def test_config_errors_name_the_flag_typed(argv, flag, field, capsys):
    code, _, err = run_main(argv, capsys)
    line = assert_one_line_error(code, err, argv[0])
    assert flag in line and field not in line, line


def test_name_flags_only_rewrites_known_fields():
    flags = {"k": "--k", "num_candidates": "--num-candidates"}
    assert name_flags("`k` values must be >= 1, got 0.", flags) == "--k values must be >= 1, got 0."
    assert name_flags("`objectives` of `fn`", flags) == "`objectives` of `fn`"


def test_argparse_errors_are_one_line(capsys):
    code, _, err = run_main(["evaluate"], capsys)
    line = assert_one_line_error(code, err, "evaluate")
    assert "--output-dir" in line and "hf-rmod evaluate --help" in line
    code, _, err = run_main(["evaluate", "-o", "x", "--k", "two"], capsys)
    assert "invalid int value: 'two'" in assert_one_line_error(code, err, "evaluate")
    code, _, err = run_main(["nonsense"], capsys)
    assert code == 2 and err.startswith("hf-rmod: error: ") and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------------------------
# train-value: usage errors before anything loads (issue 14, item 5)
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if a model, a records file or torch's device rule is touched."""
    import hf_rmod.defaults
    import hf_rmod.experiments.records

    def forbidden(*args, **kwargs):
        raise AssertionError("loaded something before the usage error")

    monkeypatch.setattr(hf_rmod.defaults, "load_default_policy", forbidden)
    monkeypatch.setattr(hf_rmod.experiments.records, "load_records", forbidden)
    monkeypatch.setattr(cli._common, "_setup_torch", forbidden)


def test_train_value_shared_head_without_policy_is_a_usage_error(no_loading, tmp_path, capsys):
    code, _, err = run_main(["train-value", "--records", str(tmp_path / "r.jsonl"), "-o", str(tmp_path / "run")],
                            capsys)
    line = assert_one_line_error(code, err, "train-value")
    assert "--policy" in line and "--kind shared" in line and "None" not in line
    assert not (tmp_path / "run").exists()


def test_train_value_backbone_without_backbone_is_a_usage_error(no_loading, tmp_path, capsys):
    code, _, err = run_main(["train-value", "--records", "r.jsonl", "-o", str(tmp_path / "run"), "--kind",
                             "backbone"], capsys)
    assert "--backbone" in assert_one_line_error(code, err, "train-value")


@pytest.mark.parametrize("flag", ["--policy", "--value-head"])
def test_missing_local_policy_or_head_names_the_flag(flag, tmp_path, capsys, monkeypatch):
    """issue 14 item 5: a local-looking path that does not exist fails at once, naming the flag, never the Hub."""
    import huggingface_hub

    def no_hub(*args, **kwargs):
        raise AssertionError("the Hub was asked")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    monkeypatch.delenv("HF_RMOD_DEBUG", raising=False)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('"hi"\n', encoding="utf-8")
    argv = ["evaluate", "--prompts", str(prompts), "-o", str(tmp_path / "run"), flag, str(tmp_path / "nope")]
    monkeypatch.setattr(cli._common, "_setup_torch", lambda *a: (_ for _ in ()).throw(AssertionError("loaded something")))
    code, _, err = run_main(argv, capsys)
    line = assert_one_line_error(code, err, "evaluate")
    assert "no such folder" in line and f"`{flag}`" in line


# ------------------------------------------------------------------------------------------------------------
# One-line user errors, --debug, HF_RMOD_DEBUG (issue 14, item 6)
# ------------------------------------------------------------------------------------------------------------
def test_missing_prompt_file_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HF_RMOD_DEBUG", raising=False)
    argv = ["sample", "--prompts", str(tmp_path / "nope.jsonl"), "--reward", "a=m:f", "-o", str(tmp_path / "o")]
    code, _, err = run_main(argv, capsys)
    line = assert_one_line_error(code, err, "sample")
    assert "nope.jsonl" in line


def test_debug_flag_and_env_show_the_traceback(tmp_path, monkeypatch):
    argv = ["sample", "--prompts", str(tmp_path / "nope.jsonl"), "--reward", "a=m:f", "-o", str(tmp_path / "o")]
    monkeypatch.delenv("HF_RMOD_DEBUG", raising=False)
    with pytest.raises(FileNotFoundError):
        main([*argv, "--debug"])
    with pytest.raises(FileNotFoundError):
        main(["--debug", *argv])
    monkeypatch.setenv("HF_RMOD_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(argv)


def test_bad_reward_spec_is_one_line(tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('"hello"\n')
    for spec in ("a=no_such_module_xyz:fn", "nonsense", "a=./missing_file.py:fn"):
        code, _, err = run_main(["sample", "--prompts", str(prompts), "--reward", spec, "-o", str(tmp_path / "o")],
                                capsys)
        assert spec in assert_one_line_error(code, err, "sample")


def test_bad_methods_and_prompt_offset_are_usage_errors(tmp_path, capsys, monkeypatch):
    import hf_rmod.defaults

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('"a"\n"b"\n')
    code, _, err = run_main(["evaluate", "--prompts", str(prompts), "--prompt-offset", "2", "-o", str(tmp_path)],
                            capsys)
    assert "--prompt-offset 2" in assert_one_line_error(code, err, "evaluate")

    def no_policy(*args, **kwargs):
        raise AssertionError("--methods is checked before the policy loads")

    monkeypatch.setattr(hf_rmod.defaults, "load_default_policy", no_policy)
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    code, _, err = run_main(["evaluate", "--prompts", str(prompts), "--prompt-offset", "0", "--device", "cpu",
                             "--reward", "harmless=test_cli_errors:constant_reward", "--methods", "reference,rmod_k9",
                             "-o", str(tmp_path / "out")], capsys)
    err = "\n".join(x for x in err.splitlines() if "Loading weights" not in x)  # transformers' progress bar
    line = assert_one_line_error(code, err, "evaluate")
    assert "--methods" in line and "rmod_k9" in line and "rmod_k8_b16_lam0.5" in line
    assert not (tmp_path / "out").exists()


def test_internal_errors_keep_their_traceback(monkeypatch):
    def broken(*args):
        raise KeyError("a bug, not a user error")

    monkeypatch.setitem(cli.COMMANDS, "demo", dataclasses.replace(cli.COMMANDS["demo"], run=broken))
    with pytest.raises(KeyError):
        main(["demo"])


def test_out_of_memory_is_one_line(monkeypatch, capsys):
    class OutOfMemoryError(RuntimeError):
        pass

    def oom(*args):
        raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setitem(cli.COMMANDS, "demo", dataclasses.replace(cli.COMMANDS["demo"], run=oom))
    code, _, err = run_main(["demo"], capsys)
    assert "--batch-size" in assert_one_line_error(code, err, "demo")


def test_user_error_through_the_console_entry_point(tmp_path):
    """The real program: one stderr line, exit code 2, no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "hf_rmod", "sample", "--prompts", str(tmp_path / "nope.jsonl"), "--reward",
         "a=m:f", "-o", str(tmp_path / "out.jsonl")],
        capture_output=True, text=True, cwd=tmp_path, timeout=300, env={**os.environ, "HF_RMOD_DEBUG": ""},
    )
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr


# ------------------------------------------------------------------------------------------------------------
# Ctrl-C (issue 14, item 6)
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command, argv, where", [
    ("sample", ["--prompts", "p", "--reward", "a=m:f", "-o", "recs.jsonl"], "recs.jsonl"),
    ("evaluate", ["-o", "evalrun"], "evalrun/results.jsonl"),
    ("train-value", ["--records", "r", "--policy", "p", "-o", "tvrun"], "tvrun"),
])
def test_ctrl_c_says_where_the_run_stopped(command, argv, where, monkeypatch, capsys):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, command, dataclasses.replace(cli.COMMANDS[command], run=interrupted))
    code, _, err = run_main([command, *argv], capsys)
    assert code == 130
    assert "Traceback" not in err and "interrupted" in err and where in err
    if command != "train-value":
        assert "rerun the same command to resume" in err
    else:
        assert "does not resume" in err


# ------------------------------------------------------------------------------------------------------------
# One device rule (issue 14, item 9)
# ------------------------------------------------------------------------------------------------------------
class _Stop(Exception):
    pass


@pytest.mark.parametrize("argv", [
    ["sample", "--reward", "good=test_cli_errors:constant_reward"],
    ["evaluate", "--reward", "good=test_cli_errors:constant_reward", "--value-head", "unused"],
])
@pytest.mark.parametrize("device", [None, "cpu"])
def test_sample_and_evaluate_share_one_device_rule(argv, device, tmp_path, monkeypatch):
    import hf_rmod.experiments.io as io

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('"hello"\n"there"\n')
    seen = []

    def record(value=None):
        seen.append(value)
        raise _Stop

    monkeypatch.setattr(io, "default_device", record)
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    flags = ["--prompts", str(prompts), "-o", str(tmp_path / "out")] + (["--device", device] if device else [])
    if argv[0] == "evaluate":
        flags += ["--prompt-offset", "0"]
    with pytest.raises(_Stop):
        main([*argv, *flags])
    assert seen == [device]


def constant_reward(prompts, responses):
    return [0.0 for _ in responses]


# ------------------------------------------------------------------------------------------------------------
# Startup (issue 14, item 8)
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["demo", "--help"], ["sample", "--help"],
                                  ["train-value", "--help"], ["evaluate", "--help"]])
def test_help_and_version_import_neither_torch_nor_transformers(argv):
    """`hf-rmod --help` answers in well under a second: nothing heavy is imported before parsing."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "hf_rmod", *argv], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time")}
    heavy = sorted(name for name in imported if name.split(".")[0] in {"torch", "transformers", "numpy"})
    assert not heavy, heavy[:10]
