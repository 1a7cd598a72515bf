r"""Worst-case objective weights for RMOD: a small convex problem on the simplex.

For every batch row, given the values ``V[k, g]`` of ``K`` sampled candidate blocks under ``G``
objectives, RMOD needs the worst-case weights (paper eq. 7, with the sample approximation eq. 9)

.. math::

    w^* = \operatorname*{arg\,min}_{w \in \Delta^{G-1}} F(w), \qquad
    F(w) = \log \sum_{k=1}^{K} q_k \exp\Big(\lambda \sum_{g=1}^{G} w_g V_{k,g}\Big),

where :math:`q_k = 1/K` (the mean over the sampled candidates) or, when per-candidate
log-probabilities are given, :math:`q_k \propto \mathrm{mask}_k \exp(\log\pi_{\mathrm{ref}}(z_k))`
(importance weights, eq. 9); masked candidates are absent. With the tilted distribution
:math:`p = \mathrm{softmax}(\log q + \lambda V w)` over candidates (the best response, eq. 6) and
the tilted means :math:`m_g = \mathbb{E}_p[V_g]`,

.. math::

    \nabla F(w) = \lambda m, \qquad \nabla^2 F(w) = \lambda^2 \operatorname{Cov}_p(V), \qquad
    \mathrm{gap}(w) = \lambda\Big(\sum_g w_g m_g - \min_g m_g\Big) \;\ge\; F(w) - F(w^*).

The Frank–Wolfe gap is a certificate of optimality. At the optimum (KKT conditions, paper App. B)
every objective with :math:`w_g > 0` has the same tilted mean :math:`m_g = \alpha/\lambda` and every
objective with :math:`w_g = 0` has :math:`m_g \ge \alpha/\lambda`. Small :math:`\lambda` spreads
the weights, large :math:`\lambda` concentrates them on the worst objective.

Methods (``solve_weights(method=...)``):

* ``"exact"``: a launch-light, sync-free solve (G = 2: bracketing grid on the derivative + secant;
  G > 2: fixed-iteration batched active-set Newton) certified by the gap, with the iterative
  projected Newton as a fallback for rows it leaves uncertified.
* ``"paper"``: the authors' gradient descent on log-weights (eq. 10 / App. A.4, eq. 25).
* ``"hedge"``: Hedge with best response (Hedge-BR, App. D.1, eq. 46), averaged weights.
* ``"projected"``: projected gradient descent on the weights (App. D.2, eq. 48).

Example:

>>> import torch
>>> from hf_rmod import solve_weights
>>> values = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # (K=2 candidates, G=2 objectives)
>>> sol = solve_weights(values, lam=0.5)
>>> [round(x, 6) for x in sol.weights.tolist()]
[0.5, 0.5]
>>> bool(sol.converged)
True

Why one module of ~1,000 lines: it is one pure function with four methods, and the exact method's two paths
(launch-light and iterative fallback) share the problem statement above, the input validation, the tilted
distribution and the certificate; the sections below (public API, validation, shared pieces, iterative exact,
launch-light exact, the paper's methods) are its table of contents.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass
from numbers import Real
from typing import NamedTuple

import torch

__all__ = ["SolverResult", "solve_weights", "tilted_means", "weighted_objective"]

METHODS = ("exact", "paper", "hedge", "projected")
_DEFAULT_MAX_ITER = {"exact": 100, "paper": 10, "hedge": 100, "projected": 100}
_CHECK_EVERY = 4  # exact: host sync (all rows converged?) only every few iterations
_N_TRIAL_STEPS = 30  # backtracking trial steps t0 * 2^-j, evaluated at once (no Python loop)
_RIDGES = (1e-10, 1e-3)  # Newton candidates: ridge relative to the mean Hessian diagonal
_RIDGE_ABS = 1e-20
_F_NOISE = 1e-13  # relative rounding level of F differences
_TINY_WEIGHT = 1e-13  # weights below this are set to exactly 0
_PAPER_GRAD_CLIP = 10.0


@dataclass(frozen=True)
class SolverResult:
    """Worst-case weights and their certificate.

    Shapes are for a batched input ``values`` of shape ``(batch, K, G)``; for an unbatched
    ``(K, G)`` input the leading ``batch`` dimension is dropped (``weights`` is ``(G,)``, the
    others are 0-dim tensors).

    Attributes:
        weights: ``(batch, G)`` weights on the simplex, on ``values.device``; float32 for
            float16/bfloat16 inputs, else ``values.dtype``.
        objective: ``(batch,)`` :math:`F(w)` at the returned weights.
        gap: ``(batch,)`` Frank–Wolfe gap at the returned weights, an upper bound on
            :math:`F(w) - F(w^*)`.
        converged: ``(batch,)`` bool, ``gap <= tol * max(1, lam * max_{k,g} |V[k,g] - mean(V)|)``
            (mean over the row's present candidates and objectives): unchanged when a constant is
            added to all values.
        iterations: number of iterations actually run (for the whole batch).
    """

    weights: torch.Tensor
    objective: torch.Tensor
    gap: torch.Tensor
    converged: torch.Tensor
    iterations: int


class _Problem(NamedTuple):
    """A validated problem in the working dtype (float64 except on MPS)."""

    values: torch.Tensor  # (B, K, G) raw values, masked candidates zeroed
    scaled: torch.Tensor  # (B, K, G) U = lam * (V - c), masked candidates zeroed
    log_q: torch.Tensor  # (B, K) normalised log prior weights, -inf where absent
    shift: torch.Tensor  # (B,) lam * c, so that F_V(w) = F_U(w) + shift
    lam: float
    unbatched: bool
    out_dtype: torch.dtype


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def solve_weights(
    values: torch.Tensor,
    lam: float = 0.5,
    *,
    method: str = "exact",
    max_iter: int | None = None,
    tol: float = 1e-6,
    mask: torch.Tensor | None = None,
    log_probs: torch.Tensor | None = None,
    step_size: float | None = None,
    check: bool = True,
) -> SolverResult:
    r"""Solve :math:`\min_{w \in \Delta^{G-1}} \log \sum_k q_k \exp(\lambda\, w^\top V_k)` per row.

    This is the RMOD weight problem, eq. 7 approximated with ``K`` samples (eq. 9); see the module
    docstring for the math, the gradient, the Frank–Wolfe gap and the KKT conditions (App. B).

    Args:
        values: ``(batch, K, G)`` or ``(K, G)`` candidate values, any float dtype and device.
            Not modified. Entries of masked candidates are ignored (they may be NaN).
        lam: :math:`\lambda > 0`, the KL trade-off.
        method: ``"exact"`` (default), ``"paper"``, ``"hedge"`` or ``"projected"``:

            * ``"exact"``: first a launch-light solve in float64 with a fixed op count and no host
              sync (G = 2: the root of the convex 1-D derivative bracketed on a 512-point grid twice,
              then a secant step; G > 2: from the best uniform point of the faces with up to 3
              vertices, 4 batched active-set Newton iterations, one Cholesky each, with a parallel
              line search; masks instead of Python branches), certified once
              at the end. With ``check=True``, one host sync (``bool``) decides whether any row is
              invalid or left with ``gap > tol * max(1, min(|F|, |F - lam mean V|))``; only then those
              rows are re-solved by the iterative path: active-set projected Newton in float64 (float32 on MPS). Newton steps
              on the free set from a batched KKT system (inactive coordinates pinned), a ratio
              test to stay feasible, Armijo backtracking, release of zero weights whose tilted
              mean is below the current level :math:`w^\top m`, and a Frank–Wolfe step with line
              search whenever it decreases :math:`F` more than the Newton step. Converged rows
              are frozen. Every row either reaches the tolerance or is reported with
              ``converged=False``. Default ``max_iter=100`` (cap of the fallback).
              The gap is computed from the float64 solution; when the weights are returned
              rounded (float32 / half inputs) it is increased by ``max_k |U_k (w_out - w)|``
              (``U = lam (V - mean)``), so it remains a true bound on ``F(w_out) - F*`` up to
              float64 rounding of the gap itself (about ``1e-16 * G * max|U|``).
            * ``"paper"``: eq. 10 / eq. 25, gradient descent on :math:`\log w` with the authors'
              defaults: ``max_iter=10``, step :math:`\eta_t = \mathrm{step\_size}/\sqrt{t+1}`
              (``step_size=1``, :math:`t = 0, 1, \ldots`), gradient clipped to ``[-10, 10]``,
              start at uniform weights. The eq. 10 gradient
              :math:`\sum_k q_k e^{\lambda w^\top V_k} \lambda w_g V_{k,g}` is used divided by
              the normaliser :math:`Z = \sum_k q_k e^{\lambda w^\top V_k}`, i.e.
              :math:`\lambda w_g m_g` (same direction, computed without overflow); the
              magnitude therefore differs from the raw form by the factor :math:`Z`, and, like
              the original, the update is not invariant to shifting the values.
            * ``"hedge"``: Hedge-BR (App. D.1, eq. 46), :math:`w \leftarrow w\, e^{-\eta m}`
              normalised, returning the average of the iterates :math:`w^0, \ldots, w^I`.
              Default ``max_iter=100`` and :math:`\eta = \sqrt{8 \ln G / I} / R` with ``R`` the
              row's value range (the standard Hedge rate).
            * ``"projected"``: eq. 48, :math:`w \leftarrow \Pi_\Delta(w - \eta \lambda m)` with the
              Euclidean projection onto the simplex (the gradient of :math:`\log Z`, i.e. eq. 48
              divided by :math:`Z`). Default ``max_iter=100`` and the safe step
              :math:`\eta = 1/L`, :math:`L = \lambda^2 \sum_g R_g^2 / 4 \ge \|\nabla^2 F\|`.

            ``"paper"``, ``"hedge"`` and ``"projected"`` always run ``max_iter`` iterations.
        max_iter: iteration cap (``>= 1``); ``None`` for the method's default.
        tol: relative gap tolerance (``> 0``) for ``converged``.
        mask: ``(batch, K)`` (or ``(K,)``) bool, ``False`` marks absent candidates.
        log_probs: ``(batch, K)`` (or ``(K,)``) reference log-probabilities of the candidates;
            the prior becomes :math:`q \propto \mathrm{mask} \cdot e^{\mathrm{log\_probs}}`.
        step_size: step for ``"paper"`` (the base :math:`\eta`), ``"hedge"`` and ``"projected"``
            (constant :math:`\eta`); ignored, with a warning, by ``"exact"``.
        check: ``"exact"`` only. ``True`` (default): invalid data raises and uncertified rows are
            re-solved, at the cost of one host sync per call. ``False``: no host sync at all
            (for accelerators): invalid rows (NaN/inf values, no candidate) come back NaN with
            ``converged=False``, and rows the launch-light path did not certify are returned as
            they are with ``converged=False`` (still honest).

    Returns:
        :class:`SolverResult` with ``weights``, ``objective``, ``gap``, ``converged`` and
        ``iterations``; objective, gap and converged are evaluated at the returned weights.

    Raises:
        TypeError: non-tensor or non-float ``values``, non-bool ``mask``, non-float
            ``log_probs``, non-numeric ``lam`` / ``tol`` / ``step_size`` / ``max_iter``.
        ValueError: wrong shapes, empty ``K`` or ``G``, NaN/inf values, rows without any
            candidate, invalid ``lam`` / ``tol`` / ``max_iter`` / ``step_size`` / ``method``.

    Example:

    >>> import torch
    >>> from hf_rmod.solver import solve_weights
    >>> values = torch.tensor([[[0.0, 2.0], [0.2, 1.8], [0.1, 2.1]]])  # (batch=1, K=3, G=2)
    >>> sol = solve_weights(values, lam=1.0)
    >>> sol.weights.tolist()  # all weight on the worst objective (objective 0)
    [[1.0, 0.0]]
    >>> sol.weights.shape, sol.objective.shape, sol.iterations >= 0
    (torch.Size([1, 2]), torch.Size([1]), True)
    """
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}.")
    tol = _positive_number("tol", tol)
    if max_iter is None:
        max_iter = _DEFAULT_MAX_ITER[method]
    elif isinstance(max_iter, bool) or not isinstance(max_iter, int):
        raise TypeError(f"max_iter must be an int >= 1 or None; got {max_iter!r}.")
    elif max_iter < 1:
        raise ValueError(f"max_iter must be >= 1; got {max_iter}. Pass None for the default.")
    if step_size is not None:
        step_size = _positive_number("step_size", step_size)
        if method == "exact":
            warnings.warn(
                "step_size is ignored by method='exact' (it chooses its own steps); "
                "drop step_size or use method='paper', 'hedge' or 'projected'.",
                stacklevel=2,
            )
    if not isinstance(check, bool):
        raise TypeError(f"check must be True or False; got {check!r}.")
    if method == "exact":
        with torch.no_grad():
            return _solve_exact_fast(values, lam, mask, log_probs, max_iter, tol, check)
    prob = _prepare(values, lam, mask, log_probs)
    with torch.no_grad():
        if method == "paper":
            w, iterations = _solve_paper(prob, max_iter, 1.0 if step_size is None else step_size)
        elif method == "hedge":
            w, iterations = _solve_hedge(prob, max_iter, step_size)
        else:
            w, iterations = _solve_projected(prob, max_iter, step_size)
        return _result(prob, w, tol, iterations)


def _solve_exact_fast(values, lam, mask, log_probs, max_iter: int, tol: float, check: bool) -> SolverResult:
    """method="exact": the launch-light solve, then (``check=True``) one host sync; rows it did not
    certify (or invalid data) go through the checked, iterative path below."""
    fp = _prepare_fast(values, lam, mask, log_probs)
    w, iterations = _solve_fast(fp)
    w_out, objective, gap, converged = _certify(fp, w, tol)
    if check:
        # Rows re-solved: not converged, or (stricter, so that results near the tolerance are polished)
        # gap above tol * max(1, min(|F|, |F - lam mean V|)), compared squared (no abs kernels).
        # Invalid data gives NaN, hence lands here.
        f_u = objective - fp.shift.view(-1)
        polished = gap * gap <= torch.minimum(objective * objective, f_u * f_u).clamp_min(1.0) * (tol * tol)
        if not bool(polished.all()):  # the only host sync of a certified call
            prob = _prepare(values, lam, mask, log_probs)  # raises on invalid data
            rows = torch.nonzero(~polished).flatten()  # (R,)
            sub = _Problem(prob.values[rows], prob.scaled[rows], prob.log_q[rows], prob.shift[rows],
                           prob.lam, False, prob.out_dtype)
            w_fb, it_fb = _solve_exact(sub, max_iter, tol)
            fb = _certify(_fast_from(prob, rows), w_fb[:, :, None], tol)
            take = ~(gap[rows] <= fb[2])  # the fallback's result unless the fast one has the smaller gap
            for full, part in zip((w_out, objective, gap, converged), fb):
                full[rows] = torch.where(take.reshape((-1,) + (1,) * (part.ndim - 1)), part, full[rows])
            iterations += it_fb
    unb = (lambda x: x[0]) if fp.unbatched else (lambda x: x)
    return SolverResult(
        weights=unb(w_out),
        objective=unb(objective.to(fp.out_dtype)),
        gap=unb(gap.to(fp.out_dtype)),
        converged=unb(converged),
        iterations=int(iterations),
    )


def weighted_objective(
    values: torch.Tensor,
    weights: torch.Tensor,
    lam: float = 0.5,
    mask: torch.Tensor | None = None,
    log_probs: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""``(batch,)`` objective :math:`F(w) = \log \sum_k q_k \exp(\lambda w^\top V_k)` (LSE form).

    ``values`` / ``mask`` / ``log_probs`` as in :func:`solve_weights`; ``weights`` is
    ``(batch, G)`` (or ``(G,)`` for unbatched values). Weights are used as given (not projected).
    Returned in float32 for half/bfloat16 values, else ``values.dtype`` (0-dim if unbatched).
    """
    prob, f_u, _ = _tilted_at(values, weights, lam, mask, log_probs)  # f_u: (B,)
    return _unbatch(prob, (f_u + prob.shift).to(prob.out_dtype))


def tilted_means(
    values: torch.Tensor,
    weights: torch.Tensor,
    lam: float = 0.5,
    mask: torch.Tensor | None = None,
    log_probs: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""``(batch, G)`` tilted means :math:`m_g = \mathbb{E}_p[V_g]`, :math:`p = \mathrm{softmax}(\log q + \lambda V w)`.

    These are the expected values of the best-response policy (eq. 6); ``\lambda m`` is the
    gradient of :math:`F`. Arguments and dtype as in :func:`weighted_objective`.
    """
    prob, _, log_p = _tilted_at(values, weights, lam, mask, log_probs)  # log_p: (B, K)
    m = torch.einsum("bk,bkg->bg", log_p.exp(), prob.values)  # (B, G)
    return _unbatch(prob, m.to(prob.out_dtype))


@torch.no_grad()
def _tilted_at(values, weights, lam, mask, log_probs) -> tuple[_Problem, torch.Tensor, torch.Tensor]:
    """The checked problem and, at the given weights, ``F(w) - shift`` (B,) and the tilted log-probs (B, K)."""
    prob = _prepare(values, lam, mask, log_probs)
    w = _check_weights(weights, prob)
    f_u, log_p, _ = _tilted(prob.scaled, prob.log_q, w)
    return prob, f_u, log_p


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


_LAM_HINT = ("e.g. lam=0.5; small lam puts the weights on the objective with the lowest expected value, larger "
             "lam hedges across objectives")


def _positive_number(name: str, value: object, hint: str = "") -> float:
    """`value` as a finite float > 0 (a Python/NumPy real or a one-element tensor); the one check of every
    positive setting (`lam`, `tol`, `step_size`, and `RMODConfig.lam`). Errors name `name`, the value and `hint`."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    suffix = f" ({hint})" if hint else ""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"`{name}` must be a positive finite number, got {value!r} ({type(value).__name__}){suffix}.")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a positive finite number, got {name}={value}{suffix}.")
    return value


def _bad_rows(bad: torch.Tensor) -> list[int]:
    """(B, ...) bool -> indices of rows with any True (at most 10 listed)."""
    return torch.nonzero(bad.reshape(bad.shape[0], -1).any(-1)).flatten()[:10].tolist()


def _prepare(values, lam, mask, log_probs) -> _Problem:
    """The checked problem: the structural checks of :func:`_structure`, then the data checks (NaN/inf values,
    rows without candidates, bad log-probabilities), which need the values on the host (a sync)."""
    v, unbatched, lam_f, work, out_dtype = _structure(values, lam, mask, log_probs)
    B, K, G = v.shape
    device = values.device

    present = _check_mask(mask, unbatched, B, K, device)  # (B, K)
    nonfinite = ~torch.isfinite(v) & present[:, :, None]
    if nonfinite.any():
        raise ValueError(
            f"values contains NaN or inf at unmasked candidates in batch rows {_bad_rows(nonfinite)}; "
            f"clean them or set mask=False for those candidates."
        )
    if log_probs is None:
        log_q = torch.where(present, 0.0, -math.inf).to(work)  # (B, K)
    else:
        log_q = _check_log_probs(log_probs, unbatched, B, K, present, work)
        present = present & (log_q > -math.inf)
    empty = ~present.any(-1)  # (B,)
    if empty.any():
        what = "mask is False" if log_probs is None else "mask is False or log_probs is -inf"
        raise ValueError(
            f"every candidate is absent ({what}) in batch rows {_bad_rows(empty)}; "
            f"each row needs at least one candidate with mask=True and finite log_probs."
        )
    log_q = torch.where(present, log_q, -math.inf)
    log_q = log_q - torch.logsumexp(log_q, dim=-1, keepdim=True)  # (B, K) normalised

    v64 = torch.where(present[:, :, None], v.to(work), 0.0)  # (B, K, G)
    n = present.sum(-1).to(work) * G  # (B,)
    c = v64.sum(dim=(1, 2)) / n  # (B,) mean present value
    scaled = torch.where(present[:, :, None], lam_f * (v64 - c[:, None, None]), 0.0)
    return _Problem(v64, scaled, log_q, lam_f * c, lam_f, unbatched, out_dtype)


def _check_mask(mask, unbatched: bool, B: int, K: int, device) -> torch.Tensor:
    """(B, K) bool, all True without a mask (type and shape were checked by :func:`_structure`)."""
    if mask is None:
        return torch.ones(B, K, dtype=torch.bool, device=device)
    return mask.to(device).reshape(B, K)


def _check_log_probs(log_probs, unbatched, B, K, present, work) -> torch.Tensor:
    """(B, K) log-probabilities in ``work`` dtype, -inf at absent candidates; NaN/+inf refused."""
    lp = log_probs.to(device=present.device).reshape(B, K).to(work)
    bad = (torch.isnan(lp) | (lp == math.inf)) & present
    if bad.any():
        raise ValueError(
            f"log_probs contains NaN or +inf at unmasked candidates in batch rows "
            f"{_bad_rows(bad)}; pass finite log-probabilities (-inf means weight 0)."
        )
    return torch.where(present, lp, -math.inf)


def _check_weights(weights, prob: _Problem) -> torch.Tensor:
    B, _, G = prob.scaled.shape
    expected = (G,) if prob.unbatched else (B, G)
    if not isinstance(weights, torch.Tensor) or not weights.is_floating_point():
        raise TypeError(f"weights must be a float tensor of shape {expected}; got {weights!r}.")
    if tuple(weights.shape) != expected:
        raise ValueError(f"weights must have shape {expected}; got {tuple(weights.shape)}.")
    return weights.to(device=prob.scaled.device, dtype=prob.scaled.dtype).reshape(B, G)


# ---------------------------------------------------------------------------------------------
# Shared kernels (all (B, ...) batched, no Python loop over rows)
# ---------------------------------------------------------------------------------------------


def _tilted(u: torch.Tensor, log_q: torch.Tensor, w: torch.Tensor):
    """(B,K,G), (B,K), (B,G) -> F (B,), log p (B,K), tilted means of u (B,G)."""
    z = log_q + torch.einsum("bkg,bg->bk", u, w)  # (B, K)
    f = torch.logsumexp(z, dim=-1)  # (B,)
    log_p = z - f[:, None]  # (B, K), -inf where absent
    mu = torch.einsum("bk,bkg->bg", log_p.exp(), u)  # (B, G)
    return f, log_p, mu


def _fw_gap(w: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """(B,G), (B,G) -> (B,) Frank–Wolfe gap w.mu - min mu (clamped at 0 against rounding)."""
    return ((w * mu).sum(-1) - mu.min(-1).values).clamp_min(0.0)


def _result(prob: _Problem, w: torch.Tensor, tol: float, iterations: int) -> SolverResult:
    w_out = w.clamp_min(0.0).to(prob.out_dtype)  # (B, G)
    w_out = w_out / w_out.sum(-1, keepdim=True)
    w_eval = w_out.to(prob.scaled.dtype)
    w_eval = w_eval / w_eval.sum(-1, keepdim=True)
    f_u, _, mu = _tilted(prob.scaled, prob.log_q, w_eval)
    gap = _fw_gap(w_eval, mu)  # (B,)
    objective = f_u + prob.shift  # (B,)
    converged = gap <= tol * prob.scaled.abs().amax(dim=(1, 2)).clamp_min(1.0)
    return SolverResult(
        weights=_unbatch(prob, w_out),
        objective=_unbatch(prob, objective.to(prob.out_dtype)),
        gap=_unbatch(prob, gap.to(prob.out_dtype)),
        converged=_unbatch(prob, converged),
        iterations=int(iterations),
    )


def _unbatch(prob: _Problem, x: torch.Tensor) -> torch.Tensor:
    return x[0] if prob.unbatched else x


def _uniform(prob: _Problem) -> torch.Tensor:
    B, _, G = prob.scaled.shape
    return torch.full((B, G), 1.0 / G, dtype=prob.scaled.dtype, device=prob.scaled.device)


def _value_range(prob: _Problem) -> torch.Tensor:
    """(B, G) range of each objective's values over present candidates."""
    present = (prob.log_q > -math.inf)[:, :, None]  # (B, K, 1)
    hi = torch.where(present, prob.values, -math.inf).amax(1)
    lo = torch.where(present, prob.values, math.inf).amin(1)
    return hi - lo


# ---------------------------------------------------------------------------------------------
# "exact": batched active-set projected Newton
# ---------------------------------------------------------------------------------------------


def _solve_exact(prob: _Problem, max_iter: int, tol: float):
    """The checked, iterative path (host sync every _CHECK_EVERY iterations): the fallback of
    method="exact" for rows the launch-light path did not certify."""
    u, log_q = prob.scaled, prob.log_q  # (B, K, G), (B, K)
    w = _initial_point(u, log_q)  # (B, G)
    done = torch.zeros(w.shape[0], dtype=torch.bool, device=w.device)  # (B,)
    iterations = 0
    for it in range(max_iter):
        f, log_p, mu = _tilted(u, log_q, w)
        # freeze at tol * max(1, min(|F|, |F_U|)), stricter than the reported tol * max(1, max|U|)
        done |= _fw_gap(w, mu) <= tol * torch.minimum(f.abs(), (f + prob.shift).abs()).clamp_min(1.0)
        if it % _CHECK_EVERY == 0 and bool(done.all()):
            break
        w_new = _exact_step(u, log_q, log_p, mu, w)
        w = torch.where(done[:, None], w, w_new)  # converged rows are frozen
        iterations = it + 1
    return w, iterations


def _initial_point(u: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Best of the uniform point and the G vertices (exact for a single candidate). -> (B, G)"""
    B, _, G = u.shape
    eye = torch.eye(G, dtype=u.dtype, device=u.device)
    pts = torch.cat([torch.full((1, G), 1.0 / G, dtype=u.dtype, device=u.device), eye])  # (G+1, G)
    z = log_q[:, None, :] + torch.einsum("bkg,jg->bjk", u, pts)  # (B, G+1, K)
    best = torch.logsumexp(z, dim=-1).argmin(-1)  # (B,)
    return pts[best]


def _exact_step(u, log_q, log_p, mu, w) -> torch.Tensor:
    """One guarded step from w for every row: the best of a few candidate moves. -> (B, G)

    Candidates, each tried with steps t = 2^-j (j < 30), all evaluated at once:

    * equality-constrained Newton on the free set, along the projection arc
      ``proj(w + t d)`` (so a tiny weight cannot block the step; it is clamped to 0), with the
      free set either all coordinates that are positive or worth releasing, or without the
      epsilon-active ones (tiny weights whose tilted mean is above the level, as in Bertsekas'
      projected Newton), and a larger ridge for directions where the Hessian is singular
      (e.g. K < G);
    * a Frank–Wolfe step towards the vertex with the smallest tilted mean, and a pairwise step
      moving weight from the worst supported objective to it (descent directions whenever
      gap > 0; the pairwise step may drop that objective exactly).

    The point with the smallest F wins, and it is only taken if F decreases (or, once F no
    longer changes above its rounding level, if the full Newton step shrinks the gap).
    """
    B, _, G = u.shape
    p = log_p.exp()  # (B, K)
    uc = u - mu[:, None, :]  # (B, K, G)
    hess = torch.einsum("bki,bkj->bij", p[:, :, None] * uc, uc)  # (B, G, G) = Cov_p(U)
    diag = torch.diagonal(hess, dim1=-2, dim2=-1).mean(-1)  # (B,)
    level = (w * mu).sum(-1, keepdim=True)  # (B, 1)
    free = (w > 0) | (mu < level)  # (B, G): support + objectives worth releasing
    eps = (w - _project_simplex(w - mu)).abs().sum(-1, keepdim=True).clamp(max=1e-2)  # (B, 1)
    free_eps = free & ~((w <= eps) & (mu > level))  # (B, G)
    tj = torch.pow(0.5, torch.arange(_N_TRIAL_STEPS, dtype=u.dtype, device=u.device))  # (J,)
    none = torch.zeros_like(w)
    newton = torch.stack(
        [
            _newton_direction(hess, mu, w, free, _RIDGES[0] * diag + _RIDGE_ABS, none),
            _newton_direction(hess, mu, w, free_eps, _RIDGES[0] * diag + _RIDGE_ABS, -w),
            _newton_direction(hess, mu, w, free_eps, _RIDGES[1] * diag + _RIDGE_ABS, -w),
        ],
        dim=1,
    )  # (B, 3, G)
    scale = newton.abs().amax(-1).clamp_min(1.0).reciprocal()  # (B, 3) moves of at most 1
    arc = w[:, None, None, :] + (scale[:, :, None] * tj)[..., None] * newton[:, :, None, :]
    arc = _project_simplex(arc.reshape(-1, G)).reshape(arc.shape)  # (B, 3, J, G)
    d0 = newton[:, 0]  # (B, G) plain Newton, also along its ratio-tested line
    neg = d0 < 0
    t_max = torch.where(neg, w / torch.where(neg, -d0, 1.0), math.inf).amin(-1).clamp(max=1.0)
    line = w[:, None, :] + (t_max[:, None] * tj)[:, :, None] * d0[:, None, :]  # (B, J, G)

    eye = torch.eye(G, dtype=u.dtype, device=u.device)
    toward = eye[mu.argmin(-1)]  # (B, G) vertex of the smallest tilted mean
    i_away = torch.where(w > 0, mu, -math.inf).argmax(-1)  # (B,) worst supported objective
    w_away = w.gather(1, i_away[:, None])  # (B, 1)
    fw = w[:, None, :] + tj[:, None] * (toward - w)[:, None, :]  # (B, J, G)
    pair = w[:, None, :] + (w_away * tj)[:, :, None] * (toward - eye[i_away])[:, None, :]
    pair = pair.scatter(2, i_away[:, None, None].expand(B, _N_TRIAL_STEPS, 1),
                        (w_away * (1 - tj))[:, :, None])  # exact 0 at the full pairwise step
    cand = torch.cat([arc, line[:, None], fw[:, None], pair[:, None]], dim=1)  # (B, M, J, G)
    cand = torch.where(cand > _TINY_WEIGHT, cand, 0.0)  # drop rounding-level weights
    cand = cand / cand.sum(-1, keepdim=True)

    dec = _decrease(u, log_p, cand - w[:, None, None, :])  # (B, M, J)
    best, idx = dec.reshape(B, -1).min(-1)  # (B,)
    w_new = cand.reshape(B, -1, G).gather(1, idx[:, None, None].expand(B, 1, G))[:, 0]
    w_new = torch.where((best < 0)[:, None], w_new, w)
    # Near the optimum of an ill-conditioned row, F changes below its rounding level although
    # the gap is still above tolerance: there, take the full Newton step if it shrinks the gap.
    noise = _F_NOISE * (1.0 + u.abs().amax(dim=(1, 2)))  # (B,)
    stalled = best > -noise  # (B,)
    w_nt, dec_nt = cand[:, 1, 0], dec[:, 1, 0]  # (B, G), (B,) epsilon-active Newton, t = 1
    _, _, mu_nt = _tilted(u, log_q, w_nt)
    better = stalled & (dec_nt < noise) & (_fw_gap(w_nt, mu_nt) < _fw_gap(w, mu))
    return torch.where(better[:, None], w_nt, w_new)


def _newton_direction(hess, grad, w, free, ridge, fixed) -> torch.Tensor:
    """Newton direction on the free set; released coordinates that would move outwards are
    pinned and the system is solved again. ``fixed`` (B,G) is the prescribed move of the
    coordinates outside ``free`` (0, or -w to drive epsilon-active weights to 0).
    (B,G,G), (B,G), (B,G), (B,G) bool, (B,), (B,G) -> (B,G) summing to 0"""
    d = _kkt_direction(hess, grad, free, ridge, fixed)
    free = free & ~((w <= 0) & (d <= 0))
    return _kkt_direction(hess, grad, free, ridge, fixed)


def _kkt_direction(hess, grad, free, ridge, fixed) -> torch.Tensor:
    """Equality-constrained Newton direction on the free set S, prescribed (d_A) elsewhere.

    Solves ``[[H_SS + rI, 1], [1^T, 0]] [d_S; nu] = [-g_S - H_SA d_A; -1^T d_A]`` as one batched
    ``(B, G+1, G+1)`` system. (B,G,G), (B,G), (B,G) bool, (B,), (B,G) -> (B, G) summing to 0
    """
    B, G = grad.shape
    freef = free.to(hess.dtype)  # (B, G)
    d_fix = fixed * (1.0 - freef)  # (B, G)
    a = torch.zeros(B, G + 1, G + 1, dtype=hess.dtype, device=hess.device)
    a[:, :G, :G] = hess * freef[:, :, None] * freef[:, None, :]
    a[:, :G, :G] += torch.diag_embed(torch.where(free, ridge[:, None], 1.0))
    a[:, :G, G] = freef
    a[:, G, :G] = freef
    rhs_s = (-grad - torch.einsum("bij,bj->bi", hess, d_fix)) * freef  # (B, G)
    rhs = torch.cat([rhs_s, -d_fix.sum(-1, keepdim=True)], dim=1)  # (B, G+1)
    d = torch.linalg.solve(a, rhs)[:, :G] * freef  # (B, G)
    resid = (d.sum(-1, keepdim=True) + d_fix.sum(-1, keepdim=True)) / freef.sum(-1, keepdim=True)
    d = d - freef * resid + d_fix  # exact sum 0
    return torch.nan_to_num(d, nan=0.0, posinf=0.0, neginf=0.0)


def _decrease(u, log_p, delta) -> torch.Tensor:
    """F(w + delta) - F(w) = log E_p[exp(u.delta)] for displacements delta (B, M, J, G).

    Evaluated as log1p(E_p[expm1(u.delta)]) where that is accurate (|u.delta| <= 1), so tiny
    decreases are not lost to cancellation against F. -> (B, M, J)
    """
    x = torch.einsum("bkg,bmjg->bmjk", u, delta)  # (B, M, J, K)
    p = log_p.exp()[:, None, None, :]  # (B, 1, 1, K)
    small = torch.log1p((p * torch.expm1(x.clamp(max=1.0))).sum(-1))  # (B, M, J)
    large = torch.logsumexp(log_p[:, None, None, :] + x, dim=-1)  # (B, M, J)
    use_small = (x.abs() * (p > 0)).amax(-1) <= 1.0
    return torch.where(use_small, small, large)


# ---------------------------------------------------------------------------------------------
# "exact", launch-light path: fixed op count, no host sync, certificate once at the end
# ---------------------------------------------------------------------------------------------

_GRID = 512  # G = 2: derivative evaluated at this many points per bracketing level
_GRID_LEVELS = 2  # bracket width 511^-2 ~ 3.8e-6, then one secant step on the derivative
_NEWTON_ITERS = 4  # G > 2: fixed number of batched active-set Newton iterations
_N_FAST_STEPS = 40  # trial steps 0 and 2^-j (j < 39) along the Newton direction
_START_FACE = 3  # G > 2 start: best of the uniform points of all faces with up to 3 vertices ...
_START_MAX = 512  # ... (faces of one size are skipped when there are more than this many)
_EXP_CLAMP = 700.0  # expm1 argument cap (float64 overflow at ~709)
_CONSTS: dict = {}  # small constant tensors of the launch-light path, made once per (kind, n, dtype, device)


def _const(kind: str, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A cached constant (never written to): building ``eye``/``arange`` on every call would cost
    kernel launches of its own. Kinds: scalars ``zero``, ``one``, ``big`` (sqrt of the dtype's max),
    ``grid`` (1, 1, n) = 0..n-1, ``steps`` (1, 1, n) = 0, 2^-j (j < n - 1), ``eye`` (n, n), ``ridge`` (n, n) = 1 + 1e-10 I, ``start`` (1, n, n+1)
    = [uniform, e_1, ..., e_n] as columns."""
    key = (kind, n, dtype, device)
    t = _CONSTS.get(key)
    if t is None:
        with torch.inference_mode(False), torch.no_grad():
            f = dict(dtype=dtype, device=device)
            if kind in ("zero", "one", "big"):
                val = {"zero": 0.0, "one": 1.0, "big": math.sqrt(torch.finfo(dtype).max)}[kind]
                t = torch.full((), val, **f)
            elif kind == "grid":
                t = torch.arange(n, **f).reshape(1, 1, n)
            elif kind == "steps":
                t = torch.cat([torch.zeros(1, **f), torch.pow(0.5, torch.arange(n - 1, **f))]).reshape(1, 1, n)
            elif kind == "eye":
                t = torch.eye(n, **f)
            elif kind == "ridge":
                t = 1.0 + 1e-10 * torch.eye(n, **f)
            else:  # "start": uniform on the whole simplex and on every face of up to _START_FACE vertices
                cols = [torch.full((n, 1), 1.0 / n, **f)]
                for size in range(1, min(_START_FACE, n - 1) + 1):
                    faces = list(itertools.combinations(range(n), size))
                    if size > 1 and len(faces) > _START_MAX:
                        break
                    m = torch.zeros(n, len(faces), **f)
                    for j, face in enumerate(faces):
                        m[list(face), j] = 1.0 / size
                    cols.append(m)
                t = torch.cat(cols, dim=1).unsqueeze(0)
        _CONSTS[key] = t
    return t


class _Fast(NamedTuple):
    """The problem for the launch-light path, built without any data check (no host sync)."""

    u: torch.Tensor  # (B, K, G) U = lam * (V - c), absent candidates zeroed
    ut: torch.Tensor  # (B, G, K) transposed view of u
    log_q: torch.Tensor | None  # (B, K, 1) normalised log prior, None for uniform q = 1/K
    f_offset: float  # -log K for uniform q, else 0: F_U = logsumexp_k(log q + U w) + f_offset
    shift: torch.Tensor  # (B, 1, 1) lam * c
    scale: torch.Tensor  # (B, 1, 1) max(1, max |U|), the offset-invariant tolerance scale
    unbatched: bool
    out_dtype: torch.dtype


def _structure(values, lam, mask, log_probs):
    """Type and shape checks only (no data check, no sync). -> (B,K,G) view, unbatched, lam, work, out dtype"""
    if not isinstance(values, torch.Tensor):
        raise TypeError(
            f"values must be a torch.Tensor of shape (batch, K, G) or (K, G); got "
            f"{type(values).__name__}. Wrap it with torch.as_tensor(values)."
        )
    if not values.is_floating_point():
        raise TypeError(
            f"values must have a floating dtype; got {values.dtype}. Use values.float()."
        )
    if values.ndim not in (2, 3):
        raise ValueError(
            f"values must have shape (batch, K, G) or (K, G); got ndim={values.ndim} "
            f"(shape {tuple(values.shape)})."
        )
    unbatched = values.ndim == 2
    v = values.unsqueeze(0) if unbatched else values  # (B, K, G)
    B, K, G = v.shape
    if K == 0 or G == 0:
        raise ValueError(
            f"values needs at least one candidate (K) and one objective (G); got shape "
            f"{tuple(values.shape)}."
        )
    lam_f = _positive_number("lam", lam, _LAM_HINT)
    expected = (K,) if unbatched else (B, K)
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise TypeError(f"mask must be a bool tensor of shape {expected}; got {got}. Use mask.bool().")
        if tuple(mask.shape) != expected:
            raise ValueError(
                f"mask must have shape {expected} (values without the G dimension); got {tuple(mask.shape)}."
            )
    if log_probs is not None:
        if not isinstance(log_probs, torch.Tensor) or not log_probs.is_floating_point():
            got = log_probs.dtype if isinstance(log_probs, torch.Tensor) else type(log_probs).__name__
            raise TypeError(
                f"log_probs must be a float tensor of shape {expected}; got {got}. Use log_probs.float()."
            )
        if tuple(log_probs.shape) != expected:
            raise ValueError(
                f"log_probs must have shape {expected} (one log-probability per candidate); got "
                f"{tuple(log_probs.shape)}."
            )
    work = torch.float32 if values.device.type == "mps" else torch.float64
    out_dtype = torch.float32 if values.dtype in (torch.float16, torch.bfloat16) else values.dtype
    return v, unbatched, lam_f, work, out_dtype


def _prepare_fast(values, lam, mask, log_probs) -> _Fast:
    """The problem without data checks: invalid data (NaN/inf values, rows without candidates,
    NaN/+inf log-probabilities) makes that row's result NaN, hence ``converged=False``."""
    v, unbatched, lam_f, work, out_dtype = _structure(values, lam, mask, log_probs)
    B, K, G = v.shape
    v = v.to(work)
    if mask is None and log_probs is None:
        c = v.sum(dim=(1, 2), keepdim=True) * (1.0 / (K * G))  # (B, 1, 1) mean value
        u = (v - c) * lam_f  # (B, K, G)
        log_q, f_offset = None, -math.log(K)
    else:
        present = torch.ones(B, K, 1, dtype=torch.bool, device=v.device) if mask is None else \
            mask.to(v.device).reshape(B, K, 1)
        log_q = torch.zeros(B, K, 1, dtype=work, device=v.device) if log_probs is None else \
            log_probs.to(device=v.device, dtype=work).reshape(B, K, 1)
        log_q = torch.where(present, log_q, -math.inf)
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True)  # NaN for rows without candidates
        present = log_q > -math.inf
        v = torch.where(present, v, 0.0)
        c = v.sum(dim=(1, 2), keepdim=True) / (present.sum(1, keepdim=True) * G)  # (B, 1, 1)
        u = torch.where(present, (v - c) * lam_f, 0.0)
        f_offset = 0.0
    # max(1, max |U|); NaN propagates
    scale = torch.linalg.vector_norm(u, math.inf, dim=(1, 2), keepdim=True).clamp_min(1.0)
    return _Fast(u, u.transpose(1, 2), log_q, f_offset, c * lam_f, scale, unbatched, out_dtype)


def _fast_from(prob: _Problem, rows: torch.Tensor | None = None) -> _Fast:
    """The launch-light view of a checked problem (optionally of some rows)."""
    u, log_q, shift = prob.scaled, prob.log_q, prob.shift
    if rows is not None:
        u, log_q, shift = u[rows], log_q[rows], shift[rows]
    scale = u.abs().amax(dim=(1, 2)).clamp_min(1.0)
    return _Fast(u, u.transpose(1, 2), log_q[:, :, None], 0.0, shift[:, None, None], scale[:, None, None],
                 prob.unbatched, prob.out_dtype)


def _solve_fast(fp: _Fast) -> tuple[torch.Tensor, int]:
    """Fixed-op-count solve: (B, G, 1) weights in the working dtype and the iterations run."""
    B, K, G = fp.u.shape
    if G == 1:
        return torch.ones(B, 1, 1, dtype=fp.u.dtype, device=fp.u.device), 0
    if G == 2:
        return _solve_two(fp), _GRID_LEVELS
    return _solve_newton(fp), _NEWTON_ITERS


def _solve_two(fp: _Fast) -> torch.Tensor:
    """G = 2: w = (1 - t, t) and phi(t) = F is convex in t with phi'(t) = E_p[U_1 - U_0].

    The root of phi' in [0, 1] is bracketed on a grid of _GRID points, the bracket refined once
    (_GRID_LEVELS = 2 levels), then one secant step on phi' between the last negative and the first
    non-negative grid value. phi'(0) >= 0 gives t = 0 exactly, phi'(1) < 0 gives t = 1. No
    data-dependent control flow; grid indices are kept as floats (no integer tensors, no gather).
    """
    u = fp.u
    B, K, _ = u.shape
    dt, dev = u.dtype, u.device
    zero, one = _const("zero", 0, dt, dev), _const("one", 0, dt, dev)
    big = _const("big", 0, dt, dev)
    grid = _const("grid", _GRID, dt, dev)  # (1, 1, N)
    a = u[:, :, :1]  # (B, K, 1)
    b = u[:, :, 1:] - a  # (B, K, 1) d z / d t
    if fp.log_q is not None:
        a = a + fp.log_q
    bt = b.view(B, 1, K)
    lo = zero  # bracket [lo, lo + (N - 1) h], broadcast to (B, 1, 1) after the first level
    h = one / (_GRID - 1.0)
    for level in range(_GRID_LEVELS):  # fixed count
        t = torch.addcmul(lo, h, grid)  # (., 1, N)
        d = torch.bmm(bt, torch.softmax(torch.addcmul(a, b, t), dim=1))  # (B, 1, N) phi'(t), nondecreasing
        if level < _GRID_LEVELS - 1:
            n_neg = torch.heaviside(d.neg(), zero).sum(2, keepdim=True)  # (B, 1, 1) root in [t_{n-1}, t_n]
            i_lo = (n_neg - 1.0).clamp_min(0.0)
            lo = torch.addcmul(lo, h, i_lo)
            h = (n_neg.clamp_max(_GRID - 1.0) - i_lo) * h * (1.0 / (_GRID - 1.0))
    # Secant between the last negative d_lo and the first non-negative d_hi; a missing side is
    # +-big, which puts t at lo (no negative: phi'(lo) >= 0) or at the top of the bracket.
    neg = d < 0.0
    n_neg = torch.where(neg, one, zero).sum(2, keepdim=True)  # (B, 1, 1)
    d_lo = torch.where(neg, d, -big).amax(2, keepdim=True)
    d_hi = torch.where(neg, big, d).amin(2, keepdim=True)
    t = torch.addcmul(lo, h, n_neg - 1.0 + d_lo / (d_lo - d_hi))  # (B, 1, 1)
    t = torch.where(t > _TINY_WEIGHT, t, zero).clamp_max(1.0)
    return torch.cat([1.0 - t, t], dim=1)  # (B, 2, 1)


def _solve_newton(fp: _Fast) -> torch.Tensor:
    """G > 2: _NEWTON_ITERS batched active-set Newton iterations with a parallel line search.

    Start: the best (one bmm, any number of points) of the uniform points of the simplex and of its
    faces with up to _START_FACE vertices (vertices, edge midpoints, triangle centres). Each
    iteration, for every row: free set = support and zero weights whose tilted mean is below the
    level w.m (KKT, App. B); the equality-constrained Newton direction on it from one Cholesky
    factorisation and one triangular inverse (inactive coordinates pinned, diagonal ridge 1e-10);
    trial points w + s d, s in {0, 1, 1/2, ..., 2^-38}, clipped at 0 and renormalised (the
    projection arc); the one with the smallest F (compared through E_p expm1(U dw) =
    exp(F(cand) - F(w)) - 1, accurate for tiny decreases; s = 0 keeps w) is taken. Masks replace Python branches; the op count is the
    same for every input. Weights are kept as (B, G, 1) columns so that every product is a bmm.
    """
    u, ut, log_q = fp.u, fp.ut, fp.log_q
    B, K, G = u.shape
    dt, dev = u.dtype, u.device
    zero, one = _const("zero", 0, dt, dev), _const("one", 0, dt, dev)
    eye = _const("eye", G, dt, dev)
    tj = _const("steps", _N_FAST_STEPS, dt, dev)  # (1, 1, J) = 0, 1, 1/2, 1/4, ...
    ridge = _const("ridge", G, dt, dev)  # (G, G) 1 + 1e-10 I
    # Start: best of uniform and the G vertices.
    pts = _const("start", G, dt, dev)
    pts = pts.expand(B, G, pts.shape[2])
    z = torch.bmm(u, pts)  # (B, K, P)
    if log_q is not None:
        z = z + log_q
    f0 = z.amax(1, keepdim=True) - torch.log_softmax(z, dim=1).amax(1, keepdim=True)  # (B, 1, G+1) F - f_offset
    w = pts.gather(2, f0.argmin(2, keepdim=True).expand(B, G, 1))  # (B, G, 1)
    for _ in range(_NEWTON_ITERS):  # fixed count
        z = torch.bmm(u, w)  # (B, K, 1)
        if log_q is not None:
            z = z + log_q
        p = torch.softmax(z, dim=1)  # (B, K, 1)
        mu = torch.bmm(ut, p)  # (B, G, 1) tilted means of U
        uc = u - mu.view(B, 1, G)
        hess = torch.bmm(uc.transpose(1, 2), p * uc)  # (B, G, G) Cov_p(U)
        level = (w * mu).sum(1, keepdim=True)  # (B, 1, 1)
        free = torch.maximum(torch.heaviside(w, zero), torch.heaviside(level - mu, zero))  # (B, G, 1) 0/1
        # A = Hessian on the free set with its diagonal times (1 + 1e-10), identity on pinned coordinates
        # (+1e-30 on free ones): A^-1 is block diagonal, zero on the pinned rows of A^-1 [g, 1_free].
        a = torch.addcmul(eye * torch.addcmul(one, free, free, value=-(1.0 - 1e-30)), hess,
                          free * free.view(B, 1, G) * ridge)
        inv_l = torch.linalg.solve_triangular(torch.linalg.cholesky_ex(a)[0], eye, upper=False)  # L^-1
        a_inv = torch.bmm(inv_l.transpose(1, 2), inv_l)  # (B, G, G)
        x_g = torch.bmm(a_inv, mu * free)  # (B, G, 1) A^-1 g
        x_1 = torch.bmm(a_inv, free)  # A^-1 1_free
        # equality-constrained Newton direction: -A^-1 (g - c 1), c = 1'A^-1 g / 1'A^-1 1; sums to 0
        d = torch.addcmul(x_g.neg(), x_1, x_g.sum(1, keepdim=True) / x_1.sum(1, keepdim=True))
        d = d.nan_to_num(0.0, 0.0, 0.0)  # failed factorisation: Frank–Wolfe points only
        cand = torch.addcmul(w, d, tj)
        cand = torch.where(cand > _TINY_WEIGHT, cand, zero)
        cand = cand / cand.sum(1, keepdim=True)
        x = torch.bmm(u, cand - w).clamp_max(_EXP_CLAMP)  # (B, K, 2J) U dw
        dec = (p * torch.expm1(x)).sum(1, keepdim=True)  # (B, 1, 2J) exp(F(cand) - F(w)) - 1
        # tj[0] = 0: candidate 0 is w itself (dec 0), so the argmin never increases F
        w = cand.gather(2, dec.argmin(2, keepdim=True).expand(B, G, 1))
    return w


def _certify(fp: _Fast, w: torch.Tensor, tol: float):
    """(B, G, 1) weights -> weights (B, G) in the output dtype, objective, honest gap (B,) in the
    working dtype and the converged flag (B,).

    The Frank–Wolfe gap is computed at the working-precision solution ``w``; when the returned
    weights ``w_out`` are rounded (float32 / half inputs), the gap reported is
    ``gap(w) + max_k |U_k (w_out - w)|``, a true bound on ``F(w_out) - F*`` because
    ``|F(w') - F(w)| <= max_k |U_k (w' - w)|`` (F is a log-sum-exp of ``U w``), and the objective is
    moved to ``w_out`` to first order, ``F(w) + E_p[U (w_out - w)]`` (error <= max_k |U_k (w_out - w)|^2 / 2).
    """
    B, K, G = fp.u.shape
    z = torch.bmm(fp.u, w)  # (B, K, 1)
    if fp.log_q is not None:
        z = z + fp.log_q
    log_p = torch.log_softmax(z, dim=1)
    f = z.amax(1, keepdim=True) - log_p.amax(1, keepdim=True)  # (B, 1, 1) logsumexp without its 20 ops
    p = log_p.exp()
    mu = torch.bmm(fp.ut, p)  # (B, G, 1)
    gap = ((w * mu).sum(1, keepdim=True) - mu.amin(1, keepdim=True)).clamp_min(0.0)  # (B, 1, 1)
    w_out = w
    if fp.out_dtype != w.dtype:
        w_out = w.to(fp.out_dtype)
        w_out = w_out / w_out.sum(1, keepdim=True)
        x = torch.bmm(fp.u, w_out.to(w.dtype) - w)  # (B, K, 1) U (w_out - w)
        f = f + (p * x).sum(1, keepdim=True)
        gap = gap + x.abs().amax(1, keepdim=True)
    if fp.f_offset:
        f = f + fp.f_offset
    converged = gap <= fp.scale * tol
    return w_out.view(B, G), (f + fp.shift).view(B), gap.view(B), converged.view(B)


# ---------------------------------------------------------------------------------------------
# Approximate methods from the paper
# ---------------------------------------------------------------------------------------------


def _solve_paper(prob: _Problem, max_iter: int, step: float):
    """Eq. 10 / 25 on log-weights, normalised-probability form of the gradient."""
    log_w = _uniform(prob).log()  # (B, G)
    for t in range(max_iter):
        _, log_p, _ = _tilted(prob.scaled, prob.log_q, log_w.exp())
        m = torch.einsum("bk,bkg->bg", log_p.exp(), prob.values)  # (B, G) raw tilted means
        grad = (prob.lam * log_w.exp() * m).clamp(-_PAPER_GRAD_CLIP, _PAPER_GRAD_CLIP)
        log_w = log_w - step / math.sqrt(t + 1) * grad
        log_w = log_w - torch.logsumexp(log_w, dim=-1, keepdim=True)
    return log_w.exp(), max_iter


def _solve_hedge(prob: _Problem, max_iter: int, step: float | None):
    """Hedge-BR (eq. 46) with the average of the iterates w^0..w^I (App. D.1)."""
    G = prob.scaled.shape[-1]
    if step is None:
        rng = _value_range(prob).amax(-1, keepdim=True)  # (B, 1)
        eta = math.sqrt(8.0 * math.log(max(G, 2)) / max_iter) / torch.where(rng > 0, rng, 1.0)
    else:
        eta = torch.full_like(prob.shift[:, None], step)  # (B, 1)
    log_w = _uniform(prob).log()  # (B, G)
    w_sum = log_w.exp()
    for _ in range(max_iter):
        _, log_p, _ = _tilted(prob.scaled, prob.log_q, log_w.exp())
        m = torch.einsum("bk,bkg->bg", log_p.exp(), prob.values)  # (B, G)
        log_w = log_w - eta * m
        log_w = log_w - torch.logsumexp(log_w, dim=-1, keepdim=True)
        w_sum = w_sum + log_w.exp()
    return w_sum / (max_iter + 1), max_iter


def _solve_projected(prob: _Problem, max_iter: int, step: float | None):
    """Eq. 48: projected gradient on the weights, gradient of log Z (= lam * tilted means)."""
    if step is None:
        smooth = prob.lam**2 * _value_range(prob).pow(2).sum(-1, keepdim=True) / 4.0  # (B, 1)
        eta = 1.0 / torch.where(smooth > 0, smooth, 1.0)
    else:
        eta = torch.full_like(prob.shift[:, None], step)
    w = _uniform(prob)  # (B, G)
    for _ in range(max_iter):
        _, _, mu = _tilted(prob.scaled, prob.log_q, w)  # mu = lam * (m - c): same projection
        w = _project_simplex(w - eta * mu)
    return w, max_iter


def _project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row onto the simplex (sort-based, Duchi et al. 2008). (B,G)->(B,G)"""
    G = v.shape[-1]
    srt = torch.sort(v, dim=-1, descending=True).values  # (B, G)
    css = srt.cumsum(-1) - 1.0  # (B, G)
    idx = torch.arange(1, G + 1, dtype=v.dtype, device=v.device)  # (G,)
    rho = ((srt - css / idx) > 0).sum(-1, keepdim=True).clamp_min(1)  # (B, 1)
    theta = css.gather(-1, rho - 1) / rho.to(v.dtype)  # (B, 1)
    return (v - theta).clamp_min(0.0)
