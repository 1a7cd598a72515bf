"""The paper's approximate methods for the worst-case weights.

``paper``: gradient descent on log-weights (eq. 10 / App. A.4, eq. 25); ``hedge``: Hedge with best
response, averaged iterates (App. D.1, eq. 46); ``projected``: projected gradient on the weights
(App. D.2, eq. 48). Each takes a validated :class:`~hf_rmod.solver._problem._Problem` and returns
``(weights (B, G), iterations)``.
"""

from __future__ import annotations

import math

import torch

from ._problem import _Problem, _project_simplex, _tilted, _uniform, _value_range

_PAPER_GRAD_CLIP = 10.0


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

