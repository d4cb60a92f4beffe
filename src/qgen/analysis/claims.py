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
| saq_beats_qat | SAQ | SAQ case 3 test error below its plain-QAT twin's (sign test over pairs) |
| saq_flatter | SAQ | SAQ case 3 σ′ above its plain-QAT twin's (converged searches only) |
| noise_matches_rounding | QGen | TOST of gap(noise) − gap(rounding) against ± noise_margin.gap |
| noise_matches_rounding_train_loss | QGen | the same for the training CE (fixed-epoch runs only) |
| quantized_more_robust | QGen | mean corrupted accuracy above the FP32 twin's, per precision (Holm) |
| w4a6_drop_matches_paper | U-Net fixed point | a6.0/w0.4 dice drop ≤ paper's + unet_margin (analysis.unet) |

The QGen/QReg claims are checked on the bit-width family (float, uniform, LSQ runs); each paper's claims
appear only for experiments that hold the runs they compare. The SAQ claims (:func:`saq_claims`) pair
each SAQ case-3 run with its twin without ``optim.sam`` (every other spec key and the seed equal); the
noise claims (:func:`noise_claims`) pair each noise-trained run with its rounding twin (quant.method
uniform, every other key but the noise settings equal). The claims need ``min_pairs`` (default 10)
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
    "saq_rho": None,
    "noise_margin": {},
    "unet_margin": 2.0,
    "unet_min_pairs": 3,
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
    high: pd.DataFrame,
    low: pd.DataFrame,
    column: str,
    extra_keys: tuple[str, ...] = (),
    keys: list[str] | None = None,
) -> pd.DataFrame:
    """Pairs of runs equal in every non-quantizer hyperparameter, the seed and ``extra_keys`` (or, given
    ``keys``, equal in those columns)."""
    keys = [*(pair_keys(pd.concat([high, low])) if keys is None else keys), *extra_keys]
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
    claims += binaryconnect_claims(df, opt) + low_precision_claims(df, opt)
    claims += saq_claims(df, opt) + noise_claims(df, opt)
    if "test_dice" in df.columns:  # segmentation runs (qgen.analysis.unet)
        from qgen.analysis.unet import unet_claims

        claims += unet_claims(df, opt)
    if "robust.acc" in df.columns:  # the robustness step (qgen.analysis.robustness)
        from qgen.analysis.robustness import robustness_claim

        claims.append(robustness_claim(family, opt))
    return [_finish(c) for c in claims]


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


# ---------------------------------------------------------------- SAQ and noise injection (issue 17)

#: quantizers SAQ's cases are defined on (qgen.config.SAQ_METHODS)
SAQ_METHODS = ("uniform", "lsq")
#: spec keys of noise injection alone (a rounding twin has none of them)
NOISE_KEYS = ("quant.noise_on", "quant.noise_clip", "quant.noise_eval")
#: quant keys a uniform spec leaves out at their default and a noise spec writes out
#: (qgen.experiments.QUANT_OMITTED_DEFAULTS): filled in so that both compare as the same grid
UNIFORM_DEFAULTS = {"quant.grid": "symmetric", "quant.attention": False}


def _sam_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in spec_columns(df) if c.startswith("optim.sam.")]


def _arm_name(arm: pd.DataFrame, columns: list[str], prefix: str, all_runs: pd.DataFrame) -> str:
    """``prefix`` with the settings (of ``columns``) that tell this arm from the others in ``all_runs``."""
    varying = [c for c in columns if all_runs[c].astype(str).nunique() > 1]
    first = arm.iloc[0]
    extra = [f"{c.split('.')[-1]}={first[c]}" for c in varying if pd.notna(first[c])]
    return " ".join([prefix, *extra])


def reference_rho(case3: pd.DataFrame, configured: float | None) -> tuple[float, str]:
    """The ρ of the SAQ runs the claims compare: ``analysis.claims.saq_rho``, else the ρ most case-3 runs
    use (ties: the smaller), and where it came from."""
    if configured is not None:
        return float(configured), "analysis.claims.saq_rho"
    counts = pd.to_numeric(case3["optim.sam.rho"], errors="coerce").value_counts()
    if counts.empty:
        return float("nan"), "no case-3 runs"
    return float(min(counts[counts == counts.max()].index)), "the rho most case-3 runs use"


