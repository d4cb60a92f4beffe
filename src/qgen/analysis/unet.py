"""The U-Net fixed-point paper's claim (AskariHemmat et al. 2019, papers.md §3): ``w4a6_drop_matches_paper``.

The paper: "only 4 bits for weights and 6 bits for activations ... loosing only 2.21%, 0.57% and 2.09%
dice" on EM (ISBI 2012), spinal cord gray matter (GM) and NIH pancreas, read as absolute dice points of the
a6.0/w0.4 model below its float twin. The check, per dataset (and per Q_{i.f} variant): pair every completed
a6.0/w0.4 run (``quant.method qif``, ``weight_format 0,4``, ``act_format 6,0``) with its float twin (every
other spec key and the seed equal), drop = 100·(float test dice − a6.0/w0.4 test dice), and compare the
mean drop with the paper's drop + ``analysis.claims.unet_margin`` (dice points, default 2) by a one-sided
paired t interval at level 1 − α:

- ``pass``: the upper end of the interval is at most the threshold (our drop is not larger than the paper's
  plus the margin);
- ``fail``: the lower end is above it (our drop is larger);
- ``inconclusive``: the interval straddles it, or fewer than ``analysis.claims.unet_min_pairs`` pairs
  (default 3: the paper reports single runs).

em_synth is compared with the EM figure, and the claim says that the data is synthetic: the numbers are
not the paper's experiment, only its claim's shape (a small drop at a6.0/w0.4).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from qgen.runs_table import spec_column

#: the paper's a6.0/w0.4 dice drops in dice points (papers.md §3, the abstract)
PAPER_DROPS = {"EM": 2.21, "GM": 0.57, "NIH": 2.09}
#: which of the paper's datasets a qgen dataset stands for, and how the claim describes it
DATASET_PAPER = {
    "em_synth": ("EM", "SYNTHETIC EM-like images (em_synth), compared with the paper's EM (ISBI 2012) drop"),
    "isbi2012_em": ("EM", "ISBI 2012 EM"),
    "spinal_gm": ("GM", "spinal cord gray matter challenge"),
    "nih_pancreas": ("NIH", "NIH pancreas CT"),
}
W4A6 = ("0,4", "6,0")
DEFAULTS = {"unet_margin": 2.0, "unet_min_pairs": 3}


def qif_format(df: pd.DataFrame) -> pd.Series:
    """``float``, or ``a<i>.<f>/w<i>.<f>`` (the reference's folder naming) of each run."""
    method = spec_column(df, "quant.method", "float").astype(str)
    w = spec_column(df, "quant.weight_format", "").astype(str).str.replace(",", ".")
    a = spec_column(df, "quant.act_format", "").astype(str).str.replace(",", ".")
    label = "a" + a + "/w" + w
    return pd.Series(np.where(method == "float", "float", np.where(method == "qif", label, "")), df.index)


def one_sided_interval(drops: np.ndarray, alpha: float) -> tuple[float, float]:
    """(lower, upper): the one-sided (1 − α) t bounds of the mean of ``drops`` (NaN with fewer than 2)."""
    n = len(drops)
    if n < 2:
        return float("nan"), float("nan")
    mean, se = float(drops.mean()), float(drops.std(ddof=1) / np.sqrt(n))
    half = float(stats.t.ppf(1 - alpha, n - 1) * se)
    return mean - half, mean + half


def unet_claims(df: pd.DataFrame, opt: dict[str, Any]) -> list[dict[str, Any]]:
    """``w4a6_drop_matches_paper`` per dataset and Q_{i.f} variant holding float and a6.0/w0.4 U-Net runs."""
    from qgen.analysis.claims import _header, matched, pair_keys, select

    opt = {**DEFAULTS, **opt}
    if df.empty or "test_dice" not in df.columns:
        return []
    model = spec_column(df, "model.name", "")
    fmt = qif_format(df)
    unet = df[(model == "unet") & (fmt != "")]
    if unet.empty:
        return []
    sel = select(unet, "test_dice")
    used = sel.used.assign(_fmt=qif_format(sel.used))
    data = spec_column(used, "data.name", "").astype(str)
    variant = spec_column(used, "quant.variant", "").astype(str)
    out = []
    for name in sorted(set(data)):
        paper_key, described = DATASET_PAPER.get(name, (None, name))
        in_set = used[data == name]
        floats = in_set[in_set["_fmt"] == "float"]
        low_all = in_set[in_set["_fmt"] == "a6.0/w0.4"]
        for var in sorted(set(variant[low_all.index])):
            low = low_all[variant[low_all.index] == var]
            both = pd.concat([floats, low])
            keys = [k for k in pair_keys(both) if k in floats.columns and k in low.columns]
            pairs = matched(floats, low, "test_dice", keys=keys)
            drops = 100 * (pairs["value_high"] - pairs["value_low"]).to_numpy(dtype=float)
            out.append(_claim(name, var, paper_key, described, drops, pairs, opt, sel, _header))
    return out


def _claim(
    name: str, var: str, paper_key: str | None, described: str, drops: np.ndarray, pairs: pd.DataFrame,
    opt: dict[str, Any], sel: Any, header: Any,
) -> dict[str, Any]:  # fmt: skip
    alpha, margin, min_pairs = opt["alpha"], float(opt["unet_margin"]), int(opt["unet_min_pairs"])
    paper = PAPER_DROPS.get(paper_key) if paper_key else None
    n = len(drops)
    mean = float(drops.mean()) if n else float("nan")
    lower, upper = one_sided_interval(drops, alpha)
    threshold = paper + margin if paper is not None else float("nan")
    if paper is None or n < min_pairs or not np.isfinite(upper):
        verdict = "inconclusive"
    elif upper <= threshold:
        verdict = "pass"
    elif lower > threshold:
        verdict = "fail"
    else:
        verdict = "inconclusive"
    ids = sorted({*map(str, pairs["run_high"]), *map(str, pairs["run_low"])})
    family = f"{name} (qif {var})"
    return {
        **header("w4a6_drop_matches_paper", "U-Net fixed point (AskariHemmat et al. 2019)", "test_dice"),
        "verdict": verdict,
        "dataset": name,
        "paper_dataset": paper_key,
        "data_note": described,
        "test": f"one-sided paired t bounds ({100 * (1 - alpha):g}%) of the mean dice drop float − a6.0/w0.4",
        "difference": "dice drop float − a6.0/w0.4 (dice points)",
        "paper_drop": paper,
        "margin": margin,
        "n_pairs": n,
        "groups": [{"family": family, "n": n, "mean": mean, "ci": [lower, upper], "drops": drops.tolist()}],
        "threshold": (
            f"upper bound <= paper {paper} + margin {margin} = {threshold:g} dice points; "
            f">= {min_pairs} pairs"
            if paper is not None
            else f"no paper figure for {name}"
        ),
        **sel.report(ids),
    }
