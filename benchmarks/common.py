"""Shared helpers of the benchmarks: models, prompts, side-by-side timing, the results table.

Every comparison is measured *side by side* in one process: after one warm-up call of each
variant, A and B alternate (A B A B ...) and the medians of the repetitions are compared. On a
shared machine absolute seconds drift with the load; the A/B ratio of interleaved runs is what
the benchmarks report.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from hf_rmod.experiments.configs import DEFAULT_SAMPLING

OBJECTIVES = ["harmless", "helpful"]
SAMPLING = dict(DEFAULT_SAMPLING)  # the one sampling default (demo, training data, evaluation, benchmarks)

# Chat prompts of the full run (short and of different lengths: batches are left padded).
CHAT_PROMPTS = [
    "How do I make a good cup of coffee at home?",
    "Explain what a hash table is to a beginner.",
    "What should I pack for a three-day hiking trip?",
    "Write a short, polite email asking to reschedule a meeting.",
    "Why is the sky blue?",
    "Give me three tips for learning a new language.",
    "How can I tell if a website is trustworthy?",
    "Summarise the water cycle in a few sentences.",
]


# ---------------------------------------------------------------------------------------------- models
@dataclass
class Setup:
    """The policy, its tokenizer (None for the tiny model) and how prompts are built."""

    model: Any
    tokenizer: Any
    name: str
    quick: bool
    device: torch.device = torch.device("cpu")

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    def prompts(self, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, P) left-padded prompt ids and attention mask."""
        if self.tokenizer is None:
            ids, mask = tiny_prompts(batch, seed=seed, vocab=self.vocab_size,
                                     length=8 if self.quick else RANDOM_PROMPT_LEN)
            return ids.to(self.device), mask.to(self.device)
        from hf_rmod.defaults import build_chat_prompts

        texts = [CHAT_PROMPTS[(seed + i) % len(CHAT_PROMPTS)] for i in range(batch)]
        enc = build_chat_prompts(self.tokenizer, texts)
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)


TINY_VOCAB = 97
TINY_PAD, TINY_EOS, TINY_BOS = 0, 1, 2


def tiny_llama(seed: int = 0):
    """A tiny random Llama built from a config (no files), eval mode, fp32."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, pad_token_id=TINY_PAD, eos_token_id=TINY_EOS,
        bos_token_id=TINY_BOS,
    )
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = TINY_PAD
    model.generation_config.eos_token_id = TINY_EOS
    return model.eval()


def tiny_prompts(batch: int, length: int = 8, seed: int = 0,
                 vocab: int = TINY_VOCAB) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (batch, length) prompt ids avoiding special tokens, with left padding on some rows."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    for b in range(batch):
        pad = b % 3
        ids[b, :pad] = TINY_PAD
        mask[b, :pad] = 0
    return ids, mask


# SmolLM2-135M-Instruct's architecture, as read from the embedded GGUF (AutoConfig.from_pretrained(..., gguf_file=)).
SMOLLM2_135M_SHAPE = dict(
    hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
    vocab_size=49152, max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=True,
    rope_parameters={"rope_theta": 100000.0, "rope_type": "default"}, bos_token_id=1, eos_token_id=2, pad_token_id=2,
)
RANDOM_PROMPT_LEN = 32  # about the length of the chat-templated CHAT_PROMPTS in SmolLM2's tokenizer


def smollm2_shaped_random(seed: int = 0):
    """SmolLM2-135M's architecture with random weights: the same compute per token, no 98 MB GGUF file.

    For machines the GGUF cannot reach (a lent GPU takes at most 64 MiB of files per call): token throughput does
    not depend on the weights' values, and the benchmarks sample fixed lengths without EOS.
    """
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**SMOLLM2_135M_SHAPE))
    model.generation_config.pad_token_id = 2
    model.generation_config.eos_token_id = 2
    return model.eval()


def load_setup(quick: bool, device: str = "cpu", dtype: str = "float32", random_weights: bool = False) -> Setup:
    """Quick: a tiny random Llama. Full: SmolLM2-135M-Instruct from `load_default_policy`, on `device` in `dtype`;
    with `random_weights`, SmolLM2-135M's architecture with random weights and random prompt ids."""
    import hf_rmod

    torch_dtype = getattr(torch, dtype)
    if quick:
        model, tokenizer = tiny_llama().to(device=device, dtype=torch_dtype), None
        name = f"tiny random Llama (2 layers, hidden 64, vocab 97), {dtype}"
    elif random_weights:
        model, tokenizer = smollm2_shaped_random().to(device=device, dtype=torch_dtype), None
        name = f"SmolLM2-135M architecture, random weights, {RANDOM_PROMPT_LEN}-token prompts, {dtype}"
    else:
        from hf_rmod.defaults import DEFAULT_POLICY, load_default_policy

        model, tokenizer = load_default_policy(device=device, torch_dtype=torch_dtype)
        name = f"{DEFAULT_POLICY}, {dtype}"
    if torch.device(device).type != "cpu":
        name += f", {device}"
    hf_rmod.enable(model)
    return Setup(model=model, tokenizer=tokenizer, name=name, quick=quick, device=torch.device(device))


