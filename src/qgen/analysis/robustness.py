"""Robustness to distortions over a runs table: quantized − FP32 accuracy on corrupted test data.

QGen (papers.md §1) reports that QAT "can improve robustness to distorted data" in a table coloured green
(better than full precision) and red (worse); its corruptions and dataset are not verified, so qgen uses the
benchmark of Hendrycks & Dietterich (2019) on every run of an experiment with the robustness step: the
``robust.*`` columns of runs.csv (qgen.measures.robustness), one accuracy per corruption and severity.

**Pairs.** Each quantized run is paired with the FP32 run equal to it in every hyperparameter outside the
quantizer and in the seed (qgen.analysis.claims.matched); runs are grouped by quantizer family and the
precision their layers compute at (qgen.analysis.claims.precision), as every claim is.

- :func:`with_relative_error`: runs.csv's ``robust.rel_ce``, Hendrycks & Dietterich's corruption error
  CE_c = Σ_s E_{s,c} / Σ_s E^{base}_{s,c} averaged over the corruptions (their mCE), with the run's FP32 twin
  as the baseline (they normalize by AlexNet, which does not exist here); 1 for the FP32 runs themselves,
  empty for a run without a twin.
- :func:`robustness_table`: per family, precision and corruption, the paired difference quantized − FP32 of
  the accuracy at each severity and their mean, as mean ± std over pairs, with n and the run ids.
- :func:`robustness_claim` ``quantized_more_robust``: the mean corrupted accuracy ``robust.acc`` is higher
  than the FP32 twin's, one two-sided paired sign test per precision (the independent unit is the quantized
  run, each with its own twin), Holm-corrected (qgen.analysis.claims.ordered_claim). It fails when a
  precision is significantly less robust, or when every precision is testable and none is more robust.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from qgen.analysis import claims as cl

#: the mean corrupted accuracy of a run (qgen.measures.robustness.summarize)
ACC = "robust.acc"


def corruption_columns(df: pd.DataFrame) -> dict[str, list[tuple[int, str]]]:
    """corruption -> [(severity, column)] of the per-cell accuracy columns ``robust.<c>.s<k>.acc``."""
    out: dict[str, list[tuple[int, str]]] = {}
    for col in df.columns:
        parts = col.split(".")
        if len(parts) == 4 and parts[0] == "robust" and parts[2].startswith("s") and parts[3] == "acc":
            out.setdefault(parts[1], []).append((int(parts[2][1:]), col))
    return {c: sorted(cells) for c, cells in out.items()}


def _arms(df: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[str, str, pd.DataFrame]]]:
    """(FP32 runs, [(family, precision label, runs)]) of the completed runs with robustness results."""
    ok = df[(df["status"] == cl.COMPLETED) & df[ACC].notna()] if ACC in df.columns else df.iloc[:0]
    method = cl.spec_column(ok, "quant.method", "float")
    floats, quantized = ok[method == "float"], ok[method != "float"]
    prec = cl.precision(quantized)
    fam_cols = cl.family_columns(quantized)
    arms = []
    groups = quantized.groupby(fam_cols, dropna=False, sort=True) if fam_cols else [((), quantized)]
    for key, fam in groups:
        key = key if isinstance(key, tuple) else (key,)
        name = cl.family_name(quantized, fam_cols, key)
        levels = sorted({(w, a) for w, a in prec.loc[fam.index].itertuples(index=False)}, reverse=True)
        for w, a in levels:
            arm = fam[(prec.loc[fam.index, "w"] == w) & (prec.loc[fam.index, "a"] == a)]
            arms.append((name, cl.level_label(w, a), arm))
    return floats, arms


def with_relative_error(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with ``robust.rel_ce`` (module docstring)."""
    cells = corruption_columns(df)
    out = df.copy()
    out["robust.rel_ce"] = np.nan
    if not cells:
        return out
    method = cl.spec_column(df, "quant.method", "float")
    keys = cl.pair_keys(df)
    table = df.assign(_row=np.arange(len(df)))
    twins = table[[*keys, "_row"]].merge(
        table.loc[method.to_numpy() == "float", [*keys, "_row"]], on=keys, suffixes=("", "_base")
    )
    twins = twins[~twins.duplicated("_row", keep=False)]  # a run with two float twins has none
    errors = {
        c: (1 - df[[col for _, col in cols]].astype(float)).sum(axis=1).to_numpy()
        for c, cols in cells.items()
    }
    for row, base in zip(twins["_row"], twins["_row_base"], strict=True):
        ratios = [e[row] / e[base] if e[base] > 0 else np.nan for e in errors.values()]
        out.iloc[row, out.columns.get_loc("robust.rel_ce")] = float(np.mean(ratios))
    return out


def robustness_table(df: pd.DataFrame) -> pd.DataFrame:
    """Long table: family, precision, corruption, one column per severity and ``mean`` (each the paired
    difference quantized − FP32 in accuracy, as "mean ± std"), ``n`` pairs, the numbers behind the cells
    (``d_s<k>``, ``d_mean``: the means) and ``run_ids`` (quantized and FP32 runs)."""
    cells = corruption_columns(df)
    floats, arms = _arms(df)
    rows = []
    for family, level, arm in arms:
        for corruption, columns in cells.items():
            row: dict[str, Any] = {"family": family, "bits": level, "corruption": corruption}
            ids: set[str] = set()
            diffs_all = []
            for severity, col in columns:
                pairs = cl.matched(floats, arm, col)
                d = (pairs["value_low"] - pairs["value_high"]).to_numpy()
                diffs_all.append(d)
                row[f"d_s{severity}"] = float(d.mean()) if len(d) else np.nan
                row[f"sd_s{severity}"] = float(d.std(ddof=1)) if len(d) > 1 else np.nan
                ids.update([*pairs["run_high"], *pairs["run_low"]])
            mean_d = np.mean(np.stack(diffs_all), axis=0) if diffs_all and len(diffs_all[0]) else np.array([])
            row["d_mean"] = float(mean_d.mean()) if len(mean_d) else np.nan
            row["sd_mean"] = float(mean_d.std(ddof=1)) if len(mean_d) > 1 else np.nan
            row["n"] = len(mean_d)
            row["run_ids"] = " ".join(sorted(ids))
            rows.append(row)
    return pd.DataFrame(rows)


def severities(table: pd.DataFrame) -> list[int]:
    return sorted(int(c[3:]) for c in table.columns if c.startswith("d_s"))


def robustness_claim(df: pd.DataFrame, opt: dict[str, Any]) -> dict[str, Any]:
    """``quantized_more_robust`` (module docstring)."""
    sel = cl.select(df, ACC)
    floats, arms = _arms(sel.used)
    comparisons = [
        cl.Comparison(family, "FP32", level, cl.matched(floats, arm, ACC)) for family, level, arm in arms
    ]
    return {
        **cl._header("quantized_more_robust", "QGen", ACC),
        **cl.ordered_claim(comparisons, "higher", opt, sel),
    }
