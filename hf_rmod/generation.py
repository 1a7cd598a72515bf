"""The RMOD decoding loop and the `model.generate(..., rmod_config=cfg)` entry point.

Algorithm 1 of the paper, block by block and for every prompt of the batch at once:

1. sample K candidate blocks of B tokens from the unchanged reference policy (all of
   ``generate``'s logits processors and stopping criteria apply);
2. score each candidate with the multi-objective value model: ``V`` of shape (batch, K, G);
3. solve eq. 7 for the worst-case weights ``w*`` on the simplex (`hf_rmod.solve_weights`);
4. keep the candidate with the largest ``w*·V`` and append it.

The prompt is prefilled once. Each block expands every active prompt's KV cache K times, samples
B tokens for all rows in one batched loop, scores, solves and keeps the chosen rows of the cache
— selecting the chosen rows and expanding them for the next block is a single cache reorder.
A prompt whose chosen block ended (EOS) is dropped from later blocks.

Entry points: :func:`generate` (one call, any model) and :func:`enable` (then ``model.generate(...,
rmod_config=cfg)``). Without either, transformers rejects ``rmod_config`` with its generic "The following
`model_kwargs` are not used by the model: ['rmod_config']": ``GenerationMixin._validate_model_kwargs`` raises
that message and offers no hook to extend it (only a process-wide patch of the private method would).
How values are computed is pluggable: ``RobustMultiObjectiveGenerator(scorer_factory=...)`` (see
`hf_rmod.scoring.Scorer`).

Why one module of ~740 lines: it is the block loop and what must stay next to it to be read as one algorithm
(prefill, K-fold expansion, per-step sampling with generate's own processors, scoring, solving, selection, cache
reordering), plus the static-cache sizing, the row-to-prompt mapping of batch-indexed processors and the
host-sync-free bookkeeping that change how that loop runs; scorers and the solver live in their own modules.
"""

from __future__ import annotations

import copy
import functools
import os
import threading
import warnings
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional

import torch
from transformers import GenerationMixin
from transformers.cache_utils import StaticLayer, StaticSlidingWindowLayer
from transformers.generation import logits_process as _lp
from transformers.utils import ModelOutput

from . import solver as _solver
from .config import RMODConfig
from .logits_process import swap_top_p
from .modeling_value_head import MultiValueHead
from .scoring import Scorer, ScorerFactory, make_scorer


@dataclass
class RMODOutput(ModelOutput):
    """Output of ``generate(..., rmod_config=cfg, return_dict_in_generate=True)``.

    Args:
        sequences (`torch.LongTensor` of shape `(batch, prompt_len + new_tokens)`):
            Prompts followed by the generated tokens; prompts that finished early are padded with
            the pad token, as ``generate`` does.
        weights (`torch.FloatTensor` of shape `(batch, n_blocks, G)`):
            Objective weights used to choose each block (``w*`` in robust mode). Zero where
            `block_mask` is False.
        values (`torch.FloatTensor` of shape `(batch, n_blocks, K, G)`):
            Value-model predictions of every candidate block (normalised value units). Zero where
            `block_mask` is False.
        chosen (`torch.LongTensor` of shape `(batch, n_blocks)`):
            Index in ``[0, K)`` of the kept candidate of each block, ``-1`` where `block_mask` is False.
        block_mask (`torch.BoolTensor` of shape `(batch, n_blocks)`):
            True for the blocks a prompt actually decoded (a prompt that finished stops early).
        solver_gap (`torch.FloatTensor` of shape `(batch, n_blocks)`, *optional*):
            Frank–Wolfe duality gap of the solved weights (robust mode only): a certified bound on
            how far ``F(w)`` is from its minimum.
        objectives (`tuple[str]`):
            The G objective names, in the order of the last dimension of `weights` and `values`.
    """

    sequences: torch.LongTensor = None
    weights: torch.FloatTensor = None
    values: torch.FloatTensor = None
    chosen: torch.LongTensor = None
    block_mask: torch.BoolTensor = None
    solver_gap: Optional[torch.FloatTensor] = None
    objectives: tuple = None


# Heads loaded from a path or Hub id, keyed by where they came from: decoding never writes into the user's
# RMODConfig, so a config that names a path reuses the loaded head through this small LRU instead.
_LOADED_HEADS: "OrderedDict[tuple, MultiValueHead]" = OrderedDict()
_LOADED_HEADS_MAX = 2
_LOADED_HEADS_LOCK = threading.Lock()


