"""Evaluation metrics of the RMOD paper (Section 6.1), as pure functions.

All functions take per-prompt reward matrices ``rewards`` of shape ``(n, G)``: ``n`` prompts (one
response each) scored on ``G`` objectives, as torch tensors, numpy arrays or nested lists. Rows of
``method_rewards`` and ``reference_rewards`` must refer to the same prompts in the same order.

- :func:`mean_rewards`: ``(G,)`` mean reward per objective.
- :func:`worst_case_reward`: mean over prompts of ``min_g r_g`` (the per-prompt minimum, averaged).
- :func:`worst_objective_of_mean`: ``min_g`` of the mean over prompts of ``r_g``, and the objective ``g`` that
  attains it (the quantity the paper's Figs. 2, 4b and 8b plot, naming the objective). It is never below
  :func:`worst_case_reward` (a mean of minima is at most the minimum of means).
- :func:`worst_case_win_rate`: fraction of prompts where the method's worst objective beats the
  reference response's worst objective, ``1[min_g r_g(x, y_method) > min_g r_g(x, y_ref)]``; ties
  count one half.
- :func:`bootstrap_ci`: percentile bootstrap interval, resampling prompts (paired across arrays).
- :func:`summarize`: every metric above with its interval, as a :class:`MetricSummary`.
- :func:`paired_comparison`: a method against a baseline on the same prompts — the difference of both
  worst-case metrics and the head-to-head worst-case win rate, with paired bootstrap intervals, as a
  :class:`PairedComparison`.

Note that ``min_g`` compares raw rewards across objectives, so the metrics depend on the reward
scales (as in the paper); standardise rewards first if objectives live on different scales.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ._utils import check_unique_names

__all__ = [
    "MetricSummary",
    "PairedComparison",
    "bootstrap_ci",
    "mean_rewards",
    "paired_comparison",
    "summarize",
    "worst_case_reward",
    "worst_case_win_rate",
    "worst_objective_of_mean",
]


def _as_reward_matrix(rewards: Any, name: str) -> np.ndarray:
    """Validate and convert to a float64 ``(n, G)`` array (a 1-D input is one objective)."""
    if hasattr(rewards, "detach"):  # torch.Tensor, without importing torch
        rewards = rewards.detach().cpu().double().numpy()
    try:
        arr = np.asarray(rewards, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"`{name}` must be a numeric (n, G) array or tensor, got {type(rewards).__name__}.") from err
    if arr.ndim == 1:
        arr = arr[:, None]  # (n,) -> (n, 1)
    if arr.ndim != 2:
        raise ValueError(f"`{name}` must have shape (n, G) (prompts x objectives), got shape {arr.shape}.")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"`{name}` is empty (shape {arr.shape}); need at least one prompt and one objective.")
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(
            f"`{name}` contains NaN or infinite values (first at row {bad[0]}, objective {bad[1]}); drop or "
            "rescore those responses."
        )
    return arr


def _check_paired(method: np.ndarray, reference: np.ndarray) -> None:
    if method.shape != reference.shape:
        raise ValueError(
            f"`method_rewards` {method.shape} and `reference_rewards` {reference.shape} must have the same "
            "shape (n prompts, G objectives), with rows for the same prompts in the same order."
        )


def mean_rewards(rewards: Any) -> np.ndarray:
    """Mean reward of each objective.

    Args:
        rewards: ``(n, G)`` rewards.

    Returns:
        ``(G,)`` float64 array.
    """
    return _as_reward_matrix(rewards, "rewards").mean(axis=0)


def worst_case_reward(rewards: Any) -> float:
    """Mean over prompts of the worst objective, ``1/n Σ_i min_g r_{i,g}``.

    Args:
        rewards: ``(n, G)`` rewards.

    Returns:
        A float.
    """
    return float(_as_reward_matrix(rewards, "rewards").min(axis=1).mean())


def worst_objective_of_mean(rewards: Any) -> tuple[float, int]:
    """Worst objective of the mean reward, ``min_g 1/n Σ_i r_{i,g}``, and the objective attaining it.

    This is the paper's figure metric (Figs. 2, 4b, 8b report it and name the objective); compare
    :func:`worst_case_reward`, the mean over prompts of the per-prompt minimum, which is never larger.

    Args:
        rewards: ``(n, G)`` rewards.

    Returns:
        ``(value, g)``: the smallest per-objective mean and its column index ``g`` (the first on ties).

    Example:
        >>> worst_objective_of_mean([[0.0, 2.0], [2.0, 0.0], [2.0, 1.0]])  # means (4/3, 1): objective 1
        (1.0, 1)
    """
    means = _as_reward_matrix(rewards, "rewards").mean(axis=0)  # (G,)
    g = int(np.argmin(means))
    return float(means[g]), g


def _worst_objective_of_mean_resamples(resampled: np.ndarray) -> np.ndarray:
    """``(B, n, G) -> (B,)``: :func:`worst_objective_of_mean` of each resample (vectorised)."""
    return resampled.mean(axis=1).min(axis=-1)


def _worst_case_resamples(resampled: np.ndarray) -> np.ndarray:
    """``(B, n, G) -> (B,)``: :func:`worst_case_reward` of each resample (vectorised)."""
    return resampled.min(axis=-1).mean(axis=-1)


def worst_case_win_rate(method_rewards: Any, reference_rewards: Any) -> float:
    """Worst-case win rate of a method against the reference responses.

    For prompt ``i`` the method wins when ``min_g method[i, g] > min_g reference[i, g]``. Ties (equal
    minima, e.g. identical responses) count as half a win, so a method identical to the reference
    scores exactly 0.5 (the paper's strict indicator would score it 0).

    Args:
        method_rewards: ``(n, G)`` rewards of the method's response to each prompt.
        reference_rewards: ``(n, G)`` rewards of the reference policy's response to the same prompts.

    Returns:
        A float in ``[0, 1]``.
    """
    method = _as_reward_matrix(method_rewards, "method_rewards")
    reference = _as_reward_matrix(reference_rewards, "reference_rewards")
    _check_paired(method, reference)
    return float(_win_scores(method, reference).mean())


def _win_scores(method: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``(..., n, G), (..., n, G) -> (..., n)`` per-prompt score: 1 win, 0.5 tie, 0 loss."""
    m, r = method.min(axis=-1), reference.min(axis=-1)
    return (m > r).astype(np.float64) + 0.5 * (m == r)


def _win_rate_resamples(method: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``(B, n, G), (B, n, G) -> (B,)``: :func:`worst_case_win_rate` of each resample (vectorised)."""
    return _win_scores(method, reference).mean(axis=-1)


def bootstrap_ci(
    statistic_fn: Callable[..., Any],
    *arrays: Any,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int | None = 0,
    vectorized: bool = False,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval, resampling prompts.

    Each resample draws ``n`` row indices with replacement and applies the same indices to every
    array (paired resampling: a method and its reference stay matched on the same prompts), then
    evaluates ``statistic_fn`` on the resampled arrays. The interval is the ``(1 - confidence) / 2``
    and ``(1 + confidence) / 2`` quantiles of the resampled statistic.

    The indices of all resamples are one ``(n_resamples, n)`` matrix drawn from
    ``numpy.random.default_rng(seed)`` (row ``b`` is resample ``b``; the same draws, in the same order,
    as ``n_resamples`` successive ``rng.integers(0, n, size=n)`` calls). So a fixed ``seed`` gives the
    same interval for the same inputs, whichever path evaluates the statistic.

    Args:
        statistic_fn: maps the arrays (same order as given) to a scalar; with ``vectorized=True`` it
            maps arrays with a leading resample axis, ``(B, n, ...)``, to ``(B,)`` statistics (e.g.
            ``lambda a: a.mean(axis=1)``), which avoids a Python call per resample.
        *arrays: one or more arrays sharing their first dimension ``n`` (prompts).
        n_resamples: number of bootstrap resamples (>= 1).
        confidence: coverage level in ``(0, 1)``.
        seed: seed of the numpy generator (``None``: nondeterministic).
        vectorized: whether ``statistic_fn`` takes a batch of resamples (see above).

    Returns:
        ``(low, high)`` floats.

    Example:
        >>> import numpy as np
        >>> low, high = bootstrap_ci(np.mean, np.arange(100.0), n_resamples=200)
        >>> low < 49.5 < high
        True
        >>> bootstrap_ci(lambda a: a.mean(axis=1), np.arange(100.0), n_resamples=200, vectorized=True) == (low, high)
        True
    """
    if not isinstance(n_resamples, (int, np.integer)) or isinstance(n_resamples, bool) or n_resamples < 1:
        raise ValueError(f"`n_resamples` must be a positive int, got {n_resamples!r}.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"`confidence` must be in (0, 1), e.g. 0.95, got {confidence!r}.")
    converted = _as_resampling_arrays(arrays)
    n = converted[0].shape[0]
    indices = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))  # (B, n)
    if vectorized:
        stats = _vectorized_statistics(statistic_fn, converted, indices)
    else:
        stats = np.array([float(statistic_fn(*(a[idx] for a in converted))) for idx in indices])  # (B,)
    if not np.isfinite(stats).all():
        raise ValueError("`statistic_fn` returned NaN/inf on some resamples; check it on small samples.")
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(low), float(high)


_CHUNK_ELEMENTS = 1 << 22  # resampled values held at once by the vectorised path (~32 MB of float64)


def _as_resampling_arrays(arrays: Sequence[Any]) -> list[np.ndarray]:
    """The arrays of :func:`bootstrap_ci` as numpy arrays with a shared, non-empty first axis."""
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array to resample.")
    converted = []
    for k, a in enumerate(arrays):
        if hasattr(a, "detach"):
            a = a.detach().cpu().numpy()
        a = np.asarray(a)
        if a.ndim == 0:
            raise ValueError(f"array {k} is a scalar; bootstrap_ci resamples along the first (prompt) axis.")
        converted.append(a)
    lengths = [a.shape[0] for a in converted]
    if any(length != lengths[0] for length in lengths):
        raise ValueError(f"All arrays must have the same number of rows (prompts), got {lengths}.")
    if lengths[0] == 0:
        raise ValueError("Cannot bootstrap over zero prompts.")
    return converted


def _vectorized_statistics(
    statistic_fn: Callable[..., Any], arrays: list[np.ndarray], indices: np.ndarray
) -> np.ndarray:
    """``(B,)`` statistics of the resamples ``indices`` ``(B, n)``, a chunk of resamples per call."""
    row_size = sum(int(np.prod(a.shape[1:], dtype=np.int64)) for a in arrays) * indices.shape[1]
    chunk = max(1, _CHUNK_ELEMENTS // max(row_size, 1))
    parts = []
    for start in range(0, indices.shape[0], chunk):
        idx = indices[start : start + chunk]  # (b, n)
        out = np.asarray(statistic_fn(*(a[idx] for a in arrays)), dtype=np.float64)  # each array (b, n, ...)
        if out.shape != (idx.shape[0],):
            raise ValueError(
                f"`statistic_fn` with vectorized=True must return one value per resample, shape ({idx.shape[0]},), "
                f"got shape {out.shape}; reduce over axis 1 (the prompts), e.g. lambda a: a.mean(axis=1)."
            )
        parts.append(out)
    return np.concatenate(parts)


def _mean_of_resamples(resampled: np.ndarray) -> np.ndarray:
    """``(B, n) -> (B,)``: the mean of each resample (the vectorised ``np.mean`` of :func:`bootstrap_ci`)."""
    return resampled.mean(axis=1)


@dataclass
class MetricSummary:
    """Section 6.1 metrics of one method against the reference, with bootstrap intervals.

    Attributes:
        objectives: the ``G`` objective names.
        n_prompts: number of prompts ``n``.
        mean_rewards: ``{objective: mean reward of the method}``.
        mean_rewards_ci: ``{objective: (low, high)}``.
        reference_mean_rewards: ``{objective: mean reward of the reference}``.
        worst_case_reward: mean over prompts of the method's ``min_g r_g``.
        worst_case_reward_ci: ``(low, high)``.
        reference_worst_case_reward: the same for the reference responses.
        worst_case_win_rate: see :func:`worst_case_win_rate` (ties count 0.5).
        worst_case_win_rate_ci: ``(low, high)``.
        confidence: coverage level of the intervals.
        n_resamples: bootstrap resamples used.
        worst_objective_of_mean: ``min_g`` of the method's mean reward per objective (the paper's figure
            metric, :func:`worst_objective_of_mean`).
        worst_objective_of_mean_ci: ``(low, high)``.
        worst_objective: the objective attaining ``worst_objective_of_mean``.
        reference_worst_objective_of_mean: the same for the reference responses.
    """

    objectives: list[str]
    n_prompts: int
    mean_rewards: dict[str, float]
    mean_rewards_ci: dict[str, tuple[float, float]]
    reference_mean_rewards: dict[str, float]
    worst_case_reward: float
    worst_case_reward_ci: tuple[float, float]
    reference_worst_case_reward: float
    worst_case_win_rate: float
    worst_case_win_rate_ci: tuple[float, float]
    confidence: float = 0.95
    n_resamples: int = 1000
    worst_objective_of_mean: float | None = None
    worst_objective_of_mean_ci: tuple[float, float] | None = None
    worst_objective: str | None = None
    reference_worst_objective_of_mean: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (tuples become lists)."""
        return asdict(self)

    def __str__(self) -> str:
        pct = int(round(self.confidence * 100))
        lines = [f"MetricSummary over {self.n_prompts} prompts ({pct}% bootstrap CI):"]
        for g in self.objectives:
            lo, hi = self.mean_rewards_ci[g]
            lines.append(
                f"  mean {g}: {self.mean_rewards[g]:.4f} [{lo:.4f}, {hi:.4f}] (reference {self.reference_mean_rewards[g]:.4f})"
            )
        lo, hi = self.worst_case_reward_ci
        lines.append(
            f"  worst-case reward: {self.worst_case_reward:.4f} [{lo:.4f}, {hi:.4f}] "
            f"(reference {self.reference_worst_case_reward:.4f})"
        )
        if self.worst_objective_of_mean is not None:
            lo, hi = self.worst_objective_of_mean_ci
            lines.append(
                f"  worst objective of the mean: {self.worst_objective_of_mean:.4f} [{lo:.4f}, {hi:.4f}] "
                f"({self.worst_objective}; reference {self.reference_worst_objective_of_mean:.4f})"
            )
        lo, hi = self.worst_case_win_rate_ci
        lines.append(f"  worst-case win rate: {self.worst_case_win_rate:.4f} [{lo:.4f}, {hi:.4f}]")
        return "\n".join(lines)


def summarize(
    method_rewards: Any,
    reference_rewards: Any,
    objectives: Sequence[str],
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int | None = 0,
) -> MetricSummary:
    """All Section 6.1 metrics of a method against the reference, each with a bootstrap interval.

    Args:
        method_rewards: ``(n, G)`` rewards of the method's responses.
        reference_rewards: ``(n, G)`` rewards of the reference responses to the same prompts.
        objectives: the ``G`` objective names.
        n_resamples, confidence, seed: see :func:`bootstrap_ci` (one seed for all intervals).

    Returns:
        A :class:`MetricSummary`.
    """
    method = _as_reward_matrix(method_rewards, "method_rewards")
    reference = _as_reward_matrix(reference_rewards, "reference_rewards")
    _check_paired(method, reference)
    objectives = check_unique_names(objectives, "objectives")
    if len(objectives) != method.shape[1]:
        raise ValueError(
            f"`objectives` has {len(objectives)} names {objectives} but the rewards have {method.shape[1]} columns."
        )
    ci = dict(n_resamples=n_resamples, confidence=confidence, seed=seed, vectorized=True)
    means = method.mean(axis=0)
    worst_mean, worst_g = worst_objective_of_mean(method)
    mean_cis = {g: bootstrap_ci(_mean_of_resamples, method[:, j], **ci) for j, g in enumerate(objectives)}
    return MetricSummary(
        objectives=objectives,
        n_prompts=int(method.shape[0]),
        mean_rewards={g: float(means[j]) for j, g in enumerate(objectives)},
        mean_rewards_ci=mean_cis,
        reference_mean_rewards={g: float(v) for g, v in zip(objectives, reference.mean(axis=0))},
        worst_case_reward=worst_case_reward(method),
        worst_case_reward_ci=bootstrap_ci(_worst_case_resamples, method, **ci),
        reference_worst_case_reward=worst_case_reward(reference),
        worst_case_win_rate=worst_case_win_rate(method, reference),
        worst_case_win_rate_ci=bootstrap_ci(_win_rate_resamples, method, reference, **ci),
        confidence=confidence,
        n_resamples=n_resamples,
        worst_objective_of_mean=worst_mean,
        worst_objective_of_mean_ci=bootstrap_ci(_worst_objective_of_mean_resamples, method, **ci),
        worst_objective=objectives[worst_g],
        reference_worst_objective_of_mean=worst_objective_of_mean(reference)[0],
    )


@dataclass
class PairedComparison:
    """A method against a baseline on the same prompts (:func:`paired_comparison`), with paired intervals.

    Attributes:
        n_prompts: number of prompts ``n`` both were evaluated on.
        worst_case_difference: ``worst_case_reward(method) - worst_case_reward(baseline)``, i.e. the mean over
            prompts of ``min_g method[i, g] - min_g baseline[i, g]``.
        worst_case_difference_ci: ``(low, high)``.
        worst_objective_of_mean_difference: ``worst_objective_of_mean(method) - worst_objective_of_mean(baseline)``
            (each side takes its own worst objective).
        worst_objective_of_mean_difference_ci: ``(low, high)``.
        win_rate: head-to-head worst-case win rate, the share of prompts where the method's ``min_g`` beats the
            baseline's (ties count 0.5; :func:`worst_case_win_rate`).
        win_rate_ci: ``(low, high)``.
        confidence: coverage level of the intervals.
        n_resamples: bootstrap resamples used.
    """

    n_prompts: int
    worst_case_difference: float
    worst_case_difference_ci: tuple[float, float]
    worst_objective_of_mean_difference: float
    worst_objective_of_mean_difference_ci: tuple[float, float]
    win_rate: float
    win_rate_ci: tuple[float, float]
    confidence: float = 0.95
    n_resamples: int = 1000

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-serialisable dict (intervals are tuples, written by ``json`` as lists)."""
        return asdict(self)


def paired_comparison(
    method_rewards: Any,
    baseline_rewards: Any,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int | None = 0,
) -> PairedComparison:
    """Differences of both worst-case metrics and the head-to-head win rate of a method over a baseline.

    The intervals are **paired** percentile bootstraps: every resample draws prompts and applies them to both
    reward matrices (:func:`bootstrap_ci`), so the prompt-to-prompt variation both share cancels in the
    difference. With one prompt every resample is that prompt and each interval collapses to the point
    estimate (a degenerate, zero-width interval, not an error).

    Args:
        method_rewards: ``(n, G)`` rewards of the method's responses.
        baseline_rewards: ``(n, G)`` rewards of the baseline's responses to the same prompts, in the same order.
        n_resamples, confidence, seed: see :func:`bootstrap_ci` (one seed for all intervals).

    Returns:
        A :class:`PairedComparison`.

    Example:
        >>> c = paired_comparison([[1.0, 2.0], [0.0, 3.0]], [[0.0, 1.0], [0.0, 0.0]], n_resamples=50)
        >>> c.worst_case_difference, c.win_rate   # minima (1, 0) vs (0, 0): +0.5, one win and one tie
        (0.5, 0.75)
    """
    method = _as_reward_matrix(method_rewards, "method_rewards")
    baseline = _as_reward_matrix(baseline_rewards, "baseline_rewards")
    if method.shape != baseline.shape:
        raise ValueError(
            f"`method_rewards` {method.shape} and `baseline_rewards` {baseline.shape} must have the same shape "
            "(n prompts, G objectives), with rows for the same prompts in the same order."
        )
    ci = dict(n_resamples=n_resamples, confidence=confidence, seed=seed, vectorized=True)
    return PairedComparison(
        n_prompts=int(method.shape[0]),
        worst_case_difference=float((method.min(axis=1) - baseline.min(axis=1)).mean()),
        worst_case_difference_ci=bootstrap_ci(
            lambda m, b: _worst_case_resamples(m) - _worst_case_resamples(b), method, baseline, **ci
        ),
        worst_objective_of_mean_difference=worst_objective_of_mean(method)[0] - worst_objective_of_mean(baseline)[0],
        worst_objective_of_mean_difference_ci=bootstrap_ci(
            lambda m, b: _worst_objective_of_mean_resamples(m) - _worst_objective_of_mean_resamples(b),
            method, baseline, **ci,
        ),
        win_rate=float(_win_scores(method, baseline).mean()),
        win_rate_ci=bootstrap_ci(_win_rate_resamples, method, baseline, **ci),
        confidence=confidence,
        n_resamples=n_resamples,
    )
