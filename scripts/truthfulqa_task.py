"""The TruthfulQA task (G = 5) end to end: split, sample, fit a value model, evaluate, G-sweep (issue 12 §1).

Five objectives (``hf_rmod.rewards.TRUTHFULQA_OBJECTIVES``: harmless, helpful, truthful, non_offensive, concise;
``docs/reward_models.md``, "The TruthfulQA task"). Every step reads and writes under ``--root`` (default
``runs/truthfulqa``), is resumable (rerun the same command after an interruption) and prints what it wrote:

    python scripts/truthfulqa_task.py split                 # train_prompts.jsonl / eval_prompts.jsonl / split.json
    python scripts/truthfulqa_task.py sample                # train_samples.jsonl (N = 4 responses per train prompt)
    python scripts/truthfulqa_task.py fit                   # value-minilm-truthfulqa/ (+ fit_report.json)
    python scripts/truthfulqa_task.py evaluate --run        # eval/: hf-rmod evaluate on the evaluation prompts
    python scripts/truthfulqa_task.py gsweep --run          # gsweep/<order>-G<g>/: RMOD vs UNIFORM as G grows
    python scripts/truthfulqa_task.py plot                  # docs/img/truthfulqa_gsweep.png (+ gsweep/gsweep.json, .md)

``evaluate`` and ``gsweep`` without ``--run`` only print what they would run (and how much of it is done).

- ``split``: a seeded, category-stratified split of the data folder's ``truthfulqa_prompts.jsonl`` (817
  questions; ``--eval-size`` 300 go to evaluation, the rest to training), all fields kept; the evaluation and
  training sets are disjoint (ids and question texts), asserted before anything is written.
- ``sample``: ``hf_rmod.experiments.sampling.sample_responses`` (what ``hf-rmod sample`` runs) on the training
  questions with ``TruthfulQATaskReward``, the project's default sampling (``DEFAULT_SAMPLING``, chat template).
- ``fit``: the 5-output MiniLM text value model, fit exactly like the default one
  (``scripts/train_default_value_model.py``: CD-FUDGE ridge, alpha/beta by grouped CV, held-out report, refit on
  all). ``harmless`` and ``helpful`` shrink towards their reward models (the harmless BT head, the relevance
  cosine); ``truthful``, ``non_offensive`` and ``concise`` towards zero (they are not linear in the value model's
  features). Refuses records that contain an evaluation question.
- ``evaluate``: ``hf-rmod evaluate`` with that value model and ``--reward hf_rmod.rewards:TruthfulQATaskReward``:
  reference, Best-of-K, CD for each objective, UNIFORM, RMOD (K = 8, B = 16, λ = 0.5, 96 tokens).
- ``gsweep``: the paper's Fig. 6 analogue. For G = 2..5 the first G objectives in the fixed order (``forward``) and
  in reverse order (``reverse``): UNIFORM and RMOD decode with those G outputs of the one 5-objective value model
  (``RMODConfig(objectives=...)``) and are scored with the same G reward columns (:class:`SelectObjectives`), so
  the worst case is over those G objectives. The full set (G = 5) is the same in both orders and runs once
  (``forward-G5``); with ``--full-from-eval`` it is not run at all but read from the ``evaluate`` step's UNIFORM and
  RMOD rows (the same prompts, seeds and settings give the same samples; checked at a tiny scale). Runs in this
  process (``hf-rmod evaluate`` has no flag for an objective subset).
- ``plot``: worst-case reward (z, 95% CI) of RMOD and UNIFORM against G for both orders, and the paired
  RMOD − UNIFORM difference.

Tiny end-to-end check (a throw-away root)::

    R=runs/truthfulqa-smoke
    python scripts/truthfulqa_task.py split --root $R
    python scripts/truthfulqa_task.py sample --root $R --limit 4 --num-responses 2 --max-new-tokens 32
    python scripts/truthfulqa_task.py fit --root $R --folds 3 --max-new-tokens 32
    python scripts/truthfulqa_task.py evaluate --root $R --run --num-prompts 2 --max-new-tokens 32
    python scripts/truthfulqa_task.py gsweep --root $R --run --num-prompts 2 --max-new-tokens 32 --sizes 2,3 --orders forward
    python scripts/truthfulqa_task.py plot --root $R --output $R/gsweep.png
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shlex
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

TRUTHFULQA_FILE = "truthfulqa_prompts.jsonl"
SPLIT_FORMAT = "truthfulqa_task.split/1"
ORDERS = ("forward", "reverse")
VALUE_MODEL_DIR = "value-minilm-truthfulqa"
REWARD_SPEC = "hf_rmod.rewards:TruthfulQATaskReward"


# ------------------------------------------------------------------------------------------------------------
# paths
# ------------------------------------------------------------------------------------------------------------
class Paths:
    """The files of one root folder."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.train = self.root / "train_prompts.jsonl"
        self.eval = self.root / "eval_prompts.jsonl"
        self.split = self.root / "split.json"
        self.samples = self.root / "train_samples.jsonl"
        self.value_model = self.root / VALUE_MODEL_DIR
        self.fit_report = self.root / "fit_report.json"
        self.eval_dir = self.root / "eval"
        self.gsweep = self.root / "gsweep"

    def need(self, path: Path, step: str) -> Path:
        if not path.exists():
            raise SystemExit(f"error: {path} does not exist; run `python scripts/truthfulqa_task.py {step} --root "
                             f"{self.root}` first.")
        return path