def _head_cache_key(name: str, kwargs: dict) -> tuple:
    """Where a head comes from: a local folder (real path + file times, so a re-saved head reloads) or a Hub id."""
    options = repr(sorted(kwargs.items()))
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        stamps = tuple(
            (entry.name, entry.stat().st_mtime_ns) for entry in sorted(os.scandir(path), key=lambda e: e.name)
            if entry.is_file()
        )
        return ("local", os.path.realpath(path), stamps, options)
    return ("hub", name, options)


def load_value_model(name: str, **kwargs) -> MultiValueHead:
    """``MultiValueHead.from_pretrained(name, **kwargs)``, reusing the last few heads loaded this way."""
    key = _head_cache_key(name, kwargs)
    with _LOADED_HEADS_LOCK:
        head = _LOADED_HEADS.get(key)
        if head is not None:
            _LOADED_HEADS.move_to_end(key)
            return head
    head = MultiValueHead.from_pretrained(name, **kwargs)
    with _LOADED_HEADS_LOCK:
        _LOADED_HEADS[key] = head
        while len(_LOADED_HEADS) > _LOADED_HEADS_MAX:
            _LOADED_HEADS.popitem(last=False)
    return head


def _resolve_value_model(cfg: RMODConfig, policy) -> MultiValueHead:
    """The config's value head, ready for `policy` (loaded when `cfg.value_model` is a path; `cfg` is not changed).

    A head RMOD loaded itself (a path or Hub id) is placed where its inputs are: a shared-trunk head on the
    device of the policy's ``lm_head`` (with ``device_map`` that is the last shard, not ``policy.device``), a
    backbone head on the device of the policy's inputs. A head object the caller built is never moved: the
    scorers move the small per-block tensors to it and the values back (see `hf_rmod.scoring`).
    """
    head = cfg.value_model
    owned = isinstance(head, str)
    if owned:
        head = load_value_model(head, **cfg.value_model_kwargs)
    if not isinstance(head, MultiValueHead):  # e.g. hf_rmod.reward_values.RewardValueModel: builds its own scorer
        return head
    if cfg.value_tokenizer is None:  # re-tokenising value models never see the policy's ids or states
        head.check_compatible(policy, tokenizer=cfg.tokenizer)
    target = _scoring_device(head, policy)
    if owned:
        if head.device != target:
            head.to(target)
    elif head.device != target and head.device.type == "cpu" and target.type != "cpu":
        warnings.warn(
            f"The value model is on the CPU while the policy's "
            f"{'lm_head' if head.uses_policy_hidden_states else 'inputs'} are on {target}: RMOD scores on the value model's device and copies each block's inputs there. Move it "
            f"once with `head.to({str(target)!r})` for speed.",
            stacklevel=4,
        )
    head.eval()
    return head


def _scoring_device(head: MultiValueHead, policy) -> torch.device:
    """Where a value model's inputs live: the lm_head's device (shared trunk) or the policy's input device."""
    if head.uses_policy_hidden_states:
        get_out = getattr(policy, "get_output_embeddings", None)
        lm_head = get_out() if callable(get_out) else None
        weight = getattr(lm_head, "weight", None)
        if isinstance(weight, torch.Tensor):
            return weight.device
    return policy.device


def _check_sampling(generation_config, cfg: RMODConfig) -> None:
    """Greedy decoding makes all K candidates the same continuation: refuse it rather than waste K-fold compute."""
    if not generation_config.do_sample and cfg.num_candidates > 1:
        raise ValueError(
            f"`do_sample` is False with `num_candidates`={cfg.num_candidates}: every candidate block would be the "
            "same greedy continuation, so RMOD has nothing to choose from. Pass do_sample=True (with temperature / "
            "top_p as you like), or RMODConfig(num_candidates=1) for plain greedy decoding."
        )


def _index_rows(model_kwargs: dict, index: torch.Tensor, rows: int, fixed_rows: bool = False) -> dict:
    """Select / expand the batch rows of the per-row tensors of `model_kwargs` and of the cache."""
    out = dict(model_kwargs)
    for key, value in model_kwargs.items():
        if key == "cache" and value is not None:
            _reorder_cache(value, index, fixed_rows)
        elif isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == rows:
            out[key] = value.index_select(0, index.to(value.device))
    return out


