"""The decoding benchmark sections: RMOD against plain sampling, UNIFORM, the naive baseline, ...

Each section is a function ``section(ctx) -> list[Row]`` measuring A against B side by side
(`benchmarks.common.alternate`). `SECTIONS` lists them in the order they run.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .common import (
    Row,
    Setup,
    alternate,
    fixed_length_kwargs,
    own_backbone_head,
    plain_sampling_kwargs,
    rmod_config,
    seeded,
    shared_trunk_head,
    timed,
    tiny_llama,
)
from .naive import naive_rmod_generate, reencoding_scorer_factory


@dataclass(frozen=True)
class Setting:
    """K candidates, blocks of B tokens, T new tokens, `batch` prompts."""

    K: int
    B: int
    T: int
    batch: int

    def __str__(self) -> str:
        return f"K={self.K},B={self.B},T={self.T},batch={self.batch}"


@dataclass
class Context:
    setup: Setup
    reps: int
    full_grid: bool = False
    threads: int = 2
    log: Callable[[str], None] = print
    raw: dict = field(default_factory=dict)  # extra raw numbers per section, written to the JSON
    _head: Any = None
    _shared_runs: dict = field(default_factory=dict)

    @property
    def quick(self) -> bool:
        return self.setup.quick

    @property
    def head(self):
        if self._head is None:
            self._head = shared_trunk_head(self.setup.model)
        return self._head


# ---------------------------------------------------------------------------------------------- settings
def _default(quick: bool, full: Setting) -> Setting:
    return Setting(4, 4, 16, 1) if quick else full


def sampling_settings(ctx: Context) -> list[Setting]:
    if ctx.quick:
        return [Setting(4, 4, 16, 1), Setting(4, 8, 16, 2)]
    if ctx.full_grid:
        return [Setting(K, B, T, n) for K in (4, 16) for B in (4, 16) for T in (128, 256) for n in (1, 8)]
    # Default subset: the paper's K=B=16; small blocks (most cache reorders per token); a batch of 8.
    return [Setting(16, 16, 128, 1), Setting(16, 4, 128, 1), Setting(4, 16, 128, 8)]


def naive_settings(ctx: Context) -> list[Setting]:
    if ctx.quick:
        return [Setting(4, 4, 16, 1)]
    return [Setting(8, 16, 128, 1), Setting(8, 16, 256, 1), Setting(8, 16, 256, 4)]


# ---------------------------------------------------------------------------------------------- runners
def _prompts(ctx: Context, s: Setting):
    return ctx.setup.prompts(s.batch)


def _rmod_fn(ctx: Context, s: Setting, head=None, weights: str = "robust", streamer=None, T: int | None = None,
             return_dict: bool = False, scorer_factory=None):
    import hf_rmod

    model = ctx.setup.model
    ids, mask = _prompts(ctx, s)
    cfg = rmod_config(ctx.head if head is None else head, s.K, s.B, weights=weights)
    kw = fixed_length_kwargs(s.T if T is None else T)
    if scorer_factory is not None:
        kw["custom_generate"] = hf_rmod.RobustMultiObjectiveGenerator(scorer_factory=scorer_factory)

    def run():
        return model.generate(ids, attention_mask=mask, rmod_config=cfg, streamer=streamer,
                              return_dict_in_generate=return_dict, **kw)

    return seeded(run)


def _sampling_fn(ctx: Context, s: Setting, T: int | None = None):
    model = ctx.setup.model
    ids, mask = _prompts(ctx, s)
    kw = plain_sampling_kwargs(s.T if T is None else T, model)

    def run():
        return model.generate(ids, attention_mask=mask, num_return_sequences=s.K, **kw)

    return seeded(run)


def _naive_fn(ctx: Context, s: Setting, head=None, T: int | None = None):
    model = ctx.setup.model
    ids, mask = _prompts(ctx, s)
    head = ctx.head if head is None else head
    kw = fixed_length_kwargs(s.T if T is None else T)

    def run():
        return naive_rmod_generate(model, ids, mask, head, num_candidates=s.K, block_size=s.B, **kw)

    return seeded(run)


def _token_check(ctx: Context, s: Setting, rows_by_label: dict[str, int]):
    prompt_len = _prompts(ctx, s)[0].shape[1]
    vocab = ctx.setup.vocab_size

    def check(label: str, out):
        seq = out.sequences if hasattr(out, "sequences") else out
        expected = (rows_by_label[label], prompt_len + s.T)
        if tuple(seq.shape) != expected:
            raise RuntimeError(f"{label} produced ids of shape {tuple(seq.shape)}, expected {expected} ({s})")
        if int(seq.min()) < 0 or int(seq.max()) >= vocab:
            raise RuntimeError(f"{label} produced token ids outside the vocabulary ({s})")

    return check


def _row(section: str, setting: Any, a: str, b: str, result: dict, target: str, **raw) -> Row:
    return Row(section=section, setting=str(setting), a=a, b=b, median_a_s=result["median_a_s"],
               median_b_s=result["median_b_s"], ratio=result["ratio"], target=target, raw={**result, **raw})


# ---------------------------------------------------------------------------------------------- sections
def vs_sampling(ctx: Context) -> list[Row]:
    """RMOD (shared-trunk head) vs generate(num_return_sequences=K): both sample batch*K*T tokens."""
    rows = []
    for s in sampling_settings(ctx):
        ctx.log(f"  vs_sampling {s}")
        res = alternate(
            _rmod_fn(ctx, s), _sampling_fn(ctx, s), ctx.reps,
            warmup_a=_rmod_fn(ctx, s, T=s.B), warmup_b=_sampling_fn(ctx, s, T=s.B),
            log=ctx.log, check=_token_check(ctx, s, {"A": s.batch, "B": s.batch * s.K}),
        )
        rows.append(_row("vs_sampling", s, "RMOD", "sampling", res, "<= 1.0", sampled_tokens=s.batch * s.K * s.T))
    return rows


class TimestampStreamer:
    """A streamer whose put() records when each chunk arrived (the first put is the prompt)."""

    def __init__(self):
        self.times: list[float] = []
        self.start = 0.0

    def reset(self):
        self.times = []
        self.start = time.perf_counter()

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass

    def latencies(self) -> tuple[float, list[float]]:
        """(time to the first block, [seconds between later blocks])."""
        blocks = self.times[1:]  # drop the prompt
        if not blocks:
            return float("nan"), []
        return blocks[0] - self.start, [b - a for a, b in zip(blocks, blocks[1:])]


def _uniform_and_latency(ctx: Context) -> dict:
    """RMOD vs UNIFORM side by side with a timestamping streamer; shared by vs_uniform and latency."""
    if "uniform" in ctx._shared_runs:
        return ctx._shared_runs["uniform"]
    s = _default(ctx.quick, Setting(16, 16, 128, 1))
    ctx.log(f"  RMOD vs UNIFORM {s} (timestamping streamer)")
    streamers = {"RMOD": TimestampStreamer(), "UNIFORM": TimestampStreamer()}
    lat: dict[str, dict[str, list]] = {k: {"first_block_s": [], "per_block_s": [], "values": None} for k in streamers}

    def make(label: str, weights: str):
        st = streamers[label]
        fn = _rmod_fn(ctx, s, weights=weights, streamer=st, return_dict=True)

        def run():
            st.reset()
            out = fn()
            first, per_block = st.latencies()
            lat[label]["first_block_s"].append(first)
            lat[label]["per_block_s"].extend(per_block)
            lat[label]["values"] = out.values  # (batch, n_blocks, K, G), for the solver section
            return out

        return run

    run_a, run_b = make("RMOD", "robust"), make("UNIFORM", "uniform")
    res = alternate(run_a, run_b, ctx.reps, warmup_a=_rmod_fn(ctx, s, T=s.B),
                    warmup_b=_rmod_fn(ctx, s, weights="uniform", T=s.B),
                    log=ctx.log, check=_token_check(ctx, s, {"A": s.batch, "B": s.batch}))
    ctx._shared_runs["uniform"] = {"setting": s, "result": res, "latency": lat}
    return ctx._shared_runs["uniform"]


def vs_uniform(ctx: Context) -> list[Row]:
    """RMOD vs UNIFORM (weights='uniform', no solver) with the same head: the cost of the solver."""
    shared = _uniform_and_latency(ctx)
    return [_row("vs_uniform", shared["setting"], "RMOD", "UNIFORM", shared["result"], "<= 1.03")]


def latency(ctx: Context) -> list[Row]:
    """Time to the first block and per-block latency, RMOD vs UNIFORM (paper Fig. 10)."""
    shared = _uniform_and_latency(ctx)
    s, lat = shared["setting"], shared["latency"]
    rows = []
    for key, name in (("first_block_s", "time to first block"), ("per_block_s", "per-block latency")):
        a, b = lat["RMOD"][key], lat["UNIFORM"][key]
        res = {"a_s": a, "b_s": b, "median_a_s": statistics.median(a), "median_b_s": statistics.median(b)}
        res["ratio"] = res["median_a_s"] / res["median_b_s"]
        rows.append(_row("latency", f"{s}: {name}", "RMOD", "UNIFORM", res, "<= 1.05"))
    return rows


def vs_naive(ctx: Context) -> list[Row]:
    """The naive authors'-code-style baseline (benchmarks/naive.py) vs RMOD: the speed-up."""
    rows = []
    reps = max(1, min(ctx.reps, 2)) if not ctx.quick else ctx.reps
    for s in naive_settings(ctx):
        ctx.log(f"  vs_naive {s} (reps={reps})")
        res = alternate(
            _naive_fn(ctx, s), _rmod_fn(ctx, s), reps,
            warmup_a=_naive_fn(ctx, s, T=s.B), warmup_b=_rmod_fn(ctx, s, T=s.B),
            log=ctx.log, check=_token_check(ctx, s, {"A": s.batch, "B": s.batch}),
        )
        target = ">= 5" if s.T >= 256 else ">= 1"
        rows.append(_row("vs_naive", s, "naive baseline", "RMOD", res, target))
    return rows