# ------------------------------------------------------------------------------------------------------------
# split
# ------------------------------------------------------------------------------------------------------------
def truthfulqa_path(data: str | os.PathLike | None = None) -> Path:
    """``data`` (a file), or the data folder's ``truthfulqa_prompts.jsonl``; FileNotFoundError saying where it
    looked and how to point at it."""
    if data is not None:
        path = Path(data).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"--data {str(data)!r} is not a file; give the TruthfulQA JSONL "
                                    f"({TRUTHFULQA_FILE}: id, prompt, category, best_answer rows).")
        return path
    from hf_rmod.defaults import data_file  # light: no torch model is loaded

    try:
        return data_file(TRUTHFULQA_FILE)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"The TruthfulQA task needs {TRUTHFULQA_FILE} (the shared data folder, not the "
                                f"repository): {err} Pass --data FILE or set HF_RMOD_DATA_DIR.") from None


def read_rows(path: Path) -> list[dict]:
    """The JSONL rows of ``path``; each needs a string ``id``, ``prompt`` and ``category``, ids and prompts unique."""
    from hf_rmod.experiments.io import iter_jsonl

    rows = []
    for number, row in iter_jsonl(path):
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("id", "prompt", "category")):
            raise ValueError(f"{path}:{number}: expected an object with string 'id', 'prompt' and 'category'.")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path} holds no rows.")
    for key in ("id", "prompt"):
        counts = Counter(r[key].strip() for r in rows)
        repeated = [k for k, n in counts.items() if n > 1]
        if repeated:
            raise ValueError(f"{path}: {key} {repeated[0]!r} appears {counts[repeated[0]]} times; the split needs "
                             f"unique {key}s.")
    return rows


def eval_quota(counts: dict[str, int], eval_size: int) -> dict[str, int]:
    """Evaluation questions per category, proportional to its size (largest remainder; ties by category name)."""
    total = sum(counts.values())
    if not 0 < eval_size < total:
        raise ValueError(f"--eval-size must be in [1, {total - 1}] for {total} questions, got {eval_size}.")
    exact = {c: n * eval_size / total for c, n in counts.items()}
    quota = {c: int(v) for c, v in exact.items()}
    left = eval_size - sum(quota.values())
    for c in sorted(counts, key=lambda c: (-(exact[c] - quota[c]), c))[:left]:
        quota[c] += 1
    return quota


def stratified_split(rows: Sequence[dict], eval_size: int, seed: int) -> tuple[list[dict], list[dict]]:
    """``(train, eval)`` rows: per category, ``eval_quota`` of its questions drawn at random (``seed``) go to
    evaluation, the rest to training; each list in a seeded random order (so any prefix of the evaluation file is a
    random subset). Deterministic for the same rows, ``eval_size`` and ``seed``; disjoint and complete (asserted)."""
    by_category: dict[str, list[dict]] = {}
    for row in rows:
        by_category.setdefault(row["category"], []).append(row)
    quota = eval_quota({c: len(v) for c, v in by_category.items()}, eval_size)
    rng = random.Random(seed)
    train, evaluation = [], []
    for category in sorted(by_category):
        members = by_category[category]
        chosen = set(rng.sample(range(len(members)), quota[category]))
        evaluation += [r for i, r in enumerate(members) if i in chosen]
        train += [r for i, r in enumerate(members) if i not in chosen]
    rng.shuffle(train)
    rng.shuffle(evaluation)
    check_disjoint(train, evaluation)
    assert len(train) + len(evaluation) == len(rows) and len(evaluation) == eval_size
    return train, evaluation


def check_disjoint(train: Sequence[dict], evaluation: Sequence[dict]) -> None:
    """AssertionError when a question (id or text) is on both sides."""
    for key in ("id", "prompt"):
        shared = {r[key].strip() for r in train} & {r[key].strip() for r in evaluation}
        assert not shared, f"{len(shared)} {key}s are in both the training and the evaluation set, e.g. {min(shared)!r}"


def _write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)


def _ids(path: Path) -> list[str]:
    from hf_rmod.experiments.io import iter_jsonl

    return [row["id"] for _, row in iter_jsonl(path)]


def run_split(paths: Paths, data: str | None, eval_size: int, seed: int) -> dict:
    """Write train/eval prompts and split.json; a rerun with the same inputs checks the files and writes nothing,
    one with other inputs is refused (the samples and the value model depend on the split)."""
    source = truthfulqa_path(data)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    rows = read_rows(source)
    train, evaluation = stratified_split(rows, eval_size, seed)
    record = {
        "format": SPLIT_FORMAT, "source": str(source), "source_sha256": digest, "seed": seed, "eval_size": eval_size,
        "stratified_by": "category",
        "counts": {"total": len(rows), "train": len(train), "eval": len(evaluation)},
        "categories": {c: {"train": sum(r["category"] == c for r in train),
                           "eval": sum(r["category"] == c for r in evaluation)}
                       for c in sorted({r["category"] for r in rows})},
        "train_ids": [r["id"] for r in train], "eval_ids": [r["id"] for r in evaluation],
    }
    if paths.split.exists():
        old = json.loads(paths.split.read_text(encoding="utf-8"))
        same = all(old.get(k) == record[k] for k in ("source_sha256", "seed", "eval_size", "train_ids", "eval_ids"))
        if not same:
            raise SystemExit(f"error: {paths.split} records another split (seed {old.get('seed')}, eval size "
                             f"{old.get('eval_size')}, source sha256 {str(old.get('source_sha256'))[:12]}); the samples "
                             "and the value model under this root depend on it. Use another --root.")
        if paths.train.exists() and paths.eval.exists() and _ids(paths.train) == record["train_ids"] \
                and _ids(paths.eval) == record["eval_ids"]:
            print(f"already split: {paths.train} ({len(train)}), {paths.eval} ({len(evaluation)}); nothing written")
            return record
    paths.root.mkdir(parents=True, exist_ok=True)
    _write_jsonl(paths.train, train)
    _write_jsonl(paths.eval, evaluation)
    paths.split.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {paths.train} ({len(train)} questions), {paths.eval} ({len(evaluation)} questions), {paths.split} "
          f"(seed {seed}, {len(record['categories'])} categories, stratified)")
    return record


