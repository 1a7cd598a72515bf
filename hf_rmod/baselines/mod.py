"""MOD (Shi et al., 2024, "Decoding-time language model alignment with multiple objectives"): decode from a
weighted combination of G policies' next-token predictions.

.. math::

    \\pi_{\\text{MOD}}(y_t \\mid x, y_{<t}) \\;\\propto\\; \\prod_{g=1}^{G} \\pi_g(y_t \\mid x, y_{<t})^{w_g}
    \\;=\\; \\operatorname{softmax}\\Big(\\sum_g w_g \\, \\ell_g\\Big)_{y_t},

where :math:`\\ell_g` are policy g's next-token logits. MOD's closed form (reverse-KL case, :math:`\\sum_g w_g = 1`)
is the weighted *log-probability* sum :math:`\\sum_g w_g \\log \\pi_g`; it differs from the weighted *logit* sum only
by the per-row constant :math:`\\sum_g w_g \\log Z_g`, which softmax, argmax, temperature, top-k, top-p, min-p and
every other shift-invariant processor ignore. ``combine="logits"`` (the default) sums raw logits: it costs no
extra pass over the vocabulary and, with weights (1, 0, …), hands ``generate``'s processors exactly the logits plain
``generate`` would, so even ``repetition_penalty`` (which scales positive and negative scores differently and is
therefore *not* shift-invariant) behaves as it does for one policy. ``combine="log_probs"`` sums log-softmaxed
logits, MOD's formula term for term; choose it when a non-shift-invariant processor should see log-probabilities.

Surface: :func:`mod_generate` ``(policies, weights, input_ids, **generate_kwargs)``. It calls
``GenerationMixin.generate(policies[0], ..., custom_generate=<loop>)`` — the hook `hf_rmod.generate` uses for RMOD
— so ``generate`` itself builds the generation config, logits processors/warpers, stopping criteria (max length,
EOS), attention mask and position ids from the usual arguments, and validates them against
``policies[0]``; the loop then prefills every policy once with its own ``DynamicCache(config=...)`` and feeds each
one token per row per step. Why not the other HF surfaces:

* a ``LogitsProcessor`` only sees ``(input_ids, scores)``: to add other policies' logits it would have to
  re-encode the whole prefix every step (quadratic cost) or keep hidden per-policy caches that silently go stale
  under ``num_beams``, assisted decoding or a second ``generate`` call — no reset hook exists;
* ``model.generate(ids, mod_policies=[...])`` needs the instance's ``generate`` wrapped (as `hf_rmod.enable` does
  for RMOD); a plain function keeps the models untouched, and policies 1… are not "owned" by policy 0.

Cost: every policy with a non-zero weight sees the prompt once, then one token per row per step — G times the
forward compute of plain sampling, with G KV caches. A zero-weight policy is never run. Same-seed sampling consumes
the random generator exactly as ``generate`` does, so weights (1, 0) reproduce ``policies[0].generate(...)``.

```python
>>> out = mod_generate([harmless, helpful], [0.8, 0.2], ids, attention_mask=mask,  # doctest: +SKIP
...                    do_sample=True, max_new_tokens=64)
```
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from transformers import DynamicCache, GenerationMixin
from transformers.generation.utils import GenerateDecoderOnlyOutput

from ..configuration_value_head import tokenizer_fingerprint
from ..modeling_value_head import _policy_sizes
from ._weights import as_weight_list, check_policies

__all__ = ["mod_generate", "MultiObjectiveDecoder"]

_COMBINE_MODES = ("logits", "log_probs")


def mod_generate(
    policies: Sequence[GenerationMixin],
    weights: Sequence[float],
    inputs: torch.Tensor | None = None,
    *,
    combine: str = "logits",
    tokenizers: Sequence[Any] | None = None,
    streamer=None,
    **generate_kwargs,
):
    """Generate from ``softmax(Σ_g weights[g] · logits_g)`` of G policies that share a tokenizer.

    Takes every argument of ``generate`` (``attention_mask``, ``max_new_tokens``, ``do_sample``, ``temperature``,
    ``top_p``, ``eos_token_id``, ``num_return_sequences``, ``return_dict_in_generate``, ``output_scores``, …);
    they are read with ``policies[0]``'s generation config as the default. Returns what ``generate`` returns: the
    ids (prompt + new tokens, finished rows padded), or a ``GenerateDecoderOnlyOutput`` with ``sequences`` and,
    if asked, ``scores`` (processed) and ``logits`` (the combined logits) per step.

    Args:
        policies: G ≥ 1 causal LMs with the same vocabulary (the same tokenizer), e.g. one fine-tuned per objective.
        weights: G finite numbers with a positive sum, in the order of `policies` (MOD uses the simplex;
            a sum s ≠ 1 acts as an inverse temperature s). Zero-weight policies are not run.
        inputs: ``(batch, prompt_len)`` prompt ids, left-padded with `attention_mask` for ragged batches.
        combine: ``"logits"`` (sum raw logits) or ``"log_probs"`` (sum log-softmaxed logits); see the module doc.
        tokenizers (*optional*): one tokenizer per policy; when given, their fingerprints must match.
        streamer (*optional*): a transformers streamer (``generate`` drops it on the ``custom_generate`` path,
            so it travels here).
    """
    policies = check_policies(policies)
    for i, policy in enumerate(policies):
        if not isinstance(policy, GenerationMixin):
            raise TypeError(f"`policies[{i}]` must be a transformers causal LM (a GenerationMixin), got {type(policy).__name__}.")
    w = _mod_weights(weights, len(policies))
    _check_same_vocab(policies)
    if tokenizers is not None:
        _check_same_tokenizer(tokenizers, len(policies))
    if combine not in _COMBINE_MODES:
        raise ValueError(f"`combine` must be one of {list(_COMBINE_MODES)}, got {combine!r}.")
    for key in ("custom_generate", "assistant_model"):
        if generate_kwargs.get(key) is not None:
            raise ValueError(f"`{key}` cannot be combined with `mod_generate`: MOD is itself the decoding loop. Drop `{key}`.")
    if generate_kwargs.get("cache", generate_kwargs.get("past_key_values")) is not None:
        raise ValueError(
            "`cache` cannot be passed to `mod_generate`: MOD builds one fresh KV cache per policy. Drop `cache`."
        )
    return GenerationMixin.generate(
        policies[0], inputs, custom_generate=MultiObjectiveDecoder(), mod_policies=policies, mod_weights=w,
        mod_combine=combine, mod_streamer=streamer, **generate_kwargs,
    )


class MultiObjectiveDecoder:
    """The MOD loop that ``generate`` calls through its ``custom_generate`` hook (use :func:`mod_generate`).

    ``generate`` has already prepared the processors, stopping criteria, attention mask, position ids and an empty
    cache for ``model`` (= ``mod_policies[0]``); the other policies get ``DynamicCache(config=policy.config)`` and the
    same mask / position ids. A plain object rather than a function so that it is picklable and shows in reprs.
    """

    def __call__(self, model, input_ids, logits_processor, stopping_criteria, generation_config, mod_policies=None,
                 mod_weights=None, mod_combine="logits", mod_streamer=None, **model_kwargs):
        if mod_policies is None or mod_weights is None or mod_policies[0] is not model:
            raise ValueError("`MultiObjectiveDecoder` is run by `hf_rmod.baselines.mod_generate(policies, weights, ...)`.")
        if generation_config.num_beams > 1:
            raise ValueError(
                f"`num_beams`={generation_config.num_beams} cannot be combined with MOD, which samples (or picks the "
                "argmax of) the combined distribution token by token. Set num_beams=1."
            )
        if model.config.is_encoder_decoder:
            raise ValueError("MOD decodes causal (decoder-only) language models; `policies[0]` is encoder-decoder.")
        with torch.no_grad():
            return _decode(model, input_ids, logits_processor, stopping_criteria, generation_config, mod_policies,
                           mod_weights, mod_combine, mod_streamer, model_kwargs)


# ---------------------------------------------------------------------------------------------------- the loop
def _decode(model, input_ids, logits_processor, stopping_criteria, generation_config, policies, weights, combine,
            streamer, model_kwargs):
    device = input_ids.device
    pad_id = generation_config._pad_token_tensor
    has_eos = any(hasattr(c, "eos_token_id") for c in stopping_criteria)
    if has_eos and pad_id is None:
        raise ValueError("an EOS stopping criterion needs `pad_token_id` to pad finished rows; set it.")
    active = [(p, w) for p, w in zip(policies, weights) if w != 0.0]  # zero-weight policies are never run
    states = [_policy_kwargs(p, model, model_kwargs) for p, _ in active]  # one model_kwargs (own cache) each
    want_scores = generation_config.return_dict_in_generate and generation_config.output_scores
    want_logits = generation_config.return_dict_in_generate and generation_config.output_logits
    scores_hist, logits_hist = [], []
    if streamer is not None:
        streamer.put(input_ids.cpu())

    states, logits = _prefill_all(active, states, input_ids, generation_config, combine)  # logits: (rows, V)
    unfinished = torch.ones(input_ids.shape[0], dtype=torch.bool, device=device)  # (rows,)
    ids = input_ids
    while True:
        scores = logits_processor(ids, logits)  # (rows, V)
        if want_scores:
            scores_hist.append(scores)
        if want_logits:
            logits_hist.append(logits)
        tokens = _next_tokens(scores, generation_config.do_sample)  # (rows,)
        if has_eos:
            tokens = torch.where(unfinished, tokens, pad_id.to(device))
        ids = torch.cat([ids, tokens[:, None]], dim=-1)  # (rows, len + 1)
        unfinished = unfinished & ~stopping_criteria(ids, scores)
        if streamer is not None:
            streamer.put(tokens.cpu())
        if not bool(unfinished.any()):
            break
        states, logits = _step_all(active, states, ids, combine)

    if streamer is not None:
        streamer.end()
    if not generation_config.return_dict_in_generate:
        return ids
    return GenerateDecoderOnlyOutput(
        sequences=ids,
        scores=tuple(scores_hist) if want_scores else None,
        logits=tuple(logits_hist) if want_logits else None,
    )


def _policy_kwargs(policy, model, model_kwargs: dict) -> dict:
    """The model kwargs of one policy: ``generate``'s for `model` itself, a copy with a fresh cache for the others."""
    if policy is model:
        return model_kwargs
    dev = policy.device
    kw = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in model_kwargs.items()
          if k not in ("cache", "past_key_values", "logits_to_keep")}
    kw["cache"] = DynamicCache(config=policy.config)
    kw["use_cache"] = True
    if policy._supports_logits_to_keep():
        kw["logits_to_keep"] = 1
    return kw


