"""Paper-specific tables and figures, each beside the paper's own numbers.

- ``binaryconnect``: Courbariaux, Bengio & David (2015), Table 2: test error of no regularizer,
  BinaryConnect deterministic / stochastic and 50 % dropout, mean ± std over seeds.
- ``low_precision``: Courbariaux, Bengio & David (2014), Table 1: test error by number format,
  propagation bits and update bits; and test error against the propagation bit width (figure).

The paper values come from papers.md (§4, §5): recalled [M] except the stochastic BinaryConnect
CIFAR-10/SVHN rows, which the reference README states [V]. The note under each table names the data our
runs used: on the embedded mnist5k (5,000 real MNIST images, 1/12 of MNIST) the PI-MNIST columns compare
like with like at a smaller scale, so our errors are expected above the paper's; on the paper-scale
configs (config/paper/) they are the paper's experiment. Every row names the run ids behind it.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from qgen.report.figures import save_figure
from qgen.report.tables import aggregate_over_seeds, write_tables
from qgen.run_status import COMPLETED, DEGENERATE
from qgen.runs_table import spec_column

PAPER_TABLES = ("binaryconnect", "low_precision")

#: BinaryConnect (2015) Table 2, test error in % (papers.md §4)
BINARYCONNECT_PAPER = {
    "No regularizer": {"PI-MNIST": "1.30 ± 0.04", "CIFAR-10": "10.64", "SVHN": "2.44"},
    "BC (det.)": {"PI-MNIST": "1.29 ± 0.08", "CIFAR-10": "9.90", "SVHN": "2.30"},
    "BC (stoch.)": {"PI-MNIST": "1.18 ± 0.04", "CIFAR-10": "8.27", "SVHN": "2.15"},
    "50% Dropout": {"PI-MNIST": "1.01 ± 0.04", "CIFAR-10": "–", "SVHN": "–"},
}
BINARYCONNECT_ORDER = list(BINARYCONNECT_PAPER)
#: Courbariaux et al. (2014) Table 1, test error in % (papers.md §5); key: (format, prop bits, update bits)
LOW_PRECISION_PAPER = {
    ("float", 32, 32): {"PI-MNIST": "1.05", "MNIST": "0.51", "CIFAR-10": "14.05", "SVHN": "2.71"},
    ("half", 16, 16): {"PI-MNIST": "1.10", "MNIST": "0.51", "CIFAR-10": "14.14", "SVHN": "3.02"},
    ("fixed", 20, 20): {"PI-MNIST": "1.39", "MNIST": "0.57", "CIFAR-10": "15.98", "SVHN": "2.97"},
    ("dynamic_fixed", 10, 12): {"PI-MNIST": "1.28", "MNIST": "0.59", "CIFAR-10": "14.82", "SVHN": "4.95"},
}
FORMAT_NAMES = {
    "float": "single float",
    "half": "half float",
    "fixed": "fixed point",
    "dynamic_fixed": "dynamic fixed point",
}
SOURCE_NOTE = (
    "Paper columns: papers.md (recalled [M], except BinaryConnect stochastic CIFAR-10/SVHN, stated by "
    "the reference README [V]); ours: {data}."
)
#: how the source note describes the data of our runs
DATA_NOTES = {
    "digits": "scikit-learn's 8x8 digits (1,347 training images, 64 pixels), permutation-invariant",
    "mnist5k": (
        "mnist5k, 5,000 real MNIST images (28x28) of which 1,000 are the test set: the paper's PI-MNIST "
        "at 1/12 of its data, so higher errors than the paper's are expected"
    ),
    "mnist": "MNIST (60,000 training, 10,000 test images): the paper's data",
    "cifar10": "CIFAR-10 (50,000 training, 10,000 test images): the paper's data",
    "svhn": "SVHN: the paper's data",
}


def data_note(df: pd.DataFrame) -> str:
    names = sorted(set(spec_column(df, "data.name", "digits").dropna()))
    return "; ".join(DATA_NOTES.get(n, n) for n in names) or "no runs"


def selection_note(df: pd.DataFrame) -> str:
    """When the test error was taken: the last epoch, or (train.select: best_val) the best validation one."""
    select = set(spec_column(df, "train.select", "last").fillna("last"))
    if select == {"best_val"}:
        return "Test error at the epoch of lowest validation error, as the paper"
    if select == {"last"}:
        return "Test error at the last epoch (the paper: at the best validation epoch)"
    return "Test error at the last or (train.select: best_val) the best validation epoch, per run"


#: runs the paper tables and figure show. A degenerate run (qgen.run_status: training accuracy at chance,
#: or a non-finite cross-entropy) is the papers' "this format does not train" result, as the 2014 paper's
#: fixed point at few bits: its error counts, and n says how many such runs it holds. Diverged runs have no
#: metrics and are counted beside n.
PAPER_STATUSES = (COMPLETED, DEGENERATE)
STATUS_NOTE = (
    "n counts degenerate runs (training accuracy at chance: the format did not train) among the runs "
    "averaged, as the paper's failed runs; diverged runs are counted beside it and left out."
)


def binaryconnect_method(df: pd.DataFrame) -> pd.Series:
    """The BinaryConnect table's row label of each run."""
    method = spec_column(df, "quant.method", "float")
    stochastic = spec_column(df, "quant.stochastic", False).fillna(False).astype(str).str.lower() == "true"
    dropout = spec_column(df, "model.dropout", 0.0).fillna(0.0).astype(float)
    labels = np.where(
        method == "binary",
        np.where(stochastic, "BC (stoch.)", "BC (det.)"),
        np.where(
            method == "float",
            np.where(
                dropout > 0, (dropout * 100).round().astype(int).astype(str) + "% Dropout", "No regularizer"
            ),
            spec_column(df, "quant", "").astype(str),
        ),
    )
    return pd.Series(labels, index=df.index)


