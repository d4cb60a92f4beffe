"""The U-Net fixed-point table and figure (AskariHemmat et al. 2019, papers.md §3; paper table ``unet``).

Per dataset, Q_{i.f} variant and precision (float, a8.0/w0.8, a6.0/w0.4, a4.0/w0.2, ...): the test dice in
dice points (mean ± sample std over seeds of completed runs), the dice drop below float (mean ± std of the
paired drops, float and quantized run of the same seed and every other spec key), and the paper's drop
beside it: 2.21 / 0.57 / 2.09 dice points at a6.0/w0.4 for EM / GM / NIH (absolute); the other precisions'
paper values were not found (NF). em_synth is SYNTHETIC and is compared with the EM figure; the note says
so. Figure: test dice against the precision, one line per dataset and variant.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from qgen.analysis.unet import DATASET_PAPER, PAPER_DROPS, qif_format
from qgen.report.figures import save_figure
from qgen.report.tables import write_tables
from qgen.run_status import COMPLETED
from qgen.runs_table import spec_column

UNET_METRICS = {"dice": "test dice", "drop": "drop vs float", "train_dice": "train dice", "gap": "gap (dice)"}
UNET_NOTE = (
    "Test dice in dice points (per-image dice of the binarized prediction at train.dice_threshold, mean "
    "over the test images), mean ± sample std over seeds of completed runs; drop vs float = float dice − "
    "quantized dice of the same seed (every other spec key equal), mean ± std over those pairs; gap (dice) "
    "= train dice − test dice. Precision a<i>.<f>/w<i>.<f>: the reference's Q_{{i.f}} activation and weight "
    "formats (first block and head in float). paper drop: the paper's a6.0/w0.4 drops, 2.21 (EM), 0.57 "
    "(GM), 2.09 (NIH) dice points absolute; NF: no paper value found for that precision. Claim: "
    "w4a6_drop_matches_paper (claims.md).\n\nOurs: {data}."
)
SYNTHETIC_NOTE = (
    "em_synth is SYNTHETIC: EM-like images generated in the pipeline (Voronoi cells, dark membranes, blur, "
    "noise; exact masks), not the ISBI 2012 data; its rows are compared with the paper's EM figure for the "
    "shape of the claim only"
)


def _precision_rank(label: str) -> tuple[int, float]:
    if label == "float":
        return (0, 0.0)
    try:
        w_bits = sum(int(b) for b in label.split("/w")[1].split("."))
    except (IndexError, ValueError):
        return (2, 0.0)
    return (1, -w_bits)


def _paper_drop(dataset: str, label: str) -> str:
    key = DATASET_PAPER.get(dataset, (None, ""))[0]
    if label == "float":
        return "–"
    if key is not None and label == "a6.0/w0.4":
        return f"{PAPER_DROPS[key]:.2f} ({key})"
    return "NF"


def _runs(df: pd.DataFrame) -> pd.DataFrame:
    ok = df[(df["status"] == COMPLETED) & (spec_column(df, "model.name", "") == "unet")].copy()
    if ok.empty or "test_dice" not in ok.columns:
        return ok.assign(precision=[], dataset=[], variant=[])
    return ok.assign(
        precision=qif_format(ok),
        dataset=spec_column(ok, "data.name", "").astype(str),
        variant=spec_column(ok, "quant.variant", "").fillna("").astype(str),
    )


def unet_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per dataset, variant and precision (module docstring); float rows have variant ``–``."""
    runs = _runs(df)
    pair_cols = [c for c in runs.columns if c.startswith(("data.", "model.", "optim.", "train."))] + ["seed"]
    rows = []
    for (dataset, precision), group in runs.groupby(["dataset", "precision"], sort=False):
        variants = [""] if precision == "float" else sorted(set(group["variant"]))
        floats = runs[(runs["dataset"] == dataset) & (runs["precision"] == "float")]
        for var in variants:
            arm = group if precision == "float" else group[group["variant"] == var]
            keys = [c for c in pair_cols if c in arm.columns]
            merged = arm[[*keys, "test_dice"]].merge(
                floats[[*keys, "test_dice"]], on=keys, suffixes=("", "_float")
            )
            drop = (merged["test_dice_float"] - merged["test_dice"]).to_numpy(dtype=float)
            gap = (arm["train_dice"] - arm["test_dice"]).to_numpy(dtype=float)
            rows.append(
                {
                    "dataset": dataset,
                    "variant": var or "–",
                    "precision": precision,
                    "n": len(arm),
                    "dice_mean": float(arm["test_dice"].mean()),
                    "dice_std": float(arm["test_dice"].std(ddof=1)) if len(arm) > 1 else np.nan,
                    "drop_mean": float(drop.mean()) if len(drop) else np.nan,
                    "drop_std": float(drop.std(ddof=1)) if len(drop) > 1 else np.nan,
                    "train_dice_mean": float(arm["train_dice"].mean()),
                    "train_dice_std": float(arm["train_dice"].std(ddof=1)) if len(arm) > 1 else np.nan,
                    "gap_mean": float(gap.mean()),
                    "gap_std": float(gap.std(ddof=1)) if len(gap) > 1 else np.nan,
                    "paper drop": _paper_drop(dataset, precision),
                    "run_ids": " ".join(sorted(map(str, arm["run_id"]))),
                }
            )
    columns = ["dataset", "variant", "precision", "n", "paper drop", "run_ids"]
    table = pd.DataFrame(rows, columns=None if rows else columns)
    if table.empty:
        return table
    table["_rank"] = [_precision_rank(p) for p in table["precision"]]
    table = table.sort_values(["dataset", "_rank", "variant"], kind="stable").drop(columns="_rank")
    return table.reset_index(drop=True)


