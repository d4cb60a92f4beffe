"""Paper-specific tables and figures, beside the paper's own numbers where the paper has some.

- ``binaryconnect``: Courbariaux, Bengio & David (2015), Table 2: test error of no regularizer,
  BinaryConnect deterministic / stochastic and 50 % dropout, mean ± std over seeds.
- ``low_precision``: Courbariaux, Bengio & David (2014), Table 1: test error by number format,
  propagation bits and update bits; and test error against the propagation bit width (figure).
- ``saq``: SAQ (Liu et al. 2021, papers.md §6): FP32, SAM, plain QAT and SAQ cases 1-3 per bit width
  (test accuracy, gaps, training CE, PAC-Bayes σ′); and test accuracy and σ′ against the bit width.
- ``noise_injection``: QGen's noise model (papers.md §1a): rounding-trained (uniform quantizer) against
  noise-trained (``quant.method: noise``) runs per bit width and stopping regime; and the gaps and training
  CE against the bit width. Neither has published numbers at our scale; the SAQ note quotes the reference
  README's.

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

from qgen.report.figures import MEASURE_PANELS, PANELS, metrics_vs_bits, save_figure
from qgen.report.tables import aggregate_over_seeds, varying_hyperparameters, write_tables
from qgen.run_status import COMPLETED, DEGENERATE
from qgen.runs_table import bits_order, spec_column, spec_columns

PAPER_TABLES = ("binaryconnect", "low_precision", "saq", "noise_injection", "unet")

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
    "em_synth": "em_synth, SYNTHETIC EM-like images generated in the pipeline (not the ISBI 2012 data)",
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


# ---------------------------------------------------------------- SAQ and noise injection (issue 17)

#: metrics of the SAQ and noise-injection tables (fractions and nats, as runs.csv holds them); σ′ is the
#: raw PAC-Bayes search result (qgen.measures.sharpness; larger = flatter)
SAQ_METRICS = {
    "test_acc": "test acc",
    "gap_acc": "gap (acc)",
    "gap_loss": "gap (CE)",
    "train_ce": "train CE",
    "pacbayes.sigma": "σ′",
}
NOISE_METRICS = {**SAQ_METRICS, "fit.epochs": "epochs"}
#: table names of the quantizers of the SAQ and noise tables
QUANTIZER_NAMES = {"float": "FP32", "lsq": "LSQ", "uniform": "uniform", "noise": "noise"}
#: SAQ v1 README (ziplab/SAQ; papers.md §6 [V]), top-1 %: LIQ_wn quantizer, the paper's own scale
SAQ_PAPER_NOTE = (
    "Published (SAQ v1 README [V], LIQ_wn quantizer, not LSQ; papers.md §6): CIFAR-100 ResNet-20 (the "
    "scripts' PreResNet-20) SAQ 4-bit 68.7 %, 3-bit 67.7 % top-1; ImageNet ResNet-18 4-bit 71.3 %, 2-bit "
    "67.1 %."
)
#: spec columns that the SAQ label states itself (method, case, ρ, adaptive) or that are NaN off SAM
_SAM_LABELLED = ("optim.sam.rho", "optim.sam.case", "optim.sam.adaptive")
#: quant columns that the bit label or the noise label states
_QUANT_LABELLED = (
    "quant.method",
    "quant.weight_bits",
    "quant.act_bits",
    "quant.noise_on",
    "quant.noise_clip",
    "quant.noise_eval",
)
#: quant keys dropped from uniform specs at their default (qgen.experiments.QUANT_OMITTED_DEFAULTS) and
#: written out by noise specs: filled in so that the two compare as the same setting
_UNIFORM_DEFAULTS = {"quant.grid": "symmetric", "quant.attention": False}


def _g(value: float) -> str:
    return f"{value:g}"


def _truthy(series: pd.Series) -> pd.Series:
    return series.fillna(False).astype(str).str.lower().isin(["true", "1", "1.0"])


def _with_uniform_defaults(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    uniform_like = spec_column(out, "quant.method", "float").isin(["uniform", "noise"])
    for column, default in _UNIFORM_DEFAULTS.items():
        if column in out.columns:
            out[column] = out[column].astype(object).where(~(uniform_like & out[column].isna()), default)
    return out


def _distinguish(df: pd.DataFrame, labels: pd.Series, columns: list[str]) -> pd.Series:
    """``labels`` with ``key=value`` appended for each of ``columns`` that takes several values among the
    runs that have it (so runs differing in a setting the label does not state never share a row)."""
    labels = labels.astype(str).copy()
    for column in columns:
        values = df[column]
        if values.dropna().astype(str).nunique() < 2:
            continue
        short = column.split(".", 1)[1].removeprefix("sam.")
        has = values.notna()
        labels[has] = labels[has] + f" {short}=" + values[has].astype(str)
    return labels


def _other_columns(df: pd.DataFrame, stated: tuple[str, ...]) -> list[str]:
    """Quantizer and SAM settings beyond those the labels state: appended to a label when they vary."""
    return [
        c
        for c in spec_columns(df)
        if c.startswith(("quant.", "optim.sam.")) and c not in stated and c not in _SAM_LABELLED
    ]


def _keys(df: pd.DataFrame, drop: tuple[str, ...]) -> list[str]:
    """The model label and every other varying hyperparameter (tables.varying_hyperparameters) except the
    SAM settings and ``drop`` (stated by the table's own label columns)."""
    varying = [c for c in varying_hyperparameters(df) if not c.startswith("optim.sam.") and c not in drop]
    return ["model_label", *varying]


def saq_method(df: pd.DataFrame) -> pd.DataFrame:
    """Each run's SAQ-table ``method`` and ``rho``: FP32, SAM (on the float model), LSQ / uniform (plain QAT)
    or ``SAQ case k`` (SAM on a quantized model, qgen.train.sam), ``(adaptive)`` for ASAM. A SAM run whose
    ρ is not the one most runs of its method use (the ρ sweep; ties: the smaller ρ) is labelled with it,
    e.g. ``SAQ case 3, ρ = 0.8``; ``rho`` is ``–`` without SAM. Quantizer or SAM settings that vary among
    the runs of the table (per_channel, include_bn, ...) are appended as ``key=value``."""
    method = spec_column(df, "quant.method", "float").astype(str)
    rho = pd.to_numeric(spec_column(df, "optim.sam.rho", np.nan), errors="coerce")
    case = pd.to_numeric(spec_column(df, "optim.sam.case", np.nan), errors="coerce")
    adaptive = _truthy(spec_column(df, "optim.sam.adaptive", False))
    base = []
    for m, r, c, a in zip(method, rho, case, adaptive, strict=True):
        quantizer = QUANTIZER_NAMES.get(m, m)
        if np.isnan(r):
            base.append(quantizer)
            continue
        if m == "float":
            name = "SAM"
        elif np.isnan(c):
            name = f"SAM ({quantizer})"
        else:
            name = f"SAQ case {int(c)}" + ("" if m == "lsq" else f" ({quantizer})")
        base.append(name + (" (adaptive)" if a else ""))
    base_s = pd.Series(base, index=df.index)
    labels = base_s.copy()
    for name, group in rho.groupby(base_s):
        if group.isna().all():
            continue
        counts = group.value_counts()
        reference = min(counts[counts == counts.max()].index)
        for i in group.index[group != reference]:
            labels[i] = f"{name}, ρ = {_g(group[i])}"
    labels = _distinguish(_with_uniform_defaults(df), labels, _other_columns(df, _QUANT_LABELLED))
    return pd.DataFrame(
        {"method": labels, "rho": rho.map(lambda r: "–" if np.isnan(r) else _g(r))}, index=df.index
    )


def _saq_rank(label: str, rho: str) -> tuple:
    """Row order within a bit width: FP32, SAM, plain QAT, SAQ cases 1-3 (others after), each method's
    ρ-sweep rows after it by ρ."""
    order = ("FP32", "SAM", "LSQ", "uniform", "SAQ case 1", "SAQ case 2", "SAQ case 3")
    head = label.split(",")[0].split(" (")[0].split(" ")
    rank = next(
        (i for i, name in enumerate(order) if " ".join(head[: len(name.split())]) == name), len(order)
    )
    return (rank, ", ρ = " in label, 0.0 if rho == "–" else float(rho), label)


def saq_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per method, ρ and bit width (and model / varying hyperparameter): mean ± std over seeds of
    completed runs, n with the runs left out counted, and every run id. Rows: bit widths FP32 first then
    high to low; within one, FP32, SAM, plain QAT, SAQ cases 1-3, then the ρ-sweep rows."""
    runs = df.assign(**saq_method(df))
    keys = [*_keys(runs, ()), "method", "rho", "bits"]
    table = aggregate_over_seeds(runs, keys, [m for m in SAQ_METRICS if m in runs.columns])
    order = {b: i for i, b in enumerate(bits_order(table["bits"]))}
    rank = [_saq_rank(m, r) for m, r in zip(table["method"], table["rho"], strict=True)]
    table = table.assign(_b=table["bits"].map(order), _m=rank)
    table = table.sort_values([*keys[:-3], "_b", "_m"], kind="stable").drop(columns=["_b", "_m"])
    return table.reset_index(drop=True)


def noise_training(df: pd.DataFrame) -> pd.Series:
    """Each run's training in the noise-injection table: ``rounding (uniform)`` (rounded in training by
    the uniform quantizer), ``noise`` (quant.method noise: additive U(−Δ/2, Δ/2) at the same step rule),
    FP32 or the quantizer's name for other runs; noise settings that vary (noise_on, noise_clip,
    noise_eval) and other quantizer settings that vary are appended as ``key=value``."""
    method = spec_column(df, "quant.method", "float").astype(str)
    labels = method.map(lambda m: "rounding (uniform)" if m == "uniform" else QUANTIZER_NAMES.get(m, m))
    noise = method == "noise"
    if noise.any():
        noise_columns = [c for c in ("quant.noise_on", "quant.noise_clip", "quant.noise_eval") if c in df]
        labels[noise] = _distinguish(df[noise], labels[noise], noise_columns)
    return _distinguish(_with_uniform_defaults(df), labels, _other_columns(df, _QUANT_LABELLED))


def stopping(df: pd.DataFrame) -> pd.Series:
    """``fixed N epochs`` (train.target_ce null) or ``CE ≤ t (max N epochs)`` (the stopping rule)."""
    target = pd.to_numeric(spec_column(df, "train.target_ce", np.nan), errors="coerce")
    epochs = pd.to_numeric(spec_column(df, "train.max_epochs", np.nan), errors="coerce")
    return pd.Series(
        [
            f"fixed {e:g} epochs" if np.isnan(t) else f"CE ≤ {t:g} (max {e:g} epochs)"
            for t, e in zip(target, epochs, strict=True)
        ],
        index=df.index,
    )


def noise_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per stopping regime, bit width and training (rounding / noise; and model or varying
    hyperparameter): mean ± std over seeds of completed runs, n, the runs that reached the stopping
    rule's target (``reached target``: k/completed; – for fixed epochs), every run id."""
    runs = df.assign(training=noise_training(df), stopping=stopping(df))
    keys = [*_keys(runs, ("train.target_ce", "train.max_epochs")), "stopping", "bits", "training"]
    table = aggregate_over_seeds(runs, keys, [m for m in NOISE_METRICS if m in runs.columns])
    reached = []
    stop = spec_column(runs, "fit.stop_reason", "").astype(str)
    target = pd.to_numeric(spec_column(runs, "train.target_ce", np.nan), errors="coerce")
    for ids in table["run_ids"]:
        mine = runs["run_id"].isin(ids.split()) & (runs["status"] == COMPLETED)
        if target[runs["run_id"].isin(ids.split())].isna().all():
            reached.append("–")
        else:
            reached.append(f"{int((mine & (stop == 'target_ce')).sum())}/{int(mine.sum())}")
    table.insert(len(keys), "reached target", reached)
    order = {b: i for i, b in enumerate(bits_order(table["bits"]))}
    rank = {"FP32": 0, "rounding (uniform)": 1}
    table = table.assign(
        _s=table["stopping"].str.startswith("CE"),
        _b=table["bits"].map(order),
        _t=table["training"].map(lambda t: (rank.get(t, 2), t)),
    )
    table = table.sort_values([*keys[:-3], "_s", "_b", "_t"], kind="stable")
    return table.drop(columns=["_s", "_b", "_t"]).reset_index(drop=True)


