"""Value models that read text: a MiniLM value model fit by CD-FUDGE on prefixes (issue 10 §3c/d).

The policy's hidden state is one view of a partial response; its text is another. This module fits a value model
on the **text** of partial responses, the paper's own setup (a value function with its own backbone and
tokenizer), with the offline all-MiniLM-L6-v2 sentence encoder as the frozen backbone and one linear output per
objective (a :class:`~hf_rmod.rewards.MiniLMRewardModel` with ``G`` outputs):

.. math::

    V_g(x, y^t) = w_g^\\top \\phi(e(x), e(y^t)) + b_g, \\qquad
    \\phi(p, r) = [p,\\ r,\\ p \\odot r],

where ``e`` is the MiniLM embedding of the user prompt ``x`` and of the decoded partial response ``y^t``. CD-FUDGE
(eq. 8) regresses ``V_g(x, y^t)`` on the final reward ``r_g(x, y)`` at every prefix ``t`` of the sampled responses.
The fit is closed-form ridge regression **towards the reward model** (the paper initialises its value functions
from the reward models): with ``w_g^0`` the reward model written in the same features (when it is one of the
linear MiniLM rewards; zero otherwise),

.. math::

    \\min_{w, b}\\ \\|X_{\\text{within}} w - y_{\\text{within}}\\|^2 + \\beta\\, \\|X_{\\text{between}} w + b -
    y_{\\text{between}}\\|^2 + \\alpha n \\|w - w^0\\|^2,

where rows are (response, prefix length) pairs, the *between* part is each (prompt, prefix length) group's mean
and the *within* part the deviation from it. ``beta = 1`` is plain least squares (the MSE of eq. 8);
``beta < 1`` weighs the within-prompt differences that RMOD's choice among the candidates of one prefix depends
on more than the between-prompt level (which sets the weights ``w*``); ``alpha`` pulls towards the reward model.

The value model is used in decoding as ``RewardValueModel(MiniLMReward(head), tokenizer,
normalization=head)``: the partial text of each candidate is embedded at every block boundary and the values are
z-scored with the final-reward statistics stored in the head (``reward_mean``, ``reward_std``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from .._utils import check_unique_names

__all__ = ["PrefixEmbeddings", "embed_prefixes", "fit_minilm_value_model", "reward_init_weights"]


@dataclass
class PrefixEmbeddings:
    """MiniLM embeddings of records' prompts and partial responses.

    Attributes:
        prompt_embeds: ``(n, d)`` one per record (the record's plain user prompt).
        prefix_embeds: ``(n, S, d)`` of the response decoded up to each of ``positions`` (a response shorter than
            ``t`` gives its whole text).
        rewards: ``(n, G)`` final rewards of the records, in ``objectives`` order.
        groups: ``(n,)`` prompt ids (records of one prompt share one id).
        positions: the ``S`` prefix lengths in response tokens.
        objectives: the ``G`` names.
    """

    prompt_embeds: torch.Tensor
    prefix_embeds: torch.Tensor
    rewards: torch.Tensor
    groups: torch.Tensor
    positions: list[int]
    objectives: list[str]

    def subset(self, index: Sequence[int] | torch.Tensor) -> "PrefixEmbeddings":
        index = torch.as_tensor(index, dtype=torch.long)
        return PrefixEmbeddings(
            self.prompt_embeds[index], self.prefix_embeds[index], self.rewards[index], self.groups[index],
            list(self.positions), list(self.objectives),
        )


def embed_prefixes(
    records: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    positions: Sequence[int],
    objectives: Sequence[str],
    encoder: Any = None,
) -> PrefixEmbeddings:
    """Embeds each record's prompt and its response decoded up to each of ``positions`` tokens.

    Args:
        records: sampled records (``prompt``, ``response_ids``, ``rewards``), e.g. from
            :func:`~hf_rmod.experiments.records.load_records`.
        tokenizer: the **policy's** tokenizer (decodes ``response_ids`` as the decoder's
            :class:`~hf_rmod.reward_values.RewardValueModel` does: ``skip_special_tokens=True``).
        positions: prefix lengths ``t`` in response tokens, e.g. ``[16, 32, ..., 96]``.
        objectives: the reward columns to keep.
        encoder: a :class:`~hf_rmod.rewards.MiniLMEncoder` (default: the shared CPU one).
    """
    from ..rewards import get_minilm_encoder

    objectives = check_unique_names(objectives, "objectives")
    positions = [int(t) for t in positions]
    if not positions or any(t < 1 for t in positions):
        raise ValueError(f"`positions` must be prefix lengths >= 1, got {positions}.")
    if not records:
        raise ValueError("`records` is empty; sample some with `hf-rmod sample`.")
    encoder = encoder if encoder is not None else get_minilm_encoder("cpu")
    texts = []
    for record in records:
        ids = list(record["response_ids"])
        texts += [tokenizer.decode(ids[:t], skip_special_tokens=True) for t in positions]  # (n * S,)
    prompts = [str(r["prompt"]) for r in records]
    unique = list(dict.fromkeys(prompts))
    group_of = {p: i for i, p in enumerate(unique)}
    prompt_table = encoder.encode(unique).float()  # (P, d)
    groups = torch.tensor([group_of[p] for p in prompts], dtype=torch.long)  # (n,)
    prefix = encoder.encode(texts).float().view(len(records), len(positions), -1)  # (n, S, d)
    rewards = torch.tensor([[float(r["rewards"][o]) for o in objectives] for r in records], dtype=torch.float64)
    return PrefixEmbeddings(prompt_table[groups], prefix, rewards, groups, positions, objectives)


def reward_init_weights(reward_heads: Sequence[Any | None], feature_mode: str, embedding_dim: int) -> torch.Tensor:
    """``(G, F)`` initial weights ``w^0``: each reward head (a one-output
    :class:`~hf_rmod.rewards.MiniLMRewardModel`, or ``None`` for zeros) written in ``feature_mode``'s features.

    A head in ``"response"`` or ``"prompt_response_product"`` features maps into ``"pair"`` features ``[p, r, p*r]``
    by placing its blocks; the reverse is possible only when the dropped blocks are zero.
    """
    blocks_of = {"response": ["r"], "prompt_response_product": ["r", "pr"], "pair": ["p", "r", "pr"]}
    d = int(embedding_dim)
    target = blocks_of[feature_mode]
    rows = []
    for head in reward_heads:
        row = torch.zeros(len(target) * d, dtype=torch.float64)
        if head is not None:
            weight = head.score.weight.detach().double()
            if weight.shape[0] != 1:
                raise ValueError(f"a reward head to initialise from must have one output, got {weight.shape[0]}.")
            source = blocks_of[head.config.feature_mode]
            for k, block in enumerate(source):
                values = weight[0, k * d : (k + 1) * d]
                if block in target:
                    j = target.index(block)
                    row[j * d : (j + 1) * d] = values
                elif bool(values.abs().gt(0).any()):
                    raise ValueError(
                        f"a {head.config.feature_mode!r} reward head cannot be written in {feature_mode!r} features "
                        f"(its {block!r} block is used); fit the value model with feature_mode='pair'."
                    )
        rows.append(row)
    return torch.stack(rows)  # (G, F)


def _flat_pairs(data: PrefixEmbeddings) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n * S, d)`` prompt and prefix embeddings, one row per (record, position)."""
    n, S, d = data.prefix_embeds.shape
    return data.prompt_embeds[:, None, :].expand(n, S, d).reshape(n * S, d), data.prefix_embeds.reshape(n * S, d)


