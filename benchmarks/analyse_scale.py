"""The analyse step's correlation work on a synthetic 10,000-run grid table, and the O(n²) code it replaced.

``qgen.analysis.correlation.correlation_table`` runs with the default config's settings (bootstrap 1000,
max_condition 1) on a table with the grid experiment's columns:

- the axes ``bits`` (FP32, 8, 4, 2), ``model.width``, ``model.depth``, ``optim.lr``, ``optim.batch_size``,
  ``optim.weight_decay``: 4·5·5·5·4·5 = 10,000 configurations, one run each;
- 50 measure columns named as in runs.csv (selected by ``qgen.analysis.run.measure_columns``), tied like
  the real ones: σ′ and α′ are midpoints of a bisection on [0, 2] that stops within 5 % of its target, and
  the PAC-Bayes and sharpness measures are functions of them; the noise measures are undefined for the
  float runs; the rest (norms, Hessian, bound) are continuous;
- the two gaps: ``gap_acc`` in steps of 1/450 (the digits test split), ``gap_loss`` continuous.

Then, side by side in the same run, the replaced implementation (pairwise n×n sign matrices; the
bootstrap recomputes τ_a on every resampled table) and the current one on a smaller table and a few
measures: their times, the ratio, and how far the results moved (τ and Ψ must agree exactly; the
intervals move because the self-pairs are dropped; CMI moves because both orders of a pair count now).

    python benchmarks/analyse_scale.py                                  # 10,000 runs, legacy on 400 runs
    python benchmarks/analyse_scale.py --runs 2000 --legacy-runs 200 --legacy-measures 4

Target (issue 12): ≤ 60 s on 2 cores for 10,000 runs. Wall time and the process's CPU time are both
printed: on a shared machine the wall time includes other people's load, the CPU time does not.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from qgen.analysis.correlation import _entropy_rows, correlation_table
from qgen.analysis.run import measure_columns

AXES: dict[str, list[Any]] = {
    "bits": ["FP32", "8", "4", "2"],
    "model.width": [16, 32, 64, 128, 256],
    "model.depth": [1, 2, 3, 4, 5],
    "optim.lr": [0.1, 0.05, 0.02, 0.01, 0.005],
    "optim.batch_size": [16, 32, 64, 128],
    "optim.weight_decay": [0.0, 1e-5, 1e-4, 5e-4, 1e-3],
}
GAPS = ["gap_acc", "gap_loss"]
TEST_EXAMPLES = 450


def bisection_midpoint(
    target: np.ndarray, lower: float = 0.0, upper: float = 2.0, depth: int = 15
) -> np.ndarray:
    """Where a bisection on [lower, upper] stops when it gets within 5 % of ``target`` (σ′, α′ ties)."""
    lo, hi = np.full_like(target, lower), np.full_like(target, upper)
    out = np.full_like(target, np.nan)
    for _ in range(depth):
        mid = (lo + hi) / 2
        done = np.isnan(out) & (np.abs(mid - target) <= 0.05 * target)
        out[done] = mid[done]
        lo, hi = np.where(mid < target, mid, lo), np.where(mid < target, hi, mid)
    return np.where(np.isnan(out), (lo + hi) / 2, out)


def synthetic_table(runs: int, seed: int = 0) -> pd.DataFrame:
    """A runs table with the grid's axes, 50 measures and both gaps (``runs`` rows, module docstring)."""
    grid = pd.DataFrame(list(itertools.product(*AXES.values())), columns=list(AXES))
    rng = np.random.default_rng(seed)
    df = grid.sample(n=runs, replace=runs > len(grid), random_state=seed).reset_index(drop=True)
    bits = df["bits"].map({"FP32": 32, "8": 8, "4": 4, "2": 2}).to_numpy(float)
    quality = (
        np.log2(df["model.width"]) / 8
        - 0.1 * df["model.depth"]
        + 2 * df["optim.lr"]
        - df["optim.batch_size"] / 512
        - 200 * df["optim.weight_decay"]
        - 0.5 / bits
    ).to_numpy()
    latent = quality + 0.3 * rng.normal(size=runs)
    df["status"] = "completed"
    df["gap_acc"] = np.clip(np.round((0.08 + 0.03 * latent) * TEST_EXAMPLES), 0, None) / TEST_EXAMPLES
    df["gap_loss"] = 0.3 + 0.1 * latent + 0.05 * rng.normal(size=runs)
    m = 1347.0
    for kind in ("pacbayes", "sharpness"):
        for mag in ("", "mag."):
            scale = bisection_midpoint(np.exp(-1.5 - 0.5 * latent + 0.2 * rng.normal(size=runs)))
            df[f"{kind}.{mag}sigma"] = scale
            df[f"{kind}.{mag}flatness"] = np.sqrt(1 / scale**2 / m)
            for ref, norm in (("init", 20.0), ("orig", 60.0)):
                value = norm**2 / (4 * scale**2) + np.log(m / scale) + 10
                df[f"{kind}.{mag}{ref}"] = np.sqrt(value / m)
    norms = [
        "fro_norm", "fro_dist", "l2", "l2_dist", "log_prod_of_spec", "log_sum_of_spec", "log_prod_of_fro",
        "log_sum_of_fro", "path_norm", "spec_init", "spec_orig", "param_norm", "margin",
        "log_spec_over_margin", "fro_over_margin", "path_norm_over_margin", "dist_spec_init",
        "fro_over_spec", "log_prod_of_spec_over_margin", "log_sum_of_spec_over_margin",
    ]  # fmt: skip
    for i, name in enumerate(norms):
        df[f"norm.{name}"] = (1 + 0.1 * i) * latent + rng.normal(size=runs) * (0.5 + 0.1 * i)
    quantized = df["bits"] != "FP32"
    for side in ("weight", "act"):
        for stat in ("var_ratio", "ks", "corr", "clipped_fraction", "predicted_sum_sq"):
            value = np.exp(-bits / 4) + 0.1 * latent + 0.2 * rng.normal(size=runs)
            df[f"noise.{side}.{stat}"] = np.where(quantized, value, np.nan)
    for name in ("hessian.trace", "hessian.top_eigenvalue", "noise_model.loss_increase", "bound.value"):
        df[name] = np.exp(latent + 0.5 * rng.normal(size=runs))
    return df