def _prefill_all(active, states, input_ids, generation_config, combine):
    """Encode the prompt once per policy; returns the updated kwargs and the (rows, V) combined logits."""
    new_states, per_policy = [], []
    for (policy, _), kw in zip(active, states):
        out = policy._prefill(input_ids.to(policy.device), generation_config, kw)
        new_states.append(policy._update_model_kwargs_for_generation(out, kw))
        per_policy.append(out.logits[:, -1])  # (rows, V)
        del out
    return new_states, _combine(per_policy, [w for _, w in active], combine, input_ids.device)


def _step_all(active, states, ids, combine):
    """Feed the last token of `ids` to every policy (one token per row each); returns kwargs and combined logits."""
    new_states, per_policy = [], []
    for (policy, _), kw in zip(active, states):
        inputs = policy.prepare_inputs_for_generation(ids.to(policy.device), next_sequence_length=1, **kw)
        out = policy(**inputs, return_dict=True)
        new_states.append(policy._update_model_kwargs_for_generation(out, kw))
        per_policy.append(out.logits[:, -1])  # (rows, V)
        del out
    return new_states, _combine(per_policy, [w for _, w in active], combine, ids.device)


def _combine(per_policy: list[torch.Tensor], weights: list[float], combine: str, device) -> torch.Tensor:
    """[(rows, V)] * G -> (rows, V) float32: ``Σ_g w_g · ℓ_g`` (or of log-softmaxed ℓ_g)."""
    total = None
    for logits, w in zip(per_policy, weights):
        x = logits.to(device=device, dtype=torch.float32)  # (rows, V)
        if combine == "log_probs":
            x = torch.log_softmax(x, dim=-1)
        term = x if w == 1.0 else w * x  # weight 1 keeps the logits bit for bit (parity with plain generate)
        total = term.clone() if total is None else total.add_(term)
    return total


