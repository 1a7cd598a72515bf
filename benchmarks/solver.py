"""Solver benchmark: CPU solve time of ``solve_weights`` and the quality of the paper's method.

``run(quick=False) -> dict`` measures

* ``timing``: median wall time (after a warm-up) of ``method="exact"`` for batch in {1, 64},
  K in {4, 16, 64}, G in {2, 5, 10}, with the iterations run and the fraction converged;
* ``quality``: ``F(w) - F(w*)`` for ``"paper"`` with the authors' defaults (10 iterations, step
  1/sqrt(t+1), gradient clipped at +-10), and for ``"hedge"`` / ``"projected"`` at their defaults,
  against ``"exact"``, on random normal values of scale 1 and 20: mean and max excess objective,
  and the fraction of rows whose selected block (argmax_k w.V_k, Algorithm 1 line 7) differs.

Run ``python -m benchmarks.solver`` (``--quick`` for a smoke run) to print the tables.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from hf_rmod.solver import solve_weights

LAM = 0.5


def _time(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _timing(quick: bool) -> list[dict]:
    reps = 3 if quick else 15
    rows = []
    gen = torch.Generator().manual_seed(0)
    for batch in (1, 64):
        for K in (4, 16, 64):
            for G in (2, 5, 10):
                values = torch.randn(batch, K, G, generator=gen)  # (batch, K, G) float32
                sol = solve_weights(values, LAM)
                sec = _time(lambda: solve_weights(values, LAM), reps)
                rows.append(
                    dict(batch=batch, K=K, G=G, ms=1e3 * sec, iterations=sol.iterations,
                         converged=float(sol.converged.float().mean()))
                )
    return rows


def _quality(quick: bool) -> list[dict]:
    rows = []
    n = 256 if quick else 2048
    for scale in (1.0, 20.0):
        gen = torch.Generator().manual_seed(1)
        values = torch.randn(n, 16, 5, generator=gen, dtype=torch.float64) * scale
        exact = solve_weights(values, LAM, tol=1e-10)
        pick = torch.einsum("bkg,bg->bk", values, exact.weights).argmax(-1)  # (n,)
        for method in ("paper", "hedge", "projected"):
            sol = solve_weights(values, LAM, method=method)
            excess = sol.objective - exact.objective  # (n,)
            other = torch.einsum("bkg,bg->bk", values, sol.weights).argmax(-1)
            rows.append(
                dict(method=method, scale=scale, K=16, G=5, rows=n,
                     mean_excess=float(excess.mean()), max_excess=float(excess.max()),
                     block_differs=float((other != pick).double().mean()),
                     exact_converged=float(exact.converged.double().mean()))
            )
    return rows


def run(quick: bool = False, threads: int | None = 1) -> dict:
    """Measure solver timing and approximate-method quality; returns plain Python data.

    ``threads``: torch intra-op threads while measuring (restored afterwards); 1 by default,
    because these problems are tiny and extra threads only add contention on a shared machine.
    ``None`` keeps the current setting.
    """
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return dict(
            torch=torch.__version__,
            threads=torch.get_num_threads(),
            lam=LAM,
            timing=_timing(quick),
            quality=_quality(quick),
        )
    finally:
        torch.set_num_threads(before)


def _print(result: dict) -> None:
    print(f"torch {result['torch']}, {result['threads']} threads, lam={result['lam']}, CPU")
    print("\nexact solve time (median, float32 values)")
    print(f"{'batch':>5} {'K':>3} {'G':>3} {'ms':>8} {'iters':>5} {'conv':>5}")
    for r in result["timing"]:
        print(f"{r['batch']:>5} {r['K']:>3} {r['G']:>3} {r['ms']:>8.2f} {r['iterations']:>5} "
              f"{r['converged']:>5.2f}")
    print("\nF(w) - F(w*) of the approximate methods at their defaults (K=16, G=5)")
    print(f"{'method':>9} {'scale':>5} {'mean':>10} {'max':>10} {'block differs':>13}")
    for r in result["quality"]:
        print(f"{r['method']:>9} {r['scale']:>5g} {r['mean_excess']:>10.3e} "
              f"{r['max_excess']:>10.3e} {r['block_differs']:>13.3f}")


if __name__ == "__main__":
    _print(run(quick="--quick" in sys.argv[1:]))