def shared_trunk_head(model, seed: int = 0):
    """`MultiValueHead.for_policy(model, ["harmless", "helpful"])` with random weights (timing only)."""
    from hf_rmod import MultiValueHead

    torch.manual_seed(seed)
    head = MultiValueHead.for_policy(model, objectives=OBJECTIVES)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0.0, 0.05)
    return head.eval()


def own_backbone_head(vocab_size: int, quick: bool, seed: int = 0):
    """A small random GPT2-style value model reading the policy's token ids, on its own backbone."""
    from transformers import GPT2Config, GPT2Model

    from hf_rmod import MultiValueHead

    torch.manual_seed(seed)
    if quick:
        config = GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=1024, vocab_size=vocab_size,
                            bos_token_id=0, eos_token_id=0)
    else:
        config = GPT2Config(n_layer=4, n_embd=256, n_head=4, n_positions=1024, vocab_size=vocab_size,
                            bos_token_id=0, eos_token_id=0)
    backbone = GPT2Model(config).eval()
    return MultiValueHead.from_backbone(backbone, objectives=OBJECTIVES).eval()


def fixed_length_kwargs(T: int) -> dict:
    """generate kwargs that make every row produce exactly T new tokens (no EOS stopping)."""
    return dict(max_new_tokens=T, min_new_tokens=T, eos_token_id=None, **SAMPLING)


def plain_sampling_kwargs(T: int, model) -> dict:
    """`fixed_length_kwargs` for the plain-sampling side of a comparison with RMOD: on the CPU RMOD's loop takes
    top-p from a partial sort (hf_rmod.logits_process), so plain sampling gets the same processor there
    (`hf_rmod.experiments.sampling`'s rewrite, the one `hf-rmod sample` uses) and the ratio measures RMOD's own
    work, not a faster top-p. The `top_p` section measures that difference itself."""
    from hf_rmod.logits_process import partial_sort_top_p_kwargs

    kw = fixed_length_kwargs(T)
    return partial_sort_top_p_kwargs(kw) if next(model.parameters()).device.type == "cpu" else kw


def rmod_config(head, K: int, B: int, weights: str = "robust"):
    from hf_rmod import RMODConfig

    return RMODConfig(value_model=head, num_candidates=K, block_size=B, lam=0.5, weights=weights)


