"""Evaluation of decoding methods with the Section 6.1 metrics of the paper (rewards, worst-case win rate).

:func:`evaluate` runs every :class:`EvalMethod` (plain reference sampling, robust Best-of-K, single-objective
controlled decoding ``CD-<objective>``, UNIFORM and RMOD(λ)) on the same prompts, scores each response with
``G`` reward functions and writes, under ``output_dir``:

- ``results.jsonl``: one row per (prompt, method) — response, raw rewards, length, time and, for RMOD methods,
  the per-block weight / value trace. Resumable: rows already present are skipped on restart.
- ``summary.json`` / ``summary.md``: per method, mean reward per objective, worst-case reward and worst-case
  win rate against the reference responses, each with a bootstrap 95% interval (:func:`summarize_results`).
- ``worst_case_reward.png`` (paper Fig. 2), ``rewards_scatter.png`` (Fig. 3b), ``lambda_ablation.png``
  (Fig. 3c, when two or more λ were run) and ``weight_trace.png`` (Fig. 5), see :func:`write_plots`.

**Normalisation.** The worst-case metrics take ``min_g r_g`` across objectives, which only makes sense when
the objectives share a scale. The default objectives do not (the harmless reward is a Bradley–Terry logit,
the helpful one a cosine similarity), so the summary first standardises each objective with the value head's
``reward_mean`` / ``reward_std`` (the statistics of the reference policy's responses the head was trained
on): ``z_g = (r_g - mean_g) / std_g``. A z-score of 0 is the reference policy's average on that objective.
Raw per-objective means are reported as well.

With an ``accelerate.Accelerator`` the prompts are sharded across processes (process ``i`` takes prompts
``i::n``), each process appends to ``results.rank{i}.jsonl`` and the main process merges them into
``results.jsonl`` and writes the summary and plots. ``hf-rmod evaluate`` (see :func:`add_cli_parsers`) is the
command-line entry point.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from . import metrics as _metrics
from ._jsonl import read_jsonl
from .config import RMODConfig
from .defaults import DEFAULT_SAMPLING
from .generation import enable
from .modeling_value_head import MultiValueHead
from .rewards import score_rewards

__all__ = [
    "DEFAULT_GENERATION_KWARGS",
    "EvalMethod",
    "EvaluationResult",
    "add_cli_parsers",
    "default_methods",
    "evaluate",
    "format_summary_markdown",
    "load_results",
    "summarize_results",
    "write_plots",
]

#: Sampling settings of the evaluation (and of the default value head's training data).
DEFAULT_GENERATION_KWARGS: dict[str, Any] = dict(DEFAULT_SAMPLING)

_RMOD_KEYS = ("num_candidates", "block_size", "lam", "weights", "selection", "objectives", "solver", "solver_options")
_RESERVED_GENERATION_KWARGS = (
    "max_new_tokens", "max_length", "rmod_config", "return_dict_in_generate", "num_return_sequences", "streamer",
    "input_ids", "attention_mask",
)
_PLOT_NAMES = ("worst_case_reward", "rewards_scatter", "lambda_ablation", "weight_trace")
_RUN_FILE = "run.json"
_RUN_CHECKED = ("max_new_tokens", "generation_kwargs", "chat_template", "seed")


# ================================================================================================================
# methods
# ================================================================================================================


def _fmt(x: float) -> str:
    """0.5 -> '0.5', 1.0 -> '1', 10.0 -> '10' (for method names)."""
    return f"{float(x):g}"


@dataclass(frozen=True)
class EvalMethod:
    """One decoding method of an evaluation.

    Args:
        name: unique, readable name (used in the results file, summary and plots).
        rmod: ``None`` for plain sampling from the reference policy, else keyword overrides of
            :class:`~hf_rmod.RMODConfig` (``num_candidates``, ``block_size``, ``lam``, ``weights``, ``selection``,
            ``objectives``, ``solver``, ``solver_options``; the value model is given to :func:`evaluate`).
            ``block_size=None`` means "the whole response" (``max_new_tokens`` of the evaluation): one block,
            i.e. Best-of-K.

    Use the constructors: :meth:`reference`, :meth:`best_of_k`, :meth:`single_objective`, :meth:`uniform`,
    :meth:`rmod`. The overrides are validated by ``RMODConfig`` at construction.

    Example:
        >>> EvalMethod.rmod(k=8, b=16, lam=0.5).name
        'rmod_k8_b16_lam0.5'
    """

    name: str
    rmod: dict | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip() or self.name != self.name.strip():
            raise ValueError(f"`name` must be a non-empty string without surrounding spaces, got {self.name!r}.")
        if self.rmod is None:
            return
        if not isinstance(self.rmod, Mapping):
            raise TypeError(
                f"EvalMethod {self.name!r}: `rmod` must be a dict of RMODConfig overrides or None (plain sampling), "
                f"got {type(self.rmod).__name__}."
            )
        unknown = sorted(set(self.rmod) - set(_RMOD_KEYS))
        if unknown:
            hint = " (the value model is passed to evaluate())" if "value_model" in unknown else ""
            raise ValueError(
                f"EvalMethod {self.name!r}: unknown `rmod` keys {unknown}{hint}; allowed: {list(_RMOD_KEYS)}."
            )
        overrides = dict(self.rmod)
        if isinstance(overrides.get("weights"), list):
            overrides["weights"] = tuple(overrides["weights"])
        object.__setattr__(self, "rmod", overrides)
        check = dict(overrides)
        if check.get("block_size", 1) is None:
            check["block_size"] = 1  # "whole response", resolved by evaluate()
        try:  # a path string stands in for the value model: RMODConfig only loads it when decoding
            RMODConfig(value_model="<set by evaluate>", **check)
        except (TypeError, ValueError) as err:
            raise type(err)(f"EvalMethod {self.name!r}: {err}") from None

    def __hash__(self) -> int:  # frozen, but `rmod` is a dict: hash its JSON form
        return hash((self.name, json.dumps(self.rmod, sort_keys=True)))

    # -- constructors ------------------------------------------------------------------------------------------
    @classmethod
    def reference(cls, name: str = "reference") -> "EvalMethod":
        """Plain sampling from the reference policy (``model.generate`` without RMOD)."""
        return cls(name, None)

    @classmethod
    def best_of_k(cls, k: int, lam: float = 0.5, name: str | None = None) -> "EvalMethod":
        """Robust Best-of-K (paper §5.2, App. C.3): RMOD with one block spanning the whole response.

        K complete responses are sampled, the worst-case weights ``w*`` are solved on their values and the
        response with the largest ``w*·V`` is kept.
        """
        return cls(name or f"best_of_k{k}", {"num_candidates": k, "block_size": None, "lam": lam, "weights": "robust"})

    @classmethod
    def single_objective(cls, objective: str, k: int, b: int, name: str | None = None) -> "EvalMethod":
        """Controlled decoding for one objective (the paper's ``CD-<objective>``): weight 1 on `objective`."""
        if not isinstance(objective, str) or not objective:
            raise ValueError(f"`objective` must be an objective name of the value head, got {objective!r}.")
        return cls(name or f"cd_{objective}_k{k}_b{b}", {"num_candidates": k, "block_size": b, "weights": objective})

    @classmethod
    def uniform(cls, k: int, b: int, name: str | None = None) -> "EvalMethod":
        """Controlled decoding with uniform weights ``1/G`` (the paper's UNIFORM baseline)."""
        return cls(name or f"uniform_k{k}_b{b}", {"num_candidates": k, "block_size": b, "weights": "uniform"})

    @classmethod
    def rmod(cls, k: int, b: int, lam: float = 0.5, name: str | None = None) -> "EvalMethod":
        """Robust multi-objective decoding with worst-case weights (Algorithm 1), trade-off ``lam``."""
        return cls(
            name or f"rmod_k{k}_b{b}_lam{_fmt(lam)}",
            {"num_candidates": k, "block_size": b, "lam": lam, "weights": "robust"},
        )

    # -- properties ------------------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """``"reference"``, ``"best_of_k"``, ``"rmod"``, ``"uniform"`` or ``"fixed_weights"`` (incl. CD-<objective>)."""
        return _kind(self.rmod)

    def resolved_rmod(self, max_new_tokens: int) -> dict | None:
        """The overrides with ``block_size=None`` replaced by ``max_new_tokens`` (None for plain sampling)."""
        if self.rmod is None:
            return None
        out = dict(self.rmod)
        if out.get("block_size", 16) is None:
            out["block_size"] = max_new_tokens
        return out

    def to_dict(self) -> dict:
        """JSON-serialisable ``{"name", "kind", "rmod"}``."""
        return {"name": self.name, "kind": self.kind, "rmod": _jsonable(self.rmod)}


def _kind(rmod: Mapping | None) -> str:
    if rmod is None:
        return "reference"
    weights = rmod.get("weights", "robust")
    if weights == "robust":
        return "best_of_k" if "block_size" in rmod and rmod["block_size"] is None else "rmod"
    return "uniform" if weights == "uniform" else "fixed_weights"


def _jsonable(value: Any) -> Any:
    """JSON round trip (tuples -> lists); objects JSON cannot hold (e.g. a logits processor) become their repr."""
    return json.loads(json.dumps(value, default=repr)) if value is not None else None


def _check_grid(name: str, values: Any, example: str) -> list:
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values]
    values = list(values)
    if not values:
        raise ValueError(f"`{name}` is empty; give at least one value, e.g. {name}={example}.")
    if len(set(values)) != len(values):
        raise ValueError(f"`{name}` has duplicates: {values}.")
    return values  # types and ranges are checked by RMODConfig when the methods are built