def _series_figure(
    df: pd.DataFrame, series: pd.Series, panels: dict[str, str], stem: str | Path, title: str
) -> list[Path]:
    """figures.metrics_vs_bits with one line per ``series`` value (its label replaces the model label,
    and no other column reaches figures.series_labels)."""
    several = df["model_label"].astype(str).nunique() > 1 if len(df) else False
    name = (df["model_label"].astype(str) + " " + series) if several else series
    panels = {m: label for m, label in panels.items() if m in df.columns}
    frame = df[["run_id", "status", "bits", *panels]].assign(model_label=name.to_numpy())
    return metrics_vs_bits(frame, panels, stem, title)


def saq_vs_bits(df: pd.DataFrame, stem: str | Path, title: str) -> list[Path]:
    """Test accuracy and PAC-Bayes σ′ against the bit width, one line per SAQ-table method (completed
    runs: one dot each, mean ± sd)."""
    panels = {"test_acc": "test accuracy", "pacbayes.sigma": MEASURE_PANELS["pacbayes.sigma"]}
    return _series_figure(df, saq_method(df)["method"], panels, stem, f"{title}: SAM / SAQ")


def noise_vs_rounding(df: pd.DataFrame, stem: str | Path, title: str) -> list[Path]:
    """The gaps and the training CE against the bit width, one line per training and stopping regime."""
    series = noise_training(df) + ", " + stopping(df)
    return _series_figure(df, series, PANELS, stem, f"{title}: noise injection vs rounding")