def _next_tokens(scores: torch.Tensor, do_sample: bool) -> torch.Tensor:
    """(rows, V) processed scores -> (rows,) tokens, drawing random numbers exactly as ``generate``'s ``_sample``."""
    if do_sample:
        probs = torch.nn.functional.softmax(scores, dim=-1)
        return torch.multinomial(probs, num_samples=1).squeeze(1)
    return torch.argmax(scores, dim=-1)


# ---------------------------------------------------------------------------------------------------- checks
def _mod_weights(weights: Any, n: int) -> list[float]:
    """`n` finite weights with a positive sum (negative entries allowed: MOD extrapolates too)."""
    values = as_weight_list(weights, n)
    total = math.fsum(values)
    if total <= 0:
        raise ValueError(
            f"`weights` must have a positive sum, got {values} (sum {total}): a non-positive sum inverts or flattens "
            "the combined distribution. Use weights on the simplex, e.g. weights=[0.8, 0.2]."
        )
    return values


def _check_same_vocab(policies: list) -> None:
    sizes = [_policy_sizes(p)[1] for p in policies]  # rows of the lm_head (the logits' last dim), else config
    for i, size in enumerate(sizes[1:], start=1):
        if size != sizes[0]:
            raise ValueError(
                f"`policies[{i}]` has a vocabulary of {size} tokens but `policies[0]` has {sizes[0]}: MOD adds the "
                "policies' next-token logits, so they must share one tokenizer. Use policies fine-tuned from one model "
                "(and the same `resize_token_embeddings`)."
            )


def _check_same_tokenizer(tokenizers: Sequence[Any], n: int) -> None:
    tokenizers = list(tokenizers)
    if len(tokenizers) != n:
        raise ValueError(f"`tokenizers` has {len(tokenizers)} entries but there are {n} policies: pass one per policy.")
    prints = [tokenizer_fingerprint(t) for t in tokenizers]
    for i, fp in enumerate(prints[1:], start=1):
        if fp["sha256"] != prints[0]["sha256"]:
            raise ValueError(
                f"`tokenizers[{i}]` ({fp['name_or_path']}, {fp['vocab_size']} tokens) maps token ids differently from "
                f"`tokenizers[0]` ({prints[0]['name_or_path']}, {prints[0]['vocab_size']} tokens): MOD needs policies "
                "that share one tokenizer."
            )
