"""Rank correlation of measures with the generalization gap (Jiang et al. 2019, §2 and §6).

- Kendall τ (Jiang Eq. 1): τ = Σ_{i≠j} sign(μ_i − μ_j)·sign(g_i − g_j) / (n(n−1)), i.e. Kendall's τ_a
  (ties count as 0). It equals ``scipy.stats.kendalltau`` when nothing is tied (tested).
  A 95 % interval comes from the percentile bootstrap over runs.
- Granulated Kendall Ψ (Jiang Eq. 3-4): for each hyperparameter axis i, group the runs by the values
  of all other axes, take τ within each group (groups of ≥ 2 runs), average → ψ_i; Ψ = mean of ψ_i.
  Bit width is one axis. Seeds are not an axis: runs that differ only in seed fall in one group.
- Conditional mutual information (Jiang §6, reconstruction [M]): over all pairs of runs, V_μ = sign
  of the measure difference and V_g = sign of the gap difference (pairs with equal gaps dropped);
  for each conditioning set S of at most ``max_condition`` hyperparameters, U_S = the pair's values
  of S; I(V_μ; V_g | U_S) normalized by H(V_g | U_S); the score is the minimum over S (a measure
  whose relation to the gap is explained away by some hyperparameter scores near 0).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pandas as pd


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's τ_a of Jiang et al. (Eq. 1); NaN with fewer than 2 finite pairs."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    n = len(a)
    if n < 2:
        return float("nan")
    s = np.sign(a[:, None] - a[None, :]) * np.sign(b[:, None] - b[None, :])
    return float(s.sum() / (n * (n - 1)))


def bootstrap_tau(
    x: Sequence[float], y: Sequence[float], *, resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of τ, resampling runs with replacement."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if len(a) < 3:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    taus = []
    for _ in range(resamples):
        idx = rng.integers(0, len(a), len(a))
        taus.append(kendall_tau(a[idx], b[idx]))
    lo, hi = np.nanquantile(taus, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def granulated_kendall(
    df: pd.DataFrame, measure: str, gap: str, axes: Sequence[str]
) -> tuple[float, dict[str, float]]:
    """(Ψ, {axis: ψ_i}) of ``measure`` against ``gap`` over the hyperparameter ``axes``."""
    psi: dict[str, float] = {}
    for axis in axes:
        others = [a for a in axes if a != axis]
        groups = df.groupby(others, dropna=False) if others else [((), df)]
        taus = [kendall_tau(g[measure], g[gap]) for _, g in groups if g[axis].nunique() > 1]
        taus = [t for t in taus if np.isfinite(t)]
        psi[axis] = float(np.mean(taus)) if taus else float("nan")
    values = [v for v in psi.values() if np.isfinite(v)]
    return (float(np.mean(values)) if values else float("nan")), psi


def _entropy_rows(counts: np.ndarray) -> np.ndarray:
    """Entropy of each row of a count matrix (natural log)."""
    total = counts.sum(axis=1, keepdims=True)
    p = np.divide(counts, total, out=np.zeros_like(counts, dtype=float), where=total > 0)
    return -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0.0)).sum(axis=1)


def conditional_mutual_information(
    df: pd.DataFrame, measure: str, gap: str, axes: Sequence[str], max_condition: int = 1
) -> tuple[float, str]:
    """(min over S of I(V_μ; V_g | U_S)/H(V_g | U_S), the minimizing S written as 'a+b' or '∅')."""
    data = df[[measure, gap, *axes]].dropna(subset=[measure, gap]).reset_index(drop=True)
    mu, g = data[measure].to_numpy(float), data[gap].to_numpy(float)
    i, j = np.triu_indices(len(data), k=1)
    keep = g[i] != g[j]
    i, j = i[keep], j[keep]
    if len(i) < 2:
        return float("nan"), ""
    vm = (np.sign(mu[i] - mu[j]) + 1).astype(int)  # 0, 1, 2
    vg = (np.sign(g[i] - g[j]) + 1).astype(int)
    codes = {a: pd.factorize(data[a].astype(str))[0] for a in axes}
    best, best_set = float("inf"), ""
    for size in range(0, max_condition + 1):
        for subset in itertools.combinations(axes, size):
            cell = np.zeros(len(i), dtype=np.int64)
            for a in subset:  # the pair's values of S, as one integer
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


def correlation_table(
    df: pd.DataFrame,
    measures: Sequence[str],
    gaps: Sequence[str],
    axes: Sequence[str],
    *,
    resamples: int = 1000,
    seed: int = 0,
    max_condition: int = 1,
) -> pd.DataFrame:
    """One row per (measure, gap): τ with its bootstrap interval, Ψ, each ψ_i, and the CMI score."""
    rows = []
    for gap in gaps:
        for measure in measures:
            if measure not in df.columns or df[measure].notna().sum() < 3:
                continue
            tau = kendall_tau(df[measure], df[gap])
            lo, hi = bootstrap_tau(df[measure], df[gap], resamples=resamples, seed=seed)
            big_psi, psi = granulated_kendall(df, measure, gap, axes)
            cmi, cond = conditional_mutual_information(df, measure, gap, axes, max_condition)
            rows.append(
                {
                    "measure": measure,
                    "gap": gap,
                    "n": int(df[[measure, gap]].dropna().shape[0]),
                    "tau": tau,
                    "tau_lo": lo,
                    "tau_hi": hi,
                    "psi": big_psi,
                    **{f"psi[{a}]": v for a, v in psi.items()},
                    "cmi": cmi,
                    "cmi_condition": cond,
                }
            )
    return pd.DataFrame(rows)
