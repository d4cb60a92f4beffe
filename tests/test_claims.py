"""Claim checks: for each claim a table where it holds, one where it fails, and one where it would pass only
through runs that cannot speak to it (which must come out ``fail`` or ``inconclusive``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from qgen.analysis import claims

LEVELS = {"FP32": (None, None), "8": (8, 8), "4": (4, 4), "2": (2, 2)}


def qgen_table(
    *,
    gap: dict[str, float] | None = None,
    train_ce: dict[str, float] | None = None,
    sigma: dict[str, float] | None = None,
    var_ratio: dict[str, float] | None = None,
    seeds: int = 2,
    target_ce: float | None = 0.01,
    method: str = "lsq",
    levels: tuple[str, ...] = ("FP32", "8", "4", "2"),
) -> pd.DataFrame:
    """A QGen-style runs table: 3 widths x 2 learning rates x ``seeds`` configurations at each precision;
    every value is ``base[bits]`` plus a small configuration-dependent jitter (so no pair ties)."""
    gap = gap or {"FP32": 0.05, "8": 0.05, "4": 0.04, "2": 0.03}
    train_ce = train_ce or {"FP32": 0.010, "8": 0.010, "4": 0.012, "2": 0.015}
    sigma = sigma or {"FP32": 0.10, "8": 0.10, "4": 0.12, "2": 0.15}
    var_ratio = var_ratio or {"8": 1.0, "4": 1.0, "2": 1.0}
    rows = []
    rng = np.random.default_rng(0)
    for width in (8, 16, 32):
        for lr in (0.1, 0.01):
            for seed in range(seeds):
                for bits in levels:
                    w, a = LEVELS[bits]
                    jitter = rng.normal(0, 1e-3)
                    rows.append(
                        {
                            "run_id": f"r{width}-{lr}-{seed}-{method}{bits}",
                            "status": "completed",
                            "bits": bits,
                            "quant": "fp32" if w is None else f"{method}_w{w}a{a}",
                            "seed": seed,
                            "model.width": width,
                            "optim.lr": lr,
                            "train.target_ce": target_ce,
                            "fit.stop_reason": "target_ce" if target_ce is not None else "max_epochs",
                            "quant.method": "float" if w is None else method,
                            "quant.weight_bits": w,
                            "quant.act_bits": a,
                            "precision.weight_bits": w,
                            "precision.act_bits": a,
                            "gap_acc": gap[bits] + jitter,
                            "train_ce": train_ce[bits] + abs(jitter) / 10,
                            "pacbayes.sigma": sigma[bits] + jitter,
                            "search.pacbayes.converged": True,
                            "search.pacbayes.bound": "none",
                            "noise.weight.var_ratio": np.nan if w is None else var_ratio[bits] + jitter,
                            "bound.value": gap[bits] + 2 * jitter,
                        }
                    )
    return pd.DataFrame(rows)


def verdicts(df: pd.DataFrame, **options) -> dict[str, str]:
    return {c["claim"]: c["verdict"] for c in claims.check_claims(df, {"resamples": 200, **options})}


def by_name(df: pd.DataFrame, **options) -> dict[str, dict]:
    return {c["claim"]: c for c in claims.check_claims(df, {"resamples": 200, **options})}


# ---- gap_shrinks_as_bits_drop


def test_gap_claim_holds_fails_and_is_not_fooled_by_underfit_low_bit_runs() -> None:
    assert verdicts(qgen_table())["gap_shrinks_as_bits_drop"] == "pass"
    rising = qgen_table(gap={"FP32": 0.03, "8": 0.03, "4": 0.04, "2": 0.05})
    assert verdicts(rising)["gap_shrinks_as_bits_drop"] == "fail"
    # flat at FP32/8/4; the 2-bit runs have a small gap only because they never fit the training set
    underfit = qgen_table(gap={"FP32": 0.05, "8": 0.05, "4": 0.05, "2": 0.0})
    underfit.loc[underfit["bits"] == "2", "fit.stop_reason"] = "max_epochs"
    found = by_name(underfit)["gap_shrinks_as_bits_drop"]
    assert found["verdict"] in ("fail", "inconclusive")
    assert len(found["excluded"]["stopping target not reached"]) == 12
    assert not set(found["excluded"]["stopping target not reached"]) & set(found["run_ids"].split())
    # the same table with the 2-bit runs counted would pass: the exclusion is what changes the verdict
    counted = underfit.assign(**{"fit.stop_reason": "target_ce"})
    assert verdicts(counted)["gap_shrinks_as_bits_drop"] == "pass"


def test_gap_claim_keeps_quantizer_arms_apart() -> None:
    """LSQ's gap rises at 4 bits; uniform runs (only at 4 bits) have a small gap. Pooled by the weight-bit
    label the 4-bit mean falls; matched on the whole quantizer setting, LSQ's step is against the claim."""
    lsq = qgen_table(gap={"FP32": 0.05, "8": 0.05, "4": 0.07, "2": 0.07}, levels=("FP32", "8", "4"))
    uniform = qgen_table(gap={"FP32": 0.05, "8": 0.0, "4": 0.01, "2": 0.0}, method="uniform", levels=("4",))
    found = by_name(pd.concat([lsq, uniform], ignore_index=True))["gap_shrinks_as_bits_drop"]
    assert found["verdict"] == "fail"
    steps = {(s["family"], s["step"]): s for s in found["steps"]}
    assert steps[("lsq", "8->4")]["outcome"] == "against"
    assert steps[("uniform", "FP32->4")]["outcome"] == "with"


