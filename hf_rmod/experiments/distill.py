"""DISTILL-RMOD (the paper's baseline): supervised fine-tuning of the policy on RMOD's own responses.

Two steps, each usable alone:

1. :func:`generate_distillation_data` decodes every prompt once with RMOD (``hf_rmod.generate(...,
   rmod_config=RMODConfig(value_model, K, B, λ))``) and appends JSONL records ``{"prompt", "prompt_ids",
   "response", "response_ids"}`` (the records format of :mod:`.sampling`, without rewards) to a resumable file:
   prompts already in it are skipped, one write per batch of prompts. Its settings file
   (``<records>.settings.json``, see :mod:`.sampling`) records the policy, the value model (type, objectives,
   sha256 of its weights), K, B, λ, ``max_new_tokens``, the sampling arguments and ``chat_template``; a rerun
   with any of them changed is refused (:data:`DATA_COMPARED_SETTINGS`) instead of mixing two distributions.
2. :func:`sft_on_records` fine-tunes the policy on those records with :class:`transformers.Trainer`: each example
   is ``prompt_ids + response_ids + EOS`` (the chat-templated prompt exactly as RMOD saw it) and the loss is on the
   response tokens only (labels ``-100`` on the prompt and on padding, see :class:`ResponseOnlyCollator`). It
   saves an ordinary ``save_pretrained`` folder (safetensors) with the tokenizer and a model card ``README.md``
   recording the provenance.

:func:`distill_rmod` runs both (the paper: K = 16, B = 16, λ = 0.5, 3 epochs; :class:`DistillConfig`);
``hf-rmod distill`` is the command line.

Why ``Trainer`` and not TRL's ``SFTTrainer``: ``transformers`` and ``accelerate`` are already dependencies and
masking the prompt is a few lines (:func:`build_sft_example`); TRL is not a dependency. ``Trainer`` runs under
``accelerate launch`` / ``torchrun`` as it is (data-parallel, the main process saves); the data step shards the
prompts across processes when given an ``accelerate.Accelerator``.

Why one module of ~670 lines: the two steps of DISTILL-RMOD (the resumable RMOD data step and the SFT step
with its response-only collator, training arguments and model card) share the records format and the
provenance they record; the per-objective policies (:mod:`.objective_policies`) reuse its SFT step.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .. import generation
from .._hub import looks_like_repo_id
from .._utils import module_device
from ..config import RMODConfig
from . import io
from .configs import DistillConfig, merge_config
from .records import RecordList, read_settings, settings_path
from .results import describe_policy, describe_value_head
from .sampling import _policy_name, _RecordsFile

__all__ = [
    "DATA_COMPARED_SETTINGS",
    "RECORDS_FILENAME",
    "DistillResult",
    "ResponseOnlyCollator",
    "build_sft_example",
    "distill_rmod",
    "fine_tune",
    "generate_distillation_data",
    "sft_on_records",
]

#: Name of the records file inside ``output_dir`` when :func:`distill_rmod` is given no ``records_path``.
RECORDS_FILENAME = "rmod_responses.jsonl"
#: The settings that must match for a run to append to an existing DISTILL-RMOD records file.
DATA_COMPARED_SETTINGS = (
    "policy", "value_model", "num_candidates", "block_size", "lam", "max_new_tokens", "sampling", "chat_template",
    "objectives",
)
_FORMAT = "hf_rmod.distill_rmod_data/1"
_IGNORE = -100  # label of the tokens without loss (prompt, padding)


@dataclass
class DistillResult:
    """What :func:`sft_on_records` / :func:`distill_rmod` did.

    Attributes:
        output_dir: the saved policy folder (``save_pretrained`` + tokenizer + ``README.md``).
        records_path: the records file trained on (``None``: records given in memory).
        num_prompts: distinct prompts trained on.
        num_examples: training examples (responses).
        train_loss: mean SFT loss over the whole run (``TrainOutput.training_loss``).
        final_train_loss: mean SFT loss of the last logged period (the last epoch by default).
        num_generated: responses decoded by this call (:func:`distill_rmod`; 0 when all were in the file).
        model: the fine-tuned policy (the model passed in, trained in place, back in eval mode).
    """

    output_dir: Path
    records_path: Path | None
    num_prompts: int
    num_examples: int
    train_loss: float | None
    final_train_loss: float | None
    num_generated: int = 0
    model: Any = field(default=None, repr=False)


# ------------------------------------------------------------------------------------------------------------
# Step 1: RMOD's responses
# ------------------------------------------------------------------------------------------------------------
def generate_distillation_data(model: Any, tokenizer: Any, value_model: Any, prompts: Sequence[str],
                               config: DistillConfig | None = None, *, output_path: str | os.PathLike,
                               accelerator: Any = None, policy_id: str | None = None, show_progress: bool = True,
                               **overrides: Any) -> RecordList:
    """Decode each prompt once with RMOD and append the responses to ``output_path`` (resumable).

    Batches of ``config.generation_batch_size`` prompts are rendered (chat template, left padded) and decoded
    with ``hf_rmod.generate(model, **enc, rmod_config=RMODConfig(value_model, num_candidates=K, block_size=B,
    lam=λ), max_new_tokens=..., **config.sampling)``; responses are cut after the first EOS. torch is seeded with
    ``config.seed`` once before decoding.

    Args:
        model: the policy (a causal LM); not modified (no ``enable``).
        tokenizer: its tokenizer (needs a pad token, and a chat template unless ``chat_template=False``).
        value_model: a loaded :class:`~hf_rmod.MultiValueHead` or :class:`~hf_rmod.RewardValueModel`
            (e.g. ``hf_rmod.defaults.load_value_model(path, tokenizer)``) with at least one objective.
        prompts: user prompts (duplicates are decoded once).
        config: a :class:`~hf_rmod.experiments.configs.DistillConfig` (K, B, λ, ``max_new_tokens``,
            ``generation_batch_size``, ``generation_kwargs``, ``chat_template``, ``seed``).
        output_path: JSONL file to append to; prompts already in it are skipped. Its settings file must match this
            call's settings (:data:`DATA_COMPARED_SETTINGS`), else ``ValueError`` naming each difference.
        accelerator: an ``accelerate.Accelerator``: process ``i`` decodes every ``n``-th missing prompt into
            ``<output_path>.rank{i}``; the main process merges those into ``output_path``.
        policy_id: how the settings file names the policy (default: the model's ``name_or_path``).
        show_progress: progress bar and status lines on stderr (main process).
        **overrides: :class:`DistillConfig` fields, e.g. ``num_candidates=8`` (applied over ``config``).

    Returns:
        The records of all ``prompts`` (those already in the file and the new ones), one per prompt, in prompt
        order; a :class:`~hf_rmod.experiments.records.RecordList` whose ``source`` is ``output_path`` and
        ``settings`` its settings.
    """
    config = merge_config(DistillConfig, config, overrides, "generate_distillation_data")
    records, _ = _generate(model, tokenizer, value_model, prompts, config, Path(output_path), accelerator,
                           policy_id, show_progress)
    return records


def _generate(model, tokenizer, value_model, prompts, config: DistillConfig, path: Path, accelerator,
              policy_id, show: bool) -> tuple[RecordList, int]:
    """:func:`generate_distillation_data` -> ``(records of prompts, responses decoded by this call)``."""
    unique = _check_prompts(prompts)
    rmod_config = _rmod_config(model, tokenizer, value_model, config)
    settings = _data_settings(model, value_model, config, policy_id)
    objectives = list(value_model.objectives)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    store = None
    if rank == 0:
        _fold_rank_files(path)  # leftovers of an interrupted sharded run
        store = _RecordsFile(path, settings, 1, compared=DATA_COMPARED_SETTINGS)  # refuses other settings
        if world > 1:
            store.append([], objectives)  # the settings file, before any process decodes
    _barrier(accelerator)
    done = {r["prompt"] for r in io.read_jsonl(path)[0]}
    todo = [p for p in unique if p not in done]
    if done and rank == 0:
        io.notice(f"Resuming {path}: {len(unique) - len(todo)} of {len(unique)} prompts already decoded; decoding "
                  f"the other {len(todo)}.", show=show)

    def write(rows: list[dict]) -> None:  # one write per batch: a prompt is all-or-nothing on disk
        if store is not None and world == 1:
            store.append(rows, objectives)
        else:
            io.append_jsonl(_rank_path(path, rank), rows)

    mine = todo[rank::world]
    torch.manual_seed(config.seed)
    _decode_all(model, tokenizer, mine, rmod_config, config, write, show and rank == 0)
    _barrier(accelerator)
    if rank == 0 and world > 1:
        _fold_rank_files(path)
    _barrier(accelerator)
    return _records_of(path, unique), len(mine)


def _check_prompts(prompts: Any) -> list[str]:
    """The distinct prompts, in order; an empty list, a bare string or an empty prompt raises."""
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise TypeError(f"`prompts` must be a list of strings, got {type(prompts).__name__}; wrap one as [prompt].")
    if len(prompts) == 0:
        raise ValueError("`prompts` is empty; pass at least one prompt (e.g. from "
                         "hf_rmod.experiments.io.read_prompts).")
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()]
    if bad:
        raise ValueError(f"`prompts[{bad[0]}]` is {prompts[bad[0]]!r}; every prompt must be a non-empty string.")
    return list(dict.fromkeys(prompts))


def _check_value_model(value_model: Any) -> None:
    if value_model is None or isinstance(value_model, (str, os.PathLike)):
        raise TypeError(
            f"`value_model` must be a loaded value model (a MultiValueHead or a RewardValueModel), got "
            f"{value_model!r}; load one with hf_rmod.defaults.load_value_model(path, tokenizer)."
        )
    objectives = getattr(value_model, "objectives", None)
    if objectives is None or len(objectives) == 0:
        raise ValueError(
            f"`value_model` ({type(value_model).__name__}) has no objectives ({objectives!r}): RMOD needs at least "
            "one value column; pass a value model with one or more objectives."
        )


def _rmod_config(model: Any, tokenizer: Any, value_model: Any, config: DistillConfig) -> RMODConfig:
    """The RMOD settings of every batch; everything that can fail does so before decoding."""
    _check_value_model(value_model)
    if tokenizer.pad_token_id is None:
        raise ValueError("The tokenizer has no pad token; set `tokenizer.pad_token = tokenizer.eos_token` first.")
    if config.chat_template and not getattr(tokenizer, "chat_template", None):
        raise ValueError("chat_template=True but the tokenizer has no chat template; pass chat_template=False "
                         "(CLI: --no-chat-template).")
    if int(config.sampling.get("num_beams", 1)) > 1:
        raise ValueError(f"`generation_kwargs` num_beams={config.sampling['num_beams']}: RMOD samples its "
                         "candidates; use num_beams=1.")
    rmod_config = RMODConfig(value_model=value_model, num_candidates=config.num_candidates,
                             block_size=config.block_size, lam=config.lam)
    value_model.check_policy(model)  # a head on another vocabulary fails now, not in the first batch
    return rmod_config


def _data_settings(model: Any, value_model: Any, config: DistillConfig, policy_id: str | None) -> dict[str, Any]:
    """The settings file of the records (the form it takes on disk)."""
    value = describe_value_head(value_model)
    settings = {
        "format": _FORMAT,
        "policy": policy_id or _policy_name(model),
        "value_model": {"type": type(value_model).__name__, "objectives": value["objectives"],
                        "sha256": value["sha256"]},
        "value_model_path": value["name_or_path"],
        "num_candidates": config.num_candidates,
        "block_size": config.block_size,
        "lam": config.lam,
        "max_new_tokens": config.max_new_tokens,
        "sampling": config.sampling,
        "chat_template": config.chat_template,
        "seed": config.seed,
        "num_responses": 1,
        "objectives": list(value_model.objectives),
    }
    return json.loads(json.dumps(settings, default=repr))


def _decode_all(model, tokenizer, prompts: list[str], rmod_config: RMODConfig, config: DistillConfig, write,
                show: bool) -> None:
    """Decode ``prompts`` in batches of ``generation_batch_size``; ``write(rows)`` once per batch."""
    sampling = config.sampling
    if getattr(model.generation_config, "pad_token_id", None) is None and "pad_token_id" not in sampling:
        sampling["pad_token_id"] = tokenizer.pad_token_id
    eos_ids = io.eos_token_ids(model, tokenizer)
    bar = io.progress(len(prompts), "RMOD", unit="prompt", disable=not show)
    for start in range(0, len(prompts), config.generation_batch_size):
        batch = prompts[start : start + config.generation_batch_size]
        write(_decode_batch(model, tokenizer, batch, rmod_config, config, sampling, eos_ids))
        bar.update(len(batch))
    bar.close()


def _decode_batch(model, tokenizer, batch: list[str], rmod_config: RMODConfig, config: DistillConfig,
                  sampling: dict, eos_ids: set[int]) -> list[dict]:
    """Records of one batch of prompts decoded with RMOD."""
    enc = io.encode_prompts(tokenizer, batch, config.chat_template).to(module_device(model))  # (b, P) left padded
    with torch.no_grad():
        out = generation.generate(model, **enc, rmod_config=rmod_config, max_new_tokens=config.max_new_tokens,
                                  **sampling)
    sequences = out.sequences if hasattr(out, "sequences") else out  # (b, P + new)
    width = enc["input_ids"].shape[1]
    rows = []
    for prompt, ids, mask, new in zip(batch, enc["input_ids"], enc["attention_mask"], sequences[:, width:].tolist()):
        response_ids = io.cut_at_eos(new, eos_ids)
        rows.append({
            "prompt": prompt,
            "prompt_ids": ids[mask.bool()].tolist(),
            "response": tokenizer.decode(response_ids, skip_special_tokens=True),
            "response_ids": response_ids,
        })
    return rows


def _rank_path(path: Path, rank: int) -> Path:
    return path.with_name(f"{path.name}.rank{rank}")


def _fold_rank_files(path: Path) -> None:
    """Append the rows of the per-process files ``<path>.rank{i}`` to ``path`` and delete them (main process)."""
    for part in sorted(path.parent.glob(f"{path.name}.rank*")):
        rows, _ = io.read_jsonl(part)  # an interrupted last line is dropped (that prompt is decoded again)
        if rows:
            io.append_jsonl(path, rows)
        part.unlink()


def _records_of(path: Path, prompts: list[str]) -> RecordList:
    """The first record of each of ``prompts`` in ``path``, in prompt order."""
    by_prompt: dict[str, dict] = {}
    for row in io.read_jsonl(path)[0]:
        by_prompt.setdefault(row["prompt"], row)
    records = RecordList(by_prompt[p] for p in prompts if p in by_prompt)
    records.source, records.settings = str(path), read_settings(path)
    return records


def _barrier(accelerator: Any) -> None:
    if accelerator is not None:
        accelerator.wait_for_everyone()


# ------------------------------------------------------------------------------------------------------------
# Step 2: supervised fine-tuning
# ------------------------------------------------------------------------------------------------------------
def build_sft_example(prompt_ids: Sequence[int], response_ids: Sequence[int], eos_token_id: int, *,
                      eos_ids: set[int] | None = None, max_length: int | None = None) -> dict[str, list[int]]:
    """One SFT example: ``input_ids = prompt_ids + response_ids + [EOS]`` and ``labels`` equal to them except
    ``-100`` on the prompt (no loss there).

    Args:
        prompt_ids: the prompt as the policy saw it (chat template applied, no padding).
        response_ids: the response; EOS is appended unless it already ends with an id of ``eos_ids``.
        eos_token_id: the EOS id appended.
        eos_ids: ids that count as an EOS (default ``{eos_token_id}``).
        max_length: cut the example to this many tokens from the right.
    """
    response = [int(t) for t in response_ids]
    if not response or response[-1] not in (eos_ids or {eos_token_id}):
        response.append(int(eos_token_id))
    prompt = [int(t) for t in prompt_ids]
    input_ids, labels = prompt + response, [_IGNORE] * len(prompt) + response
    if max_length is not None:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return {"input_ids": input_ids, "labels": labels}


@dataclass
class ResponseOnlyCollator:
    """Right-pads :func:`build_sft_example` examples into a batch: ``input_ids`` padded with ``pad_token_id``,
    ``attention_mask`` 0 and ``labels`` -100 on the padding (so the loss covers the response tokens only)."""

    pad_token_id: int

    def __call__(self, features: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), width), int(self.pad_token_id), dtype=torch.long)  # (n, T)
        labels = torch.full((len(features), width), _IGNORE, dtype=torch.long)  # (n, T)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)  # (n, T)
        for row, feature in enumerate(features):
            length = len(feature["input_ids"])
            input_ids[row, :length] = torch.tensor(feature["input_ids"], dtype=torch.long)
            labels[row, :length] = torch.tensor(feature["labels"], dtype=torch.long)
            attention_mask[row, :length] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def sft_on_records(
    model: Any,
    tokenizer: Any,
    records: str | os.PathLike | Sequence[Mapping[str, Any]],
    config: DistillConfig | None = None,
    *,
    output_dir: str | os.PathLike,
    policy_id: str | None = None,
    show_progress: bool = True,
    **overrides: Any,
) -> DistillResult:
    """Fine-tune ``model`` on ``records`` (loss on the response tokens only) and save it to ``output_dir``.

    Training uses :class:`transformers.Trainer` (TRL is not a dependency; ``Trainer`` and ``accelerate`` are),
    with AdamW, ``config.epochs`` epochs, learning rate ``config.lr``, ``config.batch_size`` examples per device
    and step, the ``config.lr_scheduler_type`` schedule, ``config.seed``, no intermediate checkpoints, one log
    line per epoch and ``config.training_kwargs`` over these. A model on the CPU trains on the CPU. Under
    ``accelerate launch`` / ``torchrun``, ``Trainer`` shards the batches across processes and the main process
    saves.

    Each record gives one example, :func:`build_sft_example` of its ``prompt_ids`` and ``response_ids``; the
    batches are right-padded by :class:`ResponseOnlyCollator` (labels -100 on the prompt and the padding).

    ``output_dir`` then holds the policy (``save_pretrained``: ``config.json``, ``model.safetensors``,
    ``generation_config.json``), the tokenizer and a model card ``README.md`` recording the base policy, the value
    model, K, B, λ, the sampling settings and the records file (from the records' settings file when there is one),
    the number of prompts and responses, the training settings and the final train loss.

    Args:
        model: the policy to fine-tune (trained in place, left in eval mode).
        tokenizer: its tokenizer (saved with the model; its pad token pads, else EOS).
        records: a records JSONL file (:func:`generate_distillation_data`, ``hf-rmod sample``) or the records;
            each needs ``prompt_ids`` and ``response_ids``.
        config: a :class:`~hf_rmod.experiments.configs.DistillConfig` (the SFT fields are used).
        output_dir: folder of the fine-tuned policy.
        policy_id: how the model card names the base policy (default: the model's ``name_or_path``).
        show_progress: the Trainer's progress bar and per-epoch log lines.
        **overrides: :class:`DistillConfig` fields, e.g. ``epochs=1``.

    Returns:
        A :class:`DistillResult`.
    """
    config = merge_config(DistillConfig, config, overrides, "sft_on_records")
    records, source, data_settings = _load_sft_records(records)
    base = describe_policy(model, policy_id)
    result, steps, is_main = fine_tune(model, tokenizer, records, config, output_dir=output_dir, source=source,
                                       show_progress=show_progress)
    if is_main:
        card = _model_card(base, data_settings, source, result, config, steps)
        (Path(output_dir) / "README.md").write_text(card, encoding="utf-8")
    return result


def fine_tune(model: Any, tokenizer: Any, records: Sequence[Mapping[str, Any]], config: Any, *,
              output_dir: str | os.PathLike, source: str | None = None,
              show_progress: bool = True) -> tuple[DistillResult, int, bool]:
    """The SFT step of :func:`sft_on_records` without its model card: train ``model`` on ``records`` (checked
    records with ``prompt_ids`` / ``response_ids``) and ``save_model`` it (and the tokenizer) to ``output_dir``.

    Args:
        model: the policy, trained in place and left in eval mode.
        tokenizer: its tokenizer (saved with it).
        records: the training records (one example each, :func:`build_sft_example`).
        config: the SFT settings: a :class:`DistillConfig` or an
            :class:`~hf_rmod.experiments.configs.ObjectivePolicyConfig` (their shared SFT fields are read).
        output_dir: folder of the fine-tuned policy.
        source: the records file, recorded in the result.
        show_progress: the Trainer's progress bar and per-epoch log lines.

    Returns:
        ``(result, optimizer steps, whether this is the main process)``; write a model card on the main process.
    """
    _drop_gguf_marker(model)
    examples = _examples(model, tokenizer, list(records), config.max_length)
    args = _training_arguments(config, output_dir, model, show_progress)
    from transformers import PrinterCallback, Trainer

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else _eos_id(model, tokenizer)
    trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=ResponseOnlyCollator(pad_id),
                      processing_class=tokenizer)
    if not show_progress:
        trainer.remove_callback(PrinterCallback)  # no per-epoch log lines either
    output = trainer.train()
    model.eval()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    result = DistillResult(
        output_dir=Path(output_dir), records_path=Path(source) if source else None,
        num_prompts=len({r.get("prompt", i) for i, r in enumerate(records)}), num_examples=len(examples),
        train_loss=float(output.training_loss), final_train_loss=float(losses[-1]) if losses else None, model=model,
    )
    trainer.save_model(str(output_dir))  # the policy (safetensors) and the tokenizer; main process only
    return result, trainer.state.global_step, trainer.is_world_process_zero()


def _drop_gguf_marker(model: Any) -> None:
    """Make a GGUF-loaded policy an ordinary float model before training it.

    transformers de-quantises GGUF weights into float parameters at load time but keeps a ``GgufHfQuantizer`` on
    the model (``model.is_quantized`` is True), so ``Trainer`` refuses it ("cannot perform fine-tuning on purely
    quantized models") and ``save_pretrained`` would record a GGUF quantization config that the saved float
    weights do not have. Every parameter is already a float tensor, so the marker is dropped with the quantizer's
    own ``remove_quantization_config``. Other quantizers (bitsandbytes, ...) are left alone: their weights are
    really quantised and ``Trainer`` rightly asks for adapters.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", None)
    if quantizer is None or str(getattr(method, "value", method)) != "gguf":
        return
    quantizer.remove_quantization_config(model)
    if getattr(model.config, "_is_quantized", False):
        model.config._is_quantized = False


def _load_sft_records(records: Any) -> tuple[list[dict], str | None, dict | None]:
    """``(records, their file or None, the file's settings or None)``; a record without ids raises."""
    if isinstance(records, (str, os.PathLike)):
        path = Path(records)
        if not path.exists():
            raise FileNotFoundError(f"`records` file {str(path)!r} does not exist; write it with "
                                    "generate_distillation_data() (or `hf-rmod distill`).")
        rows, source, settings = io.read_jsonl(path)[0], str(path), read_settings(path)
    elif isinstance(records, Sequence) and not isinstance(records, (str, bytes)):
        rows, source, settings = list(records), getattr(records, "source", None), getattr(records, "settings", None)
    else:
        raise TypeError(f"`records` must be a JSONL path or a list of records, got {type(records).__name__}.")
    if not rows:
        raise ValueError("`records` is empty: there is nothing to fine-tune on; decode some with "
                         "generate_distillation_data() first.")
    for index, row in enumerate(rows):
        missing = [k for k in ("prompt_ids", "response_ids") if not isinstance(row, Mapping) or k not in row]
        if missing:
            raise ValueError(f"`records[{index}]` lacks {missing}; each record needs `prompt_ids` and `response_ids` "
                             "(as generate_distillation_data and `hf-rmod sample` write them).")
    return rows, source, settings


def _eos_id(model: Any, tokenizer: Any) -> int:
    if tokenizer.eos_token_id is not None:
        return int(tokenizer.eos_token_id)
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        raise ValueError("Neither the tokenizer nor the model's generation config has an EOS token; set "
                         "`tokenizer.eos_token` (the examples end with it).")
    return int(eos if isinstance(eos, int) else list(eos)[0])


def _examples(model: Any, tokenizer: Any, records: list[dict], max_length: int | None) -> list[dict]:
    """One :func:`build_sft_example` per record; examples left without response tokens by ``max_length`` are
    dropped with a warning."""
    eos_id, eos_ids = _eos_id(model, tokenizer), io.eos_token_ids(model, tokenizer)
    built = [build_sft_example(r["prompt_ids"], r["response_ids"], eos_id, eos_ids=eos_ids, max_length=max_length)
             for r in records]
    examples = [e for e in built if any(label != _IGNORE for label in e["labels"])]
    if len(examples) < len(built):
        if not examples:
            raise ValueError(f"`max_length`={max_length} cuts every example inside its prompt: no response token is "
                             "left to train on; raise max_length (or leave it None).")
        warnings.warn(f"{len(built) - len(examples)} of {len(built)} examples have no response token within "
                      f"`max_length`={max_length} and are skipped.", stacklevel=3)
    return examples


def _training_arguments(config: Any, output_dir: str | os.PathLike, model: Any, show_progress: bool):
    """The ``TrainingArguments`` of the SFT (``config.training_kwargs`` over the fields); bad names raise."""
    from transformers import TrainingArguments

    kwargs = dict(
        output_dir=str(output_dir), num_train_epochs=config.epochs, learning_rate=config.lr,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps, weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm, lr_scheduler_type=config.lr_scheduler_type, seed=config.seed,
        remove_unused_columns=False, save_strategy="no", logging_strategy="epoch", report_to="none",
        disable_tqdm=not show_progress, use_cpu=module_device(model).type == "cpu",
    )
    kwargs.update(config.training_kwargs or {})
    try:
        return TrainingArguments(**kwargs)
    except (TypeError, ValueError) as err:
        raise type(err)(f"`training_kwargs` / the SFT settings were refused by transformers.TrainingArguments: "
                        f"{err}") from None


def _model_card(base: str, data: dict | None, source: str | None, result: DistillResult, config: DistillConfig,
                steps: int) -> str:
    """The ``README.md`` of the distilled policy: where it comes from and how it was trained."""
    from huggingface_hub import ModelCardData

    card_data = ModelCardData(library_name="transformers", tags=["hf_rmod", "rmod", "distill-rmod"],
                              base_model=base if looks_like_repo_id(base) else None)
    data = data or {}

    def recorded(key: str) -> str:
        return f"`{json.dumps(data[key])}`" if data.get(key) is not None else "not recorded"

    value = data.get("value_model") or {}
    value_line = "not recorded"
    if value:
        value_line = (f"`{value.get('type')}`, objectives {value.get('objectives')}, weights sha256 "
                      f"`{str(value.get('sha256'))[:16]}`, path `{data.get('value_model_path')}`")
    lines = [
        "# DISTILL-RMOD policy",
        "",
        f"`{base}` fine-tuned (supervised, loss on the response tokens only) on its own responses decoded with "
        "Robust Multi-Objective Decoding (RMOD). Made with the `hf_rmod` library (`distill_rmod`, "
        "`hf-rmod distill`).",
        "",
        "## Provenance",
        "",
        f"- **Base policy**: `{base}`",
        f"- **Policy that decoded the responses**: {recorded('policy')}",
        f"- **Value model**: {value_line}",
        f"- **RMOD**: K = {recorded('num_candidates')}, B = {recorded('block_size')}, λ = {recorded('lam')}, "
        f"max_new_tokens = {recorded('max_new_tokens')}",
        f"- **Sampling**: {recorded('sampling')}",
        f"- **Chat template**: {recorded('chat_template')}",
        f"- **Records file**: `{source}`" + (f" (settings: `{settings_path(source).name}`)" if source else ""),
        f"- **Prompts / responses**: {result.num_prompts} / {result.num_examples}",
        "",
        *training_card_lines(config, result, steps, "as RMOD saw them"),
    ]
    return f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines)


def training_card_lines(config: Any, result: DistillResult, steps: int, prompt_ids: str) -> list[str]:
    """The "Training" and "Usage" sections of a fine-tuned policy's model card (Markdown lines).

    Args:
        config: the SFT settings (a :class:`DistillConfig` or an ``ObjectivePolicyConfig``).
        result: what :func:`fine_tune` returned.
        steps: the optimizer steps.
        prompt_ids: where the prompt ids come from, e.g. ``"as RMOD saw them"``.
    """
    return [
        "## Training",
        "",
        f"- **Trainer**: `transformers.Trainer`, AdamW; examples are the prompt ids ({prompt_ids}) + response "
        "ids + EOS, labels -100 on the prompt and the padding",
        f"- **Epochs**: {config.epochs}, **learning rate**: {config.lr:g} ({config.lr_scheduler_type}), "
        f"**batch size**: {config.batch_size} per device x {config.gradient_accumulation_steps} accumulation, "
        "**weight decay**: "
        f"{config.weight_decay:g}, **max grad norm**: {config.max_grad_norm:g}, **max length**: {config.max_length}, "
        f"**seed**: {config.seed}",
        f"- **Further TrainingArguments**: `{json.dumps(config.training_kwargs or {})}`",
        f"- **Optimizer steps**: {steps}",
        f"- **Final train loss** (last epoch): {_loss(result.final_train_loss)}; mean over the run: "
        f"{_loss(result.train_loss)}",
        "",
        "## Usage",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'model = AutoModelForCausalLM.from_pretrained("<this folder>")',
        'tokenizer = AutoTokenizer.from_pretrained("<this folder>")',
        "```",
        "",
    ]


def _loss(value: float | None) -> str:
    return "not recorded" if value is None else f"{value:.4f}"


# ------------------------------------------------------------------------------------------------------------
# Both steps
# ------------------------------------------------------------------------------------------------------------
def distill_rmod(
    model: Any,
    tokenizer: Any,
    value_model: Any,
    prompts: Sequence[str],
    config: DistillConfig | None = None,
    *,
    output_dir: str | os.PathLike,
    records_path: str | os.PathLike | None = None,
    accelerator: Any = None,
    policy_id: str | None = None,
    show_progress: bool = True,
    **overrides: Any,
) -> DistillResult:
    """DISTILL-RMOD: decode ``prompts`` with RMOD (:func:`generate_distillation_data`), then fine-tune the policy on
    those responses (:func:`sft_on_records`) and save it to ``output_dir``.

    The paper's settings are the defaults of :class:`~hf_rmod.experiments.configs.DistillConfig` (K = 16, B = 16,
    λ = 0.5, 3 epochs). The TrainingArguments are built (and bad ``training_kwargs`` refused) before decoding.

    Args:
        model: the policy; it decodes the data and is then fine-tuned in place.
        tokenizer: its tokenizer.
        value_model: a loaded MultiValueHead or RewardValueModel (``hf_rmod.defaults.load_value_model``).
        prompts: user prompts.
        config: a :class:`DistillConfig`.
        output_dir: folder of the fine-tuned policy (and of the records, by default).
        records_path: records file (default ``output_dir/rmod_responses.jsonl``); resumable.
        accelerator: an ``accelerate.Accelerator`` sharding the decoding (the SFT shards through ``Trainer``).
        policy_id: how the records' settings and the model card name the policy (default: ``name_or_path``).
        show_progress: progress bars.
        **overrides: :class:`DistillConfig` fields.

    Returns:
        A :class:`DistillResult` (``num_generated``: responses decoded by this call).
    """
    config = merge_config(DistillConfig, config, overrides, "distill_rmod")
    output_dir = Path(output_dir)
    path = Path(records_path) if records_path is not None else output_dir / RECORDS_FILENAME
    _training_arguments(config, output_dir, model, show_progress)  # fail before hours of decoding
    records, generated = _generate(model, tokenizer, value_model, prompts, config, path, accelerator, policy_id,
                                   show_progress)
    result = sft_on_records(model, tokenizer, records, config, output_dir=output_dir, policy_id=policy_id,
                            show_progress=show_progress)
    result.num_generated = generated
    return result