def _features(data: PrefixEmbeddings, feature_mode: str) -> torch.Tensor:
    from ..rewards import build_minilm_features

    return build_minilm_features(*_flat_pairs(data), feature_mode).double()  # (n * S, F)


def _group_means(x: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Each row replaced by the mean of the rows with its key: ``(m, k) -> (m, k)``."""
    _, inverse, counts = torch.unique(keys, return_inverse=True, return_counts=True)
    sums = torch.zeros((counts.numel(), x.shape[1]), dtype=x.dtype).index_add_(0, inverse, x)
    return (sums / counts[:, None].to(x.dtype))[inverse]


def fit_minilm_value_model(
    data: PrefixEmbeddings,
    *,
    init: torch.Tensor | None = None,
    feature_mode: str = "pair",
    alpha: float = 1e-3,
    beta: float = 1.0,
    fit_info: Mapping[str, Any] | None = None,
) -> Any:
    """Fits a ``G``-output :class:`~hf_rmod.rewards.MiniLMRewardModel` value model (see the module docstring).

    Args:
        data: :func:`embed_prefixes` of the training records (every prefix length is a training row).
        init: ``(G, F)`` weights to shrink towards (:func:`reward_init_weights`); default zeros.
        feature_mode: the head's features (``"pair"``: ``[p, r, p*r]``).
        alpha: ridge strength (per training row) towards ``init``; > 0.
        beta: weight of the between-prompt part of the squared error (1 = least squares); > 0.
        fit_info: extra facts for the config's ``fit_info`` (data, split, metrics).

    Returns:
        The value model (float32, eval mode) with ``reward_mean`` / ``reward_std`` of the training records' final
        rewards in its config.
    """
    from ..rewards import MiniLMRewardConfig, MiniLMRewardModel

    for name, value in (("alpha", alpha), ("beta", beta)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}.")
    n, S, d = data.prefix_embeds.shape
    G = len(data.objectives)
    X = _features(data, feature_mode)  # (n * S, F)
    y = data.rewards.repeat_interleave(S, dim=0)  # (n * S, G)
    F = X.shape[1]
    w0 = torch.zeros((G, F), dtype=torch.float64) if init is None else init.double()
    if tuple(w0.shape) != (G, F):
        raise ValueError(f"`init` must be (G, F) = ({G}, {F}) for {feature_mode!r} features, got {tuple(w0.shape)}.")
    x_mean, y_mean = X.mean(0), y.mean(0)
    Xc, yc = X - x_mean, y - y_mean  # intercept: unpenalised
    keys = data.groups.repeat_interleave(S) * S + torch.arange(S).repeat(n)  # (prompt, position) groups
    Xb, yb = _group_means(Xc, keys), _group_means(yc, keys)
    Xw, yw = Xc - Xb, yc - yb
    rows = X.shape[0]
    A = Xw.T @ Xw + beta * (Xb.T @ Xb) + alpha * rows * torch.eye(F, dtype=torch.float64)  # (F, F)
    C = Xw.T @ yw + beta * (Xb.T @ yb) + alpha * rows * w0.T  # (F, G)
    W = torch.linalg.solve(A, C)  # (F, G)
    bias = y_mean - x_mean @ W  # (G,)
    std = data.rewards.std(0).clamp_min(1e-8)
    config = MiniLMRewardConfig(
        feature_mode=feature_mode, embedding_dim=d, objectives=list(data.objectives),
        reward_mean=data.rewards.mean(0).tolist(), reward_std=std.tolist(),
        fit_info={"method": "CD-FUDGE ridge towards the reward models", "alpha": alpha, "beta": beta,
                  "positions": list(data.positions), "responses": n, "prompts": int(data.groups.unique().numel()),
                  **dict(fit_info or {})},
    )
    model = MiniLMRewardModel(config)
    with torch.no_grad():
        model.score.weight.copy_(W.T.float())
        model.score.bias.copy_(bias.float())
    return model.eval()


def predict(model: Any, data: PrefixEmbeddings) -> torch.Tensor:
    """``(n, S, G)`` values of a MiniLM head on every prefix of ``data`` (reward units)."""
    n, S, _ = data.prefix_embeds.shape
    p, r = _flat_pairs(data)
    with torch.no_grad():
        out = model(p.float(), r.float())
    return out.reshape(n, S, -1).double()
