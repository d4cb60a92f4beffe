"""The papers' headline claims as checks over a runs table, each with the numbers behind it.

Every claim comes out ``pass``, ``fail`` or ``inconclusive`` (``pass`` is kept as a boolean beside the
verdict). A failing claim is reported as failing, never dropped; a claim that the runs cannot speak to is
``inconclusive``, never ``pass``. Each claim states the runs it used and those it excluded, with the reason
and the run ids.

**Which runs speak to a claim.** A run enters a claim only if it completed and, when it was trained to the
stopping rule (``train.target_ce`` set, the *target* regime), reached its target (``fit.stop_reason ==
target_ce``); runs trained for a fixed epoch budget (``target_ce: null``, the *fixed-epochs* regime) enter
when they completed. Claims about training loss use fixed-epoch runs only: the stopping rule equalizes the
training CE of every run that reaches it. Flatness claims also drop runs whose σ′ search did not converge or
ended at a bound of its interval (``search.pacbayes.converged`` / ``search.pacbayes.bound``). A run whose
metric is not finite cannot enter either. The 2014 claims, about test error, also admit ``degenerate`` runs
(a format that did not train is that paper's result). Each claim reports its ``regime``.

**Pairs.** Runs are paired on every hyperparameter outside the quantizer and the seed. The quantizer setting
is matched whole: a *family* is the quantizer with everything but its precision fixed (method, per-channel,
first/last-layer policy, grid, ...), and the *precision* of a run is what its layers compute at
(``precision.weight_bits`` / ``precision.act_bits`` of runs.csv, the lowest over the layers; the requested
``quant.weight_bits`` / ``quant.act_bits`` where a table lacks them). Uniform and LSQ, or W4A4 and W4A8, are
different arms and are never pooled; FP32 is the top of every family's ladder.

**"X falls (rises) as bits drop."** Along each family's ladder (FP32 → the precisions present, high to
low, each a step to a precision that is lower or equal in both weights and activations), one two-sided
paired sign test per step, Holm-corrected over the claim's steps; a significant step counts for or against
the claim by the side most of its pairs move to. ``pass``: every step has at least ``min_pairs`` non-tied
pairs, at least one step is significant in the claimed direction and none against it. ``fail``: some step
is significant against it, or every step is testable and none supports it. Otherwise ``inconclusive``.
(The steps share runs, so they are not independent; Holm's correction holds under any dependence.)

**Equivalence** ("8-bit ≈ float", "DFXP 10/12 ≈ float"): two one-sided paired t-tests (TOST) of the mean
difference against ± the configured tolerance, per family, Holm-corrected over families; ``pass`` when both
one-sided tests reject in every family with at least ``min_pairs`` pairs; the (1 − 2α) interval is printed.

| claim | source | check |
| --- | --- | --- |
| gap_shrinks_as_bits_drop | QGen, QReg | gap lower at lower precision, per step (sign tests, Holm) |
| eight_bit_gap_close_to_float | QGen, QReg | TOST of gap(8) − gap(FP32) against ± eight_bit_tolerance |
| train_loss_rises_as_bits_drop | QGen | training CE higher at lower precision (fixed-epoch runs only) |
| quantized_models_are_flatter | QGen | PAC-Bayes σ′ larger at lower precision (converged searches only) |
| qgen_measure_correlates_with_gap | QGen | bootstrap 95 % interval of τ(measure, gap) above 0 |
| noise_variance_is_delta_squared_over_12 | QGen, QReg | per precision: TOST of Var(θ)/(Δ²/12) − 1 |
| binaryconnect_lowers_test_error | BinaryConnect | each BC arm below its no-regularizer twin (Holm) |
| binaryconnect_shrinks_gap | BinaryConnect | each BC arm's gap below its twin's (sign tests, Holm) |
| dynamic_fixed_10_12_matches_float | Courbariaux 2014 | TOST of test error DFXP 10/12 − float |
| fixed_20_20_matches_float | Courbariaux 2014 | TOST of test error FXP 20/20 − float |
| dynamic_fixed_beats_fixed | Courbariaux 2014 | DFXP test error below FXP's at equal bit widths (sign test) |

The QGen/QReg claims are checked on the bit-width family (float, uniform, LSQ runs); each paper's claims
appear only for experiments that hold the runs they compare. The claims need ``min_pairs`` (default 10)
pairs (runs, for the single-sample checks) per test; fewer make them ``inconclusive``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from qgen.analysis.correlation import bootstrap_tau, kendall_tau
from qgen.run_status import COMPLETED, DEGENERATE
from qgen.runs_table import RUNS_ALL, spec_column, spec_columns

#: quantization methods of the bit-width family the QGen/QReg claims are about
BIT_WIDTH_METHODS = ("float", "uniform", "lsq")
VERDICTS = ("pass", "fail", "inconclusive")
#: the σ′ search whose outcome flatness claims rely on (search.<name>.converged / .bound in runs.csv)
FLATNESS_SEARCH = "pacbayes"

DEFAULTS: dict[str, Any] = {
    "alpha": 0.05,
    "gap": "gap_acc",
    "eight_bit_tolerance": 0.01,
    "low_precision_tolerance": 0.01,
    "var_ratio_tolerance": 0.1,
    "measure": "bound.value",
    "min_pairs": 10,
    "resamples": 1000,
    "seed": 0,
}

TARGET, FIXED = "target", "fixed_epochs"
#: statuses the 2014 claims compare: a degenerate run (a format that did not train: accuracy at chance) is
#: the paper's result at that bit width (fixed point at few bits), and its test error counts, as in the paper
#: tables (qgen.report.papers); the gap- and flatness-based QGen claims use completed runs only
LOW_PRECISION_STATUSES = (COMPLETED, DEGENERATE)


# ---------------------------------------------------------------- which runs can speak to a claim


def regime(df: pd.DataFrame) -> pd.Series:
    """``target`` for runs trained to the stopping rule (``train.target_ce`` set), else ``fixed_epochs``."""
    target = spec_column(df, "train.target_ce", np.nan)
    return pd.Series(np.where(target.notna(), TARGET, FIXED), index=df.index)


def exclusion_reasons(
    df: pd.DataFrame,
    metric: str,
    *,
    regimes: tuple[str, ...] = (TARGET, FIXED),
    flatness: bool = False,
    statuses: tuple[str, ...] = (COMPLETED,),
) -> pd.Series:
    """Why each run cannot enter a claim on ``metric`` ("" where it can); the first reason that applies."""
    reason = pd.Series("", index=df.index, dtype=object)

    def mark(mask: pd.Series | np.ndarray, why: str | pd.Series) -> None:
        hit = (reason == "") & pd.Series(mask, index=df.index).fillna(False).astype(bool)
        reason[hit] = why[hit] if isinstance(why, pd.Series) else why

    mark(~df["status"].isin(statuses), "status " + df["status"].astype(str))
    run_regime = regime(df)
    stop = spec_column(df, "fit.stop_reason", "target_ce")
    finished = df["status"] == COMPLETED  # a degenerate run (where admitted) stopped for its own reason
    mark(finished & (run_regime == TARGET) & (stop != "target_ce"), "stopping target not reached")
    for r in (TARGET, FIXED):
        if r not in regimes:
            why = (
                "target regime: the stopping rule equalizes training CE"
                if r == TARGET
                else "fixed-epochs regime not used by this claim"
            )
            mark(run_regime == r, why)
    if flatness:
        converged = spec_column(df, f"search.{FLATNESS_SEARCH}.converged", True)
        at_bound = spec_column(df, f"search.{FLATNESS_SEARCH}.bound", "none").fillna("none").astype(str)
        mark(~converged.fillna(False).astype(bool), "σ′ search did not converge")
        mark(at_bound != "none", "σ′ search ended at its " + at_bound + " bound")
    values = pd.to_numeric(df[metric], errors="coerce") if metric in df.columns else np.nan
    mark(~np.isfinite(pd.Series(values, index=df.index).astype(float)), f"{metric} not finite")
    return reason


@dataclass
class Selection:
    """The runs a claim uses and those it leaves out, by reason."""

    used: pd.DataFrame
    excluded: dict[str, list[str]] = field(default_factory=dict)

    def report(self, used_ids: list[str] | None = None) -> dict[str, Any]:
        ids = list(self.used["run_id"]) if used_ids is None else used_ids
        regimes = sorted(set(regime(self.used[self.used["run_id"].isin(ids)])))
        return {
            "regime": "+".join(regimes) if regimes else "none",
            "n_runs_used": len(ids),
            "n_runs_excluded": sum(len(v) for v in self.excluded.values()),
            "excluded": self.excluded,
            "run_ids": " ".join(ids) if ids else RUNS_ALL,  # none used: all were considered (see excluded)
        }


def select(df: pd.DataFrame, metric: str, **kwargs: Any) -> Selection:
    reasons = exclusion_reasons(df, metric, **kwargs)
    excluded: dict[str, list[str]] = {}
    for rid, why in zip(df["run_id"], reasons, strict=True):
        if why:
            excluded.setdefault(str(why), []).append(str(rid))
    return Selection(df[reasons == ""], excluded)


# ---------------------------------------------------------------- precision ladders and matched pairs


def pair_keys(df: pd.DataFrame) -> list[str]:
    """Columns that identify a configuration apart from its quantizer (seed included)."""
    return [c for c in spec_columns(df) if not c.startswith("quant.")] + ["seed"]


def _method(df: pd.DataFrame) -> pd.Series:
    return spec_column(df, "quant.method", "float")


def precision(df: pd.DataFrame) -> pd.DataFrame:
    """(w, a): the precision runs compute at, lowest over their layers; ∞ for float weights/activations."""
    out = {}
    for side in ("weight", "act"):
        col = f"precision.{side}_bits"
        values = df[col] if col in df.columns else spec_column(df, f"quant.{side}_bits", np.nan)
        values = pd.to_numeric(values, errors="coerce").astype(float)
        out[side[0]] = values.where(values.notna() & (_method(df) != "float"), np.inf)
    return pd.DataFrame(out, index=df.index)


def family_columns(df: pd.DataFrame) -> list[str]:
    """The quantizer setting except its precision: the arm a precision ladder runs along."""
    return [
        c
        for c in spec_columns(df)
        if c.startswith("quant.") and c not in ("quant.weight_bits", "quant.act_bits")
    ]


def family_name(df: pd.DataFrame, fam_cols: list[str], key: tuple) -> str:
    """A family's name for tables: its method, and the settings that tell it from the table's others."""
    values = dict(zip(fam_cols, key, strict=True))
    varying = [c for c in fam_cols if c != "quant.method" and df[c].astype(str).nunique() > 1]
    extra = [f"{c.removeprefix('quant.')}={values[c]}" for c in varying if pd.notna(values[c])]
    return " ".join([str(values.get("quant.method", "")), *extra]).strip()


def level_label(w: float, a: float) -> str:
    if np.isinf(w):
        return "FP32"
    a_text = "fp" if np.isinf(a) else f"{a:g}"
    return f"{w:g}" if a == w else f"w{w:g}a{a_text}"


def matched(
    high: pd.DataFrame, low: pd.DataFrame, column: str, extra_keys: tuple[str, ...] = ()
) -> pd.DataFrame:
    """Pairs of runs equal in every non-quantizer hyperparameter, the seed and ``extra_keys``."""
    keys = [*pair_keys(pd.concat([high, low])), *extra_keys]
    merged = low[[*keys, column, "run_id"]].merge(
        high[[*keys, column, "run_id"]], on=keys, suffixes=("_low", "_high")
    )
    return pd.DataFrame(
        {
            "value_high": merged[f"{column}_high"].astype(float).to_numpy(),
            "value_low": merged[f"{column}_low"].astype(float).to_numpy(),
            "run_high": merged["run_id_high"].to_numpy(),
            "run_low": merged["run_id_low"].to_numpy(),
        }
    )


@dataclass
class Comparison:
    """One matched comparison: runs of arm ``high`` against runs of arm ``low``."""

    family: str
    high: str
    low: str
    pairs: pd.DataFrame


def ladder_comparisons(df: pd.DataFrame, column: str) -> list[Comparison]:
    """Adjacent steps down each quantizer family's precision ladder, FP32 at the top of every ladder."""
    prec = precision(df)
    is_float = _method(df) == "float"
    floats = df[is_float]
    quantized = df[~is_float]
    fam_cols = family_columns(quantized)
    out: list[Comparison] = []
    groups = quantized.groupby(fam_cols, dropna=False, sort=True) if fam_cols else [((), quantized)]
    for key, fam in groups:
        key = key if isinstance(key, tuple) else (key,)
        name = family_name(quantized, fam_cols, key)
        levels = sorted({(w, a) for w, a in prec.loc[fam.index].itertuples(index=False)}, reverse=True)
        arms = {
            lv: fam[(prec.loc[fam.index, "w"] == lv[0]) & (prec.loc[fam.index, "a"] == lv[1])]
            for lv in levels
        }
        if len(floats):
            levels, arms = [(np.inf, np.inf), *levels], {(np.inf, np.inf): floats, **arms}
        for hi, lo in itertools.pairwise(levels):
            if lo[0] <= hi[0] and lo[1] <= hi[1]:
                pairs = matched(arms[hi], arms[lo], column)
                out.append(Comparison(name, level_label(*hi), level_label(*lo), pairs))
    return out