def test_mixed_precisions_are_their_own_arm() -> None:
    df = qgen_table(levels=("FP32", "8", "4"))
    mixed = df[df["bits"] == "4"].copy()
    mixed["precision.act_bits"] = mixed["quant.act_bits"] = 8
    mixed["run_id"] = mixed["run_id"] + "-a8"
    mixed["gap_acc"] += 0.5  # far off: would swamp a pooled 4-bit mean
    found = by_name(pd.concat([df, mixed], ignore_index=True))["gap_shrinks_as_bits_drop"]
    assert [s["step"] for s in found["steps"]] == ["FP32->8", "8->w4a8", "w4a8->4"]
    assert found["verdict"] == "fail"  # w4a8's gap rises significantly: reported, not averaged away


def test_too_few_pairs_is_inconclusive_not_pass() -> None:
    found = by_name(qgen_table(seeds=1))["gap_shrinks_as_bits_drop"]  # 6 pairs per step, all in direction
    assert [s["in_direction"] for s in found["steps"][1:]] == [6, 6]
    assert found["verdict"] == "inconclusive" and not found["pass"]
    assert all(not s["testable"] for s in found["steps"])
    assert (
        verdicts(qgen_table(seeds=1), min_pairs=6)["gap_shrinks_as_bits_drop"] == "fail"
    )  # 6 cannot reach p < α
    assert verdicts(qgen_table(seeds=2))["gap_shrinks_as_bits_drop"] == "pass"


def test_holm_adjustment() -> None:
    assert claims.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert claims.holm([0.5]) == [0.5]


# ---- eight_bit_gap_close_to_float


def test_eight_bit_equivalence_is_a_tost_with_enough_pairs() -> None:
    found = by_name(qgen_table())["eight_bit_gap_close_to_float"]
    assert found["verdict"] == "pass" and found["n_pairs"] == 12
    group = found["groups"][0]
    assert -0.01 < group["ci"][0] < group["ci"][1] < 0.01 and group["p_holm"] < 0.05
    far = qgen_table(gap={"FP32": 0.05, "8": 0.08, "4": 0.04, "2": 0.03})
    assert verdicts(far)["eight_bit_gap_close_to_float"] == "fail"
    # two seeds of one configuration: a point mean inside the tolerance is not a pass
    two = qgen_table().query("`model.width` == 8 and `optim.lr` == 0.1")
    assert verdicts(two)["eight_bit_gap_close_to_float"] == "inconclusive"


def test_tost_against_closed_form() -> None:
    diff = np.array([0.001, -0.002, 0.003, 0.0, 0.002])
    out = claims.tost(diff, 0.01, 0.05)
    se = diff.std(ddof=1) / np.sqrt(5)
    from scipy import stats

    expected = max(stats.t.sf((diff.mean() + 0.01) / se, 4), stats.t.cdf((diff.mean() - 0.01) / se, 4))
    assert out["p_value"] == pytest.approx(expected)
    assert out["ci"][1] - out["ci"][0] == pytest.approx(2 * stats.t.ppf(0.95, 4) * se)