def _prompts(path: Path) -> list[str]:
    from hf_rmod.experiments.io import read_prompts

    return read_prompts(path)


def _check_no_eval_prompt(prompts: Sequence[str], paths: Paths, what: str) -> None:
    evaluation = {p.strip() for p in _prompts(paths.need(paths.eval, "split"))}
    leaked = sorted({p for p in prompts if p.strip() in evaluation})
    if leaked:
        raise SystemExit(f"error: {len(leaked)} evaluation questions are in {what}, e.g. {leaked[0]!r}; the value "
                         "model must not see evaluation prompts.")


# ------------------------------------------------------------------------------------------------------------
# sample
# ------------------------------------------------------------------------------------------------------------
def run_sample(paths: Paths, args: argparse.Namespace) -> None:
    prompts = _prompts(paths.need(paths.train, "split"))
    prompts = prompts[: args.limit] if args.limit else prompts
    _check_no_eval_prompt(prompts, paths, f"{paths.train}")
    done = {r["prompt"] for r in _records(paths)}
    if all(p in done for p in prompts):
        print(f"already sampled: all {len(prompts)} questions are in {paths.samples}; nothing written")
        return
    import torch

    torch.set_num_threads(args.threads)
    from hf_rmod.defaults import load_default_policy
    from hf_rmod.experiments.configs import SamplingConfig
    from hf_rmod.experiments.io import read_jsonl
    from hf_rmod.experiments.sampling import sample_responses
    from hf_rmod.rewards import TRUTHFULQA_OBJECTIVES, TruthfulQATaskReward

    t0 = time.perf_counter()
    model, tokenizer = load_default_policy()
    reward = TruthfulQATaskReward(data_path=args.data)
    print(f"loaded the policy and the task reward in {time.perf_counter() - t0:.1f} s; {len(prompts)} training "
          f"questions, {args.num_responses} responses each, {args.max_new_tokens} new tokens", flush=True)
    for start in range(0, len(prompts), args.chunk):
        chunk = prompts[start : start + args.chunk]
        config = SamplingConfig(num_responses=args.num_responses, max_new_tokens=args.max_new_tokens,
                                batch_size=args.batch_size, seed=args.seed + start)
        t0 = time.perf_counter()
        rows = sample_responses(model, tokenizer, chunk, reward, config, output_path=paths.samples,
                                objectives=list(TRUTHFULQA_OBJECTIVES), show_progress=False)
        seconds = time.perf_counter() - t0
        if rows:
            tokens = sum(len(r["response_ids"]) for r in rows)
            print(f"questions {start}-{start + len(chunk)}: {len(rows)} responses in {seconds:.1f} s = "
                  f"{seconds / len(chunk):.2f} s/question, {tokens / seconds:.0f} tokens/s", flush=True)
    total = len(read_jsonl(paths.samples)[0])
    print(f"wrote {paths.samples}: {total} responses in all")


