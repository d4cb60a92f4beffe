"""QGen's Table 4 for every run: quantized − FP32 accuracy on corrupted test data, coloured by sign.

The table (``robustness.md|csv|tex``) has one row per quantizer family, precision and corruption and one
column per severity plus their mean, each the paired difference quantized − FP32 (qgen.analysis.robustness)
as mean ± std over pairs in accuracy points, with n and the run ids. The LaTeX cells are coloured like
QGen's Table 4 (green: the quantized models are more accurate than full precision, red: less; the colour
names ``tab4_g`` / ``tab4_r`` are those of QGen's preamble); the figure is a heatmap per precision.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from qgen.analysis.robustness import robustness_table, severities
from qgen.io import write_text

#: the LaTeX preamble the coloured table needs (xcolor with the table option, colortbl)
LATEX_PREAMBLE = (
    "% needs \\usepackage[table]{xcolor}\n"
    "\\definecolor{tab4_g}{RGB}{198,239,206}\n"
    "\\definecolor{tab4_r}{RGB}{255,199,206}\n"
)


def _cell(mean: float, std: float) -> str:
    if np.isnan(mean):
        return "–"
    return f"{100 * mean:+.1f}" if np.isnan(std) else f"{100 * mean:+.1f} ± {100 * std:.1f}"


def _columns(table: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(header, mean column, std column) of every value column."""
    return [(f"s{s}", f"d_s{s}", f"sd_s{s}") for s in severities(table)] + [("mean", "d_mean", "sd_mean")]


def latex_cell(mean: float, std: float) -> str:
    """One LaTeX cell, coloured by the sign of the mean difference (none when it is 0 or missing)."""
    text = _cell(mean, std).replace("±", "$\\pm$").replace("–", "--")
    if np.isnan(mean) or mean == 0:
        return text
    return f"\\cellcolor{{{'tab4_g' if mean > 0 else 'tab4_r'}}}{text}"


def to_latex(table: pd.DataFrame) -> str:
    cols = _columns(table)
    head = ["family", "bits", "corruption", *(h for h, _, _ in cols), "n"]
    lines = [LATEX_PREAMBLE + "\\begin{tabular}{lll" + "r" * (len(cols) + 1) + "}", "\\toprule"]
    lines.append(" & ".join(head) + " \\\\")
    lines.append("\\midrule")
    for _, row in table.iterrows():
        cells = [str(row["family"]), str(row["bits"]), str(row["corruption"]).replace("_", "\\_")]
        cells += [latex_cell(row[m], row[sd]) for _, m, sd in cols] + [str(int(row["n"]))]
        lines.append(" & ".join(cells) + f" \\\\ % run ids: {row['run_ids']}")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def to_markdown(table: pd.DataFrame, title: str, note: str) -> str:
    cols = _columns(table)
    head = ["family", "bits", "corruption", *(h for h, _, _ in cols), "n", "run ids"]
    lines = [f"# {title}", "", note, "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for _, row in table.iterrows():
        cells = [str(row["family"]), str(row["bits"]), str(row["corruption"])]
        cells += [_cell(row[m], row[sd]) for _, m, sd in cols] + [str(int(row["n"])), str(row["run_ids"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def heatmap(table: pd.DataFrame, stem: str | Path, title: str) -> list[Path]:
    """One panel per (family, precision): corruptions × severities, quantized − FP32 accuracy in points,
    diverging around 0 (green better, red worse), annotated."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from qgen.report.figures import save_figure

    panels = list(table.groupby(["family", "bits"], sort=False)) if len(table) else []
    sev = severities(table)
    sns.set_theme(style="white", context="notebook")
    n = max(1, len(panels))
    fig, axes = plt.subplots(1, n, figsize=(2.2 + 0.75 * (len(sev) + 1) * n, 6.2), constrained_layout=True)
    axes = np.atleast_1d(axes)
    lim = float(np.nanmax(np.abs(table[[f"d_s{s}" for s in sev]].to_numpy()))) * 100 if len(table) else 1.0
    lim = lim if np.isfinite(lim) and lim > 0 else 1.0
    for i, (ax, ((family, bits), part)) in enumerate(zip(axes, panels, strict=False)):
        grid = part.set_index("corruption")[[f"d_s{s}" for s in sev] + ["d_mean"]].astype(float) * 100
        grid.columns = [*(str(s) for s in sev), "mean"]
        sns.heatmap(
            grid, annot=True, fmt=".1f", cmap="RdYlGn", center=0, vmin=-lim, vmax=lim, ax=ax,
            cbar=i == len(panels) - 1, annot_kws={"size": 7},
            cbar_kws={"label": "quantized − FP32 accuracy (points)"},
        )  # fmt: skip
        ax.set_title(f"{family} {bits} (n={int(part['n'].max())})", fontsize=10)
        ax.set_xlabel("severity")
        ax.set_ylabel("" if i else "corruption")
        if i:
            ax.set_yticklabels([])
    if not panels:
        axes[0].text(0.5, 0.5, "no paired runs", ha="center", va="center", transform=axes[0].transAxes)
    fig.suptitle(f"{title}: robustness to corruptions, quantized − FP32")
    return save_figure(fig, stem)


def write_robustness_outputs(
    df: pd.DataFrame, tables_dir: str | Path, figures_dir: str | Path, experiment: str, data_note: str
) -> list[Path]:
    table = robustness_table(df)
    tables_dir = Path(tables_dir)
    note = (
        "Quantized − FP32 accuracy (percentage points) on the corrupted test set, per corruption and "
        "severity (Hendrycks & Dietterich 2019) and their mean; each quantized run paired with the FP32 run "
        "of the same hyperparameters and seed; mean ± std over pairs. Green (LaTeX), positive: quantized "
        f"more accurate than full precision. {data_note}"
    )
    paths = [tables_dir / f"robustness.{ext}" for ext in ("md", "csv", "tex")]
    write_text(paths[0], to_markdown(table, f"{experiment}: robustness to corruptions (QGen Table 4)", note))
    write_text(paths[1], table.to_csv(index=False, lineterminator="\n"))
    write_text(paths[2], to_latex(table))
    return paths + heatmap(table, Path(figures_dir) / "robustness", experiment)
