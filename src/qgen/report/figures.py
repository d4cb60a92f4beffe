"""Seaborn figures of the collected runs."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from qgen.io import atomic_path
from qgen.report.tables import bits_order

PANELS = {
    "gap_acc": "generalization gap\n(train acc − test acc)",
    "gap_loss": "generalization gap\n(test CE − train CE)",
    "train_ce": "training cross-entropy",
}
MEASURE_PANELS = {
    "pacbayes.sigma": "PAC-Bayes σ′ (flatter ↑)",
    "pacbayes.mag.sigma": "magnitude-aware σ′ (flatter ↑)",
    "sharpness.alpha": "worst-case α′ (flatter ↑)",
    "hessian.trace": "Hessian trace tr(H)",
}
LOG_SCALE = {"train_ce", "pacbayes.sigma", "pacbayes.mag.sigma", "sharpness.alpha", "hessian.trace"}


def save_figure(fig: plt.Figure, stem: str | Path) -> list[Path]:
    """Write ``stem``.png and ``stem``.pdf atomically (PDF without a creation date, so rebuilds match)."""
    paths = []
    for ext, extra in (("png", {"dpi": 150}), ("pdf", {"metadata": {"CreationDate": None}})):
        target = Path(f"{stem}.{ext}")
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=ext, bbox_inches="tight", **extra)
        paths.append(target)
    plt.close(fig)
    return paths


def gap_vs_bits(df: pd.DataFrame, stem: str | Path, title: str) -> list[Path]:
    """Gap (accuracy and loss) and training loss against bit width: one dot per run, mean ± sd per model."""
    return metrics_vs_bits(df, PANELS, stem, title)


def measures_vs_bits(df: pd.DataFrame, stem: str | Path, title: str) -> list[Path]:
    """Sharpness and curvature measures against bit width (QGen: quantized models are flatter)."""
    return metrics_vs_bits(df, {k: v for k, v in MEASURE_PANELS.items() if k in df.columns}, stem, title)


def metrics_vs_bits(df: pd.DataFrame, panels: dict[str, str], stem: str | Path, title: str) -> list[Path]:
    """One panel per metric against bit width: one dot per run, mean ± sd per model."""
    ok = df[df["status"] == "completed"].copy()
    order = bits_order(ok["bits"]) if len(ok) else []
    hue_order = sorted(ok["model_label"].unique()) if len(ok) else []
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.2 * len(panels), 3.8), constrained_layout=True, squeeze=False
    )
    axes = list(axes[0])
    palette = sns.color_palette("deep", n_colors=max(len(hue_order), 1))
    dodge = len(hue_order) > 1
    for ax, (metric, label) in zip(axes, panels.items(), strict=True):
        if not len(ok):
            ax.text(0.5, 0.5, "no completed runs", ha="center", va="center", transform=ax.transAxes)
            continue
        common = {
            "data": ok,
            "x": "bits",
            "y": metric,
            "hue": "model_label",
            "order": order,
            "hue_order": hue_order,
            "palette": palette,
            "ax": ax,
        }
        sns.stripplot(**common, dodge=dodge, alpha=0.45, size=4, jitter=0.15, legend=False)
        sns.pointplot(
            **common,
            dodge=0.4 if dodge else False,
            errorbar="sd",
            capsize=0.1,
            markers="D",
            linestyle="-",
            legend=ax is axes[-1],
        )
        ax.set_xlabel("bit width (weights)")
        ax.set_ylabel(label)
        if metric in LOG_SCALE and (ok[metric] > 0).all():
            ax.set_yscale("log")
    if len(ok):
        axes[-1].legend(title="model", frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    n_div = int((df["status"] == "diverged").sum())
    fig.suptitle(f"{title} — {len(ok)} runs" + (f" (+{n_div} diverged, not shown)" if n_div else ""))
    return save_figure(fig, stem)