# ------------------------------------------------------------------------------------------------------------
# fit
# ------------------------------------------------------------------------------------------------------------
def _default_fit_script():
    folder = str(Path(__file__).resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    import train_default_value_model

    return train_default_value_model


INIT_NOTE = ("harmless and helpful shrink towards their reward models (the MiniLM Bradley–Terry head and the "
             "relevance cosine, written in the pair features); truthful, non_offensive and concise towards zero (not "
             "linear in [e(x), e(y^t), e(x)*e(y^t)]: truthful compares with the reference answer, which the features "
             "do not see; non_offensive and concise read the text)")


def run_fit(paths: Paths, args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from hf_rmod.experiments.records import load_records
    from hf_rmod.rewards import TRUTHFULQA_OBJECTIVES, MiniLMHarmlessReward, MiniLMRelevanceReward

    tdv = _default_fit_script()
    records = load_records(paths.need(paths.samples, "sample"), list(TRUTHFULQA_OBJECTIVES))
    _check_no_eval_prompt([r["prompt"] for r in records], paths, str(paths.samples))
    split = json.loads(paths.need(paths.split, "split").read_text(encoding="utf-8"))
    objectives = list(TRUTHFULQA_OBJECTIVES)
    heads = {"harmless": MiniLMHarmlessReward().head, "helpful": MiniLMRelevanceReward().linear_head()}
    n_prompts = len({r["prompt"] for r in records})
    source = (f"{n_prompts} questions of {paths.train} (the training side of a seeded category-stratified split of "
              f"{TRUTHFULQA_FILE}, {paths.split}; no evaluation prompt)")
    card = {
        "title": "TruthfulQA task value model: MiniLM on the partial text (SmolLM2-135M-Instruct, G = 5: "
                 + ", ".join(objectives) + ")",
        "load": "Load it with `hf_rmod.defaults.load_value_model(folder, tokenizer)` (`hf-rmod evaluate --value-head "
                "folder`) or `RewardValueModel.from_pretrained(folder, tokenizer)`",
        "prompts_source": source,
        "data": f"(TruthfulQA questions of `{paths.train}`: the training side of a seeded, category-stratified split "
                f"of `{TRUTHFULQA_FILE}` (seed {split['seed']}, {split['counts']['train']} training / "
                f"{split['counts']['eval']} evaluation questions, `{paths.split}`); **no** evaluation question of "
                f"`{paths.eval}` (checked before fitting)), sampled from the policy with the settings below, scored by "
                "`TruthfulQATaskReward` (harmless: MiniLM Bradley–Terry head; helpful: MiniLM relevance; truthful: "
                "response–best-answer MiniLM cosine; non_offensive: 1 − P(offensive) of alt-profanity-check; concise: "
                "−log(1 + words)).",
        "extra": [f"- **Initialisation**: {INIT_NOTE}."],
        "init_row": "initial weights, no training (reward models for harmless/helpful, zero for the others)",
        "made_with": "Made with `scripts/truthfulqa_task.py fit` (the fit of `scripts/train_default_value_model.py`).",
    }
    fit_info = {"train_prompts_file": str(paths.train), "split_file": str(paths.split), "split_seed": split["seed"],
                "evaluation_prompts_file": str(paths.eval), "evaluation_prompts_used": 0, "init": INIT_NOTE}
    t0 = time.perf_counter()
    report = tdv.fit_text_value_model(
        paths.samples, objectives, [heads.get(g) for g in objectives], report_path=paths.fit_report,
        save=paths.value_model, card=card, fit_info=fit_info, **tdv.fit_options(args),
    )
    print(f"fit in {time.perf_counter() - t0:.1f} s; wrote {paths.value_model} (model card README.md) and "
          f"{paths.fit_report}")
    _print_fit_table(report)
    return report


def _print_fit_table(report: dict) -> None:
    """Held-out within-prompt pairwise accuracy (first prefix and mean over prefixes) and z-MSE per objective."""
    positions, objectives = report["positions"], report["objectives"]
    print(f"held-out ({report['val']['prompts']} prompts, {report['val']['responses']} responses): pairwise accuracy "
          f"at t={positions[0]} / mean over t, z-MSE mean over t")
    for name, m in report["rows"].items():
        cells = []
        for g, objective in enumerate(objectives):
            acc = [m["pairwise_accuracy"][s][g] for s in range(len(positions))]
            mse = sum(m["mse_z"][s][g] for s in range(len(positions))) / len(positions)
            cells.append(f"{objective} {acc[0]:.3f}/{sum(acc) / len(acc):.3f}, {mse:.3f}")
        print(f"  {name}: " + "; ".join(cells))


# ------------------------------------------------------------------------------------------------------------
# evaluate
# ------------------------------------------------------------------------------------------------------------
def method_names(objectives: Sequence[str], k: int, b: int, lam: float) -> list[str]:
    """reference, Best-of-K, CD per objective, UNIFORM, RMOD: the names ``hf-rmod evaluate --methods`` takes."""
    from hf_rmod.experiments.methods import default_methods

    return [m.name for m in default_methods(objectives, [k], [b], [lam])]


def _hf_rmod() -> list[str]:
    script = Path(sys.executable).with_name("hf-rmod")
    return [str(script)] if script.exists() else [sys.executable, "-m", "hf_rmod"]


def evaluate_command(paths: Paths, args: argparse.Namespace, objectives: Sequence[str]) -> list[str]:
    return [
        "evaluate", "--threads", str(args.threads), "--prompts", str(paths.eval), "--prompt-offset", "0",
        "--num-prompts", str(args.num_prompts), "--value-head", str(paths.value_model), "--reward", REWARD_SPEC,
        "--methods", ",".join(method_names(objectives, args.k, args.b, args.lam)), "--k", str(args.k),
        "--b", str(args.b), "--lam", str(args.lam), "--max-new-tokens", str(args.max_new_tokens),
        "--batch-size", str(args.batch_size), "--no-progress", "-o", str(paths.eval_dir),
    ]


def _rows_done(folder: Path) -> int:
    path = folder / "results.jsonl"
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def _num_prompts(paths: Paths, requested: int) -> int:
    available = len(_prompts(paths.need(paths.eval, "split")))
    return available if requested == 0 else min(requested, available)


def run_evaluate(paths: Paths, args: argparse.Namespace) -> None:
    from hf_rmod.rewards.task_objectives import TRUTHFULQA_OBJECTIVES

    command = evaluate_command(paths, args, TRUTHFULQA_OBJECTIVES)
    n, methods = _num_prompts(paths, args.num_prompts), len(command[command.index("--methods") + 1].split(","))
    print("hf-rmod " + shlex.join(command))
    print(f"# {n} prompts x {methods} methods = {n * methods} rows; {_rows_done(paths.eval_dir)} in "
          f"{paths.eval_dir / 'results.jsonl'}")
    if not args.run:
        print("# (not run; pass --run)")
        return
    paths.need(paths.value_model, "fit")
    _check_no_eval_prompt([r["prompt"] for r in _records(paths)], paths, str(paths.samples))
    env = {**os.environ, **_data_env(args.data)}
    t0 = time.perf_counter()
    done = subprocess.run(_hf_rmod() + command, env=env)
    print(f"evaluate: exit {done.returncode} in {time.perf_counter() - t0:.1f} s; wrote {paths.eval_dir}")
    if done.returncode:
        raise SystemExit(done.returncode)


def _data_env(data: str | None) -> dict:
    """``HF_RMOD_DATA_DIR`` for a ``--data`` file, so that ``TruthfulQATaskReward()`` (built with no arguments, as
    ``--reward`` builds it) finds the same file; the file must then be named like the data folder's."""
    if data is None:
        return {}
    path = truthfulqa_path(data)
    if path.name != TRUTHFULQA_FILE:
        raise SystemExit(f"error: --data {data}: evaluate and gsweep build TruthfulQATaskReward() with no arguments, "
                         f"which reads {TRUTHFULQA_FILE} of HF_RMOD_DATA_DIR; name the file {TRUTHFULQA_FILE}.")
    return {"HF_RMOD_DATA_DIR": str(path.resolve().parent)}


def _records(paths: Paths) -> list[dict]:
    if not paths.samples.exists():
        return []
    return [json.loads(line) for line in paths.samples.read_text(encoding="utf-8").splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------------------------
# G-sweep
# ------------------------------------------------------------------------------------------------------------
class SelectObjectives:
    """Some columns of a multi-objective reward function, by name: ``fn(prompts, responses) -> (n, len(objectives))``.

    ``reward_fn`` must declare its columns (an ``objectives`` attribute, e.g. ``TruthfulQATaskReward``); ``objectives``
    are names among them, in the order wanted. A name the reward does not have raises ``ValueError`` naming it.
    """

    def __init__(self, reward_fn: Any, objectives: Sequence[str]):
        available = getattr(reward_fn, "objectives", None)
        if available is None or isinstance(available, str) or not callable(reward_fn):
            raise TypeError(f"{reward_fn!r} must be a reward function declaring its columns (an `objectives` list).")
        available, objectives = [str(g) for g in available], [str(g) for g in objectives]
        if not objectives or len(set(objectives)) != len(objectives):
            raise ValueError(f"`objectives` must be distinct names, at least one; got {objectives}.")
        missing = [g for g in objectives if g not in available]
        if missing:
            raise ValueError(f"objective(s) {missing} are not columns of {reward_fn!r}; it has {available}.")
        self.reward_fn, self.available, self.objectives = reward_fn, available, objectives
        self.index = [available.index(g) for g in objectives]

    def __call__(self, prompts: list[str], responses: list[str]):
        import torch

        scores = torch.as_tensor(self.reward_fn(prompts, responses))
        if scores.dim() != 2 or scores.shape[1] != len(self.available):
            raise ValueError(f"{self.reward_fn!r} returned shape {tuple(scores.shape)}; expected (n, "
                             f"{len(self.available)}) for {self.available}.")
        return scores[:, self.index]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reward_fn!r}, objectives={self.objectives})"


def gsweep_plan(objectives: Sequence[str], sizes: Sequence[int], orders: Sequence[str],
                full_from_eval: bool = False) -> list[dict]:
    """One entry per run: ``{"order", "g", "objectives", "name", "same_as"}``; ``forward`` takes the first ``g``
    objectives, ``reverse`` the first ``g`` of the reversed list. A subset with the same objectives as an earlier
    entry (G = all objectives, in both orders) is not run again: ``same_as`` names the run it reuses. With
    ``full_from_eval`` the full set is not run at all: ``same_as`` is ``"eval"`` (the evaluate step's UNIFORM and
    RMOD rows: the same prompts, seeds and settings give the same samples)."""
    objectives = list(objectives)
    bad = [g for g in sizes if not 1 <= g <= len(objectives)]
    if bad or not sizes:
        raise ValueError(f"--sizes must be in 1..{len(objectives)}, got {list(sizes)}.")
    unknown = [o for o in orders if o not in ORDERS]
    if unknown or not orders:
        raise ValueError(f"--orders must be among {list(ORDERS)}, got {list(orders)}.")
    plan, seen = [], {}
    for order in orders:
        ordered = objectives if order == "forward" else objectives[::-1]
        for g in sorted(set(sizes)):
            subset = ordered[:g]
            name = f"{order}-G{g}"
            same = "eval" if full_from_eval and g == len(objectives) else seen.get(frozenset(subset))
            plan.append({"order": order, "g": g, "objectives": subset, "name": name, "same_as": same})
            seen.setdefault(frozenset(subset), name)
    return plan


def subset_methods(available: Sequence[str], subset: Sequence[str], k: int, b: int, lam: float) -> list:
    """UNIFORM and RMOD decoding with the ``subset`` outputs of a value model with objectives ``available``
    (``RMODConfig(objectives=subset)``); named like the full-set methods (``uniform_k8_b16``, ``rmod_k8_b16_lam0.5``)."""
    from hf_rmod.experiments.methods import EvalMethod

    missing = [g for g in subset if g not in available]
    if missing:
        raise ValueError(f"objective(s) {missing} are not outputs of the value model; it has {list(available)}.")
    uniform, rmod = EvalMethod.uniform(k, b), EvalMethod.rmod(k, b, lam)
    return [EvalMethod(m.name, {**m.rmod, "objectives": list(subset)}) for m in (uniform, rmod)]


def run_gsweep(paths: Paths, args: argparse.Namespace) -> None:
    from hf_rmod.rewards.task_objectives import TRUTHFULQA_OBJECTIVES

    plan = gsweep_plan(TRUTHFULQA_OBJECTIVES, _ints(args.sizes), args.orders.split(","), args.full_from_eval)
    n = _num_prompts(paths, args.num_prompts)
    names = [m.name for m in subset_methods(TRUTHFULQA_OBJECTIVES, TRUTHFULQA_OBJECTIVES, args.k, args.b, args.lam)]
    print(f"# G-sweep: {', '.join(names)} on {n} evaluation prompts of {paths.eval}, K={args.k}, B={args.b}, "
          f"λ={args.lam}, {args.max_new_tokens} tokens; value model {paths.value_model} (its outputs for each subset), "
          "rewards: the same subset of TruthfulQATaskReward's columns")
    for entry in plan:
        folder = paths.gsweep / entry["name"]
        state = (f"= {_summary_path(paths, entry).parent} (same objectives), not rerun" if entry["same_as"]
                 else f"{_rows_done(folder)}/{n * len(names)} rows in {folder}")
        print(f"  {entry['name']}: {', '.join(entry['objectives'])}: {state}")
    if not args.run:
        print("# (not run; pass --run)")
        return
    import torch

    torch.set_num_threads(args.threads)
    os.environ.update(_data_env(args.data))
    from hf_rmod.defaults import load_default_policy, load_value_model
    from hf_rmod.experiments.configs import EvaluationConfig
    from hf_rmod.experiments.evaluation import evaluate
    from hf_rmod.experiments.io import read_prompts
    from hf_rmod.rewards import TruthfulQATaskReward

    paths.need(paths.value_model, "fit")
    _check_no_eval_prompt([r["prompt"] for r in _records(paths)], paths, str(paths.samples))
    t0 = time.perf_counter()
    model, tokenizer = load_default_policy()
    value_model = load_value_model(paths.value_model, tokenizer)
    reward = TruthfulQATaskReward()
    prompts = read_prompts(str(paths.eval))[:n]
    config = EvaluationConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    print(f"loaded in {time.perf_counter() - t0:.1f} s", flush=True)
    for entry in plan:
        if entry["same_as"]:
            continue
        folder = paths.gsweep / entry["name"]
        t0 = time.perf_counter()
        result = evaluate(model, tokenizer, value_model, SelectObjectives(reward, entry["objectives"]), prompts,
                          subset_methods(value_model.objectives, entry["objectives"], args.k, args.b, args.lam),
                          config, output_dir=folder, show_progress=False)
        seconds = time.perf_counter() - t0
        methods = result.summary["methods"]
        print(f"  {entry['name']}: " + ", ".join(f"{m} worst-case {methods[m]['worst_case_reward']:+.3f}" for m in names)
              + f"; {result.num_generated} rows generated in {seconds:.1f} s"
              + (f" = {seconds / result.num_generated:.1f} s/row" if result.num_generated else "")
              + f"; wrote {folder}", flush=True)


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"error: expected comma-separated integers, got {text!r}.") from None