def saq_claims(df: pd.DataFrame, opt: dict[str, Any]) -> list[dict[str, Any]]:
    """SAQ (Liu et al. 2021, papers.md §6): case 3, L(Q(w) + ε̂(Q(w))), reaches a lower test error than
    plain QAT (``saq_beats_qat``) at a flatter minimum (``saq_flatter``: PAC-Bayes σ′ larger).

    Pairs: each case-3 run at the reference ρ (:func:`reference_rho`) with its plain-QAT twin, the run
    whose spec is the same without ``optim.sam`` (every other spec key, quantizer and precision included,
    and the seed equal); the unit of the test is the pair, pooled over bit widths. Case-3 runs at another ρ
    (a ρ sweep) are left out, so that no plain run enters two pairs, and listed as excluded. Runs that
    differ in another SAM setting (adaptive, include_bn, ...) are separate arms, one sign test each, Holm
    over the arms (:func:`ordered_claim`). The reference ρ and its source are recorded.
    """
    if "optim.sam.rho" not in df.columns:
        return []
    method = _method(df)
    rho = pd.to_numeric(df["optim.sam.rho"], errors="coerce")
    case = pd.to_numeric(spec_column(df, "optim.sam.case", np.nan), errors="coerce")
    case3 = method.isin(SAQ_METHODS) & (case == 3)
    plain = method.isin(SAQ_METHODS) & rho.isna()
    if not case3.any() or not plain.any():
        return []
    ref, source = reference_rho(df[case3], opt.get("saq_rho"))
    at_ref = case3 & np.isclose(rho, ref)
    off_ref = df[case3 & ~at_ref]
    sam_cols = _sam_columns(df)
    keys = [c for c in spec_columns(df) if c not in sam_cols] + ["seed"]
    out = []
    for name, metric, direction, kwargs in (
        ("saq_beats_qat", "test_error", "lower", {}),
        ("saq_flatter", "pacbayes.sigma", "higher", {"flatness": True}),
    ):
        if metric not in df.columns:
            continue
        sel = select(df[at_ref | plain], metric, **kwargs)
        if len(off_ref):
            why = f"SAQ case 3 at another rho than the reference {ref:g}"
            sel.excluded[why] = [str(r) for r in off_ref["run_id"]]
        used = sel.used
        used_method, used_rho = _method(used), pd.to_numeric(used["optim.sam.rho"], errors="coerce")
        reference, saq = used[used_method.isin(SAQ_METHODS) & used_rho.isna()], used[used_rho.notna()]
        arm_cols = [c for c in sam_cols if c != "optim.sam.rho"]
        comps = []
        for _, arm in (
            saq.groupby([saq[c].astype(str) for c in arm_cols], sort=True, dropna=False) if len(saq) else []
        ):
            label = _arm_name(arm, arm_cols, f"SAQ case 3 rho={ref:g}", saq)
            comps.append(Comparison(label, "plain QAT", label, matched(reference, arm, metric, keys=keys)))
        claim = ordered_claim(comps, direction, opt, sel)
        claim["test"] = (
            f"two-sided paired sign test ({direction} for SAQ case 3 claimed), each SAQ case-3 run against "
            "its twin without optim.sam (all other spec keys and the seed equal), Holm over SAM settings"
        )
        claim["reference_rho"] = ref
        claim["reference_rho_source"] = source
        out.append({**_header(name, "SAQ (Liu et al. 2021)", metric), **claim})
    return out