def default_methods(
    objectives: Sequence[str],
    ks: Sequence[int] = (8,),
    bs: Sequence[int] = (16,),
    lams: Sequence[float] = (0.5,),
) -> list[EvalMethod]:
    """The paper's comparison on a K × B × λ grid.

    In order: ``reference``; robust Best-of-K ``best_of_k{K}`` for each K (with λ = ``lams[0]``); for each K
    and B, ``cd_{objective}_k{K}_b{B}`` for every objective and ``uniform_k{K}_b{B}``; then
    ``rmod_k{K}_b{B}_lam{λ}`` for each K, B and λ.

    Args:
        objectives: the ``G`` objective names of the value head (one ``CD-<objective>`` method each).
        ks: numbers of candidates K.
        bs: block sizes B.
        lams: RMOD trade-offs λ > 0.

    Returns:
        A list of :class:`EvalMethod` with unique names.
    """
    if isinstance(objectives, str) or not objectives or not all(isinstance(o, str) and o for o in objectives):
        raise ValueError(f"`objectives` must be a non-empty list of objective names, got {objectives!r}.")
    ks, bs, lams = _check_grid("ks", ks, "(8,)"), _check_grid("bs", bs, "(16,)"), _check_grid("lams", lams, "(0.5,)")
    methods = [EvalMethod.reference()]
    methods += [EvalMethod.best_of_k(k, lam=lams[0]) for k in ks]
    for k in ks:
        for b in bs:
            methods += [EvalMethod.single_objective(g, k, b) for g in objectives]
            methods.append(EvalMethod.uniform(k, b))
    methods += [EvalMethod.rmod(k, b, lam) for k in ks for b in bs for lam in lams]
    return methods


# ================================================================================================================
# results file
# ================================================================================================================


def _read_rows(path: Path, repair: bool) -> list[dict]:
    """Rows of a results JSONL file; a partial last line (an interrupted append) is dropped, and with
    ``repair`` cut from the file so that appending can continue."""
    return read_jsonl(path, repair=repair)[0]


def load_results(path_or_dir: str | os.PathLike) -> list[dict]:
    """Rows of a results file, or of an evaluation ``output_dir``.

    For a folder or a file named ``results.jsonl`` the unmerged ``results.rank*.jsonl`` next to it are read as
    well; duplicates of a (prompt_id, method) pair keep the first row. Another file name reads that file only.
    """
    path = Path(path_or_dir)
    if path.is_dir():
        path = path / "results.jsonl"
    files = [path]
    if path.name == "results.jsonl":
        files += sorted(path.parent.glob("results.rank*.jsonl"))
    if not any(f.exists() for f in files):
        raise FileNotFoundError(f"No results at {path}; run `evaluate(..., output_dir=...)` first.")
    return _dedup(row for f in files for row in _read_rows(f, repair=False))


def _dedup(rows: Iterable[dict]) -> list[dict]:
    seen, out = set(), []
    for row in rows:
        key = (row["prompt_id"], row["method"])
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


# ================================================================================================================
# evaluate
# ================================================================================================================


@dataclass
class EvaluationResult:
    """What :func:`evaluate` wrote.

    Attributes:
        summary: the dict of :func:`summarize_results` (also in ``summary.json``) plus ``"run"`` (the
            settings); on non-main processes it is read back from ``summary.json``.
        output_dir: the output folder.
        results_path: ``results.jsonl`` (merged rows of all processes).
        summary_path: ``summary.json``.
        summary_md_path: ``summary.md``.
        plots: ``{plot name: PNG path}`` of the plots written (see :func:`write_plots`).
        num_generated: rows generated by this call on this process (0 when everything was already done).
    """

    summary: dict | None
    output_dir: Path
    results_path: Path
    summary_path: Path
    summary_md_path: Path
    plots: dict[str, Path] = field(default_factory=dict)
    num_generated: int = 0


def _batch_seed(seed: int, method_name: str, first_prompt_id: int) -> int:
    """Deterministic seed of one (method, batch); independent of Python's hash randomisation and of the
    position of the method in the list (so adding a method does not change the others' samples)."""
    state = np.random.SeedSequence([int(seed) % 2**32, zlib.crc32(method_name.encode()), int(first_prompt_id)])
    return int(state.generate_state(1, dtype=np.uint64)[0] % (2**63 - 1))