#: metrics of the paper tables, in percent
PAPER_METRICS = {"test_error": "test error (%)", "gap_acc": "gap (acc, %)", "train_error": "train error (%)"}


def _summary(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return aggregate_over_seeds(df, keys, [m for m in PAPER_METRICS if m in df], use=PAPER_STATUSES)


def binaryconnect_table(df: pd.DataFrame) -> pd.DataFrame:
    runs = df.assign(
        method=binaryconnect_method(df), test_time=spec_column(df, "quant.test_time", "").fillna("")
    )
    table = _summary(runs, ["model_label", "method", "test_time"])
    rank = {m: i for i, m in enumerate(BINARYCONNECT_ORDER)}
    table = table.assign(_r=table["method"].map(lambda m: rank.get(m, len(rank))))
    table = table.sort_values(["model_label", "_r"], kind="stable").drop(columns="_r").reset_index(drop=True)
    for dataset in ("PI-MNIST", "CIFAR-10", "SVHN"):
        table[f"paper {dataset} (%)"] = table["method"].map(
            lambda m, d=dataset: BINARYCONNECT_PAPER.get(m, {}).get(d, "")
        )
    return table


def low_precision_table(df: pd.DataFrame) -> pd.DataFrame:
    method = spec_column(df, "quant.method", "float")
    prop = np.where(
        method == "float", 32, np.where(method == "half", 16, spec_column(df, "quant.prop_bits", np.nan))
    )
    update = np.where(
        method == "float", 32, np.where(method == "half", 16, spec_column(df, "quant.update_bits", np.nan))
    )
    runs = df.assign(format=method, prop_bits=prop.astype(int), update_bits=update.astype(int))
    table = _summary(runs, ["model_label", "format", "prop_bits", "update_bits"])
    order = {f: i for i, f in enumerate(FORMAT_NAMES)}
    table = table.assign(_f=table["format"].map(order)).sort_values(
        ["model_label", "_f", "prop_bits", "update_bits"], ascending=[True, True, False, False], kind="stable"
    )
    table = table.drop(columns="_f").reset_index(drop=True)
    for dataset in ("PI-MNIST", "MNIST", "CIFAR-10", "SVHN"):
        table[f"paper {dataset} (%)"] = [
            LOW_PRECISION_PAPER.get((f, p, u), {}).get(dataset, "")
            for f, p, u in zip(table["format"], table["prop_bits"], table["update_bits"], strict=True)
        ]
    table["format"] = table["format"].map(lambda f: FORMAT_NAMES.get(f, f))
    return table


def _pct(mean: float, std: float) -> str:
    if np.isnan(mean):
        return "–"
    return f"{100 * mean:.2f}" if np.isnan(std) else f"{100 * mean:.2f} ± {100 * std:.2f}"


def write_paper_table(
    table: pd.DataFrame, out_dir: str | Path, stem: str, title: str, note: str, data: str
) -> list[Path]:
    """The table as md/csv/tex: our percentages, then the paper's columns, then the run ids; ``data``
    describes the data of our runs (:func:`data_note`)."""
    paper = [c for c in table.columns if c.startswith("paper ")]
    note = f"{note} {STATUS_NOTE}\n\n{SOURCE_NOTE.format(data=data)}"
    return write_tables(table, out_dir, stem, title, PAPER_METRICS, note, _pct, paper)


def error_vs_prop_bits(df: pd.DataFrame, stem: str | Path, title: str) -> list[Path]:
    """Test error and gap against the propagation bit width, fixed vs dynamic fixed point (one line per
    update bit width, mean over seeds with each run as a dot), single and half float as references.
    Degenerate runs are shown (PAPER_STATUSES): their error near 90 % is the result at those widths."""
    ok = df[df["status"].isin(PAPER_STATUSES)].copy()
    method = spec_column(ok, "quant.method", "float")
    fx = ok[method.isin(["fixed", "dynamic_fixed"])].assign(
        format=lambda d: d["quant.method"].map(FORMAT_NAMES),
        update=lambda d: d["quant.update_bits"].astype(int).astype(str) + "-bit updates",
        prop=lambda d: d["quant.prop_bits"].astype(int),
    )
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.2), constrained_layout=True)
    palette = {"fixed point": "#c44e52", "dynamic fixed point": "#4c72b0"}
    handles, labels = [], []
    for ax, (metric, label) in zip(
        axes,
        (("test_error", "test error (%)"), ("gap_acc", "gap (train − test accuracy, %)")),
        strict=True,
    ):
        if len(fx):
            data = fx.assign(value=100 * fx[metric])
            sns.lineplot(
                data=data,
                x="prop",
                y="value",
                hue="format",
                style="update",
                markers=True,
                dashes=True,
                errorbar=None,
                palette=palette,
                ax=ax,
            )
            sns.scatterplot(
                data=data,
                x="prop",
                y="value",
                hue="format",
                palette=palette,
                alpha=0.35,
                s=18,
                legend=False,
                ax=ax,
            )
        for fmt, color in (("float", "0.2"), ("half", "0.55")):
            ref = ok[method == fmt]
            if len(ref):
                ax.axhline(
                    100 * ref[metric].mean(), color=color, ls=":", lw=1.4, label=f"{FORMAT_NAMES[fmt]} (mean)"
                )
        if metric == "test_error":  # log scale: failed runs near 90 % and working ones near 1 % both readable
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(matplotlib.ticker.FixedLocator([1, 2, 3, 5, 10, 20, 50, 100]))
            ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("propagation bit width (sign included)")
        ax.set_ylabel(label)
        if len(fx):
            ax.set_xticks(sorted(fx["prop"].unique()))
        if metric == "test_error":
            handles, labels = ax.get_legend_handles_labels()
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    if handles:  # one legend for both panels, below them, where it hides no line
        fig.legend(handles, labels, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(f"{title}: training with low-precision multiplications (Courbariaux et al. 2014)")
    return save_figure(fig, stem)


def write_paper_outputs(
    df: pd.DataFrame, which: list[str], tables_dir: str | Path, figures_dir: str | Path, experiment: str
) -> list[Path]:
    """The paper tables (and figures) named in the experiment's ``paper_tables``."""
    paths: list[Path] = []
    for name in which:
        if name == "binaryconnect":
            paths += write_paper_table(
                binaryconnect_table(df),
                tables_dir,
                "binaryconnect",
                f"{experiment}: BinaryConnect test error (Courbariaux et al. 2015, Table 2)",
                f"{selection_note(df)}, mean ± sample std over seeds; gap = train acc − test acc; "
                "test_time: the weights used at test time.",
                data_note(df),
            )
        elif name == "low_precision":
            paths += write_paper_table(
                low_precision_table(df),
                tables_dir,
                "low_precision",
                f"{experiment}: test error by number format (Courbariaux et al. 2014, Table 1)",
                f"{selection_note(df)}. Bit widths include the sign bit, as in the paper; mean ± sample "
                "std over seeds.",
                data_note(df),
            )
            paths += error_vs_prop_bits(df, Path(figures_dir) / "error_vs_prop_bits", experiment)
        else:
            raise ValueError(f"unknown paper table {name!r}; known: {', '.join(PAPER_TABLES)}")
    return paths