# ---------------------------------------------------------------- tests


def holm(p_values: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (valid under any dependence between the tests)."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p)
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return [float(v) for v in adjusted]


def sign_test(diff: np.ndarray) -> dict[str, Any]:
    """Two-sided binomial sign test of paired differences (ties dropped)."""
    diff = diff[diff != 0]
    n, below = len(diff), int((diff < 0).sum())
    p = float(stats.binomtest(below, n, 0.5, alternative="two-sided").pvalue) if n else float("nan")
    return {"n_pairs": n, "below": below, "p_value": p}


def ordered_claim(
    comparisons: list[Comparison], direction: str, opt: dict[str, Any], selection: Selection
) -> dict[str, Any]:
    """Verdict of "the metric moves in ``direction`` ("lower"/"higher") at the lower arm" over comparisons:
    one two-sided sign test per comparison, Holm-corrected over the testable comparisons; a significant
    comparison supports the claim or goes against it by the side most of its pairs move to."""
    alpha, min_pairs = opt["alpha"], opt["min_pairs"]
    steps = []
    for comp in comparisons:
        diff = (comp.pairs["value_low"] - comp.pairs["value_high"]).to_numpy()
        test = sign_test(diff)
        in_direction = test["below"] if direction == "lower" else test["n_pairs"] - test["below"]
        steps.append(
            {
                "family": comp.family,
                "step": f"{comp.high}->{comp.low}",
                "n_pairs": test["n_pairs"],
                "in_direction": in_direction,
                "mean_change": float(diff.mean()) if len(diff) else float("nan"),
                "p_value": test["p_value"],
                "testable": test["n_pairs"] >= min_pairs,
                "run_ids": " ".join([*comp.pairs["run_high"], *comp.pairs["run_low"]]),
            }
        )
    testable = [s for s in steps if s["testable"]]
    for s, p in zip(testable, holm([s["p_value"] for s in testable]), strict=True):
        s["p_holm"] = p
        s["outcome"] = "n.s." if p >= alpha else "with" if 2 * s["in_direction"] > s["n_pairs"] else "against"
    supports = [s for s in testable if s["outcome"] == "with"]
    against = [s for s in testable if s["outcome"] == "against"]
    if against:
        verdict = "fail"
    elif not steps or len(testable) < len(steps):
        verdict = "inconclusive"
    else:
        verdict = "pass" if supports else "fail"
    used = sorted({rid for s in steps for rid in s["run_ids"].split()})
    return {
        "verdict": verdict,
        "test": f"two-sided paired sign test per step ({direction} at the lower arm claimed), Holm-corrected",
        "n_pairs": sum(s["n_pairs"] for s in steps),
        "in_direction": sum(s["in_direction"] for s in steps),
        "steps": steps,
        "threshold": f"Holm p < {alpha} with the claim at some step, none against; >= {min_pairs} pairs/step",
        **selection.report(used),
    }


def tost(diff: np.ndarray, tol: float, alpha: float) -> dict[str, Any]:
    """Two one-sided t-tests of mean(diff) against ±tol, with the (1 − 2α) interval."""
    n = len(diff)
    if n < 2:
        mean = float(diff.mean()) if n else float("nan")
        return {"n": n, "mean": mean, "ci": [float("nan")] * 2, "p_value": float("nan")}
    mean, se = float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(n))
    if se == 0:
        p = 0.0 if abs(mean) < tol else 1.0
        return {"n": n, "mean": mean, "ci": [mean, mean], "p_value": p}
    dof = n - 1
    p_low = float(stats.t.sf((mean + tol) / se, dof))  # H0: mean <= -tol
    p_high = float(stats.t.cdf((mean - tol) / se, dof))  # H0: mean >= +tol
    half = float(stats.t.ppf(1 - alpha, dof) * se)
    return {"n": n, "mean": mean, "ci": [mean - half, mean + half], "p_value": max(p_low, p_high)}