def own_backbone(ctx: Context) -> list[Row]:
    """Own-backbone GPT2-style value model: re-encoding every candidate each block vs its KV cache."""
    s = _default(ctx.quick, Setting(16, 16, 128, 1))
    ctx.log(f"  own_backbone {s}")
    head = own_backbone_head(ctx.setup.vocab_size, ctx.quick).to(ctx.setup.device)
    cached, cached_warm = _rmod_fn(ctx, s, head=head), _rmod_fn(ctx, s, head=head, T=s.B)
    reencoded = _rmod_fn(ctx, s, head=head, scorer_factory=reencoding_scorer_factory)
    reencoded_warm = _rmod_fn(ctx, s, head=head, T=s.B, scorer_factory=reencoding_scorer_factory)
    res = alternate(reencoded, cached, ctx.reps, warmup_a=reencoded_warm, warmup_b=cached_warm,
                    log=ctx.log, check=_token_check(ctx, s, {"A": s.batch, "B": s.batch}))
    backbone = head.backbone.config
    return [_row("own_backbone", s, "RMOD, value model re-encodes", "RMOD, cached value model", res, "> 1",
                 value_model=f"GPT2 n_layer={backbone.n_layer} n_embd={backbone.n_embd} vocab={backbone.vocab_size}")]