def _reorder_cache(cache, index: torch.Tensor, fixed_rows: bool) -> None:
    """``cache.reorder_cache(index)``; static layers of a fixed-row (static) cache are reordered in place.

    In place keeps the tensors' addresses (what a compiled / CUDA-graph forward was traced with) and avoids the
    host sync of ``StaticLayer.reorder_cache`` (it tests ``get_seq_length() > 0``, a device tensor). Only the
    first expansion (batch -> batch * K rows) allocates new tensors, which are marked static like the originals.
    """
    layers = getattr(cache, "layers", None)
    if not fixed_rows or not layers:
        cache.reorder_cache(index)
        return
    for layer in layers:
        if type(layer) not in (StaticLayer, StaticSlidingWindowLayer):
            layer.reorder_cache(index)
            continue
        if not getattr(layer, "is_initialized", False):
            continue
        idx = index.to(layer.keys.device)
        if layer.keys.shape[0] == idx.shape[0]:
            layer.keys.copy_(layer.keys.index_select(0, idx))
            layer.values.copy_(layer.values.index_select(0, idx))
        else:
            layer.keys = layer.keys.index_select(0, idx)
            layer.values = layer.values.index_select(0, idx)
            layer.batch_size = idx.shape[0]
            torch._dynamo.mark_static_address(layer.keys)
            torch._dynamo.mark_static_address(layer.values)


def _uses_static_cache(cache) -> bool:
    """A cache with fixed-shape (static) layers: RMOD then keeps a fixed number of rows for the whole call."""
    return any(isinstance(layer, StaticLayer) for layer in getattr(cache, "layers", None) or ())


def _static_cache_with_room(model, cache, generation_config, batch: int):
    """A static cache that holds ``max_length`` positions (``generate`` sizes it for ``max_length - 1``).

    RMOD feeds the last sampled token too (its value is read from the forward that consumes it), so it needs one
    position more than ``generate``. A cache ``generate`` built is rebuilt larger; a cache the caller passed that
    is too small is an error.
    """
    need = generation_config.max_length
    full = [layer.max_cache_len for layer in cache.layers if isinstance(layer, StaticLayer) and not layer.is_sliding]
    if not full or min(full) >= need:
        return cache
    if getattr(cache, "_is_user_defined", False):
        raise ValueError(
            f"The static cache passed as `cache` holds {min(full)} positions, but RMOD needs prompt + max_new_tokens "
            f"= {need} (one more than `generate`: it also feeds the last sampled token to score it). Pass "
            f"StaticCache(config=model.config, max_cache_len={need}) or larger, or use cache_implementation='static'."
        )
    prepare = getattr(model, "_prepare_static_cache", None)
    if callable(prepare):
        return prepare(
            cache_implementation=generation_config.cache_implementation or "static",
            batch_size=batch,
            max_cache_len=need,
            prefill_chunk_size=getattr(generation_config, "prefill_chunk_size", None),
            model_kwargs={},
        )
    from transformers import StaticCache

    return StaticCache(config=model.config.get_text_config(decoder=True), max_cache_len=need)


def _rmod_forward(model, **model_inputs):
    """One policy forward; compiled by `_compiled_call` (its own code object, so its own torch.compile cache)."""
    return model(**model_inputs)


def _compiled_call(model, compile_config):
    """RMOD's own ``torch.compile`` of a policy forward, with ``generate``'s settings (its ``compile_config``).

    Not ``generate``'s ``get_compiled_call``: a graph that plain ``generate`` traced without RMOD's forward
    pre-hook on ``lm_head`` would be reused without it (torch.compile does not guard on module hooks by default)
    and the shared-trunk scorer would never see a hidden state. Compiling `_rmod_forward` gives RMOD graphs of
    its own, always traced with the hook.
    """
    if compile_config is None:
        default = getattr(model, "_default_compile_config", None)
        from transformers import CompileConfig

        compile_config = default() if callable(default) else CompileConfig()
    cached = _COMPILED_CALLS.get(model)
    if cached is None or cached[0] != compile_config:
        cached = (copy.deepcopy(compile_config), torch.compile(_rmod_forward, **compile_config.to_dict()))
        _COMPILED_CALLS[model] = cached  # weak key: not copied or pickled with the model, freed with it
    return functools.partial(cached[1], model)


_COMPILED_CALLS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _host_syncs_are_cheap(device: torch.device) -> bool:
    """On the CPU reading a tensor value costs nothing; on an accelerator it stalls the queue of launched kernels.

    The loop checks "has every row finished?" after each token only where this is True; elsewhere it reads the
    device once per block. Tests replace this function to count the syncs of the accelerator path on the CPU.
    """
    return device.type == "cpu"