def _eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for eos in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if eos is not None:
            ids.update([int(eos)] if isinstance(eos, int) else (int(e) for e in eos))
    return ids


def _cut_at_eos(ids: list[int], eos_ids: set[int]) -> list[int]:
    """Generated ids -> the response: up to and including the first EOS (padding after it dropped)."""
    for index, token in enumerate(ids):
        if token in eos_ids:
            return ids[: index + 1]
    return ids


def _encode(tokenizer, prompts: list[str], chat_template: bool):
    """``n`` prompts -> left-padded ``BatchEncoding`` with ``input_ids`` / ``attention_mask`` of shape ``(n, T)``."""
    if chat_template:
        from .defaults import build_chat_prompts

        return build_chat_prompts(tokenizer, prompts)
    return tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt")


def _check_prompts(prompts: Any) -> list[str]:
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise TypeError(f"`prompts` must be a list of strings, got {type(prompts).__name__}; wrap one as [prompt].")
    if len(prompts) == 0:
        raise ValueError("`prompts` is empty; pass at least one prompt (e.g. load_jsonl_prompts(...)).")
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()]
    if bad:
        raise ValueError(f"`prompts[{bad[0]}]` is {prompts[bad[0]]!r}; every prompt must be a non-empty string.")
    return list(prompts)


def _check_methods(methods: Any) -> list[EvalMethod]:
    if isinstance(methods, EvalMethod):
        methods = [methods]
    methods = list(methods)
    if not methods:
        raise ValueError("`methods` is empty; e.g. methods=default_methods(value_head.objectives).")
    bad = [m for m in methods if not isinstance(m, EvalMethod)]
    if bad:
        raise TypeError(
            f"`methods` must hold EvalMethod objects, got {bad[0]!r}; build them with EvalMethod.rmod(...)."
        )
    names = [m.name for m in methods]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"Method names must be unique; duplicated: {duplicates}. Pass `name=` to the constructor.")
    return methods


def _generation_kwargs(generation_kwargs: Mapping | None, tokenizer, model) -> dict:
    kwargs = dict(DEFAULT_GENERATION_KWARGS)
    if generation_kwargs is not None:
        reserved = sorted(set(generation_kwargs) & set(_RESERVED_GENERATION_KWARGS))
        if reserved:
            raise ValueError(
                f"`generation_kwargs` must not set {reserved}: evaluate() sets them (use `max_new_tokens=` "
                "and the methods' RMOD settings)."
            )
        kwargs.update(generation_kwargs)
    if int(kwargs.get("num_beams", 1)) > 1:
        raise ValueError(f"`generation_kwargs` num_beams={kwargs['num_beams']}: evaluation samples; use num_beams=1.")
    if getattr(model.generation_config, "pad_token_id", None) is None and "pad_token_id" not in kwargs:
        kwargs["pad_token_id"] = tokenizer.pad_token_id
    return kwargs


def _reward_setup(reward_fns: Any) -> tuple[list, list[str] | None]:
    """``reward_fns`` (callable, list or ``{name: callable}``) -> (list of callables, column names or None)."""
    if isinstance(reward_fns, Mapping):
        return list(reward_fns.values()), list(reward_fns)
    if callable(reward_fns):
        return [reward_fns], None
    fns = list(reward_fns)
    if not fns:
        raise ValueError("`reward_fns` is empty; pass e.g. hf_rmod.rewards.default_reward_functions().")
    return fns, None


def _normalisation(value_head: MultiValueHead, objectives: list[str]) -> tuple[dict, dict]:
    head_objectives = list(value_head.objectives)
    missing = [g for g in objectives if g not in head_objectives]
    if missing:
        raise ValueError(
            f"The reward functions score objectives {objectives} but the value head has {head_objectives}; "
            f"{missing} have no reward_mean/reward_std to normalise with. Name the reward columns like the head's "
            "objectives (reward_fns={'harmless': fn, ...}) or use a head trained on these rewards."
        )
    mean = {g: float(value_head.config.reward_mean[head_objectives.index(g)]) for g in objectives}
    std = {g: float(value_head.config.reward_std[head_objectives.index(g)]) for g in objectives}
    return mean, std


def _check_run_settings(output_dir: Path, settings: dict) -> None:
    path = output_dir / _RUN_FILE
    if not path.exists():
        return
    previous = json.loads(path.read_text(encoding="utf-8"))
    changed = {
        k: (previous.get(k), settings[k]) for k in _RUN_CHECKED if _jsonable(previous.get(k)) != _jsonable(settings[k])
    }
    if changed:
        detail = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
        raise ValueError(
            f"{output_dir} holds results generated with other settings ({detail}); resuming would mix them. "
            "Use a new `output_dir` or the same settings."
        )


def _trace(out, row: int) -> dict:
    """Per-block trace of one prompt of an ``RMODOutput``: lists over the decoded blocks, each of length G."""
    mask = out.block_mask[row]  # (n_blocks,)
    weights = out.weights[row][mask]  # (n, G)
    values = out.values[row][mask]  # (n, K, G)
    chosen = out.chosen[row][mask]  # (n,)
    chosen_values = values[torch.arange(values.shape[0]), chosen]  # (n, G)
    return {
        "value_objectives": list(out.objectives),
        "weights": weights.tolist(),
        "chosen_values": chosen_values.tolist(),
        "mean_values": values.mean(dim=1).tolist(),
    }


def _progress(total: int, disable: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="evaluate", unit="prompt", disable=disable)


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "The evaluation plots need matplotlib: `pip install matplotlib` (or pass plots=False / --no-plots)."
        ) from err