def solver(ctx: Context) -> list[Row]:
    """The solver's share of one block: solve_weights on a block's (batch, K, G) values vs block time."""
    from hf_rmod import solve_weights

    shared = _uniform_and_latency(ctx)
    s, lat = shared["setting"], shared["latency"]["RMOD"]
    values = lat["values"]  # (batch, n_blocks, K, G)
    per_call = []
    for rep in range(max(3, ctx.reps)):
        for i in range(values.shape[1]):
            block_values = values[:, i].contiguous()  # (batch, K, G)
            t, _ = timed(lambda: solve_weights(block_values, 0.5))
            per_call.append(t)
    block_s = lat["per_block_s"] or lat["first_block_s"]
    res = {"a_s": per_call, "b_s": block_s, "median_a_s": statistics.median(per_call),
           "median_b_s": statistics.median(block_s)}
    res["ratio"] = res["median_a_s"] / res["median_b_s"]
    rows = [_row("solver", f"{s}: solve_weights / block", "solve_weights", "RMOD block", res, "< 0.01")]
    try:
        import benchmarks.solver as solver_bench
    except ModuleNotFoundError as err:
        if err.name not in ("benchmarks.solver",):
            raise
        ctx.raw["solver_benchmark"] = "skipped: benchmarks/solver.py is not present"
        ctx.log("  benchmarks.solver not present: skipped")
    else:
        ctx.log("  benchmarks.solver.run(...)")
        ctx.raw["solver_benchmark"] = solver_bench.run(quick=ctx.quick)
    return rows