# ---------------------------------------------------------------- the implementation it replaced


def legacy_kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    n = len(a)
    if n < 2:
        return float("nan")
    s = np.sign(a[:, None] - a[None, :]) * np.sign(b[:, None] - b[None, :])
    return float(s.sum() / (n * (n - 1)))


def legacy_bootstrap_tau(
    x: Sequence[float], y: Sequence[float], resamples: int, seed: int
) -> tuple[float, float]:
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if len(a) < 3:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    taus = [
        legacy_kendall_tau(a[idx], b[idx])
        for idx in (rng.integers(0, len(a), len(a)) for _ in range(resamples))
    ]
    lo, hi = np.nanquantile(taus, [0.025, 0.975])
    return float(lo), float(hi)


def legacy_granulated_kendall(
    df: pd.DataFrame, measure: str, gap: str, axes: Sequence[str]
) -> tuple[float, dict]:
    psi: dict[str, float] = {}
    for axis in axes:
        others = [a for a in axes if a != axis]
        groups = df.groupby(others, dropna=False) if others else [((), df)]
        taus = [legacy_kendall_tau(g[measure], g[gap]) for _, g in groups if g[axis].nunique() > 1]
        taus = [t for t in taus if np.isfinite(t)]
        psi[axis] = float(np.mean(taus)) if taus else float("nan")
    values = [v for v in psi.values() if np.isfinite(v)]
    return (float(np.mean(values)) if values else float("nan")), psi


