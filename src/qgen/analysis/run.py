"""All analyses of one experiment's runs table (the ``analyse`` rule)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from qgen.analysis import bound, claims, correlation, regularization
from qgen.io import write_json, write_text
from qgen.runs_table import RUNS_COMPLETED, spec_columns

#: measure families correlated with the gap (prefixes of runs.csv columns)
MEASURE_PREFIXES = (
    "pacbayes.",
    "sharpness.",
    "hessian.trace",
    "hessian.top_eigenvalue",
    "norm.",
    "noise.",
    "noise_model.loss_increase",
    "noise_model.error_increase",
    "bound.value",
    "bound.complexity",
)
EXCLUDED = ("stderr", "probes", "iterations", ".examples", "norm.params")


def measure_columns(df: pd.DataFrame) -> list[str]:
    cols = [c for c in df.columns if c.startswith(MEASURE_PREFIXES) and not any(e in c for e in EXCLUDED)]
    return [c for c in cols if pd.api.types.is_numeric_dtype(df[c]) and df[c].notna().sum() >= 3]


def hyperparameter_axes(df: pd.DataFrame) -> list[str]:
    """Spec columns that vary in the experiment (bit width as one axis, seeds not an axis)."""
    cols = [c for c in spec_columns(df) if not c.startswith("quant.")]
    return [c for c in cols if df[c].astype(str).nunique() > 1] + ["bits"]


def analyse(
    df: pd.DataFrame, out_dir: str | Path, settings: dict[str, Any], experiment: str
) -> dict[str, Any]:
    out_dir = Path(out_dir)
    ok = df[df["status"] == "completed"].copy()
    if "noise_model.kl_orig" in ok.columns or "pacbayes.sigma" in ok.columns:
        ok = pd.concat([ok, bound.evaluate_bound(ok, settings["bound"])], axis=1)
    bound_runs = ok[
        [
            "run_id",
            "bits",
            "model_label",
            "gap_acc",
            "gap_loss",
            *[c for c in ok.columns if c.startswith("bound.")],
        ]
    ]
    write_text(out_dir / "bound_runs.csv", bound_runs.to_csv(index=False, lineterminator="\n"))
    features = [
        "noise.weight.predicted_sum_sq",
        "pacbayes.flatness",
        "pacbayes.mag.flatness",
        "norm.log_prod_of_spec",
        "norm.fro_dist",
        "hessian.trace",
    ]
    logged = ok.assign(
        **{"noise.weight.predicted_sum_sq": np.log(ok["noise.weight.predicted_sum_sq"])}
        if "noise.weight.predicted_sum_sq" in ok.columns
        else {}
    )
    fits = pd.concat([bound.fit_gap(logged, gap, features) for gap in settings["gaps"]], ignore_index=True)
    fits["run_ids"] = RUNS_COMPLETED  # fitted over the completed runs (rows of runs.csv)
    write_text(out_dir / "bound.csv", fits.to_csv(index=False, lineterminator="\n"))

    axes = hyperparameter_axes(ok)
    corr = correlation.correlation_table(
        ok,
        measure_columns(ok),
        settings["gaps"],
        axes,
        resamples=settings["bootstrap"],
        seed=settings["seed"],
        max_condition=settings["max_condition"],
    )
    corr["run_ids"] = RUNS_COMPLETED  # over the completed runs where the measure is defined (n)
    write_text(out_dir / "correlation.csv", corr.to_csv(index=False, lineterminator="\n"))

    reg = pd.concat(
        [regularization.least_squares_check(seed=settings["seed"]), regularization.network_check(ok)],
        ignore_index=True,
    )
    write_text(out_dir / "regularization.csv", reg.to_csv(index=False, lineterminator="\n"))

    found = claims.check_claims(
        pd.concat([ok, df[df["status"] != "completed"]]),
        {**settings["claims"], "resamples": settings["bootstrap"], "seed": settings["seed"]},
    )
    # runs that did not complete (diverged, degenerate, ...) are left out of every analysis: counted here
    statuses = {str(k): int(v) for k, v in df["status"].value_counts().sort_index().items()}
    record = {"experiment": experiment, "runs_by_status": statuses, "claims": found}
    write_json(out_dir / "claims.json", record)
    write_text(out_dir / "tables" / "claims.md", claims.claims_markdown(found, f"{experiment}: claim checks"))
    return {"claims": found, "axes": axes}