def _with_uniform_defaults(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for column, default in UNIFORM_DEFAULTS.items():
        if column in out.columns:
            out[column] = out[column].astype(object).where(out[column].notna(), default)
    return out


def pooled_seed_std(runs: pd.DataFrame, metric: str, cell_keys: list[str]) -> tuple[float, int]:
    """sqrt(Σ_c (n_c − 1)·s_c² / Σ_c (n_c − 1)): the pooled sample std over seeds of ``metric`` within the
    cells of ``cell_keys`` (one configuration each: bits, grid, stopping rule, ...), and its degrees of
    freedom Σ_c (n_c − 1); NaN with 0 where no cell has two runs."""
    ss, dof = 0.0, 0
    for _, cell in (
        runs.groupby([runs[c].astype(str) for c in cell_keys], sort=True, dropna=False) if len(runs) else []
    ):
        values = cell[metric].astype(float).to_numpy()
        if len(values) > 1:
            ss += float(((values - values.mean()) ** 2).sum())
            dof += len(values) - 1
    return (float(np.sqrt(ss / dof)) if dof else float("nan")), dof


def noise_claims(df: pd.DataFrame, opt: dict[str, Any]) -> list[dict[str, Any]]:
    """QGen's noise model (papers.md §1a) tested directly: a network trained with additive noise
    U(−Δ/2, Δ/2) in place of rounding (quant.method noise) generalizes like the rounding-trained one
    (quant.method uniform, the same step rule), as two equivalence claims:

    - ``noise_matches_rounding``: the gap (``analysis.claims.gap``), runs of both regimes (a target-regime
      run enters when it reached its target);
    - ``noise_matches_rounding_train_loss``: the training CE, fixed-epoch runs only (the stopping rule
      equalizes it).

    Pairs: each noise run with its rounding twin, equal in every spec key but the method and the noise
    settings (noise_on, noise_clip, noise_eval) — bits, grid (a uniform spec's omitted default filled in),
    first/last-layer policy, training, stopping rule — and the seed; pooled over bit widths and regimes.
    Noise runs that differ in a noise setting are separate arms (TOST each, Holm over arms). The test:
    TOST of the mean paired difference noise − rounding against ± margin, the (1 − 2α) interval printed.
    The margin: ``analysis.claims.noise_margin.gap`` / ``.train_ce``, else (null, the default) the
    seed-to-seed spread of the rounding runs: the pooled sample std over seeds within each configuration
    cell (every pairing key but the seed) of the rounding runs that enter a pair (:func:`pooled_seed_std`).
    That default is our reading of the issue (the seed-to-seed spread); it is estimated from the same
    runs the test uses. With no margin (fewer than two rounding seeds in every cell, or a zero spread)
    the claim is inconclusive. The margin used, its source and degrees of freedom are recorded.
    """
    method = _method(df)
    if not (method == "noise").any() or not (method == "uniform").any():
        return []
    both = _with_uniform_defaults(df[method.isin(["noise", "uniform"])])
    keys = [c for c in spec_columns(both) if c != "quant.method" and c not in NOISE_KEYS] + ["seed"]
    margins = opt.get("noise_margin") or {}
    out = []
    for name, metric, margin_key, regimes in (
        ("noise_matches_rounding", opt["gap"], "gap", (TARGET, FIXED)),
        ("noise_matches_rounding_train_loss", "train_ce", "train_ce", (FIXED,)),
    ):
        sel = select(both, metric, regimes=regimes)
        used = sel.used
        rounding, noise = used[_method(used) == "uniform"], used[_method(used) == "noise"]
        arm_cols = [c for c in NOISE_KEYS if c in used.columns]
        arms = []
        grouped = (
            noise.groupby([noise[c].astype(str) for c in arm_cols], sort=True, dropna=False)
            if arm_cols
            else []
        )
        for _, arm in grouped if len(noise) else []:
            arms.append((_arm_name(arm, arm_cols, "noise", noise), matched(rounding, arm, metric, keys=keys)))
        paired = rounding[rounding["run_id"].isin({r for _, p in arms for r in p["run_high"]})]
        spread, dof = pooled_seed_std(paired, metric, keys[:-1])
        configured = margins.get(margin_key)
        margin = float(configured) if configured is not None else spread
        source = (
            f"analysis.claims.noise_margin.{margin_key}"
            if configured is not None
            else f"pooled std over seeds of the rounding runs' {metric} per configuration cell ({dof} dof)"
        )
        groups = [
            (label, (p["value_low"] - p["value_high"]).to_numpy(), [*p["run_high"], *p["run_low"]])
            for label, p in arms
        ]
        what = f"{metric}(noise) - {metric}(rounding)"
        usable = np.isfinite(margin) and margin > 0
        claim = equivalence_claim(groups, margin, opt, sel, what)
        claim["test"] = (
            f"two one-sided paired t-tests (TOST) of {what}, pairs equal in every spec key but the method "
            "and the noise settings, and the seed; Holm over noise settings"
        )
        claim["margin"] = margin
        claim["margin_source"] = source
        claim["margin_dof"] = dof if configured is None else None
        margin_text = f"{margin:.4g}" if np.isfinite(margin) else "none"
        claim["threshold"] = (
            f"{100 * (1 - 2 * opt['alpha']):g}% interval within ±{margin_text} ({source}); "
            f">= {opt['min_pairs']} pairs"
        )
        if not usable:
            claim["verdict"] = "inconclusive"
            claim["threshold"] += "; no margin: fewer than two rounding seeds per cell, or no spread"
        out.append({**_header(name, "QGen (noise model)", metric), **claim})
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