# ------------------------------------------------------------------------------------------------------------
# plot
# ------------------------------------------------------------------------------------------------------------
def _summary_path(paths: Paths, entry: dict) -> Path:
    if entry["same_as"] == "eval":
        return paths.eval_dir / "summary.json"
    return paths.gsweep / (entry["same_as"] or entry["name"]) / "summary.json"


def _eval_summary(paths: Paths, num_prompts: int | None) -> Path:
    """The evaluate step's summary, restricted to its first ``num_prompts`` prompts when the G-sweep ran on fewer.

    The G-sweep's G = all point must cover the same prompts as its other points; when the evaluation holds more,
    its UNIFORM and RMOD rows on the first ``num_prompts`` prompts are summarized again (``summarize_folder``,
    nothing generated) into ``gsweep/eval-first<n>/``. Raises ``ValueError`` when it holds fewer."""
    path = paths.eval_dir / "summary.json"
    if num_prompts is None or not path.exists():
        return path
    summary = json.loads(path.read_text(encoding="utf-8"))
    if summary["n_prompts"] == num_prompts:
        return path
    if summary["n_prompts"] < num_prompts:
        raise ValueError(f"the evaluate step's {path} covers {summary['n_prompts']} prompts, the G-sweep "
                         f"{num_prompts}: rerun `evaluate --run --num-prompts {num_prompts}` (it resumes) or the "
                         "G-sweep with fewer prompts.")
    from hf_rmod.experiments.summary import summarize_folder

    kinds = {m["kind"]: name for name, m in summary["methods"].items()}
    folder = paths.gsweep / f"eval-first{num_prompts}"
    summarize_folder(paths.eval_dir, methods=[kinds["uniform"], kinds["rmod"]], num_prompts=num_prompts,
                     summary_dir=folder, plots=False)
    return folder / "summary.json"


