"""The solver's problem: validation, the tilted distribution, the Frank–Wolfe certificate.

Shared by every method of :func:`hf_rmod.solver.solve_weights`; all kernels are ``(B, ...)`` batched
with no Python loop over rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import NamedTuple

import torch

METHODS = ("exact", "paper", "hedge", "projected")
_TINY_WEIGHT = 1e-13  # weights below this are set to exactly 0


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


def weighted_objective(values: torch.Tensor, weights: torch.Tensor, lam: float = 0.5, mask: torch.Tensor | None = None,
                       log_probs: torch.Tensor | None = None) -> torch.Tensor:
    r"""``(batch,)`` objective :math:`F(w) = \log \sum_k q_k \exp(\lambda w^\top V_k)` (LSE form).

    ``values`` / ``mask`` / ``log_probs`` as in :func:`solve_weights`; ``weights`` is
    ``(batch, G)`` (or ``(G,)`` for unbatched values). Weights are used as given (not projected).
    Returned in float32 for half/bfloat16 values, else ``values.dtype`` (0-dim if unbatched).
    """
    prob, f_u, _ = _tilted_at(values, weights, lam, mask, log_probs)  # f_u: (B,)
    return _unbatch(prob, (f_u + prob.shift).to(prob.out_dtype))


def tilted_means(values: torch.Tensor, weights: torch.Tensor, lam: float = 0.5, mask: torch.Tensor | None = None,
                 log_probs: torch.Tensor | None = None) -> torch.Tensor:
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



def _project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row onto the simplex (sort-based, Duchi et al. 2008). (B,G)->(B,G)"""
    G = v.shape[-1]
    srt = torch.sort(v, dim=-1, descending=True).values  # (B, G)
    css = srt.cumsum(-1) - 1.0  # (B, G)
    idx = torch.arange(1, G + 1, dtype=v.dtype, device=v.device)  # (G,)
    rho = ((srt - css / idx) > 0).sum(-1, keepdim=True).clamp_min(1)  # (B, 1)
    theta = css.gather(-1, rho - 1) / rho.to(v.dtype)  # (B, 1)
    return (v - theta).clamp_min(0.0)
