"""Seaborn figures of the collected runs."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from qgen.io import atomic_path
from qgen.run_status import LEFT_OUT
from qgen.runs_table import bits_order

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
# spec columns shown by the model label or by the x axis of the by-bits figures
LABELLED = {
    *("model.name", "model.depth", "model.width"),
    *("quant.weight_bits", "quant.act_bits", "quant.prop_bits"),
}


def _value(v: object) -> str:
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def series_labels(runs: pd.DataFrame) -> pd.Series:
    """What each run's line in a by-bits figure stands for: its model label, plus every model or quantizer
    setting that takes several values among the runs at its bit width (BinaryConnect's deterministic and
    stochastic runs at 1 bit, the dropout baseline beside the plain float run, fixed and dynamic fixed point
    at one propagation width...), so runs that differ in more than the bit width never share a mean."""
    cols = [c for c in runs.columns if c.startswith(("model.", "quant.")) and c not in LABELLED]
    labels = runs["model_label"].astype(str)
    for _, group in runs.groupby("bits", sort=False):
        varying = [c for c in cols if group[c].astype(str).nunique() > 1]
        for i, row in group[varying].iterrows():
            parts = [f"{c.split('.', 1)[1]}={_value(v)}" for c, v in row.items() if pd.notna(v)]
            labels[i] = " ".join([labels[i], *parts])
    return labels


def save_figure(fig: plt.Figure, stem: str | Path) -> list[Path]:
    """Write ``stem``.png and ``stem``.pdf atomically (PDF without a creation date, so rebuilds match).
    The layout is computed once, for the PNG; the PDF reuses it (same figure size, same positions)."""
    paths = []
    for ext, extra in (("png", {"dpi": 150}), ("pdf", {"metadata": {"CreationDate": None}})):
        target = Path(f"{stem}.{ext}")
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=ext, bbox_inches="tight", **extra)
        paths.append(target)
        fig.set_layout_engine("none")
    plt.close(fig)
    return paths


def gap_vs_bits(df: pd.DataFrame, stem: str | Path, title: str) -> list[Path]:
    """Gap (accuracy and loss) and training loss against bit width: one dot per run, mean ± sd per model."""
    return metrics_vs_bits(df, PANELS, stem, title)


def measures_vs_bits(df: pd.DataFrame, stem: str | Path, title: str) -> list[Path]:
    """Sharpness and curvature measures against bit width (QGen: quantized models are flatter)."""
    return metrics_vs_bits(df, {k: v for k, v in MEASURE_PANELS.items() if k in df.columns}, stem, title)


def metrics_vs_bits(df: pd.DataFrame, panels: dict[str, str], stem: str | Path, title: str) -> list[Path]:
    """One panel per metric against bit width: one dot per run, mean ± sd per model (and per setting that
    varies at one bit width, see ``series_labels``)."""
    ok = df[df["status"] == "completed"].copy()
    ok["series"] = series_labels(ok) if len(ok) else []
    order = bits_order(ok["bits"]) if len(ok) else []
    hue_order = sorted(ok["series"].unique()) if len(ok) else []
    np.random.seed(0)  # seaborn's stripplot jitter draws from numpy's global RNG: fixed, so rebuilds match
    sns.set_theme(style="whitegrid", context="notebook")
    panel_width = max(4.2, 1.2 + 0.6 * len(order))  # room for every bit-width label
    fig, axes = plt.subplots(
        1, len(panels), figsize=(panel_width * len(panels), 3.8), constrained_layout=True, squeeze=False
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
            "hue": "series",
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
        axes[-1].legend(title="runs", frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    left = ", ".join(f"+{k} {s}" for s in LEFT_OUT if (k := int((df["status"] == s).sum())))
    fig.suptitle(f"{title} — {len(ok)} runs" + (f" ({left}, not shown)" if left else ""))
    return save_figure(fig, stem)


def correlation_heatmap(
    corr: pd.DataFrame, stem: str | Path, title: str, gap: str = "gap_acc", top: int = 30
) -> list[Path]:
    """Kendall τ, granulated Ψ and each ψ_i of the measures most correlated with ``gap``."""
    data = corr[corr["gap"] == gap].copy()
    cols = ["tau", "psi", *[c for c in data.columns if c.startswith("psi[")], "cmi"]
    data = data.set_index("measure")[cols].astype(float)
    data = data.reindex(data["tau"].abs().sort_values(ascending=False).index[:top])
    data.columns = ["τ", "Ψ", *[c[4:-1] for c in cols if c.startswith("psi[")], "CMI"]
    sns.set_theme(style="white", context="notebook")
    fig, ax = plt.subplots(
        figsize=(1.0 * len(data.columns) + 4, 0.32 * len(data) + 1.5), constrained_layout=True
    )
    sns.heatmap(
        data,
        annot=True,
        fmt=".2f",
        cmap="vlag",
        center=0,
        vmin=-1,
        vmax=1,
        ax=ax,
        cbar_kws={"label": "rank correlation with the gap"},
        annot_kws={"size": 8},
    )
    ax.set_ylabel("")
    ax.set_title(f"{title}: measures vs {gap}")
    return save_figure(fig, stem)


def bound_vs_gap(bound_runs: pd.DataFrame, stem: str | Path, title: str) -> list[Path]:
    """Reconstructed QGen bound (and its gap term) against the observed gap, coloured by bit width."""
    data = bound_runs.dropna(subset=["bound.value"]) if "bound.value" in bound_runs else bound_runs.iloc[0:0]
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    order = bits_order(data["bits"].astype(str)) if len(data) else []
    for ax, col, label in zip(
        axes,
        ["bound.value", "bound.gap_term"],
        ["bound on the test error", "bound − training error"],
        strict=True,
    ):
        if not len(data):
            ax.text(
                0.5, 0.5, "no bound (no quantized runs)", ha="center", va="center", transform=ax.transAxes
            )
            continue
        sns.scatterplot(
            data=data.assign(bits=data["bits"].astype(str)),
            x="gap_acc",
            y=col,
            hue="bits",
            hue_order=order,
            style="model_label",
            ax=ax,
            s=40,
        )
        ax.set_xlabel("observed gap (train acc − test acc)")
        ax.set_ylabel(label)
        ax.set_yscale("log")
    fig.suptitle(f"{title}: reconstructed QGen bound vs observed gap")
    return save_figure(fig, stem)


def regularization_check(reg: pd.DataFrame, stem: str | Path, title: str) -> list[Path]:
    """Measured loss increase under uniform quantization noise against the predicted Δ²-term."""
    sns.set_theme(style="whitegrid", context="notebook")
    fig, ax = plt.subplots(figsize=(6, 5), constrained_layout=True)
    data = reg[(reg["predicted"] > 0) & (reg["measured"] > 0)].copy()
    data["bits"] = data["bits"].astype(str)
    sns.scatterplot(
        data=data,
        x="predicted",
        y="measured",
        hue="bits",
        hue_order=bits_order(data["bits"]),
        style="model",
        s=50,
        ax=ax,
    )
    if len(data):
        lo, hi = data[["predicted", "measured"]].min().min(), data[["predicted", "measured"]].max().max()
        ax.plot([lo, hi], [lo, hi], color="grey", linestyle="--", linewidth=1, label="measured = predicted")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("predicted: (Δ²/12)·E‖x‖² (least squares), (Δ²/24)·tr(H) (networks)")
    ax.set_ylabel("measured E_θ[L(w+θ)] − L(w)")
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    ax.set_title(f"{title}: quantization noise as a regularizer")
    return save_figure(fig, stem)
