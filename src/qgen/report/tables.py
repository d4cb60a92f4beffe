"""Tables by bit width (mean ± std over seeds, with the run ids behind each row): the generalization
gap, and the noise/sharpness/curvature measures."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from qgen.io import write_text
from qgen.run_status import COMPLETED, LEFT_OUT
from qgen.runs_table import bits_order, spec_columns

#: Metrics summarized per row of the gap table: column → heading.
GAP_METRICS = {
    "gap_acc": "gap (acc)",
    "gap_loss": "gap (CE)",
    "train_ce": "train CE",
    "test_acc": "test acc",
}
#: Measures summarized per row of the measures table (raw values, not size-normalized).
MEASURE_METRICS = {
    "noise.weight.var_ratio": "Var(θ_w)/(Δ²/12)",
    "noise.act.var_ratio": "Var(θ_a)/(Δ²/12)",
    "pacbayes.sigma": "σ′",
    "pacbayes.mag.sigma": "σ′ (mag)",
    "sharpness.alpha": "α′",
    "sharpness.mag.alpha": "α′ (mag)",
    "hessian.trace": "tr(H)",
    "hessian.top_eigenvalue": "λ_max(H)",
}


def varying_hyperparameters(df: pd.DataFrame) -> list[str]:
    """Spec columns (beyond the quantizer, model name/size and seed) that take more than one value."""
    covered = ("quant.", "model.name", "model.depth", "model.width")  # shown as the quant and model labels
    cols = [c for c in spec_columns(df) if not c.startswith(covered)]
    return [c for c in cols if df[c].astype(str).nunique() > 1]


def gap_by_bits(df: pd.DataFrame) -> pd.DataFrame:
    return summary_by_bits(df, GAP_METRICS)


def aggregate_over_seeds(
    df: pd.DataFrame, keys: list[str], metrics: list[str], use: Sequence[str] = (COMPLETED,)
) -> pd.DataFrame:
    """One row per group of ``keys``: ``n`` runs whose status is in ``use`` (completed runs by default),
    mean and sample std of each metric over them, and the run ids of every run of the group. Each status
    of ``qgen.run_status.LEFT_OUT`` is counted: in a column named by it when its runs are left out of the
    statistics, in ``<status>_in_n`` when ``use`` takes them in."""
    rows = []
    for values, group in df.groupby(keys, sort=False, dropna=False):
        ok = group[group["status"].isin(use)]
        row = dict(zip(keys, values if isinstance(values, tuple) else (values,), strict=True))
        row["n"] = len(ok)
        for status in LEFT_OUT:
            row[f"{status}_in_n" if status in use else status] = int((group["status"] == status).sum())
        for metric in metrics:
            vals = ok[metric].astype(float)
            row[f"{metric}_mean"] = vals.mean() if len(vals) else np.nan
            row[f"{metric}_std"] = vals.std(ddof=1) if len(vals) > 1 else np.nan
        row["run_ids"] = " ".join(group["run_id"])
        rows.append(row)
    return pd.DataFrame(rows)


def summary_by_bits(df: pd.DataFrame, metrics: dict[str, str]) -> pd.DataFrame:
    """One row per configuration (varying hyperparameters × quantizer), ``metrics`` aggregated over
    seeds. Diverged and degenerate runs are excluded from the statistics and counted; metrics absent
    from ``df`` are skipped."""
    keys = ["model_label", *varying_hyperparameters(df), "quant", "bits"]
    keys = list(dict.fromkeys(k for k in keys if k in df.columns))
    out = aggregate_over_seeds(df, keys, [m for m in metrics if m in df.columns])
    order = {b: i for i, b in enumerate(bits_order(out["bits"]))}
    sort_keys = [k for k in keys if k not in ("quant", "bits")]
    out = out.assign(_b=out["bits"].map(order)).sort_values([*sort_keys, "_b"], kind="stable")
    return out.drop(columns="_b").reset_index(drop=True)


OVER_SEEDS = "Mean ± sample std over seeds of completed runs, quantized model in eval mode. "
GAP_NOTE = OVER_SEEDS + "gap (acc) = train acc − test acc; gap (CE) = test CE − train CE."
MEASURE_NOTE = OVER_SEEDS + (
    "θ = Q(v) − v over unclipped elements (1 under the uniform-noise model); σ′, α′: PAC-Bayes and "
    "worst-case sharpness scales of Jiang et al. (larger = flatter); tr(H), λ_max(H): Hessian of the "
    "training loss at the effective weights."
)


def _pm(mean: float, std: float, digits: int = 4) -> str:
    if np.isnan(mean):
        return "–"
    fmt = f".{digits}f" if 1e-3 <= abs(mean) < 1e4 or mean == 0 else f".{digits - 1}e"
    return f"{mean:{fmt}}" if np.isnan(std) else f"{mean:{fmt}} ± {std:{fmt}}"


#: the status-count columns of an aggregated table (see aggregate_over_seeds)
COUNT_COLUMNS = {**{f"{s}_in_n": f"{{}} {s}" for s in LEFT_OUT}, **{s: f"+{{}} {s}" for s in LEFT_OUT}}


def _n_shown(table: pd.DataFrame) -> list[str]:
    """``n`` with the status counts that are not 0: ``3 (+1 diverged)`` (left out), ``2 (2 degenerate)``
    (among the n)."""
    columns = [c for c in COUNT_COLUMNS if c in table.columns]
    shown = []
    for n, *counts in zip(table["n"], *(table[c] for c in columns), strict=True):
        parts = ", ".join(COUNT_COLUMNS[c].format(k) for c, k in zip(columns, counts, strict=True) if k)
        shown.append(f"{n} ({parts})" if parts else str(n))
    return shown


def _display(
    table: pd.DataFrame,
    metrics: dict[str, str],
    value: Callable[[float, float], str] = _pm,
    last: Sequence[str] = (),
) -> pd.DataFrame:
    """The shown form of a summary table: its keys, n (with the runs left out, e.g. ``3 (+1 diverged)``),
    each metric as ``value(mean, std)``, then the columns ``last`` (e.g. a paper's published values), then
    the run ids."""
    keys = [
        c
        for c in table.columns
        if not c.endswith(("_mean", "_std")) and c not in ("n", *COUNT_COLUMNS, "run_ids", *last)
    ]
    shown = table[keys].copy()
    shown["n"] = _n_shown(table)
    for metric, heading in metrics.items():
        if f"{metric}_mean" not in table.columns:
            continue
        shown[heading] = list(map(value, table[f"{metric}_mean"], table[f"{metric}_std"]))
    for column in last:
        shown[column] = table[column]
    shown["run ids"] = table["run_ids"]
    return shown


def to_markdown(
    table: pd.DataFrame,
    title: str,
    metrics: dict[str, str] = GAP_METRICS,
    note: str = GAP_NOTE,
    value: Callable[[float, float], str] = _pm,
    last: Sequence[str] = (),
) -> str:
    shown = _display(table, metrics, value, last)
    header = "| " + " | ".join(shown.columns) + " |"
    rule = "| " + " | ".join("---" for _ in shown.columns) + " |"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in shown.itertuples(index=False)]
    return "\n".join([f"# {title}", "", note, "", header, rule, *body, ""])


def to_latex(
    table: pd.DataFrame,
    metrics: dict[str, str] = GAP_METRICS,
    value: Callable[[float, float], str] = _pm,
    last: Sequence[str] = (),
) -> str:
    shown = _display(table, metrics, value, last).drop(columns="run ids")
    return latex_with_run_ids(shown.to_latex(index=False, escape=True), table["run_ids"])


def latex_with_run_ids(tex: str, run_ids: Iterable[str]) -> str:
    """A pandas ``to_latex`` tabular with a LaTeX comment after each body row naming its run ids: the
    typeset table stays compact, its source names the runs behind every row."""
    lines = tex.splitlines()
    start, end = lines.index("\\midrule") + 1, lines.index("\\bottomrule")
    ids = [str(r) for r in run_ids]
    if end - start != len(ids):
        raise ValueError(f"{end - start} table rows but {len(ids)} run id entries")
    lines[start:end] = [f"{row} % run ids: {r}" for row, r in zip(lines[start:end], ids, strict=True)]
    return "\n".join(lines) + "\n"


def write_tables(
    table: pd.DataFrame,
    out_dir: str | Path,
    stem: str,
    title: str,
    metrics: dict[str, str] = GAP_METRICS,
    note: str = GAP_NOTE,
    value: Callable[[float, float], str] = _pm,
    last: Sequence[str] = (),
) -> list[Path]:
    """``stem``.md, .csv and .tex of a summary table (see ``_display`` for ``value`` and ``last``)."""
    out_dir = Path(out_dir)
    paths = [out_dir / f"{stem}.{ext}" for ext in ("md", "csv", "tex")]
    write_text(paths[0], to_markdown(table, title, metrics, note, value, last))
    write_text(paths[1], table.to_csv(index=False, lineterminator="\n"))
    write_text(paths[2], to_latex(table, metrics, value, last))
    return paths


def write_gap_tables(table: pd.DataFrame, out_dir: str | Path, experiment: str) -> list[Path]:
    return write_tables(table, out_dir, "gap_by_bits", f"{experiment}: generalization gap by bit width")


def write_measure_tables(df: pd.DataFrame, out_dir: str | Path, experiment: str) -> list[Path]:
    table = summary_by_bits(df, MEASURE_METRICS)
    return write_tables(
        table,
        out_dir,
        "measures_by_bits",
        f"{experiment}: quantization noise and sharpness by bit width",
        MEASURE_METRICS,
        MEASURE_NOTE,
    )