# ---------------------------------------------------------------------------------------------- memory
def memory(ctx: Context) -> list[Row]:
    """Peak RSS growth of one RMOD run vs one plain sampling run, each in a fresh subprocess."""
    s = _default(ctx.quick, Setting(16, 16, 128, 1))
    ids, mask = _prompts(ctx, s)
    reps = 1 if not ctx.quick else 1
    with tempfile.TemporaryDirectory(prefix="hf_rmod_bench_") as tmp:
        model_dir = None
        if not ctx.quick:
            model_dir = os.path.join(tmp, "policy")
            _save_plain_copy(ctx.setup.model, model_dir)  # the child loads safetensors, not the GGUF (fast)
        spec = {"quick": ctx.quick, "model_dir": model_dir, "K": s.K, "B": s.B, "T": s.T, "threads": ctx.threads,
                "ids": ids.tolist(), "mask": mask.tolist()}
        out: dict[str, list[dict]] = {"rmod": [], "sampling": []}
        for _ in range(reps):
            for variant in ("rmod", "sampling"):
                ctx.log(f"  memory {variant} {s} (fresh subprocess)")
                out[variant].append(_run_memory_child({**spec, "variant": variant}))
    a = [r["peak_delta_mib"] for r in out["rmod"]]
    b = [r["peak_delta_mib"] for r in out["sampling"]]
    res = {"a_s": a, "b_s": b, "median_a_s": statistics.median(a), "median_b_s": statistics.median(b)}
    res["ratio"] = res["median_a_s"] / res["median_b_s"] if res["median_b_s"] > 0 else float("nan")
    kv = _kv_cache_mib(ctx.setup.model.config, rows=s.batch * s.K, length=ids.shape[1] + s.T)
    row = _row("memory", f"{s}: peak RSS growth", "RMOD", "sampling", res, "<= 1.1", children=out,
               kv_cache_mib_analytic=kv,
               method="peak RSS (VmHWM, reset via /proc/self/clear_refs) minus RSS before the run, one fresh "
                      "subprocess per variant, after loading the policy and a one-token warm-up run")
    row.unit = "MiB"
    return [row]


def _kv_cache_mib(config, rows: int, length: int) -> float:
    """Final KV-cache size: layers * 2 (K, V) * rows * kv_heads * head_dim * length * 4 bytes (fp32)."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_hidden_layers * 2 * rows * heads * head_dim * length * 4 / 2**20


def _run_memory_child(spec: dict) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.decoding", "--memory-child", json.dumps(spec)],
                          capture_output=True, text=True, cwd=root, env=env, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _proc_status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _save_plain_copy(model, model_dir: str) -> None:
    """config.json + model.safetensors of an in-memory model. ``save_pretrained`` refuses GGUF-loaded models
    (their de-quantised weights are plain fp32 tensors, but the quantizer marks them not serializable)."""
    from safetensors.torch import save_model

    os.makedirs(model_dir, exist_ok=True)
    model.config.save_pretrained(model_dir)
    save_model(model, os.path.join(model_dir, "model.safetensors"), metadata={"format": "pt"})


def _memory_child(spec: dict) -> dict:
    """Runs in a fresh interpreter: load the policy, reset the RSS high-water mark, decode once."""
    torch.set_num_threads(spec["threads"])
    if spec["quick"]:
        model = tiny_llama()
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32).eval()
    import hf_rmod

    hf_rmod.enable(model)
    head = shared_trunk_head(model)
    ids, mask = torch.tensor(spec["ids"]), torch.tensor(spec["mask"])
    cfg = rmod_config(head, spec["K"], spec["B"])

    def run(T: int):
        if spec["variant"] == "rmod":
            return model.generate(ids, attention_mask=mask, rmod_config=cfg, **fixed_length_kwargs(T))
        return model.generate(ids, attention_mask=mask, num_return_sequences=spec["K"],
                              **plain_sampling_kwargs(T, model))

    with torch.no_grad():
        run(1)  # one-token warm-up: lazy imports and first-call setup, not counted
    reset = True
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current RSS
    except OSError:
        reset = False
    base_kib = _proc_status_kib("VmRSS")
    torch.manual_seed(0)
    with torch.no_grad():
        t, out = timed(lambda: run(spec["T"]))
    peak_kib = _proc_status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"variant": spec["variant"], "base_rss_mib": base_kib / 1024, "peak_rss_mib": peak_kib / 1024,
            "peak_delta_mib": (peak_kib - base_kib) / 1024, "hwm_reset": reset, "seconds": t,
            "shape": list(out.shape)}


# ---------------------------------------------------------------------------------------------- compiled
def compiled_settings(ctx: Context) -> Setting:
    return Setting(2, 4, 8, 1) if ctx.quick else Setting(8, 16, 64, 2)


def _compile_config(ctx: Context):
    """generate's CompileConfig for this run: inductor (CUDA graphs on CUDA); the eager backend with --quick."""
    from transformers import CompileConfig

    if ctx.quick:  # checks the plumbing in seconds: inductor needs ~50 s to compile even the tiny model
        cc = CompileConfig(backend="eager", mode=None)
    elif ctx.setup.device.type == "cuda":
        cc = CompileConfig()  # inductor, mode="reduce-overhead": CUDA graphs
    else:
        cc = CompileConfig(mode="default")  # CUDA graphs do not exist on the CPU
    cc._compile_all_devices = True  # transformers compiles on accelerators only unless asked
    return cc