def gsweep_points(paths: Paths, plan: Sequence[dict]) -> list[dict]:
    """Per plan entry with a summary: worst-case reward (z) and CI of UNIFORM and RMOD and the paired RMOD − UNIFORM
    difference (from summary.json's comparisons). Entries read from the evaluate step cover the same prompts as the
    G-sweep's own runs (:func:`_eval_summary`)."""
    summaries = {}
    for entry in plan:
        path = None if entry["same_as"] == "eval" else _summary_path(paths, entry)
        if path is not None and path.exists():
            summaries[entry["name"]] = (path, json.loads(path.read_text(encoding="utf-8")))
    sizes = sorted({s["n_prompts"] for _, s in summaries.values()})
    if len(sizes) > 1:
        raise ValueError(f"the G-sweep runs under {paths.gsweep} cover different numbers of prompts {sizes}; rerun "
                         "them with one --num-prompts (they resume).")
    if any(entry["same_as"] == "eval" for entry in plan):
        path = _eval_summary(paths, sizes[0] if sizes else None)
        if path.exists():
            evaluated = (path, json.loads(path.read_text(encoding="utf-8")))
            summaries.update({e["name"]: evaluated for e in plan if e["same_as"] == "eval"})
    points = []
    for entry in plan:
        if entry["name"] not in summaries:
            continue
        path, summary = summaries[entry["name"]]
        kinds = {m["kind"]: name for name, m in summary["methods"].items()}
        if not {"uniform", "rmod"} <= set(kinds):
            continue
        uniform, rmod = summary["methods"][kinds["uniform"]], summary["methods"][kinds["rmod"]]
        diff = next((c for c in summary.get("comparisons", [])
                     if c["method"] == kinds["rmod"] and c["baseline"] == kinds["uniform"]), None)
        points.append({
            "order": entry["order"], "g": entry["g"], "objectives": entry["objectives"], "run": str(path.parent),
            "n_prompts": summary["n_prompts"],
            "uniform": uniform["worst_case_reward"], "uniform_ci": uniform["worst_case_reward_ci"],
            "rmod": rmod["worst_case_reward"], "rmod_ci": rmod["worst_case_reward_ci"],
            "difference": None if diff is None else diff["worst_case_difference"],
            "difference_ci": None if diff is None else diff["worst_case_difference_ci"],
            "win_rate": None if diff is None else diff["win_rate"],
        })
    reference = reference_worst_case(paths, [p["objectives"] for p in points], sizes[0] if sizes else None)
    for point, value in zip(points, reference):
        point["reference"] = value
    return points


