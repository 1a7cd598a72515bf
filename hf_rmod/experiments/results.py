"""The files of an evaluation folder: ``results.jsonl`` (+ per-process rank files) and the run settings ``run.json``.

- :func:`load_results`: the rows of a results file or folder (rank files included, duplicates dropped).
- :func:`read_existing_rows` / :func:`check_existing_rows`: what a resumed run finds, and whether it belongs to it.
- :func:`merge_rank_files`: the rank files of a sharded run merged into ``results.jsonl``.
- :func:`run_settings` / :func:`check_run_settings` / :func:`write_run_settings`: ``run.json``, which records
  everything that decides the rows (decoding settings, policy, value head, reward functions) so that a rerun into
  the same folder with anything else is refused *before* it generates.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .io import read_jsonl, write_jsonl
from .methods import EvalMethod, jsonable

__all__ = [
    "RUN_FILE",
    "check_existing_rows",
    "check_run_settings",
    "describe_model",
    "describe_policy",
    "describe_rewards",
    "describe_value_head",
    "keep_recorded_policies",
    "load_results",
    "merge_rank_files",
    "read_existing_rows",
    "reward_items",
    "run_settings",
    "weights_sha256",
    "write_run_settings",
]

RUN_FILE = "run.json"
RESULTS_FILE = "results.jsonl"
#: Settings of run.json a resumed run must share with the rows already written (dotted: one entry of a dict).
_RUN_CHECKED = (
    "max_new_tokens", "generation_kwargs", "chat_template", "seed", "policy",
    "value_head.objectives", "value_head.sha256", "value_head.value_tokenizer", "value_head.value_model", "rewards",
)
#: Groups of run.json naming the policies of the RS / MOD / policy methods; compared entry by entry.
_POLICY_GROUPS = ("objective_policies", "policies")


# ------------------------------------------------------------------------------------------------------------
# results files
# ------------------------------------------------------------------------------------------------------------
def load_results(path_or_dir: str | os.PathLike) -> list[dict]:
    """Rows of a results file, or of an evaluation ``output_dir``.

    For a folder or a file named ``results.jsonl`` the unmerged ``results.rank*.jsonl`` next to it are read as
    well; duplicates of a (prompt_id, method) pair keep the first row. Another file name reads that file only.
    """
    path = Path(path_or_dir)
    if path.is_dir():
        path = path / RESULTS_FILE
    files = [path]
    if path.name == RESULTS_FILE:
        files += _rank_files(path.parent)
    if not any(f.exists() for f in files):
        raise FileNotFoundError(f"No results at {path}; run `evaluate(..., output_dir=...)` first.")
    return dedup(row for f in files for row in read_jsonl(f)[0])


def dedup(rows: Iterable[dict]) -> list[dict]:
    """``rows`` without repeated (prompt_id, method) pairs; the first row of each pair is kept."""
    seen, out = set(), []
    for row in rows:
        key = (row["prompt_id"], row["method"])
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


def _rank_files(out_dir: Path) -> list[Path]:
    return sorted(out_dir.glob("results.rank*.jsonl"))


def own_results_path(out_dir: Path, rank: int, world: int) -> Path:
    """The file a process appends to: ``results.jsonl``, or ``results.rank{i}.jsonl`` under several processes."""
    return out_dir / (RESULTS_FILE if world == 1 else f"results.rank{rank}.jsonl")


def read_existing_rows(out_dir: Path, own_path: Path) -> list[dict]:
    """Every row already in ``out_dir``; an interrupted last line of ``own_path`` is cut so appending can go on."""
    rows = read_jsonl(own_path, repair=True)[0]
    for other in [out_dir / RESULTS_FILE, *_rank_files(out_dir)]:
        if other != own_path:
            rows += read_jsonl(other)[0]
    return rows


def check_existing_rows(rows: list[dict], prompts: Sequence[str], methods: Sequence[EvalMethod]) -> None:
    """Rows already in ``output_dir`` must belong to this evaluation (same prompt texts, same method settings:
    ``rmod`` and ``policy``; a row without ``policy``, written before it was recorded, has ``policy=None``)."""
    configs = {m.name: jsonable(m.rmod) for m in methods}
    policies = {m.name: jsonable(m.policy) for m in methods}
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
        if name in policies and row.get("policy") != policies[name]:
            raise ValueError(
                f"The existing results of method {name!r} were generated with policy={row.get('policy')} but the "
                f"method now has policy={policies[name]}. Rename the method or use a new `output_dir`."
            )


def merge_rank_files(out_dir: Path) -> list[dict]:
    """Union of results.jsonl and the rank files, written back to results.jsonl when rank files exist."""
    results, rank_files = out_dir / RESULTS_FILE, _rank_files(out_dir)
    rows = dedup(row for f in [results, *rank_files] for row in read_jsonl(f)[0])
    if rank_files:
        rows.sort(key=lambda r: (r["prompt_id"], r["method"]))
        tmp = out_dir / (RESULTS_FILE + ".tmp")
        write_jsonl(tmp, rows)
        os.replace(tmp, results)
    return rows


# ------------------------------------------------------------------------------------------------------------
# run.json: what decides the rows
# ------------------------------------------------------------------------------------------------------------
def describe_policy(model: Any, policy_id: str | None = None) -> str:
    """The policy as recorded in run.json: ``policy_id`` when given, else the model's ``name_or_path``, else
    its class name (a model built in memory)."""
    if policy_id:
        return str(policy_id)
    name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    return str(name) if name else f"<in-memory {type(model).__name__}>"


def describe_value_head(value_head: Any, value_tokenizer: Any = None, value_model: Any = None) -> dict:
    """``{"objectives", "sha256", "name_or_path", "value_tokenizer"}`` of a value head; ``sha256`` hashes every
    tensor of its state dict (names, dtypes, shapes and bytes, in name order), so two heads with the same weights
    match wherever they live; ``value_tokenizer`` is the sha256 of the re-tokenising tokenizer (or ``None``);
    ``value_model`` describes a value model that scores instead of the head (its repr, or ``None``)."""
    from ..configuration_value_head import tokenizer_fingerprint

    digest = hashlib.sha256()
    if hasattr(value_head, "state_dict"):
        modules = [("", value_head)]
    else:  # a RewardValueModel: its reward functions' names, its normalisation and the weights of its heads
        fns = value_head.reward_fns
        items = list(fns.items()) if isinstance(fns, dict) else [(str(i), fn) for i, fn in enumerate(fns)]
        digest.update(json.dumps([describe_rewards(fns), value_head.normalization]).encode())
        modules = [(f"{key}.", fn.head) for key, fn in items if hasattr(getattr(fn, "head", None), "state_dict")]
    for prefix, module in modules:
        _hash_state_dict(digest, module, prefix)
    path = getattr(modules[0][1] if modules else value_head, "name_or_path", None)
    tok = None if value_tokenizer is None else tokenizer_fingerprint(value_tokenizer)["sha256"]
    return {"objectives": list(value_head.objectives), "sha256": digest.hexdigest(), "name_or_path": path or None,
            "value_tokenizer": tok, "value_model": _describe_value_model(value_model)}


def _hash_state_dict(digest: Any, module: Any, prefix: str = "") -> None:
    """Feed every tensor of ``module.state_dict()`` (name, dtype, shape, bytes; in name order) to ``digest``."""
    import torch

    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{prefix}{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())


def weights_sha256(model: Any) -> str:
    """sha256 of a model's state dict (names, dtypes, shapes and bytes, in name order): equal for equal weights,
    wherever they live (device) and however they were loaded."""
    digest = hashlib.sha256()
    _hash_state_dict(digest, model)
    return digest.hexdigest()


def describe_model(model: Any) -> dict:
    """``{"name_or_path", "sha256"}`` of a policy, as run.json records the policies of the RS / MOD / policy
    methods (:func:`describe_policy` for the name, :func:`weights_sha256` for the weights)."""
    return {"name_or_path": describe_policy(model), "sha256": weights_sha256(model)}


def _describe_value_model(value_model: Any) -> dict | None:
    """A value model scoring instead of the head: its class and, for reward-based ones, its reward functions."""
    if value_model is None:
        return None
    fns = getattr(value_model, "reward_fns", None)
    return {"class": _qualified_name(value_model), "objectives": list(getattr(value_model, "objectives", []) or []),
            "rewards": describe_rewards(fns) if fns is not None else None}


def describe_rewards(reward_fns: Any) -> list[dict]:
    """One ``{"name", "function", "objectives"}`` entry per reward function, as recorded in run.json.

    ``name`` is the key of a ``{name: fn}`` mapping (else ``None``), ``function`` the ``module:qualname`` of the
    function or of the instance's class (plus ``@name_or_path`` of a reward model it wraps), ``objectives`` the
    names the function declares (its ``objectives`` attribute, else ``None``).
    """
    items = reward_items(reward_fns)
    return [{"name": key, "function": _qualified_name(fn), "objectives": _declared(fn)} for key, fn in items]


def reward_items(reward_fns: Any) -> list[tuple[str | None, Any]]:
    """``(key, fn)`` pairs of the ``reward_fns`` forms of :func:`~hf_rmod.rewards.score_rewards` (one function, a
    list of them, or ``{name: fn}``; ``key`` is ``None`` outside a mapping)."""
    if isinstance(reward_fns, Mapping):
        return [(str(k), fn) for k, fn in reward_fns.items()]
    if callable(reward_fns) and not isinstance(reward_fns, Sequence):
        return [(None, reward_fns)]
    return [(None, fn) for fn in reward_fns]


def _qualified_name(fn: Any) -> str:
    inner = getattr(fn, "func", None)  # functools.partial: the function it wraps
    owner = fn if hasattr(fn, "__qualname__") else inner if callable(inner) else type(fn)
    name = f"{getattr(owner, '__module__', '?')}:{getattr(owner, '__qualname__', type(fn).__name__)}"
    model = getattr(fn, "model", None)
    source = getattr(model, "name_or_path", None) if model is not None else None
    return f"{name}@{source}" if isinstance(source, str) and source else name


def _declared(fn: Any) -> list[str] | None:
    objectives = getattr(fn, "objectives", None)
    return [str(g) for g in objectives] if isinstance(objectives, (list, tuple)) else None


def run_settings(*, config: Any, generation_kwargs: Mapping, world: int, policy: str, value_head: dict,
                 rewards: list[dict], objective_policies: Mapping | None = None,
                 policies: Mapping | None = None) -> dict:
    """The content of run.json for an :class:`~hf_rmod.experiments.configs.EvaluationConfig` run.

    ``objective_policies`` / ``policies``: ``{name: describe_model(policy)}`` of the per-objective policies and
    the other policies that this run's methods sample from (RS, MOD, ``EvalMethod.policy``)."""
    return {
        "max_new_tokens": config.max_new_tokens, "generation_kwargs": dict(generation_kwargs),
        "chat_template": config.chat_template, "seed": config.seed, "batch_size": config.batch_size,
        "num_processes": world, "policy": policy, "value_head": value_head, "rewards": rewards,
        "objective_policies": dict(objective_policies or {}), "policies": dict(policies or {}),
    }


