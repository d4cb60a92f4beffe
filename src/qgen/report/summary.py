"""Headline numbers of one experiment, for ``dvc metrics show`` (``results/<experiment>/summary.json``).

A flat JSON object: how many runs there are and how they ended, how many claims pass out of how many
are checked, and per bit width the mean over completed runs of the accuracy gap, the cross-entropy gap
and the test accuracy (keys ``gap_acc.FP32``, ``test_acc.4``, ...). Everything is computed from the
experiment's runs table (``runs.csv``, one row per run id) and its ``claims.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from qgen.io import read_json, write_json
from qgen.run_status import LEFT_OUT
from qgen.runs_table import bits_order, read_runs

#: metrics averaged per bit width
HEADLINE = ("gap_acc", "gap_loss", "test_acc")


def summarize(runs: pd.DataFrame, claims: list[dict[str, Any]]) -> dict[str, float | int | None]:
    """The flat headline record of one experiment (``None`` where a bit width has no completed run)."""
    if runs.empty:
        raise ValueError("the runs table is empty: nothing to summarize")
    completed = runs[runs["status"] == "completed"]
    out: dict[str, float | int | None] = {
        "runs": len(runs),
        "completed": len(completed),
        **{status: int((runs["status"] == status).sum()) for status in LEFT_OUT},  # diverged, degenerate
        "claims_passed": sum(bool(c["pass"]) for c in claims),
        "claims_total": len(claims),
        "claims_failed": sum(c.get("verdict") == "fail" for c in claims),
        "claims_inconclusive": sum(c.get("verdict") == "inconclusive" for c in claims),
    }
    for bits in bits_order(runs["bits"].astype(str)):
        group = completed[completed["bits"].astype(str) == bits]
        for metric in HEADLINE:
            if metric in runs.columns:
                out[f"{metric}.{bits}"] = float(group[metric].astype(float).mean()) if len(group) else None
    return out


def write_summary(runs_csv: str | Path, claims_json: str | Path, out: str | Path) -> dict[str, Any]:
    """Summarize ``runs_csv`` and ``claims_json`` into ``out`` (written atomically); return the record."""
    record = summarize(read_runs(runs_csv), read_json(claims_json)["claims"])
    write_json(out, record)
    return record