# ------------------------------------------------------------------------------------ batch-indexed processors
_REFUSED_PROCESSORS = tuple(
    (cls, why)
    for name, why in (
        ("UnbatchedClassifierFreeGuidanceLogitsProcessor",
         "`guidance_scale` / `negative_prompt_ids` (classifier-free guidance keeps its own per-prompt unconditional "
         "context and KV cache, which cannot follow RMOD's K candidate rows per prompt)"),
        ("ClassifierFreeGuidanceLogitsProcessor",
         "classifier-free guidance (it pairs row i with row i + batch/2, which RMOD's candidate rows break)"),
        ("SynthIDTextWatermarkLogitsProcessor",
         "SynthID watermarking (it keeps per-row n-gram state between calls, which RMOD's row expansion and "
         "selection would scramble)"),
    )
    if (cls := getattr(_lp, name, None)) is not None
)
_MAPPED_PROCESSORS = tuple(
    cls
    for name in ("PrefixConstrainedLogitsProcessor", "EncoderRepetitionPenaltyLogitsProcessor",
                 "EncoderNoRepeatNGramLogitsProcessor")
    if (cls := getattr(_lp, name, None)) is not None
)


class _RowMap:
    """Which of ``generate``'s batch rows each current candidate row belongs to (updated once per block, host side)."""

    def __init__(self, batch: int):
        self.batch = batch
        self.rows: list[int] = list(range(batch))
        self.version = 0

    def update(self, slot_prompts: list[int], K: int) -> None:
        self.rows = [p for p in slot_prompts for _ in range(K)]
        self.version += 1