def _lookup(settings: Mapping, dotted: str) -> Any:
    value: Any = settings
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


_MISSING = object()


def check_run_settings(output_dir: Path, settings: Mapping) -> None:
    """Refuse to resume into ``output_dir`` when its run.json records other settings (all differences named).

    Settings that an older run.json does not record (written before they were) are not compared.
    """
    path = output_dir / RUN_FILE
    if not path.exists():
        return
    previous = json.loads(path.read_text(encoding="utf-8"))
    changed = []
    for key in _RUN_CHECKED:
        old, new = _lookup(previous, key), _lookup(settings, key)
        if old is not _MISSING and jsonable(old) != jsonable(new):
            changed.append(f"{key}: {_short(old)} -> {_short(new)}")
    changed += _changed_policies(previous, settings)
    if changed:
        raise ValueError(
            f"{output_dir} holds results generated with other settings ({'; '.join(changed)}); resuming would mix "
            "them. Use a new output folder (--output-dir / output_dir=) or rerun with the same settings."
        )


def _changed_policies(previous: Mapping, settings: Mapping) -> list[str]:
    """``objective_policies[name]`` / ``policies[name]`` recorded by both runs must be equal: a policy used before
    must be the same now; one only the new run uses (a method added to the folder) is not compared."""
    changed = []
    for group in _POLICY_GROUPS:
        old, new = previous.get(group), settings.get(group)
        if not isinstance(old, Mapping) or not isinstance(new, Mapping):
            continue
        for name in old:
            if name in new and jsonable(old[name]) != jsonable(new[name]):
                changed.append(f"{group}[{name!r}]: {_short(old[name])} -> {_short(new[name])}")
    return changed


def keep_recorded_policies(output_dir: Path, settings: Mapping) -> dict:
    """``settings`` plus the policies that ``output_dir``'s run.json records and this run does not use, so that a
    later run using them again is still checked against the policies its rows were generated with."""
    path = output_dir / RUN_FILE
    merged = dict(settings)
    if not path.exists():
        return merged
    previous = json.loads(path.read_text(encoding="utf-8"))
    for group in _POLICY_GROUPS:
        old = previous.get(group)
        if isinstance(old, Mapping):
            merged[group] = {**old, **(settings.get(group) or {})}
    return merged


def _short(value: Any) -> str:
    if isinstance(value, list) and all(isinstance(v, Mapping) and "function" in v for v in value):
        value = [f"{v['name']}={v['function']}" if v.get("name") else v["function"] for v in value]
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def write_run_settings(output_dir: Path, settings: Mapping) -> None:
    """Write run.json (indented JSON; values JSON cannot hold become their repr)."""
    (output_dir / RUN_FILE).write_text(json.dumps(settings, indent=2, default=repr) + "\n", encoding="utf-8")
