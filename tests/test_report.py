"""Tables and figures from a runs table: aggregation over seeds, diverged runs, bit order."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from qgen.report.figures import gap_vs_bits, series_labels
from qgen.report.tables import gap_by_bits, to_markdown, write_gap_tables
from qgen.runs_table import bits_order


def synthetic_runs() -> pd.DataFrame:
    rows = []
    for width in (32, 256):
        for bits in ("FP32", "8", "4", "2"):
            for seed in range(3):
                gap = 0.03 - 0.002 * seed + (0.01 if bits == "FP32" else 0)
                rows.append(
                    {
                        "run_id": f"r-{width}-{bits}-{seed}",
                        "status": "completed",
                        "bits": bits,
                        "quant": "fp32" if bits == "FP32" else f"lsq_w{bits}a{bits}",
                        "model_label": f"mlp2x{width}",
                        "seed": seed,
                        "model.width": width,
                        "optim.lr": 0.05,
                        "gap_acc": gap,
                        "gap_loss": 2 * gap,
                        "train_ce": 0.01,
                        "test_acc": 0.95,
                    }
                )
    rows.append(
        {
            **rows[-1],
            "run_id": "r-diverged",
            "status": "diverged",
            "seed": 3,
            "gap_acc": np.nan,
            "gap_loss": np.nan,
            "train_ce": np.nan,
            "test_acc": np.nan,
        }
    )
    return pd.DataFrame(rows)


def test_bits_order_puts_float_first_then_high_to_low() -> None:
    assert bits_order(pd.Series(["2", "FP32", "8", "4", "3"])) == ["FP32", "8", "4", "3", "2"]


def test_gap_table_aggregates_over_seeds_and_excludes_diverged_runs() -> None:
    table = gap_by_bits(synthetic_runs())
    assert len(table) == 8
    assert list(table["bits"][:4]) == ["FP32", "8", "4", "2"]
    row = table[(table["model_label"] == "mlp2x32") & (table["bits"] == "FP32")].iloc[0]
    assert row["gap_acc_mean"] == pytest.approx(0.038)
    assert row["gap_acc_std"] == pytest.approx(0.002)
    assert row["run_ids"] == "r-32-FP32-0 r-32-FP32-1 r-32-FP32-2"
    last = table[(table["model_label"] == "mlp2x256") & (table["bits"] == "2")].iloc[0]
    assert last["n"] == 3 and last["diverged"] == 1 and "r-diverged" in last["run_ids"]
    assert "optim.lr" not in table.columns  # constant hyperparameters are not grouping keys


def test_markdown_shows_mean_std_and_diverged_count() -> None:
    md = to_markdown(gap_by_bits(synthetic_runs()), "t")
    assert "0.0380 ± 0.0020" in md and "3 (+1 diverged)" in md and "r-diverged" in md


def test_tables_and_figure_are_written(tmp_path) -> None:
    df = synthetic_runs()
    paths = write_gap_tables(gap_by_bits(df), tmp_path / "tables", "synthetic")
    assert all(p.exists() and p.stat().st_size > 100 for p in paths)
    figs = gap_vs_bits(df, tmp_path / "fig" / "gap", "synthetic")
    assert [p.suffix for p in figs] == [".png", ".pdf"] and all(p.stat().st_size > 5000 for p in figs)


def test_figure_series_separate_runs_that_differ_in_more_than_bits() -> None:
    """A bit-width sweep keeps one series per model; BinaryConnect's rows (float vs dropout at FP32,
    deterministic vs stochastic at 1 bit) and fixed vs dynamic fixed point at one width never share a
    mean."""
    sweep = synthetic_runs()
    assert sorted(series_labels(sweep).unique()) == ["mlp2x256", "mlp2x32"]

    def run(bits: str, **settings: object) -> dict:
        return {"bits": bits, "model_label": "mlp3x256", "model.width": 256, "model.dropout": 0.0,
                "quant.method": "float", "quant.stochastic": np.nan, "quant.prop_bits": np.nan,
                "quant.update_bits": np.nan, **settings}  # fmt: skip

    bc = pd.DataFrame(
        [
            run("FP32"),
            run("FP32", **{"model.dropout": 0.5}),
            run("1", **{"quant.method": "binary", "quant.stochastic": False}),
            run("1", **{"quant.method": "binary", "quant.stochastic": True}),
        ]
    )
    assert list(series_labels(bc)) == [
        "mlp3x256 dropout=0",
        "mlp3x256 dropout=0.5",
        "mlp3x256 stochastic=False",
        "mlp3x256 stochastic=True",
    ]
    lowp = pd.DataFrame(
        [
            run(str(p), **{"quant.method": m, "quant.prop_bits": p, "quant.update_bits": 12.0})
            for m in ("fixed", "dynamic_fixed")
            for p in (10.0, 20.0)
        ]
    )
    assert list(series_labels(lowp)) == [  # the propagation width is the x axis, not part of the label
        "mlp3x256 method=fixed",
        "mlp3x256 method=fixed",
        "mlp3x256 method=dynamic_fixed",
        "mlp3x256 method=dynamic_fixed",
    ]