def evaluate(
    model,
    tokenizer,
    value_head: MultiValueHead,
    reward_fns,
    prompts: Sequence[str],
    methods: Sequence[EvalMethod],
    *,
    output_dir: str | os.PathLike,
    max_new_tokens: int = 96,
    batch_size: int = 4,
    seed: int = 0,
    generation_kwargs: Mapping[str, Any] | None = None,
    chat_template: bool = True,
    reference_method: str = "reference",
    accelerator=None,
    show_progress: bool = True,
    plots: bool = True,
    n_resamples: int = 1000,
) -> EvaluationResult:
    """Generate with every method on every prompt, score, summarise and plot (resumable).

    For each method and each batch of ``batch_size`` prompts, torch is seeded with a deterministic function of
    ``(seed, method name, first prompt id of the batch)``, the batch is rendered (chat template, left padded)
    and decoded with ``model.generate(**enc, max_new_tokens=..., **generation_kwargs)`` (reference) or with
    ``rmod_config=RMODConfig(value_model=value_head, **method overrides)`` (RMOD methods; ``enable(model)`` is
    applied once). Responses are cut after the first EOS and decoded with ``skip_special_tokens=True``, then
    scored with ``score_rewards(reward_fns, prompts, responses)`` on the plain (un-templated) prompts.

    One JSONL row per (prompt, method) is appended to ``output_dir/results.jsonl`` (``results.rank{i}.jsonl``
    per process under accelerate), one write per batch::

        {"prompt_id": int, "prompt": str, "method": str, "rmod": {...} | null, "response": str,
         "rewards": {objective: float}, "num_new_tokens": int, "seconds": float,
         # RMOD methods only, one entry per decoded block, each a list over the G value objectives:
         "value_objectives": [str], "weights": [[float]], "chosen_values": [[float]], "mean_values": [[float]]}

    ``num_new_tokens`` counts the response tokens including the EOS; ``seconds`` is the wall time of the
    batch's ``generate`` call divided by the batch size; ``chosen_values`` are the value head's predictions
    (normalised units) for the kept candidate of each block and ``mean_values`` their mean over the K
    candidates. A rerun with the same ``output_dir`` skips the (prompt_id, method) pairs already written
    (an interrupted last line is dropped and recomputed); samples are reproducible for a fixed ``seed``,
    ``batch_size`` and number of processes (a batch that was only partly written is regenerated with a
    different batch composition, hence different samples).

    Args:
        model: causal LM (the reference policy). Its ``generate`` is wrapped by :func:`hf_rmod.enable`.
        tokenizer: its tokenizer (needs a pad token).
        value_head: the ``G``-objective :class:`~hf_rmod.MultiValueHead` used by the RMOD methods; its
            ``reward_mean`` / ``reward_std`` normalise the rewards in the summary.
        reward_fns: a reward function, a list of them or ``{objective: fn}`` (see
            :class:`~hf_rmod.RewardFunction`); their objective names must be objectives of `value_head`.
        prompts: ``n`` user prompts (plain text); ``prompt_id`` is the index in this list.
        methods: the :class:`EvalMethod` list, e.g. :func:`default_methods`.
        output_dir: folder for results, summary and plots (created).
        max_new_tokens: response length cap (and the block of Best-of-K).
        batch_size: prompts per ``generate`` call.
        seed: base seed.
        generation_kwargs: ``generate`` arguments merged over :data:`DEFAULT_GENERATION_KWARGS`
            (``do_sample=True, temperature=0.7, top_p=0.9, top_k=0``); they apply to the reference and to the
            candidates of the RMOD methods alike.
        chat_template: render each prompt as a user turn with the tokenizer's chat template; ``False`` feeds
            the text as is.
        reference_method: name of the method the win rates compare against (absent: no win rates).
        accelerator: an ``accelerate.Accelerator`` to shard prompts across processes.
        show_progress: tqdm bar (main process).
        plots: write the PNG plots (needs matplotlib).
        n_resamples: bootstrap resamples of the confidence intervals.

    Returns:
        An :class:`EvaluationResult`.

    Raises:
        ValueError / TypeError: empty prompts, duplicate or invalid methods, an objective the value head lacks,
            reserved ``generation_kwargs``, a tokenizer without a pad token or chat template, an ``output_dir``
            generated with other settings.
    """
    prompts = _check_prompts(prompts)
    methods = _check_methods(methods)
    for name, value in (("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be an int >= 1, got {value!r}.")
    if not isinstance(value_head, MultiValueHead):
        raise TypeError(
            f"`value_head` must be a MultiValueHead (e.g. hf_rmod.defaults.load_default_value_head()), got "
            f"{type(value_head).__name__}."
        )
    if tokenizer.pad_token_id is None:
        raise ValueError("The tokenizer has no pad token; set `tokenizer.pad_token = tokenizer.eos_token` first.")
    if chat_template and not getattr(tokenizer, "chat_template", None):
        raise ValueError("chat_template=True but the tokenizer has no chat template; pass chat_template=False.")
    if plots:
        _require_matplotlib()
    fns, reward_names = _reward_setup(reward_fns)
    gen_kwargs = _generation_kwargs(generation_kwargs, tokenizer, model)

    # RMOD configs first: every invalid setting fails before any generation
    configs: dict[str, RMODConfig | None] = {}
    for method in methods:
        resolved = method.resolved_rmod(max_new_tokens)
        if resolved is None:
            configs[method.name] = None
            continue
        cfg = RMODConfig(value_model=value_head, **resolved)
        try:
            names = [value_head.objectives[i] for i in cfg.resolve_objectives(value_head.objectives)]
            cfg.resolve_fixed_weights(names)
        except ValueError as err:
            raise ValueError(f"method {method.name!r}: {err}") from None
        configs[method.name] = cfg
    if any(cfg is not None for cfg in configs.values()):
        value_head.check_compatible(model)
        enable(model)

    out_dir = Path(output_dir)
    rank = accelerator.process_index if accelerator is not None else 0
    world = accelerator.num_processes if accelerator is not None else 1
    is_main = accelerator is None or accelerator.is_main_process
    settings = {
        "max_new_tokens": max_new_tokens, "generation_kwargs": gen_kwargs, "chat_template": chat_template,
        "seed": seed, "batch_size": batch_size, "num_processes": world,
    }
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    _barrier(accelerator)
    _check_run_settings(out_dir, settings)
    own_path = out_dir / ("results.jsonl" if world == 1 else f"results.rank{rank}.jsonl")
    existing = _read_rows(own_path, repair=True)
    for other in [out_dir / "results.jsonl", *sorted(out_dir.glob("results.rank*.jsonl"))]:
        if other != own_path:
            existing += _read_rows(other, repair=False)
    _check_existing(existing, prompts, methods)
    done = {(r["prompt_id"], r["method"]) for r in existing}
    _barrier(accelerator)
    if is_main:
        (out_dir / _RUN_FILE).write_text(json.dumps(settings, indent=2, default=repr) + "\n", encoding="utf-8")

    my_ids = list(range(len(prompts)))[rank::world]
    batches = [my_ids[i : i + batch_size] for i in range(0, len(my_ids), batch_size)]
    todo = sum(1 for m in methods for b in batches for p in b if (p, m.name) not in done)
    progress = _progress(todo, disable=not (show_progress and is_main))
    eos_ids = _eos_ids(model, tokenizer)
    device = next(model.parameters()).device
    generated, checked = 0, False
    for method in methods:
        for batch_ids in batches:
            ids = [p for p in batch_ids if (p, method.name) not in done]
            if not ids:
                continue
            rows = _run_batch(
                model, tokenizer, fns, reward_names, prompts, ids, method, configs[method.name], gen_kwargs,
                max_new_tokens, chat_template, eos_ids, device, _batch_seed(seed, method.name, batch_ids[0]),
            )
            if not checked:  # the reward names are known once something was scored: fail before writing
                _normalisation(value_head, list(rows[0]["rewards"]))
                checked = True
            with own_path.open("a", encoding="utf-8") as handle:  # one write per batch
                handle.write("".join(json.dumps(row) + "\n" for row in rows))
            generated += len(rows)
            progress.update(len(rows))
    progress.close()

    _barrier(accelerator)
    results_path = out_dir / "results.jsonl"
    summary_path, md_path = out_dir / "summary.json", out_dir / "summary.md"
    plot_paths: dict[str, Path] = {}
    summary = None
    if is_main:
        rows = _merge(out_dir)
        current = {m.name for m in methods}
        rows = [r for r in rows if r["method"] in current and r["prompt_id"] < len(prompts)]
        if not rows:
            raise ValueError("No results to summarise.")
        objectives = list(rows[0]["rewards"])
        mean, std = _normalisation(value_head, objectives)
        summary = summarize_results(
            rows, objectives, mean, std, reference_method=reference_method, methods=[m.name for m in methods],
            n_resamples=n_resamples,
        )
        summary["run"] = _jsonable({**settings, "num_prompts": len(prompts)})
        summary_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        md_path.write_text(format_summary_markdown(summary), encoding="utf-8")
        if plots:
            plot_paths = write_plots(summary, rows, out_dir)
    _barrier(accelerator)
    if not is_main:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        plot_paths = {n: out_dir / f"{n}.png" for n in _PLOT_NAMES if (out_dir / f"{n}.png").exists()}
    return EvaluationResult(summary, out_dir, results_path, summary_path, md_path, plot_paths, generated)


def _barrier(accelerator) -> None:
    if accelerator is not None:
        accelerator.wait_for_everyone()


def _check_existing(rows: list[dict], prompts: list[str], methods: list[EvalMethod]) -> None:
    """Rows already in ``output_dir`` must belong to this evaluation (same prompt texts, same method settings)."""
    configs = {m.name: _jsonable(m.rmod) for m in methods}
    for row in rows:
        pid = row.get("prompt_id")
        if not isinstance(pid, int) or "method" not in row:
            raise ValueError(f"A results row has no integer `prompt_id` / `method`: {str(row)[:200]}.")
        if pid < len(prompts) and row.get("prompt") != prompts[pid]:
            raise ValueError(
                f"The existing results have prompt_id {pid} = {row.get('prompt')!r:.80} but prompts[{pid}] is "
                f"{prompts[pid]!r:.80}: the output_dir belongs to another prompt list. Use a new `output_dir`."
            )
        name = row["method"]
        if name in configs and row.get("rmod") != configs[name]:
            raise ValueError(
                f"The existing results of method {name!r} were generated with rmod={row.get('rmod')} but the method "
                f"now has rmod={configs[name]}. Rename the method or use a new `output_dir`."
            )


def _merge(out_dir: Path) -> list[dict]:
    """Union of results.jsonl and the rank files, written back to results.jsonl when rank files exist."""
    results = out_dir / "results.jsonl"
    rank_files = sorted(out_dir.glob("results.rank*.jsonl"))
    rows = _dedup(row for f in [results, *rank_files] for row in _read_rows(f, repair=False))
    if rank_files:
        rows.sort(key=lambda r: (r["prompt_id"], r["method"]))
        tmp = out_dir / "results.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        os.replace(tmp, results)
    return rows


def _run_batch(model, tokenizer, fns, reward_names, prompts, ids, method, cfg, gen_kwargs, max_new_tokens,
               chat_template, eos_ids, device, seed) -> list[dict]:
    """Generate, decode and score one batch of prompts with one method -> its result rows."""
    texts = [prompts[i] for i in ids]
    enc = _encode(tokenizer, texts, chat_template).to(device)
    width = enc["input_ids"].shape[1]
    torch.manual_seed(seed)
    start = time.perf_counter()
    with torch.no_grad():
        if cfg is None:
            out = model.generate(**enc, max_new_tokens=max_new_tokens, **gen_kwargs)
            sequences = out.sequences if hasattr(out, "sequences") else out
        else:
            out = model.generate(**enc, max_new_tokens=max_new_tokens, rmod_config=cfg, return_dict_in_generate=True,
                                 **gen_kwargs)
            sequences = out.sequences  # (b, P + new)
    seconds = (time.perf_counter() - start) / len(ids)
    new_ids = [_cut_at_eos(seq, eos_ids) for seq in sequences[:, width:].tolist()]
    responses = [tokenizer.decode(r, skip_special_tokens=True) for r in new_ids]
    rewards, names = score_rewards(fns, texts, responses, objectives=reward_names)  # (b, G)
    rows = []
    for row, pid in enumerate(ids):
        record = {
            "prompt_id": pid, "prompt": prompts[pid], "method": method.name, "rmod": _jsonable(method.rmod),
            "response": responses[row], "rewards": dict(zip(names, rewards[row].tolist())),
            "num_new_tokens": len(new_ids[row]), "seconds": seconds,
        }
        if cfg is not None:
            record.update(_trace(out, row))
        rows.append(record)
    return rows


# ================================================================================================================
# summary
# ================================================================================================================


def _per_objective(values: Mapping[str, float] | Sequence[float], objectives: list[str], name: str) -> np.ndarray:
    if isinstance(values, Mapping):
        missing = [g for g in objectives if g not in values]
        if missing:
            raise ValueError(f"`{name}` has no entry for objectives {missing}; give one value per objective.")
        out = [values[g] for g in objectives]
    else:
        out = list(values)
        if len(out) != len(objectives):
            raise ValueError(f"`{name}` has {len(out)} values for {len(objectives)} objectives {objectives}.")
    arr = np.asarray(out, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"`{name}` must be finite, got {out}.")
    return arr


def summarize_results(
    results_path_or_rows: str | os.PathLike | Iterable[dict],
    objectives: Sequence[str],
    reward_mean: Mapping[str, float] | Sequence[float],
    reward_std: Mapping[str, float] | Sequence[float],
    reference_method: str = "reference",
    *,
    methods: Sequence[str] | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Section 6.1 metrics of every method from the result rows, on normalised rewards.

    Rewards are standardised per objective, ``z_g = (r_g - reward_mean_g) / reward_std_g`` (use the value
    head's ``config.reward_mean`` / ``reward_std``: the statistics of reference-policy responses), because
    ``min_g`` across objectives on raw rewards would just pick the objective with the smaller scale. Only the
    prompts that every summarised method has a row for are used, so all methods are compared on the same
    prompts (``rows_excluded`` counts the rest).

    Per method (:func:`hf_rmod.summarize` on the ``(n, G)`` z-scores against the reference method's responses
    to the same prompts): ``mean_rewards`` / ``mean_rewards_ci`` per objective, ``worst_case_reward`` (mean over
    prompts of ``min_g z_g``) / ``worst_case_reward_ci``, ``worst_case_win_rate`` / ``worst_case_win_rate_ci``
    (ties count one half, so the reference against itself scores 0.5; ``None`` without a reference method),
    ``raw_mean_rewards`` / ``raw_mean_rewards_ci`` (reward units), ``mean_new_tokens``, ``mean_seconds``,
    ``rmod`` (the method's settings, from the rows) and ``kind``.

    Args:
        results_path_or_rows: a ``results.jsonl`` path / evaluation folder, or the rows.
        objectives: the ``G`` reward names to use (keys of each row's ``rewards``).
        reward_mean, reward_std: ``{objective: float}`` or ``G`` floats (std > 0).
        reference_method: the method the win rates compare against.
        methods: which methods, in this order (default: all, in order of first appearance).
        n_resamples, confidence, seed: bootstrap settings (:func:`hf_rmod.bootstrap_ci`).

    Returns:
        ``{"objectives", "normalization": {"reward_mean", "reward_std"}, "reference_method", "n_prompts",
        "prompt_ids", "rows_excluded", "confidence", "n_resamples", "methods": {name: {...}}}`` (JSON-ready).
    """
    if isinstance(results_path_or_rows, (str, os.PathLike)):
        rows = load_results(results_path_or_rows)
    else:
        rows = _dedup(results_path_or_rows)
    objectives = list(objectives)
    if not objectives or len(set(objectives)) != len(objectives):
        raise ValueError(f"`objectives` must be a non-empty list of unique names, got {objectives}.")
    mean = _per_objective(reward_mean, objectives, "reward_mean")
    std = _per_objective(reward_std, objectives, "reward_std")
    if (std <= 0).any():
        raise ValueError(f"`reward_std` must be > 0 for every objective, got {std.tolist()}.")
    present = list(dict.fromkeys(r["method"] for r in rows))
    methods = present if methods is None else list(methods)
    missing = [m for m in methods if m not in present]
    if missing or not methods:
        raise ValueError(f"No result rows for methods {missing or methods}; the rows have methods {present}.")
    by_method: dict[str, dict[int, dict]] = {m: {} for m in methods}
    for row in rows:
        if row["method"] in by_method:
            absent = [g for g in objectives if g not in row["rewards"]]
            if absent:
                raise ValueError(
                    f"Row (prompt_id {row['prompt_id']}, method {row['method']!r}) has no reward for {absent}; "
                    f"it has {sorted(row['rewards'])}."
                )
            by_method[row["method"]][row["prompt_id"]] = row
    common = sorted(set.intersection(*(set(d) for d in by_method.values())))
    if not common:
        raise ValueError(f"No prompt has a result for every method {methods}; summarise fewer methods.")
    excluded = sum(len(d) for d in by_method.values()) - len(common) * len(methods)

    def matrix(name: str) -> tuple[np.ndarray, np.ndarray]:
        raw = np.array([[by_method[name][p]["rewards"][g] for g in objectives] for p in common], dtype=np.float64)
        return raw, (raw - mean) / std  # (n, G) each

    has_reference = reference_method in by_method
    reference_z = matrix(reference_method)[1] if has_reference else None
    ci = dict(n_resamples=n_resamples, confidence=confidence, seed=seed)
    out_methods = {}
    for name in methods:
        raw, z = matrix(name)
        stats = _metrics.summarize(z, reference_z if has_reference else z, objectives, **ci)
        first = by_method[name][common[0]]
        out_methods[name] = {
            "kind": _kind(first.get("rmod")),
            "rmod": first.get("rmod"),
            "n_prompts": len(common),
            "mean_rewards": stats.mean_rewards,
            "mean_rewards_ci": {g: list(v) for g, v in stats.mean_rewards_ci.items()},
            "worst_case_reward": stats.worst_case_reward,
            "worst_case_reward_ci": list(stats.worst_case_reward_ci),
            "worst_case_win_rate": stats.worst_case_win_rate if has_reference else None,
            "worst_case_win_rate_ci": list(stats.worst_case_win_rate_ci) if has_reference else None,
            "raw_mean_rewards": {g: float(v) for g, v in zip(objectives, raw.mean(axis=0))},
            "raw_mean_rewards_ci": {
                g: list(_metrics.bootstrap_ci(np.mean, raw[:, j], **ci)) for j, g in enumerate(objectives)
            },
            "mean_new_tokens": float(np.mean([by_method[name][p]["num_new_tokens"] for p in common])),
            "mean_seconds": float(np.mean([by_method[name][p]["seconds"] for p in common])),
        }
    return {
        "objectives": objectives,
        "normalization": {
            "reward_mean": dict(zip(objectives, mean.tolist())),
            "reward_std": dict(zip(objectives, std.tolist())),
            "note": "rewards are z-scores (r - reward_mean) / reward_std per objective, with the value head's "
            "statistics of reference-policy responses; raw_mean_rewards are in reward units",
        },
        "reference_method": reference_method if has_reference else None,
        "n_prompts": len(common),
        "prompt_ids": common,
        "rows_excluded": int(excluded),
        "confidence": confidence,
        "n_resamples": n_resamples,
        "methods": out_methods,
    }


def format_summary_markdown(summary: Mapping) -> str:
    """A Markdown report of a :func:`summarize_results` dict: one table row per method."""
    objectives = summary["objectives"]
    pct = int(round(summary["confidence"] * 100))
    ref = summary.get("reference_method")
    norm = summary["normalization"]

    def ci(value, interval):
        return "–" if value is None else f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"

    header = (
        ["method", "worst-case reward (z)", f"worst-case win rate vs {ref or '—'}"]
        + [f"{g} (z)" for g in objectives]
        + [f"{g} (raw)" for g in objectives]
        + ["new tokens", "s / response"]
    )
    lines = [
        f"# Evaluation summary ({summary['n_prompts']} prompts, {pct}% bootstrap CI)",
        "",
        "Rewards are z-scores per objective, `(r - reward_mean) / reward_std` with the value head's statistics "
        "of reference-policy responses (" + ", ".join(
            f"{g}: mean {norm['reward_mean'][g]:.4g}, std {norm['reward_std'][g]:.4g}"
            for g in objectives
        ) + "); worst-case = mean over prompts of min over objectives; win-rate ties count 1/2. "
        "Raw columns are mean rewards in reward units.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for name, m in summary["methods"].items():
        cells = [f"`{name}`", ci(m["worst_case_reward"], m["worst_case_reward_ci"]),
                 ci(m["worst_case_win_rate"], m["worst_case_win_rate_ci"])]
        cells += [ci(m["mean_rewards"][g], m["mean_rewards_ci"][g]) for g in objectives]
        cells += [f"{m['raw_mean_rewards'][g]:.4g}" for g in objectives]
        cells += [f"{m['mean_new_tokens']:.1f}", f"{m['mean_seconds']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if summary.get("rows_excluded"):
        lines += ["", f"{summary['rows_excluded']} rows were left out: their prompts lack a result for some method."]
    return "\n".join(lines) + "\n"


# ================================================================================================================
# plots
# ================================================================================================================


def _figure(width: float, height: float, ncols: int = 1, nrows: int = 1):
    from matplotlib.figure import Figure  # object-oriented API: no pyplot, no global backend change

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _err(value: float, interval: Sequence[float]) -> list[list[float]]:
    return [[max(value - interval[0], 0.0)], [max(interval[1] - value, 0.0)]]


_KIND_COLOURS = {"reference": "tab:purple", "best_of_k": "tab:gray", "fixed_weights": "tab:green",
                 "uniform": "tab:orange", "rmod": "tab:blue"}


def write_plots(summary: Mapping, rows: Sequence[dict], output_dir: str | os.PathLike) -> dict[str, Path]:
    """Write the evaluation plots as PNG files; returns ``{name: path}`` of those written.

    - ``worst_case_reward``: per-method worst-case reward (z) with its CI (paper Fig. 2).
    - ``rewards_scatter``: mean z-reward of the first two objectives per method, with CIs; the reference is a
      star (Fig. 3b). Only when ``G >= 2``.
    - ``lambda_ablation``: worst-case reward and win rate against λ for the RMOD methods of each (K, B), with
      UNIFORM at the same (K, B) as a dashed line (Fig. 3c). Only when some (K, B) has two or more λ.
    - ``weight_trace``: per-block weights ``w*`` and the chosen candidate's values (solid) and the candidates'
      mean values (dashed) of one prompt of the first RMOD method — the prompt with the most blocks (Fig. 5).
      Only when an RMOD method has traced rows.
    """
    _require_matplotlib()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = {
        "worst_case_reward": _plot_worst_case(summary),
        "rewards_scatter": _plot_scatter(summary),
        "lambda_ablation": _plot_lambda(summary),
        "weight_trace": _plot_trace(summary, rows),
    }
    return {name: _save(fig, out / f"{name}.png") for name, fig in figures.items() if fig is not None}


def _colour(method: Mapping) -> str:
    return _KIND_COLOURS.get(method["kind"], "tab:gray")


def _plot_worst_case(summary: Mapping):
    """Fig. 2: one bar per method, worst-case z-reward with its CI; dashed line at the reference."""
    methods, names, ref = summary["methods"], list(summary["methods"]), summary.get("reference_method")
    fig, axes = _figure(max(4.0, 0.6 * len(names) + 1.5), 3.8)
    ax = axes[0, 0]
    values = [methods[n]["worst_case_reward"] for n in names]
    errors = np.array([_err(methods[n]["worst_case_reward"], methods[n]["worst_case_reward_ci"]) for n in names])
    ax.bar(range(len(names)), values, yerr=errors[:, :, 0].T, capsize=3, color=[_colour(methods[n]) for n in names])
    if ref in methods:
        ax.axhline(methods[ref]["worst_case_reward"], color="k", lw=0.8, ls="--", label=f"{ref}")
        ax.legend(loc="best", fontsize=8)
    ax.axhline(0.0, color="k", lw=0.5)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("worst-case reward (z)")
    ax.set_title(f"Worst-case reward, {summary['n_prompts']} prompts ({int(summary['confidence'] * 100)}% CI)")
    return fig


def _plot_scatter(summary: Mapping):
    """Fig. 3b: mean z-reward of the first two objectives per method (None when G < 2)."""
    methods, objectives, ref = summary["methods"], summary["objectives"], summary.get("reference_method")
    if len(objectives) < 2:
        return None
    gx, gy = objectives[:2]
    fig, axes = _figure(5.0, 4.2)
    ax = axes[0, 0]
    for name, m in methods.items():
        x, y = m["mean_rewards"][gx], m["mean_rewards"][gy]
        marker, size = ("*", 14) if name == ref else ("o", 6)
        ax.errorbar(x, y, xerr=_err(x, m["mean_rewards_ci"][gx]), yerr=_err(y, m["mean_rewards_ci"][gy]),
                    fmt=marker, ms=size, capsize=2, color=_colour(m))
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(f"mean {gx} (z)")
    ax.set_ylabel(f"mean {gy} (z)")
    ax.set_title("Mean reward per objective")
    return fig


def _kb(method: Mapping) -> tuple:
    return method["rmod"].get("num_candidates"), method["rmod"].get("block_size")


def _plot_lambda(summary: Mapping):
    """Fig. 3c: worst-case reward / win rate vs λ per (K, B) of the RMOD methods (None without ≥ 2 λ)."""
    from matplotlib.ticker import NullLocator

    methods, ref = summary["methods"], summary.get("reference_method")
    groups: dict[tuple, list[tuple[float, str]]] = {}
    for name, m in methods.items():
        if m["kind"] == "rmod":
            groups.setdefault(_kb(m), []).append((float(m["rmod"].get("lam", 0.5)), name))
    groups = {kb: sorted(v) for kb, v in groups.items() if len({lam for lam, _ in v}) >= 2}
    if not groups:
        return None
    panels = [("worst_case_reward", "worst-case reward (z)")]
    if any(methods[n]["worst_case_win_rate"] is not None for v in groups.values() for _, n in v):
        panels.append(("worst_case_win_rate", f"worst-case win rate vs {ref}"))
    fig, axes = _figure(4.5 * len(panels) + 0.3, 3.6, ncols=len(panels))
    all_lams = sorted({lam for members in groups.values() for lam, _ in members})
    for col, (metric, label) in enumerate(panels):
        ax = axes[0, col]
        for i, ((k, b), members) in enumerate(sorted(groups.items(), key=lambda kv: str(kv[0]))):
            errs = np.array([_err(methods[n][metric], methods[n][metric + "_ci"]) for _, n in members])
            ax.errorbar([lam for lam, _ in members], [methods[n][metric] for _, n in members], yerr=errs[:, :, 0].T,
                        marker="o", capsize=3, color=f"C{i}", label=f"RMOD K={k} B={b}")
            for m in methods.values():
                if m["kind"] == "uniform" and _kb(m) == (k, b):
                    ax.axhline(m[metric], color=f"C{i}", ls="--", lw=1, label=f"UNIFORM K={k} B={b}")
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticks(all_lams, [_fmt(lam) for lam in all_lams])
        ax.set_xlabel("λ")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    return fig


def _plot_trace(summary: Mapping, rows: Sequence[dict]):
    """Fig. 5: per-block weights and values of one prompt of the first RMOD (else Best-of-K) method."""
    methods = summary["methods"]
    method = next((n for n, m in methods.items() if m["kind"] == "rmod"), None)
    method = method or next((n for n, m in methods.items() if m["kind"] == "best_of_k"), None)
    traced = [r for r in rows if r["method"] == method and r.get("weights")]
    if not traced:
        return None
    row = min(traced, key=lambda r: (-len(r["weights"]), r["prompt_id"]))  # most blocks, then first prompt
    blocks = np.arange(1, len(row["weights"]) + 1)
    keys = ("weights", "chosen_values", "mean_values")
    weights, chosen, mean_v = (np.asarray(row[k], dtype=np.float64) for k in keys)  # each (n_blocks, G)
    fig, axes = _figure(6.4, 5.2, nrows=2)
    top, bottom = axes[0, 0], axes[1, 0]
    for j, g in enumerate(row["value_objectives"]):
        top.plot(blocks, weights[:, j], marker="o", color=f"C{j}", label=g)
        bottom.plot(blocks, chosen[:, j], marker="o", color=f"C{j}", label=f"{g} (chosen)")
        bottom.plot(blocks, mean_v[:, j], ls="--", color=f"C{j}", alpha=0.7, label=f"{g} (mean of K)")
    top.set_ylim(-0.05, 1.05)
    top.set_ylabel("weight w*")
    top.legend(fontsize=8)
    bottom.set_ylabel("value (normalised)")
    bottom.set_xlabel("block")
    bottom.legend(fontsize=7)
    for ax in (top, bottom):
        ax.set_xticks(blocks)
    prompt = row["prompt"] if len(row["prompt"]) <= 60 else row["prompt"][:57] + "..."
    top.set_title(f"{method}, prompt {row['prompt_id']}: {prompt}", fontsize=9)
    return fig


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=120)
    return path


# ================================================================================================================
# CLI: `hf-rmod evaluate`
# ================================================================================================================

DEFAULT_PROMPTS = "hh_harmless_dev_prompts"
DEFAULT_PROMPT_OFFSET = 200  # the first 200 dev prompts trained the default value head


def _cli_prompts(args) -> list[str]:
    from .defaults import load_jsonl_prompts
    from .training import _read_prompts

    if Path(args.prompts).is_file():
        prompts = _read_prompts(args.prompts, args.prompt_field)
        offset = args.prompt_offset if args.prompt_offset is not None else 0
    else:
        prompts = load_jsonl_prompts(args.prompts, field=args.prompt_field)
        default = args.prompts.removesuffix(".jsonl") == DEFAULT_PROMPTS
        offset = args.prompt_offset if args.prompt_offset is not None else (DEFAULT_PROMPT_OFFSET if default else 0)
    if offset < 0 or offset >= len(prompts):
        raise SystemExit(f"--prompt-offset {offset} is outside the {len(prompts)} prompts of {args.prompts}.")
    end = len(prompts) if args.num_prompts <= 0 else offset + args.num_prompts
    return prompts[offset:end]


def _select_methods(spec: str, available: list[EvalMethod]) -> list[EvalMethod]:
    if spec.strip() == "all":
        return available
    by_name = {m.name: m for m in available}
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [w for w in wanted if w not in by_name]
    if unknown or not wanted:
        raise SystemExit(
            f"--methods: unknown method names {unknown or spec!r}; available with this --k/--b/--lam grid: "
            f"{list(by_name)} (or 'all')."
        )
    return [by_name[w] for w in wanted]


def _run_evaluate(args) -> int:
    from .defaults import load_default_policy, load_default_value_head

    if args.threads:
        torch.set_num_threads(args.threads)
    accelerator = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by `accelerate launch` / torchrun
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=args.device == "cpu")  # None: accelerate picks (one GPU per process)
    if accelerator is not None:
        device = accelerator.device
    else:
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.value_head is None:
        head = load_default_value_head()
    else:
        head = MultiValueHead.from_pretrained(args.value_head)
    methods = _select_methods(args.methods, default_methods(head.objectives, args.k, args.b, args.lam))
    prompts = _cli_prompts(args)
    if args.reward:
        from .training import _load_callable

        reward_fns = dict(_load_callable(spec) for spec in args.reward)
    else:
        from .rewards import default_reward_functions

        reward_fns = default_reward_functions(device)
    model, tokenizer = load_default_policy(args.policy, device=device)
    generation_kwargs = json.loads(args.generation_kwargs) if args.generation_kwargs else None
    result = evaluate(
        model, tokenizer, head, reward_fns, prompts, methods, output_dir=args.output_dir,
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed,
        generation_kwargs=generation_kwargs, chat_template=not args.no_chat_template, accelerator=accelerator,
        show_progress=not args.no_progress, plots=not args.no_plots, n_resamples=args.n_resamples,
    )
    if accelerator is None or accelerator.is_main_process:
        print(result.summary_md_path.read_text(encoding="utf-8"))
        print(f"results: {result.results_path}\nsummary: {result.summary_path}")
    return 0


def add_cli_parsers(subparsers) -> None:
    """Add the ``evaluate`` subcommand to an ``argparse`` subparsers object (sets ``func``: ``args.func(args) -> int``).

    Run it under ``accelerate launch`` to shard the prompts across processes.
    """
    p = subparsers.add_parser(
        "evaluate",
        help="Compare reference sampling, Best-of-K, CD-<objective>, UNIFORM and RMOD (rewards, worst-case win rate).",
        description="Generate with each method, score with the reward functions, write results.jsonl (resumable), "
        "summary.json/.md and plots. Rewards are z-normalised with the value head's reward_mean/reward_std.",
    )
    p.add_argument("--prompts", default=DEFAULT_PROMPTS,
                   help="JSONL file (strings or objects with --prompt-field), or the name of a file in the data folder "
                   f"(default: {DEFAULT_PROMPTS}).")
    p.add_argument("--prompt-field", default="prompt", help="Field holding the prompt (default: prompt).")
    p.add_argument("--prompt-offset", type=int, default=None,
                   help=f"Skip this many prompts (default: {DEFAULT_PROMPT_OFFSET} for {DEFAULT_PROMPTS}, whose first "
                   f"{DEFAULT_PROMPT_OFFSET} prompts trained the default value head; else 0).")
    p.add_argument("--num-prompts", type=int, default=100, help="Prompts to evaluate (default: 100; 0: all).")
    p.add_argument("--policy", default=None, help="Policy directory or model id (default: the embedded SmolLM2-135M).")
    p.add_argument("--value-head", default=None, help="MultiValueHead folder (default: the shipped value head).")
    p.add_argument("--reward", action="append", default=None, metavar="NAME=MODULE:CALLABLE",
                   help="Reward function per objective (repeat; NAME must be a value-head objective). "
                   "Default: the offline harmless/helpful rewards.")
    p.add_argument("--methods", default="all",
                   help="Comma-separated method names (e.g. reference,uniform_k8_b16,rmod_k8_b16_lam0.5) or 'all'.")
    p.add_argument("--k", type=int, nargs="+", default=[8], help="Numbers of candidates K (default: 8).")
    p.add_argument("--b", type=int, nargs="+", default=[16], help="Block sizes B (default: 16).")
    p.add_argument("--lam", type=float, nargs="+", default=[0.5], help="RMOD trade-offs λ (default: 0.5).")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=4, help="Prompts per generate call.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--generation-kwargs", default=None,
                   help='JSON merged over {"do_sample": true, "temperature": 0.7, "top_p": 0.9, "top_k": 0}.')
    p.add_argument("--no-chat-template", action="store_true", help="Use prompts as raw text.")
    p.add_argument("--output-dir", "-o", required=True, help="Folder for results.jsonl, summary and plots (resumable).")
    p.add_argument("--device", default=None,
                   help="Device of the policy, value head and rewards (default: cuda when available, else cpu; under "
                   "`accelerate launch`, one device per process; `cpu` forces CPU processes).")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads.")
    p.add_argument("--n-resamples", type=int, default=1000, help="Bootstrap resamples (default: 1000).")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run_evaluate)