def legacy_cmi(
    df: pd.DataFrame, measure: str, gap: str, axes: Sequence[str], max_condition: int
) -> tuple[float, str]:
    data = df[[measure, gap, *axes]].dropna(subset=[measure, gap]).reset_index(drop=True)
    mu, g = data[measure].to_numpy(float), data[gap].to_numpy(float)
    i, j = np.triu_indices(len(data), k=1)
    keep = g[i] != g[j]
    i, j = i[keep], j[keep]
    if len(i) < 2:
        return float("nan"), ""
    vm = (np.sign(mu[i] - mu[j]) + 1).astype(int)
    vg = (np.sign(g[i] - g[j]) + 1).astype(int)
    codes = {a: pd.factorize(data[a].astype(str))[0] for a in axes}
    best, best_set = float("inf"), ""
    for size in range(0, max_condition + 1):
        for subset in itertools.combinations(axes, size):
            cell = np.zeros(len(i), dtype=np.int64)
            for a in subset:
                k = codes[a].max() + 1
                cell = (cell * k + codes[a][i]) * k + codes[a][j]
            cell = pd.factorize(cell)[0]
            cells = cell.max() + 1
            joint = np.bincount(cell * 9 + vm * 3 + vg, minlength=cells * 9).reshape(cells, 9).astype(float)
            p_cell = joint.sum(axis=1) / len(i)
            cm = joint.reshape(cells, 3, 3).sum(axis=2)
            cg = joint.reshape(cells, 3, 3).sum(axis=1)
            mi = _entropy_rows(cm) + _entropy_rows(cg) - _entropy_rows(joint)
            h = float((p_cell * _entropy_rows(cg)).sum())
            score = float((p_cell * mi).sum()) / h if h > 0 else float("nan")
            if np.isfinite(score) and score < best:
                best, best_set = score, "+".join(subset) or "∅"
    return (best if np.isfinite(best) else float("nan")), best_set


def legacy_correlation_table(
    df: pd.DataFrame, measures: Sequence[str], axes: Sequence[str], resamples: int, max_condition: int
) -> pd.DataFrame:
    rows = []
    for gap in GAPS:
        for measure in measures:
            lo, hi = legacy_bootstrap_tau(df[measure], df[gap], resamples, 0)
            big_psi, psi = legacy_granulated_kendall(df, measure, gap, axes)
            cmi, _ = legacy_cmi(df, measure, gap, axes, max_condition)
            tau = legacy_kendall_tau(df[measure], df[gap])
            rows.append(
                {"measure": measure, "gap": gap, "tau": tau, "tau_lo": lo, "tau_hi": hi, "psi": big_psi}
                | {f"psi[{a}]": v for a, v in psi.items()}
                | {"cmi": cmi}
            )
    return pd.DataFrame(rows)


def timed(fn: Callable[[], pd.DataFrame]) -> tuple[pd.DataFrame, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--max-condition", type=int, default=1)
    parser.add_argument("--legacy-runs", type=int, default=400)
    parser.add_argument("--legacy-measures", type=int, default=6)
    args = parser.parse_args()
    axes = list(AXES)

    df = synthetic_table(args.runs)
    measures = measure_columns(df)
    print(
        f"{args.runs} runs, {len(measures)} measures x {len(GAPS)} gaps, axes {', '.join(axes)}; "
        f"bootstrap {args.bootstrap}, max_condition {args.max_condition}"
    )
    distinct = {c: df[c].nunique() for c in ("pacbayes.sigma", "gap_acc", "gap_loss")}
    print("distinct values: " + ", ".join(f"{c} {v}" for c, v in distinct.items()))
    table, wall, cpu = timed(
        lambda: correlation_table(
            df, measures, GAPS, axes, resamples=args.bootstrap, seed=0, max_condition=args.max_condition
        )
    )
    print(f"correlation_table: {wall:.1f} s wall, {cpu:.1f} s CPU, {len(table)} rows (target <= 60 s)")

    small = synthetic_table(args.legacy_runs, seed=1)
    subset = measure_columns(small)[:: max(1, len(measures) // args.legacy_measures)][: args.legacy_measures]
    new, new_wall, _ = timed(
        lambda: correlation_table(
            small, subset, GAPS, axes, resamples=args.bootstrap, seed=0, max_condition=args.max_condition
        )
    )
    old, old_wall, _ = timed(
        lambda: legacy_correlation_table(small, subset, axes, args.bootstrap, args.max_condition)
    )
    print(
        f"{args.legacy_runs} runs, {len(subset)} measures x {len(GAPS)} gaps: replaced implementation "
        f"{old_wall:.2f} s, current {new_wall:.2f} s wall, ratio {old_wall / new_wall:.1f}x"
    )
    for col in ("tau", "psi", *[f"psi[{a}]" for a in axes], "tau_lo", "tau_hi", "cmi"):
        diff = (new[col] - old[col]).abs().max()
        print(f"  max |current - replaced| {col:<22} {diff:.3g}")


if __name__ == "__main__":
    main()