def _regime_note(df: pd.DataFrame) -> str:
    target = pd.to_numeric(spec_column(df, "train.target_ce", np.nan), errors="coerce")
    if target.isna().all():
        return "every run trained for its fixed epoch budget"
    if target.notna().all():
        return "every run trained to the stopping rule (train CE ≤ target, or its max epochs)"
    return "runs trained for a fixed epoch budget and to the stopping rule, in separate rows"


SAQ_NOTE = (
    "Mean ± sample std over seeds of completed runs, quantized model in eval mode; {regime}. gap (acc) = "
    "train acc − test acc, gap (CE) = test CE − train CE, train CE = final training cross-entropy, σ′ = "
    "PAC-Bayes sharpness scale (Jiang et al.; larger = flatter). SAM: Foret et al. on the float model; SAQ "
    "case 1: L(Q(w) + ε(w)), case 2: L(Q(w + ε(w))), case 3: L(Q(w) + ε(Q(w))) (qgen.train.sam), on our "
    "LSQ quantizer (the reference code's LIQ_wn is not implemented). ρ: the SAM radius; rows at a ρ other "
    "than the one most runs of their method use (the ρ sweep) carry it in their label. n counts the runs "
    "averaged; diverged and degenerate runs are counted beside it and left out. Claims: saq_beats_qat, "
    "saq_flatter (claims.md).\n\n{paper}\n\nOurs: {data}."
)
NOISE_NOTE = (
    "Mean ± sample std over seeds of completed runs; {regime}. rounding (uniform): trained with the uniform "
    "quantizer (round to the grid, straight-through gradient); noise: the same quantizer's step rule and "
    "clipping, its rounding replaced in training by additive noise U(−Δ/2, Δ/2) drawn every step "
    "(quant.method noise; QGen's noise model, papers.md §1a); evaluated and measured with {evaluation}. "
    "gap (acc) = train acc − test acc, gap (CE) = test CE − train CE, train CE = final training "
    "cross-entropy, σ′ = PAC-Bayes sharpness scale (larger = flatter), epochs = epochs trained; reached "
    "target: runs that met the stopping rule's CE target among those completed (– for fixed epochs). n "
    "counts the runs averaged; diverged and degenerate runs are counted beside it and left out. Claim: "
    "noise_matches_rounding (claims.md).\n\nOurs: {data}."
)
NOISE_EVAL = {
    "round": "real rounding at the trained step rule (noise_eval: round)",
    "clean": "the noise-free clipped values (noise_eval: clean)",
    "noise": "one fixed seeded noise draw (noise_eval: noise)",
}


