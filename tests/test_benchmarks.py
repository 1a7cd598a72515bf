"""The benchmark suite runs (`python -m benchmarks --quick`) and its naive baseline is a valid decoder.

No timing assertions: CI machines are shared and slow; only that it runs and reports numbers.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import (  # noqa: E402
    TINY_VOCAB, fixed_length_kwargs, own_backbone_head, shared_trunk_head, target_met, tiny_llama, tiny_prompts,
)
from benchmarks.decoding import SECTIONS  # noqa: E402
from benchmarks.naive import naive_rmod_generate, reencoding_scorer_factory  # noqa: E402


def test_quick_run_reports_every_section(tmp_path):
    out = tmp_path / "q.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--threads", "1", "--output", str(out)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["errors"] == {}
    sections = {row["section"] for row in report["rows"]}
    assert sections == set(SECTIONS)
    for row in report["rows"]:
        assert isinstance(row["ratio"], float) and math.isfinite(row["ratio"]), row
        assert isinstance(row["median_a_s"], float) and isinstance(row["median_b_s"], float), row
    machine = report["machine"]
    for key in ("cpu_model", "cpu_count", "torch_threads", "torch", "transformers", "date"):
        assert key in machine
    assert "loadavg_1_5_15" in report["load_before"] or "uptime" in report["load_before"]
    assert "ratio A/B" in proc.stdout


@pytest.mark.parametrize("value_model", ["shared_trunk", "own_backbone"])
def test_naive_baseline_produces_valid_fixed_length_output(value_model):
    model = tiny_llama()
    ids, mask = tiny_prompts(batch=3, length=6)
    head = shared_trunk_head(model) if value_model == "shared_trunk" else own_backbone_head(TINY_VOCAB, quick=True)
    torch.manual_seed(0)
    out = naive_rmod_generate(model, ids, mask, head, num_candidates=4, block_size=4, **fixed_length_kwargs(10))
    assert out.shape == (3, 6 + 10)  # 10 is not a multiple of B=4: the last block is shorter
    assert torch.equal(out[:, :6], ids)  # the prompts are kept
    assert int(out.min()) >= 0 and int(out.max()) < TINY_VOCAB


def test_naive_baseline_needs_max_new_tokens():
    model = tiny_llama()
    ids, mask = tiny_prompts(batch=1)
    with pytest.raises(ValueError, match="max_new_tokens"):
        naive_rmod_generate(model, ids, mask, shared_trunk_head(model), num_candidates=2, block_size=2)


def test_reencoding_scorer_matches_cached_scorer():
    """The own_backbone baseline differs from hf_rmod only in cost: same values, same tokens."""
    import hf_rmod
    from hf_rmod import RMODConfig

    model = hf_rmod.enable(tiny_llama())
    ids, mask = tiny_prompts(batch=2, length=6)
    cfg = RMODConfig(value_model=own_backbone_head(TINY_VOCAB, quick=True), num_candidates=3, block_size=4)
    kw = dict(attention_mask=mask, rmod_config=cfg, return_dict_in_generate=True, **fixed_length_kwargs(12))
    torch.manual_seed(0)
    cached = model.generate(ids, **kw)
    torch.manual_seed(0)
    generator = hf_rmod.RobustMultiObjectiveGenerator(scorer_factory=reencoding_scorer_factory)
    reencoded = model.generate(ids, custom_generate=generator, **kw)
    assert torch.equal(cached.sequences, reencoded.sequences)
    torch.testing.assert_close(cached.values, reencoded.values, atol=1e-5, rtol=1e-5)


def test_target_met():
    assert target_met(0.99, "<= 1.0") and not target_met(1.01, "<= 1.0")
    assert target_met(6.0, ">= 5") and not target_met(4.0, ">= 5")
    assert target_met(0.001, "< 0.01") and target_met(1.2, "> 1")
    assert target_met(1.0, "-") is None


def test_profile_block_counts_what_rmod_adds_per_block(tmp_path, capsys):
    from benchmarks.profile_block import main

    out = main(["--quick", "--threads", "1", "--k", "2", "--b", "4", "--t", "8", "--output", str(tmp_path / "p.json")])
    assert out["blocks"] == 2 and out["rmod"]["aten_ops"] > out["sampling"]["aten_ops"] > 0
    assert out["extra_per_block"]["aten_ops"] > 0 and out["extra_ops_by_count"]  # the head, the solve, the reorder
    assert json.loads((tmp_path / "p.json").read_text())["K"] == 2 and "ops RMOD adds" in capsys.readouterr().out
