"""The QGen-style generalization bound conditioned on quantization noise — a reconstruction.

QGen (2024) derives "an approximate bound for the generalization of quantized models conditioned on
the amount of quantization noise"; its exact form is not verified (papers.md §1b). Implemented here is
the reconstruction of papers.md §7.7, built on the PAC-Bayes decomposition of Neyshabur et al. (2017):

    bound = L̂_S(Q(w)) + [E_u L̂_S(w + u) − L̂_S(w)] + 4·√((KL + ln(2m/δ)) / m)    (m: training-set size)

with L̂ the training error (0-1 loss), u the quantization-noise model (u_i ~ U(−Δ_i/2, Δ_i/2), Monte-Carlo
``noise_model.error_increase``), and KL = Σ_i w_i²/(2σ_i²) between Gaussians of equal variance.
Named options (``analysis.bound`` in the config):

- ``kl_sigma``: ``quantization`` (σ_i² = Δ_i²/12, papers.md; summed over quantized layers) or
  ``pacbayes`` (σ = the measured PAC-Bayes σ′, all weights; defined for float runs too);
- ``prior``: ``zero`` (‖w‖², papers.md) or ``init`` (‖w − w₀‖²);
- ``delta``: the confidence δ (0.05).

With σ² = Δ²/12 the KL term falls as Δ grows while the noise term rises: the bound is not monotone in
Δ in general. Float runs have no quantization noise: their bound is undefined under ``quantization``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from qgen.analysis.correlation import kendall_tau

DEFAULTS: dict[str, Any] = {"kl_sigma": "quantization", "prior": "zero", "delta": 0.05}


def kl_term(df: pd.DataFrame, kl_sigma: str, prior: str) -> pd.Series:
    if kl_sigma == "quantization":
        return df["noise_model.kl_orig" if prior == "zero" else "noise_model.kl_init"].astype(float)
    if kl_sigma == "pacbayes":
        norm = df["norm.l2" if prior == "zero" else "norm.l2_dist"].astype(float)
        return norm**2 / (2 * df["pacbayes.sigma"].astype(float) ** 2)
    raise ValueError(f"unknown kl_sigma {kl_sigma!r}; known: quantization, pacbayes")


def evaluate_bound(df: pd.DataFrame, options: dict[str, Any] | None = None) -> pd.DataFrame:
    """Per-run bound and its terms (columns ``bound.*``), aligned with ``df``'s index."""
    opt = {**DEFAULTS, **(options or {})}
    if "measure.m" not in df.columns:
        raise KeyError("runs table has no 'measure.m' (the bound's m, the training-set size); re-measure")
    m = df["measure.m"].astype(float)  # the training-set size, not the measures' subset size
    kl = kl_term(df, opt["kl_sigma"], opt["prior"])
    train_error = df["train_error"].astype(float)
    noise = df.get("noise_model.error_increase", pd.Series(np.nan, index=df.index)).astype(float)
    if opt["kl_sigma"] == "pacbayes":
        noise = noise.fillna(0.0)  # float runs: no quantization noise
    complexity = 4 * np.sqrt((kl + np.log(2 * m / opt["delta"])) / m)
    out = pd.DataFrame(
        {
            "bound.train_error": train_error,
            "bound.noise_term": noise,
            "bound.kl": kl,
            "bound.complexity": complexity,
            "bound.value": train_error + noise + complexity,
        },
        index=df.index,
    )
    out["bound.gap_term"] = out["bound.value"] - train_error  # what the bound allows on top of L̂_S
    return out


def fit_gap(df: pd.DataFrame, gap: str, features: list[str]) -> pd.DataFrame:
    """Least-squares fit of ``gap`` on standardized ``features`` (runs with all values finite).

    Returns rows per term (coefficient per standard deviation of the feature) and summary rows
    r2, tau (Kendall τ of fitted vs observed) and n.
    """
    cols = [f for f in features if f in df.columns]
    data = df[[gap, *cols]].astype(float).replace([np.inf, -np.inf], np.nan).dropna()
    rows: list[dict[str, Any]] = []
    if len(data) <= len(cols) + 1:
        return pd.DataFrame([{"term": "n", "value": len(data)}])
    x = data[cols].to_numpy()
    sd = x.std(axis=0)
    keep = sd > 0
    cols = [c for c, k in zip(cols, keep, strict=True) if k]
    z = (x[:, keep] - x[:, keep].mean(axis=0)) / sd[keep]
    design = np.column_stack([np.ones(len(z)), z])
    y = data[gap].to_numpy()
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    fitted = design @ coef
    ss_res, ss_tot = float(((y - fitted) ** 2).sum()), float(((y - y.mean()) ** 2).sum())
    rows.append({"term": "intercept", "value": float(coef[0])})
    rows += [{"term": c, "value": float(b)} for c, b in zip(cols, coef[1:], strict=True)]
    rows += [
        {"term": "r2", "value": 1 - ss_res / ss_tot if ss_tot > 0 else math.nan},
        {"term": "tau_fitted_vs_observed", "value": kendall_tau(fitted, y)},
        {"term": "n", "value": float(len(data))},
    ]
    return pd.DataFrame(rows).assign(gap=gap)