def equivalence_claim(
    groups: list[tuple[str, np.ndarray, list[str]]],
    tol: float,
    opt: dict[str, Any],
    selection: Selection,
    what: str,
) -> dict[str, Any]:
    """TOST per group (family), Holm over groups; ``groups`` are (name, differences, run ids)."""
    alpha, min_pairs = opt["alpha"], opt["min_pairs"]
    rows = [
        {"family": name, **tost(diff, tol, alpha), "run_ids": " ".join(ids)} for name, diff, ids in groups
    ]
    testable = [r for r in rows if r["n"] >= min_pairs and np.isfinite(r["p_value"])]
    for r, p in zip(testable, holm([r["p_value"] for r in testable]), strict=True):
        r["p_holm"] = p
    if not rows or len(testable) < len(rows):
        verdict = "inconclusive"
    else:
        verdict = "pass" if all(r["p_holm"] < alpha for r in rows) else "fail"
    used = sorted({rid for r in rows for rid in r["run_ids"].split()})
    return {
        "verdict": verdict,
        "test": f"two one-sided paired t-tests (TOST) of {what}, Holm over families",
        "difference": what,
        "n_pairs": sum(r["n"] for r in rows),
        "groups": rows,
        "threshold": f"{100 * (1 - 2 * alpha):g}% interval within ±{tol}; >= {min_pairs} pairs",
        **selection.report(used),
    }


