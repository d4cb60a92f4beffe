"""The seed papers' experiments through the whole workflow on a tiny config: paper tables, figure, claims and
the report section, with BinaryConnect and low-precision runs measured like every other run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.test_workflow import snakemake

TINY_PAPERS = """
runtime: {device: cpu, checkpoint_every: 2}
measures:
  examples: 300
  pacbayes: {depth: 5}
  worst_case: {examples: 200, depth: 5}
  hessian: {examples: 64, max_probes: 10}
analysis: {bootstrap: 50}
experiments:
  bc:
    paper_tables: [binaryconnect]
    base:
      data: {name: digits}
      model: {name: mlp, depth: 2, width: 32, batch_norm: true, output_batch_norm: true, bn_momentum: 0.15,
              bn_eps: 0.0001, init: glorot}
      quant: {method: float}
      optim: {name: adam, lr: 0.01, schedule: exponential, lr_final: 0.0001, batch_size: 100}
      train: {max_epochs: 3, target_ce: null, loss: sq_hinge}
    variants:
      - {}
      - {quant: {method: binary}}
      - {quant: {method: binary, stochastic: true}}
      - {model: {dropout: 0.5}}
    seeds: [0, 1]
  lowp:
    paper_tables: [low_precision]
    base:
      data: {name: digits}
      model: {name: maxout, depth: 1, width: 16, pieces: 2, dropout: 0.5, input_dropout: 0.2}
      quant: {method: float, range_update_every: 3, range_init_epochs: 1}
      optim: {name: sgd, lr: 0.05, schedule: linear, lr_final: 0.005, momentum: 0.5, momentum_final: 0.7,
              momentum_saturate: 1, max_col_norm: 1.9365, batch_size: 100}
      train: {max_epochs: 3, target_ce: null}
    variants:
      - {quant: {method: float}}
      - {quant: {method: half}}
      - {quant: {method: fixed}}
      - {quant: {method: dynamic_fixed}}
    grid:
      quant.prop_bits: [10, 20]
      quant.update_bits: [12]
    seeds: [0]
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("papers")
    (workdir / "tiny.yaml").write_text(TINY_PAPERS)
    snakemake(workdir)
    return workdir


def test_binaryconnect_experiment_end_to_end(built: Path) -> None:
    runs = pd.read_csv(built / "results/bc/runs.csv", dtype={"bits": str})
    assert len(runs) == 8 and set(runs["quant"]) == {"fp32", "bc_det", "bc_stoch"}
    assert set(runs.loc[runs["quant"] == "bc_stoch", "quant.test_time"]) == {"real"}  # recorded per run
    binary = runs[runs["quant.method"] == "binary"]
    assert binary["noise.weight.var_ratio"].notna().all() and binary["pacbayes.sigma"].notna().all()
    table = pd.read_csv(built / "results/bc/tables/binaryconnect.csv")
    assert list(table["method"]) == ["No regularizer", "BC (det.)", "BC (stoch.)", "50% Dropout"]
    assert list(table["n"]) == [2, 2, 2, 2]
    md = (built / "results/bc/tables/binaryconnect.md").read_text()
    assert all(rid in md for rid in runs["run_id"])
    claims = {c["claim"] for c in json.loads((built / "results/bc/claims.json").read_text())["claims"]}
    assert {"binaryconnect_lowers_test_error", "binaryconnect_shrinks_gap"} <= claims
    report = (built / "reports/bc.html").read_text()
    assert "BC (stoch.)" in report and "1.18 ± 0.04" in report and "no-regularizer twin" in report


def test_low_precision_experiment_end_to_end(built: Path) -> None:
    runs = pd.read_csv(built / "results/lowp/runs.csv", dtype={"bits": str})
    assert sorted(runs["quant"]) == sorted(
        ["fp32", "hflp", "fxp_p10u12", "fxp_p20u12", "dfxp_p10u12", "dfxp_p20u12"]
    )
    fixed = runs[runs["quant.method"].isin(["fixed", "dynamic_fixed"])]
    measured = (
        fixed["status"] == "completed"
    )  # degenerate runs (a format that did not train) are not measured
    assert (
        fixed.loc[measured, "noise.weight.var_ratio"].notna().all()
    )  # weights on the fixed point grid have a step
    assert fixed.loc[~measured, "noise.weight.var_ratio"].isna().all()
    assert set(fixed.loc[~measured, "status"]) <= {"degenerate"}
    table = pd.read_csv(built / "results/lowp/tables/low_precision.csv")
    assert list(table["format"]) == [
        "single float",
        "half float",
        "fixed point",
        "fixed point",
        "dynamic fixed point",
        "dynamic fixed point",
    ]
    assert table.loc[table["format"] == "single float", "paper PI-MNIST (%)"].item() == 1.05
    for ext in ("png", "pdf"):
        assert (built / f"figures/lowp/error_vs_prop_bits.{ext}").stat().st_size > 10_000
    claims = {c["claim"] for c in json.loads((built / "results/lowp/claims.json").read_text())["claims"]}
    assert {"dynamic_fixed_10_12_matches_float", "dynamic_fixed_beats_fixed"} <= claims
    assert "gap_shrinks_as_bits_drop" not in claims  # QGen's claims are for the bit-width family
    assert "dynamic fixed point" in (built / "reports/lowp.html").read_text()
