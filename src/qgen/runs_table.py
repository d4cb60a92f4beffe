"""The runs table of an experiment (``results/<experiment>/runs.csv``, one row per run): collecting it
from the per-run files, reading it, and the helpers that select its columns and rows.

A neutral module: ``analysis`` and ``report`` both read runs tables, and neither imports the other.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from qgen.experiments import quant_label
from qgen.io import atomic_open, read_json
from qgen.models.precision import label_sort_key, precision_record

SPEC_SECTIONS = ("data", "model", "quant", "optim", "train")


def spec_columns(df: pd.DataFrame) -> list[str]:
    """The flattened run-spec columns (``model.width``, ``quant.weight_bits``, ...) of a runs table."""
    return [c for c in df.columns if "." in c and c.split(".")[0] in SPEC_SECTIONS]


def bits_order(values: Iterable[Any]) -> list[str]:
    """The distinct bit labels in table order: FP32 first, then weight bits from high to low, then
    activation bits from high to low (``8``, ``w8a4``, ``4``, ``w4a8``... see qgen.models.precision)."""
    return sorted({str(v) for v in values}, key=label_sort_key)


def spec_column(df: pd.DataFrame, name: str, default: object) -> pd.Series:
    """A column of a runs table, or ``default`` for every run where no run has it (a spec key with no
    schema default is absent from runs.csv until some run of the experiment spells it out)."""
    return df[name] if name in df.columns else pd.Series(default, index=df.index)


# Columns every runs.csv starts with, in this order; then the flattened spec, then metrics.
ID_COLUMNS = ["run_id", "experiment", "status", "bits", "quant", "model_label", "seed"]
#: the precision each run's layers compute at (qgen.models.precision): lowest weight bits, lowest
#: activation bits (empty: float activations), and every layer (``fc1:w8a8 fc2:w4a4 fc3:w8a8``)
PRECISION_COLUMNS = ["precision.weight_bits", "precision.act_bits", "precision.layers"]


def flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            flatten(f"{prefix}.{k}" if prefix else k, v, out)
    elif isinstance(value, list):
        out[prefix] = ",".join(map(str, value))
    else:
        out[prefix] = value


def model_label(model: dict[str, Any]) -> str:
    return f"{model['name']}{model['depth']}x{model['width']}"


def run_row(record: dict[str, Any], experiment: str) -> dict[str, Any]:
    """One runs.csv row of a metrics.json record (its precision plan: recorded, else from the spec)."""
    spec = record["spec"]
    precision = record.get("precision") or precision_record(spec)
    row: dict[str, Any] = {
        "run_id": record["run_id"],
        "experiment": experiment,
        "status": record["status"],
        "bits": precision["label"],
        "quant": quant_label(spec["quant"]),
        "model_label": model_label(spec["model"]),
        "seed": spec["seed"],
        "precision.weight_bits": precision["weight_bits"],
        "precision.act_bits": precision["act_bits"],
        "precision.layers": precision["compact"],
    }
    flatten("", {k: v for k, v in spec.items() if k != "seed"}, row)
    flatten("fit", record.get("fit", {}), row)
    for section in ("metrics", "measures"):
        flatten("", record.get(section, {}), row)
    return row


def collect(
    metric_files: Iterable[str | Path],
    experiment: str,
    measure_files: Iterable[str | Path] = (),
    robustness_files: Iterable[str | Path] = (),
) -> pd.DataFrame:
    """One row per metrics.json; the scalar measures of the matching measures.json (same run id) join it,
    and the summary of its robustness.json as ``robust.*`` columns (qgen.measures.robustness)."""
    measures = {}
    for path in measure_files:
        record = read_json(path)
        measures[record["run_id"]] = record.get("measures", {})
    robust = {}
    for path in robustness_files:
        record = read_json(path)
        robust[record["run_id"]] = record.get("summary", {})
    rows = []
    for path in metric_files:
        record = read_json(path)
        record["measures"] = measures.get(record["run_id"], {})
        row = run_row(record, experiment)
        if robustness_files:
            flatten("robust", robust.get(record["run_id"], {}), row)
        rows.append(row)
    df = pd.DataFrame(rows)
    spec_cols = sorted(spec_columns(df))
    fit_cols = sorted(c for c in df.columns if c.startswith("fit."))
    rest = [c for c in df.columns if c not in {*ID_COLUMNS, *PRECISION_COLUMNS, *spec_cols, *fit_cols}]
    df = df[ID_COLUMNS + PRECISION_COLUMNS + spec_cols + fit_cols + rest].astype({"bits": str})
    for col in ["precision.act_bits", *spec_cols, *fit_cols]:  # integers missing for some runs (float)
        values = df[col]
        if values.dtype.kind == "f" and values.notna().any() and (values.dropna() % 1 == 0).all():
            df[col] = values.astype("Int64")
    return df


def write_csv(df: pd.DataFrame, path: str | Path) -> None:
    with atomic_open(path) as fh:
        df.to_csv(fh, index=False, lineterminator="\n")


def read_runs(path: str | Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"bits": str, "precision.layers": str})


#: ``run_ids`` references to the experiment's runs table
RUNS_ALL = "runs.csv"
RUNS_COMPLETED = "runs.csv#status=completed"


def resolve_run_ids(cell: str, runs: Any) -> list[str]:
    """The run ids a table's ``run_ids`` cell names; ``runs`` is the experiment's runs table.

    A cell is either run ids separated by spaces or a reference ``runs.csv[#key=value[&key=value]]``
    to the rows of the runs table whose columns equal those values.
    """
    cell = str(cell).strip()
    if not cell.startswith(RUNS_ALL):
        return cell.split()
    _, _, query = cell.partition("#")
    selected = runs
    for condition in filter(None, query.split("&")):
        key, sep, value = condition.partition("=")
        if not sep or key not in runs.columns:
            raise ValueError(f"run id reference {cell!r}: cannot filter on {condition!r}")
        selected = selected[selected[key].astype(str) == value]
    return [str(r) for r in selected["run_id"]]
