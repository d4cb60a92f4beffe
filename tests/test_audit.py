"""`qgen audit` and the results/audit/<run_id>.json target: a recorded run rebuilt from scratch in a
scratch directory passes untouched and fails, naming the values, once a result file is tampered with.
Also the comparison rules, run id references and the experiment summary."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from qgen.audit import (
    CUDA_ATOL,
    CUDA_RTOL,
    AuditError,
    audit_run,
    compare_records,
)
from qgen.config import validate_config
from qgen.report.summary import summarize
from qgen.runs_table import RUNS_ALL, RUNS_COMPLETED, resolve_run_ids
from tests.conftest import REPO
from tests.test_workflow import TINY, snakemake

QGEN = [sys.executable, "-m", "qgen"]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One run of the tiny config built by the workflow: the result to audit."""
    workdir = tmp_path_factory.mktemp("audit")
    (workdir / "tiny.yaml").write_text(TINY)
    table = subprocess.run([*QGEN, "runs", "tiny.yaml"], cwd=workdir, capture_output=True, text=True)
    run_id = next(line.split("\t")[0] for line in table.stdout.splitlines() if "lsq_w2a2" in line)
    snakemake(workdir, f"results/runs/{run_id}/metrics.json", f"results/runs/{run_id}/measures.json")
    return {"workdir": workdir, "run_id": run_id}


def tampered_copy(recorded: dict, dst: Path) -> Path:
    """A copy of the project whose recorded metrics.json and measures.json were edited by hand."""
    shutil.copytree(recorded["workdir"], dst, ignore=shutil.ignore_patterns(".snakemake", "logs"))
    run_dir = dst / "results/runs" / recorded["run_id"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["metrics"]["test_acc"] += 0.01
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    measures = json.loads((run_dir / "measures.json").read_text())
    measures["measures"]["pacbayes.sigma"] *= 1.000001
    (run_dir / "measures.json").write_text(json.dumps(measures, indent=2))
    return dst


def audit(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*QGEN, "audit", *args], cwd=cwd, capture_output=True, text=True)