def reference_worst_case(paths: Paths, subsets: Sequence[Sequence[str]], num_prompts: int | None) -> list:
    """The reference policy's worst-case reward (z) for each objective subset, from the evaluate step's reference
    rows on its first ``num_prompts`` prompts (all: ``None``), z-scored with that step's normalisation: how far the
    worst case falls as G grows with no decoding at all. ``None`` per subset when there are no such rows."""
    rows_file, summary_file = paths.eval_dir / "results.jsonl", paths.eval_dir / "summary.json"
    if not rows_file.is_file() or not summary_file.is_file():
        return [None] * len(subsets)
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    method = summary.get("reference_method") or "reference"
    mean, std = summary["normalization"]["reward_mean"], summary["normalization"]["reward_std"]
    from hf_rmod.experiments.io import read_jsonl
    from hf_rmod.metrics import worst_case_reward

    rows = [r for r in read_jsonl(rows_file)[0] if r["method"] == method  # an append log: a partial last line is
            and (num_prompts is None or r["prompt_id"] < num_prompts)]    # dropped (an evaluation may be running)
    if not rows:
        return [None] * len(subsets)
    return [worst_case_reward([[(r["rewards"][g] - mean[g]) / std[g] for g in subset] for r in rows])  # (n, G)
            for subset in subsets]


def plot_gsweep(points: Sequence[dict], output: Path) -> Path:
    """Left: worst-case reward (z) of RMOD and UNIFORM with their CIs against G, per order; right: the paired
    RMOD − UNIFORM difference with its CI."""
    import numpy as np

    from hf_rmod.experiments.plots import _KIND_COLOURS, _err, _figure, _save

    fig, axes = _figure(9.5, 3.8, ncols=2)
    left, right = axes[0, 0], axes[0, 1]
    styles = {"forward": ("-", "o", -0.06), "reverse": ("--", "s", 0.06)}
    for order in ORDERS:
        mine = sorted((p for p in points if p["order"] == order), key=lambda p: p["g"])
        if not mine:
            continue
        ls, marker, dx = styles[order]
        gs = np.array([p["g"] for p in mine], dtype=float) + dx
        for kind, label in (("rmod", "RMOD"), ("uniform", "UNIFORM")):
            errs = np.array([_err(p[kind], p[kind + "_ci"]) for p in mine])[:, :, 0].T
            left.errorbar(gs, [p[kind] for p in mine], yerr=errs, ls=ls, marker=marker, capsize=3,
                          color=_KIND_COLOURS[kind], label=f"{label}, {order} order")
        with_reference = [p for p in mine if p.get("reference") is not None]
        if with_reference:
            left.plot(np.array([p["g"] for p in with_reference], dtype=float) + dx,
                      [p["reference"] for p in with_reference], ls=ls, marker="x", color="0.5",
                      label=f"reference policy, {order} order")
        paired = [p for p in mine if p["difference"] is not None]
        if paired:
            errs = np.array([_err(p["difference"], p["difference_ci"]) for p in paired])[:, :, 0].T
            right.errorbar(np.array([p["g"] for p in paired], dtype=float) + dx, [p["difference"] for p in paired],
                           yerr=errs, ls=ls, marker=marker, capsize=3, color="k", label=f"{order} order")
    ticks = sorted({p["g"] for p in points})
    n = sorted({p["n_prompts"] for p in points})
    for ax in (left, right):
        ax.set_xticks(ticks)
        ax.set_xlabel("number of objectives G")
        ax.legend(fontsize=7)
    left.set_ylabel("worst-case reward (z)")
    left.set_title(f"RMOD vs UNIFORM as G grows ({'/'.join(map(str, n))} prompts, 95% CI)", fontsize=9)
    right.axhline(0.0, color="k", lw=0.5)
    right.set_ylabel("RMOD − UNIFORM worst-case (paired)")
    right.set_title("Paired difference, 95% bootstrap CI", fontsize=9)
    orders = {p["order"]: p["objectives"] for p in sorted(points, key=lambda p: p["g"])}  # each order's largest set
    fig.suptitle("\n".join(["worst case = mean over prompts of the min over the G objectives (z)"]
                           + [f"{o} order: {' → '.join(orders[o])}" for o in ORDERS if o in orders]), fontsize=8)
    output.parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, output)