# ---------------------------------------------------------------- the claims


def check_claims(df: pd.DataFrame, options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every claim the runs table holds runs for, in a fixed order."""
    opt = {**DEFAULTS, **(options or {})}
    df = df.reset_index(drop=True)
    method = _method(df)
    family = df[method.isin(BIT_WIDTH_METHODS)]
    claims = qgen_claims(family, opt) if (method.isin(BIT_WIDTH_METHODS[1:])).any() else []
    return [_finish(c) for c in claims + binaryconnect_claims(df, opt) + low_precision_claims(df, opt)]


def _finish(claim: dict[str, Any]) -> dict[str, Any]:
    assert claim["verdict"] in VERDICTS
    claim["pass"] = claim["verdict"] == "pass"
    return claim


def _header(name: str, source: str, metric: str) -> dict[str, Any]:
    return {"claim": name, "source": source, "metric": metric}


def _ladder(
    df: pd.DataFrame, name: str, source: str, metric: str, direction: str, opt: dict[str, Any], **kwargs: Any
) -> dict[str, Any]:
    sel = select(df, metric, **kwargs)
    return {
        **_header(name, source, metric),
        **ordered_claim(ladder_comparisons(sel.used, metric), direction, opt, sel),
    }


def qgen_claims(df: pd.DataFrame, opt: dict[str, Any]) -> list[dict[str, Any]]:
    """QGen's and QReg's claims over float / uniform / LSQ runs at several precisions."""
    gap = opt["gap"]
    claims = [_ladder(df, "gap_shrinks_as_bits_drop", "QGen, QReg", gap, "lower", opt)]

    sel = select(df, gap)
    groups = [
        (
            c.family,
            (c.pairs["value_low"] - c.pairs["value_high"]).to_numpy(),
            [*c.pairs["run_high"], *c.pairs["run_low"]],
        )
        for c in ladder_comparisons(sel.used, gap)
        if c.high == "FP32" and c.low == "8"
    ]
    claims.append(
        {
            **_header("eight_bit_gap_close_to_float", "QGen, QReg", gap),
            **equivalence_claim(groups, opt["eight_bit_tolerance"], opt, sel, "gap(8) - gap(FP32)"),
        }
    )
    claims.append(
        _ladder(df, "train_loss_rises_as_bits_drop", "QGen", "train_ce", "higher", opt, regimes=(FIXED,))
    )
    if "pacbayes.sigma" in df.columns:
        claims.append(
            _ladder(
                df, "quantized_models_are_flatter", "QGen", "pacbayes.sigma", "higher", opt, flatness=True
            )
        )
    measure = opt["measure"]
    if measure in df.columns:
        claims.append(correlation_claim(df, measure, gap, opt))
    if "noise.weight.var_ratio" in df.columns:
        claims.append(noise_variance_claim(df, opt))
    return claims


def correlation_claim(df: pd.DataFrame, measure: str, gap: str, opt: dict[str, Any]) -> dict[str, Any]:
    sel = select(df, measure)
    used = sel.used[np.isfinite(sel.used[gap].astype(float))]
    tau = kendall_tau(used[measure], used[gap])
    lo, hi = bootstrap_tau(used[measure], used[gap], resamples=opt["resamples"], seed=opt["seed"])
    if len(used) < opt["min_pairs"] or not np.isfinite(lo):
        verdict = "inconclusive"
    else:
        verdict = "pass" if lo > 0 else "fail"
    return {
        **_header("qgen_measure_correlates_with_gap", "QGen", f"tau({measure}, {gap})"),
        "verdict": verdict,
        "test": "bootstrap 95% interval of Kendall tau (see qgen.analysis.correlation.bootstrap_tau)",
        "n": len(used),
        "tau": tau,
        "ci": [lo, hi],
        "threshold": f"interval above 0; >= {opt['min_pairs']} runs",
        **sel.report(list(used["run_id"])),
    }


def noise_variance_claim(df: pd.DataFrame, opt: dict[str, Any]) -> dict[str, Any]:
    """Var(θ) ≈ Δ²/12, judged per family and precision, so that 8-bit runs cannot mask 2-bit ones."""
    metric = "noise.weight.var_ratio"
    sel = select(df[_method(df) != "float"], metric)
    used = sel.used
    prec = precision(used)
    groups = []
    fam_cols = family_columns(used)
    keys = [used[c].astype(str) for c in fam_cols] + [prec["w"], prec["a"]]
    for key, arm in used.groupby(keys, sort=True) if len(used) else []:
        fam = family_name(used, fam_cols, key[:-2])
        label = level_label(*key[-2:])
        groups.append((f"{fam} {label}", arm[metric].astype(float).to_numpy() - 1.0, list(arm["run_id"])))
    claim = equivalence_claim(groups, opt["var_ratio_tolerance"], opt, sel, "Var(θ)/(Δ²/12) − 1")
    claim["test"] = "two one-sided t-tests (TOST) of the mean ratio − 1 per precision, Holm over precisions"
    return {**_header("noise_variance_is_delta_squared_over_12", "QGen, QReg", metric), **claim}


def _twin_comparisons(
    df: pd.DataFrame, reference: pd.Series, arms: pd.Series, column: str, arm_columns: list[str]
) -> list[Comparison]:
    """Each arm (distinct values of ``arm_columns`` among ``arms`` rows) against the ``reference`` runs."""
    ref, other = (
        df[reference.reindex(df.index, fill_value=False)],
        df[arms.reindex(df.index, fill_value=False)],
    )
    out = []
    for key, arm in (
        other.groupby([other[c].astype(str) for c in arm_columns], sort=True) if len(other) else []
    ):
        key = key if isinstance(key, tuple) else (key,)
        label = str(arm["quant"].iloc[0]) if "quant" in arm else ",".join(key)
        out.append(Comparison(label, "reference", label, matched(ref, arm, column)))
    return out


def binaryconnect_claims(df: pd.DataFrame, opt: dict[str, Any]) -> list[dict[str, Any]]:
    """BinaryConnect "acts as a regularizer": each BC arm (deterministic, stochastic, ...) against its
    no-regularizer twins (float, no dropout, same hyperparameters and seed)."""
    method = _method(df)
    binary = method == "binary"
    dropout = spec_column(df, "model.dropout", 0).fillna(0)
    baseline = (method == "float") & (dropout == 0)
    if not binary.any() or not baseline.any():
        return []
    arm_columns = [c for c in spec_columns(df) if c.startswith("quant.")]
    out = []
    for name, column in (
        ("binaryconnect_lowers_test_error", "test_error"),
        ("binaryconnect_shrinks_gap", opt["gap"]),
    ):
        sel = select(df, column)
        comps = _twin_comparisons(sel.used, baseline, binary, column, arm_columns)
        if comps:
            out.append({**_header(name, "BinaryConnect", column), **ordered_claim(comps, "lower", opt, sel)})
    return out


def _matches_float(sel: Selection, name: str, fmt: str, prop: int, update: int, opt: dict[str, Any]) -> dict:
    """TOST of the test error of format ``fmt`` at ``prop``/``update`` bits against the float twins."""
    used = sel.used
    m = _method(used)
    arm = used[(m == fmt) & (spec_column(used, "quant.prop_bits", np.nan) == prop)]
    arm = arm[spec_column(arm, "quant.update_bits", np.nan) == update]
    pairs = matched(used[m == "float"], arm, "test_error")
    diff = (pairs["value_low"] - pairs["value_high"]).to_numpy()
    label = "DFXP" if fmt == "dynamic_fixed" else "FXP"
    groups = [(f"{label} {prop}/{update}", diff, [*pairs["run_high"], *pairs["run_low"]])]
    claim = equivalence_claim(
        groups, opt["low_precision_tolerance"], opt, sel, f"test error {label} {prop}/{update} - float"
    )
    return {**_header(name, "Courbariaux et al. 2014", "test_error"), **claim}


def low_precision_claims(df: pd.DataFrame, opt: dict[str, Any]) -> list[dict[str, Any]]:
    """Courbariaux et al. (2014): 10-bit dynamic fixed point propagations (12-bit updates) train as well
    as float, fixed point needs about 20 bits, and dynamic fixed point beats fixed point."""
    if "model.name" not in df.columns or not (df["model.name"] == "maxout").any():
        return []
    maxout = df[df["model.name"] == "maxout"]
    method = _method(maxout)
    sel = select(maxout, "test_error", statuses=LOW_PRECISION_STATUSES)
    out = []
    if (method == "float").any():
        for name, fmt, prop, update in (
            ("dynamic_fixed_10_12_matches_float", "dynamic_fixed", 10, 12),
            ("fixed_20_20_matches_float", "fixed", 20, 20),
        ):
            if (method == fmt).any():
                out.append(_matches_float(sel, name, fmt, prop, update, opt))
    if (method == "fixed").any() and (method == "dynamic_fixed").any():
        ok, m = sel.used, _method(sel.used)
        bits = ("quant.prop_bits", "quant.update_bits")
        pairs = matched(ok[m == "fixed"], ok[m == "dynamic_fixed"], "test_error", extra_keys=bits)
        claim = ordered_claim(
            [Comparison("equal bit widths", "fixed", "dynamic_fixed", pairs)], "lower", opt, sel
        )
        claim["test"] = (
            "two-sided paired sign test (DFXP below FXP claimed), pairs at equal propagation and update "
            "bits and seed"
        )
        out.append({**_header("dynamic_fixed_beats_fixed", "Courbariaux et al. 2014", "test_error"), **claim})
    return out


# ---------------------------------------------------------------- the table


def _result_text(c: dict[str, Any]) -> str:
    if "steps" in c:
        parts = []
        for s in c["steps"]:
            p = s.get("p_holm")
            p_text = f"Holm p = {p:.3g}" if p is not None else "too few pairs"
            parts.append(f"{s['step']}: {s['in_direction']}/{s['n_pairs']} in direction, {p_text}")
        fams = {s["family"] for s in c["steps"]}
        prefix = "" if len(fams) <= 1 else f"{len(fams)} arms; "
        return prefix + "; ".join(parts)
    if "groups" in c:
        parts = []
        for g in c["groups"]:
            lo, hi = g["ci"]
            interval = f"[{lo:.4f}, {hi:.4f}]" if np.isfinite(lo) else "no interval"
            parts.append(f"{g['family'] or 'all'}: mean {g['mean']:.4f}, interval {interval}, n = {g['n']}")
        return f"{c['difference']}: " + ("; ".join(parts) if parts else "no pairs")
    if "tau" in c:
        return f"τ = {c['tau']:.3f}, 95% CI [{c['ci'][0]:.3f}, {c['ci'][1]:.3f}], n = {c['n']}"
    return ""


def _excluded_text(c: dict[str, Any]) -> str:
    if not c["excluded"]:
        return "none"
    return "; ".join(f"{len(ids)} {why}" for why, ids in c["excluded"].items())


def claims_markdown(claims: list[dict[str, Any]], title: str) -> str:
    lines = [
        f"# {title}",
        "",
        "| claim | source | regime | metric | result | threshold | verdict | runs used | excluded "
        "| run ids |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    marks = {"pass": "**pass**", "fail": "**FAIL**", "inconclusive": "*inconclusive*"}
    for c in claims:
        lines.append(
            f"| {c['claim']} | {c['source']} | {c['regime']} | {c['metric']} | {_result_text(c)} "
            f"| {c['threshold']} | {marks[c['verdict']]} | {c['n_runs_used']} | {_excluded_text(c)} "
            f"| {c.get('run_ids', '')} |"
        )
    return "\n".join(lines) + "\n"
