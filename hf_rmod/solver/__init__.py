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

Layout: this module holds the one entry point (:func:`solve_weights`) and its dispatch;
``_problem`` the validated problem, the tilted distribution, the certificate and the objective helpers;
``_exact`` the exact method (launch-light path and iterative projected-Newton fallback); ``_variants``
the paper's approximate methods. Everything but the names in ``__all__`` is private.
"""

from __future__ import annotations

import warnings

import torch

from ._exact import _certify, _fast_from, _prepare_fast, _solve_exact, _solve_fast
from ._problem import (
    METHODS,
    SolverResult,
    _positive_number,
    _prepare,
    _Problem,
    _result,
    tilted_means,
    weighted_objective,
)
from ._variants import _solve_hedge, _solve_paper, _solve_projected

__all__ = ["METHODS", "SolverResult", "solve_weights", "tilted_means", "weighted_objective"]

_DEFAULT_MAX_ITER = {"exact": 100, "paper": 10, "hedge": 100, "projected": 100}


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

