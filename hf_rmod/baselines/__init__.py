"""The paper's non-RMOD baselines as library features (RMOD paper §6, App. C).

* :func:`rewarded_soup` — Rewarded Soups (Ramé et al., 2023): one model whose parameters are the weighted average
  of per-objective policies; decodes at plain-sampling cost.
* :func:`mod_generate` — MOD (Shi et al., 2024): decode from ``softmax(Σ_g w_g · logits_g)`` of G policies that
  share a tokenizer, inside ``generate``, each policy with its own KV cache.

Both take the policies and one weight per policy; the paper's (harmless, helpful) weightings are
(1, 0), (0.8, 0.2), …, (0, 1). See docs/baselines.md.
"""

from __future__ import annotations

from .mod import MultiObjectiveDecoder, mod_generate
from .soups import rewarded_soup

__all__ = ["MultiObjectiveDecoder", "mod_generate", "rewarded_soup"]
