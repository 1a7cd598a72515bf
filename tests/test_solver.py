"""Tests of the worst-case weight solver by invariants, optimality conditions and references."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize
from scipy.special import logsumexp

from hf_rmod import SolverResult, solve_weights
from hf_rmod.solver import tilted_means, weighted_objective

SHAPES = [(1, 1, 3), (3, 2, 2), (4, 4, 10), (8, 16, 5), (2, 64, 10), (5, 3, 1), (6, 8, 3)]
SCALES = [1e-4, 1.0, 1e3]


def _values(seed, shape, scale=1.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def _random_simplex(seed, batch, G, n):
    """(n, batch, G) uniform points on the simplex (normalised exponentials)."""
    g = torch.Generator().manual_seed(seed)
    x = -torch.log(torch.rand(n, batch, G, generator=g, dtype=torch.float64))
    return x / x.sum(-1, keepdim=True)


def _F(values, w, lam, **kw):
    return weighted_objective(values, w, lam, **kw)


def _tol_of(sol, tol=1e-6):
    return tol * sol.objective.abs().clamp_min(1.0)


def _scipy_reference(v, lam, restarts=4, seed=0):
    """Independent float64 reference: SLSQP on the simplex, best of several starts."""
    v = np.asarray(v, dtype=np.float64)  # (K, G)
    K, G = v.shape

    def f(w):
        return logsumexp(lam * v @ w) - math.log(K)

    def grad(w):
        z = lam * v @ w
        p = np.exp(z - logsumexp(z))
        return lam * v.T @ p

    rng = np.random.default_rng(seed)
    starts = [np.full(G, 1.0 / G)] + list(np.eye(G)) + [rng.dirichlet(np.ones(G)) for _ in range(restarts)]
    best = math.inf
    for x0 in starts:
        res = minimize(
            f, x0, jac=grad, method="SLSQP", bounds=[(0.0, 1.0)] * G,
            constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones(G)}],
            options={"ftol": 1e-15, "maxiter": 500},
        )
        w = np.clip(res.x, 0, None)
        best = min(best, f(w / w.sum()))
    return best


# ---------------------------------------------------------------------------------------------
# Feasibility, optimality, certificate
# ---------------------------------------------------------------------------------------------


def _check_solution(values, lam, sol, tol=1e-6, n_random=64, seed=0):
    B, K, G = values.shape
    w = sol.weights
    assert w.shape == (B, G) and sol.objective.shape == (B,) and sol.gap.shape == (B,)
    assert torch.all(w >= 0)
    torch.testing.assert_close(w.sum(-1), torch.ones(B, dtype=w.dtype), atol=1e-12, rtol=0)
    assert sol.converged.all(), (sol.gap, sol.objective)
    assert torch.all(sol.gap <= _tol_of(sol, tol))
    slack = sol.gap + 1e-12 * sol.objective.abs().clamp_min(1.0)  # certificate: F(w) - F* <= gap
    torch.testing.assert_close(sol.objective, _F(values, w, lam))
    uniform = torch.full((B, G), 1.0 / G, dtype=torch.float64)
    assert torch.all(sol.objective <= _F(values, uniform, lam) + slack)
    for g in range(G):
        vertex = torch.nn.functional.one_hot(torch.full((B,), g), G).double()
        assert torch.all(sol.objective <= _F(values, vertex, lam) + slack)
    for x in _random_simplex(seed, B, G, n_random):
        assert torch.all(sol.objective <= _F(values, x, lam) + slack)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", SCALES)
def test_optimal_and_certified_seeded(shape, scale):
    values = _values(hash((shape, scale)) % 10_000, shape, scale)
    tol = 1e-6 if scale >= 1 else 1e-12  # tiny values: ask for a tight certificate
    sol = solve_weights(values, 0.5, tol=tol)
    assert isinstance(sol, SolverResult)
    _check_solution(values, 0.5, sol, tol)


@given(
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(1, 4),
    K=st.integers(1, 12),
    G=st.integers(1, 8),
    log_scale=st.floats(-4, 3),
    lam=st.floats(0.01, 20.0),
)
def test_optimal_and_certified_property(seed, batch, K, G, log_scale, lam):
    values = _values(seed, (batch, K, G), 10.0**log_scale)
    sol = solve_weights(values, lam, tol=1e-9)
    _check_solution(values, lam, sol, tol=1e-9, n_random=16, seed=seed)


@pytest.mark.parametrize("shape", [(6, 16, 5), (4, 3, 8), (4, 64, 10)])
@pytest.mark.parametrize("scale", SCALES)
def test_kkt_conditions_app_b(shape, scale):
    """Positive weights share one tilted mean; zero weights have tilted mean >= that level."""
    lam = 0.5
    values = _values(7, shape, scale)
    sol = solve_weights(values, lam, tol=1e-12)
    assert sol.converged.all()
    w = sol.weights
    m = tilted_means(values, w, lam)  # (B, G)
    level = (w * m).sum(-1, keepdim=True)  # (B, 1)
    # gap = lam * sum_g w_g (m_g - min m) <= tol*|F| bounds each weighted deviation.
    bound = (sol.gap / lam)[:, None] + 1e-9 * scale
    assert torch.all(w * (m - level).abs() <= 2 * bound + 1e-12)
    big = w > 1e-3
    assert torch.all(((m - level).abs() <= 1e3 * bound)[big])
    assert torch.all(m >= level - bound)  # also for w_g == 0


def test_matches_scipy_reference():
    for seed, (K, G), lam in [(0, (8, 3), 0.5), (1, (16, 5), 2.0), (2, (4, 6), 0.5), (3, (32, 4), 5.0)]:
        values = _values(seed, (K, G), 1.0)
        sol = solve_weights(values, lam, tol=1e-10)
        ref = _scipy_reference(values.numpy(), lam)
        assert float(sol.objective) <= ref + 1e-9
        assert abs(float(sol.objective) - ref) <= 1e-6


# ---------------------------------------------------------------------------------------------
# Invariances
# ---------------------------------------------------------------------------------------------


def test_invariances():
    lam = 0.7
    values = _values(11, (5, 12, 4), 2.0)
    sol = solve_weights(values, lam, tol=1e-12)

    shifted = solve_weights(values + 3.25, lam, tol=1e-12)
    torch.testing.assert_close(shifted.weights, sol.weights, atol=1e-6, rtol=0)
    torch.testing.assert_close(shifted.objective, sol.objective + lam * 3.25, atol=1e-9, rtol=0)

    perm_g = torch.tensor([2, 0, 3, 1])
    pg = solve_weights(values[:, :, perm_g], lam, tol=1e-12)
    torch.testing.assert_close(pg.weights, sol.weights[:, perm_g], atol=1e-6, rtol=0)
    torch.testing.assert_close(pg.objective, sol.objective, atol=1e-10, rtol=0)

    perm_k = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    pk = solve_weights(values[:, perm_k], lam, tol=1e-12)
    torch.testing.assert_close(pk.weights, sol.weights, atol=1e-6, rtol=0)
    torch.testing.assert_close(pk.objective, sol.objective, atol=1e-10, rtol=0)

    dup = solve_weights(torch.cat([values, values[:, :, :1]], dim=-1), lam, tol=1e-12)
    torch.testing.assert_close(dup.objective, sol.objective, atol=1e-10, rtol=0)
    merged = torch.cat([dup.weights[:, :1] + dup.weights[:, 4:], dup.weights[:, 1:4]], dim=-1)
    torch.testing.assert_close(merged, sol.weights, atol=1e-6, rtol=0)


def test_batch_equals_rows_and_unbatched_shapes():
    values = _values(5, (6, 16, 5), 1.0)
    sol = solve_weights(values, 0.5)
    for b in range(6):
        row = solve_weights(values[b], 0.5)
        assert row.weights.shape == (5,) and row.objective.shape == () and row.converged.shape == ()
        torch.testing.assert_close(row.weights, sol.weights[b], atol=1e-9, rtol=0)
        torch.testing.assert_close(row.objective, sol.objective[b], atol=1e-12, rtol=0)


def test_inputs_not_mutated():
    values = _values(3, (3, 8, 4), 1.0)
    mask = torch.ones(3, 8, dtype=torch.bool)
    mask[0, 2] = False
    log_probs = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    copies = values.clone(), mask.clone(), log_probs.clone()
    for method in ("exact", "paper", "hedge", "projected"):
        solve_weights(values, 0.5, method=method, mask=mask, log_probs=log_probs)
    assert torch.equal(values, copies[0]) and torch.equal(mask, copies[1])
    assert torch.equal(log_probs, copies[2])


# ---------------------------------------------------------------------------------------------
# Special cases
# ---------------------------------------------------------------------------------------------


def test_single_objective_and_single_candidate():
    values = _values(0, (4, 7, 1), 3.0)
    sol = solve_weights(values, 0.5)
    assert torch.equal(sol.weights, torch.ones(4, 1, dtype=torch.float64))
    torch.testing.assert_close(
        sol.objective, torch.logsumexp(0.5 * values[..., 0], -1) - math.log(7)
    )
    one = _values(1, (5, 1, 6), 3.0)
    sol = solve_weights(one, 0.5)
    expected = torch.nn.functional.one_hot(one[:, 0].argmin(-1), 6).double()
    assert torch.equal(sol.weights, expected)
    torch.testing.assert_close(sol.objective, 0.5 * one[:, 0].amin(-1))
    assert torch.all(sol.gap == 0)


def test_masked_candidates_are_absent():
    values = _values(2, (3, 10, 4), 1.0)
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[:, 6:] = False
    mask[2, 1:] = False  # a single unmasked candidate: a vertex
    garbage = values.clone()
    garbage[~mask] = float("nan")
    sol = solve_weights(garbage, 0.5, mask=mask, tol=1e-12)
    for b in range(2):
        ref = solve_weights(values[b, :6], 0.5, tol=1e-12)
        torch.testing.assert_close(sol.weights[b], ref.weights, atol=1e-6, rtol=0)
        torch.testing.assert_close(sol.objective[b], ref.objective, atol=1e-10, rtol=0)
    assert torch.equal(sol.weights[2], torch.nn.functional.one_hot(values[2, 0].argmin(), 4).double())


def test_log_probs_equal_duplicating_candidates():
    values = _values(4, (2, 5, 3), 1.0)
    log_probs = torch.zeros(2, 5, dtype=torch.float64)
    log_probs[:, 0] = math.log(2.0)  # candidate 0 twice as likely
    weighted = solve_weights(values, 0.5, log_probs=log_probs, tol=1e-12)
    duplicated = solve_weights(torch.cat([values, values[:, :1]], dim=1), 0.5, tol=1e-12)
    torch.testing.assert_close(weighted.weights, duplicated.weights, atol=1e-6, rtol=0)
    torch.testing.assert_close(weighted.objective, duplicated.objective, atol=1e-10, rtol=0)
    # log_probs are normalised: a constant offset changes nothing.
    offset = solve_weights(values, 0.5, log_probs=log_probs - 7.0, tol=1e-12)
    torch.testing.assert_close(offset.objective, weighted.objective, atol=1e-10, rtol=0)


def test_no_overflow_at_extreme_scale():
    values = _values(6, (4, 8, 5), 2e5)  # |lam V| ~ 1e5
    sol = solve_weights(values, 0.5)
    assert torch.isfinite(sol.weights).all() and torch.isfinite(sol.objective).all()
    assert torch.isfinite(sol.gap).all() and sol.converged.all()
    for method in ("paper", "hedge", "projected"):
        other = solve_weights(values, 0.5, method=method)
        assert torch.isfinite(other.weights).all() and torch.isfinite(other.objective).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_inputs(dtype):
    values = _values(8, (4, 16, 5), 1.0, dtype)
    sol = solve_weights(values, 0.5)
    assert sol.weights.dtype == torch.float32 and sol.objective.dtype == torch.float32
    assert sol.converged.all()
    ref = solve_weights(values.double(), 0.5)
    torch.testing.assert_close(sol.objective.double(), ref.objective, atol=1e-5, rtol=0)


def test_lambda_spreads_or_concentrates_weights():
    """App. B, planted: small lam -> spread weights, equal to the minimiser of the second-order
    expansion F ~ lam m.w + lam^2/2 w'Cov w (equal means: the min-variance mix); large lam ->
    F/lam -> max_k V_k.w, all weight on objective 0, worst at the worst-case candidate."""
    a = torch.linspace(-1, 1, 32, dtype=torch.float64)  # objective 0
    b = torch.full((32,), -3.0 / 31, dtype=torch.float64)  # objective 1: one spike at k = 31
    b[31] = 3.0
    values = torch.stack([a, b], -1)[None]  # (1, 32, 2), both means 0
    cov = torch.cov(values[0].T, correction=0)
    w_quad = torch.linalg.solve(cov, torch.ones(2, dtype=torch.float64))
    w_quad = w_quad / w_quad.sum()  # (0.4286, 0.5714)

    def entropy(w):
        return float(-(w * w.clamp_min(1e-300).log()).sum())

    ws = {lam: solve_weights(values, lam, tol=1e-12).weights[0] for lam in (1e-3, 1.0, 50.0)}
    torch.testing.assert_close(ws[1e-3], w_quad, atol=1e-3, rtol=0)
    assert entropy(ws[1e-3]) > 0.65 > entropy(ws[1.0]) > entropy(ws[50.0])
    assert torch.equal(ws[50.0], torch.tensor([1.0, 0.0], dtype=torch.float64))


# ---------------------------------------------------------------------------------------------
# The approximate methods
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["paper", "hedge", "projected"])
def test_approximate_methods_are_feasible_and_not_better(method):
    values = _values(9, (16, 16, 5), 1.0)
    exact = solve_weights(values, 0.5, tol=1e-12)
    sol = solve_weights(values, 0.5, method=method)
    assert torch.all(sol.weights >= 0)
    torch.testing.assert_close(sol.weights.sum(-1), torch.ones(16, dtype=torch.float64))
    assert torch.all(sol.objective >= exact.objective - 1e-10)
    torch.testing.assert_close(sol.objective, _F(values, sol.weights, 0.5))
    m = tilted_means(values, sol.weights, 0.5)
    gap = 0.5 * ((sol.weights * m).sum(-1) - m.min(-1).values)
    torch.testing.assert_close(sol.gap, gap.clamp_min(0), atol=1e-12, rtol=0)
    assert sol.iterations == {"paper": 10, "hedge": 100, "projected": 100}[method]


@pytest.mark.parametrize("method,atol", [("hedge", 2e-2), ("projected", 1e-4)])
def test_approximate_methods_approach_exact(method, atol):
    values = _values(10, (16, 16, 5), 1.0)
    exact = solve_weights(values, 0.5, tol=1e-12)
    short = solve_weights(values, 0.5, method=method, max_iter=20)
    long = solve_weights(values, 0.5, method=method, max_iter=2000)
    excess_short = (short.objective - exact.objective).mean()
    excess_long = (long.objective - exact.objective).max()
    assert excess_long <= atol
    assert excess_long < excess_short


def test_paper_method_follows_eq_10():
    """One hand-computed step of eq. 10 in the normalised form."""
    values = _values(12, (1, 6, 3), 1.0)
    lam = 0.5
    w0 = torch.full((1, 3), 1.0 / 3, dtype=torch.float64)
    p = torch.softmax(lam * values[0] @ w0[0], dim=0)
    grad = (lam * w0[0] * (p @ values[0])).clamp(-10, 10)
    w1 = w0[0] * torch.exp(-1.0 * grad)
    w1 = w1 / w1.sum()
    sol = solve_weights(values, lam, method="paper", max_iter=1)
    torch.testing.assert_close(sol.weights[0], w1)


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


V = torch.zeros(2, 3, 4)


@pytest.mark.parametrize(
    "kwargs,exc,needle",
    [
        (dict(values=[[1.0]]), TypeError, "values"),
        (dict(values=torch.zeros(2, 3, 4, dtype=torch.long)), TypeError, "values"),
        (dict(values=torch.zeros(3)), ValueError, "values"),
        (dict(values=torch.zeros(1, 2, 3, 4)), ValueError, "values"),
        (dict(values=torch.zeros(2, 0, 4)), ValueError, "values"),
        (dict(values=torch.zeros(2, 3, 0)), ValueError, "values"),
        (dict(values=torch.tensor([[[0.0, float("nan")]], [[0.0, 1.0]]])), ValueError, "rows [0]"),
        (dict(values=torch.tensor([[[0.0, 1.0]], [[float("inf"), 1.0]]])), ValueError, "rows [1]"),
        (dict(lam=0.0), ValueError, "lam"),
        (dict(lam=-1.0), ValueError, "lam"),
        (dict(lam=float("nan")), ValueError, "lam"),
        (dict(lam=float("inf")), ValueError, "lam"),
        (dict(lam="0.5"), TypeError, "lam"),
        (dict(mask=torch.ones(2, 4, dtype=torch.bool)), ValueError, "mask"),
        (dict(mask=torch.ones(2, 3)), TypeError, "mask"),
        (dict(mask=torch.tensor([[True, True, True], [False, False, False]])), ValueError, "rows [1]"),
        (dict(log_probs=torch.zeros(2, 4)), ValueError, "log_probs"),
        (dict(log_probs=torch.zeros(2, 3, dtype=torch.long)), TypeError, "log_probs"),
        (dict(log_probs=torch.tensor([[0.0, float("nan"), 0.0], [0.0] * 3])), ValueError, "log_probs"),
        (dict(log_probs=torch.tensor([[0.0] * 3, [0.0, float("inf"), 0.0]])), ValueError, "log_probs"),
        (dict(log_probs=torch.full((2, 3), -float("inf"))), ValueError, "log_probs"),
        (dict(method="newton"), ValueError, "method"),
        (dict(tol=0.0), ValueError, "tol"),
        (dict(tol=-1e-3), ValueError, "tol"),
        (dict(max_iter=0), ValueError, "max_iter"),
        (dict(max_iter=2.5), TypeError, "max_iter"),
        (dict(method="hedge", step_size=-1.0), ValueError, "step_size"),
    ],
)
def test_validation_errors_name_the_argument(kwargs, exc, needle):
    args = dict(values=V, lam=0.5)
    args.update(kwargs)
    values = args.pop("values")
    lam = args.pop("lam")
    with pytest.raises(exc, match=needle.replace("[", r"\[").replace("]", r"\]")):
        solve_weights(values, lam, **args)


def test_step_size_ignored_by_exact_warns():
    with pytest.warns(UserWarning, match="step_size"):
        solve_weights(V, 0.5, step_size=0.1)


def test_weighted_objective_and_tilted_means_validate_weights():
    with pytest.raises(ValueError, match="weights"):
        weighted_objective(V, torch.ones(2, 3) / 3, 0.5)
    with pytest.raises(TypeError, match="weights"):
        tilted_means(V, [0.25] * 4, 0.5)


def test_small_lambda_puts_all_weight_on_the_objective_with_the_lowest_mean_value():
    # F(w) = log E exp(λ w·V) = λ w·E[V] + O(λ²): as λ -> 0 the minimiser is the vertex of the lowest mean value
    # (sparse weights), not the uniform point. The paper's Fig. 3c reading ("low λ, high-entropy weights") is what
    # its 10-step gradient solver from uniform weights gives (method="paper"), not the solution of eq. 7.
    gen = torch.Generator().manual_seed(11)
    values = torch.randn(256, 8, 3, generator=gen, dtype=torch.float64)
    lowest = values.mean(dim=1).argmin(dim=1)  # (256,)
    exact = solve_weights(values, 1e-3).weights
    assert torch.equal(exact.argmax(dim=1), lowest) and bool((exact.max(dim=1).values > 0.999).all())
    paper = solve_weights(values, 1e-3, method="paper").weights
    assert bool((paper.max(dim=1).values < 0.4).all())  # still close to uniform (1/3) after its 10 steps
