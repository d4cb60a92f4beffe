"""The Snakemake workflow end to end on a tiny config in a temporary directory, and its lint."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from qgen.config import load_config
from qgen.experiments import all_runs
from tests.conftest import REPO

SNAKEMAKE = [sys.executable, "-m", "snakemake"]
TINY = """
runtime: {device: cpu, checkpoint_every: 1}
measures:
  examples: 400
  pacbayes: {depth: 8}
  worst_case: {examples: 300, depth: 8}
  hessian: {examples: 128, max_probes: 20}
experiments:
  tiny:
    description: two quantizers x two seeds, three epochs
    base:
      data: {name: digits}
      model: {name: mlp, depth: 2, width: 16}  # fc1 and fc3 at 8 bits (first/last layer), fc2 at 2
      quant: {method: lsq, weight_bits: 4, act_bits: 4}
      optim: {name: sgd, lr: 0.05}
      train: {max_epochs: 3}
    grid:
      quant: [{method: float}, {method: lsq, weight_bits: 2, act_bits: 2}]
    seeds: [0, 1]
"""


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    # targets before --configfile, which takes several values
    cmd = [
        *SNAKEMAKE,
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(workdir),
        "--cores",
        "2",
        *args,
        "--configfile",
        str(workdir / "tiny.yaml"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("workflow")
    (workdir / "tiny.yaml").write_text(TINY)
    snakemake(workdir)
    return workdir


def test_lint_is_clean() -> None:
    proc = subprocess.run([*SNAKEMAKE, "--lint"], capture_output=True, text=True, cwd=REPO)
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout + proc.stderr


def test_pipeline_builds_tables_figures_and_one_row_per_run(built: Path) -> None:
    runs = pd.read_csv(built / "results/tiny/runs.csv", dtype={"bits": str})
    assert len(runs) == 4 and set(runs["bits"]) == {"FP32", "2"}
    low = runs[runs["bits"] == "2"]  # what the 2-bit runs' layers compute at (first/last layer at 8 bits)
    assert set(low["precision.layers"]) == {"fc1:w8a8 fc2:w2a2 fc3:w8a8"}
    assert set(low["precision.weight_bits"]) == {2} and set(low["precision.act_bits"]) == {2}
    assert runs.loc[runs["bits"] == "FP32", "precision.act_bits"].isna().all()
    assert {
        "gap_acc",
        "gap_loss",
        "train_ce",
        "test_acc",
        "optim.lr",
        "quant.weight_bits",
        "fit.stop_reason",
    } <= set(runs.columns)
    table = (built / "results/tiny/tables/gap_by_bits.md").read_text()
    for rid in runs["run_id"]:
        assert rid in table  # every row names the runs behind it
    csv = pd.read_csv(built / "results/tiny/tables/gap_by_bits.csv", dtype={"bits": str})
    assert list(csv["bits"]) == ["FP32", "2"] and list(csv["n"]) == [2, 2]
    assert csv["gap_acc_mean"].iloc[0] == pytest.approx(runs[runs["bits"] == "FP32"]["gap_acc"].mean())
    for ext in ("png", "pdf"):
        for name in ("gap_by_bits", "measures_by_bits"):
            assert (built / f"figures/tiny/{name}.{ext}").stat().st_size > 5000
    measures = (built / "results/tiny/tables/measures_by_bits.md").read_text()
    assert "σ′" in measures and "tr(H)" in measures
    assert {
        "pacbayes.flatness",
        "pacbayes.mag.flatness",
        "sharpness.flatness",
        "hessian.trace",
        "noise.weight.var_ratio",
        "norm.path_norm",
    } <= set(runs.columns)
    assert runs.loc[runs["bits"] == "2", "noise.weight.var_ratio"].notna().all()
    assert runs.loc[runs["bits"] == "FP32", "noise.weight.var_ratio"].isna().all()
    assert len((built / "results/runs.tsv").read_text().splitlines()) == 5
    for log in ("logs/prepare_data/digits.log", f"logs/train/{runs['run_id'][0]}.log"):
        assert (built / log).exists()
    # the 4 runs were built in one shard job, trained and measured by one worker process
    (record,) = [json.loads(p.read_text()) for p in (built / "results/shards").glob("*.json")]
    assert sorted(record["runs"]) == sorted(runs["run_id"]) and len(record["workers"]) == 1
    assert {r["action"] for r in record["runs"].values()} == {"trained"}
    assert (built / f"logs/shards/{record['shard']}.log").exists()
    assert not (built / "logs/measure").exists()
    assert not list((built / "results/runs").glob("*/measures.cache.json"))
    assert (built / "reports/tiny.html").stat().st_size > 100_000
    claims = json.loads((built / "results/tiny/claims.json").read_text())["claims"]
    assert {c["claim"] for c in claims} >= {
        "gap_shrinks_as_bits_drop",
        "noise_variance_is_delta_squared_over_12",
    }


def test_every_job_is_benchmarked_and_qgen_cost_sums_them(built: Path) -> None:
    from qgen.pipeline_cost import summarize

    bench = built / "logs" / "benchmarks"
    rules = {p.name for p in bench.iterdir()}
    assert {"prepare_data", "shard", "collect", "analyse", "report", "notebook", "summary"} <= rules
    assert (bench / "runs_table.tsv").exists()
    s = summarize(built)
    # every job: one per dataset, one shard, five per experiment, the runs table
    assert s["jobs"] == 1 + 1 + 5 + 1 and s["rules"]["shard"]["jobs"] == 1
    tiny = s["experiments"]["tiny"]
    assert tiny["jobs"] == 6 and 0 < tiny["run_overhead"] < tiny["cpu"]
    # the shard's CPU (its timing line: the controller and its worker) is about its runs' compute (wall
    # seconds in the worker: less CPU than that on a loaded machine)
    assert s["rules"]["shard"]["cpu"] >= 0.5 * (tiny["train"] + tiny["measure"]) > 0
    assert s["measures"]["tiny"]["runs"] == 4 and s["measures"]["tiny"]["pacbayes"] > 0
    proc = subprocess.run(
        [sys.executable, "-m", "qgen.cli", "cost", "--root", str(built)], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "| shard | 1 |" in proc.stdout and "| tiny | 6 |" in proc.stdout
    assert "qgen timing" not in proc.stderr  # only workflow jobs write timing lines


def test_metrics_carry_provenance(built: Path) -> None:
    path = next((built / "results/runs").glob("*/metrics.json"))
    record = json.loads(path.read_text())
    prov = record["provenance"]
    assert record["run_id"] == path.parent.name and record["spec"]["seed"] == prov["seed"]
    assert set(prov["code"]) >= {"commit", "dirty", "qgen"}
    assert len(prov["data"]["checksum"]) == 64
    assert prov["libraries"]["torch"] and prov["device"] == "cpu"
    assert prov["wall_seconds"]["train"] > 0 and prov["runtime"]["checkpoint_every"] == 1
    assert record["fit"]["stop_reason"] in ("max_epochs", "target_ce")


def test_rebuilding_a_run_gives_identical_metrics_and_nothing_else_reruns(built: Path) -> None:
    run_dir = next((built / "results/runs").glob("*lsq_w2a2*"))
    before = json.loads((run_dir / "metrics.json").read_text())
    shutil.rmtree(run_dir)
    proc = snakemake(built, f"results/runs/{run_dir.name}/metrics.json")
    assert "train" in proc.stderr and proc.stderr.count("rule train") == 1
    after = json.loads((run_dir / "metrics.json").read_text())
    assert after["metrics"] == before["metrics"] and after["spec"] == before["spec"]
    assert "rule shard" not in proc.stderr  # one run's file builds that run only, not its shard
    # `all` then completes the run through the per-run rules (the measure rule adopts the training job's
    # measures) and collects again: no training, no shard job
    proc = snakemake(built)
    out = proc.stderr
    assert (
        "rule measure" in out
        and "rule collect" in out
        and "rule train" not in out
        and "rule shard" not in out
    )
    assert "adopted" in (built / f"logs/measure/{run_dir.name}.log").read_text()
    assert not (run_dir / "measures.cache.json").exists() and (run_dir / "measures.json").exists()
    dry = snakemake(built, "-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr


def test_a_run_file_removed_by_hand_is_rebuilt_alone_and_collected_again(built: Path) -> None:
    """A run file missing although its shard has run is asked for by collect (common.smk,
    off_shard_files): the per-run rules rebuild it, not the shard job."""
    measures = sorted((built / "results/runs").glob("*/measures.json"))[-1]
    saved, stat = measures.read_bytes(), measures.stat()
    measures.unlink()
    try:
        dry = snakemake(built, "-n")
        out = dry.stdout + dry.stderr
        assert f"output: results/runs/{measures.parent.name}/measures.json" in out and "rule collect" in out
        assert "rule train" not in out and "rule shard" not in out  # the model is there: measured again only
    finally:
        measures.write_bytes(saved)
        os.utime(measures, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_editing_runtime_settings_does_not_retrain(built: Path) -> None:
    text = (built / "tiny.yaml").read_text()
    (built / "tiny.yaml").write_text(text.replace("checkpoint_every: 1", "checkpoint_every: 3"))
    try:
        dry = snakemake(built, "-n")
        assert "rule train" not in dry.stdout + dry.stderr and "rule shard" not in dry.stdout + dry.stderr
    finally:
        (built / "tiny.yaml").write_text(text)


def test_editing_measure_settings_remeasures_without_retraining(built: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(built, project, symlinks=True)
    text = (project / "tiny.yaml").read_text()
    (project / "tiny.yaml").write_text(text.replace("pacbayes: {depth: 8}", "pacbayes: {depth: 9}"))
    models = {p: p.read_bytes() for p in (project / "results/runs").glob("*/model.pt")}
    proc = snakemake(project)
    assert "rule shard" in proc.stderr and "rule train" not in proc.stderr
    (record,) = [json.loads(p.read_text()) for p in (project / "results/shards").glob("*.json")]
    assert {r["action"] for r in record["runs"].values()} == {"measured"}
    assert models == {p: p.read_bytes() for p in models}  # not retrained
    for path in (project / "results/runs").glob("*/measures.json"):
        assert json.loads(path.read_text())["settings"]["pacbayes"]["depth"] == 9


def test_invalid_config_stops_the_workflow_with_a_clear_message(tmp_path: Path) -> None:
    (tmp_path / "tiny.yaml").write_text(TINY.replace("weight_bits: 2", "weight_bits: 12"))
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0
    assert "weight_bits: 12 is greater than the maximum of 8" in proc.stdout + proc.stderr


def test_a_configfile_replaces_the_default_config(tmp_path: Path) -> None:
    """`snakemake --configfile my.yaml` plans my.yaml's runs only (Snakemake would merge it into the
    Snakefile's `configfile:`, default experiments included); without it the default's; `--config`
    overrides apply to either."""
    (tmp_path / "config").mkdir()
    shutil.copy(REPO / "config" / "default.yaml", tmp_path / "config" / "default.yaml")
    (tmp_path / "tiny.yaml").write_text(TINY)

    def dry_run(*args: str) -> str:
        cmd = [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "--cores", "1", "-n", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
        return proc.stdout + proc.stderr

    def planned_training_jobs(out: str) -> int:  # runs of the shard jobs planned
        found = re.findall(r"qgen shard \S+ --run-ids (\S+)", out)
        assert found, out[-3000:]
        return sum(len(ids.split(",")) for ids in found)

    tiny = str(tmp_path / "tiny.yaml")
    assert planned_training_jobs(dry_run("--configfile", tiny)) == 4
    default_runs = all_runs(load_config(REPO / "config" / "default.yaml"))
    assert planned_training_jobs(dry_run()) == len(default_runs) > 4
    for args in (("--configfile", tiny), ()):
        out = dry_run(*args, "--config", "runtime={device: tpu}")
        assert "runtime.device: 'tpu' is not one of" in out


def test_unknown_run_id_target_is_explained(built: Path) -> None:
    proc = snakemake(built, "results/runs/digits-mlp1x16-fp32-deadbeef/metrics.json", "-n", check=False)
    assert proc.returncode != 0
    assert "is not defined by the current config" in proc.stdout + proc.stderr
