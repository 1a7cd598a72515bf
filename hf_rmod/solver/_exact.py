"""The exact method: a launch-light, sync-free solve and the iterative projected Newton fallback.

``_solve_fast`` (G = 2: bracketing grid on the derivative + secant; G > 2: fixed-iteration batched
active-set Newton) runs a fixed number of kernels with no host sync; ``_certify`` computes the
Frank–Wolfe gap of its result; rows it leaves uncertified go through ``_solve_exact``, the checked
iterative active-set projected Newton with backtracking. Both solve the problem stated in
:mod:`hf_rmod.solver`.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import torch

from ._problem import (
    _TINY_WEIGHT,
    _fw_gap,
    _Problem,
    _project_simplex,
    _structure,
    _tilted,
)

_CHECK_EVERY = 4  # exact: host sync (all rows converged?) only every few iterations
_N_TRIAL_STEPS = 30  # backtracking trial steps t0 * 2^-j, evaluated at once (no Python loop)
_RIDGES = (1e-10, 1e-3)  # Newton candidates: ridge relative to the mean Hessian diagonal
_RIDGE_ABS = 1e-20
_F_NOISE = 1e-13  # relative rounding level of F differences


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


