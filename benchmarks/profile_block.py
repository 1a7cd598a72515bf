"""Where RMOD's extra time per block goes: torch.profiler over one RMOD generate and one plain K-way sampling run.

    python -m benchmarks.profile_block --device cuda --dtype bfloat16 --random-weights   # on a GPU
    python -m benchmarks.profile_block --quick                                           # tiny model, CPU

Both runs sample the same batch x K x T tokens (fixed length, no EOS). Printed: wall time of each (after a
warm-up), the aten ops, CUDA kernel launches and host syncs (``aten::_local_scalar_dense`` / ``aten::item``,
``cudaStreamSynchronize``, ``cudaMemcpy*``) of each run, their difference per RMOD block, and the ops whose
count or self CPU time RMOD adds most. ``--output`` writes the same numbers as JSON. Diagnostic only: the ratios
the project reports come from ``python -m benchmarks``.
"""

from __future__ import annotations

import argparse
import collections
import json

import torch

from .common import (fixed_length_kwargs, load_setup, plain_sampling_kwargs, rmod_config, seeded,
                     shared_trunk_head, timed)

_SYNC_NAMES = ("aten::_local_scalar_dense", "cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpy",
               "cudaMemcpyAsync", "cudaEventSynchronize")


def _profile(fn, device: torch.device) -> tuple[float, collections.Counter, collections.Counter]:
    """(wall seconds, op count by name, self CPU microseconds by name) of one call of fn."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        wall = timed(fn)[0]
    counts, self_us = collections.Counter(), collections.Counter()
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CPU:
            counts[event.name] += 1
            self_us[event.name] += event.self_cpu_time_total
    return wall, counts, self_us


def _summary(counts: collections.Counter) -> dict:
    return {
        "aten_ops": sum(n for name, n in counts.items() if name.startswith("aten::")),
        "kernel_launches": counts["cudaLaunchKernel"] + counts["cudaLaunchKernelExC"] + counts["cuLaunchKernel"],
        "syncs": {name: counts[name] for name in _SYNC_NAMES if counts[name]},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny random Llama")
    parser.add_argument("--random-weights", action="store_true", help="SmolLM2-135M's architecture, random weights")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--b", type=int, default=4)
    parser.add_argument("--t", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--top", type=int, default=25, help="ops listed")
    parser.add_argument("--output", default=None, help="JSON file for the numbers")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    setup = load_setup(args.quick, device=args.device, dtype=args.dtype, random_weights=args.random_weights)
    model, device = setup.model, setup.device
    head = shared_trunk_head(model).to(device)
    ids, mask = setup.prompts(args.batch)
    cfg = rmod_config(head, args.k, args.b)
    rmod = seeded(lambda: model.generate(ids, attention_mask=mask, rmod_config=cfg, **fixed_length_kwargs(args.t)))
    plain_kw = plain_sampling_kwargs(args.t, model)
    plain = seeded(lambda: model.generate(ids, attention_mask=mask, num_return_sequences=args.k, **plain_kw))
    for fn in (rmod, plain, rmod, plain):  # warm-up
        fn()
    walls = {"rmod": [timed(rmod)[0] for _ in range(2)], "sampling": [timed(plain)[0] for _ in range(2)]}
    wall_r, counts_r, self_r = _profile(rmod, device)
    wall_p, counts_p, self_p = _profile(plain, device)
    blocks = -(-args.t // args.b)
    out = {
        "setup": setup.name, "K": args.k, "B": args.b, "T": args.t, "batch": args.batch, "blocks": blocks,
        "wall_unprofiled_s": walls, "wall_profiled_s": {"rmod": wall_r, "sampling": wall_p},
        "rmod": _summary(counts_r), "sampling": _summary(counts_p),
    }
    extra_count = {n: counts_r[n] - counts_p[n] for n in counts_r if counts_r[n] - counts_p[n] > 0}
    extra_us = {n: self_r[n] - self_p[n] for n in self_r if self_r[n] - self_p[n] > 0}
    out["extra_per_block"] = {
        "aten_ops": (out["rmod"]["aten_ops"] - out["sampling"]["aten_ops"]) / blocks,
        "kernel_launches": (out["rmod"]["kernel_launches"] - out["sampling"]["kernel_launches"]) / blocks,
        "wall_ms": 1000 * (min(walls["rmod"]) - min(walls["sampling"])) / blocks,
    }
    top_count = sorted(extra_count.items(), key=lambda kv: -kv[1])[: args.top]
    top_time = sorted(extra_us.items(), key=lambda kv: -kv[1])[: args.top]
    out["extra_ops_by_count"] = [{"name": n, "count": c, "per_block": c / blocks} for n, c in top_count]
    out["extra_ops_by_self_cpu_ms"] = [{"name": n, "ms": us / 1000, "per_block_ms": us / 1000 / blocks}
                                       for n, us in top_time]
    print(json.dumps({k: out[k] for k in ("setup", "K", "B", "T", "batch", "blocks", "wall_unprofiled_s",
                                          "rmod", "sampling", "extra_per_block")}, indent=1))
    print(f"\nops RMOD adds, by count (per block of {args.b} tokens):")
    for row in out["extra_ops_by_count"]:
        print(f"  {row['per_block']:8.1f}  {row['name']}")
    print("\nops RMOD adds, by self CPU time (ms per block):")
    for row in out["extra_ops_by_self_cpu_ms"]:
        print(f"  {row['per_block_ms']:8.3f}  {row['name']}")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            json.dump(out, handle, indent=1)
    return out


if __name__ == "__main__":
    main()