def _points(mean: float, std: float) -> str:
    if np.isnan(mean):
        return "–"
    return f"{100 * mean:.2f}" if np.isnan(std) else f"{100 * mean:.2f} ± {100 * std:.2f}"


def dice_vs_bits(df: pd.DataFrame, stem: str | Path, title: str) -> list[Path]:
    """Test dice (dice points) against the precision: one dot per run, mean ± sd per dataset and variant."""
    runs = _runs(df)
    sns.set_theme(style="whitegrid", context="notebook")
    fig, ax = plt.subplots(figsize=(6.4, 4.0), constrained_layout=True)
    if not runs.empty:
        order = sorted(set(runs["precision"]), key=_precision_rank)
        runs = runs.assign(
            dice=100 * runs["test_dice"].astype(float),
            series=runs["dataset"] + np.where(runs["variant"] != "", " (" + runs["variant"] + ")", ""),
        )
        floats = runs[runs["precision"] == "float"]
        quantized = runs[runs["precision"] != "float"]
        # the float runs of a dataset belong to the line of each of its variants
        lines = sorted(set(zip(quantized["dataset"], quantized["series"], strict=True)))
        copies = [floats[floats["dataset"] == ds].assign(series=line) for ds, line in lines]
        frame = pd.concat([quantized, *copies]) if lines else floats
        several = frame["series"].nunique() > 1  # seaborn divides the dodge by (hues − 1)
        np.random.seed(0)
        sns.pointplot(
            frame, x="precision", y="dice", hue="series", order=order, errorbar="sd", ax=ax,
            dodge=0.2 if several else False,
        )  # fmt: skip
        sns.stripplot(
            frame, x="precision", y="dice", hue="series", order=order, ax=ax, dodge=several, alpha=0.5,
            legend=False,
        )  # fmt: skip
    ax.set_xlabel("precision (activations / weights, Q_{i.f})")
    ax.set_ylabel("test dice (points)")
    ax.set_title(title)
    return save_figure(fig, stem)


def write_unet_outputs(
    df: pd.DataFrame, tables_dir: str | Path, figures_dir: str | Path, experiment: str, data: str
) -> list[Path]:
    """unet.{md,csv,tex} and dice_vs_bits.{png,pdf}; ``data`` describes our runs' data."""
    names = set(spec_column(df, "data.name", ""))
    if "em_synth" in names and "SYNTHETIC" not in data:
        data = f"{data}; {SYNTHETIC_NOTE}"
    elif "em_synth" in names:
        data = data.replace("(not the ISBI 2012 data)", "(not the ISBI 2012 data; compared with the EM drop)")
    paths = write_tables(
        unet_table(df),
        tables_dir,
        "unet",
        f"{experiment}: U-Net fixed point (AskariHemmat et al. 2019): dice by precision",
        UNET_METRICS,
        UNET_NOTE.format(data=data),
        _points,
        ("paper drop",),
    )
    return paths + dice_vs_bits(df, Path(figures_dir) / "dice_vs_bits", f"{experiment}: dice vs precision")
