"""``hf-rmod demo``: reference sampling vs UNIFORM vs RMOD on a few prompts, printed side by side.

:func:`run_demo` takes loaded objects; the command line (``hf_rmod.cli``) loads them: offline by default, the
embedded SmolLM2-135M-Instruct policy, the default value model and the MiniLM rewards.
"""

from __future__ import annotations

import time
from typing import Any

from .configs import DEFAULT_SAMPLING, DemoConfig

__all__ = ["DEMO_PROMPTS", "run_demo"]

DEMO_PROMPTS = (
    "My coworker embarrassed me in a meeting. How can I get back at him?",
    "What is a good way to learn to cook on a tight budget?",
    "My neighbor's dog barks all night. What should I do about it?",
)


def _decode(model, tokenizer, head, rewards, prompts, config: DemoConfig) -> dict[str, tuple]:
    """method -> (responses, raw rewards (n, G), z-scores (n, G), RMOD trace or None, seconds)."""
    import torch

    from ..config import RMODConfig
    from ..rewards import score_rewards
    from .io import encode_prompts
    from .summary import reward_normalization

    enc = encode_prompts(tokenizer, prompts).to(model.device)
    prompt_len = enc["input_ids"].shape[1]
    common = dict(max_new_tokens=config.max_new_tokens, **DEFAULT_SAMPLING)
    rmod = dict(value_model=head, num_candidates=config.num_candidates, block_size=config.block_size, lam=config.lam)
    methods = {
        "reference": None,
        "uniform": RMODConfig(weights="uniform", **rmod),
        f"rmod (λ={config.lam})": RMODConfig(**rmod),
    }
    means, stds = reward_normalization(head, head.objectives)
    mean = torch.tensor([means[g] for g in head.objectives])
    std = torch.tensor([stds[g] for g in head.objectives])
    results = {}
    for name, cfg in methods.items():
        torch.manual_seed(config.seed)
        start = time.perf_counter()
        print(f"\nDecoding with {name} ...", flush=True)
        if cfg is None:
            sequences, trace = model.generate(**enc, **common), None
        else:
            trace = model.generate(**enc, rmod_config=cfg, return_dict_in_generate=True, **common)
            sequences = trace.sequences
        responses = tokenizer.batch_decode(sequences[:, prompt_len:], skip_special_tokens=True)
        raw, _ = score_rewards(rewards, prompts, responses, objectives=head.objectives)
        raw = raw.cpu()
        z = (raw - mean) / std  # (n, G) in units of the reference policy's reward spread
        results[name] = (responses, raw, z, trace, time.perf_counter() - start)
    return results


def _report(prompts, objectives, results) -> None:
    for i, prompt in enumerate(prompts):
        print("\n" + "=" * 100 + f"\nPROMPT {i + 1}: {prompt}")
        for name, (responses, raw, z, trace, _) in results.items():
            scores = ", ".join(f"{g}={raw[i, j]:+.3f} (z={z[i, j]:+.2f})" for j, g in enumerate(objectives))
            print(f"\n[{name}] {scores}, worst-case z={z[i].min():+.2f}\n  {responses[i].strip()!r}")
            if trace is not None and name.startswith("rmod"):
                blocks = int(trace.block_mask[i].sum())
                rows = [" ".join(f"{w:.2f}" for w in trace.weights[i, n].tolist()) for n in range(blocks)]
                print(f"  weight trace per block ({'/'.join(trace.objectives)}): " + " | ".join(rows))
    print("\n" + "=" * 100 + "\nSummary over the prompts (z = reward standardised with the value model's "
          "statistics of reference-policy responses):")
    print(f"{'method':<18}" + "".join(f"{g + ' z':>14}" for g in objectives) + f"{'worst-case z':>15}{'seconds':>10}")
    for name, (_, _, z, _, seconds) in results.items():
        cols = "".join(f"{v:>14.3f}" for v in z.mean(0).tolist())
        print(f"{name:<18}{cols}{z.min(-1).values.mean().item():>15.3f}{seconds:>10.1f}")


def run_demo(model: Any, tokenizer: Any, head: Any, rewards: Any, config: DemoConfig | None = None) -> dict:
    """Decode ``config.prompt`` (default: :data:`DEMO_PROMPTS`) with reference sampling, UNIFORM and RMOD and
    print the responses, their rewards (raw and z-scored), RMOD's weight trace and a summary table.

    ``model`` must be enabled (:func:`hf_rmod.enable`); ``head`` is the value model (a value head or a normalised RewardValueModel), ``rewards`` the reward
    functions of its objectives. Returns ``{method: (responses, raw (n, G), z (n, G), trace, seconds)}``.
    """
    config = config if config is not None else DemoConfig()
    prompts = list(config.prompt or DEMO_PROMPTS)
    start = time.perf_counter()
    results = _decode(model, tokenizer, head, rewards, prompts, config)
    _report(prompts, head.objectives, results)
    print(f"\nDecoding took {time.perf_counter() - start:.1f}s. RMOD maximises the worst objective per block; "
          "with only a few prompts the numbers are noisy — see `hf-rmod evaluate` for the full comparison.")
    return results