def write_saq_outputs(
    df: pd.DataFrame, tables_dir: str | Path, figures_dir: str | Path, experiment: str
) -> list[Path]:
    note = SAQ_NOTE.format(regime=_regime_note(df), paper=SAQ_PAPER_NOTE, data=data_note(df))
    paths = write_tables(
        saq_table(df),
        tables_dir,
        "saq",
        f"{experiment}: sharpness-aware quantization (Liu et al. 2021) by method and bit width",
        SAQ_METRICS,
        note,
    )
    return paths + saq_vs_bits(df, Path(figures_dir) / "saq_vs_bits", experiment)


def write_noise_outputs(
    df: pd.DataFrame, tables_dir: str | Path, figures_dir: str | Path, experiment: str
) -> list[Path]:
    method = spec_column(df, "quant.method", "float")
    modes = sorted(set(spec_column(df, "quant.noise_eval", "round")[method == "noise"].fillna("round")))
    evaluation = "; ".join(NOISE_EVAL.get(m, m) for m in modes) or NOISE_EVAL["round"]
    note = NOISE_NOTE.format(regime=_regime_note(df), evaluation=evaluation, data=data_note(df))
    paths = write_tables(
        noise_table(df),
        tables_dir,
        "noise_injection",
        f"{experiment}: noise-injection training against rounding (QGen's noise model)",
        NOISE_METRICS,
        note,
    )
    return paths + noise_vs_rounding(df, Path(figures_dir) / "noise_vs_rounding", experiment)


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
        elif name == "saq":
            paths += write_saq_outputs(df, tables_dir, figures_dir, experiment)
        elif name == "noise_injection":
            paths += write_noise_outputs(df, tables_dir, figures_dir, experiment)
        elif name == "robustness":  # QGen's Table 4, for an experiment with the robustness step
            from qgen.report.robustness import write_robustness_outputs

            paths += write_robustness_outputs(df, tables_dir, figures_dir, experiment, data_note(df))
        elif name == "unet":  # the U-Net fixed-point paper (qgen.report.unet)
            from qgen.report.unet import write_unet_outputs

            paths += write_unet_outputs(df, tables_dir, figures_dir, experiment, data_note(df))
        else:
            raise ValueError(f"unknown paper table {name!r}; known: {', '.join(PAPER_TABLES)}")
    return paths
