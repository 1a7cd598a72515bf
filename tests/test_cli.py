"""The hf-rmod command line: parsers built from the config dataclasses, help, compatibility of the flags.

Errors and Ctrl-C: tests/test_cli_errors.py; the subcommands run end to end: tests/test_cli_pipelines.py.
"""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from hf_rmod.cli import COMMANDS, _to_dataclasses, build_parser, main
from hf_rmod.experiments.configs import (
    DemoConfig,
    EvaluationArguments,
    EvaluationConfig,
    PolicyArguments,
    SampleArguments,
    SamplingConfig,
    TrainValueArguments,
    ValueTrainingConfig,
)

ROOT = Path(__file__).resolve().parents[1]


def parse(argv):
    """argv -> the command's dataclasses, as main() builds them."""
    return _to_dataclasses(build_parser().parse_args(argv))


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
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["demo", "--num-candidates", "many"])


def test_version(capsys):
    from hf_rmod import __version__

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"hf-rmod {__version__}"


REQUIRED = {
    "demo": [],
    "sample": ["--prompts", "p.jsonl", "--reward", "a=m:f", "-o", "out.jsonl"],
    "train-value": ["--records", "r.jsonl", "-o", "run"],
    "value-report": ["--records", "r.jsonl"],
    "evaluate": ["-o", "out"],
    "distill": ["--prompts", "p.jsonl", "-o", "out"],
    "train-objective-policies": ["--records", "r.jsonl", "-o", "out"],
    "summarize": ["-o", "out"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_default_comes_from_the_config_dataclasses(command):
    """Each subcommand is its dataclasses: unset flags give exactly the dataclass defaults (one source)."""
    parsed = parse([command, *REQUIRED[command]])
    assert tuple(type(p) for p in parsed) == COMMANDS[command].dataclasses
    given = {
        "demo": {},
        "sample": {"prompts": "p.jsonl", "reward": ["a=m:f"], "output": "out.jsonl"},
        "train-value": {"records": "r.jsonl", "output_dir": "run"},
        "value-report": {"records": "r.jsonl"},
        "evaluate": {"output_dir": "out"},
        "distill": {"prompts": "p.jsonl", "output_dir": "out"},
        "train-objective-policies": {"records": "r.jsonl", "output_dir": "out"},
        "summarize": {"output_dir": "out"},
    }[command]
    for obj in parsed:
        names = {f.name for f in dataclasses.fields(obj)}
        expected = type(obj)(**{k: v for k, v in given.items() if k in names})
        assert obj == expected, type(obj).__name__


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_shows_every_flag_and_its_default(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for cls in COMMANDS[command].dataclasses:
        for f in dataclasses.fields(cls):
            flag = "--" + f.name.replace("_", "-")
            assert flag in out, flag
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            if default is not None and not f.metadata.get("required"):
                assert f"(default: {default})" in " ".join(out.split()), (flag, default)


@pytest.mark.parametrize("command", ["sample", "evaluate"])
def test_reward_help_says_module_may_be_local_or_a_file(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "MODULE may be a module in the current folder or a file path" in out
    assert "NAME1,NAME2=MODULE:CALLABLE" in out


def test_sample_flags_stay_compatible():
    policy, args, config = parse([
        "sample", "--policy", "pol", "--gguf-file", "m.gguf", "--trust-remote-code", "--device", "cpu",
        "--prompts", "p.jsonl", "--prompt-field", "text", "--reward", "a=m:f", "--reward", "b,c=./r.py:g",
        "--num-responses", "3", "--max-new-tokens", "7", "--batch-size", "2", "--output", "o.jsonl",
        "--generation-kwargs", '{"temperature": 1.0}', "--no-chat-template", "--limit", "5", "--seed", "4",
    ])
    assert policy == PolicyArguments(policy="pol", gguf_file="m.gguf", trust_remote_code=True, device="cpu")
    assert args == SampleArguments(prompts="p.jsonl", output="o.jsonl", reward=["a=m:f", "b,c=./r.py:g"],
                                   prompt_field="text", limit=5)
    assert config == SamplingConfig(num_responses=3, max_new_tokens=7, batch_size=2,
                                    generation_kwargs='{"temperature": 1.0}', chat_template=False, seed=4)
    assert config.sampling["temperature"] == 1.0
    _, args, config = parse(["sample", "--prompts", "p", "--reward", "a=m:f", "b=m:g", "-n", "2", "-o", "x"])
    assert args.reward == ["a=m:f", "b=m:g"] and args.output == "x" and config.num_responses == 2


def test_train_value_flags_stay_compatible():
    policy, args, config = parse([
        "train-value", "--records", "r.jsonl", "--policy", "pol", "--gguf-file", "g", "--trust-remote-code",
        "--device", "cpu", "--objectives", "a,b", "--kind", "backbone", "--backbone", "bb", "--freeze-backbone",
        "--head-type", "mlp", "--output-dir", "run", "--epochs", "2", "--lr", "0.01", "--batch-size", "4",
        "--val-fraction", "0.5", "--patience", "1", "--seed", "3", "--no-cache-hidden-states",
    ])
    assert policy == PolicyArguments(policy="pol", gguf_file="g", trust_remote_code=True, device="cpu")
    assert args == TrainValueArguments(records="r.jsonl", output_dir="run", objectives="a,b", kind="backbone",
                                       backbone="bb", head_type="mlp")
    assert config == ValueTrainingConfig(epochs=2, lr=0.01, batch_size=4, val_fraction=0.5, patience=1, seed=3,
                                         cache_hidden_states=False, freeze_backbone=True)
    _, args, _ = parse(["train-value", "--records", "r", "-o", "o2"])
    assert args.output_dir == "o2" and args.kind == "shared"


def test_evaluate_flags_stay_compatible():
    policy, args, config = parse([
        "evaluate", "--prompts", "p.jsonl", "--prompt-field", "q", "--prompt-offset", "3", "--num-prompts", "5",
        "--policy", "pol", "--value-head", "head", "--reward", "a=m:f", "--reward", "b=m:g", "--methods", "all",
        "--k", "2", "4", "--b", "8", "--lam", "0.5", "1", "--max-new-tokens", "9", "--batch-size", "3", "--seed", "2",
        "--generation-kwargs", '{"top_p": 1.0}', "--no-chat-template", "--output-dir", "out", "--device", "cpu",
        "--threads", "1", "--n-resamples", "30", "--no-plots", "--no-progress",
    ])
    assert policy == PolicyArguments(policy="pol", device="cpu", threads=1)
    assert args == EvaluationArguments(output_dir="out", prompts="p.jsonl", prompt_field="q", prompt_offset=3,
                                       num_prompts=5, value_head="head", reward=["a=m:f", "b=m:g"], methods="all",
                                       k=[2, 4], b=[8], lam=[0.5, 1.0], progress=False)
    assert config == EvaluationConfig(max_new_tokens=9, batch_size=3, seed=2, generation_kwargs='{"top_p": 1.0}',
                                      chat_template=False, n_resamples=30, plots=False)
    _, args, _ = parse(["evaluate", "-o", "o", "--k", "2", "--k", "3"])
    assert args.k == [3]  # nargs="+": the last --k wins, as before


def test_demo_flags_stay_compatible():
    policy, config = parse([
        "demo", "--prompt", "hi there", "--prompt", "bye", "--policy", "pol", "--value-head", "h",
        "--num-candidates", "4", "--block-size", "2", "--lam", "1.5", "--max-new-tokens", "12", "--seed", "1",
        "--threads", "2",
    ])
    assert policy == PolicyArguments(policy="pol", threads=2)
    assert config == DemoConfig(prompt=["hi there", "bye"], value_head="h", num_candidates=4, block_size=2,
                                lam=1.5, max_new_tokens=12, seed=1)
    _, config = parse(["demo", "-k", "3", "-b", "5"])
    assert (config.num_candidates, config.block_size) == (3, 5)


def test_snake_case_spellings_are_accepted_but_not_shown(capsys):
    _, _, config = parse(["sample", "--prompts", "p", "--reward", "a=m:f", "-o", "x", "--num_responses", "2",
                          "--no_chat_template"])
    assert config.num_responses == 2 and config.chat_template is False
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    assert "--num_responses" not in capsys.readouterr().out
