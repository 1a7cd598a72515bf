"""Solver benchmark: CPU solve time of ``solve_weights`` and the quality of the paper's method.

``run(quick=False) -> dict`` measures

* ``timing``: median wall time (after a warm-up) of ``method="exact"`` for batch in {1, 64},
  K in {4, 16, 64}, G in {2, 5, 10}, with the iterations run and the fraction converged;
* ``quality``: ``F(w) - F(w*)`` for ``"paper"`` with the authors' defaults (10 iterations, step
  1/sqrt(t+1), gradient clipped at +-10), and for ``"hedge"`` / ``"projected"`` at their defaults,
  against ``"exact"``, on random normal values of scale 1 and 20: mean and max excess objective,
  and the fraction of rows whose selected block (argmax_k w.V_k, Algorithm 1 line 7) differs.

* ``launches``: per ``method="exact"`` call at (batch 8, K 16, G 2) and (8, 16, 10): aten ops and
  host syncs (``aten::_local_scalar_dense``) counted with ``torch.profiler`` on CPU, with the default
  ``check=True`` and with ``check=False``; median wall time at (8,16,2), (8,16,10), (512,16,10);
  and the fraction of random rows (N(0,1) values, lam 0.5 and 10) that the launch-light path leaves
  to the iterative fallback.

Run ``python -m benchmarks.solver`` (``--quick`` for a smoke run) to print the tables; it is also run
by ``python -m benchmarks --only solver`` (JSON under ``extra.solver_benchmark``).
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


def _count_ops(fn) -> tuple[int, int]:
    from torch.profiler import ProfilerActivity, profile

    fn()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names = [e.name for e in prof.events() if e.name.startswith("aten::")]
    return len(names), names.count("aten::_local_scalar_dense")


def _fallback_fraction(G: int, lam: float, rows: int) -> float:
    from hf_rmod import solver as S

    values = torch.randn(rows, 16, G, generator=torch.Generator().manual_seed(2))
    fp = S._prepare_fast(values, lam, None, None)
    w, _ = S._solve_fast(fp)
    _, objective, gap, _ = S._certify(fp, w, 1e-6)
    target = 1e-6 * torch.minimum(objective.abs(), (objective - fp.shift.view(-1)).abs()).clamp_min(1.0)
    return float((~(gap <= target)).double().mean())


def _launches(quick: bool) -> list[dict]:
    reps = 3 if quick else 15
    rows = []
    for batch, G in ((8, 2), (8, 10), (512, 10)):
        values = torch.randn(batch, 16, G, generator=torch.Generator().manual_seed(0))
        row = dict(batch=batch, K=16, G=G, ms=1e3 * _time(lambda: solve_weights(values, LAM), reps),
                   ms_nocheck=1e3 * _time(lambda: solve_weights(values, LAM, check=False), reps))
        if batch == 8:
            row["ops"], row["syncs"] = _count_ops(lambda: solve_weights(values, LAM))
            row["ops_nocheck"], row["syncs_nocheck"] = _count_ops(lambda: solve_weights(values, LAM, check=False))
        rows.append(row)
    fallback = [dict(G=G, lam=lam, rows=256 if quick else 4096, fraction=_fallback_fraction(G, lam, 256 if quick else 4096))
                for G in (2, 5, 10) for lam in (0.5, 10.0)]
    return dict(calls=rows, fallback=fallback)


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
            launches=_launches(quick),
            timing=_timing(quick),
            quality=_quality(quick),
        )
    finally:
        torch.set_num_threads(before)


def _print(result: dict) -> None:
    print(f"torch {result['torch']}, {result['threads']} threads, lam={result['lam']}, CPU")
    print("\nexact: per call (float32 N(0,1) values, K=16); ops = aten ops incl. nested, syncs = _local_scalar_dense")
    print(f"{'batch':>5} {'G':>3} {'ms':>8} {'ms(check=False)':>15} {'ops':>5} {'syncs':>5} {'ops(nc)':>7} {'syncs(nc)':>9}")
    for r in result["launches"]["calls"]:
        print(f"{r['batch']:>5} {r['G']:>3} {r['ms']:>8.2f} {r['ms_nocheck']:>15.2f} {r.get('ops', ''):>5} "
              f"{r.get('syncs', ''):>5} {r.get('ops_nocheck', ''):>7} {r.get('syncs_nocheck', ''):>9}")
    print("\nrows left to the iterative fallback (random N(0,1), K=16)")
    for r in result["launches"]["fallback"]:
        print(f"  G={r['G']:>2} lam={r['lam']:>4g} rows={r['rows']}: {r['fraction']:.4f}")
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
