"""`python -m benchmarks`: every benchmark in one process, a table of side-by-side ratios and a JSON file.

    python -m benchmarks                      # default grid on SmolLM2-135M-Instruct (10-20 min on 2 cores)
    python -m benchmarks --quick              # tiny random Llama, reduced settings (well under a minute)
    python -m benchmarks --only vs_sampling,vs_uniform --reps 5
    python -m benchmarks --full-grid          # every vs_sampling setting of K, B, T, batch (slow)
    python -m benchmarks --only compiled      # static cache + torch.compile: RMOD vs eager RMOD vs generate
    python -m benchmarks --device cuda --dtype bfloat16 --only vs_sampling,solver   # on a GPU (gpu_check.sh)

See docs/benchmarks.md for what each section measures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "latest.json"


def _parse_args(argv: list[str] | None):
    from .decoding import SECTIONS

    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny random Llama and reduced settings (for CI: checks it runs, not speed)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--reps", type=int, default=None,
                        help="timed repetitions per side after the warm-up (default 3; 2 with --quick)")
    parser.add_argument("--only", type=str, default=None,
                        help=f"comma-separated sections to run, from: {','.join(SECTIONS)}")
    parser.add_argument("--full-grid", action="store_true",
                        help="vs_sampling over K in {4,16}, B in {4,16}, T in {128,256}, batch in {1,8}")
    parser.add_argument("--device", type=str, default="cpu", help="where the policy runs (default cpu; e.g. cuda)")
    parser.add_argument("--dtype", type=str, default="float32", choices=["float32", "bfloat16", "float16"],
                        help="policy weight dtype (default float32)")
    parser.add_argument("--random-weights", action="store_true",
                        help="SmolLM2-135M's architecture with random weights and random 32-token prompts (no GGUF "
                             "file or tokenizer needed; same compute per token)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"JSON file (default {DEFAULT_OUTPUT})")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.reps is None:
        args.reps = 2 if args.quick else 3
    if args.reps < 1:
        parser.error(f"--reps must be >= 1, got {args.reps}")
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in SECTIONS]
        if unknown:
            parser.error(f"--only: unknown sections {unknown}; choose from {list(SECTIONS)}")
        args.sections = [n for n in SECTIONS if n in names]
    else:
        args.sections = list(SECTIONS)
    return args


def _clean(x):
    """JSON-safe copy: tensors to lists, non-finite floats to strings."""
    import torch

    if isinstance(x, torch.Tensor):
        return _clean(x.tolist())
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore")
    args = _parse_args(argv)

    import torch

    from .common import format_table, load_average, load_setup, machine_description, row_dict
    from .decoding import SECTIONS, Context

    torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    started = time.perf_counter()
    load_before = load_average()
    log(f"loading the policy ({'tiny random Llama' if args.quick else 'SmolLM2-135M-Instruct'}, {args.dtype}, "
        f"{args.device}) ...")
    setup = load_setup(args.quick, device=args.device, dtype=args.dtype, random_weights=args.random_weights)
    ctx = Context(setup=setup, reps=args.reps, full_grid=args.full_grid, threads=args.threads, log=log)

    rows, section_seconds, errors = [], {}, {}

    def report(finished: bool) -> dict:
        return {
            "command": "python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv),
            "finished": finished,
            "quick": args.quick,
            "model": setup.name,
            "device": args.device,
            "dtype": args.dtype,
            "random_weights": args.random_weights,
            "reps": args.reps,
            "full_grid": args.full_grid,
            "sections": args.sections,
            "machine": machine_description(),
            "load_before": load_before,
            "load_after": load_average(),
            "rows": [row_dict(r) for r in rows],
            "extra": ctx.raw,
            "section_seconds": section_seconds,
            "errors": errors,
            "total_seconds": time.perf_counter() - started,
        }

    def write(data: dict) -> None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(_clean(data), indent=2))

    for name in args.sections:
        log(f"[{name}]")
        t0 = time.perf_counter()
        try:
            rows.extend(SECTIONS[name](ctx))
        except Exception as err:  # keep the other sections' numbers; reported and exit code 1
            errors[name] = f"{type(err).__name__}: {err}"
            log(f"  FAILED: {errors[name]}")
        section_seconds[name] = time.perf_counter() - t0
        log(f"  ({section_seconds[name]:.0f} s)")
        write(report(finished=False))  # partial results survive an interrupted run

    table = format_table(rows)
    print(f"\nRatios measured side by side (A B A B ..., medians of {args.reps} reps after a warm-up); "
          f"model: {setup.name}\n")
    print(table)
    if "solver_benchmark" in ctx.raw:
        bench = ctx.raw["solver_benchmark"]
        print("\nbenchmarks.solver: " + (bench if isinstance(bench, str) else "run; its output is in the JSON under "
                                        "extra.solver_benchmark"))

    final = report(finished=True)
    write(final)
    print(f"\nwrote {args.output} ({final['total_seconds']:.0f} s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