def gsweep_markdown(points: Sequence[dict]) -> str:
    """The G-sweep table (``gsweep.md``; docs/results.md includes it): per point the worst-case reward (z, 95% CI)
    of UNIFORM and RMOD, the paired RMOD − UNIFORM difference and RMOD's head-to-head worst-case win rate."""

    from hf_rmod.experiments.summary import _ci_cell

    lines = ["# G-sweep: RMOD vs UNIFORM as the number of objectives grows", "",
             "Worst-case reward = mean over prompts of the minimum over the G objectives' z-scores; 95% bootstrap "
             "CIs, the difference paired by prompt; win rate = share of prompts where RMOD's minimum is above "
             "UNIFORM's (ties half); reference = the reference policy's worst case on the same prompts and "
             "objectives (the evaluate step's reference rows; no CI).", "",
             "| order | G | objectives | prompts | reference | UNIFORM worst-case | RMOD worst-case "
             "| RMOD − UNIFORM (paired) | RMOD wins |", "|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        wins = "–" if p["win_rate"] is None else f"{p['win_rate']:.2f}"
        reference = "–" if p.get("reference") is None else f"{p['reference']:+.3f}"
        cells = [_ci_cell(p[key], p[key + "_ci"], signed=True) for key in ("uniform", "rmod", "difference")]
        lines.append(f"| {p['order']} | {p['g']} | {', '.join(p['objectives'])} | {p['n_prompts']} | {reference} | "
                     + " | ".join(cells) + f" | {wins} |")
    return "\n".join(lines) + "\n"


def run_plot(paths: Paths, args: argparse.Namespace) -> None:
    from hf_rmod.rewards.task_objectives import TRUTHFULQA_OBJECTIVES

    plan = gsweep_plan(TRUTHFULQA_OBJECTIVES, _ints(args.sizes), args.orders.split(","), args.full_from_eval)
    points = gsweep_points(paths, plan)
    missing = [e["name"] for e in plan if not any(p["order"] == e["order"] and p["g"] == e["g"] for p in points)]
    if not points:
        raise SystemExit(f"error: no G-sweep summary under {paths.gsweep}; run `gsweep --run` first.")
    table = paths.gsweep / "gsweep.json"
    table.write_text(json.dumps(points, indent=1) + "\n", encoding="utf-8")
    markdown, text = paths.gsweep / "gsweep.md", gsweep_markdown(points)
    markdown.write_text(text, encoding="utf-8")
    print(text)
    output = plot_gsweep(points, Path(args.output))
    print(f"wrote {output}, {table} and {markdown}" + (f"; missing runs: {missing}" if missing else ""))


# ------------------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", default="runs/truthfulqa", help="folder of every step's inputs and outputs")
    common.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    common.add_argument("--data", default=None, help=f"the TruthfulQA JSONL (default: the data folder's {TRUTHFULQA_FILE})")
    decoding = argparse.ArgumentParser(add_help=False)
    decoding.add_argument("--run", action="store_true", help="run it (default: print the plan)")
    decoding.add_argument("--num-prompts", type=int, default=0, help="evaluation prompts (0: all)")
    decoding.add_argument("--k", type=int, default=8)
    decoding.add_argument("--b", type=int, default=16)
    decoding.add_argument("--lam", type=float, default=0.5)
    decoding.add_argument("--max-new-tokens", type=int, default=96)
    decoding.add_argument("--batch-size", type=int, default=4, help="prompts per generate() call")
    sub = parser.add_subparsers(dest="step", required=True)

    split = sub.add_parser("split", parents=[common], help="train/eval split of the questions")
    split.add_argument("--eval-size", type=int, default=300)
    split.add_argument("--seed", type=int, default=0)

    sample = sub.add_parser("sample", parents=[common], help="sample and score responses to the training questions")
    sample.add_argument("--num-responses", type=int, default=4)
    sample.add_argument("--max-new-tokens", type=int, default=96)
    sample.add_argument("--batch-size", type=int, default=16, help="questions per generate() call")
    sample.add_argument("--chunk", type=int, default=64, help="questions between throughput lines")
    sample.add_argument("--limit", type=int, default=None, help="only the first LIMIT training questions")
    sample.add_argument("--seed", type=int, default=0, help="chunk i is seeded with seed + its first index")

    fit = sub.add_parser("fit", parents=[common], help="fit the 5-objective MiniLM text value model")
    _default_fit_script().add_fit_arguments(fit)

    sub.add_parser("evaluate", parents=[common, decoding], help="hf-rmod evaluate on the evaluation questions")

    gsweep = sub.add_parser("gsweep", parents=[common, decoding], help="RMOD vs UNIFORM for G = 2..5 objectives")
    gsweep.add_argument("--sizes", default="2,3,4,5")
    gsweep.add_argument("--orders", default="forward,reverse")
    gsweep.add_argument("--full-from-eval", action="store_true",
                        help="take the full set (G = 5) from the evaluate step's UNIFORM/RMOD rows instead of rerunning it")

    plot = sub.add_parser("plot", parents=[common], help="the G-sweep plot")
    plot.add_argument("--sizes", default="2,3,4,5")
    plot.add_argument("--orders", default="forward,reverse")
    plot.add_argument("--full-from-eval", action="store_true", help="as for gsweep")
    plot.add_argument("--output", default="docs/img/truthfulqa_gsweep.png")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    paths = Paths(args.root)
    steps = {"split": lambda: run_split(paths, args.data, args.eval_size, args.seed),
             "sample": lambda: run_sample(paths, args), "fit": lambda: run_fit(paths, args),
             "evaluate": lambda: run_evaluate(paths, args), "gsweep": lambda: run_gsweep(paths, args),
             "plot": lambda: run_plot(paths, args)}
    t0 = time.perf_counter()
    try:
        steps[args.step]()
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    print(f"[{args.step}: {time.perf_counter() - t0:.1f} s]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
