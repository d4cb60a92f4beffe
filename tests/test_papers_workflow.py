"""The seed papers' PI-MNIST experiments (config/paper/*.yaml, shrunk) through the whole workflow on tiny
MNIST files in their real format: paper tables, figure, claims and the report section, with BinaryConnect
(best validation epoch) and low-precision runs measured like every other run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.test_workflow import snakemake

REPO = Path(__file__).resolve().parents[1]
#: what the tiny run changes in the paper configs: sizes, epochs and measure settings, nothing else
TINY_RUNTIME = {
    "runtime": {"device": "cpu", "checkpoint_every": 2},
    "measures": {
        "examples": 300,
        "pacbayes": {"depth": 5},
        "worst_case": {"examples": 200, "depth": 5},
        "hessian": {"examples": 64, "max_probes": 10},
    },
    "analysis": {"bootstrap": 50},
}


def write_tiny_mnist(root: Path, n_train: int = 1600, n_test: int = 300) -> None:
    """MNIST's files (``MNIST/raw/*-ubyte``, IDX) holding real MNIST digits: the first images of mnist5k."""
    from qgen.data.mnist5k import mnist5k_path, read_mnist5k
    from tests.test_datasets import write_idx

    x, y, _ = read_mnist5k(mnist5k_path())
    x = x.reshape(-1, 28, 28)
    raw = root / "MNIST" / "raw"
    for prefix, part in (("train", slice(0, n_train)), ("t10k", slice(n_train, n_train + n_test))):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", x[part])
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", y[part])


def tiny_paper_config(mnist_root: Path) -> dict:
    """The PI-MNIST experiments of config/paper/{binaryconnect,low_precision}.yaml, shrunk to run in a
    minute on tiny MNIST files: smaller networks, 3 epochs, fewer seeds and bit widths."""
    bc = yaml.safe_load((REPO / "config/paper/binaryconnect.yaml").read_text())["experiments"]["bc_pi_mnist"]
    bc["base"]["model"].update(depth=2, width=32)
    bc["base"]["data"]["val_size"] = 100
    bc["base"]["optim"].update(lr=0.01, lr_final=0.001)
    bc["base"]["train"]["max_epochs"] = 4
    bc["seeds"] = [0, 1]
    lp = yaml.safe_load((REPO / "config/paper/low_precision.yaml").read_text())["experiments"][
        "lowprec_pi_mnist"
    ]
    lp["base"]["model"].update(depth=1, width=16, pieces=2)
    lp["base"]["quant"].update(range_update_every=3, range_init_epochs=1)
    lp["base"]["optim"].update(lr_saturate=2, momentum_saturate=1)
    lp["base"]["train"]["max_epochs"] = 3
    lp["grid"] = {"quant.prop_bits": [10, 20], "quant.update_bits": [12]}
    lp["seeds"] = [0]
    return {
        **TINY_RUNTIME,
        "datasets": {"mnist": {"root": str(mnist_root)}},
        "experiments": {"bc": bc, "lowp": lp},
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("papers")
    write_tiny_mnist(workdir / "mnist")
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(tiny_paper_config(workdir / "mnist")))
    snakemake(workdir)
    return workdir


def test_binaryconnect_experiment_end_to_end(built: Path) -> None:
    runs = pd.read_csv(built / "results/bc/runs.csv", dtype={"bits": str})
    assert len(runs) == 8 and set(runs["quant"]) == {"fp32", "bc_det", "bc_stoch"}
    assert set(runs["data.name"]) == {"mnist"} and set(runs["data.val_size"]) == {100}
    for rid in runs["run_id"]:  # the test error at the best validation epoch, as the paper reports it
        record = json.loads((built / f"results/runs/{rid}/metrics.json").read_text())
        log = pd.read_csv(built / f"results/runs/{rid}/train_log.csv")
        best = int(log.loc[log["val_acc"].idxmax(), "epoch"])
        assert record["fit"]["selected_epoch"] == best
        assert record["metrics"]["val_acc"] == pytest.approx(log["val_acc"].max(), abs=1e-12)
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