# ---- train_loss_rises_as_bits_drop


def test_train_loss_claim_uses_fixed_epoch_runs_only() -> None:
    fixed = qgen_table(target_ce=None)
    found = by_name(fixed)["train_loss_rises_as_bits_drop"]
    assert found["verdict"] == "pass" and found["regime"] == "fixed_epochs"
    falling = qgen_table(target_ce=None, train_ce={"FP32": 0.3, "8": 0.3, "4": 0.2, "2": 0.1})
    assert verdicts(falling)["train_loss_rises_as_bits_drop"] == "fail"
    # trained to the stopping rule: the rule equalizes training CE, so the runs cannot speak to the claim
    target = by_name(qgen_table())["train_loss_rises_as_bits_drop"]
    assert target["verdict"] == "inconclusive" and target["n_runs_used"] == 0
    assert len(target["excluded"]["target regime: the stopping rule equalizes training CE"]) == 48


# ---- quantized_models_are_flatter


def test_flatness_claim_drops_searches_stuck_at_a_bound() -> None:
    assert verdicts(qgen_table())["quantized_models_are_flatter"] == "pass"
    sharper = qgen_table(sigma={"FP32": 0.2, "8": 0.2, "4": 0.15, "2": 0.1})
    assert verdicts(sharper)["quantized_models_are_flatter"] == "fail"
    stuck = qgen_table(sigma={"FP32": 0.1, "8": 0.1, "4": 0.1, "2": 2.0})
    low = stuck["bits"] == "2"
    stuck.loc[low, "search.pacbayes.bound"] = "upper"
    stuck.loc[low & (stuck["seed"] == 0), "search.pacbayes.converged"] = False
    found = by_name(stuck)["quantized_models_are_flatter"]
    assert found["verdict"] in ("fail", "inconclusive")
    assert len(found["excluded"]["σ′ search did not converge"]) == 6
    assert len(found["excluded"]["σ′ search ended at its upper bound"]) == 6
    assert (
        verdicts(stuck.assign(**{"search.pacbayes.bound": "none", "search.pacbayes.converged": True}))[
            "quantized_models_are_flatter"
        ]
        == "pass"
    )


# ---- qgen_measure_correlates_with_gap


def test_correlation_claim() -> None:
    assert verdicts(qgen_table())["qgen_measure_correlates_with_gap"] == "pass"
    anti = qgen_table()
    anti["bound.value"] = -anti["gap_acc"]
    assert verdicts(anti)["qgen_measure_correlates_with_gap"] == "fail"
    few = qgen_table().head(6)
    assert verdicts(few)["qgen_measure_correlates_with_gap"] == "inconclusive"
    diverged = qgen_table()
    diverged.loc[diverged["bits"] == "2", "status"] = "diverged"
    found = by_name(diverged)["qgen_measure_correlates_with_gap"]
    assert found["n"] == 36 and len(found["excluded"]["status diverged"]) == 12


# ---- noise_variance_is_delta_squared_over_12


def test_noise_variance_is_judged_per_precision() -> None:
    assert verdicts(qgen_table())["noise_variance_is_delta_squared_over_12"] == "pass"
    # 2-bit runs far off: the pooled mean over 8/4/2 would still be inside 1 ± 0.1 with many 8-bit runs
    df = pd.concat([qgen_table(levels=("8",), seeds=6), qgen_table(var_ratio={"2": 1.25}, levels=("2",))])
    assert abs(df["noise.weight.var_ratio"].mean() - 1) < 0.1
    found = by_name(df)["noise_variance_is_delta_squared_over_12"]
    assert found["verdict"] == "fail"
    assert [g["family"] for g in found["groups"]] == ["lsq 2", "lsq 8"]
    assert verdicts(qgen_table(seeds=1).head(8))["noise_variance_is_delta_squared_over_12"] == "inconclusive"


def test_markdown_shows_verdicts_regimes_and_exclusions() -> None:
    df = qgen_table()
    df.loc[0, "status"] = "degenerate"
    found = claims.check_claims(df, {"resamples": 100})
    md = claims.claims_markdown(found, "t")
    assert "**pass**" in md and "*inconclusive*" in md and "| target |" in md
    assert "1 status degenerate" in md
    assert all(c["pass"] == (c["verdict"] == "pass") for c in found)
