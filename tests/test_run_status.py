"""Degenerate runs (qgen.run_status): a run whose evaluation cross-entropy is non-finite or whose training
accuracy stays at chance gets its own status and reason, is not measured, and downstream it is counted
beside the completed runs, never averaged with them (the paper tables average it in: there a run that did
not train is the result)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from qgen import cli
from qgen.report.figures import gap_vs_bits
from qgen.report.papers import error_vs_prop_bits, low_precision_table, write_paper_table
from qgen.report.summary import summarize
from qgen.report.tables import gap_by_bits, to_markdown
from qgen.run_status import chance_accuracy, degenerate_reason
from qgen.runs_table import collect
from tests.conftest import make_spec, train_command
from tests.test_report import synthetic_runs

#: examples per class of the digits training split (1347 examples)
DIGITS_TRAIN = [133, 136, 133, 137, 136, 136, 136, 134, 131, 135]
MEASURES = json.dumps({"examples": 200})


def test_chance_is_the_majority_rate_plus_three_standard_errors() -> None:
    p = 137 / 1347
    assert chance_accuracy(DIGITS_TRAIN) == pytest.approx(p + 3 * math.sqrt(p * (1 - p) / 1347))
    assert chance_accuracy(DIGITS_TRAIN) == pytest.approx(0.1264, abs=1e-4)
    assert chance_accuracy([90, 10]) == pytest.approx(0.9 + 3 * 0.03)
    with pytest.raises(ValueError, match="no examples"):
        chance_accuracy([0, 0])


def test_degenerate_reason_names_what_is_wrong() -> None:
    assert degenerate_reason(0.61, [1.24, 1.3], DIGITS_TRAIN) is None
    assert degenerate_reason(0.0987, [math.log(10)], DIGITS_TRAIN) == "chance_accuracy"  # all logits equal
    assert degenerate_reason(chance_accuracy(DIGITS_TRAIN), [2.0], DIGITS_TRAIN) == "chance_accuracy"
    assert degenerate_reason(0.127, [2.0], DIGITS_TRAIN) is None  # just above chance
    assert degenerate_reason(0.99, [0.01, math.inf], DIGITS_TRAIN) == "non_finite_ce"  # test CE
    assert degenerate_reason(0.05, [math.nan], DIGITS_TRAIN) == "non_finite_ce"  # the worse of the two


@given(st.lists(st.integers(0, 10_000), min_size=2, max_size=50).filter(lambda c: sum(c) > 0))
def test_a_classifier_that_ignores_its_input_is_at_chance(counts: list[int]) -> None:
    n, majority = sum(counts), max(counts) / sum(counts)
    assert degenerate_reason(majority, [math.log(len(counts))], counts) == "chance_accuracy"
    assert majority <= chance_accuracy(counts) <= majority + 1.5 / math.sqrt(n) + 1e-12  # margin ≤ 3·½/√n


def train_cli(monkeypatch, spec, digits_dir, out, measure: bool = False) -> dict:
    """`qgen train` (with --out-metrics) in this process; returns its metrics.json."""
    monkeypatch.setenv("QGEN_MEASURES", MEASURES if measure else "")
    monkeypatch.setenv("QGEN_RUNTIME", "")
    record = json.dumps({"run_id": "digits-run-00000000", "spec": spec})
    argv = train_command(record, str(digits_dir / "meta.json"), str(out), checkpoint_every=100)[3:]
    assert cli.main([*argv, "--measure-cache", str(out / "measures.cache.json")]) == 0
    return json.loads((out / "metrics.json").read_text())


def test_a_run_that_stays_at_chance_is_degenerate_and_not_measured(monkeypatch, tmp_path, digits_dir) -> None:
    """Fixed point with 4 propagation bits (Courbariaux et al. 2014): every output rounds to zero, the
    training accuracy stays at 0.0987, below chance (0.1264). The sweep goes on: the run writes its metrics
    (kept, they are the evidence) and an empty measures record."""
    spec = make_spec(
        model={"name": "maxout", "depth": 1, "width": 48, "pieces": 3},
        quant={"method": "fixed", "prop_bits": 4, "update_bits": 12},
        optim={"batch_size": 100},
        train={"max_epochs": 2},
    )
    metrics = train_cli(monkeypatch, spec, digits_dir, tmp_path, measure=True)
    assert metrics["status"] == "degenerate" and metrics["fit"]["degenerate_reason"] == "chance_accuracy"
    assert metrics["metrics"]["train_acc"] <= 0.1264 and math.isfinite(metrics["metrics"]["test_ce"])
    assert torch.load(tmp_path / "model.pt", weights_only=True)["train"]["status"] == "degenerate"
    measured = json.loads((tmp_path / "measures.cache.json").read_text())["record"]
    assert measured["status"] == "degenerate" and measured["measures"] == {}
    row = collect([tmp_path / "metrics.json"], "lowprec").iloc[0]
    assert (row["status"], row["fit.degenerate_reason"]) == ("degenerate", "chance_accuracy")


def test_a_run_that_learns_is_completed_and_evaluation_catches_a_non_finite_cross_entropy(
    monkeypatch, tmp_path, digits_dir
) -> None:
    spec = make_spec(model={"width": 16}, train={"max_epochs": 2})  # train accuracy 0.61
    metrics = train_cli(monkeypatch, spec, digits_dir, tmp_path)
    assert metrics["status"] == "completed" and metrics["fit"]["degenerate_reason"] is None
    # the same model file with a NaN weight (training recorded it completed): evaluation finds it
    payload = torch.load(tmp_path / "model.pt", weights_only=True)
    last = [k for k in payload["state_dict"] if k.endswith("weight")][-1]
    payload["state_dict"][last][0, 0] = math.nan
    torch.save(payload, tmp_path / "model.pt")
    out = tmp_path / "evaluated.json"
    argv = ["evaluate", "--model", str(tmp_path / "model.pt"), "--data-meta", str(digits_dir / "meta.json")]
    assert cli.main([*argv, "--out", str(out), "--device", "cpu"]) == 0
    evaluated = json.loads(out.read_text())
    assert evaluated["status"] == "degenerate" and evaluated["fit"]["degenerate_reason"] == "non_finite_ce"
    assert evaluated["metrics"]["test_ce"] is None  # NaN, written as null


def with_degenerate_run() -> pd.DataFrame:
    df = synthetic_runs()
    row = df[(df["model_label"] == "mlp2x256") & (df["bits"] == "2")].iloc[0]
    extra = {**row.to_dict(), "run_id": "r-degenerate", "status": "degenerate", "seed": 4, "test_acc": 0.1}
    return pd.concat([df, pd.DataFrame([extra])], ignore_index=True)


def test_tables_figures_and_the_summary_count_degenerate_runs_without_averaging_them(tmp_path) -> None:
    df = with_degenerate_run()
    table = gap_by_bits(df)
    last = table[(table["model_label"] == "mlp2x256") & (table["bits"] == "2")].iloc[0]
    assert (last["n"], last["diverged"], last["degenerate"]) == (3, 1, 1)
    assert last["test_acc_mean"] == pytest.approx(0.95) and "r-degenerate" in last["run_ids"]
    assert "3 (+1 diverged, +1 degenerate)" in to_markdown(table, "t")
    summary = summarize(df, [])
    assert (summary["completed"], summary["diverged"], summary["degenerate"]) == (24, 1, 1)
    assert summary["test_acc.2"] == pytest.approx(0.95)
    assert all(p.stat().st_size > 5000 for p in gap_vs_bits(df, tmp_path / "gap", "t"))


def test_the_low_precision_table_averages_in_the_runs_that_did_not_train(tmp_path) -> None:
    """As the 2014 paper's fixed point at few bits: error near 90 %, counted in n and marked."""
    runs = [("degenerate", 0.9), ("degenerate", 0.9), ("diverged", np.nan)]
    rows = [
        {"run_id": f"fxp4-{seed}", "status": status, "quant.method": "fixed", "quant.prop_bits": 4,
         "quant.update_bits": 12, "model_label": "maxout2x120", "test_error": error, "gap_acc": -0.001,
         "train_error": error}
        for seed, (status, error) in enumerate(runs)
    ]  # fmt: skip
    table = low_precision_table(pd.DataFrame(rows))
    row = table.iloc[0]
    assert (row["n"], row["degenerate_in_n"], row["diverged"]) == (2, 2, 1)
    assert row["test_error_mean"] == pytest.approx(0.9)
    md = write_paper_table(table, tmp_path, "low_precision", "t", "note", "digits")[0].read_text()
    assert "| 2 (2 degenerate, +1 diverged) | 90.00 ± 0.00 |" in md
    assert all(p.stat().st_size > 5000 for p in error_vs_prop_bits(pd.DataFrame(rows), tmp_path / "e", "t"))
