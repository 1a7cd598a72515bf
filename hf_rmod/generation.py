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

The loop is here, to be read as one algorithm (prefill, K-fold expansion, per-step sampling with generate's own
processors, scoring, solving, selection); the cache / row-mapping / compile plumbing it calls is in
:mod:`hf_rmod._generation_plumbing`, scorers in :mod:`hf_rmod.scoring`, the solver in :mod:`hf_rmod.solver`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from transformers import GenerationMixin
from transformers.utils import ModelOutput

from . import _generation_plumbing as _plumbing
from . import solver as _solver
from .config import RMODConfig
from .logits_process import swap_top_p
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


def _check_sampling(generation_config, cfg: RMODConfig) -> None:
    """Greedy decoding makes all K candidates the same continuation: refuse it rather than waste K-fold compute."""
    if not generation_config.do_sample and cfg.num_candidates > 1:
        raise ValueError(
            f"`do_sample` is False with `num_candidates`={cfg.num_candidates}: every candidate block would be the "
            "same greedy continuation, so RMOD has nothing to choose from. Pass do_sample=True (with temperature / "
            "top_p as you like), or RMODConfig(num_candidates=1) for plain greedy decoding."
        )


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
        head = _plumbing._resolve_value_model(cfg, model)
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
        check_each_step = _plumbing._host_syncs_are_cheap(device)
        logits_processor, row_map = _plumbing._map_processors(logits_processor, batch)
        if check_each_step:  # CPU: top-p from a partial sort (the full-vocabulary sort is ~30% of a step there)
            logits_processor = swap_top_p(logits_processor)

        # A static cache has a fixed batch: every prompt keeps its K rows to the end (finished prompts are fed pad
        # tokens, as `generate` does), the rows are reordered in place, and a compiled forward sees one shape.
        fixed_rows = _plumbing._uses_static_cache(model_kwargs.get("cache"))
        forward = model
        if fixed_rows:
            model_kwargs["cache"] = _plumbing._static_cache_with_room(model, model_kwargs["cache"], generation_config, batch)
            if model._valid_auto_compile_criteria(model_kwargs, generation_config):
                forward = _plumbing._compiled_call(model, generation_config.compile_config)

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
                    model_kwargs = _plumbing._index_rows(model_kwargs, index, rows_now, fixed_rows)
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