# ---------------------------------------------------------------------------------------------- timing
def _device_sync() -> None:
    """Wait for queued GPU work, so that wall times cover it (a no-op on CPU-only runs)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    _device_sync()
    start = time.perf_counter()
    out = fn()
    _device_sync()
    return time.perf_counter() - start, out


def alternate(fn_a: Callable[[], Any], fn_b: Callable[[], Any], reps: int,
              warmup_a: Callable[[], Any] | None = None, warmup_b: Callable[[], Any] | None = None,
              check: Callable[[str, Any], None] | None = None,
              log: Callable[[str], None] | None = None) -> dict:
    """Run A and B alternately (A B A B ...) `reps` times each, after one warm-up call of each.

    The warm-ups default to A and B themselves (pass shorter runs to save time). Returns the raw
    seconds of every repetition and their medians. `check(label, output)` is called on the
    outputs of the first timed repetition (e.g. to assert the token count).
    """
    if reps < 1:
        raise ValueError(f"`reps` must be >= 1, got {reps}.")
    (warmup_a or fn_a)()
    (warmup_b or fn_b)()
    times_a, times_b, cpu_a, cpu_b = [], [], [], []
    for rep in range(reps):
        c = time.process_time()
        t, out_a = timed(fn_a)
        times_a.append(t)
        cpu_a.append(time.process_time() - c)
        c = time.process_time()
        t, out_b = timed(fn_b)
        times_b.append(t)
        cpu_b.append(time.process_time() - c)
        if log is not None:
            log(f"    rep {rep + 1}/{reps}: A {times_a[-1]:.3f} s (cpu {cpu_a[-1]:.1f}), "
                f"B {times_b[-1]:.3f} s (cpu {cpu_b[-1]:.1f})")
        if check is not None and rep == 0:
            check("A", out_a)
            check("B", out_b)
    med_a, med_b = statistics.median(times_a), statistics.median(times_b)
    # cpu_*_s: process CPU seconds of each repetition; far below the wall time means the process
    # was descheduled or stopped (a shared machine), which the wall-time ratio then includes.
    return {"a_s": times_a, "b_s": times_b, "cpu_a_s": cpu_a, "cpu_b_s": cpu_b, "median_a_s": med_a,
            "median_b_s": med_b, "ratio": med_a / med_b}


def seeded(fn: Callable[[], Any], seed: int = 1234) -> Callable[[], Any]:
    def run():
        torch.manual_seed(seed)
        return fn()

    return run


# ---------------------------------------------------------------------------------------------- results
@dataclass
class Row:
    """One line of the ratios table: A vs B at one setting."""

    section: str
    setting: str
    a: str
    b: str
    median_a_s: float
    median_b_s: float
    ratio: float  # A / B
    target: str  # e.g. "<= 1.0", ">= 5"
    met: bool | None = None
    raw: dict = field(default_factory=dict)
    unit: str = "s"  # of median_a_s / median_b_s ("MiB" for the memory section)

    def __post_init__(self):
        if self.met is None:
            self.met = target_met(self.ratio, self.target)


def target_met(ratio: float, target: str) -> bool | None:
    """Whether `ratio` meets a target written as '<= x', '< x', '>= x' or '> x' (None: no target)."""
    parts = target.split()
    if len(parts) != 2:
        return None
    op, value = parts[0], float(parts[1])
    return {"<=": ratio <= value, "<": ratio < value, ">=": ratio >= value, ">": ratio > value}.get(op)


def format_table(rows: list[Row]) -> str:
    header = ["section", "setting", "A", "B", "median A s", "median B s", "ratio A/B", "target", "met?"]
    body = []
    for r in rows:
        met = "-" if r.met is None else ("yes" if r.met else "NO")
        body.append([r.section, r.setting, r.a, r.b, _fmt(r.median_a_s, r.unit), _fmt(r.median_b_s, r.unit),
                     f"{r.ratio:.3f}", r.target, met])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    lines = [" | ".join(str(x).ljust(w) for x, w in zip(header, widths))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(str(x).ljust(w) for x, w in zip(row, widths)) for row in body]
    return "\n".join(lines)


def markdown_table(rows: list[Row]) -> str:
    lines = ["| section | setting | A | B | median A s | median B s | ratio A/B | target | met? |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        met = "-" if r.met is None else ("yes" if r.met else "**no**")
        lines.append(f"| {r.section} | {r.setting} | {r.a} | {r.b} | {_fmt(r.median_a_s, r.unit)} | {_fmt(r.median_b_s, r.unit)} "
                     f"| {r.ratio:.3f} | {r.target} | {met} |")
    return "\n".join(lines)


def _fmt(x: float, unit: str = "s") -> str:
    if unit != "s":
        return f"{x:.1f} {unit}"
    if x == 0:
        return "0"
    return f"{x:.4f}" if abs(x) >= 1e-3 else f"{x:.2e}"


def row_dict(row: Row) -> dict:
    return asdict(row)


# ---------------------------------------------------------------------------------------------- machine
def load_average() -> dict:
    """`os.getloadavg()` and the `uptime` line (the machine is shared: load shifts timings)."""
    out: dict[str, Any] = {}
    try:
        out["loadavg_1_5_15"] = list(os.getloadavg())
    except OSError:
        pass
    try:
        out["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def machine_description() -> dict:
    import transformers

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    return {
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_available": affinity,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