def compiled(ctx: Context) -> list[Row]:
    """Static cache + compiled forward: RMOD vs plain `generate` with the same compile settings, and vs eager RMOD."""
    s = compiled_settings(ctx)
    cc = _compile_config(ctx)
    model = ctx.setup.model
    ids, mask = _prompts(ctx, s)
    cfg = rmod_config(ctx.head, s.K, s.B)
    static = dict(cache_implementation="static", compile_config=cc)

    def rmod_compiled(T=s.T):
        return model.generate(ids, attention_mask=mask, rmod_config=cfg, **static, **fixed_length_kwargs(T))

    def gen_compiled(T=s.T):
        return model.generate(ids, attention_mask=mask, num_return_sequences=s.K, **static,
                              **plain_sampling_kwargs(T, model))

    def rmod_eager(T=s.T):
        return model.generate(ids, attention_mask=mask, rmod_config=cfg, **fixed_length_kwargs(T))

    # compile outside the timed runs; the static caches are sized once (max_length of the longest run)
    compile_s = {}
    for label, fn in (("RMOD compiled", rmod_compiled), ("generate compiled", gen_compiled)):
        ctx.log(f"  compiling: {label} {s}")
        t, _ = timed(seeded(fn))
        compile_s[label] = t
    ctx.raw["compiled"] = {"compile_config": {k: str(v) for k, v in cc.to_dict().items()},
                           "first_call_s": compile_s}
    rows = []
    ctx.log(f"  compiled: RMOD vs generate {s}")
    res = alternate(seeded(rmod_compiled), seeded(gen_compiled), ctx.reps, warmup_a=seeded(rmod_compiled),
                    warmup_b=seeded(gen_compiled), log=ctx.log,
                    check=_token_check(ctx, s, {"A": s.batch, "B": s.batch * s.K}))
    rows.append(_row("compiled", s, "RMOD compiled", "generate compiled", res, "<= 1.0",
                     first_call_s=compile_s, backend=str(cc.backend), mode=str(cc.mode)))
    ctx.log(f"  compiled: RMOD compiled vs RMOD eager {s}")
    res = alternate(seeded(rmod_compiled), seeded(rmod_eager), ctx.reps, warmup_a=seeded(rmod_compiled),
                    warmup_b=seeded(lambda: rmod_eager(s.B)), log=ctx.log,
                    check=_token_check(ctx, s, {"A": s.batch, "B": s.batch}))
    rows.append(_row("compiled", s, "RMOD compiled", "RMOD eager", res, "report",
                     backend=str(cc.backend), mode=str(cc.mode)))
    return rows


def top_p(ctx: Context) -> list[Row]:
    """Plain sampling with top-p 0.9 (temperature 0.7): the partial-sort top-p the sampler uses
    (hf_rmod.logits_process, via hf_rmod.experiments.sampling) vs transformers' TopPLogitsWarper (full sort)."""
    from hf_rmod.logits_process import partial_sort_top_p_kwargs

    model = ctx.setup.model
    s = _default(ctx.quick, Setting(8, 16, 64, 4))
    ids, mask = _prompts(ctx, s)
    base = {**fixed_length_kwargs(s.T), "do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 0,
            "num_return_sequences": s.K}
    fast = partial_sort_top_p_kwargs(base)

    def run(kw):
        return seeded(lambda: model.generate(ids, attention_mask=mask, **kw))

    ctx.log(f"  top_p {s} (rows = batch * K = {s.batch * s.K})")
    res = alternate(run(fast), run(base), ctx.reps, log=ctx.log,
                    check=_token_check(ctx, s, {"A": s.batch * s.K, "B": s.batch * s.K}))
    return [_row("top_p", s, "partial-sort top-p", "transformers top-p", res, "< 1.0")]


# Run order: the cheap sections first, the naive baseline (by far the slowest) last.
SECTIONS: dict[str, Callable[[Context], list[Row]]] = {
    "vs_sampling": vs_sampling,
    "vs_uniform": vs_uniform,
    "latency": latency,
    "solver": solver,
    "top_p": top_p,
    "compiled": compiled,
    "own_backbone": own_backbone,
    "memory": memory,
    "vs_naive": vs_naive,
}


if __name__ == "__main__":  # the memory section's child process
    if len(sys.argv) == 3 and sys.argv[1] == "--memory-child":
        print(json.dumps(_memory_child(json.loads(sys.argv[2]))))
    else:
        raise SystemExit("usage: python -m benchmarks  (this module only runs the memory child itself)")