def test_audit_passes_on_an_untouched_run(recorded: dict, tmp_path: Path) -> None:
    workdir, run_id = recorded["workdir"], recorded["run_id"]
    out = tmp_path / "report.json"
    proc = audit(workdir, run_id, "--config", "tiny.yaml", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS: every value agrees" in proc.stdout and "both on CPU: identical" in proc.stdout
    assert proc.stdout.count("created ") == 2 and "code " in proc.stdout  # provenance of both sides
    report = json.loads(out.read_text())
    assert report["pass"] and report["differences"] == [] and report["compared"] > 100
    assert report["tolerance"] == {"rtol": 0.0, "atol": 0.0, "basis": "both on CPU: identical"}
    assert report["provenance"]["rebuilt"]["device"] == "cpu"
    assert report["rebuilt"] is None  # the scratch directory is gone


def test_audit_fails_naming_every_tampered_value(recorded: dict, tmp_path: Path) -> None:
    project = tampered_copy(recorded, tmp_path / "project")
    out, scratch = tmp_path / "report.json", tmp_path / "scratch"
    run_id = recorded["run_id"]
    proc = audit(
        project, run_id, "--config", "tiny.yaml", "--out", str(out), "--scratch", str(scratch), "--keep"
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL: 2 value(s) differ" in proc.stdout
    assert "metrics.json: metrics.test_acc: recorded" in proc.stdout
    assert "measures.json: measures.pacbayes.sigma: recorded" in proc.stdout
    report = json.loads(out.read_text())
    assert {(d["file"], d["key"]) for d in report["differences"]} == {
        ("metrics.json", "metrics.test_acc"),
        ("measures.json", "measures.pacbayes.sigma"),
    }
    test_acc = next(d for d in report["differences"] if d["key"] == "metrics.test_acc")
    assert test_acc["abs_diff"] == pytest.approx(0.01)
    rebuilt = json.loads((scratch / "results/runs" / run_id / "metrics.json").read_text())  # --keep
    original = json.loads((recorded["workdir"] / "results/runs" / run_id / "metrics.json").read_text())
    assert rebuilt["metrics"] == original["metrics"]


def test_audit_target_fails_on_a_tampered_run_and_its_log_names_the_value(
    recorded: dict, tmp_path: Path
) -> None:
    project = tampered_copy(recorded, tmp_path / "project")
    run_id = recorded["run_id"]
    proc = snakemake(project, f"results/audit/{run_id}.json", check=False)
    assert proc.returncode != 0
    log = (project / "logs/audit" / f"{run_id}.log").read_text()
    assert "metrics.json: metrics.test_acc" in log and "FAIL" in log
    assert not (project / "results/audit" / f"{run_id}.json").exists()
    # the recorded run itself was never rebuilt by the outer workflow
    assert not (project / "logs/train").exists()


def test_audit_target_is_not_part_of_all_and_lint_knows_the_rule() -> None:
    text = (REPO / "Snakefile").read_text()
    assert 'include: "workflow/rules/audit.smk"' in text
    assert "results/audit" not in text.split("rule all:")[1]


def test_unknown_run_and_missing_records_are_clear_errors(recorded: dict, tmp_path: Path) -> None:
    config = validate_config(__import__("yaml").safe_load(TINY))
    with pytest.raises(AuditError, match="not defined by the config"):
        audit_run("digits-mlp1x16-fp32-deadbeef", config, root=recorded["workdir"])
    with pytest.raises(AuditError, match="nothing recorded to audit"):
        audit_run(recorded["run_id"], config, root=tmp_path)
    proc = audit(recorded["workdir"], "digits-mlp1x16-fp32-deadbeef", "--config", "tiny.yaml")
    assert proc.returncode == 2 and "qgen audit: run digits-mlp1x16-fp32-deadbeef" in proc.stderr


# ---- comparison rules -----------------------------------------------------------------------------


def record(device: str, **metrics: object) -> dict:
    return {"run_id": "r", "metrics": metrics, "provenance": {"device": device, "created": device}}


def test_cpu_comparison_is_exact_and_ignores_provenance() -> None:
    n, diffs = compare_records(record("cpu", a=0.5, epochs=3), record("cpu", a=0.5, epochs=3))
    assert diffs == [] and n == 3  # run_id, metrics.a, metrics.epochs
    _, diffs = compare_records(record("cpu", a=0.5), record("cpu", a=0.5 + 1e-15))
    assert [d["key"] for d in diffs] == ["metrics.a"]


def test_cuda_tolerance_covers_last_bits_but_not_integers_strings_or_missing_keys() -> None:
    old = record("cuda:0", a=1.0, b=2.0, epochs=3, stop="max_epochs", layers=[1.0, 2.0])
    near = record("cuda:0", a=1.0 + 0.5 * CUDA_RTOL, b=2.0 + CUDA_ATOL / 2, epochs=3, stop="max_epochs")
    near["metrics"]["layers"] = [1.0, 2.0 * (1 + CUDA_RTOL / 2)]
    _, diffs = compare_records(old, near, rtol=CUDA_RTOL, atol=CUDA_ATOL)
    assert diffs == []
    far = record("cuda:0", a=1.0 + 3 * CUDA_RTOL, b=2.0, epochs=4, stop="target_ce")
    _, diffs = compare_records(old, far, rtol=CUDA_RTOL, atol=CUDA_ATOL)
    assert {d["key"] for d in diffs} == {
        "metrics.a",
        "metrics.epochs",
        "metrics.stop",
        "metrics.layers[0]",
        "metrics.layers[1]",
    }
    missing = next(d for d in diffs if d["key"] == "metrics.layers[0]")
    assert missing["rebuilt"] == "<missing>" and missing["abs_diff"] is None


def test_run_id_references_resolve_to_rows_of_the_runs_table() -> None:
    runs = pd.DataFrame({"run_id": ["a", "b", "c"], "status": ["completed", "diverged", "completed"]})
    assert resolve_run_ids("b c", runs) == ["b", "c"]
    assert resolve_run_ids(RUNS_ALL, runs) == ["a", "b", "c"]
    assert resolve_run_ids(RUNS_COMPLETED, runs) == ["a", "c"]
    with pytest.raises(ValueError, match="cannot filter"):
        resolve_run_ids("runs.csv#colour=red", runs)


def test_summary_averages_completed_runs_per_bit_width() -> None:
    runs = pd.DataFrame(
        {
            "run_id": ["f0", "f1", "q0", "q1", "qd"],
            "status": ["completed", "completed", "completed", "completed", "diverged"],
            "bits": ["FP32", "FP32", "4", "4", "4"],
            "gap_acc": [0.02, 0.04, 0.01, 0.03, None],
            "gap_loss": [0.1, 0.2, 0.1, 0.1, None],
            "test_acc": [0.9, 0.92, 0.91, 0.93, None],
        }
    )
    claims = [{"claim": "x", "pass": True}, {"claim": "y", "pass": False}]
    summary = summarize(runs, claims)
    counts = ["runs", "completed", "diverged", "degenerate", "claims_passed", "claims_total"]
    assert list(summary)[:6] == counts
    assert (summary["runs"], summary["completed"], summary["diverged"]) == (5, 4, 1)
    assert (summary["claims_passed"], summary["claims_total"]) == (1, 2)
    assert summary["gap_acc.FP32"] == pytest.approx(0.03) and summary["gap_acc.4"] == pytest.approx(0.02)
    assert summary["test_acc.4"] == pytest.approx(0.92)
    per_bits = [k for k in summary if "." in k]  # after the counts
    assert per_bits[:3] == ["gap_acc.FP32", "gap_loss.FP32", "test_acc.FP32"]  # FP32 first
    with pytest.raises(ValueError, match="empty"):
        summarize(runs.iloc[:0], claims)
