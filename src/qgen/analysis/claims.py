"""The papers' headline claims as checks over a runs table, each with the numbers behind it.

A failing claim is reported as failing, never dropped. Pairs are matched on every hyperparameter and
the seed, differing only in the quantizer ("paired by hyperparameters and seed"); "as bits drop"
compares adjacent precisions present in the table (FP32 → 8 → 4 → 2 ...). Sign tests are one-sided
binomial tests of the share of pairs that move in the claimed direction (ties dropped).

| claim | source | check |
| --- | --- | --- |
| gap_shrinks_as_bits_drop | QGen, QReg | gap lower for the lower precision; sign test p < α |
| eight_bit_gap_close_to_float | QGen, QReg | 95 % t-interval of gap(8) − gap(FP32) inside ± tolerance |
| train_loss_rises_as_bits_drop | QGen | training CE higher for the lower precision; sign test p < α |
| quantized_models_are_flatter | QGen | PAC-Bayes σ′ larger for the lower precision; sign test p < α |
| qgen_measure_correlates_with_gap | QGen | bootstrap 95 % interval of τ(bound, gap) above 0 |
| noise_variance_is_delta_squared_over_12 | QGen, QReg | mean weight Var(θ)/(Δ²/12) within 1 ± tolerance |
| binaryconnect_lowers_test_error | BinaryConnect | BC test error below its no-regularizer twin's; sign test |
| binaryconnect_shrinks_gap | BinaryConnect | BC gap below its no-regularizer twin's; sign test p < α |
| dynamic_fixed_10_12_matches_float | Courbariaux 2014 | mean test error of DFXP 10/12 − float ≤ tolerance |
| fixed_20_20_matches_float | Courbariaux 2014 | mean test error of FXP 20/20 − float ≤ tolerance |
| dynamic_fixed_beats_fixed | Courbariaux 2014 | DFXP test error below FXP's at equal bit widths; sign test |

The QGen/QReg claims are checked on the bit-width family (float, uniform, LSQ runs); each paper's
claims appear only for experiments that hold the runs they compare (a BinaryConnect claim needs BC
runs and their no-regularizer twins, a 2014 claim needs maxout runs).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from qgen.analysis.correlation import bootstrap_tau, kendall_tau
from qgen.runs_table import bits_order, spec_column, spec_columns

#: quantization methods of the bit-width family the QGen/QReg claims are about
BIT_WIDTH_METHODS = ("float", "uniform", "lsq")

DEFAULTS: dict[str, Any] = {
    "alpha": 0.05,
    "gap": "gap_acc",
    "eight_bit_tolerance": 0.01,
    "low_precision_tolerance": 0.01,
    "var_ratio_tolerance": 0.1,
    "measure": "bound.value",
    "resamples": 1000,
    "seed": 0,
}


def pair_keys(df: pd.DataFrame) -> list[str]:
    """Columns that identify a configuration apart from its quantizer (seed included)."""
    return [c for c in spec_columns(df) if not c.startswith("quant.")] + ["seed"]


def adjacent_pairs(df: pd.DataFrame, column: str) -> pd.DataFrame:
    """(higher precision, lower precision) value pairs of ``column`` for adjacent bit widths."""
    ok = df[df["status"] == "completed"]
    order = bits_order(ok["bits"])
    rows = []
    keys = pair_keys(ok)
    for _, group in ok.groupby(keys, dropna=False):
        by_bits = group.groupby("bits")[column].mean()
        present = [b for b in order if b in by_bits.index and np.isfinite(by_bits[b])]
        for hi, lo in itertools.pairwise(present):
            rows.append({"high": hi, "low": lo, "value_high": by_bits[hi], "value_low": by_bits[lo]})
    return pd.DataFrame(rows, columns=["high", "low", "value_high", "value_low"])


def _sign_test(
    pairs: pd.DataFrame, direction: str, alpha: float, name: str, source: str, metric: str
) -> dict:
    diff = pairs["value_low"] - pairs["value_high"]
    diff = diff[diff != 0]
    wins = int((diff < 0).sum() if direction == "lower" else (diff > 0).sum())
    n = len(diff)
    p = float(stats.binomtest(wins, n, 0.5, alternative="greater").pvalue) if n else float("nan")
    by_step = {
        f"{h}->{lo}": float((g["value_low"] - g["value_high"]).mean())
        for (h, lo), g in pairs.groupby(["high", "low"], sort=False)
    }
    return {
        "claim": name,
        "source": source,
        "metric": metric,
        "test": f"one-sided sign test, {direction} at lower bits",
        "n_pairs": n,
        "in_direction": wins,
        "share": wins / n if n else float("nan"),
        "p_value": p,
        "mean_change_by_step": by_step,
        "threshold": f"p < {alpha}",
        "pass": bool(n and p < alpha),
        **({"run_ids": " ".join(pairs["run_ids"])} if "run_ids" in pairs else {}),
    }


def _method(df: pd.DataFrame) -> pd.Series:
    return spec_column(df, "quant.method", "float")


def check_claims(df: pd.DataFrame, options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    opt = {**DEFAULTS, **(options or {})}
    method = _method(df)
    family = df[method.isin(BIT_WIDTH_METHODS)]
    claims = qgen_claims(family, opt) if (family["bits"] != "FP32").any() else []
    return claims + binaryconnect_claims(df, opt) + low_precision_claims(df, opt)


def qgen_claims(df: pd.DataFrame, opt: dict[str, Any]) -> list[dict[str, Any]]:
    """QGen's and QReg's claims over float / uniform / LSQ runs at several bit widths."""
    gap, alpha = opt["gap"], opt["alpha"]
    claims = [
        _sign_test(adjacent_pairs(df, gap), "lower", alpha, "gap_shrinks_as_bits_drop", "QGen, QReg", gap),
    ]
    # 8-bit vs float: equivalence within a tolerance
    pairs = adjacent_pairs(df[df["bits"].isin(["FP32", "8"])], gap)
    diff = (pairs["value_low"] - pairs["value_high"]).to_numpy()
    tol = opt["eight_bit_tolerance"]
    if len(diff) >= 2:
        mean, se = float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff)))
        half = float(stats.t.ppf(0.975, len(diff) - 1) * se)
        lo, hi = mean - half, mean + half
    else:
        mean, lo, hi = (float(diff.mean()) if len(diff) else float("nan")), float("nan"), float("nan")
    claims.append(
        {
            "claim": "eight_bit_gap_close_to_float",
            "source": "QGen, QReg",
            "metric": gap,
            "test": "paired 95% t-interval of gap(8) - gap(FP32)",
            "n_pairs": len(diff),
            "mean_difference": mean,
            "ci": [lo, hi],
            "threshold": f"interval within ±{tol}",
            "pass": bool(np.isfinite(lo) and -tol <= lo and hi <= tol),
        }
    )
    claims.append(
        _sign_test(
            adjacent_pairs(df, "train_ce"),
            "higher",
            alpha,
            "train_loss_rises_as_bits_drop",
            "QGen",
            "train_ce",
        )
    )
    if "pacbayes.sigma" in df.columns:
        claims.append(
            _sign_test(
                adjacent_pairs(df, "pacbayes.sigma"),
                "higher",
                alpha,
                "quantized_models_are_flatter",
                "QGen",
                "pacbayes.sigma",
            )
        )
    measure = opt["measure"]
    if measure in df.columns:
        ok = df[(df["status"] == "completed")][[measure, gap]].replace([np.inf, -np.inf], np.nan).dropna()
        tau = kendall_tau(ok[measure], ok[gap])
        lo, hi = bootstrap_tau(ok[measure], ok[gap], resamples=opt["resamples"], seed=opt["seed"])
        claims.append(
            {
                "claim": "qgen_measure_correlates_with_gap",
                "source": "QGen",
                "metric": f"tau({measure}, {gap})",
                "test": "percentile bootstrap 95% interval of Kendall tau",
                "n": len(ok),
                "tau": tau,
                "ci": [lo, hi],
                "threshold": "interval above 0",
                "pass": bool(np.isfinite(lo) and lo > 0),
            }
        )
    if "noise.weight.var_ratio" in df.columns:
        ratios = df.loc[df["status"] == "completed", "noise.weight.var_ratio"].dropna()
        tol = opt["var_ratio_tolerance"]
        mean = float(ratios.mean()) if len(ratios) else float("nan")
        by_bits = {
            str(b): float(v)
            for b, v in df[df["status"] == "completed"]
            .groupby("bits")["noise.weight.var_ratio"]
            .mean()
            .dropna()
            .items()
        }
        claims.append(
            {
                "claim": "noise_variance_is_delta_squared_over_12",
                "source": "QGen, QReg",
                "metric": "noise.weight.var_ratio",
                "test": "mean over quantized runs",
                "n": len(ratios),
                "mean": mean,
                "by_bits": by_bits,
                "threshold": f"within 1 ± {tol}",
                "pass": bool(np.isfinite(mean) and abs(mean - 1) <= tol),
            }
        )
    return claims


def paired_with(df: pd.DataFrame, reference: pd.Series, other: pd.Series, column: str) -> pd.DataFrame:
    """(reference, other) values of ``column`` for runs that share every non-quant hyperparameter and
    the seed; ``reference``/``other`` select the two sides (several ``other`` runs may share one
    reference run)."""
    ok = df[df["status"] == "completed"]
    keys = pair_keys(ok)
    left = ok[reference.reindex(ok.index, fill_value=False)]
    right = ok[other.reindex(ok.index, fill_value=False)]
    merged = right.merge(left[[*keys, column, "run_id"]], on=keys, suffixes=("", "_ref"))
    return pd.DataFrame(
        {
            "high": "reference",
            "low": merged.get("quant", "other"),
            "value_high": merged[f"{column}_ref"],
            "value_low": merged[column],
            "run_ids": merged["run_id_ref"] + " " + merged["run_id"],
        }
    )


def binaryconnect_claims(df: pd.DataFrame, opt: dict[str, Any]) -> list[dict[str, Any]]:
    """BinaryConnect "acts as a regularizer": BC runs against their no-regularizer twins (float, no
    dropout, same hyperparameters and seed)."""
    method = _method(df)
    binary = method == "binary"
    dropout = spec_column(df, "model.dropout", 0).fillna(0)
    baseline = (method == "float") & (dropout == 0)
    if not binary.any() or not baseline.any():
        return []
    out = []
    for name, column in (
        ("binaryconnect_lowers_test_error", "test_error"),
        ("binaryconnect_shrinks_gap", opt["gap"]),
    ):
        pairs = paired_with(df, baseline, binary, column)
        if len(pairs):
            out.append(_sign_test(pairs, "lower", opt["alpha"], name, "BinaryConnect", column))
    return out


def _mean_gap_to_float(
    df: pd.DataFrame, name: str, fmt: str, prop: int, update: int, tol: float
) -> dict[str, Any] | None:
    method = _method(df)
    sel = (method == fmt) & (df.get("quant.prop_bits") == prop) & (df.get("quant.update_bits") == update)
    pairs = paired_with(df, method == "float", sel, "test_error")
    if not len(pairs):
        return None
    diff = (pairs["value_low"] - pairs["value_high"]).to_numpy()
    mean = float(diff.mean())
    label = "DFXP" if fmt == "dynamic_fixed" else "FXP"
    return {
        "claim": name,
        "source": "Courbariaux et al. 2014",
        "metric": "test_error",
        "test": f"mean paired difference, {label} {prop}/{update} minus float",
        "n": len(diff),
        "mean": mean,
        "differences": [float(d) for d in diff],
        "threshold": f"mean difference <= {tol}",
        "pass": bool(mean <= tol),
        "run_ids": " ".join(pairs["run_ids"]),
    }


def low_precision_claims(df: pd.DataFrame, opt: dict[str, Any]) -> list[dict[str, Any]]:
    """Courbariaux et al. (2014): 10-bit dynamic fixed point propagations (12-bit updates) train as well
    as float, fixed point needs about 20 bits, and dynamic fixed point beats fixed point."""
    if "model.name" not in df.columns or not (df["model.name"] == "maxout").any():
        return []
    maxout = df[df["model.name"] == "maxout"]
    tol = opt["low_precision_tolerance"]
    out = [
        c
        for c in (
            _mean_gap_to_float(maxout, "dynamic_fixed_10_12_matches_float", "dynamic_fixed", 10, 12, tol),
            _mean_gap_to_float(maxout, "fixed_20_20_matches_float", "fixed", 20, 20, tol),
        )
        if c is not None
    ]
    method = _method(maxout)
    if (method == "fixed").any() and (method == "dynamic_fixed").any():
        keys = [*pair_keys(maxout), "quant.prop_bits", "quant.update_bits"]
        ok = maxout[maxout["status"] == "completed"]
        fx, dfx = ok[_method(ok) == "fixed"], ok[_method(ok) == "dynamic_fixed"]
        merged = dfx.merge(fx[[*keys, "test_error", "run_id"]], on=keys, suffixes=("", "_fxp"))
        pairs = pd.DataFrame(
            {
                "high": "fixed",
                "low": "dynamic_fixed",
                "value_high": merged["test_error_fxp"],
                "value_low": merged["test_error"],
                "run_ids": merged["run_id_fxp"] + " " + merged["run_id"],
            }
        )
        if len(pairs):
            out.append(
                _sign_test(
                    pairs,
                    "lower",
                    opt["alpha"],
                    "dynamic_fixed_beats_fixed",
                    "Courbariaux et al. 2014",
                    "test_error",
                )
            )
    return out


def claims_markdown(claims: list[dict[str, Any]], title: str) -> str:
    lines = [
        f"# {title}",
        "",
        "| claim | source | metric | result | threshold | verdict | run ids |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in claims:
        if "p_value" in c:
            result = f"{c['in_direction']}/{c['n_pairs']} pairs in direction, p = {c['p_value']:.3g}"
        elif "tau" in c:
            result = f"τ = {c['tau']:.3f}, 95% CI [{c['ci'][0]:.3f}, {c['ci'][1]:.3f}], n = {c['n']}"
        elif "ci" in c:
            lo, hi = c["ci"]
            result = f"mean diff {c['mean_difference']:.4f}, 95% CI [{lo:.4f}, {hi:.4f}], n = {c['n_pairs']}"
        elif "differences" in c:
            result = f"mean difference {c['mean']:.4f} over {c['n']} seed pairs"
        else:
            result = f"mean {c['mean']:.3f} over {c['n']} runs"
        verdict = "**pass**" if c["pass"] else "**FAIL**"
        lines.append(
            f"| {c['claim']} | {c['source']} | {c['metric']} | {result} | {c['threshold']} | {verdict} "
            f"| {c.get('run_ids', '')} |"
        )
    return "\n".join(lines) + "\n"