class _RowMappedProcessor(_lp.LogitsProcessor):
    """Runs a processor that indexes ``generate``'s batch with RMOD's rows mapped back to their prompts.

    * ``PrefixConstrainedLogitsProcessor``: ``prefix_allowed_tokens_fn(batch_id, ids)`` receives the prompt's
      ``batch_id`` (as with plain ``generate``: the index of the input prompt, ``num_return_sequences`` rows
      sharing one id), whatever candidate row is being sampled.
    * ``EncoderRepetitionPenaltyLogitsProcessor`` / ``EncoderNoRepeatNGramLogitsProcessor``: each row uses its
      own prompt's ids.
    """

    def __init__(self, processor, row_map: _RowMap):
        self.processor, self.row_map = processor, row_map
        self._built, self._version = None, -1

    def _inputs_index(self, n_inputs: int) -> list[int]:
        per_input = max(1, self.row_map.batch // max(1, n_inputs))
        return [b // per_input for b in self.row_map.rows]

    def _build(self):
        proc = self.processor
        if isinstance(proc, _lp.PrefixConstrainedLogitsProcessor):
            fn, beams, rows = proc._prefix_allowed_tokens_fn, proc._num_beams, self.row_map.rows

            def mapped(row_id, sent):
                return fn(rows[row_id] // beams, sent)

            return _lp.PrefixConstrainedLogitsProcessor(mapped, num_beams=1)
        built = copy.copy(proc)
        if isinstance(proc, _lp.EncoderRepetitionPenaltyLogitsProcessor):
            enc = proc.encoder_input_ids
            index = torch.tensor(self._inputs_index(enc.shape[0]), device=enc.device)
            built.encoder_input_ids = enc.index_select(0, index)
        else:  # EncoderNoRepeatNGramLogitsProcessor
            index = self._inputs_index(proc.batch_size)
            built.generated_ngrams = [proc.generated_ngrams[i] for i in index]
            built.batch_size = len(index)
        return built

    def __call__(self, input_ids, scores):
        if self._version != self.row_map.version or self._built is None:
            self._built, self._version = self._build(), self.row_map.version
        return self._built(input_ids, scores)


def _map_processors(logits_processor, batch: int):
    """Refuse processors whose per-prompt state cannot follow RMOD's rows; map the batch-indexed ones.

    Returns the processor list to use and the `_RowMap` to update each block (None when nothing is mapped).
    """
    for proc in logits_processor:
        for cls, why in _REFUSED_PROCESSORS:
            if isinstance(proc, cls):
                raise ValueError(
                    f"`{type(proc).__name__}` cannot be combined with `rmod_config`: {why}. "
                    "Remove it for RMOD decoding."
                )
    if not any(isinstance(proc, _MAPPED_PROCESSORS) for proc in logits_processor):
        return logits_processor, None
    row_map = _RowMap(batch)
    mapped = type(logits_processor)(
        _RowMappedProcessor(proc, row_map) if isinstance(proc, _MAPPED_PROCESSORS) else proc
        for proc in logits_processor
    )
    return mapped, row_map


class RobustMultiObjectiveGenerator:
    """The RMOD decoding loop, run by ``generate`` through its ``custom_generate`` callable hook.

    ``generate`` prepares everything first (generation config, logits processors and warpers,
    stopping criteria, attention mask, position ids, an empty cache) and then calls this object.
    Normally you do not call it yourself: use ``hf_rmod.enable(model)`` and
    ``model.generate(..., rmod_config=cfg)``, or pass an instance as ``custom_generate``:

    ```python
    >>> out = model.generate(ids, custom_generate=RobustMultiObjectiveGenerator(), rmod_config=cfg)  # doctest: +SKIP
    ```

    Args:
        scorer_factory (*optional*):
            ``factory(head, policy, cfg) -> Scorer`` (see `hf_rmod.scoring.Scorer`) building the value scorer
            of each call; defaults to `hf_rmod.scoring.make_scorer`. Pass your own to score differently
            (the benchmarks pass a cache-free scorer this way).
    """

    def __init__(self, scorer_factory: ScorerFactory | None = None):
        if scorer_factory is not None and not callable(scorer_factory):
            raise TypeError(
                f"`scorer_factory` must be a callable `(head, policy, cfg) -> Scorer`, got "
                f"{type(scorer_factory).__name__}; e.g. scorer_factory=hf_rmod.scoring.make_scorer."
            )
        self.scorer_factory = make_scorer if scorer_factory is None else scorer_factory

    def __call__(
        self,
        model,
        input_ids: torch.LongTensor,
        logits_processor,
        stopping_criteria,
        generation_config,
        rmod_config: RMODConfig | None = None,
        rmod_streamer=None,
        **model_kwargs,
    ):
        if not isinstance(rmod_config, RMODConfig):
            raise TypeError(
                f"`rmod_config` must be an `hf_rmod.RMODConfig`, got {type(rmod_config).__name__}: "
                "call `model.generate(..., rmod_config=RMODConfig(value_model=...))`."
            )
        if model.config.is_encoder_decoder:
            raise ValueError("RMOD decodes causal (decoder-only) language models; this model is encoder-decoder.")
        if generation_config.num_beams > 1:
            raise ValueError(
                f"`num_beams`={generation_config.num_beams} cannot be combined with `rmod_config`: RMOD samples "
                "K candidate blocks itself. Set num_beams=1."
            )
        with torch.no_grad():
            return self._decode(
                model, input_ids, logits_processor, stopping_criteria, generation_config, rmod_config, rmod_streamer,
                model_kwargs,
            )

    # ------------------------------------------------------------------------------------------
    def _decode(self, model, input_ids, logits_processor, stopping_criteria, generation_config, cfg, streamer, model_kwargs):
        head = _resolve_value_model(cfg, model)
        objective_idx = cfg.resolve_objectives(head.objectives)
        names = tuple(head.objectives[i] for i in objective_idx)
        fixed = cfg.resolve_fixed_weights(names)
        _check_sampling(generation_config, cfg)
        device = input_ids.device
        obj_index = torch.tensor(objective_idx, device=device)
        fixed_w = None if fixed is None else torch.tensor(fixed, dtype=torch.float32, device=device)  # (G,)

        K, B, G = cfg.num_candidates, cfg.block_size, len(names)
        batch, prompt_len = input_ids.shape
        max_new = generation_config.max_length - prompt_len
        warn = getattr(head, "warn_if_sampling_differs", None)  # value heads and text value models that record it
        if callable(warn):  # warns once if the value model was trained on another sampling distribution
            warn(generation_config, max_new, model)
        pad_id = generation_config._pad_token_tensor
        has_eos = any(hasattr(c, "eos_token_id") for c in stopping_criteria)
        if has_eos and pad_id is None:
            raise ValueError("an EOS stopping criterion needs `pad_token_id` to pad finished candidates; set it.")
        do_sample = generation_config.do_sample
        check_each_step = _host_syncs_are_cheap(device)
        logits_processor, row_map = _map_processors(logits_processor, batch)
        if check_each_step:  # CPU: top-p from a partial sort (the full-vocabulary sort is ~30% of a step there)
            logits_processor = swap_top_p(logits_processor)

        # A static cache has a fixed batch: every prompt keeps its K rows to the end (finished prompts are fed pad
        # tokens, as `generate` does), the rows are reordered in place, and a compiled forward sees one shape.
        fixed_rows = _uses_static_cache(model_kwargs.get("cache"))
        forward = model
        if fixed_rows:
            model_kwargs["cache"] = _static_cache_with_room(model, model_kwargs["cache"], generation_config, batch)
            if model._valid_auto_compile_criteria(model_kwargs, generation_config):
                forward = _compiled_call(model, generation_config.compile_config)

        n_blocks_max = max(1, -(-max_new // B))
        weights_hist = torch.zeros(batch, n_blocks_max, G, device=device)  # (batch, n_blocks, G)
        values_hist = torch.zeros(batch, n_blocks_max, K, G, device=device)  # (batch, n_blocks, K, G)
        gap_hist = torch.zeros(batch, n_blocks_max, device=device) if cfg.calls_solver else None
        chosen_hist = torch.full((batch, n_blocks_max), -1, dtype=torch.long, device=device)
        new_tokens = torch.full((batch, max(max_new, 0)), 0 if pad_id is None else int(pad_id), dtype=torch.long, device=device)
        new_len = torch.zeros(batch, dtype=torch.long, device=device)  # (batch,) real generated tokens

        if streamer is not None:
            streamer.put(input_ids.cpu())

        scorer: Scorer = self.scorer_factory(head, model, cfg)
        try:
            prompt_mask = model_kwargs.get("attention_mask")  # (batch, prompt_len) or None: no padding
            check_inputs = getattr(scorer, "check_inputs", None)
            if callable(check_inputs):  # e.g. a backbone value model's position limit, before any compute
                check_inputs(input_ids, prompt_mask, max_new)
            with model._optimize_model_for_decode():
                outputs = model._prefill(input_ids, generation_config, model_kwargs)
                model_kwargs = model._update_model_kwargs_for_generation(outputs, model_kwargs)
                logits = outputs.logits[:, -1].to(copy=True, dtype=torch.float32, device=device)  # (batch, V)
                del outputs
                scorer.prefill(input_ids, prompt_mask)

                # Slots: groups of K rows, one prompt each. Without a static cache the slots are the prompts still
                # decoding; with one, every prompt keeps its slot and `live` says which still decode.
                slot_prompts = list(range(batch))  # host: the prompt of each slot
                live = list(range(batch))  # host: the live slots (all of them without a static cache)
                live_t = torch.arange(batch, device=device)
                active = live_t  # (n_live,) prompt of each live slot
                index = live_t.repeat_interleave(K)  # rows of the next block, into the current rows
                rows_now, ids, generated, n_blocks = batch, input_ids, 0, 0
                while generated < max_new:
                    # ---- expand the chosen rows K times (one cache reorder) ----
                    model_kwargs = _index_rows(model_kwargs, index, rows_now, fixed_rows)
                    ids, logits = ids.index_select(0, index), logits.index_select(0, index)
                    scorer.reorder(index)
                    rows_now = ids.shape[0]  # n_slots * K
                    if row_map is not None:
                        row_map.update(slot_prompts, K)
                    n_slots, n_live = len(slot_prompts), len(live)
                    live_rows = None if n_live == n_slots else (
                        live_t[:, None] * K + torch.arange(K, device=device)).reshape(-1)  # (n_live * K,)

                    # ---- sample the candidate blocks ----
                    length = min(B, max_new - generated)
                    ids, logits, model_kwargs, unfinished, real = self._sample_block(
                        model, forward, ids, logits, model_kwargs, logits_processor, stopping_criteria, length,
                        do_sample, has_eos, pad_id, scorer, check_each_step, live_rows,
                    )
                    length = real.shape[1]  # the block may end early when every row finished
                    block = ids[:, -length:]  # (rows, L)

                    # ---- score, solve, select ----
                    values = scorer.block_values(block, real).to(device=device, dtype=torch.float32)
                    values = values.index_select(-1, obj_index).view(n_slots, K, G)  # (n_slots, K, G)
                    if live_rows is not None:
                        values = values.index_select(0, live_t)  # (n_live, K, G)
                    w, gap = self._weights(values, cfg, fixed_w)  # (n_live, G)
                    choice = self._select(values, w, cfg)  # (n_live,)
                    chosen_rows = live_t * K + choice  # (n_live,) rows of the current block

                    weights_hist[active, n_blocks] = w
                    values_hist[active, n_blocks] = values
                    chosen_hist[active, n_blocks] = choice
                    if gap is not None:
                        gap_hist[active, n_blocks] = gap
                    chosen_block = block.index_select(0, chosen_rows)  # (n_live, L)
                    new_tokens[active, generated : generated + length] = chosen_block
                    new_len[active] = generated + real.index_select(0, chosen_rows).sum(-1)
                    if streamer is not None:
                        self._stream(streamer, chosen_block, real.index_select(0, chosen_rows), active, batch, pad_id)
                    generated += length
                    n_blocks += 1

                    # ---- keep the chosen rows of prompts that are not finished ----
                    if generated >= max_new:
                        break
                    still = unfinished.index_select(0, chosen_rows).tolist()  # the one host read per block
                    if not any(still):
                        break
                    keep = [i for i, s in enumerate(still) if s]
                    keep_t = torch.tensor(keep, dtype=torch.long).to(device, non_blocking=True)
                    if fixed_rows:  # every slot keeps K rows; a finished slot repeats its first row
                        slot_rows = torch.arange(n_slots, device=device) * K
                        slot_rows = slot_rows.index_copy(0, live_t, chosen_rows)
                        index = slot_rows.repeat_interleave(K)
                        live = [live[i] for i in keep]
                        live_t = live_t.index_select(0, keep_t)
                    else:
                        slot_prompts = [slot_prompts[live[i]] for i in keep]
                        live = list(range(len(keep)))
                        index = chosen_rows.index_select(0, keep_t).repeat_interleave(K)
                        live_t = torch.arange(len(keep), device=device)
                    active = active.index_select(0, keep_t)
        finally:
            scorer.close()

        if streamer is not None:
            streamer.end()
        total = int(new_len.max()) if batch > 0 else 0
        sequences = torch.cat([input_ids, new_tokens[:, :total]], dim=-1)
        if not generation_config.return_dict_in_generate:
            return sequences
        block_mask = chosen_hist[:, :n_blocks] >= 0
        return RMODOutput(
            sequences=sequences,
            weights=weights_hist[:, :n_blocks],
            values=values_hist[:, :n_blocks],
            chosen=chosen_hist[:, :n_blocks],
            block_mask=block_mask,
            solver_gap=None if gap_hist is None else gap_hist[:, :n_blocks],
            objectives=names,
        )

    # ------------------------------------------------------------------------------------------
    @staticmethod
    def _sample_block(model, forward, ids, logits, model_kwargs, logits_processor, stopping_criteria, length,
                      do_sample, has_eos, pad_id, scorer, check_each_step, live_rows=None):
        """Sample `length` tokens for every row (the same steps as ``generate``'s ``_sample``).

        After each sampled token the token is fed to the policy (through `forward`, the model or its compiled
        call), so that when the block ends the cache, the next-token logits and the value scorer all include
        the whole block. `live_rows` (static cache only) lists the rows of prompts still decoding: only they
        draw random numbers, so a run consumes the generator exactly as the dynamic-cache run does; the other
        rows are fed padding. Returns the grown ids, next logits, model kwargs, the per-row unfinished flags
        and the (rows, L) mask of real (non-padding) block tokens.
        """
        rows = ids.shape[0]
        unfinished = torch.ones(rows, dtype=torch.bool, device=ids.device)  # (rows,)
        fill = 0 if pad_id is None else pad_id
        if live_rows is not None:
            unfinished = torch.zeros_like(unfinished).index_fill(0, live_rows, True)
        real_steps = []
        for step in range(length):
            scores = logits_processor(ids, logits)  # (rows, V)
            live_scores = scores if live_rows is None else scores.index_select(0, live_rows)
            if do_sample:
                probs = torch.nn.functional.softmax(live_scores, dim=-1)
                tokens = torch.multinomial(probs, num_samples=1).squeeze(1)  # (rows,)
            else:
                tokens = torch.argmax(live_scores, dim=-1)
            if live_rows is not None:
                tokens = torch.full((rows,), fill, dtype=tokens.dtype, device=tokens.device).index_copy(
                    0, live_rows, tokens)
            real = unfinished
            if has_eos:
                tokens = torch.where(real, tokens, pad_id)
            ids = torch.cat([ids, tokens[:, None]], dim=-1)  # (rows, len + 1)
            real_steps.append(real)
            unfinished = unfinished & ~stopping_criteria(ids, scores)

            model_inputs = model.prepare_inputs_for_generation(ids, next_sequence_length=1, **model_kwargs)
            outputs = forward(**model_inputs, return_dict=True)
            model_kwargs = model._update_model_kwargs_for_generation(outputs, model_kwargs)
            logits = outputs.logits[:, -1].to(copy=True, dtype=torch.float32, device=ids.device)
            del outputs
            scorer.observe(real)
            if check_each_step and not bool(unfinished.any()):
                break
        return ids, logits, model_kwargs, unfinished, torch.stack(real_steps, dim=1)  # real: (rows, L)

    @staticmethod
    def _weights(values: torch.Tensor, cfg: RMODConfig, fixed_w: torch.Tensor | None):
        """(n, K, G) values -> (n, G) weights and the solver gap (None when no solver runs)."""
        if fixed_w is not None:
            return fixed_w.expand(values.shape[0], -1), None
        sol = _solver.solve_weights(values, cfg.lam, method=cfg.solver, **cfg.solver_options)
        return sol.weights.to(torch.float32), sol.gap.to(torch.float32)

    @staticmethod
    def _select(values: torch.Tensor, w: torch.Tensor, cfg: RMODConfig) -> torch.Tensor:
        """Index of the kept candidate per prompt: argmax of w·V, or a draw ∝ exp(λ w·V)."""
        score = torch.einsum("nkg,ng->nk", values, w)  # (n, K)
        if cfg.selection == "sample" and score.shape[1] > 1:
            probs = torch.softmax(cfg.lam * score, dim=-1)
            return torch.multinomial(probs, num_samples=1).squeeze(1)
        return score.argmax(dim=-1)

    @staticmethod
    def _stream(streamer, chosen_block, chosen_real, active, batch, pad_id):
        if batch == 1:
            streamer.put(chosen_block[:, : int(chosen_real.sum())].cpu())
            return
        full = torch.full((batch, chosen_block.shape[1]), 0 if pad_id is None else int(pad_id), dtype=torch.long,
                          device=chosen_block.device)
        full[active] = chosen_block
        streamer.put(full.cpu())


# ---------------------------------------------------------------------------------------------- entry points
def generate(model, inputs: torch.Tensor | None = None, *, rmod_config: RMODConfig, streamer=None, **kwargs):
    """Run RMOD on any transformers causal LM, without `enable`: the one-call entry point.

    ``hf_rmod.generate(model, ids, rmod_config=cfg, max_new_tokens=64, do_sample=True)`` runs
    ``GenerationMixin.generate`` with every standard preparation step and RMOD as the decoding loop;
    equivalent to ``hf_rmod.enable(model).generate(inputs, rmod_config=rmod_config, **kwargs)``.
    ``custom_generate`` may be a `RobustMultiObjectiveGenerator` (e.g. one with a ``scorer_factory``).
    """
    generator = kwargs.pop("custom_generate", None)
    if generator is None:
        generator = RobustMultiObjectiveGenerator()
    elif not isinstance(generator, RobustMultiObjectiveGenerator):
        raise ValueError(
            "`custom_generate` cannot be combined with `rmod_config`: RMOD is itself the decoding loop. Drop "
            "`custom_generate`, or pass a `RobustMultiObjectiveGenerator(scorer_factory=...)` to change the scorer."
        )
    if kwargs.get("assistant_model") is not None:
        raise ValueError("`assistant_model` (assisted decoding) cannot be combined with `rmod_config`.")
    return GenerationMixin.generate(
        model,
        inputs,
        custom_generate=generator,
        rmod_config=rmod_config,
        rmod_streamer=streamer,
        **kwargs,
    )


class _RMODGenerate:
    """The ``generate`` that `enable` installs on one model instance.

    Calls without ``rmod_config`` go to the class's own ``generate`` untouched. A plain object
    (not a bound function) so that ``copy.deepcopy`` rebinds it to the copy and pickling works.
    """

    def __init__(self, model):
        self.__self__ = model
        self.__doc__ = type(model).generate.__doc__

    def __call__(self, *args, rmod_config: RMODConfig | None = None, **kwargs):
        model = self.__self__
        if rmod_config is None:
            return type(model).generate(model, *args, **kwargs)
        return generate(model, *args, rmod_config=rmod_config, **kwargs)


def enable(model):
    """Make ``model.generate(..., rmod_config=cfg)`` run RMOD; returns the same model object.

    Only this instance's ``generate`` is wrapped: calls without ``rmod_config`` behave exactly as
    before, other models and the class are untouched, ``config.architectures`` and
    ``save_pretrained`` are unaffected, and ``copy.deepcopy`` / pickling keep working.

    ```python
    >>> model = hf_rmod.enable(AutoModelForCausalLM.from_pretrained(...))  # doctest: +SKIP
    >>> out = model.generate(ids, rmod_config=RMODConfig(value_model=head), max_new_tokens=64)  # doctest: +SKIP
    ```
    """
    if not isinstance(model, GenerationMixin):
        raise TypeError(
            f"`enable` needs a transformers model with `generate` (a GenerationMixin), got {type(model).__name__}."
        )
    if is_enabled(model):
        return model
    model.generate = _RMODGenerate(model)
    return model


def is_enabled(model: Any) -> bool:
    """Whether `enable` was applied to this model instance."""
    current = getattr(model, "__dict__", {}).get("generate")
    return isinstance(current, _RMODGenerate) and current.__self__ is model
