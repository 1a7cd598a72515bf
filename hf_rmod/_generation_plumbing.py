"""The plumbing of the RMOD decoding loop (:mod:`hf_rmod.generation`), kept beside it so the loop reads as the algorithm.

- the value models decoding loads from a path (a small LRU, so a config naming a path reuses the loaded model) and
  their preparation for the policy (:meth:`hf_rmod.value_model.ValueModel.prepare`);
- the KV cache: selecting / expanding rows of ``model_kwargs`` and of the cache (one reorder per block), static
  caches with room for the K-fold batch, the ``torch.compile``-d forward of a static cache;
- the row-to-prompt mapping of batch-indexed logits processors (a processor that indexes by batch row sees the
  prompt each of the K-fold rows belongs to), and the processors RMOD refuses.
"""

from __future__ import annotations

import copy
import functools
import os
import threading
import weakref
from collections import OrderedDict

import torch
from transformers.cache_utils import StaticLayer, StaticSlidingWindowLayer
from transformers.generation import logits_process as _lp

from .config import RMODConfig
from .defaults import load_value_model
from .value_model import ValueModel

# Value models loaded from a path or Hub id, keyed by where they came from: decoding never writes into the user's
# RMODConfig, so a config that names a path reuses the loaded model through this small LRU instead.
_LOADED_HEADS: "OrderedDict[tuple, ValueModel]" = OrderedDict()
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


def _cached_value_model(name: str, **kwargs) -> ValueModel:
    """:func:`hf_rmod.defaults.load_value_model` (``name``, ``kwargs``), reusing the last few loaded this way."""
    key = _head_cache_key(name, kwargs)
    with _LOADED_HEADS_LOCK:
        head = _LOADED_HEADS.get(key)
        if head is not None:
            _LOADED_HEADS.move_to_end(key)
            return head
    head = load_value_model(name, **kwargs)
    with _LOADED_HEADS_LOCK:
        _LOADED_HEADS[key] = head
        while len(_LOADED_HEADS) > _LOADED_HEADS_MAX:
            _LOADED_HEADS.popitem(last=False)
    return head


def _resolve_value_model(cfg: RMODConfig, policy) -> ValueModel:
    """The config's value model, ready for `policy` (loaded when `cfg.value_model` is a path; `cfg` is not changed):
    ``prepare`` checks it against the policy and places it (one RMOD loaded itself may move; see
    :meth:`hf_rmod.value_model.ValueModel.prepare`)."""
    head = cfg.value_model
    owned = isinstance(head, str)
    if owned:
        head = _cached_value_model(head, **cfg.value_model_kwargs)
    head.prepare(policy, cfg, owned=owned)
    return head


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
